"""Tests for the rotation experiment and the planted co-occurrence generator."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_blockada as ob
from optax_blockada.examples import rotation as rot
from optax_blockada.examples.planted import planted_cooccurrence

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# One pytest-xdist worker runs this module (`--dist loadgroup`, set in pyproject.toml), so
# its module fixtures (every optimizer trained twice, in float32 and float64) run once.
pytestmark = pytest.mark.xdist_group("test_rotation")

# A GloVe-style problem large enough for diagonal Adagrad to show its basis dependence
# and small enough to train six times in a few seconds.
VOCAB, DIM, STEPS, SEED = 200, 16, 200, 0


@pytest.fixture(scope="module")
def drifts() -> dict[str, float]:
  optimizers = {
    "rowwise_mean": ob.rowwise_adagrad(0.1, reduction="mean"),
    "rowwise_sum": ob.rowwise_adagrad(
      0.1 * np.sqrt(DIM),
      initial_accumulator_value=0.1 * DIM,
      eps=1e-7 * DIM,
      reduction="sum",
    ),
    "diagonal": ob.diagonal_adagrad(0.1),
    "block_rows": ob.block_adagrad(0.1 * np.sqrt(DIM)),
    "block_rows_damped": ob.block_adagrad(0.1 * np.sqrt(DIM), relative_eps=1e-3),
    "block_shared": ob.block_adagrad(0.1 * np.sqrt(DIM), structure="shared"),
    "block_rows_x_shared": ob.block_adagrad(0.1 * np.sqrt(DIM), structure="rows_x_shared"),
    "block_blocks": ob.block_adagrad(0.1 * 2.0, structure="blocks", block_size=DIM // 4),
  }
  results = rot.run_experiment(optimizers, vocab_size=VOCAB, dim=DIM, steps=STEPS, seed=SEED)
  for r in results:
    # Every run trains: well below the initial loss (~1.1 on this data).
    assert r["loss"] < 0.5, r
    assert r["loss_rotated"] < 0.5, r
  return {r["name"]: r["drift"] for r in results}


@pytest.mark.parametrize("name", ["rowwise_mean", "rowwise_sum"])
def test_rowwise_adagrad_is_rotation_equivariant(drifts, name):
  assert drifts[name] < 1e-4


def test_diagonal_adagrad_depends_on_the_basis(drifts):
  assert drifts["diagonal"] > 1e-2


@pytest.mark.parametrize("name", ["block_shared", "block_rows_x_shared"])
def test_block_adagrad_is_rotation_equivariant(drifts, name):
  assert drifts[name] < 1e-3


def test_block_adagrad_rows_is_equivariant_to_float32_accumulation(drifts):
  # Per-row d x d accumulators of GloVe's full-batch gradients reach condition numbers
  # ~1e5 (the relative_eps cap); stored in float32 in two bases they differ by ~1e-7 of
  # their norm, i.e. ~1e-2 relatively in their smallest directions, and training
  # amplifies this: drift ~8e-3 here (3e-3 after 20 steps), with eigh or Newton-Schulz
  # alike. Still orders of magnitude below diagonal Adagrad's and block 'blocks' drift.
  assert drifts["block_rows"] < 2e-2
  assert drifts["block_rows"] < 0.1 * drifts["block_blocks"]


def _relative(a, b, rotation=None):
  """|a - b R^T| / |a| over both tables, in float64 numpy (R = I when None)."""
  back = {k: np.asarray(b[k], np.float64) for k in ("word", "context")}
  if rotation is not None:
    back = {k: v @ rotation.T for k, v in back.items()}
  num = sum(np.sum((np.asarray(a[k], np.float64) - back[k]) ** 2) for k in back)
  return float(np.sqrt(num / sum(np.sum(np.asarray(a[k], np.float64) ** 2) for k in back)))


FLOAT64_OPTIMIZERS = {  # name: (optimizer, steps); the learning rates of ``drifts``
  "block_rows_damped": (
    lambda: ob.block_adagrad(0.1 * np.sqrt(DIM), relative_eps=1e-3),
    STEPS,
  ),
  # The control needs no long run: it drifts by 0.93 after 20 steps (0.99 after 200).
  "block_blocks": (
    lambda: ob.block_adagrad(0.1 * 2.0, structure="blocks", block_size=DIM // 4),
    20,
  ),
}


@pytest.fixture(scope="module")
def float64_runs() -> dict[str, dict[str, object]]:
  """The runs of ``drifts`` in float64 (the reference for float32 rounding) and float32."""
  cooc = planted_cooccurrence(VOCAB, 8, seed=SEED)
  params = rot.init_params(VOCAB, DIM, SEED)
  r32 = rot.random_orthogonal(DIM, SEED + 1)
  # R in float64: the float32 rotation made orthonormal to float64 precision.
  q, _ = np.linalg.qr(np.asarray(r32, np.float64))
  r64 = q * np.sign(np.sum(q * np.asarray(r32, np.float64), axis=0))
  out = {"r64": r64}
  for name, (make, steps) in FLOAT64_OPTIMIZERS.items():
    with jax.enable_x64(True):
      p64 = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
      rotated64 = {**p64, "word": p64["word"] @ r64, "context": p64["context"] @ r64}
      out[name] = {
        "64": rot.train(make(), p64, cooc, steps)[0],
        "64_rotated": rot.train(make(), rotated64, cooc, steps)[0],
      }
    assert out[name]["64"]["word"].dtype == np.float64
    if name == "block_rows_damped":
      out[name]["32"] = rot.train(make(), params, cooc, STEPS)[0]
      out[name]["32_rotated"] = rot.train(make(), rot.rotate(params, r32), cooc, STEPS)[0]
  return out


def test_block_adagrad_rows_is_equivariant_in_float64(float64_runs):
  # The invariance itself, free of float32 rounding: measured 6e-13 (and 3e-9 with the
  # default damping, whose condition numbers reach 1e5; not run here to save time).
  runs = float64_runs["block_rows_damped"]
  assert _relative(runs["64"], runs["64_rotated"], float64_runs["r64"]) < 1e-7


def test_block_adagrad_blocks_depends_on_the_basis_in_float64(float64_runs):
  # The control: a structure that is not equivariant drifts in float64 as in float32.
  runs = float64_runs["block_blocks"]
  assert _relative(runs["64"], runs["64_rotated"], float64_runs["r64"]) > 1e-2


def test_block_adagrad_rows_with_condition_capped_at_1e3_is_equivariant(drifts, float64_runs):
  # With relative_eps=1e-3 (condition numbers of H + lam I below ~1e3) float32 rounding
  # is amplified little: each float32 run stays within 1e-3 of its float64 run (measured
  # 2.4e-4 and 9e-5 on CPU). The float64 runs drift by 6e-13 (test above), so the float32
  # drift is those two runs' rounding and at most their sum: 2e-3 (measured 2.8e-4 on
  # CPU, 1.16e-3 on an H200, whose eigh and sums round differently).
  runs = float64_runs["block_rows_damped"]
  assert _relative(runs["64"], runs["32"]) < 1e-3
  assert _relative(runs["64_rotated"], runs["32_rotated"]) < 1e-3
  assert drifts["block_rows_damped"] < 2e-3


def test_block_adagrad_with_blocks_smaller_than_d_depends_on_the_basis(drifts):
  # Equivariant only under block-diagonal rotations; R here mixes all coordinates.
  assert drifts["block_blocks"] > 1e-2


# -- independent sanity checks of the set-up ------------------------------------------


def test_rotation_is_orthogonal():
  for dim in (1, 4, 32):
    r = np.asarray(rot.random_orthogonal(dim, seed=3), np.float64)
    assert r.shape == (dim, dim)
    np.testing.assert_allclose(r @ r.T, np.eye(dim), atol=1e-6)
    np.testing.assert_allclose(r.T @ r, np.eye(dim), atol=1e-6)
  np.testing.assert_array_equal(rot.random_orthogonal(8, 1), rot.random_orthogonal(8, 1))
  assert not np.allclose(rot.random_orthogonal(8, 1), rot.random_orthogonal(8, 2))
  assert not np.allclose(rot.random_orthogonal(8, 1), np.eye(8), atol=0.1)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_rotation_preserves_predictions_and_loss(scale):
  cooc = planted_cooccurrence(100, 4, seed=1)
  params = rot.init_params(100, 8, seed=1)
  # scale 30 makes w.c comparable with log X, so the check is not trivial.
  params = {**params, "word": scale * params["word"], "context": scale * params["context"]}
  rotation = rot.random_orthogonal(8, seed=2)
  rotated = rot.rotate(params, rotation)
  # Independent of the module's maths: plain float64 numpy.
  w, c = (np.asarray(params[k], np.float64) for k in ("word", "context"))
  wr, cr = (np.asarray(rotated[k], np.float64) for k in ("word", "context"))
  np.testing.assert_allclose(wr @ cr.T, w @ c.T, atol=1e-6 * scale**2)
  assert not np.allclose(wr, w)
  np.testing.assert_array_equal(rotated["word_bias"], params["word_bias"])
  np.testing.assert_array_equal(rotated["context_bias"], params["context_bias"])
  loss, loss_rotated = float(rot.glove_loss(params, cooc)), float(rot.glove_loss(rotated, cooc))
  assert loss_rotated == pytest.approx(loss, rel=2e-6)


def test_glove_loss_matches_a_loop_over_pairs():
  cooc = planted_cooccurrence(12, 2, total_count=2_000.0, seed=4)
  params = rot.init_params(12, 3, seed=4)
  params = {k: 10.0 * v for k, v in params.items()}
  params["word_bias"] = jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32)
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  total, pairs = 0.0, 0
  for i in range(12):
    for j in range(12):
      x = float(cooc[i, j])
      if x > 0:
        diff = p["word"][i] @ p["context"][j] + p["word_bias"][i]
        diff += p["context_bias"][j] - np.log(x)
        total += 0.5 * min(1.0, (x / 10.0) ** 0.75) * diff**2
        pairs += 1
  assert 0 < pairs < 144
  assert float(rot.glove_loss(params, cooc)) == pytest.approx(total / pairs, rel=1e-5)


def test_train_loss_falls_and_is_deterministic():
  cooc = planted_cooccurrence(50, 4, seed=0)
  params = rot.init_params(50, 4, seed=0)
  tx = ob.rowwise_adagrad(0.1)
  final, losses = rot.train(tx, params, cooc, 20)
  assert losses.shape == (20,)
  assert losses.dtype == jnp.float32
  assert float(losses[0]) == pytest.approx(float(rot.glove_loss(params, cooc)), rel=1e-6)
  assert float(rot.glove_loss(final, cooc)) < 0.5 * float(losses[0])
  final2, losses2 = rot.train(tx, params, cooc, 20)
  np.testing.assert_array_equal(losses, losses2)
  np.testing.assert_array_equal(final["word"], final2["word"])


def test_train_and_loss_reject_bad_input():
  cooc = planted_cooccurrence(10, 2, seed=0)
  params = rot.init_params(10, 4)
  with pytest.raises(ValueError, match="steps"):
    rot.train(ob.rowwise_adagrad(0.1), params, cooc, 0)
  with pytest.raises(ValueError, match="rows"):
    rot.glove_loss(rot.init_params(11, 4), cooc)
  with pytest.raises(ValueError, match="no positive entry"):
    rot.glove_loss(params, np.zeros((10, 10), np.float32))
  with pytest.raises(ValueError, match="square"):
    rot.glove_loss(params, np.ones((10, 9), np.float32))


def test_default_optimizers_all_train():
  names = list(rot.default_optimizers(4))
  assert len(names) == 11
  assert names[0] == "optax.adagrad(0.1)"
  results = rot.run_experiment(rot.default_optimizers(4), vocab_size=40, dim=4, steps=30)
  assert [r["name"] for r in results] == names
  initial = float(rot.glove_loss(rot.init_params(40, 4), planted_cooccurrence(40, 8)))
  for r in results:
    assert np.isfinite(r["loss"]) and r["loss"] < initial, r
    assert r["state_bytes"] > 0
    assert r["seconds"] > 0
  sizes = {r["name"]: r["state_bytes"] for r in results}
  # Row-wise state: one float32 per row of each table and per bias entry, plus each
  # leaf's record of its row shape ((1, 4) per table, (1,) per bias).
  assert sizes["rowwise_adagrad(0.1, mean)"] == 4 * (4 * 40 + 2 * 4 + 2)
  assert sizes["diagonal_adagrad(0.1)"] == 4 * (2 * 40 * 4 + 2 * 40)
  # Block 'rows': a 4 x 4 matrix per table row, 1 x 1 per bias entry, plus the int32
  # step count and one int32 fallback counter per leaf.
  assert sizes["block_adagrad(0.1*sqrt(d), rows)"] == 4 * (2 * 40 * 16 + 2 * 40) + 4 * 5
  assert sizes["block_adagrad(0.1*sqrt(d), rows_x_shared)"] == 4 * (4 * 40 + 2 * 16 + 2) + 4 * 5


# -- planted co-occurrence generator -------------------------------------------------


def test_planted_is_symmetric_nonnegative_and_sparse():
  x = planted_cooccurrence(300, 8, seed=0)
  assert x.shape == (300, 300)
  assert x.dtype == np.float32
  np.testing.assert_array_equal(x, x.T)
  assert (x >= 0).all()
  np.testing.assert_array_equal(x, np.round(x))
  np.testing.assert_array_equal(np.diag(x), 0)
  zero_fraction = float(np.mean(x == 0))
  assert 0.1 < zero_fraction < 0.95
  # Zeros concentrate on pairs of rare words.
  assert np.mean(x[:30, :30] == 0) < np.mean(x[-100:, -100:] == 0)


def test_planted_is_deterministic_for_a_seed():
  a = planted_cooccurrence(80, 3, seed=7)
  np.testing.assert_array_equal(a, planted_cooccurrence(80, 3, seed=7))
  assert not np.array_equal(a, planted_cooccurrence(80, 3, seed=8))


def test_planted_zipf_ordering():
  x = planted_cooccurrence(500, 8, seed=0)
  row_sums = x.sum(axis=1)
  # Row sums decrease on average: each block of 100 words sums to less than the last.
  block_means = row_sums.reshape(5, 100).mean(axis=1)
  assert (np.diff(block_means) < 0).all()
  ranks = np.arange(500)
  assert np.corrcoef(ranks, np.log1p(row_sums))[0, 1] < -0.8
  # zipf_exponent=0: flat frequencies, no such trend.
  flat = planted_cooccurrence(500, 8, zipf_exponent=0.0, seed=0).sum(axis=1)
  assert abs(np.corrcoef(ranks, flat)[0, 1]) < 0.2


def test_planted_total_count_scales_counts():
  small = planted_cooccurrence(100, 4, total_count=1e4, seed=0).sum()
  large = planted_cooccurrence(100, 4, total_count=1e6, seed=0).sum()
  assert 50 < large / small < 200


@pytest.mark.parametrize(
  ("kwargs", "error", "match"),
  [
    ({"vocab_size": 1}, ValueError, "vocab_size must be >= 2, got 1"),
    ({"vocab_size": 2.5}, TypeError, "vocab_size must be an integer, got 2.5"),
    ({"vocab_size": True}, TypeError, r"vocab_size must be an integer, got True \(a bool\)"),
    ({"rank": 0}, ValueError, "rank must be >= 1, got 0"),
    ({"total_count": 0.0}, ValueError, "total_count"),
    ({"total_count": float("inf")}, ValueError, "total_count"),
    ({"zipf_exponent": -1.0}, ValueError, "zipf_exponent"),
    ({"zipf_exponent": float("nan")}, ValueError, "zipf_exponent"),
    ({"seed": -1}, ValueError, "seed must be >= 0, got -1; pass an int >= 0"),
    ({"seed": "0"}, TypeError, "seed must be an integer, got '0' \\(a str\\); pass an int >= 0"),
  ],
)
def test_planted_argument_errors(kwargs, error, match):
  with pytest.raises(error, match=match):
    planted_cooccurrence(**kwargs)


def test_one_integer_check_for_every_example():
  # _cli.check_int is the examples' one rule: TypeError for a non-integer, ValueError
  # below the minimum, each naming the argument, the value and the fix.
  from optax_blockada.examples import movielens, recommender, text
  from optax_blockada.examples._cli import check_int

  assert check_int("n", np.int64(3), 1) == 3 and type(check_int("n", np.int64(3), 1)) is int
  with pytest.raises(
    TypeError, match=r"n must be an integer, got 2\.0 \(a float\); pass an int >= 1, e\.g\. 2\."
  ):
    check_int("n", 2.0, 1)
  with pytest.raises(ValueError, match=r"^n must be >= 1, got 0; pass an int >= 1\.$"):
    check_int("n", 0, 1)
  with pytest.raises(TypeError, match="dim must be an integer"):
    rot.init_params(4, 2.0)
  with pytest.raises(TypeError, match="n_users must be an integer"):
    movielens.planted_ratings(n_users=1.5)
  with pytest.raises(TypeError, match="k must be an integer"):
    recommender.ranking_metrics(np.zeros((2, 3)), ([0], [0]), ([1], [1]), k=1.0)
  with pytest.raises(TypeError, match="min_count must be an integer"):
    text.build_vocabulary([["a"]], min_count=1.0)


def test_planted_smallest_vocabulary():
  x = planted_cooccurrence(2, 1, seed=0)
  assert x.shape == (2, 2)
  assert x[0, 1] == x[1, 0] > 0


# -- command line --------------------------------------------------------------------


def _run_cli(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
  env.setdefault("JAX_PLATFORMS", "cpu")
  return subprocess.run(
    [sys.executable, "-m", "optax_blockada.examples.rotation", *args],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )


def test_cli_end_to_end(tmp_path):
  out = tmp_path / "results.json"
  proc = _run_cli("--steps", "5", "--dim", "4", "--vocab-size", "30", "--json", str(out))
  assert proc.returncode == 0, proc.stderr
  assert "| optimizer | loss (W) | loss (W R) | drift | state bytes |" in proc.stdout
  assert "drift =" in proc.stdout
  names = list(rot.default_optimizers(4))
  for name in names:
    assert f"| {name} |" in proc.stdout
  payload = json.loads(out.read_text())
  assert [r["name"] for r in payload["results"]] == names
  assert payload["settings"]["steps"] == 5
  assert payload["settings"]["dim"] == 4
  assert payload["settings"]["vocab_size"] == 30
  assert payload["jax"]
  assert payload["backend"]
  for r in payload["results"]:
    assert set(r) >= {"name", "loss", "loss_rotated", "drift", "state_bytes", "seconds"}


def test_cli_rejects_bad_input():
  proc = _run_cli("--steps", "0")
  assert proc.returncode != 0
  assert "argument --steps: must be >= 1, got 0" in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
  ("args", "message"),
  [
    (("--steps", "0"), "argument --steps: must be >= 1, got 0"),
    (("--steps", "ten"), "argument --steps: expected an integer, got 'ten'"),
    (("--dim", "0"), "argument --dim: must be >= 1, got 0"),
    (("--vocab-size", "1"), "argument --vocab-size: must be >= 2, got 1"),
    (("--seed", "-1"), "argument --seed: must be >= 0, got -1"),
  ],
)
def test_main_rejects_bad_input(capsys, args, message):
  with pytest.raises(SystemExit) as excinfo:
    rot.main(list(args))
  assert excinfo.value.code == 2
  assert message in capsys.readouterr().err


# -- drift over steps -----------------------------------------------------------------


def test_drift_over_steps_records_both_runs_after_every_step():
  cooc = planted_cooccurrence(50, 4, seed=0)
  params = rot.init_params(50, 8, seed=0)
  rotation = rot.random_orthogonal(8, seed=1)
  steps = 30
  rowwise = rot.drift_over_steps(ob.rowwise_adagrad(0.1), params, cooc, rotation, steps)
  diagonal = rot.drift_over_steps(ob.diagonal_adagrad(0.1), params, cooc, rotation, steps)
  for history in (rowwise, diagonal):
    assert set(history) == {"step", "drift", "loss", "loss_rotated"}
    for values in history.values():
      assert values.shape == (steps + 1,)
      assert values.dtype == np.float64
    np.testing.assert_array_equal(history["step"], np.arange(steps + 1))
    # Before any step: rotating and rotating back, float32 rounding only.
    assert history["drift"][0] < 1e-6
    assert history["loss"][0] == pytest.approx(float(rot.glove_loss(params, cooc)), rel=1e-6)
  # Row-wise: the rotated run stays the rotated copy, and so its loss is the same.
  assert rowwise["drift"].max() < 1e-4
  np.testing.assert_allclose(rowwise["loss_rotated"], rowwise["loss"], rtol=1e-5)
  # Diagonal: the drift grows from rounding to order 1e-2 and more.
  assert diagonal["drift"][-1] > 1e-2
  assert diagonal["drift"][-1] > 1e3 * diagonal["drift"][0]
  # The same steps as train(): its losses (before each step) and final parameters.
  final, losses = rot.train(ob.diagonal_adagrad(0.1), params, cooc, steps)
  np.testing.assert_allclose(diagonal["loss"][:-1], losses, rtol=1e-5)
  assert diagonal["loss"][-1] == pytest.approx(float(rot.glove_loss(final, cooc)), rel=1e-5)
  final_rotated, _ = rot.train(ob.diagonal_adagrad(0.1), rot.rotate(params, rotation), cooc, steps)
  assert diagonal["drift"][-1] == pytest.approx(
    rot.relative_drift(final, final_rotated, rotation), rel=1e-3
  )


def test_drift_over_steps_rejects_bad_input():
  cooc = planted_cooccurrence(10, 2, seed=0)
  params = rot.init_params(10, 4)
  tx = ob.rowwise_adagrad(0.1)
  with pytest.raises(ValueError, match="rotation must have shape"):
    rot.drift_over_steps(tx, params, cooc, rot.random_orthogonal(3), 5)
  with pytest.raises(ValueError, match="steps"):
    rot.drift_over_steps(tx, params, cooc, rot.random_orthogonal(4), 0)
  with pytest.raises(ValueError, match="rows"):
    rot.drift_over_steps(tx, rot.init_params(11, 4), cooc, rot.random_orthogonal(4), 5)
