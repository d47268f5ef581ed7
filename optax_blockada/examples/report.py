"""What the examples print and write: markdown tables, JSON and plot files, machine facts.

One layer for every example (and the benchmarks): a tqdm bar per run (run counter in its
description, loss as postfix), files written atomically with the user's umask.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import platform
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

__all__ = [
  "format_number",
  "format_rates",
  "machine_description",
  "machine_facts",
  "markdown_table",
  "progress_bar",
  "save_loss_plot",
  "save_word2vec",
  "write_atomically",
  "write_json",
]

_ALIGN = {"l": "---", "r": "---:"}


def markdown_table(header: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> str:
  """A markdown table of formatted cells; ``align`` has ``'l'`` or ``'r'`` per column."""
  if len(align) != len(header) or set(align) - set(_ALIGN):
    raise ValueError(f"align must have one of 'l'/'r' per column ({len(header)}), got {align!r}.")

  def line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"

  return "\n".join([line(header), line([_ALIGN[a] for a in align]), *map(line, rows)])


def progress_bar(what: str, run: int, runs: int, total: int, *, enabled: bool = True) -> tqdm:
  """The examples' progress bar for run ``run`` of ``runs``: ``total`` steps, on stderr."""
  return tqdm(total=total, desc=f"{what} (run {run} of {runs})", disable=not enabled, leave=False)


def format_number(value: Any, spec: str, *, missing: str = "n/a") -> str:
  """``format(value, spec)``, with ``'-'`` for ``None`` and ``missing`` for NaN/infinity."""
  if value is None:
    return "-"
  if isinstance(value, float) and not math.isfinite(value):
    return missing
  return format(value, spec)


def format_rates(rates: Mapping[str, Sequence[float]]) -> str:
  """The learning rates tried per optimizer, on one line."""
  return "; ".join(f"{n}: {', '.join(f'{r:g}' for r in rs)}" for n, rs in rates.items())


def write_atomically(path: str, write: Callable[[str], None]) -> None:
  """Calls ``write(tmp)`` on a temporary file next to ``path``, then renames it to ``path``.

  A crash leaves the old file or the new one, never half of one; the file gets the
  permissions of a plain ``open(path, 'w')`` (``0o666`` less the umask), not ``0o600``.
  """
  directory = os.path.dirname(os.path.abspath(path))
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
  os.close(fd)
  umask = os.umask(0)
  os.umask(umask)
  try:
    write(tmp)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, payload: Any) -> None:
  """Writes ``payload`` as indented JSON (NaN allowed) and a newline, atomically."""
  text = json.dumps(payload, indent=2, allow_nan=True) + "\n"
  write_atomically(path, lambda tmp: pathlib.Path(tmp).write_text(text, encoding="utf-8"))


def save_loss_plot(path: str, rows: Sequence[Mapping[str, Any]], title: str, ylabel: str) -> None:
  """Plots each row's ``epoch_losses`` (by ``optimizer`` and ``learning_rate``) to ``path``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  fig, ax = plt.subplots(figsize=(8, 5))
  for r in rows:
    if r["epoch_losses"]:
      epochs = np.arange(1, len(r["epoch_losses"]) + 1)
      ax.plot(
        epochs, r["epoch_losses"], marker="o", label=f"{r['optimizer']} (lr {r['learning_rate']:g})"
      )
  ax.set(yscale="log", xlabel="epoch (passes over the training data)", ylabel=ylabel)
  ax.set_title(title, fontsize=11)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  try:
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120))
  finally:
    plt.close(fig)


def save_word2vec(path: str, words: Sequence[str], vectors: Any) -> None:
  """Writes ``vectors`` (row ``i`` is ``words[i]``) in word2vec's text format, atomically,
  with gensim: ``KeyedVectors.load_word2vec_format(path)`` reads them back (float32).
  """
  from gensim.models import KeyedVectors

  vectors = np.asarray(vectors, np.float32)
  kv = KeyedVectors(vector_size=vectors.shape[1], dtype=np.float32)
  kv.add_vectors(list(words), vectors)
  # gensim writes in descending order of a per-word attribute: keep the vocabulary's order.
  for i, word in enumerate(words):
    kv.set_vecattr(word, "rank", len(words) - i)
  write_atomically(path, lambda tmp: kv.save_word2vec_format(tmp, binary=False, sort_attr="rank"))


def _cpu_name() -> str:
  """The CPU's model name from ``/proc/cpuinfo``, else what :mod:`platform` knows."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
  except OSError:
    names = []
  return names[0] if names else platform.processor() or platform.machine()


def machine_description() -> str:
  """One line naming the machine: CPU, core count, jax version and backend, date."""
  return (
    f"{_cpu_name()}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()}, "
    f"{datetime.date.today().isoformat()}"
  )


def machine_facts(**extra: Any) -> dict[str, Any]:
  """The machine and versions a run or benchmark ran on, plus ``extra`` entries (for JSON)."""
  return {
    "platform": platform.platform(),
    "processor": platform.processor() or platform.machine(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "optax": optax.__version__,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    **extra,
  }
