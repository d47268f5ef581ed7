"""The training loop and the learning-rate sweep shared by the word-vector examples.

:func:`train_loop` runs any per-batch cost with any optax transformation in chunked,
jitted steps, with orbax checkpoints and exact resume (GloVe and SGNS use it);
:func:`sweep_optimizers` tries each optimizer at a few learning rates, keeps the best
one, evaluates its vectors and measures its rotation drift.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import optax_blockada as ob
from optax_blockada.examples import rotation as rot
from optax_blockada.examples import word_eval
from optax_blockada.examples._checkpoint import Checkpointer
from optax_blockada.examples._cli import check_int
from optax_blockada.examples.glove_model import Params
from optax_blockada.examples.optimizers import make_optimizer
from optax_blockada.examples.report import save_word2vec

__all__ = ["TrainResult", "sweep_optimizers", "train_loop"]


class TrainResult(NamedTuple):
  """What a training run returns.

  Example:
    >>> from optax_blockada.examples.training import TrainResult
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
  checkpoint_settings: Mapping[str, Any] | None = None,
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
  position) are written with orbax every ``checkpoint_every`` steps (in the background)
  and at the end; ``checkpoint_settings`` are stored with them and a resume with other
  settings is refused.

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
    checkpoint_settings: what determines the run (JSON-serialisable), stored as the
      checkpoints' metadata and checked on resume (see :class:`Checkpointer`).
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
    >>> from optax_blockada.examples.training import train_loop
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
    ckpt = Checkpointer(checkpoint_dir, every=checkpoint_every, settings=checkpoint_settings)
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


def _tables(params: Params) -> Params:
  return {k: params[k] for k in ("word", "context")}


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
  checkpoint_settings: Mapping[str, Any] | None = None,
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
    checkpoint_settings: the run's settings, stored with each run's checkpoints (with
      its optimizer, learning rate and tag) and checked on resume.
    resume: resume runs from their checkpoints.
    progress: show progress bars.
    wrap: ``(name, tx) -> tx``, applied to every optimizer (default: none).
    save_vectors: a directory: each optimizer's vectors at its best rate are written
      there as ``<optimizer>.txt`` in word2vec's text format (:func:`save_word2vec`).

  Returns:
    A ``random init`` row, then one row per optimizer.

  Example:
    >>> from optax_blockada.examples.training import sweep_optimizers
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
    directory, settings = None, None
    if checkpoint_dir is not None:
      directory = os.path.join(checkpoint_dir, name, tag)
      settings = {**(checkpoint_settings or {}), "optimizer": name, "learning_rate": lr}
    return train(
      optimizer(name, lr),
      init,
      checkpoint_dir=directory,
      checkpoint_every=checkpoint_every,
      checkpoint_settings=settings,
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
