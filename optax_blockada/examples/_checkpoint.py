"""Checkpointing for the example training loops: save every N steps, resume exactly.

A thin layer over :class:`orbax.checkpoint.CheckpointManager`, which does the work:
its :class:`~orbax.checkpoint.checkpoint_managers.FixedIntervalPolicy` decides which
steps are saved, saves run in the background while training goes on (each one is
written to a temporary folder and renamed when complete, so an interrupted save leaves
no half-written checkpoint), and the run's settings are stored as the checkpoint
directory's metadata. Resuming from step ``s`` and training to ``T`` gives the same
result as training to ``T`` without interruption, as long as everything the loop
depends on (data order, random keys) is in the state or a function of the step.

What this layer adds is verification. Every checkpoint stores a SHA-256 checksum of
each array; a restore recomputes them, reports a checkpoint whose data changed on disk
or cannot be read, and tries the next older one (:class:`CheckpointError` if none is
intact). A resume with other settings than those stored, or with the stored settings
missing or damaged, is refused (:class:`SettingsMismatch`). Training never resumes
silently from changed data.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "Checkpointer", "SettingsMismatch", "checksums"]


class CheckpointError(RuntimeError):
  """No intact checkpoint to resume from: every one is damaged or unreadable."""


class SettingsMismatch(CheckpointError, ValueError):
  """The checkpoints were written with other settings, or their settings are unreadable."""


def checksums(state: Any) -> dict[str, str]:
  """A SHA-256 of every array leaf of ``state`` (dtype, shape and bytes), by key path."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    array = np.ascontiguousarray(jax.device_get(leaf))
    digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
    out[jax.tree_util.keystr(path)] = digest.hexdigest()
  return out


def _options(every: int, max_to_keep: int, **kwargs: Any) -> ocp.CheckpointManagerOptions:
  return ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every),
    **kwargs,
  )


class Checkpointer:
  """Saves a training-state pytree every ``every`` steps and restores the latest one.

  Args:
    directory: where checkpoints go (created if missing; one sub-folder per step).
    every: save at steps that are multiples of ``every`` (``save(..., force=True)``
      saves at any step, e.g. the last one).
    max_to_keep: how many of the newest checkpoints to keep.
    settings: what determines the run (a JSON-serialisable mapping), stored as the
      directory's orbax metadata; :meth:`restore_latest` refuses checkpoints written with
      other settings. ``None``: not checked.
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    every: int,
    max_to_keep: int = 2,
    settings: Mapping[str, Any] | None = None,
  ):
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
      raise ValueError(f"every must be a positive int (save every N steps), got {every!r}.")
    if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
      raise ValueError(f"max_to_keep must be a positive int, got {max_to_keep!r}.")
    self.directory = os.path.abspath(os.fspath(directory))
    # As JSON gives them back (tuples become lists), so that the comparison is exact.
    self.settings = None if settings is None else json.loads(json.dumps(settings))
    self._saved_settings: Any = None
    self._settings_problem: str | None = None
    has_steps = os.path.isdir(self.directory) and self._read_saved_settings(every, max_to_keep)
    # Settings are written with the first checkpoint of a directory, and never over those
    # of existing checkpoints (orbax would write them where they went missing).
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=_options(every, max_to_keep, create=True),
      metadata=None if has_steps else self.settings,
    )

  def _read_saved_settings(self, every: int, max_to_keep: int) -> bool:
    """Reads the settings stored with existing checkpoints; whether there are any."""
    probe = ocp.CheckpointManager(self.directory, options=_options(every, max_to_keep))
    try:
      if not probe.all_steps():
        return False
      if self.settings is not None:
        try:
          self._saved_settings = probe.metadata().custom_metadata
        except Exception as e:  # orbax raises OSError and others for a damaged file
          self._settings_problem = f"their settings cannot be read ({e})"
        else:
          if not self._saved_settings:
            self._settings_problem = "no settings are stored with them"
      return True
    finally:
      probe.close()

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or ``None`` if there is none."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Starts saving ``state`` as step ``step`` if ``step % every == 0`` or ``force``.

    The arrays are copied to the host first, so the caller may donate or change them
    while the checkpoint is written in the background.

    Returns:
      Whether a save was started (:meth:`close` waits for it to finish).
    """
    if step in self._manager.all_steps():
      return False
    if not (force or self._manager.should_save(step)):
      return False
    host = jax.tree.map(lambda x: np.array(x, copy=True), state)
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(host), checksums=ocp.args.JsonSave(checksums(host))
    )
    return self._manager.save(step, args=args, force=True)

  def _check_settings(self) -> None:
    if self.settings is None:
      return
    where = f"the checkpoints in {self.directory!r}"
    if self._settings_problem is not None:
      raise SettingsMismatch(
        f"{where} cannot be checked against this run's settings: {self._settings_problem}; "
        "start anew in an empty directory."
      )
    saved = self._saved_settings
    if saved is not None and saved != self.settings:
      keys = set(saved) | set(self.settings) if isinstance(saved, dict) else set(self.settings)
      changed = sorted(k for k in keys if (saved or {}).get(k) != self.settings.get(k))
      raise SettingsMismatch(
        f"{where} were written with other settings ({', '.join(changed)} differ); resume "
        "with the same options or use a new directory."
      )

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
      SettingsMismatch: if ``settings`` were given and differ from the stored ones, or
        these are missing or unreadable.
      CheckpointError: if no checkpoint is intact (every step tried is named).
    """
    self._manager.wait_until_finished()
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(
        f"no checkpoint to resume from in {self.directory!r}; run without --resume first."
      )
    self._check_settings()
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
