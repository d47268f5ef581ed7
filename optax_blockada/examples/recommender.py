"""Trains the LightFM-style recommender with each Adagrad variant and compares them.

The model and its losses are in :mod:`~optax_blockada.examples.recommender_model`, the data
in :mod:`~optax_blockada.examples.recommender_data` and
:mod:`~optax_blockada.examples.movielens`, the metrics in
:mod:`~optax_blockada.examples.ranking`; the loop is GloVe's and SGNS's
(:func:`~optax_blockada.examples.training.train_loop`). Where LightFM steps after every
example (with Adagrad, an accumulator grows by :math:`g_p^2 + g_n^2` over the positive's and
the negative's steps), here one optax step takes the gradient of a minibatch's *summed* loss.

Checked against published numbers on MovieLens-100K (d=32, 30 epochs, LightFM's Adagrad at
lr 0.05, batch 256, indicator features; single runs): BPR with uniform negatives P@10
0.131 / AUC 0.931 (BPR-MF in the project's notes: 0.124 / 0.934); BPR with LightFM's
popularity-weighted negatives 0.105 / 0.865 (LightFM's MovieLens notebook: 0.10 / 0.86);
WARP 0.137 / 0.934 (notebook: 0.11 / 0.90, on its own split). Run the comparison with
``python -m optax_blockada.examples.recommender`` (``--help`` lists the options); it trains
on MovieLens-100K when available, else says so and uses planted data.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_blockada as ob
from optax_blockada.examples import movielens
from optax_blockada.examples._checkpoint import CheckpointError, checksums
from optax_blockada.examples._cli import check_int, float_in, int_at_least
from optax_blockada.examples.optimizers import OPTIMIZER_NAMES, make_optimizer
from optax_blockada.examples.ranking import evaluate, ranking_metrics
from optax_blockada.examples.recommender_data import RecommenderData, planted_ratings, prepare_data
from optax_blockada.examples.recommender_model import LightFM, bpr_loss, sample_epoch, sampled_loss
from optax_blockada.examples.report import machine_facts, markdown_table, write_json
from optax_blockada.examples.training import TrainResult, best_learning_rate, train_loop

# Re-exported for colabs/05_recommender: LightFM, bpr_loss, prepare_data, ranking_metrics.
__all__ = [
  "DEFAULT_LEARNING_RATES",
  "LOSSES",
  "LightFM",
  "TrainResult",
  "bpr_loss",
  "main",
  "prepare_data",
  "ranking_metrics",
  "run_comparison",
  "table",
  "train",
]

LOSSES = ("bpr", "warp")
DEFAULT_LEARNING_RATES = (0.003, 0.01, 0.03, 0.1)  # --quick: 0.03 and 0.1
_QUICK_LEARNING_RATES = (0.03, 0.1)


@functools.partial(jax.jit, static_argnums=1)
def _mean_loss(costs: jax.Array, n: int) -> jax.Array:
  """An epoch's loss per positive, from its steps' summed costs (one jitted sum)."""
  return jnp.sum(costs) / n


def train(
  model: LightFM,
  tx: optax.GradientTransformation,
  positives: tuple[np.ndarray, np.ndarray],
  *,
  loss: str = "bpr",
  epochs: int = 30,
  batch_size: int = 256,
  max_sampled: int = 10,
  negatives: str | None = None,
  seed: int = 0,
  tag: str = "",
  **kwargs: Any,
) -> TrainResult:
  """Trains ``model`` in place on positive ``(user, item)`` pairs with ``tx``.

  Every epoch visits the positives in a shuffled order, one ``tx`` step per minibatch on the
  summed ``loss`` (``'bpr'`` or ``'warp'``), each example with ``max_sampled`` candidate
  ``negatives`` (``None``: LightFM's choice for the loss; see
  :func:`~optax_blockada.examples.recommender_model.sample_epoch`). ``kwargs`` go to
  :func:`~optax_blockada.examples.training.train_loop` (``checkpoint_dir``,
  ``checkpoint_every`` steps, ``resume``, ``progress``, ``run``); a resume with another
  ``tag``, other data or settings raises ``SettingsMismatch``.
  """
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
  negatives = negatives or ("popularity" if loss == "bpr" else "uniform")
  if negatives not in ("popularity", "uniform"):
    raise ValueError(f"negatives must be 'popularity' or 'uniform', got {negatives!r}.")
  epochs, batch_size = check_int("epochs", epochs, 1), check_int("batch_size", batch_size, 1)
  max_sampled, seed = check_int("max_sampled", max_sampled, 1), check_int("seed", seed, 0)
  user, item = (np.asarray(a, np.int32) for a in positives)
  n, n_users, n_items = len(user), model.n_users, model.n_items
  if user.min() < 0 or user.max() >= n_users or item.min() < 0 or item.max() >= n_items:
    raise ValueError(
      f"positives must index the model's {n_users} users and {n_items} items, got users in "
      f"[{user.min()}, {user.max()}] and items in [{item.min()}, {item.max()}]."
    )
  if kwargs.get("resume") and kwargs.get("checkpoint_dir") is None:
    raise ValueError("resume=True needs a checkpoint_dir.")
  if n_users * n_items >= 2**31:  # the step looks (user, item) pairs up as int32 keys
    raise ValueError(f"n_users * n_items = {n_users * n_items} is too large for int32 keys.")

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  keys = jnp.asarray(np.unique(user.astype(np.int64) * n_items + item).astype(np.int32))

  def cost(params, batch, key):  # the negatives come from sample_epoch, not from key
    model = nnx.merge(graphdef, params, rest)
    per_example = sampled_loss(model, batch["user"], batch["item"], batch["candidates"], keys, loss)
    return jnp.sum(batch["weight"] * per_example)  # the padding has weight 0

  def epoch_data(epoch):
    order, candidates = sample_epoch(seed, epoch, item, n_items, max_sampled, negatives)
    weight = np.ones(n, np.float32)
    return {"user": user[order], "item": item[order], "candidates": candidates, "weight": weight}, n

  sizes = {"epochs": epochs, "batch_size": batch_size, "seed": seed}
  settings = {**sizes, "loss": loss, "max_sampled": max_sampled, "negatives": negatives, "tag": tag}
  settings["dim"] = int(model.user_embedding.shape[1])
  settings["data"] = checksums([user, item, jax.tree.leaves(nnx.to_pure_dict(rest))])
  desc = f"{loss} {tag}".strip()
  loop = {"epoch_size": n, "checkpoint_settings": settings, "desc": desc, "epoch_loss": _mean_loss}
  result = train_loop(cost, nnx.to_pure_dict(params), tx, epoch_data, **sizes, **loop, **kwargs)
  nnx.update(model, nnx.State(result.params))
  return result


def run_comparison(
  data: RecommenderData,
  *,
  optimizers: Sequence[str] | None = None,
  losses: Sequence[str] = LOSSES,
  learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES,
  epochs: int = 30,
  dim: int = 32,
  batch_size: int = 256,
  k: int = 10,
  bpr_negatives: str = "popularity",
  seed: int = 0,
  validate: bool = True,
  checkpoint_dir: str | os.PathLike | None = None,
  checkpoint_every: int = 1000,
  resume: bool = False,
  progress: bool = False,
) -> list[dict[str, Any]]:
  """Trains every optimizer with every loss, each at its best learning rate.

  For each ``(loss, optimizer)``: train on ``data.fit`` at each rate and measure P@k on
  ``data.validation`` (ties broken by AUC; non-finite scores rank last); then train on
  ``data.train`` at the best rate and evaluate on ``data.test``. Every run starts from
  ``nnx.Rngs(seed)`` and sees the same data order; ``validate=False`` (a single rate) skips
  the validation runs. BPR samples ``bpr_negatives``, WARP uniform ones. Each run checkpoints
  to ``checkpoint_dir/<loss>/<optimizer>/<validation|final>-lr<rate>``, if given.

  Returns one dict per ``(loss, optimizer)``: ``loss``, ``optimizer``, ``learning_rate``,
  ``validation`` (``{rate: {'precision', 'auc'}}``), test ``precision``, ``recall``, ``auc``,
  and of the final run ``train_loss`` (the last epoch's), ``train_losses`` (every epoch's),
  ``state_bytes`` and ``seconds`` (compilation included).
  """
  optimizers = tuple(OPTIMIZER_NAMES if optimizers is None else optimizers)
  if any(loss not in LOSSES for loss in losses):
    raise ValueError(f"losses must be names from {LOSSES}, got {losses!r}.")
  learning_rates = tuple(learning_rates)
  if not learning_rates:
    raise ValueError("learning_rates must not be empty.")
  for name in optimizers:
    for lr in learning_rates:
      make_optimizer(name, lr, preset="lightfm")  # checks the name and the rate
  if not validate and len(learning_rates) != 1:
    raise ValueError(f"validate=False needs exactly one learning rate, got {len(learning_rates)}.")
  n_runs = len(losses) * len(optimizers) * (len(learning_rates) * validate + 1)
  counter = iter(range(1, n_runs + 1))

  options = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "progress": progress}
  options |= {"checkpoint_every": checkpoint_every, "resume": resume}

  def run(loss, name, lr, kind, positives):
    model = LightFM(data.user_features, data.item_features, dim, rngs=nnx.Rngs(seed))
    if checkpoint_dir is not None:
      options["checkpoint_dir"] = pathlib.Path(checkpoint_dir, loss, name, f"{kind}-lr{lr:g}")
    tx, tag = make_optimizer(name, lr, preset="lightfm"), f"{name} lr={lr!r} {kind}"
    negatives = bpr_negatives if loss == "bpr" else "uniform"
    options["run"] = (next(counter), n_runs)
    tic = time.perf_counter()
    result = train(model, tx, positives, loss=loss, negatives=negatives, tag=tag, **options)
    return model, tx, result, time.perf_counter() - tic

  rows = []
  for loss in losses:
    for name in optimizers:
      validation = {}
      for lr in learning_rates if validate else ():
        m = evaluate(run(loss, name, lr, "validation", data.fit)[0], data.fit, data.validation, k=k)
        validation[lr] = {"precision": m["precision"], "auc": m["auc"]}
      scores = {lr: (v["precision"], v["auc"]) for lr, v in validation.items()}
      best = best_learning_rate(scores) if validate else learning_rates[0]
      model, tx, result, seconds = run(loss, name, best, "final", data.train)
      m = evaluate(model, data.train, data.test, k=k)
      row = {"loss": loss, "optimizer": name, "learning_rate": best, "validation": validation}
      row |= {key: m[key] for key in ("precision", "recall", "auc")}
      train_losses = result.epoch_losses.tolist()
      row |= {"train_loss": train_losses[-1], "train_losses": train_losses}
      row["state_bytes"] = ob.state_bytes(jax.eval_shape(tx.init, result.params))
      rows.append(row | {"seconds": seconds})
  return rows


def table(rows: Sequence[Mapping[str, Any]], k: int = 10) -> str:
  """The printed results table (markdown), one row per ``(loss, optimizer)``."""
  header = ["optimizer", "loss", "best lr", f"P@{k}", f"R@{k}", "AUC", "train loss"]
  cells = [
    [r["optimizer"], r["loss"].upper(), f"{r['learning_rate']:g}"]
    + [f"{r[key]:.4f}" for key in ("precision", "recall", "auc", "train_loss")]
    + [f"{r['state_bytes']:,}", f"{r['seconds']:.1f}"]
    for r in rows
  ]
  return markdown_table([*header, "state bytes", "seconds"], "llrrrrrrr", cells)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m optax_blockada.examples.recommender",
    description="Train a LightFM-style hybrid recommender on MovieLens-100K (or planted data) "
    "with each Adagrad variant at its best learning rate, and print P@k, R@k and AUC.",
  )
  default, positive = " (default: %(default)s)", int_at_least(1)
  source = parser.add_argument_group("data")
  where = source.add_mutually_exclusive_group()
  data = "u.data, RecBole's ml-100k.inter, or a folder holding either (default: the copy in "
  data += "an installed recbole wheel, else planted data)"
  where.add_argument("--data", metavar="PATH", help=data)
  where.add_argument("--download", metavar="DIR", help="download ml-100k.zip into DIR (Colab)")
  where.add_argument("--planted", action="store_true", help="planted data, even with MovieLens")
  features = "indicator: matrix factorisation; hybrid: plus age, gender, occupation and genres"
  source.add_argument(
    "--features", choices=("indicator", "hybrid"), default="indicator", help=features + default
  )
  add = parser.add_argument
  add("--loss", choices=(*LOSSES, "both"), default="both", help=default)
  names = f"optimizers to compare, from {', '.join(OPTIMIZER_NAMES)} (default: all)"
  add("--optimizers", nargs="+", choices=OPTIMIZER_NAMES, metavar="NAME", help=names)
  rates = [" ".join(map(str, r)) for r in (DEFAULT_LEARNING_RATES, _QUICK_LEARNING_RATES)]
  rates = f"learning rates tried per optimizer (default: {rates[0]}; --quick: {rates[1]})"
  rate = float_in(0, 10, label="a learning rate ")
  add("--learning-rates", nargs="+", type=rate, metavar="LR", help=rates)
  add("--epochs", type=positive, help="epochs per run (default: 30; --quick: 5)")
  add("--dim", type=positive, default=32, help="embedding dimension" + default)
  add("--batch-size", type=positive, default=256, help=default)
  add("--k", type=positive, default=10, help="cut-off of P@k and R@k" + default)
  negatives = "BPR's negatives: items of random training positives, as LightFM samples them, "
  negatives += "or uniform items, as classic BPR-MF (default: %(default)s); WARP's are uniform"
  add("--bpr-negatives", choices=("popularity", "uniform"), default="popularity", help=negatives)
  add("--seed", type=int_at_least(0), default=0, help=default)
  add("--quick", action="store_true", help="5 epochs, two learning rates")
  add("--no-progress", action="store_true", help="no progress bars")
  add("--json", metavar="PATH", help="also write the results to this JSON file")
  ckpt = parser.add_argument_group("checkpoints")
  ckpt.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoint every run here (orbax)")
  every = "optimizer steps (minibatches) between checkpoints" + default
  ckpt.add_argument("--checkpoint-every", type=positive, default=1000, metavar="N", help=every)
  ckpt.add_argument("--resume", action="store_true", help="continue the runs in --checkpoint-dir")
  return parser


def _load(args: argparse.Namespace, parser: argparse.ArgumentParser):
  planted = functools.partial(planted_ratings, n_users=943, n_items=1682, seed=args.seed)
  if args.planted:
    return planted()
  try:
    if args.download is not None:
      return movielens.load_movielens(movielens.download_movielens(args.download))
    return movielens.load_movielens(args.data)
  except FileNotFoundError as e:
    if args.data is not None or args.download is not None:
      parser.error(str(e))
    print(
      f"{e}\nFalling back to planted data (943 users, 1682 items, known low-rank "
      "structure); its numbers are not comparable with MovieLens results.",
      file=sys.stderr,
    )
    return planted()
  except (ValueError, OSError) as e:
    parser.error(str(e))


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns 0 (bad arguments or data exit with status 2)."""
  parser = _parser()
  args = parser.parse_args(argv)
  if args.json is not None and not pathlib.Path(args.json).resolve().parent.is_dir():
    parser.error(f"--json: the folder of {args.json!r} does not exist.")
  if args.resume and args.checkpoint_dir is None:
    parser.error("--resume needs --checkpoint-dir.")
  if args.resume and not any(pathlib.Path(args.checkpoint_dir).glob("*/*/*-lr*")):
    parser.error(f"--resume: no checkpoint in {args.checkpoint_dir!r}; run without --resume first.")
  rates = _QUICK_LEARNING_RATES if args.quick else DEFAULT_LEARNING_RATES
  settings = {
    "losses": list(LOSSES if args.loss == "both" else (args.loss,)),
    "optimizers": list(args.optimizers or OPTIMIZER_NAMES),
    "learning_rates": list(args.learning_rates or rates),
    "epochs": args.epochs or (5 if args.quick else 30),
    **{key: getattr(args, key) for key in ("dim", "batch_size", "k", "bpr_negatives", "seed")},
  }
  data = prepare_data(_load(args, parser), features=args.features, seed=args.seed)
  if args.k > data.n_items:
    parser.error(f"--k must be <= the number of items ({data.n_items}), got {args.k}.")
  print(
    f"Data: {data.source}: {data.n_users} users, {data.n_items} items, "
    f"{len(data.train[0])} training / {len(data.test[0])} test positives (ratings >= 4, "
    f"10 ratings per user held out, seed {args.seed}); {args.features} features."
  )
  start = time.perf_counter()
  try:
    options = {key: getattr(args, key) for key in ("checkpoint_dir", "checkpoint_every", "resume")}
    rows = run_comparison(data, **settings, **options, progress=not args.no_progress)
  except CheckpointError as e:
    print(f"error: --resume: {e}", file=sys.stderr)
    return 2
  seconds = time.perf_counter() - start
  print(
    f"LightFM-style model, d={args.dim}, {settings['epochs']} epochs, batch {args.batch_size}, "
    f"{args.bpr_negatives} BPR negatives; best learning rate of "
    f"{', '.join(map(str, settings['learning_rates']))} by validation P@{args.k}; "
    f"jax {jax.__version__} on {jax.default_backend()}, {seconds:.1f} s in all.\n"
  )
  print(table(rows, args.k))
  print(
    f"\nP@{args.k}, R@{args.k}, AUC: test set, training positives excluded, mean over users "
    "with a test positive. seconds: the final run at the best rate, compilation included."
  )
  if args.json is not None:
    for r in rows:  # JSON's keys are strings
      r["validation"] = {f"{lr:g}": v for lr, v in r["validation"].items()}
    settings = {"source": data.source, "features": args.features, **settings}
    write_json(args.json, machine_facts(settings=settings, seconds=seconds, results=rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
