# ---
# jupyter:
#   accelerator: GPU
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optax-blockada/optax-blockada/blob/main/colabs/01_quick_start.ipynb)
#
# # Quick start
#
# optax-blockada provides three Adagrads for embedding models as optax
# `GradientTransformation`s: **diagonal** (one accumulator per coordinate, as
# `optax.adagrad`), **row-wise** (one accumulator per feature vector, as FBGEMM/TorchRec)
# and **block** (a `d x d` accumulator per feature vector, or a shared one). This notebook
# builds each, chains them with other optax transforms, reproduces PyTorch's Adagrad with
# a preset, compares their state sizes on a realistic table (a bar chart), and trains a
# small Flax NNX GloVe model on real text with `nnx.Optimizer` (loss curves per
# optimizer).

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
CORPUS = "lee" if CI else "gensim"  # Lee news corpus (60K tokens) or Wikipedia excerpt + Lee
DIM = 16 if CI else 50  # GloVe vector size d
EPOCHS = 5 if CI else 15  # passes over the co-occurrence pairs
BATCH_SIZE = 4096 if CI else 8192  # co-occurrence pairs per step
LEARNING_RATE = 0.2  # every Adagrad's best rate in the README's GloVe table
TABLE_ROWS, TABLE_DIM = 10_000_000, 64  # the table whose optimizer state we size (not allocated)

# %% [markdown]
# ## The three Adagrads
#
# Each comes in two forms: `scale_by_*` (the scaling alone, like `optax.scale_by_rss`)
# and `*_adagrad(learning_rate, ...)` (the scaling followed by `-learning_rate`, like
# `optax.adagrad`). Here is one step of each on a `(4, 3)` table whose gradient touches
# rows 0 and 2 only.

# %%
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_blockada as ob

table = jnp.zeros((4, 3))
grad = jnp.array([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
adagrads = {
  "diagonal": ob.diagonal_adagrad(0.1),
  "row-wise": ob.rowwise_adagrad(0.1),
  "block (rows)": ob.block_adagrad(0.1),
  "block (rows_x_shared)": ob.block_adagrad(0.1, structure="rows_x_shared"),
}
for name, tx in adagrads.items():
  state = tx.init(table)
  updates, state = tx.update(grad, state, table)
  shapes = {
    # Every field is an array, but the shared structures' cache: optax.EmptyState() here.
    k: v.shape
    for k, v in ob.find_adagrad_states(state)[0]._asdict().items()
    if hasattr(v, "shape")
  }
  print(f"{name}: state {shapes}\n  update\n{np.round(np.asarray(updates), 4)}")
  assert not np.any(updates[1]) and not np.any(updates[3])  # untouched rows do not move

# %% [markdown]
# Rows 1 and 3 had no gradient and do not move: all three are *lazily exact*, which is
# what makes the sparse row-update path possible. The states differ: diagonal keeps a
# `(4, 3)` accumulator, row-wise a `(4, 1)` one (one number per row, fed by the row mean
# of `g * g`), block `'rows'` a `3 x 3` matrix per row, `rows_x_shared` a per-row scalar
# plus one shared `3 x 3` matrix. Row-wise scales each row's gradient by one number, so
# row 0 moves along its gradient `(3, 0, 4)`, and so does block `'rows'` (its first step
# is `(g g^T + 0.1 I)^(-1/2) g`, a multiple of `g`); diagonal rescales each coordinate and
# turns the step towards `(1, 0, 1)`. `rows_x_shared` shapes the step with the matrix
# shared by all rows, here built from the two touched rows.
#
# `ob.diagonal_adagrad` with its defaults *is* `optax.adagrad`, and every `*_adagrad` is
# its `scale_by_*` followed by `optax.scale_by_learning_rate`:

# %%
key = jax.random.key(0)
grads = [jax.random.normal(jax.random.fold_in(key, t), (4, 3)) for t in range(5)]


def run(tx, grads=grads):
  params, state = table, tx.init(table)
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


np.testing.assert_allclose(run(ob.diagonal_adagrad(0.1)), run(optax.adagrad(0.1)), rtol=1e-6)
np.testing.assert_allclose(
  run(ob.rowwise_adagrad(0.1)),
  run(optax.chain(ob.scale_by_rowwise_adagrad(), optax.scale_by_learning_rate(0.1))),
  rtol=1e-6,
)
np.testing.assert_allclose(
  run(ob.block_adagrad(0.1, structure="rows_x_shared")),
  run(
    optax.chain(
      ob.scale_by_block_adagrad(structure="rows_x_shared"), optax.scale_by_learning_rate(0.1)
    )
  ),
  rtol=1e-6,
)
print("diagonal_adagrad == optax.adagrad; *_adagrad == scale_by_* + scale_by_learning_rate")

# %% [markdown]
# ## Chaining with optax
#
# The `scale_by_*` forms drop into any optax chain: clipping before, a schedule after.
# `optax.partition` gives different leaves different optimizers, e.g. block Adagrad for
# the embedding table and row-wise Adagrad for a dense layer.

# %%
params = {
  "words": jnp.zeros((1000, 32)),  # an embedding table: 1000 rows of d = 32
  "dense": jnp.zeros((32, 8)),  # a dense kernel
  "bias": jnp.zeros(1000),  # one bias per word
}
chained = optax.chain(
  optax.clip_by_global_norm(1.0),
  ob.scale_by_rowwise_adagrad(),
  optax.scale_by_learning_rate(optax.cosine_decay_schedule(0.5, decay_steps=1000)),
)
partitioned = optax.partition(
  {"block": ob.block_adagrad(0.5, structure="rows_x_shared"), "rowwise": ob.rowwise_adagrad(0.1)},
  {"words": "block", "dense": "rowwise", "bias": "rowwise"},
)
for name, tx in {"clip + row-wise + cosine schedule": chained, "partition": partitioned}.items():
  state = tx.init(params)
  kinds = [type(s).__name__ for s in ob.find_adagrad_states(state)]
  print(f"{name}: {ob.state_bytes(state):,} bytes of state in {kinds}")

# %% [markdown]
# Both are ordinary optax optimizers (`init`, `update`, jit-able). The chain keeps one
# accumulator per word row, per dense-kernel row and per bias entry, plus the schedule's
# step count; the partition holds a block state for the word table (one scalar per row
# plus one `32 x 32` shared matrix) and a row-wise state for the other leaves.
# `ob.find_adagrad_states` finds the Adagrad states wherever they sit in a chain.
#
# **Feature axes.** A *row* is a fibre of a leaf along its feature axes: by default the
# last axis of a leaf with `ndim >= 2`, and none for a bias, whose every scalar is its
# own row (so a bias gets per-element Adagrad). Override it per leaf with a pytree prefix;
# `()` means "every element is a row", i.e. diagonal statistics for that leaf:

# %%
tx = ob.rowwise_adagrad(0.1, feature_axes={"words": -1, "dense": (), "bias": None})
print(jax.tree.map(jnp.shape, tx.init(params)[0].sum_of_squares))

# %% [markdown]
# The word table keeps one accumulator per row, `(1000, 1)`; the dense kernel, with
# feature axes `()`, one per element, `(32, 8)`; the bias one per element, `(1000,)`.
#
# ## Presets: other ecosystems' numerics
#
# Adagrads differ between libraries in the initial accumulator, where `eps` goes (inside
# or outside the square root), whether a step divides by the accumulator before or after
# this step's gradient is added, and the decay. `ob.presets` reproduces each exactly:
# `torch_adagrad`, `torchrec_rowwise_adagrad`, `keras_adagrad`, `fbgemm_exact_adagrad`,
# `fbgemm_rowwise_adagrad`, `glove_adagrad` and `lightfm_adagrad`. These choices dominate
# the first steps: the table gives the first step of each, per unit of learning rate,
# for a small gradient of `1e-3`.

# %%
from optax_blockada import presets

first_step = {
  "optax.adagrad": optax.adagrad(1.0),
  "ob.diagonal_adagrad": ob.diagonal_adagrad(1.0),
  "ob.rowwise_adagrad": ob.rowwise_adagrad(1.0),
  "presets.torch_adagrad": presets.torch_adagrad(1.0),
  "presets.torchrec_rowwise_adagrad": presets.torchrec_rowwise_adagrad(1.0),
  "presets.keras_adagrad": presets.keras_adagrad(1.0),
  "presets.fbgemm_exact_adagrad": presets.fbgemm_exact_adagrad(1.0),
  "presets.fbgemm_rowwise_adagrad": presets.fbgemm_rowwise_adagrad(1.0),
  "presets.lightfm_adagrad": presets.lightfm_adagrad(1.0),
  "presets.glove_adagrad (eta 1)": presets.glove_adagrad(1.0),
}
row = jnp.zeros((1, 4))
small = jnp.full((1, 4), 1e-3)
print(f"{'optimizer':<36} first step / (lr * g)")
multipliers = {}
for name, tx in first_step.items():
  updates, _ = tx.update(small, tx.init(row), row)
  multipliers[name] = float(-updates[0, 0] / 1e-3)
  print(f"{name:<36} {multipliers[name]:10.4g}")
assert abs(multipliers["presets.torch_adagrad"] * 1e-3 - 1.0) < 1e-6  # a sign step: lr * sign(g)
assert abs(multipliers["optax.adagrad"] - 1 / np.sqrt(0.1 + 1e-6 + 1e-7)) < 1e-3

# %% [markdown]
# PyTorch and FBGEMM start the accumulator at 0 with `eps` outside the root, so the first
# step of any non-zero gradient is `lr * sign(g)`, a full step (here 1000 times the
# gradient). optax and Keras start it at 0.1, which makes the first step about
# `3.2 * lr * g`; LightFM and GloVe start at 1 (GloVe's vectors at `1 / eta^2`) and divide
# by the *old* accumulator, so their first step is plain SGD. Moving a model between
# ecosystems without the matching preset changes its early training.
#
# **Reproducing `torch.optim.Adagrad`.** PyTorch's update, from
# `torch/optim/adagrad.py`, with its weight decay and learning-rate decay, is four lines
# of numpy. The preset matches it over a few random steps, and matches PyTorch itself
# when torch is installed:

# %%
import importlib.util

lr, lr_decay, weight_decay, eps = 0.1, 0.01, 1e-3, 1e-10
rng = np.random.default_rng(0)
start = rng.normal(size=(5, 3))
torch_grads = rng.normal(size=(8, 5, 3))


def torch_formula(p, grads):
  p, G = p.copy(), np.zeros_like(p)
  for t, g in enumerate(grads, start=1):
    g = g + weight_decay * p
    clr = lr / (1 + (t - 1) * lr_decay)
    G += g * g
    p -= clr * g / (np.sqrt(G) + eps)
  return p


tx = presets.torch_adagrad(lr, lr_decay=lr_decay, weight_decay=weight_decay)
p, state = jnp.asarray(start, jnp.float32), tx.init(jnp.asarray(start, jnp.float32))
for g in torch_grads:
  updates, state = tx.update(jnp.asarray(g, jnp.float32), state, p)
  p = optax.apply_updates(p, updates)
np.testing.assert_allclose(p, torch_formula(start, torch_grads), rtol=1e-5, atol=1e-6)
print("presets.torch_adagrad == PyTorch's formula (float64 numpy)")

if importlib.util.find_spec("torch"):
  import torch

  weight = torch.tensor(start, dtype=torch.float32, requires_grad=True)
  opt = torch.optim.Adagrad([weight], lr=lr, lr_decay=lr_decay, weight_decay=weight_decay)
  for g in torch_grads:
    weight.grad = torch.tensor(g, dtype=torch.float32)
    opt.step()
  np.testing.assert_allclose(p, weight.detach().numpy(), rtol=1e-5, atol=1e-6)
  print(f"presets.torch_adagrad == torch.optim.Adagrad (torch {torch.__version__})")
else:
  print("torch is not installed: skipped the comparison with torch.optim.Adagrad itself")

# %% [markdown]
# ## State size
#
# The optimizer state of an embedding table can be as large as the table. `ob.state_bytes`
# counts it, and with `jax.eval_shape` it does so without allocating anything, so we can
# size the state of a `TABLE_ROWS x TABLE_DIM` float32 table (2.6 GB at the default 10M x
# 64) on any machine.

# %%
import math

import matplotlib.pyplot as plt

big_table = jax.ShapeDtypeStruct((TABLE_ROWS, TABLE_DIM), jnp.float32)
unlimited = {"max_state_bytes": math.inf}  # block 'rows' refuses > 1 GiB per leaf by default
sized = {
  "optax.adagrad": optax.adagrad(0.1),
  "diagonal": ob.diagonal_adagrad(0.1),
  "row-wise": ob.rowwise_adagrad(0.1),
  "block rows": ob.block_adagrad(0.1, **unlimited),
  "block blocks (k=8)": ob.block_adagrad(0.1, structure="blocks", block_size=8, **unlimited),
  "block shared": ob.block_adagrad(0.1, structure="shared"),
  "block rows_x_shared": ob.block_adagrad(0.1, structure="rows_x_shared"),
}
state_sizes = {
  name: ob.state_bytes(jax.eval_shape(tx.init, big_table)) for name, tx in sized.items()
}
table_bytes = ob.state_bytes(big_table)
for name, size in state_sizes.items():
  print(f"{name:<22} {size:>18,} bytes  ({size / table_bytes:.3g} x the table)")

fig, ax = plt.subplots(figsize=(8, 4))
ax.bar(list(state_sizes), list(state_sizes.values()), color="tab:blue")
ax.axhline(
  table_bytes, color="black", linestyle="--", label=f"the table itself ({table_bytes:,} bytes)"
)
ax.set_yscale("log")
ax.set_ylim(top=100 * max(state_sizes.values()))  # room for the legend
ax.set_title(f"Optimizer state of a {TABLE_ROWS:,} x {TABLE_DIM} float32 table")
ax.set_xlabel("optimizer")
ax.set_ylabel("state size (bytes, log scale)")
ax.tick_params(axis="x", rotation=30)
ax.legend()
fig.tight_layout()
plt.show()

assert state_sizes["diagonal"] == table_bytes == state_sizes["optax.adagrad"]
# d times smaller, plus one (1, d) row of zeros recording the row width
assert (state_sizes["row-wise"] - 4 * TABLE_DIM) * TABLE_DIM == state_sizes["diagonal"]

# %% [markdown]
# Diagonal Adagrad stores as much as the table; row-wise stores `d = 64` times less (one
# float per row, and one row of `d` zeros whose shape records the row width); block `'rows'` stores `d` times *more* (a `d x d` matrix per row: the
# library refuses it above 1 GiB per leaf unless asked), `'blocks'` with `k = 8` stores
# `k` times the table. `'shared'` is a single `d x d` matrix per table (16 KB here), and
# `rows_x_shared`, one float per row plus that matrix, costs what row-wise costs.
#
# ## Training a Flax NNX model
#
# The transforms work with Flax NNX's `nnx.Optimizer` as with any optax optimizer. We
# train the project's GloVe model (`optax_blockada.examples.glove.GloVe`: word and
# context tables plus biases) on a real co-occurrence matrix: in CI the Lee news corpus
# from gensim's wheel (300 documents), otherwise gensim's Wikipedia excerpt plus Lee.
# Co-occurrences are counted as GloVe's `cooccur.c` does.

# %%
import time

from flax import nnx
from gensim.test.utils import datapath

from optax_blockada.examples import glove, text

if CORPUS == "lee":
  documents = text.read_corpus(datapath(text.LEE_CORPUS))  # one document per line
else:
  documents = text.gensim_corpus()
vocab = text.build_vocabulary(documents, min_count=5)
cooc = text.cooccurrence(text.encode(documents, vocab), len(vocab.words), window=10)
data = glove.prepare_data(cooc)
print(f"{sum(map(len, documents)):,} tokens, {len(vocab.words):,} words, {data.rows.size:,} pairs")

# %% [markdown]
# The training step is the one a user writes: `nnx.value_and_grad` of the loss, then
# `optimizer.update(model, grads)`. The loss is GloVe's weighted least squares, summed
# over the minibatch as `glove.c` sums its per-pair updates.


# %%
def glove_loss(model, batch):
  pred = model(batch["rows"], batch["cols"])
  return 0.5 * jnp.sum(batch["weights"] * (pred - batch["log_counts"]) ** 2)


@nnx.jit
def train_step(model, optimizer, batch):
  loss, grads = nnx.value_and_grad(glove_loss)(model, batch)
  optimizer.update(model, grads)
  return loss


def train(tx):
  model = glove.GloVe(data.vocab_size, DIM, rngs=nnx.Rngs(0))  # the same start for every tx
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  pairs = {
    "rows": data.rows,
    "cols": data.cols,
    "log_counts": data.log_counts,
    "weights": data.weights,
  }
  losses = [glove.weighted_loss(nnx.to_pure_dict(nnx.state(model, nnx.Param)), data)]
  for epoch in range(EPOCHS):
    order = np.random.default_rng([0, epoch]).permutation(data.rows.size)
    for start in range(0, order.size - BATCH_SIZE + 1, BATCH_SIZE):  # drop the last partial batch
      train_step(
        model, optimizer, {k: v[order[start : start + BATCH_SIZE]] for k, v in pairs.items()}
      )
    losses.append(glove.weighted_loss(nnx.to_pure_dict(nnx.state(model, nnx.Param)), data))
  return np.array(losses), model


trained = {}
for name, tx in {
  "optax.adagrad": optax.adagrad(LEARNING_RATE),
  "diagonal": ob.diagonal_adagrad(LEARNING_RATE),
  "row-wise": ob.rowwise_adagrad(LEARNING_RATE),
  "block (rows_x_shared)": ob.block_adagrad(LEARNING_RATE, structure="rows_x_shared"),
}.items():
  tic = time.perf_counter()
  trained[name], _ = train(tx)
  print(
    f"{name:<22} weighted loss {trained[name][0]:.4f} -> {trained[name][-1]:.4f} "
    f"({time.perf_counter() - tic:.1f} s)"
  )

# %%
fig, ax = plt.subplots(figsize=(7, 4))
styles = {"optax.adagrad": ":", "diagonal": "--"}
for name, losses in trained.items():
  ax.plot(
    np.arange(len(losses)), losses, styles.get(name, "-"), marker="o", markersize=3, label=name
  )
ax.set_yscale("log")
ax.set_title(f"GloVe (d={DIM}) on {len(vocab.words):,} words, learning rate {LEARNING_RATE}")
ax.set_xlabel("epoch (passes over the co-occurrence pairs)")
ax.set_ylabel("weighted loss per pair (glove.c cost)")
ax.legend()
plt.show()

np.testing.assert_allclose(trained["diagonal"], trained["optax.adagrad"], rtol=1e-4)
for name, losses in trained.items():
  assert losses[-1] < 0.5 * losses[0], name

# %% [markdown]
# All four optimizers train the model: the weighted loss falls severalfold in a few
# epochs. `optax.adagrad` and `ob.diagonal_adagrad` are the same optimizer, so their
# curves coincide (asserted); row-wise and block Adagrad reach similar losses with `d`
# times less state (on the full corpus the README's table compares them at their best
# rates, with analogy and similarity scores).
#
# ## Beyond this notebook
#
# * **Sparse row updates**: `ob.sparse.value_and_grad` + `ob.sparse.apply_gradients` (or
#   `ob.sparse.nnx_update` for NNX) update only the looked-up rows, at the same result:
#   [notebook 6](https://colab.research.google.com/github/optax-blockada/optax-blockada/blob/main/colabs/06_scale.ipynb).
# * **Sharding**: `ob.sharding.state_shardings(tx, params, param_shardings)` splits the
#   optimizer state along the table's rows across devices: also in notebook 6.
#
# ## What we saw
#
# * Three Adagrads, each as `scale_by_*` and `*_adagrad`; `ob.diagonal_adagrad` is
#   `optax.adagrad`, and all of them are lazily exact (untouched rows do not move).
# * They chain with clipping, schedules and `optax.partition`, and feature axes say what
#   a row is for each leaf.
# * Presets reproduce other ecosystems' numerics; `presets.torch_adagrad` matches
#   PyTorch's formula and `torch.optim.Adagrad`.
# * Row-wise state is `d` times smaller than diagonal's (64x on the table above); block
#   `rows_x_shared` costs about the same as row-wise.
# * They train a Flax NNX model through `nnx.Optimizer(model, tx, wrt=nnx.Param)`.
#
# Next: [notebook 2](https://colab.research.google.com/github/optax-blockada/optax-blockada/blob/main/colabs/02_basis_dependence.ipynb)
# (why diagonal Adagrad depends on the basis),
# [notebook 3](https://colab.research.google.com/github/optax-blockada/optax-blockada/blob/main/colabs/03_rare_features.ipynb)
# (why Adagrad helps rare features), and the
# [README](https://github.com/optax-blockada/optax-blockada#api) for the whole API.
