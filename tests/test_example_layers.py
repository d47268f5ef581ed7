"""The examples' shared layers (report, _cli, optimizers) and the sharded and sparse GloVe
examples' parts, each checked against a result worked out by hand or in plain numpy."""

from __future__ import annotations

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from optax_blockada.examples import report
from optax_blockada.examples import sharded_glove as sg
from optax_blockada.examples import sparse_glove as sp
from optax_blockada.examples._cli import float_in, int_at_least
from optax_blockada.examples.glove_model import init_params
from optax_blockada.examples.optimizers import make_optimizer
from optax_blockada.examples.training import best_learning_rate


def f_glove(x):
  """GloVe's weighting with the examples' x_max = 10, alpha = 3/4, in plain numpy."""
  return np.minimum(1.0, (np.asarray(x, np.float64) / 10.0) ** 0.75)


# -- report ---------------------------------------------------------------------------


def test_markdown_table_lays_out_header_alignment_and_rows():
  table = report.markdown_table(["name", "loss"], "lr", [["rowwise", "0.12"], ["block", "3"]])
  assert table == "| name | loss |\n| --- | ---: |\n| rowwise | 0.12 |\n| block | 3 |"
  with pytest.raises(ValueError, match="align must have one of"):
    report.markdown_table(["a", "b"], "lc", [])


def test_progress_bar_counts_runs_in_its_description(capsys):
  with report.progress_bar("rowwise", 2, 6, total=10) as bar:
    bar.set_postfix(loss=0.5)
    bar.update(10)
  assert (bar.desc, bar.n, bar.total) == ("rowwise (run 2 of 6)", 10, 10)
  assert capsys.readouterr().out == ""  # progress goes to stderr


def test_format_number_and_rates():
  assert report.format_number(4000, ",") == "4,000"
  assert report.format_number(None, ".3f") == "-"
  assert report.format_number(float("nan"), ".3f") == "n/a"
  assert report.format_number(float("inf"), ".3f", missing="diverged") == "diverged"
  assert report.format_rates({"rowwise": [0.1, 0.2], "glove": [0.05]}) == (
    "rowwise: 0.1, 0.2; glove: 0.05"
  )


def test_write_json_writes_indented_json_with_nan_and_a_newline(tmp_path):
  path = tmp_path / "r.json"
  report.write_json(str(path), {"loss": 0.5, "drift": math.nan})
  text = path.read_text()
  assert text == '{\n  "loss": 0.5,\n  "drift": NaN\n}\n'
  assert json.loads(text)["loss"] == 0.5
  assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file is left


def test_save_loss_plot_writes_an_image(tmp_path):
  pytest.importorskip("matplotlib")
  rows = [{"optimizer": "rowwise", "learning_rate": 0.1, "epoch_losses": [2.0, 1.0]}]
  rows.append({"optimizer": "diverged", "learning_rate": 1.0, "epoch_losses": []})
  report.save_loss_plot(str(tmp_path / "loss.png"), rows, "GloVe", "loss")
  assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_save_word2vec_keeps_the_vocabulary_order(tmp_path):
  keyed_vectors = pytest.importorskip("gensim.models").KeyedVectors
  path = str(tmp_path / "v.txt")
  vectors = np.array([[1.0, 0.5], [0.25, 2.0], [3.0, -1.0]])
  report.save_word2vec(path, ["cat", "dog", "eel"], vectors)
  lines = (tmp_path / "v.txt").read_text().splitlines()
  assert lines[0] == "3 2" and [line.split()[0] for line in lines[1:]] == ["cat", "dog", "eel"]
  loaded = keyed_vectors.load_word2vec_format(path)
  np.testing.assert_array_equal(loaded["dog"], np.array([0.25, 2.0], np.float32))


def test_machine_description_and_facts_name_jax():
  assert f"jax {jax.__version__} on {jax.default_backend()}" in report.machine_description()
  facts = report.machine_facts(steps=3)
  assert facts["steps"] == 3 and facts["jax"] == jax.__version__
  assert facts["devices"] == [str(d) for d in jax.devices()]


# -- command-line types and the optimizers by name -------------------------------------


def test_int_at_least_and_float_in_parse_and_explain():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int_at_least(1))
  parser.add_argument("--lr", type=float_in(0, 10))
  args = parser.parse_args(["--steps", "3", "--lr", "0.5"])
  assert (args.steps, args.lr) == (3, 0.5)
  with pytest.raises(argparse.ArgumentTypeError, match=r"^must be >= 1, got 0$"):
    int_at_least(1)("0")
  with pytest.raises(argparse.ArgumentTypeError, match=r"^expected an integer, got '2.5'$"):
    int_at_least(1)("2.5")
  with pytest.raises(argparse.ArgumentTypeError, match=r"^a learning rate must be in \(0, 10\]"):
    float_in(0, 10, label="a learning rate ")("nan")
  with pytest.raises(argparse.ArgumentTypeError, match=r"^must be a finite number > 0, got inf$"):
    float_in(0)("inf")
  assert float_in(0, include_low=True)("0") == 0.0
  with pytest.raises(argparse.ArgumentTypeError, match=r"^must be in \[0, 1\], got 1.5$"):
    float_in(0, 1, include_low=True)("1.5")


def test_make_optimizer_rowwise_first_step():
  # Row-wise Adagrad, mean reduction: accumulator 0.1 + mean(g^2) = 1.1 after one step.
  tx = make_optimizer("rowwise", 0.1)
  updates, _ = tx.update(jnp.ones((2, 4)), tx.init(jnp.zeros((2, 4))))
  np.testing.assert_allclose(updates, np.full((2, 4), -0.1 / math.sqrt(1.1)), rtol=1e-6)
  with pytest.raises(ValueError, match="name must be one of"):
    make_optimizer("adam", 0.1)
  with pytest.raises(ValueError, match="learning_rate must be a positive finite number"):
    make_optimizer("rowwise", 0.0)


# -- sharded GloVe's parts -------------------------------------------------------------


def test_make_batches_draws_nonzero_pairs_with_their_weight_and_log():
  cooc = np.array([[0, 10.0, 2.0], [10.0, 0, 0], [2.0, 0, 50.0]], np.float32)
  batches = sg.make_batches(cooc, 64, steps=2, seed=3)
  assert len(batches) == 2
  for i, j, weight, log_x in batches:
    assert i.dtype == j.dtype == jnp.int32 and i.shape == (64,)
    x = cooc[np.asarray(i), np.asarray(j)]
    assert (x > 0).all()
    np.testing.assert_allclose(weight, f_glove(x), rtol=1e-6)
    np.testing.assert_allclose(log_x, np.log(x), rtol=1e-6)
  seen = {(int(a), int(b)) for a, b in zip(*batches[0][:2], strict=True)}
  assert seen == {(0, 1), (1, 0), (0, 2), (2, 0), (2, 2)}  # uniform over 5 pairs: all drawn


def test_pair_loss_is_half_the_weighted_squared_error_summed():
  rng = np.random.default_rng(0)
  params = {k: rng.standard_normal((5, 3)).astype(np.float32) for k in ("word", "context")}
  params |= {k: rng.standard_normal(5).astype(np.float32) for k in ("word_bias", "context_bias")}
  i, j = np.array([0, 4, 2]), np.array([1, 1, 3])
  weight, log_x = np.array([1.0, 0.5, 0.2], np.float32), np.array([2.0, 0.0, -1.0], np.float32)
  p = {k: v.astype(np.float64) for k, v in params.items()}
  want = sum(
    0.5 * w * (p["word"][a] @ p["context"][b] + p["word_bias"][a] + p["context_bias"][b] - y) ** 2
    for a, b, w, y in zip(i, j, weight, log_x, strict=True)
  )
  batch = tuple(jnp.asarray(c) for c in (i, j, weight, log_x))
  assert float(sg.pair_loss(params, batch)) == pytest.approx(want, rel=1e-5)


def test_spread_ids_relabels_words_by_one_permutation():
  batches = sg.make_batches(np.ones((6, 6), np.float32), 32, steps=2)
  spread = sg.spread_ids(batches, 6, seed=1)
  perm = np.random.default_rng(1).permutation(6)
  for (i, j, w, y), (si, sj, sw, sy) in zip(batches, spread, strict=True):
    np.testing.assert_array_equal(si, perm[np.asarray(i)])
    np.testing.assert_array_equal(sj, perm[np.asarray(j)])
    assert sw is w and sy is y


def test_single_device_training_fits_and_capacity_is_in_range():
  batches = sg.make_batches(np.array([[0, 10.0], [10.0, 0]]), 4, steps=30)
  _, _, losses = sg.train_single_device(
    sg.make_optimizer("rowwise", 0.5), init_params(2, 2), batches
  )
  assert losses[-1] < 0.1 * losses[0]
  mesh = sg.make_mesh(1)
  assert mesh.axis_names == ("data", "rows")
  n = mesh.size
  batches = sg.make_batches(np.ones((4 * n, 4 * n)), 8 * n, steps=3)
  assert 1 <= sg.suggest_capacity(batches, 4 * n, mesh) <= 8  # 8 ids per device at most


# -- sparse GloVe's steps --------------------------------------------------------------


def test_sparse_glove_steps_agree_on_glove_loss():
  ids = {"word": jnp.array([1, 2]), "context": jnp.array([3, 3])}
  x = jnp.array([5.0, 1.0])
  models = [sp.GloVe(40, 4, rngs=nnx.Rngs(0)) for _ in range(2)]
  # The loss by hand from the initial parameters: mean of f(x) (w.c + b + b~ - log x)^2.
  w, c = (
    np.asarray(getattr(models[0], k).vectors.embedding[...], np.float64)
    for k in ("word", "context")
  )
  pred = np.sum(w[[1, 2]] * c[[3, 3]], axis=1)  # the biases start at zero
  want = np.mean(f_glove(x) * (pred - np.log(np.asarray(x))) ** 2)
  opts = [nnx.Optimizer(m, sp.make_optimizer("rowwise"), wrt=nnx.Param) for m in models]
  dense = float(sp.dense_step(models[0], opts[0], ids, x))
  sparse = float(sp.sparse_step(models[1], opts[1], ids, x))
  assert dense == pytest.approx(want, rel=1e-5) and sparse == pytest.approx(want, rel=1e-5)
  for a, b in zip(*(jax.tree.leaves(nnx.state(m, nnx.Param)) for m in models), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# -- the examples' best-rate rule ---------------------------------------------------------


def test_best_learning_rate_is_the_highest_finite_score_first_on_ties():
  assert best_learning_rate({0.1: 1.0, 0.2: 3.0, 0.4: 2.0}) == 0.2
  # Tuples compare in order: the second entry breaks a tie in the first.
  assert best_learning_rate({0.1: (0.5, 0.7), 0.2: (0.5, 0.9), 0.4: (0.4, 1.0)}) == 0.2
  # A diverged run (any non-finite entry) ranks below every finite score, even -1e30.
  assert best_learning_rate({0.1: float("nan"), 0.2: -1e30}) == 0.2
  assert best_learning_rate({0.1: (float("inf"), 0.0), 0.2: (0.0, 0.0)}) == 0.2
  # Ties, and all runs diverged, go to the first rate.
  assert best_learning_rate({0.4: 1.0, 0.1: 1.0}) == 0.4
  assert best_learning_rate({0.4: float("nan"), 0.1: float("inf")}) == 0.4
