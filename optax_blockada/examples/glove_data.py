"""GloVe's training data (the nonzero co-occurrences, their logs and weights) and loss."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

from optax_blockada.examples import text
from optax_blockada.examples.glove_model import ALPHA, X_MAX, Params, glove_cost, weighting

__all__ = ["GloVeData", "prepare_data", "weighted_loss"]


class GloVeData(NamedTuple):
  """Nonzero co-occurrences prepared for training, as host numpy arrays."""

  rows: np.ndarray  # shape=(n,), int32
  cols: np.ndarray  # shape=(n,), int32
  log_counts: np.ndarray  # shape=(n,), float32, log X_ij
  weights: np.ndarray  # shape=(n,), float32, f(X_ij)
  vocab_size: int  # V

  def arrays(self) -> dict[str, np.ndarray]:
    """The per-pair arrays by name, as a batch holds them."""
    return {k: v for k, v in self._asdict().items() if k != "vocab_size"}


def prepare_data(
  cooc: text.Cooccurrence, *, x_max: float = X_MAX, alpha: float = ALPHA
) -> GloVeData:
  """Logs and weights (``x_max``, ``alpha``) of the counts of :func:`text.cooccurrence`."""
  for name, value in (("x_max", x_max), ("alpha", alpha)):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
      raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
  counts = np.asarray(cooc.counts, np.float64)
  if counts.size == 0:
    raise ValueError("the co-occurrence matrix is empty: the corpus has no pair in a window.")
  if np.any(counts <= 0) or not np.all(np.isfinite(counts)):
    raise ValueError("co-occurrence counts must be positive and finite.")
  return GloVeData(
    np.asarray(cooc.rows, np.int32),
    np.asarray(cooc.cols, np.int32),
    np.log(counts).astype(np.float32),
    weighting(counts, x_max, alpha).astype(np.float32),
    int(cooc.vocab_size),
  )


_jitted_cost = jax.jit(glove_cost)


def weighted_loss(params: Params, data: GloVeData, *, chunk: int = 1 << 18) -> float:
  """:func:`glove_cost` over all pairs at ``params``, per pair (in calls of ``chunk``
  pairs): the number ``glove.c`` prints after each iteration."""
  total, n, arrays = 0.0, data.rows.size, data.arrays()
  for start in range(0, n, chunk):
    batch = text.pad_batch({k: v[start : start + chunk] for k, v in arrays.items()}, chunk)
    total += float(_jitted_cost(params, batch))
  return total / n
