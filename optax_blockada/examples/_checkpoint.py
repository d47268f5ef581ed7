"""Checkpointing for the example training loops: save every N steps, resume exactly.

A thin wrapper over :class:`orbax.checkpoint.CheckpointManager`. The training state is
any pytree of arrays (model parameters, optimizer state, step counters, a raw
``uint32`` PRNG key); orbax writes each checkpoint to a temporary folder and renames it
when complete, so an interrupted save never leaves a half-written checkpoint behind.
Resuming from step ``s`` and training to ``T`` gives the same result as training to
``T`` without interruption, as long as everything the loop depends on (data order,
random keys) is either in the state or a function of the step.

Every checkpoint also stores a SHA-256 checksum of each array (its dtype, shape and
bytes). A restore recomputes them: a checkpoint whose data changed on disk, or that
cannot be read at all, is reported and the next older one is tried; if none is intact,
:class:`CheckpointError` names every step tried and what was wrong with it. Training
never resumes silently from changed data.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "Checkpointer", "checksums"]


class CheckpointError(RuntimeError):
  """No intact checkpoint to resume from: every one is damaged or unreadable."""


def checksums(state: Any) -> dict[str, str]:
  """A SHA-256 of every array leaf of ``state`` (dtype, shape and bytes), by key path.

  Args:
    state: a pytree of arrays.

  Returns:
    ``{jax.tree_util.keystr(path): hex digest}``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_blockada.examples._checkpoint import checksums
    >>> sums = checksums({"w": jnp.ones(3)})
    >>> list(sums), len(sums["['w']"])
    (["['w']"], 64)
    >>> checksums({"w": jnp.ones(3)}) == checksums({"w": jnp.ones(3).at[1].set(2.0)})
    False
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    array = np.ascontiguousarray(jax.device_get(leaf))
    digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
    out[jax.tree_util.keystr(path)] = digest.hexdigest()
  return out


class Checkpointer:
  """Saves a training-state pytree every ``every`` steps and restores the latest one.

  Args:
    directory: where checkpoints go (created if missing; one sub-folder per step).
    every: save at steps that are multiples of ``every`` (``save(..., force=True)``
      saves at any step, e.g. the last one).
    max_to_keep: how many of the newest checkpoints to keep.

  Example:
    >>> import tempfile
    >>> import jax.numpy as jnp
    >>> from optax_blockada.examples._checkpoint import Checkpointer
    >>> state = {"w": jnp.ones(3), "step": jnp.asarray(0)}
    >>> with tempfile.TemporaryDirectory() as d, Checkpointer(d, every=2) as ckpt:
    ...   ckpt.save(1, state), ckpt.save(2, {"w": 2 * jnp.ones(3), "step": jnp.asarray(2)})
    ...   step, restored = ckpt.restore_latest(state)
    ...   print(step, restored["w"])
    (False, True)
    2 [2. 2. 2.]
  """

  def __init__(self, directory: str | os.PathLike, *, every: int, max_to_keep: int = 2):
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
      raise ValueError(f"every must be a positive int (save every N steps), got {every!r}.")
    if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
      raise ValueError(f"max_to_keep must be a positive int, got {max_to_keep!r}.")
    self.directory = os.path.abspath(os.fspath(directory))
    self.every = every
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or ``None`` if there is none."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves ``state`` as step ``step`` if ``step % every == 0`` or ``force``.

    Returns:
      Whether a checkpoint was written. The write is finished when this returns.
    """
    if not force and step % self.every != 0:
      return False
    if step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state), checksums=ocp.args.JsonSave(checksums(state))
    )
    self._manager.save(step, args=args, force=True)
    self._manager.wait_until_finished()
    return True

  def restore_latest(self, like: Any) -> tuple[int, Any]:
    """Restores the newest intact checkpoint into the structure, shapes and dtypes of ``like``.

    A checkpoint that cannot be read, or whose arrays do not match the checksums saved
    with them, is reported on standard error and the next older one is tried.

    Args:
      like: a pytree with the structure of the saved state (arrays or
        :class:`jax.ShapeDtypeStruct`; shardings, if any, are kept).

    Returns:
      ``(step, state)``.

    Raises:
      FileNotFoundError: if the directory holds no checkpoint.
      CheckpointError: if no checkpoint is intact (every step tried is named).
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(
        f"no checkpoint to resume from in {self.directory!r}; run without --resume first."
      )
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    problems = []
    for step in steps:
      where = os.path.join(self.directory, str(step))
      try:
        restored = self._manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), checksums=ocp.args.JsonRestore()
          ),
        )
      except Exception as e:  # orbax raises many kinds of errors for damaged files
        problems.append(f"step {step} ({where}) cannot be read: {type(e).__name__}: {e}")
        continue
      saved, state = restored.checksums or {}, restored.state
      changed = sorted(k for k, v in checksums(state).items() if saved.get(k) != v)
      if changed:
        problems.append(
          f"step {step} ({where}) has changed on disk: the checksums of {', '.join(changed)} "
          "do not match those saved with it"
        )
        continue
      if problems:
        print(
          f"warning: resuming from step {step}; newer checkpoints are damaged: "
          + "; ".join(problems),
          file=sys.stderr,
        )
      return step, state
    raise CheckpointError(
      f"no intact checkpoint in {self.directory!r}: "
      + "; ".join(problems)
      + ". Delete the damaged steps to start over from an older one, or rerun without --resume."
    )

  def close(self) -> None:
    """Waits for pending writes and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
