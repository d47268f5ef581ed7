"""Presets against independent float64 numpy references.

Each reference below is written from the update formula of the system the preset
reproduces (PyTorch, TorchRec, Keras 3, FBGEMM, GloVe, LightFM), not from this
library's chains. Every test feeds the same seeded gradients (float32, with zero
elements, rows missing from the batch on some steps, a row never in the batch and one
all-zero step) to the preset and to the reference, and compares the parameters after
every step, and the accumulators where the preset stores them in the reference's units.

The references take extra "variant" knobs (eps inside the square root, old accumulator,
no clip, ...). They are used only to check that the comparison is sensitive: each
variant must give a trajectory measurably different from the preset's.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_blockada as ob
from optax_blockada import presets

STEPS = 30
V, D = 12, 5  # a (V, D) table and a (V,) bias
RTOL, ATOL = 1e-5, 1e-6  # float32 library against float64 reference
ALWAYS_IN_BATCH = 0  # row with a gradient on every step but ZERO_STEP
NEVER_IN_BATCH = 9  # row whose gradient is zero on every step
ZERO_STEP = 7  # a step whose whole gradient is zero
PARAMS_SEED, GRADS_SEED = 0, 1


# ----------------------------------------------------------------------------------
# Data.


def make_params(seed: int = PARAMS_SEED) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {
    "table": rng.normal(size=(V, D)).astype(np.float32),
    "bias": (0.5 * rng.normal(size=V)).astype(np.float32),
  }


def make_grads(
  seed: int = GRADS_SEED, steps: int = STEPS, big: bool = False
) -> list[dict[str, np.ndarray]]:
  """Float32 gradients; ``big`` adds a few entries beyond GloVe's clip of 100."""
  rng = np.random.default_rng(seed)
  out = []
  for t in range(steps):
    table = rng.normal(size=(V, D)) * rng.uniform(0.2, 2.0)
    table[rng.random((V, D)) < 0.15] = 0.0  # isolated zero elements
    bias = rng.normal(size=V)
    bias[rng.random(V) < 0.15] = 0.0
    in_batch = rng.random(V) < 0.6  # rows missing from the batch on this step
    in_batch[ALWAYS_IN_BATCH] = True
    in_batch[NEVER_IN_BATCH] = False
    if t == ZERO_STEP:
      in_batch[:] = False
    table[~in_batch] = 0.0
    bias[~in_batch] = 0.0
    if big and t != ZERO_STEP:
      rows = rng.choice(np.flatnonzero(in_batch), size=3)
      cols = rng.integers(0, D, size=3)
      table[rows, cols] = rng.choice([-1.0, 1.0], size=3) * rng.uniform(120.0, 400.0, size=3)
      bias[rows[0]] = rng.choice([-1.0, 1.0]) * rng.uniform(120.0, 200.0)
    out.append({"table": table.astype(np.float32), "bias": bias.astype(np.float32)})
  return out


def _to64(tree: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: np.asarray(v, np.float64).copy() for k, v in tree.items()}


def _snapshot(w: dict[str, np.ndarray], acc: dict[str, np.ndarray] | None):
  return _to64(w), (None if acc is None else _to64(acc))


# ----------------------------------------------------------------------------------
# Float64 references, written from each system's formulas.


def ref_torch(
  params,
  grads,
  *,
  lr=1e-2,
  lr_decay=0.0,
  weight_decay=0.0,
  init=0.0,
  eps=1e-10,
  rowwise=False,
  reduction="mean",
  eps_in_sqrt=False,
  t_offset=1,
  decoupled=False,
):
  """torch.optim.Adagrad (``rowwise=False``) and TorchRec RowWiseAdagrad (``True``).

  g = g + wd * w; clr = lr / (1 + (t - 1) * lr_decay); G += g^2 (row mean of g^2 for
  the rows of a table); w -= clr * g / (sqrt(G) + eps).

  Variants (sensitivity checks only): ``reduction='sum'``, ``eps_in_sqrt=True``,
  ``t_offset=0`` (``1 + t * lr_decay``), ``decoupled=True`` (decay not in the gradient).
  """
  w = _to64(params)
  acc = {
    k: np.full((*v.shape[:-1], 1) if rowwise and v.ndim >= 2 else v.shape, init)
    for k, v in w.items()
  }
  traj = []
  for t, gs in enumerate(grads, start=1):
    clr = lr / (1 + (t - t_offset) * lr_decay)
    for k in w:
      g = gs[k].astype(np.float64)
      if decoupled:
        w[k] = w[k] - clr * weight_decay * w[k]
      else:
        g = g + weight_decay * w[k]
      sq = g * g
      if rowwise and g.ndim >= 2:
        sq = sq.mean(-1, keepdims=True) if reduction == "mean" else sq.sum(-1, keepdims=True)
      acc[k] = acc[k] + sq
      den = np.sqrt(acc[k] + eps) if eps_in_sqrt else np.sqrt(acc[k]) + eps
      w[k] = w[k] - clr * g / den
    traj.append(_snapshot(w, acc))
  return traj


def ref_keras(
  params,
  grads,
  *,
  lr=1e-3,
  init=0.1,
  epsilon=1e-7,
  weight_decay=0.0,
  eps_in_sqrt=True,
  coupled=False,
):
  """Keras 3 Adagrad: w -= lr * wd * w; G += g^2; w -= lr * g / sqrt(G + epsilon).

  Variants: ``eps_in_sqrt=False`` (sqrt(G) + eps), ``coupled=True`` (g += wd * w).
  """
  w = _to64(params)
  acc = {k: np.full(v.shape, init) for k, v in w.items()}
  traj = []
  for gs in grads:
    for k in w:
      g = gs[k].astype(np.float64)
      if coupled:
        g = g + weight_decay * w[k]
      else:
        w[k] = w[k] - lr * weight_decay * w[k]
      acc[k] = acc[k] + g * g
      den = np.sqrt(acc[k] + epsilon) if eps_in_sqrt else np.sqrt(acc[k]) + epsilon
      w[k] = w[k] - lr * g / den
    traj.append(_snapshot(w, acc))
  return traj


def ref_fbgemm_exact(params, grads, *, lr=0.01, eps=1e-8, rowwise=False):
  """FBGEMM EXACT_ADAGRAD: G0 = 0; G += g^2; w -= lr * g / (sqrt(G) + eps).

  Variant: ``rowwise=True`` (one accumulator per table row, row mean of g^2).
  """
  w = _to64(params)
  acc = {
    k: np.zeros((*v.shape[:-1], 1) if rowwise and v.ndim >= 2 else v.shape) for k, v in w.items()
  }
  traj = []
  for gs in grads:
    for k in w:
      g = gs[k].astype(np.float64)
      sq = g * g
      if rowwise and g.ndim >= 2:
        sq = sq.mean(-1, keepdims=True)
      acc[k] = acc[k] + sq
      w[k] = w[k] - lr * g / (np.sqrt(acc[k]) + eps)
    traj.append(_snapshot(w, acc))
  return traj


def ref_fbgemm_rowwise(
  params,
  grads,
  *,
  lr=0.01,
  eps=1e-8,
  weight_decay=0.0,
  mode="none",
  max_norm=0.0,
  lazy=True,
  reduction="mean",
  stats=None,
):
  """FBGEMM EXACT_ROWWISE_ADAGRAD, row by row (a bias scalar is a row of size 1).

  Rows whose gradient is all zero are not in the batch and are skipped. For a row of
  the batch: g' = g + wd * w ('l2') else g; G += mean(g'^2); m = lr / (sqrt(G) + eps);
  c = 1 - m * wd ('l2') | 1 - lr * wd ('decoupled') | 1 ('none'); w = c * w - m * g;
  if max_norm > 0 and ||w|| > max_norm: w *= max_norm / ||w||. G0 = 0.

  Variants: ``lazy=False`` (every row treated as in the batch), ``reduction='sum'``.
  ``stats`` (a dict) receives counts of clipped and unclipped batch rows.
  """
  w = {k: np.asarray(v, np.float64).reshape(v.shape[0], -1).copy() for k, v in params.items()}
  acc = {k: np.zeros(v.shape[0]) for k, v in w.items()}
  shapes = {k: v.shape for k, v in params.items()}
  acc_shapes = {k: (*s[:-1], 1) if len(s) >= 2 else s for k, s in shapes.items()}
  counts = {"clipped": 0, "unclipped": 0}
  traj = []
  for gs in grads:
    for k in w:
      g_rows = gs[k].astype(np.float64).reshape(shapes[k][0], -1)
      for r in range(g_rows.shape[0]):
        g = g_rows[r]
        if lazy and not np.any(g != 0):
          continue
        row = w[k][r]
        g_acc = g + weight_decay * row if mode == "l2" else g
        sq = g_acc * g_acc
        acc[k][r] += sq.mean() if reduction == "mean" else sq.sum()
        m = lr / (np.sqrt(acc[k][r]) + eps)
        c = {"none": 1.0, "l2": 1.0 - m * weight_decay, "decoupled": 1.0 - lr * weight_decay}
        new = c[mode] * row - m * g
        if max_norm > 0:
          norm = np.linalg.norm(new)
          if norm > max_norm:
            new = new * (max_norm / norm)
            counts["clipped"] += 1
          else:
            counts["unclipped"] += 1
        w[k][r] = new
    traj.append(
      (
        {k: v.reshape(shapes[k]).copy() for k, v in w.items()},
        {k: v.reshape(acc_shapes[k]).copy() for k, v in acc.items()},
      )
    )
  if stats is not None:
    stats.update(counts)
  return traj


def ref_glove(params, grads, *, eta=0.05, clip=100.0, old=True, clip_biases=False):
  """glove.c: vectors (ndim >= 2) d = eta * clip(g, -100, 100); w -= d / sqrt(G);
  then G += d^2. Biases: b -= g / sqrt(Gb); then Gb += g^2. G0 = Gb0 = 1.

  Variants: ``old=False`` (add first, divide by the new accumulator), ``clip=None``
  (no clip on vectors), ``clip_biases=True`` (clip and no-eta on biases too).
  """
  w = _to64(params)
  acc = {k: np.ones(v.shape) for k, v in w.items()}
  traj = []
  for gs in grads:
    for k in w:
      g = gs[k].astype(np.float64)
      if w[k].ndim >= 2:
        d = eta * (g if clip is None else np.clip(g, -clip, clip))
      else:
        d = np.clip(g, -100.0, 100.0) if clip_biases else g
      if old:
        w[k] = w[k] - d / np.sqrt(acc[k])
        acc[k] = acc[k] + d * d
      else:
        acc[k] = acc[k] + d * d
        w[k] = w[k] - d / np.sqrt(acc[k])
    traj.append(_snapshot(w, None))  # the library stores vectors' G / eta^2
  return traj


def ref_lightfm(params, grads, *, lr=0.05, old=True):
  """LightFM adagrad: w -= lr * g / sqrt(G); then G += g^2; G0 = 1.

  Variant: ``old=False`` (add first, divide by the new accumulator).
  """
  w = _to64(params)
  acc = {k: np.ones(v.shape) for k, v in w.items()}
  traj = []
  for gs in grads:
    for k in w:
      g = gs[k].astype(np.float64)
      if old:
        w[k] = w[k] - lr * g / np.sqrt(acc[k])
        acc[k] = acc[k] + g * g
      else:
        acc[k] = acc[k] + g * g
        w[k] = w[k] - lr * g / np.sqrt(acc[k])
    traj.append(_snapshot(w, acc))
  return traj


# ----------------------------------------------------------------------------------
# Cases: a preset, its reference, and variants that must be told apart.


@dataclasses.dataclass(frozen=True)
class Case:
  id: str
  make_tx: Callable[[], optax.GradientTransformation]
  reference: Callable[..., list]  # (params, grads, **variant) -> trajectory
  variants: tuple[tuple[str, dict[str, Any]], ...] = ()
  big_grads: bool = False
  compare_state: bool = True
  lazy: bool = True  # a zero gradient leaves params (and accumulators) unchanged


P = functools.partial
CASES = (
  # torch.optim.Adagrad
  Case("torch-defaults", presets.torch_adagrad, ref_torch, (("rowwise", {"rowwise": True}),)),
  Case(
    "torch-decay-wd-init",
    P(
      presets.torch_adagrad,
      learning_rate=0.1,
      lr_decay=0.05,
      weight_decay=0.02,
      initial_accumulator_value=0.1,
    ),
    P(ref_torch, lr=0.1, lr_decay=0.05, weight_decay=0.02, init=0.1),
    (("lr_decay_uses_t", {"t_offset": 0}), ("decoupled_decay", {"decoupled": True})),
    lazy=False,
  ),
  Case(
    "torch-large-eps",
    P(presets.torch_adagrad, learning_rate=0.1, eps=0.3),
    P(ref_torch, lr=0.1, eps=0.3),
    (("eps_in_sqrt", {"eps_in_sqrt": True}),),
  ),
  # TorchRec RowWiseAdagrad
  Case(
    "torchrec-defaults",
    presets.torchrec_rowwise_adagrad,
    P(ref_torch, rowwise=True),
    (("diagonal", {"rowwise": False}), ("sum", {"reduction": "sum"})),
  ),
  Case(
    "torchrec-decay-wd-init",
    P(
      presets.torchrec_rowwise_adagrad,
      learning_rate=0.1,
      lr_decay=0.05,
      weight_decay=0.02,
      initial_accumulator_value=0.1,
    ),
    P(ref_torch, rowwise=True, lr=0.1, lr_decay=0.05, weight_decay=0.02, init=0.1),
    (("lr_decay_uses_t", {"t_offset": 0}), ("sum", {"reduction": "sum"})),
    lazy=False,
  ),
  Case(
    "torchrec-large-eps",
    P(presets.torchrec_rowwise_adagrad, learning_rate=0.1, eps=0.3),
    P(ref_torch, rowwise=True, lr=0.1, eps=0.3),
    (("eps_in_sqrt", {"eps_in_sqrt": True}),),
  ),
  # Keras 3 Adagrad
  Case(
    "keras-defaults", presets.keras_adagrad, ref_keras, (("no_initial_accumulator", {"init": 0.0}),)
  ),
  Case(
    "keras-weight-decay",
    P(presets.keras_adagrad, learning_rate=0.1, weight_decay=0.05),
    P(ref_keras, lr=0.1, weight_decay=0.05),
    (("coupled_decay", {"coupled": True}),),
    lazy=False,
  ),
  Case(
    "keras-large-eps",
    P(presets.keras_adagrad, learning_rate=0.1, initial_accumulator_value=0.05, epsilon=0.3),
    P(ref_keras, lr=0.1, init=0.05, epsilon=0.3),
    (("eps_outside_sqrt", {"eps_in_sqrt": False}),),
  ),
  # FBGEMM EXACT_ADAGRAD
  Case(
    "fbgemm-exact-defaults",
    presets.fbgemm_exact_adagrad,
    ref_fbgemm_exact,
    (("rowwise", {"rowwise": True}),),
  ),
  Case(
    "fbgemm-exact-lr",
    P(presets.fbgemm_exact_adagrad, learning_rate=0.1, eps=1e-3),
    P(ref_fbgemm_exact, lr=0.1, eps=1e-3),
    (("rowwise", {"rowwise": True}),),
  ),
  # FBGEMM EXACT_ROWWISE_ADAGRAD, all weight-decay modes, with and without max_norm
  Case(
    "fbgemm-rowwise-none",
    P(presets.fbgemm_rowwise_adagrad, learning_rate=0.05),
    P(ref_fbgemm_rowwise, lr=0.05),
    (("sum", {"reduction": "sum"}),),
  ),
  Case(
    "fbgemm-rowwise-l2",
    P(presets.fbgemm_rowwise_adagrad, learning_rate=0.05, weight_decay=0.1, weight_decay_mode="l2"),
    P(ref_fbgemm_rowwise, lr=0.05, weight_decay=0.1, mode="l2"),
    (
      ("decoupled", {"mode": "decoupled"}),
      ("none", {"mode": "none"}),
      ("not_lazy", {"lazy": False}),
    ),
  ),
  Case(
    "fbgemm-rowwise-decoupled",
    P(
      presets.fbgemm_rowwise_adagrad,
      learning_rate=0.05,
      weight_decay=0.1,
      weight_decay_mode="decoupled",
    ),
    P(ref_fbgemm_rowwise, lr=0.05, weight_decay=0.1, mode="decoupled"),
    (("l2", {"mode": "l2"}), ("none", {"mode": "none"}), ("not_lazy", {"lazy": False})),
  ),
  Case(
    "fbgemm-rowwise-none-maxnorm",
    P(presets.fbgemm_rowwise_adagrad, learning_rate=0.05, max_norm=2.0),
    P(ref_fbgemm_rowwise, lr=0.05, max_norm=2.0),
    (("no_max_norm", {"max_norm": 0.0}),),
  ),
  Case(
    "fbgemm-rowwise-l2-maxnorm",
    P(
      presets.fbgemm_rowwise_adagrad,
      learning_rate=0.05,
      weight_decay=0.1,
      weight_decay_mode="l2",
      max_norm=2.0,
    ),
    P(ref_fbgemm_rowwise, lr=0.05, weight_decay=0.1, mode="l2", max_norm=2.0),
    (("no_max_norm", {"max_norm": 0.0}), ("not_lazy", {"lazy": False})),
  ),
  Case(
    "fbgemm-rowwise-decoupled-maxnorm",
    P(
      presets.fbgemm_rowwise_adagrad,
      learning_rate=0.05,
      weight_decay=0.1,
      weight_decay_mode="decoupled",
      max_norm=2.0,
    ),
    P(ref_fbgemm_rowwise, lr=0.05, weight_decay=0.1, mode="decoupled", max_norm=2.0),
    (("no_max_norm", {"max_norm": 0.0}), ("not_lazy", {"lazy": False})),
  ),
  # GloVe
  Case(
    "glove-defaults",
    presets.glove_adagrad,
    ref_glove,
    (
      ("new_accumulator", {"old": False}),
      ("no_clip", {"clip": None}),
      ("clipped_biases", {"clip_biases": True}),
    ),
    big_grads=True,
    compare_state=False,
  ),
  Case(
    "glove-eta",
    P(presets.glove_adagrad, eta=0.2),
    P(ref_glove, eta=0.2),
    (("new_accumulator", {"old": False}), ("no_clip", {"clip": None})),
    big_grads=True,
    compare_state=False,
  ),
  # LightFM
  Case(
    "lightfm-defaults", presets.lightfm_adagrad, ref_lightfm, (("new_accumulator", {"old": False}),)
  ),
  Case(
    "lightfm-lr",
    P(presets.lightfm_adagrad, learning_rate=0.3),
    P(ref_lightfm, lr=0.3),
    (("new_accumulator", {"old": False}),),
  ),
)
CASES_BY_ID = {c.id: c for c in CASES}
CASE_IDS = list(CASES_BY_ID)
VARIANT_IDS = [(c.id, name) for c in CASES for name, _ in c.variants]


# ----------------------------------------------------------------------------------
# Running the library.


def find_accumulators(state) -> Any:
  """The ``sum_of_squares`` tree of the single Adagrad state inside ``state``."""
  is_state = lambda x: isinstance(x, (ob.DiagonalAdagradState, ob.RowwiseAdagradState))
  found = [x for x in jax.tree.leaves(state, is_leaf=is_state) if is_state(x)]
  assert len(found) == 1, f"expected one Adagrad state, found {len(found)}"
  return found[0].sum_of_squares


def run_library(tx, params, grads, *, jit=False, with_state=True):
  """Trajectory ``[(params, accumulators or None)]`` after each step, as float64."""

  def step(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  if jit:
    step = jax.jit(step)
  p = {k: jnp.asarray(v) for k, v in params.items()}
  state = tx.init(p)
  traj = []
  for g in grads:
    p, state = step(p, state, {k: jnp.asarray(v) for k, v in g.items()})
    for k, v in p.items():
      assert v.dtype == jnp.float32, f"{k} came back as {v.dtype}"
    acc = _to64(find_accumulators(state)) if with_state else None
    traj.append((_to64(p), acc))
  return traj


@functools.cache
def grads_for(big: bool):
  return make_grads(big=big)


@functools.cache
def library_trajectory(case_id: str, jit: bool = False):
  case = CASES_BY_ID[case_id]
  return run_library(
    case.make_tx(),
    make_params(),
    grads_for(case.big_grads),
    jit=jit,
    with_state=case.compare_state,
  )


def reference_trajectory(case_id: str, **variant):
  case = CASES_BY_ID[case_id]
  return case.reference(make_params(), grads_for(case.big_grads), **variant)


def assert_trajectories_close(actual, desired, what, rtol=RTOL, atol=ATOL):
  assert len(actual) == len(desired)
  for t, ((p_act, s_act), (p_des, s_des)) in enumerate(zip(actual, desired, strict=True)):
    for k in p_des:
      np.testing.assert_allclose(
        p_act[k],
        p_des[k],
        rtol=rtol,
        atol=atol,
        err_msg=f"{what}: params[{k!r}] after step {t + 1}",
      )
    if s_act is not None and s_des is not None:
      for k in s_des:
        assert s_act[k].shape == s_des[k].shape, f"{what}: accumulator[{k!r}] shape"
        np.testing.assert_allclose(
          s_act[k],
          s_des[k],
          rtol=rtol,
          atol=atol,
          err_msg=f"{what}: accumulator[{k!r}] after step {t + 1}",
        )


def worst_mismatch(actual, desired, rtol=RTOL, atol=ATOL) -> float:
  """Largest ``|a - d| / (atol + rtol |d|)`` over all params and steps (<= 1: close)."""
  return max(
    float(np.max(np.abs(p_act[k] - p_des[k]) / (atol + rtol * np.abs(p_des[k]))))
    for (p_act, _), (p_des, _) in zip(actual, desired, strict=True)
    for k in p_des
  )


# ----------------------------------------------------------------------------------
# Every preset against its reference, its variants, jit, and zero gradients.


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_preset_matches_float64_reference(case_id):
  assert_trajectories_close(library_trajectory(case_id), reference_trajectory(case_id), case_id)


@pytest.mark.parametrize(("case_id", "variant"), VARIANT_IDS)
def test_comparison_detects_variant(case_id, variant):
  """The reference with one formula detail changed is measurably off the preset."""
  kwargs = dict(CASES_BY_ID[case_id].variants)[variant]
  mismatch = worst_mismatch(library_trajectory(case_id), reference_trajectory(case_id, **kwargs))
  assert mismatch > 50.0, (
    f"{case_id}: variant {variant} is within {mismatch:.1f}x the tolerance of the "
    "preset; the comparison would not notice this difference"
  )


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_jit_matches_eager(case_id):
  assert_trajectories_close(
    library_trajectory(case_id, jit=True),
    library_trajectory(case_id),
    f"{case_id} jit vs eager",
    rtol=2e-6,
    atol=1e-7,
  )


def _zero_step(case_id):
  """Params and state before and after a zero-gradient step, after three real steps."""
  case = CASES_BY_ID[case_id]
  tx = case.make_tx()
  params = {k: jnp.asarray(v) for k, v in make_params().items()}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g in grads_for(case.big_grads)[:3]:
    updates, state = update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
    params = optax.apply_updates(params, updates)
  updates, new_state = update(jax.tree.map(jnp.zeros_like, params), state, params)
  return params, optax.apply_updates(params, updates), state, new_state


@pytest.mark.parametrize("case_id", [c.id for c in CASES if c.lazy])
def test_zero_gradient_leaves_params_unchanged(case_id):
  params, new_params, state, new_state = _zero_step(case_id)
  for k in params:
    np.testing.assert_array_equal(
      np.asarray(new_params[k]), np.asarray(params[k]), err_msg=f"{case_id}: {k!r}"
    )
  is_acc = lambda x: isinstance(x, (ob.DiagonalAdagradState, ob.RowwiseAdagradState))
  before = [x for x in jax.tree.leaves(state, is_leaf=is_acc) if is_acc(x)]
  after = [x for x in jax.tree.leaves(new_state, is_leaf=is_acc) if is_acc(x)]
  assert before, case_id
  for b, a in zip(before, after, strict=True):
    jax.tree.map(np.testing.assert_array_equal, a.sum_of_squares, b.sum_of_squares)


@pytest.mark.parametrize("case_id", [c.id for c in CASES if not c.lazy])
def test_zero_gradient_still_decays_with_weight_decay(case_id):
  """Torch, TorchRec and Keras decay every weight on every step."""
  params, new_params, _, _ = _zero_step(case_id)
  for k in params:
    moved = np.abs(np.asarray(new_params[k]) - np.asarray(params[k]))
    assert np.all(moved[np.asarray(params[k]) != 0] > 0), f"{case_id}: {k!r}"


# ----------------------------------------------------------------------------------
# PyTorch.


@pytest.mark.parametrize(
  "hyper",
  [
    {
      "lr": 0.1,
      "lr_decay": 0.05,
      "weight_decay": 0.02,
      "initial_accumulator_value": 0.1,
      "eps": 1e-10,
    },
    {
      "lr": 0.05,
      "lr_decay": 0.2,
      "weight_decay": 0.1,
      "initial_accumulator_value": 0.0,
      "eps": 0.3,
    },
  ],
  ids=["decay-wd-init", "large-eps"],
)
def test_torch_adagrad_matches_torch_optim(hyper):
  torch = pytest.importorskip("torch")
  params, grads = make_params(), grads_for(False)
  tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
  opt = torch.optim.Adagrad(list(tparams.values()), **hyper)
  expected = []
  for g in grads:
    for k, p in tparams.items():
      p.grad = torch.from_numpy(g[k].copy())
    opt.step()
    expected.append(
      (
        {k: p.detach().numpy().astype(np.float64) for k, p in tparams.items()},
        {k: opt.state[p]["sum"].numpy().astype(np.float64) for k, p in tparams.items()},
      )
    )
  tx = presets.torch_adagrad(
    learning_rate=hyper["lr"],
    lr_decay=hyper["lr_decay"],
    weight_decay=hyper["weight_decay"],
    initial_accumulator_value=hyper["initial_accumulator_value"],
    eps=hyper["eps"],
  )
  assert_trajectories_close(run_library(tx, params, grads), expected, "torch.optim.Adagrad")
  # The float64 reference agrees with torch too (the reference is right, not just close).
  reference = ref_torch(
    params,
    grads,
    lr=hyper["lr"],
    lr_decay=hyper["lr_decay"],
    weight_decay=hyper["weight_decay"],
    init=hyper["initial_accumulator_value"],
    eps=hyper["eps"],
  )
  assert_trajectories_close(expected, reference, "torch.optim.Adagrad vs float64 reference")


def test_torch_adagrad_worked_example():
  """lr 0.1: gradients 10, 9, 11, 10, 10 take steps 0.100, 0.0669, 0.0633, 0.0499, 0.0446;
  gradients 0, 0, 0, 0.1 take a step of 0.1 at step 4 (effective learning rate 1)."""
  tx = presets.torch_adagrad(learning_rate=0.1)
  params = jnp.zeros(2, jnp.float32)
  state = tx.init(params)
  grads = [[10.0, 0.0], [9.0, 0.0], [11.0, 0.0], [10.0, 0.1], [10.0, 0.0]]
  steps = []
  for g in grads:
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
    new_params = optax.apply_updates(params, updates)
    steps.append(np.abs(np.asarray(new_params - params, np.float64)))
    params = new_params
  steps = np.stack(steps)
  np.testing.assert_allclose(
    steps[:, 0],
    [0.100, 0.0669, 0.0633, 0.0499, 0.0446],
    rtol=0,
    atol=5e-5,
    err_msg="steps of the parameter with gradients 10, 9, 11, 10, 10",
  )
  np.testing.assert_allclose(
    steps[:, 1],
    [0.0, 0.0, 0.0, 0.1, 0.0],
    rtol=0,
    atol=1e-6,
    err_msg="steps of the parameter with gradients 0, 0, 0, 0.1",
  )
  np.testing.assert_allclose(steps[3, 1] / 0.1, 1.0, atol=1e-5, err_msg="effective lr")


# ----------------------------------------------------------------------------------
# Keras, FBGEMM.


@pytest.mark.parametrize("lr", [1e-3, 0.1])
def test_keras_adagrad_without_decay_is_optax_adagrad(lr):
  params, grads = make_params(), grads_for(False)
  ours = run_library(presets.keras_adagrad(learning_rate=lr), params, grads, with_state=False)
  theirs = run_library(optax.adagrad(lr, 0.1, 1e-7), params, grads, with_state=False)
  assert_trajectories_close(ours, theirs, "keras_adagrad vs optax.adagrad", rtol=1e-6, atol=0)


def test_fbgemm_exact_first_step_is_a_sign_step():
  tx = presets.fbgemm_exact_adagrad()
  params = jnp.zeros(3, jnp.float32)
  updates, _ = tx.update(jnp.asarray([1e-3, -1e-3, 0.0], jnp.float32), tx.init(params), params)
  np.testing.assert_allclose(
    np.abs(np.asarray(updates)) / 0.01,
    [1.0, 1.0, 0.0],
    atol=1e-4,
    err_msg="first-step |update| / lr",
  )
  assert float(updates[0]) < 0 < float(updates[1])


@pytest.mark.parametrize(
  "case_id",
  ["fbgemm-rowwise-none-maxnorm", "fbgemm-rowwise-l2-maxnorm", "fbgemm-rowwise-decoupled-maxnorm"],
)
def test_fbgemm_rowwise_max_norm_clips_some_rows_only(case_id):
  """The data make max_norm bite on some rows of the batch and not on others."""
  case = CASES_BY_ID[case_id]
  stats = {}
  case.reference(make_params(), grads_for(False), stats=stats)
  assert stats["clipped"] >= 5 and stats["unclipped"] >= 5, stats
  # Rows that were in the batch end within the bound; the others keep their norm.
  seen = np.any([np.any(g["table"] != 0, axis=-1) for g in grads_for(False)], axis=0)
  norms = np.linalg.norm(library_trajectory(case_id)[-1][0]["table"], axis=-1)
  assert np.all(norms[seen] <= 2.0 * (1 + 1e-6)), norms[seen]
  np.testing.assert_allclose(
    norms[~seen], np.linalg.norm(make_params()["table"], axis=-1)[~seen], rtol=1e-6
  )
  assert norms[NEVER_IN_BATCH] > 2.0  # the seed puts an over-long row out of the batch


@pytest.mark.parametrize("mode", ["none", "l2", "decoupled"])
@pytest.mark.parametrize("max_norm", [0.0, 0.5])
def test_fbgemm_rowwise_rows_outside_the_batch_never_change(mode, max_norm):
  params, grads = make_params(), grads_for(False)
  tx = presets.fbgemm_rowwise_adagrad(
    learning_rate=0.05, weight_decay=0.5, weight_decay_mode=mode, max_norm=max_norm
  )
  traj = run_library(tx, params, grads)
  for t, (p, acc) in enumerate(traj):
    untouched = np.flatnonzero(~np.any(grads[t]["table"] != 0, axis=-1))
    before = params if t == 0 else traj[t - 1][0]
    before_acc = np.zeros((V, 1)) if t == 0 else traj[t - 1][1]["table"]
    np.testing.assert_array_equal(
      p["table"][untouched],
      np.asarray(before["table"], np.float64)[untouched],
      err_msg=f"rows outside the batch moved at step {t + 1}",
    )
    np.testing.assert_array_equal(acc["table"][untouched], before_acc[untouched])
  np.testing.assert_array_equal(
    traj[-1][0]["table"][NEVER_IN_BATCH], params["table"][NEVER_IN_BATCH].astype(np.float64)
  )
  np.testing.assert_array_equal(traj[-1][1]["table"][NEVER_IN_BATCH], [0.0])


def test_fbgemm_rowwise_unknown_mode_raises():
  with pytest.raises(ValueError, match="weight_decay_mode"):
    presets.fbgemm_rowwise_adagrad(weight_decay=0.1, weight_decay_mode="coupled")


def test_integer_lr_decay_equals_float_lr_decay():
  # torch accepts lr_decay=1; under strict promotion an int32 decay must not break the
  # schedule, and must give the float trajectory.
  params = jnp.zeros(3)
  grads = [jnp.asarray([1.0, -2.0, 0.5]) * (t + 1) for t in range(5)]
  runs = []
  for decay in (1, 1.0):
    tx = presets.torch_adagrad(learning_rate=0.1, lr_decay=decay)
    state, p = tx.init(params), params
    for g in grads:
      u, state = tx.update(g, state, p)
      p = optax.apply_updates(p, u)
    runs.append(np.asarray(p))
  np.testing.assert_array_equal(runs[0], runs[1])
  # Against the formula: clr_t = 0.1 / (1 + (t - 1)), G = sum g^2.
  acc = np.cumsum([np.asarray(g, np.float64) ** 2 for g in grads], axis=0)
  expected = -sum(
    0.1 / (1 + t) * np.asarray(g, np.float64) / (np.sqrt(acc[t]) + 1e-10)
    for t, g in enumerate(grads)
  )
  np.testing.assert_allclose(runs[0], expected, rtol=1e-5)


@pytest.mark.parametrize(
  "kwargs",
  [
    {"learning_rate": 0.1},
    {"learning_rate": 0.1, "weight_decay": 0.05},
    {"learning_rate": 0.1, "initial_accumulator_value": 0.05, "epsilon": 0.3},
  ],
  ids=["defaults", "weight-decay", "large-eps"],
)
def test_keras_adagrad_matches_live_keras_3(kwargs):
  # Real Keras 3 on the JAX backend (light enough for the test extra) against the preset,
  # 20 steps on a table with a row that never gets a gradient.
  os.environ.setdefault("KERAS_BACKEND", "jax")
  keras = pytest.importorskip("keras")
  if keras.backend.backend() != "jax":
    pytest.skip(f"Keras was imported with the {keras.backend.backend()} backend")
  rng = np.random.default_rng(7)
  w0 = rng.normal(size=(6, 4)).astype(np.float32)
  grads = [rng.normal(size=(6, 4)).astype(np.float32) for _ in range(20)]
  for g in grads:
    g[5] = 0.0
  with jax.numpy_dtype_promotion("standard"):  # Keras' own ops, not ours
    opt = keras.optimizers.Adagrad(**kwargs)
    var = keras.Variable(w0)
    opt.build([var])
    for g in grads:
      opt.apply_gradients([(jnp.asarray(g), var)])
    theirs = np.asarray(var.value, np.float64)
  tx = presets.keras_adagrad(**kwargs)
  params, state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
  ours = np.asarray(params, np.float64)
  ref_kwargs = {"lr": kwargs["learning_rate"]}
  ref_kwargs["init"] = kwargs.get("initial_accumulator_value", 0.1)
  ref_kwargs["epsilon"] = kwargs.get("epsilon", 1e-7)
  ref_kwargs["weight_decay"] = kwargs.get("weight_decay", 0.0)
  ref = ref_keras({"w": w0}, [{"w": g} for g in grads], **ref_kwargs)[-1][0]["w"]
  # Both round the same float32 formula in their own order: each stays within 1e-6 of the
  # float64 reference (20 steps of |w| ~ 1), so they agree to 2e-6 (measured: 2.4e-7).
  np.testing.assert_allclose(theirs, ref, atol=1e-6)
  np.testing.assert_allclose(ours, ref, atol=1e-6)
  np.testing.assert_allclose(ours, theirs, atol=2e-6)
