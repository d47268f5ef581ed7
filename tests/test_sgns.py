"""Tests for word2vec skip-gram with negative sampling (SGNS) and its command line."""

from __future__ import annotations

import collections
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from optax_blockada.examples import sgns, sgns_model, text
from optax_blockada.examples.optimizers import OPTIMIZER_NAMES, make_optimizer


def _planted_corpus(n_docs=60, length=60, vocab_size=40, topics=4, seed=0):
  """Documents about one topic each: a word co-occurs with words of its own topic."""
  rng = np.random.default_rng(seed)
  topic_of = np.arange(vocab_size) % topics
  docs = []
  for d in range(n_docs):
    words = np.flatnonzero(topic_of == d % topics)
    weights = 1.0 / np.arange(1, words.size + 1)  # Zipfian within the topic
    docs.append([f"w{i}" for i in rng.choice(words, size=length, p=weights / weights.sum())])
  vocab = text.build_vocabulary(docs, min_count=1)
  return text.encode(docs, vocab), vocab


def _brute_force_pairs(corpus, counts, window, subsample, seed):
  """word2vec.c's loops, one token at a time, with the same random draws."""
  rng = np.random.default_rng(seed)
  ids, doc = list(corpus.ids), list(corpus.document)
  if subsample > 0:
    train_words = float(np.sum(counts))
    draws = rng.random(len(ids))
    kept = []
    for n, word in enumerate(ids):
      cn = float(counts[word])
      ran = (np.sqrt(cn / (subsample * train_words)) + 1) * (subsample * train_words) / cn
      if not ran < draws[n]:
        kept.append(n)
    ids, doc = [ids[n] for n in kept], [doc[n] for n in kept]
  b = rng.integers(0, window, size=len(ids))
  pairs = []
  for i in range(len(ids)):
    for k in range(1, window - b[i] + 1):
      for j in (i - k, i + k):
        if 0 <= j < len(ids) and doc[j] == doc[i]:
          pairs.append((ids[i], ids[j]))
  return collections.Counter(pairs)


@pytest.mark.parametrize("window", [1, 3, 5])
@pytest.mark.parametrize("subsample", [0.0, 1e-2])
def test_skipgram_pairs_equal_word2vec_loops(window, subsample):
  corpus, vocab = _planted_corpus(n_docs=6, length=30)
  centres, contexts = sgns_model.skipgram_pairs(
    corpus, vocab.counts, window=window, subsample=subsample, rng=np.random.default_rng(3)
  )
  expected = _brute_force_pairs(corpus, vocab.counts, window, subsample, 3)
  assert collections.Counter(zip(centres.tolist(), contexts.tolist(), strict=True)) == expected
  assert sum(expected.values()) > 0
  count = sgns_model.count_skipgram_pairs(
    corpus, vocab.counts, window=window, subsample=subsample, rng=np.random.default_rng(3)
  )
  assert count == sum(expected.values())


def test_subsampling_drops_frequent_words_more():
  corpus, vocab = _planted_corpus(n_docs=200, length=60)
  rng = np.random.default_rng(0)
  kept = collections.Counter()
  for _ in range(5):
    centres, _ = sgns_model.skipgram_pairs(corpus, vocab.counts, window=1, subsample=1e-2, rng=rng)
    kept.update(centres.tolist())
  full, _ = sgns_model.skipgram_pairs(corpus, vocab.counts, window=1, subsample=0.0, rng=rng)
  ratio = np.array([kept[i] / (5 * max(1, np.sum(full == i))) for i in range(len(vocab.words))])
  assert ratio[0] < 0.6 * ratio[-1]  # the most frequent word is kept least often


def test_noise_distribution_and_draws():
  counts = np.array([100.0, 30.0, 5.0, 1.0])
  cdf = sgns_model.noise_distribution(counts)
  p = counts**0.75 / np.sum(counts**0.75)
  np.testing.assert_allclose(cdf, np.cumsum(p), rtol=1e-6)
  draws = np.asarray(sgns_model.draw_negatives(jax.random.key(0), jnp.asarray(cdf), (200_000,)))
  freq = np.bincount(draws, minlength=4) / draws.size
  np.testing.assert_allclose(freq, p, atol=4e-3)


def test_sgns_cost_against_float64_formula():
  rng = np.random.default_rng(0)
  params = {"word": rng.normal(size=(7, 3)), "context": rng.normal(size=(7, 3))}
  batch = {
    "centre": np.array([0, 1, 2, 3]),
    "context": np.array([1, 2, 3, 3]),
    "mask": np.array([1.0, 1.0, 1.0, 0.0], np.float32),
  }
  cdf = jnp.asarray(sgns_model.noise_distribution(np.arange(1.0, 8.0)))
  key = jax.random.key(4)
  draws = np.asarray(sgns_model.draw_negatives(key, cdf, (4, 3)))
  expected = 0.0
  log_sigmoid = lambda x: -np.log1p(np.exp(-x))
  for n in range(3):  # the last pair is padding
    v = params["word"][batch["context"][n]]
    expected -= log_sigmoid(v @ params["context"][batch["centre"][n]])
    for z in draws[n]:
      if z != batch["centre"][n]:
        expected -= log_sigmoid(-v @ params["context"][z])
  p32 = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  got = sgns_model.sgns_cost(p32, batch, key, cdf=cdf, negatives=3)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_skipgram_init_matches_word2vec():
  model = sgns_model.SkipGram(30, 10, rngs=nnx.Rngs(0))
  w = np.asarray(model.word[...])
  assert np.all(np.abs(w) <= 0.5 / 10) and np.abs(w).max() > 0.4 / 10
  np.testing.assert_array_equal(model.context[...], np.zeros((30, 10)))
  # model(inputs, outputs) scores v_input . u_output.
  u = np.random.default_rng(0).normal(size=(30, 10)).astype(np.float32)
  model.context[...] = jnp.asarray(u)
  inputs, outputs = np.array([1, 2, 2]), np.array([3, 0, 2])
  expected = [w[i].astype(np.float64) @ u[o] for i, o in zip(inputs, outputs, strict=True)]
  np.testing.assert_allclose(model(inputs, outputs), expected, rtol=1e-5, atol=1e-6)


def _params(vocab_size, dim=8):
  return nnx.to_pure_dict(
    nnx.state(sgns_model.SkipGram(vocab_size, dim, rngs=nnx.Rngs(0)), nnx.Param)
  )


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_loss_falls_on_planted_topics_with_every_optimizer(name):
  corpus, vocab = _planted_corpus()
  params = _params(len(vocab.words))
  tx = make_optimizer(name, 0.1, preset="torch")
  result = sgns.train_sgns(
    params, corpus, vocab.counts, tx, epochs=3, batch_size=256, window=3, subsample=0
  )
  centres, contexts = sgns_model.skipgram_pairs(
    corpus, vocab.counts, window=3, subsample=0, rng=np.random.default_rng(9)
  )
  before = sgns_model.evaluation_loss(params, centres, contexts, vocab.counts)
  after = sgns_model.evaluation_loss(result.params, centres, contexts, vocab.counts)
  assert after < 0.8 * before, (before, after)
  # 6 log 2 at init: the output vectors are 0 (less the few negatives equal to the centre).
  assert 5.5 * np.log(2) < before <= 6 * np.log(2)


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
  corpus, vocab = _planted_corpus(n_docs=20)
  params = _params(len(vocab.words), dim=4)
  tx = make_optimizer("block", 0.1)
  kwargs = dict(epochs=3, batch_size=100, window=2, subsample=1e-2, seed=2, chunk_steps=3)
  full = sgns.train_sgns(params, corpus, vocab.counts, tx, **kwargs)

  real = sgns.skipgram_pairs
  calls = []

  def crash_at_third_epoch(*args, **kw):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt("simulated crash")
    return real(*args, **kw)

  monkeypatch.setattr(sgns, "skipgram_pairs", crash_at_third_epoch)
  with pytest.raises(KeyboardInterrupt):
    sgns.train_sgns(
      params, corpus, vocab.counts, tx, checkpoint_dir=tmp_path, checkpoint_every=4, **kwargs
    )
  monkeypatch.setattr(sgns, "skipgram_pairs", real)
  resumed = sgns.train_sgns(
    params,
    corpus,
    vocab.counts,
    tx,
    checkpoint_dir=tmp_path,
    checkpoint_every=4,
    resume=True,
    **kwargs,
  )
  assert 0 < resumed.steps_run < full.steps == resumed.steps
  for k in full.params:
    np.testing.assert_array_equal(resumed.params[k], full.params[k])
  np.testing.assert_allclose(resumed.epoch_losses, full.epoch_losses, rtol=1e-6)


def test_argument_errors():
  corpus, vocab = _planted_corpus(n_docs=2)
  with pytest.raises(ValueError, match="subsample must be a finite number >= 0"):
    sgns_model.skipgram_pairs(corpus, vocab.counts, subsample=-1.0, rng=np.random.default_rng(0))
  with pytest.raises(ValueError, match="window must be >= 1, got 0"):
    sgns_model.skipgram_pairs(corpus, vocab.counts, window=0, rng=np.random.default_rng(0))
  with pytest.raises(ValueError, match="negatives must be >= 1, got 0"):
    sgns.train_sgns(
      _params(40), corpus, vocab.counts, make_optimizer("rowwise", 0.1), epochs=1, negatives=0
    )


_WORDS = "king queen man woman boy girl tiger cat dog car train plane book paper".split()


def _cli(tmp_path, *extra):
  rng = np.random.default_rng(0)
  corpus = tmp_path / "tiny.txt"
  corpus.write_text("\n".join(" ".join(rng.choice(_WORDS, size=12)) for _ in range(60)) + "\n")
  return [
    "--corpus",
    str(corpus),
    "--quick",
    "--min-count",
    "1",
    "--dim",
    "8",
    "--batch-size",
    "128",
    "--no-progress",
    "--json",
    str(tmp_path / "out.json"),
    *extra,
  ]


def test_cli_end_to_end(tmp_path, capsys):
  pytest.importorskip("gensim")  # the evaluation files
  # The GloVe CLI test runs all five optimizers; two keep this one fast.
  args = _cli(tmp_path, "--learning-rates", "0.1", "--plot", str(tmp_path / "l.png"))
  args += ["--save-vectors", str(tmp_path / "vectors")]
  assert sgns.main([*args, "--optimizers", "diagonal", "rowwise"]) == 0
  out = capsys.readouterr().out
  rows = json.loads((tmp_path / "out.json").read_text())["results"]
  assert [r["optimizer"] for r in rows] == ["random init", "diagonal", "rowwise"]
  for r in rows[1:]:
    assert f"| {r['optimizer']} | 0.1 |" in out
    assert r["loss"] < rows[0]["loss"]
  drift = {r["optimizer"]: r["drift"] for r in rows[1:]}
  assert drift["rowwise"] < 1e-4 and drift["diagonal"] > 1e-2
  assert (tmp_path / "l.png").read_bytes()[:4] == b"\x89PNG"
  # --save-vectors: the input table of each optimizer, read back by gensim; gensim's
  # evaluator on it gives the printed WordSim-353 score.
  from gensim.models import KeyedVectors
  from gensim.test.utils import datapath

  for r in rows[1:]:
    kv = KeyedVectors.load_word2vec_format(str(tmp_path / "vectors" / f"{r['optimizer']}.txt"))
    _, spearman, _ = kv.evaluate_word_pairs(datapath("wordsim353.tsv"))
    np.testing.assert_allclose(spearman.statistic, r["wordsim353"], rtol=1e-6)


def test_cli_bad_input(tmp_path, capsys):
  pytest.importorskip("gensim")  # the evaluation files
  args = _cli(tmp_path)
  args[1] = str(tmp_path / "missing.txt")
  assert sgns.main(args) == 2
  assert "does not exist" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    sgns.main(_cli(tmp_path, "--learning-rates", "-1"))
  assert "(0, 10]" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    sgns.main(_cli(tmp_path, "--subsample", "-0.1"))
  assert "must be a finite number >= 0" in capsys.readouterr().err
  assert not (tmp_path / "out.json").exists()
