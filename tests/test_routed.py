"""The owner-routed sparse step on 8 CPU devices (root conftest.py forces them).

References are independent of the code under test: the dense step on one device (autodiff
through ``table[ids]``, ``tx.update`` on the whole tables), loads counted with Python sets,
collective shapes derived from the local batch, and JAX's own shard shapes.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_blockada as ob
from optax_blockada import _hlo, routed, sparse

pytestmark = pytest.mark.multidevice

V, D = 128, 8
N = 8  # devices
LOCAL = 16  # ids per device and table
B = N * LOCAL
STEPS = 20
CAPACITY = 6
ONE_SHARD_STEP, SKEWED_STEP = 5, 10

TRANSFORMS = {
  "rowwise_mean": lambda: ob.rowwise_adagrad(0.2),
  "rowwise_sum": lambda: ob.rowwise_adagrad(0.2, reduction="sum"),
  "diagonal": lambda: ob.diagonal_adagrad(0.2),
  "optax_adagrad": lambda: optax.adagrad(0.2),
  "block_rows_x_shared": lambda: ob.block_adagrad(0.3, structure="rows_x_shared"),
}

# Tables split over every device (1 x 8), or over 'rows' of a 2 x 4 mesh with two
# replicas along 'data'.
MESHES = {"1x8": ((1, 8), None), "2x4": ((2, 4), "rows")}


def make_mesh(name, devices=None, explicit=False):
  shape, _ = MESHES[name]
  types = (AxisType.Explicit if explicit else AxisType.Auto,) * 2
  return jax.make_mesh(shape, ("data", "rows"), axis_types=types, devices=devices)


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  table = lambda: jnp.asarray(rng.normal(size=(V, D)) * 0.3, jnp.float32)
  return {
    "emb": {"w": table(), "b": jnp.zeros(V, jnp.float32)},  # two tables sharing ids
    "ctx": table(),
    "scale": jnp.ones((), jnp.float32),  # a replicated dense param
  }


def shard_of(ids, shards):
  return np.asarray(ids) // (V // shards)


def make_batches(shards, seed=1):
  """GloVe-like batches: duplicates everywhere; step 5's ids all live on one shard (few
  distinct rows); step 10 sends 16 distinct ids from every device to shard 0."""
  rng = np.random.default_rng(seed)
  out = []
  for t in range(STEPS):
    i = rng.integers(0, V, B)
    j = rng.integers(0, V, B)
    if t == ONE_SHARD_STEP:
      first = 2 * (V // shards)
      i = first + rng.integers(0, 4, B)
      j = first + rng.integers(0, 3, B)
    if t == SKEWED_STEP:
      i = np.tile(np.arange(LOCAL), N)
    f = rng.uniform(0.1, 1.0, B)
    y = rng.normal(size=B)
    as32 = lambda x, dt: jnp.asarray(x, dt)
    out.append(
      (
        {"emb": as32(i, jnp.int32), "ctx": as32(j, jnp.int32)},
        as32(f, jnp.float32),
        as32(y, jnp.float32),
      )
    )
  return out


def loss_fn(params, ids, f, y, reduce=jnp.mean):
  i, j = ids["emb"], ids["ctx"]
  emb = params["emb"]
  pred = params["scale"] * jnp.sum(emb["w"][i] * params["ctx"][j], axis=-1) + emb["b"][i]
  return reduce(f * (pred - y) ** 2)


sum_loss = functools.partial(loss_fn, reduce=jnp.sum)


def dense_run(tx, params, batches, loss=loss_fn):
  @jax.jit
  def step(params, state, ids, f, y):
    value, grads = jax.value_and_grad(loss)(params, ids, f, y)
    updates, state = tx.update(grads, state, params)
    return value, optax.apply_updates(params, updates), state

  state, values = tx.init(params), []
  for batch in batches:
    value, params, state = step(params, state, *batch)
    values.append(float(value))
  return params, state, values


def param_shardings(mesh, row_axes):
  rows = row_axes if row_axes is not None else mesh.axis_names
  s = lambda *spec: NamedSharding(mesh, P(*spec))
  return {"emb": {"w": s(rows, None), "b": s(rows)}, "ctx": s(rows, None), "scale": s()}


def place(tx, params, mesh, row_axes):
  sh = param_shardings(mesh, row_axes)
  params = jax.device_put(params, sh, may_alias=False)
  state = jax.jit(tx.init, out_shardings=ob.sharding.state_shardings(tx, params, sh))(params)
  return params, state


def expected_loads(batch_ids, shards, devices=N):
  """Most distinct ids one device sends to one shard, per table: counted with sets."""
  loads = []
  for ids in batch_ids.values():
    local = np.split(np.asarray(ids), devices)
    loads.append(
      max(
        len({int(r) for r in part if int(r) // (V // shards) == s})
        for part in local
        for s in range(shards)
      )
    )
  return max(loads)


def assert_close(a, b):
  # The routed step sums each row's gradient over devices, then over duplicates, in another
  # order than autodiff on one device: float32 rounding (as in test_sharding.py).
  chex.assert_trees_all_close(a, b, rtol=2e-5, atol=2e-6)


@functools.cache
def reference(name, reduction):
  loss = loss_fn if reduction == "mean" else sum_loss
  return dense_run(TRANSFORMS[name](), make_params(), make_batches(4), loss)


# Row-wise Adagrad on the 2 x 4 mesh runs in test_explicit_mode_and_the_default_capacity.
CASES = [(name, "1x8") for name in TRANSFORMS] + [("block_rows_x_shared", "2x4")]


@pytest.mark.parametrize(("name", "mesh_name"), CASES)
def test_20_steps_equal_the_dense_single_device_steps(name, mesh_name):
  reduction = "sum" if name == "rowwise_sum" else "mean"
  mesh = make_mesh(mesh_name)
  _, row_axes = MESHES[mesh_name]
  shards = mesh.shape["rows"] if row_axes else N
  tx = TRANSFORMS[name]()
  # The same batches for both meshes (shards 4 or 8: step 5 stays on one shard of either).
  batches = make_batches(4)
  ref_params, ref_state, ref_values = reference(name, reduction)
  params, state = place(tx, make_params(), mesh, row_axes)
  loss = loss_fn if reduction == "mean" else sum_loss
  step = jax.jit(
    routed.value_and_update(
      loss, tx, mesh=mesh, row_axes=row_axes, capacity=CAPACITY, reduction=reduction
    ),
    donate_argnums=(0, 1),
  )
  overflowed = []
  for t, batch in enumerate(batches):
    value, params, state, stats = step(params, state, *batch)
    np.testing.assert_allclose(float(value), ref_values[t], rtol=2e-5)
    assert int(stats.max_load) == expected_loads(batch[0], shards), t
    overflowed.append(bool(stats.overflowed))
  # Exactly the steps where some device has more distinct ids for a shard than the capacity.
  assert overflowed == [expected_loads(b[0], shards) > CAPACITY for b in batches]
  assert overflowed[SKEWED_STEP] and not overflowed[ONE_SHARD_STEP]
  assert_close(params, ref_params)
  assert_close(state, ref_state)
  # Sharded like the tables, never replicated.
  acc = jax.tree.leaves(state)[0] if name != "block_rows_x_shared" else state[0].row_sums["ctx"]
  assert acc.sharding.shard_shape(acc.shape)[0] == V // shards
  assert params["ctx"].sharding.shard_shape((V, D)) == (V // shards, D)
  # The run moved the touched rows.
  assert not np.allclose(ref_params["ctx"], make_params()["ctx"])


def test_explicit_mode_and_the_default_capacity():
  tx = TRANSFORMS["rowwise_mean"]()
  mesh = make_mesh("2x4", explicit=True)
  batches = make_batches(4)
  ref_params, ref_state, _ = reference("rowwise_mean", "mean")
  with jax.set_mesh(mesh):
    params = jax.device_put(
      make_params(), jax.tree.map(lambda s: s.spec, param_shardings(mesh, "rows"))
    )
    state = tx.init(params)  # Explicit mode: sharded like the params by itself
    types = jax.tree.map(jax.typeof, state)
    # has_aux: each device's loss and batch size, stacked in the mesh's device order.
    aux_loss = lambda params, ids, f, y: (
      loss_fn(params, ids, f, y),
      {"loss": loss_fn(params, ids, f, y), "n": jnp.asarray(f.shape[0])},
    )
    step = jax.jit(routed.value_and_update(aux_loss, tx, row_axes="rows", has_aux=True))
    for batch in batches:  # a batch on one device is split over all eight
      before = jax.device_get(params)
      (value, aux), params, state, stats = step(params, state, *batch)
      assert jax.tree.map(jax.typeof, state) == types
  # The last step's aux: device k's loss is the loss of the k-th slice of the batch.
  ids, f, y = jax.device_get(batches[-1])
  part = lambda x, k: x[k * LOCAL : (k + 1) * LOCAL]
  want = [
    loss_fn(before, {key: part(v, k) for key, v in ids.items()}, part(f, k), part(y, k))
    for k in range(N)
  ]
  np.testing.assert_allclose(np.asarray(aux["loss"]), np.asarray(want), rtol=1e-5)
  np.testing.assert_array_equal(aux["n"], [LOCAL] * N)
  np.testing.assert_allclose(float(value), float(np.mean(want)), rtol=1e-5)
  # default_capacity(16, 4) = 8: only the skewed step (16 distinct ids to shard 0) overflows.
  assert bool(stats.overflowed) is False
  assert_close(params, ref_params)
  assert_close(state, ref_state)


# --- Collectives: what crosses between devices follows the local batch ----------------


def compiled_collectives(mesh, row_axes, num_rows, global_batch, dim=64, path="routed"):
  """The collectives of the compiled step (abstract inputs: nothing runs)."""
  tx = ob.rowwise_adagrad(0.1)
  rows = row_axes if row_axes is not None else mesh.axis_names
  table_sh = NamedSharding(mesh, P(rows, None))
  batch_sh = NamedSharding(mesh, P(mesh.axis_names))
  params = {"w": jax.ShapeDtypeStruct((num_rows, dim), jnp.float32, sharding=table_sh)}
  state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    jax.eval_shape(tx.init, params),
    ob.sharding.state_shardings(tx, params),
  )
  ids = {"w": jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=batch_sh)}
  y = jax.ShapeDtypeStruct((global_batch,), jnp.float32, sharding=batch_sh)

  def loss(params, ids, y):
    return jnp.mean((params["w"][ids["w"]].sum(-1) - y) ** 2)

  if path == "routed":
    step = routed.value_and_update(loss, tx, mesh=mesh, row_axes=row_axes)
  else:  # Today's sparse step under jit: the SPMD partitioner places the collectives.

    def step(params, state, ids, y):
      value, grads, touched = sparse.value_and_grad(loss)(params, ids, y)
      return value, *sparse.apply_gradients(tx, grads, state, params, touched)

  text = jax.jit(step).lower(params, state, ids, y).compile().as_text()
  found = _hlo.collectives(text)
  assert found, "no collective found: the HLO parser no longer matches"
  return found


def normal_branch(collectives):
  """The step's collectives when nothing overflows (the cond's branch 0, or no cond)."""
  return [c for c in collectives if c.branch in (None, 0)]


def payload_by_kind(collectives):
  out = {}
  for c in collectives:
    out[c.kind] = out.get(c.kind, 0) + c.result_bytes
  return out


def test_collectives_follow_the_local_batch_not_v_nor_the_global_batch():
  local, dim = 256, 64
  one_by_eight = jax.make_mesh((1, 8), ("data", "rows"), axis_types=(AxisType.Auto,) * 2)
  two_by_four = jax.make_mesh((2, 4), ("data", "rows"), axis_types=(AxisType.Auto,) * 2)
  four = jax.make_mesh((4,), ("rows",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])
  base = compiled_collectives(one_by_eight, None, 4096, 8 * local)
  cap = 64  # the default: 2 x 256 local ids over 8 shards
  a2a = [c for c in normal_branch(base) if c.kind == "all-to-all"]
  # ids out, rows back, gradients back: (1, cap) per shard, as one tuple of 8 arrays.
  assert [c.shapes for c in a2a] == [((1, cap),) * 8, ((1, cap, dim),) * 8, ((1, cap, dim),) * 8]
  # The rest are scalars: the load's pmax and the loss's mean.
  assert all(c.result_bytes <= 4 for c in normal_branch(base) if c.kind != "all-to-all")
  # 16x the rows: the same collectives.
  assert normal_branch(compiled_collectives(one_by_eight, None, 16 * 4096, 8 * local)) == (
    normal_branch(base)
  )
  # 2 x 4 with the rows over both axes: the same as 1 x 8.
  both = compiled_collectives(two_by_four, ("data", "rows"), 4096, 8 * local)
  assert normal_branch(both) == normal_branch(base)
  # Half the devices, half the global batch (the same local batch): the same bytes.
  half = compiled_collectives(four, None, 4096, 4 * local)
  assert payload_by_kind(normal_branch(half)) == payload_by_kind(normal_branch(base))
  # Rows over 'rows' only, two replicas along 'data': the same all-to-alls over 4 shards,
  # and the owners gather the row ids and gradients of the other replica.
  replicas = normal_branch(compiled_collectives(two_by_four, "rows", 4096, 8 * local))
  cap4 = 128  # the default: 2 x 256 local ids over 4 shards
  assert [c.shapes for c in replicas if c.kind == "all-to-all"] == [
    ((1, cap4),) * 4,
    ((1, cap4, dim),) * 4,
    ((1, cap4, dim),) * 4,
  ]
  gathers = [c for c in replicas if c.kind == "all-gather"]
  assert sorted(c.shapes for c in gathers) == [((2 * 4 * cap4,),), ((2 * 4 * cap4, dim),)]
  # Groups: all-to-alls among the 4 shards of a replica, all-gathers between the 2 replicas.
  assert {c.group_size for c in replicas if c.kind == "all-to-all"} == {4}
  assert {c.group_size for c in gathers} == {2}
  assert {c.group_size for c in a2a} == {8}
  # Today's replicated path moves the global batch: twice the bytes for twice the devices.
  old8 = payload_by_kind(compiled_collectives(one_by_eight, None, 4096, 8 * local, path="old"))
  old4 = payload_by_kind(compiled_collectives(four, None, 4096, 4 * local, path="old"))
  assert sum(old8.values()) > 1.9 * sum(old4.values())


# --- Ids out of range ----------------------------------------------------------------


def test_out_of_range_ids_are_dropped_or_raise_on_every_shard():
  tx = ob.rowwise_adagrad(0.2)
  mesh = make_mesh("1x8")
  ids, f, y = make_batches(8)[0]
  # Bad ids on the first and the last device, and on two others.
  bad = ids["emb"].at[0].set(-1).at[B - 1].set(V + 5).at[3 * LOCAL].set(V).at[5 * LOCAL + 2].set(-7)
  ids = {**ids, "emb": bad}
  # The single-device sparse step drops them (tested against numpy in test_sparse.py).
  params0 = make_params()
  _, grads, touched = sparse.value_and_grad(loss_fn)(params0, ids, f, y)
  want_params, want_state = sparse.apply_gradients(tx, grads, tx.init(params0), params0, touched)
  step = routed.value_and_update(loss_fn, tx, mesh=mesh, checked=True)
  params, state = place(tx, make_params(), mesh, None)
  with pytest.raises(ValueError, match=r"must lie in \[0, 128\), got -1 at 0, 128 at 48"):
    step(params, state, ids, f, y)  # concrete ids: checked on the host
  # Traced ids: checkify reports them, and the outputs are those of the fast mode
  # (checked=False), which drops them.
  err, (_, got_params, got_state, _) = jax.jit(checkify.checkify(step))(params, state, ids, f, y)
  with pytest.raises(checkify.JaxRuntimeError, match=r"must lie in \[0, 128\)"):
    err.throw()
  assert_close(got_params, want_params)
  assert_close(got_state, want_state)


def test_nonfinite_rows_are_skipped_and_counted_as_on_one_device():
  # A NaN target on device 0 at step 1 and an inf on device 6 at step 2: the rows that
  # example looks up (one per table) and the dense `scale` get non-finite gradients.
  tx = ob.skip_nonfinite_rows(ob.rowwise_adagrad(0.2))
  batches = make_batches(8)[:3]
  for t, k, value in ((1, 3, np.nan), (2, 6 * LOCAL + 1, np.inf)):
    ids, f, y = batches[t]
    batches[t] = (ids, f, y.at[k].set(value))
  want_params, want_state, _ = dense_run(tx, make_params(), batches)
  mesh = make_mesh("1x8")
  params, state = place(tx, make_params(), mesh, None)
  step = jax.jit(routed.value_and_update(loss_fn, tx, mesh=mesh, capacity=CAPACITY))
  for batch in batches:
    _, params, state, _ = step(params, state, *batch)
  counts = {"emb": {"w": 2, "b": 2}, "ctx": 2, "scale": 2}
  assert jax.tree.map(int, want_state.skipped_rows) == counts
  assert jax.tree.map(int, state.skipped_rows) == counts
  assert_close(params, want_params)
  assert np.isfinite(np.asarray(params["ctx"])).all()


# --- Checkpoint on 8 devices, restore on 4 --------------------------------------------


def test_checkpoint_on_8_devices_restores_on_4_and_continues(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  tx = ob.block_adagrad(0.3, structure="rows_x_shared")  # per-row and shared state
  batches = make_batches(8)[:12]
  mesh8 = jax.make_mesh((8,), ("rows",), axis_types=(AxisType.Auto,))
  mesh4 = jax.make_mesh((4,), ("rows",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])
  step8 = jax.jit(routed.value_and_update(loss_fn, tx, mesh=mesh8, capacity=CAPACITY))
  params, state = place(tx, make_params(), mesh8, None)
  ckpt = ocp.StandardCheckpointer()
  for t, batch in enumerate(batches):
    if t == 6:
      ckpt.save(tmp_path / "ckpt", {"params": params, "state": state})
      ckpt.wait_until_finished()
      saved_state = state
    _, params, state, _ = step8(params, state, *batch)
  full_params, full_state = params, state

  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), make_params())
  param_sh4 = param_shardings(mesh4, None)
  state_sh4 = ob.sharding.state_shardings(tx, abstract, param_sh4)
  with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
  target = {
    "params": jax.tree.map(with_sharding, abstract, param_sh4),
    "state": jax.tree.map(with_sharding, jax.eval_shape(tx.init, abstract), state_sh4),
  }
  restored = ckpt.restore(tmp_path / "ckpt", target)
  chex.assert_trees_all_equal(restored["state"], saved_state)
  row_sums = restored["state"][0].row_sums["ctx"]
  assert row_sums.sharding.shard_shape(row_sums.shape) == (V // 4, 1, 1)
  # Four devices: each now holds a quarter of the rows and a quarter of the batch.
  step4 = jax.jit(routed.value_and_update(loss_fn, tx, mesh=mesh4, capacity=CAPACITY))
  params, state = restored["params"], restored["state"]
  for batch in batches[6:]:
    _, params, state, _ = step4(params, state, *batch)
  assert len(params["ctx"].sharding.device_set) == 4
  assert_close(params, full_params)
  assert_close(state, full_state)


# --- Capacity --------------------------------------------------------------------------


def test_suggested_capacity_is_the_largest_load_with_headroom():
  mesh = make_mesh("1x8")
  rng = np.random.default_rng(5)
  batches = [rng.integers(-3, V + 3, (B, 2)) for _ in range(6)]  # out-of-range ids too
  most = 0
  for batch in batches:
    for part in np.split(batch, N):
      ids = {int(r) for r in part.reshape(-1) if 0 <= r < V}
      most = max(most, *(sum(1 for r in ids if r // (V // N) == s) for s in range(N)))
  assert routed.suggest_capacity(batches, V, mesh, headroom=1.0) == 8 * math.ceil(most / 8)
  assert routed.suggest_capacity(batches, V, mesh) == 8 * math.ceil(1.25 * most / 8)
  # Tables split over 'rows' only (4 shards), and a pytree of ids per batch.
  four = routed.suggest_capacity(
    [{"a": b[:, 0], "b": b[:, 1]} for b in batches], V, make_mesh("2x4"), "rows"
  )
  assert four >= routed.suggest_capacity(batches, V, mesh, headroom=1.0)
  # Never above the local ids, which cannot overflow.
  assert routed.suggest_capacity([np.arange(B)], V, make_mesh("1x8"), headroom=8.0) == LOCAL
  assert routed.default_capacity(LOCAL, 8) == 8 and routed.default_capacity(LOCAL, 1) == LOCAL


# --- Flax NNX -----------------------------------------------------------------------------


def test_nnx_update_equals_dense_nnx_steps():
  nnx = pytest.importorskip("flax.nnx")

  class Glove(nnx.Module):
    def __init__(self, params):
      self.emb = nnx.Dict(w=nnx.Param(params["emb"]["w"]), b=nnx.Param(params["emb"]["b"]))
      self.ctx = nnx.Param(params["ctx"])
      self.scale = nnx.Param(params["scale"])
      self.calls = nnx.Variable(jnp.zeros((), jnp.int32))  # not trained; written

    def __call__(self, ids):
      self.calls[...] += 1
      dot = jnp.sum(self.emb["w"][ids["emb"]] * self.ctx[ids["ctx"]], axis=-1)
      return self.scale[...] * dot + self.emb["b"][ids["emb"]]

  def model_loss(model, ids, f, y):
    return jnp.mean(f * (model(ids) - y) ** 2)

  batches = make_batches(8)[:8]
  tx = ob.rowwise_adagrad(0.2)
  dense = Glove(make_params())
  dense_opt = nnx.Optimizer(dense, tx, wrt=nnx.Param)

  @nnx.jit
  def dense_step(model, optimizer, ids, f, y):
    loss, grads = nnx.value_and_grad(model_loss)(model, ids, f, y)
    optimizer.update(model, grads)
    return loss

  mesh = make_mesh("1x8")
  params, _ = place(tx, make_params(), mesh, None)
  model = Glove(params)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, ids, f, y):
    return routed.nnx_update(model, optimizer, model_loss, ids, f, y, mesh=mesh)

  for batch in batches:
    want = dense_step(dense, dense_opt, *batch)
    loss, _ = step(model, optimizer, *batch)
    np.testing.assert_allclose(float(loss), float(want), rtol=2e-5)
  assert_close(nnx.state(model, nnx.Param), nnx.state(dense, nnx.Param))
  assert_close(nnx.state(optimizer.opt_state), nnx.state(dense_opt.opt_state))
  assert int(model.calls[...]) == int(dense.calls[...]) == len(batches)
  assert int(optimizer.step[...]) == len(batches)
  assert model.ctx[...].sharding.shard_shape((V, D)) == (V // 8, D)


# --- Clear errors -------------------------------------------------------------------------


def test_bad_arguments_are_clear_errors():
  tx = ob.rowwise_adagrad(0.1)
  mesh = make_mesh("1x8")
  params, state = place(tx, make_params(), mesh, None)
  ids, f, y = make_batches(8)[0]
  with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum'\).*'avg'"):
    routed.value_and_update(loss_fn, tx, reduction="avg")
  for bad in (0, 2.5, True):
    with pytest.raises(ValueError, match="capacity must be a positive int"):
      routed.value_and_update(loss_fn, tx, capacity=bad)
  with pytest.raises(TypeError, match=r"tx must be an optax\.GradientTransformation"):
    routed.value_and_update(loss_fn, "adagrad")
  run = lambda params=params, ids=ids, f=f, y=y, tx=tx, state=state, **kw: routed.value_and_update(
    loss_fn, tx, **{"mesh": mesh, **kw}
  )(params, state, ids, f, y)
  with pytest.raises(ValueError, match=r"row_axes 'model' names \['model'\], not axes of the mesh"):
    run(row_axes="model")
  with pytest.raises(TypeError, match="row_axes must be a mesh axis name"):
    run(row_axes=3)
  with pytest.raises(ValueError, match="no mesh: pass mesh="):
    run(mesh=None)
  with pytest.raises(ValueError, match=r"ids\['ctx'\] has shape \(12,\).*multiple of 8"):
    run(ids={**ids, "ctx": ids["ctx"][:12]})
  odd = {**make_params(), "ctx": jnp.zeros((V + 4, D))}
  with pytest.raises(ValueError, match="the table ctx has 132 rows, not divisible by its 8 shards"):
    run(params=odd, state=tx.init(odd))
  adam = optax.adam(0.1)
  with pytest.raises(ValueError, match=r"momentum, EMAs"):
    run(tx=adam, state=adam.init(make_params()))
  with pytest.raises(ValueError, match="headroom must be at least 1"):
    routed.suggest_capacity([np.arange(B)], V, mesh, headroom=0.5)
  # Explicit mode: a table split along another axis than row_axes.
  explicit = make_mesh("2x4", explicit=True)
  with jax.set_mesh(explicit):
    specs = jax.tree.map(lambda s: s.spec, param_shardings(explicit, "rows"))
    placed = jax.device_put(make_params(), specs)
    with pytest.raises(ValueError, match=r"params\['ctx'\] is sharded as P\('rows', None\)"):
      routed.value_and_update(loss_fn, tx, row_axes="data")(placed, tx.init(placed), ids, f, y)
