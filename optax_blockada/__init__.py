"""optax-blockada: Adagrad for embedding models, as composable optax transforms.

Diagonal (per-coordinate) Adagrad depends on the arbitrary basis of the feature space
and stores as much state as the tables; row-wise Adagrad keeps one accumulator per
feature vector and is equivariant under rotations of that space.
"""

from optax_blockada import diagnostics, presets, routed, sharding, sparse
from optax_blockada._block import (
  BlockAdagradState,
  RowsXSharedBlockAdagradState,
  SharedBlockAdagradState,
  SharedEigenCache,
  SharedRootCache,
  block_adagrad,
  block_effective_learning_rates,
  scale_by_block_adagrad,
)
from optax_blockada._geometry import FeatureAxesSpec
from optax_blockada._nonfinite import SkipNonfiniteRowsState, skip_nonfinite_rows
from optax_blockada._per_row import register_per_row_state
from optax_blockada._rows import add_decayed_weights_to_touched_rows, renormalize_rows
from optax_blockada._scalar import (
  DiagonalAdagradState,
  RowwiseAdagradState,
  diagonal_adagrad,
  rowwise_adagrad,
  scale_by_diagonal_adagrad,
  scale_by_rowwise_adagrad,
)
from optax_blockada.diagnostics import (
  counters,
  effective_learning_rates,
  find_adagrad_states,
  state_bytes,
)

__version__ = "0.1.0"

__all__ = (
  "BlockAdagradState",
  "DiagonalAdagradState",
  "FeatureAxesSpec",
  "RowsXSharedBlockAdagradState",
  "RowwiseAdagradState",
  "SharedBlockAdagradState",
  "SharedEigenCache",
  "SharedRootCache",
  "SkipNonfiniteRowsState",
  "add_decayed_weights_to_touched_rows",
  "block_adagrad",
  "block_effective_learning_rates",
  "counters",
  "diagnostics",
  "diagonal_adagrad",
  "effective_learning_rates",
  "find_adagrad_states",
  "presets",
  "register_per_row_state",
  "renormalize_rows",
  "routed",
  "rowwise_adagrad",
  "scale_by_block_adagrad",
  "scale_by_diagonal_adagrad",
  "scale_by_rowwise_adagrad",
  "sharding",
  "skip_nonfinite_rows",
  "sparse",
  "state_bytes",
)
