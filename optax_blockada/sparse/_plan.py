"""Optimizer state: which leaves are per-row state of which table (the state plan)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_blockada import _geometry, _per_row


class _Mark:
  """A leaf marker: the table (params leaf index) whose rows a state leaf follows."""

  __slots__ = ("table",)

  def __init__(self, table: int | None):
    self.table = table


def _state_marks(opt_state: Any, treedef: Any, tables: set[int]) -> list[int | None]:
  """For every leaf of ``opt_state``: the table whose per-row state it is, or None."""

  def per_row(value, path):
    try:
      subtrees = treedef.flatten_up_to(value)
    except (ValueError, TypeError) as e:
      raise ValueError(
        f"sparse: the per-row field {_owner(opt_state, path)} of the optimizer state "
        f"does not have the params' tree structure ({treedef}). The sparse path supports "
        "transforms applied to the whole params tree (possibly through optax.chain, "
        "optax.partition, optax.masked, optax.inject_hyperparams)."
      ) from e
    return treedef.unflatten(
      [
        jax.tree.map(lambda _, i=i: _Mark(i if i in tables else None), sub)
        for i, sub in enumerate(subtrees)
      ]
    )

  def none(value, path):
    return jax.tree.map(lambda _: _Mark(None), value)

  def other(node, path):
    if jax.tree.structure(node).num_nodes == 1:  # a leaf, or an empty container
      return none(node, path)
    return _per_row.RECURSE

  registered = lambda x: _per_row.lookup(x) is not None
  for node in jax.tree.leaves(opt_state, is_leaf=registered):
    entry = _per_row.lookup(node)
    if entry is not None and not entry.lazily_exact:
      raise ValueError(
        f"sparse: the optimizer state holds a {type(node).__name__}, registered as not "
        "lazily exact (register_per_row_state(..., lazily_exact=False)): its rows with "
        "zero gradient change every step, which a sparse update cannot reproduce. Use "
        "the dense step."
      )
  marked = _per_row.map_state(opt_state, per_row=per_row, shared=none, other=other)
  return [m.table for m in jax.tree.leaves(marked)]


def _child(node: Any, key: Any) -> Any:
  if isinstance(key, jax.tree_util.GetAttrKey):
    return getattr(node, key.name)
  if isinstance(key, jax.tree_util.SequenceKey):
    return node[key.idx]
  if isinstance(key, jax.tree_util.DictKey):
    return node[key.key]
  raise KeyError(key)


def _owner(opt_state: Any, path: Any) -> str:
  """``StateClass.field`` of the innermost NamedTuple on ``path``."""
  node, owner = opt_state, "a leaf"
  for key in path:
    if isinstance(node, tuple) and hasattr(node, "_fields"):
      if isinstance(key, jax.tree_util.GetAttrKey):
        owner = f"{type(node).__name__}.{key.name}"
      elif isinstance(key, jax.tree_util.SequenceKey):
        owner = f"{type(node).__name__}.{node._fields[key.idx]}"
    try:
      node = _child(node, key)
    except (KeyError, IndexError, AttributeError, TypeError):
      break
  return owner


def _struct(x: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))


def _state_plan(
  tx: optax.GradientTransformation,
  opt_state: Any,
  leaves: list[Any],
  treedef: Any,
  num_rows: dict[int, int],
  names: list[str],
) -> list[int | None]:
  """Which state leaves to gather and scatter by the rows of which table.

  Checks the state against ``tx.init(params)`` and against ``tx.init`` of params whose
  tables have one more row (abstractly): a state leaf whose shape follows a table's row
  count must be declared per-row state, else the transform is not lazily exact.
  """
  expected = jax.eval_shape(tx.init, treedef.unflatten([_struct(p) for p in leaves]))
  probe = jax.eval_shape(
    tx.init,
    treedef.unflatten(
      [
        jax.ShapeDtypeStruct((num_rows[i] + 1, *np.shape(p)[1:]), jnp.result_type(p))
        if i in num_rows
        else _struct(p)
        for i, p in enumerate(leaves)
      ]
    ),
  )
  with_path, sdef = jax.tree_util.tree_flatten_with_path(opt_state)
  expected_leaves, edef = jax.tree.flatten(expected)
  probe_leaves, pdef = jax.tree.flatten(probe)
  mismatch = edef != sdef or any(
    np.shape(s) != e.shape for (_, s), e in zip(with_path, expected_leaves, strict=True)
  )
  if mismatch:
    raise ValueError(
      "sparse: opt_state does not match tx.init(params): was it made by this transform for "
      f"these params? opt_state: {sdef}; tx.init(params): {edef}."
    )
  if pdef != sdef:
    raise ValueError(
      "sparse: the optimizer state's tree structure depends on the tables' row counts, "
      "which the sparse path cannot handle; use the dense step."
    )
  marks = _state_marks(opt_state, treedef, set(num_rows))
  for (path, leaf), p, table in zip(with_path, probe_leaves, marks, strict=True):
    shape = tuple(np.shape(leaf))
    if table is not None:
      v = num_rows[table]
      if not (shape and shape[0] == v and tuple(p.shape) == (v + 1, *shape[1:])):
        raise ValueError(
          f"sparse: the per-row state {_owner(opt_state, path)} (at "
          f"{_geometry.path_str(path)}) of the table {names[table]} has shape {shape}, "
          f"which does not follow the table's {v} rows along axis 0. Sparse updates need "
          "tables with their rows along axis 0: the transform's feature axes for a table "
          "must not include axis 0."
        )
    elif shape != tuple(p.shape):
      raise ValueError(
        f"sparse: the optimizer state {_owner(opt_state, path)} (at "
        f"{_geometry.path_str(path)}, shape {shape}) keeps a value for every row of a "
        "table: a stateful transform that is not lazily exact (momentum, EMAs, Adam's "
        "moments, MultiSteps) is chained; its rows with zero gradient change every step, "
        "which a sparse update cannot reproduce. Use the dense step, or apply that "
        "transform to non-table leaves only with optax.partition."
      )
  return marks
