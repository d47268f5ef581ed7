"""The Colab notebooks in colabs/: in sync with their text form, well formed, and they run.

Each notebook is a pair: ``colabs/NAME.py`` (jupytext ``py:percent``, the reviewed
source) and ``colabs/NAME.ipynb`` (what Colab opens), kept in sync with
``jupytext --sync colabs/NAME.py``. The execution test runs the ``.ipynb`` top to bottom
in a fresh Jupyter kernel with ``CI=true``, so each notebook's parameters cell picks its
small settings; a failing cell fails the test with the cell's traceback. Every figure the
notebook renders must have a title and labelled axes.
"""

import json
import os
import pathlib
import re

import pytest

# The notebook tools come with the test extra; a machine without them (a GPU machine
# that runs `pytest -m "not notebooks"`) skips this module.
jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

pytestmark = pytest.mark.notebooks

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLABS = ROOT / "colabs"
REPOSITORY = "optax-blockada/optax-blockada"
NOTEBOOKS = (
  "01_quick_start",
  "02_basis_dependence",
  "03_rare_features",
  "04_glove",
  "05_recommender",
  "06_scale",
)
MAX_IPYNB_BYTES = 300_000
CELL_TIMEOUT_S = 600

# Runs first in the kernel: every figure that is rendered (shown inline or saved) is
# checked for a title and labelled axes.
FIGURE_CHECK = """
import matplotlib.backend_bases as _backend_bases

_figure_problems, _figures_drawn = [], []
_print_figure = _backend_bases.FigureCanvasBase.print_figure


def _labelled(fig):
  suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
  for i, ax in enumerate(fig.axes):
    if hasattr(ax, "_colorbar") or not (ax.has_data() or ax.images or ax.tables):
      continue
    if ax.tables:  # a table drawn as a figure needs only a title
      if not (ax.get_title() or suptitle):
        yield f"axes {i} (a table) has no title"
      continue
    if not (ax.get_title() or suptitle):
      yield f"axes {i} has no title (nor has the figure)"
    if not ax.get_xlabel():
      yield f"axes {i} ({ax.get_title()!r}) has no x label"
    if not ax.get_ylabel():
      yield f"axes {i} ({ax.get_title()!r}) has no y label"


def _checked_print_figure(self, *args, **kwargs):
  _figures_drawn.append(self.figure)
  _figure_problems.extend(_labelled(self.figure))
  return _print_figure(self, *args, **kwargs)


_backend_bases.FigureCanvasBase.print_figure = _checked_print_figure
"""

FIGURE_ASSERT = """
assert _figures_drawn, "the notebook drew no figure"
assert not _figure_problems, _figure_problems
"""


def _cells(nb):
  return [
    (cell.cell_type, cell.source.strip(), tuple(cell.metadata.get("tags", ()))) for cell in nb.cells
  ]


def test_the_notebooks_are_the_listed_pairs():
  assert sorted(p.stem for p in COLABS.glob("*.py")) == list(NOTEBOOKS)
  assert sorted(p.stem for p in COLABS.glob("*.ipynb")) == list(NOTEBOOKS)
  # The repository the badges and install cells point at is the project's own.
  assert f"https://github.com/{REPOSITORY}" in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_ipynb_is_in_sync_with_its_text_form(name):
  text_form = jupytext.read(COLABS / f"{name}.py")
  raw = (COLABS / f"{name}.ipynb").read_bytes()
  notebook = nbformat.reads(raw.decode(), as_version=4)
  nbformat.validate(notebook)
  assert _cells(notebook) == _cells(text_form), (
    f"colabs/{name}.ipynb differs from colabs/{name}.py: run `jupytext --sync colabs/{name}.py`"
  )
  # Regenerating the text form from the notebook gives the committed file back.
  assert jupytext.writes(notebook, fmt="py:percent") == (COLABS / f"{name}.py").read_text()
  assert len(raw) < MAX_IPYNB_BYTES
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, (
        f"colabs/{name}.ipynb carries outputs: commit it without them (jupytext --sync does)"
      )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_layout(name):
  cells = jupytext.read(COLABS / f"{name}.py").cells
  badge = (
    "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    f"(https://colab.research.google.com/github/{REPOSITORY}/blob/main/colabs/{name}.ipynb)"
  )
  assert cells[0].cell_type == "markdown" and cells[0].source.startswith(badge)
  code = [cell for cell in cells if cell.cell_type == "code"]
  # The first code cell installs the package on Colab only, from this repository.
  install = code[0].source
  assert 'if "google.colab" in sys.modules:' in install
  assert f"git+https://github.com/{REPOSITORY}" in install
  for cell in code[1:]:
    assert "pip" not in cell.source, "installs belong in the first, Colab-only, cell"
  # The second is the parameters cell; it picks small settings under CI=true.
  parameters = code[1]
  assert "parameters" in parameters.metadata.get("tags", ())
  assert re.search(r"os\.environ\.get\(\"CI\"", parameters.source)
  assert sum(cell.cell_type == "markdown" for cell in cells) >= 4, "explain what to look at"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_ci_settings(name, tmp_path, monkeypatch):
  notebook = nbformat.read(COLABS / f"{name}.ipynb", as_version=4)
  notebook.cells.insert(0, nbformat.v4.new_code_cell(FIGURE_CHECK))
  notebook.cells.append(nbformat.v4.new_code_cell(FIGURE_ASSERT))
  monkeypatch.setenv("CI", "true")
  # The kernel imports the package from this checkout even without `pip install -e`.
  monkeypatch.setenv(
    "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
  )
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  client = NotebookClient(
    notebook,
    timeout=CELL_TIMEOUT_S,
    kernel_name="python3",
    resources={"metadata": {"path": str(tmp_path)}},
  )
  client.execute()
  # Keep the executed notebook for a look when something is off (pytest's tmp_path).
  (tmp_path / f"{name}.executed.ipynb").write_text(json.dumps(notebook))
