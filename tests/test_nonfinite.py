"""Skipping non-finite gradient rows (``skip_nonfinite_rows``) and the counters.

References: row-wise Adagrad written in float64 numpy from its formula, ``optax.adagrad``,
and the invariance that a skipped row is exactly a row absent from the batch (lazy
exactness), in the dense step and in the sparse path.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_blockada as ob
from optax_blockada import sparse

V, D = 6, 4
LR, A, EPS = 0.3, 0.1, 1e-7
# Non-finite rows per step: a NaN, an inf, and an entry whose square overflows float32.
BAD = {1: (2, np.nan), 3: (0, np.inf), 4: (4, 3e19)}


def gradients(steps=5, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for t in range(steps):
    g = rng.normal(size=(V, D)).astype(np.float32)
    g[5] = 0  # a row never looked up
    if t in BAD:
      row, value = BAD[t]
      g[row, 1] = value
    out.append(g)
  return out


def rowwise_reference(params, grads):
  """Row-wise Adagrad (mean) in float64, skipping rows whose squared gradient overflows."""
  w = params.astype(np.float64)
  s = np.full((V, 1), A)
  for g in grads:
    g = g.astype(np.float64)
    with np.errstate(invalid="ignore"):
      finite = np.all(g * g <= np.finfo(np.float32).max, axis=1, keepdims=True)
    g = np.where(finite, g, 0)
    s = s + np.mean(g * g, axis=1, keepdims=True)
    w = w - LR * g / np.sqrt(s + EPS) * (s > 0)
  return w, s


def run(tx, params, grads):
  state = tx.init(params)
  step = jax.jit(tx.update)
  for g in grads:
    updates, state = step(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_rowwise_skips_nonfinite_rows_against_float64_reference():
  params = jnp.asarray(np.random.default_rng(1).normal(size=(V, D)), jnp.float32)
  grads = gradients()
  got, state = run(ob.rowwise_adagrad(LR, A, EPS, skip_nonfinite_rows=True), params, grads)
  want, s = rowwise_reference(np.asarray(params), grads)
  # float32 steps against float64: 5 steps of relative error ~1e-7 each.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  inner = ob.find_adagrad_states(state)[0]
  np.testing.assert_allclose(inner.sum_of_squares, s, rtol=1e-5)
  assert int(state.skipped_rows) == len(BAD)
  assert int(ob.counters(state)["skipped_rows"]) == len(BAD)
  # Without the option (optax's behaviour) the NaN poisons its row for good.
  _, plain = run(ob.rowwise_adagrad(LR, A, EPS), params, grads)
  poisoned = np.asarray(ob.find_adagrad_states(plain)[0].sum_of_squares)
  assert np.isnan(poisoned[2, 0]) and np.isinf(poisoned[0, 0])
  assert np.isfinite(poisoned[[1, 3, 5]]).all()


TRANSFORMS = {
  "optax_adagrad": (lambda: optax.adagrad(LR), ()),
  "diagonal": (lambda: ob.diagonal_adagrad(LR), ()),
  "rowwise": (lambda: ob.rowwise_adagrad(LR), None),
  "block_rows": (lambda: ob.block_adagrad(LR), None),
  "block_blocks": (lambda: ob.block_adagrad(LR, structure="blocks", block_size=2), None),
  "block_shared": (lambda: ob.block_adagrad(LR, structure="shared"), None),
  "block_rows_x_shared": (lambda: ob.block_adagrad(LR, structure="rows_x_shared"), None),
  "fbgemm_rowwise": (lambda: ob.presets.fbgemm_rowwise_adagrad(LR, weight_decay=0.01), None),
}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_a_skipped_row_is_a_row_absent_from_the_batch(name):
  make, axes = TRANSFORMS[name]
  tx = ob.skip_nonfinite_rows(make(), feature_axes=axes)
  params = {
    "table": jnp.asarray(np.random.default_rng(2).normal(size=(V, D)), jnp.float32),
    "bias": jnp.zeros(V, jnp.float32),
  }
  g = gradients(2)[1]  # row 2 holds a NaN
  g[3, 0] = -np.inf
  grads = {"table": jnp.asarray(g), "bias": jnp.asarray(np.where(np.arange(V) == 1, np.nan, 1.0))}
  updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
  # The reference: the bare transform on the gradient without those rows.
  if axes == ():  # Diagonal: each coordinate is its own row.
    clean_table = np.where(np.isfinite(g), g, 0)
    bad_table = int(np.sum(~np.isfinite(g)))
  else:
    clean_table = np.where(np.isfinite(g).all(axis=1, keepdims=True), g, 0)
    bad_table = 2
  clean = {"table": jnp.asarray(clean_table), "bias": jnp.where(jnp.arange(V) == 1, 0.0, 1.0)}
  inner = make()
  want_updates, want_state = jax.jit(inner.update)(clean, inner.init(params), params)
  # The same float32 operations on the same values, compiled as two programs (XLA may
  # fuse them differently on GPU): a few float32 roundings, ~1e-7 relative.
  chex.assert_trees_all_close(updates, want_updates, rtol=1e-6, atol=1e-9)
  chex.assert_trees_all_close(state.inner_state, want_state, rtol=1e-6, atol=1e-9)
  assert np.isfinite(np.asarray(updates["table"])).all()
  skipped = (clean_table == 0) & (g != 0)
  assert skipped.any() and not np.asarray(updates["table"])[skipped].any()
  assert jax.tree.map(int, state.skipped_rows) == {"table": bad_table, "bias": 1}


def sparse_loss(params, ids, y):
  return jnp.sum((jnp.sum(params["table"][ids["table"]], axis=-1) - y) ** 2)


@pytest.mark.parametrize("structure", ["rowwise", "block_shared"])
def test_sparse_path_skips_and_counts_as_the_dense_step(structure):
  make = TRANSFORMS[structure][0]
  tx = ob.skip_nonfinite_rows(make())
  params = {"table": jnp.asarray(np.random.default_rng(3).normal(size=(20, D)), jnp.float32)}
  batches = [
    (jnp.array([1, 4, 4, 7]), jnp.array([0.5, 1.0, 1.0, -1.0])),
    (jnp.array([3, 9, 1, 2]), jnp.array([np.nan, 2.0, 0.0, 1.0])),  # rows 3 only
    (jnp.array([4, 9, 9, 0]), jnp.array([1.0, np.inf, 0.0, 1.0])),  # row 9 (twice)
  ]

  @jax.jit
  def dense_step(params, state, ids, y):
    grads = jax.grad(sparse_loss)(params, {"table": ids}, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  @jax.jit
  def sparse_step(params, state, ids, y):
    _, g, touched = sparse.value_and_grad(sparse_loss)(params, {"table": ids}, y)
    return sparse.apply_gradients(tx, g, state, params, touched)

  dense, dense_state = params, tx.init(params)
  sparse_params, sparse_state = params, tx.init(params)
  for ids, y in batches:
    dense, dense_state = dense_step(dense, dense_state, ids, y)
    sparse_params, sparse_state = sparse_step(sparse_params, sparse_state, ids, y)
  assert int(dense_state.skipped_rows["table"]) == 2
  assert int(sparse_state.skipped_rows["table"]) == 2
  # Gathered rows are updated by the same float32 operations as the dense rows.
  chex.assert_trees_all_close(sparse_params, dense, rtol=1e-6, atol=1e-7)
  assert np.isfinite(np.asarray(sparse_params["table"])).all()


def test_counters_merge_partitions_and_add_nested_states():
  params = {"emb": jnp.zeros((4, 3)), "bias": jnp.zeros(4)}
  tx = ob.skip_nonfinite_rows(
    optax.partition(
      {"emb": ob.block_adagrad(0.1, structure="shared"), "bias": optax.adagrad(0.1)},
      {"emb": "emb", "bias": "bias"},
    )
  )
  grads = {
    "emb": jnp.array([[1.0, np.nan, 0.0], [1.0, 2.0, 3.0], [0.0] * 3, [np.inf, 0.0, 0.0]]),
    "bias": jnp.array([1.0, np.nan, np.nan, 0.0]),
  }
  _, state = tx.update(grads, tx.init(params), params)
  got = {name: jax.tree.map(int, tree) for name, tree in ob.counters(state).items()}
  # Skipped before the block transform saw them, so no fallback; the bias is not a block.
  assert got == {
    "skipped_rows": {"emb": 2, "bias": 2},
    "fallbacks": {"emb": 0, "bias": 0},
  }
  # Without the wrapper, 'shared' leaves the two rows out itself and counts fallbacks.
  bare = ob.block_adagrad(0.1, structure="shared")
  _, bare_state = bare.update(grads["emb"], bare.init(params["emb"]))
  assert jax.tree.map(int, ob.counters(bare_state)) == {"fallbacks": 2}
  assert ob.counters(optax.adagrad(0.1).init(params)) == {}


def test_bad_arguments_are_clear_errors():
  with pytest.raises(TypeError, match=r"inner must be an optax\.GradientTransformation"):
    ob.skip_nonfinite_rows(lambda g: g)
  tx = ob.skip_nonfinite_rows(ob.rowwise_adagrad(0.1))
  params = jnp.zeros((3, 2))
  with pytest.raises(TypeError, match="SkipNonfiniteRowsState"):
    tx.update(params, ob.rowwise_adagrad(0.1).init(params))
  with pytest.raises(TypeError, match="dtype int32"):
    tx.update(jnp.zeros((3, 2), jnp.int32), tx.init(params))
