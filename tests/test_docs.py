"""Documentation stays true: examples exist for every public name and the README runs."""

import importlib.metadata
import inspect
import pathlib
import re
import subprocess
import sys

import jax
import pytest

try:
  import tomllib
except ModuleNotFoundError:  # Python 3.10
  tomllib = pytest.importorskip("tomli")

import optax_blockada as ob
from optax_blockada import diagnostics, presets, routed, sharding, sparse

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Type aliases carry no docstring of their own; they are documented in _geometry.
NOT_DOCUMENTED_OBJECTS = {"FeatureAxesSpec"}


def _public_objects():
  for name in ob.__all__:
    if name not in NOT_DOCUMENTED_OBJECTS:
      yield f"optax_blockada.{name}", getattr(ob, name)
  for module in (presets, sparse, routed, sharding, diagnostics):
    for name in module.__all__:
      yield f"{module.__name__}.{name}", getattr(module, name)


@pytest.mark.parametrize(("name", "obj"), list(_public_objects()))
def test_every_public_docstring_has_an_example(name, obj):
  doc = inspect.getdoc(obj) or ""
  assert doc, f"{name} has no docstring"
  if inspect.ismodule(obj):
    return
  assert ">>>" in doc, f"{name}'s docstring has no runnable example"


def _readme_python_blocks():
  text = (ROOT / "README.md").read_text()
  return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_has_the_two_commands_first():
  text = (ROOT / "README.md").read_text()
  first_block = re.search(r"```(?:bash|sh)\n(.*?)```", text, flags=re.DOTALL).group(1)
  lines = [line for line in first_block.splitlines() if line.strip()]
  assert "optax_blockada.examples" in lines[0]
  assert "pytest" in lines[1]
  # .ci/run runs exactly the README's test command.
  assert lines[1].strip() in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("index", range(len(_readme_python_blocks())))
def test_readme_python_blocks_run(index):
  code = _readme_python_blocks()[index]
  # README readers run JAX's default (standard) promotion; optax's own schedules are not
  # strict-promotion safe (int32 step counts times floats). Our transforms are tested
  # under strict promotion everywhere else.
  with jax.numpy_dtype_promotion("standard"):
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})


def test_import_works_under_python_OO():
  # -OO strips docstrings; nothing may edit or read them at import.
  modules = ["optax_blockada"] + [
    f"optax_blockada.examples.{name}"
    for name in ("glove", "sgns", "recommender", "rotation", "sparse_glove", "sharded_glove")
  ]
  code = "; ".join(f"import {m}" for m in modules)
  result = subprocess.run(
    [sys.executable, "-OO", "-c", code], capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, result.stderr


def test_version_is_written_once_and_released_in_the_changelog():
  pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
  assert "version" not in pyproject["project"]
  assert pyproject["project"]["dynamic"] == ["version"]
  assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
    "attr": "optax_blockada.__version__"
  }
  assert importlib.metadata.version("optax-blockada") == ob.__version__
  changelog = (ROOT / "CHANGELOG.md").read_text()
  assert "## [Unreleased]" in changelog
  assert f"## [{ob.__version__}] - " in changelog
  license_text = (ROOT / "LICENSE").read_text()
  assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
  assert pyproject["project"]["license"] == "Apache-2.0"


def _documented_names():
  """``module.name`` of every object the API reference pages document."""
  names = set()
  for page in sorted((ROOT / "docs" / "api").glob("*.rst")):
    module = None
    for line in page.read_text().splitlines():
      if m := re.match(r"\.\. currentmodule:: (\S+)", line):
        module = m.group(1)
      elif m := re.match(r"\.\. (?:autofunction|autoclass|py:data):: (\S+)", line):
        names.add(f"{module}.{m.group(1)}")
      elif m := re.match(r"\.\. automodule:: (\S+)", line):
        names.add(m.group(1))
  return names


def test_every_public_name_is_in_the_api_reference():
  documented = _documented_names()
  missing = []
  for name, obj in _public_objects():
    if inspect.ismodule(obj):
      if obj.__name__ not in documented:
        missing.append(obj.__name__)
    elif name not in documented and f"optax_blockada.{name.rsplit('.', 1)[1]}" not in documented:
      missing.append(name)
  missing += [
    f"optax_blockada.{n}" for n in NOT_DOCUMENTED_OBJECTS if f"optax_blockada.{n}" not in documented
  ]
  assert not missing, f"not in docs/api/*.rst: {missing}"
