"""A Ray Serve replica of the reward service whose forward passes the test can hold, so that a
replica can be killed with calls certainly in flight (tests/test_ray_serve.py).

The real replica (`RewardReplica`: its engine, batcher, REST app and gRPC methods), except that
its model's backend waits while a file `hold` exists in the gate folder, and says so: a replica
holding a forward pass keeps a file `held-PID` there, so the test knows which process holds
calls. Files, as in gated_server.py: the replicas are other processes. Ray's workers import this
module by name (the test puts tests/ on their PYTHONPATH).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from gated_server import GatedBackend

from reward_service.model import loading
from reward_service.serving.ray_serve import RewardReplica

HOLD = "hold"
HELD = "held-{pid}"
POLL_S = 0.005


def held_pids(gate_dir: Path) -> set[int]:
    """The replica processes holding a forward pass now."""
    return {int(path.name.removeprefix("held-")) for path in gate_dir.glob(HELD.format(pid="*"))}


class HeldBackend(GatedBackend):
    """gated_server.py's wrapper, with a gate of its own: one hold for every replica."""

    def forward(self, features):
        held = self.gate_dir / HELD.format(pid=os.getpid())
        while (self.gate_dir / HOLD).exists():
            held.touch()
            time.sleep(POLL_S)
        held.unlink(missing_ok=True)
        return self.backend.forward(features)


class GatedRewardReplica(RewardReplica):
    async def __init__(self, settings_values: dict, api_key: str | None, gate_dir: str) -> None:
        load_backend = loading.load_backend

        def held_load_backend(spec, folder, **kwargs):
            return HeldBackend(load_backend(spec, folder, **kwargs), Path(gate_dir))

        loading.load_backend = held_load_backend  # load_model looks it up at each call
        await super().__init__(settings_values, api_key)
