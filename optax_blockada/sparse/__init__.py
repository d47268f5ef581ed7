r"""Sparse row updates: a step costs O(rows looked up), not O(rows in the table).

Autodiff through ``table[ids]`` makes a dense ``(V, d)`` gradient, and an optimizer
then reads and writes all ``V`` rows, even when a batch looks up a few thousand. This
module runs the same optax transform on the looked-up rows only:

1. **gather**: for each embedding table, merge the batch's ids into sorted unique ids
   (static size: the number of ids, padded with the out-of-range id ``V``), gather
   those rows into a small table and remap the ids into it;
2. **grad**: the loss looks up the small table with the remapped ids, so
   ``jax.grad`` with respect to the small table is the gradient of the touched rows,
   duplicates already summed (as autodiff through ``table[ids]`` sums them);
3. **update**: run ``tx.update`` on a params tree in which every table is replaced by
   its gathered rows and every per-row state of the library (and ``optax.adagrad``'s
   accumulator) by its gathered rows; other state passes through whole;
4. **scatter** the new rows of the parameters and of the per-row state back with
   ``.at[rows].set(..., mode='drop')``: the padding id ``V`` is dropped. Under
   ``jax.jit(..., donate_argnums=...)`` over params and state this is in place.

Because Adagrad is lazily exact (a row with zero gradient gets a zero update and keeps
its state), the result equals the dense step up to float32 rounding (sums over rows are
taken in another order). Cost per step: O(B d) plus the transform's per-row cost, for
B looked-up ids, independent of V. On an accelerator a step of a few thousand rows is
bound by kernel launches, not bytes, so the merge uses a fixed handful of kernels and no
loop there (see ``_unique``): XLA compiles a row-wise Adagrad step for an H100 into 16
kernels (``benchmarks/step_kernels.py``).

On tables sharded along rows over many devices this step is correct under ``jax.jit``
(in JAX's Auto and Explicit sharding modes: in Explicit mode the ids are merged and the
touched rows gathered replicated, and the tables keep their sharding types), but every
device then handles the rows of the global batch; :mod:`optax_blockada.routed`
routes each id to the shard that owns its row, so each device's work follows its local
batch.

Layout: tables have their **rows along axis 0** (``(V, d)``, ``(V,)``, ``(V, k, d)``);
the transform's feature axes for a table must not include axis 0 (checked for stateful
transforms through the shape of their per-row state).

**What stays exact.** The library's diagonal, row-wise and block Adagrad;
``optax.adagrad`` / ``optax.scale_by_rss``; ``optax.sgd`` without momentum; every
stateless transform that acts row by row or elementwise (``optax.scale``,
``optax.scale_by_learning_rate`` with a schedule, ``optax.scale_by_schedule``,
``optax.clip``); ``optax.clip_by_global_norm`` (rows with zero gradient add nothing to
the norm); ``optax.chain``, ``optax.partition``, ``optax.masked`` and
``optax.inject_hyperparams`` around them. Step counters and other shared state advance
as in the dense step. The row transforms :func:`~optax_blockada.renormalize_rows` and
:func:`~optax_blockada.add_decayed_weights_to_touched_rows` equal the dense step given
the same ``looked_up`` mask (see **Looked-up rows** below).

**What is not lazily exact, and what happens.**

* Stateful transforms that keep a value for every row without declaring it as lazily
  updatable per-row state, such as momentum (``optax.trace``, ``optax.sgd(...,
  momentum=...)``), ``optax.ema``, Adam's moments, ``optax.MultiSteps``: their
  zero-gradient rows change every step in the dense step. They are detected (any
  state leaf whose shape depends on a table's row count) and raise a ``ValueError``.
  Use the dense step, or apply such a transform to non-table leaves only with
  ``optax.partition``.
* Stateless transforms that change rows with zero gradient: ``optax.add_decayed_weights``
  (and the ``weight_decay`` of :func:`~optax_blockada.presets.torch_adagrad`,
  :func:`~optax_blockada.presets.torchrec_rowwise_adagrad`,
  :func:`~optax_blockada.presets.keras_adagrad`), ``optax.add_noise``,
  ``optax.keep_params_nonnegative``: they act on the **looked-up rows only** (zero
  gradient or not), where the dense step changes every row. That is the lazy decay of
  FBGEMM's fused kernels, not the semantics of ``torch.optim.Adagrad``, TorchRec's
  ``RowWiseAdagrad`` optimizer class or Keras, which decay every row of the table.
* Stateless transforms whose row update depends on the whole leaf through a mean or a
  parameter norm (``optax.clip_by_block_rms``, ``optax.centralize``,
  ``optax.scale_by_param_block_norm``/``rms``, ``optax.scale_by_trust_ratio``) see only
  the gathered rows and differ from the dense step. They cannot be detected; do not
  chain them on tables.

**Looked-up rows.** When ``tx`` takes extra arguments (every ``optax.chain``, alias and
preset does), ``tx.update`` also receives ``looked_up``: for every table a boolean mask
of its gathered rows (all true but for the padding slots, which also hold the dropped
out-of-range ids), ``None`` for the other leaves. The row transforms
:func:`~optax_blockada.add_decayed_weights_to_touched_rows` and
:func:`~optax_blockada.renormalize_rows` (so
:func:`~optax_blockada.presets.fbgemm_rowwise_adagrad`'s weight decay and ``max_norm``)
act on those rows, as FBGEMM does, also on a looked-up row whose summed gradient is
exactly zero (a padding row); a dense step without the mask leaves such a row alone.
Both agree whenever every looked-up row has a non-zero gradient. With
``touched='nonzero_gradient'`` those transforms and presets ignore the mask and act on
the rows with a non-zero gradient only, in the sparse path as in the dense step.

**Ids out of range** (``id < 0`` or ``id >= V``). With ``checked=False`` (the fast
mode, default) such an id is dropped: its lookup reads a row of zeros and its gradient
is discarded, so no row of the table or of the state is written for it (negative ids
do *not* wrap around as in numpy indexing). A 64-bit host id is judged in its own dtype,
before JAX sees it: with x64 off JAX truncates ``2**32 + 7`` to ``7`` where it enters a
device or a jitted function, so pass such ids through :func:`as_ids` before a jitted
step (outside ``jit`` the sparse functions do it). With ``checked=True`` concrete ids are
checked on the host and raise a ``ValueError``; traced ids (inside ``jax.jit``) are
checked with :func:`jax.experimental.checkify.check`, so the jitted step must be
wrapped in ``checkify.checkify`` and ``err.throw()`` raises; the outputs are then those
of the fast mode, so donated buffers are never lost to an error.
"""

from optax_blockada.sparse._ids import as_ids
from optax_blockada.sparse._nnx import nnx_update
from optax_blockada.sparse._step import apply_gradients, value_and_grad
from optax_blockada.sparse._tables import gather
from optax_blockada.sparse._types import SparseGrad, TouchedRows

__all__ = [
  "SparseGrad",
  "TouchedRows",
  "apply_gradients",
  "as_ids",
  "gather",
  "nnx_update",
  "value_and_grad",
]
