"""Tests for the GloVe model, its training loop and the main job's command line."""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import re
import stat

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from optax_blockada.examples import glove, glove_model, report, text, training, word_cli
from optax_blockada.examples import rotation as rot
from optax_blockada.examples.optimizers import OPTIMIZER_NAMES, make_optimizer
from optax_blockada.examples.planted import planted_cooccurrence


def _planted_data(vocab_size=60, seed=0):
  dense = planted_cooccurrence(vocab_size, 4, total_count=2e5, seed=seed)
  rows, cols = np.nonzero(dense)
  cooc = text.Cooccurrence(
    rows.astype(np.int32), cols.astype(np.int32), dense[rows, cols].astype(np.float64), vocab_size
  )
  return dense, glove.prepare_data(cooc)


def _init(vocab_size, dim, seed=0):
  return nnx.to_pure_dict(nnx.state(glove.GloVe(vocab_size, dim, rngs=nnx.Rngs(seed)), nnx.Param))


def _np_cost(params, rows, cols, log_x, f):
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  pred = np.sum(p["word"][rows] * p["context"][cols], 1) + p["word_bias"][rows]
  pred = pred + p["context_bias"][cols]
  return 0.5 * np.sum(f * (pred - log_x) ** 2)


def test_weighting_formula():
  x = np.array([0.5, 1.0, 9.9, 10.0, 10.1, 1e4])
  np.testing.assert_allclose(
    glove.weighting(x, x_max=10.0, alpha=0.75), [min(1.0, (v / 10.0) ** 0.75) for v in x]
  )
  assert glove.weighting([100.0], x_max=100.0, alpha=0.5)[0] == 1.0


def test_glove_init_matches_glove_c():
  params = _init(50, 8)
  for name in ("word", "context"):
    w = np.asarray(params[name])
    assert w.shape == (50, 8) and w.dtype == np.float32
    assert np.all(np.abs(w) <= 0.5 / 8) and np.abs(w).max() > 0.4 / 8  # (U(0,1) - 0.5) / d
  assert not np.array_equal(params["word"], params["context"])
  np.testing.assert_array_equal(params["word_bias"], np.zeros(50))
  model = glove.GloVe(50, 8, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(model.vectors(), params["word"] + params["context"])
  # The preset's start: glove.c draws the biases like every other entry of W.
  drawn = glove_model.glove_c_biases(params, jax.random.key(1))
  for name in ("word_bias", "context_bias"):
    b = np.asarray(drawn[name])
    assert b.shape == (50,) and np.all(np.abs(b) <= 0.5 / 8) and np.abs(b).max() > 0.4 / 8
  assert not np.array_equal(drawn["word_bias"], drawn["context_bias"])
  np.testing.assert_array_equal(drawn["word"], params["word"])


def test_model_call_and_cost_against_float64_formula():
  dense, data = _planted_data()
  params = _init(60, 5)
  params = {**params, "word_bias": jnp.linspace(-1, 1, 60), "context_bias": jnp.linspace(0, 2, 60)}
  model = glove.GloVe(60, 5, rngs=nnx.Rngs(0))
  nnx.update(model, nnx.State(params))
  rows, cols = data.rows[:7], data.cols[:7]
  p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
  expected = (
    np.sum(p64["word"][rows] * p64["context"][cols], 1)
    + p64["word_bias"][rows]
    + p64["context_bias"][cols]
  )
  np.testing.assert_allclose(model(rows, cols), expected, rtol=1e-5, atol=1e-6)
  batch = {
    "rows": rows,
    "cols": cols,
    "log_counts": data.log_counts[:7],
    "weights": data.weights[:7],
  }
  np.testing.assert_allclose(
    glove.glove_cost(params, batch),
    _np_cost(params, rows, cols, np.log(dense[rows, cols]), glove.weighting(dense[rows, cols])),
    rtol=1e-5,
  )


def test_weighted_loss_equals_the_dense_rotation_loss():
  # rotation.glove_loss is an independent (dense, masked) implementation of glove.c's
  # per-pair cost with the same x_max and alpha.
  dense, data = _planted_data()
  params = _init(60, 6, seed=3)
  assert glove_model.X_MAX == rot.X_MAX and glove_model.ALPHA == rot.ALPHA
  np.testing.assert_allclose(
    glove.weighted_loss(params, data, chunk=100), float(rot.glove_loss(params, dense)), rtol=1e-5
  )


def test_training_steps_equal_a_plain_loop():
  """Three minibatch steps equal a hand-written loop over the same permutation."""
  _, data = _planted_data(vocab_size=30)
  params = _init(30, 4)
  tx = optax.adagrad(0.1)
  batch_size = 64
  result = glove.train_glove(params, data, tx, epochs=1, batch_size=batch_size, seed=7)

  order = np.random.default_rng([7, 0]).permutation(data.rows.size)
  p, state = params, tx.init(params)

  @jax.jit
  def step(p, state, batch):
    updates, state = tx.update(jax.grad(glove.glove_cost)(p, batch), state, p)
    return optax.apply_updates(p, updates), state

  total = 0.0
  for start in range(0, data.rows.size, batch_size):
    idx = order[start : start + batch_size]
    batch = {
      "rows": data.rows[idx],
      "cols": data.cols[idx],
      "log_counts": data.log_counts[idx],
      "weights": data.weights[idx],
    }
    total += float(glove.glove_cost(p, batch))
    p, state = step(p, state, batch)
  assert result.steps == -(-data.rows.size // batch_size)
  for k in p:
    np.testing.assert_allclose(result.params[k], p[k], rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(result.epoch_losses[0], total / data.rows.size, rtol=1e-4)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_loss_falls_on_planted_data_with_every_optimizer(name):
  _, data = _planted_data()
  params = _init(60, 8)
  lr = 0.05 if name == "preset" else 0.1
  result = glove.train_glove(
    params, data, make_optimizer(name, lr, preset="glove"), epochs=15, batch_size=256
  )
  before = glove.weighted_loss(params, data)
  after = glove.weighted_loss(result.params, data)
  assert np.isfinite(after)
  assert after < 0.3 * before, (before, after)


def _crashing(epoch_data, at_epoch):
  def wrapped(epoch):
    if epoch == at_epoch:
      raise KeyboardInterrupt("simulated crash")
    return epoch_data(epoch)

  return wrapped


@pytest.mark.parametrize("name", ["rowwise", "preset"])
def test_resume_equals_uninterrupted(tmp_path, name):
  _, data = _planted_data(vocab_size=30)
  params = _init(30, 4)
  tx = make_optimizer(name, 0.1, preset="glove")
  arrays = {
    "rows": data.rows,
    "cols": data.cols,
    "log_counts": data.log_counts,
    "weights": data.weights,
  }

  def epoch_data(epoch):
    order = np.random.default_rng([1, epoch]).permutation(data.rows.size)
    return {k: v[order] for k, v in arrays.items()}, data.rows.size

  def cost(p, b, key):
    return glove.glove_cost(p, b)

  kwargs = dict(epochs=3, batch_size=128, epoch_size=data.rows.size, seed=1, chunk_steps=2)
  steps_per_epoch = -(-data.rows.size // 128)
  assert steps_per_epoch % 3 != 0  # the last checkpoint before the crash is mid-epoch
  full = training.train_loop(cost, params, tx, epoch_data, **kwargs)
  with pytest.raises(KeyboardInterrupt):
    training.train_loop(
      cost,
      params,
      tx,
      _crashing(epoch_data, 2),
      checkpoint_dir=tmp_path,
      checkpoint_every=3,
      **kwargs,
    )
  resumed = training.train_loop(
    cost, params, tx, epoch_data, checkpoint_dir=tmp_path, checkpoint_every=3, resume=True, **kwargs
  )
  assert 0 < resumed.steps_run < full.steps == resumed.steps
  for k in full.params:
    np.testing.assert_array_equal(resumed.params[k], full.params[k])
  np.testing.assert_allclose(resumed.epoch_losses, full.epoch_losses, rtol=1e-6)


def test_train_loop_argument_errors():
  data = lambda epoch: ({"x": np.zeros(3, np.float32)}, 3)
  cost = lambda p, b, key: jnp.sum(p * b["x"])
  run = functools.partial(training.train_loop, cost, jnp.zeros(()), optax.sgd(0.1), data)
  with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
    run(epochs=0, batch_size=1, epoch_size=3)
  with pytest.raises(TypeError, match="batch_size must be an int"):
    run(epochs=1, batch_size=2.0, epoch_size=3)
  with pytest.raises(ValueError, match="epoch 0 has 3 items, but epoch_size says 4"):
    run(epochs=1, batch_size=1, epoch_size=4)


def test_progress_bar_has_the_whole_runs_total(capsys):
  # One bar per run: its total is every epoch's steps from the start (it never grows),
  # the description counts the runs, the postfix shows the loss.
  sizes = [10, 6, 9]  # items per epoch, varying as SGNS's do: 4 + 2 + 3 steps of 3
  data = lambda epoch: ({"x": np.ones(sizes[epoch], np.float32)}, sizes[epoch])
  cost = lambda p, b, key: jnp.sum((p - b["x"]) ** 2)
  training.train_loop(
    cost, jnp.zeros(()), optax.sgd(0.01), data, epochs=3, batch_size=3,
    epoch_size=sizes.__getitem__, progress=True, desc="rowwise lr=0.1", run=(2, 5), chunk_steps=1,
  )  # fmt: skip
  err = capsys.readouterr().err
  assert "rowwise lr=0.1 (run 2 of 5)" in err
  assert set(re.findall(r"\d+/(\d+) ", err)) == {"9"}


def test_prepare_data_errors():
  empty = text.Cooccurrence(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0), 3)
  with pytest.raises(ValueError, match="co-occurrence matrix is empty"):
    glove.prepare_data(empty)
  one = text.Cooccurrence(np.zeros(1, np.int32), np.zeros(1, np.int32), np.ones(1), 3)
  with pytest.raises(ValueError, match="x_max must be a positive finite number, got 0"):
    glove.prepare_data(one, x_max=0)
  bad = text.Cooccurrence(np.zeros(1, np.int32), np.zeros(1, np.int32), -np.ones(1), 3)
  with pytest.raises(ValueError, match="must be positive and finite"):
    glove.prepare_data(bad)


# -- the command line ----------------------------------------------------------------

_WORDS = (
  "king queen man woman boy girl father mother son daughter brother sister tiger cat dog "
  "car train plane book paper computer keyboard money bank water river"
).split()


@pytest.fixture
def tiny_corpus(tmp_path):
  rng = np.random.default_rng(0)
  lines = [" ".join(rng.choice(_WORDS, size=int(rng.integers(8, 20)))) for _ in range(150)]
  path = tmp_path / "tiny.txt"
  path.write_text("\n".join(lines) + "\n")
  return path


def _cli(corpus, tmp_path, *extra):
  return [
    "--corpus",
    str(corpus),
    "--quick",
    "--min-count",
    "1",
    "--dim",
    "8",
    "--epochs",
    "2",
    "--batch-size",
    "64",
    "--no-progress",
    "--json",
    str(tmp_path / "out.json"),
    *extra,
  ]


def test_quick_and_explicit_options_choose_the_settings():
  # The values --help states: epochs 8, with --quick 2; the quick grid is one rate each.
  def settings(*argv):
    return word_cli.settings_from_args(
      glove._parser().parse_args(argv), glove._DEFAULTS, glove._QUICK
    )

  quick = settings("--quick", "--dim", "8", "--optimizers", "preset", "rowwise")
  assert (quick["dim"], quick["epochs"], quick["window"], quick["seed"]) == (8, 2, 10, 0)
  assert quick["learning_rates"] == {"preset": (0.05,), "rowwise": (0.2,)}
  full = settings("--learning-rates", "0.3", "0.4", "--seed", "3")
  assert (full["dim"], full["epochs"], full["seed"]) == (50, 8, 3)
  assert full["learning_rates"] == {name: (0.3, 0.4) for name in OPTIMIZER_NAMES}


def test_cli_end_to_end(tiny_corpus, tmp_path, capsys):
  pytest.importorskip("gensim")  # the evaluation files
  plot = tmp_path / "loss.png"
  saved = tmp_path / "vectors"
  args = _cli(tiny_corpus, tmp_path, "--plot", str(plot), "--learning-rates", "0.1")
  assert glove.main([*args, "--save-vectors", str(saved)]) == 0
  out = capsys.readouterr().out
  for name in ("random init", *OPTIMIZER_NAMES):
    assert f"| {name} |" in out
  assert word_cli.QUICK_NOTE in out and "Hogwild" in out  # --quick and the preset say so
  payload = json.loads((tmp_path / "out.json").read_text())
  rows = payload["results"]
  assert [r["optimizer"] for r in rows] == ["random init", *OPTIMIZER_NAMES]
  assert payload["corpus"]["vocab_size"] == len(_WORDS)
  for r in rows[1:]:
    # Each optimizer trained at its best rate of the quick grid, below the initial loss.
    assert r["learning_rate"] == 0.1 and list(r["sweep"]) == ["0.1"]
    assert r["loss"] < rows[0]["loss"]
    assert r["state_bytes"] > 0 and r["steps_per_second"] > 0
    assert len(r["epoch_losses"]) == 2
  drift = {r["optimizer"]: r["drift"] for r in rows[1:]}
  assert drift["rowwise"] < 1e-4 and drift["block"] < 1e-3
  assert drift["diagonal"] > 1e-2
  assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    "loss.png",
    "out.json",
    "tiny.txt",
    "vectors",
  ]
  # --save-vectors: gensim reads each optimizer's vectors back, and gensim's own
  # evaluators on them give the scores the run printed.
  from gensim.models import KeyedVectors
  from gensim.test.utils import datapath

  assert sorted(p.name for p in saved.iterdir()) == sorted(f"{n}.txt" for n in OPTIMIZER_NAMES)
  for r in rows[1:]:
    kv = KeyedVectors.load_word2vec_format(str(saved / f"{r['optimizer']}.txt"))
    assert sorted(kv.index_to_key) == sorted(_WORDS)
    assert np.isfinite(r["wordsim353"]) and r["analogy_coverage"] > 0
    _, spearman, _ = kv.evaluate_word_pairs(datapath("wordsim353.tsv"))
    np.testing.assert_allclose(spearman.statistic, r["wordsim353"], rtol=1e-6)
    score, _ = kv.evaluate_word_analogies(datapath("questions-words.txt"), case_insensitive=True)
    np.testing.assert_allclose(score, r["analogy_total"], rtol=1e-6)


def test_cli_resume_continues_the_saved_runs(tiny_corpus, tmp_path, capsys):
  pytest.importorskip("gensim")  # the evaluation files
  ckpt = tmp_path / "ckpt"
  args = _cli(tiny_corpus, tmp_path, "--optimizers", "rowwise", "--learning-rates", "0.1")
  args += ["--checkpoint-dir", str(ckpt), "--checkpoint-every", "5"]
  assert glove.main(args) == 0
  first = json.loads((tmp_path / "out.json").read_text())["results"]
  assert glove.main([*args, "--resume"]) == 0
  second = json.loads((tmp_path / "out.json").read_text())["results"]
  assert first[1]["loss"] == second[1]["loss"]
  assert first[1]["epoch_losses"] == second[1]["epoch_losses"]
  capsys.readouterr()
  # A fresh run must not mix with old checkpoints; a resume must use the same settings.
  assert glove.main(args) == 2
  assert "already holds checkpoints" in capsys.readouterr().err
  assert glove.main([*args, "--resume", "--seed", "1"]) == 2
  assert "seed differ" in capsys.readouterr().err
  # Damaged or missing settings (orbax metadata of each run's checkpoints), and
  # checkpoints that are all damaged: a clear exit 2.
  (metadata,) = (ckpt / "rowwise" / "lr=0.1" / "metadata").iterdir()  # the first run's
  saved = metadata.read_text()
  metadata.write_text(saved[: len(saved) // 2])
  assert glove.main([*args, "--resume"]) == 2
  assert "cannot be checked against this run's settings: their settings cannot be read" in (
    capsys.readouterr().err
  )
  metadata.unlink()
  assert glove.main([*args, "--resume"]) == 2
  assert "cannot be checked against this run's settings" in capsys.readouterr().err
  metadata.write_text(saved)
  steps = [d for d in ckpt.rglob("*") if d.is_dir() and d.name.isdigit()]
  assert steps
  for step in steps:
    for f in step.rglob("*"):
      if f.is_file():
        f.write_bytes(b"")
  assert glove.main([*args, "--resume"]) == 2
  assert "no intact checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
  ("content", "extra", "message"),
  [
    (None, (), "does not exist"),
    ("", (), "contains no words"),
    ("king queen man\n", ("--window", "5"), "not more than the window"),
    ("zzqx vvkw zzqx vvkw qqpt\n" * 20, (), "covers no analogy question"),
    ("king queen\n" * 20, ("--resume",), "--resume needs --checkpoint-dir"),
  ],
)
def test_cli_bad_input(tmp_path, capsys, content, extra, message):
  pytest.importorskip("gensim")  # the evaluation files
  corpus = tmp_path / "c.txt"
  if content is not None:
    corpus.write_text(content)
  assert glove.main(_cli(corpus, tmp_path, *extra)) == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "out.json").exists()  # nothing half-written


def test_cli_resume_without_checkpoints(tiny_corpus, tmp_path, capsys):
  pytest.importorskip("gensim")  # the evaluation files
  args = _cli(tiny_corpus, tmp_path, "--checkpoint-dir", str(tmp_path / "none"), "--resume")
  assert glove.main(args) == 2
  assert "no checkpoint" in capsys.readouterr().err


def test_cli_missing_output_directory(tiny_corpus, tmp_path, capsys):
  args = _cli(tiny_corpus, tmp_path, "--plot", str(tmp_path / "no" / "plot.png"))
  assert glove.main(args) == 2
  assert "--plot: the directory" in capsys.readouterr().err


@pytest.mark.parametrize("rate", ["0", "-0.1", "nan", "inf", "11", "abc"])
def test_cli_rejects_out_of_range_learning_rates(tiny_corpus, tmp_path, capsys, rate):
  with pytest.raises(SystemExit) as exit_info:
    glove.main(_cli(tiny_corpus, tmp_path, "--learning-rates", rate))
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "--learning-rates" in err and ("(0, 10]" in err or "expected a number" in err)
  assert not (tmp_path / "out.json").exists()


def test_compare_optimizers_keeps_the_best_rate():
  pytest.importorskip("gensim")  # the evaluation files
  _, data = _planted_data(vocab_size=30)
  words = [*_WORDS, *(f"w{i}" for i in range(30 - len(_WORDS)))]
  rows = glove.compare_optimizers(
    data,
    words,
    optimizers=["diagonal"],
    learning_rates={"diagonal": [0.003, 0.1]},
    dim=4,
    epochs=2,
    batch_size=128,
  )
  baseline, row = rows
  assert baseline["loss"] == pytest.approx(glove.weighted_loss(_init(30, 4), data))
  assert set(row["sweep"]) == {"0.003", "0.1"}
  assert row["sweep"]["0.1"] < row["sweep"]["0.003"]  # 0.003 barely moves in 2 epochs
  assert row["learning_rate"] == 0.1 and row["loss"] == row["sweep"]["0.1"]
  again = glove.train_glove(
    _init(30, 4), data, make_optimizer("diagonal", 0.1), epochs=2, batch_size=128
  )
  assert glove.weighted_loss(again.params, data) == pytest.approx(row["loss"], rel=1e-6)
  assert row["drift"] > 1e-3  # diagonal Adagrad depends on the basis


def test_a_diverged_optimizer_is_reported_not_evaluated():
  pytest.importorskip("gensim")  # the evaluation files
  params0 = _init(len(_WORDS), 4)
  calls = []

  def train(tx, init, **kwargs):
    calls.append(kwargs["desc"])
    nan = jax.tree.map(lambda x: x * jnp.nan, init)
    return training.TrainResult(nan, np.array([np.nan]), 1, 1.0, 1)

  def final_loss(params, result):
    return float(jnp.sum(params["word"]))

  rows = training.sweep_optimizers(
    train,
    final_loss,
    lambda p: np.asarray(p["word"]),
    params0,
    _WORDS,
    optimizers=["rowwise"],
    learning_rates={"rowwise": [0.1, 0.2]},
    preset="torch",
    rotation_seed=1,
  )
  row = rows[1]
  assert calls == ["rowwise lr=0.1", "rowwise lr=0.2"]  # no rotated run after divergence
  assert np.isnan(row["loss"]) and np.isnan(row["wordsim353"]) and np.isnan(row["drift"])
  line = training.format_table(rows).splitlines()[-1]
  assert "| diverged |" in line and "n/a" in line


def test_written_files_get_the_users_umask_not_0600(tmp_path):
  # --json and --plot go through write_atomically (a temporary file, then a rename).
  old = os.umask(0o027)
  try:
    out = tmp_path / "result.json"
    report.write_atomically(str(out), lambda tmp: pathlib.Path(tmp).write_text("{}"))
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    os.umask(0o022)
    report.write_atomically(str(out), lambda tmp: pathlib.Path(tmp).write_text("{}"))
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
  finally:
    os.umask(old)
  assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def _readme_row(line):
  """A row dict from a README table line, for :func:`training.format_table` to print again."""
  cells = line.strip("| ").split(" | ")
  num = lambda cell, f=float: None if cell == "-" else (math.nan if cell == "n/a" else f(cell))
  total, sem, syn = (num(c) / 100 for c in re.fullmatch(r"(.+) \((.+) / (.+)\)", cells[3]).groups())
  return {
    "optimizer": cells[0],
    "learning_rate": num(cells[1]),
    "loss": math.nan if cells[2] == "diverged" else num(cells[2]),
    "analogy_total": total, "analogy_semantic": sem, "analogy_syntactic": syn,
    "wordsim353": num(cells[4]),
    "simlex999": num(cells[5]),
    "state_bytes": num(cells[6], lambda c: int(c.replace(",", ""))),
    "steps_per_second": num(cells[7]),
    "drift": num(cells[8]),
  }  # fmt: skip


@pytest.mark.parametrize("example", ["GloVe", "SGNS"])
def test_readme_table_is_the_printed_table(example):
  # The README shows the GloVe and SGNS tables as the commands print them: the header
  # the code prints, the row labels, and every cell as the code formats it.
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  section = {"GloVe": "### The main job", "SGNS": "**word2vec SGNS**"}[example]
  header = training.format_table([]).splitlines()
  rest = readme[readme.index(section) :]
  lines = rest[rest.index("\n| ") + 1 :].split("\n\n")[0].splitlines()
  assert lines[:2] == header
  rows = [_readme_row(line) for line in lines[2:]]
  assert [r["optimizer"] for r in rows] == ["random init", *OPTIMIZER_NAMES]
  assert training.format_table(rows).splitlines()[2:] == lines[2:]
