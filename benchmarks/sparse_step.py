"""Sparse vs dense training step on one embedding table: throughput, latency, kernels.

One jitted training step ``(params, state, batch) -> (params, state)`` with donated
buffers on a ``(V, d)`` float32 table looked up by ``B`` ids per step (uniform random,
one of 8 batches in turn), loss ``mean((table[ids] . x - y)^2)``:

* dense: ``jax.grad`` through ``table[ids]`` (a dense ``(V, d)`` gradient), then
  ``tx.update`` and ``optax.apply_updates`` over all ``V`` rows: (a) ``optax.adagrad``,
  (b) this library's row-wise Adagrad; skipped where the table, its gradient and a
  per-coordinate state would not fit in half of the device's memory;
* sparse (``optax_blockada.sparse``): gather the looked-up rows, differentiate with
  respect to them, update and scatter only them: (c) row-wise, (d) diagonal Adagrad,
  (e) block Adagrad ``'rows_x_shared'``;
* (f) the floor of any sparse step: read and write the same ``B`` rows of the table and
  of a ``(V, 1)`` accumulator (one gather and one scatter each), with no autodiff,
  merging or optimizer logic;
* ``torch.optim.Adagrad`` on ``nn.Embedding(sparse=True)`` gradients when torch is
  installed, on the same device as JAX (CUDA when JAX runs on a GPU).

Each step is timed three ways, and the three answer different questions:

* **blocked**: one call, then ``block_until_ready``: the latency of a single step,
  dispatch included (median of ``--repeats`` calls);
* **back to back**: ``--steps`` calls dispatched one after another and one final block,
  divided by ``--steps``: throughput of a Python training loop (median of 3 rounds);
* **scan**: ``--steps`` steps inside one jitted ``lax.scan``, divided by ``--steps``:
  throughput with no dispatch at all (median of 3 rounds). On an accelerator the step
  is launch-bound, and only the last two measure what training sees.

It also reports the kernels XLA launches per step (counted in the optimized HLO of the
compiled step, see ``_common.kernel_counts``), the bytes of optimizer state and, for
the dense steps, the achieved bandwidth against the device's copy bandwidth measured
in the same run (the physical limit). Bytes per element of a dense step: writing the
dense gradient (4), then the update reads g and w and writes w (12; diagonal also reads
and writes G: 20), so 16 for row-wise and 24 for diagonal.

Targets (issues 4 and 16; checked, not asserted): sparse step time flat in V; at
V = 2^22, d = 64, B = 4096 on a GPU the row-wise scan step <= 0.08 ms, <= 8x the floor
and >= 15x faster than torch; B = 65536, d = 128 <= 0.2 ms; 2^24 within 1.2x of 2^20;
on CPU (c)/(f) at 2^22 <= 1.2.

Usage::

    python benchmarks/sparse_step.py [--log2-rows 14 17 20 22 24] [--dim 64]
        [--batch 4096] [--large 22] [--repeats 20] [--steps 50] [--only '(c)' '(f)']
        [--out benchmarks/results/sparse_step_<backend>]
    python benchmarks/sparse_step.py --quick   # small V and batches, a few repeats

``--large`` adds the configuration B = 65536, d = 128 at the given V (``--large`` with
no value leaves it out). Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import (
  device_copy_bandwidth_gbs,
  kernel_counts,
  machine_facts,
  numpy_copy_bandwidth_gbs,
  write_report,
)

import optax_blockada as ob
from optax_blockada import sparse

# Dense step, bytes per element: write the gradient, read g and w, write w (+ G in, out).
DENSE_BYTES_PER_ELEMENT = {"diagonal": 24, "rowwise": 16}
N_BATCHES = 8  # distinct id batches cycled through, so no step repeats its predecessor
ROUNDS = 3  # rounds of back-to-back and scanned steps; the median is reported
TORCH = "torch.optim.Adagrad sparse=True"


def loss_fn(params, ids, x, y):
  rows = params["table"][ids["table"]]
  return jnp.mean((jnp.sum(rows * x, axis=-1) - y) ** 2)


def make_batches(rows: int, batch: int, dim: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return [
    (
      {"table": jnp.asarray(rng.integers(0, rows, batch), jnp.int32)},
      jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32),
      jnp.asarray(rng.normal(size=batch), jnp.float32),
    )
    for _ in range(N_BATCHES)
  ]


def step_fn(tx: optax.GradientTransformation, mode: str):
  """The training step ``(params, state, ids, x, y) -> (params, state)``, not jitted."""
  if mode == "dense":

    def step(params, state, ids, x, y):
      grads = jax.grad(loss_fn)(params, ids, x, y)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

  elif mode == "floor":

    def step(params, state, ids, x, y):
      del x, y
      i = ids["table"]
      rows, acc = params["table"][i], state.sum_of_squares["table"][i]
      acc = acc + jnp.mean(rows * rows, axis=-1, keepdims=True)
      new_rows = rows - 0.1 * rows * jax.lax.rsqrt(acc)
      new_acc = state.sum_of_squares["table"].at[i].set(acc)
      return {"table": params["table"].at[i].set(new_rows)}, state._replace(
        sum_of_squares={"table": new_acc}
      )

  else:

    def step(params, state, ids, x, y):
      _, grads, touched = sparse.value_and_grad(loss_fn)(params, ids, x, y)
      return sparse.apply_gradients(tx, grads, state, params, touched)

  return step


def make_step(tx: optax.GradientTransformation, mode: str):
  """One jitted step with donated params and state."""
  return jax.jit(step_fn(tx, mode), donate_argnums=(0, 1))


def make_scan(tx: optax.GradientTransformation, mode: str, steps: int):
  """``steps`` steps in one jitted ``lax.scan`` over the stacked batches (donated)."""
  step = step_fn(tx, mode)

  def run(params, state, stacked):
    def body(carry, t):
      batch = jax.tree.map(lambda a: a[t % N_BATCHES], stacked)
      return step(*carry, *batch), None

    (params, state), _ = jax.lax.scan(body, (params, state), jnp.arange(steps))
    return params, state

  return jax.jit(run, donate_argnums=(0, 1))


def _median_seconds_per_step(run, rounds: int, steps: int) -> float:
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    run()
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times)


def _blocked_and_back_to_back(one, sync, repeats: int, steps: int) -> tuple[float, float]:
  """ms per step of ``one(t)``: blocked (median of ``repeats``) and back to back.

  ``sync()`` waits for the device. Three warm-up steps come first.
  """
  for t in range(3):
    one(t)
  sync()
  blocked = []
  for t in range(repeats):
    start = time.perf_counter()
    one(t)
    sync()
    blocked.append(time.perf_counter() - start)

  def back_to_back():
    for t in range(steps):
      one(t)
    sync()

  b2b = _median_seconds_per_step(back_to_back, ROUNDS, steps)
  return 1e3 * statistics.median(blocked), 1e3 * b2b


def time_jax(tx, mode: str, rows: int, dim: int, batches, repeats: int, steps: int):
  """Blocked, back-to-back and scanned ms per step, kernels per step, state bytes."""
  params = {"table": jax.random.normal(jax.random.key(0), (rows, dim), jnp.float32)}
  state = tx.init(params)
  n_state = ob.state_bytes(state)
  # Compiled once: the executable both times the steps and gives the kernel count.
  step = make_step(tx, mode).lower(params, state, *batches[0]).compile()
  kernels = kernel_counts(step.as_text())
  carry = {"params": params, "state": state}
  del params, state

  def one(t):
    carry["params"], carry["state"] = step(carry["params"], carry["state"], *batches[t % N_BATCHES])

  blocked, b2b = _blocked_and_back_to_back(
    one, lambda: jax.block_until_ready(carry), repeats, steps
  )
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *batches)
  scan = make_scan(tx, mode, steps)

  def scanned():
    carry["params"], carry["state"] = scan(carry["params"], carry["state"], stacked)
    jax.block_until_ready(carry)

  scanned()  # compile
  in_scan = _median_seconds_per_step(scanned, ROUNDS, steps)
  return {
    "blocked_ms": blocked,
    "back_to_back_ms": b2b,
    "scan_ms": 1e3 * in_scan,
    "kernels": kernels["kernels"],
    "loops": kernels["loops"],
    "state_bytes": n_state,
  }


def time_torch_sparse(rows: int, dim: int, batches, repeats: int, steps: int, device: str):
  import torch

  torch.manual_seed(0)
  torch.sparse.check_sparse_tensor_invariants.disable()  # torch's default; says so explicitly
  emb = torch.nn.Embedding(rows, dim, sparse=True, device=device)
  opt = torch.optim.Adagrad(emb.parameters(), lr=0.1)
  data = [
    (
      torch.from_numpy(np.asarray(ids["table"]).astype(np.int64)).to(device),
      torch.from_numpy(np.array(x)).to(device),
      torch.from_numpy(np.array(y)).to(device),
    )
    for ids, x, y in batches
  ]

  def one(t):
    ids, x, y = data[t % N_BATCHES]
    opt.zero_grad(set_to_none=True)
    loss = ((emb(ids) * x).sum(-1) - y).pow(2).mean()
    loss.backward()
    opt.step()

  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  blocked, b2b = _blocked_and_back_to_back(one, sync, repeats, steps)
  return {
    "blocked_ms": blocked,
    "back_to_back_ms": b2b,
    "scan_ms": None,
    "kernels": None,
    "loops": None,
    "state_bytes": opt.state[emb.weight]["sum"].numel() * 4,
  }


CANDIDATES = {
  "(a) dense optax.adagrad": ("dense", "diagonal", lambda: optax.adagrad(0.1)),
  "(b) dense ob.rowwise_adagrad": ("dense", "rowwise", lambda: ob.rowwise_adagrad(0.1)),
  "(c) sparse ob.rowwise_adagrad": ("sparse", "rowwise", lambda: ob.rowwise_adagrad(0.1)),
  "(d) sparse ob.diagonal_adagrad": ("sparse", "diagonal", lambda: ob.diagonal_adagrad(0.1)),
  "(e) sparse ob.block_adagrad rows_x_shared": (
    "sparse",
    "block",
    lambda: ob.block_adagrad(0.1, structure="rows_x_shared"),
  ),
  "(f) floor: read + write the rows only": ("floor", "rowwise", ob.scale_by_rowwise_adagrad),
}
FLOOR = "(f) floor: read + write the rows only"
BASELINE = "(a) dense optax.adagrad"
ROWWISE = "(c) sparse ob.rowwise_adagrad"


def check_sparse_equals_dense(rows: int = 1 << 12, dim: int = 64, batch: int = 4096) -> float:
  """One step of dense and sparse row-wise Adagrad from the same state: max |difference|."""
  batches = make_batches(rows, batch, dim)
  tx = ob.rowwise_adagrad(0.1)
  params = {"table": jax.random.normal(jax.random.key(0), (rows, dim), jnp.float32)}
  dense, _ = make_step(tx, "dense")(jax.tree.map(jnp.copy, params), tx.init(params), *batches[0])
  sparse_, _ = make_step(tx, "sparse")(jax.tree.map(jnp.copy, params), tx.init(params), *batches[0])
  diff = float(jnp.max(jnp.abs(dense["table"] - sparse_["table"])))
  if not diff < 1e-5:
    raise AssertionError(f"sparse and dense steps differ by {diff}")
  return diff


def device_memory_bytes() -> int:
  """Memory of the default device (host memory on CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def dense_fits(rows: int, dim: int) -> bool:
  """Table, dense gradient, per-coordinate state and one temporary in half the memory."""
  return 4 * rows * dim * 4 <= device_memory_bytes() // 2


def _find(results, name, log2, dim, batch, key="scan_ms"):
  for r in results:
    if (r["optimizer"], r["log2_rows"], r["dim"], r["batch"]) == (name, log2, dim, batch):
      return r[key]
  return None


def _ratio(a, b):
  return None if a is None or b is None else a / b


def targets(results, log2_rows, dim, batch, large, backend):
  """``{description: (value, target or None)}``; ``None`` values were not measured."""
  lo, hi = min(log2_rows), max(log2_rows)
  mid = 22 if 22 in log2_rows else hi
  at = lambda name, log2, key="scan_ms": _find(results, name, log2, dim, batch, key)
  out = {}
  for name in (n for n, (mode, _, _) in CANDIDATES.items() if mode == "sparse"):
    out[f"{name}: scan time at 2^{hi} / at 2^{lo} (<= 1.5)"] = (
      _ratio(at(name, hi), at(name, lo)),
      1.5,
    )
  out[f"(c) scan ms at 2^{mid}, d={dim}, B={batch} (<= 0.08 on a GPU)"] = (
    at(ROWWISE, mid),
    0.08 if backend == "gpu" else None,
  )
  for key, label in (("scan_ms", "scan"), ("blocked_ms", "blocked")):
    out[f"(c) / (f) {label} at 2^{mid} (<= 8 on a GPU, <= 1.2 on CPU)"] = (
      _ratio(at(ROWWISE, mid, key), at(FLOOR, mid, key)),
      8.0 if backend == "gpu" else 1.2,
    )
  out[f"torch back-to-back / (c) scan at 2^{mid} (>= 15 on a GPU)"] = (
    _ratio(at(TORCH, mid, "back_to_back_ms"), at(ROWWISE, mid)),
    15.0 if backend == "gpu" else None,
  )
  out[f"torch back-to-back / (c) back-to-back at 2^{mid}"] = (
    _ratio(at(TORCH, mid, "back_to_back_ms"), at(ROWWISE, mid, "back_to_back_ms")),
    None,
  )
  if 24 in log2_rows and 20 in log2_rows:
    out["(c) scan at 2^24 / at 2^20 (<= 1.2)"] = (_ratio(at(ROWWISE, 24), at(ROWWISE, 20)), 1.2)
  if large is not None:
    value = _find(results, ROWWISE, large, 128, 65536)
    out[f"(c) scan ms at 2^{large}, d=128, B=65536 (<= 0.2 on a GPU)"] = (
      value,
      0.2 if backend == "gpu" else None,
    )
  if 20 in log2_rows:
    out["(b) / (a) scan time at 2^20 (<= 0.75)"] = (
      _ratio(at("(b) dense ob.rowwise_adagrad", 20), at(BASELINE, 20)),
      0.75,
    )
  return out


def _met(value, target, description):
  if value is None or target is None:
    return ""
  ok = value >= target if ">=" in description else value <= target
  return "yes" if ok else "no"


def _cell(value, digits=3):
  return "" if value is None else f"{value:.{digits}f}"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--log2-rows", type=int, nargs="+", default=[14, 17, 20, 22, 24])
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--batch", type=int, default=4096)
  parser.add_argument("--large", type=int, nargs="?", default=22, const=None)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument(
    "--only",
    nargs="+",
    default=None,
    help="run only the steps whose names start with these, e.g. --only '(c)' '(f)' torch",
  )
  parser.add_argument(
    "--quick", action="store_true", help="V in 2^12, 2^14; B = 1024; large at 2^14; 5 steps"
  )
  parser.add_argument(
    "--out", default=None, help="default benchmarks/results/sparse_step_<backend>"
  )
  args = parser.parse_args(argv)
  if args.quick:
    args.log2_rows, args.batch, args.large, args.repeats, args.steps = [12, 14], 1024, 14, 5, 5
  backend = jax.default_backend()
  out = Path(
    args.out or f"benchmarks/results/sparse_step_{backend}" + ("_quick" if args.quick else "")
  )
  torch_device = None
  try:
    import torch

    if backend == "cpu":
      torch_device = "cpu"
    elif backend == "gpu" and torch.cuda.is_available():
      torch_device = "cuda"
  except ImportError:
    pass
  try:
    from tqdm.auto import tqdm
  except ImportError:  # progress is optional
    tqdm = lambda it, **_: it

  print(f"sparse == dense check: max |difference| {check_sparse_equals_dense():.1e}")
  copy_gbs = device_copy_bandwidth_gbs()
  host_copy_gbs = numpy_copy_bandwidth_gbs()
  print(f"copy bandwidth: {copy_gbs:.1f} GB/s ({backend}), numpy {host_copy_gbs:.1f} GB/s")
  configs = [(log2, args.dim, args.batch) for log2 in args.log2_rows]
  if args.large is not None:
    configs.append((args.large, 128, 65536))
  names = list(CANDIDATES) + ([TORCH] if torch_device else [])
  if args.only:
    names = [n for n in names if n.startswith(tuple(args.only))]
  jobs = [(config, name) for config in configs for name in names]
  results, skipped = [], []
  for (log2, dim, batch), name in tqdm(jobs, desc="sparse_step"):
    rows = 1 << log2
    mode, kind = ("sparse", "diagonal") if name == TORCH else CANDIDATES[name][:2]
    if mode == "dense" and not dense_fits(rows, dim):
      skipped.append(f"2^{log2}, d={dim}: {name} (does not fit in half the memory)")
      continue
    batches = make_batches(rows, batch, dim)
    if name == TORCH:
      timing = time_torch_sparse(rows, dim, batches, args.repeats, args.steps, torch_device)
    else:
      timing = time_jax(CANDIDATES[name][2](), mode, rows, dim, batches, args.repeats, args.steps)
    r = {
      "log2_rows": log2,
      "rows": rows,
      "dim": dim,
      "batch": batch,
      "optimizer": name,
      "mode": mode,
      **timing,
    }
    steady = r["scan_ms"] if r["scan_ms"] is not None else r["back_to_back_ms"]
    if mode == "dense":
      gbs = DENSE_BYTES_PER_ELEMENT[kind] * rows * dim / (steady / 1e3) / 1e9
      r.update(achieved_gbs=gbs, fraction_of_copy_bandwidth=gbs / copy_gbs)
    results.append(r)
    print(
      f"V=2^{log2:<2} d={dim:<3} B={batch:<5} {name:42s} blocked {r['blocked_ms']:9.3f}  "
      f"b2b {r['back_to_back_ms']:9.3f}  scan {_cell(r['scan_ms']):>9} ms  "
      f"kernels {r['kernels']}",
      flush=True,
    )
    del batches
    gc.collect()
  for r in results:
    base = _find(results, BASELINE, r["log2_rows"], r["dim"], r["batch"], "scan_ms")
    mine = r["scan_ms"] if r["scan_ms"] is not None else r["back_to_back_ms"]
    r["speedup_vs_dense_optax_adagrad"] = _ratio(base, mine)
  checks = targets(results, args.log2_rows, args.dim, args.batch, args.large, backend)

  machine = machine_facts(
    copy_bandwidth_gbs=copy_gbs,
    numpy_copy_bandwidth_gbs=host_copy_gbs,
    torch_device=torch_device,
    torch=__import__("torch").__version__ if torch_device else None,
  )
  settings = {
    "configs": configs,
    "repeats": args.repeats,
    "steps": args.steps,
    "rounds": ROUNDS,
    "quick": args.quick,
  }
  lines = [
    f"Training step on a (V, d) float32 table, B uniform random ids per step, donated "
    f"buffers; {backend} ({machine['devices'][0]}, {machine['cpu_count']} cores), jax "
    f"{machine['jax']}"
    + (f", torch {machine['torch']} on {torch_device}" if torch_device else "")
    + f". Copy bandwidth {copy_gbs:.1f} GB/s (numpy {host_copy_gbs:.1f} GB/s). Times in ms "
    f"per step: blocked = median of {args.repeats} single calls each waited for; back to "
    f"back = {args.steps} calls then one wait; scan = {args.steps} steps in one lax.scan "
    f"(both the median of {ROUNDS} rounds). Speed-up against (a) and GB/s (dense, at 16 or "
    "24 bytes per table element) from the scan time. Kernels: launches per step in the "
    "optimized HLO (loops: while loops among them).",
    "",
    "| V | d | B | step | blocked | back to back | scan | speed-up vs (a) | kernels (loops) "
    "| GB/s | % of copy bw | state bytes |",
    "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in results:
    gbs = f"{r['achieved_gbs']:.1f}" if "achieved_gbs" in r else ""
    frac = f"{100 * r['fraction_of_copy_bandwidth']:.0f}" if "achieved_gbs" in r else ""
    kernels = "" if r["kernels"] is None else f"{r['kernels']} ({r['loops']})"
    lines.append(
      f"| 2^{r['log2_rows']} | {r['dim']} | {r['batch']} | {r['optimizer']} | "
      f"{r['blocked_ms']:.3f} | {r['back_to_back_ms']:.3f} | {_cell(r['scan_ms'])} | "
      f"{_cell(r['speedup_vs_dense_optax_adagrad'], 1)} | {kernels} | {gbs} | {frac} | "
      f"{r['state_bytes']:,} |"
    )
  if skipped:
    lines += ["", "Not run: " + "; ".join(skipped) + "."]
  lines += ["", "| check | value | target met |", "| --- | ---: | :---: |"]
  lines += [f"| {k} | {_cell(v, 2)} | {_met(v, t, k)} |" for k, (v, t) in checks.items()]
  payload = {
    "machine": machine,
    "settings": settings,
    "results": results,
    "skipped": skipped,
    "targets": {k: {"value": v, "target": t} for k, (v, t) in checks.items()},
  }
  write_report(out, payload, lines)


if __name__ == "__main__":
  main()
