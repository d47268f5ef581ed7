"""word2vec skip-gram with negative sampling (SGNS), trained with every Adagrad of the line-up.

Run it with::

    python -m optax_blockada.examples.sgns            # offline default corpus
    python -m optax_blockada.examples.sgns --quick    # a smaller setting
    python -m optax_blockada.examples.sgns --corpus text8 --json out.json --plot loss.png

The recipe follows ``word2vec.c`` (Mikolov et al. 2013):

* **subsampling**: each epoch, a token of a word with count ``f`` out of ``T``
  in-vocabulary tokens is kept with probability ``(sqrt(f / (s T)) + 1) s T / f``
  (``s = 1e-3``), before windows are formed;
* **dynamic window**: each centre token draws ``b`` uniform in ``[0, window)`` and pairs
  with the tokens at distance ``1 .. window - b`` on both sides, within its document;
* **negative sampling**: for each pair, ``K = 5`` words drawn from the unigram
  distribution to the power 0.75 (a draw equal to the positive word is skipped). With
  ``v`` the input (word) vector of the context token and ``u`` the output (context)
  vectors, a pair costs ``-log s(v.u_centre) - sum_k log s(-v.u_k)``;
* init: input vectors ``U(-0.5, 0.5) / d``, output vectors 0; the output is the input table.

Training uses shuffled minibatches of pairs with the *summed* cost (each pair's gradient
is the one ``word2vec.c`` applies) and the optimizers of
:mod:`optax_blockada.examples.optimizers` instead of word2vec's linearly decaying SGD;
``'preset'`` is PyTorch's Adagrad, the usual choice of PyTorch SGNS code. The best rate
of each optimizer minimises the loss on a fixed sample of pairs with fixed negatives.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from optax_blockada.examples import glove, report, text, training, word_cli
from optax_blockada.examples._checkpoint import CheckpointError
from optax_blockada.examples._cli import check_int, float_in, int_at_least
from optax_blockada.examples.optimizers import OPTIMIZER_NAMES

__all__ = [
  "LEARNING_RATES",
  "SkipGram",
  "compare_optimizers",
  "draw_negatives",
  "evaluation_loss",
  "main",
  "noise_distribution",
  "sgns_cost",
  "skipgram_pairs",
  "train_sgns",
]

LEARNING_RATES = {
  "optax.adagrad": (0.05, 0.2),
  "diagonal": (0.05, 0.2),
  "preset": (0.05, 0.2),
  "rowwise": (0.05, 0.2),
  "block": (0.05, 0.2),
}
"""The learning rates each optimizer is tried at in the default run."""

_DEFAULTS = {"dim": 50, "epochs": 3, "min_count": 5, "max_vocab": None, "window": 5}
_QUICK = {"dim": 32, "epochs": 1, "min_count": 5, "max_vocab": 2000, "window": 5}
_EVAL_PAIRS = 100_000
_SELECTION = f"lowest loss on a fixed sample of {_EVAL_PAIRS:,} pairs with fixed negatives"

Params = dict[str, jax.Array]


class SkipGram(nnx.Module):
  """Skip-gram embeddings: input (``word``) and output (``context``) tables.

  ``model(inputs, outputs)`` scores pairs by ``v_inputs . u_outputs``. The input table
  starts at ``U(-0.5, 0.5) / d`` and the output table at 0, as in ``word2vec.c``; the
  word vectors are the input table.

  Args:
    vocab_size: ``V``.
    dim: ``d``.
    rngs: Flax random streams (``params`` is used).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from optax_blockada.examples.sgns import SkipGram
    >>> model = SkipGram(10, 4, rngs=nnx.Rngs(0))
    >>> model(jnp.array([1, 2]), jnp.array([3, 4])).tolist()  # output vectors start at 0
    [0.0, 0.0]
  """

  def __init__(self, vocab_size: int, dim: int, *, rngs: nnx.Rngs):
    shape = (vocab_size, dim)
    self.word = nnx.Param((jax.random.uniform(rngs.params(), shape, jnp.float32) - 0.5) / dim)
    self.context = nnx.Param(jnp.zeros(shape, jnp.float32))

  def __call__(self, inputs: jax.Array, outputs: jax.Array) -> jax.Array:
    return jnp.sum(self.word[...][inputs] * self.context[...][outputs], axis=-1)


def noise_distribution(counts: Any, power: float = 0.75) -> np.ndarray:
  """The cumulative negative-sampling distribution ``counts**power / sum``.

  Args:
    counts: word counts (the vocabulary's).
    power: word2vec's 0.75.

  Returns:
    A float32 CDF of length ``V`` ending at 1, for ``searchsorted``.

  Example:
    >>> from optax_blockada.examples.sgns import noise_distribution
    >>> print(noise_distribution([16, 1], power=0.5))  # weights 4 and 1
    [0.8 1. ]
  """
  weights = np.asarray(counts, np.float64) ** power
  cdf = np.cumsum(weights / weights.sum())
  cdf[-1] = 1.0
  return cdf.astype(np.float32)


def skipgram_pairs(
  corpus: text.EncodedCorpus,
  counts: Any,
  *,
  window: int = 5,
  subsample: float = 1e-3,
  rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
  """One epoch of (centre, context) pairs: subsampling and a dynamic window, vectorised.

  Args:
    corpus: the encoded corpus (documents bound the windows).
    counts: the vocabulary's counts (``T`` is their sum, as in ``word2vec.c``).
    window: the largest window, ``>= 1``.
    subsample: ``s``; ``0`` keeps every token.
    rng: the source of randomness (subsampling and window sizes).

  Returns:
    ``(centres, contexts)``, int32 arrays in corpus order (not shuffled).

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples.sgns import skipgram_pairs
    >>> from optax_blockada.examples.text import EncodedCorpus
    >>> corpus = EncodedCorpus(np.array([0, 1, 2], np.int32), np.zeros(3, np.int32))
    >>> c, x = skipgram_pairs(corpus, [1, 1, 1], window=1, subsample=0,
    ...                       rng=np.random.default_rng(0))
    >>> sorted(zip(c.tolist(), x.tolist()))
    [(0, 1), (1, 0), (1, 2), (2, 1)]
  """
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
  centres, contexts = [], []
  for k in range(1, min(window, ids.size - 1) + 1):
    same = doc[:-k] == doc[k:]
    right = same & (reach[:-k] >= k)  # centre i, context i + k
    left = same & (reach[k:] >= k)  # centre i + k, context i
    centres += [ids[:-k][right], ids[k:][left]]
    contexts += [ids[k:][right], ids[:-k][left]]
  if not centres:
    return np.zeros(0, np.int32), np.zeros(0, np.int32)
  return (
    np.concatenate(centres).astype(np.int32),
    np.concatenate(contexts).astype(np.int32),
  )


def draw_negatives(key: jax.Array, cdf: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Word ids drawn from the distribution with CDF ``cdf`` (inverse-CDF sampling).

  Args:
    key: a JAX random key.
    cdf: a non-decreasing CDF ending at 1 (:func:`noise_distribution`).
    shape: the output shape.

  Returns:
    An int32 array of ids in ``[0, V)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optax_blockada.examples.sgns import draw_negatives
    >>> draws = draw_negatives(jax.random.key(0), jnp.array([0.0, 0.5, 1.0]), (1000,))
    >>> sorted(set(draws.tolist()))  # word 0 has probability 0
    [1, 2]
  """
  uniform = jax.random.uniform(key, shape, jnp.float32)
  draws = jnp.searchsorted(cdf, uniform, side="right").astype(jnp.int32)
  return jnp.minimum(draws, cdf.shape[0] - 1)


def sgns_cost(
  params: Params, batch: Mapping[str, jax.Array], key: jax.Array, *, cdf: jax.Array, negatives: int
) -> jax.Array:
  r"""The summed SGNS cost of a batch, with negatives drawn from ``cdf``.

  .. math:: J = -\sum_n m_n \Big[\log\sigma(v_{x_n}^\top u_{c_n})
      + \sum_{k:\, z_{nk} \ne c_n} \log\sigma(-v_{x_n}^\top u_{z_{nk}})\Big]

  where ``x`` is the context word (input vector ``v``, the ``word`` table), ``c`` the
  centre word and ``z`` the negatives (output vectors ``u``, the ``context`` table),
  as ``word2vec.c``'s skip-gram, and ``m`` the batch mask (0 for padding).

  Args:
    params: ``{'word': (V, d), 'context': (V, d)}``.
    batch: ``{'centre', 'context', 'mask'}``, each ``(B,)``.
    key: the key of the negatives.
    cdf: the noise CDF (:func:`noise_distribution`).
    negatives: ``K``.

  Returns:
    A float32 scalar.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optax_blockada.examples.sgns import sgns_cost
    >>> params = {'word': jnp.ones((3, 2)), 'context': jnp.zeros((3, 2))}
    >>> batch = {'centre': jnp.array([0]), 'context': jnp.array([1]), 'mask': jnp.ones(1)}
    >>> cdf = jnp.array([0.0, 0.0, 1.0])  # every negative is word 2
    >>> cost = sgns_cost(params, batch, jax.random.key(0), cdf=cdf, negatives=2)
    >>> round(float(cost), 4)  # 3 log 2: all scores are 0
    2.0794
  """
  centre, context, mask = batch["centre"], batch["context"], batch["mask"]
  draws = draw_negatives(key, cdf, (centre.shape[0], negatives))
  v = params["word"][context]
  positive = jax.nn.log_sigmoid(jnp.sum(v * params["context"][centre], axis=-1))
  scores = jnp.einsum("bd,bkd->bk", v, params["context"][draws])
  negative = jnp.where(draws != centre[:, None], jax.nn.log_sigmoid(-scores), 0.0)
  return -jnp.sum(mask * (positive + jnp.sum(negative, axis=-1)))


def _batch(centres: np.ndarray, contexts: np.ndarray) -> dict[str, np.ndarray]:
  return {"centre": centres, "context": contexts, "mask": np.ones(centres.shape, np.float32)}


def train_sgns(
  params: Params,
  corpus: text.EncodedCorpus,
  counts: Any,
  tx: optax.GradientTransformation,
  *,
  epochs: int,
  batch_size: int = 2048,
  window: int = 5,
  negatives: int = 5,
  subsample: float = 1e-3,
  seed: int = 0,
  **kwargs: Any,
) -> training.TrainResult:
  """Trains SGNS on shuffled minibatches of pairs with the summed cost.

  Epoch ``e`` draws its pairs (:func:`skipgram_pairs`) and their order from
  ``numpy.random.default_rng([seed, e])``; the negatives of a step come from its key.

  Args:
    params: initial ``{'word', 'context'}`` (e.g. of a :class:`SkipGram`).
    corpus: the encoded corpus.
    counts: the vocabulary's counts.
    tx: the optimizer.
    epochs: passes over the corpus.
    batch_size: pairs per step.
    window: the largest window.
    negatives: ``K`` per pair.
    subsample: ``s`` (0: none).
    seed: the seed of pairs, order and negatives.
    **kwargs: passed to :func:`training.train_loop` (checkpoints, progress).

  Returns:
    A :class:`training.TrainResult` (``epoch_losses``: cost per pair in each epoch).

  Example:
    >>> import numpy as np, optax
    >>> from flax import nnx
    >>> from optax_blockada.examples.sgns import SkipGram, train_sgns
    >>> from optax_blockada.examples.text import EncodedCorpus
    >>> ids = np.tile(np.array([0, 1, 2, 3], np.int32), 50)  # a periodic text
    >>> corpus = EncodedCorpus(ids, np.zeros(ids.size, np.int32))
    >>> params = nnx.to_pure_dict(nnx.state(SkipGram(4, 8, rngs=nnx.Rngs(0)), nnx.Param))
    >>> r = train_sgns(params, corpus, [50] * 4, optax.adagrad(0.1), epochs=5,
    ...                batch_size=64, window=1, negatives=1, subsample=0)
    >>> bool(r.epoch_losses[-1] < 0.8 * r.epoch_losses[0])
    True
  """
  negatives = check_int("negatives", negatives, 1)
  cdf = jnp.asarray(noise_distribution(counts))

  def epoch_data(epoch: int) -> tuple[dict[str, np.ndarray], int]:
    rng = np.random.default_rng([seed, epoch])
    centres, contexts = skipgram_pairs(corpus, counts, window=window, subsample=subsample, rng=rng)
    if centres.size == 0:
      raise ValueError("the corpus gives no skip-gram pair: it is shorter than two tokens.")
    order = rng.permutation(centres.size)
    return _batch(centres[order], contexts[order]), centres.size

  def cost(p: Params, batch: Mapping[str, jax.Array], key: jax.Array) -> jax.Array:
    return sgns_cost(p, batch, key, cdf=cdf, negatives=negatives)

  return training.train_loop(
    cost, params, tx, epoch_data, epochs=epochs, batch_size=batch_size, seed=seed, **kwargs
  )


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
  """The SGNS cost per pair on fixed pairs with fixed negatives (a deterministic score).

  Args:
    params: ``{'word', 'context'}``.
    centres: centre ids.
    contexts: context ids.
    counts: the vocabulary's counts (the noise distribution).
    negatives: ``K``.
    seed: the key of the negatives (chunk ``i`` uses ``fold_in(key(seed), i)``).
    chunk: pairs per call.

  Returns:
    A Python float.

  Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> from optax_blockada.examples.sgns import evaluation_loss
    >>> params = {'word': jnp.ones((3, 2)), 'context': jnp.zeros((3, 2))}
    >>> loss = evaluation_loss(params, np.array([0, 1]), np.array([1, 2]), [1, 1, 1],
    ...                        negatives=4)
    >>> bool(np.log(2) <= loss <= 5 * np.log(2))  # log 2 per positive and kept negative
    True
  """
  cdf = jnp.asarray(noise_distribution(counts))
  total, n = 0.0, int(np.size(centres))
  for i, start in enumerate(range(0, n, chunk)):
    batch = text.pad_batch(
      _batch(centres[start : start + chunk], contexts[start : start + chunk]), chunk
    )
    key = jax.random.fold_in(jax.random.key(seed), i)
    total += float(_jitted_cost(params, batch, key, cdf, negatives))
  return total / n


_jitted_cost = jax.jit(
  lambda p, b, k, cdf, negatives: sgns_cost(p, b, k, cdf=cdf, negatives=negatives),
  static_argnums=4,
)


def compare_optimizers(
  corpus: text.EncodedCorpus,
  vocab: text.Vocabulary,
  *,
  optimizers: Sequence[str] = OPTIMIZER_NAMES,
  learning_rates: Mapping[str, Sequence[float]] | None = None,
  dim: int = 50,
  epochs: int = 3,
  batch_size: int = 2048,
  window: int = 5,
  negatives: int = 5,
  subsample: float = 1e-3,
  seed: int = 0,
  **kwargs: Any,
) -> list[dict[str, Any]]:
  """Trains SGNS with each optimizer at each rate and keeps the best (see the module).

  Args:
    corpus: the encoded corpus.
    vocab: its vocabulary.
    optimizers: names for :func:`make_optimizer` (``'preset'`` = PyTorch's Adagrad).
    learning_rates: name -> rates (default :data:`LEARNING_RATES`).
    dim: ``d``.
    epochs: passes per run.
    batch_size: pairs per step.
    window: the largest window.
    negatives: ``K``.
    subsample: ``s``.
    seed: seed of init, pairs, negatives and rotation.
    **kwargs: checkpoint and progress options of :func:`training.sweep_optimizers`.

  Returns:
    The table rows (see :func:`training.sweep_optimizers`).

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples.sgns import compare_optimizers
    >>> from optax_blockada.examples.text import build_vocabulary, encode
    >>> docs = [["king", "queen", "man", "woman", "tiger", "cat"] * 20]
    >>> vocab = build_vocabulary(docs, min_count=1)
    >>> rows = compare_optimizers(encode(docs, vocab), vocab, optimizers=["rowwise"],
    ...                           learning_rates={"rowwise": [0.1]}, dim=4, epochs=1,
    ...                           batch_size=64, subsample=0)
    >>> rows[1]["optimizer"], rows[1]["loss"] < rows[0]["loss"], rows[1]["drift"] < 1e-4
    ('rowwise', True, True)
  """
  learning_rates = LEARNING_RATES if learning_rates is None else learning_rates
  counts = vocab.counts
  params0 = nnx.to_pure_dict(
    nnx.state(SkipGram(len(vocab.words), dim, rngs=nnx.Rngs(seed)), nnx.Param)
  )
  centres, contexts = skipgram_pairs(
    corpus, counts, window=window, subsample=subsample, rng=np.random.default_rng([seed, 10**6])
  )
  if centres.size == 0:
    raise ValueError("the corpus gives no skip-gram pair: it is shorter than two tokens.")
  sample = np.random.default_rng([seed, 10**6 + 1]).permutation(centres.size)[:_EVAL_PAIRS]
  eval_pairs = (centres[sample], contexts[sample])

  def train(tx: optax.GradientTransformation, init: Params, **run_kwargs: Any):
    return train_sgns(
      init,
      corpus,
      counts,
      tx,
      epochs=epochs,
      batch_size=batch_size,
      window=window,
      negatives=negatives,
      subsample=subsample,
      seed=seed,
      **run_kwargs,
    )

  def final_loss(params: Params, result: Any) -> float:
    return evaluation_loss(params, *eval_pairs, counts, negatives=negatives, seed=seed)

  return training.sweep_optimizers(
    train,
    final_loss,
    lambda params: np.asarray(params["word"]),
    params0,
    vocab.words,
    optimizers=optimizers,
    learning_rates=learning_rates,
    preset="torch",
    rotation_seed=seed + 1,
    **kwargs,
  )


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m optax_blockada.examples.sgns",
    description="Train word2vec skip-gram with negative sampling with each Adagrad variant "
    "(a short learning-rate sweep each) and print one comparison table.",
  )
  word_cli.add_common_arguments(parser, _DEFAULTS, _QUICK)
  parser.add_argument(
    "--batch-size",
    type=int_at_least(1),
    default=2048,
    help="pairs per step (default: %(default)s)",
  )
  parser.add_argument(
    "--negatives",
    type=int_at_least(1),
    default=5,
    help="negative samples per pair (default: %(default)s)",
  )
  parser.add_argument(
    "--subsample",
    type=float_in(0, include_low=True),
    default=1e-3,
    help="subsampling threshold s, 0 for none (default: %(default)s)",
  )
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point (see the module docstring); returns the exit status.

  Args:
    argv: the arguments (default: ``sys.argv[1:]``).

  Returns:
    0 on success, 2 on bad input (a message on stderr; argparse exits with 2 itself).
  """
  start = time.perf_counter()
  args = _parser().parse_args(argv)
  settings = word_cli.settings_from_args(args, _DEFAULTS, _QUICK)
  names = tuple(args.optimizers or OPTIMIZER_NAMES)
  grid = {n: rates[-1:] for n, rates in LEARNING_RATES.items()} if args.quick else LEARNING_RATES
  rates = {n: tuple(args.learning_rates or grid[n]) for n in names}
  run_settings = {**settings, "corpus": args.corpus, "batch_size": args.batch_size}
  run_settings.update(
    negatives=args.negatives, subsample=args.subsample, seed=args.seed, learning_rates=rates
  )
  try:
    word_cli.check_output_paths(args)
    corpus_name, vocab, encoded, tokens = word_cli.load_corpus(args, settings)
    word_cli.prepare_checkpoint_dir(args)
  except word_cli.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  try:
    rows = compare_optimizers(
      encoded,
      vocab,
      optimizers=names,
      learning_rates=rates,
      dim=settings["dim"],
      epochs=settings["epochs"],
      batch_size=args.batch_size,
      window=settings["window"],
      negatives=args.negatives,
      subsample=args.subsample,
      seed=args.seed,
      checkpoint_dir=args.checkpoint_dir,
      checkpoint_every=args.checkpoint_every,
      checkpoint_settings=run_settings,
      resume=args.resume,
      progress=not args.no_progress,
      save_vectors=args.save_vectors,
    )
  except CheckpointError as e:
    print(f"error: --resume: {e}", file=sys.stderr)
    return 2
  seconds = time.perf_counter() - start
  print(
    f"SGNS on {corpus_name}: {tokens:,} tokens, {len(vocab.words):,} words (min count "
    f"{settings['min_count']}); d={settings['dim']}, dynamic window {settings['window']}, "
    f"{args.negatives} negatives, subsampling {args.subsample:g}, {settings['epochs']} epochs "
    f"of batches of {args.batch_size}, seed {args.seed}.\n"
    f"Best learning rate per optimizer: {_SELECTION}; tried {report.format_rates(rates)}.\n"
    f"{report.machine_description()}; total wall time {seconds:.0f} s."
  )
  print()
  print(glove.format_table(rows))
  print()
  print(
    "final loss: SGNS cost per pair (positive + negatives) on the fixed sample. Vectors: the "
    "input table. 'preset' is PyTorch's Adagrad. Other columns as in "
    "python -m optax_blockada.examples.glove."
  )
  if args.json is not None:
    payload = {
      "settings": {
        **settings,
        "batch_size": args.batch_size,
        "negatives": args.negatives,
        "subsample": args.subsample,
        "seed": args.seed,
        "learning_rates": rates,
        "selection": _SELECTION,
      },
      "corpus": {"name": corpus_name, "tokens": tokens, "vocab_size": len(vocab.words)},
      "machine": report.machine_description(),
      "seconds": seconds,
      "results": rows,
    }
    report.write_json(args.json, payload)
  if args.plot is not None:
    report.save_loss_plot(
      args.plot,
      rows[1:],
      f"SGNS on {corpus_name} (d={settings['dim']}):\ntraining loss at each optimizer's best rate",
      "training cost per skip-gram pair (nats)",
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
