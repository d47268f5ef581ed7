"""GloVe with sparse row updates: a Flax NNX model trained through ``sparse.nnx_update``.

The model is written as usual, with ``nnx.Embed`` word and context vectors and a bias
``nnx.Param`` per word; the training step differs from the dense one in one line::

    # dense: every step reads and writes all V rows of every table
    loss, grads = nnx.value_and_grad(loss_fn)(model, ids, x)
    optimizer.update(model, grads)
    # sparse: only the rows the batch looks up
    loss = sparse.nnx_update(model, optimizer, loss_fn, ids, x)

Both runs start from the same model and see the same mini-batches of pairs of a planted
co-occurrence matrix (:mod:`optax_blockada.examples.planted`). Adagrad is lazily exact, so
they train the same model; the script prints both losses, the largest parameter
difference and the median step times. Run it with::

    python -m optax_blockada.examples.sparse_glove [--vocab-size 3000] [--steps 100]
        [--optimizer rowwise] [--json results.json] [--help]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from optax_blockada import sparse
from optax_blockada.examples import optimizers
from optax_blockada.examples._cli import float_in, int_at_least
from optax_blockada.examples.glove_model import init_table, predict, squared_errors, weighting
from optax_blockada.examples.planted import planted_cooccurrence
from optax_blockada.examples.report import machine_facts, markdown_table, progress_bar, write_json

__all__ = [
  "OPTIMIZERS",
  "GloVe",
  "dense_step",
  "glove_loss",
  "main",
  "make_optimizer",
  "run",
  "sparse_step",
]

_NAMES = {"rowwise": "rowwise", "diagonal": "diagonal", "glove": "preset", "rows_x_shared": "block"}
OPTIMIZERS = tuple(_NAMES)
"""Names accepted by :func:`make_optimizer`."""


@functools.cache
def make_optimizer(name: str, learning_rate: float = 0.1) -> optax.GradientTransformation:
  """Row-wise, diagonal, ``glove.c``'s (``'glove'``) or block (``'rows_x_shared'``)
  Adagrad, from :func:`optax_blockada.examples.optimizers.make_optimizer`; cached, so
  that runs with the same optimizer reuse the compiled steps."""
  if name not in _NAMES:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}.")
  return optimizers.make_optimizer(_NAMES[name], learning_rate, preset="glove")


class _Side(nnx.Module):
  """One side of GloVe: ``(V, d)`` vectors (an ``nnx.Embed``) and ``(V,)`` biases."""

  def __init__(self, vocab_size: int, dim: int, rngs: nnx.Rngs):
    init = lambda key, shape, dtype: init_table(key, *shape)  # glove.c's
    self.vectors = nnx.Embed(vocab_size, dim, embedding_init=init, rngs=rngs)
    self.bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32))

  def __call__(self, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.vectors(ids), self.bias[...][ids]


class GloVe(nnx.Module):
  r"""GloVe with ``nnx.Embed`` tables: ``model(i, j)`` predicts :math:`\log X_{ij}`; sides
  ``'word'`` and ``'context'``, each a table and a bias, initialised as ``glove.c`` does."""

  def __init__(self, vocab_size: int, dim: int, *, rngs: nnx.Rngs):
    self.word = _Side(vocab_size, dim, rngs)
    self.context = _Side(vocab_size, dim, rngs)

  def __call__(self, i: jax.Array, j: jax.Array) -> jax.Array:
    (w, bw), (c, bc) = self.word(i), self.context(j)
    return predict(w, c, bw, bc)


def glove_loss(model: Any, ids: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  r"""The mean of glove_model's :func:`squared_errors` of the pairs ``ids`` (``{'word': i,
  'context': j}``) with counts ``x``: :math:`f(x)(w_i \cdot c_j + b_i + \tilde b_j -
  \log x)^2`.
  """
  pred = model(ids["word"], ids["context"])
  return jnp.mean(squared_errors(pred, jnp.log(x), weighting(x)))


@nnx.jit(donate_argnums=(0, 1))
def dense_step(model: GloVe, optimizer: nnx.Optimizer, ids: dict, x: jax.Array) -> jax.Array:
  """The dense step: gradients and updates of every row; returns the loss before it."""
  loss, grads = nnx.value_and_grad(glove_loss)(model, ids, x)
  optimizer.update(model, grads)
  return loss


@nnx.jit(donate_argnums=(0, 1))
def sparse_step(model: GloVe, optimizer: nnx.Optimizer, ids: dict, x: jax.Array) -> jax.Array:
  """The sparse step (:func:`optax_blockada.sparse.nnx_update`): the looked-up rows only,
  the same loss and update as :func:`dense_step`."""
  return sparse.nnx_update(model, optimizer, glove_loss, ids, x)


def run(
  *,
  vocab_size: int = 3000,
  dim: int = 64,
  batch_size: int = 1024,
  steps: int = 100,
  optimizer: str = "rowwise",
  learning_rate: float = 0.1,
  seed: int = 0,
  progress: bool = True,
) -> dict[str, Any]:
  """Trains the same GloVe model densely and sparsely on the same batches: the settings,
  both runs' losses, their largest differences and the median step times in milliseconds."""
  counts = planted_cooccurrence(vocab_size, 8, total_count=50.0 * vocab_size**2, seed=seed)
  i_all, j_all = (a.astype(np.int32) for a in np.nonzero(counts))
  x_all = counts[i_all, j_all].astype(np.float32)
  tx = make_optimizer(optimizer, learning_rate)
  models = {k: GloVe(vocab_size, dim, rngs=nnx.Rngs(seed)) for k in ("dense", "sparse")}
  opts = {k: nnx.Optimizer(m, tx, wrt=nnx.Param) for k, m in models.items()}
  step_fns = {"dense": dense_step, "sparse": sparse_step}
  rng = np.random.default_rng(seed)
  losses: dict[str, list[float]] = {"dense": [], "sparse": []}
  times: dict[str, list[float]] = {"dense": [], "sparse": []}
  with progress_bar("dense and sparse steps", 1, 1, steps, enabled=progress) as bar:
    for _ in range(steps):
      pick = rng.integers(0, i_all.shape[0], batch_size)
      ids = {"word": jnp.asarray(i_all[pick]), "context": jnp.asarray(j_all[pick])}
      x = jnp.asarray(x_all[pick])
      for name in ("dense", "sparse"):
        start = time.perf_counter()
        loss = step_fns[name](models[name], opts[name], ids, x)
        losses[name].append(float(loss))  # waits for the step
        times[name].append(time.perf_counter() - start)
      bar.set_postfix(loss=f"{losses['sparse'][-1]:.4f}")
      bar.update()
  params = [jax.tree.leaves(nnx.state(models[k], nnx.Param)) for k in ("dense", "sparse")]
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(*params, strict=True))
  warm = slice(min(3, steps - 1), None)  # the first steps compile
  return {
    "settings": {
      "vocab_size": vocab_size,
      "dim": dim,
      "batch_size": batch_size,
      "steps": steps,
      "optimizer": optimizer,
      "learning_rate": learning_rate,
      "seed": seed,
      "pairs": int(i_all.shape[0]),
    },
    "losses": losses,
    "first_loss": losses["dense"][0],
    "final_loss": {k: v[-1] for k, v in losses.items()},
    "max_loss_difference": max(abs(a - b) for a, b in zip(*losses.values(), strict=True)),
    "max_param_difference": diff,
    "median_step_ms": {k: 1e3 * statistics.median(v[warm]) for k, v in times.items()},
    "backend": jax.default_backend(),
  }


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
  add = parser.add_argument
  add("--vocab-size", type=int_at_least(2), default=3000)
  for flag, default in (("--dim", 64), ("--batch-size", 1024), ("--steps", 100)):
    add(flag, type=int_at_least(1), default=default)
  add("--optimizer", choices=OPTIMIZERS, default="rowwise")
  add("--learning-rate", type=float_in(0), default=0.1)
  add("--seed", type=int_at_least(0), default=0)
  add("--json", default=None, help="write the results to this file")
  add("--no-progress", action="store_true", help="no progress bars")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns 0 (argparse exits with 2 on bad arguments)."""
  args = _parser().parse_args(argv)
  settings = {k: v for k, v in vars(args).items() if k not in ("json", "no_progress")}
  r = run(**settings, progress=not args.no_progress)
  s = r["settings"]
  print(
    f"GloVe, V={s['vocab_size']}, d={s['dim']}, {s['steps']} steps of {s['batch_size']} pairs "
    f"({s['pairs']} nonzero pairs), {s['optimizer']} Adagrad, jax {jax.__version__} on "
    f"{r['backend']}.\n"
  )
  cells = [
    [k, f"{r['first_loss']:.6f}", f"{r['final_loss'][k]:.6f}", f"{r['median_step_ms'][k]:.3f}"]
    for k in ("dense", "sparse")
  ]
  print(markdown_table(["step", "first loss", "final loss", "median step ms"], "lrrr", cells))
  print(
    f"\nmax |sparse - dense|: loss {r['max_loss_difference']:.2e}, "
    f"params {r['max_param_difference']:.2e} (float32 rounding)"
  )
  if args.json is not None:
    write_json(args.json, machine_facts(**r))
  return 0


if __name__ == "__main__":
  sys.exit(main())
