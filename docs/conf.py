"""Sphinx configuration of the optax-blockada API reference (``sphinx-build -W docs ...``)."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import optax_blockada

project = "optax-blockada"
author = "optax-blockada developers"
copyright = "2026, optax-blockada developers"
release = version = optax_blockada.__version__

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.intersphinx",
  "sphinx.ext.viewcode",
]

# Docstrings use Google-style sections (Args, Returns, Example, References).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autosummary_generate = False
# The docstrings' examples are doctested by pytest (--doctest-modules), not here.

# Links to the libraries the API builds on. Sphinx fetches their inventories; set
# OPTAX_BLOCKADA_DOCS_OFFLINE=1 on a machine without network (cross-links become plain text).
intersphinx_mapping = {
  "python": ("https://docs.python.org/3", None),
  "jax": ("https://docs.jax.dev/en/latest", None),
  "optax": ("https://optax.readthedocs.io/en/latest", None),
  "flax": ("https://flax.readthedocs.io/en/latest", None),
}
if __import__("os").environ.get("OPTAX_BLOCKADA_DOCS_OFFLINE"):
  intersphinx_mapping = {}

html_theme = "furo"
html_title = f"optax-blockada {release}"
exclude_patterns = ["_build"]
