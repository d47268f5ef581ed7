# ---
# jupyter:
#   accelerator: GPU
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optax-blockada/optax-blockada/blob/main/colabs/03_rare_features.ipynb)
#
# # Why Adagrad helps rare features
#
# Adagrad divides each step by the root of the squared gradients a parameter has
# accumulated so far. In an embedding table, the rows of frequent words receive a
# gradient at almost every step and their learning rate shrinks fast; the rows of rare
# words are seldom touched and keep a large one. This notebook measures that on real
# text: we train GloVe on the offline corpus that ships with gensim with diagonal,
# row-wise and block Adagrad, then plot
#
# 1. each word's **effective learning rate** against its **corpus frequency** (log-log):
#    rare words keep large rates, frequent words get small ones;
# 2. the effective rate of a frequent, a mid-frequency and a rare word **over the
#    training steps**: it only ever goes down (Adagrad's accumulator only grows), which
#    the notebook asserts for every word;
# 3. the worked example of PyTorch's Adagrad numerics from the project's conventions,
#    reproduced with the library's `torch_adagrad` preset (and against
#    `torch.optim.Adagrad` itself when torch is installed).

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
MAX_VOCAB = 3000 if CI else None  # the most frequent words kept (None: every word with MIN_COUNT)
MIN_COUNT = 5  # the rarest word kept occurs this many times in the corpus
DIM = 32 if CI else 50  # vector size d
EPOCHS = 1 if CI else 8  # passes over the co-occurrence pairs
BATCH_SIZE = 8192  # co-occurrence pairs per step (the main job's setting)
LEARNING_RATE = 0.2  # the best rate of every Adagrad in the README's GloVe table
SEGMENT_STEPS = 10  # record the effective learning rates every this many steps
SEED = 0

# %% [markdown]
# ## The corpus and its word frequencies
#
# `gensim_corpus()` reads the two raw-English texts in gensim's wheel (a Wikipedia
# excerpt and the Lee news corpus, about 530K tokens); `build_vocabulary` keeps the words
# seen at least `MIN_COUNT` times, most frequent first, and `cooccurrence` counts GloVe's
# co-occurrences exactly as the reference `cooccur.c` does (a symmetric window of 10 with
# 1/distance weights). In CI the vocabulary is cut to the most frequent words.

# %%
import time

import numpy as np

from optax_blockada.examples import glove, text

tic = time.perf_counter()
documents = text.gensim_corpus()
vocab = text.build_vocabulary(documents, min_count=MIN_COUNT, max_size=MAX_VOCAB)
encoded = text.encode(documents, vocab)
cooc = text.cooccurrence(encoded, len(vocab.words), window=10)
data = glove.prepare_data(cooc)  # log X_ij and the weights f(X_ij) of the nonzero pairs
counts = vocab.counts
print(
  f"{sum(map(len, documents)):,} tokens, {len(vocab.words):,} words (counts "
  f"{counts[0]:,} for {vocab.words[0]!r} down to {counts[-1]:,}), {data.rows.size:,} nonzero "
  f"pairs; {time.perf_counter() - tic:.1f} s"
)

# %% [markdown]
# Word frequencies follow Zipf's law: the count of the word of rank `r` falls roughly like
# `1 / r`. A handful of words make up most of the tokens, and most of the vocabulary is
# rare. The plot shows it on this corpus.

# %%
import matplotlib.pyplot as plt

ranks = np.arange(1, counts.size + 1)
top = 100
print(
  f"the {top} most frequent words are {100 * counts[:top].sum() / counts.sum():.0f}% of the "
  f"in-vocabulary tokens; {100 * np.mean(counts < 100):.0f}% of the words occur fewer than "
  "100 times"
)
fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(ranks, counts, ".", markersize=2, label="this corpus")
ax.loglog(ranks, counts[0] / ranks, "--", color="gray", label="Zipf: count(1) / rank")
ax.set_title("Word frequencies of the offline corpus")
ax.set_xlabel("frequency rank of the word")
ax.set_ylabel("corpus count (occurrences)")
ax.legend()
plt.show()

# %% [markdown]
# ## Training GloVe with three Adagrads
#
# The optimizers are the ones of the project's GloVe line-up, all at learning rate
# `LEARNING_RATE`:
#
# * **diagonal** (`ob.diagonal_adagrad`): one accumulator per coordinate, `(V, d)` state
#   per table;
# * **row-wise** (`ob.rowwise_adagrad`): one accumulator per row, fed by the row *mean*
#   of `g * g`, `(V, 1)` state;
# * **block** (`ob.block_adagrad(..., structure="rows_x_shared")`): row-wise's per-row
#   scalar times one shared, trace-normalised `d x d` matrix per table (the cheap
#   rotation-equivariant block variant, `V + d^2` numbers).
#
# The training step is the usual optax one; we run it in segments of `SEGMENT_STEPS`
# steps (a `jax.lax.scan` each) and read the optimizer state between segments. The
# minibatch cost is the *sum* of `glove.c`'s per-pair costs (`glove.glove_cost`), as in
# the project's GloVe example.

# %%
import jax
import jax.numpy as jnp
import optax
from flax import nnx

import optax_blockada as ob

OPTIMIZERS = {
  "diagonal": ob.diagonal_adagrad(LEARNING_RATE),
  "row-wise": ob.rowwise_adagrad(LEARNING_RATE),
  "block (rows_x_shared)": ob.block_adagrad(LEARNING_RATE, structure="rows_x_shared"),
}
model = glove.GloVe(data.vocab_size, DIM, rngs=nnx.Rngs(SEED))
params0 = nnx.to_pure_dict(nnx.state(model, nnx.Param))  # word, context and their biases


def epoch_batches(epoch):
  """The pairs in a seeded random order, as (steps, BATCH_SIZE) arrays (tail padded)."""
  order = np.random.default_rng([SEED, epoch]).permutation(data.rows.size)
  steps = -(-order.size // BATCH_SIZE)
  arrays = {
    "rows": data.rows,
    "cols": data.cols,
    "log_counts": data.log_counts,
    "weights": data.weights,  # padding pairs get weight 0: no gradient
  }
  return {
    k: np.pad(v[order], (0, steps * BATCH_SIZE - order.size)).reshape(steps, BATCH_SIZE)
    for k, v in arrays.items()
  }


def make_segment(tx):
  @jax.jit
  def segment(params, opt_state, batches):
    def step(carry, batch):
      params, opt_state = carry
      cost, grads = jax.value_and_grad(glove.glove_cost)(params, batch)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), cost

    (params, opt_state), costs = jax.lax.scan(step, (params, opt_state), batches)
    return params, opt_state, costs

  return segment


def word_accumulator(opt_state):
  """Each word's accumulator in the word table: G (diagonal: mean over d) or s_r (others)."""
  state = ob.find_adagrad_states(opt_state)[0]
  sums = (
    state.row_sums if isinstance(state, ob.RowsXSharedBlockAdagradState) else state.sum_of_squares
  )
  return np.asarray(sums["word"]).mean(axis=-1)


def word_rates(opt_state):
  """Each word's effective learning rate in the word table (coordinates averaged)."""
  rates = ob.effective_learning_rates(opt_state, LEARNING_RATE)["word"]
  return np.asarray(rates).mean(axis=-1)  # (V, d) for diagonal, (V, 1) otherwise


# %% [markdown]
# `ob.effective_learning_rates(opt_state, lr)` finds the Adagrad state inside the
# optimizer state and returns `lr * phi(G)` for every row (row-wise), every element
# (diagonal), or `lr * tr((H + lam I)^(-1/2)) / d` per row (block): the step a row takes
# per unit of gradient at its next update. For diagonal Adagrad we average it over the
# `d` coordinates of a row. We record it for every word after every segment.

# %%
runs = {}
for name, tx in OPTIMIZERS.items():
  tic = time.perf_counter()
  segment = make_segment(tx)
  params, opt_state = params0, tx.init(params0)
  history, accumulators = [word_rates(opt_state)], [word_accumulator(opt_state)]
  steps_done, losses = [0], []
  for epoch in range(EPOCHS):
    batches = epoch_batches(epoch)
    n_steps = batches["rows"].shape[0]
    for start in range(0, n_steps, SEGMENT_STEPS):
      chunk = {k: v[start : start + SEGMENT_STEPS] for k, v in batches.items()}
      params, opt_state, costs = segment(params, opt_state, chunk)
      losses.append(np.asarray(costs))
      history.append(word_rates(opt_state))
      accumulators.append(word_accumulator(opt_state))
      steps_done.append(steps_done[-1] + chunk["rows"].shape[0])
  loss = glove.weighted_loss(params, data)
  runs[name] = {
    "rates": np.stack(history),  # (segments + 1, V)
    "accumulators": np.stack(accumulators),
    "steps": np.array(steps_done),
    "loss": loss,
    "state_bytes": ob.state_bytes(opt_state),
    "opt_state": opt_state,
  }
  print(
    f"{name:>22}: {steps_done[-1]} steps, final weighted loss {loss:.4f} (initial "
    f"{glove.weighted_loss(params0, data):.4f}), state {runs[name]['state_bytes']:,} bytes, "
    f"{time.perf_counter() - tic:.1f} s"
  )

for name, run in runs.items():
  assert run["loss"] < 0.5 * glove.weighted_loss(params0, data), name  # every run trains

# %% [markdown]
# ## Effective learning rate against word frequency
#
# Each dot is a word: its corpus count on the x axis, the effective learning rate of its
# row in the word table at the end of training on the y axis. The black line is the
# median in bins of frequency, the dashed red line a slope of -1/2 for comparison.

# %%
from scipy import stats

fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), sharey=True)
bins = np.geomspace(0.999 * counts.min(), 1.001 * counts.max(), 15)  # every count inside
which_bin = np.digitize(counts, bins)
for ax, (name, run) in zip(axes, runs.items(), strict=True):
  final = run["rates"][-1]
  centres = [np.sqrt(bins[b - 1] * bins[b]) for b in np.unique(which_bin)]
  medians = [np.median(final[which_bin == b]) for b in np.unique(which_bin)]
  slope = np.polyfit(np.log(counts), np.log(final), 1)[0]
  ax.loglog(counts, final, ".", markersize=2, alpha=0.4, label="one word")
  ax.loglog(centres, medians, "k-", label="median per frequency bin")
  reference = medians[-1] * (np.array(centres) / centres[-1]) ** -0.5
  ax.loglog(centres, reference, "r--", label="slope -1/2: rate ~ 1 / sqrt(count)")
  ax.set_title(f"{name}: slope {slope:.2f}")
  ax.set_xlabel("corpus count of the word (occurrences)")
  ax.set_ylabel("effective learning rate after training")
  ax.legend()
  run["slope"] = slope
  run["spearman"] = stats.spearmanr(counts, final).statistic
fig.suptitle(
  f"GloVe, {len(counts):,} words, {runs[name]['steps'][-1]} steps: rare words keep large rates"
)
fig.tight_layout()
plt.show()

for name, run in runs.items():
  final = run["rates"][-1]
  rare, frequent = final[counts <= np.quantile(counts, 0.1)], final[: len(counts) // 100]
  ratio = np.median(rare) / np.median(frequent)
  print(
    f"{name:>22}: log-log slope {run['slope']:.2f}, Spearman rho {run['spearman']:.2f}; the "
    f"rarest 10% of words keep {ratio:.0f}x the rate of the 1% most frequent"
  )
  assert run["spearman"] < -0.5, name  # the more frequent the word, the smaller its rate
  assert ratio > 3, name

# %% [markdown]
# All three Adagrads give rare words large rates and frequent words small ones, and the
# points line up on a power law in the frequency. A word's accumulator grows with the
# number of steps whose batch contains it and with the size of its summed gradient there,
# so frequent words (present in every batch, with large weighted residuals) accumulate
# fast, while a word seen a few dozen times in the whole corpus keeps a rate within a
# small factor of its initial `lr / sqrt(0.1)`. If a word's accumulated squared gradient
# grew in proportion to its count, the rate would fall as `count^(-1/2)`, the dashed
# line. The longer the training, the closer the medians come to it: in CI's short run
# the rare words' rates are still near their initial value and the slope is flatter;
# with the full vocabulary and 8 epochs (the Colab setting) it is close to -1/2.
#
# **Why this matters for embedding models.** Vocabularies and item catalogues are
# Zipfian: most rows are rare. With plain SGD every row gets the same global learning
# rate. A rate small enough for the rows of `the` or of a blockbuster movie, which get a
# large gradient at every step, leaves the long tail of rows barely moving; a rate large
# enough for the tail makes the frequent rows diverge. No single number is right for most
# rows. Adagrad picks a rate per row from the row's own history, so the long tail learns
# from its few examples while the head is damped.
#
# **What row-wise pools.** Diagonal Adagrad keeps one accumulator per coordinate, so
# the `d` coordinates of one word get `d` different rates, which depend on the arbitrary
# basis of the feature space (notebook 2). Row-wise Adagrad feeds one accumulator per row
# with the *mean* of the `d` squared gradient coordinates: it measures how much gradient
# the *word* has received, pools the statistic over the row's `d` coordinates (a `d`
# times less noisy estimate, `d` times less state) and gives every coordinate of the word
# the same rate. Block `rows_x_shared` keeps that per-row scalar and shapes it with one
# matrix shared by all rows. The frequency dependence, which is what helps rare
# features, is the same in all three. The spread of diagonal's rates *within* one row is
# what row-wise gives up:

# %%
per_coordinate = np.asarray(
  ob.effective_learning_rates(runs["diagonal"]["opt_state"], LEARNING_RATE)["word"]
)
spread = per_coordinate.max(axis=1) / per_coordinate.min(axis=1)
print(
  f"diagonal Adagrad: within one word's row, the largest coordinate rate is a median "
  f"{np.median(spread):.1f}x the smallest (for {vocab.words[0]!r}: {spread[0]:.1f}x)"
)

# %% [markdown]
# ## The monotone decay, shown
#
# Adagrad's accumulator is a sum of squares, so it can only grow, and the effective
# learning rate `lr / sqrt(G)` can only fall (or stay put while the row receives no
# gradient). Here are three words over the training steps: the most frequent one, one in
# the middle of the vocabulary and one of the rarest.

# %%
tracked = {
  "frequent": 0,
  "mid": len(counts) // 2,
  "rare": len(counts) - 1,
}
fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), sharey=True)
for ax, (name, run) in zip(axes, runs.items(), strict=True):
  for label, word_id in tracked.items():
    ax.semilogy(
      run["steps"],
      run["rates"][:, word_id],
      label=f"{label}: {vocab.words[word_id]!r} ({counts[word_id]:,}x)",
    )
  ax.set_title(name)
  ax.set_xlabel("training step (minibatches)")
  ax.set_ylabel("effective learning rate")
  ax.legend(fontsize=8)
fig.suptitle("Effective learning rate of three words over training")
fig.tight_layout()
plt.show()

# %% [markdown]
# The frequent word's rate drops by an order of magnitude within the first few dozen
# steps: it is in every minibatch with large weighted residuals. The mid-frequency and
# rare words are in many minibatches too (a batch holds thousands of pairs), but with a
# few small gradients each, so their rates fall slowly and stay high. For diagonal and
# row-wise Adagrad the curves only go down; we check that for *every* word and every
# recorded segment, not just these three (to float32 rounding):

# %%
for name in ("diagonal", "row-wise"):
  rates = runs[name]["rates"]
  increase = np.max(np.diff(rates, axis=0) / rates[:-1])
  print(f"{name:>22}: largest relative increase between segments {increase:.1e}")
  assert increase <= 1e-6, name  # the accumulator only grows: the rate never increases

block_rates = runs["block (rows_x_shared)"]["rates"]
increase = np.max(np.diff(block_rates, axis=0) / block_rates[:-1])
print(f"{'block (rows_x_shared)':>22}: largest relative increase between segments {increase:.1e}")

# %% [markdown]
# Diagonal and row-wise rates never increase. Block `rows_x_shared` is different, and
# the plot shows it: its per-row scalar `s_r` is the same monotone sum as row-wise's,
# but its step is `(s_r C~)^(-1/2) g` with `C~` the shared `d x d` matrix normalised to
# trace `d`, and the effective rate reported for it is the *mean* over directions,
# `lr * tr((s_r C~)^(-1/2)) / d`. At the start `C~ = I`; as the shared matrix becomes
# anisotropic, directions with little gradient get larger steps and directions with
# much gradient smaller ones, and the mean of the inverse square roots grows (Jensen's
# inequality) even though `s_r` does not shrink. So a row's average rate can rise early
# on (the printed largest increase above), and it falls again as `s_r` grows. The
# per-row scalar itself is monotone:

# %%
for name, run in runs.items():
  assert np.all(np.diff(run["accumulators"], axis=0) >= 0), name  # G (or s_r) only grows
print("every word's accumulator (block: its per-row s_r) only grew, for all three")

# %% [markdown]
# ## The worked example: PyTorch's Adagrad numerics
#
# The project's conventions give a worked example of `torch.optim.Adagrad`
# (`G += g^2; p -= lr * g / (sqrt(G) + eps)`, accumulator from 0, `eps = 1e-10`
# outside the root) at learning rate 0.1:
#
# * a parameter with gradients 10, 9, 11, 10, 10 takes steps 0.100, 0.0669, 0.0633,
#   0.0499, 0.0446: a frequent feature, its rate falls like `1 / sqrt(t)`;
# * a parameter with gradients 0, 0, 0, 0.1 takes a step of 0.1 at step 4, an
#   effective learning rate (step per unit of gradient) of 1.0: a rare feature, whose
#   first gradient however small moves it by a full `lr`.
#
# The library's `presets.torch_adagrad` reproduces it. The two parameters sit in one
# array and share every step.

# %%
from optax_blockada import presets

gradients = np.array([[10.0, 0.0], [9.0, 0.0], [11.0, 0.0], [10.0, 0.1], [10.0, 0.0]], np.float32)
tx = presets.torch_adagrad(learning_rate=0.1)
torch_params = jnp.zeros(2)
torch_state = tx.init(torch_params)
steps = []
for g in gradients:
  updates, torch_state = tx.update(jnp.asarray(g), torch_state, torch_params)
  torch_params = optax.apply_updates(torch_params, updates)
  steps.append(-np.asarray(updates))
steps = np.array(steps)
print("steps of the frequent parameter:", np.round(steps[:, 0], 4))
print("steps of the rare parameter:    ", np.round(steps[:, 1], 4))
print(f"effective learning rate of the rare parameter at step 4: {steps[3, 1] / 0.1:.3f}")

# The published digits (3 significant figures): agree to half a unit of the 4th decimal.
np.testing.assert_allclose(steps[:, 0], [0.100, 0.0669, 0.0633, 0.0499, 0.0446], atol=5e-5)
np.testing.assert_allclose(steps[:4, 1], [0.0, 0.0, 0.0, 0.1], atol=5e-5)
np.testing.assert_allclose(steps[3, 1] / 0.1, 1.0, atol=5e-4)

# %% [markdown]
# The same numbers from the formula in float64 numpy, and from PyTorch itself when it is
# installed:

# %%
import importlib.util

G = np.zeros(2)
reference = []
for g in gradients.astype(np.float64):
  G += g * g
  reference.append(0.1 * g / (np.sqrt(G) + 1e-10))
np.testing.assert_allclose(steps, np.array(reference), rtol=1e-6, atol=1e-9)
print("the preset equals the float64 formula")

if importlib.util.find_spec("torch"):
  import torch

  weight = torch.zeros(2, requires_grad=True)
  torch_opt = torch.optim.Adagrad([weight], lr=0.1)
  torch_steps = []
  for g in gradients:
    before = weight.detach().clone()
    weight.grad = torch.tensor(g)
    torch_opt.step()
    torch_steps.append((before - weight.detach()).numpy())
  np.testing.assert_allclose(steps, np.array(torch_steps), rtol=1e-6, atol=1e-9)
  print(f"the preset equals torch.optim.Adagrad (torch {torch.__version__})")
else:
  print("torch is not installed: skipped the comparison with torch.optim.Adagrad")

# %% [markdown]
# In the same step, the frequent parameter's effective rate is
# `0.1 / sqrt(10^2 + 9^2 + 11^2 + 10^2) = 0.005`, 200 times smaller than the rare one's.
# That is the picture of the frequency plot above, in five steps. (Note how PyTorch's
# numerics differ from optax's: the accumulator starts at 0 and `eps` is outside the
# root, so the first step of any non-zero gradient is a full `lr` in its sign; optax's
# `adagrad` starts the accumulator at 0.1 and would step `0.1 * 0.1 / sqrt(0.1 + 0.01)`
# = 0.030 here. The presets section of notebook 1 compares the ecosystems.)
#
# ## What we saw
#
# * On real text, every Adagrad ends with per-word learning rates that fall roughly as a
#   power of the word's frequency: the rarest tenth of the vocabulary keeps rates several
#   times those of the most frequent words (asserted: more than 3x), so the Zipfian long
#   tail of the vocabulary keeps learning.
# * The effective rate of every word only goes down during training for diagonal and
#   row-wise Adagrad (asserted for every word): fast for frequent words, slowly for rare
#   ones. Block `rows_x_shared`'s per-row scalar only grows as well, but its mean rate
#   over directions can rise while the shared matrix takes shape.
# * Row-wise Adagrad gets the same frequency adaptation with one number per word instead
#   of `d`, by pooling the squared gradient over the row.
# * The `torch_adagrad` preset reproduces PyTorch's numbers, including the rare
#   parameter's full-size first step.
#
# Next: [notebook 4](https://colab.research.google.com/github/optax-blockada/optax-blockada/blob/main/colabs/04_glove.ipynb)
# trains and scores GloVe with every optimizer;
# [notebook 2](https://colab.research.google.com/github/optax-blockada/optax-blockada/blob/main/colabs/02_basis_dependence.ipynb)
# shows why diagonal Adagrad's per-coordinate rates depend on the basis; the
# [README](https://github.com/optax-blockada/optax-blockada#api) documents
# `effective_learning_rates` and the presets.
