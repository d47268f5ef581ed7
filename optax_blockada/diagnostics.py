"""Looking inside optimizer states: effective learning rates, counters and state size."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from optax_blockada import _validation
from optax_blockada._block import BLOCK_STATES, BlockState, block_effective_learning_rates
from optax_blockada._nonfinite import SkipNonfiniteRowsState
from optax_blockada._scalar import DiagonalAdagradState, RowwiseAdagradState, inverse_root
from optax_blockada._typing import OptState, Params

__all__ = ["counters", "effective_learning_rates", "find_adagrad_states", "state_bytes"]

_ADAGRAD_STATES = (
  DiagonalAdagradState,
  RowwiseAdagradState,
  *BLOCK_STATES,
  optax.ScaleByRssState,
)
AdagradState = DiagonalAdagradState | RowwiseAdagradState | BlockState | optax.ScaleByRssState


def find_adagrad_states(opt_state: OptState) -> list[AdagradState]:
  """All Adagrad states inside ``opt_state`` (chains, partitions, masks, injections).

  Recognises this library's :class:`DiagonalAdagradState`,
  :class:`RowwiseAdagradState` and the block states (:class:`BlockAdagradState`,
  :class:`SharedBlockAdagradState`, :class:`RowsXSharedBlockAdagradState`), and
  ``optax.adagrad``'s ``ScaleByRssState``.

  Args:
    opt_state: any optimizer state pytree.

  Returns:
    The states, in tree order.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_blockada as ob
    >>> tx = optax.chain(optax.clip(1.0), ob.rowwise_adagrad(0.1))
    >>> [type(s).__name__ for s in ob.find_adagrad_states(tx.init(jnp.ones((3, 2))))]
    ['RowwiseAdagradState']
  """
  is_state = lambda x: isinstance(x, _ADAGRAD_STATES)
  return [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]


def _leafwise(trees: list[Any], combine: Any, what: str) -> Any:
  """One tree from state trees that hold ``MaskedNode`` where another tree holds the leaf.

  ``combine(present)`` makes each leaf from the leaves the trees hold at that position.
  """
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  flat = [jax.tree.flatten(t, is_leaf=is_masked) for t in trees]
  treedef = flat[0][1]
  if any(td != treedef for _, td in flat):
    raise ValueError(
      f"{what}: several states with different trees were found; pass the one you want "
      "(see find_adagrad_states)."
    )
  return treedef.unflatten(
    [
      combine([x for x in position if not is_masked(x)])
      for position in zip(*(leaves for leaves, _ in flat), strict=True)
    ]
  )


def _only(present: list[Any]) -> Any:
  if len(present) != 1:
    raise ValueError(
      f"effective_learning_rates: a leaf is covered by {len(present)} Adagrad states; pass "
      "the one you want (see find_adagrad_states)."
    )
  return present[0]


def effective_learning_rates(
  opt_state: OptState,
  learning_rate: ArrayLike = 1.0,
  *,
  eps: ArrayLike = 1e-7,
  eps_in_sqrt: bool = True,
  relative_eps: ArrayLike | None = None,
) -> Params:
  r"""Per-row (or per-element) effective learning rate :math:`\eta\,\phi(G)`.

  The step a row takes per unit of gradient at the next update, if that gradient is
  small against the accumulator: :math:`\eta / \sqrt{G + \epsilon}` (or
  :math:`\eta / (\sqrt{G} + \epsilon)`), zero where :math:`G = 0`. Rows of a row-wise
  state give one value per row (keepdims shapes, e.g. ``(V, 1)``).

  The state may sit anywhere in a chain. Partitioned groups (``optax.partition``,
  ``optax.masked``, e.g. the GloVe preset) are merged into one tree. Pass the
  ``eps`` and ``eps_in_sqrt`` the transform was built with (the defaults match
  :func:`rowwise_adagrad` and :func:`diagonal_adagrad`; presets say theirs).

  Block states (of :func:`scale_by_block_adagrad`) give the rotation-invariant
  :math:`\eta \operatorname{tr}((H + \lambda I)^{-1/2}) / k` per row, averaged over its
  blocks (one scalar per leaf for ``'shared'``); see
  :func:`block_effective_learning_rates`, which takes ``eps`` and ``relative_eps``.

  Args:
    opt_state: an optimizer state containing Adagrad state(s), or such a state.
    learning_rate: the learning rate :math:`\eta` to multiply by.
    eps: the transform's ``eps``.
    eps_in_sqrt: the transform's ``eps_in_sqrt`` (scalar states only).
    relative_eps: the block transform's ``relative_eps`` (``None``: its default).

  Returns:
    A pytree like the params' (per-row leaves for row-wise states).

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> tx = ob.rowwise_adagrad(0.1, initial_accumulator_value=0.0, eps=0.0)
    >>> params = jnp.zeros((2, 2))
    >>> _, state = tx.update(jnp.array([[3.0, 4.0], [0.0, 0.0]]), tx.init(params))
    >>> print(ob.effective_learning_rates(state, 0.1, eps=0.0))  # 0.1 / sqrt(12.5)
    [[0.02828]
     [0.     ]]
  """
  _validation.check_nonnegative("effective_learning_rates: eps", eps)
  states = find_adagrad_states(opt_state)
  if not states:
    raise ValueError(
      "effective_learning_rates: no Adagrad state (DiagonalAdagradState, "
      "RowwiseAdagradState, a block Adagrad state or optax ScaleByRssState) found in "
      "opt_state."
    )
  eps_in_sqrt = bool(eps_in_sqrt)

  def per_state(state):
    if isinstance(state, BLOCK_STATES):
      return block_effective_learning_rates(
        state, learning_rate, eps=eps, relative_eps=relative_eps
      )
    return jax.tree.map(
      lambda g: inverse_root(g, eps, eps_in_sqrt) * learning_rate, state.sum_of_squares
    )

  return _leafwise([per_state(s) for s in states], _only, "effective_learning_rates")


def _sum_or_zero(present: list[Any]) -> Any:
  return sum(present[1:], present[0]) if present else jnp.zeros((), jnp.int32)


# Counter name -> (state classes holding it, field).
_COUNTERS = {
  "fallbacks": (BLOCK_STATES, "fallbacks"),
  "skipped_rows": ((SkipNonfiniteRowsState,), "skipped_rows"),
}


def counters(opt_state: OptState) -> dict[str, Params]:
  r"""The event counters of the states inside ``opt_state``, per params leaf.

  * ``'fallbacks'`` (the states of :func:`scale_by_block_adagrad`): block updates that
    took the row-wise step because their matrix root was not finite, and (``'shared'``,
    ``'rows_x_shared'``) row blocks left out of the shared statistic because their
    squared gradient was not finite;
  * ``'skipped_rows'`` (:class:`SkipNonfiniteRowsState`, from
    :func:`skip_nonfinite_rows` or ``skip_nonfinite_rows=True``): gradient rows skipped
    because they were not finite.

  States anywhere in a chain, partition, mask or injection are found. Where several
  states of one kind cover a leaf their counts are added; a leaf no state covers counts
  0. Only the kinds present in ``opt_state`` are returned.

  Args:
    opt_state: any optimizer state pytree.

  Returns:
    ``{name: pytree of int32 scalars with the params' structure}``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax_blockada as ob
    >>> tx = ob.block_adagrad(0.1, structure='shared', skip_nonfinite_rows=True)
    >>> params = {'table': jnp.zeros((3, 2))}
    >>> grads = {'table': jnp.array([[1.0, jnp.inf], [1.0, 2.0], [0.0, 0.0]])}
    >>> _, state = tx.update(grads, tx.init(params), params)
    >>> {name: jax.tree.map(int, tree) for name, tree in ob.counters(state).items()}
    {'fallbacks': {'table': 0}, 'skipped_rows': {'table': 1}}
  """
  out = {}
  for counter, (classes, field) in _COUNTERS.items():
    is_state = lambda x, classes=classes: isinstance(x, classes)
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]
    if found:
      out[counter] = _leafwise(
        [getattr(x, field) for x in found], _sum_or_zero, f"counters ({counter})"
      )
  return out


def state_bytes(tree: OptState) -> int:
  """Total bytes of the array leaves of ``tree`` (an optimizer state, or any pytree).

  Works on concrete arrays and on ``jax.ShapeDtypeStruct`` leaves, so the size of a
  state can be known before allocating it: ``state_bytes(jax.eval_shape(tx.init,
  params))``.

  Args:
    tree: a pytree of arrays or ``jax.ShapeDtypeStruct``.

  Returns:
    The number of bytes as a Python int.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_blockada as ob
    >>> params = jax.ShapeDtypeStruct((1000, 64), jnp.float32)
    >>> ob.state_bytes(jax.eval_shape(optax.adagrad(0.1).init, params))
    256000
    >>> ob.state_bytes(jax.eval_shape(ob.rowwise_adagrad(0.1).init, params))  # (1000 + 64) * 4
    4256
  """
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    if shape is None or dtype is None:
      raise TypeError(
        f"state_bytes: the leaf at {jax.tree_util.keystr(path) or '<root>'} is a "
        f"{type(leaf).__name__}, not an array or jax.ShapeDtypeStruct; pass an optimizer "
        "state (or jax.eval_shape(tx.init, params))."
      )
    total += math.prod(shape) * np.dtype(dtype).itemsize
  return total
