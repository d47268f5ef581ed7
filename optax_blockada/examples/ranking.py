"""LightFM's ranking metrics: precision@k, recall@k and per-user ROC AUC on held-out positives.

Every item that is not a training positive of the user is ranked, and the metrics are
averaged over the users with at least one test positive, as LightFM's evaluation does.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from flax import nnx

from optax_blockada.examples._cli import check_int
from optax_blockada.examples.recommender_data import Pairs
from optax_blockada.examples.recommender_model import LightFM

__all__ = ["evaluate", "ranking_metrics"]


def _masks(train: Pairs, test: Pairs, n_users: int, n_items: int, first_user: int = 0):
  """Dense ``(n_users, n_items)`` masks of the pairs of users ``first_user ...``."""
  masks = []
  for users, items in (train, test):
    users, items = np.asarray(users), np.asarray(items)
    keep = (users >= first_user) & (users < first_user + n_users)
    mask = np.zeros((n_users, n_items), bool)
    mask[users[keep] - first_user, items[keep]] = True
    masks.append(mask)
  if np.any(masks[0] & masks[1]):
    raise ValueError("train and test share a (user, item) pair; a test positive must be unseen.")
  return masks


def _per_user(scores, train_mask, test_mask, k):
  """Per-user precision@k, recall@k, AUC and has-test-positive flags."""
  n_items = scores.shape[1]
  if check_int("k", k, 1) > n_items:
    raise ValueError(f"k must be <= n_items ({n_items}), got {k}.")
  n_test, n_train = test_mask.sum(axis=1), train_mask.sum(axis=1)
  candidates = np.where(train_mask, -np.inf, np.asarray(scores, np.float64))
  top = np.argpartition(-candidates, k - 1, axis=1)[:, :k]
  hits = np.take_along_axis(test_mask, top, axis=1).sum(axis=1)
  # Ascending average ranks: training positives (-inf) rank below every candidate, so for
  # a test positive p, rank(p) - 1 = (#items below p) + (#ties with p) / 2; subtracting the
  # training and the other test positives leaves the negatives below p (ties count 1/2).
  ranks = scipy.stats.rankdata(candidates, axis=1)
  n_negative = n_items - n_train - n_test
  correct = np.sum(np.where(test_mask, ranks, 0.0), axis=1)
  correct -= n_test * (n_test + 1) / 2 + n_train * n_test
  with np.errstate(invalid="ignore", divide="ignore"):
    auc = np.where(n_negative > 0, correct / (n_test * n_negative), 0.5)
  return hits / k, hits / np.maximum(n_test, 1), auc, n_test > 0


def ranking_metrics(
  scores: Any, train: Pairs, test: Pairs, *, k: int = 10
) -> dict[str, np.ndarray]:
  r"""Per-user precision@k, recall@k and ROC AUC, with training positives excluded.

  For a user with test positives :math:`T_u` and training positives :math:`R_u`, the
  candidates are the items not in :math:`R_u` and :math:`K_u` the ``k`` best-scored ones:
  :math:`P@k = |K_u \cap T_u| / k`, :math:`R@k = |K_u \cap T_u| / |T_u|`, and AUC is the
  fraction of (test positive, negative candidate) pairs ranked right, ties counting one
  half (0.5 without negatives, as in LightFM). ``scores`` is ``(n_users, n_items)``, ``test``
  must not overlap ``train``. Returns ``{'user', 'precision', 'recall', 'auc'}``: arrays over
  the users with a test positive (``user`` holds their indices).
  """
  scores = np.asarray(scores)
  if scores.ndim != 2:
    raise ValueError(f"scores must be (n_users, n_items), got shape {scores.shape}.")
  precision, recall, auc, has = _per_user(scores, *_masks(train, test, *scores.shape), k)
  user = np.flatnonzero(has)
  return {"user": user, "precision": precision[has], "recall": recall[has], "auc": auc[has]}


@nnx.jit
def _scores(model: LightFM, users: jax.Array) -> jax.Array:
  return model.score_all(users)


def evaluate(
  model: LightFM, train: Pairs, test: Pairs, *, k: int = 10, chunk_size: int = 1024
) -> dict[str, float]:
  """Mean :func:`ranking_metrics` of ``model`` over the users with test positives.

  Scores are computed ``chunk_size`` users at a time (memory ``O(chunk_size * n_items)``).
  Returns ``{'precision', 'recall', 'auc', 'users'}`` (means, and the number of users).
  """
  chunk_size = check_int("chunk_size", chunk_size, 1)
  sums, count = np.zeros(3), 0
  for lo in range(0, model.n_users, chunk_size):
    hi = min(lo + chunk_size, model.n_users)
    scores = np.asarray(_scores(model, jnp.arange(lo, hi)))
    masks = _masks(train, test, hi - lo, model.n_items, first_user=lo)
    precision, recall, auc, has = _per_user(scores, *masks, k)
    sums += [precision[has].sum(), recall[has].sum(), auc[has].sum()]
    count += int(has.sum())
  if count == 0:
    raise ValueError("no user has a test positive; nothing to evaluate.")
  precision, recall, auc = sums / count
  return {"precision": precision, "recall": recall, "auc": auc, "users": count}
