r"""Which fields of an optimizer state hold per-row state: one typed registry, one walker.

A **per-row field** of a state class is a pytree with the params' structure whose leaf
for a param ``p`` with feature axes ``F`` has shape ``row_shape(p.shape, F) + trailing``:
the param's rank with feature axes of size 1 (or of full size, for a per-coordinate
accumulator), then any per-row block axes (``(V, 1)``, ``(V, d)`` or
``(V, 1, n_blocks, k, k)`` for a ``(V, d)`` table). Registering a class says two things,
kept apart:

* ``fields``: the shape fact above. The sharding helper
  (:mod:`optax_blockada.sharding`) shards such leaves like their param along its row
  axes; every other field of the state (per-leaf matrices, counters) is replicated.
* ``lazily_exact``: a row whose gradient is zero gets a zero update and leaves its
  entries of these fields unchanged, so a step on the gathered looked-up rows equals the
  dense step on them. The sparse path (:mod:`optax_blockada.sparse`) gathers and
  scatters these fields by row only for states registered with ``lazily_exact=True``.

This library's states and ``optax.adagrad``'s ``ScaleByRssState`` are registered here;
:func:`register_per_row_state` registers others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

__all__ = ["RECURSE", "PerRowFields", "lookup", "map_state", "register_per_row_state"]


@dataclasses.dataclass(frozen=True)
class PerRowFields:
  """The registration of one state class (see the module docstring)."""

  fields: tuple[str, ...]
  lazily_exact: bool


_REGISTRY: dict[type, PerRowFields] = {}


def register_per_row_state(cls: type, fields: Sequence[str], *, lazily_exact: bool = True) -> None:
  """Declares the per-row fields of the NamedTuple state class ``cls``.

  Args:
    cls: a ``NamedTuple`` class of optimizer state.
    fields: the names of its fields that hold per-row state (a pytree with the params'
      structure of leaves ``row_shape(p.shape, F) + trailing``); may be empty for a
      state with per-leaf fields only.
    lazily_exact: whether a zero-gradient row gets a zero update and keeps its entries
      of these fields (what lets the sparse path update the looked-up rows only).

  Raises:
    TypeError: ``cls`` is not a NamedTuple class.
    ValueError: a name in ``fields`` is not one of its fields, or ``cls`` is already
      registered with other fields.

  Example:
    >>> from typing import NamedTuple
    >>> import jax
    >>> from optax_blockada import register_per_row_state
    >>> class MyState(NamedTuple):
    ...   count: jax.Array
    ...   row_norms: dict
    >>> register_per_row_state(MyState, ['row_norms'])
  """
  if not (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")):
    raise TypeError(
      f"register_per_row_state: cls must be a NamedTuple class of optimizer state, got {cls!r}."
    )
  fields = tuple(fields)
  unknown = [f for f in fields if f not in cls._fields]
  if unknown:
    raise ValueError(
      f"register_per_row_state: {cls.__name__} has no field(s) {unknown}; its fields are "
      f"{cls._fields}."
    )
  entry = PerRowFields(fields, bool(lazily_exact))
  if _REGISTRY.get(cls, entry) != entry:
    raise ValueError(
      f"register_per_row_state: {cls.__name__} is already registered as {_REGISTRY[cls]}."
    )
  _REGISTRY[cls] = entry


def lookup(node: Any) -> PerRowFields | None:
  """The registration of ``node``'s class, or ``None`` if it is not a registered state.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> from optax_blockada._per_row import lookup
    >>> lookup(ob.scale_by_rowwise_adagrad().init(jnp.zeros((4, 3))))
    PerRowFields(fields=('sum_of_squares',), lazily_exact=True)
    >>> lookup((1, 2)) is None
    True
  """
  return _REGISTRY.get(type(node))


# optax.adagrad's accumulator has the params' shapes (per coordinate) and is lazily
# exact: a zero gradient adds nothing and gets a zero update.
register_per_row_state(optax.ScaleByRssState, ("sum_of_squares",))

# Returned by ``other`` in :func:`map_state` to descend into a node's children.
RECURSE = object()


def map_state(
  node: Any,
  *,
  per_row: Callable[[Any, tuple[Any, ...]], Any],
  shared: Callable[[Any, tuple[Any, ...]], Any],
  other: Callable[[Any, tuple[Any, ...]], Any],
  path: tuple[Any, ...] = (),
) -> Any:
  """Rebuilds an optimizer state, node by node: the one walk over states.

  Each registered state (:func:`lookup`) is rebuilt field by field: a per-row field's
  value goes to ``per_row(value, path)``, any other field's to ``shared(value, path)``.
  Any other node goes to ``other(node, path)``, whose result is used unless it is
  :data:`RECURSE`, in which case the walk goes on into the node's children (chains,
  partitions, injections, wrappers). ``other`` must not return ``RECURSE`` for a leaf.

  Args:
    node: an optimizer state (or any node of one).
    per_row: maps a per-row field (a tree with the params' structure).
    shared: maps any other field of a registered state.
    other: maps, or returns ``RECURSE`` for, a node outside registered states.
    path: the key path of ``node`` (for messages).

  Returns:
    The state with every node mapped.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_blockada as ob
    >>> from optax_blockada._per_row import RECURSE, map_state
    >>> state = optax.chain(optax.clip(1.0), ob.scale_by_block_adagrad()).init(jnp.zeros((2, 3)))
    >>> map_state(
    ...   state,
    ...   per_row=lambda v, path: 'row',
    ...   shared=lambda v, path: 'shared',
    ...   other=lambda v, path: RECURSE if v == () or isinstance(v, tuple) else 'other',
    ... )[1]
    BlockAdagradState(count='shared', block_sums='row', fallbacks='shared')
  """
  entry = lookup(node)
  if entry is not None:
    values = []
    for name in node._fields:
      value = getattr(node, name)
      field_path = (*path, jax.tree_util.GetAttrKey(name))
      values.append((per_row if name in entry.fields else shared)(value, field_path))
    return type(node)(*values)
  out = other(node, path)
  if out is not RECURSE:
    return out
  with_path, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
  return treedef.unflatten(
    [
      map_state(child, per_row=per_row, shared=shared, other=other, path=(*path, *sub))
      for sub, child in with_path
    ]
  )
