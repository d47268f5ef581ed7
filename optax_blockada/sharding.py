"""Shardings for optimizer states: per-row state sharded like its param, never replicated.

Embedding tables that outgrow one accelerator are sharded along their rows with JAX's
own SPMD (``jit`` with ``NamedSharding``, ``shard_map``, ``jax.distributed`` across
hosts). An optimizer state must then be sharded exactly like the params it belongs
to: a ``(V, 1)`` row-wise accumulator, a ``(V, d)`` diagonal one or a
``(V, 1, n_blocks, k, k)`` block one along ``V`` like its ``(V, d)`` table. A
replicated ``V``-row state on every device would defeat the purpose.

``optax.tree_map_params`` cannot place these states: it maps leaves by the params'
tree and hands a ``(V, d)`` spec to a ``(V, 1)`` or rank-5 leaf. The functions here
know which fields of a state are per-row (``optax_blockada._per_row``, the registry)
and descend through optax's containers (``chain``, ``partition``, ``masked``,
``inject_hyperparams``, ``MultiSteps``):

* per-row fields of this library's states get the param's spec on the axes where the
  state has the param's size, ``None`` on reduced feature axes and trailing block axes;
* their other fields (shared per-leaf matrices, counters) are replicated;
* in any other state, a subtree with the params' structure (``scale_by_adam``'s
  moments, ``MultiSteps``' accumulated gradients) maps leaf by leaf: a leaf of the
  param's shape gets the param's sharding, a scalar is replicated;
* any other scalar is replicated, and any other non-scalar leaf is an error that names
  its path: a big array is never replicated silently.

Two JAX sharding modes:

* **Auto** (``jax.make_mesh(..., axis_types=(AxisType.Auto,))`` or ``jax.sharding.Mesh``):
  ``jit(tx.init)`` alone returns an unsharded state. Build it with
  ``jit(tx.init, out_shardings=state_shardings(tx, params, param_shardings))`` and
  pass the same shardings to the training step's ``in_shardings``/``out_shardings``.
* **Explicit** (``jax.make_mesh``'s default in recent JAX, used under
  ``jax.set_mesh(mesh)``): ``tx.init`` of this library's transforms already shards
  per-row state like the params' sharding types, and ``update`` keeps those types.
  :func:`state_shardings` gives the same shardings, e.g. as targets to restore a
  checkpoint onto another mesh.
"""

from __future__ import annotations

from typing import Any, cast

import jax
import optax
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec, Sharding

from optax_blockada import _geometry, _per_row
from optax_blockada._typing import OptState, Params, ShardingTree, SpecTree

__all__ = ["state_partition_specs", "state_shardings"]


class _Param:
  """The shape and partition spec of one param (an opaque, non-pytree leaf)."""

  __slots__ = ("shape", "spec")

  def __init__(self, shape: tuple[int, ...], spec: PartitionSpec):
    self.shape = shape
    self.spec = spec


def _is_hole(x: Any) -> bool:
  """A place where a state holds nothing for a param: ``None`` or ``optax.MaskedNode``."""
  return x is None or isinstance(x, optax.MaskedNode)


def _is_spec_leaf(x: Any) -> bool:
  return x is None or isinstance(x, (PartitionSpec, Sharding))


def _shape(x: Any, what: str, path: Any) -> tuple[int, ...]:
  shape = getattr(x, "shape", None)
  if shape is None:
    raise TypeError(
      f"state_shardings: {what} at {_geometry.path_str(path)} is {type(x).__name__}, not an "
      "array or jax.ShapeDtypeStruct."
    )
  return tuple(shape)


def _param_specs(
  params: Any, param_shardings: Any, mesh: Mesh | AbstractMesh | None
) -> tuple[Any, Any]:
  """Returns ``(tree of _Param, mesh)`` from the params and their shardings or specs."""
  if param_shardings is None:
    param_shardings = jax.tree.map(lambda p: getattr(p, "sharding", None), params)
    source = "the params' own .sharding"
  else:
    source = "param_shardings"
    try:
      param_shardings = jax.tree.broadcast(param_shardings, params, is_leaf=_is_spec_leaf)
    except (ValueError, TypeError) as e:
      raise ValueError(
        "state_shardings: param_shardings must have the params' tree structure (or be a "
        f"prefix of it), got {param_shardings!r} for params with structure "
        f"{jax.tree.structure(params)}."
      ) from e
  meshes = []
  leaves = []
  param_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  for (path, p), s in zip(param_leaves, treedef.flatten_up_to(param_shardings), strict=True):
    shape = _shape(p, "the param", path)
    if isinstance(s, NamedSharding):
      meshes.append(s.mesh)
      spec = s.spec
    elif isinstance(s, PartitionSpec):
      spec = s
    else:
      raise TypeError(
        f"state_shardings: the sharding of the param at {_geometry.path_str(path)} "
        f"(from {source}) is {s!r}; expected a jax.sharding.NamedSharding or a "
        "PartitionSpec. Pass param_shardings= with NamedShardings, or PartitionSpecs "
        "and mesh=."
      )
    if len(spec) > len(shape):
      raise ValueError(
        f"state_shardings: the partition spec {spec} of the param at "
        f"{_geometry.path_str(path)} has more entries than the param's rank "
        f"(shape {shape})."
      )
    leaves.append(_Param(shape, spec))
  if mesh is None and meshes:
    mesh = meshes[0]
  if any(m != mesh for m in meshes):
    raise ValueError(
      "state_shardings: the params' shardings use different meshes; all params (and so "
      f"the state) must live on one mesh, got {sorted(set(map(repr, meshes)))}."
    )
  return treedef.unflatten(leaves), mesh


def _error(path: Any, leaf: Any, why: str) -> ValueError:
  return ValueError(
    f"state_shardings: cannot place the state leaf at {_geometry.path_str(path)} with "
    f"shape {tuple(leaf.shape)}: {why}. Only per-row states of optax_blockada, leaves "
    "shaped like their param inside a params-shaped subtree, and scalars can be placed; "
    "a non-scalar leaf is never replicated silently. Build the shardings for this "
    "state by hand (e.g. with jax.tree.map over it)."
  )


def _match_params(node: Any, info: Any) -> list[Any] | None:
  """The ``_Param`` per leaf if ``node`` has the params' structure (holes allowed)."""
  treedef = jax.tree.structure(node, is_leaf=_is_hole)
  try:
    aligned = treedef.flatten_up_to(info)
  except (ValueError, TypeError):
    return None
  if not all(a is None or isinstance(a, _Param) for a in aligned):
    return None
  return aligned


def _leafwise(node: Any, info: Any, path: Any, *, per_row: bool) -> Any:
  """Specs for a subtree with the params' structure."""
  aligned = _match_params(node, info)
  if aligned is None:
    what = "a per-row field" if per_row else "a subtree"
    raise ValueError(
      f"state_shardings: {what} at {_geometry.path_str(path)} does not have the params' "
      f"structure {jax.tree.structure(info)}; got {jax.tree.structure(node)}. Were the "
      "state and params made for each other?"
    )
  with_path, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=_is_hole)
  out = []
  for (sub, leaf), param in zip(with_path, aligned, strict=True):
    leaf_path = (*path, *sub)
    if _is_hole(leaf):
      out.append(leaf)
      continue
    shape = _shape(leaf, "the state leaf", leaf_path)
    if param is None:
      raise _error(leaf_path, leaf, "its param is None")
    if per_row:
      rank = len(param.shape)
      if len(shape) < rank or any(
        s not in (p, 1) for s, p in zip(shape[:rank], param.shape, strict=True)
      ):
        raise _error(
          leaf_path,
          leaf,
          f"a per-row state leaf of a param of shape {param.shape} must have the param's "
          "rank with some axes reduced to 1, then optional block axes",
        )
      out.append(_geometry.row_spec(param.spec, param.shape, shape))
    elif shape == param.shape:
      out.append(param.spec)
    elif shape == ():
      out.append(PartitionSpec())
    else:
      raise _error(leaf_path, leaf, f"its param has another shape, {param.shape}")
  return treedef.unflatten(out)


def _place(node: Any, info: Any, path: Any) -> Any:
  """Specs for one node of a state: the one walk over states (``_per_row.map_state``)."""

  def other(node, path):
    if _is_hole(node):
      return node
    structure = jax.tree.structure(node)
    if structure.num_leaves == 0:  # EmptyState(), (), {}: nothing to place.
      return node
    if structure.num_nodes > 1:
      if _match_params(node, info) is not None:
        return _leafwise(node, info, path, per_row=False)
      return _per_row.RECURSE
    if isinstance(info, _Param):  # The params are a single array.
      return _leafwise(node, info, path, per_row=False)
    if _shape(node, "the state leaf", path) == ():
      return PartitionSpec()
    raise _error(path, node, "it is not inside a params-shaped subtree")

  return _per_row.map_state(
    node,
    per_row=lambda value, path: _leafwise(value, info, path, per_row=True),
    # Shared state (per-leaf matrices, counters): replicated.
    shared=lambda value, path: jax.tree.map(lambda _: PartitionSpec(), value),
    other=other,
    path=path,
  )


def _abstract_state(
  tx_or_state: optax.GradientTransformation | OptState, params: Params
) -> OptState:
  # A GradientTransformation, or any object with init/update such as optax.MultiSteps.
  init = getattr(tx_or_state, "init", None)
  if callable(init) and callable(getattr(tx_or_state, "update", None)):
    return jax.eval_shape(init, params)
  return cast(OptState, tx_or_state)  # a state, not a transformation


def state_partition_specs(
  tx_or_state: optax.GradientTransformation | OptState,
  params: Params,
  param_specs: SpecTree | ShardingTree = None,
) -> SpecTree:
  """The ``PartitionSpec`` of every leaf of an optimizer state, from the params' specs.

  Per-row state of this library's transforms (:func:`optax_blockada.rowwise_adagrad`,
  :func:`optax_blockada.diagonal_adagrad`, block Adagrad) takes its param's spec on
  the axes where it has the param's size and ``None`` elsewhere (feature axes reduced
  to 1, trailing block axes); shared fields and scalars get ``P()`` (replicated).
  The rules are those of :func:`state_shardings`, without a mesh: use these specs as
  ``in_specs``/``out_specs`` of ``jax.shard_map``.

  Args:
    tx_or_state: an ``optax.GradientTransformation`` or ``optax.MultiSteps`` (its
      state is built abstractly with ``jax.eval_shape(tx.init, params)``), or a state (arrays or
      ``jax.ShapeDtypeStruct``).
    params: the params, as arrays or ``jax.ShapeDtypeStruct`` (abstract is enough).
    param_specs: a pytree of ``PartitionSpec`` or ``NamedSharding`` with the params'
      structure (or a prefix of it); ``None`` reads the params' own ``.sharding``.

  Returns:
    A pytree with the state's structure and a ``PartitionSpec`` per array leaf.

  Raises:
    ValueError: for a non-scalar state leaf that cannot be placed (its path is named),
      or specs that do not fit the params.
    TypeError: for a param sharding that is neither a ``NamedSharding`` nor a
      ``PartitionSpec``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> import optax_blockada as ob
    >>> params = {'table': jax.ShapeDtypeStruct((1000, 64), jnp.float32),
    ...           'bias': jax.ShapeDtypeStruct((1000,), jnp.float32)}
    >>> specs = {'table': P('rows', None), 'bias': P('rows')}
    >>> ob.sharding.state_partition_specs(ob.rowwise_adagrad(0.1), params, specs)
    (RowwiseAdagradState(sum_of_squares={'bias': P('rows',), 'table': P('rows', None)},
                         feature_shape={'bias': P(), 'table': P()}),
     EmptyState())
  """
  state = _abstract_state(tx_or_state, params)
  info, _ = _param_specs(params, param_specs, mesh=None)
  return _place(state, info, ())


def state_shardings(
  tx_or_state: optax.GradientTransformation | OptState,
  params: Params,
  param_shardings: ShardingTree | SpecTree = None,
  *,
  mesh: Mesh | None = None,
) -> ShardingTree:
  """The ``NamedSharding`` of every leaf of an optimizer state, from the params'.

  The state is sharded exactly like the params it belongs to, never silently
  replicated:

  * per-row fields of registered states (:func:`optax_blockada.register_per_row_state`:
    this library's and ``optax.adagrad``'s; e.g. a ``(V, 1)``
    row-wise accumulator, a ``(V, d)`` diagonal one, ``(V, 1, n_blocks, k, k)``
    block matrices, for a ``(V, d)`` table) take the param's spec on the axes where
    they have the param's size, ``None`` on reduced feature axes and trailing axes;
  * other fields of this library's states (shared per-leaf matrices, counters) and
    scalars anywhere are replicated (``P()``);
  * optax containers (``chain``, ``partition``, ``masked``, ``inject_hyperparams``,
    ``MultiSteps``) are descended into; a subtree with the params' structure (e.g.
    ``scale_by_adam``'s moments) maps leaf by leaf: the param's shape gets the param's
    sharding, a scalar is replicated;
  * any other non-scalar leaf raises a ``ValueError`` naming its path.

  Use it to build a sharded state without ever materialising a replicated one
  (``jit(tx.init, out_shardings=...)``), as the state's ``in_shardings`` and
  ``out_shardings`` of a training step, and as restore targets for a checkpoint.

  Args:
    tx_or_state: an ``optax.GradientTransformation`` or ``optax.MultiSteps`` (its
      state is built abstractly with ``jax.eval_shape(tx.init, params)``), or a state (arrays or
      ``jax.ShapeDtypeStruct``).
    params: the params, as arrays or ``jax.ShapeDtypeStruct`` (abstract is enough).
    param_shardings: a pytree with the params' structure (or a prefix of it) of
      ``NamedSharding``, or of ``PartitionSpec`` together with ``mesh``; ``None``
      (default) reads the params' own ``.sharding``.
    mesh: the mesh for ``PartitionSpec`` param shardings; ``None`` takes the mesh of
      the ``NamedSharding`` s, or the mesh set with ``jax.set_mesh``.

  Returns:
    A pytree with the state's structure and a ``NamedSharding`` per array leaf
    (``None`` and ``optax.MaskedNode`` where the state has them).

  Raises:
    ValueError: for a non-scalar state leaf that cannot be placed (its path is named),
      shardings that do not fit the params, several meshes, or no mesh at all.
    TypeError: for a param sharding that is neither a ``NamedSharding`` nor a
      ``PartitionSpec``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    >>> import optax_blockada as ob
    >>> n = len(jax.devices())
    >>> mesh = jax.make_mesh((n,), ('rows',), axis_types=(AxisType.Auto,))
    >>> params = {'table': jnp.ones((8 * n, 16)), 'bias': jnp.zeros(8 * n)}
    >>> param_sh = {'table': NamedSharding(mesh, P('rows', None)),
    ...             'bias': NamedSharding(mesh, P('rows'))}
    >>> params = jax.device_put(params, param_sh)
    >>> tx = ob.rowwise_adagrad(0.1)
    >>> state_sh = ob.sharding.state_shardings(tx, params, param_sh)
    >>> state_sh[0].sum_of_squares['table'].spec
    P('rows', None)
    >>> state = jax.jit(tx.init, out_shardings=state_sh)(params)
    >>> state[0].sum_of_squares['table'].sharding.shard_shape((8 * n, 1))
    (8, 1)
  """
  state = _abstract_state(tx_or_state, params)
  info, mesh = _param_specs(params, param_shardings, mesh)
  if mesh is None:
    current = jax.sharding.get_mesh()
    if current is None or current.empty:
      raise ValueError(
        "state_shardings: no mesh: the param shardings are PartitionSpecs and no mesh "
        "is set. Pass mesh=, NamedShardings, or call it under jax.set_mesh(mesh)."
      )
    mesh = current
  specs = _place(state, info, ())
  return jax.tree.map(
    lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
  )
