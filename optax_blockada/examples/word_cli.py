"""The command line GloVe and SGNS share: options, settings, corpus and report (:func:`run`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from optax_blockada.examples import report, text, word_eval
from optax_blockada.examples._checkpoint import CheckpointError
from optax_blockada.examples._cli import float_in, int_at_least
from optax_blockada.examples.optimizers import OPTIMIZER_NAMES
from optax_blockada.examples.training import format_table

__all__ = [
  "QUICK_NOTE",
  "Corpus",
  "Outcome",
  "UsageError",
  "load_corpus",
  "make_parser",
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
  """The defaults (or ``--quick``'s) overridden by explicit options, with ``'seed'`` and
  ``'learning_rates'`` (``{optimizer: rates}``) of the chosen optimizers."""
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
  """Reads ``--corpus`` (or the default) and its vocabulary; :class:`UsageError` if unusable."""
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
  """The parser of ``python -m optax_blockada.examples.<module>`` with the shared options."""
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
  """The examples' ``main``: 0 on success, 2 on bad input (an error printed).

  ``train(settings, corpus, options)`` returns an :data:`Outcome`; ``options`` are the
  keyword arguments of ``compare_optimizers``. The settings (plus the options in ``extra``)
  are stored with the checkpoints and in the ``--json`` file.
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
  machine = report.machine_description()
  name, vocab, tokens = f"{name} on {corpus.name}", corpus.vocab, corpus.tokens
  print(
    f"{name}: {tokens:,} tokens, {len(vocab.words):,} words (min count "
    f"{settings['min_count']}){details}, seed {args.seed}.\nBest learning rate per "
    f"optimizer: {selection}; tried {report.format_rates(settings['learning_rates'])}.\n"
    f"{machine}; total wall time {seconds:.0f} s."
  )
  if args.quick:
    print(QUICK_NOTE)
  print(f"\n{format_table(rows)}\n\n{legend}")
  if args.json is not None:
    facts = {"name": corpus.name, "tokens": tokens, "vocab_size": len(vocab.words), **facts}
    results = {"settings": {**settings, "selection": selection}, "corpus": facts}
    report.write_json(
      args.json, {**results, "machine": machine, "seconds": seconds, "results": rows}
    )
  if args.plot is not None:
    title = f"{name} (d={settings['dim']}):\ntraining loss at each optimizer's best rate"
    report.save_loss_plot(args.plot, rows[1:], title, ylabel)
  return 0


def _prepare(args: argparse.Namespace, settings: Mapping[str, Any]) -> Corpus:
  """Checks the output paths, reads the corpus and checks ``--checkpoint-dir``: bad input
  fails before any training."""
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
  corpus = load_corpus(args, settings)
  directory = args.checkpoint_dir
  if directory is not None:  # a fresh run must not mix with old checkpoints
    found = os.path.isdir(directory) and any(
      name.isdigit() for _, dirs, _ in os.walk(directory) for name in dirs
    )
    if args.resume and not found:
      raise UsageError(f"--resume: no checkpoint in {directory!r}; run without --resume.")
    if found and not args.resume:
      raise UsageError(
        f"--checkpoint-dir {directory!r} already holds checkpoints: add --resume to continue "
        "them, or give an empty directory."
      )
    os.makedirs(directory, exist_ok=True)
  return corpus
