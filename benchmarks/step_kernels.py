"""Kernels per training step, counted in the optimized HLO, on CPU and on an H100 target.

A sparse step on an accelerator is bound by kernel launches, not bytes (a few thousand
rows are ~1 MB), so the number of kernels XLA launches per step is the first thing to
cut. This compiles the steps of ``sparse_step.py`` (the same functions) and counts the
kernels of each with ``_common.kernel_counts``:

* for the CPU (always), and
* for an NVIDIA H100 **without a GPU**, by JAX's deviceless ahead-of-time compilation
  (``jax.experimental.topologies.get_topology_desc(platform='cuda', target_config=...)``)
  when the CUDA plugin is installed (``pip install "jax[cuda12]"``; compiling needs no
  GPU, only the plugin and ``ptxas``). Nothing runs; the optimized HLO is what XLA's GPU
  compiler would launch on the device.

The sparse steps are compiled with each of the two routes of the deduplication's
inverse map (``optax_blockada.sparse._ids._unique``): ``'search'`` (a binary search in a
``while`` loop: the only route before issue 16, and still the default on CPU, where it is
faster) and
``'permutation'`` (the sort carries positions; one scatter; the default on GPU and TPU).

Usage::

    python benchmarks/step_kernels.py [--log2-rows 22] [--dim 64] [--batch 4096]
        [--out benchmarks/results/step_kernels]

writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the H100 target is compiled without a GPU

import jax
import jax.numpy as jnp
import numpy as np
from _common import kernel_counts, machine_facts, write_report
from sparse_step import CANDIDATES, make_step

from optax_blockada.sparse import _ids as sparse_ids

# The device description XLA's GPU compiler needs in place of a device (an H100 SXM).
H100_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84929347584
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {
    major: 9
  }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info {
  major: 9
  minor: 8
}
runtime_version {
  major: 12
  minor: 8
  patch: 0
}
device_description_str: "NVIDIA H100 80GB HBM3"
"""
ROUTES = ("search", "permutation")


def h100_device():
  """An H100 device for ahead-of-time compilation, or None without the CUDA plugin."""
  from jax.experimental import topologies

  try:
    topology = topologies.get_topology_desc(
      platform="cuda", target_config=H100_TARGET_CONFIG, topology="1x1x1"
    )
  except Exception as e:  # no CUDA plugin: the CPU counts still come out
    print(f"no H100 target ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    return None
  return topology.devices[0]


def count(name: str, route: str | None, device, rows: int, dim: int, batch: int) -> dict:
  mode, _, make = CANDIDATES[name]
  tx = make()
  sharding = jax.sharding.SingleDeviceSharding(device)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
  params = {"table": spec((rows, dim), jnp.float32)}
  state = jax.tree.map(lambda a: spec(a.shape, a.dtype), jax.eval_shape(tx.init, params))
  batch_specs = ({"table": spec((batch,), jnp.int32)}, spec((batch, dim), jnp.float32))
  batch_specs += (spec((batch,), jnp.float32),)
  default = sparse_ids._default_inverse_by
  if route is not None:
    sparse_ids._default_inverse_by = lambda: route
  try:
    compiled = make_step(tx, mode).lower(params, state, *batch_specs).compile()
  finally:
    sparse_ids._default_inverse_by = default
  return kernel_counts(compiled.as_text())


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--log2-rows", type=int, default=22)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--batch", type=int, default=4096)
  parser.add_argument("--out", default="benchmarks/results/step_kernels")
  args = parser.parse_args(argv)
  rows = 1 << args.log2_rows
  targets = {"cpu": jax.devices("cpu")[0]}
  h100 = h100_device()
  if h100 is not None:
    targets["H100 (ahead of time)"] = h100
  results = []
  for target, device in targets.items():
    for name, (mode, _, _) in CANDIDATES.items():
      for route in ROUTES if mode == "sparse" else (None,):
        counts = count(name, route, device, rows, args.dim, args.batch)
        results.append({"target": target, "optimizer": name, "route": route, **counts})
        print(target, name, route, counts, flush=True)
  lines = [
    f"Kernels XLA launches per training step (optimized HLO; a while loop's body counted "
    f"once per iteration), V = 2^{args.log2_rows}, d = {args.dim}, B = {args.batch}, "
    f"jax {jax.__version__}. Routes of the deduplication's inverse map: search (a binary "
    "search loop; the only route before, the CPU default now) and permutation (the "
    "default on GPU and TPU). The H100 column is compiled ahead of time, without a GPU.",
    "",
    "| step | route | " + " | ".join(f"{t}: kernels (loops)" for t in targets) + " |",
    "| --- | --- | " + " | ".join("---:" for _ in targets) + " |",
  ]
  keys = dict.fromkeys((r["optimizer"], r["route"]) for r in results)
  for name, route in keys:
    cells = []
    for target in targets:
      r = next(
        x for x in results if (x["target"], x["optimizer"], x["route"]) == (target, name, route)
      )
      cells.append(f"{r['kernels']} ({r['loops']})")
    lines.append(f"| {name} | {route or ''} | " + " | ".join(cells) + " |")
  settings = {"log2_rows": args.log2_rows, "dim": args.dim, "batch": args.batch}
  payload = {
    "machine": machine_facts(targets=list(targets), numpy=np.__version__),
    "settings": settings,
    "results": results,
  }
  write_report(args.out, payload, lines)


if __name__ == "__main__":
  main()
