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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

import optax_blockada as ob
from optax_blockada.examples import rotation as rot
from optax_blockada.examples import text, word_eval
from optax_blockada.examples._checkpoint import Checkpointer, CheckpointError
from optax_blockada.examples._cli import check_int, float_in, int_at_least
from optax_blockada.examples.glove_model import (
  ALPHA,
  X_MAX,
  GloVe,
  Params,
  glove_cost,
  weighting,
)
from optax_blockada.examples.optimizers import OPTIMIZER_NAMES, make_optimizer
from optax_blockada.examples.report import (
  format_number,
  format_rates,
  machine_description,
  markdown_table,
  save_loss_plot,
  write_atomically,
  write_json,
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
  "settings_from_args",
  "sweep_optimizers",
  "train_glove",
  "train_loop",
  "weighted_loss",
  "weighting",
  "write_atomically",
]


class GloVeData(NamedTuple):
  """Nonzero co-occurrences prepared for training, as host numpy arrays.

  Example:
    >>> from optax_blockada.examples.glove import GloVeData
    >>> GloVeData(*(np.zeros(1),) * 4, vocab_size=1).vocab_size
    1
  """

  rows: np.ndarray  # shape=(n,), int32
  cols: np.ndarray  # shape=(n,), int32
  log_counts: np.ndarray  # shape=(n,), float32, log X_ij
  weights: np.ndarray  # shape=(n,), float32, f(X_ij)
  vocab_size: int  # V


def prepare_data(
  cooc: text.Cooccurrence, *, x_max: float = X_MAX, alpha: float = ALPHA
) -> GloVeData:
  """Logs and weights of the nonzero co-occurrences.

  Args:
    cooc: counts from :func:`optax_blockada.examples.text.cooccurrence`.
    x_max: the weighting cut-off, ``> 0``.
    alpha: the weighting exponent, ``> 0``.

  Returns:
    A :class:`GloVeData`.

  Example:
    >>> from optax_blockada.examples.glove import prepare_data
    >>> from optax_blockada.examples.text import Cooccurrence
    >>> d = prepare_data(Cooccurrence(np.array([0]), np.array([1]), np.array([10.0]), 2))
    >>> float(d.weights[0]), round(float(d.log_counts[0]), 4)
    (1.0, 2.3026)
  """
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
  """The final weighted loss: :func:`glove_cost` over all pairs, per nonzero pair.

  This is the number ``glove.c`` prints after each iteration (its total cost divided
  by the number of co-occurrence records), computed exactly at ``params``.

  Args:
    params: GloVe parameters.
    data: the pairs.
    chunk: pairs per evaluation call.

  Returns:
    A Python float.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada.examples.glove import prepare_data, weighted_loss
    >>> from optax_blockada.examples.text import Cooccurrence
    >>> data = prepare_data(Cooccurrence(np.array([0, 1]), np.array([1, 0]),
    ...                                  np.array([10.0, 10.0]), 2))
    >>> zeros = {'word': jnp.zeros((2, 1)), 'context': jnp.zeros((2, 1)),
    ...          'word_bias': jnp.zeros(2), 'context_bias': jnp.zeros(2)}
    >>> round(weighted_loss(zeros, data), 4)  # 0.5 * log(10)^2
    2.6509
  """
  total = 0.0
  n = data.rows.size
  for start in range(0, n, chunk):
    stop = min(n, start + chunk)
    batch = text.pad_batch(
      {
        "rows": data.rows[start:stop],
        "cols": data.cols[start:stop],
        "log_counts": data.log_counts[start:stop],
        "weights": data.weights[start:stop],
      },
      chunk,
    )
    total += float(_jitted_cost(params, batch))
  return total / n


class TrainResult(NamedTuple):
  """What a training run returns.

  Example:
    >>> from optax_blockada.examples.glove import TrainResult
    >>> TrainResult({}, np.zeros(2), 10, 1.0, 10).steps_per_second
    10.0
  """

  params: Any  # the trained parameters
  epoch_losses: np.ndarray  # shape=(epochs,), mean cost per item during each epoch
  steps: int  # optimizer steps taken in total
  seconds: float  # wall time of the steps run in this call (compilation excluded)
  steps_run: int  # steps run in this call (fewer than ``steps`` after a resume)

  @property
  def steps_per_second(self) -> float:
    """Steps run in this call per second of their wall time."""
    return self.steps_run / self.seconds if self.seconds > 0 else math.nan


EpochData = Callable[[int], tuple[dict[str, np.ndarray], int]]


def train_loop(
  cost: Callable[[Any, Mapping[str, jax.Array], jax.Array], jax.Array],
  params: Any,
  tx: optax.GradientTransformation,
  epoch_data: EpochData,
  *,
  epochs: int,
  batch_size: int,
  seed: int = 0,
  checkpoint_dir: str | os.PathLike | None = None,
  checkpoint_every: int = 1000,
  resume: bool = False,
  progress: bool = False,
  desc: str = "training",
  chunk_steps: int = 100,
) -> TrainResult:
  """Minibatch training with a jitted step, checkpoints and exact resumption.

  Each epoch, ``epoch_data(epoch)`` returns ``(arrays, n)``: a dict of host arrays with
  ``n`` items in training order (already shuffled) along axis 0. Step ``s`` of the
  epoch trains on items ``[s B, (s + 1) B)``; the last batch is padded with zeros
  (padding must cost nothing, e.g. a weight or mask of 0). The step minimises
  ``cost(params, batch, key)``, where ``key`` is ``fold_in(key(seed), global_step)``.
  Steps run in compiled chunks of up to ``chunk_steps`` (one ``fori_loop`` each).

  Because the data of an epoch and the key of a step are functions of the seed, the
  epoch and the step, a run resumed from a checkpoint (``resume=True``) equals the
  uninterrupted run. Checkpoints (model parameters, optimizer state, loss sums,
  position) are written with orbax every ``checkpoint_every`` steps and at the end.

  Args:
    cost: ``(params, batch, key) -> summed cost`` of the batch (a float32 scalar).
    params: the initial parameters (not modified).
    tx: the optimizer.
    epoch_data: ``epoch -> (arrays, n)``, deterministic.
    epochs: number of epochs, ``>= 1``.
    batch_size: items per step, ``>= 1``.
    seed: the seed of the step keys.
    checkpoint_dir: where to write checkpoints (``None``: none).
    checkpoint_every: steps between checkpoints.
    resume: continue from the newest checkpoint in ``checkpoint_dir`` if there is one.
    progress: show a tqdm progress bar.
    desc: the progress bar's label.
    chunk_steps: steps per compiled call.

  Returns:
    A :class:`TrainResult`; ``epoch_losses[e]`` is the summed cost of epoch ``e``
    divided by its ``n``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from optax_blockada.examples.glove import train_loop
    >>> data = lambda epoch: ({"x": np.arange(10.0, dtype=np.float32)}, 10)
    >>> cost = lambda p, b, key: jnp.sum(jnp.where(b["x"] > 0, (p - b["x"]) ** 2, 0.0))
    >>> r = train_loop(cost, jnp.zeros(()), optax.sgd(0.01), data, epochs=30, batch_size=4)
    >>> r.steps, round(float(r.params), 2)  # the mean of 1..9
    (90, 5.0)
  """
  epochs = check_int("epochs", epochs, 1)
  batch_size = check_int("batch_size", batch_size, 1)
  chunk_steps = check_int("chunk_steps", chunk_steps, 1)
  base_key = jax.random.key(seed)

  def chunk_fn(carry, arrays, start, stop, global_start):
    def body(s, carry):
      params, opt_state, loss_sum = carry
      batch = {
        k: jax.lax.dynamic_slice_in_dim(v, s * batch_size, batch_size) for k, v in arrays.items()
      }
      key = jax.random.fold_in(base_key, global_start + s - start)
      value, grads = jax.value_and_grad(cost)(params, batch, key)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss_sum + value

    return jax.lax.fori_loop(start, stop, body, carry)

  jitted = jax.jit(chunk_fn, donate_argnums=0)
  compiled: dict[Any, Any] = {}

  params = jax.tree.map(jnp.array, params)  # a copy: the chunks donate their inputs
  state = {
    "params": params,
    "opt_state": tx.init(params),
    "loss_sum": jnp.zeros((), jnp.float32),
    "epoch_losses": jnp.zeros((epochs,), jnp.float32),
    "epoch": jnp.zeros((), jnp.int32),
    "offset": jnp.zeros((), jnp.int32),
    "step": jnp.zeros((), jnp.int32),
  }
  ckpt = None
  if checkpoint_dir is not None:
    ckpt = Checkpointer(checkpoint_dir, every=checkpoint_every)
    if resume and ckpt.latest_step() is not None:
      _, state = ckpt.restore_latest(state)
  seconds, steps_run = 0.0, 0
  try:
    epoch, offset, step = int(state["epoch"]), int(state["offset"]), int(state["step"])
    losses = np.asarray(state["epoch_losses"]).copy()
    carry = (state["params"], state["opt_state"], state["loss_sum"])
    with tqdm(desc=desc, unit="step", disable=not progress, leave=False) as bar:
      while epoch < epochs:
        arrays, n = epoch_data(epoch)
        steps = -(-n // batch_size)
        bar.total = (bar.total or 0) + steps - offset
        bar.refresh()
        capacity = -(-steps // 64) * 64 * batch_size  # few distinct shapes: few compilations
        arrays = {k: _pad_to(v, capacity) for k, v in arrays.items()}
        done = False
        while not done:
          stop = min(steps, offset + chunk_steps)
          if ckpt is not None:
            stop = min(stop, (step // checkpoint_every + 1) * checkpoint_every - step + offset)
          args = (carry, arrays, np.int32(offset), np.int32(stop), np.int32(step))
          shapes = tuple((k, v.shape) for k, v in arrays.items())
          if shapes not in compiled:
            compiled[shapes] = jitted.lower(*args).compile()
          tic = time.perf_counter()
          carry = jax.block_until_ready(compiled[shapes](*args))
          seconds += time.perf_counter() - tic
          steps_run += stop - offset
          bar.update(stop - offset)
          step += stop - offset
          offset = stop
          if offset == steps:
            losses[epoch] = float(carry[2]) / n
            carry = (carry[0], carry[1], jnp.zeros((), jnp.float32))
            epoch, offset, done = epoch + 1, 0, True
          if ckpt is not None:
            state = {
              "params": carry[0],
              "opt_state": carry[1],
              "loss_sum": carry[2],
              "epoch_losses": jnp.asarray(losses),
              "epoch": jnp.asarray(epoch, jnp.int32),
              "offset": jnp.asarray(offset, jnp.int32),
              "step": jnp.asarray(step, jnp.int32),
            }
            ckpt.save(step, state, force=epoch == epochs)
  finally:
    if ckpt is not None:
      ckpt.close()
  return TrainResult(carry[0], losses, step, seconds, steps_run)


def _pad_to(array: np.ndarray, size: int) -> np.ndarray:
  pad = [(0, size - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
  return np.pad(array, pad)


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
_MAX_LEARNING_RATE = 10.0
_LEARNING_RATE = float_in(0, _MAX_LEARNING_RATE, label="learning rates ")
_POSITIVE = float_in(0)
_SELECTION = "lowest final weighted loss (the training objective)"


def _tables(params: Params) -> Params:
  return {k: params[k] for k in ("word", "context")}


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
    resume=resume,
    progress=progress,
    save_vectors=save_vectors,
  )


def _clip_preset(name: str, tx: optax.GradientTransformation) -> optax.GradientTransformation:
  # Summed minibatch gradients make glove.c's un-damped first bias step overshoot (see the
  # module docstring); the clip bounds each step element by glove.c's own per-pair scale.
  return optax.chain(optax.clip(PRESET_CLIP), tx) if name == "preset" else tx


def sweep_optimizers(
  train: Callable[..., TrainResult],
  final_loss: Callable[[Params, TrainResult], float],
  vectors: Callable[[Params], np.ndarray],
  params0: Params,
  words: Sequence[str],
  *,
  optimizers: Sequence[str],
  learning_rates: Mapping[str, Sequence[float]],
  preset: str,
  rotation_seed: int,
  checkpoint_dir: str | None = None,
  checkpoint_every: int = 1000,
  resume: bool = False,
  progress: bool = False,
  wrap: Callable[[str, optax.GradientTransformation], optax.GradientTransformation] | None = None,
  save_vectors: str | None = None,
) -> list[dict[str, Any]]:
  """The learning-rate sweep and the table rows, for any model with word/context tables.

  For each optimizer and rate, ``train(tx, init, **kwargs)`` trains from ``params0``
  (``kwargs``: checkpoint and progress options for :func:`train_loop`); the rate with
  the lowest finite ``final_loss(params, result)`` wins; its ``vectors(params)`` are
  evaluated and the run is repeated from ``params0`` with its ``'word'`` and
  ``'context'`` tables rotated by ``random_orthogonal(d, rotation_seed)`` to measure
  the rotation drift.

  Args:
    train: trains one run.
    final_loss: the selection criterion (lower is better).
    vectors: the word vectors to evaluate.
    params0: the initial parameters (with ``'word'`` and ``'context'`` tables).
    words: the vocabulary.
    optimizers: names for :func:`make_optimizer`.
    learning_rates: name -> rates.
    preset: what ``'preset'`` stands for (see :data:`optimizers.PRESETS`).
    rotation_seed: seed of the rotation.
    checkpoint_dir: if set, run ``r`` of optimizer ``o`` checkpoints in ``DIR/o/r``.
    checkpoint_every: steps between checkpoints.
    resume: resume runs from their checkpoints.
    progress: show progress bars.
    wrap: ``(name, tx) -> tx``, applied to every optimizer (default: none).
    save_vectors: a directory: each optimizer's vectors at its best rate are written
      there as ``<optimizer>.txt`` in word2vec's text format (:func:`save_word2vec`).

  Returns:
    A ``random init`` row, then one row per optimizer.

  Example:
    >>> from optax_blockada.examples.glove import sweep_optimizers
    >>> callable(sweep_optimizers)  # used by compare_optimizers and sgns.compare_optimizers
    True
  """
  dim = int(params0["word"].shape[1])
  rotation = rot.random_orthogonal(dim, rotation_seed)
  rotated0 = {**params0, **rot.rotate(_tables(params0), rotation)}

  def optimizer(name: str, lr: float) -> optax.GradientTransformation:
    tx = make_optimizer(name, lr, preset=preset)
    return tx if wrap is None else wrap(name, tx)

  def run(name: str, lr: float, init: Params, tag: str) -> TrainResult:
    directory = None
    if checkpoint_dir is not None:
      directory = os.path.join(checkpoint_dir, name, tag)
    return train(
      optimizer(name, lr),
      init,
      checkpoint_dir=directory,
      checkpoint_every=checkpoint_every,
      resume=resume,
      progress=progress,
      desc=f"{name} lr={lr:g}{' (W R)' if tag == 'rotated' else ''}",
    )

  baseline = word_eval.evaluate(vectors(params0), words)
  rows = [
    {
      "optimizer": "random init",
      "learning_rate": None,
      "loss": final_loss(params0, None),
      **baseline,
      "state_bytes": None,
      "steps_per_second": None,
      "drift": None,
      "sweep": {},
      "epoch_losses": [],
    }
  ]
  for name in optimizers:
    sweep, results = {}, {}
    for lr in learning_rates[name]:
      result = run(name, lr, params0, f"lr={lr:g}")
      loss = final_loss(result.params, result)
      sweep[lr] = loss if math.isfinite(loss) else math.inf
      results[lr] = result
    best = min(sweep, key=sweep.get)
    result = results[best]
    diverged = not math.isfinite(sweep[best])
    row: dict[str, Any] = {
      "optimizer": name,
      "learning_rate": best,
      "loss": sweep[best] if not diverged else math.nan,
      "state_bytes": ob.state_bytes(jax.eval_shape(optimizer(name, best).init, params0)),
      "steps_per_second": result.steps_per_second,
      "sweep": {f"{lr:g}": loss for lr, loss in sweep.items()},
      "epoch_losses": [float(x) for x in result.epoch_losses],
    }
    if diverged:
      row.update({k: math.nan for k in baseline})
      row["drift"] = math.nan
    else:
      row.update(word_eval.evaluate(vectors(result.params), words))
      if save_vectors is not None:
        save_word2vec(os.path.join(save_vectors, f"{name}.txt"), words, vectors(result.params))
      rotated = run(name, best, rotated0, "rotated")
      row["drift"] = rot.relative_drift(_tables(result.params), _tables(rotated.params), rotation)
    rows.append(row)
  return rows


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


def add_common_arguments(
  parser: argparse.ArgumentParser,
  defaults: Mapping[str, Any] = _DEFAULTS,
  quick: Mapping[str, Any] = _QUICK,
) -> None:
  """Adds the options the word-vector examples share (corpus, sizes, outputs, resume).

  Args:
    parser: the parser to extend.
    defaults: the example's sizes (for the help text).
    quick: its ``--quick`` sizes.

  Example:
    >>> import argparse
    >>> from optax_blockada.examples.glove import add_common_arguments
    >>> parser = argparse.ArgumentParser()
    >>> add_common_arguments(parser)
    >>> parser.parse_args(["--quick"]).quick
    True
  """
  parser.add_argument(
    "--corpus",
    metavar="PATH",
    help="a plain text file, one document a line "
    "(default: gensim's Wikipedia excerpt + Lee corpus)",
  )
  parser.add_argument(
    "--quick", action="store_true", help="a smaller setting (fewer words, epochs and rates)"
  )
  parser.add_argument(
    "--optimizers",
    nargs="+",
    choices=OPTIMIZER_NAMES,
    metavar="NAME",
    help=f"a subset of {', '.join(OPTIMIZER_NAMES)} (default: all)",
  )
  parser.add_argument(
    "--learning-rates",
    nargs="+",
    type=_LEARNING_RATE,
    metavar="LR",
    help=f"rates to try for every optimizer, each in (0, "
    f"{_MAX_LEARNING_RATE:g}] (default: a grid per optimizer)",
  )

  def sizes(key: str) -> str:
    return f"(default: {defaults[key]}; with --quick: {quick[key]})"

  parser.add_argument("--dim", type=int_at_least(1), help=f"vector size d {sizes('dim')}")
  parser.add_argument(
    "--epochs", type=int_at_least(1), help=f"passes over the data per run {sizes('epochs')}"
  )
  parser.add_argument(
    "--min-count", type=int_at_least(1), help=f"smallest word count kept {sizes('min_count')}"
  )
  parser.add_argument(
    "--max-vocab", type=int_at_least(1), help=f"keep at most this many words {sizes('max_vocab')}"
  )
  parser.add_argument("--window", type=int_at_least(1), help=f"context window {sizes('window')}")
  parser.add_argument(
    "--seed",
    type=int_at_least(0),
    default=0,
    help="seed of initialisation, data order and rotation (default: 0)",
  )
  parser.add_argument("--json", metavar="PATH", help="write the results to this JSON file")
  parser.add_argument("--plot", metavar="PATH", help="save the loss curves to this image")
  parser.add_argument(
    "--save-vectors",
    metavar="DIR",
    help="write each optimizer's trained vectors to DIR/<optimizer>.txt (word2vec text "
    "format, for gensim's KeyedVectors.load_word2vec_format)",
  )
  parser.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoint every run here (orbax)")
  parser.add_argument(
    "--checkpoint-every",
    type=int_at_least(1),
    default=1000,
    help="steps between checkpoints (default: %(default)s)",
  )
  parser.add_argument(
    "--resume", action="store_true", help="continue the runs saved in --checkpoint-dir"
  )
  parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m optax_blockada.examples.glove",
    description="Train GloVe with each Adagrad variant (a short learning-rate sweep each) and "
    "print one comparison table.",
  )
  add_common_arguments(parser)
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


class UsageError(Exception):
  """Bad input found after parsing (a corpus, vocabulary or checkpoint problem).

  Example:
    >>> from optax_blockada.examples.glove import UsageError
    >>> str(UsageError("the corpus is empty"))
    'the corpus is empty'
  """


def settings_from_args(
  args: argparse.Namespace,
  defaults: Mapping[str, Any] = _DEFAULTS,
  quick: Mapping[str, Any] = _QUICK,
) -> dict[str, Any]:
  """The run's sizes: the defaults (or ``--quick``'s) overridden by explicit options.

  Args:
    args: parsed by a parser with :func:`add_common_arguments`.
    defaults: the sizes of a full run.
    quick: the sizes of a ``--quick`` run.

  Returns:
    ``{'dim', 'epochs', 'min_count', 'max_vocab', 'window'}``.

  Example:
    >>> from optax_blockada.examples.glove import _parser, settings_from_args
    >>> settings_from_args(_parser().parse_args(["--quick", "--dim", "8"]))["dim"]
    8
  """
  settings = dict(quick if args.quick else defaults)
  for key in settings:
    if getattr(args, key) is not None:
      settings[key] = getattr(args, key)
  return settings


def load_corpus(
  args: argparse.Namespace, settings: Mapping[str, Any]
) -> tuple[str, text.Vocabulary, text.EncodedCorpus, int]:
  """Reads ``--corpus`` (or the default), builds the vocabulary and checks it is usable.

  Args:
    args: parsed arguments.
    settings: from :func:`settings_from_args`.

  Returns:
    ``(corpus name, vocabulary, encoded corpus, token count)``.

  Raises:
    UsageError: a missing or empty file, a corpus shorter than the window, or a
      vocabulary that covers no evaluation question or pair.

  Example:
    >>> import pathlib, tempfile
    >>> from optax_blockada.examples.glove import _parser, load_corpus, settings_from_args
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = pathlib.Path(d) / "c.txt"
    ...   _ = path.write_text("the tiger and the cat\\n" * 3)
    ...   args = _parser().parse_args(["--corpus", str(path), "--min-count", "1",
    ...                                "--window", "2"])
    ...   name, vocab, enc, n = load_corpus(args, settings_from_args(args))
    >>> vocab.words, n
    (('the', 'and', 'cat', 'tiger'), 15)
  """
  progress = not args.no_progress
  try:
    if args.corpus is None:
      name = "gensim Wikipedia excerpt + Lee corpus"
      documents = text.gensim_corpus(progress=progress)
    else:
      name = os.path.basename(args.corpus)
      documents = text.read_corpus(args.corpus, progress=progress)
    vocab = text.build_vocabulary(
      documents, min_count=settings["min_count"], max_size=settings["max_vocab"]
    )
  except (OSError, ValueError) as e:
    raise UsageError(str(e)) from e
  encoded = text.encode(documents, vocab)
  tokens = sum(map(len, documents))
  if encoded.ids.size <= settings["window"]:
    raise UsageError(
      f"the corpus has {encoded.ids.size} in-vocabulary tokens, not more than the window "
      f"({settings['window']}): use a longer corpus, a smaller --window or --min-count."
    )
  coverage = word_eval.benchmark_coverage(vocab.words)
  if not any(coverage.values()):
    raise UsageError(
      f"the vocabulary ({len(vocab.words)} words) covers no analogy question and no "
      "WordSim-353 or SimLex-999 pair, so the vectors cannot be evaluated: use an English "
      "corpus with common words, or a lower --min-count."
    )
  return name, vocab, encoded, tokens


def save_word2vec(path: str, words: Sequence[str], vectors: Any) -> None:
  """Writes ``vectors`` (row ``i`` is ``words[i]``) in word2vec's text format, atomically.

  Written by gensim (:meth:`gensim.models.KeyedVectors.save_word2vec_format`), so
  ``KeyedVectors.load_word2vec_format(path)`` reads them back exactly (float32).

  Args:
    path: the file to write.
    words: the vocabulary.
    vectors: ``(len(words), d)`` array.

  Example:
    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> from gensim.models import KeyedVectors
    >>> from optax_blockada.examples.glove import save_word2vec
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = str(pathlib.Path(d) / "v.txt")
    ...   save_word2vec(path, ["cat", "dog"], np.array([[1.0, 0.5], [0.25, 2.0]]))
    ...   print(KeyedVectors.load_word2vec_format(path)["dog"])
    [0.25 2.  ]
  """
  from gensim.models import KeyedVectors

  vectors = np.asarray(vectors, np.float32)
  kv = KeyedVectors(vector_size=vectors.shape[1], dtype=np.float32)
  kv.add_vectors(list(words), vectors)
  # gensim writes in descending order of a per-word attribute: keep the vocabulary's order.
  for i, word in enumerate(words):
    kv.set_vecattr(word, "rank", len(words) - i)
  write_atomically(path, lambda tmp: kv.save_word2vec_format(tmp, binary=False, sort_attr="rank"))


def check_output_paths(args: argparse.Namespace) -> None:
  """Fails early if ``--json``, ``--plot`` or ``--save-vectors`` cannot be written.

  Args:
    args: parsed arguments.

  Raises:
    UsageError: if an output's directory does not exist, or ``--resume`` lacks
      ``--checkpoint-dir``.

  Example:
    >>> import argparse
    >>> from optax_blockada.examples.glove import check_output_paths
    >>> check_output_paths(argparse.Namespace(json="/no/such/dir/out.json", plot=None,
    ...                                       resume=False, checkpoint_dir=None))
    Traceback (most recent call last):
    ...
    optax_blockada.examples.glove.UsageError: --json: the directory '/no/such/dir' does not exist.
  """
  for option in ("json", "plot"):
    path = getattr(args, option)
    if path is not None:
      directory = os.path.dirname(os.path.abspath(path))
      if not os.path.isdir(directory):
        raise UsageError(f"--{option}: the directory {directory!r} does not exist.")
  if args.resume and args.checkpoint_dir is None:
    raise UsageError("--resume needs --checkpoint-dir (where the runs were saved).")
  save_vectors = getattr(args, "save_vectors", None)
  if save_vectors is not None:
    if os.path.exists(save_vectors) and not os.path.isdir(save_vectors):
      raise UsageError(f"--save-vectors: {save_vectors!r} exists and is not a directory.")
    try:
      os.makedirs(save_vectors, exist_ok=True)
    except OSError as e:
      raise UsageError(f"--save-vectors: cannot create {save_vectors!r}: {e}") from e


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point (see the module docstring); returns the exit status.

  Args:
    argv: the arguments (default: ``sys.argv[1:]``).

  Returns:
    0 on success, 2 on bad input (a message on stderr; argparse exits with 2 itself).
  """
  start = time.perf_counter()
  args = _parser().parse_args(argv)
  settings = settings_from_args(args)
  names = tuple(args.optimizers or OPTIMIZER_NAMES)
  rates_table = QUICK_LEARNING_RATES if args.quick else LEARNING_RATES
  rates = {n: tuple(args.learning_rates or rates_table[n]) for n in names}
  try:
    check_output_paths(args)
    corpus, vocab, encoded, tokens = load_corpus(args, settings)
    cooc = text.cooccurrence(
      encoded, len(vocab.words), window=settings["window"], progress=not args.no_progress
    )
    data = prepare_data(cooc, x_max=args.x_max, alpha=args.alpha)
    prepare_checkpoint_dir(
      args,
      {
        **settings,
        "corpus": args.corpus,
        "batch_size": args.batch_size,
        "x_max": args.x_max,
        "alpha": args.alpha,
        "seed": args.seed,
        "learning_rates": rates,
      },
    )
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
  print(
    "final loss: glove.c's weighted cost per nonzero pair over all pairs after training. "
    "analogy: 3CosAdd accuracy on the questions-words questions the vocabulary covers "
    f"({100 * rows[0]['analogy_coverage']:.0f}%). WordSim/SimLex: Spearman rho of cosine "
    f"similarities (pairs covered: {100 * rows[0]['wordsim353_coverage']:.0f}% / "
    f"{100 * rows[0]['simlex999_coverage']:.0f}%). state bytes: optimizer state. steps/s: "
    "training steps per second at the best rate (compilation excluded). rotation drift: "
    "||W_T - W'_T R^T|| / ||W_T|| between the runs from W and from W R (0 = "
    "rotation-equivariant). 'preset' is glove.c's Adagrad behind optax.clip(10): summed "
    "minibatch gradients would make its un-damped first bias step overshoot."
  )
  if args.json is not None:
    payload = {
      "settings": {
        **settings,
        "batch_size": args.batch_size,
        "x_max": args.x_max,
        "alpha": args.alpha,
        "seed": args.seed,
        "learning_rates": rates,
        "selection": _SELECTION,
      },
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


def prepare_checkpoint_dir(args: argparse.Namespace, run_settings: Mapping[str, Any]) -> None:
  """Checks ``--checkpoint-dir``/``--resume`` and records the run's settings there.

  A fresh run needs a directory without checkpoints (old ones would be resumed later by
  mistake); ``--resume`` needs checkpoints written with the same settings, which are
  kept in ``settings.json`` (written atomically).

  Args:
    args: parsed arguments (``checkpoint_dir``, ``resume``).
    run_settings: everything that determines the runs (JSON-serialisable).

  Raises:
    UsageError: if the directory does not fit the request.

  Example:
    >>> import argparse, tempfile
    >>> from optax_blockada.examples.glove import prepare_checkpoint_dir
    >>> with tempfile.TemporaryDirectory() as d:
    ...   prepare_checkpoint_dir(argparse.Namespace(checkpoint_dir=d, resume=False), {"dim": 8})
    ...   prepare_checkpoint_dir(argparse.Namespace(checkpoint_dir=d, resume=True), {"dim": 9})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    optax_blockada.examples.glove.UsageError: --resume: no checkpoint in ...
  """
  directory = args.checkpoint_dir
  if directory is None:
    return
  path = os.path.join(directory, "settings.json")
  wanted = json.loads(json.dumps(run_settings))
  if args.resume:
    if not _has_checkpoints(directory):
      raise UsageError(f"--resume: no checkpoint in {directory!r}; run without --resume.")
    try:
      with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    except FileNotFoundError:
      raise UsageError(
        f"--resume: {path!r} is missing, so the checkpoints in {directory!r} cannot be "
        "checked against this run's settings; restore the file, or start anew in an "
        "empty directory."
      ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise UsageError(
        f"--resume: {path!r} is damaged ({e}); restore it, or start anew in an empty directory."
      ) from None
    if not isinstance(saved, dict):
      raise UsageError(f"--resume: {path!r} does not hold the settings of a run.")
    if saved != wanted:
      changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
      raise UsageError(
        f"--resume: the checkpoints in {directory!r} were written with other settings "
        f"({', '.join(changed)} differ); resume with the same options or use a new directory."
      )
    return
  if _has_checkpoints(directory):
    raise UsageError(
      f"--checkpoint-dir {directory!r} already holds checkpoints: add --resume to continue "
      "them, or give an empty directory."
    )
  os.makedirs(directory, exist_ok=True)
  write_json(path, wanted)


def _has_checkpoints(directory: str) -> bool:
  return os.path.isdir(directory) and any(
    name.isdigit() for _, dirs, _ in os.walk(directory) for name in dirs
  )


if __name__ == "__main__":
  sys.exit(main())
