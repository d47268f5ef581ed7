r"""Inverse square roots of batched symmetric positive semi-definite matrices.

Block Adagrad steps by :math:`(H + \lambda I)^{-1/2} g`. Two ways to compute the root of a
batch of ``k x k`` matrices ``H`` (shape ``(..., k, k)``) with a damping ``lam`` per matrix
(shape ``(...)``):

* ``'eigh'``: ``H = Q diag(w) Q^T`` by :func:`jax.numpy.linalg.eigh`, eigenvalues clamped at
  0, root :math:`Q \operatorname{diag}([w + \lambda > 0] (w + \lambda)^{-1/2}) Q^T` (the
  guard only matters when :math:`\lambda = 0`: a singular :math:`H` then gets a zero root
  along its null space, where gradients have no component). The fastest choice on CPU and
  GPU. Float32 ``eigh`` resolves eigenvalues only to about ``1e-7 * |H|``, so for a block of
  condition number :math:`\kappa` the root along its smallest directions is accurate to
  about :math:`10^{-7} \kappa` (0.5% at :math:`10^5`, 5% at :math:`10^6`); along the
  dominant directions, where Adagrad's gradients live, to float32 rounding. The default
  relative damping ``1e-5 * tr(H)`` keeps :math:`\kappa \le 10^5`. (Newton-Schulz
  refinement steps after ``eigh`` were tried: they fix the smallest directions but cost
  ~1e-3 along the dominant ones, where it matters.)
* ``'newton_schulz'``: the coupled Newton-Schulz iteration on :math:`A = H + \lambda I`
  scaled by its Frobenius norm :math:`c` (so its eigenvalues lie in ``(0, 1]``):
  :math:`Y_0 = A / c,\ Z_0 = I,\ T = (3I - Z Y) / 2,\ Y \leftarrow Y T,\ Z \leftarrow T Z`,
  then :math:`A^{-1/2} = Z / \sqrt{c}`. Matmuls only (``precision=HIGHEST``), a fixed
  iteration count (default 20; a float32 stopping tolerance of ``1e-6`` is never reached,
  so none is used): the choice for TPUs, where ``eigh`` is slow. It needs :math:`A` to be
  positive definite (``initial_accumulator_value > 0`` or ``eps > 0``); eigenvalues cannot
  be clamped, and a direction with :math:`A`'s eigenvalue 0 gets a large finite root
  (gradients have no component there).

Both return, per matrix, whether the input, the decomposition and the root are finite;
callers fall back to a row-wise step where they are not, on every backend alike. The
damping :math:`\lambda = \epsilon + \epsilon_{rel} \operatorname{tr}(H)` (see
:func:`damping`) is rotation-invariant, so is the root.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
  "DEFAULT_NEWTON_SCHULZ_ITERATIONS",
  "ROOT_METHODS",
  "all_finite",
  "damping",
  "damping_from_trace",
  "eigh",
  "inverse_sqrt",
  "matmul",
  "resolve_root_method",
]

ROOT_METHODS = ("auto", "eigh", "newton_schulz")
DEFAULT_NEWTON_SCHULZ_ITERATIONS = 20
_HIGHEST = jax.lax.Precision.HIGHEST


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """Batched ``a @ b`` at ``precision=HIGHEST`` (no TF32/bf16 passes on GPU/TPU)."""
  return jnp.matmul(a, b, precision=_HIGHEST)


def resolve_root_method(root: str, backend: str | None = None) -> str:
  """``'auto'`` becomes ``'newton_schulz'`` on TPU and ``'eigh'`` elsewhere.

  Args:
    root: ``'auto'``, ``'eigh'`` or ``'newton_schulz'``.
    backend: the JAX backend; ``None`` reads :func:`jax.default_backend` (at trace time
      when called inside a transform's ``update``).

  Returns:
    ``'eigh'`` or ``'newton_schulz'``.

  Example:
    >>> from optax_blockada._roots import resolve_root_method
    >>> resolve_root_method('auto', 'cpu'), resolve_root_method('auto', 'tpu')
    ('eigh', 'newton_schulz')
  """
  if root != "auto":
    return root
  backend = jax.default_backend() if backend is None else backend
  return "newton_schulz" if backend == "tpu" else "eigh"


def _trace(matrices: jax.Array) -> jax.Array:
  return jnp.trace(matrices, axis1=-2, axis2=-1)


def damping(matrices: jax.Array, eps: Any, relative_eps: Any) -> jax.Array:
  r"""Per-matrix damping :math:`\lambda = \epsilon + \epsilon_{rel} \operatorname{tr}(H)`.

  Both terms are invariant under :math:`H \to R H R^T` for orthogonal :math:`R`.

  Args:
    matrices: ``(..., k, k)``.
    eps: absolute damping :math:`\epsilon \ge 0` (may be traced).
    relative_eps: relative damping :math:`\epsilon_{rel} \ge 0` (may be traced).

  Returns:
    ``(...)`` in the matrices' dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada._roots import damping
    >>> print(damping(jnp.diag(jnp.array([1.0, 3.0])), 0.5, 0.25))
    1.5
  """
  return damping_from_trace(_trace(matrices), eps, relative_eps)


def damping_from_trace(trace: jax.Array, eps: Any, relative_eps: Any) -> jax.Array:
  r""":math:`\epsilon + \epsilon_{rel} t` for a trace :math:`t`, in ``trace``'s dtype.

  The one place the damping is written: :func:`damping` passes
  :math:`\operatorname{tr}(H)`; block Adagrad's ``'rows_x_shared'`` passes
  :math:`\operatorname{tr}(H_r) = k s_r` without forming :math:`H_r`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada._roots import damping_from_trace
    >>> print(damping_from_trace(jnp.array([4.0]), 0.5, 0.25))
    [1.5]
  """
  dtype = trace.dtype
  return jnp.asarray(eps).astype(dtype) + jnp.asarray(relative_eps).astype(dtype) * trace


def _eye_like(matrices: jax.Array) -> jax.Array:
  k = matrices.shape[-1]
  eye = jnp.eye(k, dtype=matrices.dtype).reshape((1,) * (matrices.ndim - 2) + (k, k))
  # zeros_like keeps the matrices' sharding type (Explicit sharding mode).
  return jnp.zeros_like(matrices) + eye


def _coupled_newton_schulz(y: jax.Array, z: jax.Array, iterations: int) -> jax.Array:
  """Runs ``iterations`` coupled steps from ``(Y, Z)``; returns ``Z``."""
  eye = _eye_like(y)

  def body(_, yz):
    y, z = yz
    t = 1.5 * eye - 0.5 * matmul(z, y)
    return matmul(y, t), matmul(t, z)

  _, z = jax.lax.fori_loop(0, iterations, body, (y, z))
  return z


# jaxlib 0.10 splits a batched CPU LAPACK call into chunks on XLA's intra-op thread pool
# once batch * 5 k^3 >= 2e5 flops; inside a compiled loop (lax.scan) next to other
# multi-threaded ops this was seen to hang (all threads idle, the step never finishing;
# upstream disabled the splitting in open-source builds after jax 0.10.2). Below this
# budget a call runs inline, so large CPU batches go through lax.map in such chunks.
_CPU_LAPACK_INLINE_FLOPS = 200_000


def eigh(matrices: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``jnp.linalg.eigh`` of ``(..., k, k)``; on CPU in chunks that LAPACK runs inline.

  Args:
    matrices: ``(..., k, k)`` symmetric.

  Returns:
    ``(eigenvalues (..., k), eigenvectors (..., k, k))`` as :func:`jnp.linalg.eigh`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada._roots import eigh
    >>> w, q = eigh(jnp.broadcast_to(jnp.diag(jnp.array([2.0, 1.0])), (3, 2, 2)))
    >>> print(w[0])
    [1. 2.]
  """
  k = matrices.shape[-1]
  batch_shape = matrices.shape[:-2]
  batch = math.prod(batch_shape)
  chunk = max(1, _CPU_LAPACK_INLINE_FLOPS // (5 * k**3) - 1)
  if jax.default_backend() != "cpu" or batch <= chunk:
    return jnp.linalg.eigh(matrices)
  w, q = jax.lax.map(jnp.linalg.eigh, matrices.reshape((batch, k, k)), batch_size=chunk)
  return w.reshape((*batch_shape, k)), q.reshape(matrices.shape)


def all_finite(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Whether every entry of ``x`` along ``axes`` is finite (the fallback flags).

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada._roots import all_finite
    >>> print(all_finite(jnp.array([[1.0, 2.0], [3.0, jnp.inf]]), (-1,)))
    [ True False]
  """
  return jnp.all(jnp.isfinite(x), axis=axes)


def _eigh_root(matrices: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The root through ``eigh``, and whether the decomposition is finite."""
  w, q = eigh(matrices)
  shifted = jnp.maximum(w, 0) + lam[..., None]
  scale = jnp.where(shifted > 0, jax.lax.rsqrt(shifted), 0)
  ok = all_finite(w, (-1,)) & all_finite(q, (-2, -1))
  return matmul(q * scale[..., None, :], jnp.swapaxes(q, -1, -2)), ok


def _newton_schulz_root(matrices: jax.Array, lam: jax.Array, iterations: int) -> jax.Array:
  shifted = matrices + lam[..., None, None] * _eye_like(matrices)
  norm = jnp.sqrt(jnp.sum(shifted * shifted, axis=(-2, -1)))
  norm = jnp.where(norm > 0, norm, jnp.ones_like(norm))
  z = _coupled_newton_schulz(shifted / norm[..., None, None], _eye_like(matrices), iterations)
  return z * jax.lax.rsqrt(norm)[..., None, None]


def inverse_sqrt(
  matrices: jax.Array,
  lam: jax.Array,
  *,
  method: str = "eigh",
  iterations: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""Batched :math:`(H + \lambda I)^{-1/2}` and a per-matrix finiteness flag.

  Args:
    matrices: ``(..., k, k)`` symmetric positive semi-definite :math:`H` (float).
    lam: ``(...)`` damping :math:`\lambda \ge 0` per matrix (see :func:`damping`).
    method: ``'eigh'`` or ``'newton_schulz'`` (see the module docstring; resolve
      ``'auto'`` first with :func:`resolve_root_method`).
    iterations: Newton-Schulz iterations (default 20); ignored by ``'eigh'``.

  ``1 x 1`` matrices use optax's guard and closed form :math:`[h > 0] / \sqrt{h + \lambda}` with
  either method.

  Returns:
    ``(roots, ok)``: roots ``(..., k, k)``, and ``ok`` ``(...)`` boolean, True where the
    input (:math:`H` and :math:`\lambda`), the decomposition (``eigh``'s eigenvalues and
    eigenvectors) and the root are all finite. The input is checked too because what a
    decomposition returns for a non-finite matrix depends on the backend: LAPACK on CPU
    gives NaN, the GPU solvers were seen to give finite values (a zero root), which
    would silently stop the block from learning instead of falling back.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada._roots import inverse_sqrt
    >>> h = jnp.array([[[4.0, 0.0], [0.0, 16.0]]])
    >>> for method in ('eigh', 'newton_schulz'):
    ...   root, ok = inverse_sqrt(h, jnp.zeros(1), method=method)
    ...   print(root[0].round(4), ok)
    [[0.5  0.  ]
     [0.   0.25]] [ True]
    [[0.5  0.  ]
     [0.   0.25]] [ True]
  """
  if method not in ("eigh", "newton_schulz"):
    raise ValueError(
      f"inverse_sqrt: method must be 'eigh' or 'newton_schulz', got {method!r}; "
      "resolve 'auto' with resolve_root_method first."
    )
  ok = all_finite(matrices, (-2, -1)) & jnp.broadcast_to(jnp.isfinite(lam), matrices.shape[:-2])
  if matrices.shape[-1] == 1:  # 1 x 1 blocks: the closed form, as diagonal Adagrad.
    h = jnp.maximum(matrices, 0)
    roots = jnp.where(h > 0, jax.lax.rsqrt(h + lam[..., None, None]), 0)
  elif method == "eigh":
    roots, decomposed = _eigh_root(matrices, lam)
    ok = ok & decomposed
  else:
    n = DEFAULT_NEWTON_SCHULZ_ITERATIONS if iterations is None else iterations
    roots = _newton_schulz_root(matrices, lam, n)
  return roots, ok & all_finite(roots, (-2, -1))
