"""Sharded GloVe: two embedding tables split by rows over 8 devices, data-parallel batches.

The model is GloVe's, ``w_i . c_j + b_i + b~_j ~ log X_ij`` weighted by
``f(X_ij) = min(1, (X_ij / 10)^0.75)``, trained on minibatches of co-occurring pairs
of a planted co-occurrence matrix (:mod:`optax_blockada.examples.planted`). The
devices form a ``data x rows`` mesh (``2 x 4`` on 8 devices):

* the word and context tables ``(V, d)`` and their biases ``(V,)`` are split along
  their rows over ``rows`` (each device holds ``V / 4`` rows of each);
* the optimizer state is sharded the same way (a ``(V, 1)`` row-wise accumulator
  along its rows, never replicated), placed by
  :func:`optax_blockada.sharding.state_shardings`;
* each batch of pairs is split over ``data``; JAX's SPMD partitioner inserts the
  collectives of the lookups and of the gradient.

With ``--sparse`` the step reads and writes only the rows the batch looks up, routed to
the devices that own them (:mod:`optax_blockada.routed`): each batch is split over all
eight devices, every device sends its distinct ids to the ``rows`` shard that owns them
(``all_to_all``, ``--capacity`` ids per shard), gets the rows back, computes its part of
the loss and sends the row gradients back to the owners, which update their rows and
their rows of the state. The two replicas of each shard along ``data`` apply the same
updates. The script reports how many steps overflowed the capacity (those run with the
full capacity: exact, but as costly as the replicated path).

The same steps are then run on one device, and the script checks that both runs end
at the same parameters up to float32 rounding.

Run it on CPU with 8 simulated devices::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m optax_blockada.examples.sharded_glove [--mode auto|explicit]
        [--optimizer rowwise|diagonal|block] [--steps 200] [--vocab-size 2048]
        [--dim 32] [--batch-size 1024] [--data-parallel 2]
        [--sparse [--capacity N] [--spread-ids]] [--json results.json]

``--mode auto`` (default) builds the state with ``jax.jit(tx.init,
out_shardings=...)`` and passes the shardings to the step's ``in_shardings`` and
``out_shardings``; ``--mode explicit`` uses JAX's Explicit sharding mode (the default
axes of ``jax.make_mesh``) under ``jax.set_mesh``, where ``tx.init`` already shards
the state like the params and the step keeps those sharding types.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_blockada as ob
from optax_blockada import routed
from optax_blockada.examples._cli import int_at_least
from optax_blockada.examples.glove_model import cost, init_params, predict, weighting
from optax_blockada.examples.planted import planted_cooccurrence
from optax_blockada.examples.report import markdown_table, write_json
from optax_blockada.sharding import state_shardings

__all__ = [
  "PARAM_SPECS",
  "main",
  "make_batches",
  "make_mesh",
  "make_optimizer",
  "pair_loss",
  "shard_report",
  "spread_ids",
  "suggest_capacity",
  "train_sharded",
  "train_single_device",
]

PARAM_SPECS = {
  "word": P("rows", None),
  "context": P("rows", None),
  "word_bias": P("rows"),
  "context_bias": P("rows"),
}
"""How the GloVe params are split: every table and bias along its rows."""

_OPTIMIZERS = ("rowwise", "diagonal", "block")
_PLANTED_RANK = 8
_CAPACITY_SAMPLE = 20
# Float32 rounding: the sharded run sums the batch and the gradients in another order.
RTOL, ATOL = 1e-4, 1e-6

Batch = tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def make_optimizer(name: str, learning_rate: float = 0.05) -> optax.GradientTransformation:
  """The optimizer of the example: ``'rowwise'``, ``'diagonal'`` or ``'block'`` Adagrad.

  Args:
    name: which Adagrad.
    learning_rate: its learning rate.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> from optax_blockada.examples.sharded_glove import make_optimizer
    >>> type(make_optimizer('rowwise').init({'w': jax.numpy.ones((4, 2))})[0]).__name__
    'RowwiseAdagradState'
  """
  if name == "rowwise":
    return ob.rowwise_adagrad(learning_rate)
  if name == "diagonal":
    return ob.diagonal_adagrad(learning_rate)
  if name == "block":
    # jaxlib 0.10's batched LAPACK eigh fans out into the CPU thread pool it runs on;
    # with several CPU devices running it at once this can deadlock. On CPU with more
    # than one device, use the matmul-only Newton-Schulz root instead.
    cpu_devices = jax.default_backend() == "cpu" and jax.device_count() > 1
    return ob.block_adagrad(learning_rate, root="newton_schulz" if cpu_devices else "auto")
  raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {name!r}.")


def make_mesh(data_parallel: int, *, explicit: bool = False) -> jax.sharding.Mesh:
  """A ``data x rows`` mesh over all devices, ``data_parallel`` along ``data``.

  Args:
    data_parallel: the size of the ``data`` axis; it must divide the device count.
    explicit: Explicit sharding axes (``jax.make_mesh``'s default) rather than Auto.

  Returns:
    A ``jax.sharding.Mesh`` with axes ``('data', 'rows')``.

  Example:
    >>> import jax
    >>> from optax_blockada.examples.sharded_glove import make_mesh
    >>> make_mesh(1).axis_names
    ('data', 'rows')
  """
  n = jax.device_count()
  if data_parallel < 1 or n % data_parallel:
    raise ValueError(
      f"data_parallel must be a positive divisor of the device count {n}, got {data_parallel}."
    )
  types = (AxisType.Explicit,) * 2 if explicit else (AxisType.Auto,) * 2
  return jax.make_mesh((data_parallel, n // data_parallel), ("data", "rows"), axis_types=types)


def make_batches(cooc: Any, batch_size: int, steps: int, seed: int = 0) -> list[Batch]:
  """Minibatches of nonzero pairs ``(i, j, f(X_ij), log X_ij)``, sampled uniformly.

  Args:
    cooc: the ``(V, V)`` co-occurrence counts.
    batch_size: pairs per batch.
    steps: number of batches.
    seed: numpy seed of the sampling.

  Returns:
    A list of ``steps`` tuples of arrays of shape ``(batch_size,)``: int32 ids, then
    float32 weights and targets.

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples.sharded_glove import make_batches
    >>> i, j, f, y = make_batches(np.array([[0, 10.0], [10.0, 0]]), 4, steps=1)[0]
    >>> print(i.shape, f, y)
    (4,) [1. 1. 1. 1.] [2.30259 2.30259 2.30259 2.30259]
  """
  counts = np.asarray(cooc, np.float32)
  rows, cols = np.nonzero(counts)
  if rows.size == 0:
    raise ValueError("cooc has no positive entry.")
  x = counts[rows, cols]
  weight = weighting(x).astype(np.float32)
  target = np.log(x).astype(np.float32)
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    pick = rng.integers(0, rows.size, batch_size)
    out.append(
      (
        jnp.asarray(rows[pick], jnp.int32),
        jnp.asarray(cols[pick], jnp.int32),
        jnp.asarray(weight[pick]),
        jnp.asarray(target[pick]),
      )
    )
  return out


def pair_loss(params: dict[str, jax.Array], batch: Batch, gather_spec: Any = None) -> jax.Array:
  r"""GloVe's cost summed over a batch of pairs, :math:`\sum \tfrac12 f (w_i^\top c_j +
  b_i + \tilde b_j - \log X_{ij})^2`.

  Summed, not averaged, so each pair contributes glove.c's per-pair gradient.

  Args:
    params: ``{'word', 'context', 'word_bias', 'context_bias'}``.
    batch: ``(i, j, weight, log_x)`` as made by :func:`make_batches`.
    gather_spec: in Explicit sharding mode, the mesh axis the batch is split over
      (the lookups' output sharding); ``None`` otherwise.

  Returns:
    A float32 scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada.examples.sharded_glove import pair_loss
    >>> params = {'word': jnp.ones((2, 2)), 'context': jnp.ones((2, 2)),
    ...           'word_bias': jnp.zeros(2), 'context_bias': jnp.zeros(2)}
    >>> batch = (jnp.array([0]), jnp.array([1]), jnp.array([1.0]), jnp.array([1.0]))
    >>> print(pair_loss(params, batch))  # (2 - 1)^2 / 2
    0.5
  """
  i, j, weight, log_x = batch
  return _ids_loss(params, _ids(i, j), weight, log_x, gather_spec)


def _ids(i: jax.Array, j: jax.Array) -> dict[str, jax.Array]:
  """The rows each table looks up: words ``i``, contexts ``j``."""
  return {"word": i, "word_bias": i, "context": j, "context_bias": j}


def _ids_loss(params, ids, weight, log_x, gather_spec=None):
  def take(name: str) -> jax.Array:
    table = params[name]
    if gather_spec is None:
      return table[ids[name]]
    spec = P(gather_spec, *([None] * (table.ndim - 1)))
    return table.at[ids[name]].get(out_sharding=spec)

  pred = predict(take("word"), take("context"), take("word_bias"), take("context_bias"))
  return cost(pred, log_x, weight)


def _step_fn(
  tx: optax.GradientTransformation, gather_spec: Any = None, routing: dict | None = None
):
  if routing is not None:  # Only the looked-up rows, routed to their owners.
    update = routed.value_and_update(_ids_loss, tx, row_axes="rows", reduction="sum", **routing)

    def sparse_step(params, state, batch):
      i, j, weight, log_x = batch
      loss, params, state, stats = update(params, state, _ids(i, j), weight, log_x)
      return params, state, loss, stats

    return sparse_step

  def step(params, state, batch):
    loss, grads = jax.value_and_grad(pair_loss)(params, batch, gather_spec)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  return step


def train_single_device(
  tx: optax.GradientTransformation, params: dict[str, jax.Array], batches: Sequence[Batch]
) -> tuple[dict[str, jax.Array], Any, list[float]]:
  """The reference: the same steps on one device.

  Args:
    tx: the optimizer.
    params: the initial params.
    batches: the batches, one per step.

  Returns:
    ``(params, state, losses)``; ``losses[t]`` is the batch cost per pair at step t.

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples import sharded_glove as sg
    >>> from optax_blockada.examples.glove_model import init_params
    >>> batches = sg.make_batches(np.array([[0, 10.0], [10.0, 0]]), 4, steps=30)
    >>> _, _, losses = sg.train_single_device(
    ...   sg.make_optimizer('rowwise', 0.5), init_params(2, 2), batches)
    >>> bool(losses[-1] < 0.1 * losses[0])
    True
  """
  step = jax.jit(_step_fn(tx))
  state = tx.init(params)
  losses = []
  for batch in batches:
    params, state, loss = step(params, state, batch)
    losses.append(float(loss) / batch[0].shape[0])
  return params, state, losses


def train_sharded(
  tx: optax.GradientTransformation,
  params: dict[str, jax.Array],
  batches: Sequence[Batch],
  mesh: jax.sharding.Mesh,
  *,
  sparse_rows: bool = False,
  capacity: int | None = None,
) -> tuple[dict[str, jax.Array], Any, list[float], list[dict[str, Any]]]:
  """The same steps with the tables split by rows over ``mesh``'s ``rows`` axis.

  Auto mesh axes: the state is built sharded by ``jax.jit(tx.init,
  out_shardings=state_shardings(...))`` (a plain ``jax.jit(tx.init)`` would return it
  unsharded), and the step gets the shardings as ``in_shardings``/``out_shardings``.
  Explicit mesh axes: under ``jax.set_mesh(mesh)``, ``tx.init`` shards the state like
  the params by itself and the step keeps the sharding types.

  Args:
    tx: the optimizer.
    params: the initial params (anywhere; they are placed on ``mesh``).
    batches: the batches, one per step; their size must be divisible by the ``data``
      axis (by the device count with ``sparse_rows``).
    mesh: a mesh with axes ``('data', 'rows')`` (see :func:`make_mesh`).
    sparse_rows: update only the rows the batch looks up, routed to the devices that
      own them (:func:`optax_blockada.routed.value_and_update`); the batch is split
      over all devices.
    capacity: with ``sparse_rows``, the ids each device may send to each shard per
      step (``None``: :func:`optax_blockada.routed.default_capacity`).

  Returns:
    ``(params, state, losses, routing)``, params and state sharded over ``mesh``;
    ``routing`` has, for every step of ``sparse_rows``, whether it overflowed the
    capacity and the largest load (distinct ids from one device to one shard); it is
    empty otherwise.

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples import sharded_glove as sg
    >>> from optax_blockada.examples.glove_model import init_params
    >>> mesh = sg.make_mesh(1)
    >>> rows = mesh.shape['rows']
    >>> batches = sg.make_batches(np.ones((2 * rows, 2 * rows)), 4 * rows, steps=2)
    >>> params, state, _, routing = sg.train_sharded(
    ...   sg.make_optimizer('rowwise'), init_params(2 * rows, 3), batches, mesh,
    ...   sparse_rows=True)
    >>> state[0].sum_of_squares['word'].sharding.shard_shape((2 * rows, 1))
    (2, 1)
    >>> routing[0]['overflowed']
    False
  """
  explicit = all(t == AxisType.Explicit for t in mesh.axis_types)
  routing = {"capacity": capacity, "mesh": mesh} if sparse_rows else None
  # The routed step splits the batch over all devices; the dense one over 'data'.
  batch_spec = P(("data", "rows")) if sparse_rows else P("data")
  losses, log = [], []
  if explicit:
    gather_spec = None if sparse_rows else "data"
    with jax.set_mesh(mesh):
      params = jax.device_put(params, PARAM_SPECS)
      state = tx.init(params)
      step = jax.jit(_step_fn(tx, gather_spec=gather_spec, routing=routing))
      put = lambda batch: jax.device_put(batch, batch_spec)
      for batch in batches:
        params, state, *out = step(params, state, put(batch))
        _record(batch, out, losses, log)
    return params, state, losses, log

  param_sh = {k: NamedSharding(mesh, s) for k, s in PARAM_SPECS.items()}
  batch_sh = NamedSharding(mesh, batch_spec)
  replicated = NamedSharding(mesh, P())
  # A copy (may_alias=False): the steps donate their inputs, and on one device device_put
  # would otherwise hand back the caller's own buffers, which a GPU then deletes.
  params = jax.device_put(params, param_sh, may_alias=False)
  state_sh = state_shardings(tx, params, param_sh)
  state = jax.jit(tx.init, out_shardings=state_sh)(params)
  step = jax.jit(
    _step_fn(tx, routing=routing),
    in_shardings=(param_sh, state_sh, batch_sh),
    out_shardings=(param_sh, state_sh) + (replicated,) * (2 if sparse_rows else 1),
    donate_argnums=(0, 1),
  )
  for batch in batches:
    params, state, *out = step(params, state, jax.device_put(batch, batch_sh))
    _record(batch, out, losses, log)
  return params, state, losses, log


def _record(batch: Batch, out: list[Any], losses: list[float], log: list[dict[str, Any]]):
  """Appends a step's loss per pair and, for the routed step, its routing statistics."""
  losses.append(float(out[0]) / batch[0].shape[0])
  if len(out) > 1:
    stats = out[1]
    log.append({"overflowed": bool(stats.overflowed), "max_load": int(stats.max_load)})


def shard_report(tree: Any, name: str) -> list[dict[str, Any]]:
  """One row per array leaf: its path, global shape, spec and per-device shard shape.

  Args:
    tree: a pytree of ``jax.Array``.
    name: a prefix for the paths.

  Returns:
    A list of dicts with keys ``path``, ``shape``, ``spec``, ``shard_shape``,
    ``devices`` and ``bytes_per_device``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada.examples.sharded_glove import shard_report
    >>> shard_report({'w': jnp.ones((4, 2))}, 'params')[0]['shard_shape']
    (4, 2)
  """
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    shard = leaf.addressable_shards[0].data
    spec = getattr(leaf.sharding, "spec", P())
    out.append(
      {
        "path": name + jax.tree_util.keystr(path),
        "shape": tuple(leaf.shape),
        "spec": str(spec),
        "shard_shape": tuple(shard.shape),
        "devices": len(leaf.sharding.device_set),
        "bytes_per_device": int(shard.nbytes),
      }
    )
  return out


def _format_report(rows: Sequence[dict[str, Any]]) -> str:
  header = ["leaf", "global shape", "partition spec", "shard on each device"]
  cells = [[str(r[k]) for k in ("path", "shape", "spec", "shard_shape")] for r in rows]
  return markdown_table(header, "llll", cells)


def _max_relative_difference(a: Any, b: Any) -> float:
  diffs = [
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(np.asarray(y))) + 1e-30))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  ]
  return max(diffs)


def _allclose(a: Any, b: Any) -> bool:
  return all(
    np.allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def spread_ids(batches: Sequence[Batch], vocab_size: int, seed: int = 0) -> list[Batch]:
  """The batches with the words relabelled by a random permutation of the vocabulary.

  Tables split along rows give each device a contiguous range of rows. With a
  vocabulary sorted by frequency (as GloVe's and word2vec's are, and as the planted
  counts are) the first shard then owns the frequent words and receives most of the ids
  of every batch; a fixed random relabelling spreads them evenly over the shards. It
  changes no result but which row holds which word.

  Args:
    batches: batches from :func:`make_batches`.
    vocab_size: the number of words.
    seed: numpy seed of the permutation.

  Returns:
    The batches with ``i`` and ``j`` relabelled.

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples.sharded_glove import make_batches, spread_ids
    >>> batches = make_batches(np.array([[0, 10.0], [10.0, 0]]), 4, steps=1)
    >>> i, j, _, _ = spread_ids(batches, 2)[0]
    >>> bool(((i == 0) | (i == 1)).all())
    True
  """
  perm = jnp.asarray(np.random.default_rng(seed).permutation(vocab_size), jnp.int32)
  return [(perm[i], perm[j], weight, log_x) for i, j, weight, log_x in batches]


def suggest_capacity(batches: Sequence[Batch], vocab_size: int, mesh: jax.sharding.Mesh) -> int:
  """The routing capacity for the batches' words and contexts, as
  :func:`optax_blockada.routed.suggest_capacity` suggests it (the larger of the two).

  Args:
    batches: sample batches.
    vocab_size: the number of words.
    mesh: the ``data x rows`` mesh (tables split over ``rows``).

  Returns:
    The capacity.

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples import sharded_glove as sg
    >>> mesh = sg.make_mesh(1)
    >>> n = mesh.size
    >>> batches = sg.make_batches(np.ones((4 * n, 4 * n)), 8 * n, steps=3)
    >>> 1 <= sg.suggest_capacity(batches, 4 * n, mesh) <= 8
    True
  """
  return max(
    routed.suggest_capacity([b[k] for b in batches], vocab_size, mesh, "rows") for k in (0, 1)
  )


def _routing_summary(
  routing: list[dict[str, Any]], capacity: int | None, local_ids: int
) -> dict[str, int] | None:
  if not routing:
    return None
  return {
    "capacity": capacity,
    "local_ids": local_ids,
    "max_load": max(r["max_load"] for r in routing),
    "overflowed_steps": sum(r["overflowed"] for r in routing),
  }


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m optax_blockada.examples.sharded_glove",
    description=(
      "Train GloVe with its tables and optimizer state split by rows over all devices "
      "(data-parallel batches), and check the result against a single-device run."
    ),
  )
  parser.add_argument("--mode", choices=("auto", "explicit"), default="auto")
  parser.add_argument(
    "--sparse",
    action="store_true",
    help="update only the looked-up rows, routed to the devices that own them "
    "(optax_blockada.routed)",
  )
  parser.add_argument(
    "--spread-ids",
    action="store_true",
    help="relabel the words by a random permutation, so that the frequent ones are "
    "spread over the shards",
  )
  parser.add_argument(
    "--capacity",
    type=int_at_least(1),
    default=None,
    help="with --sparse: ids each device may send to each shard per step (default: "
    f"suggested from the first {_CAPACITY_SAMPLE} batches)",
  )
  parser.add_argument("--optimizer", choices=_OPTIMIZERS, default="rowwise")
  parser.add_argument("--learning-rate", type=float, default=0.05)
  parser.add_argument("--steps", type=int_at_least(1), default=200)
  parser.add_argument("--vocab-size", type=int_at_least(2), default=2048)
  parser.add_argument("--dim", type=int_at_least(1), default=32)
  parser.add_argument("--batch-size", type=int_at_least(1), default=1024)
  parser.add_argument(
    "--data-parallel",
    type=int_at_least(1),
    default=2,
    help="size of the mesh's data axis; the rest of the devices split the rows",
  )
  parser.add_argument("--seed", type=int_at_least(0), default=0)
  parser.add_argument("--devices", type=int_at_least(1), default=8, help="devices expected")
  parser.add_argument("--json", metavar="PATH", default=None)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns the process exit status.

  Args:
    argv: the arguments (default: ``sys.argv[1:]``).

  Returns:
    0 if the sharded run equals the single-device run, 1 if not, 2 for bad arguments
    or too few devices.
  """
  args = _parser().parse_args(argv)
  if jax.device_count() < args.devices:
    print(
      f"This example expects {args.devices} devices and JAX sees {jax.device_count()}. "
      "On CPU, run it as\n  XLA_FLAGS=--xla_force_host_platform_device_count=8 "
      "python -m optax_blockada.examples.sharded_glove",
      file=sys.stderr,
    )
    return 2
  if args.capacity is not None and not args.sparse:
    print("--capacity applies to --sparse only.", file=sys.stderr)
    return 2
  try:
    mesh = make_mesh(args.data_parallel, explicit=args.mode == "explicit")
  except ValueError as e:
    print(f"--data-parallel: {e}", file=sys.stderr)
    return 2
  rows, data = mesh.shape["rows"], mesh.shape["data"]
  # The routed sparse step splits each batch over all devices, the dense one over 'data'.
  batch_split = data * rows if args.sparse else data
  if args.vocab_size % rows or args.batch_size % batch_split:
    print(
      f"--vocab-size must be divisible by the rows axis ({rows}) and --batch-size by "
      f"{batch_split} (the {'devices' if args.sparse else 'data axis'}).",
      file=sys.stderr,
    )
    return 2

  cooc = planted_cooccurrence(args.vocab_size, _PLANTED_RANK, seed=args.seed)
  batches = make_batches(cooc, args.batch_size, args.steps, seed=args.seed + 1)
  if args.spread_ids:
    batches = spread_ids(batches, args.vocab_size, seed=args.seed + 2)
  capacity = args.capacity
  if args.sparse and capacity is None:
    capacity = suggest_capacity(batches[:_CAPACITY_SAMPLE], args.vocab_size, mesh)
  params0 = init_params(args.vocab_size, args.dim, seed=args.seed)
  tx = make_optimizer(args.optimizer, args.learning_rate)

  start = time.perf_counter()
  params, state, losses, routing = train_sharded(
    tx, params0, batches, mesh, sparse_rows=args.sparse, capacity=capacity
  )
  sharded_seconds = time.perf_counter() - start
  start = time.perf_counter()
  ref_params, ref_state, ref_losses = train_single_device(tx, params0, batches)
  single_seconds = time.perf_counter() - start

  params_diff = _max_relative_difference(params, ref_params)
  state_diff = _max_relative_difference(state, ref_state)
  equal = _allclose(params, ref_params) and _allclose(state, ref_state)
  report = shard_report(params, "params") + shard_report(state, "state")

  print(
    f"GloVe, V={args.vocab_size}, d={args.dim}, {args.steps} steps of {args.batch_size} "
    f"pairs, {args.optimizer} Adagrad{' (routed sparse rows)' if args.sparse else ''}; mesh "
    f"data={data} x rows={rows} ({args.mode} mode), jax {jax.__version__} on "
    f"{jax.default_backend()}."
  )
  print()
  print(_format_report(report))
  print()
  print(
    f"loss per pair: {losses[0]:.4f} -> {losses[-1]:.4f} (sharded), "
    f"{ref_losses[0]:.4f} -> {ref_losses[-1]:.4f} (one device)"
  )
  print(
    f"max relative difference to the single-device run: params {params_diff:.2e}, "
    f"state {state_diff:.2e}"
  )
  verdict = "equals" if equal else "DIFFERS FROM"
  print(
    f"the sharded run {verdict} the single-device run (rtol {RTOL}, atol {ATOL}); "
    f"{sharded_seconds:.1f} s sharded, {single_seconds:.1f} s on one device."
  )
  summary = _routing_summary(routing, capacity, args.batch_size // (data * rows))
  if summary is not None:
    how = "given" if args.capacity is not None else "suggested from the first batches"
    print(
      f"routing: capacity {summary['capacity']} ids per shard per device ({how}; "
      f"{summary['local_ids']} ids per device); the largest load was "
      f"{summary['max_load']}; {summary['overflowed_steps']} of {args.steps} steps "
      "overflowed and ran with the full capacity."
    )

  if args.json is not None:
    payload = {
      "settings": vars(args),
      "mesh": {"data": data, "rows": rows},
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
      "shards": report,
      "losses": losses,
      "single_device_losses": ref_losses,
      "max_relative_difference": {"params": params_diff, "state": state_diff},
      "equal": equal,
      "seconds": {"sharded": sharded_seconds, "single_device": single_seconds},
      "routing": summary,
    }
    write_json(args.json, payload)
  return 0 if equal else 1


if __name__ == "__main__":
  sys.exit(main())
