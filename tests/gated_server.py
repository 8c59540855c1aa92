"""`reward-service serve` for tests that must hold a server at a point of their choosing.

The real CLI in a real process (real signals, real transports, real models), except that each
model's backend is wrapped so that its loading and its forward passes wait at gates the test
opens. The gates are files in a folder the test owns: the server is another process, and a file
written atomically is the simplest signal both sides see; the server polls only while it waits.
Run as `python tests/gated_server.py GATE_DIR serve ...`; tests use it through
helpers.ServerGate (`start_server(..., gated=True)`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

# Written by the server: forward passes started so far, warm-up passes included, all models.
FORWARD_PASSES = "forward-passes"
# Written by the test: the number of the last forward pass that may run; later ones wait until
# it is raised or removed. Absent: no forward pass waits.
FORWARD_ALLOWED = "forward-allowed"
# Created by the test: while it exists, that model's backend is not loaded.
LOAD_HELD = "load-held-{model}"
# Written by the server: the most padded tokens (rows x columns) of any forward pass so far.
LARGEST_FORWARD = "largest-forward"
# Written by the test: a token id; a forward pass whose batch holds it raises (the stand-in for
# an input the model's code can't take, or an out-of-memory at one item's length).
FAILING_TOKEN = "failing-token"
# Created by the test: the next time a batching task takes a batch, it raises (the stand-in for
# a bug in the batching loop, which no input can trigger).
BATCHER_CRASH = "batcher-crash"
POLL_S = 0.005


def write_atomically(path: Path, text: str) -> None:
    """So that a reader never sees a half-written number."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def read_number(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except FileNotFoundError:
        return None


class GatedBackend:
    """A loaded backend whose forward passes are counted and wait while the gate says so."""

    _passes = 0  # across every model of the process: they share one compute thread
    _lock = threading.Lock()

    def __init__(self, backend, gate_dir: Path) -> None:
        self.backend = backend
        self.gate_dir = gate_dir
        self.name, self.device, self.dtype = backend.name, backend.device, backend.dtype

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        with GatedBackend._lock:
            GatedBackend._passes += 1
            number = GatedBackend._passes
            write_atomically(self.gate_dir / FORWARD_PASSES, str(number))
        while (allowed := read_number(self.gate_dir / FORWARD_ALLOWED)) is not None:
            if number <= allowed:
                break
            time.sleep(POLL_S)
        padded_tokens = int(np.asarray(features["input_ids"]).size)
        with GatedBackend._lock:
            if padded_tokens > (read_number(self.gate_dir / LARGEST_FORWARD) or 0):
                write_atomically(self.gate_dir / LARGEST_FORWARD, str(padded_tokens))
        failing = read_number(self.gate_dir / FAILING_TOKEN)
        if failing is not None and (np.asarray(features["input_ids"]) == failing).any():
            raise RuntimeError(f"the model cannot take token {failing} (on the test's request)")
        return self.backend.forward(features)


def main(argv: list[str]) -> int:
    gate_dir = Path(argv[0])
    from reward_service import cli
    from reward_service.model import loading

    load_backend = loading.load_backend

    def gated_load_backend(spec, folder, **kwargs):
        while (gate_dir / LOAD_HELD.format(model=spec.name)).exists():
            time.sleep(POLL_S)
        return GatedBackend(load_backend(spec, folder, **kwargs), gate_dir)

    loading.load_backend = gated_load_backend  # load_model looks it up at each call

    from reward_service.engine.queue import ModelQueue

    take_batch = ModelQueue._take_batch

    def take_batch_or_crash(self):
        if (gate_dir / BATCHER_CRASH).exists():
            raise RuntimeError("the batching loop crashed (on the test's request)")
        return take_batch(self)

    ModelQueue._take_batch = take_batch_or_crash
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
