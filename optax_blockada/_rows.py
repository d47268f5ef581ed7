"""Row-level pieces that production embedding optimizers apply around Adagrad.

A row is "touched" when its incoming update has a non-zero entry. In a dense JAX step
this is the closest observable notion to FBGEMM's "row present in the batch": a row
that was looked up but received an exactly zero gradient counts as untouched here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from optax_blockada import _geometry, _validation
from optax_blockada._geometry import FeatureAxesSpec
from optax_blockada._scalar import accumulator_dtype_for

__all__ = ["add_decayed_weights_to_touched_rows", "renormalize_rows"]


def _needs_params(params: Any, name: str) -> None:
  if params is None:
    raise ValueError(
      f"{name} needs the current parameters: call tx.update(updates, state, params)."
    )


def _map_rows(fn, updates, params, feature_axes):
  """Applies ``fn(u, p, axes)`` leaf by leaf with resolved feature axes."""
  leaves, treedef = jax.tree.flatten(updates)
  param_leaves = treedef.flatten_up_to(params)
  axes = _geometry.resolve_feature_axes(feature_axes, updates)
  return treedef.unflatten(
    [fn(u, p, ax) for u, p, ax in zip(leaves, param_leaves, axes, strict=True)]
  )


def add_decayed_weights_to_touched_rows(
  weight_decay: ArrayLike = 0.0, *, feature_axes: FeatureAxesSpec = None
) -> optax.GradientTransformation:
  r"""Adds ``weight_decay * params`` to the rows whose update is non-zero.

  .. math::

    u_r \leftarrow u_r + \lambda\, w_r \quad \text{if } u_r \ne 0, \qquad
    u_r \text{ unchanged otherwise}.

  Unlike :func:`optax.add_decayed_weights` this keeps untouched rows untouched
  (lazy), as FBGEMM/TorchRec do for the rows of a batch. Placed before a row-wise
  Adagrad it is FBGEMM's ``L2`` mode; placed after it (before the learning rate) it is
  FBGEMM's ``DECOUPLE`` mode. Rows are cut as in :func:`scale_by_rowwise_adagrad`.

  Args:
    weight_decay: :math:`\lambda \ge 0`.
    feature_axes: which axes make a row (see :func:`scale_by_rowwise_adagrad`). Static.

  Returns:
    An :class:`optax.GradientTransformation` (stateless; ``params`` are required).

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> tx = ob.add_decayed_weights_to_touched_rows(0.5)
    >>> params = jnp.ones((2, 2))
    >>> updates = jnp.array([[1.0, 0.0], [0.0, 0.0]])
    >>> print(tx.update(updates, tx.init(params), params)[0])
    [[1.5 0.5]
     [0.  0. ]]
  """
  _validation.check_nonnegative("weight_decay", weight_decay)

  def update_fn(updates, state, params=None):
    _needs_params(params, "add_decayed_weights_to_touched_rows")

    def leaf(u, p, ax):
      decay = jnp.asarray(weight_decay).astype(u.dtype) * p.astype(u.dtype)
      return jnp.where(_geometry.row_is_nonzero(u, ax), u + decay, u)

    return _map_rows(leaf, updates, params, feature_axes), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def renormalize_rows(
  max_norm: ArrayLike, *, feature_axes: FeatureAxesSpec = None
) -> optax.GradientTransformation:
  r"""Rescales updated rows whose new norm exceeds ``max_norm`` (FBGEMM ``max_norm``).

  For every touched row :math:`r` (non-zero update) with
  :math:`w'_r = w_r + u_r` and :math:`\|w'_r\| > m`, the update becomes
  :math:`m\, w'_r / \|w'_r\| - w_r`, so the row lands on the sphere of radius
  :math:`m`. Untouched rows and rows within the bound are left alone, and
  ``max_norm <= 0`` disables it. Put it last in a chain, after the learning rate:
  it works in parameter space.

  Args:
    max_norm: :math:`m`; ``<= 0`` turns the transform off.
    feature_axes: which axes make a row (see :func:`scale_by_rowwise_adagrad`). Static.

  Returns:
    An :class:`optax.GradientTransformation` (stateless; ``params`` are required).

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_blockada as ob
    >>> tx = ob.renormalize_rows(1.0)
    >>> params = jnp.array([[0.0, 0.0], [0.5, 0.0]])
    >>> updates = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    >>> new, _ = tx.update(updates, tx.init(params), params)
    >>> print(optax.apply_updates(params, new))
    [[0.6 0.8]
     [0.5 0. ]]
  """
  _validation.check_learning_rate(max_norm, name="max_norm")

  def update_fn(updates, state, params=None):
    _needs_params(params, "renormalize_rows")

    def leaf(u, p, ax):
      dtype = accumulator_dtype_for(p.dtype, None)
      new = p.astype(dtype) + u.astype(dtype)
      norm = jnp.sqrt(_geometry.reduce_rows(new * new, ax, "sum"))
      m = jnp.asarray(max_norm).astype(dtype)
      clip = (m > 0) & (norm > m) & _geometry.row_is_nonzero(u, ax)
      scale = jnp.where(clip, m / jnp.where(clip, norm, 1), 1)
      return jnp.where(clip, new * scale - p.astype(dtype), u.astype(dtype)).astype(u.dtype)

    return _map_rows(leaf, updates, params, feature_axes), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
