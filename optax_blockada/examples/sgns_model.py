"""word2vec's skip-gram with negative sampling (SGNS): the model, its data and its cost.

The recipe follows ``word2vec.c`` (Mikolov et al. 2013):

* **subsampling**: each epoch, a token of a word with count ``f`` out of ``T``
  in-vocabulary tokens is kept with probability ``(sqrt(f / (s T)) + 1) s T / f``
  (``s = 1e-3``), before windows are formed;
* **dynamic window**: each centre token draws ``b`` uniform in ``[0, window)`` and pairs
  with the tokens at distance ``1 .. window - b`` on both sides, within its document;
* **negative sampling**: for each pair, ``K = 5`` words drawn from the unigram
  distribution to the power 0.75 (a draw equal to the positive word is skipped), in the
  cost :func:`sgns_cost`;
* init: input vectors ``U(-0.5, 0.5) / d``, output vectors 0; the output is the input table.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from optax_blockada.examples import text
from optax_blockada.examples._cli import check_int
from optax_blockada.examples.glove_model import Params, init_table

__all__ = [
  "SkipGram",
  "count_skipgram_pairs",
  "draw_negatives",
  "evaluation_loss",
  "noise_distribution",
  "sgns_cost",
  "skipgram_pairs",
]


class SkipGram(nnx.Module):
  """Skip-gram embeddings: input (``word``, ``U(-0.5, 0.5) / d``) and output (``context``,
  0) tables, as ``word2vec.c``; ``model(inputs, outputs)`` scores ``v_inputs . u_outputs``."""

  def __init__(self, vocab_size: int, dim: int, *, rngs: nnx.Rngs):
    self.word = nnx.Param(init_table(rngs.params(), vocab_size, dim))
    self.context = nnx.Param(jnp.zeros((vocab_size, dim), jnp.float32))

  def __call__(self, inputs: jax.Array, outputs: jax.Array) -> jax.Array:
    return jnp.sum(self.word[...][inputs] * self.context[...][outputs], axis=-1)


def noise_distribution(counts: Any, power: float = 0.75) -> np.ndarray:
  """The cumulative negative-sampling distribution ``counts**power / sum`` (float32)."""
  weights = np.asarray(counts, np.float64) ** power
  cdf = np.cumsum(weights / weights.sum())
  cdf[-1] = 1.0
  return cdf.astype(np.float32)


def _windows(
  corpus: text.EncodedCorpus, counts: Any, window: int, subsample: float, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
  """Per distance ``k``: ids ``[:-k]`` and ``[k:]`` and the masks of the pairs taken."""
  window = check_int("window", window, 1)
  if not (math.isfinite(subsample) and subsample >= 0):
    raise ValueError(f"subsample must be a finite number >= 0, got {subsample!r}.")
  ids, doc = np.asarray(corpus.ids), np.asarray(corpus.document)
  counts = np.asarray(counts, np.float64)
  if subsample > 0:
    threshold = subsample * counts.sum()
    freq = counts[ids]
    keep = rng.random(ids.size) < (np.sqrt(freq / threshold) + 1) * threshold / freq
    ids, doc = ids[keep], doc[keep]
  reach = window - rng.integers(0, window, size=ids.size)  # the dynamic window, 1..window
  for k in range(1, min(window, ids.size - 1) + 1):
    same = doc[:-k] == doc[k:]
    # centre i, context i + k; and centre i + k, context i
    yield ids[:-k], ids[k:], same & (reach[:-k] >= k), same & (reach[k:] >= k)


def skipgram_pairs(
  corpus: text.EncodedCorpus,
  counts: Any,
  *,
  window: int = 5,
  subsample: float = 1e-3,
  rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
  """One epoch of ``(centres, contexts)`` (int32, corpus order), vectorised: subsampling
  (``s = subsample``, 0: none; ``T`` is the sum of ``counts``) and a dynamic window."""
  centres, contexts = [np.zeros(0, np.int32)], [np.zeros(0, np.int32)]
  for first, second, right, left in _windows(corpus, counts, window, subsample, rng):
    centres += [first[right], second[left]]
    contexts += [second[right], first[left]]
  return np.concatenate(centres).astype(np.int32), np.concatenate(contexts).astype(np.int32)


def count_skipgram_pairs(
  corpus: text.EncodedCorpus,
  counts: Any,
  *,
  window: int = 5,
  subsample: float = 1e-3,
  rng: np.random.Generator,
) -> int:
  """How many pairs :func:`skipgram_pairs` gives with the same arguments, cheaper."""
  masks = _windows(corpus, counts, window, subsample, rng)
  return sum(int(right.sum() + left.sum()) for _, _, right, left in masks)


def draw_negatives(key: jax.Array, cdf: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Word ids (int32) drawn from the distribution with CDF ``cdf``, by inverse CDF."""
  uniform = jax.random.uniform(key, shape, jnp.float32)
  draws = jnp.searchsorted(cdf, uniform, side="right").astype(jnp.int32)
  return jnp.minimum(draws, cdf.shape[0] - 1)


def sgns_cost(
  params: Params, batch: Mapping[str, jax.Array], key: jax.Array, *, cdf: jax.Array, negatives: int
) -> jax.Array:
  r"""The summed SGNS cost of ``batch = {'centre', 'context', 'mask'}``, ``negatives``
  drawn from ``cdf`` per pair.

  .. math:: J = -\sum_n m_n \Big[\log\sigma(v_{x_n}^\top u_{c_n})
      + \sum_{k:\, z_{nk} \ne c_n} \log\sigma(-v_{x_n}^\top u_{z_{nk}})\Big]

  with ``x`` the context word (input vector ``v``, the ``word`` table), ``c`` the centre
  word, ``z`` the negatives (output vectors ``u``, the ``context`` table) and ``m`` the mask.
  """
  centre, context, mask = batch["centre"], batch["context"], batch["mask"]
  draws = draw_negatives(key, cdf, (centre.shape[0], negatives))
  v = params["word"][context]
  positive = jax.nn.log_sigmoid(jnp.sum(v * params["context"][centre], axis=-1))
  scores = jnp.einsum("bd,bkd->bk", v, params["context"][draws])
  negative = jnp.where(draws != centre[:, None], jax.nn.log_sigmoid(-scores), 0.0)
  return -jnp.sum(mask * (positive + jnp.sum(negative, axis=-1)))


_jitted_cost = jax.jit(sgns_cost, static_argnames="negatives")


def evaluation_loss(
  params: Params,
  centres: np.ndarray,
  contexts: np.ndarray,
  counts: Any,
  *,
  negatives: int = 5,
  seed: int = 0,
  chunk: int = 1 << 15,
) -> float:
  """The SGNS cost per pair on fixed pairs with fixed negatives (chunk ``i`` of ``chunk``
  pairs draws them with ``fold_in(key(seed), i)``): a deterministic score."""
  cdf = jnp.asarray(noise_distribution(counts))
  total, n = 0.0, int(np.size(centres))
  for i, start in enumerate(range(0, n, chunk)):
    pairs = {"centre": centres[start : start + chunk], "context": contexts[start : start + chunk]}
    batch = text.pad_batch({**pairs, "mask": np.ones(pairs["centre"].shape, np.float32)}, chunk)
    key = jax.random.fold_in(jax.random.key(seed), i)
    total += float(_jitted_cost(params, batch, key, cdf=cdf, negatives=negatives))
  return total / n
