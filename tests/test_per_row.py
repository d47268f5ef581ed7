"""The per-row registry: what it accepts, and that the sparse path and the sharding helper
both read it (a user's own state class, registered once, works in both)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import optax_blockada as ob
from optax_blockada import _per_row, sparse
from optax_blockada.sharding import state_partition_specs


class RowSumState(NamedTuple):
  """A toy lazily exact row-wise transform's state: per-row sums of |g|, and a count."""

  count: jax.Array
  row_abs: optax.Updates


ob.register_per_row_state(RowSumState, ["row_abs"])


def scale_by_row_abs() -> optax.GradientTransformation:
  """u = g / (1 + sum_t |g_t| summed over the row): lazily exact, per-row state (V, 1)."""

  def init(params):
    return RowSumState(
      jnp.zeros((), jnp.int32), jax.tree.map(lambda p: jnp.zeros((p.shape[0], 1)), params)
    )

  def update(updates, state, params=None):
    del params
    row_abs = jax.tree.map(
      lambda a, g: a + jnp.sum(jnp.abs(g), axis=-1, keepdims=True), state.row_abs, updates
    )
    updates = jax.tree.map(lambda g, a: g / (1.0 + a), updates, row_abs)
    return updates, RowSumState(state.count + 1, row_abs)

  return optax.GradientTransformation(init, update)


class MomentumLikeState(NamedTuple):
  trace: optax.Updates


ob.register_per_row_state(MomentumLikeState, ["trace"], lazily_exact=False)


def test_a_registered_state_of_a_users_transform_works_in_the_sparse_path():
  tx = optax.chain(scale_by_row_abs(), optax.scale(-0.5))
  rng = np.random.default_rng(0)
  params = {"table": jnp.asarray(rng.normal(size=(10, 3)), jnp.float32)}
  ids = {"table": jnp.array([1, 4, 4, 7])}
  loss = lambda p, ids: jnp.sum(p["table"][ids["table"]] ** 2)
  state = tx.init(params)
  dense_state = state
  dense = params
  for _ in range(3):
    _, grads, touched = sparse.value_and_grad(loss)(params, ids)
    params, state = sparse.apply_gradients(tx, grads, state, params, touched)
    g = jax.grad(lambda p: loss(p, ids))(dense)
    u, dense_state = tx.update(g, dense_state, dense)
    dense = optax.apply_updates(dense, u)
  # Lazily exact: the sparse steps equal the dense ones; untouched rows never move.
  np.testing.assert_allclose(params["table"], dense["table"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(state[0].row_abs["table"], dense_state[0].row_abs["table"], rtol=1e-6)
  assert int(state[0].count) == 3


def test_a_registered_state_is_sharded_along_rows_by_the_sharding_helper():
  params = {"table": jax.ShapeDtypeStruct((8, 3), jnp.float32)}
  specs = state_partition_specs(scale_by_row_abs(), params, {"table": P("rows", None)})
  assert specs.row_abs["table"] == P("rows", None)  # (V, 1): rows along 'rows'
  assert specs.count == P()


def test_a_state_registered_as_not_lazily_exact_is_refused_by_the_sparse_path():
  def init(params):
    return MomentumLikeState(jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    trace = jax.tree.map(lambda t, g: 0.9 * t + g, state.trace, updates)
    return trace, MomentumLikeState(trace)

  tx = optax.GradientTransformation(init, update)
  params = {"table": jnp.ones((6, 2))}
  loss = lambda p, ids: jnp.sum(p["table"][ids["table"]])
  _, grads, touched = sparse.value_and_grad(loss)(params, {"table": jnp.array([0, 2])})
  with pytest.raises(ValueError, match="MomentumLikeState, registered as not lazily exact"):
    sparse.apply_gradients(tx, grads, tx.init(params), params, touched)


def test_registration_errors_name_the_problem():
  with pytest.raises(TypeError, match="cls must be a NamedTuple class"):
    ob.register_per_row_state(dict, [])
  with pytest.raises(ValueError, match=r"RowSumState has no field\(s\) \['nope'\]"):
    ob.register_per_row_state(RowSumState, ["nope"])
  with pytest.raises(ValueError, match="RowSumState is already registered"):
    ob.register_per_row_state(RowSumState, ["count"])
  ob.register_per_row_state(RowSumState, ["row_abs"])  # the same again is fine


def test_this_librarys_states_and_optax_adagrad_are_registered():
  params = jnp.zeros((4, 2))
  cases = {
    ob.scale_by_diagonal_adagrad(): ("sum_of_squares",),
    ob.scale_by_rowwise_adagrad(): ("sum_of_squares",),
    ob.scale_by_block_adagrad(): ("block_sums",),
    ob.scale_by_block_adagrad(structure="shared"): (),
    ob.scale_by_block_adagrad(structure="rows_x_shared"): ("row_sums",),
    optax.scale_by_rss(): ("sum_of_squares",),
  }
  for tx, fields in cases.items():
    entry = _per_row.lookup(tx.init(params))
    assert entry == _per_row.PerRowFields(fields, lazily_exact=True), type(tx.init(params))
