"""The examples' training: the one loop (:func:`train_loop`, jitted chunks of steps, orbax
checkpoints, exact resumption; GloVe, SGNS and the recommender), the one best-rate rule
(:func:`best_learning_rate`), and for GloVe and SGNS the learning-rate sweep with evaluation
and rotation drift (:func:`sweep_optimizers`) and the printed table (:func:`format_table`).
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

import optax_blockada as ob
from optax_blockada.examples import report, text, word_eval
from optax_blockada.examples import rotation as rot
from optax_blockada.examples._checkpoint import Checkpointer
from optax_blockada.examples._cli import check_int
from optax_blockada.examples.glove_model import Params
from optax_blockada.examples.optimizers import make_optimizer
from optax_blockada.examples.report import format_number, markdown_table

__all__ = [
  "TrainResult",
  "best_learning_rate",
  "format_table",
  "sweep_optimizers",
  "train_loop",
]


class TrainResult(NamedTuple):
  """What a training run returns."""

  params: Any  # the trained parameters
  epoch_losses: np.ndarray  # shape=(epochs,), mean cost per item during each epoch
  steps: int  # optimizer steps taken in total
  seconds: float  # wall time of the steps run in this call (compilation excluded)
  steps_run: int  # steps run in this call (fewer than ``steps`` after a resume)

  @property
  def steps_per_second(self) -> float:
    """Steps run in this call per second of their wall time."""
    return self.steps_run / self.seconds if self.seconds > 0 else math.nan


def train_loop(
  cost: Callable[[Any, Mapping[str, jax.Array], jax.Array], jax.Array],
  params: Any,
  tx: optax.GradientTransformation,
  epoch_data: Callable[[int], tuple[dict[str, np.ndarray], int]],
  *,
  epochs: int,
  batch_size: int,
  epoch_size: int | Callable[[int], int],
  seed: int = 0,
  checkpoint_dir: str | os.PathLike | None = None,
  checkpoint_every: int = 1000,
  checkpoint_settings: Mapping[str, Any] | None = None,
  resume: bool = False,
  progress: bool = False,
  desc: str = "training",
  run: tuple[int, int] = (1, 1),
  chunk_steps: int = 100,
  epoch_loss: Callable[[jax.Array, int], jax.Array] | None = None,
) -> TrainResult:
  """Minimises ``cost(params, batch, key)`` (summed over the batch) on minibatches.

  ``epoch_data(epoch)`` returns ``(arrays, n)``: ``n`` items in training order along axis
  0; ``epoch_size`` gives each ``n`` up front (an int or ``epoch -> n``). The last batch is
  padded with zeros, which must cost nothing; ``key = fold_in(key(seed), step)``. Data and
  keys depend only on the seed, epoch and step, so a run resumed from its newest checkpoint
  in ``checkpoint_dir`` equals the uninterrupted run. ``run=(k, n)`` labels the progress bar.
  ``epoch_loss(costs, n)``, if given, makes an epoch's loss from its steps' costs (default:
  their running sum / n).
  """
  epochs = check_int("epochs", epochs, 1)
  batch_size = check_int("batch_size", batch_size, 1)
  chunk_steps = check_int("chunk_steps", chunk_steps, 1)
  size = epoch_size if callable(epoch_size) else lambda epoch: epoch_size
  sizes = [size(e) for e in range(epochs)]
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
      loss_sum = loss_sum + value if epoch_loss is None else loss_sum.at[s].set(value)
      return optax.apply_updates(params, updates), opt_state, loss_sum

    return jax.lax.fori_loop(start, stop, body, carry)

  jitted = jax.jit(chunk_fn, donate_argnums=0)
  compiled: dict[Any, Any] = {}

  params = jax.tree.map(jnp.array, params)  # a copy: the chunks donate their inputs
  costs = () if epoch_loss is None else (-(-max(sizes) // batch_size),)  # each step's cost
  carry = (params, tx.init(params), jnp.zeros(costs, jnp.float32))
  state = _state(carry, np.zeros(epochs, np.float32), 0, 0, 0)
  ckpt = None
  if checkpoint_dir is not None:
    ckpt = Checkpointer(checkpoint_dir, every=checkpoint_every, settings=checkpoint_settings)
    if resume and ckpt.latest_step() is not None:
      _, state = ckpt.restore_latest(state)
  seconds, steps_run = 0.0, 0
  total = sum(-(-n // batch_size) for n in sizes)
  try:
    epoch, offset, step = int(state["epoch"]), int(state["offset"]), int(state["step"])
    losses = np.asarray(state["epoch_losses"]).copy()
    carry = (state["params"], state["opt_state"], state["loss_sum"])
    with report.progress_bar(desc, *run, total, enabled=progress) as bar:
      bar.update(step)  # a resumed run starts where it stopped
      while epoch < epochs:
        arrays, n = epoch_data(epoch)
        if n != sizes[epoch]:
          raise ValueError(f"epoch {epoch} has {n} items, but epoch_size says {sizes[epoch]}.")
        steps = -(-n // batch_size)
        capacity = -(-steps // 64) * 64 * batch_size  # few distinct shapes: few compilations
        arrays = text.pad_batch(arrays, capacity)
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
          if progress:  # the mean cost per item so far in this epoch
            bar.set_postfix(
              loss=f"{float(jnp.sum(carry[2])) / min(n, stop * batch_size):.4g}", refresh=False
            )
          bar.update(stop - offset)
          step += stop - offset
          offset = stop
          if offset == steps:
            if epoch_loss is None:
              losses[epoch] = float(carry[2]) / n
            else:
              losses[epoch] = float(epoch_loss(carry[2][:steps], n))
            carry = (carry[0], carry[1], jnp.zeros_like(carry[2]))
            epoch, offset, done = epoch + 1, 0, True
          if ckpt is not None:
            state = _state(carry, losses, epoch, offset, step)
            ckpt.save(step, state, force=epoch == epochs)
  finally:
    if ckpt is not None:
      ckpt.close()
  return TrainResult(carry[0], losses, step, seconds, steps_run)


def _state(carry: tuple, losses: np.ndarray, epoch: int, offset: int, step: int) -> dict:
  """What a checkpoint holds: the carry of the steps, the epochs' losses and the position."""
  position = {k: jnp.asarray(v, jnp.int32) for k, v in (("epoch", epoch), ("offset", offset),
              ("step", step))}  # fmt: skip
  return {"params": carry[0], "opt_state": carry[1], "loss_sum": carry[2],
          "epoch_losses": jnp.asarray(losses), **position}  # fmt: skip


def _tables(params: Params) -> Params:
  return {k: params[k] for k in ("word", "context")}


def best_learning_rate(scores: Mapping[float, float | tuple[float, ...]]) -> float:
  """The rate with the highest score: the examples' one best-rate rule.

  A score is a number or a tuple compared in order (e.g. precision, then AUC). A score
  with a non-finite entry (a diverged run) ranks below every finite one; ties go to the
  first rate.
  """

  def rank(lr: float) -> tuple[float, ...]:
    score = scores[lr] if isinstance(scores[lr], tuple) else (scores[lr],)
    return score if all(map(math.isfinite, score)) else (-math.inf,) * len(score)

  return max(scores, key=rank)


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
  start: Callable[[str, Params], Params] | None = None,
  checkpoint_dir: str | None = None,
  checkpoint_every: int = 1000,
  checkpoint_settings: Mapping[str, Any] | None = None,
  resume: bool = False,
  progress: bool = False,
  save_vectors: str | None = None,
) -> list[dict[str, Any]]:
  """Trains each optimizer at its rates and returns the table's rows (``random init`` first).

  ``train(tx, init, **options)`` runs from ``start(name, params0)`` (``options``:
  :func:`train_loop`'s checkpoint and progress ones). The lowest finite ``final_loss``
  wins; its ``vectors`` are evaluated, and it trains again from ``params0`` with the
  ``'word'`` and ``'context'`` tables rotated, for the rotation drift.
  """
  dim = int(params0["word"].shape[1])
  rotation = rot.random_orthogonal(dim, rotation_seed)
  rotated0 = {**params0, **rot.rotate(_tables(params0), rotation)}
  runs = sum(len(learning_rates[name]) + 1 for name in optimizers)
  done = [0]

  def run(name: str, lr: float, init: Params, tag: str) -> TrainResult:
    directory, settings = None, None
    if checkpoint_dir is not None:
      directory = os.path.join(checkpoint_dir, name, tag)
      settings = {**(checkpoint_settings or {}), "optimizer": name, "learning_rate": lr}
    done[0] += 1
    return train(
      make_optimizer(name, lr, preset=preset),
      init if start is None else start(name, init),
      checkpoint_dir=directory,
      checkpoint_every=checkpoint_every,
      checkpoint_settings=settings,
      resume=resume,
      progress=progress,
      desc=f"{name} lr={lr:g}{' (W R)' if tag == 'rotated' else ''}",
      run=(done[0], runs),
    )

  baseline = word_eval.evaluate(vectors(params0), words)
  first = {"optimizer": "random init", "learning_rate": None, "loss": final_loss(params0, None)}
  none = dict.fromkeys(("state_bytes", "steps_per_second", "drift"))
  rows = [{**first, **baseline, **none, "sweep": {}, "epoch_losses": []}]
  for name in optimizers:
    results = {lr: run(name, lr, params0, f"lr={lr:g}") for lr in learning_rates[name]}
    sweep = {lr: final_loss(r.params, r) for lr, r in results.items()}
    sweep = {lr: loss if math.isfinite(loss) else math.inf for lr, loss in sweep.items()}
    best = best_learning_rate({lr: -loss for lr, loss in sweep.items()})
    result = results[best]
    diverged = not math.isfinite(sweep[best])
    tx = make_optimizer(name, best, preset=preset)
    row: dict[str, Any] = {
      "optimizer": name,
      "learning_rate": best,
      "loss": sweep[best] if not diverged else math.nan,
      "state_bytes": ob.state_bytes(jax.eval_shape(tx.init, params0)),
      "steps_per_second": result.steps_per_second,
      "sweep": {f"{lr:g}": loss for lr, loss in sweep.items()},
      "epoch_losses": [float(x) for x in result.epoch_losses],
    }
    if diverged:
      row.update({k: math.nan for k in baseline}, drift=math.nan)
    else:
      trained = vectors(result.params)
      row.update(word_eval.evaluate(trained, words))
      if save_vectors is not None:
        report.save_word2vec(os.path.join(save_vectors, f"{name}.txt"), words, trained)
      rotated = run(name, best, rotated0, "rotated")
      row["drift"] = rot.relative_drift(_tables(result.params), _tables(rotated.params), rotation)
    rows.append(row)
  return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The GloVe and SGNS table, in markdown (rows of :func:`sweep_optimizers`)."""
  header = ["optimizer", "best lr", "final loss", "analogy % (sem / syn)", "WordSim", "SimLex"]
  header += ["state bytes", "steps/s", "rotation drift"]

  def pct(value: float) -> str:
    return format_number(100 * value, ".1f")

  cells = [
    [
      r["optimizer"],
      format_number(r["learning_rate"], "g"),
      format_number(r["loss"], ".5f", missing="diverged"),  # only a loss diverges
      f"{pct(r['analogy_total'])} ({pct(r['analogy_semantic'])} / {pct(r['analogy_syntactic'])})",
      format_number(r["wordsim353"], ".3f"),
      format_number(r["simlex999"], ".3f"),
      format_number(r["state_bytes"], ","),
      format_number(r["steps_per_second"], ".0f"),
      format_number(r["drift"], ".1e"),
    ]
    for r in rows
  ]
  return markdown_table(header, "l" + "r" * 8, cells)
