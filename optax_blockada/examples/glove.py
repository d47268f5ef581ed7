"""GloVe word vectors with every Adagrad of the line-up: the main job.

Run it with::

    python -m optax_blockada.examples.glove            # default corpus, ~4.5 min on 2 cores
    python -m optax_blockada.examples.glove --quick    # a smoke test, ~1 min
    python -m optax_blockada.examples.glove --corpus text8 --json out.json --plot loss.png
    python -m optax_blockada.examples.glove --checkpoint-dir ckpt [--resume]

It counts co-occurrences as GloVe's ``cooccur.c`` (:mod:`~optax_blockada.examples.text`),
trains the :class:`GloVe` model (:mod:`~optax_blockada.examples.glove_model`) with each
optimizer at a few learning rates, keeps each one's best rate (lowest final weighted loss)
and prints one table: loss, analogies, word similarities, state bytes, speed and rotation
drift (the same run from ``W R``).

Minibatches of nonzero pairs use the *summed* cost, so each pair contributes the gradient
it gets in ``glove.c`` (which updates one pair at a time, Hogwild). ``'preset'`` is
``glove.c``'s recipe: :func:`optax_blockada.presets.glove_adagrad`, eta 0.05 and biases
drawn as the vectors (:func:`~optax_blockada.examples.glove_model.glove_c_biases`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from optax_blockada.examples import text, word_cli
from optax_blockada.examples._cli import float_in
from optax_blockada.examples.glove_data import GloVeData, prepare_data, weighted_loss
from optax_blockada.examples.glove_model import (
  ALPHA,
  X_MAX,
  GloVe,
  Params,
  glove_c_biases,
  glove_cost,
  weighting,
)
from optax_blockada.examples.optimizers import OPTIMIZER_NAMES
from optax_blockada.examples.training import TrainResult, sweep_optimizers, train_loop

__all__ = [
  "LEARNING_RATES",
  "GloVe",
  "compare_optimizers",
  "glove_cost",
  "main",
  "prepare_data",
  "train_glove",
  "weighted_loss",
  "weighting",
]


def train_glove(
  params: Params,
  data: GloVeData,
  tx: optax.GradientTransformation,
  *,
  epochs: int,
  batch_size: int = 8192,
  seed: int = 0,
  **kwargs: Any,
) -> TrainResult:
  """Trains GloVe on shuffled minibatches of nonzero pairs with the summed cost.

  Epoch ``e`` visits the pairs in the order ``default_rng([seed, e]).permutation(n)``;
  ``kwargs`` go to :func:`~optax_blockada.examples.training.train_loop`. The result's
  ``epoch_losses`` are ``glove.c``'s per-iteration cost (per pair, during the epoch).
  """
  n = data.rows.size
  if n == 0:
    raise ValueError("data has no pair to train on.")
  arrays = data.arrays()

  def epoch_data(epoch: int) -> tuple[dict[str, np.ndarray], int]:
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return {k: v[order] for k, v in arrays.items()}, n

  cost = lambda p, batch, key: glove_cost(p, batch)
  sizes = {"epochs": epochs, "batch_size": batch_size, "epoch_size": n, "seed": seed}
  return train_loop(cost, params, tx, epoch_data, **sizes, **kwargs)


LEARNING_RATES = {name: (0.1, 0.2, 0.4) for name in OPTIMIZER_NAMES}
"""The learning rates each optimizer is tried at in the default run."""
LEARNING_RATES["preset"] = (0.05, 0.1, 0.2)  # glove.c's eta: its default 0.05 and two larger

_SIZES = {"min_count": 5, "max_vocab": None, "window": 10, "batch_size": 8192}
_DEFAULTS = {"dim": 50, "epochs": 8, **_SIZES, "learning_rates": LEARNING_RATES}
_QUICK = {"dim": 50, "epochs": 2, **_SIZES}
_QUICK["learning_rates"] = {n: (0.05 if n == "preset" else 0.2,) for n in OPTIMIZER_NAMES}


def compare_optimizers(
  data: GloVeData,
  words: Sequence[str],
  *,
  optimizers: Sequence[str] = OPTIMIZER_NAMES,
  learning_rates: Mapping[str, Sequence[float]] | None = None,
  dim: int = 50,
  epochs: int = 8,
  batch_size: int = 8192,
  seed: int = 0,
  **kwargs: Any,
) -> list[dict[str, Any]]:
  """Trains GloVe with each optimizer at each of its rates (default :data:`LEARNING_RATES`),
  all from one :class:`GloVe` initialisation (the preset's with :func:`glove_c_biases`);
  ``kwargs`` go to :func:`~optax_blockada.examples.training.sweep_optimizers`."""
  model = GloVe(data.vocab_size, dim, rngs=nnx.Rngs(seed))
  bias_key = jax.random.fold_in(jax.random.key(seed), 1)

  def start(name: str, params: Params) -> Params:
    return glove_c_biases(params, bias_key) if name == "preset" else params

  def train(tx: optax.GradientTransformation, init: Params, **run: Any) -> TrainResult:
    return train_glove(init, data, tx, epochs=epochs, batch_size=batch_size, seed=seed, **run)

  return sweep_optimizers(
    train,
    lambda params, result: weighted_loss(params, data),
    lambda params: np.asarray(params["word"] + params["context"]),  # W + W~
    nnx.to_pure_dict(nnx.state(model, nnx.Param)),
    words,
    optimizers=optimizers,
    learning_rates=LEARNING_RATES if learning_rates is None else learning_rates,
    preset="glove",
    rotation_seed=seed + 1,
    start=start,
    **kwargs,
  )


def _parser() -> argparse.ArgumentParser:
  parser = word_cli.make_parser("glove", "GloVe", _DEFAULTS, _QUICK)
  add, positive = parser.add_argument, float_in(0)
  add("--x-max", type=positive, default=X_MAX, help="weighting cut-off (default: %(default)s)")
  add("--alpha", type=positive, default=ALPHA, help="weighting exponent (default: %(default)s)")
  return parser


def _legend(baseline: Mapping[str, Any], batch_size: int) -> str:
  """The table's legend; ``baseline`` (the random-init row) gives the coverages."""
  return (
    "final loss: glove.c's weighted cost per nonzero pair over all pairs after training. "
    "analogy: 3CosAdd accuracy on the questions-words questions the vocabulary covers "
    f"({100 * baseline['analogy_coverage']:.0f}%). WordSim/SimLex: Spearman rho of cosine "
    f"similarities (pairs covered: {100 * baseline['wordsim353_coverage']:.0f}% / "
    f"{100 * baseline['simlex999_coverage']:.0f}%). state bytes: optimizer state. steps/s: "
    "training steps per second at the best rate (compilation excluded). rotation drift: "
    "||W_T - W'_T R^T|| / ||W_T|| between the runs from W and from W R (0 = "
    "rotation-equivariant). 'preset' follows glove.c: its Adagrad (vectors' gradients "
    "clipped at 100 per element, biases unclipped, no eta on the biases), eta from 0.05, "
    "biases drawn U(-0.5, 0.5) / d. It still differs from glove.c: one update per "
    f"minibatch of {batch_size:,} pairs with summed gradients (and the clip on the sum) "
    "instead of one per pair in parallel Hogwild threads, and non-finite updates are not "
    "skipped."
  )


_REPORT = {
  "name": "GloVe",
  "selection": "lowest final weighted loss (the training objective)",
  "ylabel": "weighted loss per pair (glove.c cost, dimensionless)",
  "extra": ("x_max", "alpha"),  # the options of this example only, kept with the settings
}


def _train(settings: dict, corpus: word_cli.Corpus, options: dict) -> word_cli.Outcome:
  words = corpus.vocab.words
  cooc = text.cooccurrence(
    corpus.encoded, len(words), window=settings["window"], progress=options["progress"]
  )
  data = prepare_data(cooc, x_max=settings["x_max"], alpha=settings["alpha"])
  sizes = {k: settings[k] for k in ("dim", "epochs", "batch_size")}
  rows = compare_optimizers(data, words, **sizes, **options)
  details = (
    f", {data.rows.size:,} nonzero co-occurrences (window {settings['window']}); "
    f"d={settings['dim']}, {settings['epochs']} epochs of batches of {settings['batch_size']}, "
    f"x_max={settings['x_max']:g}, alpha={settings['alpha']:g}"
  )
  legend = _legend(rows[0], settings["batch_size"])
  return rows, details, legend, {"nonzero_pairs": int(data.rows.size)}


def main(argv: Sequence[str] | None = None) -> int:
  """GloVe's command line (see the module docstring): 0 on success, 2 on bad input."""
  return word_cli.run(_parser().parse_args(argv), _DEFAULTS, _QUICK, _train, **_REPORT)


if __name__ == "__main__":
  sys.exit(main())
