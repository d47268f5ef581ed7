# ---
# jupyter:
#   accelerator: GPU
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optax-blockada/optax-blockada/blob/main/colabs/06_scale.ipynb)
#
# # Scale: sparse row updates and sharding
#
# Embedding tables grow with the vocabulary or the item catalogue, to millions of rows, while a
# training step looks up only a few thousand of them. This notebook shows the two tools
# optax-blockada gives for that regime:
#
# 1. **Sparse row updates** (`optax_blockada.sparse`): a step that reads and writes only the
#    looked-up rows. You will see the time of one training step against the number of table rows:
#    the dense steps grow linearly with the table, the sparse ones stay flat. You will also see that
#    the sparse step gives exactly the dense step's result, and how much optimizer state each
#    Adagrad keeps.
# 2. **Sharding** (`optax_blockada.sharding`): a table split by rows over all devices, its optimizer
#    state split the same way, jitted steps that keep both shardings, the bytes each device holds,
#    and a check that the sharded run equals the single-device run.
#
# On Colab it runs at full scale on the GPU (one device) or TPU (eight). On a plain CPU, and in
# CI, it simulates eight CPU devices.

# %%
# On Colab, install optax-blockada from GitHub (elsewhere: pip install -e ".[examples]").
import subprocess
import sys

if "google.colab" in sys.modules:
  package = "optax-blockada[examples] @ git+https://github.com/optax-blockada/optax-blockada"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)

# %% tags=["parameters"]
import os

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")  # small settings in CI

# Sharding needs several devices. Without a GPU or TPU, ask XLA for 8 simulated CPU devices;
# this must happen before JAX is imported (restart the runtime if it already was). On a Colab GPU
# (one device) the mesh simply has one shard; on a Colab TPU it has eight.
ON_ACCELERATOR = any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/accel0"))
if not ON_ACCELERATOR:
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
  if "jax" in sys.modules:
    print("JAX was imported before this cell: restart the runtime to get 8 CPU devices.")

# Part 1: one training step on a (V, DIM) table looked up by BATCH ids, for V = 2**LOG2_ROWS.
DIM = 64
BATCH = 2048 if CI else 4096
LOG2_ROWS = [12, 14, 16, 18] if CI else [12, 14, 16, 18, 20, 22] + [24] * ON_ACCELERATOR
MAX_LOG2_DENSE = 16 if CI else 22  # a dense step at 2**24 x 64 needs ~16 GB of device memory
REPEATS = 7 if CI else 30  # timed steps per point (median; fewer past 1 s), after a warm-up

# Part 2: a (ROWS_PER_DEVICE * devices, SHARD_DIM) table trained for SHARD_STEPS steps, then
# sharded GloVe (optax_blockada.examples.sharded_glove): GLOVE_VOCAB words, GLOVE_DIM dimensions.
ROWS_PER_DEVICE = 1024 if CI else 1 << 16
SHARD_DIM = 32
SHARD_STEPS = 20 if CI else 200
GLOVE_VOCAB = 512 if CI else 2048  # full: block Adagrad takes minutes on a CPU, not on a GPU
GLOVE_STEPS = 30 if CI else 200
GLOVE_DIM = 16 if CI else 32
GLOVE_LR = 0.2

# %% [markdown]
# ## Setup
#
# JAX sees the devices now. On CPU they are eight slices of the same processor: good for checking
# that sharded programs are right, not for speed-ups.

# %%
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_blockada as ob
from optax_blockada.examples import sharded_glove as sg
from optax_blockada.examples.planted import planted_cooccurrence
from optax_blockada.examples.rotation import init_params

print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} devices:")
print(jax.devices())

# %% [markdown]
# # Part 1: sparse row updates
#
# ## Why sparse matters
#
# A batch of `B` ids looks up `B` rows of a `(V, d)` table. The work that matters is `O(B d)`:
# read those rows, compute their gradient, update them. But autodiff through `table[ids]` returns
# a dense `(V, d)` gradient (zeros except at the looked-up rows), and an optimizer then reads and
# writes all `V` rows of the table and of its state. The step costs `O(V d)`: with a million-row
# table, more than 99% of it is spent on rows whose gradient is zero.
#
# `optax_blockada.sparse` does the same step on the looked-up rows only: it gathers them (ids
# merged and deduplicated to a static size), differentiates the loss with respect to that small
# table, runs the **same optax transform** on those rows and their rows of optimizer state, and
# scatters them back in place.
#
# This gives the dense result because Adagrad is **lazily exact**: a row with a zero gradient adds
# zero to its accumulator and gets a zero update, so in the dense step it does not change at all.
# Skipping it changes nothing. That holds for the library's diagonal, row-wise and block Adagrad
# and for `optax.adagrad`, which have no decay and no momentum. Momentum or Adam moments would move
# untouched rows every step; the sparse path refuses them (shown below).
#
# The two steps side by side, as a user would write them:


# %%
def loss_fn(params, ids, x, y):
  """A linear model on looked-up rows; it reads the table only through ids['table']."""
  rows = params["table"][ids["table"]]
  return jnp.mean((jnp.sum(rows * x, axis=-1) - y) ** 2)


def dense_step_fn(tx):
  def step(params, opt_state, ids, x, y):
    grads = jax.grad(loss_fn)(params, ids, x, y)  # a dense (V, d) gradient
    updates, opt_state = tx.update(grads, opt_state, params)  # reads and writes all V rows
    return optax.apply_updates(params, updates), opt_state

  return jax.jit(step, donate_argnums=(0, 1))


def sparse_step_fn(tx):
  def step(params, opt_state, ids, x, y):
    _, grads, touched = ob.sparse.value_and_grad(loss_fn)(params, ids, x, y)  # (B, d) gradient
    return ob.sparse.apply_gradients(tx, grads, opt_state, params, touched)  # B rows only

  return jax.jit(step, donate_argnums=(0, 1))


def make_batches(num_rows, batch, dim, count=4, seed=0):
  """`count` batches of uniform random ids (with repeats), inputs and targets."""
  rng = np.random.default_rng(seed)
  return [
    (
      {"table": jnp.asarray(rng.integers(0, num_rows, batch), jnp.int32)},
      jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32),
      jnp.asarray(rng.normal(size=batch), jnp.float32),
    )
    for _ in range(count)
  ]


# %% [markdown]
# ## Lazy exactness, checked
#
# On a small table, run ten steps of each Adagrad both ways from the same start and compare the
# tables and the optimizer states. Ids repeat within a batch (their gradients are summed, as
# autodiff sums them), and some rows are never looked up.


# %%
def run_steps(step, params, opt_state, batches):
  for batch in batches:
    params, opt_state = step(params, opt_state, *batch)
  return params, opt_state


def max_difference(a, b):
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


small_rows, small_batches = 1000, make_batches(1000, 256, 16, count=10, seed=1)
small_params = {"table": jax.random.normal(jax.random.key(0), (small_rows, 16))}
copy = functools.partial(jax.tree.map, jnp.copy)  # the steps donate their inputs
exactness, final_tables = {}, {}
for name, tx in {
  "optax.adagrad": optax.adagrad(0.1),
  "ob.diagonal_adagrad": ob.diagonal_adagrad(0.1),
  "ob.rowwise_adagrad": ob.rowwise_adagrad(0.1),
}.items():
  dense = run_steps(dense_step_fn(tx), copy(small_params), tx.init(small_params), small_batches)
  sparse = run_steps(sparse_step_fn(tx), copy(small_params), tx.init(small_params), small_batches)
  exactness[name] = (max_difference(dense[0], sparse[0]), max_difference(dense[1], sparse[1]))
  final_tables[name] = sparse[0]["table"]
  print(f"{name:20s} max |dense - sparse|: table %.1e, state %.1e" % exactness[name])

looked_up = np.unique(np.concatenate([np.asarray(b[0]["table"]) for b in small_batches]))
untouched = np.setdiff1d(np.arange(small_rows), looked_up)
print(f"{len(untouched)} of {small_rows} rows were never looked up")
# The claim: the sparse row-wise step equals the dense one (float32 rounding at most), and rows
# that are never looked up keep their initial values exactly.
assert max(exactness["ob.rowwise_adagrad"]) <= 1e-6
for table in final_tables.values():
  assert np.array_equal(table[untouched], small_params["table"][untouched])

# %% [markdown]
# All differences are zero or at float32 rounding (the sparse step sums some things in another
# order), and the rows that no batch looked up are bit-for-bit unchanged. A transform that is *not*
# lazily exact, such as SGD with momentum, would move those rows in a dense step; the sparse path
# detects its per-row state and refuses it rather than silently giving a different result:

# %%
momentum = optax.sgd(0.1, momentum=0.9)
try:
  sparse_step_fn(momentum)(copy(small_params), momentum.init(small_params), *small_batches[0])
except ValueError as error:
  print("ValueError:", str(error)[:300], "...")

# %% [markdown]
# ## Step time against table size
#
# Now time one whole training step (gradient, optimizer update, apply; buffers donated so updates
# are in place) for tables of `2^12` rows upward, with the same `BATCH` ids per step:
#
# - (a) dense `optax.adagrad`: full-table gradient and full-table update, the usual way;
# - (b) dense row-wise Adagrad (`ob.rowwise_adagrad`);
# - (c) sparse row-wise Adagrad;
# - (d) sparse diagonal Adagrad (`ob.diagonal_adagrad`, same numerics as `optax.adagrad`).
#
# Each point is the median of `REPEATS` steps after a warm-up step (which also compiles).
# JAX dispatches asynchronously, so the loop waits with `jax.block_until_ready` before reading the
# clock.


# %%
def median_step_ms(step, params, opt_state, batches, repeats, max_seconds=1.0):
  """Median wall time of one step, in ms, over `repeats` steps (fewer past `max_seconds`)."""
  params, opt_state = jax.block_until_ready(step(params, opt_state, *batches[0]))  # compiles
  times = []
  while len(times) < repeats and (len(times) < 3 or sum(times) < max_seconds):
    start = time.perf_counter()
    params, opt_state = step(params, opt_state, *batches[(len(times) + 1) % len(batches)])
    jax.block_until_ready((params, opt_state))  # JAX dispatches asynchronously: wait
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


CANDIDATES = {  # name: (step, optimizer, table copies the step holds: params, state, grads...)
  "(a) dense optax.adagrad": (dense_step_fn, lambda: optax.adagrad(0.1), 4),
  "(b) dense row-wise": (dense_step_fn, lambda: ob.rowwise_adagrad(0.1), 3),
  "(c) sparse row-wise": (sparse_step_fn, lambda: ob.rowwise_adagrad(0.1), 1),
  "(d) sparse diagonal": (sparse_step_fn, lambda: ob.diagonal_adagrad(0.1), 2),
}
# On a GPU or TPU, skip what would not fit in its memory (about 4 bytes x V x d per table copy).
device_memory = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
step_ms = {name: {} for name in CANDIDATES}
start = time.perf_counter()
for log2 in LOG2_ROWS:
  rows = 1 << log2
  batches = make_batches(rows, BATCH, DIM)
  for name, (make_step, make_tx, copies) in CANDIDATES.items():
    too_big = device_memory is not None and 1.5 * copies * 4 * rows * DIM > device_memory
    if (" dense " in name and log2 > MAX_LOG2_DENSE) or too_big:
      continue
    tx = make_tx()
    params = {"table": jnp.full((rows, DIM), 0.01)}  # the values do not change the time
    step_ms[name][rows] = median_step_ms(make_step(tx), params, tx.init(params), batches, REPEATS)
    del params
  times = [f"{n[:3]} {ms[rows]:.2f} ms" for n, ms in step_ms.items() if rows in ms]
  print(f"V = 2^{log2}: " + ", ".join(times))
print(f"({time.perf_counter() - start:.0f} s)")

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
for name, times in step_ms.items():
  style = "--" if " dense " in name else "-"
  ax.plot(list(times), list(times.values()), style, marker="o", label=name)
dense_a = step_ms["(a) dense optax.adagrad"]
v_ref = 2.0 ** np.array(LOG2_ROWS)
ax.plot(v_ref, dense_a[max(dense_a)] * v_ref / max(dense_a), color="gray", lw=0.8, label="~ V")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_ylim(0.5 * min(min(t.values()) for t in step_ms.values()), 3 * max(dense_a.values()))
ax.set_title(
  f"One training step, (V, {DIM}) float32 table, {BATCH} ids per step ({jax.default_backend()})"
)
ax.set_xlabel("table rows V")
ax.set_ylabel("step time (ms, median)")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
plt.show()

largest = max(dense_a)
speedup = dense_a[largest] / step_ms["(c) sparse row-wise"][largest]
print(f"at V = {largest:,}: sparse row-wise is {speedup:.0f}x faster than dense optax.adagrad")
for name, times in step_ms.items():
  growth = times[max(times)] / times[min(times)]
  print(f"{name:24s} time at V = {max(times):>10,} / time at V = {min(times):,}: {growth:6.1f}")

# %% [markdown]
# **What to see.** The dense lines rise like the grey `~ V` line (even faster where the table stops
# fitting in the CPU caches): double the table, double the step time, although the batch is the
# same. The sparse lines stay nearly flat: their work is the `BATCH` looked-up rows. (In CI the
# dense steps stop at `2^MAX_LOG2_DENSE` rows to save time.) For small tables (`V d` comparable to
# `B d`) both ways cost about the same and the dense step can even be a little faster (no sort of
# the ids); from a few tens of thousands of rows on, the sparse step wins by a factor that grows
# with `V` (on this project's 2-core CPU, the README's benchmark measures about 360x at `2^22`
# rows). A GPU streams a dense table far faster (an H100 updates a 1 GiB table in about 3 ms),
# so there the sparse step wins later, from about `2^20` rows (on an H100: 7x at `2^22`), while
# its line stays just as flat, about 0.4 ms up to `2^24` rows. The sparse lines may still rise a little at the largest tables because random rows of a
# table that no longer fits in the caches cost memory and TLB misses. Timings on a shared machine,
# such as a CI runner, are noisy.
#
# ## Optimizer state against table size
#
# The state size needs no memory to measure: `jax.eval_shape(tx.init, ...)` gives the shapes of the
# state, and `ob.state_bytes` counts its bytes.


# %%
def state_bytes(tx, rows, dim=DIM):
  table = jax.ShapeDtypeStruct((rows, dim), jnp.float32)
  return ob.state_bytes(jax.eval_shape(tx.init, {"table": table}))


rows_axis = [1 << k for k in range(12, 27, 2)]
state_txs = {
  "diagonal (optax.adagrad): the table's size": ob.diagonal_adagrad(0.1),
  "block rows_x_shared": ob.block_adagrad(0.1, structure="rows_x_shared"),
  "row-wise": ob.rowwise_adagrad(0.1),
}
state_sizes = {name: [state_bytes(tx, v) for v in rows_axis] for name, tx in state_txs.items()}

fig, ax = plt.subplots(figsize=(7, 4.5))
for name, sizes in state_sizes.items():
  ax.plot(rows_axis, sizes, marker="o", label=name)
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_title(f"Optimizer state of a (V, {DIM}) float32 table")
ax.set_xlabel("table rows V")
ax.set_ylabel("state (bytes)")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
plt.show()

print(f"{'V':>12s} " + " ".join(f"{name.split(' (')[0]:>22s}" for name in state_sizes))
for i, v in enumerate(rows_axis):
  print(f"{v:12,d} " + " ".join(f"{sizes[i]:22,d}" for sizes in state_sizes.values()))
diagonal_sizes, rowwise_sizes = state_sizes[next(iter(state_sizes))], state_sizes["row-wise"]
# Row-wise: one float32 per row, plus one row of DIM zeros that records the row width.
assert all(a == (b - 4 * DIM) * DIM for a, b in zip(diagonal_sizes, rowwise_sizes, strict=True))

# %% [markdown]
# Diagonal Adagrad keeps one accumulator per coordinate, as many bytes as the table (a 4 GiB table
# at `2^24` rows has 4 GiB of state). Row-wise Adagrad keeps one per row, `d = 64` times less,
# and block `rows_x_shared` adds one shared `d x d` matrix to that. The sparse step reads and writes
# the looked-up rows of that state too, which is why sparse diagonal is a bit slower than sparse
# row-wise above.
#
# # Part 2: sharding a table and its optimizer state
#
# When a table outgrows one device, split it along its rows. optax-blockada adds **no collectives
# of its own**: sharding is JAX's SPMD. You place the arrays with `NamedSharding`s, `jax.jit`
# compiles one program for the whole mesh, and XLA's partitioner inserts whatever communication the
# lookups and updates need. The only thing the library has to get right is the **optimizer state's
# placement**: a `(V, 1)` row-wise accumulator (or `(V, d)` diagonal, `(V, 1, 1, d, d)` block)
# must be split along `V` exactly like its table, never replicated on every device. Generic tools
# cannot do this (`optax.tree_map_params` would hand the `(V, d)` table's spec to a `(V, 1)`
# leaf); `ob.sharding.state_shardings(tx, params, param_shardings)` can.
#
# A one-axis mesh over all devices, a table and a bias split by rows:

# %%
n_devices = jax.device_count()
mesh = jax.make_mesh((n_devices,), ("rows",), axis_types=(AxisType.Auto,))
num_rows = ROWS_PER_DEVICE * n_devices
param_sh = {"table": NamedSharding(mesh, P("rows", None)), "bias": NamedSharding(mesh, P("rows"))}
params0 = {
  "table": 0.1 * jax.random.normal(jax.random.key(0), (num_rows, SHARD_DIM)),
  "bias": jnp.zeros(num_rows),
}
# A copy (may_alias=False): the steps below donate their inputs, and on a single device
# device_put would otherwise return params0's own buffers, which the first step then deletes.
params = jax.device_put(params0, param_sh, may_alias=False)

tx = ob.rowwise_adagrad(0.1)
state_sh = ob.sharding.state_shardings(tx, params, param_sh)
opt_state = jax.jit(tx.init, out_shardings=state_sh)(params)  # built sharded, never replicated

print(f"mesh {dict(mesh.shape)}")
for row in sg.shard_report(params, "params") + sg.shard_report(opt_state, "state"):
  print(f"{row['path']:36s} {row['shape']!s:11s} {row['spec']:16s} per device {row['shard_shape']}")

# %% [markdown]
# The `(V, 1)` accumulator got the table's `P('rows', None)` and the bias's `(V,)` accumulator got
# `P('rows')` (a chain with a step counter or a shared matrix would get them replicated). For
# `jax.shard_map`, `ob.sharding.state_partition_specs` gives the same placement as
# `PartitionSpec`s:

# %%
print(ob.sharding.state_partition_specs(tx, params, {"table": P("rows", None), "bias": P("rows")}))

# %% [markdown]
# Below, each band is the part of an array one device holds: the table and its accumulator are cut
# at the same rows, so every device updates its own rows with its own state. (On a Colab GPU there
# is one device and one band: the same code runs, with a mesh of one shard.)

# %%
jax.debug.visualize_array_sharding(params["table"])
jax.debug.visualize_array_sharding(opt_state[0].sum_of_squares["table"])

# %% [markdown]
# The training step is an ordinary jitted function. Passing the shardings as `in_shardings` and
# `out_shardings` keeps the params and the state where they are from step to step (and donation
# updates them in place):


# %%
def shard_loss(params, ids, x, y):
  rows = params["table"][ids]
  return jnp.mean((jnp.sum(rows * x, axis=-1) + params["bias"][ids] - y) ** 2)


def train_step(params, opt_state, ids, x, y):
  loss, grads = jax.value_and_grad(shard_loss)(params, ids, x, y)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


sharded_step = jax.jit(
  train_step,
  in_shardings=(param_sh, state_sh, None, None, None),
  out_shardings=(param_sh, state_sh, None),
  donate_argnums=(0, 1),
)

rng = np.random.default_rng(0)
shard_batches = [
  (
    jnp.asarray(rng.integers(0, num_rows, 512), jnp.int32),
    jnp.asarray(rng.normal(size=(512, SHARD_DIM)), jnp.float32),
    jnp.asarray(rng.normal(size=512), jnp.float32),
  )
  for _ in range(SHARD_STEPS)
]
for batch in shard_batches:
  params, opt_state, loss = sharded_step(params, opt_state, *batch)

# Params and state still have the shardings they started with.
same = jax.tree.map(
  lambda a, s: a.sharding.is_equivalent_to(s, a.ndim), (params, opt_state), (param_sh, state_sh)
)
assert all(jax.tree.leaves(same))
print(f"{SHARD_STEPS} sharded steps; the params and the state kept their shardings")

# %% [markdown]
# What each device holds: the sum, over the params and the state, of the bytes of its shards.


# %%
def bytes_per_device(tree):
  out = {d: 0 for d in jax.devices()}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      out[shard.device] += shard.data.nbytes
  return list(out.values())


param_bytes, state_bytes_dev = bytes_per_device(params), bytes_per_device(opt_state)
total_params, total_state = ob.state_bytes(params), ob.state_bytes(opt_state)

fig, ax = plt.subplots(figsize=(9, 4))
x = np.arange(n_devices)
ax.bar(x - 0.2, param_bytes, width=0.4, label="params shard (table + bias)")
ax.bar(x + 0.2, state_bytes_dev, width=0.4, label="row-wise Adagrad state shard")
ax.axhline(total_params, color="C0", ls="--", label="all params, unsharded")
ax.axhline(total_state, color="C1", ls="--", label="all state, unsharded (or replicated)")
ax.set_yscale("log")
ax.set_xticks(x, [str(d.id) for d in jax.devices()])
ax.set_title(
  f"Bytes on each device: a ({num_rows:,}, {SHARD_DIM}) table split over {n_devices} devices"
)
ax.set_xlabel("device id")
ax.set_ylabel("bytes (log scale)")
ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
plt.show()

print(f"per device: params {param_bytes[0]:,} B, state {state_bytes_dev[0]:,} B")
print(f"in all:     params {total_params:,} B, state {total_state:,} B")
# Each device holds 1/n of the params and 1/n of the accumulators, plus its own copy of the
# state's record of the row widths (feature_shape: a (1, d) row for the table, (1,) for the bias).
record = 4 * (SHARD_DIM + 1)
assert param_bytes == [total_params // n_devices] * n_devices
assert state_bytes_dev == [(total_state - record) // n_devices + record] * n_devices

# %% [markdown]
# Every device holds `1 / n` of the table and `1 / n` of the state (and a copy of the state's
# `(1, d)` record of the row width): the bars sit a factor `n` below the dashed lines. With a replicated state each device would carry the whole `(V, 1)`
# accumulator (the orange dashed line); with a replicated diagonal state, as many bytes as the
# whole table.
#
# ## The sharded run equals the single-device run
#
# Sharding changes where the numbers live, not what they are. Run the same steps on one device
# without any sharding and compare: the results must agree up to float32 rounding (a partitioned
# program may sum the batch and the gradients in another order; with this one-axis mesh and a
# replicated batch they often agree exactly).

# %%
single_step = jax.jit(train_step)
ref_params, ref_state = jax.device_put((params0, tx.init(params0)), jax.devices()[0])
for batch in shard_batches:
  ref_params, ref_state, _ = single_step(ref_params, ref_state, *batch)

# The tolerances of the sharded_glove example and its tests: float32 rounding.
sharded_leaves = jax.tree.leaves((params, opt_state))
for a, b in zip(sharded_leaves, jax.tree.leaves((ref_params, ref_state)), strict=True):
  np.testing.assert_allclose(a, b, rtol=sg.RTOL, atol=sg.ATOL)
params_diff, state_diff = max_difference(params, ref_params), max_difference(opt_state, ref_state)
print(f"max |sharded - single device|: params {params_diff:.1e}, state {state_diff:.1e}")

# %% [markdown]
# ## Sharded GloVe: a data x rows mesh, dense, sparse and block Adagrad
#
# `optax_blockada.examples.sharded_glove` does the same for a GloVe model (a word and a context
# table and their biases, trained on a planted co-occurrence matrix), on a two-axis mesh: batches
# split over `data`, tables and state split over `rows` (2 x 4 on eight devices). Its
# `train_sharded` builds the shardings exactly as above; `sparse_rows=True` combines sharding with
# the sparse row updates of Part 1, routing each id to the device that owns its row
# (`optax_blockada.routed`: every device then gathers and updates only rows of its own shard, for
# the ids of the whole batch split over all devices). Each run is compared with `train_single_device`, the same steps
# on one device: every leaf of the params and of the state must agree to `1e-4` relative to its
# largest entry (the example's `RTOL`).
#
# Block Adagrad computes a matrix inverse root per row. On several *CPU* devices the example uses
# the matmul-only Newton-Schulz root, because jaxlib 0.10.2's batched `eigh` can hang when many CPU
# devices run it at once (see the README's Block Adagrad section); GPUs and TPUs are not affected.

# %%
data_parallel = 2 if n_devices % 2 == 0 else 1
glove_mesh = sg.make_mesh(data_parallel)
glove_batches = sg.make_batches(
  planted_cooccurrence(GLOVE_VOCAB, 8, seed=0), 256, GLOVE_STEPS, seed=1
)
glove_params0 = init_params(GLOVE_VOCAB, GLOVE_DIM, seed=0)

glove_runs = {}
for label, optimizer, sparse_rows in [
  ("row-wise, dense step", "rowwise", False),
  ("row-wise, sparse step", "rowwise", True),
  ("block (rows), dense step", "block", False),
]:
  tx_glove = sg.make_optimizer(optimizer, learning_rate=GLOVE_LR)
  start = time.perf_counter()
  p_sh, s_sh, losses_sh, _ = sg.train_sharded(
    tx_glove, glove_params0, glove_batches, glove_mesh, sparse_rows=sparse_rows
  )
  p_1, s_1, losses_1 = sg.train_single_device(tx_glove, glove_params0, glove_batches)
  # Every leaf of params and state agrees to 1e-4 relative to the leaf's largest entry (entries of
  # the block accumulators that nearly cancel to zero differ by float32 rounding of the others).
  for a, b in zip(jax.tree.leaves((p_sh, s_sh)), jax.tree.leaves((p_1, s_1)), strict=True):
    np.testing.assert_allclose(a, b, rtol=sg.RTOL, atol=sg.ATOL + sg.RTOL * np.max(np.abs(b)))
  glove_runs[label] = (losses_sh, losses_1)
  scale = max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(p_1))
  seconds = time.perf_counter() - start
  relative = max_difference(p_sh, p_1) / scale
  print(f"{label:25s} max |sharded - one device| / max |w|: {relative:.1e} ({seconds:.1f} s)")

print("\nThe last run's shards:")
for row in sg.shard_report(p_sh, "params") + sg.shard_report(s_sh, "state"):
  print(f"{row['path']:45s} {row['shape']!s:18s} -> {row['shard_shape']} per device")

# %%
fig, (ax_loss, ax_diff) = plt.subplots(1, 2, figsize=(11, 4))
for label, (losses_sh, losses_1) in glove_runs.items():
  (line,) = ax_loss.plot(losses_sh, label=label)
  ax_loss.plot(losses_1, ls="none", marker=".", color=line.get_color())
  relative = np.abs(np.subtract(losses_sh, losses_1)) / np.abs(losses_1)
  ax_diff.plot(np.maximum(relative, 1e-10), marker=".", color=line.get_color(), label=label)
ax_diff.axhline(np.finfo(np.float32).eps, color="k", ls=":", label="float32 epsilon")
ax_loss.set_title("Batch loss, sharded (lines) and one device (dots)")
ax_loss.set_xlabel("step")
ax_loss.set_ylabel("GloVe loss per pair")
ax_loss.legend(fontsize=8)
ax_diff.set_yscale("log")
ax_diff.set_ylim(5e-11, 1e-4)
ax_diff.set_title("Relative difference of the batch loss (0 drawn at 1e-10)")
ax_diff.set_xlabel("step")
ax_diff.set_ylabel("|sharded - one device| / one device")
ax_diff.legend(fontsize=7)
fig.suptitle(f"Sharded GloVe on a {dict(glove_mesh.shape)} mesh vs one device")
plt.show()

# %% [markdown]
# On the left the dots (one device) sit on the lines (sharded) for every optimizer; on the right
# the differences stay at float32 rounding (or are exactly zero), step after step: the sharded
# runs, dense or sparse, row-wise or block, train the same model. (The loss jumps from step to step
# because every step draws another batch of pairs.) The shard report shows every leaf of the params
# and of the state split by rows over the `rows` axis, the block state's `d x d` matrices included.
#
# # What we saw
#
# - A dense embedding step costs `O(V d)` whatever the batch; `ob.sparse.value_and_grad` +
#   `ob.sparse.apply_gradients` cost `O(B d)`: flat in `V`, and orders of magnitude faster for big
#   tables.
# - Because Adagrad is lazily exact, the sparse step is the dense step: equal to float32 rounding,
#   untouched rows unchanged. Transforms that are not (momentum, Adam) are refused.
# - Row-wise Adagrad keeps `d` times less state than diagonal Adagrad (`optax.adagrad`).
# - Sharding is plain JAX SPMD; `ob.sharding.state_shardings` gives the state the same row
#   sharding as its table, so each device holds `1 / n` of both, and the sharded run equals the
#   single-device run.
#
# More: the README's "Sparse row updates", "Many devices" and "Performance" sections (with the
# full benchmark, `benchmarks/sparse_step.py`), and
# `python -m optax_blockada.examples.sharded_glove --help`. Earlier notebooks:
# [01 quick start](01_quick_start.ipynb), [02 basis dependence](02_basis_dependence.ipynb),
# [03 rare features](03_rare_features.ipynb), [04 GloVe](04_glove.ipynb),
# [05 recommender](05_recommender.ipynb).
