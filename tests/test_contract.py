"""The optax contract every transform of the library keeps (see optax contrib tests)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_blockada as ob
from optax_blockada import presets

TRANSFORMS = {
  "diagonal": lambda: ob.diagonal_adagrad(0.1),
  "rowwise_mean": lambda: ob.rowwise_adagrad(0.1),
  "rowwise_sum_eps_out": lambda: ob.rowwise_adagrad(0.1, reduction="sum", eps_in_sqrt=False),
  "rowwise_old": lambda: ob.rowwise_adagrad(0.1, 1.0, 0.0, use_old_accumulator=True),
  "rowwise_skip_nonfinite": lambda: ob.rowwise_adagrad(0.1, skip_nonfinite_rows=True),
  "torch": lambda: presets.torch_adagrad(0.1, lr_decay=0.01, weight_decay=1e-3),
  "fbgemm_rowwise": lambda: presets.fbgemm_rowwise_adagrad(
    0.1, weight_decay=1e-3, weight_decay_mode="decoupled", max_norm=2.0
  ),
  "glove": lambda: presets.glove_adagrad(0.05),
  "block_rows": lambda: ob.block_adagrad(0.1),
  # 'w' is (4, 3): rows along axis 0 (d = 4) so that block_size 2 divides them.
  "block_blocks_ns": lambda: ob.block_adagrad(
    0.1,
    structure="blocks",
    block_size=2,
    root="newton_schulz",
    feature_axes=lambda path, leaf: 0 if jax.tree_util.keystr(path) == "['dense']['w']" else None,
  ),
  "block_shared_every_3": lambda: ob.block_adagrad(0.1, structure="shared", update_root_every=3),
  "block_rows_x_shared": lambda: ob.block_adagrad(
    0.1, structure="rows_x_shared", update_root_every=2
  ),
}


def make_params(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  return {
    "embed": {"table": jnp.asarray(rng.normal(size=(16, 4)), dtype)},
    "bias": jnp.zeros(16, dtype),
    "dense": {"w": jnp.asarray(rng.normal(size=(4, 3)), dtype), "b": jnp.zeros(3, dtype)},
  }


def grads_for(params, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def run(tx, params, steps=10, jit=True):
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  for t in range(steps):
    updates, state = update(grads_for(params, t), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
  chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_jit_without_retracing_and_state_type_stable(name):
  chex.clear_trace_counter()
  tx = TRANSFORMS[name]()
  params = make_params()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  init_types = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  for t in range(4):
    params, state = step(params, state, grads_for(params, t))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == init_types
  # Eager and jitted updates agree.
  eager, _ = run(TRANSFORMS[name](), make_params(), steps=4, jit=False)
  jitted, _ = run(TRANSFORMS[name](), make_params(), steps=4, jit=True)
  assert_trees_close(eager, jitted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  ("factory", "static_args", "kwargs"),
  [
    (ob.diagonal_adagrad, (), dict(learning_rate=0.1, initial_accumulator_value=0.2, eps=1e-6)),
    (
      ob.rowwise_adagrad,
      ("feature_axes",),
      dict(
        learning_rate=0.1,
        initial_accumulator_value=0.2,
        eps=1e-6,
        feature_axes=-1,
        reduction="sum",
        eps_in_sqrt=False,
      ),
    ),
    (
      presets.torch_adagrad,
      (),
      dict(
        learning_rate=0.1,
        lr_decay=0.05,
        weight_decay=1e-2,
        initial_accumulator_value=0.1,
        eps=1e-10,
      ),
    ),
    (
      presets.fbgemm_rowwise_adagrad,
      (),
      dict(learning_rate=0.1, eps=1e-8, weight_decay=1e-2, weight_decay_mode="l2", max_norm=1.5),
    ),
    (presets.glove_adagrad, (), dict(eta=0.05)),
    (
      ob.block_adagrad,
      ("update_root_every",),
      dict(
        learning_rate=0.1,
        initial_accumulator_value=0.2,
        eps=1e-6,
        relative_eps=1e-4,
        structure="rows_x_shared",
        update_root_every=2,
      ),
    ),
    (
      ob.block_adagrad,
      ("root_iterations",),
      dict(
        learning_rate=0.1,
        initial_accumulator_value=0.2,
        relative_eps=1e-4,
        structure="shared",
        root="newton_schulz",
        root_iterations=25,
      ),
    ),
  ],
)
def test_inject_hyperparams_equivalence(factory, static_args, kwargs):
  params = make_params()
  injected = optax.inject_hyperparams(factory, static_args=static_args)(**kwargs)
  p_direct, _ = run(factory(**kwargs), params)
  p_injected, state = run(injected, params)
  assert_trees_close(p_direct, p_injected, rtol=1e-5, atol=1e-6)
  # Changing an injected hyperparameter mid-run equals rebuilding the transform with it.
  name = "learning_rate" if "learning_rate" in kwargs else "eta"
  state.hyperparams[name] = jnp.asarray(kwargs[name] * 0.5, jnp.float32)
  new_kwargs = dict(kwargs, **{name: kwargs[name] * 0.5})
  g = grads_for(params, 99)
  u_injected, _ = jax.jit(injected.update)(g, state, p_injected)
  direct = factory(**new_kwargs)
  u_direct, _ = direct.update(g, state.inner_state, p_injected)
  assert_trees_close(u_injected, u_direct, rtol=1e-5, atol=1e-7)


def test_inject_hyperparams_without_static_feature_axes_is_a_clear_error():
  tx = optax.inject_hyperparams(ob.rowwise_adagrad)(learning_rate=0.1, feature_axes=-1)
  params = make_params()
  with pytest.raises(TypeError, match="static_args=\\('feature_axes'"):
    tx.init(params)


def test_inject_hyperparams_without_static_block_size_is_a_clear_error():
  tx = optax.inject_hyperparams(ob.block_adagrad)(
    learning_rate=0.1, structure="blocks", block_size=2
  )
  with pytest.raises(TypeError, match="static_args=\\('block_size'"):
    tx.init(make_params())


def test_partition_routes_a_leaf_to_block_adagrad():
  params = make_params()
  labels = {"embed": {"table": "block"}, "bias": "row", "dense": {"w": "row", "b": "row"}}
  tx = optax.partition(
    {"block": ob.block_adagrad(0.1, structure="rows_x_shared"), "row": ob.rowwise_adagrad(0.1)},
    labels,
  )
  p_part, state = run(tx, params)
  ref_tx = ob.block_adagrad(0.1, structure="rows_x_shared")
  ref_state = ref_tx.init(params["embed"]["table"])
  ref = params["embed"]["table"]
  for t in range(10):
    u, ref_state = ref_tx.update(grads_for(params, t)["embed"]["table"], ref_state)
    ref = ref + u
  assert_trees_close(p_part["embed"]["table"], ref, rtol=1e-5)
  block_state = state.inner_states["block"].inner_state[0]
  assert isinstance(block_state.row_sums["bias"], optax.MaskedNode)
  assert block_state.row_sums["embed"]["table"].shape == (16, 1, 1)
  masked = optax.masked(ob.block_adagrad(0.1), {"embed": True, "bias": False, "dense": False})
  g = grads_for(params, 0)
  u, _ = masked.update(g, masked.init(params), params)
  np.testing.assert_array_equal(u["bias"], g["bias"])


def test_partition_and_masked_equal_direct_application():
  params = make_params()
  labels = {"embed": {"table": "row"}, "bias": "diag", "dense": {"w": "diag", "b": "frozen"}}
  tx = optax.partition(
    {
      "row": ob.rowwise_adagrad(0.1),
      "diag": ob.diagonal_adagrad(0.2),
      "frozen": optax.set_to_zero(),
    },
    labels,
  )
  p_part, state = run(tx, params)
  # Reference: each transform on its own subtree, fed the same gradients.
  st_row = ob.rowwise_adagrad(0.1).init(params["embed"]["table"])
  st_diag = ob.diagonal_adagrad(0.2).init((params["bias"], params["dense"]["w"]))
  ref = jax.tree.map(jnp.asarray, params)
  for t in range(10):
    g = grads_for(params, t)
    u, st_row = ob.rowwise_adagrad(0.1).update(g["embed"]["table"], st_row)
    ref["embed"]["table"] = ref["embed"]["table"] + u
    (ub, uw), st_diag = ob.diagonal_adagrad(0.2).update((g["bias"], g["dense"]["w"]), st_diag)
    ref["bias"] = ref["bias"] + ub
    ref["dense"]["w"] = ref["dense"]["w"] + uw
  assert_trees_close(p_part, ref, rtol=1e-6)
  np.testing.assert_array_equal(p_part["dense"]["b"], params["dense"]["b"])
  # The row-wise group's state holds MaskedNode for the leaves it does not own.
  row_state = state.inner_states["row"].inner_state[0]
  assert isinstance(row_state.sum_of_squares["bias"], optax.MaskedNode)
  assert row_state.sum_of_squares["embed"]["table"].shape == (16, 1)

  # optax.masked: masked-out leaves pass through unchanged (their updates are the grads).
  mask = {"embed": {"table": True}, "bias": False, "dense": {"w": True, "b": False}}
  tx = optax.masked(ob.rowwise_adagrad(0.1), mask)
  state = tx.init(params)
  g = grads_for(params, 0)
  u, state = tx.update(g, state, params)
  np.testing.assert_array_equal(u["bias"], g["bias"])
  u_ref, _ = ob.rowwise_adagrad(0.1).update(
    g["embed"]["table"], ob.rowwise_adagrad(0.1).init(params["embed"]["table"])
  )
  np.testing.assert_allclose(u["embed"]["table"], u_ref, rtol=1e-6)


def test_prefix_and_callable_feature_axes():
  params = make_params()
  spec = {"embed": -1, "bias": None, "dense": {"w": 0, "b": ()}}
  by_prefix = ob.scale_by_rowwise_adagrad(feature_axes=spec).init(params)
  fn = lambda path, leaf: 0 if jax.tree_util.keystr(path) == "['dense']['w']" else None
  by_callable = ob.scale_by_rowwise_adagrad(feature_axes=fn).init(params)
  for state in (by_prefix, by_callable):
    shapes = jax.tree.map(jnp.shape, state.sum_of_squares)
    assert shapes == {"embed": {"table": (16, 1)}, "bias": (16,), "dense": {"w": (1, 3), "b": (3,)}}


def test_multisteps_equals_adagrad_on_averaged_gradients():
  # optax.MultiSteps itself divides a float32 by its int32 step count, which strict
  # promotion rejects (optax 0.2.8, _accumulation.py); our transform is not involved.
  with jax.numpy_dtype_promotion("standard"):
    _multisteps_check()


def _multisteps_check():
  params = make_params()
  k = 3
  tx = optax.MultiSteps(ob.rowwise_adagrad(0.1), every_k_schedule=k)
  state = tx.init(params)
  ref_tx = ob.rowwise_adagrad(0.1)
  ref_state = ref_tx.init(params)
  p, ref_p = params, params
  for block in range(4):
    grads = [grads_for(params, 10 * block + i) for i in range(k)]
    for g in grads:
      u, state = tx.update(g, state, p)
      p = optax.apply_updates(p, u)
    mean_g = jax.tree.map(lambda *gs: sum(gs) / k, *grads)
    u, ref_state = ref_tx.update(mean_g, ref_state, ref_p)
    ref_p = optax.apply_updates(ref_p, u)
  assert_trees_close(p, ref_p, rtol=1e-5, atol=1e-6)


def test_bf16_params_have_float32_accumulators_that_keep_growing():
  params = jnp.zeros((2, 3), jnp.bfloat16)
  grads = jnp.ones((2, 3), jnp.bfloat16)
  for tx, expect in ((ob.diagonal_adagrad(0.1), 0.1 + 600), (ob.rowwise_adagrad(0.1), 0.1 + 600)):
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(600):
      updates, state = step(grads, state, params)
    acc = state[0].sum_of_squares
    assert acc.dtype == jnp.float32 and updates.dtype == jnp.bfloat16
    np.testing.assert_allclose(acc, expect, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(updates, np.float32), -0.1 / np.sqrt(600.1), rtol=1e-2)
  # The failure mode being avoided: optax.adagrad keeps a bf16 accumulator, which stalls.
  tx = optax.adagrad(0.1)
  state = tx.init(params)
  for _ in range(600):
    _, state = jax.jit(tx.update)(grads, state, params)
  assert float(state[0].sum_of_squares[0, 0]) < 300


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_abstract_init_matches_concrete(name):
  tx = TRANSFORMS[name]()
  params = make_params()
  abstract = jax.eval_shape(
    tx.init, jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  )
  concrete = tx.init(params)
  assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
  jax.tree.map(
    lambda a, c: (
      (a.shape, a.dtype) == (c.shape, c.dtype) or pytest.fail(f"{a} != {c.shape} {c.dtype}")
    ),
    abstract,
    concrete,
  )


@pytest.mark.parametrize(
  "name", ["diagonal", "rowwise_mean", "fbgemm_rowwise", "glove", "block_rows_x_shared"]
)
def test_orbax_checkpoint_round_trip_then_equal_updates(name, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  tx = TRANSFORMS[name]()
  params, state = run(tx, make_params(), steps=5)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "state", state)
  ckpt.wait_until_finished()
  target = jax.eval_shape(tx.init, params)
  restored = ckpt.restore(tmp_path / "state", target)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  chex.assert_trees_all_equal(restored, state)
  g = grads_for(params, 42)
  u1, s1 = tx.update(g, state, params)
  u2, s2 = tx.update(g, restored, params)
  chex.assert_trees_all_equal(u1, u2)
  chex.assert_trees_all_equal(s1, s2)


def test_strict_dtype_promotion_is_on_in_this_suite():
  # The transforms above ran under strict promotion; make sure the mode is really on.
  with pytest.raises(jax.dtypes.TypePromotionError):
    _ = jnp.ones(2, jnp.bfloat16) + jnp.ones(2, jnp.float32)


def test_nnx_optimizer_trains_an_embedding_model():
  nnx = pytest.importorskip("flax.nnx")

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(50, 8, rngs=rngs)
      self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, ids):
      return self.out(self.embed(ids))[..., 0]

  model = Model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, ob.rowwise_adagrad(0.3), wrt=nnx.Param)
  ids = jnp.arange(0, 50, 5)
  target = jnp.linspace(-1.0, 1.0, ids.shape[0])

  @nnx.jit
  def step(model, optimizer):
    loss_fn = lambda m: jnp.mean((m(ids) - target) ** 2)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  first = float(step(model, optimizer))
  for _ in range(100):
    last = float(step(model, optimizer))
  assert last < 0.05 * first
  shapes = [x.shape for x in jax.tree.leaves(nnx.state(optimizer, nnx.optimizer.OptState))]
  assert (50, 1) in shapes  # one accumulator per embedding row
