"""Rotation experiment: diagonal Adagrad depends on the basis, row-wise Adagrad does not.

A GloVe-style model has two embedding tables, ``word`` and ``context``, whose
predictions ``w_i . c_j + b_i + b~_j`` are unchanged when every row of *both*
tables is multiplied by the same orthogonal matrix ``R``. Training from
``(W, C)`` and from ``(W R, C R)`` is therefore the same problem written in two
bases. An optimizer is *rotation-equivariant* if the second run stays exactly
the rotated copy of the first, ``W'_t = W_t R`` for all ``t``:

* row-wise Adagrad keeps one accumulator per row, fed by ``|g_i|^2``, which a
  rotation leaves unchanged, so it is equivariant (up to float rounding);
* diagonal Adagrad keeps one accumulator per coordinate, fed by ``g_ik^2``,
  which a rotation mixes, so the two runs drift apart.

Run it with::

    python -m optax_blockada.examples.rotation [--steps 300] [--dim 32]
        [--vocab-size 500] [--seed 0] [--json results.json]

It trains every optimizer of :func:`default_optimizers` twice, full batch, on a
planted co-occurrence matrix (:mod:`optax_blockada.examples.planted`) and prints
the final loss of both runs, their relative drift
``||W_T - W'_T R^T||_F / ||W_T||_F`` (both tables stacked) and the optimizer's
state size.
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

import optax_blockada as ob
from optax_blockada.examples._cli import check_int, int_at_least
from optax_blockada.examples.glove_model import ALPHA, X_MAX, Params, cost, init_params, weighting
from optax_blockada.examples.planted import planted_cooccurrence
from optax_blockada.examples.report import markdown_table, write_json

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


def _prepare(cooc: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns ``(weight, log_cooc, nonzero_pairs)`` for a dense count matrix."""
  counts = np.asarray(cooc, dtype=np.float32)
  if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
    raise ValueError(f"cooc must be a square matrix, got shape {counts.shape}")
  if not np.all(np.isfinite(counts)) or np.any(counts < 0):
    raise ValueError("cooc must be finite and non-negative")
  nonzero = int(np.count_nonzero(counts))
  if nonzero == 0:
    raise ValueError("cooc has no positive entry")
  x = jnp.asarray(counts, jnp.float32)
  mask = x > 0
  safe_x = jnp.where(mask, x, jnp.ones_like(x))
  weight = jnp.where(mask, weighting(safe_x), jnp.zeros_like(x))
  log_cooc = jnp.where(mask, jnp.log(safe_x), jnp.zeros_like(x))
  return weight, log_cooc, jnp.asarray(nonzero, jnp.float32)


def _glove_cost(params: Params, weight: jax.Array, log_cooc: jax.Array) -> jax.Array:
  """glove.c's total cost: sum of ``f(X_ij) (w_i.c_j + b_i + b~_j - log X_ij)^2 / 2``."""
  pred = jnp.matmul(params["word"], params["context"].T, precision=_HIGHEST)
  pred = pred + params["word_bias"][:, None] + params["context_bias"][None, :]
  return cost(pred, log_cooc, weight)


def _check_params(params: Mapping[str, Any], vocab_size: int | None = None) -> None:
  missing = {"word", "context", "word_bias", "context_bias"} - set(params)
  if missing:
    raise ValueError(f"params is missing {sorted(missing)}")
  v, d = np.shape(params["word"])
  if np.shape(params["context"]) != (v, d):
    raise ValueError("params['word'] and params['context'] must have the same shape")
  if np.shape(params["word_bias"]) != (v,) or np.shape(params["context_bias"]) != (v,):
    raise ValueError(f"the biases must have shape ({v},)")
  if vocab_size is not None and v != vocab_size:
    raise ValueError(f"params have {v} rows but cooc is {vocab_size} x {vocab_size}")


def glove_loss(params: Params, cooc: Any) -> jax.Array:
  r"""GloVe loss per nonzero co-occurrence pair, as glove.c computes and reports it.

  .. math::
      L = \frac{1}{|\{X_{ij} > 0\}|} \sum_{X_{ij} > 0} \tfrac12 f(X_{ij})
          (w_i^\top c_j + b_i + \tilde b_j - \log X_{ij})^2,
      \qquad f(x) = \min(1, (x / x_{max})^\alpha),

  with ``x_max = 10`` and ``alpha = 0.75``. Computed densely over the
  ``(V, V)`` matrix with a mask, so it is meant for small vocabularies.

  Args:
    params: ``{'word': (V, d), 'context': (V, d), 'word_bias': (V,),
      'context_bias': (V,)}`` float32 arrays.
    cooc: the ``(V, V)`` co-occurrence counts (non-negative, not all zero).

  Returns:
    A float32 scalar.

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples.rotation import glove_loss, init_params
    >>> params = init_params(vocab_size=3, dim=2, seed=0)
    >>> params = {**params, 'word': 0 * params['word']}  # predictions are 0
    >>> cooc = np.array([[0, 10, 1], [10, 0, 0], [1, 0, 0]], np.float32)
    >>> # pairs (0,1),(1,0): f=1, log 10; pairs (0,2),(2,0): log 1 = 0
    >>> print(f"{float(glove_loss(params, cooc)):.4f}")
    1.3255
  """
  weight, log_cooc, nonzero = _prepare(cooc)
  _check_params(params, weight.shape[0])
  return _glove_cost(params, weight, log_cooc) / nonzero


def random_orthogonal(dim: int, seed: int = 0) -> jax.Array:
  """A Haar-random orthogonal ``d x d`` matrix: QR of a seeded Gaussian, sign-fixed.

  The QR factorisation is done in float64 numpy (``numpy.random.default_rng(seed)``)
  and the result cast to float32, so ``R R^T = I`` to float32 precision.

  Args:
    dim: the size ``d``.
    seed: seed of the numpy generator.

  Returns:
    A float32 ``(d, d)`` orthogonal matrix (its determinant may be -1).

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples.rotation import random_orthogonal
    >>> r = np.asarray(random_orthogonal(4, seed=0))
    >>> r.shape, r.dtype, bool(np.allclose(r @ r.T, np.eye(4), atol=1e-6))
    ((4, 4), dtype('float32'), True)
  """
  dim = check_int("dim", dim, 1)
  seed = check_int("seed", seed, 0)
  gaussian = np.random.default_rng(seed).standard_normal((dim, dim))
  q, r = np.linalg.qr(gaussian)
  # Fix the signs so that the distribution is Haar (QR alone is not unique).
  signs = np.where(np.diag(r) < 0, -1.0, 1.0)
  return jnp.asarray(q * signs[None, :], jnp.float32)


def rotate(params: Params, rotation: jax.Array) -> Params:
  """Right-multiplies every row of both tables by ``rotation``; biases are untouched.

  Since ``(w_i R) . (c_j R) = w_i . c_j`` for orthogonal ``R``, the model's
  predictions and loss are unchanged.

  Args:
    params: GloVe parameters (see :func:`glove_loss`).
    rotation: a ``(d, d)`` orthogonal matrix.

  Returns:
    New parameters ``{'word': W R, 'context': C R, ...}``.

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples.rotation import init_params, random_orthogonal, rotate
    >>> params = init_params(vocab_size=5, dim=4)
    >>> rotated = rotate(params, random_orthogonal(4))
    >>> gram = lambda p: np.asarray(p['word'] @ p['context'].T)
    >>> bool(np.allclose(gram(params), gram(rotated), atol=1e-7))
    True
  """
  rotation = jnp.asarray(rotation, jnp.float32)
  out = dict(params)
  for name in _TABLES:
    out[name] = jnp.matmul(params[name], rotation, precision=_HIGHEST)
  return out


def relative_drift(params: Params, rotated_params: Params, rotation: jax.Array) -> float:
  """``||W - W' R^T||_F / ||W||_F`` over the word and context tables stacked.

  Args:
    params: parameters trained from ``W``.
    rotated_params: parameters trained from ``W R``.
    rotation: the orthogonal ``R``.

  Returns:
    The relative drift as a Python float; 0 for an equivariant optimizer.

  Example:
    >>> from optax_blockada.examples.rotation import (
    ...     init_params, random_orthogonal, relative_drift, rotate)
    >>> params, r = init_params(5, 4), random_orthogonal(4)
    >>> bool(relative_drift(params, rotate(params, r), r) < 1e-6)
    True
  """
  return float(_drift(params, rotated_params, jnp.asarray(rotation, jnp.float32)))


def _drift(params: Params, rotated_params: Params, rotation: jax.Array) -> jax.Array:
  """:func:`relative_drift` as a float32 JAX scalar (traceable)."""
  diff_sq = jnp.zeros((), jnp.float32)
  norm_sq = jnp.zeros((), jnp.float32)
  for name in _TABLES:
    back = jnp.matmul(rotated_params[name], rotation.T, precision=_HIGHEST)
    diff_sq = diff_sq + jnp.sum((params[name] - back) ** 2)
    norm_sq = norm_sq + jnp.sum(params[name] ** 2)
  return jnp.sqrt(diff_sq) / jnp.sqrt(norm_sq)


def train(
  tx: optax.GradientTransformation, params: Params, cooc: Any, steps: int
) -> tuple[Params, jax.Array]:
  """Full-batch training of the GloVe model, compiled as one ``jax.lax.scan``.

  The gradient is that of glove.c's *summed* cost (each nonzero pair
  contributes its own, un-normalised gradient, as in glove.c's per-pair
  updates); the recorded loss is that cost divided by the number of nonzero
  pairs, i.e. :func:`glove_loss`, which is also what glove.c prints. (Dividing
  the objective itself by ~10^5 pairs would make every gradient negligible
  next to Adagrad's initial accumulator, and nothing would train.)

  Args:
    tx: the optimizer; ``tx.update`` is always given ``params``.
    params: initial GloVe parameters (see :func:`glove_loss`).
    cooc: the ``(V, V)`` co-occurrence counts.
    steps: number of optimizer steps, at least 1.

  Returns:
    ``(final_params, losses)`` where ``losses[t]`` is :func:`glove_loss` at
    the parameters *before* step ``t`` (shape ``(steps,)``, in the params' dtype:
    float32, or float64 for float64 params under ``jax.enable_x64``).

  Example:
    >>> import optax
    >>> from optax_blockada.examples.planted import planted_cooccurrence
    >>> from optax_blockada.examples.rotation import glove_loss, init_params, train
    >>> cooc = planted_cooccurrence(vocab_size=20, rank=2)
    >>> params = init_params(vocab_size=20, dim=4)
    >>> final, losses = train(optax.adagrad(0.1), params, cooc, steps=3)
    >>> losses.shape, bool(glove_loss(final, cooc) < losses[0])
    ((3,), True)
  """
  steps = check_int("steps", steps, 1)
  weight, log_cooc, nonzero = _prepare(cooc)
  _check_params(params, weight.shape[0])
  # The data follows the params' dtype, so float64 params (under jax.enable_x64) train
  # in float64 throughout: the tests' reference for float32 rounding.
  dtype = jnp.result_type(params["word"])
  weight, log_cooc, nonzero = (a.astype(dtype) for a in (weight, log_cooc, nonzero))

  def step(carry, _):
    p, state = carry
    cost, grads = jax.value_and_grad(_glove_cost)(p, weight, log_cooc)
    updates, state = tx.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), cost / nonzero

  @jax.jit
  def run(p):
    (p, _), losses = jax.lax.scan(step, (p, tx.init(p)), None, length=steps)
    return p, losses

  return run(params)


def drift_over_steps(
  tx: optax.GradientTransformation,
  params: Params,
  cooc: Any,
  rotation: jax.Array,
  steps: int,
) -> dict[str, np.ndarray]:
  """Trains from ``W`` and from ``W R`` side by side and records the drift after every step.

  The two runs are :func:`train`'s full-batch steps, compiled together in one
  ``jax.lax.scan``: one starts from ``params``, the other from
  ``rotate(params, rotation)``, both with a fresh ``tx.init``. After each step
  the function records :func:`relative_drift` of the two runs' tables and the
  :func:`glove_loss` of each, so the growth of a basis dependence can be
  plotted (the final drift is what :func:`run_experiment` reports, up to float
  rounding).

  Args:
    tx: the optimizer; ``tx.update`` is always given ``params``.
    params: initial GloVe parameters (see :func:`glove_loss`).
    cooc: the ``(V, V)`` co-occurrence counts.
    rotation: a ``(d, d)`` orthogonal matrix.
    steps: number of optimizer steps of each run, at least 1.

  Returns:
    A dict of float64 numpy arrays of shape ``(steps + 1,)``, index ``t`` being
    after ``t`` steps: ``step`` (``0 .. steps``), ``drift``
    (``||W_t - W'_t R^T||_F / ||W_t||_F``, both tables), ``loss`` (of the run
    from ``W``) and ``loss_rotated`` (of the run from ``W R``).

  Example:
    >>> import optax_blockada as ob
    >>> from optax_blockada.examples.planted import planted_cooccurrence
    >>> from optax_blockada.examples.rotation import (
    ...     drift_over_steps, init_params, random_orthogonal)
    >>> cooc = planted_cooccurrence(vocab_size=30, rank=2)
    >>> params, r = init_params(vocab_size=30, dim=4), random_orthogonal(4, seed=1)
    >>> row = drift_over_steps(ob.rowwise_adagrad(0.1), params, cooc, r, steps=20)
    >>> diag = drift_over_steps(ob.diagonal_adagrad(0.1), params, cooc, r, steps=20)
    >>> row['drift'].shape, bool(row['drift'].max() < 1e-4), bool(diag['drift'][-1] > 1e-2)
    ((21,), True, True)
    >>> bool(row['loss'][-1] < 0.5 * row['loss'][0])
    True
  """
  steps = check_int("steps", steps, 1)
  weight, log_cooc, nonzero = _prepare(cooc)
  _check_params(params, weight.shape[0])
  dim = np.shape(params["word"])[1]
  rotation = jnp.asarray(rotation, jnp.float32)
  if rotation.shape != (dim, dim):
    raise ValueError(f"rotation must have shape ({dim}, {dim}), got {rotation.shape}")

  def one_step(p, state):
    cost, grads = jax.value_and_grad(_glove_cost)(p, weight, log_cooc)
    updates, state = tx.update(grads, state, p)
    return optax.apply_updates(p, updates), state, cost / nonzero

  def step(carry, _):
    (p, p_state), (q, q_state) = carry
    drift = _drift(p, q, rotation)
    p, p_state, loss = one_step(p, p_state)
    q, q_state, loss_rotated = one_step(q, q_state)
    return ((p, p_state), (q, q_state)), (drift, loss, loss_rotated)

  @jax.jit
  def run(p, q):
    carry = ((p, tx.init(p)), (q, tx.init(q)))
    ((p, _), (q, _)), history = jax.lax.scan(step, carry, None, length=steps)
    final = (
      _drift(p, q, rotation),
      _glove_cost(p, weight, log_cooc) / nonzero,
      _glove_cost(q, weight, log_cooc) / nonzero,
    )
    return tuple(jnp.append(h, f) for h, f in zip(history, final, strict=True))

  drift, loss, loss_rotated = (
    np.asarray(a, np.float64) for a in run(params, rotate(params, rotation))
  )
  return {
    "step": np.arange(steps + 1, dtype=np.float64),
    "drift": drift,
    "loss": loss,
    "loss_rotated": loss_rotated,
  }


def default_optimizers(dim: int) -> dict[str, optax.GradientTransformation]:
  """The optimizers compared by the command-line experiment, in display order.

  All of them train the default problem (the loss falls from about 1.1 to
  0.02-0.04 in 300 steps) at their nominal learning rates. GloVe's preset is
  preceded by ``optax.clip(1.0)``: without it, its un-damped first bias step
  makes this full-batch problem diverge (see the comment in the source).

  Args:
    dim: the embedding dimension ``d`` (used to rescale the ``sum`` variant).

  Returns:
    A dict from display name to optimizer.

  Example:
    >>> from optax_blockada.examples.rotation import default_optimizers
    >>> list(default_optimizers(4))[:2]
    ['optax.adagrad(0.1)', 'diagonal_adagrad(0.1)']
  """
  dim = check_int("dim", dim, 1)
  return {
    "optax.adagrad(0.1)": optax.adagrad(0.1),
    "diagonal_adagrad(0.1)": ob.diagonal_adagrad(0.1),
    "presets.torch_adagrad(0.1)": ob.presets.torch_adagrad(learning_rate=0.1),
    # glove.c's numerics divide by the *old* accumulator, and its bias accumulators
    # start at 1 with no eta, so the first bias step is the raw gradient. glove.c's
    # per-pair gradients are O(1); this full-batch gradient sums ~240 pairs per row
    # (bias gradients ~300), and the bare preset diverges (loss ~1e5 after one step,
    # 78 after 300, for any eta, which only scales the vectors). Clipping every
    # gradient element to [-1, 1] first (glove.c itself clips vector gradients at
    # 100) makes it train: loss 1.13 -> 0.037.
    "clip(1) + presets.glove_adagrad(0.05)": optax.chain(
      optax.clip(1.0), ob.presets.glove_adagrad(eta=0.05)
    ),
    "rowwise_adagrad(0.1, mean)": ob.rowwise_adagrad(0.1, reduction="mean"),
    # A sum over d coordinates is d times the mean, so scaling the learning rate
    # by sqrt(d) and the initial accumulator and eps by d gives exactly the
    # mean variant's updates on the (V, d) tables. The rank-1 bias leaves have
    # rows of one element (sum == mean), so there the rescaled hyperparameters
    # give a different bias step size and slightly different losses.
    "rowwise_adagrad(0.1*sqrt(d), sum)": ob.rowwise_adagrad(
      0.1 * math.sqrt(dim),
      initial_accumulator_value=0.1 * dim,
      eps=1e-7 * dim,
      reduction="sum",
    ),
    "presets.fbgemm_rowwise_adagrad(0.1)": ob.presets.fbgemm_rowwise_adagrad(learning_rate=0.1),
    # Block Adagrad accumulates sums of squares (tr H grows by |g|^2), so its learning
    # rate is scaled like the row-wise 'sum' variant: 0.1 * sqrt(k) for blocks of size k.
    "block_adagrad(0.1*sqrt(d), rows)": ob.block_adagrad(0.1 * math.sqrt(dim)),
    "block_adagrad(0.1*sqrt(d), shared)": ob.block_adagrad(
      0.1 * math.sqrt(dim), structure="shared"
    ),
    "block_adagrad(0.1*sqrt(d), rows_x_shared)": ob.block_adagrad(
      0.1 * math.sqrt(dim), structure="rows_x_shared"
    ),
    f"block_adagrad(0.1*sqrt(k), blocks, k={max(dim // 4, 1)})": ob.block_adagrad(
      0.1 * math.sqrt(max(dim // 4, 1)), structure="blocks", block_size=max(dim // 4, 1)
    ),
  }


def run_experiment(
  optimizers: Mapping[str, optax.GradientTransformation],
  *,
  vocab_size: int = 500,
  dim: int = 32,
  steps: int = 300,
  seed: int = 0,
) -> list[dict[str, Any]]:
  """Trains each optimizer from ``W`` and from ``W R`` and measures the drift.

  The data is ``planted_cooccurrence(vocab_size, rank=8, seed=seed)``, the
  initial parameters ``init_params(vocab_size, dim, seed)`` and the rotation
  ``random_orthogonal(dim, seed + 1)``.

  Args:
    optimizers: display name -> optimizer.
    vocab_size: vocabulary size ``V`` (at least 2).
    dim: embedding dimension ``d`` (at least 1).
    steps: full-batch steps per run (at least 1).
    seed: seed for the data, the initialisation and the rotation.

  Returns:
    One dict per optimizer, in order, with keys ``name``, ``loss`` (final
    :func:`glove_loss` of the run from ``W``), ``loss_rotated`` (of the run
    from ``W R``), ``drift`` (:func:`relative_drift` of the final tables),
    ``state_bytes`` (of ``tx.init(params)``) and ``seconds`` (wall time of
    both runs, compilation included).

  Example:
    >>> import optax_blockada as ob
    >>> from optax_blockada.examples.rotation import run_experiment
    >>> rows = run_experiment({'rowwise': ob.rowwise_adagrad(0.1)},
    ...                       vocab_size=20, dim=4, steps=3)
    >>> [(r['name'], r['drift'] < 1e-4) for r in rows]
    [('rowwise', True)]
  """
  vocab_size = check_int("vocab_size", vocab_size, 2)
  dim = check_int("dim", dim, 1)
  steps = check_int("steps", steps, 1)
  seed = check_int("seed", seed, 0)
  cooc = planted_cooccurrence(vocab_size, _PLANTED_RANK, seed=seed)
  params = init_params(vocab_size, dim, seed)
  rotation = random_orthogonal(dim, seed + 1)
  rotated = rotate(params, rotation)

  results = []
  for name, tx in optimizers.items():
    start = time.perf_counter()
    final, _ = train(tx, params, cooc, steps)
    final_rotated, _ = train(tx, rotated, cooc, steps)
    jax.block_until_ready((final, final_rotated))
    seconds = time.perf_counter() - start
    results.append(
      {
        "name": name,
        "loss": float(glove_loss(final, cooc)),
        "loss_rotated": float(glove_loss(final_rotated, cooc)),
        "drift": relative_drift(final, final_rotated, rotation),
        "state_bytes": int(ob.state_bytes(tx.init(params))),
        "seconds": seconds,
      }
    )
  return results


def _format_table(results: Sequence[Mapping[str, Any]]) -> str:
  header = ["optimizer", "loss (W)", "loss (W R)", "drift", "state bytes"]
  cells = []
  for r in results:
    losses = [f"{r['loss']:.6f}", f"{r['loss_rotated']:.6f}"]
    cells.append([r["name"], *losses, f"{r['drift']:.2e}", f"{r['state_bytes']:,}"])
  return markdown_table(header, "lrrrr", cells)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m optax_blockada.examples.rotation",
    description=(
      "Train a GloVe-style model from W and from a rotated W R with several Adagrad "
      "variants and report how far the two runs drift apart."
    ),
  )
  parser.add_argument(
    "--steps",
    type=int_at_least(1),
    default=300,
    help="full-batch steps per run (default: %(default)s)",
  )
  parser.add_argument(
    "--dim",
    type=int_at_least(1),
    default=32,
    help="embedding dimension d (default: %(default)s)",
  )
  parser.add_argument(
    "--vocab-size",
    type=int_at_least(2),
    default=500,
    help="vocabulary size V (default: %(default)s)",
  )
  parser.add_argument(
    "--seed",
    type=int_at_least(0),
    default=0,
    help="seed for data, initialisation and rotation (default: %(default)s)",
  )
  parser.add_argument(
    "--json",
    metavar="PATH",
    default=None,
    help="also write the results and settings to this JSON file",
  )
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns the process exit status.

  Args:
    argv: the arguments (default: ``sys.argv[1:]``).

  Returns:
    0 on success (argparse exits with status 2 on bad arguments).
  """
  args = _parser().parse_args(argv)
  nonzero = int(
    np.count_nonzero(planted_cooccurrence(args.vocab_size, _PLANTED_RANK, seed=args.seed))
  )
  start = time.perf_counter()
  results = run_experiment(
    default_optimizers(args.dim),
    vocab_size=args.vocab_size,
    dim=args.dim,
    steps=args.steps,
    seed=args.seed,
  )
  seconds = time.perf_counter() - start

  print(
    f"GloVe-style model, V={args.vocab_size}, d={args.dim}, {args.steps} full-batch steps, "
    f"seed {args.seed}; loss = glove.c cost per nonzero pair ({nonzero} pairs); "
    f"jax {jax.__version__} on {jax.default_backend()}, {seconds:.1f} s."
  )
  print()
  print(_format_table(results))
  print()
  print(
    "drift = ||W_T - W'_T R^T||_F / ||W_T||_F over both tables, where W' was trained from "
    "W R: ~0 for row-wise Adagrad (rotation-equivariant), large for diagonal Adagrad "
    "(basis-dependent)."
  )

  if args.json is not None:
    payload = {
      "settings": {
        "steps": args.steps,
        "dim": args.dim,
        "vocab_size": args.vocab_size,
        "seed": args.seed,
        "planted_rank": _PLANTED_RANK,
        "nonzero_pairs": nonzero,
        "x_max": X_MAX,
        "alpha": ALPHA,
      },
      "jax_version": jax.__version__,
      "optax_version": optax.__version__,
      "backend": jax.default_backend(),
      "seconds": seconds,
      "results": results,
    }
    write_json(args.json, payload)
  return 0


if __name__ == "__main__":
  sys.exit(main())
