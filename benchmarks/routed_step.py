"""Weak scaling of sparse steps on row-sharded tables: what each device moves and gathers.

A ``(V, d)`` float32 table split along its rows over ``D`` devices (a ``('rows',)`` mesh),
row-wise Adagrad, loss ``mean((table[ids] . 1 - y)^2)``, and a batch of ``L`` ids *per
device* (``D x L`` in all): as devices are added the global batch grows with them. Two
sparse steps, compiled for 1, 2, 4 and 8 devices:

* **replicated**: today's :mod:`optax_blockada.sparse` step under ``jax.jit``; JAX's SPMD
  partitioner gathers all the ids to every device and all-reduces the looked-up rows,
  their state and their gradients, so every device handles the global batch;
* **routed**: :func:`optax_blockada.routed.value_and_update` (``shard_map``, ids routed to
  the shard that owns their row with ``all_to_all``, default capacity ``2 L / D`` per
  destination). Its exact fallback for a batch that overflows the capacity (a
  ``lax.cond`` branch that routes with capacity ``L``) is reported apart.

For each, from the compiled HLO (nothing runs, so ``V`` can be large): the collectives
(kind, result shapes), the bytes of their results on one device, the bytes one device
sends by the ring model (``(k-1)/k`` of an all-to-all's or all-gather's result, twice
that for an all-reduce, ``k`` the group size), and the most rows one gather reads on one
device. The routed step must stay flat as ``D`` grows; the replicated one grows as ``D``.

On CPU the script forces 8 host devices (they share the machine's cores, so wall times
mean nothing and are not taken). With ``--time`` on real devices (several GPUs) it also
times ``--steps`` steps dispatched back to back (median of 3 rounds).

Usage::

    python benchmarks/routed_step.py [--log2-rows 22] [--dim 64] [--local-batch 4096]
        [--devices 1 2 4 8] [--time] [--out benchmarks/results/routed_step_<backend>]

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

import jax

if jax.config.jax_platforms in (None, "", "cpu") and "device_count" not in os.environ.get(
  "XLA_FLAGS", ""
):
  jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp
import numpy as np
from _common import machine_facts, write_report
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_blockada as ob
from optax_blockada import _hlo, routed, sparse

ROUNDS = 3


def loss(params, ids, y):
  return jnp.mean((params["w"][ids["w"]].sum(-1) - y) ** 2)


def make_step(path, tx, mesh):
  if path == "routed":
    return routed.value_and_update(loss, tx, mesh=mesh)

  def replicated(params, state, ids, y):
    value, grads, touched = sparse.value_and_grad(loss)(params, ids, y)
    return value, *sparse.apply_gradients(tx, grads, state, params, touched)

  return replicated


def abstract_inputs(tx, mesh, num_rows, dim, global_batch):
  table = NamedSharding(mesh, P("rows", None))
  batch = NamedSharding(mesh, P("rows"))
  params = {"w": jax.ShapeDtypeStruct((num_rows, dim), jnp.float32, sharding=table)}
  state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    jax.eval_shape(tx.init, params),
    ob.sharding.state_shardings(tx, params),
  )
  ids = {"w": jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=batch)}
  y = jax.ShapeDtypeStruct((global_batch,), jnp.float32, sharding=batch)
  return params, state, ids, y


def gathered_rows(hlo_text: str, dim: int, *, fallback: bool = False) -> int:
  """The most rows one gather of ``dim``-wide rows reads on one device (in the routed
  step's overflow fallback, the ``lax.cond``'s branch 1, if ``fallback``)."""
  most = 0
  pattern = rf"= f32\[(\d+)(?:,1)?,{dim}\]\{{[\d,]+\}} gather\("
  for line in hlo_text.splitlines():
    m = re.search(pattern, line)
    if m and ("/branch_1_fun/" in line) == fallback:
      most = max(most, int(m.group(1)))
  return most


def summarize(collectives):
  return {
    "collectives": [
      {"kind": c.kind, "shapes": [list(s) for s in c.shapes], "group": c.group_size}
      for c in collectives
    ],
    "result_bytes": sum(c.result_bytes for c in collectives),
    "moved_bytes": sum(c.moved_bytes for c in collectives),
  }


def time_steps(step, tx, mesh, num_rows, dim, global_batch, steps):
  table = NamedSharding(mesh, P("rows", None))
  batch_sh = NamedSharding(mesh, P("rows"))
  params = jax.device_put({"w": jnp.zeros((num_rows, dim), jnp.float32)}, {"w": table})
  state = jax.jit(tx.init, out_shardings=ob.sharding.state_shardings(tx, params))(params)
  rng = np.random.default_rng(0)
  batches = [
    jax.device_put(
      (
        {"w": jnp.asarray(rng.integers(0, num_rows, global_batch), jnp.int32)},
        jnp.ones(global_batch),
      ),
      batch_sh,
    )
    for _ in range(8)
  ]
  step = jax.jit(step, donate_argnums=(0, 1))
  _, params, state, *_ = step(params, state, *batches[0])
  jax.block_until_ready(params)
  rounds = []
  for _ in range(ROUNDS):
    start = time.perf_counter()
    for t in range(steps):
      _, params, state, *_ = step(params, state, *batches[t % len(batches)])
    jax.block_until_ready(params)
    rounds.append((time.perf_counter() - start) / steps)
  return statistics.median(rounds)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--log2-rows", type=int, default=22)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--local-batch", type=int, default=4096)
  parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
  parser.add_argument("--time", action="store_true", help="also time the steps (real devices)")
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  out = args.out or f"benchmarks/results/routed_step_{jax.default_backend()}"
  num_rows, dim, local = 1 << args.log2_rows, args.dim, args.local_batch
  tx = ob.rowwise_adagrad(0.1)
  if max(args.devices) > jax.device_count():
    raise SystemExit(f"--devices {args.devices}: JAX sees {jax.device_count()} devices.")

  rows = []
  for n in args.devices:
    mesh = jax.make_mesh((n,), ("rows",), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])
    inputs = abstract_inputs(tx, mesh, num_rows, dim, n * local)
    for path in ("replicated", "routed"):
      step = make_step(path, tx, mesh)
      text = jax.jit(step, donate_argnums=(0, 1)).lower(*inputs).compile().as_text()
      found = _hlo.collectives(text)
      row = {
        "devices": n,
        "path": path,
        "global_batch": n * local,
        "gathered_rows": gathered_rows(text, dim),
        "fallback_gathered_rows": gathered_rows(text, dim, fallback=True),
        # The routed step's branch 1 is its fallback for a batch that overflows.
        "step": summarize([c for c in found if c.branch != 1]),
        "fallback": summarize([c for c in found if c.branch == 1]) if path == "routed" else None,
        "capacity": routed.default_capacity(local, n) if path == "routed" else None,
      }
      if args.time:
        row["ms_per_step"] = 1e3 * time_steps(step, tx, mesh, num_rows, dim, n * local, args.steps)
      rows.append(row)
      print(n, path, row["step"]["moved_bytes"], row["gathered_rows"], flush=True)

  facts = machine_facts(
    log2_rows=args.log2_rows,
    dim=dim,
    local_batch=local,
    forced_cpu_devices=jax.default_backend() == "cpu",
  )
  lines = [
    f"# Weak scaling of sparse steps on a row-sharded table ({jax.default_backend()})",
    "",
    f"V = 2^{args.log2_rows}, d = {dim}, {local} ids per device (the global batch grows with "
    f"the devices), row-wise Adagrad; jax {jax.__version__}. Bytes per device and per step, "
    "from the compiled HLO; 'sent' by the ring model.",
    "",
    "| devices | global batch | path | collectives (kind x count) | result bytes | sent bytes "
    "| rows gathered | fallback: sent bytes, rows gathered |" + (" ms/step |" if args.time else ""),
    "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |" + (" ---: |" if args.time else ""),
  ]
  for r in rows:
    kinds = {}
    for c in r["step"]["collectives"]:
      kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
    listed = ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())) or "none"
    fallback = ""
    if r["fallback"] is not None and r["fallback"]["collectives"]:
      fallback = f"{r['fallback']['moved_bytes']:,.0f}, {r['fallback_gathered_rows']:,}"
    elif r["fallback"] is not None:
      fallback = "none (capacity = local batch)"
    line = (
      f"| {r['devices']} | {r['global_batch']:,} | {r['path']} | {listed} | "
      f"{r['step']['result_bytes']:,} | {r['step']['moved_bytes']:,.0f} | "
      f"{r['gathered_rows']:,} | {fallback} |"
    )
    if args.time:
      line += f" {r['ms_per_step']:.3f} |"
    lines.append(line)
  lines += [
    "",
    "Machine: "
    + f"{facts['processor']}, {facts['cpu_count']} cores, backend {facts['backend']}"
    + (
      " (forced host devices sharing the cores: wall times, if any, mean little)"
      if facts["forced_cpu_devices"]
      else ""
    ),
  ]
  write_report(out, {"facts": facts, "rows": rows}, lines)


if __name__ == "__main__":
  main()
