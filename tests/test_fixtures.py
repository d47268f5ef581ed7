"""Presets against trajectories recorded from the real libraries (tests/fixtures/*.npz).

``tests/fixtures/generate.py`` ran torch 2.14, TorchRec 1.9.2, FBGEMM-GPU-CPU 1.9.0,
Keras 3.15.1 (JAX backend) and LightFM 1.17 (see its docstring for the environment) and
stored, step by step, the gradient each optimizer received and the parameters and
accumulators it produced. Here every fixture's hyperparameters (in the library's own
names) are mapped to the matching preset, the same gradients are replayed through
``jax.jit``-ted steps, and the preset's trajectory is compared with the library's. Only
numpy and the ``.npz`` files are needed; none of those libraries.

Three comparisons per fixture: the preset against the library, the library against a
float64 numpy replay of its documented formula (which bounds the library's own float32
rounding, so the tolerance below is about rounding, not formulas), and the preset with
a learning rate 1% off, which must fall outside the tolerance (the comparison can fail).

What the libraries do that the presets deliberately do not (asserted, not hidden):

- FBGEMM decays every looked-up row, also one whose summed gradient is exactly zero (a
  padding row); the presets' dense step decays only rows with a non-zero gradient.
  Family (b) fixtures compare the other rows exactly and assert that those rows differ.
- FBGEMM's CPU backward for FP32 ``EXACT_ROWWISE_ADAGRAD`` on a table that only one
  feature looks up runs fbgemm's fused ``SparseAdaGrad`` kernel with ``weight_decay=0``:
  ``L2`` and ``DECOUPLE`` are ignored there (the ``*_fastpath`` fixtures). Shared tables
  (two features on one table) take the generic path, which applies them.
- PyTorch skips a parameter whose ``.grad`` is ``None`` (its step count stays); the
  preset would see a zero gradient. Replaying with one transformation per parameter,
  called only when it has a gradient, reproduces PyTorch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_blockada as ob
from optax_blockada import presets

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
NAMES = sorted(p.stem for p in FIXTURES_DIR.glob("*.npz"))

# Tolerance of every comparison (preset vs library, library vs float64 formula):
# |a - b| <= ATOL + RTOL * |b|, elementwise, over all steps, params and accumulators.
# Parameters are O(1) (|w| <= 3.5) and accumulators up to ~650; one float32 operation
# rounds at 6e-8 relative and 24-48 steps add such errors (Adagrad's shrinking steps
# do not amplify them). Measured over all fixtures, preset vs library: parameters
# <= 7.2e-7 absolute (FBGEMM rowwise 'l2'), accumulators <= 2.6e-7 relative (torch's
# are bit for bit equal); library vs its float64 formula: parameters <= 6.2e-7 (torch,
# weight_decay), accumulators <= 4.7e-7 relative (LightFM BPR). The largest of these
# is 0.16 of this tolerance: the factor ~6 is left for other CPUs' float32 rounding
# (FMA, vectorised reductions, LightFM's -ffast-math build), while a learning rate 1%
# off is far outside it (test_tolerance_detects_a_small_lr_error).
RTOL, ATOL = 2e-6, 2e-6


# ----------------------------------------------------------------------------------
# Loading.


@dataclasses.dataclass(frozen=True)
class Fixture:
  name: str
  meta: dict[str, Any]
  params0: dict[str, np.ndarray]
  grads: dict[str, np.ndarray]  # (steps, ...) or (2 * examples, ...) for LightFM
  params: dict[str, np.ndarray]  # after each step (example), (steps, ...)
  accumulators: dict[str, np.ndarray]  # the library's, in its own shape
  extra: dict[str, np.ndarray]

  @property
  def library(self) -> str:
    return self.meta["library"]

  @property
  def hyper(self) -> dict[str, Any]:
    return self.meta["hyperparameters"]

  @property
  def steps(self) -> int:
    return len(next(iter(self.params.values())))


@functools.cache
def load(name: str) -> Fixture:
  with np.load(FIXTURES_DIR / f"{name}.npz") as data:
    arrays = {k: data[k] for k in data.files}
  meta = json.loads(str(arrays.pop("meta")))
  groups: dict[str, dict[str, np.ndarray]] = {
    g: {} for g in ("params0", "grads", "params", "accumulators")
  }
  extra = {}
  for key, value in arrays.items():
    group, _, leaf = key.partition("/")
    if group in groups:
      assert value.dtype == np.float32, f"{name}: {key} is {value.dtype}"
      groups[group][leaf] = value
    else:
      extra[key] = value
  return Fixture(name, meta, extra=extra, **groups)


def test_fixtures_are_present_and_small():
  # Every library is covered, and the files stay small enough to commit.
  libraries = {load(n).library for n in NAMES}
  assert libraries == {"torch", "torchrec", "fbgemm_gpu", "keras", "lightfm"}, libraries
  total = sum((FIXTURES_DIR / f"{n}.npz").stat().st_size for n in NAMES)
  assert total < 1_000_000, total
  for name in NAMES:
    fx = load(name)
    assert fx.meta["library_version"], name
    assert 20 <= fx.steps <= 30, (name, fx.steps)


# ----------------------------------------------------------------------------------
# Library hyperparameters -> preset.

TORCH_NAMES = {
  "lr": "learning_rate",
  "lr_decay": "lr_decay",
  "weight_decay": "weight_decay",
  "initial_accumulator_value": "initial_accumulator_value",
  "eps": "eps",
}
TORCH_IMPLEMENTATION = {"foreach", "fused"}  # pick PyTorch's kernel, not the formula


def make_preset(fx: Fixture, lr_factor: float = 1.0, **override) -> optax.GradientTransformation:
  """The preset for ``fx``, from the library's arguments (only those it was given, so
  that the library's defaults are checked against the preset's)."""
  h = fx.hyper
  if fx.library in ("torch", "torchrec"):
    unknown = set(h) - set(TORCH_NAMES) - TORCH_IMPLEMENTATION
    assert not unknown, unknown
    kwargs = {TORCH_NAMES[k]: v for k, v in h.items() if k in TORCH_NAMES}
    fn = presets.torch_adagrad if fx.library == "torch" else presets.torchrec_rowwise_adagrad
    default_lr = 1e-2
  elif fx.library == "keras":
    kwargs = dict(fx.meta["arguments"])  # as passed to keras.optimizers.Adagrad
    fn, default_lr = presets.keras_adagrad, 1e-3
  elif fx.library == "fbgemm_gpu":
    kwargs = {"learning_rate": h["learning_rate"], "eps": h["eps"]}
    if "EXACT_ROWWISE_ADAGRAD" in fx.meta["optimizer"]:
      fn = presets.fbgemm_rowwise_adagrad
      kwargs["weight_decay"] = h.get("weight_decay", 0.0)
      kwargs["weight_decay_mode"] = h.get("weight_decay_mode", "none")
    else:
      assert "EXACT_ADAGRAD" in fx.meta["optimizer"], fx.meta["optimizer"]
      fn = presets.fbgemm_exact_adagrad
    default_lr = None
  elif fx.library == "lightfm":
    assert h["learning_schedule"] == "adagrad" and h["item_alpha"] == h["user_alpha"] == 0
    kwargs = {"learning_rate": h["learning_rate"]}
    fn, default_lr = presets.lightfm_adagrad, None
  else:
    raise AssertionError(fx.library)
  kwargs.update(override)
  if lr_factor != 1.0:
    kwargs["learning_rate"] = kwargs.get("learning_rate", default_lr) * lr_factor
  return fn(**kwargs)


# ----------------------------------------------------------------------------------
# Replaying the gradients through the preset.


def find_accumulators(state) -> Any:
  is_state = lambda x: isinstance(x, (ob.DiagonalAdagradState, ob.RowwiseAdagradState))
  found = [x for x in jax.tree.leaves(state, is_leaf=is_state) if is_state(x)]
  assert len(found) == 1, f"expected one Adagrad state, found {len(found)}"
  return found[0].sum_of_squares


def _jitted_step(tx):
  def step(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  return jax.jit(step)


def replay_tree(tx, params0, grads, record_every=1):
  """(params, accumulators) after every ``record_every`` updates, as float64 numpy."""
  step = _jitted_step(tx)
  p = {k: jnp.asarray(v) for k, v in params0.items()}
  state = tx.init(p)
  n = len(next(iter(grads.values())))
  params, accs = [], []
  for t in range(n):
    p, state = step(p, state, {k: jnp.asarray(v[t]) for k, v in grads.items()})
    if (t + 1) % record_every == 0:
      for k, v in p.items():
        assert v.dtype == jnp.float32, (k, v.dtype)
      params.append({k: np.asarray(v, np.float64) for k, v in p.items()})
      accs.append({k: np.asarray(v, np.float64) for k, v in find_accumulators(state).items()})
  return _stacked(params), _stacked(accs)


def replay_leafwise(make_tx, params0, grads, has_grad):
  """One transformation per parameter, updated only on the steps where it has a
  gradient (PyTorch skips a parameter whose ``.grad`` is ``None``)."""
  params, accs = {}, {}
  for k in params0:
    tx = make_tx()
    step = _jitted_step(tx)
    p = jnp.asarray(params0[k])
    state = tx.init(p)
    ps, gs = [], []
    for t in range(len(grads[k])):
      if has_grad[k][t]:
        p, state = step(p, state, jnp.asarray(grads[k][t]))
      ps.append(np.asarray(p, np.float64))
      gs.append(np.asarray(find_accumulators(state), np.float64))
    params[k], accs[k] = np.stack(ps), np.stack(gs)
  return params, accs


def _stacked(records):
  return {k: np.stack([r[k] for r in records]) for k in records[0]}


def run_preset(fx: Fixture, **preset_args):
  """The preset's trajectory on the fixture's gradients (``preset_args``: see
  :func:`make_preset`)."""
  has_grad = {k[len("has_grad/") :]: v for k, v in fx.extra.items() if k.startswith("has_grad/")}
  if has_grad and not all(v.all() for v in has_grad.values()):
    return replay_leafwise(lambda: make_preset(fx, **preset_args), fx.params0, fx.grads, has_grad)
  every = 2 if fx.library == "lightfm" else 1  # two sub-steps per LightFM example
  return replay_tree(make_preset(fx, **preset_args), fx.params0, fx.grads, record_every=every)


@functools.cache
def preset_trajectory(name: str):
  return run_preset(load(name))


# ----------------------------------------------------------------------------------
# Float64 replays of each library's formula (from its source), fed the same gradients.


def ref_torch(fx: Fixture, rowwise: bool):
  """torch.optim.Adagrad / TorchRec RowWiseAdagrad: g += wd * w;
  clr = lr / (1 + (step - 1) * lr_decay); G += g^2 (row mean for TorchRec);
  w -= clr * g / (sqrt(G) + eps). ``step`` counts the steps the parameter had a grad."""
  h = {"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0}
  h = {**h, "eps": 1e-10, **fx.hyper}
  params, accs = {}, {}
  for k, w0 in fx.params0.items():
    w = w0.astype(np.float64)
    row = rowwise and w.ndim == 2
    acc = np.full((w.shape[0], 1) if row else w.shape, h["initial_accumulator_value"], float)
    has = fx.extra.get(f"has_grad/{k}", np.ones(fx.steps, bool))
    count, ws, gs = 0, [], []
    for t in range(fx.steps):
      if has[t]:
        count += 1
        g = fx.grads[k][t].astype(np.float64) + h["weight_decay"] * w
        sq = g * g
        acc = acc + (sq.mean(-1, keepdims=True) if row else sq)
        clr = h["lr"] / (1 + (count - 1) * h["lr_decay"])
        w = w - clr * g / (np.sqrt(acc) + h["eps"])
      ws.append(w)
      gs.append(acc)
    params[k], accs[k] = np.stack(ws), np.stack(gs)
  return params, accs


def ref_keras(fx: Fixture):
  """Keras 3: w -= lr * wd * w; G += g^2; w -= lr * g / sqrt(G + epsilon)."""
  h = fx.hyper  # every value, as read back from the Keras optimizer
  params, accs = {}, {}
  for k, w0 in fx.params0.items():
    w, acc = w0.astype(np.float64), np.full(w0.shape, h["initial_accumulator_value"], float)
    ws, gs = [], []
    for t in range(fx.steps):
      g = fx.grads[k][t].astype(np.float64)
      w = w - h["learning_rate"] * h["weight_decay"] * w
      acc = acc + g * g
      w = w - h["learning_rate"] * g / np.sqrt(acc + h["epsilon"])
      ws.append(w)
      gs.append(acc)
    params[k], accs[k] = np.stack(ws), np.stack(gs)
  return params, accs


def ref_fbgemm(fx: Fixture):
  """FBGEMM, for every looked-up row (``looked_up``, zero gradient or not), with its
  summed gradient g. EXACT_ROWWISE_ADAGRAD: g' = g + wd * w ('l2') else g;
  G += mean(g'^2); m = lr / (sqrt(G) + eps); w = c * w - m * g with c = 1 - m * wd ('l2'),
  1 - lr * wd ('decoupled'), 1 ('none'). EXACT_ADAGRAD: G += g^2;
  w -= lr * g / (sqrt(G) + eps). Rows not looked up are untouched. On the CPU fast path
  (one feature per table) FBGEMM calls its kernel with weight_decay=0: mode 'none'."""
  h = fx.hyper
  lr, eps, wd = h["learning_rate"], h["eps"], h.get("weight_decay", 0.0)
  mode = h.get("weight_decay_mode", "none") if fx.meta["shared_table"] else "none"
  rowwise = "EXACT_ROWWISE_ADAGRAD" in fx.meta["optimizer"]
  w = fx.params0["table"].astype(np.float64)
  acc = np.zeros((w.shape[0], 1) if rowwise else w.shape)
  ws, gs = [], []
  for t in range(fx.steps):
    g_all = fx.grads["table"][t].astype(np.float64)
    for r in np.flatnonzero(fx.extra["looked_up"][t]):
      g = g_all[r]
      if rowwise:
        g_acc = g + wd * w[r] if mode == "l2" else g
        acc[r] += np.mean(g_acc * g_acc)
        m = lr / (np.sqrt(acc[r, 0]) + eps)
        c = {"none": 1.0, "l2": 1.0 - m * wd, "decoupled": 1.0 - lr * wd}[mode]
        w[r] = c * w[r] - m * g
      else:
        acc[r] += g * g
        w[r] = w[r] - lr * g / (np.sqrt(acc[r]) + eps)
    ws.append(w.copy())
    gs.append(acc.copy())
  return {"table": np.stack(ws)}, {"table": np.stack(gs)}


def ref_lightfm(fx: Fixture):
  """LightFM adagrad, element by element: w -= lr * g / sqrt(G); then G += g^2; G0 = 1;
  lr is a float32 in LightFM's FastLightFM. Two sub-steps per example."""
  lr = float(np.float32(fx.hyper["learning_rate"]))
  params, accs = {}, {}
  for k, w0 in fx.params0.items():
    w, acc = w0.astype(np.float64), np.ones(w0.shape)
    ws, gs = [], []
    for t, g in enumerate(fx.grads[k].astype(np.float64)):
      w = w - lr * g / np.sqrt(acc)
      acc = acc + g * g
      if t % 2 == 1:
        ws.append(w)
        gs.append(acc)
    params[k], accs[k] = np.stack(ws), np.stack(gs)
  return params, accs


def float64_reference(fx: Fixture):
  if fx.library in ("torch", "torchrec"):
    return ref_torch(fx, rowwise=fx.library == "torchrec")
  return {"keras": ref_keras, "fbgemm_gpu": ref_fbgemm, "lightfm": ref_lightfm}[fx.library](fx)


# ----------------------------------------------------------------------------------
# Comparing.


def zero_gradient_lookups(fx: Fixture) -> np.ndarray:
  """(steps, V): rows looked up with an exactly zero summed gradient (FBGEMM only)."""
  grads = fx.grads["table"]
  return fx.extra["looked_up"] & ~np.any(grads != 0, axis=-1)


def decays_zero_gradient_rows(fx: Fixture) -> bool:
  """FBGEMM decays looked-up zero-gradient rows here, and the dense preset does not."""
  return (
    fx.library == "fbgemm_gpu"
    and fx.meta["shared_table"]
    and fx.hyper.get("weight_decay_mode", "none") != "none"
    and bool(zero_gradient_lookups(fx).any())
  )


def comparable_rows(fx: Fixture) -> np.ndarray | None:
  """(steps, V) mask of the table rows the dense preset must reproduce after each step,
  or None for all: without it, every row. With FBGEMM's decay of zero-gradient
  looked-up rows, the rows that have not been such a row yet (once decayed by FBGEMM
  and not by the preset, a row stays apart)."""
  if not decays_zero_gradient_rows(fx):
    return None
  return ~np.logical_or.accumulate(zero_gradient_lookups(fx), axis=0)


def assert_close(actual, desired, fx: Fixture, what: str, rows=None):
  for a_tree, d_tree, part in ((actual[0], desired[0], "params"), (actual[1], desired[1], "acc")):
    for k, d in d_tree.items():
      a = np.asarray(a_tree[k], np.float64).reshape(d.shape)
      d = np.asarray(d, np.float64)
      if rows is not None:
        a, d = a[rows], d[rows]
      np.testing.assert_allclose(
        a, d, rtol=RTOL, atol=ATOL, err_msg=f"{fx.name}: {what}, {part}[{k!r}]"
      )


def library_trajectory(fx: Fixture):
  return fx.params, fx.accumulators


# ----------------------------------------------------------------------------------
# The tests.


def ignores_weight_decay(fx: Fixture) -> bool:
  """FBGEMM's CPU fast path was asked for weight decay (and ignored it)."""
  return (
    fx.library == "fbgemm_gpu"
    and not fx.meta["shared_table"]
    and fx.hyper.get("weight_decay_mode", "none") != "none"
  )


@pytest.mark.parametrize("name", [n for n in NAMES if not ignores_weight_decay(load(n))])
def test_preset_matches_library(name):
  # The preset, replayed on the library's gradients, reproduces the library's parameters
  # and accumulators after every step, to float32 rounding (RTOL/ATOL, see above). The
  # fast-path fixtures that ignored weight decay: test_fbgemm_fast_path_ignores_*.
  fx = load(name)
  assert_close(
    preset_trajectory(name),
    library_trajectory(fx),
    fx,
    "preset vs library",
    rows=comparable_rows(fx),
  )


@pytest.mark.parametrize("name", NAMES)
def test_library_matches_float64_formula(name):
  # The library itself is within the same tolerance of a float64 replay of its formula,
  # on every row (FBGEMM's zero-gradient looked-up rows included: the replay decays every
  # looked-up row), so the tolerance measures rounding, and the formula read from each
  # library's source is the one it runs.
  fx = load(name)
  assert_close(library_trajectory(fx), float64_reference(fx), fx, "library vs float64")


@pytest.mark.parametrize("name", [n for n in NAMES if not ignores_weight_decay(load(n))])
def test_tolerance_detects_a_small_lr_error(name):
  # The same preset with a learning rate 1% off is well outside the tolerance (measured:
  # 17x for Keras' default lr 1e-3, whose 24 steps move parameters by ~5e-3 only, and
  # 140x to 2000x elsewhere): the comparison above can fail, and would notice a wrong
  # default, a misplaced eps or a missing term of similar size.
  fx = load(name)
  wrong, _ = run_preset(fx, lr_factor=1.01)
  rows = comparable_rows(fx)
  worst = 0.0
  for k, lib in fx.params.items():
    lib = lib.astype(np.float64)
    scaled = np.abs(wrong[k] - lib) / (ATOL + RTOL * np.abs(lib))
    worst = max(worst, float((scaled if rows is None else scaled[rows]).max()))
  assert worst > 10.0, f"{name}: lr * 1.01 is only {worst:.1f}x the tolerance"


FBGEMM_DECAY_PADDING = [n for n in NAMES if decays_zero_gradient_rows(load(n))]


def test_fbgemm_padding_fixtures_exist():
  assert sorted(FBGEMM_DECAY_PADDING) == [
    "fbgemm_rowwise_decoupled_padding",
    "fbgemm_rowwise_l2_padding",
  ]


@pytest.mark.parametrize("name", FBGEMM_DECAY_PADDING)
def test_fbgemm_decays_zero_gradient_rows_that_the_dense_step_does_not(name):
  # FBGEMM decays (and in 'l2' mode accumulates) looked-up rows whose summed gradient is
  # exactly zero; the dense preset, which can only see "non-zero gradient", leaves them
  # alone. The exact test for those rows belongs with the sparse path's option.
  fx = load(name)
  ours, _ = preset_trajectory(name)
  pad = zero_gradient_lookups(fx).any(axis=0)  # rows that were a zero-gradient lookup
  assert pad.sum() >= 1
  last = fx.steps - 1
  # The preset never moves a row on a step where its gradient is zero ...
  w = np.concatenate([fx.params0["table"][None].astype(np.float64), ours["table"]])
  zl = zero_gradient_lookups(fx)
  np.testing.assert_array_equal(w[1:][zl], w[:-1][zl])
  # ... where FBGEMM moved each such row, by a clear margin after 24 steps (measured on
  # padding rows 0 and 1: 0.52 and 0.13 in 'l2' mode, whose accumulators also differ by
  # 0.24 and 0.038; 0.075 and 0.081 in 'decoupled' mode).
  gap = np.abs(ours["table"][last] - fx.params["table"][last]).max(axis=-1)[pad]
  assert np.all(gap > 1e-2), gap
  w_lib = np.concatenate([fx.params0["table"][None], fx.params["table"]])
  assert np.all(np.any(w_lib[1:] != w_lib[:-1], axis=-1)[zl]), "FBGEMM moved every such row"


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_fbgemm_fast_path_ignores_weight_decay(mode):
  # One feature per table, FP32: FBGEMM-GPU-CPU 1.9.0 runs fbgemm's SparseAdaGrad kernel
  # with weight_decay=0. The fixture matches the preset without decay, and is far from
  # the preset with the mode it was asked for.
  fx = load(f"fbgemm_rowwise_{mode}_fastpath")
  assert fx.hyper["weight_decay"] > 0
  no_decay = run_preset(fx, weight_decay=0.0, weight_decay_mode="none")
  assert_close(no_decay, library_trajectory(fx), fx, "preset without decay vs fast path")
  asked, _ = preset_trajectory(fx.name)
  gap = np.abs(asked["table"] - fx.params["table"]).max()
  assert gap > 1e-2, gap  # measured: 0.015 ('l2'), 0.14 ('decoupled')
  # The same run (same data) without weight decay gave the same numbers bit for bit.
  base = load("fbgemm_rowwise_none_fastpath")
  np.testing.assert_array_equal(base.grads["table"], fx.grads["table"])
  np.testing.assert_array_equal(base.params["table"], fx.params["table"])
  np.testing.assert_array_equal(base.accumulators["table"], fx.accumulators["table"])


def test_torch_skipped_parameter_is_not_a_zero_gradient():
  # torch.optim.Adagrad skips a parameter whose .grad is None: its step count and its
  # decay stop. The leafwise replay (test_preset_matches_library) reproduces that; the
  # preset fed a zero gradient on those steps does not (issue 14 item 4).
  fx = load("torch_adagrad_none_grad")
  assert not fx.extra["has_grad/bias"].all() and fx.extra["has_grad/table"].all()
  zeros_fed, _ = replay_tree(make_preset(fx), fx.params0, fx.grads)
  np.testing.assert_allclose(zeros_fed["table"], fx.params["table"], rtol=RTOL, atol=ATOL)
  gap = np.abs(zeros_fed["bias"] - fx.params["bias"]).max()
  assert gap > 1e-2, gap  # measured: 0.098 after 6 skipped steps of 24


def test_lightfm_steps_shared_features_twice_per_example():
  # In some examples the positive and the negative item share a genre feature: LightFM
  # steps it twice (positive first, each with the old accumulator), which the fixture
  # replays as two sub-steps. One step on the example's summed gradient is not the same
  # (issue 14 item 5: LightFM's per-example steps do not add up to the summed gradient).
  for name in ("lightfm_bpr", "lightfm_warp"):
    fx = load(name)
    neg, pos = fx.extra["negatives"], fx.extra["positives"]
    assert np.sum((neg >= 0) & (neg % 3 == pos % 3)) >= 3, name  # 3 genres: item % 3
    assert len(fx.grads["item_embeddings"]) == 2 * fx.steps
    summed = {k: g[0::2] + g[1::2] for k, g in fx.grads.items()}
    merged, _ = replay_tree(make_preset(fx), fx.params0, summed)
    # Users are stepped once per example either way; items sharing a genre are not
    # (measured: item biases 0.011 (BPR) and 0.10 (WARP) apart after 24 examples).
    for k in ("user_embeddings", "user_biases"):
      np.testing.assert_allclose(merged[k], fx.params[k], rtol=RTOL, atol=ATOL)
    gap = np.abs(merged["item_biases"] - fx.params["item_biases"]).max()
    assert gap > 1e-3, (name, gap)
