"""Sharded GloVe: both tables and their optimizer state split by rows over 8 devices.

GloVe on minibatches of planted co-occurrences on a ``data x rows`` mesh (``2 x 4``):
tables, biases and state (:func:`optax_blockada.sharding.state_shardings`) split by rows
over ``rows``, batches over ``data``. ``--sparse`` updates only the looked-up rows, routed
to the devices that own them (:mod:`optax_blockada.routed`; overflowing steps run exactly
at full capacity). The same steps then run on one device; both runs must agree to float32
rounding. On CPU::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m \\
        optax_blockada.examples.sharded_glove [--sparse] [--mode explicit] [--help]

``--mode auto`` passes shardings to ``jax.jit``; ``--mode explicit`` uses JAX's Explicit
sharding under ``jax.set_mesh``, where ``tx.init`` shards the state like the params.
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

from optax_blockada import routed
from optax_blockada.examples import optimizers
from optax_blockada.examples._cli import float_in, int_at_least
from optax_blockada.examples.glove_model import cost, init_params, predict, weighting
from optax_blockada.examples.planted import planted_cooccurrence
from optax_blockada.examples.report import machine_facts, markdown_table, progress_bar, write_json
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

PARAM_SPECS = {"word": P("rows", None), "context": P("rows", None)}
PARAM_SPECS |= {"word_bias": P("rows"), "context_bias": P("rows")}
"""How the GloVe params are split: every table and bias along its rows."""

_OPTIMIZERS = ("rowwise", "diagonal", "block")
_PLANTED_RANK = 8
_CAPACITY_SAMPLE = 20
RTOL, ATOL = 1e-4, 1e-6  # float32 rounding: the sharded run sums in another order

Batch = tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def make_optimizer(name: str, learning_rate: float = 0.05) -> optax.GradientTransformation:
  """``'rowwise'``, ``'diagonal'`` or ``'block'`` (``structure='rows'``) Adagrad, from
  :func:`optax_blockada.examples.optimizers.make_optimizer`."""
  if name not in _OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {name!r}.")
  # jaxlib 0.10's batched LAPACK eigh fans out into the CPU thread pool it runs on, which
  # can deadlock with several CPU devices: use the matmul-only Newton-Schulz root there.
  many_cpus = jax.default_backend() == "cpu" and jax.device_count() > 1
  root = "newton_schulz" if many_cpus else "auto"
  return optimizers.make_optimizer(name, learning_rate, block_structure="rows", root=root)


def make_mesh(data_parallel: int, *, explicit: bool = False) -> jax.sharding.Mesh:
  """A ``('data', 'rows')`` mesh over all devices, ``data_parallel`` (a divisor of the
  device count) along ``data``; Explicit sharding axes if ``explicit``, else Auto."""
  n = jax.device_count()
  if data_parallel < 1 or n % data_parallel:
    divisors = ", ".join(str(k) for k in range(1, n + 1) if n % k == 0)
    raise ValueError(
      f"data_parallel must be a positive divisor of the device count {n}, got "
      f"{data_parallel}; pass one of {divisors}."
    )
  types = (AxisType.Explicit if explicit else AxisType.Auto,) * 2
  return jax.make_mesh((data_parallel, n // data_parallel), ("data", "rows"), axis_types=types)


def make_batches(cooc: Any, batch_size: int, steps: int, seed: int = 0) -> list[Batch]:
  """``steps`` batches of ``batch_size`` nonzero pairs ``(i, j, f(X_ij), log X_ij)``, drawn
  uniformly (numpy ``seed``): int32 ids, float32 weights and targets."""
  counts = np.asarray(cooc, np.float32)
  rows, cols = np.nonzero(counts)
  if rows.size == 0:
    raise ValueError("cooc has no positive entry.")
  x = counts[rows, cols]
  columns = (rows.astype(np.int32), cols.astype(np.int32), weighting(x), np.log(x))
  rng = np.random.default_rng(seed)
  picks = [rng.integers(0, rows.size, batch_size) for _ in range(steps)]
  return [tuple(jnp.asarray(c[pick]) for c in columns) for pick in picks]


def _lookup(table: jax.Array, ids: jax.Array, gather_spec: Any) -> jax.Array:
  """``table[ids]``; in Explicit mode, sharded along the batch axis ``gather_spec``."""
  if gather_spec is None:
    return table[ids]
  return table.at[ids].get(out_sharding=P(gather_spec, *([None] * (table.ndim - 1))))


def _ids_loss(params, ids, weight, log_x, gather_spec=None):
  rows = {name: _lookup(table, ids[name], gather_spec) for name, table in params.items()}
  return cost(predict(**rows), log_x, weight)


def _ids(i: jax.Array, j: jax.Array) -> dict[str, jax.Array]:
  return {"word": i, "word_bias": i, "context": j, "context_bias": j}


def pair_loss(params: dict[str, jax.Array], batch: Batch, gather_spec: Any = None) -> jax.Array:
  """glove_model's :func:`cost` (summed over the pairs) of a :func:`make_batches` batch;
  ``gather_spec``: in Explicit mode, the mesh axis the batch is split over."""
  i, j, weight, log_x = batch
  return _ids_loss(params, _ids(i, j), weight, log_x, gather_spec)


def _step_fn(tx: optax.GradientTransformation, gather_spec: Any = None, routing: Any = None):
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


def _loop(step, params, state, batches, put=lambda batch: batch, bar=None):
  """Runs ``step`` on every batch: ``(params, state, losses per pair, routing log)``."""
  losses, log = [], []
  for batch in batches:
    params, state, loss, *stats = step(params, state, put(batch))
    losses.append(float(loss) / batch[0].shape[0])
    if stats:
      log.append({"overflowed": bool(stats[0].overflowed), "max_load": int(stats[0].max_load)})
    if bar is not None:
      bar.set_postfix(loss=f"{losses[-1]:.4f}")
      bar.update()
  return params, state, losses, log


def train_single_device(
  tx: optax.GradientTransformation, params: dict[str, jax.Array], batches: Sequence[Batch], bar=None
) -> tuple[dict[str, jax.Array], Any, list[float]]:
  """The reference: the same steps on one device; ``(params, state, losses per pair)``."""
  return _loop(jax.jit(_step_fn(tx)), params, tx.init(params), batches, bar=bar)[:3]


def train_sharded(
  tx: optax.GradientTransformation,
  params: dict[str, jax.Array],
  batches: Sequence[Batch],
  mesh: jax.sharding.Mesh,
  *,
  sparse_rows: bool = False,
  capacity: int | None = None,
  bar: Any = None,
) -> tuple[dict[str, jax.Array], Any, list[float], list[dict[str, Any]]]:
  """The same steps with the tables split by rows over ``mesh``'s ``rows`` axis.

  ``sparse_rows``: only the looked-up rows, routed to their owners
  (:func:`optax_blockada.routed.value_and_update`, ``capacity`` ids per device per shard),
  each batch split over all devices. Returns ``(params, state, losses per pair, routing)``,
  ``routing`` saying for each routed step whether it overflowed and its largest load.
  """
  routing = {"capacity": capacity, "mesh": mesh} if sparse_rows else None
  # The routed step splits the batch over all devices; the dense one over 'data'.
  batch_spec = P(("data", "rows")) if sparse_rows else P("data")
  if all(t == AxisType.Explicit for t in mesh.axis_types):
    gather_spec = None if sparse_rows else "data"
    with jax.set_mesh(mesh):
      params = jax.device_put(params, PARAM_SPECS)
      step = jax.jit(_step_fn(tx, gather_spec=gather_spec, routing=routing))
      put = lambda batch: jax.device_put(batch, batch_spec)
      return _loop(step, params, tx.init(params), batches, put, bar)

  param_sh = {k: NamedSharding(mesh, s) for k, s in PARAM_SPECS.items()}
  batch_sh = NamedSharding(mesh, batch_spec)
  # A copy (may_alias=False): the steps donate their inputs, and on one device device_put
  # would otherwise hand back the caller's own buffers, which a GPU then deletes.
  params = jax.device_put(params, param_sh, may_alias=False)
  state_sh = state_shardings(tx, params, param_sh)
  state = jax.jit(tx.init, out_shardings=state_sh)(params)
  step = jax.jit(
    _step_fn(tx, routing=routing),
    in_shardings=(param_sh, state_sh, batch_sh),
    out_shardings=(param_sh, state_sh) + (NamedSharding(mesh, P()),) * (2 if sparse_rows else 1),
    donate_argnums=(0, 1),
  )
  return _loop(step, params, state, batches, lambda batch: jax.device_put(batch, batch_sh), bar)


def shard_report(tree: Any, name: str) -> list[dict[str, Any]]:
  """Per array leaf: ``path`` (prefixed by ``name``), ``shape``, ``spec``,
  ``shard_shape``, ``devices`` and ``bytes_per_device``."""
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    shard = leaf.addressable_shards[0].data
    out.append(
      {
        "path": name + jax.tree_util.keystr(path),
        "shape": tuple(leaf.shape),
        "spec": str(getattr(leaf.sharding, "spec", P())),
        "shard_shape": tuple(shard.shape),
        "devices": len(leaf.sharding.device_set),
        "bytes_per_device": int(shard.nbytes),
      }
    )
  return out


def _compare(a: Any, b: Any) -> tuple[float, bool]:
  """The largest difference relative to ``b``'s largest entry, leaf by leaf, and whether
  ``a`` and ``b`` are equal within ``RTOL`` and ``ATOL``."""
  leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  pairs = [(np.asarray(x), np.asarray(y)) for x, y in leaves]
  diff = max(float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-30)) for x, y in pairs)
  return diff, all(np.allclose(x, y, rtol=RTOL, atol=ATOL) for x, y in pairs)


def spread_ids(batches: Sequence[Batch], vocab_size: int, seed: int = 0) -> list[Batch]:
  """The batches with the words relabelled by a random permutation (numpy ``seed``): with
  words sorted by frequency, the first rows' shard gets most ids; this spreads them."""
  perm = jnp.asarray(np.random.default_rng(seed).permutation(vocab_size), np.int32)
  return [(perm[i], perm[j], weight, log_x) for i, j, weight, log_x in batches]


def suggest_capacity(batches: Sequence[Batch], vocab_size: int, mesh: jax.sharding.Mesh) -> int:
  """:func:`optax_blockada.routed.suggest_capacity` for the words and the contexts of the
  sample ``batches`` on ``mesh``'s ``rows`` axis: the larger of the two."""
  return max(
    routed.suggest_capacity([b[k] for b in batches], vocab_size, mesh, "rows") for k in (0, 1)
  )


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m optax_blockada.examples.sharded_glove",
    description="Train GloVe with its tables and optimizer state split by rows over all "
    "devices (data-parallel batches), and check the result against a single-device run.",
  )
  add = parser.add_argument
  add("--mode", choices=("auto", "explicit"), default="auto")
  sparse = "update only the looked-up rows, routed to the devices that own them"
  add("--sparse", action="store_true", help=f"{sparse} (optax_blockada.routed)")
  spread = "relabel the words by a random permutation, so that the frequent ones are spread"
  add("--spread-ids", action="store_true", help=f"{spread} over the shards")
  cap = "with --sparse: ids each device may send to each shard per step (default: suggested"
  add("--capacity", type=int_at_least(1), help=f"{cap} from the first {_CAPACITY_SAMPLE} batches)")
  add("--optimizer", choices=_OPTIMIZERS, default="rowwise")
  add("--learning-rate", type=float_in(0), default=0.05)
  for flag, least, default in [("--steps", 1, 200), ("--vocab-size", 2, 2048), ("--dim", 1, 32)]:
    add(flag, type=int_at_least(least), default=default)
  add("--batch-size", type=int_at_least(1), default=1024)
  data = "size of the mesh's data axis, a divisor of the device count; the rest split the rows"
  add("--data-parallel", type=int_at_least(1), default=2, help=data)
  add("--seed", type=int_at_least(0), default=0)
  add("--devices", type=int_at_least(1), default=8, help="devices expected")
  add("--json", metavar="PATH")
  add("--no-progress", action="store_true", help="no progress bars")
  return parser


def _mesh(args: argparse.Namespace, prog: str) -> jax.sharding.Mesh:
  """The mesh for ``args``, or a ``ValueError`` that names the bad option as argparse does."""
  n = jax.device_count()
  if n < args.devices:
    raise ValueError(
      f"argument --devices: {args.devices} devices expected, JAX sees {n}; on CPU run it as "
      f"XLA_FLAGS=--xla_force_host_platform_device_count={args.devices} {prog}"
    )
  if args.capacity is not None and not args.sparse:
    raise ValueError("argument --capacity: applies to --sparse only; add --sparse or drop it.")
  try:
    mesh = make_mesh(args.data_parallel, explicit=args.mode == "explicit")
  except ValueError as e:
    raise ValueError(f"argument --data-parallel: {e}") from None
  rows = mesh.shape["rows"]
  split = n if args.sparse else args.data_parallel  # --sparse splits batches over all devices
  if args.vocab_size % rows or args.batch_size % split:
    raise ValueError(
      f"argument --vocab-size/--batch-size: --vocab-size must be divisible by the rows axis "
      f"({rows}) and --batch-size by {split} (the {'devices' if args.sparse else 'data axis'})."
    )
  return mesh


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point: 0 if the sharded run equals the single-device run, 1 if
  not, 2 for bad arguments or too few devices."""
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    mesh = _mesh(args, parser.prog)
  except ValueError as e:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {e}", file=sys.stderr)
    return 2
  data, rows = mesh.shape["data"], mesh.shape["rows"]
  cooc = planted_cooccurrence(args.vocab_size, _PLANTED_RANK, seed=args.seed)
  batches = make_batches(cooc, args.batch_size, args.steps, seed=args.seed + 1)
  if args.spread_ids:
    batches = spread_ids(batches, args.vocab_size, seed=args.seed + 2)
  capacity = args.capacity
  if args.sparse and capacity is None:
    capacity = suggest_capacity(batches[:_CAPACITY_SAMPLE], args.vocab_size, mesh)
  params0 = init_params(args.vocab_size, args.dim, seed=args.seed)
  tx = make_optimizer(args.optimizer, args.learning_rate)

  seconds, start = {}, time.perf_counter()
  with progress_bar("sharded", 1, 2, args.steps, enabled=not args.no_progress) as bar:
    kw = {"sparse_rows": args.sparse, "capacity": capacity, "bar": bar}
    params, state, losses, routing = train_sharded(tx, params0, batches, mesh, **kw)
  seconds["sharded"], start = time.perf_counter() - start, time.perf_counter()
  with progress_bar("one device", 2, 2, args.steps, enabled=not args.no_progress) as bar:
    ref_params, ref_state, ref_losses = train_single_device(tx, params0, batches, bar)
  seconds["single_device"] = time.perf_counter() - start

  params_diff, params_equal = _compare(params, ref_params)
  state_diff, state_equal = _compare(state, ref_state)
  equal = params_equal and state_equal
  report = shard_report(params, "params") + shard_report(state, "state")
  cells = [[str(r[k]) for k in ("path", "shape", "spec", "shard_shape")] for r in report]
  header = ["leaf", "global shape", "partition spec", "shard on each device"]
  print(
    f"GloVe, V={args.vocab_size}, d={args.dim}, {args.steps} steps of {args.batch_size} "
    f"pairs, {args.optimizer} Adagrad{' (routed sparse rows)' if args.sparse else ''}; mesh "
    f"data={data} x rows={rows} ({args.mode} mode), jax {jax.__version__} on "
    f"{jax.default_backend()}.\n\n{markdown_table(header, 'llll', cells)}\n"
  )
  verdict = "equals" if equal else "DIFFERS FROM"
  print(
    f"loss per pair: {losses[0]:.4f} -> {losses[-1]:.4f} (sharded), "
    f"{ref_losses[0]:.4f} -> {ref_losses[-1]:.4f} (one device)\n"
    f"max relative difference to the single-device run: params {params_diff:.2e}, "
    f"state {state_diff:.2e}\nthe sharded run {verdict} the single-device run (rtol {RTOL}, "
    f"atol {ATOL}); {seconds['sharded']:.1f} s sharded, {seconds['single_device']:.1f} s on "
    "one device."
  )
  summary = None
  if routing:
    summary = {
      "capacity": capacity,
      "local_ids": args.batch_size // (data * rows),
      "max_load": max(r["max_load"] for r in routing),
      "overflowed_steps": sum(r["overflowed"] for r in routing),
    }
    how = "given" if args.capacity is not None else "suggested from the first batches"
    print(
      f"routing: capacity {capacity} ids per shard per device ({how}; "
      f"{summary['local_ids']} ids per device); the largest load was "
      f"{summary['max_load']}; {summary['overflowed_steps']} of {args.steps} steps "
      "overflowed and ran with the full capacity."
    )
  if args.json is not None:
    payload = machine_facts(
      settings=vars(args),
      mesh={"data": data, "rows": rows},
      shards=report,
      losses=losses,
      single_device_losses=ref_losses,
      max_relative_difference={"params": params_diff, "state": state_diff},
      equal=equal,
      seconds=seconds,
      routing=summary,
    )
    write_json(args.json, payload)
  return 0 if equal else 1


if __name__ == "__main__":
  sys.exit(main())
