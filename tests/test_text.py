"""Tests for the text pipeline: tokens, vocabulary, and GloVe co-occurrence counts."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from optax_blockada.examples import text


def _cooccur_c(documents, index, window, symmetric=True):
  """A literal transcription of GloVe's cooccur.c (its in-memory branch), in float64.

  cooccur.c reads words one at a time; an out-of-vocabulary word is skipped without
  entering the history, a newline resets it (j = 0), and each in-vocabulary word w2 at
  position j pairs with the previous ones w1 = history[k % window] for
  k = j - 1 down to max(0, j - window), adding 1 / (j - k).
  """
  counts = np.zeros((len(index), len(index)), np.float64)
  for doc in documents:
    history = [None] * window
    j = 0
    for word in doc:
      if word not in index:
        continue
      w2 = index[word]
      for k in range(j - 1, max(j - window, 0) - 1, -1):
        w1 = history[k % window]
        counts[w1, w2] += 1.0 / (j - k)
        if symmetric:
          counts[w2, w1] += 1.0 / (j - k)
      history[j % window] = w2
      j += 1
  return counts


def _random_documents(seed, n_docs=7, words=12):
  rng = np.random.default_rng(seed)
  vocab = [f"w{i}" for i in range(words)]
  docs = []
  for _ in range(n_docs):
    length = int(rng.integers(0, 40))
    # Zipf-like: low ids frequent, so some words fall under min_count.
    ids = np.minimum(rng.zipf(1.5, size=length) - 1, words - 1)
    docs.append([vocab[i] for i in ids])
  return docs


@pytest.mark.parametrize("window", [1, 2, 5, 15])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_cooccurrence_equals_cooccur_c(window, symmetric, seed):
  docs = _random_documents(seed)
  vocab = text.build_vocabulary(docs, min_count=2)
  assert len(vocab.words) < 12  # some words are out of vocabulary and are skipped
  expected = _cooccur_c(docs, vocab.index, window, symmetric)
  got = text.cooccurrence(
    text.encode(docs, vocab), len(vocab.words), window=window, symmetric=symmetric
  )
  np.testing.assert_allclose(got.to_dense(), expected, rtol=1e-12, atol=0)
  # Only nonzero entries, sorted by (row, col).
  assert np.all(got.counts > 0)
  keys = got.rows.astype(np.int64) * len(vocab.words) + got.cols
  assert np.all(np.diff(keys) > 0)
  assert got.rows.size == np.count_nonzero(expected)


def test_cooccurrence_on_a_hand_counted_text():
  # "a b a" | "b c": a-b at distance 1 twice, a-a at distance 2; b-c once.
  docs = [["a", "b", "a"], ["b", "c"]]
  vocab = text.build_vocabulary(docs, min_count=1)  # a, b (count 2), c
  got = text.cooccurrence(text.encode(docs, vocab), 3, window=2).to_dense()
  a, b, c = (vocab.index[w] for w in "abc")
  assert got[a, b] == got[b, a] == 2.0
  assert got[a, a] == 2 * 0.5  # both orders of the same pair land on the diagonal
  assert got[b, c] == got[c, b] == 1.0
  assert got[a, c] == got[c, a] == 0.0  # different documents
  assert got.sum() == 2 * 2.0 + 1.0 + 2 * 1.0


def test_out_of_vocabulary_words_do_not_count_as_distance():
  docs = [["a", "rare", "rare2", "b"]]
  vocab = text.build_vocabulary([["a", "b"]], min_count=1)
  got = text.cooccurrence(text.encode(docs, vocab), 2, window=1).to_dense()
  assert got[vocab.index["a"], vocab.index["b"]] == 1.0


def test_tokenize():
  assert text.tokenize("Hello, World! It's 2024: e-mail_me") == [
    "hello",
    "world",
    "it",
    "s",
    "e",
    "mail",
    "me",
  ]
  assert text.tokenize("Ünïcode Straße") == ["ünïcode", "straße"]
  assert text.tokenize("123 ... !!") == []
  with pytest.raises(TypeError, match="text must be a str"):
    text.tokenize(b"bytes")


def test_read_corpus_one_document_per_line(tmp_path):
  path = tmp_path / "c.txt"
  path.write_bytes(b"One two.\n\n  \nthree \xff four\n")
  assert text.read_corpus(path) == [["one", "two"], ["three", "four"]]


def test_read_corpus_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    text.read_corpus(tmp_path / "nope.txt")
  with pytest.raises(FileNotFoundError, match="not a file"):
    text.read_corpus(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"123 456 !!\n"])
def test_read_corpus_without_words(tmp_path, content):
  path = tmp_path / "empty.txt"
  path.write_bytes(content)
  with pytest.raises(ValueError, match="contains no words"):
    text.read_corpus(path)


def test_build_vocabulary_order_min_count_and_max_size():
  docs = [["c", "b", "a", "b"], ["a", "c", "d", "b"]]
  vocab = text.build_vocabulary(docs, min_count=2)
  # b: 3; a, c: 2 (ties by word); d: 1 is dropped.
  assert vocab.words == ("b", "a", "c")
  assert vocab.counts.tolist() == [3, 2, 2]
  assert vocab.index == {"b": 0, "a": 1, "c": 2}
  assert text.build_vocabulary(docs, min_count=1, max_size=2).words == ("b", "a")


def test_build_vocabulary_errors():
  with pytest.raises(ValueError, match="no word occurs min_count=3"):
    text.build_vocabulary([["a", "b"]], min_count=3)
  with pytest.raises(ValueError, match="min_count must be >= 1, got 0"):
    text.build_vocabulary([["a"]], min_count=0)
  with pytest.raises(TypeError, match="max_size must be an int"):
    text.build_vocabulary([["a"]], min_count=1, max_size=2.5)
  with pytest.raises(TypeError, match="min_count must be an int"):
    text.build_vocabulary([["a"]], min_count=True)


def test_encode_drops_unknown_words_and_keeps_document_numbers():
  vocab = text.build_vocabulary([["x", "y", "y"]], min_count=1)
  enc = text.encode([["y", "q"], ["q"], ["x", "y"]], vocab)
  assert enc.ids.dtype == np.int32 and enc.document.dtype == np.int32
  assert enc.ids.tolist() == [0, 1, 0]
  assert enc.document.tolist() == [0, 2, 2]


def test_cooccurrence_errors():
  enc = text.EncodedCorpus(np.array([0, 3], np.int32), np.zeros(2, np.int32))
  with pytest.raises(ValueError, match=r"token ids must be in \[0, vocab_size=3\)"):
    text.cooccurrence(enc, 3)
  with pytest.raises(ValueError, match="window must be >= 1, got 0"):
    text.cooccurrence(enc, 4, window=0)
  bad = text.EncodedCorpus(np.array([0, 1], np.int32), np.zeros(3, np.int32))
  with pytest.raises(ValueError, match="must be 1-D of one length"):
    text.cooccurrence(bad, 3)


def test_cooccurrence_of_a_corpus_shorter_than_the_window_is_empty_or_partial():
  enc = text.EncodedCorpus(np.array([0, 1], np.int32), np.zeros(2, np.int32))
  got = text.cooccurrence(enc, 2, window=10)
  np.testing.assert_array_equal(got.to_dense(), [[0, 1], [1, 0]])
  one = text.cooccurrence(text.EncodedCorpus(np.array([0], np.int32), np.zeros(1, np.int32)), 1)
  assert one.rows.size == 0


def test_gensim_default_corpus():
  pytest.importorskip("gensim")
  docs = text.gensim_corpus()
  tokens = sum(map(len, docs))
  # ~413K Wikipedia tokens after markup stripping plus ~60K in the Lee corpus
  # (gensim's tokenizer also drops 1-letter and >15-letter tokens, ours keeps them):
  # the 406 documents and 529,881 tokens the module and the examples' output state.
  assert (len(docs), tokens) == (406, 529_881)
  assert docs[0][:4] == ["anarchism", "is", "a", "political"]  # the first article's start
  from gensim.test.utils import datapath

  with open(datapath(text.LEE_CORPUS), encoding="utf-8") as f:
    lee = [text.tokenize(line) for line in f]
  assert len(lee) == 300
  assert docs[-300:] == lee  # one document per Lee line, after the articles
  assert len(docs) - 300 > 100  # articles: 206 pages less redirects and short pages
  vocabulary = set().union(*map(set, docs))
  assert {"anarchism", "bushfire", "the"} <= vocabulary
  # Markup is stripped: wiki syntax words such as 'nbsp' or 'thumb' do not survive.
  assert "nbsp" not in vocabulary


def _zip(path, files):
  with zipfile.ZipFile(path, "w") as z:
    for name, content in files.items():
      z.writestr(name, content)
  return path.as_uri()


def test_download_text8_extracts_atomically(tmp_path):
  # A local file:// URL stands in for mattmahoney.net (no network in tests).
  content = " anarchism originated as a term of abuse first used"
  url = _zip(tmp_path / "good.zip", {"text8": content, "README": "other"})
  target = tmp_path / "data"
  path = text.download_text8(target, url=url)
  assert path == target / "text8"
  assert path.read_text() == content
  assert sorted(p.name for p in target.iterdir()) == ["text8"]  # no temporary left
  assert text.read_corpus(path) == [content.split()]
  # Present already: no second download (a bad URL is never opened).
  assert text.download_text8(target, url="file:///nonexistent.zip") == path

  bad = _zip(tmp_path / "bad.zip", {"other/text8": content})
  with pytest.raises(ValueError, match="holds no text8 file"):
    text.download_text8(tmp_path / "data2", url=bad)
  assert list((tmp_path / "data2").iterdir()) == []  # nothing half-written
  not_zip = tmp_path / "page.html"
  not_zip.write_text("<html>moved</html>")
  with pytest.raises(ValueError, match="is not a zip archive"):
    text.download_text8(tmp_path / "data3", url=not_zip.as_uri())
  assert list((tmp_path / "data3").iterdir()) == []
  with pytest.raises(OSError):
    text.download_text8(tmp_path / "data4", url=(tmp_path / "missing.zip").as_uri())
  assert list((tmp_path / "data4").iterdir()) == []
