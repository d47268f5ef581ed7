"""Sparse vs dense training step on one embedding table: time, bandwidth and state size.

One jitted training step ``(params, state, batch) -> (params, state)`` with donated
buffers on a ``(V, d)`` float32 table looked up by ``B`` ids per step (uniform random,
a new batch every step), loss ``mean((table[ids] . x - y)^2)``:

* dense: ``jax.grad`` through ``table[ids]`` (a dense ``(V, d)`` gradient), then
  ``tx.update`` and ``optax.apply_updates`` over all ``V`` rows: (a) ``optax.adagrad``,
  (b) this library's row-wise Adagrad;
* sparse (``optax_blockada.sparse``): gather the looked-up rows, differentiate with
  respect to them, update and scatter only them: (c) row-wise, (d) diagonal Adagrad,
  (e) block Adagrad ``'rows_x_shared'``;
* ``torch.optim.Adagrad`` on ``nn.Embedding(sparse=True)`` gradients when torch is
  installed (CPU);
* (f) the floor of any sparse step: read and write the same ``B`` random rows of the
  table and of a ``(V, 1)`` accumulator, with no autodiff, merging or optimizer logic.
  Random rows of a table that no longer fits in the caches cost DRAM and TLB misses,
  so even this floor grows with ``V``; the sparse steps are compared with it too.

It reports the median over repeats after warm-up, the ratio against dense
``optax.adagrad`` in the same run, the bytes of optimizer state and, for the dense
steps, the achieved memory bandwidth against the copy bandwidth measured in the same
run (the physical limit). Bytes per element of a dense step: writing the dense
gradient (4), then the update reads g and w and writes w (12; diagonal also reads and
writes G: 20), so 16 for row-wise and 24 for diagonal.

Targets (issue 4): sparse step time flat in V (largest V within 1.5x of the smallest),
sparse at least 100x faster than dense ``optax.adagrad`` at the largest V, dense
row-wise at most 0.75x the time of dense ``optax.adagrad`` at V = 2^20.

Usage::

    python benchmarks/sparse_step.py [--log2-rows 14 17 20 22] [--dim 64]
        [--batch 4096] [--repeats 20] [--out benchmarks/results/sparse_step_<backend>]
    python benchmarks/sparse_step.py --quick   # V up to 2^17, a few repeats

writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import (
  device_copy_bandwidth_gbs,
  machine_facts,
  numpy_copy_bandwidth_gbs,
  write_report,
)

import optax_blockada as ob
from optax_blockada import sparse

# Dense step, bytes per element: write the gradient, read g and w, write w (+ G in, out).
DENSE_BYTES_PER_ELEMENT = {"diagonal": 24, "rowwise": 16}
N_BATCHES = 8  # distinct id batches cycled through, so no step repeats its predecessor


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


def make_step(tx: optax.GradientTransformation, mode: str):
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

  return jax.jit(step, donate_argnums=(0, 1))


def time_jax(tx, mode: str, rows: int, dim: int, batches, repeats: int, warmup: int = 3):
  params = {"table": jax.random.normal(jax.random.key(0), (rows, dim), jnp.float32)}
  state = tx.init(params)
  n_state = ob.state_bytes(state)
  step = make_step(tx, mode)
  carry = {"params": params, "state": state}
  del params, state
  times = []
  for t in range(warmup + repeats):
    start = time.perf_counter()
    carry["params"], carry["state"] = step(carry["params"], carry["state"], *batches[t % N_BATCHES])
    jax.block_until_ready(carry["params"])
    if t >= warmup:
      times.append(time.perf_counter() - start)
  del carry
  return statistics.median(times), n_state


def time_torch_sparse(rows: int, dim: int, batches, repeats: int, warmup: int = 3):
  import torch

  torch.manual_seed(0)
  torch.sparse.check_sparse_tensor_invariants.disable()  # torch's default; says so explicitly
  emb = torch.nn.Embedding(rows, dim, sparse=True)
  opt = torch.optim.Adagrad(emb.parameters(), lr=0.1)
  data = [
    (
      torch.from_numpy(np.asarray(ids["table"]).astype(np.int64)),
      torch.from_numpy(np.array(x)),
      torch.from_numpy(np.array(y)),
    )
    for ids, x, y in batches
  ]
  times = []
  for t in range(warmup + repeats):
    ids, x, y = data[t % N_BATCHES]
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = ((emb(ids) * x).sum(-1) - y).pow(2).mean()
    loss.backward()
    opt.step()
    if t >= warmup:
      times.append(time.perf_counter() - start)
  n_state = opt.state[emb.weight]["sum"].numel() * 4
  return statistics.median(times), n_state


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


def _targets(results, log2_rows):
  def ms(name, log2):
    for r in results:
      if r["optimizer"] == name and r["log2_rows"] == log2:
        return r["median_ms"]
    return None

  lo, hi = min(log2_rows), max(log2_rows)
  out = {}
  for name in (n for n, (mode, _, _) in CANDIDATES.items() if mode == "sparse"):
    out[f"{name}: time at 2^{hi} / time at 2^{lo} (target <= 1.5)"] = ms(name, hi) / ms(name, lo)
    out[f"{name}: speed-up vs {BASELINE} at 2^{hi} (target >= 100)"] = ms(BASELINE, hi) / ms(
      name, hi
    )
  out[f"{FLOOR}: time at 2^{hi} / time at 2^{lo}"] = ms(FLOOR, hi) / ms(FLOOR, lo)
  for log2 in log2_rows:
    out[f"(c) / (f) at 2^{log2}: sparse row-wise step over the floor"] = ms(
      "(c) sparse ob.rowwise_adagrad", log2
    ) / ms(FLOOR, log2)
  if 20 in log2_rows:
    out["(b) / (a) time at 2^20 (target <= 0.75)"] = ms("(b) dense ob.rowwise_adagrad", 20) / ms(
      BASELINE, 20
    )
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--log2-rows", type=int, nargs="+", default=[14, 17, 20, 22])
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--batch", type=int, default=4096)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--quick", action="store_true", help="V in 2^12, 2^14, 2^17; 5 repeats")
  parser.add_argument(
    "--out", default=None, help="default benchmarks/results/sparse_step_<backend>"
  )
  args = parser.parse_args(argv)
  if args.quick:
    args.log2_rows, args.repeats = [12, 14, 17], 5
  backend = jax.default_backend()
  out = Path(
    args.out or f"benchmarks/results/sparse_step_{backend}" + ("_quick" if args.quick else "")
  )

  try:
    import torch  # noqa: F401

    has_torch = backend == "cpu"
  except ImportError:
    has_torch = False
  try:
    from tqdm.auto import tqdm
  except ImportError:  # progress is optional
    tqdm = lambda it, **_: it

  print(f"sparse == dense check: max |difference| {check_sparse_equals_dense():.1e}")
  copy_gbs = device_copy_bandwidth_gbs()
  host_copy_gbs = numpy_copy_bandwidth_gbs()
  print(f"copy bandwidth: {copy_gbs:.1f} GB/s ({backend}), numpy {host_copy_gbs:.1f} GB/s")
  jobs = [(log2, name) for log2 in args.log2_rows for name in CANDIDATES]
  if has_torch:
    jobs += [(log2, "torch.optim.Adagrad sparse=True") for log2 in args.log2_rows]
    jobs.sort(key=lambda j: j[0])
  results = []
  for log2, name in tqdm(jobs, desc="sparse_step"):
    rows = 1 << log2
    batches = make_batches(rows, args.batch, args.dim)
    if name.startswith("torch"):
      mode, kind = "sparse", "diagonal"
      seconds, n_state = time_torch_sparse(rows, args.dim, batches, args.repeats)
    else:
      mode, kind, make = CANDIDATES[name]
      seconds, n_state = time_jax(make(), mode, rows, args.dim, batches, args.repeats)
    r = {
      "log2_rows": log2,
      "rows": rows,
      "dim": args.dim,
      "batch": args.batch,
      "optimizer": name,
      "mode": mode,
      "median_ms": 1e3 * seconds,
      "state_bytes": n_state,
    }
    if mode == "dense":
      gbs = DENSE_BYTES_PER_ELEMENT[kind] * rows * args.dim / seconds / 1e9
      r.update(achieved_gbs=gbs, fraction_of_copy_bandwidth=gbs / copy_gbs)
    results.append(r)
    print(f"V=2^{log2:<2} {name:44s} {1e3 * seconds:10.3f} ms  state {n_state:,} B", flush=True)
    del batches
  for r in results:
    base = next(
      x for x in results if x["optimizer"] == BASELINE and x["log2_rows"] == r["log2_rows"]
    )
    r["speedup_vs_dense_optax_adagrad"] = base["median_ms"] / r["median_ms"]
  targets = _targets(results, args.log2_rows)

  machine = machine_facts(
    copy_bandwidth_gbs=copy_gbs,
    numpy_copy_bandwidth_gbs=host_copy_gbs,
    torch=has_torch,
  )
  settings = {"dim": args.dim, "batch": args.batch, "repeats": args.repeats, "quick": args.quick}
  lines = [
    f"Training step on a (V, {args.dim}) float32 table, {args.batch} uniform random ids per "
    f"step, median of {args.repeats} after warm-up, donated buffers; {backend} "
    f"({machine['devices'][0]}, {machine['cpu_count']} cores), jax {machine['jax']}; copy "
    f"bandwidth {copy_gbs:.1f} GB/s (numpy {host_copy_gbs:.1f} GB/s). GB/s for dense steps "
    "at 16 (row-wise) or 24 (diagonal) bytes per table element.",
    "",
    "| V | step | median ms | speed-up vs (a) | GB/s | % of copy bw | state bytes |",
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in results:
    gbs = f"{r['achieved_gbs']:.1f}" if "achieved_gbs" in r else ""
    frac = f"{100 * r['fraction_of_copy_bandwidth']:.0f}" if "achieved_gbs" in r else ""
    lines.append(
      f"| 2^{r['log2_rows']} | {r['optimizer']} | {r['median_ms']:.3f} | "
      f"{r['speedup_vs_dense_optax_adagrad']:.1f} | {gbs} | {frac} | {r['state_bytes']:,} |"
    )
  lines += ["", "| target | value |", "| --- | ---: |"]
  lines += [f"| {k} | {v:.2f} |" for k, v in targets.items()]
  payload = {"machine": machine, "settings": settings, "results": results, "targets": targets}
  write_report(out, payload, lines)


if __name__ == "__main__":
  main()
