"""Scalar-per-row Adagrad: diagonal (a row is one coordinate) and row-wise.

Both are one transform: an accumulator per row, where a row is a fibre of a leaf along
its feature axes (see ``_geometry``). Diagonal Adagrad is the special case with no
feature axes, so every coordinate is its own row.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from optax_blockada import _geometry, _nonfinite, _per_row, _validation
from optax_blockada._geometry import AxisNameSpec, FeatureAxesSpec

__all__ = [
  "DiagonalAdagradState",
  "RowwiseAdagradState",
  "diagonal_adagrad",
  "rowwise_adagrad",
  "scale_by_diagonal_adagrad",
  "scale_by_rowwise_adagrad",
]

REDUCTIONS = ("mean", "sum")
Reduction = Literal["mean", "sum"]


class DiagonalAdagradState(NamedTuple):
  """State of :func:`scale_by_diagonal_adagrad`: one accumulator per coordinate.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> ob.scale_by_diagonal_adagrad().init(jnp.zeros((2, 3))).sum_of_squares.shape
    (2, 3)
  """

  # Same tree and shapes as the params; dtype ``accumulator_dtype``.
  sum_of_squares: optax.Updates


class RowwiseAdagradState(NamedTuple):
  """State of :func:`scale_by_rowwise_adagrad`: one accumulator per row.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> state = ob.scale_by_rowwise_adagrad().init(jnp.zeros((2, 3)))
    >>> state.sum_of_squares.shape, state.feature_shape.shape
    ((2, 1), (1, 3))
  """

  # Same tree as the params; each leaf has the param's rank with its feature axes
  # reduced to size 1 (a ``(V, d)`` table gets a ``(V, 1)`` accumulator).
  sum_of_squares: optax.Updates
  # Same tree as the params; each leaf is zeros of the param's rank with its row axes
  # reduced to size 1 (``(1, d)`` for a ``(V, d)`` table), in the accumulators' dtype: its
  # shape records the row width the accumulator was made for, which ``(V, 1)`` does not
  # show, so that ``update`` refuses gradients of another width (``d`` entries per leaf,
  # next to the ``V`` accumulators). It never changes. ``None`` (a state built by hand)
  # skips that check.
  feature_shape: optax.Updates | None = None


_per_row.register_per_row_state(DiagonalAdagradState, ("sum_of_squares",))
_per_row.register_per_row_state(RowwiseAdagradState, ("sum_of_squares",))


def _feature_shape(shape: tuple[int, ...], ax: tuple[int, ...]) -> tuple[int, ...]:
  """``shape`` with its row axes (those not in ``ax``) reduced to size 1."""
  return tuple(n if i in ax else 1 for i, n in enumerate(shape))


def _check_row_width(
  mark: Any, g: jax.Array, ax: tuple[int, ...], names: Any, where: str, name: str
) -> None:
  """Raises ``ValueError`` when ``g``'s rows are not as wide as the state's ``mark`` says.

  Inside ``shard_map`` with ``axis_name`` a leaf's feature axes are split over the named
  mesh axes: the state may come from the whole params (each device then holds a ``1/n``
  share of the recorded row) or from the local shard.
  """
  if mark is None:
    return
  made, got = tuple(mark.shape), _feature_shape(tuple(g.shape), ax)
  if made == got:
    return
  if names and len(made) == len(got):
    shards = math.prod(jax.lax.axis_size(n) for n in names)
    if math.prod(made) == math.prod(got) * shards:
      return
  raise ValueError(
    f"{name}: the state of the leaf at {where} was made for rows of shape {made} (row "
    f"axes shown as 1), but updates of shape {tuple(g.shape)} with feature axes {ax} have "
    f"rows of shape {got}. Was the state made for other params or with other "
    "feature_axes? Initialise it with tx.init(params) for the params you update."
  )


def accumulator_dtype_for(param_dtype: Any, accumulator_dtype: DTypeLike | None) -> jnp.dtype:
  """The accumulator dtype: given, or the param's dtype promoted to at least float32."""
  if accumulator_dtype is None:
    dtype = jnp.dtype(param_dtype)
    return dtype if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)
  return jnp.dtype(accumulator_dtype)


def inverse_root(accumulator: jax.Array, eps: ArrayLike, eps_in_sqrt: bool) -> jax.Array:
  """Per-row step multiplier ``phi(G)``, zero where ``G == 0``.

  ``eps_in_sqrt=True``: ``rsqrt(G + eps)`` (optax, Keras 3);
  ``False``: ``1 / (sqrt(G) + eps)`` (PyTorch, FBGEMM).
  """
  eps = jnp.asarray(eps).astype(accumulator.dtype)
  if eps_in_sqrt:
    root = jax.lax.rsqrt(accumulator + eps)
  else:
    root = 1 / (jnp.sqrt(accumulator) + eps)
  return jnp.where(accumulator > 0, root, 0)


def _check_accumulator_dtype(accumulator_dtype: Any) -> None:
  if accumulator_dtype is None:
    return
  if _validation.is_traced(accumulator_dtype):
    raise TypeError(
      "accumulator_dtype cannot be traced; with optax.inject_hyperparams pass "
      "static_args=('accumulator_dtype', ...)."
    )
  try:
    dtype = jnp.dtype(accumulator_dtype)
  except TypeError as e:
    raise TypeError(f"accumulator_dtype must be a dtype, got {accumulator_dtype!r}.") from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"accumulator_dtype must be a floating dtype (e.g. jnp.float32), got {dtype}.")


def _scale_by_scalar_adagrad(
  *,
  name: str,
  state_cls: type,
  feature_axes: FeatureAxesSpec,
  initial_accumulator_value: ArrayLike,
  eps: ArrayLike,
  reduction: str,
  eps_in_sqrt: Any,
  use_old_accumulator: Any,
  accumulator_dtype: Any,
  axis_name: AxisNameSpec = None,
) -> optax.GradientTransformation:
  """The one implementation behind diagonal and row-wise Adagrad."""
  _validation.check_nonnegative("initial_accumulator_value", initial_accumulator_value)
  _validation.check_nonnegative(
    "eps", eps, hint=" Use eps=0 to disable it (keep initial_accumulator_value > 0)."
  )
  _validation.check_choice("reduction", reduction, REDUCTIONS)
  eps_in_sqrt = _validation.static_bool("eps_in_sqrt", eps_in_sqrt)
  use_old_accumulator = _validation.static_bool("use_old_accumulator", use_old_accumulator)
  _check_accumulator_dtype(accumulator_dtype)
  _validation.check_static_feature_axes(feature_axes)
  if isinstance(axis_name, jax.Array) or (
    not callable(axis_name) and not jax.tree.all(jax.tree.map(_geometry.is_axis_names, axis_name))
  ):
    raise TypeError(
      f"axis_name must be None, a mesh axis name (str), a tuple of names, a pytree prefix "
      f"of those or a callable (path, leaf) -> names, got {axis_name!r}."
    )

  def init_fn(params):
    _validation.check_float_leaves(params, f"{name}: params")
    params = _validation.as_arrays(params)
    with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [p for _, p in with_path]
    axes = _geometry.resolve_feature_axes(feature_axes, params)
    for (path, p), ax in zip(with_path, axes, strict=True):
      _geometry.check_row_size(path, p.shape, ax, name)
    sums = [
      _geometry.row_state_full(
        p,
        _geometry.row_shape(p.shape, ax),
        initial_accumulator_value,
        accumulator_dtype_for(p.dtype, accumulator_dtype),
      )
      for p, ax in zip(leaves, axes, strict=True)
    ]
    if state_cls is DiagonalAdagradState:
      return state_cls(sum_of_squares=treedef.unflatten(sums))
    marks = [
      jnp.zeros(_feature_shape(p.shape, ax), accumulator_dtype_for(p.dtype, accumulator_dtype))
      for p, ax in zip(leaves, axes, strict=True)
    ]
    return state_cls(sum_of_squares=treedef.unflatten(sums), feature_shape=treedef.unflatten(marks))

  def update_fn(updates, state, params=None):
    del params
    updates, with_path, treedef = _validation.checked_updates(
      updates, state, state_cls, "sum_of_squares", name
    )
    sums = treedef.flatten_up_to(state.sum_of_squares)
    axes = _geometry.resolve_feature_axes(feature_axes, updates)
    names = _geometry.resolve_axis_names(axis_name, updates)
    marks = getattr(state, "feature_shape", None)
    marks = [None] * len(sums) if marks is None else treedef.flatten_up_to(marks)
    new_updates, new_sums = [], []
    for (path, g), s, ax, nm, mark in zip(with_path, sums, axes, names, marks, strict=True):
      _geometry.check_row_size(path, g.shape, ax, name)
      expected = _geometry.row_shape(g.shape, ax)
      if tuple(s.shape) != expected:
        raise ValueError(
          f"{name}: the accumulator of the leaf at {_geometry.path_str(path)} has "
          f"shape {tuple(s.shape)}, but updates of shape {tuple(g.shape)} with "
          f"feature axes {ax} need {expected}. Was the state made for other params "
          "or with other feature_axes?"
        )
      _check_row_width(mark, g, ax, nm, _geometry.path_str(path), name)
      g_acc = g.astype(s.dtype)
      new_s = s + _geometry.reduce_rows(g_acc * g_acc, ax, reduction, nm)
      scale = inverse_root(s if use_old_accumulator else new_s, eps, eps_in_sqrt)
      new_updates.append((g_acc * scale).astype(g.dtype))
      new_sums.append(new_s)
    new_state = state._replace(sum_of_squares=treedef.unflatten(new_sums))
    return treedef.unflatten(new_updates), new_state

  return optax.GradientTransformation(init_fn, update_fn)


_MATHS_COMMON = r"""
  With ``eps_in_sqrt=True`` (optax, Keras 3) :math:`\phi(G) = [G > 0] / \sqrt{G + \epsilon}`;
  with ``eps_in_sqrt=False`` (PyTorch, FBGEMM, tf.keras legacy)
  :math:`\phi(G) = [G > 0] / (\sqrt{G} + \epsilon)`. The guard :math:`[G > 0]`
  (optax's ``where(G > 0, ...)``) makes the step zero where nothing has been
  accumulated. With ``use_old_accumulator=True`` the step divides by the accumulator
  *before* this step's squared gradient is added, :math:`u_t = g_t \phi(G_{t-1})`, as
  GloVe's ``glove.c`` and LightFM do.

  A NaN, an inf or an entry whose square overflows poisons the accumulator it enters for
  good, as in ``optax.adagrad``. Wrap the optimizer in :func:`skip_nonfinite_rows` to skip
  (and count) such rows, or in ``optax.apply_if_finite`` to skip whole steps."""


def scale_by_diagonal_adagrad(
  initial_accumulator_value: ArrayLike = 0.1,
  eps: ArrayLike = 1e-7,
  *,
  eps_in_sqrt: bool = True,
  use_old_accumulator: bool = False,
  accumulator_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
  r"""Per-coordinate Adagrad scaling (no learning rate).

  For every coordinate :math:`i`,

  .. math::

    G_t = G_{t-1} + g_t^2, \quad G_0 = a, \qquad u_t = g_t \, \phi(G_t).
  {maths}

  With the defaults the updates equal :func:`optax.scale_by_rss`. Zero-gradient
  coordinates get a zero update and keep their state (lazy exactness).

  Args:
    initial_accumulator_value: :math:`a \ge 0`, the starting accumulator.
    eps: :math:`\epsilon \ge 0`, the damping term.
    eps_in_sqrt: where ``eps`` goes (see above). Static.
    use_old_accumulator: divide by the accumulator before adding this step's squared
      gradient (GloVe, LightFM). Static.
    accumulator_dtype: dtype of the accumulators. ``None`` (default) promotes the
      param dtype to at least float32, so bfloat16/float16 params get float32
      accumulators (in bfloat16, ``256 + 1 == 256`` and Adagrad would stall). Static.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`DiagonalAdagradState`. Updates come back in the gradients' dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_blockada as ob
    >>> tx = ob.scale_by_diagonal_adagrad()
    >>> params = jnp.array([1.0, -2.0, 0.5])
    >>> grads = jnp.array([1.0, 0.0, 3.0])
    >>> updates, state = tx.update(grads, tx.init(params))
    >>> ref, _ = optax.scale_by_rss().update(grads, optax.scale_by_rss().init(params))
    >>> print(updates.round(5), bool(jnp.allclose(updates, ref)))
    [0.95346 0.      0.99449] True

  With ``optax.inject_hyperparams`` pass ``static_args=('accumulator_dtype',)`` if you
  set ``accumulator_dtype``; booleans are static already.

  References:
    Duchi, Hazan & Singer, `Adaptive Subgradient Methods for Online Learning and
    Stochastic Optimization <https://jmlr.org/papers/v12/duchi11a.html>`_, JMLR 2011.
    McMahan & Streeter, `Adaptive Bound Optimization for Online Convex Optimization
    <https://arxiv.org/abs/1002.4908>`_, COLT 2010.
  """
  return _scale_by_scalar_adagrad(
    name="scale_by_diagonal_adagrad",
    state_cls=DiagonalAdagradState,
    feature_axes=(),
    initial_accumulator_value=initial_accumulator_value,
    eps=eps,
    reduction="sum",
    eps_in_sqrt=eps_in_sqrt,
    use_old_accumulator=use_old_accumulator,
    accumulator_dtype=accumulator_dtype,
  )


def scale_by_rowwise_adagrad(
  initial_accumulator_value: ArrayLike = 0.1,
  eps: ArrayLike = 1e-7,
  *,
  reduction: Reduction = "mean",
  eps_in_sqrt: bool = True,
  use_old_accumulator: bool = False,
  feature_axes: FeatureAxesSpec = None,
  accumulator_dtype: DTypeLike | None = None,
  axis_name: AxisNameSpec = None,
) -> optax.GradientTransformation:
  r"""Row-wise (per-row-norm) Adagrad scaling (no learning rate).

  A leaf is cut into rows along its feature axes :math:`F` (default: the last axis
  when ``ndim >= 2``; none when ``ndim <= 1``, so each scalar of a bias vector is its
  own row). Each row :math:`r` of size :math:`d` keeps one accumulator:

  .. math::

    s_{r,t} = s_{r,t-1} + \operatorname{reduce}_F(g_{r,t} \odot g_{r,t}),
    \quad s_{r,0} = a, \qquad u_{r,t} = g_{r,t} \, \phi(s_{r,t}),

  where reduce is the mean (``reduction='mean'``, the default, as in FBGEMM/TorchRec,
  keeping learning rates comparable with diagonal Adagrad) or the sum (the squared
  norm). Sum and mean differ only by rescaling: ``lr -> lr*sqrt(d)``,
  ``a -> a*d``, ``eps -> eps*d``.
  {maths}

  The step of a row is a multiple of its gradient, so the method is equivariant under
  a rotation :math:`R` applied to every row that shares the feature space: training
  from :math:`W R` ends at :math:`W_T R`. It stores one scalar per row, :math:`d`
  times less than diagonal Adagrad, plus one row of zeros per leaf (``feature_shape``)
  whose shape records the row width, so that gradients of another width are refused.
  With :math:`d = 1` it equals diagonal Adagrad.

  Args:
    initial_accumulator_value: :math:`a \ge 0`, the starting accumulator.
    eps: :math:`\epsilon \ge 0`, the damping term.
    reduction: ``'mean'`` or ``'sum'`` of the squared gradient over a row. Static.
    eps_in_sqrt: where ``eps`` goes (see above). Static.
    use_old_accumulator: divide by the accumulator before adding this step's squared
      gradient (GloVe, LightFM). Static.
    feature_axes: which axes make a row: ``None`` (the default rule), an int or tuple
      of ints for every leaf, a pytree prefix of such specs, or a callable
      ``(path, leaf) -> axes``. Resolved from the updates, so ``params`` may be
      ``None`` in ``update``. Static.
    accumulator_dtype: ``None`` promotes the param dtype to at least float32. Static.
    axis_name: for use inside ``jax.shard_map`` when a leaf's feature axes are split
      over mesh axes: the name (or tuple of names) of those mesh axes. The per-row
      sum of squares is then ``psum``-ed over them, and a mean divides by the global
      row size, so every shard sees the statistic of the whole row. ``None`` (the
      default) reduces locally, which is right whenever the feature axes are not
      split inside ``shard_map`` (and always under ``jit``, where JAX inserts the
      collectives itself). Also a pytree prefix of names or ``None`` (e.g. for a
      replicated leaf next to a feature-sharded table), or a callable
      ``(path, leaf) -> names``. Leaves without feature axes ignore it. Static.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`RowwiseAdagradState`. Updates come back in the gradients' dtype.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> params = {'table': jnp.ones((4, 3)), 'bias': jnp.zeros(4)}
    >>> tx = ob.scale_by_rowwise_adagrad()
    >>> state = tx.init(params)
    >>> jax.tree.map(jnp.shape, state.sum_of_squares)
    {'bias': (4,), 'table': (4, 1)}
    >>> grads = {'table': jnp.array([[3.0, 4.0, 0.0]] + [[0.0] * 3] * 3),
    ...          'bias': jnp.zeros(4)}
    >>> updates, state = tx.update(grads, state)
    >>> print(updates['table'][0])  # g / sqrt(0.1 + (9 + 16) / 3)
    [1.03305 1.3774 0.    ]

  With ``optax.inject_hyperparams`` pass ``static_args=('feature_axes',)`` whenever
  ``feature_axes`` is an int or a callable (and likewise ``'accumulator_dtype'``, and
  ``'axis_name'`` when it is a callable; a name or tuple of names is static already).

  Inside ``jax.shard_map`` with the feature axis split over mesh axis ``'f'`` (one
  device here; the same code on several):

    >>> from functools import partial
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> mesh = jax.make_mesh((1,), ('f',), devices=jax.devices()[:1])
    >>> tx = ob.scale_by_rowwise_adagrad(axis_name='f')
    >>> @partial(jax.shard_map, mesh=mesh, in_specs=P(None, 'f'), out_specs=P(None, 'f'))
    ... def step(g):
    ...   return tx.update(g, tx.init(g))[0]
    >>> g = jax.device_put(grads['table'], NamedSharding(mesh, P(None, 'f')))
    >>> print(step(g)[0])
    [1.03305 1.3774 0.    ]

  References:
    Duchi, Hazan & Singer, `Adaptive Subgradient Methods for Online Learning and
    Stochastic Optimization <https://jmlr.org/papers/v12/duchi11a.html>`_, JMLR 2011.
    McMahan & Streeter, `Adaptive Bound Optimization for Online Convex Optimization
    <https://arxiv.org/abs/1002.4908>`_, COLT 2010.
    FBGEMM's ``EXACT_ROWWISE_ADAGRAD`` (`fbgemm_gpu
    <https://github.com/pytorch/FBGEMM/tree/main/fbgemm_gpu>`_) and TorchRec's
    ``RowWiseAdagrad``: the row-wise accumulator of production recommenders.
  """
  return _scale_by_scalar_adagrad(
    name="scale_by_rowwise_adagrad",
    state_cls=RowwiseAdagradState,
    feature_axes=feature_axes,
    initial_accumulator_value=initial_accumulator_value,
    eps=eps,
    reduction=reduction,
    eps_in_sqrt=eps_in_sqrt,
    use_old_accumulator=use_old_accumulator,
    accumulator_dtype=accumulator_dtype,
    axis_name=axis_name,
  )


for _fn in (scale_by_diagonal_adagrad, scale_by_rowwise_adagrad):
  if _fn.__doc__ is not None:  # None under ``python -OO``, which strips docstrings.
    _fn.__doc__ = _fn.__doc__.replace("{maths}", _MATHS_COMMON)
del _fn


def with_learning_rate(
  scaling: optax.GradientTransformation,
  learning_rate: optax.ScalarOrSchedule,
  *,
  skip_nonfinite_rows: bool = False,
  feature_axes: FeatureAxesSpec = None,
  axis_name: AxisNameSpec = None,
) -> optax.GradientTransformationExtraArgs:
  """``chain(scaling, scale_by_learning_rate(learning_rate))`` with a checked rate.

  With ``skip_nonfinite_rows`` the chain is wrapped in
  :func:`optax_blockada.skip_nonfinite_rows` with the given rows.
  """
  _validation.check_learning_rate(learning_rate)
  tx = optax.chain(scaling, optax.scale_by_learning_rate(learning_rate))
  if _validation.static_bool("skip_nonfinite_rows", skip_nonfinite_rows):
    return _nonfinite.skip_nonfinite_rows(tx, feature_axes=feature_axes, axis_name=axis_name)
  return tx


def diagonal_adagrad(
  learning_rate: optax.ScalarOrSchedule,
  initial_accumulator_value: ArrayLike = 0.1,
  eps: ArrayLike = 1e-7,
  *,
  eps_in_sqrt: bool = True,
  use_old_accumulator: bool = False,
  accumulator_dtype: DTypeLike | None = None,
  skip_nonfinite_rows: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Per-coordinate Adagrad: :func:`scale_by_diagonal_adagrad` then ``-learning_rate``.

  With default arguments this is :func:`optax.adagrad`. See
  :func:`scale_by_diagonal_adagrad` for the maths and the arguments.

  Args:
    learning_rate: a finite float, or an optax schedule.
    initial_accumulator_value: starting accumulator, ``>= 0``.
    eps: damping term, ``>= 0``.
    eps_in_sqrt: ``sqrt(G + eps)`` if True, ``sqrt(G) + eps`` otherwise.
    use_old_accumulator: divide by the accumulator before adding this step's gradient.
    accumulator_dtype: ``None`` promotes the param dtype to at least float32.
    skip_nonfinite_rows: wrap the optimizer in :func:`skip_nonfinite_rows`, which
      skips (and counts) the coordinates whose gradient is not finite instead of letting
      them poison their accumulators. Default ``False`` (optax's behaviour). Static.

  Returns:
    An :class:`optax.GradientTransformation`.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> f = lambda x: jnp.sum(x ** 2)
    >>> tx = ob.diagonal_adagrad(learning_rate=1.0)
    >>> params = jnp.array([1.0, 2.0, 3.0])
    >>> state = tx.init(params)
    >>> for _ in range(10):
    ...   updates, state = tx.update(jax.grad(f)(params), state, params)
    ...   params = params + updates
    >>> print(f"{f(params):.3f}")  # from 14.0
    0.025
  """
  return with_learning_rate(
    scale_by_diagonal_adagrad(
      initial_accumulator_value,
      eps,
      eps_in_sqrt=eps_in_sqrt,
      use_old_accumulator=use_old_accumulator,
      accumulator_dtype=accumulator_dtype,
    ),
    learning_rate,
    skip_nonfinite_rows=skip_nonfinite_rows,
    feature_axes=(),
  )


def rowwise_adagrad(
  learning_rate: optax.ScalarOrSchedule,
  initial_accumulator_value: ArrayLike = 0.1,
  eps: ArrayLike = 1e-7,
  *,
  reduction: Reduction = "mean",
  eps_in_sqrt: bool = True,
  use_old_accumulator: bool = False,
  feature_axes: FeatureAxesSpec = None,
  accumulator_dtype: DTypeLike | None = None,
  axis_name: AxisNameSpec = None,
  skip_nonfinite_rows: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Row-wise Adagrad: :func:`scale_by_rowwise_adagrad` then ``-learning_rate``.

  One accumulator per feature vector (row), fed by the mean (or sum) of its squared
  gradient. See :func:`scale_by_rowwise_adagrad` for the maths and the arguments.

  Args:
    learning_rate: a finite float, or an optax schedule.
    initial_accumulator_value: starting accumulator, ``>= 0``.
    eps: damping term, ``>= 0``.
    reduction: ``'mean'`` (default) or ``'sum'``.
    eps_in_sqrt: ``sqrt(s + eps)`` if True, ``sqrt(s) + eps`` otherwise.
    use_old_accumulator: divide by the accumulator before adding this step's gradient.
    feature_axes: which axes make a row (see :func:`scale_by_rowwise_adagrad`).
    accumulator_dtype: ``None`` promotes the param dtype to at least float32.
    axis_name: mesh axes the feature axes are split over inside ``shard_map``; the
      row statistic is ``psum``-ed over them (see :func:`scale_by_rowwise_adagrad`).
    skip_nonfinite_rows: wrap the optimizer in :func:`skip_nonfinite_rows`, which
      skips (and counts) the rows whose gradient is not finite instead of letting
      them poison their accumulators. Default ``False`` (optax's behaviour). Static.

  Returns:
    An :class:`optax.GradientTransformation`.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_blockada as ob
    >>> table = jax.random.normal(jax.random.key(0), (10, 4))
    >>> loss = lambda t: jnp.sum((t[jnp.array([1, 3, 3])] - 1.0) ** 2)
    >>> tx = optax.chain(optax.clip_by_global_norm(10.0), ob.rowwise_adagrad(0.5))
    >>> state = tx.init(table)
    >>> for _ in range(20):
    ...   updates, state = tx.update(jax.grad(loss)(table), state, table)
    ...   table = optax.apply_updates(table, updates)
    >>> print(f"{loss(table):.3f}")
    0.000
  """
  return with_learning_rate(
    scale_by_rowwise_adagrad(
      initial_accumulator_value,
      eps,
      reduction=reduction,
      eps_in_sqrt=eps_in_sqrt,
      use_old_accumulator=use_old_accumulator,
      feature_axes=feature_axes,
      accumulator_dtype=accumulator_dtype,
      axis_name=axis_name,
    ),
    learning_rate,
    skip_nonfinite_rows=skip_nonfinite_rows,
    feature_axes=feature_axes,
    axis_name=axis_name,
  )
