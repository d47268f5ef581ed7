"""Effective learning rates and state bytes against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_blockada as ob
from optax_blockada import presets


def _history(seed, shape, steps=6):
  rng = np.random.default_rng(seed)
  grads = [rng.normal(size=shape).astype(np.float32) for _ in range(steps)]
  grads[2][1] = 0.0
  return grads


def test_effective_learning_rates_of_rowwise_inside_a_chain():
  grads = _history(0, (6, 4))
  tx = optax.chain(optax.clip_by_global_norm(1e6), ob.rowwise_adagrad(0.3, eps_in_sqrt=False))
  params = jnp.zeros((6, 4))
  state = tx.init(params)
  for g in grads:
    _, state = tx.update(jnp.asarray(g), state, params)
  acc = 0.1 + sum((g.astype(np.float64) ** 2).mean(axis=1, keepdims=True) for g in grads)
  expected = 0.3 / (np.sqrt(acc) + 1e-7)
  got = ob.effective_learning_rates(state, 0.3, eps_in_sqrt=False)
  assert got.shape == (6, 1)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # Rows that saw bigger gradients have smaller learning rates: Adagrad's monotone decay.
  sums = (np.stack(grads) ** 2).mean(axis=2).sum(axis=0)
  assert np.argmin(np.asarray(got)[:, 0]) == np.argmax(sums)


def test_effective_learning_rates_merge_partitioned_glove_state():
  eta = 0.05
  params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(3)}
  tx = presets.glove_adagrad(eta)
  g = {"w": jnp.full((3, 2), 2.0), "b": jnp.full(3, 3.0)}
  _, state = tx.update(g, tx.init(params), params)
  got = ob.effective_learning_rates(state, 1.0, eps=0.0)
  assert jax.tree.structure(got) == jax.tree.structure(params)
  # glove.c units: vectors divide eta*g by sqrt(1 + (eta*g)^2); per unit of g that is
  # eta / sqrt(1 + eta^2 g^2) = 1 / sqrt(1/eta^2 + g^2).
  np.testing.assert_allclose(got["w"], 1 / np.sqrt(1 / eta**2 + 4.0), rtol=1e-6)
  np.testing.assert_allclose(got["b"], 1 / np.sqrt(1 + 9.0), rtol=1e-6)


def test_effective_learning_rates_of_optax_adagrad():
  tx = optax.adagrad(0.1)
  params = jnp.zeros(3)
  _, state = tx.update(jnp.array([1.0, 0.0, 2.0]), tx.init(params))
  np.testing.assert_allclose(
    ob.effective_learning_rates(state, 0.1),
    0.1 / np.sqrt(np.array([1.1, 0.1, 4.1]) + 1e-7),
    rtol=1e-6,
  )


def test_effective_learning_rates_errors():
  with pytest.raises(ValueError, match="no Adagrad state"):
    ob.effective_learning_rates(optax.sgd(0.1).init(jnp.zeros(2)))
  tx = optax.chain(ob.diagonal_adagrad(0.1), ob.rowwise_adagrad(0.1))
  state = tx.init(jnp.zeros((2, 2)))
  assert len(ob.find_adagrad_states(state)) == 2
  with pytest.raises(ValueError, match="a leaf is covered by 2 Adagrad states"):
    ob.effective_learning_rates(state)
  # A single state found with find_adagrad_states can be passed directly.
  got = ob.effective_learning_rates(ob.find_adagrad_states(state)[1], 1.0)
  np.testing.assert_allclose(got, np.full((2, 1), 1 / np.sqrt(0.1 + 1e-7)), rtol=1e-6)


def test_state_bytes_counts_dtypes_and_shapes():
  v, d = 1000, 64
  params = {"table": jnp.zeros((v, d), jnp.bfloat16), "bias": jnp.zeros(v, jnp.bfloat16)}
  diag = ob.state_bytes(ob.diagonal_adagrad(0.1).init(params))
  row = ob.state_bytes(ob.rowwise_adagrad(0.1).init(params))
  assert diag == (v * d + v) * 4  # float32 accumulators for bf16 params
  # One accumulator per row, plus the (1, d) and (1,) records of each leaf's row shape.
  assert row == (v + d + v + 1) * 4
  # For the table: d times less than diagonal, plus the one recorded row of d.
  table_row = ob.state_bytes(ob.rowwise_adagrad(0.1).init(params["table"]))
  table_diag = ob.state_bytes(ob.diagonal_adagrad(0.1).init(params["table"]))
  assert (table_row - d * 4) * d == table_diag
  # Abstract states are measured without allocating.
  abstract = jax.eval_shape(
    ob.rowwise_adagrad(0.1).init, jax.ShapeDtypeStruct((10**8, 128), jnp.float32)
  )
  assert ob.state_bytes(abstract) == 4 * (10**8 + 128)
  # Counts, schedules and empty states in chains are included exactly.
  chained = optax.chain(ob.rowwise_adagrad(optax.linear_schedule(1.0, 0.0, 5)))
  assert ob.state_bytes(chained.init(params)) == row + 4  # int32 schedule count


def _np_mean_inverse_root(h, lam):
  w = np.maximum(np.linalg.eigvalsh(h), 0)
  return np.mean(np.where(w + lam > 0, 1 / np.sqrt(w + lam), 0.0))


def test_effective_learning_rates_of_block_states_against_numpy():
  rng = np.random.default_rng(3)
  grads = [rng.normal(size=(5, 4)).astype(np.float32) for _ in range(4)]
  for g in grads:
    g[3] = 0.0
  params = {"table": jnp.zeros((5, 4)), "bias": jnp.zeros(5)}
  eps, rel, lr = 1e-3, 1e-2, 0.3
  for structure in ("rows", "blocks", "shared", "rows_x_shared"):
    k = 2 if structure == "blocks" else 4
    tx = optax.chain(
      optax.clip_by_global_norm(1e6),
      ob.block_adagrad(
        lr,
        eps=eps,
        relative_eps=rel,
        structure=structure,
        block_size=2 if structure == "blocks" else None,
      ),
    )
    state = tx.init(params)
    for g in grads:
      _, state = tx.update({"table": jnp.asarray(g), "bias": jnp.asarray(g[:, 0])}, state)
    got = ob.effective_learning_rates(state, lr, eps=eps, relative_eps=rel)["table"]
    g64 = np.stack(grads).astype(np.float64)  # (steps, rows, d)
    expected = []
    for r in range(5):
      values = []
      for b in range(4 // k):
        gb = g64[:, r, b * k : (b + 1) * k]
        if structure in ("rows", "blocks"):
          h = 0.1 * np.eye(k) + gb.T @ gb
        elif structure == "rows_x_shared":
          c = 0.1 * np.eye(k) + np.einsum("tri,trj->ij", g64, g64)
          s = 0.1 + np.sum(gb**2) / k
          h = s * k * c / np.trace(c)
        else:
          h = 0.1 * np.eye(k) + np.einsum("tri,trj->ij", g64, g64)
        values.append(_np_mean_inverse_root(h, eps + rel * np.trace(h)))
      expected.append(lr * np.mean(values))
    if structure == "shared":
      assert got.shape == ()
      np.testing.assert_allclose(got, expected[0], rtol=1e-5)
    else:
      assert got.shape == (5, 1)
      np.testing.assert_allclose(got[:, 0], expected, rtol=1e-5)
    if structure in ("rows", "blocks"):
      # The untouched row keeps the initial rate lr / sqrt(a + lam).
      np.testing.assert_allclose(got[3, 0], lr / np.sqrt(0.1 + eps + rel * 0.1 * k), rtol=1e-5)


def test_state_bytes_of_block_states():
  v, d = 1000, 16
  params = jax.ShapeDtypeStruct((v, d), jnp.bfloat16)
  size = lambda **kw: ob.state_bytes(jax.eval_shape(ob.block_adagrad(0.1, **kw).init, params))
  count = 4 + 4  # int32 step count and int32 fallback counter
  assert size() == v * d * d * 4 + count
  assert size(structure="blocks", block_size=4) == v * d * 4 * 4 + count
  assert size(structure="shared") == d * d * 4 + count
  assert size(structure="shared", update_root_every=5) == 2 * d * d * 4 + count
  assert size(structure="rows_x_shared") == (v + d * d) * 4 + count
