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

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from optax_blockada import _per_row

Axes: TypeAlias = int | Sequence[int] | None
FeatureAxesSpec: TypeAlias = Axes | Any | Callable[[Any, Any], Axes]
AxisNames: TypeAlias = str | Sequence[str] | None
AxisNameSpec: TypeAlias = AxisNames | Any | Callable[[Any, Any], AxisNames]


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


def _resolve_per_leaf(
  spec: Any, tree: Any, is_value: Callable[[Any], bool], name: str
) -> list[tuple[Any, Any, Any]]:
  """Resolves a per-leaf spec: ``(raw value, path, leaf)`` per leaf of ``tree``.

  ``spec`` is a value (``is_value(spec)``), a callable ``(path, leaf) -> value`` or a
  pytree prefix of ``tree`` with values as leaves.
  """
  leaves_with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
  if callable(spec) and not is_value(spec):
    raw = [spec(path, leaf) for path, leaf in leaves_with_path]
  elif is_value(spec):
    raw = [spec] * len(leaves_with_path)
  else:
    try:
      boxed = jax.tree.map(
        lambda s, sub: _Box((s, len(jax.tree.leaves(sub)))), spec, tree, is_leaf=is_value
      )
    except (ValueError, TypeError) as e:
      raise ValueError(
        f"{name}: a pytree of specs must be a prefix of the updates/params tree "
        f"(tree structure {jax.tree.structure(tree)}), got {spec!r}. Give one spec "
        "per subtree, or a callable (path, leaf) -> spec."
      ) from e
    raw = []
    for box in jax.tree.leaves(boxed):
      value, count = box.value
      raw.extend([value] * count)
  return [(value, path, leaf) for value, (path, leaf) in zip(raw, leaves_with_path, strict=True)]


def resolve_feature_axes(
  spec: FeatureAxesSpec, tree: Any, *, name: str = "feature_axes"
) -> list[tuple[int, ...]]:
  """Resolves ``spec`` against ``tree``: one tuple of non-negative axes per leaf.

  The list follows ``jax.tree.leaves(tree)`` order. Works on arrays and on
  ``jax.ShapeDtypeStruct`` leaves alike.
  """
  return [
    _normalize(axes, path, leaf, name)
    for axes, path, leaf in _resolve_per_leaf(spec, tree, _is_axes, name)
  ]


def is_axis_names(x: Any) -> bool:
  if x is None or isinstance(x, str):
    return True
  return isinstance(x, (tuple, list)) and all(isinstance(a, str) for a in x)


def resolve_axis_names(
  spec: AxisNameSpec, tree: Any, *, name: str = "axis_name"
) -> list[tuple[str, ...] | None]:
  """Resolves an ``axis_name`` spec: per leaf, a tuple of mesh axis names or ``None``.

  ``spec`` is ``None``, a mesh axis name, a tuple of names, a pytree prefix of ``tree``
  with those as leaves, or a callable ``(path, leaf) -> names``; as for feature axes, a
  tuple of strings is always read as names, never as a pytree prefix.
  """
  out = []
  for value, path, _ in _resolve_per_leaf(spec, tree, is_axis_names, name):
    if not is_axis_names(value):
      raise TypeError(
        f"{name}: expected None, a mesh axis name or a tuple of names for the leaf at "
        f"{path_str(path)}, got {value!r}."
      )
    if value is None:
      out.append(None)
    else:
      names = (value,) if isinstance(value, str) else tuple(value)
      out.append(names or None)
  return out


def check_row_size(path: Any, shape: Sequence[int], axes: tuple[int, ...], name: str) -> None:
  """Raises ``ValueError`` for a leaf with rows but empty feature axes (e.g. ``(8, 0)``).

  Such rows hold no coordinates: a row statistic would be a mean over nothing (NaN)
  and a block of size 0 has no root.
  """
  if axes and math.prod(shape[a] for a in axes) == 0 and math.prod(shape) == 0:
    rows = math.prod(s for i, s in enumerate(shape) if i not in axes)
    if rows:
      raise ValueError(
        f"{name}: the leaf at {path_str(path)} has shape {tuple(shape)}: its {rows} rows "
        f"along feature axes {axes} are empty, and Adagrad has no statistic for an empty "
        "row. Remove the leaf, or keep it out of this transform with optax.masked or "
        "optax.partition."
      )


def row_shape(shape: Sequence[int], axes: tuple[int, ...]) -> tuple[int, ...]:
  """The per-row state shape: ``shape`` with the feature axes set to 1 (keepdims)."""
  return tuple(1 if i in axes else s for i, s in enumerate(shape))


def reduce_rows(
  x: jax.Array,
  axes: tuple[int, ...],
  reduction: str,
  axis_name: tuple[str, ...] | None = None,
) -> jax.Array:
  """Reduces ``x`` over the feature axes with keepdims; identity when ``axes == ()``.

  With ``axis_name`` (inside ``shard_map``, the feature axes split over those mesh
  axes) the local sums are ``psum``-ed and a mean divides by the global row size.
  """
  if not axes:
    return x
  if axis_name is None:
    if reduction == "mean":
      return jnp.mean(x, axis=axes, keepdims=True)
    return jnp.sum(x, axis=axes, keepdims=True)
  total = jax.lax.psum(jnp.sum(x, axis=axes, keepdims=True), axis_name)
  if reduction == "mean":
    local_size = math.prod(x.shape[a] for a in axes)
    return total / (local_size * jax.lax.axis_size(axis_name))
  return total


def row_is_nonzero(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Boolean per row (keepdims): does the row hold any non-zero entry."""
  nonzero = x != 0
  return jnp.any(nonzero, axis=axes, keepdims=True) if axes else nonzero


def row_spec(spec: Any, param_shape: Sequence[int], state_shape: Sequence[int]) -> Any:
  """The partition spec of a per-row state leaf, from its param's spec.

  Axis ``i < ndim(param)`` keeps the param's entry where the state has the param's
  size there (row axes) and gets ``None`` where it does not (feature axes reduced to
  1); trailing per-row block axes get ``None``. Returns a ``PartitionSpec``.
  """
  param_shape, state_shape = tuple(param_shape), tuple(state_shape)
  entries = tuple(spec)
  if len(entries) > len(param_shape):
    raise ValueError(
      f"the partition spec {spec} has {len(entries)} entries, more than the rank of "
      f"the param of shape {param_shape}."
    )
  entries = entries + (None,) * (len(param_shape) - len(entries))
  out = [
    entries[i] if i < len(param_shape) and state_shape[i] == param_shape[i] else None
    for i in range(len(state_shape))
  ]
  return P(*out)


def _explicit_sharding(param: Any) -> Any:
  """The param's ``NamedSharding`` if it is sharded over Explicit mesh axes, else None."""
  try:
    sharding = jax.typeof(param).sharding
  except (TypeError, AttributeError):
    return None
  if not isinstance(sharding, jax.sharding.NamedSharding) or not sharding.mesh.explicit_axes:
    return None
  concrete = getattr(param, "sharding", None)
  if isinstance(param, jax.Array) and isinstance(concrete, jax.sharding.NamedSharding):
    # A concrete array outside ``jit``: keep its concrete mesh (no mesh context needed).
    return concrete
  return sharding


def replicated_sharding(x: Any) -> Any:
  """``NamedSharding(mesh, P())`` on ``x``'s Explicit mesh, else ``None``.

  For shared state computed from a row-sharded ``x`` (e.g. a sum over its rows) in
  Explicit sharding mode, where JAX asks for the output sharding of such a
  contraction: pass it as ``out_sharding`` (``None`` leaves JAX's default).
  """
  sharding = _explicit_sharding(x)
  return None if sharding is None else jax.sharding.NamedSharding(sharding.mesh, P())


def row_state_full(param: Any, shape: Sequence[int], fill_value: Any, dtype: Any) -> jax.Array:
  """``jnp.full(shape, fill_value, dtype)`` for the per-row state of ``param``.

  ``fill_value`` is a scalar or an array broadcastable to ``shape`` (e.g. ``a * I``
  of shape ``(k, k)`` for block state).

  ``shape`` is the param's rank with feature axes reduced to 1, then optional per-row
  block axes (see ``optax_blockada._per_row``). When ``param`` carries an Explicit-mode
  sharding (``jax.make_mesh``'s default axes), the state is sharded like the param
  along its row axes (:func:`row_spec`), so its sharding type is the same after
  ``init`` and after ``update``. Otherwise (Auto mode, one device, abstract params
  without sharding) it is plain ``jnp.full``; place it with ``out_shardings`` and
  ``optax_blockada.sharding.state_shardings``.
  """
  sharding = _explicit_sharding(param)
  if sharding is None:
    return jnp.full(shape, fill_value, dtype)
  mesh = sharding.mesh
  fill_value = jnp.asarray(fill_value, dtype)
  if isinstance(mesh, jax.sharding.Mesh) and not isinstance(fill_value, jax.core.Tracer):
    # Outside ``jit``: put the fill value on the param's mesh, so no mesh context is needed.
    fill_value = jax.device_put(fill_value, jax.sharding.NamedSharding(mesh, P()))
  spec = row_spec(sharding.spec, param.shape, shape)
  return jnp.full(shape, fill_value, dtype, out_sharding=jax.sharding.NamedSharding(mesh, spec))


def per_row_fields(node: Any) -> tuple[str, ...] | None:
  """The per-row fields of a registered optimizer state, else ``None`` (see ``_per_row``).

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> from optax_blockada._geometry import per_row_fields
    >>> per_row_fields(ob.scale_by_rowwise_adagrad().init(jnp.zeros((4, 3))))
    ('sum_of_squares',)
    >>> per_row_fields((1, 2)) is None
    True
  """
  entry = _per_row.lookup(node)
  return None if entry is None else entry.fields


# Inside the owner-routed sparse step (optax_blockada.routed) every device updates the
# rows of its own shard of a table; a statistic summed over all the rows of a leaf (block
# Adagrad's shared matrices, its fallback counters) must then be summed over the mesh axes
# the rows are split over. Keyed by the leaf's key path (``jax.tree_util.keystr``), which
# optax.chain, optax.partition, optax.masked and optax.inject_hyperparams keep.
_SPLIT_ROWS: contextvars.ContextVar[Mapping[str, tuple[str, ...]] | None] = contextvars.ContextVar(
  "optax_blockada_split_rows", default=None
)


@contextlib.contextmanager
def rows_split_over(axes_by_path: Mapping[str, tuple[str, ...]]) -> Iterator[None]:
  """Within this context, the rows of the leaf at each key path are split over mesh axes.

  Used while tracing a transform's ``update`` inside ``shard_map``, where each device
  holds some rows of those leaves: :func:`sum_over_rows` then ``psum``-s over the axes.
  """
  token = _SPLIT_ROWS.set(dict(axes_by_path))
  try:
    yield
  finally:
    _SPLIT_ROWS.reset(token)


def split_axes(path: Any) -> tuple[str, ...] | None:
  """The mesh axes the rows of the leaf at ``path`` are split over (see :func:`rows_split_over`)."""
  axes = (_SPLIT_ROWS.get() or {}).get(jax.tree_util.keystr(tuple(path)))
  if not axes:
    return None
  return (axes,) if isinstance(axes, str) else tuple(axes)  # hashable: a static argument


def sum_over_split_rows(x: jax.Array, axes: tuple[str, ...] | None) -> jax.Array:
  """``x`` ``psum``-ed over ``axes`` (from :func:`split_axes`); the identity for ``None``."""
  return x if not axes else jax.lax.psum(x, axes)


def sum_over_rows(x: jax.Array, path: Any) -> jax.Array:
  """``x``, a sum over the local rows of the leaf at ``path``, summed over all its rows.

  The identity unless the leaf's rows are split over mesh axes (see
  :func:`rows_split_over`), where the devices' partial sums are ``psum``-ed.
  """
  return sum_over_split_rows(x, split_axes(path))
