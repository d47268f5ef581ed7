"""Compile time of one dense step against the number of table leaves (DLRM-style models).

A model with dozens of embedding tables hands the optimizer dozens of leaves. For
``--leaves`` N in the list, params are N float32 ``(rows, dim)`` leaves; the script
lowers and compiles ``jax.jit`` of one ``update`` + ``apply_updates`` step (abstract
shapes, nothing runs) for ``optax.adagrad``, row-wise Adagrad and each block structure,
and reports the median wall time of ``lower(...).compile()`` over ``--repeats`` fresh
compilations (one above 100 leaves; the compilation cache is off), its ratio against
``optax.adagrad``, and the kernels the compiled step launches (``_common.kernel_counts``).
Three floors come last: a per-leaf ``eigh`` of ``G^T G`` with nothing else (the least any
block Adagrad with one root per leaf compiles); the same with an accumulator in the state and
one finiteness guard (the least a step that keeps a fallback compiles); and stacking every
leaf's ``G^T G`` into one array and slicing it back (the least that batching roots across
leaves adds).

Usage::

    python benchmarks/compile_time.py [--leaves 10 100 400] [--rows 1000] [--dim 64]
        [--repeats 3] [--out benchmarks/results/compile_time_cpu] [--quick]

writes ``<out>.json`` and ``<out>.md``. ``--quick`` runs 2 and 4 leaves once each to check
that the script works.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from _common import kernel_counts, machine_facts, write_report

import optax_blockada as ob


def _floor_per_leaf_root() -> optax.GradientTransformation:
  """The least a per-leaf matrix-root step compiles: ``u = g Q diag(w) Q^T``, ``G^T G = Q w Q^T``.

  No accumulator, damping, checks or fallback: the compile-time floor of any block Adagrad
  that keeps one root computation per leaf.
  """

  def update(grads, state, params=None):
    del params

    def one(g):
      w, q = jnp.linalg.eigh(g.T @ g)
      return g @ (q * w) @ q.T

    return jax.tree.map(one, grads), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class _GuardedFloorState(NamedTuple):
  sums: optax.Updates  # C = sum of G^T G per leaf, (d, d)
  fallbacks: optax.Updates  # int32 per leaf: steps whose root was not finite


def _floor_guarded_root() -> optax.GradientTransformation:
  """The floor with state and one guard: ``C += G^T G``, ``u = g Q diag(w) Q^T`` where ``C`` and
  ``Q`` are finite, else ``g``, and a counter of the steps that fell back.

  Still no damping, clamping, per-row masks or lazy rows: the least a per-leaf step that
  detects a non-finite root and counts it compiles.
  """

  def init(params):
    return _GuardedFloorState(
      jax.tree.map(lambda p: jnp.zeros((p.shape[-1],) * 2, p.dtype), params),
      jax.tree.map(lambda p: jnp.zeros((), jnp.int32), params),
    )

  def update(grads, state, params=None):
    del params

    def one(g, c, fallbacks):
      c = c + g.T @ g
      w, q = jnp.linalg.eigh(c)
      ok = jnp.all(jnp.isfinite(c)) & jnp.all(jnp.isfinite(q))
      return jnp.where(ok, g @ (q * w) @ q.T, g), c, fallbacks + (~ok).astype(jnp.int32)

    leaves, treedef = jax.tree.flatten(grads)
    sums, fallbacks = treedef.flatten_up_to(state.sums), treedef.flatten_up_to(state.fallbacks)
    u, c, f = zip(*map(one, leaves, sums, fallbacks), strict=True)
    return treedef.unflatten(u), _GuardedFloorState(treedef.unflatten(c), treedef.unflatten(f))

  return optax.GradientTransformation(init, update)


def _floor_stacked_grams() -> optax.GradientTransformation:
  """Batching across leaves at its cheapest: stack every leaf's ``G^T G``, slice back.

  No root at all: what stacking the per-leaf ``(d, d)`` statistics into one array (for one
  batched root) and handing each leaf its slice costs to compile.
  """

  def update(grads, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(grads)
    grams = jnp.stack([g.T @ g for g in leaves]) * 2
    return treedef.unflatten([g @ grams[i] for i, g in enumerate(leaves)]), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


CANDIDATES = {
  "optax.adagrad": lambda: optax.adagrad(0.1),
  "ob.rowwise_adagrad": lambda: ob.rowwise_adagrad(0.1),
  "block rows": lambda: ob.block_adagrad(0.1),
  "block blocks k=16": lambda: ob.block_adagrad(0.1, structure="blocks", block_size=16),
  "block shared": lambda: ob.block_adagrad(0.1, structure="shared"),
  "block shared every 10": lambda: ob.block_adagrad(0.1, structure="shared", update_root_every=10),
  "block rows_x_shared": lambda: ob.block_adagrad(0.1, structure="rows_x_shared"),
  "floor: per-leaf eigh": _floor_per_leaf_root,
  "floor: eigh + state + guard": _floor_guarded_root,
  "floor: stacked grams": _floor_stacked_grams,
}


def compile_seconds(tx, n_leaves: int, rows: int, dim: int, repeats: int):
  """Median seconds of ``lower + compile`` of one step, and its kernel counts."""
  params = {f"table_{i:03d}": jax.ShapeDtypeStruct((rows, dim), "float32") for i in range(n_leaves)}
  state = jax.eval_shape(tx.init, params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  times, compiled = [], None
  for _ in range(repeats):
    jax.clear_caches()
    start = time.perf_counter()
    compiled = jax.jit(step).lower(params, state, params).compile()
    times.append(time.perf_counter() - start)
  return statistics.median(times), kernel_counts(compiled.as_text())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--leaves", type=int, nargs="+", default=[10, 100, 400])
  parser.add_argument("--rows", type=int, default=1000)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="benchmarks/results/compile_time_cpu")
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  if args.quick:
    args.leaves, args.repeats = [2, 4], 1
  jax.config.update("jax_enable_compilation_cache", False)

  results = []
  for n in args.leaves:
    base = None
    for name, make in CANDIDATES.items():
      repeats = args.repeats if n <= 100 else 1
      seconds, kernels = compile_seconds(make(), n, args.rows, args.dim, repeats)
      base = seconds if base is None else base
      results.append(
        {
          "leaves": n,
          "optimizer": name,
          "compile_s": seconds,
          "repeats": repeats,
          "vs_optax": seconds / base,
          "kernels": kernels["kernels"],
          "loops": kernels["loops"],
        }
      )
      print(f"{n:4d} leaves  {name:24s} {seconds:7.2f} s  x{seconds / base:5.2f}", flush=True)

  lines = [
    f"# Compile time of one dense step, N leaves of ({args.rows}, {args.dim}) float32",
    "",
    f"Median of {args.repeats} fresh compilations (1 above 100 leaves) of"
    " `jax.jit(step).lower(...).compile()`,"
    f" {jax.default_backend()}, jax {jax.__version__}, optax {optax.__version__}.",
    "",
    "| leaves | optimizer | compile (s) | vs optax.adagrad | kernels | loops |",
    "|---:|---|---:|---:|---:|---:|",
  ]
  for r in results:
    lines.append(
      f"| {r['leaves']} | {r['optimizer']} | {r['compile_s']:.2f} | {r['vs_optax']:.2f} | "
      f"{r['kernels']} | {r['loops']} |"
    )
  config = {k: getattr(args, k) for k in ("leaves", "rows", "dim", "repeats")}
  write_report(args.out, {"machine": machine_facts(), "config": config, "results": results}, lines)


if __name__ == "__main__":
  main()
