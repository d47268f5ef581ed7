"""Tests for the word-vector evaluators, against brute force and against gensim's."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optax_blockada.examples import word_eval

gensim = pytest.importorskip("gensim")
from gensim.models import KeyedVectors  # noqa: E402
from gensim.test.utils import datapath  # noqa: E402


def _analogy_words(sections, per_section=12):
  words = []
  for section in sections:
    for q in section.questions[:per_section]:
      words.extend(q)
  return list(dict.fromkeys(words))


def _planted_vectors(words, sections, seed, dim=16):
  """Random vectors plus a shared offset per section, so some answers are right."""
  rng = np.random.default_rng(seed)
  vectors = {w: rng.normal(size=dim) for w in words}
  for n, section in enumerate(sections):
    offset = rng.normal(size=dim) * 1.5
    for a, b, _, _ in section.questions[:12]:
      if n % 2 == 0:
        vectors[b] = vectors[a] + offset + 0.3 * rng.normal(size=dim)
  return np.stack([vectors[w] for w in words]).astype(np.float32)


@pytest.fixture(scope="module")
def sections():
  return word_eval.load_analogies()


def test_load_analogies_matches_word2vec_counts(sections):
  assert len(sections) == 14
  semantic = sum(len(s.questions) for s in sections if s.semantic)
  syntactic = sum(len(s.questions) for s in sections if not s.semantic)
  # word2vec's paper: 8,869 semantic and 10,675 syntactic questions.
  assert (semantic, syntactic) == (8869, 10675)
  assert [s.semantic for s in sections] == [True] * 5 + [False] * 9


@pytest.mark.parametrize("seed", [0, 1])
def test_analogy_accuracy_equals_gensim(sections, seed):
  words = _analogy_words(sections)
  rng = np.random.default_rng(seed)
  rng.shuffle(words)
  words = words[: int(0.8 * len(words))]  # some questions become uncovered
  vectors = _planted_vectors(words, sections, seed)
  ours = word_eval.analogy_accuracy(vectors, words, sections)

  kv = KeyedVectors(vectors.shape[1])
  kv.add_vectors(words, vectors)
  total, gensim_sections = kv.evaluate_word_analogies(
    datapath(word_eval.ANALOGIES), restrict_vocab=len(words), case_insensitive=True
  )
  by_name = {s["section"]: s for s in gensim_sections}
  correct = {True: 0, False: 0}
  asked = {True: 0, False: 0}
  for s in sections:
    g = by_name.get(s.name, {"correct": [], "incorrect": []})
    correct[s.semantic] += len(g["correct"])
    asked[s.semantic] += len(g["correct"]) + len(g["incorrect"])
  assert (
    ours["asked"]
    == asked[True] + asked[False]
    == len(by_name["Total accuracy"]["correct"]) + len(by_name["Total accuracy"]["incorrect"])
  )
  assert 0 < ours["correct"] < ours["asked"]  # a non-trivial case
  assert ours["correct"] == correct[True] + correct[False]
  assert ours["total"] == pytest.approx(total)
  assert ours["semantic"] == pytest.approx(correct[True] / asked[True])
  assert ours["syntactic"] == pytest.approx(correct[False] / asked[False])
  assert ours["coverage"] == pytest.approx(ours["asked"] / 19544)


def test_analogy_masks_the_query_words():
  # b - a + c is closest to b itself; the answer must skip a, b and c.
  words = ["a", "b", "c", "d", "e"]
  vectors = np.array([[1, 0, 0], [0, 1, 0], [0.9, 0.1, 0.1], [0, 1, 0.5], [0, 0, 1]], np.float32)
  section = word_eval.AnalogySection("family", (("a", "b", "c", "d"),))
  unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  query = unit[1] - unit[0] + unit[2]
  assert int(np.argmax(unit @ query)) == 1  # unmasked, 'b' would win
  result = word_eval.analogy_accuracy(vectors, words, [section])
  assert result["total"] == 1.0 and result["semantic"] == 1.0
  assert math.isnan(result["syntactic"])


def test_analogy_brute_force_float64(sections):
  """Each question answered by a plain loop over the vocabulary, in float64."""
  words = _analogy_words(sections[:3], per_section=6)
  vectors = np.random.default_rng(5).normal(size=(len(words), 6)).astype(np.float32)
  unit = vectors.astype(np.float64)
  unit /= np.linalg.norm(unit, axis=1, keepdims=True)
  index = {w: i for i, w in enumerate(words)}
  asked = correct = 0
  for s in sections[:3]:
    for q in s.questions:
      if not all(w in index for w in q):
        continue
      a, b, c, d = (index[w] for w in q)
      target = unit[b] - unit[a] + unit[c]
      best = max(
        (i for i in range(len(words)) if i not in (a, b, c)), key=lambda i: unit[i] @ target
      )
      asked += 1
      correct += best == d
  result = word_eval.analogy_accuracy(vectors, words, sections[:3])
  assert (result["asked"], result["correct"]) == (asked, correct)
  assert asked > 0


@pytest.mark.parametrize("name", ["wordsim353", "simlex999"])
def test_similarity_spearman_equals_gensim(name):
  pairs = word_eval.load_word_pairs(name)
  words = list(dict.fromkeys(w for pair in pairs.pairs for w in pair))
  words = words[: int(0.7 * len(words))]  # leave some pairs uncovered
  vectors = np.random.default_rng(0).normal(size=(len(words), 8)).astype(np.float32)
  ours = word_eval.similarity_spearman(vectors, words, name)

  kv = KeyedVectors(8)
  kv.add_vectors(words, vectors)
  _, spearman, oov_ratio = kv.evaluate_word_pairs(
    datapath(word_eval.SIMILARITY_BENCHMARKS[name]), restrict_vocab=len(words)
  )
  assert ours["spearman"] == pytest.approx(spearman.statistic, abs=1e-6)
  assert ours["coverage"] == pytest.approx(1 - oov_ratio / 100)
  assert 0 < ours["coverage"] < 1


def test_similarity_spearman_against_scipy_formula():
  # Perfectly monotone similarities give rho = 1; reversed ones give -1.
  words = ["w0", "w1", "w2", "w3"]
  angles = np.array([0.0, 0.3, 0.9, 1.4])
  vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  pairs = (("w0", "w1"), ("w0", "w2"), ("w0", "w3"))
  up = word_eval.WordPairs(pairs, np.array([3.0, 2.0, 1.0]))
  down = word_eval.WordPairs(pairs, np.array([1.0, 2.0, 3.0]))
  assert word_eval.similarity_spearman(vectors, words, up)["spearman"] == pytest.approx(1.0)
  assert word_eval.similarity_spearman(vectors, words, down)["spearman"] == pytest.approx(-1.0)
  one = word_eval.WordPairs(pairs[:1], np.array([1.0]))
  assert math.isnan(word_eval.similarity_spearman(vectors, words, one)["spearman"])


def test_benchmark_coverage_counts():
  pairs = word_eval.load_word_pairs("simlex999")
  u, v = pairs.pairs[0]
  got = word_eval.benchmark_coverage([u, v])
  expected = sum(a in (u, v) and b in (u, v) for a, b in pairs.pairs)
  assert got["simlex999"] == expected >= 1
  assert word_eval.benchmark_coverage(["zzqx"]) == {"analogy": 0, "wordsim353": 0, "simlex999": 0}


def test_evaluate_collects_everything(sections):
  words = _analogy_words(sections)
  for name in word_eval.SIMILARITY_BENCHMARKS:
    words += [w for pair in word_eval.load_word_pairs(name).pairs[:40] for w in pair]
  words = list(dict.fromkeys(words))
  vectors = np.random.default_rng(0).normal(size=(len(words), 8))
  r = word_eval.evaluate(vectors, words, sections=sections)
  assert all(math.isfinite(v) for v in r.values())
  assert r["analogy_total"] == word_eval.analogy_accuracy(vectors, words, sections)["total"]
  assert r["wordsim353"] == word_eval.similarity_spearman(vectors, words, "wordsim353")["spearman"]
  assert set(r) == {
    "analogy_semantic",
    "analogy_syntactic",
    "analogy_total",
    "analogy_coverage",
    "wordsim353",
    "wordsim353_coverage",
    "simlex999",
    "simlex999_coverage",
  }


def test_bad_vectors():
  with pytest.raises(ValueError, match=r"vectors must have shape \(len\(words\), d\) = \(3, d\)"):
    word_eval.analogy_accuracy(np.zeros((2, 4)), ["a", "b", "c"], [])
  with pytest.raises(ValueError, match="NaN or infinity"):
    word_eval.similarity_spearman(np.full((1, 2), np.nan), ["a"], "wordsim353")


def test_malformed_files(tmp_path):
  bad = tmp_path / "q.txt"
  bad.write_text("a b c d\n")
  with pytest.raises(ValueError, match="expected a ': section' header first"):
    word_eval.load_analogies(bad)
  bad.write_text(": s\na b c\n")
  with pytest.raises(ValueError, match="lines of 4 words"):
    word_eval.load_analogies(bad)
  pairs = tmp_path / "p.txt"
  pairs.write_text("# header\ncat\tdog\n")
  with pytest.raises(ValueError, match="expected 'word1<TAB>word2<TAB>score'"):
    word_eval.load_word_pairs(pairs)
