"""word2vec skip-gram with negative sampling (SGNS), trained with every Adagrad of the line-up.

Run it with::

    python -m optax_blockada.examples.sgns            # default corpus, ~5 min on 2 cores
    python -m optax_blockada.examples.sgns --quick    # a smoke test, ~35 s
    python -m optax_blockada.examples.sgns --corpus text8 --json out.json --plot loss.png

The model, its pairs and its cost (``word2vec.c``'s recipe) are in
:mod:`~optax_blockada.examples.sgns_model`. Minibatches of pairs use the *summed* cost (each
pair's gradient is the one ``word2vec.c`` applies) and the Adagrads instead of word2vec's
decaying SGD; ``'preset'`` is PyTorch's Adagrad, the usual choice of PyTorch SGNS code.
Each optimizer's best rate minimises the loss on a fixed sample of pairs with fixed
negatives; the table is the GloVe example's.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from optax_blockada.examples import text, word_cli
from optax_blockada.examples._cli import check_int, float_in, int_at_least
from optax_blockada.examples.optimizers import OPTIMIZER_NAMES
from optax_blockada.examples.sgns_model import (
  Params,
  SkipGram,
  count_skipgram_pairs,
  evaluation_loss,
  noise_distribution,
  sgns_cost,
  skipgram_pairs,
)
from optax_blockada.examples.training import TrainResult, sweep_optimizers, train_loop

__all__ = ["LEARNING_RATES", "compare_optimizers", "main", "train_sgns"]

LEARNING_RATES = {name: (0.05, 0.2) for name in OPTIMIZER_NAMES}
"""The learning rates each optimizer is tried at in the default run."""

_SIZES = {"min_count": 5, "window": 5, "batch_size": 2048}
_DEFAULTS = {"dim": 50, "epochs": 3, "max_vocab": None, **_SIZES, "learning_rates": LEARNING_RATES}
_QUICK = {"dim": 32, "epochs": 1, "max_vocab": 2000, **_SIZES}
_QUICK["learning_rates"] = {name: (0.2,) for name in OPTIMIZER_NAMES}
_EVAL_PAIRS = 100_000


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
) -> TrainResult:
  """Trains SGNS on shuffled minibatches of pairs with the summed cost.

  Epoch ``e`` draws its pairs (:func:`skipgram_pairs`) and their order from
  ``default_rng([seed, e])``; a step's negatives come from its key. ``kwargs`` go to
  :func:`~optax_blockada.examples.training.train_loop`.
  """
  negatives = check_int("negatives", negatives, 1)
  cdf = jnp.asarray(noise_distribution(counts))
  options = {"window": window, "subsample": subsample}

  def epoch_size(epoch: int) -> int:
    n = count_skipgram_pairs(corpus, counts, rng=np.random.default_rng([seed, epoch]), **options)
    if n == 0:
      raise ValueError("the corpus gives no skip-gram pair: it is shorter than two tokens.")
    return n

  def epoch_data(epoch: int) -> tuple[dict[str, np.ndarray], int]:
    rng = np.random.default_rng([seed, epoch])
    centres, contexts = skipgram_pairs(corpus, counts, rng=rng, **options)
    order = rng.permutation(centres.size)
    mask = np.ones(centres.shape, np.float32)
    return {"centre": centres[order], "context": contexts[order], "mask": mask}, centres.size

  cost = functools.partial(sgns_cost, cdf=cdf, negatives=negatives)
  sizes = {"epochs": epochs, "batch_size": batch_size, "epoch_size": epoch_size, "seed": seed}
  return train_loop(cost, params, tx, epoch_data, **sizes, **kwargs)


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
  """Trains SGNS with each optimizer at each rate (default :data:`LEARNING_RATES`), all from
  one :class:`SkipGram`; the rates are selected by :func:`evaluation_loss` on a fixed sample
  of pairs. ``kwargs`` go to :func:`~optax_blockada.examples.training.sweep_optimizers`."""
  counts = vocab.counts
  model = SkipGram(len(vocab.words), dim, rngs=nnx.Rngs(seed))
  rng = np.random.default_rng([seed, 10**6])
  centres, contexts = skipgram_pairs(corpus, counts, window=window, subsample=subsample, rng=rng)
  if centres.size == 0:
    raise ValueError("the corpus gives no skip-gram pair: it is shorter than two tokens.")
  sample = np.random.default_rng([seed, 10**6 + 1]).permutation(centres.size)[:_EVAL_PAIRS]

  options = {"epochs": epochs, "batch_size": batch_size, "window": window, "seed": seed}

  def train(tx: optax.GradientTransformation, init: Params, **run: Any) -> TrainResult:
    return train_sgns(
      init, corpus, counts, tx, negatives=negatives, subsample=subsample, **options, **run
    )

  pairs = (centres[sample], contexts[sample])  # the fixed sample that selects the rates
  return sweep_optimizers(
    train,
    lambda params, result: evaluation_loss(params, *pairs, counts, negatives=negatives, seed=seed),
    lambda params: np.asarray(params["word"]),
    nnx.to_pure_dict(nnx.state(model, nnx.Param)),
    vocab.words,
    optimizers=optimizers,
    learning_rates=LEARNING_RATES if learning_rates is None else learning_rates,
    preset="torch",
    rotation_seed=seed + 1,
    **kwargs,
  )


def _parser() -> argparse.ArgumentParser:
  parser = word_cli.make_parser(
    "sgns", "word2vec skip-gram with negative sampling", _DEFAULTS, _QUICK
  )
  add = parser.add_argument
  add("--negatives", type=int_at_least(1), default=5, help="negatives per pair (default: 5)")
  add(
    "--subsample",
    type=float_in(0, include_low=True),
    default=1e-3,
    help="subsampling threshold s, 0 for none (default: %(default)s)",
  )
  return parser


_REPORT = {
  "name": "SGNS",
  "selection": f"lowest loss on a fixed sample of {_EVAL_PAIRS:,} pairs with fixed negatives",
  "ylabel": "training cost per skip-gram pair (nats)",
  "extra": ("negatives", "subsample"),  # the options of this example only, kept with the settings
}


def _train(settings: dict, corpus: word_cli.Corpus, options: dict) -> word_cli.Outcome:
  keys = ("dim", "epochs", "batch_size", "window", "negatives", "subsample")
  sizes = {k: settings[k] for k in keys}
  rows = compare_optimizers(corpus.encoded, corpus.vocab, **sizes, **options)
  details = (
    f"; d={settings['dim']}, dynamic window {settings['window']}, {settings['negatives']} "
    f"negatives, subsampling {settings['subsample']:g}, {settings['epochs']} epochs of batches "
    f"of {settings['batch_size']}"
  )
  return rows, details, _LEGEND, {}


_LEGEND = (
  "final loss: SGNS cost per pair (positive + negatives) on the fixed sample. Vectors: the "
  "input table. 'preset' is PyTorch's Adagrad. Other columns as in "
  "python -m optax_blockada.examples.glove."
)


def main(argv: Sequence[str] | None = None) -> int:
  """SGNS's command line (see the module docstring): 0 on success, 2 on bad input."""
  return word_cli.run(_parser().parse_args(argv), _DEFAULTS, _QUICK, _train, **_REPORT)


if __name__ == "__main__":
  sys.exit(main())
