"""The command line the word-vector examples share (GloVe and SGNS).

:func:`make_parser` makes the parser with the common options, :func:`settings_from_args` resolves
sizes and learning rates, :func:`load_corpus` reads the corpus, and :func:`run` is the
examples' ``main``: input checks, training, the printed table and the files.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from optax_blockada.examples import text, word_eval
from optax_blockada.examples._checkpoint import CheckpointError
from optax_blockada.examples._cli import float_in, int_at_least
from optax_blockada.examples.optimizers import OPTIMIZER_NAMES
from optax_blockada.examples.report import (
  format_rates,
  machine_description,
  save_loss_plot,
  write_json,
)
from optax_blockada.examples.training import format_table

__all__ = [
  "QUICK_NOTE",
  "Corpus",
  "Outcome",
  "UsageError",
  "load_corpus",
  "make_parser",
  "prepare_checkpoint_dir",
  "run",
  "settings_from_args",
]

QUICK_NOTE = (
  "--quick is a smoke test (fewer epochs, one learning rate per optimizer): its scores are "
  "not comparable with a full run's."
)

_MAX_LEARNING_RATE = 10.0
_LEARNING_RATE = float_in(0, _MAX_LEARNING_RATE, label="learning rates ")


class UsageError(Exception):
  """Bad input found after parsing (a corpus, vocabulary or checkpoint problem)."""


def settings_from_args(
  args: argparse.Namespace, defaults: Mapping[str, Any], quick: Mapping[str, Any]
) -> dict[str, Any]:
  """The run's settings: the defaults (or ``--quick``'s) overridden by explicit options.

  ``defaults`` and ``quick`` map each size option (``'dim'``, ``'epochs'``, ...) to its
  value and ``'learning_rates'`` to a grid ``{optimizer: rates}``. The result holds the
  sizes, ``'learning_rates'`` of the chosen optimizers and ``'seed'``.

  Example:
    >>> from optax_blockada.examples.word_cli import make_parser, settings_from_args
    >>> full = {"dim": 50, "epochs": 8, "min_count": 5, "max_vocab": None, "window": 10,
    ...         "batch_size": 64, "learning_rates": {"rowwise": (0.1, 0.2)}}
    >>> quick = {**full, "dim": 32, "learning_rates": {"rowwise": (0.2,)}}
    >>> parser = make_parser("glove", "GloVe", full, quick)
    >>> s = settings_from_args(parser.parse_args(["--quick", "--optimizers", "rowwise"]),
    ...                        full, quick)
    >>> s["dim"], s["epochs"], s["learning_rates"]
    (32, 8, {'rowwise': (0.2,)})
  """
  settings = dict(quick if args.quick else defaults)
  grid = settings.pop("learning_rates")
  for key in settings:
    if getattr(args, key) is not None:
      settings[key] = getattr(args, key)
  names = args.optimizers or OPTIMIZER_NAMES
  settings["learning_rates"] = {n: tuple(args.learning_rates or grid[n]) for n in names}
  settings["seed"] = args.seed
  return settings


class Corpus(NamedTuple):
  """A corpus read for training (:func:`load_corpus`)."""

  name: str  # the file's name, or the default corpus's
  vocab: text.Vocabulary
  encoded: text.EncodedCorpus
  tokens: int  # all tokens, before the vocabulary's cut


Outcome = tuple[list[dict[str, Any]], str, str, dict[str, Any]]
"""What an example's training returns to :func:`run`: the table's rows, what ran (after the
corpus in the header), the legend, and facts about the data for the JSON's ``corpus``."""


def load_corpus(args: argparse.Namespace, settings: Mapping[str, Any]) -> Corpus:
  """Reads ``--corpus`` (or the default), builds the vocabulary and checks it is usable.

  Returns a :class:`Corpus`; raises
  :class:`UsageError` for a missing or empty file, a corpus no longer than the window,
  or a vocabulary that covers no evaluation question or pair.

  Example:
    >>> import argparse, pathlib, tempfile
    >>> from optax_blockada.examples import word_cli
    >>> sizes = {"min_count": 1, "max_vocab": None, "window": 2}
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = pathlib.Path(d) / "c.txt"
    ...   _ = path.write_text("the tiger and the cat\\n" * 3)
    ...   args = argparse.Namespace(corpus=str(path), no_progress=True)
    ...   name, vocab, enc, n = word_cli.load_corpus(args, sizes)
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
  if not any(word_eval.benchmark_coverage(vocab.words).values()):
    raise UsageError(
      f"the vocabulary ({len(vocab.words)} words) covers no analogy question and no "
      "WordSim-353 or SimLex-999 pair, so the vectors cannot be evaluated: use an English "
      "corpus with common words, or a lower --min-count."
    )
  return Corpus(name, vocab, encoded, tokens)


def make_parser(
  module: str, model: str, defaults: Mapping[str, Any], quick: Mapping[str, Any]
) -> argparse.ArgumentParser:
  """The parser of ``python -m optax_blockada.examples.<module>`` with the options the
  word-vector examples share; the sizes' help shows the default and ``--quick`` values.

  Example:
    >>> from optax_blockada.examples.word_cli import make_parser
    >>> sizes = dict.fromkeys(["dim", "epochs", "min_count", "max_vocab", "window",
    ...                        "batch_size"], 1)
    >>> make_parser("glove", "GloVe", sizes, sizes).parse_args(["--quick"]).quick
    True
  """
  parser = argparse.ArgumentParser(
    prog=f"python -m optax_blockada.examples.{module}",
    description=f"Train {model} with each Adagrad variant (a short learning-rate sweep each) "
    "and print one comparison table.",
  )
  add = parser.add_argument
  add("--corpus", metavar="PATH", help="a plain text file, one document a line "
      "(default: gensim's Wikipedia excerpt + Lee corpus)")  # fmt: skip
  add("--quick", action="store_true", help="a smoke test: fewer epochs, one rate each")
  add("--optimizers", nargs="+", choices=OPTIMIZER_NAMES, metavar="NAME",
      help=f"a subset of {', '.join(OPTIMIZER_NAMES)} (default: all)")  # fmt: skip
  add("--learning-rates", nargs="+", type=_LEARNING_RATE, metavar="LR",
      help=f"rates to try for every optimizer, each in (0, {_MAX_LEARNING_RATE:g}] "
      "(default: a grid per optimizer)")  # fmt: skip
  for option, what in (
    ("dim", "vector size d"),
    ("epochs", "passes over the data per run"),
    ("min-count", "smallest word count kept"),
    ("max-vocab", "keep at most this many words"),
    ("window", "context window"),
    ("batch-size", "items per step"),
  ):
    key = option.replace("-", "_")
    sizes = f"(default: {defaults[key]}; with --quick: {quick[key]})"
    add(f"--{option}", type=int_at_least(1), help=f"{what} {sizes}")
  add("--seed", type=int_at_least(0), default=0,
      help="seed of initialisation, data order and rotation (default: 0)")  # fmt: skip
  add("--json", metavar="PATH", help="write the results to this JSON file")
  add("--plot", metavar="PATH", help="save the loss curves to this image")
  add("--save-vectors", metavar="DIR", help="write each optimizer's trained vectors to "
      "DIR/<optimizer>.txt (word2vec text format, for gensim's KeyedVectors)")  # fmt: skip
  add("--checkpoint-dir", metavar="DIR", help="checkpoint every run here (orbax)")
  add("--checkpoint-every", type=int_at_least(1), default=1000,
      help="steps between checkpoints (default: %(default)s)")  # fmt: skip
  add("--resume", action="store_true", help="continue the runs saved in --checkpoint-dir")
  add("--no-progress", action="store_true", help="no progress bars")
  return parser


def run(
  args: argparse.Namespace,
  defaults: Mapping[str, Any],
  quick: Mapping[str, Any],
  train: Callable[[dict, Corpus, dict], Outcome],
  *,
  name: str,
  selection: str,
  ylabel: str,
  extra: Sequence[str] = (),
) -> int:
  """The word-vector examples' ``main``: settings, input checks, training, the report.

  ``train(settings, corpus, options)`` trains every run (``options``: the optimizers,
  learning rates, seed, checkpoint, progress and ``--save-vectors`` options of
  ``compare_optimizers``) and returns an :data:`Outcome`. The settings are
  :func:`settings_from_args`'s plus the options named in ``extra``; they are stored with
  the checkpoints (and ``--corpus``) and in the ``--json`` file. The report prints what
  ran (``details`` after the corpus), the machine and the wall time, :data:`QUICK_NOTE`
  with ``--quick``, the table and the legend, and writes ``--json`` and ``--plot`` (loss
  curves, ``ylabel``). Bad input (:class:`UsageError`, a checkpoint that cannot be
  resumed) prints an error and returns 2.

  Example:
    >>> from optax_blockada.examples import word_cli
    >>> sizes = {"dim": 8, "epochs": 1, "min_count": 1, "max_vocab": None, "window": 2,
    ...          "batch_size": 8, "learning_rates": {}}
    >>> parser = word_cli.make_parser("glove", "GloVe", sizes, sizes)
    >>> args = parser.parse_args(["--corpus", "/no/such/file", "--learning-rates", "0.1"])
    >>> word_cli.run(args, sizes, sizes, None, name="GloVe", selection="", ylabel="")
    2
  """
  start = time.perf_counter()
  settings = settings_from_args(args, defaults, quick)
  settings.update({key: getattr(args, key) for key in extra})
  try:
    corpus = _prepare(args, settings)
    options = {
      "optimizers": tuple(settings["learning_rates"]),
      "learning_rates": settings["learning_rates"],
      "seed": settings["seed"],
      "checkpoint_dir": args.checkpoint_dir,
      "checkpoint_every": args.checkpoint_every,
      "checkpoint_settings": {**settings, "corpus": args.corpus},
      "resume": args.resume,
      "progress": not args.no_progress,
      "save_vectors": args.save_vectors,
    }
    rows, details, legend, facts = train(settings, corpus, options)
  except (UsageError, CheckpointError) as e:
    prefix = "--resume: " if isinstance(e, CheckpointError) else ""
    print(f"error: {prefix}{e}", file=sys.stderr)
    return 2
  seconds = time.perf_counter() - start
  machine = machine_description()
  name, vocab, tokens = f"{name} on {corpus.name}", corpus.vocab, corpus.tokens
  print(
    f"{name}: {tokens:,} tokens, {len(vocab.words):,} words (min count "
    f"{settings['min_count']}){details}, seed {args.seed}.\nBest learning rate per "
    f"optimizer: {selection}; tried {format_rates(settings['learning_rates'])}.\n"
    f"{machine}; total wall time {seconds:.0f} s."
  )
  if args.quick:
    print(QUICK_NOTE)
  print(f"\n{format_table(rows)}\n\n{legend}")
  if args.json is not None:
    facts = {"name": corpus.name, "tokens": tokens, "vocab_size": len(vocab.words), **facts}
    results = {"settings": {**settings, "selection": selection}, "corpus": facts}
    write_json(args.json, {**results, "machine": machine, "seconds": seconds, "results": rows})
  if args.plot is not None:
    title = f"{name} (d={settings['dim']}):\ntraining loss at each optimizer's best rate"
    save_loss_plot(args.plot, rows[1:], title, ylabel)
  return 0


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


def _prepare(args: argparse.Namespace, settings: Mapping[str, Any]) -> Corpus:
  """Checks the outputs and ``--resume`` (creating ``--save-vectors``), then reads the
  corpus: bad input fails before any training."""
  for option in ("json", "plot"):
    path = getattr(args, option)
    if path is not None:
      directory = os.path.dirname(os.path.abspath(path))
      if not os.path.isdir(directory):
        raise UsageError(f"--{option}: the directory {directory!r} does not exist.")
  if args.resume and args.checkpoint_dir is None:
    raise UsageError("--resume needs --checkpoint-dir (where the runs were saved).")
  save_vectors = args.save_vectors
  if save_vectors is not None:
    if os.path.exists(save_vectors) and not os.path.isdir(save_vectors):
      raise UsageError(f"--save-vectors: {save_vectors!r} exists and is not a directory.")
    try:
      os.makedirs(save_vectors, exist_ok=True)
    except OSError as e:
      raise UsageError(f"--save-vectors: cannot create {save_vectors!r}: {e}") from e
  loaded = load_corpus(args, settings)
  prepare_checkpoint_dir(args)
  return loaded
