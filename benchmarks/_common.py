"""Timing helpers shared by the benchmark scripts (run them as ``python benchmarks/x.py``)."""

from __future__ import annotations

import collections
import json
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_blockada as ob
from optax_blockada.examples.report import machine_facts

__all__ = [
  "dense_update_step",
  "device_copy_bandwidth_gbs",
  "kernel_counts",
  "machine_facts",
  "median_seconds",
  "numpy_copy_bandwidth_gbs",
  "write_report",
]


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
  """Median wall time of ``repeats`` calls of ``fn`` (which must block until done)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def numpy_copy_bandwidth_gbs(n_bytes: int = 1 << 28, repeats: int = 5) -> float:
  """Read + write bandwidth of ``numpy.copyto`` on the host, in GB/s (the physical limit)."""
  src = np.ones(n_bytes // 4, np.float32)
  dst = np.empty_like(src)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    np.copyto(dst, src)
    times.append(time.perf_counter() - start)
  return 2 * n_bytes / min(times) / 1e9


def device_copy_bandwidth_gbs(n_bytes: int = 1 << 28, repeats: int = 10) -> float:
  """Read + write bandwidth of a jitted in-place elementwise op on the default device, GB/s.

  The buffer is donated, so the op streams it in place as the dense steps do (a fresh
  output buffer per call would also time the allocation's page faults on CPU).
  """
  x = jnp.ones(n_bytes // 4, jnp.float32)
  op = jax.jit(lambda x: x * 0.5 + 1.0, donate_argnums=0)
  x = jax.block_until_ready(op(x))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    x = jax.block_until_ready(op(x))
    times.append(time.perf_counter() - start)
  return 2 * n_bytes / min(times) / 1e9


def dense_update_step(
  tx: optax.GradientTransformation, params: jax.Array, grads: jax.Array
) -> tuple[Callable[[], None], int]:
  """A jitted, donated ``update`` + ``apply_updates`` on fixed gradients.

  Returns:
    ``(run, state_bytes)``: ``run()`` does one step and blocks until it is done.
  """
  state = tx.init(params)
  n_state = ob.state_bytes(state)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step, donate_argnums=(0, 1))
  carry = {"params": params, "state": state}

  def run():
    carry["params"], carry["state"] = step(carry["params"], carry["state"], grads)
    jax.block_until_ready(carry["params"])

  return run, n_state


# HLO instructions that launch no kernel of their own.
_NOT_KERNELS = frozenset({"parameter", "constant", "tuple", "get-tuple-element", "bitcast"})


def kernel_counts(hlo_text: str) -> dict[str, int]:
  """Kernels a compiled XLA executable launches per call, from its optimized HLO text.

  Walks the entry computation; a ``call`` is followed into its computation and a
  ``while`` loop's body is counted once per iteration when XLA knows the trip count
  (once otherwise). Every other instruction but parameters, constants, tuples and
  bitcasts counts as one kernel (a fusion, a copy, a custom call such as a sort or a
  matmul library call). XLA may still split one fusion into several launches (large
  sorts), so this is a lower bound of the launches.

  Args:
    hlo_text: ``jax.jit(f).lower(*args).compile().as_text()``.

  Returns:
    ``{'kernels': total launches, 'loops': while loops, <opcode>: count, ...}``.
  """
  computations: dict[str, list[str]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    header = re.match(r"^(ENTRY )?%?([\w.-]+) .*\{$", line)
    if header:
      current = header.group(2)
      computations[current] = []
      entry = current if header.group(1) else entry
    elif current is not None and line.startswith("  "):
      computations[current].append(line)
  counts: collections.Counter[str] = collections.Counter()

  def walk(name: str, times: int) -> None:
    for line in computations[name]:
      m = re.match(r"\s*(?:ROOT )?%?\S+ = .*? ([a-z][\w-]*)\(", line)
      if not m or m.group(1) in _NOT_KERNELS:
        continue
      op = m.group(1)
      if op == "while":
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        counts["loops"] += times
        walk(
          re.search(r"body=%?([\w.-]+)", line).group(1), times * int(trips.group(1) if trips else 1)
        )
      elif op == "call":
        walk(re.search(r"to_apply=%?([\w.-]+)", line).group(1), times)
      else:
        counts[op] += times
        counts["kernels"] += times

  if entry is None:
    raise ValueError("kernel_counts: no ENTRY computation in the HLO text")
  walk(entry, 1)
  return {"kernels": counts.pop("kernels", 0), "loops": counts.pop("loops", 0), **counts}


def write_report(out: str | Path, payload: Mapping[str, Any], lines: Sequence[str]) -> None:
  """Writes ``payload`` to ``<out>.json`` and ``lines`` to ``<out>.md``, and prints the lines."""
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
  out.with_suffix(".md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
