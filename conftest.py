"""Test configuration shared by tests/ and the doctests in optax_blockada/.

Strict like equinox: no implicit dtype promotion, no implicit rank promotion.
"""

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
