"""The GloVe model, once for every example: weighting, initialisation, prediction, cost.

GloVe (Pennington, Socher & Manning 2014; ``glove.c``) fits word and context vectors
with biases to the logs of the nonzero co-occurrence counts::

    J = sum over nonzero X_ij of  f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2 / 2
    f(x) = min(1, (x / x_max)^alpha)
    vectors: W + W~

The cost is summed over pairs, not averaged, so that each pair of a minibatch contributes
the gradient it gets in ``glove.c``'s per-pair updates. Parameters are a dict ``{'word':
(V, d), 'context': (V, d), 'word_bias': (V,), 'context_bias': (V,)}`` of float32 arrays
(:func:`init_params`), or the same held by the Flax NNX module :class:`GloVe`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from optax_blockada.examples._cli import check_int

__all__ = [
  "ALPHA",
  "X_MAX",
  "GloVe",
  "Params",
  "cost",
  "glove_c_biases",
  "glove_cost",
  "init_params",
  "init_table",
  "predict",
  "squared_errors",
  "weighting",
]

X_MAX = 10.0
"""Cut-off of the weighting function (GloVe's demo script; ``glove.c``'s default is 100)."""

ALPHA = 0.75
"""Exponent of the weighting function (``glove.c``'s default)."""

Params = dict[str, jax.Array]


def weighting(counts: Any, x_max: float = X_MAX, alpha: float = ALPHA) -> Any:
  r"""GloVe's weighting function :math:`f(x) = \min(1, (x / x_{max})^\alpha)`: a JAX array
  for a JAX array, else a numpy array (float64 for integer counts)."""
  xp = jnp if isinstance(counts, jax.Array) else np
  return xp.minimum(1.0, (xp.asarray(counts) / x_max) ** alpha)


def init_table(key: jax.Array, vocab_size: int, dim: int) -> jax.Array:
  """``glove.c``'s initialisation of a ``(V, d)`` table: ``(U(0, 1) - 0.5) / d``, float32."""
  return (jax.random.uniform(key, (vocab_size, dim), jnp.float32) - 0.5) / dim


def init_params(vocab_size: int, dim: int, seed: int = 0) -> Params:
  """The tables of :func:`init_table` (keys split from ``key(seed)``) and zero biases."""
  vocab_size = check_int("vocab_size", vocab_size, 1)
  dim = check_int("dim", dim, 1)
  seed = check_int("seed", seed, 0)
  key_word, key_context = jax.random.split(jax.random.key(seed))
  return {
    "word": init_table(key_word, vocab_size, dim),
    "context": init_table(key_context, vocab_size, dim),
    "word_bias": jnp.zeros((vocab_size,), jnp.float32),
    "context_bias": jnp.zeros((vocab_size,), jnp.float32),
  }


def glove_c_biases(params: Params, key: jax.Array) -> Params:
  """``params`` with both biases drawn as ``glove.c`` draws all its entries (``(U(0, 1) -
  0.5) / d``); :func:`init_params` and :class:`GloVe` start the biases at 0."""
  (vocab_size, dim), keys = params["word"].shape, jax.random.split(key)
  draw = lambda k: (jax.random.uniform(k, (vocab_size,), jnp.float32) - 0.5) / dim
  return {**params, "word_bias": draw(keys[0]), "context_bias": draw(keys[1])}


def predict(
  word: jax.Array, context: jax.Array, word_bias: jax.Array, context_bias: jax.Array
) -> jax.Array:
  r"""The prediction :math:`w_i \cdot \tilde w_j + b_i + \tilde b_j` of :math:`\log X_{ij}`."""
  return jnp.sum(word * context, axis=-1) + word_bias + context_bias


def squared_errors(pred: jax.Array, log_counts: jax.Array, weights: jax.Array) -> jax.Array:
  r"""The pairs' weighted squared errors :math:`f(X_n) (\hat y_n - \log X_n)^2`, elementwise
  (0 where the weight is 0: padding, an absent pair)."""
  return weights * (pred - log_counts) ** 2


def cost(pred: jax.Array, log_counts: jax.Array, weights: jax.Array) -> jax.Array:
  r"""``glove.c``'s cost summed over pairs: :math:`\sum_n \tfrac12 f(X_n) (\hat y_n -
  \log X_n)^2`.
  """
  return 0.5 * jnp.sum(squared_errors(pred, log_counts, weights))


def _lookup_predict(params: Params, rows: jax.Array, cols: jax.Array) -> jax.Array:
  word, context = params["word"][rows], params["context"][cols]
  return predict(word, context, params["word_bias"][rows], params["context_bias"][cols])


def glove_cost(params: Params, batch: Mapping[str, jax.Array]) -> jax.Array:
  """:func:`cost` of the pairs ``batch = {'rows', 'cols', 'log_counts', 'weights'}``."""
  pred = _lookup_predict(params, batch["rows"], batch["cols"])
  return cost(pred, batch["log_counts"], batch["weights"])


class GloVe(nnx.Module):
  """GloVe as a Flax NNX module: tables :func:`init_table`, biases 0; ``model(rows, cols)``
  predicts ``log X`` of the pairs (:func:`predict`)."""

  def __init__(self, vocab_size: int, dim: int, *, rngs: nnx.Rngs):
    self.word = nnx.Param(init_table(rngs.params(), vocab_size, dim))
    self.context = nnx.Param(init_table(rngs.params(), vocab_size, dim))
    self.word_bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32))
    self.context_bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32))

  def __call__(self, rows: jax.Array, cols: jax.Array) -> jax.Array:
    return _lookup_predict(nnx.to_pure_dict(nnx.state(self, nnx.Param)), rows, cols)

  def vectors(self) -> jax.Array:
    """The output word vectors ``W + W~`` (as ``glove.c``'s ``-model 2``)."""
    return self.word[...] + self.context[...]
