"""Checkpoint files on disk: a crash at any moment of a save leaves a checkpoint that loads, and a
resume takes the newest one whose files all load, naming the ones it skipped."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from policy_trainer import checkpoint as checkpoints


def write_checkpoint(run_dir: Path, step: int, keep: int = 5, num_processes: int = 2) -> Path:
    """What `PPOTrainer.save_checkpoint` writes, with the step as the only content."""
    partial = checkpoints.begin_checkpoint(run_dir, step)
    for index in range(num_processes):
        torch.save({"rank": index, "step": step}, checkpoints.rng_path(partial, index))
    state = {"step": step, "num_processes": num_processes}
    torch.save(state, partial / checkpoints.STATE_FILENAME)
    return checkpoints.finish_checkpoint(run_dir, step, keep)


def newest_step(run_dir: Path, process_index: int = 0) -> int | None:
    loaded = checkpoints.load_newest_checkpoint(run_dir, process_index, num_processes=2)
    return None if loaded is None else loaded.state["step"]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_the_newest_checkpoint_is_loaded_with_this_processs_random_state(tmp_path: Path):
    for step in (4, 8):
        write_checkpoint(tmp_path, step)
    loaded = checkpoints.load_newest_checkpoint(tmp_path, process_index=1, num_processes=2)
    assert loaded.folder == checkpoints.checkpoint_path(tmp_path, 8)
    assert loaded.state["step"] == 8
    assert loaded.rng_state == {"rank": 1, "step": 8}


@pytest.mark.parametrize(
    "damage",
    [
        lambda folder: truncate(folder / checkpoints.STATE_FILENAME),
        lambda folder: truncate(checkpoints.rng_path(folder, 1)),
        lambda folder: checkpoints.rng_path(folder, 1).unlink(),
    ],
    ids=["truncated trainer state", "truncated random state", "missing random state"],
)
def test_a_newest_checkpoint_that_does_not_load_is_skipped_with_a_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage
):
    for step in (4, 8):
        write_checkpoint(tmp_path, step)
    damage(checkpoints.checkpoint_path(tmp_path, 8))
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        # Process 0 chooses step 4 too, though its own files of step 8 are intact: every
        # process must resume from the same step.
        assert newest_step(tmp_path, process_index=0) == 4
    assert f"skipping checkpoint {checkpoints.checkpoint_path(tmp_path, 8)}" in caplog.text


def test_no_checkpoint_that_loads_is_none(tmp_path: Path):
    assert newest_step(tmp_path) is None
    write_checkpoint(tmp_path, 4)
    truncate(checkpoints.checkpoint_path(tmp_path, 4) / checkpoints.STATE_FILENAME)
    assert newest_step(tmp_path) is None


def test_another_number_of_processes_is_refused_not_skipped(tmp_path: Path):
    write_checkpoint(tmp_path, 4, num_processes=1)
    with pytest.raises(ValueError, match="saved by a run of 1 processes"):
        checkpoints.load_newest_checkpoint(tmp_path, 0, num_processes=2)


def test_a_half_written_checkpoint_is_never_a_candidate(tmp_path: Path):
    write_checkpoint(tmp_path, 4)
    partial = checkpoints.begin_checkpoint(tmp_path, 8)  # killed while writing step 8
    torch.save({"step": 8, "num_processes": 2}, partial / checkpoints.STATE_FILENAME)
    assert newest_step(tmp_path) == 4


def test_older_checkpoints_are_deleted_only_beyond_keep(tmp_path: Path):
    for step in (4, 8, 12):
        write_checkpoint(tmp_path, step, keep=2)
    names = [path.name for path in checkpoints.completed_checkpoints(tmp_path)]
    assert names == ["step-000008", "step-000012"]


class Crash(Exception):
    """Stands for the process being killed at this point."""


def file_operations_in_a_save(run_dir: Path, step: int, keep: int) -> int:
    """How many renames, deletions and fsyncs `finish_checkpoint` makes for this save."""
    scratch = run_dir.parent / f"{run_dir.name}-count"
    shutil.copytree(run_dir, scratch)
    calls = 0

    def counted(original):
        def wrapper(*args, **kwargs):
            nonlocal calls
            calls += 1
            return original(*args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "rename", counted(Path.rename))
        patch.setattr(checkpoints.shutil, "rmtree", counted(shutil.rmtree))
        patch.setattr(checkpoints, "_sync_to_disk", counted(checkpoints._sync_to_disk))
        write_checkpoint(scratch, step, keep)
    return calls


@pytest.mark.parametrize("keep", [1, 2])
@pytest.mark.parametrize("step", [8, 4], ids=["a new step", "the same step again"])
def test_a_crash_at_any_point_of_a_save_leaves_the_new_or_the_previous_checkpoint(
    tmp_path: Path, keep: int, step: int
):
    run_dir = tmp_path / "run"
    write_checkpoint(run_dir, 4, keep)
    operations = file_operations_in_a_save(run_dir, step, keep)
    assert operations >= 2  # renames, deletions and fsyncs: each a point to crash at
    for crash_at in range(operations):
        crashed = tmp_path / f"crashed-at-{crash_at}"
        shutil.copytree(run_dir, crashed)
        with pytest.MonkeyPatch.context() as patch, pytest.raises(Crash):
            crash = crash_before(crash_at)
            patch.setattr(Path, "rename", crash(Path.rename))
            patch.setattr(checkpoints.shutil, "rmtree", crash(shutil.rmtree))
            patch.setattr(checkpoints, "_sync_to_disk", crash(checkpoints._sync_to_disk))
            write_checkpoint(crashed, step, keep)
        assert newest_step(crashed) in {4, step}, f"crash before operation {crash_at}"


def crash_before(operation: int):
    """Wraps file operations so that operation number `operation` (from 0) raises Crash
    instead of running, as if the process had been killed just then."""
    seen = 0

    def crashing(original):
        def wrapper(*args, **kwargs):
            nonlocal seen
            if seen == operation:
                raise Crash
            seen += 1
            return original(*args, **kwargs)

        return wrapper

    return crashing
