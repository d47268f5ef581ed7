"""Tests for the MovieLens loader, the recommender data, model, metrics and command line."""

from __future__ import annotations

import itertools
import json
import math
import pathlib
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from optax_blockada.examples import movielens as ml
from optax_blockada.examples import ranking
from optax_blockada.examples import recommender as rec
from optax_blockada.examples import recommender_data as rd
from optax_blockada.examples import recommender_model as rm
from optax_blockada.examples._checkpoint import Checkpointer, SettingsMismatch
from optax_blockada.examples.optimizers import OPTIMIZER_NAMES, make_optimizer

# -- tiny MovieLens files ------------------------------------------------------------------

U_DATA = "1\t2\t5\t881250949\n1\t3\t3\t881250950\n3\t1\t4\t881250951\n2\t2\t1\t881250952\n"
U_USER = "1|24|M|technician|85711\n2|53|F|other|94043\n3|17|M|student|32067\n"
# Items 1..3: title, release date, video date, URL, 19 genre flags.
_FLAGS = {1: [0, 0, 0, 1, 1, 1] + [0] * 13, 2: [0, 1, 1] + [0] * 13 + [1, 0, 0], 3: [1] + [0] * 18}
U_ITEM = "".join(
  f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{'|'.join(map(str, f))}\n" for i, f in _FLAGS.items()
)


def _write(folder: pathlib.Path, **files: str) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  for name, text in files.items():
    (folder / name.replace("_", ".")).write_text(text, encoding="latin-1")
  return folder


def _side_rows(side: rd.Categorical) -> list[list[str]]:
  return [[v for v, m in zip(side.values, row, strict=True) if m] for row in side.member]


def test_load_u_data_with_side_files(tmp_path):
  _write(tmp_path / "ml-100k", u_data=U_DATA, u_user=U_USER, u_item=U_ITEM)
  for path in (tmp_path, tmp_path / "ml-100k", tmp_path / "ml-100k" / "u.data"):
    data = ml.load_movielens(path)
    assert (data.n_users, data.n_items, len(data)) == (3, 3, 4)
    assert data.user.tolist() == [0, 0, 2, 1]  # 1-based ids -> 0-based indices
    assert data.item.tolist() == [1, 2, 0, 1]
    assert data.rating.tolist() == [5.0, 3.0, 4.0, 1.0]
    assert data.user.dtype == np.int32 and data.rating.dtype == np.float32
  assert _side_rows(data.user_side["age"]) == [["18-24"], ["50-55"], ["0-17"]]
  assert _side_rows(data.user_side["gender"]) == [["M"], ["F"], ["M"]]
  assert _side_rows(data.user_side["occupation"]) == [["technician"], ["other"], ["student"]]
  assert _side_rows(data.item_side["genre"]) == [
    ["Animation", "Children's", "Comedy"],
    ["Action", "Adventure", "Thriller"],
    ["unknown"],
  ]
  assert data.positives() == (pytest.approx([0, 2]), pytest.approx([1, 0]))


def test_load_recbole_format(tmp_path):
  inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + U_DATA
  user = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
  user += U_USER.replace("|", "\t")
  item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
  item += "1\tMovie 1\t1995\tAnimation Children's Comedy\n2\tMovie 2\t1995\tAction Adventure "
  item += "Thriller\n3\tMovie 3\t1995\tunknown\n"
  folder = tmp_path / "recbole"
  folder.mkdir()
  for suffix, text in (("inter", inter), ("user", user), ("item", item)):
    (folder / f"ml-100k.{suffix}").write_text(text)
  data = ml.load_movielens(folder)
  reference = ml.load_movielens(_write(tmp_path / "u", u_data=U_DATA, u_user=U_USER, u_item=U_ITEM))
  np.testing.assert_array_equal(data.user, reference.user)
  np.testing.assert_array_equal(data.item, reference.item)
  np.testing.assert_array_equal(data.rating, reference.rating)
  for side, ref in ((data.user_side, reference.user_side), (data.item_side, reference.item_side)):
    assert side.keys() == ref.keys()
    for name in side:
      assert _side_rows(side[name]) == _side_rows(ref[name])


def test_u_data_alone_has_no_side_features(tmp_path):
  data = ml.load_movielens(_write(tmp_path, u_data=U_DATA) / "u.data")
  assert data.user_side == {} and data.item_side == {}
  assert "no side features" in data.source


def test_installed_recbole_copy():
  if ml._recbole_folder() is None:
    pytest.skip("recbole is not installed (pip install --no-deps recbole==1.2.1)")
  data = ml.load_movielens()
  # Facts from MovieLens-100K's README: 100,000 ratings (1-5) by 943 users on 1,682
  # movies, each user has rated at least 20 movies; 19 genres, 21 occupations.
  assert (len(data), data.n_users, data.n_items) == (100_000, 943, 1682)
  assert set(np.unique(data.rating).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
  assert np.bincount(data.user, minlength=943).min() >= 20
  assert len(data.item_side["genre"].values) == 19
  assert len(data.user_side["occupation"].values) == 21
  assert set(data.user_side["gender"].values) == {"F", "M"}
  for side in (*data.user_side.values(), *data.item_side.values()):
    assert side.member.sum(axis=1).min() >= 1  # every user and movie has a value
  split = rd.holdout_split(data.user, data.n_users, per_user=10, seed=0)
  assert np.all(np.bincount(data.user[split], minlength=943) == 10)  # like the ua split


@pytest.mark.parametrize(
  ("text", "message"),
  [
    ("", "contains no ratings"),
    ("1\t2\t5\t0\n1\t2\n", "line 2: expected tab-separated user, item, rating"),
    ("1\t2\t5\t0\nx\t2\t5\t0\n", "line 2: user and item must be integer ids"),
    ("1\t2\tfive\t0\n", "line 1: user and item must be integer ids and the rating a number"),
    ("0\t2\t5\t0\n", "line 1: ids must be >= 1"),
    ("1\t2\tnan\t0\n", "the rating finite"),
    ("1\t2\t5\t0\n1\t2\t4\t1\n", "user 1 rates item 2 more than once"),
  ],
)
def test_malformed_u_data(tmp_path, text, message):
  path = tmp_path / "u.data"
  path.write_text(text)
  with pytest.raises(ValueError, match=message):
    ml.load_movielens(path)


def test_malformed_side_files(tmp_path):
  _write(tmp_path / "a", u_data=U_DATA, u_user="1|x|M|technician|85711\n")
  with pytest.raises(ValueError, match=r"u\.user', line 1: expected user id, age"):
    ml.load_movielens(tmp_path / "a")
  _write(tmp_path / "b", u_data=U_DATA, u_item="1|Movie|01-Jan-1995||http://x|0|1\n")
  with pytest.raises(ValueError, match=r"u\.item', line 1: expected an item id, a title"):
    ml.load_movielens(tmp_path / "b")


def test_missing_data(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match=r"does not exist.*pip install --no-deps recbole"):
    ml.find_movielens(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=r"no u\.data or ml-100k\.inter in the folder"):
    ml.find_movielens(tmp_path)
  monkeypatch.setattr(ml, "_recbole_folder", lambda: None)
  with pytest.raises(FileNotFoundError, match="recbole is not installed"):
    ml.find_movielens(None)


def _zip(path: pathlib.Path, files: dict[str, str]) -> str:
  with zipfile.ZipFile(path, "w") as z:
    for name, text in files.items():
      z.writestr(name, text)
  return path.as_uri()


def test_download_extracts_atomically(tmp_path):
  # A local file:// URL stands in for GroupLens (no network in tests).
  url = _zip(tmp_path / "good.zip", {"ml-100k/u.data": U_DATA, "ml-100k/u.user": U_USER})
  target = tmp_path / "data"
  path = ml.download_movielens(target, url=url)
  assert path == target / "ml-100k" / "u.data"
  assert path.read_text() == U_DATA
  assert sorted(p.name for p in target.iterdir()) == ["ml-100k"]  # no temporary left
  # Present already: no second download (a bad URL is never opened).
  assert ml.download_movielens(target, url="file:///nonexistent.zip") == path

  bad = _zip(tmp_path / "bad.zip", {"other/u.data": U_DATA})
  with pytest.raises(ValueError, match=r"holds no ml-100k/u\.data"):
    ml.download_movielens(tmp_path / "data2", url=bad)
  assert list((tmp_path / "data2").iterdir()) == []  # nothing half-written
  with pytest.raises(OSError):
    ml.download_movielens(tmp_path / "data3", url=(tmp_path / "missing.zip").as_uri())
  assert list((tmp_path / "data3").iterdir()) == []


# -- split, features, planted data ---------------------------------------------------------


def test_holdout_split_properties():
  rng = np.random.default_rng(0)
  user = rng.integers(0, 50, size=2000)
  test = rd.holdout_split(user, 50, per_user=10, seed=3)
  counts = np.bincount(user, minlength=50)
  # Independent reference: min(per_user, n_u // 2) per user.
  np.testing.assert_array_equal(np.bincount(user[test], minlength=50), np.minimum(10, counts // 2))
  np.testing.assert_array_equal(test, rd.holdout_split(user, 50, per_user=10, seed=3))
  assert not np.array_equal(test, rd.holdout_split(user, 50, per_user=10, seed=4))
  # Each rating of a user is equally likely to be held out: over many seeds, the
  # frequency of every rating of user 0 approaches 10 / n_0.
  n0 = counts[0]
  freq = np.mean([rd.holdout_split(user, 50, seed=s)[user == 0] for s in range(400)], axis=0)
  np.testing.assert_allclose(freq, 10 / n0, atol=0.1)
  assert not rd.holdout_split(user, 50, per_user=0).any()


def test_holdout_split_errors():
  with pytest.raises(ValueError, match="per_user must be >= 0, got -1"):
    rd.holdout_split(np.zeros(3, int), 1, per_user=-1)
  with pytest.raises(ValueError, match=r"indices in \[0, 2\)"):
    rd.holdout_split(np.array([0, 2]), 2)


def test_prepare_data_splits_partition_the_positives():
  ratings = rd.planted_ratings(n_users=60, n_items=80, ratings_per_user=30, seed=1)
  data = rd.prepare_data(ratings, test_per_user=5, seed=2)
  pairs = lambda p: set(zip(p[0].tolist(), p[1].tolist(), strict=True))
  all_positives = pairs(ratings.positives(4.0))
  train, test, fit, val = (pairs(p) for p in (data.train, data.test, data.fit, data.validation))
  assert train | test == all_positives and not train & test
  assert fit | val == train and not fit & val
  assert data.n_users == 60 and data.n_items == 80
  # 5 of each user's 30 ratings are held out, of any value; positives are >= 4.
  assert len(test) < 5 * 60
  kept = ratings.rating >= 4
  assert len(all_positives) == int(kept.sum())
  # Features: an indicator per user and item, plus (hybrid) one per side-feature value.
  assert (data.user_features.n_features, data.item_features.n_features) == (60, 80)
  hybrid = rd.prepare_data(ratings, test_per_user=5, seed=2, features="hybrid")
  n_segments, n_genres = (
    len(s.values) for s in (*ratings.user_side.values(), *ratings.item_side.values())
  )
  assert hybrid.user_features.n_features == 60 + n_segments
  assert hybrid.item_features.n_features == 80 + n_genres


def test_feature_matrix_against_dense_reference():
  rng = np.random.default_rng(0)
  a = rd.Categorical(("x", "y", "z"), rng.random((7, 3)) < 0.5)
  b = rd.Categorical(("p", "q"), np.eye(2, dtype=bool)[rng.integers(0, 2, 7)])
  f = rd.feature_matrix(7, {"a": a, "b": b}, prefix="u ")
  assert f.names == (*[f"u {r}" for r in range(7)], "u a=x", "u a=y", "u a=z", "u b=p", "u b=q")
  dense = np.zeros((7, f.n_features))
  np.add.at(dense, (np.arange(7)[:, None], f.ids), f.weights)
  reference = np.concatenate([np.eye(7), a.member, b.member], axis=1).astype(float)
  reference /= reference.sum(axis=1, keepdims=True)
  np.testing.assert_allclose(dense, reference, rtol=1e-6)
  assert f.ids.dtype == np.int32 and f.weights.dtype == np.float32
  assert np.all(f.ids[f.weights == 0] == 0)  # padding slots point at feature 0, weight 0
  # A feature that no row has adds no feature ids.
  nobody = rd.Categorical(("n",), np.zeros((7, 1), bool))
  g = rd.feature_matrix(7, {"a": a, "none": nobody, "b": b}, prefix="u ")
  assert g.names == f.names
  np.testing.assert_array_equal(g.ids, f.ids)
  np.testing.assert_array_equal(g.weights, f.weights)


def test_feature_matrix_errors():
  two_rows = rd.Categorical(("x",), np.array([[True], [False]]))
  with pytest.raises(ValueError, match=r"side\['a'\]\.member must have shape \(3, 1\)"):
    rd.feature_matrix(3, {"a": two_rows})


def test_planted_ratings():
  data = rd.planted_ratings(n_users=40, n_items=60, rank=4, ratings_per_user=12, seed=5)
  assert np.all(np.bincount(data.user, minlength=40) == 12)
  pairs = data.user.astype(int) * 60 + data.item
  assert len(np.unique(pairs)) == len(pairs)  # no user rates an item twice
  assert set(np.unique(data.rating).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
  assert 0.2 < np.mean(data.rating >= 4) < 0.9
  same = rd.planted_ratings(n_users=40, n_items=60, rank=4, ratings_per_user=12, seed=5)
  np.testing.assert_array_equal(data.item, same.item)
  # Zipfian popularity: the most popular tenth of the items gets far more than a tenth.
  assert np.mean(data.item < 6) > 0.25
  assert data.item_side["genre"].member.sum(axis=1).tolist() == [2] * 60
  with pytest.raises(ValueError, match="ratings_per_user must be <= n_items"):
    rd.planted_ratings(n_users=2, n_items=3, ratings_per_user=4)


# -- model, losses and metrics ------------------------------------------------------------


def _small_model(seed=0, dim=6):
  ratings = rd.planted_ratings(n_users=30, n_items=40, ratings_per_user=10, seed=seed)
  data = rd.prepare_data(ratings, test_per_user=3, features="hybrid")
  model = rm.LightFM(data.user_features, data.item_features, dim, rngs=nnx.Rngs(seed))
  # Non-trivial biases, so that the bias terms are checked too.
  model.user_bias[...] = jnp.asarray(np.random.default_rng(1).normal(size=model.user_bias.shape))
  model.item_bias[...] = jnp.asarray(np.random.default_rng(2).normal(size=model.item_bias.shape))
  return data, model


def _reference_scores(data, model):
  """float64 numpy, from the definition: sums of weighted feature rows, then a dot."""

  def represent(features, table, bias):
    table, bias = np.asarray(table, np.float64), np.asarray(bias, np.float64)
    vec = np.zeros((features.ids.shape[0], table.shape[1]))
    b = np.zeros(features.ids.shape[0])
    for r in range(features.ids.shape[0]):
      for f, w in zip(features.ids[r], features.weights[r], strict=True):
        vec[r] += w * table[f]
        b[r] += w * bias[f]
    return vec, b

  eu, bu = represent(data.user_features, model.user_embedding[...], model.user_bias[...])
  ei, bi = represent(data.item_features, model.item_embedding[...], model.item_bias[...])
  return eu @ ei.T + bu[:, None] + bi[None, :]


def test_model_scores_match_the_definition():
  data, model = _small_model()
  reference = _reference_scores(data, model)

  @nnx.jit
  def scores(model, pairs_u, pairs_i):
    return (
      model.score_all(jnp.arange(model.n_users)),
      model(pairs_u, pairs_i),
      model(pairs_u, pairs_i[:, 0]),
    )

  pairs_u = jnp.array([0, 3, 29])
  pairs_i = jnp.array([[1, 2], [0, 39], [5, 5]])
  every, grid, pairs = scores(model, pairs_u, pairs_i)
  np.testing.assert_allclose(every, reference, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    grid, reference[np.array([[0], [3], [29]]), pairs_i], rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(pairs, reference[pairs_u, pairs_i[:, 0]], rtol=1e-5, atol=1e-5)
  # The feature matrices are no parameters: optimizers leave them alone.
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert sorted(params) == ["item_bias", "item_embedding", "user_bias", "user_embedding"]
  # LightFM's initialisation.
  dim = model.user_embedding.shape[1]
  assert float(jnp.max(jnp.abs(model.item_embedding[...]))) <= 0.5 / dim


def test_bpr_loss_and_its_gradient():
  pos = np.array([0.3, -2.0, 5.0], np.float32)
  neg = np.array([0.1, 1.0, -5.0], np.float32)
  expected = -np.log(1 / (1 + np.exp(-(pos.astype(float) - neg))))
  np.testing.assert_allclose(rm.bpr_loss(jnp.asarray(pos), jnp.asarray(neg)), expected, rtol=1e-5)
  # d/d pos = -(1 - sigmoid(pos - neg)): LightFM's BPR step.
  grad = jax.grad(lambda p: jnp.sum(rm.bpr_loss(p, jnp.asarray(neg))))(jnp.asarray(pos))
  diff = pos.astype(np.float64) - neg
  np.testing.assert_allclose(grad, -1 / (1 + np.exp(diff)), rtol=1e-5)


def _warp_reference(pos, neg, valid, n_items, *, weights=False):
  """LightFM's fit_warp loop, per example, in plain Python: losses (or weights)."""
  losses, out_weights = [], []
  for b in range(len(pos)):
    loss, weight, drawn = 0.0, 0.0, 0
    for j in range(neg.shape[1]):
      if not valid[b, j]:
        continue  # a positive: LightFM resamples without counting it
      drawn += 1
      if neg[b, j] > pos[b] - 1:
        weight = min(math.log(max(1.0, math.floor((n_items - 1) / drawn))), 10.0)
        loss = weight * (1 - pos[b] + neg[b, j])
        break
    losses.append(loss)
    out_weights.append(weight)
  return np.array(out_weights if weights else losses)


def test_warp_loss_against_lightfm_loop():
  rng = np.random.default_rng(0)
  pos = rng.normal(size=64).astype(np.float32)
  neg = rng.normal(size=(64, 10)).astype(np.float32) - 1.0
  valid = rng.random((64, 10)) < 0.8
  for n_items in (3, 12, 1682, 10**6):  # weights 0 (log 1), small, large, clipped at 10
    got = rm.warp_loss(jnp.asarray(pos), jnp.asarray(neg), jnp.asarray(valid), n_items)
    np.testing.assert_allclose(got, _warp_reference(pos, neg, valid, n_items), rtol=1e-5, atol=1e-6)
  assert np.any(_warp_reference(pos, neg, valid, 1682) == 0)  # some without a violator
  # The weight is a constant: the gradient w.r.t. the positive score is -weight.
  grad = jax.grad(lambda p: jnp.sum(rm.warp_loss(p, jnp.asarray(neg), jnp.asarray(valid), 1682)))(
    jnp.asarray(pos)
  )
  np.testing.assert_allclose(grad, -_warp_reference(pos, neg, valid, 1682, weights=True), rtol=1e-6)


@pytest.mark.parametrize("loss", rec.LOSSES)
def test_sampled_loss_skips_the_users_own_positives(loss):
  data, model = _small_model()
  scores = _reference_scores(data, model)
  user, item = data.train
  liked = set(zip(user.tolist(), item.tolist(), strict=True))
  keys = jnp.asarray(np.unique(user.astype(np.int64) * model.n_items + item).astype(np.int32))
  rng = np.random.default_rng(0)
  rows = rng.integers(0, len(user), 32)
  u, i = user[rows], item[rows]
  candidates = item[rng.integers(0, len(user), (32, 4))]  # items of positives: some the user's
  candidates[0] = i[0]  # only the user's own positive: no negative, loss 0
  got = rm.sampled_loss(model, *map(jnp.asarray, (u, i, candidates, keys)), loss)
  valid = np.array(
    [[(a, c) not in liked for c in row] for a, row in zip(u, candidates, strict=True)]
  )
  assert not valid[0].any() and not valid.all()
  pos, neg = scores[u, i], scores[u[:, None], candidates]
  if loss == "warp":
    want = _warp_reference(pos, neg, valid, model.n_items)
  else:  # BPR: the first candidate that is not a positive of the user
    want = [
      np.logaddexp(0, neg[b, v.argmax()] - pos[b]) if v.any() else 0 for b, v in enumerate(valid)
    ]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("negatives", ["popularity", "uniform"])
def test_sample_epoch(negatives):
  items = np.array([3, 1, 4, 1, 5, 9, 2, 6])
  order, candidates = rm.sample_epoch(0, 1, items, 12, 5, negatives)
  assert sorted(order.tolist()) == list(range(8)) and candidates.shape == (8, 5)
  allowed = set(items.tolist()) if negatives == "popularity" else set(range(12))
  assert set(candidates.ravel().tolist()) <= allowed
  again = rm.sample_epoch(0, 1, items, 12, 5, negatives)
  np.testing.assert_array_equal(candidates, again[1])  # epoch e is the same in every run
  assert not np.array_equal(order, rm.sample_epoch(0, 2, items, 12, 5, negatives)[0])


def _brute_force_metrics(scores, train, test, k):
  n_users, n_items = scores.shape
  train_sets = [set() for _ in range(n_users)]
  test_sets = [set() for _ in range(n_users)]
  for u, i in zip(*train, strict=True):
    train_sets[u].add(i)
  for u, i in zip(*test, strict=True):
    test_sets[u].add(i)
  out = {"user": [], "precision": [], "recall": [], "auc": []}
  for u in range(n_users):
    positives = test_sets[u]
    if not positives:
      continue
    candidates = [i for i in range(n_items) if i not in train_sets[u]]
    top = sorted(candidates, key=lambda i: -scores[u, i])[:k]
    hits = len(set(top) & positives)
    negatives = [i for i in candidates if i not in positives]
    pairs = [
      1.0 if scores[u, p] > scores[u, n] else 0.5 if scores[u, p] == scores[u, n] else 0.0
      for p in positives
      for n in negatives
    ]
    out["user"].append(u)
    out["precision"].append(hits / k)
    out["recall"].append(hits / len(positives))
    out["auc"].append(np.mean(pairs) if pairs else 0.5)
  return {key: np.array(v) for key, v in out.items()}


def _random_split(rng, n_users, n_items, density):
  pairs = np.argwhere(rng.random((n_users, n_items)) < density)
  is_test = rng.random(len(pairs)) < 0.3
  return (pairs[~is_test, 0], pairs[~is_test, 1]), (pairs[is_test, 0], pairs[is_test, 1])


@pytest.mark.parametrize("k", [1, 5])
def test_ranking_metrics_against_brute_force(k):
  rng = np.random.default_rng(k)
  scores = rng.normal(size=(25, 30))
  train, test = _random_split(rng, 25, 30, 0.3)
  got = ranking.ranking_metrics(scores, train, test, k=k)
  want = _brute_force_metrics(scores, train, test, k)
  assert len(want["user"]) > 15
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-12)


def test_auc_counts_ties_as_one_half():
  rng = np.random.default_rng(7)
  scores = rng.integers(0, 3, size=(20, 15)).astype(float)  # many ties
  train, test = _random_split(rng, 20, 15, 0.3)
  got = ranking.ranking_metrics(scores, train, test, k=3)
  np.testing.assert_allclose(got["auc"], _brute_force_metrics(scores, train, test, 3)["auc"])


def test_ranking_metrics_errors():
  with pytest.raises(ValueError, match="train and test share a"):
    ranking.ranking_metrics(np.zeros((2, 3)), ([0], [1]), ([0], [1]), k=1)
  with pytest.raises(ValueError, match=r"k must be <= n_items \(3\), got 4"):
    ranking.ranking_metrics(np.zeros((2, 3)), ([0], [1]), ([1], [1]), k=4)


def test_evaluate_matches_metrics_of_the_reference_scores():
  data, model = _small_model(seed=3)
  reference = _reference_scores(data, model)
  want = _brute_force_metrics(reference, data.train, data.test, 5)
  got = ranking.evaluate(model, data.train, data.test, k=5, chunk_size=7)  # several chunks
  assert got["users"] == len(want["user"])
  for key in ("precision", "recall", "auc"):
    assert got[key] == pytest.approx(np.mean(want[key]), abs=1e-6)


# -- training ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted():
  ratings = rd.planted_ratings(n_users=120, n_items=150, rank=4, ratings_per_user=25, seed=0)
  return rd.prepare_data(ratings, test_per_user=5, features="hybrid")


@pytest.mark.parametrize("loss", rec.LOSSES)
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_loss_falls_with_each_optimizer(planted, name, loss):
  model = rm.LightFM(planted.user_features, planted.item_features, 8, rngs=nnx.Rngs(0))
  before = ranking.evaluate(model, planted.train, planted.test)
  tx = make_optimizer(name, 0.1, preset="lightfm")
  result = rec.train(model, tx, planted.train, loss=loss, epochs=10, batch_size=128)
  after = ranking.evaluate(model, planted.train, planted.test)
  assert np.all(np.isfinite(result.epoch_losses))
  assert result.epoch_losses[-1] < 0.85 * result.epoch_losses[0], result.epoch_losses
  # The planted structure is learnt: test AUC rises well above chance.
  assert after["auc"] > before["auc"] + 0.1 and after["auc"] > 0.7, (before, after)


def test_train_errors(planted):
  model = rm.LightFM(planted.user_features, planted.item_features, 4, rngs=nnx.Rngs(0))
  tx = make_optimizer("rowwise", 0.1)
  with pytest.raises(ValueError, match=r"loss must be one of \('bpr', 'warp'\), got 'hinge'"):
    rec.train(model, tx, planted.train, loss="hinge")
  with pytest.raises(ValueError, match="negatives must be 'popularity' or 'uniform'"):
    rec.train(model, tx, planted.train, negatives="hard")
  with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
    rec.train(model, tx, planted.train, epochs=0)
  with pytest.raises(ValueError, match="positives must index the model's 120 users"):
    rec.train(model, tx, (np.array([120]), np.array([0])))
  with pytest.raises(ValueError, match="resume=True needs a checkpoint_dir"):
    rec.train(model, tx, planted.train, resume=True)
  with pytest.raises(ValueError, match="features must be 'indicator' or 'hybrid'"):
    rd.prepare_data(rd.planted_ratings(n_users=5, n_items=5, ratings_per_user=2), features="x")


class _Interrupted(Exception):
  pass


@pytest.mark.parametrize("loss", rec.LOSSES)
def test_resume_equals_uninterrupted(planted, tmp_path, monkeypatch, loss):
  def fresh():
    return rm.LightFM(planted.user_features, planted.item_features, 8, rngs=nnx.Rngs(1))

  settings = dict(loss=loss, epochs=5, batch_size=128, seed=3, checkpoint_every=25, tag="t")
  tx = make_optimizer("preset", 0.05, preset="lightfm")
  whole = fresh()
  expected = rec.train(whole, tx, planted.train, **settings)
  steps_per_epoch = -(-len(planted.train[0]) // 128)
  assert expected.steps == 5 * steps_per_epoch and 50 % steps_per_epoch  # 50: mid-epoch

  # Interrupt the second run right after its step-50 checkpoint.
  save = Checkpointer.save

  def save_then_stop(self, step, state, force=False):
    written = save(self, step, state, force=force)
    if step == 50:
      raise _Interrupted
    return written

  monkeypatch.setattr(Checkpointer, "save", save_then_stop)
  with pytest.raises(_Interrupted):
    rec.train(fresh(), tx, planted.train, checkpoint_dir=tmp_path, **settings)
  monkeypatch.setattr(Checkpointer, "save", save)

  resumed = fresh()
  result = rec.train(resumed, tx, planted.train, checkpoint_dir=tmp_path, resume=True, **settings)
  assert result.steps - result.steps_run == 50
  np.testing.assert_array_equal(result.epoch_losses, expected.epoch_losses)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(resumed), nnx.state(whole))

  # A finished run resumes to itself without training, and other settings are refused.
  again = rec.train(fresh(), tx, planted.train, checkpoint_dir=tmp_path, resume=True, **settings)
  assert again.steps_run == 0
  np.testing.assert_array_equal(again.epoch_losses, expected.epoch_losses)
  with pytest.raises(SettingsMismatch, match=r"written with other settings \(tag differ\)"):
    rec.train(
      fresh(), tx, planted.train, checkpoint_dir=tmp_path, resume=True, **{**settings, "tag": "u"}
    )
  fewer = tuple(a[:-1] for a in planted.train)
  with pytest.raises(SettingsMismatch, match=r"\(data differ\)"):
    rec.train(fresh(), tx, fewer, checkpoint_dir=tmp_path, resume=True, **settings)


# -- command line --------------------------------------------------------------------------


@pytest.fixture
def tiny_u_data(tmp_path):
  ratings = rd.planted_ratings(n_users=40, n_items=50, rank=4, ratings_per_user=20, seed=2)
  lines = [
    f"{u + 1}\t{i + 1}\t{int(r)}\t{880000000 + n}\n"
    for n, (u, i, r) in enumerate(zip(ratings.user, ratings.item, ratings.rating, strict=True))
  ]
  path = tmp_path / "ml-100k" / "u.data"
  path.parent.mkdir()
  path.write_text("".join(lines))
  return path


CLI = ["--quick", "--epochs", "2", "--dim", "4", "--batch-size", "64"]


def test_cli_end_to_end(tiny_u_data, tmp_path, capsys):
  out = tmp_path / "results.json"
  args = ["--optimizers", "rowwise", "--learning-rates", "0.05", "0.1", "--json", str(out)]
  assert rec.main(["--data", str(tiny_u_data.parent), *CLI, *args]) == 0
  printed = capsys.readouterr().out
  assert "40 users, 50 items" in printed
  table = [line for line in printed.splitlines() if line.startswith("| ")]
  assert table[0].startswith("| optimizer | loss | best lr | P@10 | R@10 | AUC |")
  assert len(table) == 2 + 2  # header, rule, BPR and WARP
  payload = json.loads(out.read_text())
  rows = payload["results"]
  assert [(r["loss"], r["optimizer"]) for r in rows] == [("bpr", "rowwise"), ("warp", "rowwise")]
  for r in rows:
    # The reported rate is the best on validation P@10 (ties: AUC).
    best = max(r["validation"].items(), key=lambda kv: (kv[1]["precision"], kv[1]["auc"]))
    assert sorted(r["validation"]) == ["0.05", "0.1"]
    assert float(best[0]) == r["learning_rate"]
    assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and 0 <= r["auc"] <= 1
    assert f"| rowwise | {r['loss'].upper()} | {r['learning_rate']:g} |" in printed
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".results")] == []


def test_cli_resume_gives_the_same_results(tiny_u_data, tmp_path, capsys):
  args = ["--data", str(tiny_u_data), *CLI, "--optimizers", "preset", "--loss", "warp"]
  args += ["--learning-rates", "0.1", "--checkpoint-dir", str(tmp_path / "ckpt")]
  first, second = tmp_path / "a.json", tmp_path / "b.json"
  assert rec.main([*args, "--json", str(first)]) == 0
  assert sorted(p.name for p in (tmp_path / "ckpt" / "warp" / "preset").iterdir()) == [
    "final-lr0.1",
    "validation-lr0.1",
  ]
  assert rec.main([*args, "--resume", "--json", str(second)]) == 0
  capsys.readouterr()
  a, b = json.loads(first.read_text()), json.loads(second.read_text())
  for ra, rb in zip(a["results"], b["results"], strict=True):
    for key in ("learning_rate", "precision", "recall", "auc", "train_loss", "validation"):
      assert ra[key] == rb[key]


def test_cli_falls_back_to_planted_data(monkeypatch, capsys):
  monkeypatch.setattr(ml, "_recbole_folder", lambda: None)
  args = ["--optimizers", "rowwise", "--loss", "bpr", "--learning-rates", "0.1"]
  assert rec.main([*args, "--epochs", "1", "--dim", "4", "--batch-size", "4096"]) == 0
  captured = capsys.readouterr()
  assert "recbole is not installed" in captured.err
  assert "Falling back to planted data" in captured.err
  assert "Data: planted ratings" in captured.out


@pytest.mark.parametrize(
  ("args", "message"),
  [
    (["--data", "/nonexistent/u.data"], "does not exist"),
    (["--data", "/nonexistent", "--planted"], "not allowed with argument"),
    (["--learning-rates", "0"], "a learning rate must be in (0, 10], got 0"),
    (["--learning-rates", "-0.1"], "a learning rate must be in"),
    (["--learning-rates", "nan"], "a learning rate must be in"),
    (["--learning-rates", "100"], "a learning rate must be in"),
    (["--learning-rates", "fast"], "expected a number, got 'fast'"),
    (["--loss", "hinge"], "invalid choice: 'hinge'"),
    (["--optimizers", "adam"], "invalid choice: 'adam'"),
    (["--epochs", "0"], "must be >= 1, got 0"),
    (["--resume"], "--resume needs --checkpoint-dir"),
    (["--json", "/nonexistent/folder/out.json"], "the folder of"),
  ],
)
def test_cli_bad_input(args, message, capsys):
  # --planted (or the bad --data): a run that got past the check would train on data.
  with pytest.raises(SystemExit) as exit_info:
    rec.main(args if "--data" in args else ["--planted", *args])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_cli_bad_data_writes_nothing(tmp_path, capsys):
  bad = tmp_path / "u.data"
  bad.write_text("1\t2\t5\t0\n1\t2\n")
  out = tmp_path / "out.json"
  ckpt = tmp_path / "ckpt"
  with pytest.raises(SystemExit) as exit_info:
    rec.main(["--data", str(bad), "--json", str(out), "--checkpoint-dir", str(ckpt)])
  assert exit_info.value.code == 2
  assert "line 2: expected tab-separated user, item, rating" in capsys.readouterr().err
  assert not out.exists() and not ckpt.exists()
  with pytest.raises(SystemExit):
    rec.main(["--planted", "--checkpoint-dir", str(ckpt), "--resume"])
  assert "no checkpoint in" in capsys.readouterr().err


def test_run_comparison_without_validation_is_the_final_run():
  data = rd.prepare_data(rd.planted_ratings(n_users=40, n_items=50, ratings_per_user=10))
  kwargs = dict(optimizers=["rowwise"], losses=["bpr"], learning_rates=[0.1], epochs=3, dim=4)
  (validated,) = rec.run_comparison(data, **kwargs)
  (direct,) = rec.run_comparison(data, **kwargs, validate=False)
  assert sorted(validated["validation"]) == [0.1] and direct["validation"] == {}
  for key in ("learning_rate", "precision", "recall", "auc", "train_loss", "state_bytes"):
    assert direct[key] == validated[key]
  assert direct["train_losses"] == validated["train_losses"]
  assert len(direct["train_losses"]) == 3 and direct["train_losses"][-1] == direct["train_loss"]
  with pytest.raises(ValueError, match="validate=False needs exactly one learning rate, got 2"):
    rec.run_comparison(data, **{**kwargs, "learning_rates": [0.05, 0.1]}, validate=False)


def test_readme_table_is_laid_out_as_the_command_prints_it():
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  lines = readme[readme.index("**Recommender**") :].splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("| "))
  table = list(itertools.takewhile(lambda line: line.startswith("| "), lines[start:]))
  header, rule = rec.table([]).splitlines()
  assert table[:2] == [header, rule]
  assert len(table) == 2 + 2 * len(OPTIMIZER_NAMES)  # every optimizer with BPR and WARP
  assert all(line.count("|") == header.count("|") for line in table)
