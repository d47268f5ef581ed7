"""The examples' checkpoints: a damaged checkpoint is never resumed silently.

Faults are made on disk by hand (bytes overwritten in the middle of the array data, a
truncated metadata file, an emptied step folder), as a crash or a bad disk would.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_blockada.examples._checkpoint import Checkpointer, CheckpointError, SettingsMismatch


def make_state(step):
  return {
    "params": {"table": jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32) * step},
    "step": jnp.asarray(step),
  }


def save_two(directory):
  with Checkpointer(directory, every=1) as ckpt:
    ckpt.save(2, make_state(2))
    ckpt.save(4, make_state(4))


def data_files(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  return [f for f in files if "METADATA" not in os.path.basename(f) and not f.endswith(".json")]


def overwrite_middle(path, n=4096):
  size = os.path.getsize(path)
  n = min(n, size // 2)
  with open(path, "r+b") as f:
    f.seek((size - n) // 2)
    f.write(b"\xff" * n)
  assert os.path.getsize(path) == size


def flip_array_bytes(step_dir):
  files = sorted(data_files(step_dir), key=os.path.getsize)
  assert files, os.listdir(step_dir)
  overwrite_middle(files[-1])  # the largest file: the table's data


def truncate_metadata(step_dir):
  found = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs if "METADATA" in f]
  assert found
  for path in found:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def empty_folder(step_dir):
  for d, _, fs in os.walk(step_dir):
    for f in fs:
      os.remove(os.path.join(d, f))


FAULTS = {"bytes": flip_array_bytes, "metadata": truncate_metadata, "emptied": empty_folder}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(fault, tmp_path, capsys):
  save_two(tmp_path)
  FAULTS[fault](tmp_path / "4")
  with Checkpointer(tmp_path, every=1) as ckpt:
    step, state = ckpt.restore_latest(make_state(0))
  assert step == 2
  np.testing.assert_array_equal(state["params"]["table"], make_state(2)["params"]["table"])
  err = capsys.readouterr().err
  assert "resuming from step 2; newer checkpoints are damaged: step 4" in err


def test_no_intact_checkpoint_is_an_error_naming_every_step(tmp_path):
  save_two(tmp_path)
  flip_array_bytes(tmp_path / "4")
  truncate_metadata(tmp_path / "2")
  with Checkpointer(tmp_path, every=1) as ckpt:
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*step 4 .*step 2 "):
      ckpt.restore_latest(make_state(0))


def test_an_intact_checkpoint_restores_silently(tmp_path, capsys):
  save_two(tmp_path)
  with Checkpointer(tmp_path, every=1) as ckpt:
    step, state = ckpt.restore_latest(make_state(0))
  assert step == 4 and int(state["step"]) == 4
  assert capsys.readouterr().err == ""


def save_with_settings(directory, settings):
  with Checkpointer(directory, every=2, settings=settings) as ckpt:
    assert not ckpt.save(1, make_state(1))  # orbax's interval policy: not a multiple of 2
    assert ckpt.save(2, make_state(2))
    assert ckpt.save(3, make_state(3), force=True)


def test_settings_are_stored_as_orbax_metadata_and_checked_on_restore(tmp_path):
  save_with_settings(tmp_path, {"lr": 0.1, "rates": (0.1, 0.2)})
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["2", "3"]
  with Checkpointer(tmp_path, every=2, settings={"lr": 0.1, "rates": [0.1, 0.2]}) as ckpt:
    step, state = ckpt.restore_latest(make_state(0))  # tuples and lists compare as JSON does
  assert step == 3 and int(state["step"]) == 3
  with Checkpointer(tmp_path, every=2, settings={"lr": 0.2, "rates": [0.1, 0.2], "d": 8}) as ckpt:
    with pytest.raises(SettingsMismatch, match=r"other settings \(d, lr differ\)"):
      ckpt.restore_latest(make_state(0))


def root_metadata(directory):
  found = [p for p in (directory / "metadata").rglob("*") if p.is_file()]
  assert len(found) == 1, found
  return found[0]


@pytest.mark.parametrize("fault", ["missing", "damaged"])
def test_missing_or_damaged_settings_are_an_error_not_a_silent_resume(fault, tmp_path):
  save_with_settings(tmp_path, {"lr": 0.1})
  path = root_metadata(tmp_path)
  if fault == "missing":
    path.unlink()
  else:
    path.write_text(path.read_text()[:10])
  for _ in range(2):  # the first refusal must not write new settings in their place
    with Checkpointer(tmp_path, every=2, settings={"lr": 0.1}) as ckpt:
      with pytest.raises(SettingsMismatch, match="cannot be checked against this run's set"):
        ckpt.restore_latest(make_state(0))


def test_a_background_save_keeps_the_values_of_the_step_it_was_given(tmp_path):
  # Saves are asynchronous: the arrays are copied first, so donating them to the next
  # step (as the training loop does) cannot change what is written.
  step = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
  state = make_state(2)
  expected = np.asarray(state["params"]["table"]).copy()
  with Checkpointer(tmp_path, every=1) as ckpt:
    ckpt.save(2, state)
    state = step(state)
  with Checkpointer(tmp_path, every=1) as ckpt:
    _, restored = ckpt.restore_latest(make_state(0))
  np.testing.assert_array_equal(restored["params"]["table"], expected)
