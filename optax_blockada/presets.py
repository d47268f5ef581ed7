"""Other ecosystems' Adagrad numerics, each as a short optax chain.

Every preset reproduces one system's update formula, defaults included, so that a
model moved to JAX trains as it did there. Each preset's docstring quotes the formula
from that project's source.

All presets return :class:`optax.GradientTransformationExtraArgs`; the ones with
weight decay or ``max_norm`` need ``params`` in ``update``.

Weight decay in a sparse step (:mod:`optax_blockada.sparse`, which updates the
looked-up rows only) reaches the looked-up rows, zero gradient or not: FBGEMM's rule
(:func:`fbgemm_rowwise_adagrad`, which also documents how a dense step gets it). The
PyTorch, TorchRec ``RowWiseAdagrad`` and Keras optimizers decay every row of a table on
every step, which only their presets' dense step reproduces.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from optax_blockada import _validation
from optax_blockada._rows import (
  TOUCHED,
  Touched,
  add_decayed_weights_to_touched_rows,
  renormalize_rows,
)
from optax_blockada._scalar import scale_by_diagonal_adagrad, scale_by_rowwise_adagrad

__all__ = [
  "fbgemm_exact_adagrad",
  "fbgemm_rowwise_adagrad",
  "glove_adagrad",
  "keras_adagrad",
  "lightfm_adagrad",
  "torch_adagrad",
  "torchrec_rowwise_adagrad",
]

WEIGHT_DECAY_MODES = ("none", "l2", "decoupled")
WeightDecayMode = Literal["none", "l2", "decoupled"]


def _is_zero(x: Any) -> bool:
  """True for a Python zero: a term that can be left out of the chain.

  Only a Python number decides the chain's structure. An array, even a concrete zero,
  keeps its (then no-op) term: ``optax.inject_hyperparams`` builds the transform from
  concrete arrays in ``init`` and from tracers in ``update``, and both must give the
  same chain (a concrete-zero test made ``update`` raise "The number of updates and
  states has to be the same in chain").
  """
  return isinstance(x, int | float) and not isinstance(x, bool) and x == 0.0


def _inverse_time(learning_rate: Any, lr_decay: Any) -> optax.ScalarOrSchedule:
  """PyTorch's ``clr = lr / (1 + (t - 1) * lr_decay)`` as an optax schedule."""
  _validation.check_learning_rate(learning_rate)
  _validation.check_nonnegative("lr_decay", lr_decay)
  if _is_zero(lr_decay):
    return learning_rate

  def schedule(count):
    lr = learning_rate(count) if callable(learning_rate) else learning_rate
    decay = jnp.asarray(lr_decay)
    if not jnp.issubdtype(decay.dtype, jnp.floating):  # lr_decay=1, as torch accepts
      decay = decay.astype(jnp.float32)
    return lr / (1 + count.astype(decay.dtype) * decay)

  return schedule


def _torch_chain(
  scaling: optax.GradientTransformation, learning_rate: Any, lr_decay: Any, weight_decay: Any
) -> optax.GradientTransformationExtraArgs:
  """PyTorch's structure: coupled L2 on the gradient, scaling, inverse-time learning rate."""
  _validation.check_nonnegative("weight_decay", weight_decay)
  decay = [] if _is_zero(weight_decay) else [optax.add_decayed_weights(weight_decay)]
  return optax.chain(
    *decay, scaling, optax.scale_by_learning_rate(_inverse_time(learning_rate, lr_decay))
  )


def torch_adagrad(
  learning_rate: optax.ScalarOrSchedule = 1e-2,
  lr_decay: ArrayLike = 0.0,
  weight_decay: ArrayLike = 0.0,
  initial_accumulator_value: ArrayLike = 0.0,
  eps: ArrayLike = 1e-10,
) -> optax.GradientTransformationExtraArgs:
  r"""PyTorch's ``torch.optim.Adagrad`` (dense gradients).

  Source (``torch/optim/adagrad.py``, ``_single_tensor_adagrad``)::

    g = g + weight_decay * p
    clr = lr / (1 + (t - 1) * lr_decay)
    G += g * g
    p -= clr * g / (sqrt(G) + eps)

  As a chain: ``add_decayed_weights(weight_decay)``,
  ``scale_by_diagonal_adagrad(initial_accumulator_value, eps, eps_in_sqrt=False)``,
  ``scale_by_learning_rate`` with the inverse-time schedule. ``t`` counts every
  ``update`` call. PyTorch's per-parameter ``step`` counts the steps in which that
  parameter had a gradient: a parameter whose ``.grad`` is ``None`` is skipped (its
  ``step`` does not advance, it is not decayed), where this preset sees a zero gradient,
  advances ``t`` and, with ``weight_decay``, still decays it. They agree when every
  parameter gets a gradient every step.

  Args:
    learning_rate: ``lr`` (a float or an optax schedule, decayed further by
      ``lr_decay``).
    lr_decay: inverse-time decay, ``>= 0``.
    weight_decay: coupled L2, added to the gradient, ``>= 0``.
    initial_accumulator_value: ``G_0 >= 0``.
    eps: added outside the square root.

  Returns:
    An :class:`optax.GradientTransformation` (needs ``params`` if
    ``weight_decay != 0``).

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada import presets
    >>> tx = presets.torch_adagrad(learning_rate=0.1)
    >>> params = jnp.zeros(1)
    >>> state = tx.init(params)
    >>> for g in [10.0, 9.0, 11.0]:
    ...   updates, state = tx.update(jnp.array([g]), state, params)
    ...   print(f"{-updates[0]:.4f}")
    0.1000
    0.0669
    0.0633
  """
  return _torch_chain(
    scale_by_diagonal_adagrad(initial_accumulator_value, eps, eps_in_sqrt=False),
    learning_rate,
    lr_decay,
    weight_decay,
  )


def torchrec_rowwise_adagrad(
  learning_rate: optax.ScalarOrSchedule = 1e-2,
  lr_decay: ArrayLike = 0.0,
  weight_decay: ArrayLike = 0.0,
  initial_accumulator_value: ArrayLike = 0.0,
  eps: ArrayLike = 1e-10,
) -> optax.GradientTransformationExtraArgs:
  r"""TorchRec's ``torchrec.optim.RowWiseAdagrad`` (also PyTorch-BigGraph, DGL-KE).

  PyTorch's Adagrad with a ``(V, 1)`` accumulator fed by the row mean
  (``torchrec/optim/rowwise_adagrad.py``)::

    g = g + weight_decay * p                 # dense, every row
    clr = lr / (1 + (t - 1) * lr_decay)
    G += mean(g * g, axis=1)
    p -= clr * g / (sqrt(G) + eps)

  This optimizer class steps the whole table: with ``weight_decay`` every row decays
  (and, through ``g``, accumulates) on every step, looked up or not. The dense step of
  this preset does the same (``optax.add_decayed_weights``). The sparse path
  (:mod:`optax_blockada.sparse`) cannot: it decays the looked-up rows only, zero
  gradient or not, which is FBGEMM's rule (with ``lr_decay=0`` and
  ``initial_accumulator_value=0``, :func:`fbgemm_rowwise_adagrad` in ``'l2'`` mode with
  this ``eps``). TorchRec's fused embedding optimizers
  (``EmbOptimType.EXACT_ROWWISE_ADAGRAD`` in an embedding module's fused parameters)
  run FBGEMM's kernel: use :func:`fbgemm_rowwise_adagrad` for those.

  Args:
    learning_rate: ``lr`` (a float or an optax schedule).
    lr_decay: inverse-time decay, ``>= 0``.
    weight_decay: coupled L2 on every row, ``>= 0``.
    initial_accumulator_value: ``G_0 >= 0``.
    eps: added outside the square root.

  Returns:
    An :class:`optax.GradientTransformation`.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from optax_blockada import presets
    >>> tx = presets.torchrec_rowwise_adagrad()
    >>> state = tx.init(jnp.zeros((5, 8)))
    >>> jax.tree.map(jnp.shape, state[0].sum_of_squares)
    (5, 1)
  """
  return _torch_chain(
    scale_by_rowwise_adagrad(initial_accumulator_value, eps, reduction="mean", eps_in_sqrt=False),
    learning_rate,
    lr_decay,
    weight_decay,
  )


def keras_adagrad(
  learning_rate: optax.ScalarOrSchedule = 1e-3,
  initial_accumulator_value: ArrayLike = 0.1,
  epsilon: ArrayLike = 1e-7,
  weight_decay: float | jax.Array = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""Keras 3's ``keras.optimizers.Adagrad``.

  Source (``keras/src/optimizers/adagrad.py`` and the base optimizer's decoupled
  weight decay, applied to the variable before the step)::

    w -= lr * weight_decay * w
    G += g * g
    w -= lr * g / sqrt(G + epsilon)

  With ``weight_decay=0`` this is :func:`optax.adagrad` with Keras' defaults.

  Args:
    learning_rate: ``lr`` (a float or an optax schedule).
    initial_accumulator_value: ``G_0 >= 0``.
    epsilon: added inside the square root.
    weight_decay: decoupled decay, ``>= 0``.

  Returns:
    An :class:`optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada import presets
    >>> tx = presets.keras_adagrad(learning_rate=0.1)
    >>> params = jnp.zeros(1)
    >>> updates, _ = tx.update(jnp.array([1.0]), tx.init(params), params)
    >>> print(f"{float(updates[0]):.5f}")  # -0.1 / sqrt(1.1)
    -0.09535
  """
  _validation.check_nonnegative("weight_decay", weight_decay)
  parts = [scale_by_diagonal_adagrad(initial_accumulator_value, epsilon)]
  if not _is_zero(weight_decay):
    parts.append(optax.add_decayed_weights(weight_decay))
  _validation.check_learning_rate(learning_rate)
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


def fbgemm_exact_adagrad(
  learning_rate: optax.ScalarOrSchedule = 0.01, eps: ArrayLike = 1e-8
) -> optax.GradientTransformationExtraArgs:
  r"""FBGEMM/TorchRec ``EXACT_ADAGRAD`` (per-element, exact duplicate handling).

  Source (``fbgemm_gpu/codegen/genscript/optimizers.py``, ``adagrad``)::

    G += g * g
    w -= lr * g / (sqrt(G) + eps)

  FBGEMM sums the gradients of duplicate ids before one update; JAX autodiff through
  ``table[ids]`` does the same. Rows outside the batch are untouched in FBGEMM and
  get a zero update here (Adagrad is lazily exact). FBGEMM's ``EXACT_ADAGRAD`` has no
  weight decay and no ``max_norm``, so a looked-up row whose summed gradient is exactly
  zero (a padding row) is left as it was, there and here, dense or sparse.

  Args:
    learning_rate: ``lr`` (a float or an optax schedule).
    eps: added outside the square root.

  Returns:
    An :class:`optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada import presets
    >>> tx = presets.fbgemm_exact_adagrad()
    >>> params = jnp.zeros(2)
    >>> updates, _ = tx.update(jnp.array([1e-3, 0.0]), tx.init(params), params)
    >>> print(updates)  # a sign step on the first step
    [-0.01  0.  ]
  """
  _validation.check_learning_rate(learning_rate)
  return optax.chain(
    scale_by_diagonal_adagrad(0.0, eps, eps_in_sqrt=False),
    optax.scale_by_learning_rate(learning_rate),
  )


def fbgemm_rowwise_adagrad(
  learning_rate: optax.ScalarOrSchedule = 0.01,
  eps: ArrayLike = 1e-8,
  weight_decay: ArrayLike = 0.0,
  weight_decay_mode: WeightDecayMode = "none",
  max_norm: ArrayLike = 0.0,
  *,
  touched: Touched = "looked_up",
) -> optax.GradientTransformationExtraArgs:
  r"""FBGEMM/TorchRec ``EXACT_ROWWISE_ADAGRAD`` with its weight-decay modes.

  Source (``fbgemm_gpu/codegen/genscript/optimizers.py``, ``rowwise_adagrad``), for
  every row ``w`` looked up in the batch, with summed gradient ``g`` (zero for a padding
  row)::

    g' = g + wd * w                      # 'l2' mode only
    G += mean(g' * g')
    m = lr / (sqrt(G) + eps)
    c = 1 - m * wd   ('l2')  |  1 - lr * wd   ('decoupled')  |  1   ('none')
    w = c * w - m * g
    if max_norm > 0 and ||w|| > max_norm: w *= max_norm / ||w||   # CUDA kernel only

  ``'l2'`` is ``w - m * g'``. Rows outside the batch are untouched. TorchRec's fused
  embedding optimizers (``EmbOptimType.EXACT_ROWWISE_ADAGRAD``) run this kernel; its
  ``RowWiseAdagrad`` optimizer class is :func:`torchrec_rowwise_adagrad`.

  **Looked-up rows.** FBGEMM decays and max-norms every looked-up row, also one whose
  summed gradient is exactly zero (it then still moves, and in ``'l2'`` mode its
  accumulator grows by ``mean((wd * w)^2)``). With ``touched='looked_up'`` (default)
  the decay and max-norm reach the rows that the extra argument ``looked_up`` of
  ``update`` marks, and the rows with a non-zero gradient
  (:func:`optax_blockada.add_decayed_weights_to_touched_rows` describes the mask).
  :func:`optax_blockada.sparse.apply_gradients` (and ``sparse.nnx_update``,
  ``routed``) pass the rows they gather, so **the sparse path is FBGEMM's rule
  exactly**. A dense step sees only the gradient: without the mask it decays the rows
  with a non-zero gradient, and differs from FBGEMM on looked-up rows whose gradient is
  exactly zero. Where the ids are at hand, pass the mask::

    looked_up = {'table': jnp.zeros(V, bool).at[ids].set(True)}  # ids in [0, V)
    updates, state = tx.update(grads, state, params, looked_up=looked_up)

  ``touched='nonzero_gradient'`` decays and max-norms the rows with a non-zero gradient
  only, mask or not (the behaviour of this preset before the option existed). Without
  weight decay and ``max_norm`` the choice changes nothing: a zero gradient leaves a
  row and its accumulator as they were, in FBGEMM and here.

  ``max_norm``: FBGEMM applies it in its CUDA kernel only (its CPU kernel ignores it),
  and there to every looked-up row. This preset applies it on every backend, so it
  matches FBGEMM's CUDA kernel and differs from its CPU kernel whenever
  ``max_norm > 0``.

  **FBGEMM's CPU fast path has no weight decay.** On CPU, a float32 table that only one
  feature looks up goes through fbgemm's fused ``SparseAdaGrad`` kernel, called with
  weight decay 0 (``embedding_backward_split_cpu_template.cpp``, FBGEMM-GPU-CPU 1.9.0):
  ``'l2'`` and ``'decoupled'`` then give exactly the ``'none'`` numbers. Tables shared by
  several features take the generic CPU path, which decays as above. This preset follows
  the formula above (FBGEMM's CUDA kernel and its generic CPU path); for the fast path,
  pass ``weight_decay=0``. Measured against FBGEMM-GPU-CPU 1.9.0 with recorded
  trajectories in ``tests/fixtures`` (at most 7.2e-7 on the parameters, 24 steps).

  Args:
    learning_rate: ``lr`` (a float or an optax schedule).
    eps: added outside the square root.
    weight_decay: ``wd >= 0``.
    weight_decay_mode: ``'none'``, ``'l2'`` or ``'decoupled'``. Static.
    max_norm: row max-norm after the update; ``0`` disables it.
    touched: ``'looked_up'`` (FBGEMM) or ``'nonzero_gradient'``: the rows that weight
      decay and ``max_norm`` act on (see above). Static.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` (needs ``params`` with weight
    decay or ``max_norm``; takes the optional extra argument ``looked_up``).

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from optax_blockada import presets
    >>> tx = presets.fbgemm_rowwise_adagrad(learning_rate=1.0, max_norm=0.5)
    >>> params = jnp.zeros((2, 2))
    >>> grads = jnp.array([[-3.0, -4.0], [0.0, 0.0]])
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> print(optax.apply_updates(params, updates))
    [[0.3 0.4]
     [0.  0. ]]

    Decoupled decay, rows 0 and 1 looked up (row 1 a padding row: zero gradient), row 2
    not: ``c = 1 - lr * wd = 0.95``.

    >>> tx = presets.fbgemm_rowwise_adagrad(
    ...   learning_rate=0.1, weight_decay=0.5, weight_decay_mode="decoupled")
    >>> params = jnp.ones((3, 2))
    >>> grads = jnp.array([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    >>> looked_up = jnp.array([True, True, False])
    >>> updates, _ = tx.update(grads, tx.init(params), params, looked_up=looked_up)
    >>> print(optax.apply_updates(params, updates))
    [[0.85 0.85]
     [0.95 0.95]
     [1.   1.  ]]
  """
  _validation.check_choice("weight_decay_mode", weight_decay_mode, WEIGHT_DECAY_MODES)
  _validation.check_choice("touched", touched, TOUCHED)
  _validation.check_nonnegative("weight_decay", weight_decay)
  _validation.check_learning_rate(learning_rate)
  decay = weight_decay_mode != "none" and not _is_zero(weight_decay)
  parts: list[optax.GradientTransformation] = []
  if decay and weight_decay_mode == "l2":
    parts.append(add_decayed_weights_to_touched_rows(weight_decay, touched=touched))
  parts.append(scale_by_rowwise_adagrad(0.0, eps, reduction="mean", eps_in_sqrt=False))
  if decay and weight_decay_mode == "decoupled":
    parts.append(add_decayed_weights_to_touched_rows(weight_decay, touched=touched))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  if not _is_zero(max_norm):
    parts.append(renormalize_rows(max_norm, touched=touched))
  return optax.chain(*parts)


def _glove_labels(tree: Any) -> Any:
  return jax.tree.map(lambda x: "vectors" if x.ndim >= 2 else "biases", tree)


def glove_adagrad(
  eta: ArrayLike = 0.05, grad_clip_value: ArrayLike = 100.0
) -> optax.GradientTransformationExtraArgs:
  r"""The reference GloVe implementation's Adagrad (``stanfordnlp/GloVe``, ``glove.c``).

  Source, for one co-occurrence pair with weighted residual ``f`` (``fdiff``)::

    d = eta * clip(f * c, -100, 100)      # word vector w; likewise for c
    w -= d / sqrt(G);  G += d * d         # divides by the old accumulator
    b -= f / sqrt(Gb); Gb += f * f        # biases: no eta, no clip
    G, Gb start at 1

  Dividing ``d`` by ``eta`` shows the vectors' update is Adagrad with learning rate
  1 on the clipped gradient, accumulators starting at ``1 / eta**2`` and dividing by
  the old accumulator, no eps. Biases are the same with accumulators starting at 1.
  Vectors are the leaves with ``ndim >= 2``, biases those with ``ndim <= 1``.
  ``glove.c`` also skips updates that are not finite; this preset does not.

  Args:
    eta: GloVe's ``-eta`` (initial learning rate), ``> 0``.
    grad_clip_value: GloVe's per-element gradient clip for vectors.

  Returns:
    An :class:`optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada import presets
    >>> tx = presets.glove_adagrad(eta=0.05)
    >>> params = {'w': jnp.zeros((2, 3)), 'b': jnp.zeros(2)}
    >>> grads = {'w': jnp.ones((2, 3)), 'b': jnp.ones(2)}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> print(updates['w'][0], updates['b'])  # -eta * g / sqrt(1), -g / sqrt(1)
    [-0.05 -0.05 -0.05] [-1. -1.]

  References:
    Pennington, Socher & Manning, `GloVe: Global Vectors for Word Representation
    <https://nlp.stanford.edu/pubs/glove.pdf>`_, EMNLP 2014; ``src/glove.c`` of
    `stanfordnlp/GloVe <https://github.com/stanfordnlp/GloVe>`_.
  """
  _validation.check_nonnegative("eta", eta)
  if not _validation.is_traced(eta) and not np.any(np.asarray(eta) != 0.0):
    raise ValueError("eta must be > 0 (it sets the accumulators' start 1 / eta**2).")
  _validation.check_nonnegative("grad_clip_value", grad_clip_value)
  vectors = optax.chain(
    optax.clip(grad_clip_value),
    scale_by_diagonal_adagrad(1.0 / eta**2, 0.0, use_old_accumulator=True),
  )
  biases = scale_by_diagonal_adagrad(1.0, 0.0, use_old_accumulator=True)
  return optax.chain(
    optax.partition({"vectors": vectors, "biases": biases}, _glove_labels),
    optax.scale(-1.0),
  )


def lightfm_adagrad(
  learning_rate: optax.ScalarOrSchedule = 0.05,
) -> optax.GradientTransformationExtraArgs:
  r"""LightFM's ``learning_schedule='adagrad'`` (``lightfm/_lightfm_fast.pyx.template``).

  Source, per feature embedding component::

    local_lr = lr / sqrt(G)               # the old accumulator
    w -= local_lr * x * g
    G += (x * g) ** 2                     # G starts at 1

  LightFM's lazy L2 regularisation (``item_alpha``, ``user_alpha``) rescales whole
  tables and is not part of this preset.

  Args:
    learning_rate: ``lr`` (a float or an optax schedule).

  Returns:
    An :class:`optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada import presets
    >>> tx = presets.lightfm_adagrad()
    >>> params = jnp.zeros(2)
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(jnp.array([2.0, 0.0]), state, params)
    ...   print(updates)  # -0.05 * 2 / sqrt(1), then / sqrt(1 + 4)
    [-0.1  0. ]
    [-0.04472  0.     ]

  References:
    Kula, `Metadata Embeddings for User and Item Cold-start Recommendations
    <https://arxiv.org/abs/1507.08439>`_, 2015; ``lightfm/_lightfm_fast.pyx.template`` of
    `lyst/lightfm <https://github.com/lyst/lightfm>`_.
  """
  _validation.check_learning_rate(learning_rate)
  return optax.chain(
    scale_by_diagonal_adagrad(1.0, 0.0, use_old_accumulator=True),
    optax.scale_by_learning_rate(learning_rate),
  )
