"""Sharded tables and optimizer state on 8 CPU devices (root conftest.py forces them).

References are independent of the code under test: single-device runs of the same
training step, explicit per-shape sharding rules, and JAX's own shard shapes.
"""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_blockada as ob
from optax_blockada._geometry import per_row_fields
from optax_blockada.sharding import state_partition_specs, state_shardings

V, D, B = 64, 8, 32
STEPS = 20
AUTO = (AxisType.Auto, AxisType.Auto)
PARAM_SPECS = {"w": P("rows", None), "c": P("rows", None), "bw": P("rows"), "bc": P("rows")}
PARAM_SPECS["scale"] = P()

# jaxlib 0.10's batched LAPACK eigh on CPU fans out into the thread pool its caller runs
# on; with several (forced host) CPU devices running it at once this can deadlock (seen
# here from 32 rows of 32 x 32 per device). The matmul-only root avoids LAPACK; the
# sharding of the state does not depend on the root.
BLOCK_ROOT = "newton_schulz"

TRANSFORMS = {
  "diagonal": lambda: ob.diagonal_adagrad(0.2),
  "rowwise": lambda: ob.rowwise_adagrad(0.2),
  # Per-row (V, 1, 1, d, d) matrices.
  "block": lambda: ob.block_adagrad(0.5, root=BLOCK_ROOT),
  # Per-row (V, 1, 1) scalars times a shared (1, d, d) matrix, which is replicated (its
  # eigh is one matrix per device, not a batch).
  "block_rows_x_shared": lambda: ob.block_adagrad(0.5, structure="rows_x_shared"),
}


# The per-row state of the (V, d) table w, by transform.
PER_ROW_SHAPES = {
  "diagonal": (V, D),
  "rowwise": (V, 1),
  "block": (V, 1, 1, D, D),
  "block_rows_x_shared": (V, 1, 1),
}


def per_row(state, key):
  """The (first) per-row state leaf of param ``key`` in ``state[0]``."""
  inner = state[0]
  return getattr(inner, per_row_fields(inner)[0])[key]


# Eight devices of the default backend: the root conftest.py forces 8 CPU devices, and
# skips these tests (with the command that runs them) where the backend has fewer, such
# as one GPU.
pytestmark = pytest.mark.multidevice


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  table = lambda: jnp.asarray(rng.normal(size=(V, D)) * 0.3, jnp.float32)
  return {
    "w": table(),
    "c": table(),
    "bw": jnp.zeros(V, jnp.float32),
    "bc": jnp.zeros(V, jnp.float32),
    "scale": jnp.ones((), jnp.float32),
  }


def make_batches(seed=1, steps=STEPS):
  """GloVe-style (i, j, log x_ij, weight) batches; rows 40.. are never touched."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    i = jnp.asarray(rng.integers(0, 40, B), jnp.int32)
    j = jnp.asarray(rng.integers(0, 40, B), jnp.int32)
    y = jnp.asarray(rng.normal(size=B), jnp.float32)
    f = jnp.asarray(rng.uniform(0.1, 1.0, B), jnp.float32)
    out.append((i, j, y, f))
  return out


def loss_fn(params, batch, out_spec=None):
  """Weighted least squares of GloVe; ``out_spec`` is the gathers' sharding (Explicit)."""
  i, j, y, f = batch

  def take(table, ids):
    if out_spec is None:
      return table[ids]
    return table.at[ids].get(out_sharding=P(out_spec, *([None] * (table.ndim - 1))))

  pred = params["scale"] * jnp.sum(take(params["w"], i) * take(params["c"], j), axis=-1)
  pred = pred + take(params["bw"], i) + take(params["bc"], j)
  return jnp.mean(f * (pred - y) ** 2)


def make_step(tx, out_spec=None):
  def step(params, state, batch):
    grads = jax.grad(loss_fn)(params, batch, out_spec)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def single_device_run(tx, params, batches):
  step = jax.jit(make_step(tx))
  state = tx.init(params)
  for batch in batches:
    params, state = step(params, state, batch)
  return params, state


@functools.cache
def reference_run(name):
  """The single-device run of ``TRANSFORMS[name]`` (shared by the Auto and Explicit tests)."""
  return single_device_run(TRANSFORMS[name](), make_params(), make_batches())


def assert_close(a, b):
  # Sharded runs sum the batch loss and the gradients in another order: float32 rounding.
  chex.assert_trees_all_close(a, b, rtol=2e-5, atol=2e-6)


def named(mesh, specs):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def shard_shapes(x):
  return {tuple(s.data.shape) for s in x.addressable_shards}


def expected_spec(shape):
  """The intended spec by shape alone: V-row leaves along 'rows', the rest replicated.

  Every per-row state leaf here has the rows first; shared leaves (scalars, block
  Adagrad's (n_blocks, k, k) matrices) have fewer than V entries along axis 0.
  """
  if shape and shape[0] == V:
    return P("rows", *([None] * (len(shape) - 1)))
  return P()


def assert_specs(state, specs):
  leaves = jax.tree_util.tree_leaves_with_path(state)
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, (P, NamedSharding)))
  assert len(leaves) == len(spec_leaves)
  for (path, leaf), spec in zip(leaves, spec_leaves, strict=True):
    spec = spec.spec if isinstance(spec, NamedSharding) else spec
    # P() and P(None, None) both mean replicated: compare entry by entry.
    pad = lambda sp, n=leaf.ndim: (*sp, *([None] * (n - len(sp))))
    got, want = pad(spec), pad(expected_spec(tuple(leaf.shape)))
    assert got == want, (jax.tree_util.keystr(path), spec)


# --- The helper's specs -------------------------------------------------------------


def test_specs_of_diagonal_and_rowwise_states():
  params = make_params()
  block = state_partition_specs(
    ob.scale_by_block_adagrad(structure="rows_x_shared", block_size=4), params, PARAM_SPECS
  )
  assert isinstance(block, ob.RowsXSharedBlockAdagradState)
  assert block.row_sums["w"] == P("rows", None, None)  # (V, 1, 2)
  assert block.row_sums["bw"] == P("rows", None)  # (V, 1)
  assert block.shared_sums["w"] == P() and block.count == P()  # (2, 4, 4), ()
  assert block.cache == optax.EmptyState()
  cached = state_partition_specs(
    ob.scale_by_block_adagrad(structure="rows_x_shared", block_size=4, update_root_every=2),
    params,
    PARAM_SPECS,
  )
  # The cached decomposition is per leaf, like C: replicated.
  assert cached.cache.shared_basis["w"] == P() and cached.cache.shared_spectrum["w"] == P()
  block = state_partition_specs(
    ob.scale_by_block_adagrad(structure="blocks", block_size=4), params, PARAM_SPECS
  )
  assert block.block_sums["w"] == P("rows", None, None, None, None)  # (V, 1, 2, 4, 4)
  diag = state_partition_specs(ob.diagonal_adagrad(0.1), params, PARAM_SPECS)
  assert diag[0].sum_of_squares == PARAM_SPECS
  row = state_partition_specs(ob.rowwise_adagrad(0.1), params, PARAM_SPECS)
  # (V, 1) accumulators: rows along 'rows', the reduced feature axis unsharded.
  assert row[0].sum_of_squares == PARAM_SPECS
  assert row[1] == optax.EmptyState()
  # A table also sharded along its features: the row-wise state drops that axis.
  specs = {**PARAM_SPECS, "w": P("rows", "model")}
  assert state_partition_specs(ob.diagonal_adagrad(0.1), params, specs)[0].sum_of_squares["w"] == P(
    "rows", "model"
  )
  assert state_partition_specs(ob.rowwise_adagrad(0.1), params, specs)[0].sum_of_squares["w"] == P(
    "rows", None
  )
  # A leading feature axis: feature_axes=0 reduces axis 0, rows run along axis 1.
  tx = ob.rowwise_adagrad(0.1, feature_axes={"w": 0, "c": 0, "bw": None, "bc": None, "scale": None})
  specs_t = {k: P(None, "rows") if v == P("rows", None) else v for k, v in PARAM_SPECS.items()}
  params_t = {k: v.T if v.ndim == 2 else v for k, v in params.items()}
  out = state_partition_specs(tx, params_t, specs_t)[0].sum_of_squares
  assert out["w"] == P(None, "rows") and out["bw"] == P("rows")


def test_specs_through_chain_partition_masked_inject_and_multisteps():
  params = make_params()
  labels = {"w": "emb", "c": "emb", "bw": "bias", "bc": "bias", "scale": "bias"}
  mask = {"w": False, "c": False, "bw": True, "bc": True, "scale": False}
  tx = optax.MultiSteps(
    optax.chain(
      optax.clip_by_global_norm(10.0),
      optax.partition(
        {
          "emb": optax.inject_hyperparams(ob.rowwise_adagrad)(learning_rate=0.1),
          "bias": optax.chain(optax.masked(ob.diagonal_adagrad(0.1), mask), optax.adam(0.01)),
        },
        labels,
      ),
    ),
    every_k_schedule=2,
  )
  abstract = jax.eval_shape(tx.init, params)
  specs = state_partition_specs(tx, params, PARAM_SPECS)
  assert_specs(abstract, specs)
  # What is there: (V, 1) row-wise accumulators for w and c; for bw and bc, (V,)
  # diagonal accumulators, adam's mu and nu, and MultiSteps' accumulated gradients,
  # which also hold (V, d) leaves for w and c.
  shapes = [tuple(x.shape) for x in jax.tree.leaves(abstract)]
  assert shapes.count((V, 1)) == 2
  assert shapes.count((V,)) == 2 + 2 * 2 + 2
  assert shapes.count((V, D)) == 2
  # The same through jit(init, out_shardings=...): the state really is placed.
  mesh = jax.make_mesh((2, 4), ("data", "rows"), axis_types=AUTO)
  sh = state_shardings(tx, params, named(mesh, PARAM_SPECS))
  state = jax.jit(tx.init, out_shardings=sh)(jax.device_put(params, named(mesh, PARAM_SPECS)))
  for leaf in jax.tree.leaves(state):
    # Row-wise Adagrad's feature_shape leaves, (1, d), hold no rows and are replicated.
    rows = leaf.shape[0] // 4 if leaf.ndim and leaf.shape[0] == V else None
    assert shard_shapes(leaf) == (
      {tuple(leaf.shape)} if rows is None else {(rows, *leaf.shape[1:])}
    )


def test_specs_for_single_array_params_and_given_states():
  w = jax.ShapeDtypeStruct((V, D), jnp.float32)
  tx = optax.chain(ob.rowwise_adagrad(0.1), optax.scale_by_adam())
  specs = state_partition_specs(tx, w, P("rows"))
  assert specs[0][0].sum_of_squares == P("rows", None)
  assert specs[1].count == P() and specs[1].mu == P("rows") and specs[1].nu == P("rows")
  # A state instead of a transform; a params-structured tree of NamedShardings.
  mesh = jax.make_mesh((8,), ("rows",), axis_types=(AxisType.Auto,))
  state = jax.eval_shape(tx.init, w)
  sh = state_shardings(state, w, NamedSharding(mesh, P("rows", None)))
  assert sh[0][0].sum_of_squares == NamedSharding(mesh, P("rows", None))
  assert sh[1].count == NamedSharding(mesh, P())


def test_params_own_shardings_and_mesh_from_set_mesh():
  mesh = jax.make_mesh((2, 4), ("data", "rows"), axis_types=AUTO)
  params = jax.device_put(make_params(), named(mesh, PARAM_SPECS))
  sh = state_shardings(ob.rowwise_adagrad(0.1), params)  # read from params[...].sharding
  assert sh[0].sum_of_squares["w"] == NamedSharding(mesh, P("rows", None))
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  with jax.set_mesh(mesh):
    sh2 = state_shardings(ob.rowwise_adagrad(0.1), abstract, PARAM_SPECS)
  assert sh2 == sh


# --- Auto mode: eval_shape + out_shardings, then 20 sharded steps --------------------


@pytest.mark.parametrize("name", ["diagonal", "rowwise", "block"])
def test_auto_mode_state_sharded_and_20_steps_equal_single_device(name):
  tx = TRANSFORMS[name]()
  params, batches = make_params(), make_batches()
  ref_params, ref_state = reference_run(name)

  mesh = jax.make_mesh((2, 4), ("data", "rows"), axis_types=AUTO)
  param_sh = named(mesh, PARAM_SPECS)
  abstract_params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  abstract_state = jax.eval_shape(tx.init, abstract_params)
  state_sh = state_shardings(abstract_state, abstract_params, PARAM_SPECS, mesh=mesh)
  assert_specs(abstract_state, state_sh)
  params = jax.device_put(params, param_sh)
  state = jax.jit(tx.init, out_shardings=state_sh)(params)
  # Sharded, not replicated: each device holds V / 4 rows of every per-row leaf.
  assert shard_shapes(per_row(state, "w")) == {(V // 4, *PER_ROW_SHAPES[name][1:])}
  assert shard_shapes(per_row(state, "bw")) == {(V // 4, *per_row(state, "bw").shape[1:])}
  assert shard_shapes(per_row(state, "scale")) == {per_row(state, "scale").shape}

  batch_sh = NamedSharding(mesh, P("data"))
  step = jax.jit(
    make_step(tx),
    in_shardings=(param_sh, state_sh, batch_sh),
    out_shardings=(param_sh, state_sh),
  )
  for batch in batches:
    params, state = step(params, state, jax.device_put(batch, batch_sh))
  assert shard_shapes(per_row(state, "c")) == {(V // 4, *PER_ROW_SHAPES[name][1:])}
  assert params["w"].sharding == param_sh["w"]
  assert_close(params, ref_params)
  assert_close(state, ref_state)
  # The run moved the touched rows and left the others where they were.
  assert not np.allclose(ref_params["w"][:40], make_params()["w"][:40])
  np.testing.assert_array_equal(ref_params["w"][40:], make_params()["w"][40:])


# --- Explicit mode: sharding types stable from init through update -------------------


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_explicit_mode_types_stable_and_20_steps_equal_single_device(name):
  tx = TRANSFORMS[name]()
  params, batches = make_params(), make_batches()
  ref_params, ref_state = reference_run(name)

  mesh = jax.make_mesh((2, 4), ("data", "rows"))
  assert mesh.axis_types == (AxisType.Explicit, AxisType.Explicit)
  with jax.set_mesh(mesh):
    params = jax.device_put(params, PARAM_SPECS)
    state = tx.init(params)
    types = jax.tree.map(jax.typeof, state)
    assert jax.tree.map(jax.typeof, jax.jit(tx.init)(params)) == types
    # The types carry the intended specs, and the helper agrees with them.
    assert_specs(state, jax.tree.map(lambda t: t.sharding.spec, types))
    assert_specs(state, state_partition_specs(tx, params, PARAM_SPECS))
    assert shard_shapes(per_row(state, "c")) == {(V // 4, *PER_ROW_SHAPES[name][1:])}
    step = jax.jit(make_step(tx, out_spec="data"))
    for batch in batches:
      params, state = step(params, state, jax.device_put(batch, P("data")))
      assert jax.tree.map(jax.typeof, state) == types
    assert jax.typeof(params["w"]).sharding.spec == P("rows", None)
  assert_close(params, ref_params)
  assert_close(state, ref_state)


def test_explicit_mode_skips_nonfinite_rows_as_on_one_device():
  # A NaN target: the rows that example looks up (one per table) and `scale` are skipped.
  tx = ob.skip_nonfinite_rows(ob.rowwise_adagrad(0.2))
  params, batches = make_params(), make_batches(steps=3)
  i, j, y, f = batches[1]
  batches[1] = (i, j, y.at[5].set(jnp.nan), f)
  ref_params, ref_state = single_device_run(tx, params, batches)
  counts = {"w": 1, "bw": 1, "c": 1, "bc": 1, "scale": 1}
  assert jax.tree.map(int, ref_state.skipped_rows) == counts
  mesh = jax.make_mesh((2, 4), ("data", "rows"))
  with jax.set_mesh(mesh):
    params = jax.device_put(params, PARAM_SPECS)
    state = tx.init(params)
    step = jax.jit(make_step(tx, out_spec="data"))
    for batch in batches:
      params, state = step(params, state, jax.device_put(batch, P("data")))
    assert jax.typeof(params["w"]).sharding.spec == P("rows", None)
  assert jax.tree.map(int, state.skipped_rows) == counts
  assert_close(params, ref_params)


def test_explicit_mode_sparse_step_equals_single_device_and_keeps_types():
  from optax_blockada import sparse

  tx = TRANSFORMS["rowwise"]()
  params, batches = make_params(), make_batches(steps=5)

  def step(params, state, batch):
    i, j, y, f = batch
    ids = {"w": i, "bw": i, "c": j, "bc": j}

    def loss(small, local):
      pred = small["scale"] * jnp.sum(small["w"][local["w"]] * small["c"][local["c"]], axis=-1)
      pred = pred + small["bw"][local["bw"]] + small["bc"][local["bc"]]
      return jnp.mean(f * (pred - y) ** 2)

    _, grads, touched = sparse.value_and_grad(loss)(params, ids)
    return sparse.apply_gradients(tx, grads, state, params, touched)

  ref_params, ref_state = params, tx.init(params)
  for batch in batches:
    ref_params, ref_state = jax.jit(step)(ref_params, ref_state, batch)
  mesh = jax.make_mesh((2, 4), ("data", "rows"))
  with jax.set_mesh(mesh):
    params = jax.device_put(params, PARAM_SPECS)
    state = tx.init(params)
    types = jax.tree.map(jax.typeof, (params, state))
    sharded_step = jax.jit(step)
    for batch in batches:
      params, state = sharded_step(params, state, jax.device_put(batch, P("data")))
      assert jax.tree.map(jax.typeof, (params, state)) == types
  assert_close(params, ref_params)
  assert_close(state, ref_state)


def test_explicit_mode_eager_init_without_mesh_context_keeps_the_sharding():
  mesh = jax.make_mesh((8,), ("rows",))
  w = jax.device_put(jnp.ones((V, D)), NamedSharding(mesh, P("rows", None)))
  acc = ob.rowwise_adagrad(0.1).init(w)[0].sum_of_squares
  assert acc.sharding == NamedSharding(mesh, P("rows", None))
  assert shard_shapes(acc) == {(V // 8, 1)}


# --- Checkpoint on 8 devices, restore on 4 ------------------------------------------


def test_orbax_restore_onto_a_smaller_mesh_then_continue(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  # All three Adagrads in one state: block on w, row-wise on c, diagonal on the rest.
  labels = {"w": "block", "c": "rowwise", "bw": "diagonal", "bc": "diagonal"}
  labels["scale"] = "diagonal"
  tx = optax.partition({k: TRANSFORMS[k]() for k in set(labels.values())}, labels)
  params0, batches = make_params(), make_batches()

  def sharded_step(mesh):
    param_sh = named(mesh, PARAM_SPECS)
    state_sh = state_shardings(tx, params0, param_sh)
    batch_sh = NamedSharding(mesh, P("rows"))
    step = jax.jit(
      make_step(tx), in_shardings=(param_sh, state_sh, batch_sh), out_shardings=(param_sh, state_sh)
    )
    return lambda params, state, batch: step(params, state, jax.device_put(batch, batch_sh))

  mesh8 = jax.make_mesh((8,), ("rows",), axis_types=(AxisType.Auto,))
  mesh4 = jax.make_mesh((4,), ("rows",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])
  # The uninterrupted run on 8 devices, checkpointed after 10 steps.
  param_sh8 = named(mesh8, PARAM_SPECS)
  params = jax.device_put(params0, param_sh8)
  state = jax.jit(tx.init, out_shardings=state_shardings(tx, params0, param_sh8))(params)
  step8 = sharded_step(mesh8)
  ckpt = ocp.StandardCheckpointer()
  for t, batch in enumerate(batches):
    if t == 10:
      half_state = state
      ckpt.save(tmp_path / "ckpt", {"params": params, "state": state})
      ckpt.wait_until_finished()
    params, state = step8(params, state, batch)
  full_params, full_state = params, state

  abstract_params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params0)
  param_sh4 = named(mesh4, PARAM_SPECS)
  state_sh4 = state_shardings(tx, abstract_params, param_sh4)
  with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
  target = {
    "params": jax.tree.map(with_sharding, abstract_params, param_sh4),
    "state": jax.tree.map(with_sharding, jax.eval_shape(tx.init, abstract_params), state_sh4),
  }
  restored = ckpt.restore(tmp_path / "ckpt", target)
  inner = restored["state"].inner_states
  per_row = {
    "block": (inner["block"].inner_state[0].block_sums["w"], (V // 4, 1, 1, D, D)),
    "rowwise": (inner["rowwise"].inner_state[0].sum_of_squares["c"], (V // 4, 1)),
    "diagonal": (inner["diagonal"].inner_state[0].sum_of_squares["bw"], (V // 4,)),
  }
  for leaf, shard_shape in per_row.values():
    assert len(leaf.sharding.device_set) == 4
    assert leaf.sharding.spec[0] == "rows"
    assert shard_shapes(leaf) == {shard_shape}
  chex.assert_trees_all_equal(restored["state"], half_state)

  params, state = restored["params"], restored["state"]
  step4 = sharded_step(mesh4)
  for batch in batches[10:]:
    params, state = step4(params, state, batch)
  assert params["w"].sharding == NamedSharding(mesh4, P("rows", None))
  assert_close(params, full_params)
  assert_close(state, full_state)


# --- axis_name: the feature axis sharded inside shard_map ----------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_axis_name_psums_the_row_statistic_inside_shard_map(reduction):
  rng = np.random.default_rng(3)
  params = {
    "table": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
    "bias": jnp.zeros(16, jnp.float32),
    "proj": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32),
  }
  specs = {"table": P("rows", "feat"), "bias": P("rows"), "proj": P()}
  grads = [
    jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    for _ in range(5)
  ]
  for g in grads[:3]:
    g["table"] = g["table"].at[2].set(0.0)  # a row untouched on some steps
  kwargs = dict(initial_accumulator_value=0.1, reduction=reduction)
  reference = ob.scale_by_rowwise_adagrad(**kwargs)
  # proj is replicated over 'feat', so its rows are whole on every device: no psum.
  sharded = ob.scale_by_rowwise_adagrad(
    **kwargs, axis_name={"table": "feat", "bias": None, "proj": None}
  )
  local = ob.scale_by_rowwise_adagrad(**kwargs)

  mesh = jax.make_mesh((2, 4), ("rows", "feat"), axis_types=AUTO)
  state_specs = state_partition_specs(reference, params, specs)
  assert state_specs.sum_of_squares["table"] == P("rows", None)

  def run(tx, in_map, check_vma=True, bare=False):
    st_specs = state_specs._replace(feature_shape=None) if bare else state_specs

    def update(g, state):
      return tx.update(g, state)

    if in_map:
      update = jax.shard_map(
        update,
        mesh=mesh,
        in_specs=(specs, st_specs),
        out_specs=(specs, st_specs),
        check_vma=check_vma,
      )
    state, updates = reference.init(params), []
    if bare:
      state = state._replace(feature_shape=None)
    for g in grads:
      u, state = jax.jit(update)(g, state)
      updates.append(u)
    return updates, state

  ref_u, ref_s = run(reference, False)
  got_u, got_s = run(sharded, True)
  chex.assert_trees_all_close(got_u, ref_u, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(got_s, ref_s, rtol=1e-6)
  # Without axis_name each device would use the statistic of its quarter row. The state
  # records rows of 8 and refuses the local rows of 2; a state without that record (built
  # by hand) is refused by JAX as not replicated over 'feat', and unchecked it is wrong.
  with pytest.raises(ValueError, match=r"made for rows of shape \(1, 8\).*rows of shape \(1, 2\)"):
    run(local, True)
  with pytest.raises(ValueError, match="replicated across mesh axis 'feat'"):
    run(local, True, bare=True)
  wrong_u, _ = run(local, True, check_vma=False, bare=True)
  assert not np.allclose(wrong_u[0]["table"], ref_u[0]["table"], rtol=1e-3)


def test_axis_name_with_inject_hyperparams_and_a_callable():
  rng = np.random.default_rng(4)
  table = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)
  grads = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)
  mesh = jax.make_mesh((8,), ("feat",), axis_types=(AxisType.Auto,))
  pick = lambda path, leaf: "feat" if leaf.ndim == 2 else None
  ref = ob.rowwise_adagrad(0.3)
  want = ref.update(grads, ref.init(table), table)[0]

  def sharded_update(tx):
    def update(g, p):
      return tx.update(g, tx.init(p), p)[0]

    specs = P(None, "feat")
    return jax.jit(jax.shard_map(update, mesh=mesh, in_specs=specs, out_specs=specs))

  by_name = optax.inject_hyperparams(ob.rowwise_adagrad)(learning_rate=0.3, axis_name="feat")
  by_callable = optax.inject_hyperparams(ob.rowwise_adagrad, static_args=("axis_name",))(
    learning_rate=0.3, axis_name=pick
  )
  for tx in (by_name, by_callable):
    chex.assert_trees_all_close(sharded_update(tx)(grads, table), want, rtol=1e-6)


@pytest.mark.parametrize("bad", [3, ("feat", 1), jnp.zeros(2)])
def test_axis_name_must_be_names(bad):
  with pytest.raises(TypeError, match="axis_name must be"):
    ob.scale_by_rowwise_adagrad(axis_name=bad)
  with pytest.raises(TypeError, match="axis_name must be"):
    ob.rowwise_adagrad(0.1, axis_name=bad)


def test_axis_name_callable_returning_a_bad_value_is_a_clear_error():
  tx = ob.scale_by_rowwise_adagrad(axis_name=lambda path, leaf: 7)
  w = jnp.ones((4, 2))
  with pytest.raises(TypeError, match=r"axis_name.*<root>.*got 7"):
    tx.update(w, tx.init(w))


# --- Clear errors --------------------------------------------------------------------


def _opaque_transform():
  """A transform a user wrote: a non-scalar state leaf not shaped like any param."""

  def init_fn(params):
    del params
    return {"buffer": jnp.zeros((V, 3))}

  return optax.GradientTransformation(init_fn, lambda u, s, p=None: (u, s))


def test_an_unplaceable_leaf_is_an_error_naming_its_path():
  params = make_params()
  tx = optax.chain(ob.rowwise_adagrad(0.1), _opaque_transform())
  with pytest.raises(ValueError, match=r"\[1\]\['buffer'\].*\(64, 3\).*never replicated"):
    state_partition_specs(tx, params, PARAM_SPECS)
  # A params-shaped subtree whose leaf has another shape (adafactor's factored rows).
  w = {"w": jax.ShapeDtypeStruct((256, 256), jnp.float32)}
  with pytest.raises(ValueError, match=r"cannot place the state leaf at .*'w'"):
    state_partition_specs(optax.adafactor(0.1), w, {"w": P("rows", None)})


def test_bad_param_shardings_are_clear_errors():
  params = make_params()
  tx = ob.rowwise_adagrad(0.1)
  with pytest.raises(TypeError, match=r"\[.bc.\].*SingleDeviceSharding.*NamedSharding"):
    state_shardings(tx, params)  # single-device arrays carry no NamedSharding
  with pytest.raises(ValueError, match="no mesh"):
    state_shardings(tx, params, PARAM_SPECS)
  with pytest.raises(ValueError, match="prefix"):
    state_partition_specs(tx, params, {"w": P("rows")})
  with pytest.raises(ValueError, match=r"P\('rows', None, None\).*\['bw'\]"):
    state_partition_specs(tx, params, {**PARAM_SPECS, "bw": P("rows", None, None)})
  mesh_a = jax.make_mesh((8,), ("rows",), axis_types=(AxisType.Auto,))
  mesh_b = jax.make_mesh((4,), ("rows",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])
  mixed = {**named(mesh_a, PARAM_SPECS), "c": NamedSharding(mesh_b, P("rows", None))}
  with pytest.raises(ValueError, match="different meshes"):
    state_shardings(tx, params, mixed)
  with pytest.raises(TypeError, match=r"param at \['w'\] is str"):
    state_partition_specs(optax.EmptyState(), {**params, "w": "table"}, PARAM_SPECS)
  wrong = jax.eval_shape(tx.init, {"w": params["w"]})
  with pytest.raises(ValueError, match="does not have the params' structure"):
    state_partition_specs(wrong, params, PARAM_SPECS)


# --- The example -----------------------------------------------------------------------


SMALL = ["--vocab-size", "64", "--dim", "8", "--steps", "3", "--batch-size", "32"]


@pytest.mark.parametrize(
  "flags",
  [
    ["--mode", "explicit"],
    ["--sparse", "--optimizer", "diagonal", "--capacity", "2"],
    ["--sparse", "--mode", "explicit", "--spread-ids"],
  ],
)
def test_sharded_glove_example_equals_its_single_device_run(flags, tmp_path, capsys):
  from optax_blockada.examples import sharded_glove

  out = tmp_path / "run.json"
  assert sharded_glove.main([*SMALL, *flags, "--json", str(out)]) == 0
  result = json.loads(out.read_text())
  assert result["equal"] is True
  assert result["mesh"] == {"data": 2, "rows": 4}
  shards = {r["path"]: tuple(r["shard_shape"]) for r in result["shards"]}
  assert shards["params['word']"] == (16, 8)
  row_state = (16, 8) if "diagonal" in flags else (16, 1)  # row-wise by default
  assert shards["state[0].sum_of_squares['word']"] == row_state
  out = capsys.readouterr().out
  assert "equals the single-device run" in out
  if "--sparse" in flags:
    routing = result["routing"]
    assert f"capacity {routing['capacity']} ids per shard per device" in out
    # A step overflows when a device has more distinct ids for a shard than the capacity.
    assert (routing["overflowed_steps"] > 0) == (routing["max_load"] > routing["capacity"])
    if "--capacity" in flags:  # 4 pairs per device, at most 2 ids to a shard: overflows
      assert routing["capacity"] == 2 and routing["overflowed_steps"] >= 1
  else:
    assert result["routing"] is None


def test_sharded_glove_example_errors(capsys):
  from optax_blockada.examples import sharded_glove

  assert sharded_glove.main([*SMALL, "--capacity", "8"]) == 2  # only with --sparse
  assert sharded_glove.main([*SMALL, "--sparse", "--batch-size", "36"]) == 2  # 8 devices
  assert sharded_glove.main([*SMALL, "--devices", "16"]) == 2
  assert sharded_glove.main([*SMALL, "--vocab-size", "66"]) == 2  # not divisible by 4
  capsys.readouterr()
  assert sharded_glove.main([*SMALL, "--data-parallel", "3"]) == 2  # 3 does not divide 8
  err = capsys.readouterr().err
  assert err.startswith("usage: python -m optax_blockada.examples.sharded_glove")
  assert "error: argument --data-parallel: data_parallel must be a positive divisor of the " in err
  assert "device count 8, got 3; pass one of 1, 2, 4, 8." in err and "Traceback" not in err
  with pytest.raises(ValueError, match="optimizer must be one of"):
    sharded_glove.make_optimizer("adam")
  with pytest.raises(ValueError, match="data_parallel must be a positive divisor of"):
    sharded_glove.make_mesh(3)
