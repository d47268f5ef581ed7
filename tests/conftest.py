"""Fixtures shared by the test modules (the root conftest.py configures JAX)."""

import jax.numpy as jnp
import pytest


@pytest.fixture
def gpu_like_eigh(monkeypatch):
  """``jnp.linalg.eigh`` that returns finite garbage for a matrix with a non-finite entry.

  LAPACK on CPU returns NaN for such a matrix; the GPU solvers were seen to return
  finite values (on an H200, a zero root), which must still make the caller fall back.
  This decomposes a non-finite matrix as zero eigenvalues and zero eigenvectors, so
  the root built from it is zero, as seen on the GPU.
  """
  real_eigh = jnp.linalg.eigh

  def eigh(matrices, *args, **kwargs):
    bad = ~jnp.all(jnp.isfinite(matrices), axis=(-2, -1))
    w, q = real_eigh(jnp.where(bad[..., None, None], 0, matrices), *args, **kwargs)
    return jnp.where(bad[..., None], 0, w), jnp.where(bad[..., None, None], 0, q)

  monkeypatch.setattr(jnp.linalg, "eigh", eigh)
  return eigh
