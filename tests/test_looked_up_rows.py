"""FBGEMM's weight decay and max-norm on every looked-up row (issue 14, "Looked-up rows").

FBGEMM decays (``L2``: ``g += wd * w``, so the row-wise accumulator also grows by
``mean((wd * w)^2)``; ``DECOUPLE``: ``w -= lr * wd * w``) and max-norms every row looked
up in the batch, also one whose summed gradient is exactly zero (a padding row). The
sparse path knows those rows and passes them to the transform as ``looked_up``; a dense
step can pass the same mask. Everything here is checked against FBGEMM's formula written
out in float64 numpy (``fbgemm_reference``), not against the library, and at the end
against the trajectories recorded from real FBGEMM (``tests/fixtures``).

The batches: a ``(V, D)`` table and a dense vector ``w``. Each step looks up real rows
(duplicates included), the padding rows 0 and 1 with a zero coefficient (a zero
gradient; row 1 is also a real lookup on some steps) and the out-of-range ids ``V`` and
``-1`` (dropped: never looked up). Rows ``NEVER`` are never looked up. The loss is linear
in the looked-up rows, so the gradients do not depend on the parameters and the float64
reference gets the same ones.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_blockada as ob
from optax_blockada import presets, sparse

V, D, STEPS = 16, 4, 12
PAD = (0, 1)
NEVER = np.arange(12, V)  # never looked up; row 15 is long, so max_norm would bite
LR = 0.1
# float32 against float64 over 12 steps (parameters up to |w| ~ 7.5): measured <= 5.6e-7
# on parameters and 1.6e-7 relative on accumulators, over all the cases and paths below.
RTOL, ATOL = 2e-6, 2e-6


def make_params():
  rng = np.random.default_rng(14)
  table = rng.normal(size=(V, D)).astype(np.float32)
  table[PAD[0]] *= 3.0  # a padding row longer than max_norm: only FBGEMM's rule clips it
  table[15] = [3.0, 0.0, 0.0, 0.0]
  return {"table": table, "w": rng.normal(size=D).astype(np.float32)}


@functools.cache
def batches():
  """Per step: ids (with duplicates, padding and out-of-range ids), their coefficients
  (the gradient with respect to ``table[ids]``) and the coefficients of ``w``."""
  rng = np.random.default_rng(1400)
  out = []
  for t in range(STEPS):
    real = rng.integers(2, 12, size=6)
    real[1] = real[0]  # a duplicate
    if t % 3 == 2:
      real[2] = 1  # the padding row 1 is a real lookup too
    ids = np.concatenate([real, PAD, [V, -1]]).astype(np.int32)
    coef = rng.normal(size=(len(ids), D)).astype(np.float32)
    coef[len(real) :] = 0.0  # padding lookups get no gradient; dropped ids neither
    coef[len(real) + len(PAD) :] = rng.normal(size=(2, D))  # ... though they have one
    wc = rng.normal(size=D).astype(np.float32)
    wc[0] = 0.0  # w[0] never gets a gradient: its row is never touched
    out.append((ids, coef, wc))
  return out


def valid(ids):
  return (ids >= 0) & (ids < V)


def looked_up_rows(ids):
  mask = np.zeros(V, bool)
  mask[ids[valid(ids)]] = True
  return mask


def table_grad(ids, coef):
  """float64: the summed gradient of every row (dropped ids contribute nothing)."""
  g = np.zeros((V, D))
  keep = valid(ids)
  np.add.at(g, ids[keep], coef[keep].astype(np.float64))
  return g


# ----------------------------------------------------------------------------------
# FBGEMM's formula, float64 (fbgemm_gpu/codegen/genscript/optimizers.py).


def fbgemm_step(w, acc, g_all, rows, *, mode="none", wd=0.0, eps=1e-8, max_norm=0.0, exact=False):
  """One FBGEMM step, in place, on the rows ``rows`` (boolean) of the float64 table ``w``
  with summed gradients ``g_all`` and accumulators ``acc`` (``(V, 1)`` row-wise, ``w``'s
  shape exact); other rows untouched.

  EXACT_ROWWISE_ADAGRAD: g' = g + wd * w ('l2') else g; G += mean(g'^2);
  m = lr / (sqrt(G) + eps); w = c * w - m * g with c = 1 - m * wd ('l2'),
  1 - lr * wd ('decoupled'), 1 ('none'); then (CUDA kernel) if max_norm > 0 and
  ||w|| > max_norm: w *= max_norm / ||w||. EXACT_ADAGRAD: G += g^2;
  w -= lr * g / (sqrt(G) + eps).
  """
  for r in np.flatnonzero(rows):
    g = g_all[r]
    if exact:
      acc[r] += g * g
      w[r] = w[r] - LR * g / (np.sqrt(acc[r]) + eps)
      continue
    g_acc = g + wd * w[r] if mode == "l2" else g
    acc[r, 0] += np.mean(g_acc * g_acc)
    m = LR / (np.sqrt(acc[r, 0]) + eps)
    c = {"none": 1.0, "l2": 1.0 - m * wd, "decoupled": 1.0 - LR * wd}[mode]
    new = c * w[r] - m * g
    norm = np.linalg.norm(new)
    if max_norm > 0 and norm > max_norm:
      new = new * (max_norm / norm)
    w[r] = new


def fbgemm_reference(rule, **hyper):
  """FBGEMM on the batches: the table's rows stepped are, with ``rule='looked_up'``, the
  batch's looked-up rows (zero gradient or not), with ``'nonzero_gradient'`` the rows
  with a non-zero gradient. The dense vector ``w`` is not an FBGEMM table: each entry is
  a row of size 1, stepped when its gradient is non-zero.

  Returns ``[(params, accumulators)]`` after every step, float64.
  """
  p0 = make_params()
  w = p0["table"].astype(np.float64)
  acc = np.zeros((V, D) if hyper.get("exact") else (V, 1))
  vec, vec_acc = p0["w"].astype(np.float64).reshape(D, 1), np.zeros((D, 1))
  traj = []
  for ids, coef, wc in batches():
    g_all = table_grad(ids, coef)
    rows = looked_up_rows(ids) if rule == "looked_up" else np.any(g_all != 0, axis=1)
    fbgemm_step(w, acc, g_all, rows, **hyper)
    g_vec = wc.astype(np.float64).reshape(D, 1)
    fbgemm_step(vec, vec_acc, g_vec, g_vec[:, 0] != 0, **hyper)
    traj.append(
      (
        {"table": w.copy(), "w": vec[:, 0].copy()},
        {"table": acc.copy(), "w": vec_acc[:, 0].copy()},
      )
    )
  return traj


# ----------------------------------------------------------------------------------
# The library: dense and sparse steps.


CASES = {
  "l2": dict(mode="l2", wd=0.2),
  "decoupled": dict(mode="decoupled", wd=0.2, eps=0.05),
  "l2_max_norm": dict(mode="l2", wd=0.2, max_norm=1.5),
  "decoupled_max_norm": dict(mode="decoupled", wd=0.2, max_norm=1.5),
  "none_max_norm": dict(mode="none", max_norm=1.5),
  "exact": dict(exact=True),
}


def make_tx(case, **options):
  h = CASES[case]
  if h.get("exact"):
    return presets.fbgemm_exact_adagrad(LR, eps=h.get("eps", 1e-8))
  return presets.fbgemm_rowwise_adagrad(
    LR,
    eps=h.get("eps", 1e-8),
    weight_decay=h.get("wd", 0.0),
    weight_decay_mode=h["mode"],
    max_norm=h.get("max_norm", 0.0),
    **options,
  )


def accumulators(state):
  is_acc = lambda x: isinstance(x, (ob.DiagonalAdagradState, ob.RowwiseAdagradState))
  found = [x for x in jax.tree.leaves(state, is_leaf=is_acc) if is_acc(x)]
  assert len(found) == 1, found
  return found[0].sum_of_squares


def loss(params, ids, coef, wc):
  """Linear in the looked-up rows: the gradient of table[ids] is coef."""
  return jnp.sum(params["table"][ids["table"]] * coef) + jnp.sum(params["w"] * wc)


def dense_loss(params, ids, coef, wc):
  # The sparse path's semantics for out-of-range ids: they read zeros, get no gradient.
  ok = (ids >= 0) & (ids < V)
  rows = params["table"][jnp.where(ok, ids, 0)]
  return jnp.sum(jnp.where(ok[:, None], rows, 0) * coef) + jnp.sum(params["w"] * wc)


def snapshot(params, state):
  acc = accumulators(state)
  return (
    {k: np.asarray(v, np.float64) for k, v in params.items()},
    {k: np.asarray(v, np.float64) for k, v in acc.items()},
  )


def run_sparse(tx, form="value_and_grad"):
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state, ids, coef, wc):
    if form == "value_and_grad":
      _, grads, touched = sparse.value_and_grad(loss)(params, {"table": ids}, coef, wc)
      return sparse.apply_gradients(tx, grads, state, params, touched)
    # SparseGrad: the gradient with respect to table[ids] (duplicates allowed).
    grads = {"table": sparse.SparseGrad(ids, coef), "w": wc}
    return sparse.apply_gradients(tx, grads, state, params)

  params = {k: jnp.asarray(v) for k, v in make_params().items()}
  state = tx.init(params)
  traj = []
  for ids, coef, wc in batches():
    params, state = step(params, state, jnp.asarray(ids), jnp.asarray(coef), jnp.asarray(wc))
    traj.append(snapshot(params, state))
  return traj


def run_dense(tx, with_mask):
  @jax.jit
  def step(params, state, ids, coef, wc, mask):
    grads = jax.grad(dense_loss)(params, ids, coef, wc)
    if with_mask:
      looked_up = {"table": mask, "w": None}
      updates, state = tx.update(grads, state, params, looked_up=looked_up)
    else:
      updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = {k: jnp.asarray(v) for k, v in make_params().items()}
  state = tx.init(params)
  traj = []
  for ids, coef, wc in batches():
    mask = jnp.asarray(looked_up_rows(ids))
    params, state = step(params, state, jnp.asarray(ids), jnp.asarray(coef), jnp.asarray(wc), mask)
    traj.append(snapshot(params, state))
  return traj


def max_differences(actual, desired):
  """(params max abs, accumulators max rel) over all steps and leaves."""
  dp, da = 0.0, 0.0
  for (p_a, a_a), (p_d, a_d) in zip(actual, desired, strict=True):
    for k in p_d:
      dp = max(dp, float(np.max(np.abs(p_a[k] - p_d[k]))))
      scale = np.maximum(np.abs(a_d[k].reshape(a_a[k].shape)), 1e-30)
      da = max(da, float(np.max(np.abs(a_a[k] - a_d[k].reshape(a_a[k].shape)) / scale)))
  return dp, da


def assert_trajectory(actual, desired, what):
  assert len(actual) == len(desired) == STEPS
  for t, ((p_a, a_a), (p_d, a_d)) in enumerate(zip(actual, desired, strict=True)):
    for k in p_d:
      np.testing.assert_allclose(
        p_a[k], p_d[k], rtol=RTOL, atol=ATOL, err_msg=f"{what}: params[{k!r}], step {t + 1}"
      )
      np.testing.assert_allclose(
        a_a[k],
        a_d[k].reshape(a_a[k].shape),
        rtol=RTOL,
        atol=ATOL,
        err_msg=f"{what}: accumulator[{k!r}], step {t + 1}",
      )


def zero_gradient_lookups():
  """(STEPS, V): rows looked up with an exactly zero summed gradient."""
  return np.stack(
    [
      looked_up_rows(ids) & ~np.any(table_grad(ids, coef) != 0, axis=1)
      for ids, coef, _ in batches()
    ]
  )


def test_the_batches_have_zero_gradient_lookups_and_rows_never_looked_up():
  zl = zero_gradient_lookups()
  assert zl[:, 0].all()  # padding row 0: every step
  assert zl[:, 1].sum() == STEPS - STEPS // 3  # row 1: a real lookup on every third step
  assert not zl[:, 2:].any()
  ever = np.any([looked_up_rows(ids) for ids, _, _ in batches()], axis=0)
  assert not ever[NEVER].any() and ever[: NEVER[0]].all()


# ----------------------------------------------------------------------------------
# The sparse path: FBGEMM's rule.


@pytest.mark.parametrize("form", ["value_and_grad", "sparse_grad"])
@pytest.mark.parametrize("case", list(CASES))
def test_sparse_path_is_fbgemm_on_every_looked_up_row(case, form):
  # Zero-gradient looked-up rows are decayed (L2 also accumulates) and max-normed, as in
  # FBGEMM's formula; rows never looked up and dropped ids are untouched.
  ours = run_sparse(make_tx(case), form)
  want = fbgemm_reference("looked_up", **CASES[case])
  assert_trajectory(ours, want, f"sparse ({form}) vs FBGEMM float64")
  p0 = make_params()
  np.testing.assert_array_equal(ours[-1][0]["table"][NEVER], p0["table"][NEVER])
  np.testing.assert_array_equal(ours[-1][1]["table"][NEVER], 0.0)
  np.testing.assert_array_equal(ours[-1][0]["w"][0], p0["w"][0])  # None: non-zero rule


@pytest.mark.parametrize("case", [c for c in CASES if c != "exact"])
def test_the_two_rules_differ_on_zero_gradient_lookups_only(case):
  # The comparison above can fail: FBGEMM's rule moves the padding rows (measured on row
  # 0 after 12 steps: 0.91 'l2', 1.9 'decoupled', 7.5 to 7.8 with max_norm), the non-zero
  # rule leaves them, and the two agree on every other row.
  looked = fbgemm_reference("looked_up", **CASES[case])[-1]
  nonzero = fbgemm_reference("nonzero_gradient", **CASES[case])[-1]
  gap = np.abs(looked[0]["table"] - nonzero[0]["table"]).max(axis=1)
  assert gap[0] > 20 * ATOL, gap
  np.testing.assert_array_equal(gap[2:], 0.0)
  np.testing.assert_array_equal(nonzero[0]["table"][0], make_params()["table"][0])


def test_exact_adagrad_leaves_zero_gradient_lookups_alone():
  # FBGEMM's EXACT_ADAGRAD has no decay and no max_norm: both rules are the same.
  looked = fbgemm_reference("looked_up", exact=True)
  nonzero = fbgemm_reference("nonzero_gradient", exact=True)
  for (p_l, a_l), (p_n, a_n) in zip(looked, nonzero, strict=True):
    np.testing.assert_array_equal(p_l["table"], p_n["table"])
    np.testing.assert_array_equal(a_l["table"], a_n["table"])


@pytest.mark.parametrize("case", ["l2_max_norm", "decoupled"])
def test_nonzero_gradient_option_is_the_old_behaviour(case):
  # touched='nonzero_gradient': the sparse path ignores the mask, as the dense step
  # without one, and both are FBGEMM's formula applied to the rows with a gradient.
  want = fbgemm_reference("nonzero_gradient", **CASES[case])
  tx = lambda: make_tx(case, touched="nonzero_gradient")
  assert_trajectory(run_sparse(tx()), want, "sparse, nonzero_gradient")
  assert_trajectory(run_dense(tx(), with_mask=True), want, "dense with mask, nonzero_gradient")


# ----------------------------------------------------------------------------------
# The dense step: the non-zero proxy, or FBGEMM's rule given the mask.


@pytest.mark.parametrize("case", list(CASES))
def test_dense_step_with_and_without_the_mask(case):
  with_mask = run_dense(make_tx(case), with_mask=True)
  assert_trajectory(with_mask, fbgemm_reference("looked_up", **CASES[case]), "dense + mask")
  without = run_dense(make_tx(case), with_mask=False)
  assert_trajectory(without, fbgemm_reference("nonzero_gradient", **CASES[case]), "dense")


def test_dense_mask_shapes_and_a_jitted_update():
  # One boolean per row: (V,) or the row-wise state's (V, 1); a mask for a vector leaf
  # has its shape. Both shapes give the same update, jitted or not.
  tx = make_tx("l2_max_norm")
  params = {k: jnp.asarray(v) for k, v in make_params().items()}
  ids, coef, wc = batches()[0]
  grads = jax.grad(dense_loss)(params, jnp.asarray(ids), jnp.asarray(coef), jnp.asarray(wc))
  mask = looked_up_rows(ids)
  state = tx.init(params)
  outs = [
    tx.update(grads, state, params, looked_up={"table": jnp.asarray(mask), "w": None})[0],
    jax.jit(tx.update)(grads, state, params, looked_up={"table": mask[:, None], "w": None})[0],
    tx.update(grads, state, params, looked_up={"table": mask, "w": np.asarray(wc) != 0})[0],
  ]
  # Eager and jitted: the same float32 operations, fused differently (~1 ulp).
  chex.assert_trees_all_close(outs[1], outs[0], rtol=1e-6, atol=1e-7)
  jax.tree.map(np.testing.assert_array_equal, outs[2], outs[0])
  assert float(jnp.abs(outs[0]["table"][0]).max()) > 0  # the padding row moves


# ----------------------------------------------------------------------------------
# Chains, wrappers and helpers.


def test_chained_with_transforms_that_take_no_extra_args():
  # optax.chain wraps optax.clip (a plain GradientTransformation) with
  # with_extra_args_support; the mask still reaches the preset's row transforms.
  tx = optax.chain(optax.clip(1e3), make_tx("l2_max_norm"), optax.identity())
  assert_trajectory(run_sparse(tx), fbgemm_reference("looked_up", **CASES["l2_max_norm"]), "chain")


def test_inside_partition_inject_hyperparams_and_skip_nonfinite_rows():
  # optax.partition hands the whole mask to each group (whose updates hold MaskedNode
  # where another group owns a leaf): leaves are matched by path. optax.sgd on 'w'.
  labels = {"table": "emb", "w": "dense"}
  h = CASES["decoupled_max_norm"]
  injected = optax.inject_hyperparams(presets.fbgemm_rowwise_adagrad)(
    learning_rate=LR,
    weight_decay=h["wd"],
    weight_decay_mode=h["mode"],
    max_norm=h["max_norm"],
  )
  tx = ob.skip_nonfinite_rows(optax.partition({"emb": injected, "dense": optax.sgd(LR)}, labels))
  want = fbgemm_reference("looked_up", **h)
  ours = run_sparse(tx)
  w = make_params()["w"].astype(np.float64)
  for t, (_, _, wc) in enumerate(batches()):
    w = w - LR * wc.astype(np.float64)
    np.testing.assert_allclose(ours[t][0]["w"], w, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ours[t][0]["table"], want[t][0]["table"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ours[t][1]["table"], want[t][1]["table"], rtol=RTOL, atol=ATOL)


def test_a_skipped_row_is_not_looked_up():
  # skip_nonfinite_rows takes a row with a non-finite gradient out of looked_up: it is
  # neither decayed nor accumulated, as if it had not been in the batch.
  tx = ob.skip_nonfinite_rows(make_tx("l2"))
  params = {k: jnp.asarray(v) for k, v in make_params().items()}
  ids = jnp.asarray([3, 4, 0])
  coef = jnp.ones((3, D)).at[1, 2].set(jnp.nan).at[2].set(0.0)  # row 4: NaN; row 0: pad
  grads = {"table": sparse.SparseGrad(ids, coef), "w": jnp.zeros(D)}
  new, state = jax.jit(functools.partial(sparse.apply_gradients, tx))(
    grads, tx.init(params), params
  )
  assert int(state.skipped_rows["table"]) == 1
  np.testing.assert_array_equal(new["table"][4], params["table"][4])
  np.testing.assert_array_equal(accumulators(state.inner_state)["table"][4], 0.0)
  assert float(jnp.abs(new["table"][0] - params["table"][0]).max()) > 1e-3  # padding: decayed
  assert float(accumulators(state.inner_state)["table"][0, 0]) > 0


def test_nnx_update_decays_padding_rows():
  nnx = pytest.importorskip("flax.nnx")

  class Model(nnx.Module):
    def __init__(self):
      self.table = nnx.Param(jnp.asarray(make_params()["table"]))
      self.w = nnx.Param(jnp.asarray(make_params()["w"]))

  h = CASES["l2_max_norm"]
  model = Model()
  optimizer = nnx.Optimizer(model, make_tx("l2_max_norm"), wrt=nnx.Param)

  def loss_fn(model, ids, coef, wc):
    return jnp.sum(model.table[...][ids["table"]] * coef) + jnp.sum(model.w[...] * wc)

  @nnx.jit
  def step(model, optimizer, ids, coef, wc):
    return sparse.nnx_update(model, optimizer, loss_fn, {"table": ids}, coef, wc)

  for ids, coef, wc in batches():
    step(model, optimizer, jnp.asarray(ids), jnp.asarray(coef), jnp.asarray(wc))
  want = fbgemm_reference("looked_up", **h)[-1]
  np.testing.assert_allclose(model.table[...], want[0]["table"], rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(model.w[...], want[0]["w"], rtol=RTOL, atol=ATOL)


def test_torchrec_and_torch_presets_decay_every_row_dense_and_looked_up_rows_sparse():
  # TorchRec's RowWiseAdagrad class (and torch.optim.Adagrad) decay every row on every
  # step: the preset's dense step does. The sparse path decays the looked-up rows only,
  # zero gradient or not: FBGEMM's rule, i.e. fbgemm_rowwise_adagrad in 'l2' mode.
  wd, eps = 0.2, 1e-8
  tx = presets.torchrec_rowwise_adagrad(LR, weight_decay=wd, eps=eps)
  dense = run_dense(tx, with_mask=False)[-1][0]["table"]
  p0 = make_params()["table"]
  assert np.all(np.abs(dense[NEVER]) < np.abs(p0[NEVER]) + 1e-12)
  assert np.abs(dense[NEVER] - p0[NEVER]).max() > 1e-2
  ours = run_sparse(presets.torchrec_rowwise_adagrad(LR, weight_decay=wd, eps=eps))
  want = fbgemm_reference("looked_up", mode="l2", wd=wd, eps=eps)
  for t in range(STEPS):  # 'w' is dense: decayed every step there, unlike the reference
    np.testing.assert_allclose(ours[t][0]["table"], want[t][0]["table"], rtol=RTOL, atol=ATOL)


@pytest.mark.multidevice
def test_routed_step_decays_padding_rows_on_their_owner():
  # The owner-routed sharded step runs the same update on each shard's looked-up rows:
  # the padding rows (on shard 0 of 8) are decayed and max-normed as in FBGEMM.
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  from optax_blockada import routed

  h = CASES["l2_max_norm"]
  tx = make_tx("l2_max_norm")
  mesh = jax.make_mesh((8,), ("rows",), axis_types=(AxisType.Auto,))
  p0 = make_params()["table"]
  params = jax.device_put({"table": jnp.asarray(p0)}, NamedSharding(mesh, P("rows", None)))
  shardings = ob.sharding.state_shardings(tx, params)
  state = jax.jit(tx.init, out_shardings=shardings)(params)

  def loss_fn(params, ids, coef):
    return jnp.sum(params["table"][ids["table"]] * coef)

  step = jax.jit(routed.value_and_update(loss_fn, tx, mesh=mesh, reduction="sum"))
  w, acc = p0.astype(np.float64), np.zeros((V, 1))
  rng = np.random.default_rng(77)
  for _ in range(6):
    ids = np.concatenate([rng.integers(2, 12, size=12), PAD, [V, -1]]).astype(np.int32)
    coef = rng.normal(size=(16, D)).astype(np.float32)
    coef[12:14] = 0.0  # padding lookups
    _, params, state, _ = step(params, state, {"table": jnp.asarray(ids)}, jnp.asarray(coef))
    fbgemm_step(w, acc, table_grad(ids, coef), looked_up_rows(ids), **h)
  np.testing.assert_allclose(params["table"], w, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(accumulators(state)["table"], acc, rtol=RTOL, atol=ATOL)
  assert np.abs(w[0] - p0[0]).max() > 1.0  # the padding row 0 was max-normed
  np.testing.assert_array_equal(np.asarray(params["table"])[NEVER], p0[NEVER])


# ----------------------------------------------------------------------------------
# Against real FBGEMM (FBGEMM-GPU-CPU 1.9.0, recorded in tests/fixtures).

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def load_fixture(name):
  with np.load(FIXTURES / f"{name}.npz") as data:
    arrays = {k: data[k] for k in data.files}
  return json.loads(str(arrays.pop("meta"))), arrays


@pytest.mark.parametrize(
  "name",
  ["fbgemm_rowwise_l2_padding", "fbgemm_rowwise_decoupled_padding", "fbgemm_exact_padding"],
)
def test_sparse_path_reproduces_real_fbgemm_padding_rows(name):
  # Real FBGEMM decayed its padding rows (looked up, zero gradient); the sparse path,
  # fed the recorded ids, and the dense step given the recorded looked-up mask reproduce
  # every row of it, padding rows included (measured: <= 4.8e-7 on parameters, 2.2e-7
  # relative on accumulators; the non-zero rule is 0.52 ('l2') and 0.081 ('decoupled')
  # off on the padding rows).
  meta, a = load_fixture(name)
  h = meta["hyperparameters"]
  assert meta["shared_table"], "the CPU fast path ignores weight decay"
  if "EXACT_ROWWISE_ADAGRAD" in meta["optimizer"]:
    make = lambda: presets.fbgemm_rowwise_adagrad(
      h["learning_rate"],
      eps=h["eps"],
      weight_decay=h["weight_decay"],
      weight_decay_mode=h["weight_decay_mode"],
    )
  else:
    make = lambda: presets.fbgemm_exact_adagrad(h["learning_rate"], eps=h["eps"])
  ids_all, grads, looked = a["ids"], a["grads/table"], a["looked_up"]
  steps = len(ids_all)

  def sparse_grad(t):
    # The recorded summed gradient of each row on the first occurrence of its id.
    ids = ids_all[t]
    first = np.zeros(len(ids), bool)
    first[np.unique(ids, return_index=True)[1]] = True
    values = np.where(first[:, None], grads[t][ids], 0.0).astype(np.float32)
    return sparse.SparseGrad(jnp.asarray(ids, jnp.int32), jnp.asarray(values))

  sparse_step = jax.jit(lambda p, s, g: sparse.apply_gradients(make(), g, s, p))

  def dense_step(p, s, g, m):
    u, s = make().update(g, s, p, looked_up=m)
    return optax.apply_updates(p, u), s

  dense_step = jax.jit(dense_step)
  tx = make()
  p_sparse = p_dense = {"table": jnp.asarray(a["params0/table"])}
  s_sparse = s_dense = tx.init(p_sparse)
  for t in range(steps):
    p_sparse, s_sparse = sparse_step(p_sparse, s_sparse, {"table": sparse_grad(t)})
    g = {"table": jnp.asarray(grads[t])}
    p_dense, s_dense = dense_step(p_dense, s_dense, g, {"table": jnp.asarray(looked[t])})
    for what, p, s in (("sparse", p_sparse, s_sparse), ("dense + mask", p_dense, s_dense)):
      np.testing.assert_allclose(
        p["table"], a["params/table"][t], rtol=RTOL, atol=ATOL, err_msg=f"{what}, step {t}"
      )
      acc = np.asarray(accumulators(s)["table"]).reshape(a["accumulators/table"][t].shape)
      np.testing.assert_allclose(acc, a["accumulators/table"][t], rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(
  "make",
  [
    lambda v: presets.fbgemm_rowwise_adagrad(touched=v),
    lambda v: ob.add_decayed_weights_to_touched_rows(0.1, touched=v),
    lambda v: ob.renormalize_rows(1.0, touched=v),
  ],
)
def test_bad_touched_value_is_a_clear_error(make):
  with pytest.raises(
    ValueError,
    match=r"touched must be one of \('looked_up', 'nonzero_gradient'\), got 'looked-up'",
  ):
    make("looked-up")


def test_bad_masks_are_clear_errors():
  tx = make_tx("l2")
  params = {k: jnp.asarray(v) for k, v in make_params().items()}
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  name = "add_decayed_weights_to_touched_rows"
  with pytest.raises(
    ValueError,
    match=rf"{name}: looked_up for the leaf at \['table'\] \(shape \(16, 4\), feature axes "
    r"\(1,\)\) has shape \(16, 4\); it needs one boolean per row: shape \(16, 1\) "
    r"\(or \(16,\)\)",
  ):
    tx.update(grads, state, params, looked_up={"table": jnp.ones((V, D), bool), "w": None})
  with pytest.raises(ValueError, match=r"has shape \(15,\); it needs one boolean per row"):
    tx.update(grads, state, params, looked_up={"table": jnp.ones(V - 1, bool), "w": None})
  with pytest.raises(TypeError, match=r"must be a boolean mask .* got dtype int32\. Pass "):
    tx.update(grads, state, params, looked_up={"table": jnp.ones(V, jnp.int32), "w": None})
  with pytest.raises(ValueError, match=r"looked_up has no entry for the leaf at \['w'\]"):
    tx.update(grads, state, params, looked_up={"table": jnp.ones(V, bool)})
  nested = {"emb": {"a": jnp.ones((V, D)), "b": jnp.ones((V, D))}}
  decay = ob.add_decayed_weights_to_touched_rows(0.1)
  with pytest.raises(
    ValueError, match=r"one array at \['emb'\] for the subtree .*\['emb'\]\['a'\]"
  ):
    decay.update(nested, decay.init(nested), nested, looked_up={"emb": jnp.ones(V, bool)})
  # None for a subtree keeps the non-zero rule there.
  out, _ = decay.update(nested, decay.init(nested), nested, looked_up={"emb": None})
  np.testing.assert_allclose(out["emb"]["a"], 1.1)
  # touched='nonzero_gradient' ignores the mask, even a malformed one.
  plain = make_tx("l2", touched="nonzero_gradient")
  plain.update(grads, state, params, looked_up={"table": jnp.ones((V, D), bool), "w": None})
