r"""Matrix-per-block Adagrad: full-matrix preconditioning per feature vector (or chunk).

The third variation of one idea (see ``_scalar``): a leaf is cut into rows along its
feature axes (``_geometry``); diagonal Adagrad keeps a scalar per coordinate, row-wise
Adagrad a scalar per row, and block Adagrad a ``k x k`` matrix per block of ``k``
coordinates of a row (or a matrix shared by all rows of a leaf). Its step
:math:`(H + \lambda I)^{-1/2} g` reduces to diagonal Adagrad for ``k = 1`` and, for
``k = d``, is equivariant under rotations of the feature space.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from optax_blockada import _geometry, _per_row, _roots, _validation
from optax_blockada._geometry import FeatureAxesSpec
from optax_blockada._scalar import (
  _check_accumulator_dtype,
  accumulator_dtype_for,
  inverse_root,
  with_learning_rate,
)
from optax_blockada._typing import Params

__all__ = [
  "DEFAULT_MAX_STATE_BYTES",
  "DEFAULT_RELATIVE_EPS",
  "STRUCTURES",
  "BlockAdagradState",
  "RowsXSharedBlockAdagradState",
  "SharedBlockAdagradState",
  "SharedEigenCache",
  "SharedRootCache",
  "block_adagrad",
  "block_effective_learning_rates",
  "scale_by_block_adagrad",
]

STRUCTURES = ("rows", "blocks", "shared", "rows_x_shared")
Structure = Literal["rows", "blocks", "shared", "rows_x_shared"]
RootMethod = Literal["auto", "eigh", "newton_schulz"]
DEFAULT_RELATIVE_EPS = 1e-5
DEFAULT_MAX_STATE_BYTES = 1 << 30
_PER_ROW_MATRIX = ("rows", "blocks")
_SHARED = ("shared", "rows_x_shared")


class BlockAdagradState(NamedTuple):
  r"""State of :func:`scale_by_block_adagrad` with ``structure='rows'`` or ``'blocks'``.

  A :math:`k \times k` accumulator :math:`H` per block of every row. For a param with
  feature axes ``F``, ``rs = row_shape(p.shape, F)`` (the param's shape with ``F`` set
  to 1) and ``n_b`` blocks of size ``k`` per row, ``block_sums`` has shape
  ``rs + (n_b, k, k)``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> state = ob.scale_by_block_adagrad().init({'table': jnp.zeros((5, 3))})
    >>> state.block_sums['table'].shape
    (5, 1, 1, 3, 3)
  """

  count: jax.Array  # shape=(), int32: number of updates so far.
  # Per-row H = a*I + sum of g g^T, rs + (n_b, k, k).
  block_sums: optax.Updates
  # int32 scalar per leaf: block updates (non-zero gradient) that fell back to the
  # row-wise step because the matrix root was not finite.
  fallbacks: optax.Updates


class SharedRootCache(NamedTuple):
  """The root a ``'shared'`` state keeps between refreshes (``update_root_every > 1``).

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> tx = ob.scale_by_block_adagrad(structure='shared', update_root_every=5)
    >>> _, state = tx.update(jnp.ones((4, 2)), tx.init(jnp.zeros((4, 2))))
    >>> state.cache.shared_root.shape  # (C + lam I)^(-1/2), refreshed on step 0
    (1, 2, 2)
  """

  # (C + lam I)^(-1/2) as of the latest refresh, (n_b, k, k); zeros before the first.
  shared_root: optax.Updates


class SharedEigenCache(NamedTuple):
  """The decomposition a ``'rows_x_shared'`` state keeps between refreshes.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> tx = ob.scale_by_block_adagrad(structure='rows_x_shared', update_root_every=5)
    >>> _, state = tx.update(jnp.ones((4, 2)), tx.init(jnp.zeros((4, 2))))
    >>> # C = 0.1 I + 4 (1, 1)(1, 1)^T has eigenvalues 0.1 and 8.1; k C / tr(C): 2 (0.1, 8.1) / 8.2
    >>> print(state.cache.shared_spectrum.round(5))
    [[0.02439 1.97561]]
  """

  # Eigenvectors of C as of the latest refresh, (n_b, k, k); I before the first step.
  shared_basis: optax.Updates
  # Eigenvalues of k*C/tr(C) as of the latest refresh, (n_b, k); zeros before the first.
  shared_spectrum: optax.Updates


class SharedBlockAdagradState(NamedTuple):
  r"""State of :func:`scale_by_block_adagrad` with ``structure='shared'``.

  One :math:`k \times k` matrix :math:`C` per leaf (per block position), shape
  ``(n_b, k, k)``. ``cache`` is ``optax.EmptyState()`` unless ``update_root_every > 1``,
  where it is a :class:`SharedRootCache` holding the root of the latest refresh.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> tx = ob.scale_by_block_adagrad(structure='shared', update_root_every=10)
    >>> state = tx.init({'table': jnp.zeros((5, 3))})
    >>> state.shared_sums['table'].shape, state.cache.shared_root['table'].shape
    ((1, 3, 3), (1, 3, 3))
  """

  count: jax.Array  # shape=(), int32: number of updates so far.
  # C = a*I + sum over steps and rows of g g^T, (n_b, k, k).
  shared_sums: optax.Updates
  # int32 scalar per leaf: block updates that fell back to the row-wise step because the
  # root was not finite, or were skipped because their gradient's square was not finite.
  fallbacks: optax.Updates
  # optax.EmptyState() or, with update_root_every > 1, a SharedRootCache.
  cache: SharedRootCache | optax.EmptyState


class RowsXSharedBlockAdagradState(NamedTuple):
  r"""State of :func:`scale_by_block_adagrad` with ``structure='rows_x_shared'``.

  A scalar :math:`s_r` per row (shape ``rs + (n_b,)``) and one :math:`k \times k`
  matrix :math:`C` per leaf (per block position). ``cache`` is ``optax.EmptyState()``
  unless ``update_root_every > 1``, where it is a :class:`SharedEigenCache` holding the
  eigendecomposition of :math:`k C / \operatorname{tr}(C)` of the latest refresh.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> tx = ob.scale_by_block_adagrad(structure='rows_x_shared')
    >>> state = tx.init({'table': jnp.zeros((5, 3))})
    >>> state.row_sums['table'].shape, state.shared_sums['table'].shape, state.cache
    ((5, 1, 1), (1, 3, 3), EmptyState())
  """

  count: jax.Array  # shape=(), int32: number of updates so far.
  # Per-row s = a + sum of mean squared gradients, rs + (n_b,).
  row_sums: optax.Updates
  # C = a*I + sum over steps and rows of g g^T, (n_b, k, k).
  shared_sums: optax.Updates
  # As in SharedBlockAdagradState.
  fallbacks: optax.Updates
  # optax.EmptyState() or, with update_root_every > 1, a SharedEigenCache.
  cache: SharedEigenCache | optax.EmptyState


_per_row.register_per_row_state(BlockAdagradState, ("block_sums",))
_per_row.register_per_row_state(SharedBlockAdagradState, ())
_per_row.register_per_row_state(RowsXSharedBlockAdagradState, ("row_sums",))

BlockState = BlockAdagradState | SharedBlockAdagradState | RowsXSharedBlockAdagradState
BLOCK_STATES = (BlockAdagradState, SharedBlockAdagradState, RowsXSharedBlockAdagradState)


class _Layout(NamedTuple):
  """How one leaf is cut: feature axes, per-row state shape, blocks per row, block size."""

  axes: tuple[int, ...]
  rows: tuple[int, ...]  # row_shape(p.shape, axes)
  n_blocks: int
  k: int


def _layout(path: Any, shape: tuple[int, ...], axes: tuple[int, ...], block_size, name: str):
  _geometry.check_row_size(path, shape, axes, name)
  d = math.prod(shape[a] for a in axes)
  rows = _geometry.row_shape(shape, axes)
  if block_size is None or d <= block_size:
    return _Layout(axes, rows, 1, d)
  if d % block_size:
    raise ValueError(
      f"{name}: block_size={block_size} does not divide the row size d={d} of the leaf "
      f"at {_geometry.path_str(path)} with shape {shape} and feature axes {axes}. Use a "
      f"divisor of {d} as block_size, or route that leaf to another transform with "
      "optax.partition."
    )
  return _Layout(axes, rows, d // block_size, block_size)


def _to_blocks(x: jax.Array, layout: _Layout) -> jax.Array:
  """``x`` as ``rows + (n_blocks, k)``: feature axes moved last and flattened, then split."""
  n = len(layout.axes)
  moved = jnp.moveaxis(x, layout.axes, tuple(range(x.ndim - n, x.ndim)))
  return moved.reshape((*layout.rows, layout.n_blocks, layout.k))


def _from_blocks(x: jax.Array, shape: tuple[int, ...], layout: _Layout) -> jax.Array:
  """Inverse of :func:`_to_blocks`."""
  axes = layout.axes
  others = tuple(s for i, s in enumerate(shape) if i not in axes)
  moved = x.reshape(others + tuple(shape[a] for a in axes))
  return jnp.moveaxis(moved, tuple(range(len(others), len(shape))), axes)


class _Field(NamedTuple):
  """One state field of one leaf: its shape and how ``init`` fills it."""

  shape: tuple[int, ...]
  # 'row_eye': a*I per row block; 'row': a per row block; 'eye': a*I; 'identity': I;
  # 'zeros': zeros.
  fill: str


def _fields(layout: _Layout, structure: str) -> dict[str, _Field]:
  """The per-leaf fields of ``structure``'s state for one leaf (counters aside)."""
  n, k, rows = layout.n_blocks, layout.k, layout.rows
  if structure in _PER_ROW_MATRIX:
    return {"block_sums": _Field((*rows, n, k, k), "row_eye")}
  if structure == "shared":
    return {"shared_sums": _Field((n, k, k), "eye")}
  return {"row_sums": _Field((*rows, n), "row"), "shared_sums": _Field((n, k, k), "eye")}


def _cache_fields(layout: _Layout, structure: str) -> dict[str, _Field]:
  """The per-leaf fields of the cache ``update_root_every > 1`` keeps."""
  n, k = layout.n_blocks, layout.k
  if structure == "shared":
    return {"shared_root": _Field((n, k, k), "zeros")}
  if structure == "rows_x_shared":
    return {
      "shared_basis": _Field((n, k, k), "identity"),
      "shared_spectrum": _Field((n, k), "zeros"),
    }
  return {}


_STATE_CLASSES: dict[str, type] = {
  "rows": BlockAdagradState,
  "blocks": BlockAdagradState,
  "shared": SharedBlockAdagradState,
  "rows_x_shared": RowsXSharedBlockAdagradState,
}
_CACHE_CLASSES: dict[str, type] = {"shared": SharedRootCache, "rows_x_shared": SharedEigenCache}


def _scaled_identity(shape: tuple[int, ...], value: Any, dtype: Any) -> jax.Array:
  eye = jnp.asarray(value).astype(dtype) * jnp.eye(shape[-1], dtype=dtype)
  return jnp.broadcast_to(eye, shape) + jnp.zeros(shape, dtype)


def _outer(g: jax.Array) -> jax.Array:
  return g[..., :, None] * g[..., None, :]


def _matvec(m: jax.Array, v: jax.Array) -> jax.Array:
  return _roots.matmul(m, v[..., None])[..., 0]


def _trace(m: jax.Array) -> jax.Array:
  return jnp.trace(m, axis1=-2, axis2=-1)


def _lead(x: jax.Array, rank: int) -> jax.Array:
  """Prepends size-1 axes so that a per-leaf ``x`` broadcasts against per-row arrays."""
  return x.reshape((1,) * (rank - x.ndim) + x.shape)


def _isotropic_step(g: jax.Array, mean_eigenvalue: jax.Array, lam: jax.Array) -> jax.Array:
  """The row-wise step ``g * phi(tr(H)/k)`` with damping ``lam``: the fallback."""
  return g * inverse_root(mean_eigenvalue, lam, True)[..., None]


def _unusable(g: jax.Array) -> jax.Array:
  """Per row block: its squared norm is not finite (a NaN or inf, or an overflow).

  Such blocks are left out of the shared statistic (one bad row must not poison the
  matrix every other row is scaled by) and get a zero step, counted as a fallback.
  """
  return ~jnp.isfinite(jnp.sum(g * g, axis=-1))


def _shared_sum(g: jax.Array, unusable: jax.Array, split: Any) -> jax.Array:
  """``sum_r g_r g_r^T`` over the usable row blocks."""
  g = jnp.where(unusable[..., None], 0, g)
  flat = g.reshape((-1, *g.shape[-2:]))
  # Explicit sharding mode: the rows may be sharded; their sum is replicated. Inside the
  # routed sparse step each device holds some rows: their sums are psum-ed.
  local = jnp.einsum(
    "rbi,rbj->bij",
    flat,
    flat,
    precision=jax.lax.Precision.HIGHEST,
    out_sharding=_geometry.replicated_sharding(flat),
  )
  return _geometry.sum_over_split_rows(local, split)


def _maybe_cached(refresh, compute, cached):
  """``compute()`` on refresh steps, else ``cached()`` (always ``compute()`` if None)."""
  if refresh is None:
    return compute()
  return jax.lax.cond(refresh, compute, cached)


def _normalized_eigh(c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Eigenvectors and eigenvalues of ``k * C / tr(C)`` (identity when ``tr(C) = 0``)."""
  k = c.shape[-1]
  w, q = _roots.eigh(c)
  tr = _trace(c)[..., None]
  has = tr > 0
  spectrum = jnp.where(has, k * jnp.maximum(w, 0) / jnp.where(has, tr, 1), 1)
  basis = jnp.where(has[..., None], q, jnp.eye(k, dtype=c.dtype))
  return basis, spectrum


class _Hyper(NamedTuple):
  """What a step needs besides the leaf's state and gradient."""

  eps: Any  # absolute damping (may be traced)
  relative_eps: Any  # damping relative to the trace (may be traced)
  method: str  # 'eigh' or 'newton_schulz'
  iterations: int | None  # Newton-Schulz iterations
  refresh: jax.Array | None  # recompute the shared root this step; None: every step
  split: tuple[str, ...] | None  # mesh axes the leaf's rows are split over (routed step)


def _block_step(leaf, g, hp: _Hyper):
  """'rows'/'blocks': per-row ``H += g g^T``; ``u = (H + lam I)^(-1/2) g``."""
  h = leaf["block_sums"] + _outer(g)
  lam = _roots.damping(h, hp.eps, hp.relative_eps)
  roots, ok = _roots.inverse_sqrt(h, lam, method=hp.method, iterations=hp.iterations)
  u = _matvec(roots, g)
  fallback = _isotropic_step(g, _trace(h) / g.shape[-1], lam)
  return u, ok, fallback, {"block_sums": h}


def _shared_step(leaf, g, hp: _Hyper):
  """'shared': per-leaf ``C += sum_r g_r g_r^T``; ``u_r = (C + lam I)^(-1/2) g_r``."""
  bad = _unusable(g)
  c = leaf["shared_sums"] + _shared_sum(g, bad, hp.split)
  lam = _roots.damping(c, hp.eps, hp.relative_eps)
  root, ok = _maybe_cached(
    hp.refresh,
    lambda: _roots.inverse_sqrt(c, lam, method=hp.method, iterations=hp.iterations),
    lambda: (leaf["shared_root"], _roots.all_finite(leaf["shared_root"], (-2, -1))),
  )
  # The statistics are checked on cached steps too, so the flag is the same on every
  # backend whatever a decomposition makes of non-finite input.
  ok = _lead(ok & _roots.all_finite(c, (-2, -1)), g.ndim - 1)
  u = _matvec(_lead(root, g.ndim + 1), g)
  fallback = _isotropic_step(g, _lead(_trace(c) / g.shape[-1], g.ndim - 1), _lead(lam, g.ndim - 1))
  ok, fallback = ok & ~bad, jnp.where(bad[..., None], 0, fallback)
  return u, ok, fallback, {"shared_sums": c, "shared_root": root}


def _rows_x_shared_step(leaf, g, hp: _Hyper):
  """'rows_x_shared': ``H_r = s_r * k C / tr(C)`` rooted through one eigh of ``C``."""
  k = g.shape[-1]
  s = leaf["row_sums"] + jnp.mean(g * g, axis=-1)
  bad = _unusable(g)
  c = leaf["shared_sums"] + _shared_sum(g, bad, hp.split)
  basis, spectrum = _maybe_cached(
    hp.refresh,
    lambda: _normalized_eigh(c),
    lambda: (leaf["shared_basis"], leaf["shared_spectrum"]),
  )
  lam = _roots.damping_from_trace(k * s, hp.eps, hp.relative_eps)  # tr(H_r) = k s_r
  eigenvalues = s[..., None] * _lead(spectrum, g.ndim)
  phi = jnp.where(eigenvalues > 0, jax.lax.rsqrt(eigenvalues + lam[..., None]), 0)
  q = _lead(basis, g.ndim + 1)
  u = _matvec(q, phi * _matvec(jnp.swapaxes(q, -1, -2), g))
  # The decomposition and its input: on GPU a non-finite C was seen to decompose into
  # finite values, so the input is checked as well as the output.
  finite = _roots.all_finite
  shared_ok = finite(basis, (-2, -1)) & finite(spectrum, (-1,)) & finite(c, (-2, -1))
  ok = _lead(shared_ok, s.ndim) & jnp.isfinite(s)
  new = {"row_sums": s, "shared_sums": c, "shared_basis": basis, "shared_spectrum": spectrum}
  fallback = jnp.where(bad[..., None], 0, _isotropic_step(g, s, lam))
  return u, ok & ~bad, fallback, new


_STEPS = {
  "rows": _block_step,
  "blocks": _block_step,
  "shared": _shared_step,
  "rows_x_shared": _rows_x_shared_step,
}


@functools.partial(
  jax.jit, static_argnames=("structure", "layout", "method", "iterations", "split")
)
def _leaf_update(
  leaf, g, eps, relative_eps, refresh, *, structure, layout, method, iterations, split
):
  """One leaf's update and new state fields: the step, its fallback and counter.

  Jitted per leaf so that leaves of one shape share one traced and lowered step (the
  enclosing jit inlines it): tracing every leaf anew dominated lowering with many leaves.
  """
  dtype = leaf[next(iter(_fields(layout, structure)))].dtype  # the accumulators' dtype
  gb = _to_blocks(g.astype(dtype), layout)
  hp = _Hyper(eps, relative_eps, method, iterations, refresh, split)
  u, ok, fallback, new = _STEPS[structure](leaf, gb, hp)
  ok = ok & jnp.all(jnp.isfinite(u), axis=-1)
  nonzero = jnp.any(gb != 0, axis=-1)
  u = jnp.where(nonzero[..., None], jnp.where(ok[..., None], u, fallback), 0)
  failed = _geometry.sum_over_split_rows(jnp.sum(nonzero & ~ok, dtype=jnp.int32), split)
  new["fallbacks"] = leaf["fallbacks"] + failed
  return _from_blocks(u, tuple(g.shape), layout).astype(g.dtype), new


def _memory_error(name, path, shape, nbytes, limit, structure) -> ValueError:
  return ValueError(
    f"{name}: structure={structure!r} needs {nbytes:,} bytes of optimizer state for the "
    f"leaf at {_geometry.path_str(path)} with shape {shape}, above max_state_bytes="
    f"{limit:,}. Ways out: a smaller block (structure='blocks', block_size=k stores "
    "d*k per row instead of d*d); structure='shared' (one d x d matrix per leaf) or "
    "'rows_x_shared' (one scalar per row plus one d x d per leaf); route that leaf to "
    "rowwise_adagrad with optax.partition; or raise max_state_bytes (math.inf "
    "disables the check)."
  )


def scale_by_block_adagrad(
  initial_accumulator_value: ArrayLike = 0.1,
  eps: ArrayLike = 1e-7,
  *,
  structure: Structure = "rows",
  block_size: int | None = None,
  relative_eps: ArrayLike = DEFAULT_RELATIVE_EPS,
  root: RootMethod = "auto",
  root_iterations: int | None = None,
  update_root_every: int | None = None,
  feature_axes: FeatureAxesSpec = None,
  accumulator_dtype: DTypeLike | None = None,
  max_state_bytes: int | float | None = None,
) -> optax.GradientTransformation:
  r"""Block-diagonal (full-matrix-per-block) Adagrad scaling (no learning rate).

  A leaf is cut into rows along its feature axes :math:`F` (as in
  :func:`scale_by_rowwise_adagrad`; default the last axis when ``ndim >= 2``, none
  otherwise, so a bias has rows of size :math:`d = 1`). Each row is split into
  :math:`n_b` blocks of :math:`k` coordinates. For a block :math:`g` of a row's
  gradient, with accumulator :math:`H`:

  .. math::

    H_t = H_{t-1} + g_t g_t^\top, \quad H_0 = a I, \qquad
    u_t = (H_t + \lambda_t I)^{-1/2} g_t, \quad
    \lambda_t = \epsilon + \epsilon_{rel} \operatorname{tr}(H_t),

  with :math:`H`'s eigenvalues clamped at 0 (and, if :math:`\lambda = 0`, the step zero
  along directions where they are 0; ``1 x 1`` blocks use optax's
  ``where(G > 0, ...)``). With :math:`k = 1` and
  :math:`\epsilon_{rel} = 0` this is diagonal Adagrad (optax's) exactly. The
  accumulator's scale is the *sum* of squares (:math:`\operatorname{tr} H` grows by
  :math:`|g|^2`), so its steps are those of row-wise Adagrad with ``reduction='sum'``
  (learning rates :math:`\sqrt{k}` times those of the mean variant) plus the rotation
  within the block. Structures (:math:`V` rows of size :math:`d` per leaf):

  * ``'rows'`` (default): one exact :math:`d \times d` :math:`H` per row. Memory
    :math:`V d^2`; one :math:`d \times d` root per row per step. Equivariant under a
    rotation :math:`R` of the feature space: training from :math:`W R` ends at
    :math:`W_T R`.
  * ``'blocks'``: rows split into chunks of ``block_size`` (it must divide
    :math:`d`; rows no longer than ``block_size`` are one block, so biases are
    diagonal). Memory :math:`V d k`, roots of :math:`k \times k`. Equivariant only
    under block-diagonal rotations.
  * ``'shared'``: one :math:`C = a I + \sum_t \sum_r g_r g_r^\top` per leaf (per block
    position if ``block_size`` is set), :math:`u_r = (C + \lambda I)^{-1/2} g_r`.
    Memory :math:`d^2` per leaf; one root per leaf per step (or every
    ``update_root_every`` steps). Equivariant; no per-row adaptivity.
  * ``'rows_x_shared'``: the row-wise scalar :math:`s_r = a + \sum_t \|g_r\|^2 / k`
    times the trace-normalised shared matrix,
    :math:`H_r = s_r \tilde C, \ \tilde C = k C / \operatorname{tr}(C)`
    (:math:`\tilde C = I` while :math:`\operatorname{tr}(C) = 0`), so
    :math:`\operatorname{tr}(H_r)` equals the ``'rows'`` trace; :math:`C_0 = a I`, so
    the very first step is row-wise Adagrad scaled to the sum. One ``eigh``
    :math:`\tilde C = Q \operatorname{diag}(\mu) Q^\top` per leaf gives every row's
    root :math:`Q \operatorname{diag}((s_r \mu + \lambda_r)^{-1/2}) Q^\top`, with
    :math:`\lambda_r = \epsilon + \epsilon_{rel} k s_r`. Memory :math:`V + d^2`.
    Equivariant. Always uses ``eigh`` (one small one per leaf, affordable on TPU too).

  Roots (``root``): ``'eigh'`` (the fastest on CPU and GPU; accurate to about
  :math:`10^{-7} \kappa` along a block's smallest directions, :math:`\kappa` its
  condition number, which the default ``relative_eps`` keeps below :math:`10^5`),
  ``'newton_schulz'`` (matmuls only at ``precision=HIGHEST``, ``root_iterations``
  fixed iterations, default 20; needs :math:`a > 0` or :math:`\epsilon > 0`), or
  ``'auto'``: ``'newton_schulz'`` when :func:`jax.default_backend` is ``'tpu'`` at
  trace time, ``'eigh'`` otherwise. Where a block's step is not finite, that block
  takes the row-wise step :math:`g\,[m > 0] / \sqrt{m + \lambda}` with
  :math:`m = \operatorname{tr}(H)/k` instead, and ``fallbacks`` counts it (only for
  blocks with a non-zero gradient, so a sparse run counts the same).

  Non-finite gradients: as in ``optax.adagrad``, a NaN, an inf or an entry whose square
  overflows poisons the statistics it enters. For ``'rows'`` and ``'blocks'`` that is
  the row's own :math:`H`. ``'shared'`` and ``'rows_x_shared'`` leave such a row block
  out of the shared :math:`C`, give it a zero step and count it in ``fallbacks``, so it
  cannot freeze or degrade the other rows (its own :math:`s_r` in ``'rows_x_shared'``
  is still poisoned). To skip such rows instead (zero step, state kept, counted), wrap
  the optimizer in :func:`skip_nonfinite_rows` (or pass ``skip_nonfinite_rows=True`` to
  :func:`block_adagrad`); to skip whole steps, in ``optax.apply_if_finite``.

  Lazy exactness: a block whose gradient is zero gets a zero update and keeps its
  per-row state; ``'shared'`` sums add nothing for it. Running the transform on a
  gathered subset of rows (with the per-row state fields, ``block_sums`` or
  ``row_sums``, gathered alike) gives exactly the dense result for those rows. A stale
  root is never used for per-row statistics (one step stale was measured off by 1e3 for
  rarely-updated rows), so ``update_root_every > 1`` is only allowed for ``'shared'``
  and ``'rows_x_shared'``, which then cache the root (or the eigendecomposition,
  :math:`2 d^2 + d` more numbers per leaf) in the state's ``cache`` and refresh it on
  steps ``0, N, 2N, ...``.

  Args:
    initial_accumulator_value: :math:`a \ge 0`, the starting :math:`H_0 = a I`.
    eps: :math:`\epsilon \ge 0`, absolute damping.
    structure: ``'rows'``, ``'blocks'``, ``'shared'`` or ``'rows_x_shared'``. Static.
    block_size: :math:`k` for ``'blocks'`` (required); optional for ``'shared'`` and
      ``'rows_x_shared'`` (a shared matrix per block position); ``None`` for ``'rows'``.
      Static.
    relative_eps: :math:`\epsilon_{rel} \ge 0`, damping relative to
      :math:`\operatorname{tr}(H)`; the default ``1e-5`` keeps float32 roots away from
      eigenvalues near float32's resolution (condition numbers below :math:`10^5`).
    root: ``'auto'``, ``'eigh'`` or ``'newton_schulz'``. Static.
    root_iterations: Newton-Schulz iterations (``None``: 20); unused by ``'eigh'``.
      Static.
    update_root_every: recompute the shared root every this many steps (``'shared'``,
      ``'rows_x_shared'`` only); ``None`` means 1. Static.
    feature_axes: which axes make a row (see :func:`scale_by_rowwise_adagrad`). Static.
    accumulator_dtype: ``None`` promotes the param dtype to at least float32. Static.
    max_state_bytes: ``init`` raises a ``ValueError`` naming the leaf and the ways out
      when one leaf's state would exceed this many bytes; ``None`` for the default,
      1 GiB (``DEFAULT_MAX_STATE_BYTES``); ``math.inf`` disables the check. Static.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a :class:`BlockAdagradState`
    (``'rows'``, ``'blocks'``), a :class:`SharedBlockAdagradState` (``'shared'``) or a
    :class:`RowsXSharedBlockAdagradState` (``'rows_x_shared'``): one state class per
    structure, every field used. Updates come back in the gradients' dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import optax_blockada as ob
    >>> tx = ob.scale_by_block_adagrad(initial_accumulator_value=1.0, eps=0.0,
    ...                                relative_eps=0.0)
    >>> g = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    >>> u, state = tx.update(g, tx.init(jnp.zeros((2, 2))))
    >>> # H = I + g g^T has eigenvalue 26 along g: u = g / sqrt(26).
    >>> print(u[0], bool(np.allclose(u[0], g[0] / np.sqrt(26.0))), u[1])
    [0.58835 0.78446] True [0. 0.]

  With ``optax.inject_hyperparams`` pass the static arguments you set as
  ``static_args`` (e.g. ``('block_size', 'update_root_every')``); ``a``, ``eps`` and
  ``relative_eps`` may be injected.

  References:
    Duchi, Hazan & Singer, `Adaptive Subgradient Methods for Online Learning and
    Stochastic Optimization <https://jmlr.org/papers/v12/duchi11a.html>`_, JMLR 2011 (full-matrix
    Adagrad).
    McMahan & Streeter, `Adaptive Bound Optimization for Online Convex Optimization
    <https://arxiv.org/abs/1002.4908>`_, COLT 2010.
    Gupta, Koren & Singer, `Shampoo: Preconditioned Stochastic Tensor Optimization
    <https://arxiv.org/abs/1802.09568>`_, ICML 2018 (matrix roots by iteration).
  """
  config = _Config.checked(
    structure=structure,
    block_size=block_size,
    root=root,
    root_iterations=root_iterations,
    update_root_every=update_root_every,
    feature_axes=feature_axes,
    accumulator_dtype=accumulator_dtype,
    max_state_bytes=max_state_bytes,
  )
  _validation.check_nonnegative("initial_accumulator_value", initial_accumulator_value)
  _validation.check_nonnegative("eps", eps)
  _validation.check_nonnegative("relative_eps", relative_eps)
  return _transform(config, initial_accumulator_value, eps, relative_eps)


_NAME = "scale_by_block_adagrad"


@dataclasses.dataclass(frozen=True)
class _Config:
  """The static arguments of :func:`scale_by_block_adagrad`, checked once."""

  structure: str
  block_size: int | None
  root: str
  root_iterations: int | None
  every: int  # update_root_every
  feature_axes: FeatureAxesSpec
  accumulator_dtype: Any
  max_state_bytes: int | float

  @classmethod
  def checked(
    cls,
    *,
    structure,
    block_size,
    root,
    root_iterations,
    update_root_every,
    feature_axes,
    accumulator_dtype,
    max_state_bytes,
  ) -> _Config:
    _validation.check_choice("structure", structure, STRUCTURES)
    _validation.check_choice("root", root, _roots.ROOT_METHODS)
    if block_size is not None:
      block_size = _validation.static_int("block_size", block_size)
    if structure == "blocks" and block_size is None:
      raise ValueError(
        "structure='blocks' needs block_size (the size k of the chunks each row is split "
        "into, a divisor of the row size); structure='rows' keeps whole rows."
      )
    if structure == "rows" and block_size is not None:
      raise ValueError(
        f"structure='rows' keeps whole rows and takes no block_size, got {block_size}; "
        "use structure='blocks' to split rows into chunks."
      )
    if root == "newton_schulz" and structure == "rows_x_shared":
      raise ValueError(
        "structure='rows_x_shared' derives every row's root from one eigendecomposition "
        "of the shared matrix and always uses eigh; pass root='auto' or 'eigh'."
      )
    if root_iterations is not None:
      root_iterations = _validation.static_int("root_iterations", root_iterations, minimum=0)
    every = 1 if update_root_every is None else update_root_every
    every = _validation.static_int("update_root_every", every)
    if every > 1 and structure not in _SHARED:
      raise ValueError(
        f"update_root_every={every} needs structure='shared' or 'rows_x_shared': reusing "
        "a stale per-row root was measured off by 1e3 for rarely-updated rows. Use "
        f"update_root_every=1 with structure={structure!r}."
      )
    if max_state_bytes is None:
      max_state_bytes = DEFAULT_MAX_STATE_BYTES
    elif not (isinstance(max_state_bytes, float) and max_state_bytes == math.inf):
      max_state_bytes = _validation.static_int("max_state_bytes", max_state_bytes)
    _check_accumulator_dtype(accumulator_dtype)
    _validation.check_static_feature_axes(feature_axes)
    return cls(
      structure=structure,
      block_size=block_size,
      root=root,
      root_iterations=root_iterations,
      every=every,
      feature_axes=feature_axes,
      accumulator_dtype=accumulator_dtype,
      max_state_bytes=max_state_bytes,
    )

  def layouts(self, tree: Any) -> list[_Layout]:
    """How each leaf of ``tree`` is cut into rows and blocks."""
    with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
    axes = _geometry.resolve_feature_axes(self.feature_axes, tree)
    return [
      _layout(path, tuple(x.shape), ax, self.block_size, _NAME)
      for (path, x), ax in zip(with_path, axes, strict=True)
    ]


def _initial(field: _Field, p: jax.Array, a: Any, dtype: Any) -> jax.Array:
  """The value ``init`` gives one field of the state of param ``p``."""
  if field.fill == "row_eye":  # Per-row: sharded like p in Explicit mode.
    eye = _scaled_identity(field.shape[-2:], a, dtype)
    return _geometry.row_state_full(p, field.shape, eye, dtype)
  if field.fill == "row":
    return _geometry.row_state_full(p, field.shape, a, dtype)
  if field.fill == "eye":
    return _scaled_identity(field.shape, a, dtype)
  if field.fill == "identity":
    return _scaled_identity(field.shape, 1, dtype)
  return jnp.zeros(field.shape, dtype)


def _transform(
  config: _Config, a: Any, eps: Any, relative_eps: Any
) -> optax.GradientTransformation:
  """``init`` and ``update`` of block Adagrad for a checked ``config``."""
  structure = config.structure
  state_class = _STATE_CLASSES[structure]
  cached = config.every > 1

  def leaf_fields(layout: _Layout) -> dict[str, _Field]:
    """Every per-leaf array of the state, the cache's included (counters aside)."""
    return {**_fields(layout, structure), **(_cache_fields(layout, structure) if cached else {})}

  # The names of the per-leaf arrays (the same for every leaf), counters last.
  names = (*leaf_fields(_Layout((), (), 1, 1)), "fallbacks")

  def assemble(count, trees: dict[str, Any]) -> Any:
    """The state from per-field trees (``fallbacks`` and the cache fields among them)."""
    if structure not in _SHARED:
      return state_class(count=count, **trees)
    cache = optax.EmptyState()
    if cached:
      cache_class = _CACHE_CLASSES[structure]
      cache = cache_class(**{f: trees.pop(f) for f in cache_class._fields})
    return state_class(count=count, cache=cache, **trees)

  def init_fn(params):
    _validation.check_float_leaves(params, f"{_NAME}: params")
    params = _validation.as_arrays(params)
    with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    values: dict[str, list] = {f: [] for f in names}
    for (path, p), layout in zip(with_path, config.layouts(params), strict=True):
      dtype = accumulator_dtype_for(p.dtype, config.accumulator_dtype)
      fields = leaf_fields(layout)
      nbytes = sum(math.prod(f.shape) for f in fields.values()) * dtype.itemsize
      if nbytes > config.max_state_bytes:
        raise _memory_error(_NAME, path, tuple(p.shape), nbytes, config.max_state_bytes, structure)
      for name, field in fields.items():
        values[name].append(_initial(field, p, a, dtype))
      values["fallbacks"].append(jnp.zeros((), jnp.int32))
    trees = {f: treedef.unflatten(v) for f, v in values.items()}
    return assemble(jnp.zeros((), jnp.int32), trees)

  def update_fn(updates, state, params=None):
    del params
    if isinstance(state, BLOCK_STATES) and not isinstance(state, state_class):
      raise TypeError(
        f"{_NAME}: got a {type(state).__name__}, the state of another block structure, "
        f"but this transform has structure={structure!r} and keeps a "
        f"{state_class.__name__}. Initialise it with this transform's init(params), or "
        "build the transform with the structure the state was made with."
      )
    updates, with_path, treedef = _validation.checked_updates(
      updates, state, state_class, "fallbacks", _NAME
    )
    cache = getattr(state, "cache", optax.EmptyState())
    if cached != (type(cache) is not optax.EmptyState):
      raise ValueError(
        f"{_NAME}: the state's cache is {type(cache).__name__}, but this transform has "
        f"update_root_every={config.every}, which "
        f"{'keeps' if cached else 'keeps no'} cached roots. Initialise the state with "
        "this transform's init(params), or build the transform with the "
        "update_root_every the state was made with."
      )
    trees = {**state._asdict(), **cache._asdict()}
    layouts = config.layouts(updates)
    leaves = {f: treedef.flatten_up_to(trees[f]) for f in names}
    refresh = (state.count % config.every == 0) if cached else None
    method = _roots.resolve_root_method(config.root)
    new_leaves: dict[str, list] = {f: [] for f in names}
    new_updates = []
    for i, ((path, g), layout) in enumerate(zip(with_path, layouts, strict=True)):
      leaf = {f: v[i] for f, v in leaves.items()}
      for name, field in leaf_fields(layout).items():
        if tuple(leaf[name].shape) != field.shape:
          raise ValueError(
            f"{_NAME}: the {name} of the leaf at {_geometry.path_str(path)} has shape "
            f"{tuple(leaf[name].shape)}, but updates of shape {tuple(g.shape)} with feature "
            f"axes {layout.axes}, structure={structure!r} and block_size="
            f"{config.block_size} need {field.shape}. Was the state made for other params "
            "or with other arguments?"
          )
      split = _geometry.split_axes(path)
      u, new = _leaf_update(
        leaf,
        g,
        eps,
        relative_eps,
        refresh,
        structure=structure,
        layout=layout,
        method=method,
        iterations=config.root_iterations,
        split=split,
      )
      new_updates.append(u)
      for f in names:
        new_leaves[f].append(new[f])
    new_trees = {f: treedef.unflatten(v) for f, v in new_leaves.items()}
    return treedef.unflatten(new_updates), assemble(
      jnp.asarray(optax.safe_increment(state.count)), new_trees
    )

  return optax.GradientTransformation(init_fn, update_fn)


def block_adagrad(
  learning_rate: optax.ScalarOrSchedule,
  initial_accumulator_value: ArrayLike = 0.1,
  eps: ArrayLike = 1e-7,
  *,
  structure: Structure = "rows",
  block_size: int | None = None,
  relative_eps: ArrayLike = DEFAULT_RELATIVE_EPS,
  root: RootMethod = "auto",
  root_iterations: int | None = None,
  update_root_every: int | None = None,
  feature_axes: FeatureAxesSpec = None,
  accumulator_dtype: DTypeLike | None = None,
  max_state_bytes: int | float | None = None,
  skip_nonfinite_rows: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Block-diagonal Adagrad: :func:`scale_by_block_adagrad` then ``-learning_rate``.

  A :math:`d \times d` accumulator per feature vector (by default),
  :math:`u = -\eta (H + \lambda I)^{-1/2} g`. Its accumulator is a sum of squares, so
  learning rates comparable with row-wise Adagrad's default (mean) are about
  :math:`\sqrt{k}` times larger. See :func:`scale_by_block_adagrad` for the maths, the
  structures and their memory, and the arguments.

  Args:
    learning_rate: a finite float, or an optax schedule.
    initial_accumulator_value: :math:`a \ge 0`, :math:`H_0 = a I`.
    eps: absolute damping, ``>= 0``.
    structure: ``'rows'``, ``'blocks'``, ``'shared'`` or ``'rows_x_shared'``.
    block_size: block size :math:`k` (``'blocks'``, optional for the shared ones).
    relative_eps: damping relative to the trace, ``>= 0``.
    root: ``'auto'``, ``'eigh'`` or ``'newton_schulz'``.
    root_iterations: Newton-Schulz iterations.
    update_root_every: refresh period of the shared root (``None``: 1).
    feature_axes: which axes make a row.
    accumulator_dtype: ``None`` promotes the param dtype to at least float32.
    max_state_bytes: per-leaf state limit checked by ``init`` (``None``: 1 GiB;
      ``math.inf``: none).
    skip_nonfinite_rows: wrap the optimizer in :func:`skip_nonfinite_rows`, which
      skips (and counts) the rows whose gradient is not finite instead of letting
      them poison their accumulators. Default ``False`` (optax's behaviour). Static.

  Returns:
    An :class:`optax.GradientTransformation`.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_blockada as ob
    >>> table = jax.random.normal(jax.random.key(0), (10, 4))
    >>> loss = lambda t: jnp.sum((t[jnp.array([1, 3, 3])] - 1.0) ** 2)
    >>> tx = ob.block_adagrad(0.5)
    >>> state = tx.init(table)
    >>> for _ in range(100):
    ...   updates, state = tx.update(jax.grad(loss)(table), state, table)
    ...   table = optax.apply_updates(table, updates)
    >>> print(f"{loss(table):.3f}")
    0.000
  """
  return with_learning_rate(
    scale_by_block_adagrad(
      initial_accumulator_value,
      eps,
      structure=structure,
      block_size=block_size,
      relative_eps=relative_eps,
      root=root,
      root_iterations=root_iterations,
      update_root_every=update_root_every,
      feature_axes=feature_axes,
      accumulator_dtype=accumulator_dtype,
      max_state_bytes=max_state_bytes,
    ),
    learning_rate,
    skip_nonfinite_rows=skip_nonfinite_rows,
    feature_axes=feature_axes,
  )


def _mean_inverse_root(eigenvalues: jax.Array, lam: jax.Array) -> jax.Array:
  """``mean_i [w_i > 0] (w_i + lam)^(-1/2)`` over the last axis."""
  w = jnp.maximum(eigenvalues, 0)
  return jnp.mean(jnp.where(w > 0, jax.lax.rsqrt(w + lam[..., None]), 0), axis=-1)


def block_effective_learning_rates(
  state: BlockState,
  learning_rate: ArrayLike = 1.0,
  *,
  eps: ArrayLike = 1e-7,
  relative_eps: ArrayLike | None = None,
) -> Params:
  r"""Per-row effective learning rate of a block state: :math:`\eta \operatorname{tr}((H +
  \lambda I)^{-1/2}) / k`, averaged over a row's blocks.

  The mean step per unit of gradient over the directions of a block (for :math:`H = hI`
  it is :math:`\eta / \sqrt{h + \lambda}`, the row-wise value); rotation-invariant, and
  computed from the eigenvalues. Leaves of ``'rows'``,
  ``'blocks'`` and ``'rows_x_shared'`` states give one value per row (keepdims shape
  ``rs``, e.g. ``(V, 1)``); ``'shared'`` leaves give one scalar per leaf (``()``, the same
  for every row). :func:`effective_learning_rates` calls this for block states.

  Args:
    state: the state of :func:`scale_by_block_adagrad` (any structure).
    learning_rate: :math:`\eta`.
    eps: the transform's ``eps``.
    relative_eps: the transform's ``relative_eps`` (``None``: its default, 1e-5).

  Returns:
    A pytree with the params' structure.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> tx = ob.scale_by_block_adagrad(initial_accumulator_value=4.0)
    >>> lr = ob.block_effective_learning_rates(tx.init(jnp.zeros((3, 2))), 0.1, eps=0.0,
    ...                                        relative_eps=0.0)
    >>> print(lr)  # 0.1 / sqrt(4)
    [[0.05]
     [0.05]
     [0.05]]
  """
  relative_eps = DEFAULT_RELATIVE_EPS if relative_eps is None else relative_eps

  def rows(block_sums):
    lam = _roots.damping(block_sums, eps, relative_eps)
    value = _mean_inverse_root(_roots.eigh(block_sums)[0], lam)
    return jnp.mean(value, axis=-1) * learning_rate

  def shared(shared_sums):
    lam = _roots.damping(shared_sums, eps, relative_eps)
    return jnp.mean(_mean_inverse_root(_roots.eigh(shared_sums)[0], lam)) * learning_rate

  def rows_x_shared(row_sums, shared_sums):
    k = shared_sums.shape[-1]
    _, spectrum = _normalized_eigh(shared_sums)
    lam = _roots.damping_from_trace(k * row_sums, eps, relative_eps)
    eigenvalues = row_sums[..., None] * _lead(spectrum, row_sums.ndim + 1)
    return jnp.mean(_mean_inverse_root(eigenvalues, lam), axis=-1) * learning_rate

  if isinstance(state, BlockAdagradState):
    return jax.tree.map(rows, state.block_sums)
  if isinstance(state, SharedBlockAdagradState):
    return jax.tree.map(shared, state.shared_sums)
  if isinstance(state, RowsXSharedBlockAdagradState):
    return jax.tree.map(rows_x_shared, state.row_sums, state.shared_sums)
  raise TypeError(
    "block_effective_learning_rates: state must be the state of scale_by_block_adagrad "
    f"(BlockAdagradState, SharedBlockAdagradState or RowsXSharedBlockAdagradState), got "
    f"{type(state).__name__}."
  )
