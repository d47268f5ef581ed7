r"""Row-level pieces that production embedding optimizers apply around Adagrad.

FBGEMM's fused embedding optimizers (and TorchRec, which runs them) decay and max-norm
every row **looked up** in the batch, also one whose summed gradient is exactly zero (a
padding row). A dense JAX step only sees the gradient; the sparse path knows the
looked-up rows and passes them to ``update`` as the extra argument ``looked_up``
(see :func:`add_decayed_weights_to_touched_rows`).
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from optax_blockada import _geometry, _validation
from optax_blockada._geometry import FeatureAxesSpec
from optax_blockada._scalar import accumulator_dtype_for

__all__ = ["add_decayed_weights_to_touched_rows", "renormalize_rows"]

# Which rows a row transform treats as touched (see the module docstring).
Touched = Literal["looked_up", "nonzero_gradient"]
TOUCHED = ("looked_up", "nonzero_gradient")


def _needs_params(params: Any, name: str) -> None:
  if params is None:
    raise ValueError(
      f"{name} needs the current parameters: call tx.update(updates, state, params)."
    )


def looked_up_leaves(
  looked_up: Any, with_path: list[tuple[Any, Any]], axes: list[tuple[int, ...]], name: str
) -> list[jax.Array | None]:
  """The ``looked_up`` mask of every leaf of ``with_path``, checked, or ``None``.

  Each mask is boolean and has the leaf's rank: its shape is the row shape (the
  leaf's shape with its feature axes set to 1) or broadcasts to it. Leaves are
  matched by key path, so ``looked_up`` may hold more leaves than the updates (the
  full params tree inside ``optax.partition`` / ``optax.masked``); ``None`` (for a
  leaf or a subtree) means "no mask": the non-zero rule.
  """
  if looked_up is None:
    return [None] * len(with_path)
  entries = {
    jax.tree_util.keystr(path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(looked_up, is_leaf=lambda x: x is None)[
      0
    ]
  }
  out = []
  for (path, u), ax in zip(with_path, axes, strict=True):
    where = _geometry.path_str(path)
    prefixes = [jax.tree_util.keystr(tuple(path[:k])) for k in range(len(path), -1, -1)]
    key = next((k for k in prefixes if k in entries), None)
    if key is None:
      raise ValueError(
        f"{name}: looked_up has no entry for the leaf at {where}. Pass a pytree with the "
        "params' structure holding a boolean mask of the looked-up rows (or None) for "
        "every leaf."
      )
    mask = entries[key]
    if mask is None:
      out.append(None)
      continue
    if key != prefixes[0]:
      raise ValueError(
        f"{name}: looked_up holds one array at {key or '<root>'} for the subtree that "
        f"contains the leaf at {where}; give one mask (or None) per leaf."
      )
    out.append(_checked_mask(mask, u, ax, where, name))
  return out


def _checked_mask(mask: Any, u: jax.Array, ax: tuple[int, ...], where: str, name: str):
  shape = tuple(np.shape(mask))
  dtype = getattr(mask, "dtype", None)
  if dtype is None:
    dtype = np.asarray(mask).dtype
  row = _geometry.row_shape(u.shape, ax)
  short = row
  while short and short[-1] == 1 and len(short) > 1:
    short = short[:-1]
  fits = f"{row}" if short == row else f"{row} (or {short})"
  if dtype != np.bool_:
    raise TypeError(
      f"{name}: looked_up for the leaf at {where} must be a boolean mask with one entry "
      f"per row, shape {fits}; got dtype {dtype}. Pass mask.astype(bool)."
    )
  padded = shape + (1,) * (len(row) - len(shape))
  if len(shape) > len(row) or any(a not in (1, b) for a, b in zip(padded, row, strict=True)):
    raise ValueError(
      f"{name}: looked_up for the leaf at {where} (shape {tuple(u.shape)}, feature axes "
      f"{ax}) has shape {shape}; it needs one boolean per row: shape {fits}, as the "
      "row-wise state."
    )
  return jnp.reshape(jnp.asarray(mask), padded)


def _touched(u: jax.Array, ax: tuple[int, ...], mask: jax.Array | None) -> jax.Array:
  """Boolean per row (keepdims): the row counts as touched."""
  nonzero = _geometry.row_is_nonzero(u, ax)
  return nonzero if mask is None else nonzero | mask


def _map_rows(fn, updates, params, feature_axes, touched, looked_up, name):
  """Applies ``fn(u, p, axes, mask)`` leaf by leaf with resolved feature axes."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(updates)
  param_leaves = treedef.flatten_up_to(params)
  axes = _geometry.resolve_feature_axes(feature_axes, updates)
  if touched == "nonzero_gradient":
    looked_up = None
  masks = looked_up_leaves(looked_up, with_path, axes, name)
  return treedef.unflatten(
    [fn(u, p, ax, m) for (_, u), p, ax, m in zip(with_path, param_leaves, axes, masks, strict=True)]
  )


def add_decayed_weights_to_touched_rows(
  weight_decay: ArrayLike = 0.0,
  *,
  feature_axes: FeatureAxesSpec = None,
  touched: Touched = "looked_up",
) -> optax.GradientTransformationExtraArgs:
  r"""Adds ``weight_decay * params`` to the touched rows (FBGEMM's lazy weight decay).

  .. math::

    u_r \leftarrow u_r + \lambda\, w_r \quad \text{if row } r \text{ is touched},
    \qquad u_r \text{ unchanged otherwise}.

  Unlike :func:`optax.add_decayed_weights` this leaves the other rows alone (lazy), as
  FBGEMM does with the rows outside the batch. Placed before a row-wise Adagrad it is
  FBGEMM's ``L2`` mode; placed after it (before the learning rate) its ``DECOUPLE``
  mode. Rows are cut as in :func:`scale_by_rowwise_adagrad`.

  Which rows are touched (``touched``, also in :func:`renormalize_rows`):

  * ``'looked_up'`` (default): the rows that the optional extra argument ``looked_up``
    of ``update`` marks (``tx.update(updates, state, params, looked_up=mask)``), and
    every row with a non-zero update (a row with a gradient was looked up). This is
    FBGEMM's rule when the mask holds the batch's rows:
    :func:`optax_blockada.sparse.apply_gradients` passes the rows it gathered (padding
    and dropped out-of-range ids excluded). Without the mask (a dense step, where only
    the gradient is observable) the rows with a non-zero update: a looked-up row whose
    summed gradient is exactly zero is then left alone, where FBGEMM decays it.
  * ``'nonzero_gradient'``: the rows with a non-zero update; ``looked_up`` is ignored.

  ``looked_up`` is a pytree with the params' structure. Its leaf for a params leaf is
  a boolean array with one entry per row, of the row-wise state's shape (``(V, 1)``
  for a ``(V, d)`` table) or that shape without its trailing 1s (``(V,)``); or ``None``,
  which keeps the non-zero rule for that leaf (or subtree). Leaves are matched by key
  path, so the mask passes through ``optax.chain``, ``optax.partition``,
  ``optax.masked``, ``optax.inject_hyperparams`` and :func:`skip_nonfinite_rows`, which
  hand extra arguments to the transforms inside (those that take none ignore them).

  Args:
    weight_decay: :math:`\lambda \ge 0`.
    feature_axes: which axes make a row (see :func:`scale_by_rowwise_adagrad`). Static.
    touched: ``'looked_up'`` or ``'nonzero_gradient'``: which rows are decayed. Static.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` (stateless; ``params`` are
    required; the extra argument ``looked_up`` is optional, others are ignored).

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> tx = ob.add_decayed_weights_to_touched_rows(0.5)
    >>> params = jnp.ones((3, 2))
    >>> updates = jnp.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    >>> print(tx.update(updates, tx.init(params), params)[0])
    [[1.5 0.5]
     [0.  0. ]
     [0.  0. ]]

    Row 1 was looked up but got a zero gradient (a padding row); row 2 was not looked up:

    >>> looked_up = jnp.array([True, True, False])
    >>> print(tx.update(updates, tx.init(params), params, looked_up=looked_up)[0])
    [[1.5 0.5]
     [0.5 0.5]
     [0.  0. ]]
  """
  _validation.check_nonnegative("weight_decay", weight_decay)
  _validation.check_choice("touched", touched, TOUCHED)
  name = "add_decayed_weights_to_touched_rows"

  def update_fn(updates, state, params=None, *, looked_up=None, **extra_args):
    del extra_args
    _needs_params(params, name)

    def leaf(u, p, ax, mask):
      decay = jnp.asarray(weight_decay).astype(u.dtype) * p.astype(u.dtype)
      return jnp.where(_touched(u, ax, mask), u + decay, u)

    return _map_rows(leaf, updates, params, feature_axes, touched, looked_up, name), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def renormalize_rows(
  max_norm: ArrayLike,
  *,
  feature_axes: FeatureAxesSpec = None,
  touched: Touched = "looked_up",
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales touched rows whose new norm exceeds ``max_norm`` (FBGEMM ``max_norm``).

  For every touched row :math:`r` with :math:`w'_r = w_r + u_r` and
  :math:`\|w'_r\| > m`, the update becomes :math:`m\, w'_r / \|w'_r\| - w_r`, so the
  row lands on the sphere of radius :math:`m`. Touched rows are chosen by ``touched``
  as in :func:`add_decayed_weights_to_touched_rows`: with ``'looked_up'`` (default) the
  rows marked in the extra argument ``looked_up``, zero update or not, as FBGEMM's CUDA
  kernel does, and the rows with a non-zero update. Other rows and rows within the
  bound are left alone, and ``max_norm <= 0`` disables it. Put it last in a chain,
  after the learning rate: it works in parameter space.

  Args:
    max_norm: :math:`m`; ``<= 0`` turns the transform off.
    feature_axes: which axes make a row (see :func:`scale_by_rowwise_adagrad`). Static.
    touched: ``'looked_up'`` or ``'nonzero_gradient'``: which rows are renormalised.
      Static.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` (stateless; ``params`` are
    required; the extra argument ``looked_up`` is optional, others are ignored).

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_blockada as ob
    >>> tx = ob.renormalize_rows(1.0)
    >>> params = jnp.array([[0.0, 0.0], [0.5, 0.0], [0.0, 2.0]])
    >>> updates = jnp.array([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
    >>> new, _ = tx.update(updates, tx.init(params), params)
    >>> print(optax.apply_updates(params, new))
    [[0.6 0.8]
     [0.5 0. ]
     [0.  2. ]]
    >>> looked_up = jnp.array([True, True, True])  # rows 1, 2: looked up, zero gradient
    >>> new, _ = tx.update(updates, tx.init(params), params, looked_up=looked_up)
    >>> print(optax.apply_updates(params, new))
    [[0.6 0.8]
     [0.5 0. ]
     [0.  1. ]]
  """
  _validation.check_learning_rate(max_norm, name="max_norm")
  _validation.check_choice("touched", touched, TOUCHED)
  name = "renormalize_rows"

  def update_fn(updates, state, params=None, *, looked_up=None, **extra_args):
    del extra_args
    _needs_params(params, name)

    def leaf(u, p, ax, mask):
      dtype = accumulator_dtype_for(p.dtype, None)
      new = p.astype(dtype) + u.astype(dtype)
      norm = jnp.sqrt(_geometry.reduce_rows(new * new, ax, "sum"))
      m = jnp.asarray(max_norm).astype(dtype)
      clip = (m > 0) & (norm > m) & _touched(u, ax, mask)
      scale = jnp.where(clip, m / jnp.where(clip, norm, 1), 1)
      return jnp.where(clip, new * scale - p.astype(dtype), u.astype(dtype)).astype(u.dtype)

    return _map_rows(leaf, updates, params, feature_axes, touched, looked_up, name), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)
