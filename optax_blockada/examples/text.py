"""The word-vector examples' input pipeline: corpora, vocabulary, GloVe's co-occurrences.

A corpus is a list of documents, each a list of lower-case tokens; a text file gives one
document per line (a newline ends a document, as in ``cooccur.c``). The offline default,
:func:`gensim_corpus`, is the English text in gensim's wheel. :func:`build_vocabulary`,
:func:`encode` and :func:`cooccurrence` follow ``vocab_count.c`` and ``cooccur.c``.
"""

from __future__ import annotations

import bz2
import collections
import os
import pathlib
import re
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from optax_blockada.examples._cli import check_int

__all__ = [
  "TEXT8_URL",
  "Cooccurrence",
  "EncodedCorpus",
  "Vocabulary",
  "build_vocabulary",
  "cooccurrence",
  "download_text8",
  "encode",
  "gensim_corpus",
  "pad_batch",
  "read_corpus",
  "tokenize",
]

WIKI_EXCERPT = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
"""The Wikipedia excerpt in gensim's test data (``gensim.test.utils.datapath``)."""

LEE_CORPUS = "lee_background.cor"
"""The Lee news corpus in gensim's test data."""

TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
"""text8: the first 10^8 characters of a cleaned 2006 English Wikipedia dump (Matt Mahoney),
one line of about 17M lower-case tokens; the corpus of GloVe's and word2vec's demo scripts."""

_WORD = re.compile(r"[^\W\d_]+")

Corpus = list[list[str]]


def tokenize(text: str) -> list[str]:
  """The maximal runs of Unicode letters of ``text``, lower-cased (gensim's
  ``PAT_ALPHABETIC``): digits, punctuation and underscores separate tokens.
  """
  if not isinstance(text, str):
    raise TypeError(f"text must be a str, got {type(text).__name__}.")
  return _WORD.findall(text.lower())


def read_corpus(path: str | os.PathLike, *, progress: bool = False) -> Corpus:
  """Reads a UTF-8 text file, one document per line (:func:`tokenize`; lines without
  tokens dropped, undecodable bytes replaced); raises ``FileNotFoundError`` for a missing
  file and ``ValueError`` for one without words.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"corpus file {path!r} does not exist (or is not a file).")
  documents = []
  size = os.path.getsize(path)
  with (
    open(path, "rb") as f,
    tqdm(total=size, unit="B", unit_scale=True, desc="reading", disable=not progress) as bar,
  ):
    for line in f:
      bar.update(len(line))
      tokens = tokenize(line.decode("utf-8", errors="replace"))
      if tokens:
        documents.append(tokens)
  if not documents:
    raise ValueError(
      f"corpus file {path!r} contains no words ({size} bytes); give a plain text file "
      "with one document per line."
    )
  return documents


def download_text8(directory: str | os.PathLike, *, url: str = TEXT8_URL) -> pathlib.Path:
  """Downloads and extracts ``directory/text8`` (100 MB, one line) unless it exists; returns
  its path. The file appears only when complete."""
  directory = pathlib.Path(directory).expanduser()
  target = directory / "text8"
  if target.is_file():
    return target
  directory.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=directory, prefix=".text8-download-") as tmp:
    archive = pathlib.Path(tmp) / "text8.zip"
    urllib.request.urlretrieve(url, archive)
    if not zipfile.is_zipfile(archive):
      raise ValueError(f"the download from {url} is not a zip archive.")
    with zipfile.ZipFile(archive) as z:
      if "text8" not in z.namelist():
        raise ValueError(f"the archive from {url} holds no text8 file.")
      os.replace(z.extract("text8", tmp), target)
  return target


def gensim_corpus(*, progress: bool = False) -> Corpus:
  """The offline default corpus (needs gensim): the articles of gensim's Wikipedia excerpt
  (pages skipped as ``WikiCorpus`` does), then the Lee news corpus; 529,881 tokens."""
  try:
    from gensim.corpora.wikicorpus import (
      ARTICLE_MIN_WORDS,
      IGNORED_NAMESPACES,
      extract_pages,
      filter_wiki,
    )
    from gensim.test.utils import datapath
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
      "the default corpus needs gensim (pip install gensim); or pass a text file with --corpus."
    ) from e
  documents = []
  with bz2.open(datapath(WIKI_EXCERPT), "rb") as f:
    for title, text, _ in tqdm(extract_pages(f), desc="wikipedia pages", disable=not progress):
      if any(title.startswith(ns + ":") for ns in IGNORED_NAMESPACES):
        continue
      tokens = tokenize(filter_wiki(text))
      if len(tokens) >= ARTICLE_MIN_WORDS:  # shorter ones are mostly redirects
        documents.append(tokens)
  return documents + read_corpus(datapath(LEE_CORPUS))


class Vocabulary(NamedTuple):
  """Words kept for training, most frequent first."""

  words: tuple[str, ...]  # id -> word, by decreasing count (ties by word)
  counts: np.ndarray  # shape=(V,), int64, corpus counts
  index: dict[str, int]  # word -> id


def build_vocabulary(
  documents: Iterable[Sequence[str]], *, min_count: int = 5, max_size: int | None = None
) -> Vocabulary:
  """The words occurring at least ``min_count`` times, by decreasing count, ties by the
  word (``vocab_count.c``'s order), at most ``max_size`` of them; ``ValueError`` if none.
  """
  min_count = check_int("min_count", min_count, 1)
  if max_size is not None:
    max_size = check_int("max_size", max_size, 1)
  counter = collections.Counter(word for doc in documents for word in doc)
  kept = sorted(
    ((w, c) for w, c in counter.items() if c >= min_count), key=lambda wc: (-wc[1], wc[0])
  )
  if max_size is not None:
    kept = kept[:max_size]
  if not kept:
    most = counter.most_common(1)
    raise ValueError(
      f"no word occurs min_count={min_count} times (the most frequent: {most}); "
      "lower min_count or use a larger corpus."
    )
  words = tuple(w for w, _ in kept)
  counts = np.array([c for _, c in kept], dtype=np.int64)
  return Vocabulary(words, counts, {w: i for i, w in enumerate(words)})


class EncodedCorpus(NamedTuple):
  """In-vocabulary token ids of a corpus, with the document of each token."""

  ids: np.ndarray  # shape=(T,), int32, out-of-vocabulary tokens dropped
  document: np.ndarray  # shape=(T,), int32, document number of each token


def encode(documents: Iterable[Sequence[str]], vocab: Vocabulary) -> EncodedCorpus:
  """Maps tokens to ids, dropping out-of-vocabulary tokens (documents keep their numbers)."""
  index = vocab.index
  ids, lengths = [], []
  for doc in documents:
    kept = [index[w] for w in doc if w in index]
    ids.extend(kept)
    lengths.append(len(kept))
  document = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
  return EncodedCorpus(np.asarray(ids, dtype=np.int32).reshape(-1), document)


class Cooccurrence(NamedTuple):
  """Sparse co-occurrence counts ``X[rows[n], cols[n]] = counts[n]``, sorted by (row, col)."""

  rows: np.ndarray  # shape=(nnz,), int32, the word (centre) id
  cols: np.ndarray  # shape=(nnz,), int32, the context id
  counts: np.ndarray  # shape=(nnz,), float64, summed 1/distance weights (> 0)
  vocab_size: int  # V: ids are in [0, V)

  def to_dense(self) -> np.ndarray:
    """The ``(V, V)`` float64 matrix (for small vocabularies and tests)."""
    dense = np.zeros((self.vocab_size, self.vocab_size), np.float64)
    dense[self.rows, self.cols] = self.counts
    return dense


def _reduce(
  keys: np.ndarray, values: np.ndarray, kind: str = "stable"
) -> tuple[np.ndarray, np.ndarray]:
  """Sums ``values`` over equal ``keys``; returns sorted unique keys and the sums."""
  order = np.argsort(keys, kind=kind)
  keys, values = keys[order], values[order]
  if keys.size == 0:
    return keys, values
  starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
  return keys[starts], np.add.reduceat(values, starts)


def cooccurrence(
  corpus: EncodedCorpus,
  vocab_size: int,
  *,
  window: int = 10,
  symmetric: bool = True,
  progress: bool = False,
) -> Cooccurrence:
  r"""GloVe's co-occurrence counts, as ``cooccur.c`` computes them.

  Two in-vocabulary tokens ``a`` (earlier) and ``b`` of one document at distance
  :math:`1 \le k \le` ``window`` (out-of-vocabulary tokens dropped first) add
  :math:`1/k` to :math:`X_{ab}` and, if ``symmetric`` (``-symmetric 1``), to
  :math:`X_{ba}`. Per distance, the keys ``a V + b`` are summed by a sort and
  ``np.add.reduceat`` in float64 (``cooccur.c``'s ``real``).
  """
  vocab_size = check_int("vocab_size", vocab_size, 1)
  window = check_int("window", window, 1)
  ids = np.asarray(corpus.ids)
  document = np.asarray(corpus.document)
  if ids.shape != document.shape or ids.ndim != 1:
    raise ValueError(
      f"corpus.ids and corpus.document must be 1-D of one length, got "
      f"{ids.shape} and {document.shape}."
    )
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    raise ValueError(
      f"token ids must be in [0, vocab_size={vocab_size}), got [{ids.min()}, {ids.max()}]."
    )
  ids64 = ids.astype(np.int64)
  keys, values = np.zeros(0, np.int64), np.zeros(0, np.float64)
  for k in tqdm(range(1, window + 1), desc="co-occurrences", disable=not progress):
    if k >= ids.size:
      break
    same = document[:-k] == document[k:]
    a, b = ids64[:-k][same], ids64[k:][same]
    new_keys = a * vocab_size + b
    if symmetric:
      new_keys = np.concatenate((new_keys, b * vocab_size + a))
    # All values are 1/k here, so the faster unstable sort gives the same sums.
    new_keys, new_values = _reduce(new_keys, np.full(new_keys.shape, 1.0 / k), "quicksort")
    # Merge into the running total: memory stays at the number of distinct pairs, and the
    # stable sort of two sorted runs is a linear merge.
    keys, values = _reduce(np.concatenate((keys, new_keys)), np.concatenate((values, new_values)))
  rows = (keys // vocab_size).astype(np.int32)
  cols = (keys % vocab_size).astype(np.int32)
  return Cooccurrence(rows, cols, values.astype(np.float64), vocab_size)


def pad_batch(batch: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Pads a batch's arrays with zeros along axis 0 to ``size`` rows, so that a short batch
  keeps the compiled shape (its padding must cost nothing, e.g. a weight of 0)."""
  return {k: np.pad(v, [(0, size - len(v))] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}
