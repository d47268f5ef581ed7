"""Test configuration shared by tests/ and the doctests in optax_blockada/.

Strict like equinox: no implicit dtype promotion, no implicit rank promotion.

Eight CPU devices, so the sharding tests (tests/test_sharding.py) run in the normal
suite: the count must be set before JAX initialises its backends, which happens on
first use, after this file is imported. Computations that do not ask for a sharding
still run on one device, so the other tests are unaffected. An explicit
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` takes precedence.
"""

import os

import jax

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
