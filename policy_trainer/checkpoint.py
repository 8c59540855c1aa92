"""Resumable checkpoints: what a run needs to continue as if it had never stopped.

`RUN_DIR/checkpoints/step-000050/` holds `trainer_state.pt` (the trained parameters of the policy
and value model, optimiser and scheduler state, KL controller, score statistics, step, prompt
stream position) and one `rng-K.pt` per process (every random generator's state).

A crash at any moment leaves a checkpoint to resume from: one is written under a `.partial`
name, flushed to disk (fsync) and renamed once complete, and older ones are deleted only after
that. A step saved twice (a stop right after a periodic checkpoint) moves the old copy aside
(`.replaced`) before the new one takes its name, and the old copy counts until then. A resume
takes the newest checkpoint whose files all load, and says which newer ones it skipped.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINTS_DIRNAME = "checkpoints"
STATE_FILENAME = "trainer_state.pt"
PARTIAL_SUFFIX = ".partial"
REPLACED_SUFFIX = ".replaced"
_CHECKPOINT_NAME = re.compile(r"step-(\d+)(\.replaced)?")

logger = logging.getLogger(__name__)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS_DIRNAME / f"step-{step:06d}"


def rng_path(checkpoint: Path, process_index: int) -> Path:
    return checkpoint / f"rng-{process_index}.pt"


def completed_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first: one per step, the `.replaced` copy of a step only
    while its successor has not yet taken the step's name."""
    folder = run_dir / CHECKPOINTS_DIRNAME
    if not folder.is_dir():
        return []
    by_step: dict[int, Path] = {}
    for path in folder.iterdir():
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match is None or not (path / STATE_FILENAME).is_file():
            continue
        step, replaced = int(match.group(1)), match.group(2) is not None
        if not replaced or step not in by_step:
            by_step[step] = path
    return [by_step[step] for step in sorted(by_step)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    completed = completed_checkpoints(run_dir)
    return completed[-1] if completed else None


def capture_rng_state(shuffle_generator: torch.Generator) -> dict[str, Any]:
    """Every random generator a step draws from, as plain tensors and numbers."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].copy()),
            "position": numpy_state[2],
            "has_gauss": numpy_state[3],
            "cached_gaussian": numpy_state[4],
        },
        "torch": torch.get_rng_state(),
        "shuffle": shuffle_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], shuffle_generator: torch.Generator) -> None:
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy(),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    shuffle_generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (all of them, or the LoRA adapters and the value
    model): frozen weights are the policy's folder's and are not copied into every checkpoint."""
    return {
        name: parameter.detach().cpu()
        for name, parameter in module.named_parameters()
        if parameter.requires_grad
    }


def load_trainable_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    parameters = dict(module.named_parameters())
    expected = {name for name, parameter in parameters.items() if parameter.requires_grad}
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(
            "the checkpoint does not match this model's trainable parameters (was the run "
            f"started with other model settings?): missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}"
        )
    with torch.no_grad():
        for name, value in state.items():
            parameters[name].copy_(value)


def partial_path(run_dir: Path, step: int) -> Path:
    """Where checkpoint `step` is written before it is complete."""
    final = checkpoint_path(run_dir, step)
    return final.with_name(final.name + PARTIAL_SUFFIX)


def begin_checkpoint(run_dir: Path, step: int) -> Path:
    """The (emptied) folder to write checkpoint `step` into; main process only."""
    partial = partial_path(run_dir, step)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def _sync_to_disk(path: Path) -> None:
    """fsync a file, or a folder's entries: without it, a rename can reach the disk before the
    data it names, and a power loss leaves a complete-looking checkpoint of empty files."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def finish_checkpoint(run_dir: Path, step: int, keep: int) -> Path:
    """Flush the written checkpoint to disk, rename it into place, then delete all but the
    `keep` newest; main process only, once every process has written its part."""
    final, partial = checkpoint_path(run_dir, step), partial_path(run_dir, step)
    for written in partial.iterdir():
        _sync_to_disk(written)
    _sync_to_disk(partial)
    replaced = final.with_name(final.name + REPLACED_SUFFIX)
    shutil.rmtree(replaced, ignore_errors=True)
    if final.exists():
        final.rename(replaced)  # still a complete checkpoint of this step until the next rename
    partial.rename(final)
    _sync_to_disk(final.parent)
    shutil.rmtree(replaced, ignore_errors=True)
    for old in completed_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE_FILENAME, map_location="cpu", weights_only=True)


@dataclass(frozen=True)
class LoadedCheckpoint:
    folder: Path
    state: dict[str, Any]
    rng_state: dict[str, Any]  # this process's


def load_newest_checkpoint(
    run_dir: Path, process_index: int, num_processes: int
) -> LoadedCheckpoint | None:
    """The newest checkpoint whose files all load, read in full before anything is restored;
    newer ones that don't (a truncated file, a missing process's random state) are skipped with
    a warning naming them. Every process checks every process's files, so all of them choose the
    same checkpoint."""
    for folder in reversed(completed_checkpoints(run_dir)):
        try:
            state = load_state(folder)
        except Exception as error:  # any unreadable file makes a checkpoint unusable
            logger.warning(
                "skipping checkpoint %s: its %s does not load (%s)", folder, STATE_FILENAME, error
            )
            continue
        if state.get("num_processes") != num_processes:  # the user's to fix, not a damaged file
            raise ValueError(
                f"{folder} was saved by a run of {state.get('num_processes')} processes; resume "
                f"it with the same number (this one has {num_processes})"
            )
        try:
            rng_states = [load_rng_state(folder, index) for index in range(num_processes)]
        except Exception as error:
            logger.warning(
                "skipping checkpoint %s: a random state does not load (%s)", folder, error
            )
            continue
        return LoadedCheckpoint(folder, state, rng_states[process_index])
    return None


def load_rng_state(checkpoint: Path, process_index: int) -> dict[str, Any]:
    path = rng_path(checkpoint, process_index)
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} has no random state for process {process_index}")
    return torch.load(path, map_location="cpu", weights_only=True)
