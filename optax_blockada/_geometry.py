"""Geometry: how a leaf of a pytree is cut into rows (feature vectors).

A leaf ``x`` has **feature axes** ``F``. A *row* is one fibre of ``x`` along ``F``
(its size is the product of ``F``'s sizes); rows are indexed by the remaining axes.

Default: the last axis when ``x.ndim >= 2`` (a ``(V, d)`` table has ``V`` rows of size
``d``), and no axis when ``x.ndim <= 1`` (every scalar is its own row). ``F = ()`` on
every leaf gives per-coordinate (diagonal) statistics.

A *feature-axes spec* is one of:

* ``None``: the default rule above;
* an ``int`` or a tuple/list of ``int`` (possibly empty): the same axes for every leaf;
* a pytree whose structure is a prefix of the updates tree, with the above as leaves;
* a callable ``(path, leaf) -> axes``, ``path`` being a JAX key path.

A tuple or list of ints is always read as axes, never as a pytree prefix; use a callable
to give per-leaf axes to a tuple-structured parameter tree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

Axes: TypeAlias = int | Sequence[int] | None
FeatureAxesSpec: TypeAlias = Axes | Any | Callable[[Any, Any], Axes]


def _is_axes(x: Any) -> bool:
  if x is None:
    return True
  if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
    return True
  return isinstance(x, (tuple, list)) and all(
    isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in x
  )


class _Box:
  """An opaque (non-pytree) holder, so axes survive tree maps as single leaves."""

  __slots__ = ("value",)

  def __init__(self, value: Any):
    self.value = value


def path_str(path: Any) -> str:
  """A readable name for a JAX key path, e.g. ``['embed']['table']``."""
  return jax.tree_util.keystr(tuple(path)) if path else "<root>"


def default_feature_axes(ndim: int) -> tuple[int, ...]:
  """The default rule: the last axis for ``ndim >= 2``, none otherwise."""
  return (ndim - 1,) if ndim >= 2 else ()


def _normalize(axes: Any, path: Any, leaf: Any, name: str) -> tuple[int, ...]:
  shape = tuple(leaf.shape)
  ndim = len(shape)
  if axes is None:
    return default_feature_axes(ndim)
  if not _is_axes(axes):
    raise TypeError(
      f"{name}: expected None, an int or a tuple of ints for the leaf at "
      f"{path_str(path)}, got {axes!r}."
    )
  seq = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)
  out = []
  for a in seq:
    a = int(a)
    if not -ndim <= a < ndim:
      raise ValueError(
        f"{name}: axis {a} is out of range for the leaf at {path_str(path)} "
        f"with shape {shape} (ndim {ndim}). Use axes in [-{ndim}, {ndim}), or give "
        "per-leaf axes with a pytree prefix of specs or a callable "
        "(path, leaf) -> axes."
      )
    out.append(a % ndim)
  if len(set(out)) != len(out):
    raise ValueError(
      f"{name}: duplicated axes {tuple(seq)} for the leaf at {path_str(path)} "
      f"with shape {shape}; each feature axis may appear once."
    )
  return tuple(sorted(out))


def resolve_feature_axes(
  spec: FeatureAxesSpec, tree: Any, *, name: str = "feature_axes"
) -> list[tuple[int, ...]]:
  """Resolves ``spec`` against ``tree``: one tuple of non-negative axes per leaf.

  The list follows ``jax.tree.leaves(tree)`` order. Works on arrays and on
  ``jax.ShapeDtypeStruct`` leaves alike.
  """
  leaves_with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
  if callable(spec) and not _is_axes(spec):
    raw = [spec(path, leaf) for path, leaf in leaves_with_path]
  elif _is_axes(spec):
    raw = [spec] * len(leaves_with_path)
  else:
    try:
      boxed = jax.tree.map(
        lambda s, sub: _Box((s, len(jax.tree.leaves(sub)))), spec, tree, is_leaf=_is_axes
      )
    except (ValueError, TypeError) as e:
      raise ValueError(
        f"{name}: a pytree of specs must be a prefix of the updates/params tree "
        f"(tree structure {jax.tree.structure(tree)}), got {spec!r}. Give one spec "
        "per subtree, or a callable (path, leaf) -> axes."
      ) from e
    raw = []
    for box in jax.tree.leaves(boxed):
      value, count = box.value
      raw.extend([value] * count)
  return [
    _normalize(axes, path, leaf, name)
    for axes, (path, leaf) in zip(raw, leaves_with_path, strict=True)
  ]


def row_shape(shape: Sequence[int], axes: tuple[int, ...]) -> tuple[int, ...]:
  """The per-row state shape: ``shape`` with the feature axes set to 1 (keepdims)."""
  return tuple(1 if i in axes else s for i, s in enumerate(shape))


def reduce_rows(x: jax.Array, axes: tuple[int, ...], reduction: str) -> jax.Array:
  """Reduces ``x`` over the feature axes with keepdims; identity when ``axes == ()``."""
  if not axes:
    return x
  if reduction == "mean":
    return jnp.mean(x, axis=axes, keepdims=True)
  return jnp.sum(x, axis=axes, keepdims=True)


def row_is_nonzero(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Boolean per row (keepdims): does the row hold any non-zero entry."""
  nonzero = x != 0
  return jnp.any(nonzero, axis=axes, keepdims=True) if axes else nonzero


def per_row_fields(node: Any) -> tuple[str, ...] | None:
  """The per-row fields of one of this library's optimizer states, else ``None``.

  The states of this library declare, in a class attribute ``PER_ROW_FIELDS``, which
  of their fields hold **per-row state**: a pytree with the params' structure whose
  leaf for a param ``p`` with feature axes ``F`` has shape
  ``row_shape(p.shape, F) + trailing`` (the param's rank, feature axes of size 1, then
  any per-row block axes, e.g. ``(V, 1)`` or ``(V, 1, n_blocks, k, k)`` for a
  ``(V, d)`` table). Such leaves can be gathered and scattered by row (the sparse path)
  and sharded like the param along its row axes (the sharding helper). A ``None`` in
  place of a leaf means the field is unused for that param. Every other field holds
  shared state (per-leaf matrices, counters), which the sparse path passes through
  whole and the sharding helper replicates.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> from optax_blockada._geometry import per_row_fields
    >>> per_row_fields(ob.scale_by_rowwise_adagrad().init(jnp.zeros((4, 3))))
    ('sum_of_squares',)
    >>> per_row_fields((1, 2)) is None
    True
  """
  if isinstance(node, tuple) and hasattr(type(node), "_fields"):
    return getattr(type(node), "PER_ROW_FIELDS", None)
  return None
