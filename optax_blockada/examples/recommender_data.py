"""Recommender data: ratings, a seeded per-user split, LightFM feature matrices, planted data.

:func:`prepare_data` follows LightFM's MovieLens example: ratings ``>= 4`` are positives,
a seeded hold-out of 10 ratings per user (:func:`holdout_split`) stands in for the
``ua.base``/``ua.test`` split, and users and items are represented by an indicator
feature each, plus their side features for a hybrid model (:func:`feature_matrix`).
:func:`planted_ratings` generates ratings with a known low-rank structure, for tests and
machines without MovieLens (:mod:`~optax_blockada.examples.movielens` reads the real ones).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from optax_blockada.examples._cli import check_int

__all__ = [
  "Categorical",
  "FeatureMatrix",
  "Pairs",
  "Ratings",
  "RecommenderData",
  "feature_matrix",
  "holdout_split",
  "planted_ratings",
  "prepare_data",
]

Pairs = tuple[np.ndarray, np.ndarray]  # (user, item) index arrays


class Categorical(NamedTuple):
  """A categorical side feature of users or items; a row may have several values."""

  values: tuple[str, ...]  # the value names, one per column of `member`
  member: np.ndarray  # (n_rows, len(values)) bool: row r has value v


def _check_side(side: Mapping[str, Categorical], n_rows: int, label: str) -> None:
  for name, feature in side.items():
    if np.shape(feature.member) != (n_rows, len(feature.values)):
      raise ValueError(
        f"{label}[{name!r}].member must have shape ({n_rows}, {len(feature.values)}), "
        f"got {np.shape(feature.member)}."
      )


@dataclasses.dataclass(frozen=True)
class Ratings:
  """Explicit ratings with 0-based user and item indices and optional side features.

  Side features are named :class:`Categorical` features with ``n_users`` (``n_items``)
  rows; MovieLens has ``age``, ``gender`` and ``occupation`` for users, ``genre`` for items.
  """

  user: np.ndarray  # (n,) int32 user index of each rating, in [0, n_users)
  item: np.ndarray  # (n,) int32 item index of each rating, in [0, n_items)
  rating: np.ndarray  # (n,) float32
  n_users: int
  n_items: int
  user_side: Mapping[str, Categorical] = dataclasses.field(default_factory=dict)
  item_side: Mapping[str, Categorical] = dataclasses.field(default_factory=dict)
  source: str = ""  # where the data came from, for messages and result files

  def __post_init__(self):
    lengths = (len(self.user), len(self.item), len(self.rating))
    if len(set(lengths)) > 1:
      raise ValueError(f"user, item and rating must have the same length, got {lengths}.")
    for kind, index, size, side in (
      ("user", self.user, self.n_users, self.user_side),
      ("item", self.item, self.n_items, self.item_side),
    ):
      if len(index) and (index.min() < 0 or index.max() >= size):
        raise ValueError(
          f"{kind} indices must lie in [0, {size}), got [{index.min()}, {index.max()}]."
        )
      _check_side(side, size, f"{kind}_side")

  def __len__(self) -> int:
    return len(self.user)

  def subset(self, mask: np.ndarray) -> Ratings:
    """The ratings where ``mask`` is true (same users, items and side features)."""
    mask = np.asarray(mask, bool)
    return dataclasses.replace(
      self, user=self.user[mask], item=self.item[mask], rating=self.rating[mask]
    )

  def positives(self, min_rating: float = 4.0) -> Pairs:
    """``(user, item)`` index arrays of the ratings ``>= min_rating`` (LightFM: 4)."""
    keep = self.rating >= min_rating
    return self.user[keep], self.item[keep]


class FeatureMatrix(NamedTuple):
  """A sparse, row-normalised feature matrix in padded form.

  Row ``r`` (a user or an item) has features ``ids[r, j]`` with weights ``weights[r, j]``
  (0 in unused slots); a LightFM-style model represents it as
  ``sum_j weights[r, j] * embedding[ids[r, j]]``.
  """

  ids: np.ndarray  # (n_rows, width) int32 feature ids
  weights: np.ndarray  # (n_rows, width) float32, 0 in unused slots
  names: tuple[str, ...]  # one name per feature id

  @property
  def n_features(self) -> int:
    return len(self.names)


def holdout_split(
  user: np.ndarray, n_users: int, *, per_user: int = 10, seed: int = 0
) -> np.ndarray:
  """A seeded per-user hold-out: a ``(n,)`` bool mask, true for the test ratings.

  Each user with ``n_u`` ratings gives ``min(per_user, n_u // 2)`` of them, chosen
  uniformly at random (``numpy.random.default_rng(seed)``), to the test set. On
  MovieLens-100K (at least 20 ratings per user) ``per_user=10`` holds out exactly 10 per
  user, like the ``ua`` split LightFM uses.
  """
  n_users, per_user = check_int("n_users", n_users, 1), check_int("per_user", per_user, 0)
  seed = check_int("seed", seed, 0)
  user = np.asarray(user)
  if user.ndim != 1 or (user.size and (user.min() < 0 or user.max() >= n_users)):
    raise ValueError(f"user must be a 1-d array of indices in [0, {n_users}).")
  key = np.random.default_rng(seed).random(user.size)
  order = np.lexsort((key, user))  # by user, then by the random key
  counts = np.bincount(user, minlength=n_users)
  starts = np.cumsum(counts) - counts
  rank = np.empty(user.size, np.int64)
  rank[order] = np.arange(user.size) - starts[user[order]]
  return rank < np.minimum(per_user, counts // 2)[user]


def feature_matrix(
  n_rows: int, side: Mapping[str, Categorical] | None = None, *, prefix: str = ""
) -> FeatureMatrix:
  """Builds a LightFM feature matrix: an indicator per row plus the side features.

  Feature ids are laid out as ``[indicator (n_rows) | side feature 1 | ...]``, named with
  ``prefix`` (e.g. ``'user '``); the ``side`` features have ``n_rows`` rows each. Every row's
  weights sum to 1, as LightFM's ``Dataset`` normalises them by default.
  """
  n_rows = check_int("n_rows", n_rows, 1)
  _check_side(side or {}, n_rows, "side")
  names = [f"{prefix}{r}" for r in range(n_rows)]
  ids, valid = [np.arange(n_rows)[:, None]], [np.ones((n_rows, 1), bool)]
  for name, feature in (side or {}).items():
    member = np.asarray(feature.member, bool)
    width = int(member.sum(axis=1).max(initial=0))
    if width:  # a feature no row has adds no ids
      cols = np.argsort(~member, axis=1, kind="stable")[:, :width]  # a row's values first
      ids.append(cols + len(names))
      valid.append(np.take_along_axis(member, cols, axis=1))
      names.extend(f"{prefix}{name}={value}" for value in feature.values)
  ids, valid = np.concatenate(ids, axis=1), np.concatenate(valid, axis=1)
  order = np.argsort(~valid, axis=1, kind="stable")  # valid slots first, padding last
  ids, valid = np.take_along_axis(ids, order, axis=1), np.take_along_axis(valid, order, axis=1)
  weights = (valid / valid.sum(axis=1, keepdims=True)).astype(np.float32)
  return FeatureMatrix(np.where(valid, ids, 0).astype(np.int32), weights, tuple(names))


def planted_ratings(
  n_users: int = 300,
  n_items: int = 500,
  rank: int = 8,
  *,
  ratings_per_user: int = 40,
  zipf_exponent: float = 1.0,
  n_segments: int = 6,
  n_genres: int = 8,
  seed: int = 0,
) -> Ratings:
  r"""Samples ratings with a planted low-rank structure and Zipfian item popularity.

  Users and items have latent vectors with i.i.d. :math:`\mathcal{N}(0, r^{-1/2})` entries,
  so the affinity :math:`a_{ui} = u^\top v_i` has mean 0 and standard deviation 1. Item
  ``i`` has popularity :math:`p_i \propto (i + 1)^{-s}`. Each user rates
  ``ratings_per_user`` distinct items drawn with probability :math:`\propto p_i e^{a_{ui}}`
  (Gumbel top-k), rating them :math:`\mathrm{clip}(\mathrm{round}(3 + 1.5 a_{ui}), 1, 5)`
  (about 60% are ``>= 4``). Side features carry part of the structure: a user's
  ``segment`` is the argmax of :math:`u^\top P`, an item's two ``genre`` values the top two
  of :math:`v^\top Q`, for Gaussian ``P`` and ``Q``. All randomness comes from
  ``numpy.random.default_rng(seed)``.
  """
  n_users, n_items = check_int("n_users", n_users, 1), check_int("n_items", n_items, 2)
  rank = check_int("rank", rank, 1)
  ratings_per_user = check_int("ratings_per_user", ratings_per_user, 1)
  if ratings_per_user > n_items:
    raise ValueError(f"ratings_per_user must be <= n_items ({n_items}), got {ratings_per_user}.")
  if not 0.0 <= zipf_exponent < math.inf:  # refuses nan too
    raise ValueError(f"zipf_exponent must be a finite number >= 0, got {zipf_exponent!r}.")
  zipf_exponent = float(zipf_exponent)
  n_segments, n_genres = check_int("n_segments", n_segments, 1), check_int("n_genres", n_genres, 2)
  seed = check_int("seed", seed, 0)

  rng = np.random.default_rng(seed)
  users = rng.standard_normal((n_users, rank)) * rank**-0.25
  items = rng.standard_normal((n_items, rank)) * rank**-0.25
  log_popularity = -zipf_exponent * np.log(np.arange(1, n_items + 1))
  affinity = users @ items.T
  gumbel = rng.gumbel(size=(n_users, n_items))
  chosen = np.argsort(-(log_popularity[None, :] + affinity + gumbel), axis=1)[:, :ratings_per_user]
  user = np.repeat(np.arange(n_users), ratings_per_user)
  item = chosen.reshape(-1)
  rating = np.clip(np.round(3.0 + 1.5 * affinity[user, item]), 1, 5)
  segment = np.argmax(users @ rng.standard_normal((rank, n_segments)), axis=1)
  top_two = np.argsort(-(items @ rng.standard_normal((rank, n_genres))), axis=1)[:, :2]
  genre_member = np.zeros((n_items, n_genres), bool)
  np.put_along_axis(genre_member, top_two, True, axis=1)
  segment_member = np.arange(n_segments) == segment[:, None]
  segments = Categorical(tuple(map(str, range(n_segments))), segment_member)
  genres = Categorical(tuple(map(str, range(n_genres))), genre_member)
  source = f"planted ratings (n_users={n_users}, n_items={n_items}, rank={rank}, "
  source += f"ratings_per_user={ratings_per_user}, zipf_exponent={zipf_exponent}, seed={seed})"
  pairs = (user.astype(np.int32), item.astype(np.int32), rating.astype(np.float32))
  return Ratings(*pairs, n_users, n_items, {"segment": segments}, {"genre": genres}, source)


class RecommenderData(NamedTuple):
  """Positives, splits and features ready for training (see :func:`prepare_data`)."""

  n_users: int
  n_items: int
  user_features: FeatureMatrix
  item_features: FeatureMatrix
  train: Pairs  # training positives
  test: Pairs  # test positives
  fit: Pairs  # training positives minus the validation ones
  validation: Pairs  # validation positives
  source: str


def prepare_data(
  ratings: Ratings,
  *,
  min_rating: float = 4.0,
  test_per_user: int = 10,
  features: str = "indicator",
  seed: int = 0,
) -> RecommenderData:
  """Splits ratings per user, keeps the positives and builds the feature matrices.

  ``test_per_user`` ratings of each user (of any value, like MovieLens' ``ua`` split) go
  to the test set (:func:`holdout_split` with ``seed``); as many of the rest go to a
  validation set (``seed + 1``) for choosing learning rates, leaving the ``fit`` set.
  Ratings ``>= min_rating`` are the positives of each set. ``features``: ``'indicator'``
  (one feature per user and per item: matrix factorisation) or ``'hybrid'`` (indicators
  plus the side features).
  """
  if features not in ("indicator", "hybrid"):
    raise ValueError(f"features must be 'indicator' or 'hybrid', got {features!r}.")
  if isinstance(min_rating, bool) or not isinstance(min_rating, (int, float)):
    raise ValueError(f"min_rating must be a number, got {min_rating!r}.")
  test = holdout_split(ratings.user, ratings.n_users, per_user=test_per_user, seed=seed)
  train = ratings.subset(~test)
  validation = holdout_split(train.user, ratings.n_users, per_user=test_per_user, seed=seed + 1)
  sides = (ratings.user_side, ratings.item_side) if features == "hybrid" else ({}, {})
  return RecommenderData(
    n_users=ratings.n_users,
    n_items=ratings.n_items,
    user_features=feature_matrix(ratings.n_users, sides[0], prefix="user "),
    item_features=feature_matrix(ratings.n_items, sides[1], prefix="item "),
    train=train.positives(min_rating),
    test=ratings.subset(test).positives(min_rating),
    fit=train.subset(~validation).positives(min_rating),
    validation=train.subset(validation).positives(min_rating),
    source=ratings.source,
  )
