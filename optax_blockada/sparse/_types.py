"""The sparse path's gradient and touched-rows types."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax


class SparseGrad(NamedTuple):
  """The gradient of a table with respect to its looked-up rows (like TF's IndexedSlices).

  Put it in a gradient pytree in place of a table's dense gradient and pass the tree to
  :func:`apply_gradients`. Ids may repeat (their gradients are summed, as autodiff
  through ``table[ids]`` sums them) and may have any shape ``S``; ``values`` then has
  shape ``S + table.shape[1:]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada import sparse
    >>> g = sparse.SparseGrad(ids=jnp.array([2, 0, 2]), values=jnp.ones((3, 4)))
    >>> g.values.shape
    (3, 4)
  """

  # Integer ids of the looked-up rows, any shape ``S``; duplicates allowed.
  ids: jax.Array
  # Gradient with respect to ``table[ids]``: shape ``S + table.shape[1:]``.
  values: jax.Array


@jax.tree_util.register_pytree_node_class
class TouchedRows:
  """The rows a batch looks up in each table, as returned by :func:`gather`.

  A pytree (so it crosses ``jax.jit`` boundaries): its children are, for every group
  of tables that share ids, the sorted unique ids of shape ``(n,)`` (``n`` the number
  of ids looked up), padded with the out-of-range id ``num_rows`` (also the slot of
  dropped out-of-range ids). The table paths, row counts and the params' tree structure
  are static.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada import sparse
    >>> params = {'table': jnp.zeros((10, 2)), 'w': jnp.zeros(3)}
    >>> _, _, touched = sparse.gather(params, {'table': jnp.array([7, 2, 7])})
    >>> touched.rows
    {'table': Array([ 2,  7, 10], dtype=int32)}
  """

  def __init__(
    self,
    unique: tuple[jax.Array, ...],
    keys: tuple[Any, ...],
    leaves: tuple[tuple[int, ...], ...],
    num_rows: tuple[int, ...],
    treedef: Any,
  ):
    self.unique = tuple(unique)
    self.keys = keys
    self.leaves = leaves
    self.num_rows = num_rows
    self.treedef = treedef

  @property
  def rows(self) -> dict[Any, jax.Array]:
    """The padded unique ids of each table group, by the key given to :func:`gather`."""
    return dict(zip(self.keys, self.unique, strict=True))

  def tree_flatten(self):
    return self.unique, (self.keys, self.leaves, self.num_rows, self.treedef)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(tuple(children), *aux)

  def __repr__(self) -> str:
    return (
      f"TouchedRows({self.rows!r}, num_rows={dict(zip(self.keys, self.num_rows, strict=True))})"
    )
