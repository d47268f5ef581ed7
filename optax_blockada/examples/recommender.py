r"""A LightFM-style hybrid recommender in Flax NNX, trained with each Adagrad variant.

LightFM (Kula 2015) represents a user as the sum of the embeddings of the user's
features (an indicator of the user, age bucket, occupation, ...) and an item as the sum
of its features' embeddings (the item's indicator, its genres), each with a bias:

.. math::
    e_u = \sum_f x_{uf} E^U_f, \quad b_u = \sum_f x_{uf} b^U_f, \qquad
    e_i = \sum_g y_{ig} E^I_g, \quad b_i = \sum_g y_{ig} b^I_g, \qquad
    s(u, i) = e_u^\top e_i + b_u + b_i,

with row-normalised feature weights ``x`` and ``y``
(:func:`optax_blockada.examples.movielens.feature_matrix`). With indicator features
only it is matrix factorisation. It is trained on positive interactions with LightFM's
two ranking losses:

* **BPR**: ``-log sigmoid(s(u, i) - s(u, j))`` for a positive ``i`` and a sampled
  negative ``j``. As in LightFM, ``j`` is by default the item of a random training
  interaction (popularity-weighted), resampled when it is one of the user's positives;
  ``negatives='uniform'`` samples items uniformly, as classic BPR-MF does.
* **WARP**: negatives ``j`` are drawn uniformly (skipping the user's positives) until
  one violates the margin, ``s(u, j) > s(u, i) - 1``; after ``n`` draws the hinge
  ``1 - s(u, i) + s(u, j)`` is weighted by ``log(max(1, floor((n_items - 1) / n)))``
  (at most 10, LightFM's ``MAX_LOSS``), an estimate of the log-rank of ``i``.

LightFM updates after every example; here a minibatch of examples is vectorised: every
example draws ``max_sampled`` candidates at once (LightFM's default 10; WARP stops at
the first violator among them, BPR takes the first non-positive; an example without
one contributes nothing), and the gradient is the *sum* of the examples' gradients.
With Adagrad that is not what LightFM's per-example steps add up to: LightFM steps each
example in turn (the positive item, then the negative one, each with its own accumulator
update, so an accumulator grows by :math:`g_p^2 + g_n^2` over two steps), where a
minibatch step adds the square of the summed gradient once. The training loop is a plain jitted
``jax.lax.scan`` over the minibatches of an epoch on the module's parameters
(:func:`flax.nnx.split`), so any optax transform trains it.

Metrics follow LightFM's evaluation: precision@k, recall@k and per-user ROC AUC on the
test positives, ranking every item that is not a training positive of the user, averaged
over the users with at least one test positive.

Checked against published numbers on MovieLens-100K (d=32, 30 epochs, LightFM's Adagrad
at lr 0.05, batch 256, indicator features; single runs): BPR with uniform negatives
P@10 0.131 / AUC 0.931 (BPR-MF measured in the project's notes: 0.124 / 0.934); BPR with
LightFM's popularity-weighted negatives 0.105 / 0.865 (LightFM's MovieLens notebook:
0.10 / 0.86); WARP 0.137 / 0.934 (notebook: 0.11 / 0.90, on its own split).

Run the comparison with::

    python -m optax_blockada.examples.recommender [--loss bpr|warp|both] [--quick]
        [--data PATH] [--bpr-negatives popularity|uniform] [--json PATH]
        [--checkpoint-dir DIR [--resume]]

It trains on MovieLens-100K when available (see
:mod:`optax_blockada.examples.movielens`), else says so and uses planted data.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pathlib
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats
from flax import nnx

import optax_blockada as ob
from optax_blockada.examples import movielens
from optax_blockada.examples._checkpoint import Checkpointer, CheckpointError
from optax_blockada.examples._cli import check_int, float_in, int_at_least
from optax_blockada.examples.optimizers import OPTIMIZER_NAMES, make_optimizer
from optax_blockada.examples.report import markdown_table, write_json

__all__ = [
  "DEFAULT_LEARNING_RATES",
  "LOSSES",
  "FeatureIndex",
  "LightFM",
  "RecommenderData",
  "TrainResult",
  "bpr_loss",
  "evaluate",
  "main",
  "prepare_data",
  "ranking_metrics",
  "run_comparison",
  "train",
  "warp_loss",
]

LOSSES = ("bpr", "warp")
"""The training losses :func:`train` accepts."""

DEFAULT_LEARNING_RATES = (0.003, 0.01, 0.03, 0.1)
"""The learning rates the command line tries for each optimizer (``--quick``: 0.03, 0.1)."""

_QUICK_LEARNING_RATES = (0.03, 0.1)
_MAX_LOSS = 10.0  # LightFM clips the WARP weight at MAX_LOSS.


# -- data --------------------------------------------------------------------------------


class RecommenderData(NamedTuple):
  """Positives, splits and features ready for training (see :func:`prepare_data`).

  Example:
    >>> from optax_blockada.examples.movielens import planted_ratings
    >>> from optax_blockada.examples.recommender import prepare_data
    >>> data = prepare_data(planted_ratings(n_users=10, n_items=20, ratings_per_user=6))
    >>> len(data.fit[0]) + len(data.validation[0]) == len(data.train[0])
    True
  """

  n_users: int
  n_items: int
  user_features: movielens.FeatureMatrix
  item_features: movielens.FeatureMatrix
  train: tuple[np.ndarray, np.ndarray]  # (user, item) training positives
  test: tuple[np.ndarray, np.ndarray]  # (user, item) test positives
  fit: tuple[np.ndarray, np.ndarray]  # training positives minus the validation ones
  validation: tuple[np.ndarray, np.ndarray]  # (user, item) validation positives
  source: str


def prepare_data(
  ratings: movielens.Ratings,
  *,
  min_rating: float = 4.0,
  test_per_user: int = 10,
  features: str = "indicator",
  seed: int = 0,
) -> RecommenderData:
  """Splits ratings per user, keeps the positives and builds the feature matrices.

  ``test_per_user`` ratings of each user (of any value, like MovieLens' ``ua`` split)
  go to the test set with :func:`~optax_blockada.examples.movielens.holdout_split`
  (``seed``); as many of the remaining ratings go to a validation set (``seed + 1``)
  for choosing learning rates, leaving the ``fit`` set. Ratings ``>= min_rating`` are
  the positives of each set.

  Args:
    ratings: the ratings.
    min_rating: the smallest positive rating (LightFM's MovieLens example: 4).
    test_per_user: ratings per user held out for testing (and for validation).
    features: ``'indicator'`` (one feature per user and per item: matrix
      factorisation) or ``'hybrid'`` (indicators plus the side features).
    seed: seed of the split.

  Returns:
    A :class:`RecommenderData`.

  Example:
    >>> from optax_blockada.examples.movielens import planted_ratings
    >>> from optax_blockada.examples.recommender import prepare_data
    >>> data = prepare_data(planted_ratings(n_users=10, n_items=30, ratings_per_user=8),
    ...                     test_per_user=2, features='hybrid')
    >>> data.user_features.n_features, data.item_features.n_features  # 10 + 6, 30 + 8
    (16, 38)
  """
  if features not in ("indicator", "hybrid"):
    raise ValueError(f"features must be 'indicator' or 'hybrid', got {features!r}.")
  if isinstance(min_rating, bool) or not isinstance(min_rating, (int, float)):
    raise ValueError(f"min_rating must be a number, got {min_rating!r}.")
  if ratings.n_users * ratings.n_items >= 2**31:
    raise ValueError(
      f"n_users * n_items = {ratings.n_users * ratings.n_items} is too large: the "
      "training step looks (user, item) pairs up as int32 keys."
    )
  test = movielens.holdout_split(ratings.user, ratings.n_users, per_user=test_per_user, seed=seed)
  train_ratings = ratings.subset(~test)
  validation = movielens.holdout_split(
    train_ratings.user, ratings.n_users, per_user=test_per_user, seed=seed + 1
  )
  hybrid = features == "hybrid"
  return RecommenderData(
    n_users=ratings.n_users,
    n_items=ratings.n_items,
    user_features=movielens.feature_matrix(
      ratings.n_users, ratings.user_side if hybrid else None, prefix="user "
    ),
    item_features=movielens.feature_matrix(
      ratings.n_items, ratings.item_side if hybrid else None, prefix="item "
    ),
    train=train_ratings.positives(min_rating),
    test=ratings.subset(test).positives(min_rating),
    fit=train_ratings.subset(~validation).positives(min_rating),
    validation=train_ratings.subset(validation).positives(min_rating),
    source=ratings.source,
  )


# -- model -------------------------------------------------------------------------------


class FeatureIndex(nnx.Variable):
  """A non-trainable array of the model: feature ids or weights of users or items.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from optax_blockada.examples.recommender import FeatureIndex
    >>> v = FeatureIndex(jnp.arange(3))
    >>> isinstance(v, nnx.Param), v[...].tolist()
    (False, [0, 1, 2])
  """


class LightFM(nnx.Module):
  """LightFM's hybrid model: users and items as sums of feature embeddings plus biases.

  Parameters (``nnx.Param``): ``user_embedding`` ``(n_user_features, dim)``,
  ``user_bias`` ``(n_user_features,)``, ``item_embedding``, ``item_bias``; embeddings
  start at ``(U(0, 1) - 0.5) / dim`` and biases at 0, as in LightFM. The feature
  matrices are stored as :class:`FeatureIndex` variables, which optimizers leave alone.

  Args:
    user_features: the users' :class:`~optax_blockada.examples.movielens.FeatureMatrix`.
    item_features: the items' feature matrix.
    dim: embedding dimension (LightFM's ``no_components``).
    rngs: random streams; ``rngs.params()`` initialises the embeddings.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from optax_blockada.examples.movielens import feature_matrix
    >>> from optax_blockada.examples.recommender import LightFM
    >>> model = LightFM(feature_matrix(3), feature_matrix(4), dim=2, rngs=nnx.Rngs(0))
    >>> model.user_embedding.shape, model(jnp.array([0, 2]), jnp.array([1, 3])).shape
    ((3, 2), (2,))
    >>> model.score_all(jnp.array([0, 1, 2])).shape
    (3, 4)
  """

  def __init__(
    self,
    user_features: movielens.FeatureMatrix,
    item_features: movielens.FeatureMatrix,
    dim: int = 32,
    *,
    rngs: nnx.Rngs,
  ):
    dim = check_int("dim", dim, 1)
    self.user_ids = FeatureIndex(jnp.asarray(user_features.ids, jnp.int32))
    self.user_weights = FeatureIndex(jnp.asarray(user_features.weights, jnp.float32))
    self.item_ids = FeatureIndex(jnp.asarray(item_features.ids, jnp.int32))
    self.item_weights = FeatureIndex(jnp.asarray(item_features.weights, jnp.float32))

    def table(n: int) -> nnx.Param:
      return nnx.Param((jax.random.uniform(rngs.params(), (n, dim), jnp.float32) - 0.5) / dim)

    self.user_embedding = table(user_features.n_features)
    self.user_bias = nnx.Param(jnp.zeros((user_features.n_features,), jnp.float32))
    self.item_embedding = table(item_features.n_features)
    self.item_bias = nnx.Param(jnp.zeros((item_features.n_features,), jnp.float32))

  @property
  def n_users(self) -> int:
    return self.user_ids.shape[0]

  @property
  def n_items(self) -> int:
    return self.item_ids.shape[0]

  @staticmethod
  def _represent(ids, weights, table, bias, rows) -> tuple[jax.Array, jax.Array]:
    feature_ids, w = ids[rows], weights[rows]  # (..., width)
    vectors = jnp.einsum("...f,...fd->...d", w, table[feature_ids])
    return vectors, jnp.sum(w * bias[feature_ids], axis=-1)

  def user_vectors(self, users: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(e_u, b_u)`` of users ``users`` (any shape ``S``): ``S + (dim,)`` and ``S``."""
    return self._represent(
      self.user_ids[...],
      self.user_weights[...],
      self.user_embedding[...],
      self.user_bias[...],
      users,
    )

  def item_vectors(self, items: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(e_i, b_i)`` of items ``items`` (any shape ``S``): ``S + (dim,)`` and ``S``."""
    return self._represent(
      self.item_ids[...],
      self.item_weights[...],
      self.item_embedding[...],
      self.item_bias[...],
      items,
    )

  def __call__(self, users: jax.Array, items: jax.Array) -> jax.Array:
    """Scores ``s(u, i)``; ``users`` ``(B,)``, ``items`` ``(B,)`` or ``(B, M)``."""
    e_u, b_u = self.user_vectors(users)
    e_i, b_i = self.item_vectors(items)
    if items.ndim == users.ndim + 1:
      e_u, b_u = e_u[:, None, :], b_u[:, None]
    return jnp.sum(e_u * e_i, axis=-1) + b_u + b_i

  def score_all(self, users: jax.Array) -> jax.Array:
    """Scores of every item for users ``users`` ``(B,)``: ``(B, n_items)``."""
    e_u, b_u = self.user_vectors(users)
    e_i, b_i = self.item_vectors(jnp.arange(self.n_items))
    return e_u @ e_i.T + b_u[:, None] + b_i[None, :]


# -- losses ------------------------------------------------------------------------------


def bpr_loss(positive_scores: jax.Array, negative_scores: jax.Array) -> jax.Array:
  r"""BPR's loss per example: :math:`-\log \sigma(s_{ui} - s_{uj})`.

  Its gradient with respect to the score difference is LightFM's BPR step,
  :math:`-(1 - \sigma(s_{ui} - s_{uj}))`.

  Args:
    positive_scores: ``s(u, i)``, any shape.
    negative_scores: ``s(u, j)``, the same shape.

  Returns:
    The per-example losses (computed stably as ``softplus(s_uj - s_ui)``).

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada.examples.recommender import bpr_loss
    >>> loss = bpr_loss(jnp.array([0.0, 2.0]), jnp.array([0.0, 0.0]))
    >>> print(loss.round(4))  # log 2, log(1 + e^-2)
    [0.6931 0.1269]
  """
  return jax.nn.softplus(negative_scores - positive_scores)


def warp_loss(
  positive_scores: jax.Array, negative_scores: jax.Array, valid: jax.Array, n_items: int
) -> jax.Array:
  r"""WARP's loss per example, over ``M`` sampled candidates per example.

  The candidates are visited in order, skipping invalid ones (the user's positives,
  which LightFM resamples). The first valid ``j`` with :math:`s_{uj} > s_{ui} - 1`
  is the violator; if it is the ``n``-th valid candidate the loss is

  .. math:: w(n)\, (1 - s_{ui} + s_{uj}), \qquad
      w(n) = \min(10, \log \max(1, \lfloor (N - 1) / n \rfloor)),

  with ``N = n_items`` and the weight held constant (``stop_gradient``). Without a
  violator the loss is 0.

  LightFM 1.17's ``fit_warp`` (``lightfm/_lightfm_fast.pyx.template``) differs in how it
  counts: its ``sampled`` counts every draw, including draws of the user's own positives
  (a violating positive is skipped but still counted, a non-violating one is counted as
  a miss), so its ``n`` is at least the ``n`` here and its weight at most this one; and it
  clips ``sample_weight * log(...)`` at 10 (the same with unit sample weights).

  Args:
    positive_scores: ``(B,)`` scores ``s(u, i)``.
    negative_scores: ``(B, M)`` scores of the candidates.
    valid: ``(B, M)`` bool, false for candidates to skip.
    n_items: number of items ``N``.

  Returns:
    ``(B,)`` losses.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada.examples.recommender import warp_loss
    >>> pos = jnp.array([1.0, 1.0])
    >>> neg = jnp.array([[0.9, -5.0, 0.5], [-5.0, -5.0, -5.0]])
    >>> valid = jnp.array([[False, True, True], [True, True, True]])
    >>> # first example: candidate 0 is skipped, 2 is the 2nd valid one and violates
    >>> print(warp_loss(pos, neg, valid, n_items=101))  # log(50) * 0.5, no violator
    [1.956 0.   ]
  """
  violates = valid & (negative_scores > positive_scores[:, None] - 1.0)
  first = jnp.argmax(violates, axis=1)
  found = jnp.any(violates, axis=1)
  drawn = jnp.take_along_axis(jnp.cumsum(valid, axis=1), first[:, None], axis=1)[:, 0]
  drawn = jnp.maximum(drawn, 1).astype(jnp.float32)
  weight = jnp.log(jnp.maximum(1.0, jnp.floor((n_items - 1) / drawn)))
  weight = jax.lax.stop_gradient(jnp.minimum(weight, _MAX_LOSS))
  violator = jnp.take_along_axis(negative_scores, first[:, None], axis=1)[:, 0]
  hinge = 1.0 - positive_scores + violator
  return jnp.where(found, weight * hinge, jnp.zeros_like(hinge))


# -- training ----------------------------------------------------------------------------


class TrainResult(NamedTuple):
  """What :func:`train` returns besides the trained model (updated in place).

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples.recommender import TrainResult
    >>> TrainResult(opt_state=(), losses=np.zeros(3), start_epoch=0, seconds=1.0).start_epoch
    0
  """

  opt_state: Any  # the optimizer state after the last epoch
  losses: np.ndarray  # (epochs,) float32 mean training loss per positive, per epoch
  start_epoch: int  # the epoch training started from (> 0 after a resume)
  seconds: float  # wall time of this call's epochs (compilation included)


def _is_positive(keys: jax.Array, users: jax.Array, items: jax.Array, n_items: int) -> jax.Array:
  """Whether ``(users, items)`` is among the sorted ``user * n_items + item`` keys."""
  query = users * n_items + items
  at = jnp.clip(jnp.searchsorted(keys, query), 0, keys.shape[0] - 1)
  return keys[at] == query


def _epoch_samples(
  seed: int,
  epoch: int,
  pos_item: np.ndarray,
  n_items: int,
  *,
  batch_size: int,
  max_sampled: int,
  negatives: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The data order, example weights and negative candidates of one epoch.

  Drawn on the host from ``numpy.random.default_rng([seed, epoch])``, so epoch ``e`` is
  the same in every run (an exact resume), and the compiled step holds no random
  number generator (which on CPU more than doubled its compile time).

  Returns:
    ``order`` ``(n_batches, batch_size)`` indices into the positives (the last batch
    padded with repeats), ``weight`` ``(n_batches, batch_size)`` float32 (0 for the
    padding) and ``candidates`` ``(n_batches, batch_size, max_sampled)`` item indices.
  """
  n = pos_item.shape[0]
  n_batches = -(-n // batch_size)
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(n)
  order = np.concatenate([order, order[np.arange(n_batches * batch_size - n) % n]])
  weight = (np.arange(n_batches * batch_size) < n).astype(np.float32)
  shape = (n_batches, batch_size, max_sampled)
  if negatives == "popularity":  # the item of a random training positive
    candidates = pos_item[rng.integers(0, n, size=shape)]
  else:
    candidates = rng.integers(0, n_items, size=shape)
  return (
    order.reshape(n_batches, batch_size).astype(np.int32),
    weight.reshape(n_batches, batch_size),
    candidates.astype(np.int32),
  )


@functools.partial(jax.jit, static_argnames=("graphdef", "tx", "loss"))
def _epoch(params, opt_state, rest, pos_user, pos_item, keys, samples, *, graphdef, tx, loss):
  """One epoch: a pass over the positives in the given minibatches, as one scan."""
  n_items = nnx.merge(graphdef, params, rest).n_items

  def batch_loss(p, rows, weight, candidates):
    model = nnx.merge(graphdef, p, rest)
    users, items = pos_user[rows], pos_item[rows]
    valid = ~_is_positive(keys, users[:, None], candidates, n_items)
    positive = model(users, items)
    if loss == "bpr":
      first = jnp.argmax(valid, axis=1)
      negative = model(users, jnp.take_along_axis(candidates, first[:, None], axis=1)[:, 0])
      per_example = jnp.where(
        jnp.any(valid, axis=1), bpr_loss(positive, negative), jnp.zeros_like(positive)
      )
    else:
      per_example = warp_loss(positive, model(users, candidates), valid, n_items)
    return jnp.sum(weight * per_example)

  def step(carry, batch):
    p, state = carry
    value, grads = jax.value_and_grad(batch_loss)(p, *batch)
    updates, state = tx.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), value

  (params, opt_state), values = jax.lax.scan(step, (params, opt_state), samples)
  return params, opt_state, jnp.sum(values) / pos_user.shape[0]


def _fingerprint(settings: Mapping[str, Any], arrays: Sequence[np.ndarray]) -> int:
  crc = zlib.crc32(json.dumps(settings, sort_keys=True).encode())
  for a in arrays:
    crc = zlib.crc32(np.ascontiguousarray(a).tobytes(), crc)
  return crc & 0x7FFFFFFF


def _progress(total: int, desc: str, enabled: bool):
  """A tqdm bar when tqdm is installed and ``enabled`` (None: only on a terminal)."""
  try:
    from tqdm.auto import tqdm
  except ImportError:  # tqdm comes with the [examples] extra; run without a bar.
    return None
  return tqdm(total=total, desc=desc, disable=None if enabled else True, leave=False)


def train(
  model: LightFM,
  tx: optax.GradientTransformation,
  positives: tuple[np.ndarray, np.ndarray],
  *,
  loss: str = "bpr",
  epochs: int = 30,
  batch_size: int = 256,
  max_sampled: int = 10,
  negatives: str | None = None,
  seed: int = 0,
  checkpoint_dir: str | os.PathLike | None = None,
  checkpoint_every: int = 1,
  resume: bool = False,
  tag: str = "",
  progress: bool = False,
) -> TrainResult:
  """Trains ``model`` in place on positive ``(user, item)`` pairs with ``tx``.

  Every epoch visits the positives once in a shuffled order, in minibatches of
  ``batch_size`` (the last one padded with zero-weight examples), and takes one
  ``tx`` step per minibatch on the gradient of the summed loss (:func:`bpr_loss`
  or :func:`warp_loss`; see the module docstring for the sampling). The order and the
  negatives of epoch ``e`` depend only on ``(seed, e)``, so a run resumed from a
  checkpoint continues exactly as the uninterrupted run.

  Args:
    model: the model; its parameters are replaced by the trained ones.
    tx: any optax transform (called with ``params``).
    positives: ``(user, item)`` index arrays of the training positives.
    loss: ``'bpr'`` or ``'warp'``.
    epochs: number of passes over the positives.
    batch_size: examples per step.
    max_sampled: candidates drawn per example (LightFM's ``max_sampled``).
    negatives: ``'popularity'`` (items of random training positives, LightFM's BPR)
      or ``'uniform'`` (LightFM's WARP); ``None`` picks LightFM's choice for ``loss``.
    seed: seed of the data order and the negatives.
    checkpoint_dir: if given, save model and optimizer state there every
      ``checkpoint_every`` epochs and after the last one (orbax).
    checkpoint_every: epochs between checkpoints.
    resume: continue from the newest checkpoint in ``checkpoint_dir`` if there is
      one (a finished run is then not trained again).
    tag: a string recorded with the checkpoints (e.g. the optimizer's name and
      learning rate); resuming with another tag, other data or other settings raises.
    progress: show a progress bar over the epochs (needs tqdm).

  Returns:
    A :class:`TrainResult`.

  Raises:
    ValueError: for a bad argument, or a checkpoint written by another run.

  Example:
    >>> from flax import nnx
    >>> import optax_blockada as ob
    >>> from optax_blockada.examples.movielens import planted_ratings
    >>> from optax_blockada.examples.recommender import LightFM, prepare_data, train
    >>> data = prepare_data(planted_ratings(n_users=50, n_items=40, ratings_per_user=10))
    >>> model = LightFM(data.user_features, data.item_features, dim=8, rngs=nnx.Rngs(0))
    >>> result = train(model, ob.rowwise_adagrad(0.1), data.train, epochs=3, batch_size=64)
    >>> result.losses.shape, bool(result.losses[-1] < result.losses[0])
    ((3,), True)
  """
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
  if negatives is None:
    negatives = "popularity" if loss == "bpr" else "uniform"
  if negatives not in ("popularity", "uniform"):
    raise ValueError(f"negatives must be 'popularity' or 'uniform', got {negatives!r}.")
  epochs = check_int("epochs", epochs, 1)
  batch_size = check_int("batch_size", batch_size, 1)
  max_sampled = check_int("max_sampled", max_sampled, 1)
  seed = check_int("seed", seed, 0)
  checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
  user = np.asarray(positives[0], np.int32)
  item = np.asarray(positives[1], np.int32)
  if user.ndim != 1 or user.shape != item.shape or user.size == 0:
    raise ValueError(
      f"positives must be two non-empty 1-d arrays of the same length, got shapes "
      f"{user.shape} and {item.shape}."
    )
  n_users, n_items = model.n_users, model.n_items
  if user.min() < 0 or user.max() >= n_users or item.min() < 0 or item.max() >= n_items:
    raise ValueError(
      f"positives must index the model's {n_users} users and {n_items} items, got users in "
      f"[{user.min()}, {user.max()}] and items in [{item.min()}, {item.max()}]."
    )
  if resume and checkpoint_dir is None:
    raise ValueError("resume=True needs a checkpoint_dir.")
  if n_users * n_items >= 2**31:
    raise ValueError(
      f"n_users * n_items = {n_users * n_items} is too large: the training step looks "
      "(user, item) pairs up as int32 keys."
    )

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  keys = np.unique(user.astype(np.int64) * n_items + item).astype(np.int32)
  # Compiled once per (model structure, tx object, loss, data shapes): training again
  # with the same tx (e.g. after a resume) reuses the compilation.
  epoch_fn = functools.partial(_epoch, graphdef=graphdef, tx=tx, loss=loss)
  sampling = dict(batch_size=batch_size, max_sampled=max_sampled, negatives=negatives)
  data = (jnp.asarray(user), jnp.asarray(item), jnp.asarray(keys))
  state = {
    "params": params,
    "opt_state": tx.init(params),
    "losses": jnp.zeros((epochs,), jnp.float32),
    "fingerprint": jnp.asarray(
      _fingerprint(
        {
          "loss": loss,
          "epochs": epochs,
          "batch_size": batch_size,
          "max_sampled": max_sampled,
          "negatives": negatives,
          "seed": seed,
          "tag": tag,
          "dim": int(model.user_embedding.shape[1]),
        },
        [user, item, *jax.tree.leaves(nnx.to_pure_dict(rest))],
      ),
      jnp.int32,
    ),
  }
  start_epoch = 0
  checkpointer = (
    None if checkpoint_dir is None else Checkpointer(checkpoint_dir, every=checkpoint_every)
  )
  start = time.perf_counter()
  try:
    if checkpointer is not None and resume and checkpointer.latest_step() is not None:
      start_epoch, restored = checkpointer.restore_latest(state)
      if int(restored["fingerprint"]) != int(state["fingerprint"]):
        raise ValueError(
          f"the checkpoint in {checkpointer.directory!r} was written by a run with other "
          "data or settings; use another --checkpoint-dir or run without --resume."
        )
      state = restored
    bar = _progress(epochs - start_epoch, f"{loss} {tag}".strip(), progress)
    for epoch in range(start_epoch, epochs):
      samples = _epoch_samples(seed, epoch, item, n_items, **sampling)
      new_params, new_opt_state, mean_loss = epoch_fn(
        state["params"], state["opt_state"], rest, *data, samples
      )
      state = {
        **state,
        "params": new_params,
        "opt_state": new_opt_state,
        "losses": state["losses"].at[epoch].set(mean_loss),
      }
      if checkpointer is not None:
        checkpointer.save(epoch + 1, state, force=epoch + 1 == epochs)
      if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{float(mean_loss):.4f}")
    if bar is not None:
      bar.close()
    jax.block_until_ready(state)
  finally:
    if checkpointer is not None:
      checkpointer.close()
  nnx.update(model, nnx.State(state["params"]))
  return TrainResult(
    opt_state=state["opt_state"],
    losses=np.asarray(state["losses"]),
    start_epoch=start_epoch,
    seconds=time.perf_counter() - start,
  )


# -- evaluation --------------------------------------------------------------------------


def _dense_mask(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
  mask = np.zeros((n_users, n_items), bool)
  mask[users, items] = True
  return mask


def _chunk_metrics(scores, train_mask, test_mask, k):
  """Per-user precision@k, recall@k, AUC and has-test-positive flags of a user chunk."""
  n_items = scores.shape[1]
  n_test = test_mask.sum(axis=1)
  n_train = train_mask.sum(axis=1)
  candidates = np.where(train_mask, -np.inf, np.asarray(scores, np.float64))
  top = np.argpartition(-candidates, k - 1, axis=1)[:, :k]
  hits = np.take_along_axis(test_mask, top, axis=1).sum(axis=1)
  precision = hits / k
  recall = hits / np.maximum(n_test, 1)
  # Ascending average ranks: training positives (-inf) rank below every candidate, so
  # for a test positive p, rank(p) - 1 = (#items below p) + (#ties with p) / 2, and
  # subtracting the training positives and the other test positives leaves the
  # negatives ranked below p (ties counting one half).
  ranks = scipy.stats.rankdata(candidates, axis=1)
  n_negative = n_items - n_train - n_test
  correct = (
    np.sum(np.where(test_mask, ranks, 0.0), axis=1) - n_test * (n_test + 1) / 2 - n_train * n_test
  )
  with np.errstate(invalid="ignore", divide="ignore"):
    auc = np.where(n_negative > 0, correct / (n_test * n_negative), 0.5)
  return precision, recall, auc, n_test > 0


def ranking_metrics(
  scores: Any,
  train: tuple[np.ndarray, np.ndarray],
  test: tuple[np.ndarray, np.ndarray],
  *,
  k: int = 10,
) -> dict[str, np.ndarray]:
  r"""Per-user precision@k, recall@k and ROC AUC, with training positives excluded.

  For a user ``u`` with test positives :math:`T_u` and training positives :math:`R_u`,
  the candidates are all items not in :math:`R_u`; :math:`K_u` is the ``k``
  highest-scoring candidates. Then

  .. math::
      P@k = |K_u \cap T_u| / k, \quad R@k = |K_u \cap T_u| / |T_u|, \quad
      \mathrm{AUC}_u = \frac{1}{|T_u| |N_u|} \sum_{p \in T_u} \sum_{n \in N_u}
      \big([s_p > s_n] + \tfrac12 [s_p = s_n]\big),

  with negatives :math:`N_u` = candidates not in :math:`T_u` (AUC 0.5 if there is
  none, as in LightFM). Only users with at least one test positive are reported.

  Args:
    scores: ``(n_users, n_items)`` scores.
    train: ``(user, item)`` training positives (excluded from the ranking).
    test: ``(user, item)`` test positives (must not overlap ``train``).
    k: the cut-off, ``1 <= k <= n_items``.

  Returns:
    ``{'user', 'precision', 'recall', 'auc'}``: arrays over the users with test
    positives (``user`` holds their indices).

  Raises:
    ValueError: if a pair is both a training and a test positive, or ``k`` is out of
      range.

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples.recommender import ranking_metrics
    >>> scores = np.array([[0.9, 0.8, 0.1, 0.5]])
    >>> m = ranking_metrics(scores, train=([0], [0]), test=([0], [3]), k=2)
    >>> # candidates 1, 2, 3; top 2 = {1, 3}; item 3 beats item 2, loses to item 1
    >>> m['precision'].tolist(), m['recall'].tolist(), m['auc'].tolist()
    ([0.5], [1.0], [0.5])
  """
  scores = np.asarray(scores)
  if scores.ndim != 2:
    raise ValueError(f"scores must be (n_users, n_items), got shape {scores.shape}.")
  n_users, n_items = scores.shape
  k = check_int("k", k, 1)
  if k > n_items:
    raise ValueError(f"k must be <= n_items ({n_items}), got {k}.")
  train_mask = _dense_mask(*train, n_users, n_items)
  test_mask = _dense_mask(*test, n_users, n_items)
  if np.any(train_mask & test_mask):
    raise ValueError("train and test share a (user, item) pair; a test positive must be unseen.")
  precision, recall, auc, has = _chunk_metrics(scores, train_mask, test_mask, k)
  return {
    "user": np.flatnonzero(has),
    "precision": precision[has],
    "recall": recall[has],
    "auc": auc[has],
  }


@functools.partial(jax.jit, static_argnums=0)
def _scores(graphdef, state, users):
  return nnx.merge(graphdef, state).score_all(users)


def evaluate(
  model: LightFM,
  train: tuple[np.ndarray, np.ndarray],
  test: tuple[np.ndarray, np.ndarray],
  *,
  k: int = 10,
  chunk_size: int = 1024,
) -> dict[str, float]:
  """Mean :func:`ranking_metrics` of ``model`` over the users with test positives.

  Scores are computed ``chunk_size`` users at a time, so memory stays
  ``O(chunk_size * n_items)``.

  Args:
    model: a :class:`LightFM`.
    train: ``(user, item)`` training positives (excluded from the ranking).
    test: ``(user, item)`` test positives.
    k: the cut-off of precision and recall.
    chunk_size: users scored at once.

  Returns:
    ``{'precision', 'recall', 'auc', 'users'}`` (means, and the number of users).

  Example:
    >>> from flax import nnx
    >>> from optax_blockada.examples.movielens import planted_ratings
    >>> from optax_blockada.examples.recommender import LightFM, evaluate, prepare_data
    >>> data = prepare_data(planted_ratings(n_users=30, n_items=40, ratings_per_user=10))
    >>> model = LightFM(data.user_features, data.item_features, dim=4, rngs=nnx.Rngs(0))
    >>> m = evaluate(model, data.train, data.test, k=5)
    >>> sorted(m), bool(0.3 < m['auc'] < 0.7)  # an untrained model is near chance
    (['auc', 'precision', 'recall', 'users'], True)
  """
  k = check_int("k", k, 1)
  chunk_size = check_int("chunk_size", chunk_size, 1)
  n_users, n_items = model.n_users, model.n_items
  if k > n_items:
    raise ValueError(f"k must be <= n_items ({n_items}), got {k}.")
  train_u, train_i = (np.asarray(a) for a in train)
  test_u, test_i = (np.asarray(a) for a in test)
  graphdef, state = nnx.split(model)
  sums = np.zeros(3)
  count = 0
  for lo in range(0, n_users, chunk_size):
    hi = min(lo + chunk_size, n_users)
    scores = np.asarray(_scores(graphdef, state, jnp.arange(lo, hi)))
    in_train = (train_u >= lo) & (train_u < hi)
    in_test = (test_u >= lo) & (test_u < hi)
    train_mask = _dense_mask(train_u[in_train] - lo, train_i[in_train], hi - lo, n_items)
    test_mask = _dense_mask(test_u[in_test] - lo, test_i[in_test], hi - lo, n_items)
    if np.any(train_mask & test_mask):
      raise ValueError("train and test share a (user, item) pair; a test positive must be unseen.")
    precision, recall, auc, has = _chunk_metrics(scores, train_mask, test_mask, k)
    sums += [precision[has].sum(), recall[has].sum(), auc[has].sum()]
    count += int(has.sum())
  if count == 0:
    raise ValueError("no user has a test positive; nothing to evaluate.")
  precision, recall, auc = sums / count
  return {"precision": precision, "recall": recall, "auc": auc, "users": count}


# -- the comparison ----------------------------------------------------------------------


def run_comparison(
  data: RecommenderData,
  *,
  optimizers: Sequence[str] | None = None,
  losses: Sequence[str] = LOSSES,
  learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES,
  epochs: int = 30,
  dim: int = 32,
  batch_size: int = 256,
  k: int = 10,
  bpr_negatives: str = "popularity",
  seed: int = 0,
  validate: bool = True,
  checkpoint_dir: str | os.PathLike | None = None,
  checkpoint_every: int = 5,
  resume: bool = False,
  progress: bool = False,
) -> list[dict[str, Any]]:
  """Trains every optimizer with every loss, each at its best learning rate.

  For each ``(loss, optimizer)``: train on ``data.fit`` at each learning rate and
  measure precision@k on ``data.validation`` (ties broken by AUC; a run whose scores
  are not finite ranks last); then train on ``data.train`` at the best rate and
  evaluate on ``data.test``. Every run starts from the same initialisation
  (``nnx.Rngs(seed)``) and sees the same data order. With ``validate=False`` and a
  single rate, the validation runs are skipped (half the work, for quick looks).

  Args:
    data: from :func:`prepare_data`.
    optimizers: names from :data:`~optax_blockada.examples.optimizers.OPTIMIZER_NAMES`
      (default: all), built with LightFM's preset for ``'preset'``.
    losses: names from :data:`LOSSES`.
    learning_rates: the rates tried for every optimizer.
    epochs: epochs per run.
    dim: embedding dimension.
    batch_size: examples per step.
    k: the cut-off of precision and recall.
    bpr_negatives: how BPR samples negatives, ``'popularity'`` (LightFM) or
      ``'uniform'`` (classic BPR-MF); WARP always samples uniformly.
    seed: seed of the initialisation, data order and negatives.
    validate: choose the rate on the validation split. ``False`` needs exactly one
      rate in ``learning_rates`` and trains the final model at it directly
      (``validation`` is then ``{}``).
    checkpoint_dir: if given, each run checkpoints to
      ``checkpoint_dir/<loss>/<optimizer>/<validation|final>-lr<rate>``.
    checkpoint_every: epochs between checkpoints.
    resume: continue every run from its checkpoint, where there is one.
    progress: show progress bars.

  Returns:
    One dict per ``(loss, optimizer)``: ``loss``, ``optimizer``, ``learning_rate``
    (the best), ``validation`` (``{rate: {'precision', 'auc'}}``), test
    ``precision``, ``recall``, ``auc``, ``train_loss`` (mean over the last epoch),
    ``train_losses`` (the mean training loss of every epoch of the final run),
    ``state_bytes`` and ``seconds`` (training at the best rate, compilation included).

  Example:
    >>> from optax_blockada.examples.movielens import planted_ratings
    >>> from optax_blockada.examples.recommender import prepare_data, run_comparison
    >>> data = prepare_data(planted_ratings(n_users=40, n_items=50, ratings_per_user=10))
    >>> rows = run_comparison(data, optimizers=['rowwise'], losses=['bpr'],
    ...                       learning_rates=[0.1], epochs=2, dim=4)
    >>> [(r['loss'], r['optimizer'], r['learning_rate']) for r in rows]
    [('bpr', 'rowwise', 0.1)]
    >>> rows = run_comparison(data, optimizers=['rowwise'], losses=['warp'],
    ...                       learning_rates=[0.1], epochs=2, dim=4, validate=False)
    >>> rows[0]['validation'], len(rows[0]['train_losses'])  # no validation runs
    ({}, 2)
  """
  optimizers = tuple(OPTIMIZER_NAMES if optimizers is None else optimizers)
  for name in optimizers:
    if name not in OPTIMIZER_NAMES:
      raise ValueError(f"optimizers must be names from {OPTIMIZER_NAMES}, got {name!r}.")
  for loss in losses:
    if loss not in LOSSES:
      raise ValueError(f"losses must be names from {LOSSES}, got {loss!r}.")
  if bpr_negatives not in ("popularity", "uniform"):
    raise ValueError(f"bpr_negatives must be 'popularity' or 'uniform', got {bpr_negatives!r}.")
  learning_rates = tuple(learning_rates)
  if not learning_rates:
    raise ValueError("learning_rates must not be empty.")
  for lr in learning_rates:
    make_optimizer("diagonal", lr)  # validates the rate
  if not validate and len(learning_rates) != 1:
    raise ValueError(
      f"validate=False needs exactly one learning rate, got {len(learning_rates)}: "
      f"{learning_rates}."
    )

  def run(loss, name, lr, kind, positives):
    model = LightFM(data.user_features, data.item_features, dim, rngs=nnx.Rngs(seed))
    tx = make_optimizer(name, lr, preset="lightfm")
    directory = None
    if checkpoint_dir is not None:
      directory = pathlib.Path(checkpoint_dir, loss, name, f"{kind}-lr{lr:g}")
    result = train(
      model,
      tx,
      positives,
      loss=loss,
      epochs=epochs,
      batch_size=batch_size,
      negatives=bpr_negatives if loss == "bpr" else "uniform",
      seed=seed,
      checkpoint_dir=directory,
      checkpoint_every=checkpoint_every,
      resume=resume,
      tag=f"{name}@{lr!r}/{kind}",
      progress=progress,
    )
    return model, result

  rows = []
  for loss in losses:
    for name in optimizers:
      validation = {}
      for lr in learning_rates if validate else ():
        model, _ = run(loss, name, lr, "validation", data.fit)
        m = evaluate(model, data.fit, data.validation, k=k)
        validation[lr] = {"precision": m["precision"], "auc": m["auc"]}

      def rank(lr, validation=validation):
        v = validation[lr]
        finite = math.isfinite(v["precision"]) and math.isfinite(v["auc"])
        return (v["precision"], v["auc"]) if finite else (-math.inf, -math.inf)

      best = max(learning_rates, key=rank) if validate else learning_rates[0]
      model, result = run(loss, name, best, "final", data.train)
      m = evaluate(model, data.train, data.test, k=k)
      rows.append(
        {
          "loss": loss,
          "optimizer": name,
          "learning_rate": best,
          "validation": validation,
          "precision": m["precision"],
          "recall": m["recall"],
          "auc": m["auc"],
          "train_loss": float(result.losses[-1]),
          "train_losses": [float(x) for x in result.losses],
          "state_bytes": int(ob.state_bytes(result.opt_state)),
          "seconds": result.seconds,
        }
      )
  return rows


# -- command line ------------------------------------------------------------------------


def _format_table(rows: Sequence[Mapping[str, Any]], k: int) -> str:
  header = ["optimizer", "loss", "best lr", f"P@{k}", f"R@{k}", "AUC", "train loss"]
  header += ["state bytes", "seconds"]
  cells = [
    [r["optimizer"], r["loss"].upper(), f"{r['learning_rate']:g}"]
    + [f"{r[key]:.4f}" for key in ("precision", "recall", "auc", "train_loss")]
    + [f"{r['state_bytes']:,}", f"{r['seconds']:.1f}"]
    for r in rows
  ]
  return markdown_table(header, "llrrrrrrr", cells)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m optax_blockada.examples.recommender",
    description=(
      "Train a LightFM-style hybrid recommender on MovieLens-100K (or planted data) with "
      "each Adagrad variant at its best learning rate, and print P@k, R@k and AUC."
    ),
  )
  source = parser.add_argument_group("data")
  where = source.add_mutually_exclusive_group()
  where.add_argument(
    "--data",
    metavar="PATH",
    help="u.data, RecBole's ml-100k.inter, or a folder holding either (default: the copy "
    "in an installed recbole wheel, else planted data)",
  )
  where.add_argument(
    "--download",
    metavar="DIR",
    help="download ml-100k.zip from GroupLens into DIR first (for Colab)",
  )
  where.add_argument(
    "--planted", action="store_true", help="use planted data even if MovieLens is available"
  )
  source.add_argument(
    "--features",
    choices=("indicator", "hybrid"),
    default="indicator",
    help="indicator: matrix factorisation; hybrid: plus age, gender, occupation and "
    "genres (default: %(default)s)",
  )
  parser.add_argument(
    "--loss", choices=(*LOSSES, "both"), default="both", help="(default: %(default)s)"
  )
  parser.add_argument(
    "--optimizers",
    nargs="+",
    choices=OPTIMIZER_NAMES,
    metavar="NAME",
    help=f"optimizers to compare, from {', '.join(OPTIMIZER_NAMES)} (default: all)",
  )
  parser.add_argument(
    "--learning-rates",
    nargs="+",
    type=float_in(0, 10, label="a learning rate "),
    metavar="LR",
    help="learning rates tried per optimizer (default: "
    f"{' '.join(map(str, DEFAULT_LEARNING_RATES))}; --quick: "
    f"{' '.join(map(str, _QUICK_LEARNING_RATES))})",
  )
  parser.add_argument(
    "--epochs", type=int_at_least(1), help="epochs per run (default: 30; --quick: 5)"
  )
  parser.add_argument(
    "--dim", type=int_at_least(1), default=32, help="embedding dimension (default: %(default)s)"
  )
  parser.add_argument(
    "--batch-size", type=int_at_least(1), default=256, help="(default: %(default)s)"
  )
  parser.add_argument(
    "--k", type=int_at_least(1), default=10, help="cut-off of P@k and R@k (default: %(default)s)"
  )
  parser.add_argument(
    "--bpr-negatives",
    choices=("popularity", "uniform"),
    default="popularity",
    help="BPR's negatives: items of random training positives, as LightFM samples them, or "
    "uniform items, as classic BPR-MF (default: %(default)s); WARP's are uniform",
  )
  parser.add_argument("--seed", type=int_at_least(0), default=0, help="(default: %(default)s)")
  parser.add_argument(
    "--quick", action="store_true", help="5 epochs and two learning rates per optimizer"
  )
  parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
  ckpt = parser.add_argument_group("checkpoints")
  ckpt.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoint every run here (orbax)")
  ckpt.add_argument(
    "--checkpoint-every",
    type=int_at_least(1),
    default=5,
    metavar="N",
    help="epochs between checkpoints (default: %(default)s)",
  )
  ckpt.add_argument(
    "--resume",
    action="store_true",
    help="continue the runs from the checkpoints in --checkpoint-dir",
  )
  return parser


def _load(args, parser) -> movielens.Ratings:
  if args.planted:
    return movielens.planted_ratings(n_users=943, n_items=1682, seed=args.seed)
  try:
    if args.download is not None:
      return movielens.load_movielens(movielens.download_movielens(args.download))
    return movielens.load_movielens(args.data)
  except FileNotFoundError as e:
    if args.data is not None or args.download is not None:
      parser.error(str(e))
    print(
      f"{e}\nFalling back to planted data (943 users, 1682 items, known low-rank "
      "structure); its numbers are not comparable with MovieLens results.",
      file=sys.stderr,
    )
    return movielens.planted_ratings(n_users=943, n_items=1682, seed=args.seed)
  except (ValueError, OSError) as e:
    parser.error(str(e))


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns the process exit status.

  Args:
    argv: the arguments (default: ``sys.argv[1:]``).

  Returns:
    0 on success; bad arguments or data exit with status 2 and a message.

  Example:
    >>> from optax_blockada.examples.recommender import main
    >>> main(['--planted', '--quick', '--optimizers', 'rowwise', '--loss', 'bpr',
    ...       '--learning-rates', '0.1', '--epochs', '1'])  # doctest: +ELLIPSIS
    Data: planted ratings ...
    0
  """
  parser = _parser()
  args = parser.parse_args(argv)
  if args.json is not None and not pathlib.Path(args.json).resolve().parent.is_dir():
    parser.error(f"--json: the folder of {args.json!r} does not exist.")
  if args.resume and args.checkpoint_dir is None:
    parser.error("--resume needs --checkpoint-dir.")
  if args.resume and not any(pathlib.Path(args.checkpoint_dir).glob("*/*/*-lr*")):
    parser.error(f"--resume: no checkpoint in {args.checkpoint_dir!r}; run without --resume first.")
  epochs = args.epochs if args.epochs is not None else (5 if args.quick else 30)
  learning_rates = args.learning_rates or (
    _QUICK_LEARNING_RATES if args.quick else DEFAULT_LEARNING_RATES
  )
  losses = LOSSES if args.loss == "both" else (args.loss,)
  optimizers = tuple(args.optimizers) if args.optimizers else OPTIMIZER_NAMES

  ratings = _load(args, parser)
  data = prepare_data(ratings, features=args.features, seed=args.seed)
  if args.k > data.n_items:
    parser.error(f"--k must be <= the number of items ({data.n_items}), got {args.k}.")
  print(
    f"Data: {data.source}: {data.n_users} users, {data.n_items} items, "
    f"{len(data.train[0])} training / {len(data.test[0])} test positives (ratings >= 4, "
    f"10 ratings per user held out, seed {args.seed}); {args.features} features."
  )
  start = time.perf_counter()
  try:
    rows = run_comparison(
      data,
      optimizers=optimizers,
      losses=losses,
      learning_rates=learning_rates,
      epochs=epochs,
      dim=args.dim,
      batch_size=args.batch_size,
      k=args.k,
      bpr_negatives=args.bpr_negatives,
      seed=args.seed,
      checkpoint_dir=args.checkpoint_dir,
      checkpoint_every=args.checkpoint_every,
      resume=args.resume,
      progress=True,
    )
  except CheckpointError as e:
    print(f"error: --resume: {e}", file=sys.stderr)
    return 2
  seconds = time.perf_counter() - start
  print(
    f"LightFM-style model, d={args.dim}, {epochs} epochs, batch {args.batch_size}, "
    f"{args.bpr_negatives} BPR negatives; best "
    f"learning rate of {', '.join(map(str, learning_rates))} by validation P@{args.k}; "
    f"jax {jax.__version__} on {jax.default_backend()}, {seconds:.1f} s in all."
  )
  print()
  print(_format_table(rows, args.k))
  print()
  print(
    f"P@{args.k}, R@{args.k}, AUC: test set, training positives excluded, mean over users "
    "with a test positive. seconds: the final run at the best rate, compilation included."
  )
  if args.json is not None:
    payload = {
      "settings": {
        "source": data.source,
        "features": args.features,
        "losses": list(losses),
        "optimizers": list(optimizers),
        "learning_rates": list(learning_rates),
        "epochs": epochs,
        "dim": args.dim,
        "batch_size": args.batch_size,
        "k": args.k,
        "bpr_negatives": args.bpr_negatives,
        "seed": args.seed,
      },
      "jax_version": jax.__version__,
      "optax_version": optax.__version__,
      "backend": jax.default_backend(),
      "seconds": seconds,
      "results": [
        {**r, "validation": {f"{lr:g}": v for lr, v in r["validation"].items()}} for r in rows
      ],
    }
    write_json(args.json, payload)
  return 0


if __name__ == "__main__":
  sys.exit(main())
