"""Tables: which leaves of the params are looked up by which ids, and the gather."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.typing import ArrayLike

from optax_blockada import _geometry
from optax_blockada._typing import Params
from optax_blockada.sparse._ids import _merge_ids
from optax_blockada.sparse._types import TouchedRows


def _take_rows(x: jax.Array, rows: jax.Array, mode: str) -> jax.Array:
  # In Explicit sharding mode the gathered rows of a sharded table are replicated (the
  # small table is what the loss and the transform see on every device).
  out = _geometry.replicated_sharding(x)
  if mode == "fill":
    return x.at[rows].get(mode="fill", fill_value=0, indices_are_sorted=True, out_sharding=out)
  return x.at[rows].get(mode="clip", indices_are_sorted=True, out_sharding=out)


def _put_rows(x: jax.Array, rows: jax.Array, values: jax.Array) -> jax.Array:
  # Explicit sharding mode: the table keeps its sharding.
  return x.at[rows].set(
    values.astype(x.dtype),
    mode="drop",
    indices_are_sorted=True,
    out_sharding=_geometry._explicit_sharding(x),
  )


def _row_mask(rows: jax.Array, num_rows: int, ndim: int) -> jax.Array:
  return (rows < num_rows).reshape(rows.shape + (1,) * (ndim - 1))


def _entry(k: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _key_parts(key: Any) -> tuple[str, ...]:
  if isinstance(key, str):
    return tuple(key.split(".")) if key else ()
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return (str(key),)
  if isinstance(key, tuple) and all(isinstance(k, (str, int, np.integer)) for k in key):
    return tuple(str(k) for k in key)
  raise TypeError(
    f"sparse: a key of ids must name a table by its path in the params: a string such as "
    f"'word' or 'embed.table', or a tuple of path entries; got {key!r}."
  )


def _resolve_tables(leaves_with_path, ids: Any):
  """Groups of table leaves: ``(key, leaf indices, num_rows)`` for every key of ids."""
  if not isinstance(ids, Mapping):
    raise TypeError(
      "sparse: ids must be a dict mapping a table's path in the params (e.g. 'word' or "
      f"'embed.table') to the integer ids looked up in it, got {type(ids).__name__}."
    )
  paths = [tuple(_entry(k) for k in path) for path, _ in leaves_with_path]
  names = [".".join(p) for p in paths]
  owner: dict[int, Any] = {}
  groups = []
  for key in ids:
    parts = _key_parts(key)
    members = tuple(i for i, p in enumerate(paths) if p[: len(parts)] == parts)
    if not members:
      raise ValueError(
        f"sparse: ids has the key {key!r}, but no parameter lies at that path. The params "
        f"have: {names}."
      )
    rows = set()
    for i in members:
      if i in owner:
        raise ValueError(
          f"sparse: the parameter {names[i]} is named by two keys of ids, {owner[i]!r} and "
          f"{key!r}; give each table one key (a key may name a subtree of tables that "
          "share ids)."
        )
      owner[i] = key
      leaf = leaves_with_path[i][1]
      if not hasattr(leaf, "shape") or len(leaf.shape) == 0:
        raise ValueError(
          f"sparse: the parameter {names[i]} named by ids key {key!r} is not a table with "
          f"rows along axis 0 (shape {getattr(leaf, 'shape', None)})."
        )
      rows.add(int(leaf.shape[0]))
    if len(rows) != 1:
      shapes = {names[i]: tuple(leaves_with_path[i][1].shape) for i in members}
      raise ValueError(
        f"sparse: ids key {key!r} names tables with different row counts {shapes}; tables "
        "that share ids must have the same number of rows (axis 0). Use one key per table."
      )
    groups.append((key, members, rows.pop()))
  return groups, names


def gather(
  params: Params, ids: Mapping[Any, ArrayLike], *, checked: bool = False
) -> tuple[Params, dict[Any, jax.Array], TouchedRows]:
  r"""Gathers the rows a batch looks up: the small tables to differentiate.

  For every key of ``ids`` (a table's path in ``params``; a key naming a subtree
  covers every table in it, which then share the ids), the ids (an integer array or a
  pytree of them) are merged into sorted unique ids :math:`u` of static size
  :math:`n` (the number of ids), padded with :math:`V`; the table is replaced by
  ``table[u]`` of shape ``(n,) + table.shape[1:]`` (zeros at padding), and every id
  :math:`i` by its position in :math:`u`. Then ``small_table[local_ids] ==
  table[ids]``, and the gradient of a loss with respect to the small table is the
  gradient with respect to the looked-up rows, duplicates summed.

  Args:
    params: the parameters, any pytree (a dict, an ``nnx.State``); tables have their
      rows along axis 0.
    ids: a dict ``{path: ids}``; ``path`` is a string (``'word'``,
      ``'embed.embedding'``) or a tuple of path entries.
    checked: raise on ids outside ``[0, V)`` (see the module docstring); with
      ``False`` they are dropped (they look up zeros and update nothing).

  Returns:
    ``(small_params, local_ids, touched)``: ``params`` with the tables replaced by
    their gathered rows, ``ids`` remapped into them (same structure), and the
    :class:`TouchedRows` that :func:`apply_gradients` scatters back to.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada import sparse
    >>> params = {'table': jnp.arange(20.0).reshape(10, 2), 'scale': jnp.ones(())}
    >>> ids = {'table': jnp.array([7, 2, 7])}
    >>> small, local, touched = sparse.gather(params, ids)
    >>> print(small['table'])  # rows 2 and 7, then padding
    [[ 4.  5.]
     [14. 15.]
     [ 0.  0.]]
    >>> print(local['table'])
    [1 0 1]
    >>> bool((small['table'][local['table']] == params['table'][ids['table']]).all())
    True
  """
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  groups, names = _resolve_tables(leaves_with_path, ids)
  small = [leaf for _, leaf in leaves_with_path]
  local, uniques = {}, []
  for key, members, num_rows in groups:
    id_leaves, id_def = jax.tree.flatten(ids[key])
    name = ", ".join(names[i] for i in members)
    if not id_leaves:
      raise ValueError(f"sparse: ids[{key!r}] holds no array of ids.")
    if any(isinstance(a, (int, np.integer)) for a in id_leaves):
      raise TypeError(
        f"sparse: ids[{key!r}] holds Python ints (a list or tuple of ids?), which would be "
        f"read as separate lookups of single rows. Pass an integer array: "
        f"jnp.asarray(ids[{key!r}], jnp.int32)."
      )
    unique, local_leaves = _merge_ids(id_leaves, num_rows, name, checked)
    local[key] = id_def.unflatten(local_leaves)
    for i in members:
      small[i] = _take_rows(small[i], unique, "fill")
    uniques.append(unique)
  touched = TouchedRows(
    tuple(uniques),
    tuple(k for k, _, _ in groups),
    tuple(m for _, m, _ in groups),
    tuple(v for _, _, v in groups),
    treedef,
  )
  return treedef.unflatten(small), local, touched
