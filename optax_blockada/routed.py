r"""Owner-routed sparse updates: tables sharded along rows, work per device ~ local batch.

Tables of :math:`10^8`-:math:`10^{10}` rows are split along their rows over many
devices, and each device trains on its own slice of the batch. The sparse step of
:mod:`optax_blockada.sparse` under ``jax.jit`` on such tables is correct and its cost
does not grow with the number of rows :math:`V`, but JAX's SPMD partitioner makes every
device gather, hold and update *all* the rows of the *global* batch (an all-gather of
the ids, all-reduces of the rows, their state and their gradients): with a global batch
that grows with the device count, adding devices adds no capacity.

This module routes every id to the shard that owns its row, as TorchRec's row-wise
sharding and TPU embedding (SparseCore) do, inside one ``jax.shard_map``. On each device:

1. **dedup**: the local ids of each table are merged into sorted unique ids (static size
   :math:`n`, the number of local ids); row :math:`r` of a table of :math:`V` rows split
   into :math:`S` shards is owned by shard :math:`\lfloor r / (V/S) \rfloor`;
2. **route ids**: each device sends its unique ids to their owners with one
   ``all_to_all`` of a static ``(S, capacity)`` buffer (``capacity`` ids per
   destination);
3. **look up**: owners gather the requested rows of their shard and send them back
   (``all_to_all``); the device now holds its batch's rows, a small table as in
   :func:`optax_blockada.sparse.gather`;
4. **loss and gradient** where the batch lives: ``loss_fn(small_params, local_ids,
   *args)`` on the device's slice of the batch; the loss is averaged (``reduction=
   'mean'``) or summed (``'sum'``) over devices, and so are the gradients;
5. **route gradients** back to the owners (``all_to_all``); owners merge the duplicates
   from all devices (a segment sum), run the **same optax transform** on their rows and
   their own rows of the per-row state, and scatter them in place.

Communication and work per device are proportional to the local batch: ``S x capacity``
ids and rows per ``all_to_all``, with ``capacity`` about ``2 n / S`` by default
(:func:`default_capacity`), independent of :math:`V` and of the number of devices.

**Exact, never lossy.** If some device has more distinct ids for one shard than
``capacity`` (a skewed batch, a hot shard), the whole step runs instead with a capacity
of ``n`` per destination, which cannot overflow, inside the same jitted step
(``lax.cond`` on a flag all devices agree on). That branch moves as much as the
replicated path. The step returns :class:`RoutingStats`: whether it overflowed, and the
largest number of distinct ids one device sent to one shard, to choose ``capacity``
(:func:`suggest_capacity` does it from sample batches).

**Layout.** The mesh's axes named by ``row_axes`` split the tables' rows (every table
with ``P(row_axes, None, ...)``), the other mesh axes hold replicas of the tables; the
batch (every array argument and the ids, along axis 0) is split over all the mesh's
devices; other params are replicated. Per-row optimizer state is sharded like its table
(:func:`optax_blockada.sharding.state_partition_specs`). With replica axes (e.g. tables
split over ``'rows'`` of a ``data x rows`` mesh) the owners' gradients are also
gathered over the replicas, so every replica applies the same updates: its work then
grows with the number of replicas; split the tables over all the axes where that
matters.

**Which transforms.** Those that are exact in :mod:`optax_blockada.sparse`, with one
difference: each owner sees only its own rows, so a quantity summed over all the rows of
a table must be summed over the shards. The library's block Adagrad does this for its
shared statistics (``structure='shared'``, ``'rows_x_shared'``) and its fallback
counters. Transforms of optax that reduce over all rows, such as
``optax.clip_by_global_norm`` on a table, would see one shard's rows: do not chain them
on tables here.

Ids out of range are dropped (``checked=False``) or raise (``checked=True``, through
``checkify`` inside ``jit``) on every shard, as in :mod:`optax_blockada.sparse`. Pass
64-bit host ids through :func:`optax_blockada.sparse.as_ids` first: with x64 off JAX
truncates them to 32 bits where they enter the step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from optax_blockada import _geometry, sharding
from optax_blockada._typing import IdTree, OptState, Params
from optax_blockada.sparse import _ids as sparse_ids
from optax_blockada.sparse import _plan as sparse_plan
from optax_blockada.sparse import _step as sparse_step
from optax_blockada.sparse import _tables as sparse_tables

if TYPE_CHECKING:  # Flax is imported where the adapter runs, not with the library.
  from flax import nnx

__all__ = [
  "RoutingStats",
  "default_capacity",
  "nnx_update",
  "suggest_capacity",
  "value_and_update",
]

_REDUCTIONS = ("mean", "sum")


class RoutingStats(NamedTuple):
  """What the routing of one step did, the same on every device.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada import routed
    >>> stats = routed.RoutingStats(overflowed=jnp.array(False), max_load=jnp.array(3))
    >>> int(stats.max_load)
    3
  """

  # True if some device had more distinct ids for one shard than the capacity, so the
  # step ran with the full capacity (exact, as costly as the replicated path).
  overflowed: jax.Array
  # The largest number of distinct ids one device sent to one shard (over all tables).
  max_load: jax.Array


def default_capacity(num_ids: int, num_shards: int) -> int:
  r"""The default ``capacity``: :math:`\min(n, 8 \lceil 2n / (8 S) \rceil)`.

  Twice the mean number of ids a device sends to each of the :math:`S` shards when its
  :math:`n` ids are spread evenly, rounded up to a multiple of 8; never more than
  :math:`n` (which cannot overflow).

  Args:
    num_ids: ids per device for one table (:math:`n`).
    num_shards: shards of the table (:math:`S`).

  Returns:
    The number of ids each device may send to each shard per step.

  Example:
    >>> from optax_blockada import routed
    >>> routed.default_capacity(512, 8), routed.default_capacity(512, 1)
    (128, 512)
  """
  return min(num_ids, 8 * math.ceil(2 * num_ids / (8 * num_shards)))


# ---------------------------------------------------------------------------------------
# Static plan: which leaves are tables, how they and the batch are split.


@dataclasses.dataclass(frozen=True)
class _Group:
  """Tables sharing ids: their leaf indices, row counts and routing capacity."""

  key: Any
  members: tuple[int, ...]
  num_rows: int  # V
  shard_rows: int  # V / S
  num_ids: int  # n, ids per device
  capacity: int


@dataclasses.dataclass(frozen=True)
class _Plan:
  mesh: Any
  row_axes: tuple[str, ...]
  replica_axes: tuple[str, ...]
  all_axes: tuple[str, ...]
  shards: int  # S
  devices: int  # N
  groups: tuple[_Group, ...]
  treedef: Any
  names: tuple[str, ...]
  keystrs: tuple[str, ...]


def _resolve_mesh(mesh: Any) -> Any:
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
      raise ValueError(
        "routed: no mesh: pass mesh= (a jax.sharding.Mesh), or call the step under "
        "jax.set_mesh(mesh)."
      )
  if not hasattr(mesh, "axis_names") or not hasattr(mesh, "shape"):
    raise TypeError(f"routed: mesh must be a jax.sharding.Mesh, got {mesh!r}.")
  return mesh


def _resolve_row_axes(row_axes: Any, mesh: Any) -> tuple[str, ...]:
  names = tuple(mesh.axis_names)
  if row_axes is None:
    return names
  axes = (row_axes,) if isinstance(row_axes, str) else row_axes
  axes = tuple(axes) if isinstance(axes, (tuple, list)) else ()
  if not axes or not all(isinstance(a, str) for a in axes) or len(set(axes)) != len(axes):
    raise TypeError(
      f"routed: row_axes must be a mesh axis name or a tuple of distinct names, got {row_axes!r}."
    )
  missing = [a for a in axes if a not in names]
  if missing:
    raise ValueError(
      f"routed: row_axes {row_axes!r} names {missing}, not axes of the mesh {names}. Pass "
      "the mesh axes the tables' rows are split over (their PartitionSpec's first entry)."
    )
  return axes


def _spec_entry(axes: tuple[str, ...]) -> Any:
  return axes[0] if len(axes) == 1 else axes


def _plan(mesh, row_axes, params, ids, capacity) -> _Plan:
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  groups, names = sparse_tables._resolve_tables(leaves_with_path, ids)
  all_axes = tuple(mesh.axis_names)
  replica_axes = tuple(a for a in all_axes if a not in row_axes)
  shards = math.prod(mesh.shape[a] for a in row_axes)
  devices = math.prod(mesh.shape[a] for a in all_axes)
  out = []
  for key, members, num_rows in groups:
    name = ", ".join(names[i] for i in members)
    if num_rows % shards:
      raise ValueError(
        f"routed: the table {name} has {num_rows} rows, not divisible by its {shards} "
        f"shards (mesh axes {row_axes}). Pad the table to a multiple of {shards} rows."
      )
    num_ids = 0
    for leaf in jax.tree.leaves(ids[key]):
      shape = np.shape(leaf)
      if not shape or shape[0] % devices:
        raise ValueError(
          f"routed: ids[{key!r}] has shape {shape}; the batch is split along axis 0 over "
          f"all {devices} devices of the mesh, so axis 0 must be a multiple of {devices}."
        )
      num_ids += math.prod(shape) // devices
    if num_ids == 0:
      raise ValueError(f"routed: ids[{key!r}] holds no ids.")
    cap = default_capacity(num_ids, shards) if capacity is None else min(capacity, num_ids)
    out.append(_Group(key, members, num_rows, num_rows // shards, num_ids, cap))
  keystrs = tuple(jax.tree_util.keystr(tuple(path)) for path, _ in leaves_with_path)
  return _Plan(
    mesh,
    row_axes,
    replica_axes,
    all_axes,
    shards,
    devices,
    tuple(out),
    treedef,
    tuple(names),
    keystrs,
  )


def _param_specs(plan: _Plan, params: Any) -> Any:
  tables = {i for g in plan.groups for i in g.members}
  leaves = plan.treedef.flatten_up_to(params)
  specs = [
    PartitionSpec(_spec_entry(plan.row_axes), *([None] * (np.ndim(p) - 1)))
    if i in tables
    else PartitionSpec()
    for i, p in enumerate(leaves)
  ]
  return plan.treedef.unflatten(specs)


def _batch_specs(plan: _Plan, tree: Any) -> Any:
  """Arrays split along axis 0 over all devices; scalars replicated."""
  entry = _spec_entry(plan.all_axes)
  return jax.tree.map(lambda x: PartitionSpec(entry) if np.ndim(x) else PartitionSpec(), tree)


# ---------------------------------------------------------------------------------------
# Inside shard_map: one device's part of the step.


def _packs(leaves: Sequence[Any], members: tuple[int, ...]) -> list[tuple[int, ...]]:
  """Members grouped by dtype, so each group moves in one all_to_all."""
  by_dtype: dict[Any, list[int]] = {}
  for i in members:
    by_dtype.setdefault(jnp.result_type(leaves[i]), []).append(i)
  return [tuple(v) for v in by_dtype.values()]


def _flat_rows(x: jax.Array, m: int) -> jax.Array:
  return x.reshape((m, -1))


def _unpack(packed: jax.Array, widths: list[int]) -> list[jax.Array]:
  return jnp.split(packed, np.cumsum(widths)[:-1].tolist(), axis=1) if len(widths) > 1 else [packed]


class _Local(NamedTuple):
  """A group's local ids after dedup: which slot of the send buffer each unique id takes."""

  unique: jax.Array  # (n,) sorted unique ids, padded with V
  dest: jax.Array  # (n,) owning shard (S for padding and dropped ids)
  pos: jax.Array  # (n,) rank among the unique ids sent to the same shard
  load: jax.Array  # () most unique ids sent to one shard


def _dedup(
  plan: _Plan, group: _Group, id_leaves: list[jax.Array], checked: bool
) -> tuple[_Local, list[jax.Array]]:
  """The group's local unique ids and their destinations, and the ids remapped into them."""
  name = ", ".join(plan.names[i] for i in group.members)
  unique, local_ids = sparse_ids._merge_ids(id_leaves, group.num_rows, name, checked)
  dest = (unique // group.shard_rows).astype(jnp.int32)  # V -> S
  counts = jax.ops.segment_sum(
    jnp.ones_like(dest), dest, num_segments=plan.shards + 1, indices_are_sorted=True
  )
  starts = jnp.cumsum(counts) - counts
  pos = jnp.arange(group.num_ids, dtype=jnp.int32) - starts[dest]
  return _Local(unique, dest, pos, jnp.max(counts[: plan.shards])), local_ids


def _all_to_all(plan: _Plan, x: jax.Array) -> jax.Array:
  """Row block ``s`` of ``x`` (axis 0 of size S) goes to shard ``s``; block ``s`` of the
  result came from shard ``s``."""
  return jax.lax.all_to_all(x, plan.row_axes, 0, 0)


def _gather_replicas(plan: _Plan, x: jax.Array) -> jax.Array:
  if not plan.replica_axes:
    return x
  return jax.lax.all_gather(x, plan.replica_axes, tiled=True, to="invarying")


def _reduce_dense(plan: _Plan, g: jax.Array, reduction: str) -> jax.Array:
  """The gradient of a replicated param: summed over the devices' batches, then scaled.

  Inside ``shard_map`` JAX may already have summed it (the transpose of using an
  invariant value in varying computations is a ``psum``); sum over the axes it still
  varies over.
  """
  varying = tuple(a for a in plan.all_axes if a in getattr(jax.typeof(g), "vma", ()))
  if varying:
    g = jax.lax.psum(g, varying)
  return g / plan.devices if reduction == "mean" else g


def _device_step(plan, loss_fn, tx, reduction, checked, params, state, ids, shared, args):
  leaves = plan.treedef.flatten_up_to(params)
  me = jax.lax.axis_index(plan.row_axes)
  locals_ = []
  local_ids = {}
  for g in plan.groups:
    id_leaves, id_def = jax.tree.flatten(ids[g.key])
    loc, local_leaves = _dedup(plan, g, id_leaves, checked)
    local_ids[g.key] = id_def.unflatten(local_leaves)
    locals_.append(loc)
  loads = jax.lax.pmax(jnp.stack([loc.load for loc in locals_]), plan.all_axes)
  capacities = tuple(g.capacity for g in plan.groups)
  full = tuple(g.num_ids for g in plan.groups)

  def run(caps):
    inputs = (leaves, state, locals_, local_ids, shared, args, me)
    return _routed(plan, loss_fn, tx, reduction, caps, *inputs)

  if capacities == full:  # Nothing can overflow.
    overflowed = jnp.zeros((), bool)
    out = run(full)
  else:
    overflowed = jnp.any(loads > jnp.asarray(capacities, loads.dtype))
    out = jax.lax.cond(overflowed, lambda: run(full), lambda: run(capacities))
  value, aux, new_leaves, new_state = out
  stats = RoutingStats(overflowed=overflowed, max_load=jnp.max(loads))
  return value, aux, plan.treedef.unflatten(new_leaves), new_state, stats


def _routed(
  plan, loss_fn, tx, reduction, caps, leaves, state, locals_, local_ids, shared, args, me
):
  """The step for static per-group capacities: route, look up, differentiate, update."""
  small = list(leaves)
  slots, owner_rows = [], []
  for g, loc, cap in zip(plan.groups, locals_, caps, strict=True):
    sent = (loc.dest < plan.shards) & (loc.pos < cap)
    slot = jnp.where(sent, loc.dest * cap + loc.pos, plan.shards * cap)  # else dropped
    send = jnp.full((plan.shards * cap,), g.num_rows, loc.unique.dtype)
    send = send.at[slot].set(loc.unique, mode="drop")
    recv = _all_to_all(plan, send.reshape(plan.shards, cap)).reshape(-1)
    rows = jnp.where(recv < g.num_rows, recv - me * g.shard_rows, g.shard_rows)
    for pack in _packs(leaves, g.members):
      looked_up = [
        _flat_rows(leaves[i].at[rows].get(mode="fill", fill_value=0), rows.shape[0]) for i in pack
      ]
      widths = [x.shape[1] for x in looked_up]
      packed = jnp.concatenate(looked_up, axis=1) if len(pack) > 1 else looked_up[0]
      back = _all_to_all(plan, packed.reshape(plan.shards, cap, -1)).reshape(packed.shape)
      got = back.at[slot].get(mode="fill", fill_value=0)
      for i, part in zip(pack, _unpack(got, widths), strict=True):
        small[i] = part.reshape((g.num_ids, *np.shape(leaves[i])[1:]))
    slots.append(slot)
    owner_rows.append(rows)

  small_tree = plan.treedef.unflatten(small)
  (value, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    small_tree, local_ids, shared, *args
  )
  value = (jax.lax.pmean if reduction == "mean" else jax.lax.psum)(value, plan.all_axes)
  grad_leaves = plan.treedef.flatten_up_to(grads)
  tables = {i for g in plan.groups for i in g.members}
  scale = 1.0 / plan.devices if reduction == "mean" else 1.0
  for i, g in enumerate(grad_leaves):
    if i not in tables:
      grad_leaves[i] = _reduce_dense(plan, g, reduction)

  rows_of, num_rows = {}, {}
  for g, slot, rows, cap in zip(plan.groups, slots, owner_rows, caps, strict=True):
    all_rows = _gather_replicas(plan, rows)
    unique, inverse = sparse_ids._unique(all_rows, g.shard_rows)
    mask = unique < g.shard_rows
    for pack in _packs(leaves, g.members):
      sent = [_flat_rows(grad_leaves[i], g.num_ids) * scale for i in pack]
      widths = [x.shape[1] for x in sent]
      packed = jnp.concatenate(sent, axis=1) if len(pack) > 1 else sent[0]
      out = jnp.zeros((plan.shards * cap, packed.shape[1]), packed.dtype)
      out = out.at[slot].set(packed, mode="drop")
      recv = _all_to_all(plan, out.reshape(plan.shards, cap, -1)).reshape(out.shape)
      recv = _gather_replicas(plan, recv)
      merged = jax.ops.segment_sum(recv, inverse, num_segments=all_rows.shape[0])
      merged = jnp.where(mask[:, None], merged, 0)
      for i, part in zip(pack, _unpack(merged, widths), strict=True):
        grad_leaves[i] = part.reshape((all_rows.shape[0], *np.shape(leaves[i])[1:]))
        rows_of[i], num_rows[i] = unique, g.shard_rows

  split = {plan.keystrs[i]: plan.row_axes for i in tables}
  with _geometry.rows_split_over(split):
    new_params, new_state = sparse_step._apply(
      tx, grad_leaves, state, leaves, plan.treedef, rows_of, num_rows, list(plan.names)
    )
  return value, aux, plan.treedef.flatten_up_to(new_params), new_state


# ---------------------------------------------------------------------------------------
# Public entry points.


def _check_options(reduction: str, capacity: Any) -> None:
  if reduction not in _REDUCTIONS:
    raise ValueError(
      f"routed: reduction must be one of {_REDUCTIONS} (how the loss of each device's "
      f"batch combines into the loss of the global batch), got {reduction!r}."
    )
  if capacity is not None and (
    isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1
  ):
    raise ValueError(
      f"routed: capacity must be a positive int (ids each device may send to each shard "
      f"per step) or None for default_capacity, got {capacity!r}."
    )


def value_and_update(
  loss_fn: Callable[..., Any],
  tx: optax.GradientTransformation,
  *,
  mesh: Mesh | None = None,
  row_axes: str | Sequence[str] | None = None,
  capacity: int | None = None,
  reduction: str = "mean",
  has_aux: bool = False,
  checked: bool = False,
) -> Callable[..., tuple[Any, Params, OptState, RoutingStats]]:
  r"""A sparse training step for tables sharded along rows, routing ids to their owners.

  The routed counterpart of :func:`optax_blockada.sparse.value_and_grad` followed by
  :func:`optax_blockada.sparse.apply_gradients` (see the module docstring for the
  algorithm): the result equals the dense step on one device up to float32 rounding,
  and each device's communication and work follow its local batch.

  Args:
    loss_fn: ``loss_fn(params, ids, *args) -> scalar``, the loss of one device's slice
      of the batch; it must look up every table only through the ids it is given (as
      for :func:`optax_blockada.sparse.value_and_grad`).
    tx: the optax transform (the same as for the dense step); its state is sharded like
      the params (:func:`optax_blockada.sharding.state_shardings`).
    mesh: the devices; ``None`` takes the mesh set with ``jax.set_mesh``.
    row_axes: the mesh axes the tables' rows are split over (the first entry of their
      ``PartitionSpec``); ``None``: all the mesh's axes. Other mesh axes hold replicas.
    capacity: ids each device may send to each shard per step; ``None``:
      :func:`default_capacity`. A step that needs more is still exact (see
      :class:`RoutingStats`).
    reduction: ``'mean'`` if the global loss is the mean of the devices' losses (a loss
      that averages over its batch, equal slices), ``'sum'`` if it is their sum.
    has_aux: ``loss_fn`` returns ``(loss, aux)``; each device's ``aux`` (any pytree of
      arrays) comes back stacked along a new leading axis, one entry per device in the
      mesh's order.
    checked: raise on ids outside ``[0, V)`` (as in :func:`optax_blockada.sparse.gather`);
      ``False`` drops them.

  Returns:
    ``step(params, opt_state, ids, *args) -> (loss, params, opt_state, stats)``, or
    ``((loss, aux), params, opt_state, stats)`` with ``has_aux``. The ids (a dict
    ``{table path: ids}``) and every array in ``args`` are the global batch, split
    along axis 0 over all devices; scalars in ``args`` are replicated. ``loss`` is the
    global batch's. Jit it, donating params and state, for updates in place.

  Example:
    >>> import functools
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    >>> import optax_blockada as ob
    >>> from optax_blockada import routed
    >>> n = jax.device_count()
    >>> mesh = jax.make_mesh((n,), ('rows',), axis_types=(AxisType.Auto,))
    >>> tx = ob.rowwise_adagrad(0.5)
    >>> params = jax.device_put({'emb': jnp.zeros((1024 * n, 8))},
    ...                         NamedSharding(mesh, P('rows', None)))
    >>> opt_state = jax.jit(tx.init, out_shardings=ob.sharding.state_shardings(
    ...   tx, params))(params)
    >>> def loss(params, ids, target):
    ...   return jnp.mean((params['emb'][ids['emb']].sum(-1) - target) ** 2)
    >>> step = jax.jit(routed.value_and_update(loss, tx, mesh=mesh), donate_argnums=(0, 1))
    >>> ids = {'emb': jnp.arange(8 * n) % 5 * 100}  # 8 ids per device, 5 distinct rows
    >>> for _ in range(30):
    ...   value, params, opt_state, stats = step(params, opt_state, ids, jnp.ones(8 * n))
    >>> print(f"{value:.4f}", bool(stats.overflowed))
    0.0000 False
  """

  def with_aux(params, ids, shared, *args):
    if not has_aux:
      return loss_fn(params, ids, *args), None
    value, aux = loss_fn(params, ids, *args)
    return value, jax.tree.map(lambda x: jnp.expand_dims(x, 0), aux)

  step = _routed_step(
    with_aux,
    tx,
    mesh=mesh,
    row_axes=row_axes,
    capacity=capacity,
    reduction=reduction,
    checked=checked,
    stacked_aux=has_aux,
  )

  def value_and_update_step(params, opt_state, ids, *args):
    value, aux, params, opt_state, stats = step(params, opt_state, ids, None, *args)
    return (value, aux) if has_aux else value, params, opt_state, stats

  return value_and_update_step


def _same_spec(a: PartitionSpec, b: PartitionSpec, ndim: int) -> bool:
  pad = lambda s: (*s, *([None] * (ndim - len(s))))
  return pad(a) == pad(b)


def _explicit_inputs(mesh: Any, tree: Any, specs: Any, what: str, *, reshard: bool) -> Any:
  """Explicit sharding mode: shard_map needs inputs typed with its in_specs. The batch is
  resharded (split over the devices); params and state sharded otherwise are an error."""
  if not getattr(mesh, "explicit_axes", ()) or not jax.tree.leaves(tree):
    return tree

  def fix(path, x, spec):
    sharding = _geometry._explicit_sharding(x)
    if sharding is not None and _same_spec(sharding.spec, spec, np.ndim(x)):
      return x
    if reshard:
      return jax.reshard(x, spec)
    if sharding is None:
      return x
    raise ValueError(
      f"routed: {what}{jax.tree_util.keystr(tuple(path))} is sharded as {sharding.spec}, but "
      f"the routed step needs {spec} (tables split along rows over row_axes, other params "
      "replicated, state as optax_blockada.sharding.state_partition_specs gives). Place it "
      "so, or pass the row_axes the tables are split over."
    )

  return jax.tree_util.tree_map_with_path(fix, tree, specs)


def _routed_step(loss_fn, tx, *, mesh, row_axes, capacity, reduction, checked, stacked_aux=False):
  """``step(params, opt_state, ids, shared, *args) -> (value, aux, params, state, stats)``.

  ``loss_fn(small_params, local_ids, shared, *args) -> (value, aux)``; ``shared`` is
  replicated, and so is ``aux`` unless ``stacked_aux`` (then each device's ``aux``,
  with a leading axis of size 1, is concatenated over the devices).
  """
  sparse_step._check_tx(tx)
  _check_options(reduction, capacity)

  def step(params, opt_state, ids, shared, *args):
    resolved = _resolve_mesh(mesh)
    plan = _plan(resolved, _resolve_row_axes(row_axes, resolved), params, ids, capacity)
    if checked:  # Concrete ids are checked on the host, before anything runs.
      for g in plan.groups:
        name = ", ".join(plan.names[i] for i in g.members)
        for leaf in jax.tree.leaves(ids[g.key]):
          if not isinstance(leaf, jax.core.Tracer):
            sparse_ids._valid_ids(leaf, g.num_rows, name, checked)
    # The state's checks (a transform that is not lazily exact, a state made for other
    # params) before anything is traced per device.
    rows = {i: g.num_rows for g in plan.groups for i in g.members}
    leaves = plan.treedef.flatten_up_to(params)
    sparse_plan._state_plan(tx, opt_state, leaves, plan.treedef, rows, list(plan.names))
    param_specs = _param_specs(plan, params)
    state_specs = sharding.state_partition_specs(opt_state, params, param_specs)
    replicated = PartitionSpec()

    def body(params, opt_state, ids, shared, args):
      return _device_step(
        plan, loss_fn, tx, reduction, checked, params, opt_state, ids, shared, args
      )

    params = _explicit_inputs(plan.mesh, params, param_specs, "params", reshard=False)
    opt_state = _explicit_inputs(plan.mesh, opt_state, state_specs, "opt_state", reshard=False)
    ids = _explicit_inputs(plan.mesh, ids, _batch_specs(plan, ids), "ids", reshard=True)
    args = _explicit_inputs(plan.mesh, args, _batch_specs(plan, args), "args", reshard=True)
    mapped = jax.shard_map(
      body,
      mesh=plan.mesh,
      in_specs=(
        param_specs,
        state_specs,
        _batch_specs(plan, ids),
        replicated,
        _batch_specs(plan, args),
      ),
      out_specs=(
        replicated,
        PartitionSpec(_spec_entry(plan.all_axes)) if stacked_aux else replicated,
        param_specs,
        state_specs,
        RoutingStats._make((replicated, replicated)),
      ),
    )
    return mapped(params, opt_state, ids, shared, args)

  return step


def suggest_capacity(
  batches: Sequence[IdTree],
  num_rows: int,
  mesh: Mesh,
  row_axes: str | Sequence[str] | None = None,
  *,
  headroom: float = 1.25,
) -> int:
  r"""A ``capacity`` from sample batches: their largest load, with headroom.

  For each batch (the global ids of one table, an array or a pytree of arrays, split
  along axis 0 over the mesh's devices as the step splits it), counts on every device
  the distinct in-range ids owned by each shard, takes the largest count over batches,
  devices and shards, multiplies it by ``headroom`` and rounds up to a multiple of 8.

  Args:
    batches: sample batches of ids for one table (or one group of tables sharing ids).
    num_rows: the table's rows :math:`V`.
    mesh: the mesh of the step.
    row_axes: as in :func:`value_and_update`.
    headroom: a factor above the largest load seen, at least 1.

  Returns:
    The capacity to pass to :func:`value_and_update`.

  Example:
    >>> import jax
    >>> import numpy as np
    >>> from optax_blockada import routed
    >>> mesh = jax.make_mesh((jax.device_count(),), ('rows',))
    >>> rng = np.random.default_rng(0)
    >>> batches = [rng.integers(0, 10_000, 512 * jax.device_count()) for _ in range(20)]
    >>> cap = routed.suggest_capacity(batches, 10_000, mesh)
    >>> cap <= routed.default_capacity(512, jax.device_count())
    True
  """
  if not headroom >= 1:
    raise ValueError(f"suggest_capacity: headroom must be at least 1, got {headroom!r}.")
  axes = _resolve_row_axes(row_axes, mesh)
  shards = math.prod(mesh.shape[a] for a in axes)
  devices = math.prod(mesh.shape.values())
  if num_rows % shards:
    raise ValueError(
      f"suggest_capacity: num_rows {num_rows} is not divisible by the {shards} shards."
    )
  most, num_ids = 0, None
  for batch in batches:
    leaves = [np.asarray(x) for x in jax.tree.leaves(batch)]
    for leaf in leaves:
      if leaf.ndim == 0 or leaf.shape[0] % devices:
        raise ValueError(
          f"suggest_capacity: a batch of ids has shape {leaf.shape}; axis 0 must be a "
          f"multiple of the {devices} devices."
        )
    local = [
      np.concatenate([np.split(x, devices)[k].reshape(-1) for x in leaves]) for k in range(devices)
    ]
    num_ids = local[0].size
    for ids in local:
      ids = np.unique(ids[(ids >= 0) & (ids < num_rows)])
      if ids.size:
        most = max(most, int(np.bincount(ids // (num_rows // shards)).max()))
  if num_ids is None:
    raise ValueError("suggest_capacity: batches is empty.")
  return max(1, min(num_ids, 8 * math.ceil(most * headroom / 8)))


def nnx_update(
  model: nnx.Module,
  optimizer: nnx.Optimizer,
  loss_fn: Callable[..., Any],
  ids: Mapping[str, jax.Array],
  *args: Any,
  mesh: Mesh | None = None,
  row_axes: str | Sequence[str] | None = None,
  capacity: int | None = None,
  reduction: str = "mean",
  checked: bool = False,
) -> tuple[Any, RoutingStats]:
  r"""The routed sparse step for a Flax NNX model and its ``nnx.Optimizer``, in place.

  The routed counterpart of :func:`optax_blockada.sparse.nnx_update`: ``ids`` maps each
  table's path in the model to its ids, ``loss_fn(model, local_ids, *args)`` sees the
  model with its tables holding the device's looked-up rows. The model's variables
  outside ``optimizer.wrt`` are read and written back, and must end the step the same
  on every device. Use it inside ``nnx.jit``.

  Args:
    model: an ``nnx.Module`` whose tables are sharded along rows over ``row_axes``.
    optimizer: an ``nnx.Optimizer`` for ``model``.
    loss_fn: ``loss_fn(model, ids, *args) -> scalar`` for one device's batch.
    ids: ``{path: ids}`` for the tables: the global batch, split along axis 0.
    *args: more arguments of ``loss_fn`` (arrays: the global batch, split along axis 0).
    mesh: as in :func:`value_and_update`.
    row_axes: as in :func:`value_and_update`.
    capacity: as in :func:`value_and_update`.
    reduction: as in :func:`value_and_update`.
    checked: as in :func:`value_and_update`.

  Returns:
    ``(loss, stats)``: the global batch's loss and the :class:`RoutingStats`.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    >>> import optax_blockada as ob
    >>> from optax_blockada import routed
    >>> n = jax.device_count()
    >>> mesh = jax.make_mesh((n,), ('rows',), axis_types=(AxisType.Auto,))
    >>> class Model(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.embed = nnx.Embed(1024 * n, 8, rngs=rngs)
    ...   def __call__(self, ids):
    ...     return self.embed(ids).sum(-1)
    >>> model = Model(nnx.Rngs(0))
    >>> state = nnx.state(model)
    >>> nnx.update(model, jax.device_put(state, NamedSharding(mesh, P('rows', None))))
    >>> optimizer = nnx.Optimizer(model, ob.rowwise_adagrad(0.5), wrt=nnx.Param)
    >>> def loss_fn(model, ids, target):
    ...   return jnp.mean((model(ids['embed']) - target) ** 2)
    >>> @nnx.jit
    ... def step(model, optimizer, ids, target):
    ...   return routed.nnx_update(model, optimizer, loss_fn, ids, target, mesh=mesh)
    >>> ids = {'embed': jnp.arange(8 * n) % 3}
    >>> for _ in range(30):
    ...   loss, stats = step(model, optimizer, ids, jnp.ones(8 * n))
    >>> print(f"{loss:.4f}", model.embed.embedding.shape == (1024 * n, 8))
    0.0000 True
  """
  from flax import nnx

  wrt = optimizer.wrt
  graph_kw = {"graph": optimizer.graph} if getattr(optimizer, "graph", None) is not None else {}
  graphdef, params, rest = nnx.split(model, wrt, ..., **graph_kw)
  params, rest = nnx.as_pure(params), nnx.as_pure(rest)

  def pure_loss(small, local_ids, rest, *args):
    m = nnx.merge(graphdef, small, rest)
    value = loss_fn(m, local_ids, *args)
    return value, nnx.as_pure(nnx.state(m, nnx.Not(wrt), **graph_kw))

  step = _routed_step(
    pure_loss,
    optimizer.tx,
    mesh=mesh,
    row_axes=row_axes,
    capacity=capacity,
    reduction=reduction,
    checked=checked,
  )
  value, new_rest, new_params, new_state, stats = step(
    params, nnx.as_pure(optimizer.opt_state), ids, rest, *args
  )
  nnx.update(model, new_params, new_rest)
  nnx.update(optimizer.opt_state, nnx.state(new_state, **graph_kw))
  optimizer.step[...] += 1
  return value, stats
