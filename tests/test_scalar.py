"""Diagonal and row-wise Adagrad against optax and a float64 numpy reference."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_blockada as ob

STEPS = 30


def numpy_adagrad(grads, *, axes, init, eps, eps_in_sqrt, reduction, old):
  """Float64 reference from the formulas (docs/design.rst), one leaf, a list of gradients.

  Returns the list of updates (without learning rate) and the final accumulator.
  """
  shape = grads[0].shape
  state_shape = tuple(1 if i in axes else s for i, s in enumerate(shape))
  acc = np.full(state_shape, init, np.float64)
  updates = []
  for g in grads:
    g = g.astype(np.float64)
    sq = g * g
    if axes:
      sq = (
        sq.mean(axis=axes, keepdims=True)
        if reduction == "mean"
        else sq.sum(axis=axes, keepdims=True)
      )
    new = acc + sq
    den = acc if old else new
    with np.errstate(divide="ignore", invalid="ignore"):
      phi = 1 / np.sqrt(den + eps) if eps_in_sqrt else 1 / (np.sqrt(den) + eps)
    phi = np.where(den > 0, phi, 0.0)
    updates.append(g * phi)
    acc = new
  return updates, acc


def random_grads(rng, shape, steps=STEPS, zero_rows=(), zero_steps_for_row=None):
  """Gradients with a few rows always zero and one row zero on some steps."""
  out = []
  for t in range(steps):
    g = rng.normal(size=shape).astype(np.float32) * rng.uniform(0.1, 3.0)
    for r in zero_rows:
      g[r] = 0.0
    if zero_steps_for_row is not None and t % 3 != 0:
      g[zero_steps_for_row] = 0.0
    out.append(g)
  return out


def run_transform(tx, params, grads_list):
  state = tx.init(params)
  updates_seq = []
  step = jax.jit(tx.update)
  for g in grads_list:
    updates, state = step(g, state, params)
    updates_seq.append(updates)
    params = optax.apply_updates(params, updates)
  return updates_seq, state, params


def test_defaults_equal_optax_adagrad_over_50_steps():
  rng = np.random.default_rng(0)
  params = {
    "table": jnp.asarray(rng.normal(size=(20, 8)), jnp.float32),
    "bias": jnp.zeros(20, jnp.float32),
    "scalar": jnp.asarray(1.5, jnp.float32),
    "cube": jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32),
  }
  grads = [
    jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    for _ in range(50)
  ]
  # Exactly zero gradients exercise the where(G > 0) guard with init 0.
  for g in grads[:5]:
    g["table"] = g["table"].at[3].set(0.0)
  for init in (0.1, 0.0):
    ours_u, ours_s, ours_p = run_transform(
      ob.diagonal_adagrad(0.3, initial_accumulator_value=init), params, grads
    )
    ref_u, ref_s, ref_p = run_transform(
      optax.adagrad(0.3, initial_accumulator_value=init), params, grads
    )
    for a, b in zip(ours_u, ref_u, strict=True):
      jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-6, atol=1e-7), a, b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), ours_p, ref_p)
    jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6),
      ours_s[0].sum_of_squares,
      ref_s[0].sum_of_squares,
    )
  # scale_by_* equals optax.scale_by_rss, too.
  u1, _, _ = run_transform(ob.scale_by_diagonal_adagrad(), params, grads[:5])
  u2, _, _ = run_transform(optax.scale_by_rss(), params, grads[:5])
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-6), u1[-1], u2[-1])


# (eps_in_sqrt, use_old_accumulator, (init, eps)). An old accumulator starting at 0 is
# the guarded case, tested on its own in test_old_accumulator_with_zero_init_is_guarded.
OPTIONS = [
  (in_sqrt, old, init_eps)
  for in_sqrt, old, init_eps in itertools.product(
    [True, False], [False, True], [(0.1, 1e-7), (0.0, 1e-10), (1.0, 0.0), (0.5, 1e-2)]
  )
  if not (old and init_eps[0] == 0.0)
]


@pytest.mark.parametrize(("eps_in_sqrt", "old", "init_eps"), OPTIONS)
def test_diagonal_matches_numpy_reference(eps_in_sqrt, old, init_eps):
  init, eps = init_eps
  rng = np.random.default_rng(1)
  grads = random_grads(rng, (10, 4), zero_rows=(2,), zero_steps_for_row=5)
  tx = ob.scale_by_diagonal_adagrad(init, eps, eps_in_sqrt=eps_in_sqrt, use_old_accumulator=old)
  ours, state, _ = run_transform(tx, jnp.zeros((10, 4)), [jnp.asarray(g) for g in grads])
  ref, ref_acc = numpy_adagrad(
    grads, axes=(), init=init, eps=eps, eps_in_sqrt=eps_in_sqrt, reduction="sum", old=old
  )
  for t, (a, b) in enumerate(zip(ours, ref, strict=True)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7, err_msg=f"step {t}")
  np.testing.assert_allclose(state.sum_of_squares, ref_acc, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("eps_in_sqrt", "old", "init_eps"), OPTIONS)
def test_rowwise_matches_numpy_reference(reduction, eps_in_sqrt, old, init_eps):
  init, eps = init_eps
  rng = np.random.default_rng(2)
  grads = random_grads(rng, (10, 6), zero_rows=(0,), zero_steps_for_row=7)
  tx = ob.scale_by_rowwise_adagrad(
    init, eps, reduction=reduction, eps_in_sqrt=eps_in_sqrt, use_old_accumulator=old
  )
  ours, state, _ = run_transform(tx, jnp.zeros((10, 6)), [jnp.asarray(g) for g in grads])
  ref, ref_acc = numpy_adagrad(
    grads, axes=(1,), init=init, eps=eps, eps_in_sqrt=eps_in_sqrt, reduction=reduction, old=old
  )
  for t, (a, b) in enumerate(zip(ours, ref, strict=True)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7, err_msg=f"step {t}")
  assert state.sum_of_squares.shape == (10, 1)
  np.testing.assert_allclose(state.sum_of_squares, ref_acc, rtol=1e-5)


def test_old_accumulator_with_zero_init_is_guarded():
  # G_{t-1} = 0 on the first step: the guard gives a zero step instead of g / eps.
  tx = ob.scale_by_diagonal_adagrad(0.0, 1e-10, eps_in_sqrt=False, use_old_accumulator=True)
  params = jnp.zeros(2)
  state = tx.init(params)
  u1, state = tx.update(jnp.array([1.0, 2.0]), state)
  u2, state = tx.update(jnp.array([1.0, 2.0]), state)
  np.testing.assert_array_equal(u1, [0.0, 0.0])
  np.testing.assert_allclose(u2, [1.0, 1.0], rtol=1e-6)  # g / sqrt(g^2)


@pytest.mark.parametrize(
  ("shape", "axes"),
  [((4, 5, 6), (1, 2)), ((4, 5, 6), 0), ((4, 5, 6), (-1,)), ((7, 3), ()), ((6,), 0)],
)
def test_rowwise_feature_axes_match_numpy(shape, axes):
  rng = np.random.default_rng(3)
  grads = random_grads(rng, shape, steps=10)
  tx = ob.scale_by_rowwise_adagrad(feature_axes=axes)
  ours, state, _ = run_transform(tx, jnp.zeros(shape), [jnp.asarray(g) for g in grads])
  norm_axes = tuple(sorted(a % len(shape) for a in np.atleast_1d(axes).tolist()))
  ref, ref_acc = numpy_adagrad(
    grads, axes=norm_axes, init=0.1, eps=1e-7, eps_in_sqrt=True, reduction="mean", old=False
  )
  np.testing.assert_allclose(ours[-1], ref[-1], rtol=2e-5)
  assert state.sum_of_squares.shape == ref_acc.shape


def test_mean_and_sum_differ_only_by_rescaling():
  # docs/design.rst: lr -> lr*sqrt(d), init -> init*d, eps -> eps*d.
  d = 16
  rng = np.random.default_rng(4)
  params = jnp.asarray(rng.normal(size=(8, d)), jnp.float32)
  grads = [jnp.asarray(g) for g in random_grads(rng, (8, d), steps=20)]
  _, _, p_mean = run_transform(ob.rowwise_adagrad(0.1, 0.1, 1e-7, reduction="mean"), params, grads)
  _, _, p_sum = run_transform(
    ob.rowwise_adagrad(0.1 * np.sqrt(d), 0.1 * d, 1e-7 * d, reduction="sum"), params, grads
  )
  np.testing.assert_allclose(p_mean, p_sum, rtol=1e-5, atol=1e-6)
  _, _, p_sum_plain = run_transform(ob.rowwise_adagrad(0.1, reduction="sum"), params, grads)
  assert np.max(np.abs(p_sum_plain - p_mean)) > 1e-2


def test_d1_rowwise_equals_diagonal_exactly():
  rng = np.random.default_rng(5)
  params = {"t": jnp.zeros((9, 1)), "b": jnp.zeros(9), "s": jnp.zeros(())}
  grads = [
    jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    for _ in range(15)
  ]
  for kwargs in (
    {},
    {"eps_in_sqrt": False, "initial_accumulator_value": 0.0},
    {"use_old_accumulator": True, "initial_accumulator_value": 1.0},
  ):
    u_row, _, _ = run_transform(ob.rowwise_adagrad(0.2, **kwargs), params, grads)
    u_diag, _, _ = run_transform(ob.diagonal_adagrad(0.2, **kwargs), params, grads)
    for a, b in zip(u_row, u_diag, strict=True):
      jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize(
  "make_tx",
  [
    lambda: ob.diagonal_adagrad(0.5),
    lambda: ob.rowwise_adagrad(0.5),
    lambda: ob.rowwise_adagrad(0.5, reduction="sum", eps_in_sqrt=False),
    lambda: ob.rowwise_adagrad(0.5, 1.0, 0.0, use_old_accumulator=True),
    lambda: ob.diagonal_adagrad(0.5, 0.0, 1e-10, eps_in_sqrt=False),
  ],
)
def test_lazy_exactness(make_tx):
  """Rows with a zero gradient keep params and state, bit for bit, every step."""
  rng = np.random.default_rng(6)
  params = jnp.asarray(rng.normal(size=(12, 4)), jnp.float32)
  tx = make_tx()
  state = tx.init(params)
  untouched = np.array([1, 4, 11])
  for t in range(20):
    g = rng.normal(size=(12, 4)).astype(np.float32)
    g[untouched] = 0.0
    if t % 2:
      g[5] = 0.0  # sometimes-touched row
    before = jax.tree.map(np.asarray, state)
    updates, state = tx.update(jnp.asarray(g), state, params)
    new_params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(np.asarray(new_params)[untouched], np.asarray(params)[untouched])
    for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(state), strict=True):
      if b.shape[:1] == (12,):  # per-row state (row-wise Adagrad's feature_shape is (1, 4))
        np.testing.assert_array_equal(np.asarray(a)[untouched], b[untouched])
        if t % 2:
          np.testing.assert_array_equal(np.asarray(a)[5], b[5])
    params = new_params


def test_conventions_worked_example_first_step_multiplier():
  # |u|/lr for g = 1e-3 on the first step with the optax/Keras defaults (a = 0.1): 0.0032.
  tx = ob.diagonal_adagrad(1.0)
  u, _ = tx.update(jnp.array([1e-3]), tx.init(jnp.zeros(1)))
  np.testing.assert_allclose(-u[0], 1e-3 / np.sqrt(0.1 + 1e-6 + 1e-7), rtol=1e-5)
  assert abs(float(-u[0]) - 0.0032) < 5e-5


def test_updates_keep_gradient_dtype_and_accumulators_float32():
  params = {"a": jnp.zeros((4, 3), jnp.bfloat16), "b": jnp.zeros(4, jnp.float16)}
  for tx in (ob.diagonal_adagrad(0.1), ob.rowwise_adagrad(0.1)):
    state = tx.init(params)
    assert {x.dtype for x in jax.tree.leaves(state[0])} == {jnp.dtype(jnp.float32)}
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    assert updates["a"].dtype == jnp.bfloat16 and updates["b"].dtype == jnp.float16
  tx = ob.rowwise_adagrad(0.1, accumulator_dtype=jnp.bfloat16)
  assert tx.init(params)[0].sum_of_squares["a"].dtype == jnp.bfloat16
