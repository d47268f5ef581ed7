"""GloVe with sparse row updates: a Flax NNX model trained through ``sparse.nnx_update``.

The model is written as usual, with ``nnx.Embed`` word and context vectors and a bias
``nnx.Param`` per word; the training step differs from the dense one in one line::

    # dense: every step reads and writes all V rows of every table
    loss, grads = nnx.value_and_grad(loss_fn)(model, ids, x)
    optimizer.update(model, grads)
    # sparse: only the rows the batch looks up
    loss = sparse.nnx_update(model, optimizer, loss_fn, ids, x)

Both runs start from the same model and see the same mini-batches of co-occurrence
pairs from a planted co-occurrence matrix (:mod:`optax_blockada.examples.planted`).
Adagrad is lazily exact, so they train the same model; the script prints both losses,
the largest parameter difference and the median step times.

Run it with::

    python -m optax_blockada.examples.sparse_glove [--vocab-size 3000] [--dim 64]
        [--batch-size 1024] [--steps 100] [--optimizer rowwise] [--seed 0]
        [--json results.json]
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

import optax_blockada as ob
from optax_blockada import sparse
from optax_blockada.examples.glove_model import init_table, predict, squared_errors, weighting
from optax_blockada.examples.planted import planted_cooccurrence
from optax_blockada.examples.report import write_json

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

OPTIMIZERS = ("rowwise", "diagonal", "glove", "rows_x_shared")
"""Names accepted by :func:`make_optimizer`."""


@functools.cache
def make_optimizer(name: str, learning_rate: float = 0.1) -> optax.GradientTransformation:
  """The optimizer of the example by name (one of :data:`OPTIMIZERS`).

  Cached, so that runs with the same optimizer reuse the compiled steps.

  Args:
    name: ``'rowwise'`` (row-wise Adagrad), ``'diagonal'`` (per-coordinate),
      ``'glove'`` (the ``glove.c`` preset) or ``'rows_x_shared'`` (block Adagrad).
    learning_rate: the learning rate (``eta`` for the preset).

  Returns:
    An :class:`optax.GradientTransformation`.

  Example:
    >>> from optax_blockada.examples.sparse_glove import make_optimizer
    >>> type(make_optimizer('rowwise')).__name__
    'GradientTransformationExtraArgs'
  """
  if name == "rowwise":
    return ob.rowwise_adagrad(learning_rate)
  if name == "diagonal":
    return ob.diagonal_adagrad(learning_rate)
  if name == "glove":
    return ob.presets.glove_adagrad(learning_rate)
  if name == "rows_x_shared":
    return ob.block_adagrad(learning_rate, structure="rows_x_shared")
  raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}.")


class _Side(nnx.Module):
  """One side of GloVe: ``(V, d)`` vectors (an ``nnx.Embed``) and ``(V,)`` biases."""

  def __init__(self, vocab_size: int, dim: int, rngs: nnx.Rngs):
    # glove.c starts vectors uniform in [-0.5/d, 0.5/d) and biases at zero.
    self.vectors = nnx.Embed(
      vocab_size, dim, embedding_init=lambda key, shape, dtype: init_table(key, *shape), rngs=rngs
    )
    self.bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32))

  def __call__(self, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.vectors(ids), self.bias[...][ids]


class GloVe(nnx.Module):
  r"""A GloVe model: word and context vectors (``nnx.Embed``) and biases.

  ``model(i, j)`` predicts :math:`\log X_{ij}` as :math:`w_i \cdot c_j + b_i + \tilde b_j`.
  Vectors start uniform in :math:`\pm 0.5 / d` (as ``glove.c``), biases at zero. Its
  tables sit at the paths ``'word'`` and ``'context'`` (each a ``(V, d)`` table and a
  ``(V,)`` bias, which share the ids).

  Args:
    vocab_size: ``V``.
    dim: ``d``.
    rngs: the ``nnx.Rngs`` of the initialisation.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from optax_blockada.examples.sparse_glove import GloVe
    >>> model = GloVe(10, 4, rngs=nnx.Rngs(0))
    >>> model(jnp.array([1, 2]), jnp.array([3, 3])).shape
    (2,)
  """

  def __init__(self, vocab_size: int, dim: int, *, rngs: nnx.Rngs):
    self.word = _Side(vocab_size, dim, rngs)
    self.context = _Side(vocab_size, dim, rngs)

  def __call__(self, i: jax.Array, j: jax.Array) -> jax.Array:
    (w, bw), (c, bc) = self.word(i), self.context(j)
    return predict(w, c, bw, bc)


def glove_loss(model: Any, ids: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  r"""Mean weighted least squares :math:`f(x)(w_i \cdot c_j + b_i + \tilde b_j - \log x)^2`.

  :math:`f(x) = \min(1, (x / x_{max})^{\alpha})` as in ``glove.c``.

  Args:
    model: a :func:`GloVe` model.
    ids: ``{'word': i, 'context': j}``, integer arrays of shape ``(B,)``.
    x: the co-occurrence counts of the pairs, ``(B,)``, positive.

  Returns:
    The scalar loss.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada.examples.sparse_glove import GloVe, glove_loss
    >>> ids = {'word': jnp.array([0]), 'context': jnp.array([1])}
    >>> from flax import nnx
    >>> model = GloVe(4, 2, rngs=nnx.Rngs(0))
    >>> print(f"{glove_loss(model, ids, jnp.array([1.0])):.4f}")  # log 1 = 0; small init
    0.0000
  """
  pred = model(ids["word"], ids["context"])
  return jnp.mean(squared_errors(pred, jnp.log(x), weighting(x)))


def _pairs(vocab_size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  counts = planted_cooccurrence(vocab_size, 8, total_count=50.0 * vocab_size**2, seed=seed)
  i, j = np.nonzero(counts)
  return i.astype(np.int32), j.astype(np.int32), counts[i, j].astype(np.float32)


@nnx.jit(donate_argnums=(0, 1))
def dense_step(model: GloVe, optimizer: nnx.Optimizer, ids: dict, x: jax.Array) -> jax.Array:
  """The dense training step: gradients and updates for every row of every table.

  Args:
    model: a :class:`GloVe` model, updated in place.
    optimizer: its ``nnx.Optimizer``, updated in place.
    ids: ``{'word': i, 'context': j}``.
    x: the pairs' co-occurrence counts.

  Returns:
    The loss before the update.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from optax_blockada.examples.sparse_glove import GloVe, dense_step, make_optimizer
    >>> model = GloVe(40, 4, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, make_optimizer('rowwise'), wrt=nnx.Param)
    >>> ids = {'word': jnp.array([1, 2]), 'context': jnp.array([3, 3])}
    >>> # About mean(f(x) log(x)^2) = (0.5^0.75 log(5)^2 + 0) / 2 = 0.770: vectors start near 0.
    >>> print(f"{dense_step(model, optimizer, ids, jnp.array([5.0, 1.0])):.3f}")
    0.772
  """
  loss, grads = nnx.value_and_grad(glove_loss)(model, ids, x)
  optimizer.update(model, grads)
  return loss


@nnx.jit(donate_argnums=(0, 1))
def sparse_step(model: GloVe, optimizer: nnx.Optimizer, ids: dict, x: jax.Array) -> jax.Array:
  """The sparse training step (:func:`optax_blockada.sparse.nnx_update`): touched rows only.

  Args:
    model: a :class:`GloVe` model, updated in place.
    optimizer: its ``nnx.Optimizer``, updated in place.
    ids: ``{'word': i, 'context': j}``: each side's vectors and bias share the ids.
    x: the pairs' co-occurrence counts.

  Returns:
    The loss before the update.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from optax_blockada.examples.sparse_glove import GloVe, make_optimizer, sparse_step
    >>> model = GloVe(40, 4, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, make_optimizer('rowwise'), wrt=nnx.Param)
    >>> ids = {'word': jnp.array([1, 2]), 'context': jnp.array([3, 3])}
    >>> # About mean(f(x) log(x)^2) = (0.5^0.75 log(5)^2 + 0) / 2 = 0.770: vectors start near 0.
    >>> print(f"{sparse_step(model, optimizer, ids, jnp.array([5.0, 1.0])):.3f}")
    0.772
  """
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
  """Trains the same GloVe model densely and sparsely on the same batches.

  Args:
    vocab_size: ``V``.
    dim: ``d``.
    batch_size: co-occurrence pairs per step (each looks up one word and one context).
    steps: training steps.
    optimizer: one of :data:`OPTIMIZERS`.
    learning_rate: its learning rate.
    seed: seed of the data, the initialisation and the batches.
    progress: show a progress bar (tqdm) if installed.

  Returns:
    A dict: settings, the losses of both runs (every step, and first and final), the
    largest absolute difference between their parameters, and median step times in
    milliseconds.

  Example:
    >>> from optax_blockada.examples.sparse_glove import run
    >>> r = run(vocab_size=40, dim=4, batch_size=16, steps=3, progress=False)
    >>> r['max_param_difference'] < 1e-5
    True
  """
  i_all, j_all, x_all = _pairs(vocab_size, seed)
  tx = make_optimizer(optimizer, learning_rate)
  models = {k: GloVe(vocab_size, dim, rngs=nnx.Rngs(seed)) for k in ("dense", "sparse")}
  optimizers = {k: nnx.Optimizer(m, tx, wrt=nnx.Param) for k, m in models.items()}

  step_fns = {"dense": dense_step, "sparse": sparse_step}
  rng = np.random.default_rng(seed)
  losses: dict[str, list[float]] = {"dense": [], "sparse": []}
  times: dict[str, list[float]] = {"dense": [], "sparse": []}
  iterator = range(steps)
  if progress:
    try:
      from tqdm.auto import tqdm

      iterator = tqdm(iterator, desc="sparse_glove", file=sys.stderr)
    except ImportError:
      pass
  for _ in iterator:
    pick = rng.integers(0, i_all.shape[0], batch_size)
    ids = {"word": jnp.asarray(i_all[pick]), "context": jnp.asarray(j_all[pick])}
    x = jnp.asarray(x_all[pick])
    for name in ("dense", "sparse"):
      start = time.perf_counter()
      loss = step_fns[name](models[name], optimizers[name], ids, x)
      losses[name].append(float(loss))  # waits for the step
      times[name].append(time.perf_counter() - start)
  dense_params = nnx.state(models["dense"], nnx.Param)
  sparse_params = nnx.state(models["sparse"], nnx.Param)
  diff = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(dense_params), jax.tree.leaves(sparse_params), strict=True)
  )
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
  parser.add_argument("--vocab-size", type=int, default=3000)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--batch-size", type=int, default=1024)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--optimizer", choices=OPTIMIZERS, default="rowwise")
  parser.add_argument("--learning-rate", type=float, default=0.1)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", default=None, help="write the results to this file")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns the process exit status.

  Args:
    argv: the arguments (default: ``sys.argv[1:]``).

  Returns:
    0 on success (argparse exits with status 2 on bad arguments).

  Example:
    >>> from optax_blockada.examples.sparse_glove import main
    >>> main(['--vocab-size', '40', '--dim', '4', '--batch-size', '16', '--steps', '2'])
    ... # doctest: +ELLIPSIS
    GloVe, V=40, d=4, ...
    0
  """
  args = _parser().parse_args(argv)
  for name in ("vocab_size", "dim", "batch_size", "steps"):
    if getattr(args, name) < (2 if name == "vocab_size" else 1):
      raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
  r = run(
    vocab_size=args.vocab_size,
    dim=args.dim,
    batch_size=args.batch_size,
    steps=args.steps,
    optimizer=args.optimizer,
    learning_rate=args.learning_rate,
    seed=args.seed,
  )
  s = r["settings"]
  print(
    f"GloVe, V={s['vocab_size']}, d={s['dim']}, {s['steps']} steps of {s['batch_size']} pairs "
    f"({s['pairs']} nonzero pairs), {s['optimizer']} Adagrad, jax {jax.__version__} on "
    f"{r['backend']}."
  )
  print(f"{'':8s} {'first loss':>12s} {'final loss':>12s} {'median step ms':>15s}")
  for name in ("dense", "sparse"):
    print(
      f"{name:8s} {r['first_loss']:12.6f} {r['final_loss'][name]:12.6f} "
      f"{r['median_step_ms'][name]:15.3f}"
    )
  print(
    f"max |sparse - dense|: loss {r['max_loss_difference']:.2e}, "
    f"params {r['max_param_difference']:.2e} (float32 rounding)"
  )
  if args.json is not None:
    write_json(args.json, r)
  return 0


if __name__ == "__main__":
  sys.exit(main())
