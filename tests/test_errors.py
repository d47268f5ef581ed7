"""Bad input gets a clear error naming the argument, the value and the fix."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_blockada as ob
from optax_blockada import presets

TABLE = {"table": jnp.zeros((5, 3)), "bias": jnp.zeros(5)}


def test_feature_axis_out_of_range():
  tx = ob.rowwise_adagrad(0.1, feature_axes=2)
  with pytest.raises(
    ValueError,
    match=r"feature_axes: axis 2 is out of range .*\['bias'\].*"
    r"shape \(5,\)",
  ):
    tx.init(TABLE)


def test_feature_axes_duplicated():
  tx = ob.rowwise_adagrad(0.1, feature_axes=(1, -1))
  with pytest.raises(ValueError, match=r"duplicated axes \(1, -1\).*\['table'\]"):
    tx.init({"table": jnp.zeros((5, 3))})


def test_feature_axes_of_the_wrong_type():
  with pytest.raises(TypeError, match="feature_axes: expected None, an int or a tuple"):
    ob.rowwise_adagrad(0.1, feature_axes={"table": "last", "bias": None}).init(TABLE)


def test_feature_axes_tree_not_a_prefix():
  tx = ob.rowwise_adagrad(0.1, feature_axes={"embedding": -1})
  with pytest.raises(ValueError, match="must be a prefix of the updates/params tree"):
    tx.init(TABLE)


def test_updates_and_state_trees_do_not_match():
  tx = ob.rowwise_adagrad(0.1)
  state = tx.init(TABLE)
  with pytest.raises(ValueError, match="the updates tree does not match the optimizer state"):
    tx.update({"table": jnp.zeros((5, 3))}, state)


def test_state_made_with_other_feature_axes():
  params = {"table": jnp.zeros((5, 3))}
  state = ob.scale_by_rowwise_adagrad(feature_axes=0).init(params)
  with pytest.raises(
    ValueError,
    match=r"accumulator of the leaf at \['table'\] has shape "
    r"\(1, 3\).*need \(5, 1\)",
  ):
    ob.scale_by_rowwise_adagrad().update(params, state)


@pytest.mark.parametrize("jit", [False, True])
def test_row_wise_state_made_for_another_row_width(jit):
  # The (V, 1) accumulator is the same for (6, 4) and (6, 8) tables, and broadcasting
  # would accept either; the state's feature_shape (1, 4) tells them apart.
  tx = ob.rowwise_adagrad(0.1)
  state = tx.init({"table": jnp.zeros((6, 4))})
  update = jax.jit(tx.update) if jit else tx.update
  with pytest.raises(
    ValueError,
    match=r"leaf at \['table'\] was made for rows of shape \(1, 4\).*updates of shape "
    r"\(6, 8\).*rows of shape \(1, 8\)",
  ):
    update({"table": jnp.ones((6, 8))}, state)
  # The record costs d float32 entries next to the V float32 accumulators.
  assert ob.diagnostics.state_bytes(state) == (6 + 4) * 4
  # A state built by hand without the record is not checked (the old behaviour).
  bare = ob.RowwiseAdagradState(sum_of_squares=state[0].sum_of_squares)
  u, _ = ob.scale_by_rowwise_adagrad().update({"table": jnp.ones((6, 8))}, bare)
  assert u["table"].shape == (6, 8)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
@pytest.mark.parametrize("make_tx", [ob.diagonal_adagrad, ob.rowwise_adagrad])
def test_integer_or_boolean_params(dtype, make_tx):
  params = {"ids": jnp.zeros(4, dtype), "w": jnp.zeros((4, 2))}
  with pytest.raises(
    TypeError,
    match=r"the leaf at \['ids'\] has dtype (int32|bool).*"
    r"optax.masked",
  ):
    make_tx(0.1).init(params)


def test_integer_updates():
  tx = ob.scale_by_rowwise_adagrad()
  state = tx.init({"w": jnp.zeros(3)})
  with pytest.raises(TypeError, match=r"updates: the leaf at \['w'\] has dtype int32"):
    tx.update({"w": jnp.zeros(3, jnp.int32)}, state)


def test_unknown_reduction():
  with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum'\), got 'max'"):
    ob.rowwise_adagrad(0.1, reduction="max")


@pytest.mark.parametrize("name", ["eps", "initial_accumulator_value"])
@pytest.mark.parametrize("value", [-1e-3, float("nan"), float("inf")])
def test_negative_or_nonfinite_eps_and_initial_accumulator(name, value):
  for factory in (ob.scale_by_diagonal_adagrad, ob.scale_by_rowwise_adagrad):
    with pytest.raises(ValueError, match=f"{name} must be finite and >= 0"):
      factory(**{name: value})


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -float("inf"), np.float32("nan")])
@pytest.mark.parametrize(
  "factory",
  [
    ob.diagonal_adagrad,
    ob.rowwise_adagrad,
    presets.torch_adagrad,
    presets.keras_adagrad,
    presets.fbgemm_exact_adagrad,
    presets.fbgemm_rowwise_adagrad,
    presets.torchrec_rowwise_adagrad,
    presets.lightfm_adagrad,
  ],
)
def test_learning_rate_not_finite(lr, factory):
  with pytest.raises(ValueError, match="learning_rate must be finite"):
    factory(learning_rate=lr)


def test_schedules_are_accepted_as_learning_rates():
  tx = ob.rowwise_adagrad(optax.linear_schedule(0.1, 0.0, 10))
  u, _ = tx.update(TABLE, tx.init(TABLE), TABLE)
  assert jax.tree.structure(u) == jax.tree.structure(TABLE)


def test_accumulator_dtype_not_floating():
  with pytest.raises(TypeError, match="accumulator_dtype must be a floating dtype"):
    ob.rowwise_adagrad(0.1, accumulator_dtype=jnp.int32)


def test_traced_static_flag_is_a_clear_error():
  def build(flag):
    return ob.scale_by_rowwise_adagrad(eps_in_sqrt=flag)

  with pytest.raises(TypeError, match=r"eps_in_sqrt .*static_args=\('eps_in_sqrt'"):
    jax.jit(build)(True)


def test_row_transforms_need_params():
  for tx in (ob.renormalize_rows(1.0), ob.add_decayed_weights_to_touched_rows(0.1)):
    with pytest.raises(
      ValueError,
      match=r"needs the current parameters: call "
      r"tx.update\(updates, state, params\)",
    ):
      tx.update(TABLE, tx.init(TABLE))


def test_glove_eta_must_be_positive():
  with pytest.raises(ValueError, match="eta must be > 0"):
    presets.glove_adagrad(eta=0.0)
  with pytest.raises(ValueError, match="eta must be finite and >= 0"):
    presets.glove_adagrad(eta=-0.05)


def test_unknown_weight_decay_mode():
  with pytest.raises(ValueError, match="weight_decay_mode must be one of"):
    presets.fbgemm_rowwise_adagrad(weight_decay_mode="counter")


def test_negative_weight_decay():
  with pytest.raises(ValueError, match="weight_decay must be finite and >= 0"):
    presets.torch_adagrad(weight_decay=-1.0)


# --- States, leaves and ids that used to fail deep inside (AttributeError, ZeroDivision) ---

SCALE_BY = {
  "diagonal": (ob.scale_by_diagonal_adagrad, "DiagonalAdagradState"),
  "rowwise": (ob.scale_by_rowwise_adagrad, "RowwiseAdagradState"),
  "block": (ob.scale_by_block_adagrad, "BlockAdagradState"),
}


@pytest.mark.parametrize("name", list(SCALE_BY))
def test_a_state_of_another_transform_is_a_clear_error(name):
  make, state_name = SCALE_BY[name]
  w = jnp.ones((6, 4))
  others = {
    "None": None,
    "adam": optax.adam(0.1).init(w),
    "another Adagrad": (
      ob.scale_by_block_adagrad if name != "block" else ob.scale_by_rowwise_adagrad
    )().init(w),
  }
  for state in others.values():
    with pytest.raises(TypeError, match=rf"must be the {state_name} made by .*init.*Initialise"):
      make().update(w, state)
  # The state of the alias around it (scale_by_..., then optax.scale): a hint to unwrap it.
  alias = {
    "diagonal": ob.diagonal_adagrad,
    "rowwise": ob.rowwise_adagrad,
    "block": ob.block_adagrad,
  }[name]
  with pytest.raises(
    TypeError, match=rf"It contains a {state_name}: pass the state of the transform"
  ):
    make().update(w, alias(0.1).init(w))


def test_a_block_state_of_another_structure_is_a_clear_error():
  w = jnp.ones((6, 4))
  shared = ob.scale_by_block_adagrad(structure="shared").init(w)
  with pytest.raises(
    TypeError,
    match=r"got a SharedBlockAdagradState, the state of another block structure, but this "
    r"transform has structure='rows' and keeps a BlockAdagradState",
  ):
    ob.scale_by_block_adagrad().update(w, shared)
  cached = ob.scale_by_block_adagrad(structure="shared", update_root_every=2).init(w)
  with pytest.raises(
    ValueError,
    match=r"the state's cache is SharedRootCache, but this transform has update_root_every=1",
  ):
    ob.scale_by_block_adagrad(structure="shared").update(w, cached)
  with pytest.raises(ValueError, match=r"the state's cache is EmptyState, .* update_root_every=3"):
    ob.scale_by_block_adagrad(structure="shared", update_root_every=3).update(w, shared)


@pytest.mark.parametrize("name", ["rowwise", "block", "block_shared"])
def test_empty_rows_are_a_clear_error(name):
  make = {
    "rowwise": ob.scale_by_rowwise_adagrad,
    "block": ob.scale_by_block_adagrad,
    "block_shared": lambda: ob.scale_by_block_adagrad(structure="shared"),
  }[name]
  with pytest.raises(ValueError, match=r"\['w'\] has shape \(8, 0\): its 8 rows .* are empty"):
    make().init({"w": jnp.zeros((8, 0))})
  # No rows at all, or one-coordinate rows of an empty leaf, are fine.
  tx = make()
  assert tx.update(jnp.zeros((0, 3)), tx.init(jnp.zeros((0, 3))))[0].shape == (0, 3)
  diag = ob.scale_by_diagonal_adagrad()
  assert diag.update(jnp.zeros((8, 0)), diag.init(jnp.zeros((8, 0))))[0].shape == (8, 0)


@pytest.mark.parametrize("make", [ob.rowwise_adagrad, ob.diagonal_adagrad, ob.block_adagrad])
def test_python_float_params_work_as_in_optax(make):
  params = {"scale": 1.0, "table": jnp.ones((3, 2))}
  grads = jax.grad(lambda p: p["scale"] ** 2 + jnp.sum(p["table"]))(params)
  want = optax.apply_updates(
    params, optax.adagrad(0.1).update(grads, optax.adagrad(0.1).init(params))[0]
  )
  tx = make(0.1, relative_eps=0.0) if make is ob.block_adagrad else make(0.1)
  got = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
  # Block Adagrad sums squares per row: on the (3, 2) table it is row-wise 'sum'; the
  # scalar's 1 x 1 block is optax's diagonal Adagrad exactly.
  np.testing.assert_allclose(got["scale"], want["scale"], rtol=1e-6)
  if make is not ob.block_adagrad:
    np.testing.assert_allclose(got["table"], want["table"], rtol=1e-6)


def test_state_bytes_of_non_arrays_and_negative_eps_of_effective_learning_rates():
  with pytest.raises(TypeError, match=r"state_bytes: the leaf at \['a'\] is a float"):
    ob.state_bytes({"a": 1.0, "b": jnp.zeros(3)})
  state = ob.rowwise_adagrad(0.1).init(jnp.ones((6, 4)))
  with pytest.raises(ValueError, match=r"eps must be finite and >= 0, got -5\.0"):
    ob.effective_learning_rates(state, eps=-5.0)


def test_a_python_list_of_ids_is_a_clear_error():
  from optax_blockada import sparse

  with pytest.raises(TypeError, match=r"ids\['t'\] holds Python ints .*jnp\.asarray"):
    sparse.gather({"t": jnp.ones((16, 2))}, {"t": [1, 2, 3]})
