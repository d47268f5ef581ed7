"""Argument checks shared by every transform: clear errors instead of XLA traces.

Values that arrive traced (``optax.inject_hyperparams`` under ``jit``) cannot be
inspected and are passed through; concrete values are checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_blockada._geometry import path_str


def is_traced(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def _concrete(x: Any) -> np.ndarray | None:
  if is_traced(x):
    return None
  try:
    return np.asarray(x)
  except Exception:
    return None


def check_nonnegative(name: str, value: Any, *, hint: str = "") -> None:
  """Raises ``ValueError`` unless a concrete ``value`` is finite and ``>= 0``."""
  v = _concrete(value)
  if v is None:
    return
  if v.dtype.kind not in "biuf":
    raise TypeError(f"{name} must be a real number, got {value!r}.")
  if not np.all(np.isfinite(v)) or np.any(v < 0):
    raise ValueError(f"{name} must be finite and >= 0, got {value!r}.{hint}")


def check_learning_rate(learning_rate: Any, name: str = "learning_rate") -> None:
  """Raises ``ValueError`` for a concrete learning rate that is not finite.

  Schedules (callables) are accepted as they are; their values are checked by
  ``optax`` when called.
  """
  if callable(learning_rate):
    return
  v = _concrete(learning_rate)
  if v is None:
    return
  if v.dtype.kind not in "biuf":
    raise TypeError(f"{name} must be a real number or a schedule, got {learning_rate!r}.")
  if not np.all(np.isfinite(v)):
    raise ValueError(
      f"{name} must be finite, got {learning_rate!r}. Pass a finite float or an optax schedule."
    )


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
  choices = tuple(choices)
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
  return value


def static_bool(name: str, value: Any) -> bool:
  """A Python bool from ``value``; a clear error if it is traced."""
  if is_traced(value):
    raise TypeError(
      f"{name} is used in Python control flow and cannot be traced. With "
      f"optax.inject_hyperparams pass static_args=('{name}', ...)."
    )
  return bool(value)


def check_float_leaves(tree: Any, name: str) -> None:
  """Raises ``TypeError`` naming the first leaf that is not a real floating array."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
      dtype = np.asarray(leaf).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
        f"{name}: the leaf at {path_str(path)} has dtype {dtype}; Adagrad needs "
        "real floating-point leaves. Cast it to a float dtype, or leave it out of "
        "this transform with optax.masked / optax.partition (e.g. "
        "optax.set_to_zero for that label)."
      )


def check_same_structure(updates: Any, state_tree: Any, name: str) -> None:
  """Raises ``ValueError`` when ``updates`` and a state tree differ in structure."""
  u = jax.tree.structure(updates)
  s = jax.tree.structure(state_tree)
  if u != s:
    raise ValueError(
      f"{name}: the updates tree does not match the optimizer state. "
      f"updates: {u}; state: {s}. Initialise the state with tx.init(params) for the "
      "same params tree you pass gradients for."
    )


def static_int(name: str, value: Any, *, minimum: int = 1) -> int:
  """A Python int ``>= minimum`` from ``value``; a clear error if it is an array or traced.

  Values used as shapes or in Python control flow cannot be JAX arrays, which is what
  ``optax.inject_hyperparams`` makes of numeric arguments unless they are static.
  """
  if isinstance(value, jax.Array) or is_traced(value):
    raise TypeError(
      f"{name} is used as a shape or in Python control flow and cannot be a JAX array "
      f"or traced, got {value!r}. With optax.inject_hyperparams pass "
      f"static_args=('{name}', ...)."
    )
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be a Python int, got {value!r}.")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}.")
  return int(value)


def check_state(state: Any, state_cls: type, name: str) -> None:
  """Raises ``TypeError`` unless ``state`` is this transform's own ``state_cls``.

  A state of a chain or alias around the transform (``rowwise_adagrad``'s pair of
  states, an ``optax.chain``), of another transform, or ``None`` would otherwise fail
  deep inside with an ``AttributeError``.
  """
  if isinstance(state, state_cls):
    return
  found = [
    x
    for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, state_cls))
    if isinstance(x, state_cls)
  ]
  hint = (
    f" It contains a {state_cls.__name__}: pass the state of the transform that made "
    "it (e.g. state[0] of rowwise_adagrad(...)'s state, which also holds optax.scale's), "
    "or call update on the chain."
    if found
    else " Initialise it with this transform's init(params)."
  )
  raise TypeError(
    f"{name}: the optimizer state must be the {state_cls.__name__} made by {name}'s "
    f"init, got {type(state).__name__}.{hint}"
  )


def checked_updates(
  updates: Any, state: Any, state_cls: type, tree_field: str, name: str
) -> tuple[Any, list[tuple[Any, Any]], Any]:
  """The checks every ``update`` of this library starts with, then the flattened updates.

  Checks that ``state`` is a ``state_cls``, that the updates have the tree of its field
  ``tree_field`` (a pytree with the params' structure) and float leaves.

  Returns:
    ``(updates, with_path, treedef)``: the updates with Python scalars as arrays, their
    ``(key path, leaf)`` pairs and their treedef.
  """
  check_state(state, state_cls, name)
  check_same_structure(updates, getattr(state, tree_field), name)
  check_float_leaves(updates, f"{name}: updates")
  updates = as_arrays(updates)
  with_path, treedef = jax.tree_util.tree_flatten_with_path(updates)
  return updates, with_path, treedef


def as_arrays(tree: Any) -> Any:
  """``tree`` with Python and numpy scalars as arrays (optax accepts them as params)."""
  return jax.tree.map(lambda x: x if hasattr(x, "shape") else jnp.asarray(x), tree)


def check_static_feature_axes(feature_axes: Any) -> None:
  """Raises ``TypeError`` for a JAX array as ``feature_axes`` (it must be static ints).

  ``optax.inject_hyperparams`` turns numeric arguments into arrays unless they are
  listed in ``static_args``.
  """
  if isinstance(feature_axes, jax.Array):
    raise TypeError(
      "feature_axes must be Python ints, got a JAX array. With "
      "optax.inject_hyperparams pass static_args=('feature_axes', ...)."
    )
