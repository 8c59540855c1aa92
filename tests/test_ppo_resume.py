"""Resuming PPO: a run cut short (killed after a checkpoint, or stopped by a reward outage past its
maximum wait) and resumed ends with exactly the parameters of a run that was never stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, build_word_level_lm, start_server
from ppo_process import launch_ppo_processes

from policy_trainer.checkpoint import STATE_FILENAME, checkpoint_path, load_state
from policy_trainer.run_log import read_metrics

STEPS = 10
SETTINGS = {"steps": STEPS, "checkpoint_every": 4, "keep_checkpoints": 5}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is fastest, and steady


def policy_trainer(args: list[str], **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "policy_trainer.cli", *args],
        cwd=REPO_ROOT,
        env=ENV,
        text=True,
        **options,
    )


def run_to_end(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "policy_trainer.cli", *args],
        cwd=REPO_ROOT,
        env=ENV,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def wait_for(condition, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def reward_server_args(ppo_task) -> list[str]:
    return ["--model", f"rm={ppo_task.classifier}", "--access-log"]


@pytest.fixture(scope="module")
def reward_server(server_factory, ppo_task):
    return server_factory(reward_server_args(ppo_task))


@pytest.fixture(scope="module")
def uninterrupted(ppo_task, reward_server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_to_end(ppo_task.cli_args(reward_server.url, run_dir, **SETTINGS))
    return run_dir


def assert_same_run(resumed: Path, uninterrupted: Path) -> None:
    """Every step logged once, with the same scores, and bit for bit the same final parameters
    (policy and value model), optimiser state and KL coefficient."""
    steps = [entry["step"] for entry in read_metrics(resumed)]
    assert steps == list(range(1, STEPS + 1))
    scores = [entry["score_mean"] for entry in read_metrics(resumed)]
    assert scores == [entry["score_mean"] for entry in read_metrics(uninterrupted)]
    ours, theirs = (load_state(checkpoint_path(run, STEPS)) for run in (resumed, uninterrupted))
    assert ours["model"].keys() == theirs["model"].keys()
    for name, tensor in ours["model"].items():
        torch.testing.assert_close(tensor, theirs["model"][name], atol=0, rtol=0, msg=name)
    torch.testing.assert_close(
        ours["optimizer"]["state"], theirs["optimizer"]["state"], atol=0, rtol=0
    )
    assert ours["kl_controller"] == theirs["kl_controller"]


def test_a_run_killed_after_a_checkpoint_and_resumed_ends_as_an_uninterrupted_run_does(
    ppo_task, reward_server, uninterrupted: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    process = policy_trainer(
        ppo_task.cli_args(reward_server.url, run_dir, **SETTINGS), stderr=subprocess.DEVNULL
    )
    wait_for(lambda: checkpoint_path(run_dir, 4).is_dir() or process.poll() is not None)
    process.kill()
    process.wait()
    assert process.returncode == -9, "the run ended before it could be cut short"
    assert not (run_dir / "policy").exists()

    run_to_end(["ppo", "--resume", str(run_dir)])
    assert_same_run(run_dir, uninterrupted)


def test_past_its_maximum_wait_for_rewards_a_run_saves_its_steps_says_how_to_resume_and_resumes(
    ppo_task, reward_server, uninterrupted: Path, tmp_path: Path
):
    server = start_server(reward_server_args(ppo_task), tmp_path)  # this one will go down
    run_dir = tmp_path / "run"
    args = ppo_task.cli_args(server.url, run_dir, reward_max_wait_s=2, **SETTINGS)
    process = policy_trainer(args, stderr=subprocess.PIPE)
    wait_for(lambda: len(read_metrics(run_dir)) >= 5 or process.poll() is not None)
    server.process.kill()  # and it stays down
    server.process.wait()
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 75, stderr[-3000:]
    assert "reward_max_wait_s = 2 s" in stderr
    assert f"policy-trainer ppo --resume {run_dir}" in stderr
    completed = len(read_metrics(run_dir))
    assert 5 <= completed < STEPS
    assert checkpoint_path(run_dir, completed).is_dir()

    # The same model served elsewhere: a resumed run may be pointed at a new endpoint.
    run_to_end(["ppo", "--resume", str(run_dir), "--reward-url", reward_server.url])
    assert_same_run(run_dir, uninterrupted)


def test_a_truncated_newest_checkpoint_is_skipped_and_the_resumed_run_ends_as_an_uninterrupted_one(
    ppo_task, reward_server, uninterrupted: Path, tmp_path: Path
):
    # A run killed just before it wrote its policy, whose last checkpoint's file was cut short
    # (a full disk, a copy interrupted): it must go on from step 8 and redo steps 9 and 10.
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    shutil.rmtree(run_dir / "policy")
    damaged = checkpoint_path(run_dir, STEPS) / STATE_FILENAME
    damaged.write_bytes(damaged.read_bytes()[:1000])

    result = run_to_end(["ppo", "--resume", str(run_dir)])
    assert f"skipping checkpoint {checkpoint_path(run_dir, STEPS)}" in result.stderr
    assert f"resumed from {checkpoint_path(run_dir, 8)} (step 8)" in result.stderr
    assert_same_run(run_dir, uninterrupted)


def test_resume_refuses_settings_other_than_the_reward_url(ppo_task, tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "policy_trainer.cli",
            "ppo",
            "--resume",
            str(tmp_path),
            "--learning-rate",
            "1e-3",
        ],
        cwd=REPO_ROOT,
        env=ENV,
        text=True,
        capture_output=True,
    )
    assert result.returncode == 2
    assert "drop --learning-rate" in result.stderr


# Every piece of state a resume restores moves in these runs: beta (adaptive), the running score
# statistics, the annealed learning rate, each process's random streams.
TWO_PROCESS_SETTINGS = {
    "steps": 6, "batch_size": 8, "num_mini_batches": 2, "checkpoint_every": 0,
    "kl_controller": "adaptive", "kl_horizon": 100, "score_scaling": "std",
    "lr_schedule": "linear",
}  # fmt: skip


def test_a_two_process_run_stopped_and_resumed_ends_as_an_uninterrupted_one_on_both_processes(
    tmp_path: Path,
):
    policy = build_word_level_lm(tmp_path / "policy")
    uninterrupted = launch_ppo_processes(
        policy, tmp_path / "uninterrupted", tmp_path / "uninterrupted-out", TWO_PROCESS_SETTINGS
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    # Process 0's scoring fails at step 4: both processes save steps 1-3 and stop.
    run_dir, out = tmp_path / "resumed", tmp_path / "resumed-out"
    stopped = launch_ppo_processes(
        policy, run_dir, out, TWO_PROCESS_SETTINGS, "--fail-at-step", "4"
    )
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    for rank in (0, 1):
        assert (out / f"rank-{rank}.stopped").read_text() == str(checkpoint_path(run_dir, 3))
    # Fresh processes, each resuming its own share from the checkpoint.
    resumed = launch_ppo_processes(policy, run_dir, out, TWO_PROCESS_SETTINGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    for rank in (0, 1):
        ours = torch.load(out / f"rank-{rank}.pt")
        theirs = torch.load(tmp_path / "uninterrupted-out" / f"rank-{rank}.pt")
        assert ours["step"] == theirs["step"] == 6
        assert ours["beta"] == theirs["beta"]
        for name, tensor in ours["parameters"].items():
            msg = f"process {rank}: {name}"
            torch.testing.assert_close(tensor, theirs["parameters"][name], atol=0, rtol=0, msg=msg)
    scores = [entry["score_mean"] for entry in read_metrics(run_dir)]
    assert scores == [entry["score_mean"] for entry in read_metrics(tmp_path / "uninterrupted")]
