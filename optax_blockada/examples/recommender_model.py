r"""The LightFM-style hybrid model (Kula 2015) in Flax NNX and its ranking losses, BPR and WARP.

A user is the weighted sum of the embeddings of its features (an indicator of the user,
age bucket, occupation, ...), an item likewise (its indicator, its genres), each with a bias:

.. math::
    e_u = \sum_f x_{uf} E^U_f, \quad b_u = \sum_f x_{uf} b^U_f, \qquad
    e_i = \sum_g y_{ig} E^I_g, \quad b_i = \sum_g y_{ig} b^I_g, \qquad
    s(u, i) = e_u^\top e_i + b_u + b_i,

with row-normalised weights ``x`` and ``y``
(:func:`~optax_blockada.examples.recommender_data.feature_matrix`); with indicator features
only it is matrix factorisation. Training samples negatives (:func:`sample_epoch`) and
minimises BPR or WARP on them (:func:`sampled_loss`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from optax_blockada.examples._cli import check_int
from optax_blockada.examples.recommender_data import FeatureMatrix

__all__ = ["FeatureIndex", "LightFM", "bpr_loss", "sample_epoch", "sampled_loss", "warp_loss"]

_MAX_LOSS = 10.0  # LightFM clips the WARP weight at MAX_LOSS.


class FeatureIndex(nnx.Variable):
  """A non-trainable array of the model (feature ids or weights): optimizers leave it alone."""


class LightFM(nnx.Module):
  """LightFM's hybrid model: users and items as sums of feature embeddings plus biases.

  Parameters: ``user_embedding`` ``(n_user_features, dim)``, ``user_bias``,
  ``item_embedding``, ``item_bias``; embeddings start at ``(U(0, 1) - 0.5) / dim`` and biases
  at 0, as in LightFM (``dim`` is its ``no_components``). The feature matrices are stored as
  :class:`FeatureIndex` variables.
  """

  def __init__(
    self, user_features: FeatureMatrix, item_features: FeatureMatrix, dim: int = 32, *, rngs
  ):
    dim = check_int("dim", dim, 1)
    for side, features in (("user", user_features), ("item", item_features)):
      n = features.n_features
      table = (jax.random.uniform(rngs.params(), (n, dim), jnp.float32) - 0.5) / dim
      setattr(self, f"{side}_ids", FeatureIndex(jnp.asarray(features.ids, jnp.int32)))
      setattr(self, f"{side}_weights", FeatureIndex(jnp.asarray(features.weights, jnp.float32)))
      setattr(self, f"{side}_embedding", nnx.Param(table))
      setattr(self, f"{side}_bias", nnx.Param(jnp.zeros((n,), jnp.float32)))
    self.n_users, self.n_items = len(user_features.ids), len(item_features.ids)

  def _represent(self, side: str, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(e, b)`` of users or items ``rows`` (any shape ``S``): ``S + (dim,)`` and ``S``."""
    ids = getattr(self, f"{side}_ids")[...][rows]
    w = getattr(self, f"{side}_weights")[...][rows]  # (..., width)
    vectors = jnp.einsum("...f,...fd->...d", w, getattr(self, f"{side}_embedding")[...][ids])
    return vectors, jnp.sum(w * getattr(self, f"{side}_bias")[...][ids], axis=-1)

  def __call__(self, users: jax.Array, items: jax.Array) -> jax.Array:
    """Scores ``s(u, i)``; ``users`` ``(B,)``, ``items`` ``(B,)`` or ``(B, M)``."""
    e_u, b_u = self._represent("user", users)
    e_i, b_i = self._represent("item", items)
    if items.ndim == users.ndim + 1:
      e_u, b_u = e_u[:, None, :], b_u[:, None]
    return jnp.sum(e_u * e_i, axis=-1) + b_u + b_i

  def score_all(self, users: jax.Array) -> jax.Array:
    """Scores of every item for users ``users`` ``(B,)``: ``(B, n_items)``."""
    e_u, b_u = self._represent("user", users)
    e_i, b_i = self._represent("item", jnp.arange(self.n_items))
    return e_u @ e_i.T + b_u[:, None] + b_i[None, :]


def bpr_loss(positive_scores: jax.Array, negative_scores: jax.Array) -> jax.Array:
  r"""BPR's loss per example, :math:`-\log \sigma(s_{ui} - s_{uj})`, as ``softplus(s_uj - s_ui)``.

  Its gradient with respect to ``s_ui``, :math:`-(1 - \sigma(s_{ui} - s_{uj}))`, is
  LightFM's BPR step.
  """
  return jax.nn.softplus(negative_scores - positive_scores)


def warp_loss(
  positive_scores: jax.Array, negative_scores: jax.Array, valid: jax.Array, n_items: int
) -> jax.Array:
  r"""WARP's loss per example ``(B,)``, over ``(B, M)`` candidates with their ``valid`` mask.

  The candidates are visited in order, skipping invalid ones (the user's positives, which
  LightFM resamples). The first valid ``j`` with :math:`s_{uj} > s_{ui} - 1` is the
  violator; if it is the ``n``-th valid candidate the loss is

  .. math:: w(n)\, (1 - s_{ui} + s_{uj}), \qquad
      w(n) = \min(10, \log \max(1, \lfloor (N - 1) / n \rfloor)),

  with ``N = n_items`` and the weight, an estimate of the log-rank of ``i``, held constant
  (``stop_gradient``). Without a violator the loss is 0. LightFM 1.17's ``fit_warp`` also
  counts draws of the user's own positives in ``n``, so its weight is at most this one.
  """
  violates = valid & (negative_scores > positive_scores[:, None] - 1.0)
  first = jnp.argmax(violates, axis=1)
  drawn = jnp.take_along_axis(jnp.cumsum(valid, axis=1), first[:, None], axis=1)[:, 0]
  drawn = jnp.maximum(drawn, 1).astype(jnp.float32)
  weight = jnp.log(jnp.maximum(1.0, jnp.floor((n_items - 1) / drawn)))
  weight = jax.lax.stop_gradient(jnp.minimum(weight, _MAX_LOSS))
  hinge = 1.0 - positive_scores + jnp.take_along_axis(negative_scores, first[:, None], axis=1)[:, 0]
  return jnp.where(jnp.any(violates, axis=1), weight * hinge, jnp.zeros_like(hinge))


def sample_epoch(
  seed: int, epoch: int, positive_items: np.ndarray, n_items: int, max_sampled: int, negatives: str
) -> tuple[np.ndarray, np.ndarray]:
  """One epoch's order of the positives ``(n,)`` and their candidate items ``(n, max_sampled)``.

  LightFM's sampling: ``negatives='popularity'`` candidates are the items of random training
  positives (its BPR), ``'uniform'`` ones uniform items (its WARP, and classic BPR-MF). Drawn
  on the host from ``default_rng([seed, epoch])``: epoch ``e`` is the same in every run, and
  the compiled step has no random number generator (one more than doubled CPU compile time).
  """
  n = len(positive_items)
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(n)
  if negatives == "popularity":  # the item of a random training positive
    candidates = positive_items[rng.integers(0, n, size=(n, max_sampled))]
  else:
    candidates = rng.integers(0, n_items, size=(n, max_sampled))
  return order, candidates.astype(np.int32)


def sampled_loss(model: LightFM, users, items, candidates, positive_keys, loss: str) -> jax.Array:
  """Per-example ``'bpr'`` or ``'warp'`` loss of positives ``(users, items)``, ``(B,)``.

  ``candidates`` ``(B, M)`` are visited in order, skipping the user's own positives
  (``positive_keys``: the sorted ``user * n_items + item`` of all of them), as LightFM
  resamples those: BPR takes the first other candidate as the negative, WARP looks for
  the first violator (:func:`warp_loss`). An example without such a candidate has loss 0.
  """
  query = users[:, None] * model.n_items + candidates
  at = jnp.clip(jnp.searchsorted(positive_keys, query), 0, positive_keys.shape[0] - 1)
  valid = positive_keys[at] != query
  positive = model(users, items)
  if loss == "warp":
    return warp_loss(positive, model(users, candidates), valid, model.n_items)
  first = jnp.argmax(valid, axis=1)
  negative = model(users, jnp.take_along_axis(candidates, first[:, None], axis=1)[:, 0])
  return jnp.where(jnp.any(valid, axis=1), bpr_loss(positive, negative), jnp.zeros_like(positive))
