"""Word-vector evaluation: analogies (3CosAdd) and word-similarity Spearman correlations.

On the files in gensim's wheel: word2vec's 19,544 analogy questions, WordSim-353 and
SimLex-999, lower-cased. The numbers agree with gensim's ``evaluate_word_analogies``
(``case_insensitive=True``) and ``evaluate_word_pairs``, which the tests check.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.stats

__all__ = [
  "ANALOGIES",
  "SIMILARITY_BENCHMARKS",
  "AnalogySection",
  "WordPairs",
  "analogy_accuracy",
  "benchmark_coverage",
  "evaluate",
  "load_analogies",
  "load_word_pairs",
  "similarity_spearman",
]

ANALOGIES = "questions-words.txt"
"""word2vec's analogy questions, in gensim's test data."""

SIMILARITY_BENCHMARKS = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}
"""Short name -> file in gensim's test data."""


def _datapath(name: str) -> str:
  try:
    from gensim.test.utils import datapath
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
      f"the evaluation file {name!r} comes with gensim: pip install gensim, or pass a path."
    ) from e
  return datapath(name)


class AnalogySection(NamedTuple):
  """One section of an analogy file: ``a : b :: c : d`` questions."""

  name: str  # e.g. 'capital-common-countries' or 'gram1-adjective-to-adverb'
  questions: tuple[tuple[str, str, str, str], ...]  # (a, b, c, expected), lower-case

  @property
  def semantic(self) -> bool:
    """word2vec's split: sections whose name starts with ``gram`` are syntactic."""
    return not self.name.startswith("gram")


def load_analogies(path: str | os.PathLike | None = None) -> list[AnalogySection]:
  """Reads an analogy file in word2vec's format (``: section`` headers, 4 words a line;
  default: gensim's ``questions-words.txt``), words lower-cased."""
  path = _datapath(ANALOGIES) if path is None else os.fspath(path)
  sections: list[tuple[str, list]] = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      words = line.lower().split()
      if line.startswith(": "):
        sections.append((line[2:].strip(), []))
      elif words and (not sections or len(words) != 4):
        raise ValueError(
          f"{path}:{number}: expected a ': section' header first, then lines of 4 words; "
          f"got {line.strip()!r}."
        )
      elif words:
        sections[-1][1].append(tuple(words))
  return [AnalogySection(name, tuple(questions)) for name, questions in sections]


class WordPairs(NamedTuple):
  """Word pairs with human similarity scores."""

  pairs: tuple[tuple[str, str], ...]  # lower-case
  scores: np.ndarray  # shape=(n,), float64, human judgements


def load_word_pairs(name: str | os.PathLike) -> WordPairs:
  """Reads a word-similarity file (``word1<TAB>word2<TAB>score``, ``#`` comments):
  ``'wordsim353'``, ``'simlex999'`` (gensim's files) or a path."""
  named = name in SIMILARITY_BENCHMARKS
  path = _datapath(SIMILARITY_BENCHMARKS[name]) if named else os.fspath(name)
  pairs, scores = [], []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if line.startswith("#") or not line.strip():
        continue
      fields = line.lower().split("\t")
      try:
        pairs.append((fields[0].strip(), fields[1].strip()))
        scores.append(float(fields[2]))
      except (IndexError, ValueError):
        raise ValueError(
          f"{path}:{number}: expected 'word1<TAB>word2<TAB>score', got {line.strip()!r}."
        ) from None
  return WordPairs(tuple(pairs), np.asarray(scores, np.float64))


def _check_vectors(vectors: Any, words: Sequence[str]) -> np.ndarray:
  vectors = np.asarray(vectors, dtype=np.float32)
  if vectors.ndim != 2 or vectors.shape[0] != len(words):
    raise ValueError(
      f"vectors must have shape (len(words), d) = ({len(words)}, d), got {vectors.shape}."
    )
  if not np.all(np.isfinite(vectors)):
    raise ValueError("vectors contain NaN or infinity; the model diverged.")
  return vectors


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  return vectors / np.where(norms > 0, norms, 1)


def analogy_accuracy(
  vectors: Any,
  words: Sequence[str],
  sections: Sequence[AnalogySection] | None = None,
  *,
  batch_size: int = 2048,
) -> dict[str, float | int]:
  r"""Analogy accuracy by 3CosAdd with the query words masked, as word2vec and gensim.

  With unit rows :math:`\hat v`, the answer to ``a : b :: c : ?`` is
  :math:`\arg\max_{w \notin \{a, b, c\}} \hat v_w^\top (\hat v_b - \hat v_a + \hat v_c)`.
  Only questions with all four words in ``words`` are asked (``'coverage'``); an accuracy
  with no question asked is NaN.
  """
  vectors = _check_vectors(vectors, words)
  sections = load_analogies() if sections is None else sections
  index = {w: i for i, w in enumerate(words)}
  unit = _unit_rows(vectors)
  asked, correct = {True: 0, False: 0}, {True: 0, False: 0}  # by section.semantic
  for section in sections:
    known = [q for q in section.questions if all(w in index for w in q)]
    ids = np.array([[index[w] for w in q] for q in known], dtype=np.int64)
    for start in range(0, len(ids), batch_size):
      chunk = ids[start : start + batch_size]
      a, b, c, expected = chunk.T
      scores = (unit[b] - unit[a] + unit[c]) @ unit.T
      scores[np.arange(len(chunk))[:, None], chunk[:, :3]] = -np.inf  # not a, b or c
      predicted = np.argmax(scores, axis=1)
      asked[section.semantic] += len(chunk)
      correct[section.semantic] += int(np.sum(predicted == expected))

  def ratio(num: int, den: int) -> float:
    return num / den if den else math.nan

  n_asked = asked[True] + asked[False]
  n_correct = correct[True] + correct[False]
  return {
    "semantic": ratio(correct[True], asked[True]),
    "syntactic": ratio(correct[False], asked[False]),
    "total": ratio(n_correct, n_asked),
    "coverage": ratio(n_asked, sum(len(section.questions) for section in sections)),
    "asked": n_asked,
    "correct": n_correct,
  }


def similarity_spearman(
  vectors: Any, words: Sequence[str], pairs: WordPairs | str
) -> dict[str, float | int]:
  """Spearman correlation of cosine similarities with human scores (``pairs``, or a name for
  :func:`load_word_pairs`); pairs with an unknown word are skipped, as gensim does."""
  vectors = _check_vectors(vectors, words)
  if not isinstance(pairs, WordPairs):
    pairs = load_word_pairs(pairs)
  index = {w: i for i, w in enumerate(words)}
  known = [n for n, (u, v) in enumerate(pairs.pairs) if u in index and v in index]
  coverage = len(known) / len(pairs.pairs) if pairs.pairs else math.nan
  if len(known) < 2:
    return {"spearman": math.nan, "coverage": coverage, "pairs": len(known)}
  unit = _unit_rows(vectors.astype(np.float64))
  u, v = np.array([[index[w] for w in pairs.pairs[n]] for n in known]).T
  cosine = np.sum(unit[u] * unit[v], axis=1)
  rho = scipy.stats.spearmanr(cosine, pairs.scores[known]).statistic
  return {"spearman": float(rho), "coverage": coverage, "pairs": len(known)}


def benchmark_coverage(words: Sequence[str]) -> dict[str, int]:
  """How many analogy questions and similarity pairs a vocabulary can answer."""
  known = set(words)
  questions = [q for section in load_analogies() for q in section.questions]
  out = {"analogy": sum(known.issuperset(q) for q in questions)}
  for name in SIMILARITY_BENCHMARKS:
    out[name] = sum(known.issuperset(pair) for pair in load_word_pairs(name).pairs)
  return out


def evaluate(
  vectors: Any, words: Sequence[str], *, sections: Sequence[AnalogySection] | None = None
) -> dict[str, float | int]:
  """All benchmarks of ``vectors`` (row ``i`` for ``words[i]``) as one flat dict."""
  analogy = analogy_accuracy(vectors, words, sections)
  out: dict[str, float | int] = {
    f"analogy_{key}": analogy[key] for key in ("semantic", "syntactic", "total", "coverage")
  }
  for name in SIMILARITY_BENCHMARKS:
    result = similarity_spearman(vectors, words, name)
    out[name] = result["spearman"]
    out[f"{name}_coverage"] = result["coverage"]
  return out
