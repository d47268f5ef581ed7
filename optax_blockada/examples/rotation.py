"""Rotation experiment: diagonal Adagrad depends on the basis, row-wise Adagrad does not.

GloVe's predictions ``w_i . c_j + b_i + b~_j`` are unchanged when every row of both tables
is multiplied by the same orthogonal ``R``, so training from ``(W, C)`` and from
``(W R, C R)`` is one problem in two bases. Row-wise Adagrad's accumulator, fed by
``|g_i|^2``, does not see ``R``: the second run stays the rotated copy of the first (up to
float rounding). Diagonal Adagrad's, fed by ``g_ik^2``, does: the runs drift apart.

``python -m optax_blockada.examples.rotation [--steps 300] [--dim 32] [--json PATH]``
trains each optimizer of :func:`default_optimizers` from ``W`` and ``W R``, full batch, on
a planted co-occurrence matrix and prints both final losses, the drift
``||W_T - W'_T R^T||_F / ||W_T||_F`` (both tables) and the optimizer's state size.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_blockada as ob
from optax_blockada.examples._cli import check_int, int_at_least
from optax_blockada.examples.glove_model import ALPHA, X_MAX, Params, cost, init_params, weighting
from optax_blockada.examples.planted import planted_cooccurrence
from optax_blockada.examples.report import machine_facts, markdown_table, progress_bar, write_json

__all__ = [
  "ALPHA",
  "X_MAX",
  "default_optimizers",
  "drift_over_steps",
  "glove_loss",
  "init_params",
  "main",
  "random_orthogonal",
  "relative_drift",
  "rotate",
  "run_experiment",
  "train",
]

_PLANTED_RANK = 8
_HIGHEST = jax.lax.Precision.HIGHEST
_TABLES = ("word", "context")
_COLUMNS = (("loss", ".6f"), ("loss_rotated", ".6f"), ("drift", ".2e"), ("state_bytes", ","))


def _problem(params: Params, cooc: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Checks ``params`` and ``cooc``; returns ``(f(X), log X, nonzero pairs)`` in the params'
  dtype (zero where ``X = 0``), so float64 params under ``jax.enable_x64`` run in float64."""
  counts = np.asarray(cooc, dtype=np.float32)
  if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
    raise ValueError(f"cooc must be a square matrix, got shape {counts.shape}")
  if not np.all(np.isfinite(counts)) or np.any(counts < 0):
    raise ValueError("cooc must be finite and non-negative")
  if not np.any(counts):
    raise ValueError("cooc has no positive entry")
  missing = {"word", "context", "word_bias", "context_bias"} - set(params)
  if missing:
    raise ValueError(f"params is missing {sorted(missing)}")
  v, d = np.shape(params["word"])
  if np.shape(params["context"]) != (v, d):
    raise ValueError("params['word'] and params['context'] must have the same shape")
  if np.shape(params["word_bias"]) != (v,) or np.shape(params["context_bias"]) != (v,):
    raise ValueError(f"the biases must have shape ({v},)")
  if v != counts.shape[0]:
    raise ValueError(f"params have {v} rows but cooc is {counts.shape[0]} x {counts.shape[0]}")
  x = jnp.asarray(counts, jnp.float32)
  safe_x = jnp.where(x > 0, x, 1.0)  # log 1 = 0 where X = 0
  weight, log_cooc = jnp.where(x > 0, weighting(safe_x), 0.0), jnp.log(safe_x)
  dtype = jnp.result_type(params["word"])
  nonzero = jnp.asarray(np.count_nonzero(counts), jnp.float32)
  return weight.astype(dtype), log_cooc.astype(dtype), nonzero.astype(dtype)


def _glove_cost(params: Params, weight: jax.Array, log_cooc: jax.Array) -> jax.Array:
  """glove_model's :func:`cost` of the dense ``(V, V)`` prediction ``W C^T + b + b~^T``."""
  pred = jnp.matmul(params["word"], params["context"].T, precision=_HIGHEST)
  pred = pred + params["word_bias"][:, None] + params["context_bias"][None, :]
  return cost(pred, log_cooc, weight)


def glove_loss(params: Params, cooc: Any) -> jax.Array:
  r"""GloVe's cost per nonzero pair, as glove.c reports it, computed densely (small V).

  :math:`\frac{1}{|\{X_{ij} > 0\}|} \sum_{X_{ij} > 0} \tfrac12 f(X_{ij})
  (w_i^\top c_j + b_i + \tilde b_j - \log X_{ij})^2` with glove_model's ``f``; ``cooc``
  holds the ``(V, V)`` counts. A scalar in the params' dtype.
  """
  weight, log_cooc, nonzero = _problem(params, cooc)
  return _glove_cost(params, weight, log_cooc) / nonzero


def random_orthogonal(dim: int, seed: int = 0) -> jax.Array:
  """A Haar-random orthogonal float32 ``(d, d)`` matrix: sign-fixed QR of a Gaussian, in
  float64 numpy (``numpy.random.default_rng(seed)``)."""
  dim = check_int("dim", dim, 1)
  seed = check_int("seed", seed, 0)
  q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
  signs = np.where(np.diag(r) < 0, -1.0, 1.0)  # QR alone is not unique, nor Haar
  return jnp.asarray(q * signs[None, :], jnp.float32)


def rotate(params: Params, rotation: jax.Array) -> Params:
  """``{'word': W R, 'context': C R, ...}``: the same predictions; biases untouched."""
  rotation = jnp.asarray(rotation, jnp.float32)
  return {**params, **{k: jnp.matmul(params[k], rotation, precision=_HIGHEST) for k in _TABLES}}


def relative_drift(params: Params, rotated_params: Params, rotation: jax.Array) -> float:
  """``||W - W' R^T||_F / ||W||_F`` over both tables; 0 for an equivariant optimizer."""
  return float(_drift(params, rotated_params, jnp.asarray(rotation, jnp.float32)))


def _drift(params: Params, rotated_params: Params, rotation: jax.Array) -> jax.Array:
  diff_sq = jnp.zeros((), jnp.float32)
  norm_sq = jnp.zeros((), jnp.float32)
  for name in _TABLES:
    back = jnp.matmul(rotated_params[name], rotation.T, precision=_HIGHEST)
    diff_sq = diff_sq + jnp.sum((params[name] - back) ** 2)
    norm_sq = norm_sq + jnp.sum(params[name] ** 2)
  return jnp.sqrt(diff_sq) / jnp.sqrt(norm_sq)


def _step_fn(tx: optax.GradientTransformation, params: Params, cooc: Any):
  """One full-batch step ``(params, state) -> ((params, state), loss before it)``.

  The gradient is that of glove.c's summed cost (each pair's own gradient, as its
  per-pair updates); the loss is :func:`glove_loss`. Dividing the objective by ~1e5 pairs
  would make every gradient negligible next to Adagrad's initial accumulator."""
  weight, log_cooc, nonzero = _problem(params, cooc)

  def step(carry, _=None):
    p, state = carry
    total, grads = jax.value_and_grad(_glove_cost)(p, weight, log_cooc)
    updates, state = tx.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), total / nonzero

  return step, lambda p: _glove_cost(p, weight, log_cooc) / nonzero


def train(
  tx: optax.GradientTransformation, params: Params, cooc: Any, steps: int, bar: Any = None
) -> tuple[Params, jax.Array]:
  """``steps`` full-batch steps from ``params``: a jitted ``jax.lax.scan`` in up to 10 chunks,
  each advancing the progress ``bar`` if given. Returns ``(final_params, losses)``,
  ``losses[t]`` the :func:`glove_loss` before step ``t``, in the params' dtype."""
  steps = check_int("steps", steps, 1)
  step, _ = _step_fn(tx, params, cooc)

  @functools.partial(jax.jit, static_argnums=2)
  def run(p, state, length):
    (p, state), losses = jax.lax.scan(step, (p, state), None, length=length)
    return p, state, losses

  chunk = -(-steps // 10)
  state, losses = jax.jit(tx.init)(params), []
  for start in range(0, steps, chunk):
    params, state, out = run(params, state, min(chunk, steps - start))
    losses.append(out)
    if bar is not None:
      bar.set_postfix(loss=f"{float(out[-1]):.6f}")
      bar.update(len(out))
  return params, jnp.concatenate(losses)


def drift_over_steps(
  tx: optax.GradientTransformation, params: Params, cooc: Any, rotation: jax.Array, steps: int
) -> dict[str, np.ndarray]:
  """Trains from ``params`` and from ``rotate(params, rotation)`` side by side (one scan):
  float64 arrays ``step``, ``drift``, ``loss`` and ``loss_rotated``, entry ``t`` after ``t``
  of the ``steps`` steps."""
  steps = check_int("steps", steps, 1)
  step, loss = _step_fn(tx, params, cooc)
  dim = np.shape(params["word"])[1]
  rotation = jnp.asarray(rotation, jnp.float32)
  if rotation.shape != (dim, dim):
    raise ValueError(f"rotation must have shape ({dim}, {dim}), got {rotation.shape}")

  def both(carry, _):  # each run's (params, state), from W and from W R
    run_w, run_wr = carry
    drift = _drift(run_w[0], run_wr[0], rotation)
    (run_w, loss_w), (run_wr, loss_wr) = step(run_w), step(run_wr)
    return (run_w, run_wr), (drift, loss_w, loss_wr)

  @jax.jit
  def run(p, q):
    carry = ((p, tx.init(p)), (q, tx.init(q)))
    ((p, _), (q, _)), history = jax.lax.scan(both, carry, None, length=steps)
    final = (_drift(p, q, rotation), loss(p), loss(q))
    return tuple(jnp.append(h, f) for h, f in zip(history, final, strict=True))

  out = [np.asarray(a, np.float64) for a in run(params, rotate(params, rotation))]
  names = ("drift", "loss", "loss_rotated")
  return {"step": np.arange(steps + 1, dtype=np.float64), **dict(zip(names, out, strict=True))}


def default_optimizers(dim: int) -> dict[str, optax.GradientTransformation]:
  """The optimizers of the command-line experiment, by display name: all train the default
  problem (loss ~1.1 -> 0.02-0.04 in 300 steps); GloVe's preset after ``optax.clip(1.0)``."""
  dim = check_int("dim", dim, 1)
  k, lr_d = max(dim // 4, 1), 0.1 * math.sqrt(dim)
  return {
    "optax.adagrad(0.1)": optax.adagrad(0.1),
    "diagonal_adagrad(0.1)": ob.diagonal_adagrad(0.1),
    "presets.torch_adagrad(0.1)": ob.presets.torch_adagrad(learning_rate=0.1),
    # glove.c divides by the *old* accumulator and starts bias accumulators at 1 without
    # eta, so its first bias step is the raw gradient: here a sum over ~240 pairs (~300),
    # which diverges for any eta. Clipping to [-1, 1] first (glove.c clips at 100) trains.
    "clip(1) + presets.glove_adagrad(0.05)": optax.chain(
      optax.clip(1.0), ob.presets.glove_adagrad(eta=0.05)
    ),
    "rowwise_adagrad(0.1, mean)": ob.rowwise_adagrad(0.1, reduction="mean"),
    # sum = d * mean: rate * sqrt(d), accumulator and eps * d give the mean variant's table
    # updates; the biases (rows of one element) then take other steps.
    "rowwise_adagrad(0.1*sqrt(d), sum)": ob.rowwise_adagrad(
      lr_d, initial_accumulator_value=0.1 * dim, eps=1e-7 * dim, reduction="sum"
    ),
    "presets.fbgemm_rowwise_adagrad(0.1)": ob.presets.fbgemm_rowwise_adagrad(learning_rate=0.1),
    # Block Adagrad accumulates sums of squares, so its rate scales as 0.1 * sqrt(block).
    "block_adagrad(0.1*sqrt(d), rows)": ob.block_adagrad(lr_d),
    "block_adagrad(0.1*sqrt(d), shared)": ob.block_adagrad(lr_d, structure="shared"),
    "block_adagrad(0.1*sqrt(d), rows_x_shared)": ob.block_adagrad(lr_d, structure="rows_x_shared"),
    f"block_adagrad(0.1*sqrt(k), blocks, k={k})": ob.block_adagrad(
      0.1 * math.sqrt(k), structure="blocks", block_size=k
    ),
  }


def run_experiment(
  optimizers: Mapping[str, optax.GradientTransformation],
  *,
  vocab_size: int = 500,
  dim: int = 32,
  steps: int = 300,
  seed: int = 0,
  progress: bool = False,
) -> list[dict[str, Any]]:
  """Trains each optimizer from ``W`` and from ``W R`` (:func:`train`) and measures the drift.

  Rotation ``random_orthogonal(dim, seed + 1)``. One dict per optimizer: ``name``, ``loss``
  and ``loss_rotated`` (from ``W`` and ``W R``), ``drift``, ``state_bytes``, ``seconds``.
  """
  cooc = planted_cooccurrence(vocab_size, _PLANTED_RANK, seed=seed)
  params = init_params(vocab_size, dim, seed)
  rotation = random_orthogonal(dim, seed + 1)
  starts = {"W": params, "W R": rotate(params, rotation)}
  results, runs = [], 2 * len(optimizers)
  for n, (name, tx) in enumerate(optimizers.items()):
    start, final = time.perf_counter(), {}
    for i, (basis, init) in enumerate(starts.items()):
      what = f"{name} from {basis}"
      with progress_bar(what, 2 * n + i + 1, runs, steps, enabled=progress) as bar:
        final[basis] = train(tx, init, cooc, steps, bar)[0]
    jax.block_until_ready(final)
    seconds = time.perf_counter() - start
    results.append(
      {
        "name": name,
        "loss": float(glove_loss(final["W"], cooc)),
        "loss_rotated": float(glove_loss(final["W R"], cooc)),
        "drift": relative_drift(final["W"], final["W R"], rotation),
        "state_bytes": int(ob.state_bytes(tx.init(params))),
        "seconds": seconds,
      }
    )
  return results


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m optax_blockada.examples.rotation",
    description="Train a GloVe-style model from W and from a rotated W R with several "
    "Adagrad variants and report how far the two runs drift apart.",
  )
  add = parser.add_argument
  for flag, least, default, text in (
    ("--steps", 1, 300, "full-batch steps per run"),
    ("--dim", 1, 32, "embedding dimension d"),
    ("--vocab-size", 2, 500, "vocabulary size V"),
    ("--seed", 0, 0, "seed for data, initialisation and rotation"),
  ):
    add(flag, type=int_at_least(least), default=default, help=f"{text} (default: {default})")
  add("--json", metavar="PATH", help="also write the results and settings to this JSON file")
  add("--no-progress", action="store_true", help="no progress bars")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns 0 (argparse exits with 2 on bad arguments)."""
  args = _parser().parse_args(argv)
  cooc = planted_cooccurrence(args.vocab_size, _PLANTED_RANK, seed=args.seed)
  nonzero = int(np.count_nonzero(cooc))
  settings = {k: getattr(args, k) for k in ("steps", "dim", "vocab_size", "seed")}
  start = time.perf_counter()
  results = run_experiment(default_optimizers(args.dim), **settings, progress=not args.no_progress)
  seconds = time.perf_counter() - start
  print(
    f"GloVe-style model, V={args.vocab_size}, d={args.dim}, {args.steps} full-batch steps, "
    f"seed {args.seed}; loss = glove.c cost per nonzero pair ({nonzero} pairs); "
    f"jax {jax.__version__} on {jax.default_backend()}, {seconds:.1f} s.\n"
  )
  cells = [[r["name"], *(format(r[k], f) for k, f in _COLUMNS)] for r in results]
  header = ["optimizer", "loss (W)", "loss (W R)", "drift", "state bytes"]
  print(markdown_table(header, "lrrrr", cells) + "\n")
  print(
    "drift = ||W_T - W'_T R^T||_F / ||W_T||_F over both tables, where W' was trained from "
    "W R: ~0 for row-wise Adagrad (rotation-equivariant), large for diagonal Adagrad "
    "(basis-dependent)."
  )
  if args.json is not None:
    settings |= {"planted_rank": _PLANTED_RANK, "nonzero_pairs": nonzero}
    settings |= {"x_max": X_MAX, "alpha": ALPHA}
    write_json(args.json, machine_facts(settings=settings, seconds=seconds, results=results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
