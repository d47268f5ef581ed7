r"""Skipping the rows of a gradient that are not finite, and counting them.

Adagrad's statistics only grow: a NaN, an inf, or an entry whose square overflows poisons
the accumulator it enters for the rest of training (as in ``optax.adagrad``). In an
embedding model that is usually one row (one feature id) of one batch.
:func:`skip_nonfinite_rows` sets such rows of the gradient to zero before the wrapped
transform sees them. Every transform of this library (and ``optax.adagrad``) is lazily
exact, so a zero gradient row gets a zero update and leaves the row's state as it was:
the row is skipped, the rest of the step goes on, and the wrapper counts the skipped rows
per leaf in its state.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_blockada import _geometry, _validation
from optax_blockada._geometry import AxisNameSpec, FeatureAxesSpec

__all__ = ["SkipNonfiniteRowsState", "skip_nonfinite_rows"]


class SkipNonfiniteRowsState(NamedTuple):
  """State of :func:`skip_nonfinite_rows`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> tx = ob.skip_nonfinite_rows(ob.rowwise_adagrad(0.1))
    >>> state = tx.init({'table': jnp.zeros((4, 3))})
    >>> print(state.skipped_rows)
    {'table': Array(0, dtype=int32)}
  """

  # Per params leaf, int32: rows skipped so far because their gradient was not finite.
  skipped_rows: optax.Updates
  # The wrapped transform's state.
  inner_state: optax.OptState


def _finite_rows(g: jax.Array, axes: tuple[int, ...], axis_name: tuple[str, ...] | None):
  """Boolean per row (keepdims): every entry of the row is finite, and so is its square."""
  finite = jnp.isfinite(g * g)
  if not axes:
    return finite
  if axis_name is None:
    return jnp.all(finite, axis=axes, keepdims=True)
  # Feature axes split over mesh axes (inside shard_map): the row is judged whole.
  bad = jnp.sum(~finite, axis=axes, keepdims=True, dtype=jnp.int32)
  return jax.lax.psum(bad, axis_name) == 0


def skip_nonfinite_rows(
  inner: optax.GradientTransformation,
  *,
  feature_axes: FeatureAxesSpec = None,
  axis_name: AxisNameSpec = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Skips the rows of the gradient that are not finite, counting them; ``inner`` does the rest.

  A row is a fibre of a leaf along its feature axes (default: the last axis of a leaf
  with ``ndim >= 2``, every entry of a vector or scalar on its own; see
  :func:`scale_by_rowwise_adagrad`). A row whose gradient holds a NaN or an inf, or an
  entry whose square overflows (:math:`|g| > 1.8 \cdot 10^{19}` in float32), is set to
  zero before ``inner`` sees the gradient:

  .. math::

    \tilde g_r = [\, g_r \odot g_r \text{ finite} \,]\; g_r, \qquad
    (u, s_{inner}) = \text{inner.update}(\tilde g, s_{inner}),

  and ``skipped_rows`` of that leaf grows by one. For lazily exact transforms (every
  transform of this library, ``optax.adagrad``) a zero gradient row gets a zero update
  and keeps its state, so a skipped row is exactly as if it had not been in the batch.
  A skipped row is also taken out of the extra argument ``looked_up`` (the rows of the
  batch, passed by the sparse path) before ``inner`` sees it, so the row transforms
  (:func:`add_decayed_weights_to_touched_rows`, :func:`renormalize_rows`) leave it
  alone too. Other transforms (Adam's moments decay on zero gradients) see a zero
  gradient.

  The three policies for a non-finite gradient, and what each does to the state:

  * nothing (the transforms alone, as ``optax.adagrad``): the entry poisons its row's
    accumulator for good (block ``'shared'`` and ``'rows_x_shared'`` leave the row out
    of the shared matrix and count it in ``fallbacks``);
  * ``skip_nonfinite_rows(tx)``: the row is skipped, the rest of the step is applied,
    and ``skipped_rows`` counts it;
  * ``optax.apply_if_finite(tx, max_consecutive_errors)``: the whole step is skipped
    (no row learns) and ``ApplyIfFiniteState`` counts the step.

  In the sparse path (``optax_blockada.sparse``) and the owner-routed sharded step
  (``optax_blockada.routed``) the counts are the same as in the dense step: only
  looked-up rows can have a non-finite gradient, and the routed step sums the devices'
  counts. :func:`optax_blockada.diagnostics.counters` collects them from a state.

  Args:
    inner: the transform to protect, e.g. :func:`rowwise_adagrad`.
    feature_axes: which axes make a row (see :func:`scale_by_rowwise_adagrad`). Pass the
      inner transform's, so a skipped row is one of its rows.
    axis_name: inside ``jax.shard_map``, the mesh axes a leaf's feature axes are split
      over (as for :func:`scale_by_rowwise_adagrad`), so that a row is skipped on every
      shard when any shard of it is not finite. Static.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is a
    :class:`SkipNonfiniteRowsState`; extra arguments are passed to ``inner``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> tx = ob.skip_nonfinite_rows(ob.rowwise_adagrad(1.0))
    >>> params = jnp.zeros((2, 2))
    >>> state = tx.init(params)
    >>> u, state = tx.update(jnp.array([[1.0, jnp.nan], [3.0, 4.0]]), state, params)
    >>> print(u[0], state.skipped_rows)
    [0. 0.] 1

  References:
    The whole-step counterpart is ``optax.apply_if_finite`` (optax documentation).
  """
  name = "skip_nonfinite_rows"
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
      f"{name}: inner must be an optax.GradientTransformation (e.g. "
      f"ob.rowwise_adagrad(0.1)), got {type(inner).__name__}."
    )
  _validation.check_static_feature_axes(feature_axes)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    params = _validation.as_arrays(params)
    skipped = jax.tree.map(lambda _: jnp.zeros((), jnp.int32), params)
    return SkipNonfiniteRowsState(skipped_rows=skipped, inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    updates, with_path, treedef = _validation.checked_updates(
      updates, state, SkipNonfiniteRowsState, "skipped_rows", name
    )
    counts = treedef.flatten_up_to(state.skipped_rows)
    axes = _geometry.resolve_feature_axes(feature_axes, updates)
    names = _geometry.resolve_axis_names(axis_name, updates)
    # _rows imports _scalar, which imports this module: import it when first needed.
    from optax_blockada import _rows

    looked_up = extra_args.get("looked_up")
    masks = _rows.looked_up_leaves(looked_up, with_path, axes, name)
    cleaned, new_counts, kept = [], [], []
    for (path, g), count, ax, nm, mask in zip(with_path, counts, axes, names, masks, strict=True):
      finite = _finite_rows(g, ax, nm)
      cleaned.append(jnp.where(finite, g, jnp.zeros_like(g)))
      bad = jnp.sum(~finite, dtype=jnp.int32)
      # Inside the routed sparse step each device holds some rows of a table.
      new_counts.append(count + _geometry.sum_over_rows(bad, path))
      kept.append(None if mask is None else mask & finite)
    if looked_up is not None:
      # A skipped row is as if it had not been looked up: no decay, no max-norm.
      extra_args = {**extra_args, "looked_up": treedef.unflatten(kept)}
    new_updates, inner_state = inner.update(
      treedef.unflatten(cleaned), state.inner_state, params, **extra_args
    )
    return new_updates, SkipNonfiniteRowsState(treedef.unflatten(new_counts), inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
