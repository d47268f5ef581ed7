"""Checkpointing for the example training loops: save every N steps, resume exactly.

:class:`orbax.checkpoint.CheckpointManager` does the work: its ``FixedIntervalPolicy``
picks the steps, saves run in the background (renamed into place when complete) and the
run's settings are the directory's metadata. Resuming gives the uninterrupted result as
long as all the loop depends on (data order, random keys) is in the state or the step.

This layer adds verification: a SHA-256 of each array is saved and checked on restore,
which falls back to the next older checkpoint if one changed on disk or cannot be read
(:class:`CheckpointError` if none is intact); other, missing or damaged settings are
refused (:class:`SettingsMismatch`). Training never resumes silently from changed data.
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

  ``settings``: what determines the run (JSON-serialisable), stored as the directory's
  orbax metadata; :meth:`restore_latest` refuses checkpoints written with others.
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
    self._settings_error: str | None = None  # why restore_latest must refuse to resume
    has_steps = os.path.isdir(self.directory) and self._check_settings(every, max_to_keep)
    # Settings are written with the first checkpoint of a directory, and never over those
    # of existing checkpoints (orbax would write them where they went missing).
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=_options(every, max_to_keep, create=True),
      metadata=None if has_steps else self.settings,
    )

  def _check_settings(self, every: int, max_to_keep: int) -> bool:
    """Compares the settings stored with existing checkpoints; whether there are any."""
    probe = ocp.CheckpointManager(self.directory, options=_options(every, max_to_keep))
    try:
      if not probe.all_steps():
        return False
      if self.settings is None:
        return True
      where = f"the checkpoints in {self.directory!r}"
      try:
        saved = probe.metadata().custom_metadata or {}
        problem = None if saved else "no settings are stored with them"
      except Exception as e:  # orbax raises OSError and others for a damaged file
        saved, problem = {}, f"their settings cannot be read ({e})"
      if problem is not None:
        self._settings_error = (
          f"{where} cannot be checked against this run's settings: {problem}; "
          "start anew in an empty directory."
        )
      elif saved != self.settings:
        changed = sorted(k for k in saved | self.settings if saved.get(k) != self.settings.get(k))
        self._settings_error = (
          f"{where} were written with other settings ({', '.join(changed)} differ); resume "
          "with the same options or use a new directory."
        )
      return True
    finally:
      probe.close()

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or ``None`` if there is none."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Starts saving ``state`` as step ``step`` if ``step % every == 0`` or ``force``;
    whether it did. A host copy is saved, so the caller may donate the arrays meanwhile."""
    if step in self._manager.all_steps() or not (force or self._manager.should_save(step)):
      return False
    host = jax.tree.map(lambda x: np.array(x, copy=True), state)
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(host), checksums=ocp.args.JsonSave(checksums(host))
    )
    return self._manager.save(step, args=args, force=True)

  def restore_latest(self, like: Any) -> tuple[int, Any]:
    """``(step, state)`` of the newest intact checkpoint, shaped as ``like`` (arrays or
    ``jax.ShapeDtypeStruct``; shardings are kept). Damaged ones are reported on stderr and
    skipped; FileNotFoundError if there is none."""
    self._manager.wait_until_finished()
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(
        f"no checkpoint to resume from in {self.directory!r}; run without --resume first."
      )
    if self._settings_error is not None:
      raise SettingsMismatch(self._settings_error)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    args = ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), checksums=ocp.args.JsonRestore()
    )
    problems = []
    for step in steps:
      where = os.path.join(self.directory, str(step))
      try:
        restored = self._manager.restore(step, args=args)
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
