"""A reward service that dies and comes back mid-run: the client's retries ride it out, and the
run finishes with every step taken once and every batch scored once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO_ROOT, start_server

from policy_trainer.run_log import read_metrics

SCORED = '"POST /v1/score HTTP/1.1" 200'  # one access-log line per scored request


def test_a_reward_service_killed_and_restarted_mid_run_costs_no_step_and_scores_each_batch_once(
    ppo_task, tmp_path: Path
):
    server_args = ["--model", f"rm={ppo_task.classifier}", "--access-log"]
    server = start_server(server_args, tmp_path)
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "policy_trainer.cli",
            *ppo_task.cli_args(server.url, run_dir, steps=10, checkpoint_every=0),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        text=True,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while len(read_metrics(run_dir)) < 2 and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.process.kill()  # no goodbye: connections reset, requests in flight lost
    server.process.wait()
    first_log = server.log()  # the restarted server writes its own log in the same place
    time.sleep(2)
    restarted = start_server(server_args, tmp_path, port=server.port)
    try:
        _, stderr = process.communicate(timeout=180)
    finally:
        restarted.stop()

    assert process.returncode == 0, stderr[-3000:]
    assert "retry" in stderr  # the outage was met, and ridden out by retrying
    assert [entry["step"] for entry in read_metrics(run_dir)] == list(range(1, 11))
    assert first_log.count(SCORED) + restarted.log().count(SCORED) == 10
    assert first_log.count(SCORED) < 10  # the kill came before the run was over
