"""The command line the word-vector examples share (GloVe and SGNS).

:func:`add_common_arguments` adds their common options (corpus, sizes, outputs,
checkpoints), :func:`settings_from_args` resolves the sizes, :func:`load_corpus` reads
the corpus and builds the vocabulary, and :func:`check_output_paths` and
:func:`prepare_checkpoint_dir` check the outputs and ``--resume`` before training; bad
input raises :class:`UsageError`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from optax_blockada.examples import text, word_eval
from optax_blockada.examples._cli import float_in, int_at_least
from optax_blockada.examples.optimizers import OPTIMIZER_NAMES

__all__ = [
  "UsageError",
  "add_common_arguments",
  "check_output_paths",
  "load_corpus",
  "prepare_checkpoint_dir",
  "settings_from_args",
]

_MAX_LEARNING_RATE = 10.0
_LEARNING_RATE = float_in(0, _MAX_LEARNING_RATE, label="learning rates ")


class UsageError(Exception):
  """Bad input found after parsing (a corpus, vocabulary or checkpoint problem).

  Example:
    >>> from optax_blockada.examples.word_cli import UsageError
    >>> str(UsageError("the corpus is empty"))
    'the corpus is empty'
  """


def settings_from_args(
  args: argparse.Namespace,
  defaults: Mapping[str, Any],
  quick: Mapping[str, Any],
) -> dict[str, Any]:
  """The run's sizes: the defaults (or ``--quick``'s) overridden by explicit options.

  Args:
    args: parsed by a parser with :func:`add_common_arguments`.
    defaults: the sizes of a full run.
    quick: the sizes of a ``--quick`` run.

  Returns:
    ``{'dim', 'epochs', 'min_count', 'max_vocab', 'window'}``.

  Example:
    >>> import argparse
    >>> from optax_blockada.examples.word_cli import add_common_arguments, settings_from_args
    >>> full = {"dim": 50, "epochs": 8, "min_count": 5, "max_vocab": None, "window": 10}
    >>> quick = {**full, "dim": 32, "max_vocab": 2000}
    >>> parser = argparse.ArgumentParser()
    >>> add_common_arguments(parser, full, quick)
    >>> args = parser.parse_args(["--quick", "--epochs", "2"])
    >>> settings = settings_from_args(args, full, quick)
    >>> settings["dim"], settings["epochs"]
    (32, 2)
  """
  settings = dict(quick if args.quick else defaults)
  for key in settings:
    if getattr(args, key) is not None:
      settings[key] = getattr(args, key)
  return settings


def load_corpus(
  args: argparse.Namespace, settings: Mapping[str, Any]
) -> tuple[str, text.Vocabulary, text.EncodedCorpus, int]:
  """Reads ``--corpus`` (or the default), builds the vocabulary and checks it is usable.

  Args:
    args: parsed arguments.
    settings: from :func:`settings_from_args`.

  Returns:
    ``(corpus name, vocabulary, encoded corpus, token count)``.

  Raises:
    UsageError: a missing or empty file, a corpus shorter than the window, or a
      vocabulary that covers no evaluation question or pair.

  Example:
    >>> import argparse, pathlib, tempfile
    >>> from optax_blockada.examples import word_cli
    >>> sizes = {"dim": 8, "epochs": 1, "min_count": 5, "max_vocab": None, "window": 10}
    >>> parser = argparse.ArgumentParser()
    >>> word_cli.add_common_arguments(parser, sizes, sizes)
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = pathlib.Path(d) / "c.txt"
    ...   _ = path.write_text("the tiger and the cat\\n" * 3)
    ...   args = parser.parse_args(["--corpus", str(path), "--min-count", "1", "--window", "2"])
    ...   settings = word_cli.settings_from_args(args, sizes, sizes)
    ...   name, vocab, enc, n = word_cli.load_corpus(args, settings)
    >>> vocab.words, n
    (('the', 'and', 'cat', 'tiger'), 15)
  """
  progress = not args.no_progress
  try:
    if args.corpus is None:
      name = "gensim Wikipedia excerpt + Lee corpus"
      documents = text.gensim_corpus(progress=progress)
    else:
      name = os.path.basename(args.corpus)
      documents = text.read_corpus(args.corpus, progress=progress)
    vocab = text.build_vocabulary(
      documents, min_count=settings["min_count"], max_size=settings["max_vocab"]
    )
  except (OSError, ValueError) as e:
    raise UsageError(str(e)) from e
  encoded = text.encode(documents, vocab)
  tokens = sum(map(len, documents))
  if encoded.ids.size <= settings["window"]:
    raise UsageError(
      f"the corpus has {encoded.ids.size} in-vocabulary tokens, not more than the window "
      f"({settings['window']}): use a longer corpus, a smaller --window or --min-count."
    )
  coverage = word_eval.benchmark_coverage(vocab.words)
  if not any(coverage.values()):
    raise UsageError(
      f"the vocabulary ({len(vocab.words)} words) covers no analogy question and no "
      "WordSim-353 or SimLex-999 pair, so the vectors cannot be evaluated: use an English "
      "corpus with common words, or a lower --min-count."
    )
  return name, vocab, encoded, tokens


def add_common_arguments(
  parser: argparse.ArgumentParser,
  defaults: Mapping[str, Any],
  quick: Mapping[str, Any],
) -> None:
  """Adds the options the word-vector examples share (corpus, sizes, outputs, resume).

  Args:
    parser: the parser to extend.
    defaults: the example's sizes (for the help text).
    quick: its ``--quick`` sizes.

  Example:
    >>> import argparse
    >>> from optax_blockada.examples.word_cli import add_common_arguments
    >>> parser = argparse.ArgumentParser()
    >>> sizes = {"dim": 8, "epochs": 1, "min_count": 5, "max_vocab": None, "window": 10}
    >>> add_common_arguments(parser, sizes, sizes)
    >>> parser.parse_args(["--quick"]).quick
    True
  """
  parser.add_argument(
    "--corpus",
    metavar="PATH",
    help="a plain text file, one document a line "
    "(default: gensim's Wikipedia excerpt + Lee corpus)",
  )
  parser.add_argument(
    "--quick", action="store_true", help="a smaller setting (fewer words, epochs and rates)"
  )
  parser.add_argument(
    "--optimizers",
    nargs="+",
    choices=OPTIMIZER_NAMES,
    metavar="NAME",
    help=f"a subset of {', '.join(OPTIMIZER_NAMES)} (default: all)",
  )
  parser.add_argument(
    "--learning-rates",
    nargs="+",
    type=_LEARNING_RATE,
    metavar="LR",
    help=f"rates to try for every optimizer, each in (0, "
    f"{_MAX_LEARNING_RATE:g}] (default: a grid per optimizer)",
  )

  def sizes(key: str) -> str:
    return f"(default: {defaults[key]}; with --quick: {quick[key]})"

  parser.add_argument("--dim", type=int_at_least(1), help=f"vector size d {sizes('dim')}")
  parser.add_argument(
    "--epochs", type=int_at_least(1), help=f"passes over the data per run {sizes('epochs')}"
  )
  parser.add_argument(
    "--min-count", type=int_at_least(1), help=f"smallest word count kept {sizes('min_count')}"
  )
  parser.add_argument(
    "--max-vocab", type=int_at_least(1), help=f"keep at most this many words {sizes('max_vocab')}"
  )
  parser.add_argument("--window", type=int_at_least(1), help=f"context window {sizes('window')}")
  parser.add_argument(
    "--seed",
    type=int_at_least(0),
    default=0,
    help="seed of initialisation, data order and rotation (default: 0)",
  )
  parser.add_argument("--json", metavar="PATH", help="write the results to this JSON file")
  parser.add_argument("--plot", metavar="PATH", help="save the loss curves to this image")
  parser.add_argument(
    "--save-vectors",
    metavar="DIR",
    help="write each optimizer's trained vectors to DIR/<optimizer>.txt (word2vec text "
    "format, for gensim's KeyedVectors.load_word2vec_format)",
  )
  parser.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoint every run here (orbax)")
  parser.add_argument(
    "--checkpoint-every",
    type=int_at_least(1),
    default=1000,
    help="steps between checkpoints (default: %(default)s)",
  )
  parser.add_argument(
    "--resume", action="store_true", help="continue the runs saved in --checkpoint-dir"
  )
  parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_output_paths(args: argparse.Namespace) -> None:
  """Fails early if ``--json``, ``--plot`` or ``--save-vectors`` cannot be written.

  Args:
    args: parsed arguments.

  Raises:
    UsageError: if an output's directory does not exist, or ``--resume`` lacks
      ``--checkpoint-dir``.

  Example:
    >>> import argparse
    >>> from optax_blockada.examples.word_cli import check_output_paths
    >>> check_output_paths(argparse.Namespace(json="/no/such/dir/out.json", plot=None,
    ...                                       resume=False, checkpoint_dir=None))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    optax_blockada.examples.word_cli.UsageError: --json: the directory ... does not exist.
  """
  for option in ("json", "plot"):
    path = getattr(args, option)
    if path is not None:
      directory = os.path.dirname(os.path.abspath(path))
      if not os.path.isdir(directory):
        raise UsageError(f"--{option}: the directory {directory!r} does not exist.")
  if args.resume and args.checkpoint_dir is None:
    raise UsageError("--resume needs --checkpoint-dir (where the runs were saved).")
  save_vectors = getattr(args, "save_vectors", None)
  if save_vectors is not None:
    if os.path.exists(save_vectors) and not os.path.isdir(save_vectors):
      raise UsageError(f"--save-vectors: {save_vectors!r} exists and is not a directory.")
    try:
      os.makedirs(save_vectors, exist_ok=True)
    except OSError as e:
      raise UsageError(f"--save-vectors: cannot create {save_vectors!r}: {e}") from e


def prepare_checkpoint_dir(args: argparse.Namespace) -> None:
  """Checks ``--checkpoint-dir``/``--resume`` before any training.

  A fresh run needs a directory without checkpoints (old ones would be resumed later by
  mistake); ``--resume`` needs checkpoints. The run's settings are stored with the
  checkpoints as orbax metadata and checked when each run resumes
  (:class:`~optax_blockada.examples._checkpoint.Checkpointer`).

  Args:
    args: parsed arguments (``checkpoint_dir``, ``resume``).

  Raises:
    UsageError: if the directory does not fit the request.

  Example:
    >>> import argparse, tempfile
    >>> from optax_blockada.examples.word_cli import prepare_checkpoint_dir
    >>> with tempfile.TemporaryDirectory() as d:
    ...   prepare_checkpoint_dir(argparse.Namespace(checkpoint_dir=d, resume=True))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    optax_blockada.examples.word_cli.UsageError: --resume: no checkpoint in ...
  """
  directory = args.checkpoint_dir
  if directory is None:
    return
  if args.resume:
    if not _has_checkpoints(directory):
      raise UsageError(f"--resume: no checkpoint in {directory!r}; run without --resume.")
    return
  if _has_checkpoints(directory):
    raise UsageError(
      f"--checkpoint-dir {directory!r} already holds checkpoints: add --resume to continue "
      "them, or give an empty directory."
    )
  os.makedirs(directory, exist_ok=True)


def _has_checkpoints(directory: str) -> bool:
  return os.path.isdir(directory) and any(
    name.isdigit() for _, dirs, _ in os.walk(directory) for name in dirs
  )
