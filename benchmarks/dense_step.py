"""Dense optimizer step on one embedding table: time, bandwidth and state size.

For a ``(V, d)`` float32 table it times one jitted step ``(params, state) -> (params,
state)`` with donated buffers for ``optax.adagrad``, this library's diagonal and row-wise
Adagrad and the FBGEMM row-wise preset, and ``torch.optim.Adagrad`` (and TorchRec-style
row-wise Adagrad written with torch ops) when torch is installed, on the same kind of
device as JAX (CUDA when JAX runs on a GPU and torch has CUDA, else the CPU). It reports the
median over repeats after warm-up, the ratio against ``optax.adagrad`` measured in the same
run, the bytes of optimizer state, and the achieved memory bandwidth against the copy
bandwidth of JAX's device (an in-place jitted elementwise op).

Bytes moved per element, the physical floor: diagonal reads g, w, G and writes w, G
(20 bytes in float32); row-wise reads g and w and writes w (12 bytes; its state is d
times smaller).

Usage::

    python benchmarks/dense_step.py [--log2-rows 14 17 20] [--dim 64] [--repeats 20]
        [--out benchmarks/results/dense_step_<backend>]

writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import (
  dense_update_step,
  device_copy_bandwidth_gbs,
  machine_facts,
  median_seconds,
  numpy_copy_bandwidth_gbs,
  write_report,
)

import optax_blockada as ob

BYTES_PER_ELEMENT = {"diagonal": 20, "rowwise": 12}


def time_optax(tx: optax.GradientTransformation, rows: int, dim: int, repeats: int):
  key = jax.random.key(0)
  params = jax.random.normal(key, (rows, dim), jnp.float32)
  grads = jax.random.normal(jax.random.fold_in(key, 1), (rows, dim), jnp.float32)
  run, n_state = dense_update_step(tx, params, grads)
  for _ in range(3):
    run()
  return median_seconds(run, repeats), n_state


def torch_device() -> str:
  """The torch device matching JAX's backend: ``'cuda'`` on a GPU when torch has CUDA."""
  import torch

  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def time_torch(kind: str, rows: int, dim: int, repeats: int):
  import torch

  device = torch_device()
  torch.manual_seed(0)
  param = torch.nn.Parameter(torch.randn(rows, dim, device=device))
  param.grad = torch.randn(rows, dim, device=device)
  if kind == "diagonal":
    opt = torch.optim.Adagrad([param], lr=0.1)
    update = opt.step
    opt.step()
    n_state = opt.state[param]["sum"].numel() * 4
  else:  # TorchRec's RowWiseAdagrad update, written with in-place torch ops.
    acc = torch.zeros(rows, 1, device=device)

    @torch.no_grad()
    def update():
      acc.add_(param.grad.pow(2).mean(dim=1, keepdim=True))
      param.addcdiv_(param.grad, acc.sqrt().add_(1e-10), value=-0.1)

    n_state = acc.numel() * 4

  def run():
    update()
    if device == "cuda":
      torch.cuda.synchronize()  # time the kernels, not their launch

  for _ in range(3):
    run()
  return median_seconds(run, repeats), n_state


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--log2-rows", type=int, nargs="+", default=[14, 17, 20])
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--out", default=None, help="default benchmarks/results/dense_step_<backend>")
  args = parser.parse_args(argv)
  args.out = args.out or f"benchmarks/results/dense_step_{jax.default_backend()}"

  try:
    import torch  # noqa: F401

    has_torch = True
  except ImportError:
    has_torch = False

  copy_gbs = device_copy_bandwidth_gbs()
  host_copy_gbs = numpy_copy_bandwidth_gbs()
  candidates = {
    "optax.adagrad": ("diagonal", lambda: optax.adagrad(0.1)),
    "ob.diagonal_adagrad": ("diagonal", lambda: ob.diagonal_adagrad(0.1)),
    "ob.rowwise_adagrad": ("rowwise", lambda: ob.rowwise_adagrad(0.1)),
    "presets.fbgemm_rowwise_adagrad": ("rowwise", lambda: ob.presets.fbgemm_rowwise_adagrad(0.1)),
  }
  results = []
  for log2 in args.log2_rows:
    rows = 1 << log2
    elements = rows * args.dim
    timings = {}
    for name, (kind, make) in candidates.items():
      seconds, n_state = time_optax(make(), rows, args.dim, args.repeats)
      timings[name] = (kind, seconds, n_state)
    if has_torch:
      timings["torch.optim.Adagrad"] = (
        "diagonal",
        *time_torch("diagonal", rows, args.dim, args.repeats),
      )
      timings["torch row-wise (TorchRec ops)"] = (
        "rowwise",
        *time_torch("rowwise", rows, args.dim, args.repeats),
      )
    base = timings["optax.adagrad"][1]
    for name, (kind, seconds, n_state) in timings.items():
      gbs = BYTES_PER_ELEMENT[kind] * elements / seconds / 1e9
      results.append(
        {
          "rows": rows,
          "dim": args.dim,
          "optimizer": name,
          "median_ms": 1e3 * seconds,
          "ratio_vs_optax_adagrad": seconds / base,
          "state_bytes": n_state,
          "achieved_gbs": gbs,
          "fraction_of_copy_bandwidth": gbs / copy_gbs,
        }
      )
      print(
        f"V=2^{log2:<2} {name:32s} {1e3 * seconds:9.3f} ms  x{seconds / base:5.2f}  "
        f"{gbs:6.1f} GB/s  state {n_state:,} B",
        flush=True,
      )

  machine = machine_facts(
    copy_bandwidth_gbs=copy_gbs,
    numpy_copy_bandwidth_gbs=host_copy_gbs,
    torch=has_torch,
    torch_device=torch_device() if has_torch else None,
  )
  lines = [
    f"Dense step on a (V, {args.dim}) float32 table, median of {args.repeats} after warm-up, "
    f"donated buffers; {machine['backend']} ({', '.join(machine['devices'])}; "
    f"{machine['cpu_count']} host cores), jax {machine['jax']}; copy bandwidth of that device "
    f"{copy_gbs:.1f} GB/s (host numpy {host_copy_gbs:.1f} GB/s)"
    + (f"; torch on {machine['torch_device']}." if has_torch else "; torch not installed."),
    "",
    "| V | optimizer | median ms | x optax.adagrad | GB/s | % of copy bw | state bytes |",
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in results:
    lines.append(
      f"| 2^{int(np.log2(r['rows']))} | {r['optimizer']} | {r['median_ms']:.2f} | "
      f"{r['ratio_vs_optax_adagrad']:.2f} | {r['achieved_gbs']:.1f} | "
      f"{100 * r['fraction_of_copy_bandwidth']:.0f} | {r['state_bytes']:,} |"
    )
  write_report(args.out, {"machine": machine, "results": results}, lines)


if __name__ == "__main__":
  main()
