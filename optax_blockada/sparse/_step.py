"""The sparse step: the transform on the gathered rows, scattered back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_blockada import _geometry
from optax_blockada._typing import OptState, Params, Updates
from optax_blockada.sparse._ids import _unique, _valid_ids
from optax_blockada.sparse._plan import _state_plan
from optax_blockada.sparse._tables import _put_rows, _row_mask, _take_rows, gather
from optax_blockada.sparse._types import SparseGrad, TouchedRows


def _apply(tx, grad_leaves, opt_state, leaves, treedef, rows, num_rows, names):
  """Runs ``tx`` on the gathered rows and scatters params and per-row state back."""
  plan = _state_plan(tx, opt_state, leaves, treedef, num_rows, names)
  small_params = [_take_rows(p, rows[i], "fill") if i in rows else p for i, p in enumerate(leaves)]
  state_leaves, sdef = jax.tree.flatten(opt_state)
  small_state = [
    s if t is None else _take_rows(s, rows[t], "clip")
    for s, t in zip(state_leaves, plan, strict=True)
  ]
  small_params_tree = treedef.unflatten(small_params)
  extra = {}
  if isinstance(tx, optax.GradientTransformationExtraArgs):
    # The gathered rows of every table: looked up (padding slots and dropped
    # out-of-range ids are not); None for the other leaves.
    looked_up = [
      _row_mask(rows[i], num_rows[i], 1) if i in rows else None for i in range(len(leaves))
    ]
    extra["looked_up"] = treedef.unflatten(looked_up)
  updates, new_small_state = tx.update(
    treedef.unflatten(grad_leaves), sdef.unflatten(small_state), small_params_tree, **extra
  )
  new_small = treedef.flatten_up_to(optax.apply_updates(small_params_tree, updates))
  new_leaves = [
    _put_rows(p, rows[i], n) if i in rows else n
    for i, (p, n) in enumerate(zip(leaves, new_small, strict=True))
  ]
  new_state_leaves, new_sdef = jax.tree.flatten(new_small_state)
  if new_sdef != sdef:
    raise ValueError(
      f"sparse: tx.update changed the state's tree structure from {sdef} to {new_sdef}."
    )
  new_state = [
    n if t is None else _put_rows(s, rows[t], n)
    for s, n, t in zip(state_leaves, new_state_leaves, plan, strict=True)
  ]
  return treedef.unflatten(new_leaves), sdef.unflatten(new_state)


def _check_tx(tx: Any) -> None:
  if not (hasattr(tx, "init") and hasattr(tx, "update")):
    raise TypeError(f"sparse: tx must be an optax.GradientTransformation, got {tx!r}.")


def _merge_sparse_grad(g: SparseGrad, leaf: Any, name: str, checked: bool):
  ids, values = jnp.asarray(g.ids), jnp.asarray(g.values)
  row = tuple(leaf.shape[1:])
  if tuple(values.shape) != tuple(ids.shape) + row:
    raise ValueError(
      f"sparse: SparseGrad for the table {name} (shape {tuple(leaf.shape)}) has ids of "
      f"shape {tuple(ids.shape)} and values of shape {tuple(values.shape)}; values must "
      f"have shape ids.shape + {row}."
    )
  num_rows = int(leaf.shape[0])
  flat = _valid_ids(g.ids, num_rows, name, checked)
  n = flat.shape[0]
  unique, inverse = _unique(flat, num_rows)
  merged = jax.ops.segment_sum(values.reshape((n, *row)), inverse, num_segments=n)
  return unique, merged


def apply_gradients(
  tx: optax.GradientTransformation,
  grads: Updates,
  opt_state: OptState,
  params: Params,
  touched: TouchedRows | None = None,
  *,
  checked: bool = False,
) -> tuple[Params, OptState]:
  r"""One optimizer step that reads and writes only the touched rows of every table.

  Runs ``tx.update`` on the gathered rows of the tables (and their gathered per-row
  state) and on the dense leaves as they are, then scatters the new rows of the params
  and of the per-row state back (``mode='drop'``: padding and out-of-range ids write
  nothing). Equals the dense step ``tx.update`` + ``optax.apply_updates`` up to float
  rounding for lazily exact transforms (see the module docstring for the others).
  A ``tx`` that takes extra arguments also gets ``looked_up=``, the mask of the
  gathered rows of every table (``None`` for other leaves): the row transforms and
  :func:`~optax_blockada.presets.fbgemm_rowwise_adagrad` decay and max-norm those rows,
  zero gradient or not, as FBGEMM does (see "Looked-up rows" in the module docstring).

  Two forms of ``grads``:

  * with ``touched`` from :func:`gather`: the gradients with respect to
    ``small_params`` (the tables' gathered rows, duplicates already summed);
  * with ``touched=None``: a tree with the params' structure holding a
    :class:`SparseGrad` (ids and the gradient w.r.t. ``table[ids]``, duplicates allowed)
    for every table, and dense gradients elsewhere. Duplicates are merged by a segment
    sum of static size.

  To update in place, jit the step and donate params and state:
  ``jax.jit(step, donate_argnums=(0, 1))``.

  Args:
    tx: the optax transform, the same as for the dense step; its state ``opt_state`` is
      ``tx.init(params)``.
    grads: gradients in one of the two forms above.
    opt_state: the full optimizer state.
    params: the full parameters.
    touched: the :class:`TouchedRows` returned by :func:`gather`, or ``None``.
    checked: for :class:`SparseGrad` ids: raise on ids outside ``[0, V)`` instead of
      dropping them.

  Returns:
    ``(new_params, new_opt_state)``, full size.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_blockada as ob
    >>> from optax_blockada import sparse
    >>> params = {'table': jnp.ones((1000, 4)), 'w': jnp.ones(4)}
    >>> tx = ob.rowwise_adagrad(0.1)
    >>> opt_state = tx.init(params)
    >>> def loss(params, ids):
    ...   return jnp.sum((params['table'][ids['table']] @ params['w'] - 1.0) ** 2)
    >>> ids = {'table': jnp.array([3, 5, 3])}
    >>> small, local, touched = sparse.gather(params, ids)
    >>> grads = jax.grad(loss)(small, local)
    >>> new, opt_state = sparse.apply_gradients(tx, grads, opt_state, params, touched)
    >>> # The dense step gives the same result.
    >>> updates, _ = tx.update(jax.grad(loss)(params, ids), tx.init(params), params)
    >>> dense = optax.apply_updates(params, updates)
    >>> print(bool(jnp.allclose(new['table'], dense['table'])), new['table'][2:6, 0])
    True [1. 0.9 1. 0.9]

    The same step from gradients with respect to the looked-up rows:

    >>> rows = params['table'][ids['table']]
    >>> g_rows = jax.grad(lambda r: jnp.sum((r @ params['w'] - 1.0) ** 2))(rows)
    >>> grads = {'table': sparse.SparseGrad(ids['table'], g_rows),
    ...          'w': jax.grad(loss)(params, ids)['w']}
    >>> new2, _ = sparse.apply_gradients(tx, grads, tx.init(params), params)
    >>> bool(jnp.allclose(new2['table'], new['table']))
    True
  """
  _check_tx(tx)
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  leaves = [leaf for _, leaf in leaves_with_path]
  names = [_geometry.path_str(path) for path, _ in leaves_with_path]
  try:
    grad_leaves = treedef.flatten_up_to(grads)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"sparse: grads must have the params' tree structure {treedef}, got "
      f"{jax.tree.structure(grads)}."
    ) from e
  rows, num_rows = {}, {}
  if touched is None:
    for i, g in enumerate(grad_leaves):
      if isinstance(g, SparseGrad):
        if not hasattr(leaves[i], "shape") or len(leaves[i].shape) == 0:
          raise ValueError(f"sparse: the parameter {names[i]} has a SparseGrad but no rows.")
        rows[i], grad_leaves[i] = _merge_sparse_grad(g, leaves[i], names[i], checked)
        num_rows[i] = int(leaves[i].shape[0])
    if not rows:
      raise ValueError(
        "sparse: apply_gradients got no TouchedRows and no SparseGrad in grads; pass the "
        "TouchedRows from sparse.gather, or SparseGrad(ids, values) for the tables."
      )
  else:
    if not isinstance(touched, TouchedRows):
      raise TypeError(
        f"sparse: touched must be the TouchedRows returned by sparse.gather, got {touched!r}."
      )
    if touched.treedef != treedef:
      raise ValueError(
        "sparse: touched was made by sparse.gather for a params tree of another structure "
        f"({touched.treedef}), not for these params ({treedef})."
      )
    for unique, members, v in zip(touched.unique, touched.leaves, touched.num_rows, strict=True):
      for i in members:
        rows[i], num_rows[i] = unique, v
  for i, unique in rows.items():
    g = grad_leaves[i]
    want = (unique.shape[0], *np.shape(leaves[i])[1:])
    if isinstance(g, SparseGrad) or tuple(np.shape(g)) != want:
      raise ValueError(
        f"sparse: the gradient for the table {names[i]} must have the shape of its gathered "
        f"rows {want} (take gradients with respect to the small params from sparse.gather), "
        f"got {g.values.shape if isinstance(g, SparseGrad) else np.shape(g)}."
      )
    # Padding slots and dropped out-of-range ids contribute nothing.
    grad_leaves[i] = jnp.where(_row_mask(unique, num_rows[i], g.ndim), g, 0)
  for i, g in enumerate(grad_leaves):
    if isinstance(g, SparseGrad):
      raise ValueError(f"sparse: SparseGrad for {names[i]} together with touched rows.")
  return _apply(tx, grad_leaves, opt_state, leaves, treedef, rows, num_rows, names)


def value_and_grad(
  fun: Callable[..., Any], *, has_aux: bool = False, checked: bool = False
) -> Callable[..., tuple[Any, Updates, TouchedRows]]:
  r"""``jax.value_and_grad`` with respect to the looked-up rows of the tables.

  ``fun(params, ids, *args)`` must look up every table only through the ids it is
  given (``params['table'][ids['table']]``, ``jnp.take``): it is called with the small
  params and the remapped ids of :func:`gather`.

  Args:
    fun: the loss, ``fun(params, ids, *args, **kwargs) -> scalar`` (or
      ``(scalar, aux)`` with ``has_aux``).
    has_aux: as in ``jax.value_and_grad``.
    checked: as in :func:`gather`.

  Returns:
    A function ``(params, ids, *args, **kwargs) -> (value, grads, touched)``, where
    ``grads`` and ``touched`` go to :func:`apply_gradients`.

  Example:
    >>> import functools
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> from optax_blockada import sparse
    >>> tx = ob.rowwise_adagrad(0.5)
    >>> def loss(params, ids, target):
    ...   return jnp.mean((params['emb'][ids['emb']].sum(-1) - target) ** 2)
    >>> @functools.partial(jax.jit, donate_argnums=(0, 1))
    ... def step(params, opt_state, ids, target):
    ...   value, grads, touched = sparse.value_and_grad(loss)(params, ids, target)
    ...   params, opt_state = sparse.apply_gradients(tx, grads, opt_state, params, touched)
    ...   return params, opt_state, value
    >>> params = {'emb': jnp.zeros((100_000, 8))}
    >>> opt_state = tx.init(params)
    >>> for t in range(40):  # the ids change every step: no retracing
    ...   ids = {'emb': jnp.array([t % 3, 3 + t % 2, t % 3])}
    ...   params, opt_state, value = step(params, opt_state, ids, jnp.ones(3))
    >>> print(f"{value:.4f}")
    0.0000
  """

  def wrapped(params, ids, *args, **kwargs):
    small, local, touched = gather(params, ids, checked=checked)
    value, grads = jax.value_and_grad(fun, has_aux=has_aux)(small, local, *args, **kwargs)
    return value, grads, touched

  return wrapped
