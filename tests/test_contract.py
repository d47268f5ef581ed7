"""The optax contract every transform of the library keeps (see optax contrib tests)."""

import dataclasses
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import optax_blockada as ob
from optax_blockada import presets

# --- The registry ---------------------------------------------------------------------
#
# Every public transform, alias and preset, with the arguments it is checked with. Each
# test below that is parametrised by ``CONTRACT`` runs on every entry: adding a
# transform means adding one line here.

# 'dense/w' is (4, 3): rows along axis 0 (d = 4), so that block_size 2 divides them.
_W_ROWS_ALONG_0 = lambda path, leaf: 0 if jax.tree_util.keystr(path) == "['dense']['w']" else None


@dataclasses.dataclass(frozen=True)
class Entry:
  """A factory and the keyword arguments it is checked with."""

  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  # The keyword holding the learning rate (None: a scale_by_* transform, which the
  # tests follow with optax.scale(-learning_rate)).
  learning_rate: str | None = "learning_rate"
  # Whether the learning rate may be an optax schedule.
  schedules: bool = True

  def make(self, learning_rate: Any = 0.1, **overrides: Any) -> optax.GradientTransformation:
    """The transform with a learning rate: the entry's own, or one chained after it."""
    kwargs = {**self.kwargs, **overrides}
    if self.learning_rate is None:
      return optax.chain(self.factory(**kwargs), optax.scale(-learning_rate))
    return self.factory(**{self.learning_rate: learning_rate, **kwargs})

  def static_args(self) -> tuple[str, ...]:
    """The arguments optax.inject_hyperparams must leave alone (ints and callables)."""
    return tuple(
      k
      for k, v in self.kwargs.items()
      if callable(v) or (isinstance(v, int) and not isinstance(v, bool))
    )


def _sgd_then_renormalize_rows(learning_rate, max_norm=2.0):
  # renormalize_rows goes last in a chain, after the learning rate (its docstring).
  return optax.chain(optax.scale_by_learning_rate(learning_rate), ob.renormalize_rows(max_norm))


def _skip_nonfinite_rowwise(initial_accumulator_value=0.1, eps=1e-7):
  inner = ob.scale_by_rowwise_adagrad(initial_accumulator_value, eps)
  return ob.skip_nonfinite_rows(inner)


CONTRACT = {
  # Scalings (no learning rate).
  "scale_by_diagonal_adagrad": Entry(ob.scale_by_diagonal_adagrad, learning_rate=None),
  "scale_by_rowwise_adagrad": Entry(
    ob.scale_by_rowwise_adagrad, {"reduction": "sum"}, learning_rate=None
  ),
  "scale_by_block_adagrad": Entry(ob.scale_by_block_adagrad, learning_rate=None),
  "skip_nonfinite_rows": Entry(_skip_nonfinite_rowwise, learning_rate=None),
  "add_decayed_weights_to_touched_rows": Entry(
    ob.add_decayed_weights_to_touched_rows, {"weight_decay": 1e-3}, learning_rate=None
  ),
  "renormalize_rows": Entry(_sgd_then_renormalize_rows),
  # Aliases.
  "diagonal": Entry(ob.diagonal_adagrad),
  "diagonal_old_eps_out": Entry(
    ob.diagonal_adagrad, {"eps_in_sqrt": False, "use_old_accumulator": True}
  ),
  "rowwise_mean": Entry(ob.rowwise_adagrad),
  "rowwise_sum_eps_out": Entry(ob.rowwise_adagrad, {"reduction": "sum", "eps_in_sqrt": False}),
  "rowwise_old": Entry(
    ob.rowwise_adagrad, {"initial_accumulator_value": 1.0, "eps": 0.0, "use_old_accumulator": True}
  ),
  "rowwise_skip_nonfinite": Entry(ob.rowwise_adagrad, {"skip_nonfinite_rows": True}),
  # 'rows' (the default structure) runs as "scale_by_block_adagrad" above.
  "block_blocks_ns": Entry(
    ob.block_adagrad,
    {
      "structure": "blocks",
      "block_size": 2,
      "root": "newton_schulz",
      "feature_axes": _W_ROWS_ALONG_0,
    },
  ),
  "block_shared": Entry(ob.block_adagrad, {"structure": "shared"}),
  "block_shared_every_3": Entry(ob.block_adagrad, {"structure": "shared", "update_root_every": 3}),
  "block_rows_x_shared": Entry(ob.block_adagrad, {"structure": "rows_x_shared"}),
  "block_rows_x_shared_every_2": Entry(
    ob.block_adagrad, {"structure": "rows_x_shared", "update_root_every": 2}
  ),
  # Presets.
  # Defaults too: inject_hyperparams injects a default 0.0 as an array.
  "torch_defaults": Entry(presets.torch_adagrad),
  "torch": Entry(presets.torch_adagrad, {"lr_decay": 0.01, "weight_decay": 1e-3}),
  "torchrec": Entry(presets.torchrec_rowwise_adagrad, {"lr_decay": 0.01, "weight_decay": 1e-3}),
  "keras": Entry(presets.keras_adagrad, {"weight_decay": 1e-3}),
  "fbgemm_exact": Entry(presets.fbgemm_exact_adagrad),
  "fbgemm_rowwise_l2": Entry(
    presets.fbgemm_rowwise_adagrad, {"weight_decay": 1e-3, "weight_decay_mode": "l2"}
  ),
  "fbgemm_rowwise_decoupled_max_norm": Entry(
    presets.fbgemm_rowwise_adagrad,
    {"weight_decay": 1e-3, "weight_decay_mode": "decoupled", "max_norm": 2.0},
  ),
  # glove.c's eta sets the accumulators' start (1 / eta**2): a number, not a schedule.
  "glove": Entry(presets.glove_adagrad, learning_rate="eta", schedules=False),
  "lightfm": Entry(presets.lightfm_adagrad),
}


def test_the_registry_covers_every_public_transform_alias_and_preset():
  factories = {e.factory for e in CONTRACT.values()}
  factories |= {ob.scale_by_rowwise_adagrad, ob.renormalize_rows}  # inside the wrappers
  public = {
    getattr(ob, name)
    for name in ob.__all__
    if callable(getattr(ob, name)) and (name.endswith("adagrad") or name.endswith("_rows"))
  } | {getattr(presets, name) for name in presets.__all__}
  public -= {ob.skip_nonfinite_rows}  # covered through _skip_nonfinite_rowwise
  assert public <= factories, sorted(f.__name__ for f in public - factories)


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


@pytest.mark.parametrize("name", list(CONTRACT))
def test_jit_without_retracing_and_state_type_stable(name):
  chex.clear_trace_counter()
  tx = CONTRACT[name].make()
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
  # Eager and jitted updates agree. Block Adagrad's eager step dispatches its roots op by
  # op (about 10 s here per structure); the docstring examples of scale_by_block_adagrad
  # and test_block's unusable-row test ('shared', 'rows_x_shared') run it eagerly.
  if "block" not in name:
    eager, _ = run(CONTRACT[name].make(), make_params(), steps=1, jit=False)
    jitted, _ = run(CONTRACT[name].make(), make_params(), steps=1, jit=True)
    assert_trees_close(eager, jitted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CONTRACT))
def test_extra_args_pass_through(name):
  """Aliases and presets take optax's extra arguments; scalings do inside a chain."""
  entry = CONTRACT[name]
  tx = entry.make()
  if entry.learning_rate is not None:
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
  params = make_params()
  g = grads_for(params, 0)
  extra = jax.jit(lambda g, s, p: tx.update(g, s, p, unused_extra=jnp.ones(3), step=1))
  with_extra, _ = extra(g, tx.init(params), params)
  without, _ = jax.jit(tx.update)(g, tx.init(params), params)
  chex.assert_trees_all_equal(with_extra, without)


@pytest.mark.parametrize("name", list(CONTRACT))
def test_inject_hyperparams_equivalence(name):
  entry = CONTRACT[name]
  params = make_params()
  factory = entry.factory
  if entry.learning_rate is None:  # inject the scaling's own arguments
    injected = optax.chain(
      optax.inject_hyperparams(factory, static_args=entry.static_args())(**entry.kwargs),
      optax.scale(-0.1),
    )
  else:
    kwargs = {entry.learning_rate: 0.1, **entry.kwargs}
    injected = optax.inject_hyperparams(factory, static_args=entry.static_args())(**kwargs)
  p_direct, direct_state = run(entry.make(), params)
  p_injected, state = run(injected, params)
  assert_trees_close(p_direct, p_injected, rtol=1e-5, atol=1e-6)
  if entry.learning_rate is None:
    return
  # Changing the injected learning rate mid-run equals rebuilding the transform with it.
  state.hyperparams[entry.learning_rate] = jnp.asarray(0.05, jnp.float32)
  g = grads_for(params, 99)
  u_injected, _ = jax.jit(injected.update)(g, state, p_injected)
  # (The direct transform continues from its own state: injected numbers are arrays,
  # which may keep no-op terms a Python zero leaves out of a preset's chain.)
  u_direct, _ = jax.jit(entry.make(0.05).update)(g, direct_state, p_direct)
  assert_trees_close(u_injected, u_direct, rtol=1e-5, atol=1e-7)


def _specs_of(tree):
  """A PartitionSpec per leaf: its name and rank, so that a misplaced spec shows."""
  return jax.tree_util.tree_map_with_path(
    lambda path, x: P(*([jax.tree_util.keystr(path)] + [None] * (x.ndim - 1))), tree
  )


@dataclasses.dataclass(frozen=True)
class _Seen:
  """What tree_map_params did with one state leaf: mapped with a param's spec, or not."""

  shape: tuple[int, ...]
  spec: P | None  # None: seen by transform_non_params


@pytest.mark.parametrize("name", list(CONTRACT))
def test_tree_map_params_maps_specs_over_every_params_tree_in_the_state(name):
  """optax.tree_map_params with spec arguments, as used to shard optimizer state."""
  tx = CONTRACT[name].make()
  params = make_params()
  state = tx.init(params)
  specs = _specs_of(params)
  masked = lambda x: isinstance(x, optax.MaskedNode)
  mapped = optax.tree_map_params(
    tx,
    lambda p, spec: p if masked(p) else _Seen(p.shape, spec),
    state,
    specs,
    transform_non_params=lambda x: _Seen(x.shape, None),
    # optax.partition and optax.masked leave MaskedNode where a group owns no leaf.
    is_leaf=lambda x: isinstance(x, P) or masked(x),
  )
  seen = jax.tree.leaves(mapped)
  assert len(seen) == len(jax.tree.leaves(state))
  assert all(isinstance(x, _Seen) for x in seen)
  # Every params-shaped leaf got the spec of its own param: the state leaf has the
  # param's rank, then any per-row block axes; per-leaf counters are scalars.
  rank = {s[0]: len(s) for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))}
  with_spec = [x for x in seen if x.spec is not None]
  for x in with_spec:
    assert len(x.shape) == 0 or len(x.shape) >= rank[x.spec[0]], x
  # Each stateful transform keeps at least one tree with the params' structure.
  if name not in ("renormalize_rows", "add_decayed_weights_to_touched_rows"):
    assert {x.spec[0] for x in with_spec} == set(rank), name


@pytest.mark.parametrize("name", list(CONTRACT))
def test_multisteps_equals_the_transform_on_averaged_gradients(name):
  # optax.MultiSteps itself divides a float32 by its int32 step count, which strict
  # promotion rejects (optax 0.2.8, _accumulation.py); our transforms are not involved.
  with jax.numpy_dtype_promotion("standard"):
    params = make_params()
    k = 3
    tx = optax.MultiSteps(CONTRACT[name].make(), every_k_schedule=k)
    state = tx.init(params)
    ref_tx = CONTRACT[name].make()
    ref_state = ref_tx.init(params)
    update, ref_update = jax.jit(tx.update), jax.jit(ref_tx.update)
    p, ref_p = params, params
    for block in range(3):
      grads = [grads_for(params, 10 * block + i) for i in range(k)]
      for g in grads:
        u, state = update(g, state, p)
        p = optax.apply_updates(p, u)
      mean_g = jax.tree.map(lambda *gs: sum(gs) / k, *grads)
      u, ref_state = ref_update(mean_g, ref_state, ref_p)
      ref_p = optax.apply_updates(ref_p, u)
  assert_trees_close(p, ref_p, rtol=1e-5, atol=1e-6)


DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64]


@pytest.mark.parametrize("name", list(CONTRACT))
def test_every_float_dtype_is_stable_under_lax_cond(name):
  """Updates in the params' dtype, finite, and a state whose types survive lax.cond."""
  for dtype in DTYPES:
    with jax.enable_x64(dtype == jnp.float64):
      tx = CONTRACT[name].make()
      params = make_params(dtype)
      state = tx.init(params)

      @jax.jit
      def step(params, state, grads, apply, tx=tx):
        def do(state):
          updates, state = tx.update(grads, state, params)
          return optax.apply_updates(params, updates), state

        # Both branches must return the same types: the state's dtypes are stable.
        return jax.lax.cond(apply, do, lambda state: (params, state), state)

      for t in range(6):
        params, state = step(params, state, grads_for(params, t), t % 2 == 0)
      assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(dtype)}, dtype
      assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params)), dtype


@pytest.mark.parametrize(
  "name", [n for n, e in CONTRACT.items() if e.learning_rate and e.schedules]
)
def test_a_schedule_is_accepted_as_the_learning_rate(name):
  entry = CONTRACT[name]
  params = make_params()
  constant, _ = run(entry.make(optax.constant_schedule(0.1)), params)
  fixed, _ = run(entry.make(0.1), params)
  assert_trees_close(constant, fixed)
  decaying, _ = run(entry.make(optax.linear_schedule(0.1, 0.0, 10)), params)
  # A schedule that decays to 0 moves the params less than the constant one.
  moved = lambda p: sum(
    float(jnp.sum(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params), strict=True)
  )
  assert 0 < moved(decaying) < moved(fixed)


@pytest.mark.parametrize("name", list(CONTRACT))
def test_converges_on_a_small_quadratic(name):
  params = make_params()
  rng = np.random.default_rng(1)
  # Targets of norm ~0.6 per row, inside max_norm = 2 and far from the start.
  target = jax.tree.map(lambda p: jnp.asarray(0.3 * rng.normal(size=p.shape), p.dtype), params)
  loss = lambda p: sum(
    0.5 * jnp.sum((a - b) ** 2)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target), strict=True)
  )
  tx = CONTRACT[name].make(0.3)

  def body(carry, _):
    p, state = carry
    updates, state = tx.update(jax.grad(loss)(p), state, p)
    return (optax.apply_updates(p, updates), state), None

  (final, _), _ = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), length=300))(params)
  assert float(loss(final)) < 1e-3 * float(loss(params)), (float(loss(params)), float(loss(final)))


@pytest.mark.parametrize("name", list(CONTRACT))
def test_partition_and_masked_equal_the_transform_on_its_leaves(name):
  params = make_params()
  labels = {"embed": {"table": "tx"}, "bias": "frozen", "dense": {"w": "tx", "b": "frozen"}}
  part = optax.partition({"tx": CONTRACT[name].make(), "frozen": optax.set_to_zero()}, labels)
  p_part, _ = run(part, params)
  # Reference: the transform alone on the leaves it owns (same key paths).
  owned = lambda tree: {"embed": tree["embed"], "dense": {"w": tree["dense"]["w"]}}
  tx = CONTRACT[name].make()
  update = jax.jit(tx.update)
  p_ref, state = owned(params), tx.init(owned(params))
  for t in range(10):
    updates, state = update(owned(grads_for(params, t)), state, p_ref)
    p_ref = optax.apply_updates(p_ref, updates)
  assert_trees_close(owned(p_part), p_ref, rtol=1e-6)
  chex.assert_trees_all_equal(p_part["bias"], params["bias"])
  chex.assert_trees_all_equal(p_part["dense"]["b"], params["dense"]["b"])
  # optax.masked: masked-out leaves pass through unchanged (their updates are the grads).
  mask = {"embed": {"table": True}, "bias": False, "dense": {"w": True, "b": False}}
  masked = optax.masked(CONTRACT[name].make(), mask)
  g = grads_for(params, 0)
  u, _ = jax.jit(masked.update)(g, masked.init(params), params)
  chex.assert_trees_all_equal(u["bias"], g["bias"])
  chex.assert_trees_all_equal(u["dense"]["b"], g["dense"]["b"])
  u_ref, _ = update(owned(g), tx.init(owned(params)), owned(params))
  assert_trees_close(owned(u), u_ref, rtol=1e-6)


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
  u, _ = jax.jit(masked.update)(g, masked.init(params), params)
  np.testing.assert_array_equal(u["bias"], g["bias"])


def test_prefix_and_callable_feature_axes():
  params = make_params()
  spec = {"embed": -1, "bias": None, "dense": {"w": 0, "b": ()}}
  by_prefix = ob.scale_by_rowwise_adagrad(feature_axes=spec).init(params)
  fn = lambda path, leaf: 0 if jax.tree_util.keystr(path) == "['dense']['w']" else None
  by_callable = ob.scale_by_rowwise_adagrad(feature_axes=fn).init(params)
  for state in (by_prefix, by_callable):
    shapes = jax.tree.map(jnp.shape, state.sum_of_squares)
    assert shapes == {"embed": {"table": (16, 1)}, "bias": (16,), "dense": {"w": (1, 3), "b": (3,)}}


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


@pytest.mark.parametrize("name", list(CONTRACT))
def test_abstract_init_matches_concrete(name):
  tx = CONTRACT[name].make()
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


@pytest.mark.parametrize("name", list(CONTRACT))
def test_orbax_checkpoint_round_trip_then_equal_updates(name, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  tx = CONTRACT[name].make()
  params, state = run(tx, make_params(), steps=5)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "state", state)
  ckpt.wait_until_finished()
  target = jax.eval_shape(tx.init, params)
  restored = ckpt.restore(tmp_path / "state", target)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  chex.assert_trees_all_equal(restored, state)
  g = grads_for(params, 42)
  update = jax.jit(tx.update)
  u1, s1 = update(g, state, params)
  u2, s2 = update(g, restored, params)
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
