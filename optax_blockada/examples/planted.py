"""Synthetic word-word co-occurrence counts with a planted low-rank structure.

The generator gives GloVe-style examples a corpus-free, fully deterministic input
that still looks like real co-occurrence data: Zipfian word frequencies, a
heavy-tailed count distribution, and many zero counts for pairs of rare words.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from optax_blockada.examples._cli import check_int

__all__ = ["planted_cooccurrence"]


def _check_real(name: str, value: object, *, positive: bool) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{name} must be a real number, got {value!r}")
  value = float(value)
  if not math.isfinite(value) or value < 0.0 or (positive and value == 0.0):
    raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}, got {value}")
  return value


def planted_cooccurrence(
  vocab_size: int = 500,
  rank: int = 8,
  *,
  total_count: float = 1_000_000.0,
  zipf_exponent: float = 1.0,
  seed: int = 0,
) -> np.ndarray:
  r"""Samples a symmetric co-occurrence matrix with planted low-rank PMI.

  Word ``i`` (most frequent first) has Zipfian frequency :math:`p_i \propto (i + 1)^{-s}`
  and a latent vector :math:`u_i \in \mathbb{R}^r` with i.i.d. :math:`\mathcal{N}(0,
  r^{-1/2})` entries, so the planted PMI :math:`u_i^\top u_j` (:math:`i \ne j`) has mean 0
  and standard deviation 1. The counts are :math:`X_{ij} = X_{ji} \sim \mathrm{Poisson}(N
  p_i p_j e^{u_i^\top u_j})` for ``i < j``, mirrored, with a zero diagonal; they sum to
  about ``1.6 N``, and pairs of rare words are mostly zero, as in real corpora. All
  randomness comes from ``numpy.random.default_rng(seed)``; ``zipf_exponent=0`` gives uniform
  word frequencies. Returns the counts as a ``float32`` ``(V, V)`` array.
  """
  vocab_size, rank = check_int("vocab_size", vocab_size, 2), check_int("rank", rank, 1)
  seed = check_int("seed", seed, 0)
  total_count = _check_real("total_count", total_count, positive=True)
  zipf_exponent = _check_real("zipf_exponent", zipf_exponent, positive=False)

  rng = np.random.default_rng(seed)
  freq = np.arange(1, vocab_size + 1, dtype=np.float64) ** -zipf_exponent
  freq /= freq.sum()
  # Entries with variance r^{-1/2}: u_i . u_j (i != j) then has variance 1.
  latent = rng.standard_normal((vocab_size, rank)) * rank**-0.25
  pmi = latent @ latent.T
  rate = total_count * np.outer(freq, freq) * np.exp(pmi)

  upper_i, upper_j = np.triu_indices(vocab_size, k=1)
  counts = np.zeros((vocab_size, vocab_size), dtype=np.float32)
  samples = rng.poisson(rate[upper_i, upper_j]).astype(np.float32)
  counts[upper_i, upper_j] = samples
  counts[upper_j, upper_i] = samples
  return counts
