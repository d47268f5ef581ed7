"""The training loop, the learning-rate sweep and the table of GloVe and SGNS.

:func:`train_loop` runs any per-batch cost with any optax transformation in jitted
chunks of steps, with orbax checkpoints, exact resumption and the examples' progress
convention: one bar per run with the whole run's steps as its fixed total, "run k of n"
in its description and the current loss as its postfix. :func:`sweep_optimizers` tries
each optimizer at a few learning rates, keeps the best, evaluates its vectors and
measures its rotation drift; :func:`format_table` prints the rows.
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
from optax_blockada.examples import rotation as rot
from optax_blockada.examples import word_eval
from optax_blockada.examples._checkpoint import Checkpointer
from optax_blockada.examples._cli import check_int
from optax_blockada.examples.glove_model import Params
from optax_blockada.examples.optimizers import make_optimizer
from optax_blockada.examples.report import (
  format_number,
  markdown_table,
  progress_bar,
  save_word2vec,
)

__all__ = ["TrainResult", "format_table", "sweep_optimizers", "train_loop"]


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
) -> TrainResult:
  """Minibatch training with a jitted step, checkpoints and exact resumption.

  ``epoch_data(epoch)`` returns ``(arrays, n)``: host arrays of ``n`` items in training
  order along axis 0; ``epoch_size`` gives each epoch's ``n`` up front (an int, or
  ``epoch -> n``), for the progress bar's total. Step ``s`` of an epoch trains on items
  ``[s B, (s + 1) B)`` (the last batch padded with zeros, which must cost nothing) and
  minimises ``cost(params, batch, key) -> summed cost`` with ``key = fold_in(key(seed),
  global step)``, in compiled chunks of ``chunk_steps``. Data and keys depend only on the
  seed, the epoch and the step, so a run resumed (``resume``) from its newest orbax
  checkpoint in ``checkpoint_dir`` (written every ``checkpoint_every`` steps and at the
  end) equals the uninterrupted run; a resume with other ``checkpoint_settings`` is
  refused. With ``progress``, the bar (:func:`report.progress_bar`) reads ``desc (run k of
  n)`` for ``run=(k, n)``. ``epoch_losses[e]`` of the result is epoch ``e``'s cost over ``n``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from optax_blockada.examples.training import train_loop
    >>> data = lambda epoch: ({"x": np.arange(10.0, dtype=np.float32)}, 10)
    >>> cost = lambda p, b, key: jnp.sum(jnp.where(b["x"] > 0, (p - b["x"]) ** 2, 0.0))
    >>> r = train_loop(cost, jnp.zeros(()), optax.sgd(0.01), data, epochs=30, batch_size=4,
    ...                epoch_size=10)
    >>> r.steps, round(float(r.params), 2)  # the mean of 1..9
    (90, 5.0)
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
      return optax.apply_updates(params, updates), opt_state, loss_sum + value

    return jax.lax.fori_loop(start, stop, body, carry)

  jitted = jax.jit(chunk_fn, donate_argnums=0)
  compiled: dict[Any, Any] = {}

  params = jax.tree.map(jnp.array, params)  # a copy: the chunks donate their inputs
  carry = (params, tx.init(params), jnp.zeros((), jnp.float32))
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
    with progress_bar(desc, *run, total, enabled=progress) as bar:
      bar.update(step)  # a resumed run starts where it stopped
      while epoch < epochs:
        arrays, n = epoch_data(epoch)
        if n != sizes[epoch]:
          raise ValueError(f"epoch {epoch} has {n} items, but epoch_size says {sizes[epoch]}.")
        steps = -(-n // batch_size)
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
          if progress:  # the mean cost per item so far in this epoch
            bar.set_postfix(
              loss=f"{float(carry[2]) / min(n, stop * batch_size):.4g}", refresh=False
            )
          bar.update(stop - offset)
          step += stop - offset
          offset = stop
          if offset == steps:
            losses[epoch] = float(carry[2]) / n
            carry = (carry[0], carry[1], jnp.zeros((), jnp.float32))
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
  start: Callable[[str, Params], Params] | None = None,
  checkpoint_dir: str | None = None,
  checkpoint_every: int = 1000,
  checkpoint_settings: Mapping[str, Any] | None = None,
  resume: bool = False,
  progress: bool = False,
  save_vectors: str | None = None,
) -> list[dict[str, Any]]:
  """The learning-rate sweep and the table rows, for any model with word/context tables.

  Each optimizer (a name for :func:`make_optimizer`, ``'preset'`` standing for
  ``PRESETS[preset]``) trains with ``train(tx, init, **options)`` at each of its
  ``learning_rates`` from ``start(name, params0)`` (default: ``params0``); ``options`` are
  :func:`train_loop`'s checkpoint and progress options (run ``r`` of optimizer ``o``
  checkpoints in ``checkpoint_dir/o/r`` with ``checkpoint_settings`` plus its optimizer and
  rate). The rate with the lowest finite ``final_loss(params, result)`` wins; its
  ``vectors(params)`` are evaluated (:func:`word_eval.evaluate`; saved to
  ``save_vectors/<optimizer>.txt`` if given) and it trains again from ``params0``'s
  ``'word'`` and ``'context'`` rotated by ``random_orthogonal(d, rotation_seed)`` to
  measure the rotation drift (:func:`rotation.relative_drift`). Returns a ``random init``
  row, then one row per optimizer (see :func:`format_table`).

  Example:
    >>> from optax_blockada.examples.training import sweep_optimizers
    >>> callable(sweep_optimizers)  # see glove.compare_optimizers for a run
    True
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
    results = {lr: run(name, lr, params0, f"lr={lr:g}") for lr in learning_rates[name]}
    sweep = {lr: final_loss(r.params, r) for lr, r in results.items()}
    sweep = {lr: loss if math.isfinite(loss) else math.inf for lr, loss in sweep.items()}
    best = min(sweep, key=sweep.get)
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
      row.update(word_eval.evaluate(vectors(result.params), words))
      if save_vectors is not None:
        save_word2vec(os.path.join(save_vectors, f"{name}.txt"), words, vectors(result.params))
      rotated = run(name, best, rotated0, "rotated")
      row["drift"] = rot.relative_drift(_tables(result.params), _tables(rotated.params), rotation)
    rows.append(row)
  return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The GloVe and SGNS table, in markdown (rows of :func:`sweep_optimizers`).

  Example:
    >>> from optax_blockada.examples.training import format_table
    >>> row = {"optimizer": "rowwise", "learning_rate": 0.1, "loss": 0.02,
    ...        "analogy_total": 0.05, "analogy_semantic": 0.1, "analogy_syntactic": 0.02,
    ...        "wordsim353": 0.3, "simlex999": 0.1, "state_bytes": 4000,
    ...        "steps_per_second": 100.0, "drift": 1e-7}
    >>> print(format_table([row]).splitlines()[-1])
    | rowwise | 0.1 | 0.02000 | 5.0 (10.0 / 2.0) | 0.300 | 0.100 | 4,000 | 100 | 1.0e-07 |
  """
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
