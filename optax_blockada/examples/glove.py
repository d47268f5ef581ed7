"""GloVe word vectors with every Adagrad of the line-up: the main job.

Run it with::

    python -m optax_blockada.examples.glove            # offline default corpus, 4-7 min on 2 cores
    python -m optax_blockada.examples.glove --quick    # a smaller setting, < 2 min
    python -m optax_blockada.examples.glove --corpus text8 --json out.json --plot loss.png
    python -m optax_blockada.examples.glove --checkpoint-dir ckpt [--resume]

It reads the corpus (gensim's Wikipedia excerpt and Lee corpus by default, or any plain
text file: one document per line), builds the vocabulary and counts co-occurrences as
GloVe's ``cooccur.c`` does (:mod:`optax_blockada.examples.text`), then trains the
:class:`GloVe` model with each optimizer of
:data:`optax_blockada.examples.optimizers.OPTIMIZER_NAMES` at a few learning rates,
keeps each optimizer's best rate (lowest final weighted loss, the training objective),
and prints one table: best rate, final weighted loss, analogy accuracy, WordSim-353 and
SimLex-999 Spearman (:mod:`optax_blockada.examples.word_eval`), optimizer state bytes,
training steps per second and the rotation drift (the same run from ``W R``, see
:mod:`optax_blockada.examples.rotation`). A random-init row gives the evaluation floor.

The model (Pennington, Socher & Manning 2014; ``glove.c``)::

    J = sum over nonzero X_ij of  f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2 / 2
    f(x) = min(1, (x / x_max)^alpha)
    vectors: W + W~

Training uses shuffled minibatches of nonzero pairs (``glove.c`` updates one pair at a
time, which is too slow in Python). The minibatch objective is the *sum* of the pairs'
costs, so each pair contributes the same gradient it gets in ``glove.c``; Adagrad's
accumulators then see the same scale as there (a mean over the batch would shrink every
gradient by the batch size, below Adagrad's initial accumulator). The ``glove.c`` preset
divides by the *old* accumulator, and its bias accumulators start at 1 with no learning
rate, so its first step of a bias is the raw gradient; summed over the hundreds of pairs a
frequent word has in a batch, that step overshoots by as much (measured on the default
corpus without a clip: a first-epoch loss of 0.87, six times the initial 0.14; at eta 0.1
a final loss of 0.50; at its best eta, vectors no better than random on WordSim). In the
comparison the preset is therefore preceded by ``optax.clip(PRESET_CLIP)``
(:data:`PRESET_CLIP` = 10): no element of a step is larger than the largest per-pair
gradient ``glove.c`` itself meets (``|f(x) (prediction - log x)| <= log max X``, about 10
at initialisation). The other optimizers need no clip.

The pieces live in their own modules: the model and its cost in
:mod:`~optax_blockada.examples.glove_model`, the data in
:mod:`~optax_blockada.examples.glove_data`, the training loop and the learning-rate sweep
(shared with SGNS) in :mod:`~optax_blockada.examples.training`, the options shared with SGNS
in :mod:`~optax_blockada.examples.word_cli` and the table, JSON and plot writers in
:mod:`~optax_blockada.examples.report`. This module holds the GloVe run, its table and
:func:`main`; it re-exports the names it used to define.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optax
from flax import nnx

from optax_blockada.examples import text
from optax_blockada.examples._checkpoint import CheckpointError
from optax_blockada.examples._cli import float_in, int_at_least
from optax_blockada.examples.glove_data import GloVeData, prepare_data, weighted_loss
from optax_blockada.examples.glove_model import (
  ALPHA,
  X_MAX,
  GloVe,
  Params,
  glove_cost,
  weighting,
)
from optax_blockada.examples.optimizers import OPTIMIZER_NAMES
from optax_blockada.examples.report import (
  format_number,
  format_rates,
  machine_description,
  markdown_table,
  save_loss_plot,
  save_word2vec,
  write_atomically,
  write_json,
)
from optax_blockada.examples.training import TrainResult, sweep_optimizers, train_loop
from optax_blockada.examples.word_cli import (
  UsageError,
  add_common_arguments,
  check_output_paths,
  load_corpus,
  prepare_checkpoint_dir,
  settings_from_args,
)

__all__ = [
  "ALPHA",
  "LEARNING_RATES",
  "PRESET_CLIP",
  "X_MAX",
  "GloVe",
  "GloVeData",
  "TrainResult",
  "UsageError",
  "add_common_arguments",
  "check_output_paths",
  "compare_optimizers",
  "format_table",
  "glove_cost",
  "load_corpus",
  "machine_description",
  "main",
  "prepare_checkpoint_dir",
  "prepare_data",
  "save_loss_plot",
  "save_word2vec",
  "settings_from_args",
  "sweep_optimizers",
  "train_glove",
  "train_loop",
  "weighted_loss",
  "weighting",
  "write_atomically",
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

  Epoch ``e`` visits every pair once in the order
  ``numpy.random.default_rng([seed, e]).permutation(n)``.

  Args:
    params: initial parameters (e.g. of a :class:`GloVe` model:
      ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``).
    data: the pairs (:func:`prepare_data`).
    tx: the optimizer.
    epochs: passes over the pairs.
    batch_size: pairs per step.
    seed: the shuffling seed.
    **kwargs: passed to :func:`train_loop` (checkpoints, progress).

  Returns:
    A :class:`TrainResult` whose ``epoch_losses`` are ``glove.c``'s per-iteration cost
    (per pair, during the epoch).

  Example:
    >>> import optax
    >>> from flax import nnx
    >>> from optax_blockada.examples.glove import GloVe, prepare_data, train_glove
    >>> from optax_blockada.examples.text import Cooccurrence
    >>> rows, cols = np.nonzero(np.ones((5, 5)))
    >>> data = prepare_data(Cooccurrence(rows, cols, 1.0 + rows + cols, 5))
    >>> params = nnx.to_pure_dict(nnx.state(GloVe(5, 3, rngs=nnx.Rngs(0)), nnx.Param))
    >>> r = train_glove(params, data, optax.adagrad(0.1), epochs=20, batch_size=8)
    >>> bool(r.epoch_losses[-1] < r.epoch_losses[0] / 2)
    True
  """
  if data.rows.size == 0:
    raise ValueError("data has no pair to train on.")
  arrays = {
    "rows": data.rows,
    "cols": data.cols,
    "log_counts": data.log_counts,
    "weights": data.weights,
  }

  def epoch_data(epoch: int) -> tuple[dict[str, np.ndarray], int]:
    order = np.random.default_rng([seed, epoch]).permutation(data.rows.size)
    return {k: v[order] for k, v in arrays.items()}, data.rows.size

  return train_loop(
    lambda p, b, key: glove_cost(p, b),
    params,
    tx,
    epoch_data,
    epochs=epochs,
    batch_size=batch_size,
    seed=seed,
    **kwargs,
  )


# -- the main job ----------------------------------------------------------------------

PRESET_CLIP = 10.0
"""The element-wise gradient clip in front of ``glove.c``'s preset (see the module)."""

LEARNING_RATES = {
  "optax.adagrad": (0.1, 0.2, 0.4),
  "diagonal": (0.1, 0.2, 0.4),
  "preset": (0.1, 0.2, 0.4),  # glove.c's eta (its default, 0.05, trains slower here)
  "rowwise": (0.1, 0.2, 0.4),
  "block": (0.1, 0.2, 0.4),
}
"""The learning rates each optimizer is tried at in the default run."""

QUICK_LEARNING_RATES = {name: rates[1:] for name, rates in LEARNING_RATES.items()}

_DEFAULTS = {"dim": 50, "epochs": 8, "min_count": 5, "max_vocab": None, "window": 10}
_QUICK = {"dim": 32, "epochs": 4, "min_count": 5, "max_vocab": 2000, "window": 10}
_POSITIVE = float_in(0)
_SELECTION = "lowest final weighted loss (the training objective)"


def _vectors(params: Params) -> np.ndarray:
  return np.asarray(params["word"] + params["context"])


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
  checkpoint_dir: str | None = None,
  checkpoint_every: int = 1000,
  checkpoint_settings: Mapping[str, Any] | None = None,
  resume: bool = False,
  progress: bool = False,
  save_vectors: str | None = None,
) -> list[dict[str, Any]]:
  """Trains GloVe with each optimizer at each of its learning rates; keeps the best.

  Every run starts from the same :class:`GloVe` initialisation (``nnx.Rngs(seed)``) and
  sees the same data order. The best learning rate of an optimizer is the one with the
  lowest final :func:`weighted_loss` (non-finite losses count as diverged). At that
  rate the vectors ``W + W~`` are evaluated (:func:`word_eval.evaluate`) and the run is
  repeated from ``W R`` (both tables rotated by a random orthogonal ``R``) to measure
  the rotation drift ``||W_T - W'_T R^T|| / ||W_T||`` (:func:`rotation.relative_drift`).

  Args:
    data: the co-occurrences.
    words: the vocabulary, row ``i`` = ``words[i]``.
    optimizers: names for :func:`make_optimizer` (``'preset'``: ``glove.c``'s, behind
      ``optax.clip(PRESET_CLIP)``).
    learning_rates: name -> rates to try (default :data:`LEARNING_RATES`).
    dim: vector size ``d``.
    epochs: passes over the pairs per run.
    batch_size: pairs per step.
    seed: seed of the initialisation, the data order and the rotation.
    checkpoint_dir: if set, each run checkpoints under ``DIR/<optimizer>/<run>``.
    checkpoint_every: steps between checkpoints.
    checkpoint_settings: the settings stored with the checkpoints, checked on resume.
    resume: resume each run from its newest checkpoint (runs without one start anew).
    progress: show progress bars.
    save_vectors: a directory for each optimizer's vectors ``W + W~`` at its best rate
      (word2vec text format, ``<optimizer>.txt``).

  Returns:
    A ``random init`` row, then one row per optimizer (dicts; see the module's table).

  Example:
    >>> from optax_blockada.examples.glove import compare_optimizers, prepare_data
    >>> from optax_blockada.examples.text import Cooccurrence
    >>> rows, cols = np.nonzero(np.ones((6, 6)))
    >>> data = prepare_data(Cooccurrence(rows, cols, 1.0 + rows * cols, 6))
    >>> words = ["king", "queen", "man", "woman", "tiger", "cat"]
    >>> out = compare_optimizers(data, words, optimizers=["rowwise"],
    ...                          learning_rates={"rowwise": [0.1]}, dim=4, epochs=3,
    ...                          batch_size=8)
    >>> [r["optimizer"] for r in out], out[1]["drift"] < 1e-4
    (['random init', 'rowwise'], True)
  """
  learning_rates = LEARNING_RATES if learning_rates is None else learning_rates
  model = GloVe(data.vocab_size, dim, rngs=nnx.Rngs(seed))
  params0 = nnx.to_pure_dict(nnx.state(model, nnx.Param))

  def train(tx: optax.GradientTransformation, init: Params, **kwargs: Any) -> TrainResult:
    return train_glove(init, data, tx, epochs=epochs, batch_size=batch_size, seed=seed, **kwargs)

  return sweep_optimizers(
    train,
    lambda params, result: weighted_loss(params, data),
    _vectors,
    params0,
    words,
    optimizers=optimizers,
    learning_rates=learning_rates,
    preset="glove",
    rotation_seed=seed + 1,
    wrap=_clip_preset,
    checkpoint_dir=checkpoint_dir,
    checkpoint_every=checkpoint_every,
    checkpoint_settings=checkpoint_settings,
    resume=resume,
    progress=progress,
    save_vectors=save_vectors,
  )


def _clip_preset(name: str, tx: optax.GradientTransformation) -> optax.GradientTransformation:
  # Summed minibatch gradients make glove.c's un-damped first bias step overshoot (see the
  # module docstring); the clip bounds each step element by glove.c's own per-pair scale.
  return optax.chain(optax.clip(PRESET_CLIP), tx) if name == "preset" else tx


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The main job's table, in markdown.

  Args:
    rows: from :func:`compare_optimizers`.

  Returns:
    The table as a string.

  Example:
    >>> from optax_blockada.examples.glove import format_table
    >>> row = {"optimizer": "rowwise", "learning_rate": 0.1, "loss": 0.02,
    ...        "analogy_total": 0.05, "analogy_semantic": 0.1, "analogy_syntactic": 0.02,
    ...        "wordsim353": 0.3, "simlex999": 0.1, "state_bytes": 4000,
    ...        "steps_per_second": 100.0, "drift": 1e-7}
    >>> print(format_table([row]).splitlines()[-1])
    | rowwise | 0.1 | 0.02000 | 5.0 (10.0 / 2.0) | 0.300 | 0.100 | 4,000 | 100 | 1.0e-07 |
  """
  header = ["optimizer", "best lr", "final loss", "analogy % (sem / syn)", "WordSim", "SimLex"]
  header += ["state bytes", "steps/s", "rotation drift"]
  cells = []
  for r in rows:

    def pct(key: str, r: Mapping[str, Any] = r) -> str:
      value = r[key]
      return "n/a" if not math.isfinite(value) else f"{100 * value:.1f}"

    analogy = f"{pct('analogy_total')} ({pct('analogy_semantic')} / {pct('analogy_syntactic')})"
    cells.append(
      [
        r["optimizer"],
        format_number(r["learning_rate"], "g"),
        format_number(r["loss"], ".5f", missing="diverged"),  # only a loss diverges
        analogy,
        format_number(r["wordsim353"], ".3f"),
        format_number(r["simlex999"], ".3f"),
        format_number(r["state_bytes"], ","),
        format_number(r["steps_per_second"], ".0f"),
        format_number(r["drift"], ".1e"),
      ]
    )
  return markdown_table(header, "l" + "r" * 8, cells)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m optax_blockada.examples.glove",
    description="Train GloVe with each Adagrad variant (a short learning-rate sweep each) and "
    "print one comparison table.",
  )
  add_common_arguments(parser, _DEFAULTS, _QUICK)
  parser.add_argument(
    "--batch-size",
    type=int_at_least(1),
    default=8192,
    help="co-occurrence pairs per step (default: %(default)s)",
  )
  parser.add_argument(
    "--x-max",
    type=_POSITIVE,
    default=X_MAX,
    help="weighting cut-off (default: %(default)s, GloVe's demo)",
  )
  parser.add_argument(
    "--alpha", type=_POSITIVE, default=ALPHA, help="weighting exponent (default: %(default)s)"
  )
  return parser


def _legend(baseline: Mapping[str, Any]) -> str:
  """The table's legend; ``baseline`` (the random-init row) gives the coverages."""
  return (
    "final loss: glove.c's weighted cost per nonzero pair over all pairs after training. "
    "analogy: 3CosAdd accuracy on the questions-words questions the vocabulary covers "
    f"({100 * baseline['analogy_coverage']:.0f}%). WordSim/SimLex: Spearman rho of cosine "
    f"similarities (pairs covered: {100 * baseline['wordsim353_coverage']:.0f}% / "
    f"{100 * baseline['simlex999_coverage']:.0f}%). state bytes: optimizer state. steps/s: "
    "training steps per second at the best rate (compilation excluded). rotation drift: "
    "||W_T - W'_T R^T|| / ||W_T|| between the runs from W and from W R (0 = "
    "rotation-equivariant). 'preset' is glove.c's Adagrad behind optax.clip(10): summed "
    "minibatch gradients would make its un-damped first bias step overshoot."
  )


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point (see the module docstring); returns the exit status.

  Args:
    argv: the arguments (default: ``sys.argv[1:]``).

  Returns:
    0 on success, 2 on bad input (a message on stderr; argparse exits with 2 itself).
  """
  start = time.perf_counter()
  args = _parser().parse_args(argv)
  settings = settings_from_args(args, _DEFAULTS, _QUICK)
  names = tuple(args.optimizers or OPTIMIZER_NAMES)
  rates_table = QUICK_LEARNING_RATES if args.quick else LEARNING_RATES
  rates = {n: tuple(args.learning_rates or rates_table[n]) for n in names}
  run_settings = {**settings, "corpus": args.corpus, "batch_size": args.batch_size}
  run_settings.update(x_max=args.x_max, alpha=args.alpha, seed=args.seed, learning_rates=rates)
  try:
    check_output_paths(args)
    corpus, vocab, encoded, tokens = load_corpus(args, settings)
    cooc = text.cooccurrence(
      encoded, len(vocab.words), window=settings["window"], progress=not args.no_progress
    )
    data = prepare_data(cooc, x_max=args.x_max, alpha=args.alpha)
    prepare_checkpoint_dir(args)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  try:
    rows = compare_optimizers(
      data,
      vocab.words,
      optimizers=names,
      learning_rates=rates,
      dim=settings["dim"],
      epochs=settings["epochs"],
      batch_size=args.batch_size,
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
  header = (
    f"GloVe on {corpus}: {tokens:,} tokens, {len(vocab.words):,} words (min count "
    f"{settings['min_count']}), {data.rows.size:,} nonzero co-occurrences (window "
    f"{settings['window']}); d={settings['dim']}, {settings['epochs']} epochs of batches of "
    f"{args.batch_size}, x_max={args.x_max:g}, alpha={args.alpha:g}, seed {args.seed}.\n"
    f"Best learning rate per optimizer: {_SELECTION}; tried {format_rates(rates)}.\n"
    f"{machine_description()}; total wall time {seconds:.0f} s."
  )
  print(header)
  print()
  print(format_table(rows))
  print()
  print(_legend(rows[0]))
  if args.json is not None:
    payload = {
      "settings": {k: v for k, v in run_settings.items() if k != "corpus"}
      | {"selection": _SELECTION},
      "corpus": {
        "name": corpus,
        "tokens": tokens,
        "vocab_size": len(vocab.words),
        "nonzero_pairs": int(data.rows.size),
      },
      "machine": machine_description(),
      "seconds": seconds,
      "results": rows,
    }
    write_json(args.json, payload)
  if args.plot is not None:
    save_loss_plot(
      args.plot,
      rows[1:],
      f"GloVe on {corpus} (d={settings['dim']}):\ntraining loss at each optimizer's best rate",
      "weighted loss per pair (glove.c cost, dimensionless)",
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
