"""Resumable checkpoints: what a run needs to continue as if it had never stopped.

`RUN_DIR/checkpoints/step-000050/` holds `trainer_state.pt` (the trained parameters of the policy
and value model, optimiser and scheduler state, KL controller, score statistics, step, prompt
stream position) and one `rng-K.pt` per process (every random generator's state). A checkpoint
is written under a `.partial` name and renamed once complete, so a crash mid-save never leaves
one that looks usable.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINTS_DIRNAME = "checkpoints"
STATE_FILENAME = "trainer_state.pt"
PARTIAL_SUFFIX = ".partial"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS_DIRNAME / f"step-{step:06d}"


def rng_path(checkpoint: Path, process_index: int) -> Path:
    return checkpoint / f"rng-{process_index}.pt"


def completed_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = run_dir / CHECKPOINTS_DIRNAME
    if not folder.is_dir():
        return []
    found = [
        path
        for path in folder.glob("step-*")
        if not path.name.endswith(PARTIAL_SUFFIX) and (path / STATE_FILENAME).is_file()
    ]
    return sorted(found, key=lambda path: path.name)


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


def finish_checkpoint(run_dir: Path, step: int, keep: int) -> Path:
    """Rename the written checkpoint into place and delete all but the `keep` newest; main
    process only, once every process has written its part."""
    final = checkpoint_path(run_dir, step)
    if final.exists():
        shutil.rmtree(final)
    partial_path(run_dir, step).rename(final)
    for old in completed_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE_FILENAME, map_location="cpu", weights_only=True)


def load_rng_state(checkpoint: Path, process_index: int) -> dict[str, Any]:
    path = rng_path(checkpoint, process_index)
    if not path.is_file():
        raise FileNotFoundError(
            f"{checkpoint} has no random state for process {process_index}: resume with the same "
            "number of processes the run was started with"
        )
    return torch.load(path, map_location="cpu", weights_only=True)
