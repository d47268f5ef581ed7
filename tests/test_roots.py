"""Inverse square roots (eigh, Newton-Schulz) against float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_blockada import _roots


def _spd(rng, k, cond, scale=10.0):
  """A float32 SPD matrix with log-spaced eigenvalues: condition number ``cond``."""
  q, _ = np.linalg.qr(rng.normal(size=(k, k)))
  eigenvalues = scale * np.logspace(0, -np.log10(cond), k)
  return ((q * eigenvalues) @ q.T).astype(np.float32)


def _reference(h, lam):
  """(H + lam I)^(-1/2) in float64 from numpy's eigh of the float32 input."""
  w, v = np.linalg.eigh(np.asarray(h, np.float64))
  return (v / np.sqrt(np.maximum(w, 0) + lam)) @ v.T


def _relative(a, b):
  return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


@pytest.mark.parametrize("method", ["eigh", "newton_schulz"])
@pytest.mark.parametrize("k", [4, 32, 128])
def test_roots_match_float64_with_default_damping(method, k):
  rng = np.random.default_rng(k)
  conds = (1e2, 1e4, 1e6)
  h = np.stack([_spd(rng, k, cond) for cond in conds])
  lam = _roots.damping(jnp.asarray(h), 1e-7, 1e-5)
  roots, ok = _roots.inverse_sqrt(jnp.asarray(h), lam, method=method)
  assert bool(jnp.all(ok))
  for i, cond in enumerate(conds):
    lam64 = 1e-7 + 1e-5 * np.trace(h[i].astype(np.float64))
    assert _relative(roots[i], _reference(h[i], lam64)) < 1e-2, cond


@pytest.mark.parametrize("k", [4, 32, 128])
def test_newton_schulz_is_accurate_undamped_at_condition_1e6(k):
  h = _spd(np.random.default_rng(k), k, 1e6)
  root, ok = _roots.inverse_sqrt(jnp.asarray(h), jnp.zeros(()), method="newton_schulz")
  assert bool(ok)
  assert _relative(root, _reference(h, 0.0)) < 1e-2


def test_eigh_is_exact_along_dominant_directions_of_a_rank_one_matrix():
  # H = g g^T: the step along g is g / sqrt(|g|^2 + lam) whatever the null space does.
  rng = np.random.default_rng(0)
  for k in (8, 64):
    g = rng.normal(size=k).astype(np.float32)
    h = np.outer(g, g)
    lam = np.float32(1e-7 + 1e-5 * np.trace(h))
    expected = g / np.sqrt(np.float64(g @ g) + lam)
    for method in ("eigh", "newton_schulz"):
      root, ok = _roots.inverse_sqrt(jnp.asarray(h), jnp.asarray(lam), method=method)
      assert bool(ok)
      u = np.asarray(root, np.float64) @ g
      np.testing.assert_allclose(u, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_batched_roots_and_flags():
  rng = np.random.default_rng(1)
  h = np.stack([_spd(rng, 6, 10.0) for _ in range(6)]).reshape(2, 3, 6, 6)
  h[1, 2, 0, 1] = np.inf
  lam = jnp.full((2, 3), 1e-3)
  for method in ("eigh", "newton_schulz"):
    roots, ok = _roots.inverse_sqrt(jnp.asarray(h), lam, method=method)
    assert roots.shape == (2, 3, 6, 6) and ok.shape == (2, 3)
    expected_ok = np.ones((2, 3), bool)
    expected_ok[1, 2] = False
    np.testing.assert_array_equal(ok, expected_ok)
    for i, j in ((0, 0), (1, 1)):
      np.testing.assert_allclose(roots[i, j], _reference(h[i, j], 1e-3), rtol=1e-4, atol=1e-5)


def test_non_finite_input_is_flagged_even_when_eigh_returns_finite_values(gpu_like_eigh):
  # On GPU a non-finite matrix decomposes into finite values (a zero root): the flag
  # must come from the input and the decomposition, not from the root alone.
  rng = np.random.default_rng(1)
  h = np.stack([_spd(rng, 6, 10.0) for _ in range(4)])
  h[1, 0, 1] = h[1, 1, 0] = np.inf
  h[2, 3, 3] = np.nan
  lam = np.full(4, 1e-3, np.float32)
  lam[3] = np.inf  # a non-finite damping is bad input too
  roots, ok = _roots.inverse_sqrt(jnp.asarray(h), jnp.asarray(lam), method="eigh")
  assert bool(jnp.all(jnp.isfinite(roots[:3])))  # the garbage is finite
  np.testing.assert_array_equal(ok, [True, False, False, False])
  np.testing.assert_allclose(roots[0], _reference(h[0], 1e-3), rtol=1e-4, atol=1e-5)


def test_one_by_one_blocks_use_optax_guard():
  h = jnp.array([0.0, 4.0, 9.0]).reshape(3, 1, 1)
  for method in ("eigh", "newton_schulz"):
    roots, ok = _roots.inverse_sqrt(h, jnp.full(3, 1e-7), method=method)
    np.testing.assert_allclose(roots[:, 0, 0], [0.0, 1 / np.sqrt(4 + 1e-7), 1 / np.sqrt(9 + 1e-7)])
    assert bool(jnp.all(ok))


def test_damping_is_rotation_invariant():
  rng = np.random.default_rng(2)
  h = _spd(rng, 5, 100.0)
  q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  rotated = (q @ h @ q.T).astype(np.float32)
  a = _roots.damping(jnp.asarray(h), 0.1, 0.01)
  b = _roots.damping(jnp.asarray(rotated), 0.1, 0.01)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  np.testing.assert_allclose(a, 0.1 + 0.01 * np.trace(h.astype(np.float64)), rtol=1e-6)


def test_resolve_root_method_and_bad_method():
  assert _roots.resolve_root_method("auto", "gpu") == "eigh"
  assert _roots.resolve_root_method("auto", "tpu") == "newton_schulz"
  assert _roots.resolve_root_method("eigh", "tpu") == "eigh"
  assert _roots.resolve_root_method("auto") == (
    "newton_schulz" if jax.default_backend() == "tpu" else "eigh"
  )
  with pytest.raises(ValueError, match="method must be 'eigh' or 'newton_schulz', got 'auto'"):
    _roots.inverse_sqrt(jnp.eye(2), jnp.zeros(()), method="auto")
