"""The sparse step for Flax NNX models and optimizers, in place."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from jax.typing import ArrayLike

from optax_blockada.sparse._step import apply_gradients
from optax_blockada.sparse._tables import gather

if TYPE_CHECKING:  # Flax is imported where the adapter runs, not with the library.
  from flax import nnx


def nnx_update(
  model: nnx.Module,
  optimizer: nnx.Optimizer,
  loss_fn: Callable[..., Any],
  ids: Mapping[str, ArrayLike],
  *args: Any,
  has_aux: bool = False,
  checked: bool = False,
) -> Any:
  r"""A sparse training step for a Flax NNX model and its ``nnx.Optimizer``, in place.

  The sparse counterpart of::

    loss, grads = nnx.value_and_grad(loss_fn)(model, ids, *args)
    optimizer.update(model, grads)

  The model is written as usual, with ``nnx.Embed`` layers or table ``nnx.Param`` s;
  ``ids`` maps each table's path in the model (``'word'`` for an ``nnx.Embed`` at
  ``model.word``, or ``'word.embedding'``; a path naming a submodule covers all its
  tables, which then share the ids) to the ids the loss looks up in it. During the
  call the tables hold only the gathered rows and ``loss_fn(model, local_ids, *args)``
  receives the remapped ids: it must look up every table only through them (``nnx.Embed``
  does). Then ``optimizer.tx`` runs on the touched rows and the new rows are scattered
  into the model's tables and the optimizer's state. Use it inside ``nnx.jit`` (donate
  the model and the optimizer for in-place updates).

  Args:
    model: an ``nnx.Module``.
    optimizer: an ``nnx.Optimizer`` for ``model`` (any ``wrt``).
    loss_fn: ``loss_fn(model, ids, *args) -> scalar`` (or ``(scalar, aux)``).
    ids: ``{path: ids}`` for the tables.
    *args: more arguments of ``loss_fn``.
    has_aux: as in ``nnx.value_and_grad``.
    checked: as in :func:`gather`.

  Returns:
    The loss (and aux), as ``nnx.value_and_grad`` returns it.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import optax_blockada as ob
    >>> from optax_blockada import sparse
    >>> class Model(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.embed = nnx.Embed(100_000, 8, rngs=rngs)
    ...   def __call__(self, ids):
    ...     return self.embed(ids).sum(-1)
    >>> model = Model(nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, ob.rowwise_adagrad(0.5), wrt=nnx.Param)
    >>> def loss_fn(model, ids, target):
    ...   return jnp.mean((model(ids['embed']) - target) ** 2)
    >>> @nnx.jit
    ... def step(model, optimizer, ids, target):
    ...   return sparse.nnx_update(model, optimizer, loss_fn, ids, target)
    >>> for _ in range(30):
    ...   loss = step(model, optimizer, {'embed': jnp.array([4, 2, 4])}, jnp.ones(3))
    >>> print(f"{loss:.4f}", model.embed.embedding.shape)
    0.0000 (100000, 8)
  """
  from flax import nnx

  wrt = optimizer.wrt
  graph_kw = {"graph": optimizer.graph} if getattr(optimizer, "graph", None) is not None else {}
  params = nnx.as_pure(nnx.state(model, wrt, **graph_kw))
  small, local, touched = gather(params, ids, checked=checked)
  # The model holds the gathered rows while the loss runs. If anything raises before the
  # new rows are written (the loss, or apply_gradients rejecting the transform), the
  # model gets its tables back and the optimizer is left untouched.
  nnx.update(model, small)
  try:
    value, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=has_aux)(
      model, local, *args
    )
    grads = nnx.as_pure(nnx.state(grads, wrt, **graph_kw))
    new_params, new_state = apply_gradients(
      optimizer.tx, grads, nnx.as_pure(optimizer.opt_state), params, touched
    )
  except BaseException:
    nnx.update(model, params)
    raise
  nnx.update(model, new_params)
  nnx.update(optimizer.opt_state, nnx.state(new_state, **graph_kw))
  optimizer.step[...] += 1
  return value
