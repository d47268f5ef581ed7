"""Sparse row updates equal the dense step; errors and out-of-range ids; the Flax helper."""

import functools
import inspect
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_blockada as ob
from optax_blockada import sparse
from optax_blockada.sparse import _ids as ids_module

V, D, B = 40, 6, 16  # table rows, row size, ids per table per step
STEPS = 30
UNTOUCHED = slice(30, V)  # rows that no batch ever looks up
EMPTY_STEP = 7  # at this step every id of the 'word' table is out of range


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return {
    "word": f32(V, D),
    "ctx": f32(V + 5, D),
    "bias": f32(V),
    "dense": {"w": f32(D, 3), "b": jnp.zeros(3, jnp.float32)},
  }


def batches(seed=1):
  """Per step: ids with duplicates, repeated across steps, never in UNTOUCHED."""
  rng = np.random.default_rng(seed)
  out = []
  for t in range(STEPS):
    word = rng.integers(0, 12, size=B)  # few distinct ids: many duplicates
    word[:3] = [2, 2, 5]  # rows 2 and 5 in every batch
    if t == EMPTY_STEP:
      word[:] = [V, -1] * (B // 2)  # touches no row of 'word'
    ctx = rng.integers(0, 30, size=B)
    target = rng.normal(size=(B, 3))
    out.append(
      (
        {"word": jnp.asarray(word, jnp.int32), "ctx": jnp.asarray(ctx, jnp.int32)},
        jnp.asarray(target, jnp.float32),
      )
    )
  return out


def lookup(table, ids):
  """Dense reference lookup with the sparse path's documented semantics for bad ids."""
  valid = (ids >= 0) & (ids < table.shape[0])
  rows = table[jnp.where(valid, ids, 0)]
  return jnp.where(valid.reshape(valid.shape + (1,) * (rows.ndim - 1)), rows, 0)


def loss_fn(params, ids, target):
  """Looks up 'word' and 'bias' with the same ids (one group) and 'ctx' with its own."""
  w = lookup(params["word"], ids["word"])
  b = lookup(params["bias"], ids["word"])
  c = lookup(params["ctx"], ids["ctx"])
  hidden = jnp.tanh(w * c + b[:, None])
  pred = hidden @ params["dense"]["w"] + params["dense"]["b"][None, :]
  return jnp.mean((pred - target) ** 2)


def dense_run(tx, params, data):
  @jax.jit
  def step(params, state, ids, target):
    dense_ids = {"word": ids["word"], "ctx": ids["ctx"]}
    grads = jax.grad(loss_fn)(params, dense_ids, target)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for ids, target in data:
    params, state = step(params, state, ids, target)
  return params, state


def sparse_ids(ids):
  # 'word' and 'bias' share ids: naming both with one key of a subtree is shown in the
  # Flax test; here they are two keys with the same array.
  return {"word": ids["word"], "bias": ids["word"], "ctx": ids["ctx"]}


def sparse_loss(params, ids, target):
  # The gathered tables are looked up with the remapped ids; 'bias' shares 'word''s ids.
  remapped = {"word": ids["word"], "ctx": ids["ctx"]}
  small_bias = params["bias"][ids["bias"]]
  return _loss_with_bias(params, remapped, small_bias, target)


def _loss_with_bias(params, ids, b, target):
  w = params["word"][ids["word"]]
  c = params["ctx"][ids["ctx"]]
  hidden = jnp.tanh(w * c + b[:, None])
  pred = hidden @ params["dense"]["w"] + params["dense"]["b"][None, :]
  return jnp.mean((pred - target) ** 2)


def sparse_run(tx, params, data, *, low_level=False):
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state, ids, target):
    if low_level:
      grads = _row_grads(params, ids, target)
      return sparse.apply_gradients(tx, grads, state, params)
    _, grads, touched = sparse.value_and_grad(sparse_loss)(params, sparse_ids(ids), target)
    return sparse.apply_gradients(tx, grads, state, params, touched)

  state = tx.init(params)
  params = jax.tree.map(jnp.copy, params)  # donated below
  for ids, target in data:
    params, state = step(params, state, ids, target)
  return params, state


def _row_grads(params, ids, target):
  """The issue's low-level form: gradients w.r.t. the looked-up rows, duplicates kept."""
  rows = {
    "word": lookup(params["word"], ids["word"]),
    "bias": lookup(params["bias"], ids["word"]),
    "ctx": lookup(params["ctx"], ids["ctx"]),
  }

  def f(rows, dense):
    hidden = jnp.tanh(rows["word"] * rows["ctx"] + rows["bias"][:, None])
    return jnp.mean((hidden @ dense["w"] + dense["b"][None, :] - target) ** 2)

  g_rows, g_dense = jax.grad(f, argnums=(0, 1))(rows, params["dense"])
  return {
    "word": sparse.SparseGrad(ids["word"], g_rows["word"]),
    "bias": sparse.SparseGrad(ids["word"], g_rows["bias"]),
    "ctx": sparse.SparseGrad(ids["ctx"], g_rows["ctx"]),
    "dense": g_dense,
  }


def assert_close(a, b, rtol=1e-5, atol=1e-6):
  chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


def per_table(word, ctx, bias, dense):
  """A transform per table and one for the dense layer: one run covers several.

  (optax.partition itself is also exercised: the sparse path sees through it.)
  """
  labels = {"word": "word", "ctx": "ctx", "bias": "bias", "dense": {"w": "dense", "b": "dense"}}
  transforms = {"word": word, "ctx": ctx, "bias": bias, "dense": dense}
  return lambda: optax.chain(
    optax.partition({k: v() for k, v in transforms.items()}, labels),
    optax.scale_by_learning_rate(0.1),
  )


def block(structure, **kw):
  return lambda: ob.scale_by_block_adagrad(structure=structure, **kw)


rowwise_mean = ob.scale_by_rowwise_adagrad
rowwise_sum_old = functools.partial(
  ob.scale_by_rowwise_adagrad,
  1.0,
  0.0,
  reduction="sum",
  eps_in_sqrt=False,
  use_old_accumulator=True,
)
diagonal = functools.partial(ob.scale_by_diagonal_adagrad, eps_in_sqrt=False)

TRANSFORMS = {  # (word, ctx, bias, dense)
  "rowwise_mean_and_sum": per_table(rowwise_mean, rowwise_sum_old, diagonal, rowwise_mean),
  "diagonal_and_optax_adagrad": per_table(
    diagonal, optax.scale_by_rss, optax.scale_by_rss, diagonal
  ),
  "block_rows_and_rows_x_shared": per_table(
    block("rows"), block("rows_x_shared"), rowwise_mean, diagonal
  ),
  "block_blocks_and_shared": per_table(
    block("blocks", block_size=3), block("shared", update_root_every=3), diagonal, diagonal
  ),
}


@pytest.mark.parametrize("inverse_by", ["search", "permutation"])
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_sparse_equals_dense_over_30_steps(name, inverse_by, monkeypatch):
  # Each backend compiles one route of the deduplication (CPU: search; GPU, TPU:
  # permutation); both are checked here whatever the backend.
  monkeypatch.setattr(ids_module, "_default_inverse_by", lambda: inverse_by)
  params, data = make_params(), batches()
  p_dense, s_dense = dense_run(TRANSFORMS[name](), params, data)
  p_sparse, s_sparse = sparse_run(TRANSFORMS[name](), params, data)
  assert_close(p_sparse, p_dense)
  assert_close(s_sparse, s_dense)
  # Untouched rows: bit for bit the initial params and state.
  init_state = TRANSFORMS[name]().init(params)
  for key in ("word", "bias", "ctx"):
    np.testing.assert_array_equal(p_sparse[key][UNTOUCHED], params[key][UNTOUCHED])
  checked = 0
  for full, init in zip(jax.tree.leaves(s_sparse), jax.tree.leaves(init_state), strict=True):
    if full.ndim and full.shape[0] in (V, V + 5):
      np.testing.assert_array_equal(full[UNTOUCHED], init[UNTOUCHED])
      checked += 1
  assert checked >= 1
  # The training moved the touched rows (the test is not vacuous).
  for key in ("word", "bias", "ctx"):
    assert not np.allclose(p_sparse[key][2], params[key][2])


def test_low_level_row_gradients_with_duplicates_equal_dense():
  name = "rowwise_mean_and_sum"
  params, data = make_params(), batches()
  p_dense, s_dense = dense_run(TRANSFORMS[name](), params, data)
  p_sparse, s_sparse = sparse_run(TRANSFORMS[name](), params, data, low_level=True)
  assert_close(p_sparse, p_dense)
  assert_close(s_sparse, s_dense)


@pytest.mark.parametrize("inverse_by", ["search", "permutation"])
@pytest.mark.parametrize("n", [1, 7, 4096])
def test_unique_and_inverse_equal_numpy_on_either_route(inverse_by, n):
  # Both routes run on every backend; each backend uses one by default (CPU: search).
  rng = np.random.default_rng(n)
  num_rows = 50 if n < 100 else 1 << 20
  for ids in (
    rng.integers(0, num_rows, n),
    rng.integers(0, 3, n),  # mostly duplicates
    np.full(n, num_rows),  # every id dropped (out of range becomes num_rows)
    np.arange(n)[::-1] % num_rows,
  ):
    unique, inverse = jax.jit(
      functools.partial(ids_module._unique, num_rows=num_rows, inverse_by=inverse_by)
    )(jnp.asarray(ids, jnp.int32))
    want = np.unique(ids)
    expected = np.full(n, num_rows)
    expected[: want.size] = want
    np.testing.assert_array_equal(unique, expected)
    np.testing.assert_array_equal(inverse, np.searchsorted(want, ids))


def test_sparse_grad_duplicates_are_summed_like_autodiff():
  table = jnp.zeros((5, 2), jnp.float32)
  ids = jnp.array([[3, 1], [3, 3]], jnp.int32)
  values = jnp.arange(8.0, dtype=jnp.float32).reshape(2, 2, 2)
  tx = optax.sgd(1.0)
  new, _ = sparse.apply_gradients(
    tx, {"t": sparse.SparseGrad(ids, values)}, tx.init({"t": table}), {"t": table}
  )
  expected = np.zeros((5, 2))
  np.add.at(expected, np.asarray(ids).ravel(), -np.asarray(values).reshape(4, 2))
  np.testing.assert_allclose(new["t"], expected)


def chained(lr):
  labels = {"word": "rows", "ctx": "rows", "bias": "diag", "dense": {"w": "diag", "b": "diag"}}
  return optax.chain(
    optax.clip(0.5),
    optax.clip_by_global_norm(0.3),
    optax.partition(
      {"rows": ob.scale_by_rowwise_adagrad(), "diag": ob.scale_by_diagonal_adagrad()}, labels
    ),
    optax.scale(0.7),
    optax.scale_by_learning_rate(lr),
  )


CHAINS = {
  "clip_partition_schedule": lambda: chained(optax.cosine_decay_schedule(0.3, 20)),
  "momentum_on_dense_leaves_inject_hyperparams_scale_by_schedule": lambda: optax.chain(
    optax.masked(optax.trace(0.9), {"word": False, "ctx": False, "bias": False, "dense": True}),
    optax.inject_hyperparams(ob.rowwise_adagrad)(learning_rate=optax.exponential_decay(2, 5, 0.8)),
    optax.scale_by_schedule(optax.linear_schedule(0.1, 0.01, 25)),
  ),
  "fbgemm_max_norm": lambda: ob.presets.fbgemm_rowwise_adagrad(0.1, max_norm=1.0),
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_mixed_pytree_and_chains_equal_dense(name):
  # optax's schedules multiply int32 counts by floats, which strict promotion rejects.
  with jax.numpy_dtype_promotion("standard"):
    params, data = make_params(), batches()
    p_dense, s_dense = dense_run(CHAINS[name](), params, data)
    p_sparse, s_sparse = sparse_run(CHAINS[name](), params, data)
  assert_close(p_sparse, p_dense)
  assert_close(s_sparse, s_dense)
  assert not np.allclose(p_sparse["dense"]["w"], params["dense"]["w"])


def test_weight_decay_acts_on_looked_up_rows_only():
  params, data = make_params(), batches()[:5]
  sparse_tx = optax.chain(optax.add_decayed_weights(0.1), ob.rowwise_adagrad(0.1))
  p_sparse, _ = sparse_run(sparse_tx, params, data)
  # FBGEMM's fused-kernel semantics: decay on the rows looked up in the batch (here every
  # looked-up row has a gradient; tests/test_looked_up_rows.py has the zero-gradient
  # ones)...
  lazy_tx = optax.chain(ob.add_decayed_weights_to_touched_rows(0.1), ob.rowwise_adagrad(0.1))
  p_lazy, _ = dense_run(lazy_tx, params, data)
  assert_close(p_sparse, p_lazy)
  p_lazy_sparse, _ = sparse_run(lazy_tx, params, data)
  assert_close(p_lazy_sparse, p_lazy)
  # ...which is not the dense result: untouched rows keep their values instead of decaying.
  p_dense, _ = dense_run(sparse_tx, params, data)
  np.testing.assert_array_equal(p_sparse["word"][UNTOUCHED], params["word"][UNTOUCHED])
  assert np.all(np.abs(p_dense["word"][UNTOUCHED]) < np.abs(params["word"][UNTOUCHED]))


@pytest.mark.parametrize(
  ("make", "owner"),
  [
    (lambda: optax.chain(optax.trace(0.9), ob.rowwise_adagrad(0.1)), "TraceState.trace"),
    (lambda: optax.adam(0.1), "ScaleByAdamState.mu"),
    (lambda: optax.chain(ob.rowwise_adagrad(0.1), optax.ema(0.9)), "EmaState.ema"),
  ],
)
def test_non_lazy_stateful_transform_is_a_clear_error(make, owner):
  params, data = make_params(), batches()[:1]
  with pytest.raises(ValueError, match=rf"{owner}.*not lazily exact.*optax.partition"):
    sparse_run(make(), params, data)


def test_rows_must_be_along_axis_0():
  params, data = make_params(), batches()[:1]
  tx = ob.rowwise_adagrad(0.1, feature_axes=0)
  with pytest.raises(ValueError, match=r"of the table \['(word|bias)'\].*must not include axis 0"):
    sparse_run(tx, params, data)


def test_no_retracing_across_steps_with_different_ids():
  chex.clear_trace_counter()
  tx = ob.rowwise_adagrad(0.1)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  @chex.assert_max_traces(n=1)
  def step(params, state, ids, target):
    _, grads, touched = sparse.value_and_grad(sparse_loss)(params, ids, target)
    return sparse.apply_gradients(tx, grads, state, params, touched)

  params = jax.tree.map(jnp.copy, make_params())
  state = tx.init(params)
  for ids, target in batches()[:6]:
    params, state = step(params, state, sparse_ids(ids), target)


# ---------------------------------------------------------------------------------------
# Out-of-range ids.


def small_problem():
  params = {"t": jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)}
  loss = lambda p, ids: jnp.sum(p["t"][ids["t"]] ** 2)
  return params, loss, ob.rowwise_adagrad(0.1)


@pytest.mark.parametrize("bad", [8, 100, -1, -8])
def test_checked_mode_raises_on_concrete_out_of_range_ids(bad):
  params, loss, _ = small_problem()
  ids = {"t": jnp.array([1, bad, 2], jnp.int32)}
  with pytest.raises(ValueError, match=rf"\[0, 8\), got {bad} at 1"):
    sparse.value_and_grad(loss, checked=True)(params, ids)
  with pytest.raises(ValueError, match=rf"\['t'\].*\[0, 8\), got {bad} at 1"):
    grads = {"t": sparse.SparseGrad(ids["t"], jnp.ones((3, 3)))}
    sparse.apply_gradients(ob.rowwise_adagrad(0.1), grads, _state(params), params, checked=True)


def _state(params):
  return ob.rowwise_adagrad(0.1).init(params)


def test_checked_mode_under_jit_uses_checkify():
  from jax.experimental import checkify

  params, loss, tx = small_problem()

  def step(params, state, ids):
    _, grads, touched = sparse.value_and_grad(loss, checked=True)(params, ids)
    return sparse.apply_gradients(tx, grads, state, params, touched)

  state = tx.init(params)
  checked_step = jax.jit(checkify.checkify(step))
  err, _ = checked_step(params, state, {"t": jnp.array([1, 2, 3], jnp.int32)})
  err.throw()  # in range: no error
  err, (new_params, _) = checked_step(params, state, {"t": jnp.array([1, 9], jnp.int32)})
  with pytest.raises(checkify.JaxRuntimeError, match=r"\[0, 8\), got 9 at flat position 1"):
    err.throw()
  # The outputs are the fast mode's: id 9 dropped, only row 1 changed.
  changed = np.flatnonzero(np.any(np.asarray(new_params["t"] != params["t"]), axis=1))
  np.testing.assert_array_equal(changed, [1])
  # Without checkify, jit refuses to stage the check (a trace-time error, before any step).
  with pytest.raises(ValueError, match="checkify"):
    jax.jit(step)(params, state, {"t": jnp.array([1, 2], jnp.int32)})


def test_fast_mode_drops_out_of_range_ids_and_leaves_every_row_untouched():
  params, loss, tx = small_problem()
  state = tx.init(params)

  @jax.jit
  def step(params, state, ids):
    _, grads, touched = sparse.value_and_grad(loss)(params, ids)
    return sparse.apply_gradients(tx, grads, state, params, touched)

  ids = {"t": jnp.array([8, -1, 100, -8, -9], jnp.int32)}
  new_params, new_state = step(params, state, ids)
  chex.assert_trees_all_equal(new_params, params)
  chex.assert_trees_all_equal(new_state, state)
  # Mixed with valid ids: only those rows change, and -1 does not write row 7.
  ids = {"t": jnp.array([2, -1, 8, 2], jnp.int32)}
  new_params, new_state = step(params, state, ids)
  changed = np.flatnonzero(np.any(np.asarray(new_params["t"] != params["t"]), axis=1))
  np.testing.assert_array_equal(changed, [2])
  ref_grads = jax.grad(loss)(params, {"t": jnp.array([2, 2], jnp.int32)})
  updates, ref_state = tx.update(ref_grads, state, params)
  assert_close(new_params, optax.apply_updates(params, updates))
  assert_close(new_state, ref_state)


def test_out_of_range_ids_look_up_zeros_and_get_no_gradient():
  params = {"t": jnp.ones((4, 2), jnp.float32)}
  small, local, touched = sparse.gather(params, {"t": jnp.array([[3, 4], [-1, 3]], jnp.int32)})
  np.testing.assert_array_equal(small["t"][local["t"]][:, :, 0], [[1.0, 0.0], [0.0, 1.0]])
  np.testing.assert_array_equal(touched.rows["t"], [3, 4, 4, 4])


def test_a_table_with_no_ids_this_step():
  params, _, tx = small_problem()
  params = dict(params, w=jnp.ones(3, jnp.float32))
  f = lambda p, ids: jnp.sum(p["t"][ids["t"]] ** 2) + jnp.sum(p["w"] ** 2)
  ids = {"t": jnp.zeros((0,), jnp.int32)}
  _, grads, touched = sparse.value_and_grad(f)(params, ids)
  state = tx.init(params)
  new, new_state = sparse.apply_gradients(tx, grads, state, params, touched)
  np.testing.assert_array_equal(new["t"], params["t"])
  updates, ref_state = tx.update(jax.grad(f)(params, ids), state, params)
  assert_close(new, optax.apply_updates(params, updates))
  assert_close(new_state, ref_state)


# ---------------------------------------------------------------------------------------
# Bad input: clear errors.


def test_errors_for_bad_ids():
  params, loss, _ = small_problem()
  vg = sparse.value_and_grad(loss)
  with pytest.raises(TypeError, match="ids must be a dict"):
    vg(params, jnp.array([1]))
  with pytest.raises(ValueError, match=r"key 'missing'.*params have: \['t'\]"):
    vg(params, {"missing": jnp.array([1])})
  with pytest.raises(TypeError, match="must be integers, got dtype float32"):
    vg(params, {"t": jnp.array([1.0], jnp.float32)})
  with pytest.raises(ValueError, match=r"ids\['t'\] holds no array of ids"):
    vg(params, {"t": []})
  with pytest.raises(TypeError, match="name a table by its path"):
    vg(params, {1.5: jnp.array([1])})
  two = {"a": {"x": jnp.zeros((4, 2)), "y": jnp.zeros((5, 2))}}
  with pytest.raises(ValueError, match="different row counts"):
    sparse.gather(two, {"a": jnp.array([1])})
  same = {"a": {"x": jnp.zeros((4, 2)), "y": jnp.zeros((4,))}}
  with pytest.raises(ValueError, match=r"a.x is named by two keys of ids, 'a' and 'a.x'"):
    sparse.gather(same, {"a": jnp.array([1]), "a.x": jnp.array([1])})
  with pytest.raises(ValueError, match="not a table with rows along axis 0"):
    sparse.gather({"s": jnp.zeros(())}, {"s": jnp.array([0])})


def test_errors_for_bad_gradients_and_state():
  params, loss, tx = small_problem()
  state = tx.init(params)
  _, grads, touched = sparse.value_and_grad(loss)(params, {"t": jnp.array([1, 2])})
  with pytest.raises(ValueError, match=r"shape of its gathered rows \(2, 3\).*got \(8, 3\)"):
    sparse.apply_gradients(
      tx, jax.grad(loss)(params, {"t": jnp.array([1, 2])}), state, params, touched
    )
  with pytest.raises(ValueError, match="tree structure"):
    sparse.apply_gradients(tx, {"t": grads["t"], "u": grads["t"]}, state, params, touched)
  other = {"t": params["t"], "u": params["t"]}
  with pytest.raises(ValueError, match="another structure"):
    sparse.apply_gradients(tx, {"t": grads["t"], "u": grads["t"]}, tx.init(other), other, touched)
  with pytest.raises(ValueError, match=r"opt_state does not match tx.init\(params\)"):
    sparse.apply_gradients(tx, grads, tx.init({"t": jnp.zeros((9, 3))}), params, touched)
  with pytest.raises(TypeError, match="TouchedRows"):
    sparse.apply_gradients(tx, grads, state, params, touched.rows)
  with pytest.raises(ValueError, match="no TouchedRows and no SparseGrad"):
    sparse.apply_gradients(tx, jax.grad(loss)(params, {"t": jnp.array([1])}), state, params)
  with pytest.raises(ValueError, match=r"values must have shape ids.shape \+ \(3,\)"):
    bad = {"t": sparse.SparseGrad(jnp.array([1, 2]), jnp.ones((2, 4)))}
    sparse.apply_gradients(tx, bad, state, params)
  with pytest.raises(TypeError, match=r"optax\.GradientTransformation"):
    sparse.apply_gradients(lambda g: g, grads, state, params, touched)


# ---------------------------------------------------------------------------------------
# Flax NNX.


def test_nnx_glove_model_sparse_equals_dense_optimizer():
  nnx = pytest.importorskip("flax.nnx")

  class Side(nnx.Module):
    def __init__(self, rngs):
      self.vectors = nnx.Embed(V, D, rngs=rngs)
      self.bias = nnx.Param(jnp.zeros((V,), jnp.float32))

    def __call__(self, ids):
      return self.vectors(ids), self.bias[...][ids]

  class GloVe(nnx.Module):
    def __init__(self, rngs):
      self.word = Side(rngs)
      self.context = Side(rngs)
      self.scale = nnx.Param(jnp.ones((), jnp.float32))

    def __call__(self, i, j):
      (w, bw), (c, bc) = self.word(i), self.context(j)
      return self.scale[...] * jnp.sum(w * c, axis=-1) + bw + bc

  def loss_fn(model, ids, x):
    pred = model(ids["word"], ids["context"])
    weight = jnp.minimum(1.0, (x / 10.0) ** 0.75)
    return jnp.mean(weight * (pred - jnp.log(x)) ** 2)

  tx = optax.chain(optax.clip_by_global_norm(5.0), ob.rowwise_adagrad(0.2))
  dense_model, sparse_model = GloVe(nnx.Rngs(0)), GloVe(nnx.Rngs(0))
  dense_opt = nnx.Optimizer(dense_model, tx, wrt=nnx.Param)
  sparse_opt = nnx.Optimizer(sparse_model, tx, wrt=nnx.Param)

  @nnx.jit
  def dense_step(model, optimizer, ids, x):
    loss, grads = nnx.value_and_grad(loss_fn)(model, ids, x)
    optimizer.update(model, grads)
    return loss

  @nnx.jit(donate_argnums=(0, 1))
  def sparse_step(model, optimizer, ids, x):
    return sparse.nnx_update(model, optimizer, loss_fn, ids, x)

  rng = np.random.default_rng(0)
  for _ in range(20):
    ids = {
      "word": jnp.asarray(rng.integers(0, 25, B), jnp.int32),
      "context": jnp.asarray(rng.integers(0, 25, B), jnp.int32),
    }
    x = jnp.asarray(rng.integers(1, 30, B), jnp.float32)
    loss_dense = dense_step(dense_model, dense_opt, ids, x)
    loss_sparse = sparse_step(sparse_model, sparse_opt, ids, x)
    np.testing.assert_allclose(loss_sparse, loss_dense, rtol=1e-5)
  assert_close(nnx.state(sparse_model, nnx.Param), nnx.state(dense_model, nnx.Param))
  assert_close(nnx.state(sparse_opt), nnx.state(dense_opt))
  assert int(sparse_opt.step[...]) == 20
  table = sparse_model.word.vectors.embedding[...]
  assert table.shape == (V, D)
  init = GloVe(nnx.Rngs(0)).word.vectors.embedding[...]
  np.testing.assert_array_equal(table[25:], init[25:])


@pytest.mark.parametrize("jitted", [False, True])
@pytest.mark.parametrize("failure", ["loss", "transform"])
def test_nnx_update_leaves_model_and_optimizer_as_they_were_when_it_fails(failure, jitted):
  nnx = pytest.importorskip("flax.nnx")
  model = nnx.Embed(10, 2, rngs=nnx.Rngs(0))
  # A transform that is not lazily exact: apply_gradients rejects it after the loss ran.
  tx = optax.adam(0.1) if failure == "transform" else ob.rowwise_adagrad(0.1)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  before = jax.tree.map(np.asarray, (nnx.state(model), nnx.state(optimizer)))

  def loss_fn(model, ids):
    if failure == "loss":
      raise RuntimeError("boom")
    return jnp.sum(model(ids["embedding"]) ** 2)

  def step(model, optimizer, ids):
    return sparse.nnx_update(model, optimizer, loss_fn, ids)

  step = nnx.jit(step) if jitted else step
  with pytest.raises(RuntimeError if failure == "loss" else ValueError, match=r"boom|momentum"):
    step(model, optimizer, {"embedding": jnp.array([1, 4])})
  # The tables are whole again, and nothing moved.
  assert model.embedding[...].shape == (10, 2)
  after = jax.tree.map(np.asarray, (nnx.state(model), nnx.state(optimizer)))
  chex.assert_trees_all_equal(after, before)


# ---------------------------------------------------------------------------------------
# Docs and the example.


@pytest.mark.parametrize("name", sparse.__all__)
def test_every_public_name_has_an_example(name):
  doc = inspect.getdoc(getattr(sparse, name)) or ""
  assert ">>>" in doc, f"optax_blockada.sparse.{name} has no runnable example"


def test_sparse_glove_example_runs_and_matches_dense(tmp_path, capsys):
  from optax_blockada.examples import sparse_glove

  # The doctests' shapes: the compiled steps are reused when the suite runs together.
  argv = ["--vocab-size", "40", "--dim", "4", "--batch-size", "16", "--steps", "60"]
  assert sparse_glove.main([*argv, "--json", str(tmp_path / "r.json")]) == 0
  assert "max |sparse - dense|" in capsys.readouterr().out
  r = json.loads((tmp_path / "r.json").read_text())
  assert r["max_param_difference"] < 1e-5
  assert r["max_loss_difference"] < 1e-5
  sparse_losses = np.asarray(r["losses"]["sparse"])
  assert sparse_losses[-20:].mean() < 0.8 * sparse_losses[:20].mean()


# ---------------------------------------------------------------------------------------
# 64-bit host ids: judged in their own dtype, never wrapped to 32 bits.


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_64_bit_host_ids_out_of_range_are_dropped_not_wrapped(dtype):
  params = {"t": jnp.arange(20.0, dtype=jnp.float32).reshape(10, 2)}
  tx = ob.rowwise_adagrad(0.1)
  bad = 2**32 + 7 if dtype is np.int64 else 2**63 + 7
  ids = np.array([bad, 3, 3], dtype)
  # What JAX itself does with x64 off: the id becomes 7 where it enters jit.
  assert int(jax.jit(lambda x: x)(ids)[0]) == 7

  def loss(small, local):
    return jnp.sum(small["t"][local["t"]] ** 2)

  def step(params, state, ids):
    small, local, touched = sparse.gather(params, ids)
    grads = jax.grad(loss)(small, local)
    return sparse.apply_gradients(tx, grads, state, params, touched)[0]

  # The reference: the same step without the bad id (row 3 twice).
  want = step(params, tx.init(params), {"t": np.array([3, 3])})
  assert not np.allclose(want["t"][3], params["t"][3])
  eager = step(params, tx.init(params), {"t": ids})  # checked on the host
  jitted = jax.jit(step)(params, tx.init(params), {"t": sparse.as_ids(ids, 10)})
  for got in (eager, jitted):
    np.testing.assert_array_equal(got["t"][7], params["t"][7])
    np.testing.assert_allclose(got["t"], want["t"], rtol=1e-6)
  match = f"{bad} at 0"
  with pytest.raises(ValueError, match=match):
    sparse.gather(params, {"t": ids}, checked=True)
  with pytest.raises(ValueError, match=match):
    sparse.as_ids(ids, 10, checked=True)
  # With x64 on, 64-bit ids on the device are compared in 64 bits and dropped too.
  with jax.enable_x64(True):
    touched = sparse.gather(params, {"t": jnp.asarray(ids)})[2]
    np.testing.assert_array_equal(touched.rows["t"], [3, 10, 10])
    np.testing.assert_array_equal(sparse.as_ids(ids, 10), [10, 3, 3])
