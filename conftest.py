"""Test configuration shared by tests/ and the doctests in optax_blockada/.

Strict like equinox: no implicit dtype promotion, no implicit rank promotion.

Eight CPU devices, so the sharding tests (tests/test_sharding.py) run in the normal
suite: the count must be set before JAX initialises its backends, which happens on
first use, after this file is imported. Computations that do not ask for a sharding
still run on one device, so the other tests are unaffected. An explicit
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` takes precedence.

On a GPU (or TPU) the default backend is the accelerator and the forced CPU devices
are not its devices: tests marked ``multidevice`` need 8 devices of the default
backend and are skipped where it has fewer, with the command that runs them on CPU.
``.ci/gpu`` runs the whole suite that way on a GPU machine (see the README).
"""

import importlib.util
import os

import jax
import pytest

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


MULTIDEVICE = 8


def pytest_configure(config):
  config.addinivalue_line(
    "markers", f"multidevice: needs {MULTIDEVICE} devices of JAX's default backend"
  )
  config.addinivalue_line("markers", "notebooks: executes the Colab notebooks in colabs/")


# Docstring examples that read the corpora and evaluation files shipped inside gensim (an
# extra of the examples); skipped where gensim is not installed, as the tests that need
# them are (pytest.importorskip).
NEEDS_GENSIM = frozenset(
  {
    "optax_blockada.examples.glove.compare_optimizers",
    "optax_blockada.examples.glove.load_corpus",
    "optax_blockada.examples.sgns.compare_optimizers",
    "optax_blockada.examples.text.gensim_corpus",
    "optax_blockada.examples.word_eval.benchmark_coverage",
    "optax_blockada.examples.word_eval.evaluate",
    "optax_blockada.examples.word_eval.load_analogies",
    "optax_blockada.examples.word_eval.load_word_pairs",
  }
)


def _skip_doctests_that_need_gensim(items):
  if importlib.util.find_spec("gensim") is not None:
    return
  skip = pytest.mark.skip(reason="reads data shipped with gensim, which is not installed")
  for item in items:
    if isinstance(item, pytest.DoctestItem) and item.name in NEEDS_GENSIM:
      item.add_marker(skip)


def pytest_collection_modifyitems(config, items):
  del config
  _skip_doctests_that_need_gensim(items)
  marked = [item for item in items if item.get_closest_marker("multidevice")]
  if not marked or jax.device_count() >= MULTIDEVICE:
    return
  skip = pytest.mark.skip(
    reason=f"needs {MULTIDEVICE} devices of the default backend, which has "
    f"{jax.device_count()} ({jax.default_backend()}); run these on {MULTIDEVICE} forced CPU "
    "devices with: JAX_PLATFORMS=cpu python -m pytest -m multidevice"
  )
  for item in marked:
    item.add_marker(skip)
