r"""Sparse row updates: a step costs O(rows looked up), not O(rows in the table).

Autodiff through ``table[ids]`` makes a dense ``(V, d)`` gradient, and an optimizer
then reads and writes all ``V`` rows, even when a batch looks up a few thousand. This
module runs the same optax transform on the looked-up rows only:

1. **gather**: for each embedding table, merge the batch's ids into sorted unique ids
   (static size: the number of ids, padded with the out-of-range id ``V``), gather
   those rows into a small table and remap the ids into it;
2. **grad**: the loss looks up the small table with the remapped ids, so
   ``jax.grad`` with respect to the small table is the gradient of the touched rows,
   duplicates already summed (as autodiff through ``table[ids]`` sums them);
3. **update**: run ``tx.update`` on a params tree in which every table is replaced by
   its gathered rows and every per-row state of the library (and ``optax.adagrad``'s
   accumulator) by its gathered rows; other state passes through whole;
4. **scatter** the new rows of the parameters and of the per-row state back with
   ``.at[rows].set(..., mode='drop')``: the padding id ``V`` is dropped. Under
   ``jax.jit(..., donate_argnums=...)`` over params and state this is in place.

Because Adagrad is lazily exact (a row with zero gradient gets a zero update and keeps
its state), the result equals the dense step up to float32 rounding (sums over rows are
taken in another order). Cost per step: O(B d) plus the transform's per-row cost, for
B looked-up ids, independent of V. On an accelerator a step of a few thousand rows is
bound by kernel launches, not bytes, so the merge uses a fixed handful of kernels and no
loop there (see ``_unique``): XLA compiles a row-wise Adagrad step for an H100 into 16
kernels (``benchmarks/step_kernels.py``).

On tables sharded along rows over many devices this step is correct under ``jax.jit``
(in JAX's Auto and Explicit sharding modes: in Explicit mode the ids are merged and the
touched rows gathered replicated, and the tables keep their sharding types), but every
device then handles the rows of the global batch; :mod:`optax_blockada.routed`
routes each id to the shard that owns its row, so each device's work follows its local
batch.

Layout: tables have their **rows along axis 0** (``(V, d)``, ``(V,)``, ``(V, k, d)``);
the transform's feature axes for a table must not include axis 0 (checked for stateful
transforms through the shape of their per-row state).

**What stays exact.** The library's diagonal, row-wise and block Adagrad;
``optax.adagrad`` / ``optax.scale_by_rss``; ``optax.sgd`` without momentum; every
stateless transform that acts row by row or elementwise (``optax.scale``,
``optax.scale_by_learning_rate`` with a schedule, ``optax.scale_by_schedule``,
``optax.clip``); ``optax.clip_by_global_norm`` (rows with zero gradient add nothing to
the norm); ``optax.chain``, ``optax.partition``, ``optax.masked`` and
``optax.inject_hyperparams`` around them. Step counters and other shared state advance
as in the dense step. The row transforms :func:`~optax_blockada.renormalize_rows` and
:func:`~optax_blockada.add_decayed_weights_to_touched_rows` equal the dense step given
the same ``looked_up`` mask (see **Looked-up rows** below).

**What is not lazily exact, and what happens.**

* Stateful transforms that keep a value for every row without declaring it as lazily
  updatable per-row state, such as momentum (``optax.trace``, ``optax.sgd(...,
  momentum=...)``), ``optax.ema``, Adam's moments, ``optax.MultiSteps``: their
  zero-gradient rows change every step in the dense step. They are detected (any
  state leaf whose shape depends on a table's row count) and raise a ``ValueError``.
  Use the dense step, or apply such a transform to non-table leaves only with
  ``optax.partition``.
* Stateless transforms that change rows with zero gradient: ``optax.add_decayed_weights``
  (and the ``weight_decay`` of :func:`~optax_blockada.presets.torch_adagrad`,
  :func:`~optax_blockada.presets.torchrec_rowwise_adagrad`,
  :func:`~optax_blockada.presets.keras_adagrad`), ``optax.add_noise``,
  ``optax.keep_params_nonnegative``: they act on the **looked-up rows only** (zero
  gradient or not), where the dense step changes every row. That is the lazy decay of
  FBGEMM's fused kernels, not the semantics of ``torch.optim.Adagrad``, TorchRec's
  ``RowWiseAdagrad`` optimizer class or Keras, which decay every row of the table.
* Stateless transforms whose row update depends on the whole leaf through a mean or a
  parameter norm (``optax.clip_by_block_rms``, ``optax.centralize``,
  ``optax.scale_by_param_block_norm``/``rms``, ``optax.scale_by_trust_ratio``) see only
  the gathered rows and differ from the dense step. They cannot be detected; do not
  chain them on tables.

**Looked-up rows.** When ``tx`` takes extra arguments (every ``optax.chain``, alias and
preset does), ``tx.update`` also receives ``looked_up``: for every table a boolean mask
of its gathered rows (all true but for the padding slots, which also hold the dropped
out-of-range ids), ``None`` for the other leaves. The row transforms
:func:`~optax_blockada.add_decayed_weights_to_touched_rows` and
:func:`~optax_blockada.renormalize_rows` (so
:func:`~optax_blockada.presets.fbgemm_rowwise_adagrad`'s weight decay and ``max_norm``)
act on those rows, as FBGEMM does, also on a looked-up row whose summed gradient is
exactly zero (a padding row); a dense step without the mask leaves such a row alone.
Both agree whenever every looked-up row has a non-zero gradient. With
``touched='nonzero_gradient'`` those transforms and presets ignore the mask and act on
the rows with a non-zero gradient only, in the sparse path as in the dense step.

**Ids out of range** (``id < 0`` or ``id >= V``). With ``checked=False`` (the fast
mode, default) such an id is dropped: its lookup reads a row of zeros and its gradient
is discarded, so no row of the table or of the state is written for it (negative ids
do *not* wrap around as in numpy indexing). A 64-bit host id is judged in its own dtype,
before JAX sees it: with x64 off JAX truncates ``2**32 + 7`` to ``7`` where it enters a
device or a jitted function, so pass such ids through :func:`as_ids` before a jitted
step (outside ``jit`` the sparse functions do it). With ``checked=True`` concrete ids are
checked on the host and raise a ``ValueError``; traced ids (inside ``jax.jit``) are
checked with :func:`jax.experimental.checkify.check`, so the jitted step must be
wrapped in ``checkify.checkify`` and ``err.throw()`` raises; the outputs are then those
of the fast mode, so donated buffers are never lost to an error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_blockada import _geometry, _per_row

__all__ = [
  "SparseGrad",
  "TouchedRows",
  "apply_gradients",
  "as_ids",
  "gather",
  "nnx_update",
  "value_and_grad",
]


class SparseGrad(NamedTuple):
  """The gradient of a table with respect to its looked-up rows (like TF's IndexedSlices).

  Put it in a gradient pytree in place of a table's dense gradient and pass the tree to
  :func:`apply_gradients`. Ids may repeat (their gradients are summed, as autodiff
  through ``table[ids]`` sums them) and may have any shape ``S``; ``values`` then has
  shape ``S + table.shape[1:]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada import sparse
    >>> g = sparse.SparseGrad(ids=jnp.array([2, 0, 2]), values=jnp.ones((3, 4)))
    >>> g.values.shape
    (3, 4)
  """

  # Integer ids of the looked-up rows, any shape ``S``; duplicates allowed.
  ids: jax.Array
  # Gradient with respect to ``table[ids]``: shape ``S + table.shape[1:]``.
  values: jax.Array


@jax.tree_util.register_pytree_node_class
class TouchedRows:
  """The rows a batch looks up in each table, as returned by :func:`gather`.

  A pytree (so it crosses ``jax.jit`` boundaries): its children are, for every group
  of tables that share ids, the sorted unique ids of shape ``(n,)`` (``n`` the number
  of ids looked up), padded with the out-of-range id ``num_rows`` (also the slot of
  dropped out-of-range ids). The table paths, row counts and the params' tree structure
  are static.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada import sparse
    >>> params = {'table': jnp.zeros((10, 2)), 'w': jnp.zeros(3)}
    >>> _, _, touched = sparse.gather(params, {'table': jnp.array([7, 2, 7])})
    >>> touched.rows
    {'table': Array([ 2,  7, 10], dtype=int32)}
  """

  def __init__(
    self,
    unique: tuple[jax.Array, ...],
    keys: tuple[Any, ...],
    leaves: tuple[tuple[int, ...], ...],
    num_rows: tuple[int, ...],
    treedef: Any,
  ):
    self.unique = tuple(unique)
    self.keys = keys
    self.leaves = leaves
    self.num_rows = num_rows
    self.treedef = treedef

  @property
  def rows(self) -> dict[Any, jax.Array]:
    """The padded unique ids of each table group, by the key given to :func:`gather`."""
    return dict(zip(self.keys, self.unique, strict=True))

  def tree_flatten(self):
    return self.unique, (self.keys, self.leaves, self.num_rows, self.treedef)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(tuple(children), *aux)

  def __repr__(self) -> str:
    return (
      f"TouchedRows({self.rows!r}, num_rows={dict(zip(self.keys, self.num_rows, strict=True))})"
    )


# ---------------------------------------------------------------------------------------
# Ids: validation, out-of-range handling, deduplication.


def _index_dtype(num_rows: int) -> jnp.dtype:
  if num_rows < np.iinfo(np.int32).max:
    return jnp.dtype(jnp.int32)
  if not jax.config.read("jax_enable_x64"):
    raise ValueError(
      f"a table with {num_rows} rows needs 64-bit ids: enable jax_enable_x64 "
      "(jax.config.update('jax_enable_x64', True))."
    )
  return jnp.dtype(jnp.int64)


def _bad_ids_message(name: str, num_rows: int, what: str) -> str:
  return (
    f"sparse: ids for the table {name} must lie in [0, {num_rows}), got {what}. Fix the "
    "ids, or pass checked=False to drop out-of-range ids (their lookups then read a row "
    "of zeros and update nothing)."
  )


def _host_ids_in_range(ids: Any, num_rows: int) -> Any:
  """Host ids that JAX would truncate (64-bit with x64 off), out-of-range ones set to V.

  ``jnp.asarray``, ``jax.device_put`` and ``jax.jit`` turn a host ``int64`` id
  ``2**32 + 7`` into the ``int32`` 7 when x64 is off, silently. The range is decided on
  the host, in the ids' own dtype, before that happens. Device arrays and tracers pass
  through (their dtype is already what JAX holds).
  """
  if isinstance(ids, (jax.Array, jax.core.Tracer)) or jax.config.read("jax_enable_x64"):
    return ids
  host = np.asarray(ids)
  if host.dtype.itemsize <= 4:
    return host
  valid = (host >= 0) & (host < num_rows)
  return np.where(valid, host, num_rows).astype(np.int32)


def as_ids(ids: Any, num_rows: int, *, checked: bool = False) -> jax.Array:
  r"""Host ids of any integer dtype as a device array, out-of-range ids mapped to ``V``.

  With ``jax_enable_x64`` off (JAX's default), JAX truncates 64-bit integers to 32 bits
  where they enter a jitted function or a device: a hashed id ``2**32 + 7`` becomes
  ``7``, silently, and would update row 7. The sparse functions check host ids before
  that happens when called outside ``jit``; a jitted step only sees the truncated ids.
  Pass 64-bit host ids through ``as_ids`` before the jitted step: ids outside
  ``[0, V)`` become ``V``, which the sparse step drops (or raise with ``checked``).

  Args:
    ids: integer ids (numpy or JAX arrays, lists), any shape.
    num_rows: the table's rows :math:`V`.
    checked: raise a ``ValueError`` naming the first ids outside ``[0, V)``.

  Returns:
    A JAX integer array of the same shape (int32 with x64 off).

  Example:
    >>> import numpy as np
    >>> from optax_blockada import sparse
    >>> sparse.as_ids(np.array([2**32 + 7, 3, -1]), 10)
    Array([10,  3, 10], dtype=int32)
  """
  host = np.asarray(ids)
  if not np.issubdtype(host.dtype, np.integer):
    raise TypeError(
      f"as_ids: ids must be integers, got dtype {host.dtype}. Cast them with ids.astype(np.int64)."
    )
  if checked:
    flat = host.reshape(-1)
    bad = np.flatnonzero((flat < 0) | (flat >= num_rows))
    if bad.size:
      shown = ", ".join(f"{flat[i]} at {i}" for i in bad[:5])
      more = f" and {bad.size - 5} more" if bad.size > 5 else ""
      raise ValueError(
        f"as_ids: ids must lie in [0, {num_rows}), got {shown}{more} (flat positions). Fix "
        "the ids, or pass checked=False to map them to the dropped id num_rows."
      )
  if jax.config.read("jax_enable_x64"):
    return jnp.asarray(np.where((host >= 0) & (host < num_rows), host, num_rows))
  return jnp.asarray(_host_ids_in_range(host.astype(np.int64), num_rows))


def _valid_ids(ids: Any, num_rows: int, name: str, checked: bool) -> jax.Array:
  """Flat ids in the index dtype, with out-of-range ids replaced by ``num_rows``."""
  dtype = getattr(ids, "dtype", None)
  if dtype is None:
    dtype = np.asarray(ids).dtype
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(
      f"sparse: ids for the table {name} must be integers, got dtype {dtype}. Cast them "
      "with ids.astype(jnp.int32)."
    )
  if checked and not isinstance(ids, jax.core.Tracer):
    host = np.asarray(ids).reshape(-1)
    bad = np.flatnonzero((host < 0) | (host >= num_rows))
    if bad.size:
      shown = ", ".join(f"{host[i]} at {i}" for i in bad[:5])
      more = f" and {bad.size - 5} more" if bad.size > 5 else ""
      raise ValueError(_bad_ids_message(name, num_rows, f"{shown}{more} (flat positions)"))
  ids = _host_ids_in_range(ids, num_rows)
  ids = jnp.asarray(ids)
  replicated = _geometry.replicated_sharding(ids)
  if replicated is not None:  # Explicit sharding mode: the merge sorts all the ids.
    ids = jax.reshard(ids, replicated)
  ids = ids.reshape(-1)
  index_dtype = _index_dtype(num_rows)
  valid = ids >= 0
  if num_rows <= jnp.iinfo(ids.dtype).max:
    valid = valid & (ids < num_rows)
  if checked and isinstance(ids, jax.core.Tracer):
    from jax.experimental import checkify

    first = jnp.argmin(valid)
    checkify.check(
      jnp.all(valid),
      _bad_ids_message(name, num_rows, "{bad} at flat position {pos}"),
      bad=ids[first],
      pos=first,
    )
  return jnp.where(valid, ids.astype(index_dtype), num_rows)


def _default_inverse_by() -> str:
  return "search" if jax.default_backend() == "cpu" else "permutation"


def _unique(
  ids: jax.Array, num_rows: int, *, inverse_by: str | None = None
) -> tuple[jax.Array, jax.Array]:
  """Sorted unique ids padded with ``num_rows`` to a static size, and the inverse map.

  The same result as ``jnp.unique(ids, size=n, fill_value=num_rows,
  return_inverse=True)``: a sort, a prefix sum that numbers the distinct ids, a scatter
  of the distinct ids into their slots, then the inverse map (each id's slot) by one of
  two routes, chosen by ``inverse_by`` (``None``: by the backend at trace time):

  * ``'permutation'`` (GPU, TPU): the sort carries each id's position along, and one
    scatter sends every slot back to its position through that permutation. A fixed
    handful of kernels: no loop.
  * ``'search'`` (CPU): a one-operand sort, then a binary search of every id in the
    unique ids, which ``jnp.searchsorted`` runs as a loop of ``log2 n`` steps. On CPU
    a key-value sort costs 3-4x a one-operand sort (measured 1.07 ms against 0.28 ms
    for the whole of this function at 4,096 ids), so the search is faster there; on a
    GPU the loop's steps are kernels launched one after another (12 steps of several
    kernels each in a profile of the step on an H200).
  """
  n = ids.shape[0]
  if n == 0:
    return ids, ids
  if inverse_by is None:
    inverse_by = _default_inverse_by()
  if inverse_by == "permutation":
    positions = jax.lax.iota(ids.dtype, n)
    ids_sorted, order = jax.lax.sort((ids, positions), num_keys=1, is_stable=False)
  else:
    ids_sorted, order = jnp.sort(ids), None
  first = jnp.concatenate([jnp.ones((1,), bool), ids_sorted[1:] != ids_sorted[:-1]])
  slot = jnp.cumsum(first, dtype=ids.dtype) - 1
  unique = jnp.full((n,), num_rows, ids.dtype).at[slot].set(ids_sorted, indices_are_sorted=True)
  if order is not None:  # inverse_by == 'permutation'
    inverse = jnp.zeros((n,), ids.dtype).at[order].set(slot, unique_indices=True)
  else:
    inverse = jnp.searchsorted(unique, ids).astype(ids.dtype)
  return unique, inverse


def _merge_ids(
  id_leaves: list[Any], num_rows: int, name: str, checked: bool
) -> tuple[jax.Array, list[jax.Array]]:
  """The sorted unique ids of a table group's id arrays (padded with ``num_rows``), and
  each array's ids remapped to their positions in them (same shapes)."""
  flat = [_valid_ids(a, num_rows, name, checked) for a in id_leaves]
  sizes = [a.shape[0] for a in flat]
  unique, inverse = _unique(jnp.concatenate(flat) if len(flat) > 1 else flat[0], num_rows)
  parts = jnp.split(inverse, np.cumsum(sizes)[:-1].tolist()) if len(flat) > 1 else [inverse]
  return unique, [p.reshape(np.shape(a)) for p, a in zip(parts, id_leaves, strict=True)]


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


# ---------------------------------------------------------------------------------------
# Tables: which leaves of the params are looked up by which ids.


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


def gather(params: Any, ids: Mapping[Any, Any], *, checked: bool = False):
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


# ---------------------------------------------------------------------------------------
# Optimizer state: which leaves are per-row state of which table.


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
  grads: Any,
  opt_state: optax.OptState,
  params: Any,
  touched: TouchedRows | None = None,
  *,
  checked: bool = False,
) -> tuple[Any, optax.OptState]:
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
) -> Callable[..., tuple[Any, Any, TouchedRows]]:
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


def nnx_update(
  model: Any,
  optimizer: Any,
  loss_fn: Callable[..., Any],
  ids: Mapping[Any, Any],
  *args: Any,
  has_aux: bool = False,
  checked: bool = False,
) -> Any:
  r"""A sparse training step for a Flax NNX model and its ``nnx.Optimizer``, in place.

  The sparse counterpart of::

    loss, grads = nnx.value_and_grad(loss_fn)(model, ids, *args)
    optimizer.update(model, grads)

  The model is written as usual, with ``nnx.Embed`` layers or table ``nnx.Param`` s;
  ``ids`` maps each table's path in the model (``'word'`` for an ``nnx.Embed`` at
  ``model.word``, or ``'word.embedding'``; a path naming a submodule covers all its
  tables, which then share the ids) to the ids the loss looks up in it. During the
  call the tables hold only the gathered rows and ``loss_fn(model, local_ids, *args)``
  receives the remapped ids: it must look up every table only through them (``nnx.Embed``
  does). Then ``optimizer.tx`` runs on the touched rows and the new rows are scattered
  into the model's tables and the optimizer's state. Use it inside ``nnx.jit`` (donate
  the model and the optimizer for in-place updates).

  Args:
    model: an ``nnx.Module``.
    optimizer: an ``nnx.Optimizer`` for ``model`` (any ``wrt``).
    loss_fn: ``loss_fn(model, ids, *args) -> scalar`` (or ``(scalar, aux)``).
    ids: ``{path: ids}`` for the tables.
    *args: more arguments of ``loss_fn``.
    has_aux: as in ``nnx.value_and_grad``.
    checked: as in :func:`gather`.

  Returns:
    The loss (and aux), as ``nnx.value_and_grad`` returns it.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import optax_blockada as ob
    >>> from optax_blockada import sparse
    >>> class Model(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.embed = nnx.Embed(100_000, 8, rngs=rngs)
    ...   def __call__(self, ids):
    ...     return self.embed(ids).sum(-1)
    >>> model = Model(nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, ob.rowwise_adagrad(0.5), wrt=nnx.Param)
    >>> def loss_fn(model, ids, target):
    ...   return jnp.mean((model(ids['embed']) - target) ** 2)
    >>> @nnx.jit
    ... def step(model, optimizer, ids, target):
    ...   return sparse.nnx_update(model, optimizer, loss_fn, ids, target)
    >>> for _ in range(30):
    ...   loss = step(model, optimizer, {'embed': jnp.array([4, 2, 4])}, jnp.ones(3))
    >>> print(f"{loss:.4f}", model.embed.embedding.shape)
    0.0000 (100000, 8)
  """
  from flax import nnx

  wrt = optimizer.wrt
  graph_kw = {"graph": optimizer.graph} if getattr(optimizer, "graph", None) is not None else {}
  params = nnx.as_pure(nnx.state(model, wrt, **graph_kw))
  small, local, touched = gather(params, ids, checked=checked)
  # The model holds the gathered rows while the loss runs. If anything raises before the
  # new rows are written (the loss, or apply_gradients rejecting the transform), the
  # model gets its tables back and the optimizer is left untouched.
  nnx.update(model, small)
  try:
    value, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=has_aux)(
      model, local, *args
    )
    grads = nnx.as_pure(nnx.state(grads, wrt, **graph_kw))
    new_params, new_state = apply_gradients(
      optimizer.tx, grads, nnx.as_pure(optimizer.opt_state), params, touched
    )
  except BaseException:
    nnx.update(model, params)
    raise
  nnx.update(model, new_params)
  nnx.update(optimizer.opt_state, nnx.state(new_state, **graph_kw))
  optimizer.step[...] += 1
  return value
