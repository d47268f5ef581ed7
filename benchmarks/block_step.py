"""Block Adagrad step time and state size against optax.adagrad on the same leaf.

For each dimension d it times one jitted dense step ``(params, state) -> (params, state)``
(donated buffers) on a ``(rows, d)`` float32 table where only ``active`` rows carry a
non-zero gradient (the issue's setting: 20k rows, 1k active), for ``optax.adagrad``,
row-wise Adagrad, and block Adagrad in each structure and root method. It reports the
median over repeats after warm-up, the ratio against ``optax.adagrad`` in the same run,
and the bytes of optimizer state. Slow cases are repeated fewer times (about ``--budget-s``
seconds each after warm-up). Dense steps touch every row: the eigendecompositions of
``'rows'`` and ``'blocks'`` run on all rows, active or not (the sparse path in
``optax_blockada.sparse`` runs them on the touched rows only).

Usage::

    python benchmarks/block_step.py [--dims 16 32 64 128] [--rows 20000] [--active 1000]
        [--repeats 10] [--budget-s 30] [--out benchmarks/results/block_step] [--quick]

writes ``<out>.json`` and ``<out>.md``. ``--quick`` runs a small configuration (d in 8 16,
2000 rows, 100 active, 3 repeats) to check that the script works.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import dense_update_step, machine_facts, median_seconds, write_report
from tqdm.auto import tqdm

import optax_blockada as ob


def candidates(dim: int) -> dict:
  k = max(dim // 4, 1)
  big = dict(max_state_bytes=math.inf)
  return {
    "optax.adagrad": lambda: optax.adagrad(0.1),
    "ob.rowwise_adagrad": lambda: ob.rowwise_adagrad(0.1),
    "block rows eigh": lambda: ob.block_adagrad(0.1, root="eigh", **big),
    "block rows newton_schulz": lambda: ob.block_adagrad(0.1, root="newton_schulz", **big),
    f"block blocks k={k} eigh": lambda: ob.block_adagrad(
      0.1, structure="blocks", block_size=k, root="eigh", **big
    ),
    f"block blocks k={k} newton_schulz": lambda: ob.block_adagrad(
      0.1, structure="blocks", block_size=k, root="newton_schulz", **big
    ),
    "block shared eigh": lambda: ob.block_adagrad(0.1, structure="shared", root="eigh"),
    "block shared newton_schulz": lambda: ob.block_adagrad(
      0.1, structure="shared", root="newton_schulz"
    ),
    "block shared eigh every 10": lambda: ob.block_adagrad(
      0.1, structure="shared", root="eigh", update_root_every=10
    ),
    "block rows_x_shared eigh": lambda: ob.block_adagrad(0.1, structure="rows_x_shared"),
  }


def time_step(
  tx: optax.GradientTransformation, rows: int, dim: int, active: int, repeats: int, budget_s: float
):
  key = jax.random.key(0)
  params = jax.random.normal(key, (rows, dim), jnp.float32)
  grads = jax.random.normal(jax.random.fold_in(key, 1), (rows, dim), jnp.float32)
  touched = np.random.default_rng(0).choice(rows, size=active, replace=False)
  mask = np.zeros((rows, 1), np.float32)
  mask[touched] = 1.0
  grads = grads * jnp.asarray(mask)
  run, n_state = dense_update_step(tx, params, grads)

  start = time.perf_counter()
  run()  # compile + first step: the warm-up
  first = time.perf_counter() - start
  # Slow cases (d = 128 'rows' on CPU takes about a minute a step) get fewer repeats, so
  # that each case takes about budget_s after its warm-up.
  repeats = max(1, min(repeats, int(budget_s / max(first, 1e-9))))
  return median_seconds(run, repeats), n_state, first, repeats


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64, 128])
  parser.add_argument("--rows", type=int, default=20_000)
  parser.add_argument("--active", type=int, default=1_000)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument(
    "--budget-s", type=float, default=30.0, help="time budget per case for the repeats"
  )
  parser.add_argument("--out", default="benchmarks/results/block_step")
  parser.add_argument("--quick", action="store_true", help="small configuration, for checking")
  args = parser.parse_args(argv)
  if args.quick:
    args.dims, args.rows, args.active, args.repeats = [8, 16], 2_000, 100, 3
    if args.out == parser.get_default("out"):
      args.out = "benchmarks/results/block_step_quick"
  if not 0 < args.active <= args.rows:
    parser.error(f"--active must be in [1, --rows], got {args.active}")

  results = []
  jobs = [(dim, name, make) for dim in args.dims for name, make in candidates(dim).items()]
  base = {}
  for dim, name, make in tqdm(jobs, desc="block step", unit="case"):
    seconds, n_state, first, repeats = time_step(
      make(), args.rows, dim, args.active, args.repeats, args.budget_s
    )
    if name == "optax.adagrad":
      base[dim] = seconds
    results.append(
      {
        "rows": args.rows,
        "active_rows": args.active,
        "dim": dim,
        "optimizer": name,
        "median_ms": 1e3 * seconds,
        "ratio_vs_optax_adagrad": seconds / base[dim],
        "state_bytes": n_state,
        "first_step_s": first,
        "repeats": repeats,
      }
    )
    tqdm.write(
      f"d={dim:<4} {name:36s} {1e3 * seconds:10.3f} ms  x{seconds / base[dim]:8.2f}  "
      f"state {n_state:,} B"
    )

  machine = machine_facts()
  settings = {"rows": args.rows, "active": args.active, "dims": args.dims, "repeats": args.repeats}
  lines = [
    f"Dense step on a ({args.rows}, d) float32 table with {args.active} rows carrying non-zero "
    f"gradients; median of up to {args.repeats} after warm-up (fewer for slow cases, "
    f"see JSON), donated buffers; "
    f"{machine['backend']} ({machine['cpu_count']} cores), jax {machine['jax']}.",
    "",
    "| d | optimizer | median ms | x optax.adagrad | state bytes |",
    "| ---: | --- | ---: | ---: | ---: |",
  ]
  for r in results:
    lines.append(
      f"| {r['dim']} | {r['optimizer']} | {r['median_ms']:.2f} | "
      f"{r['ratio_vs_optax_adagrad']:.2f} | {r['state_bytes']:,} |"
    )
  write_report(args.out, {"machine": machine, "settings": settings, "results": results}, lines)


if __name__ == "__main__":
  main()
