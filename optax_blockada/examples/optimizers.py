"""The optimizers every embedding example compares, built by name at a learning rate.

``optax.adagrad`` (the baseline); ``diagonal``, :func:`optax_blockada.diagonal_adagrad`
(optax numerics); ``preset``, the model's own ecosystem numerics (GloVe's ``glove.c``,
LightFM, PyTorch: see :data:`PRESETS`); ``rowwise``, :func:`optax_blockada.rowwise_adagrad`
(mean reduction); ``block``, :func:`optax_blockada.block_adagrad` (``'rows_x_shared'``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import optax

import optax_blockada as ob

__all__ = ["OPTIMIZER_NAMES", "PRESETS", "make_optimizer"]

OPTIMIZER_NAMES = ("optax.adagrad", "diagonal", "preset", "rowwise", "block")
"""The names :func:`make_optimizer` accepts, in display order."""

PRESETS: dict[str, Callable[[float], optax.GradientTransformation]] = {
  "glove": lambda lr: ob.presets.glove_adagrad(eta=lr),
  "lightfm": lambda lr: ob.presets.lightfm_adagrad(learning_rate=lr),
  "torch": lambda lr: ob.presets.torch_adagrad(learning_rate=lr),
}
"""Ecosystem presets by model family: ``learning_rate -> optimizer``."""


def make_optimizer(
  name: str,
  learning_rate: float,
  *,
  preset: str = "torch",
  block_structure: str = "rows_x_shared",
  root: str = "auto",
) -> optax.GradientTransformation:
  """The optimizer ``name`` at a positive ``learning_rate`` (GloVe's ``eta`` for its
  preset); ``'preset'`` is ``PRESETS[preset]``; ``'block'`` has ``block_structure`` and
  ``root`` (e.g. ``'rows'`` and ``'newton_schulz'``).
  """
  if name not in OPTIMIZER_NAMES:
    raise ValueError(f"name must be one of {OPTIMIZER_NAMES}, got {name!r}.")
  if preset not in PRESETS:
    raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}.")
  number = isinstance(learning_rate, (int, float)) and not isinstance(learning_rate, bool)
  if not (number and math.isfinite(learning_rate) and learning_rate > 0):
    raise ValueError(
      f"learning_rate must be a positive finite number, got {learning_rate!r} "
      f"(for optimizer {name!r})."
    )
  lr = float(learning_rate)
  if name == "optax.adagrad":
    return optax.adagrad(lr)
  if name == "diagonal":
    return ob.diagonal_adagrad(lr)
  if name == "preset":
    return PRESETS[preset](lr)
  if name == "rowwise":
    return ob.rowwise_adagrad(lr)
  return ob.block_adagrad(lr, structure=block_structure, root=root)
