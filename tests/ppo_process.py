"""One process of a multi-process PPO run, for the tests that launch it with
`accelerate launch --num_processes 2 tests/ppo_process.py ...` (`launch_ppo_processes`), or as
two machines on loopback, one `accelerate launch --num_machines 2 --machine_rank R ...` each
(`launch_ppo_machines`): a short run of the word-level policy, scored in-process by
`says_the_target_word` (no reward service), after which every process writes what it holds to
OUT/rank-K.pt (its trainable parameters and its KL coefficient), so that a test can compare the
processes with each other and with another run. `--settings` holds PPOConfig fields as JSON,
over the task's. A run that stops (`--fail-at-step`) writes the checkpoint it saved to
OUT/rank-K.stopped instead.

    ppo_process.py POLICY RUN_DIR OUT [--settings JSON] [--fail-at-step N] [--resume]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
from helpers import PPO_PROMPTS, PPO_TARGET_WORD, PPO_TASK_SETTINGS, REPO_ROOT, free_port

# Long enough for a few steps on a busy 2-core machine; only ever a bound for a failure.
LAUNCH_TIMEOUT_S = 300.0


def says_the_target_word(prompts: list[str], completions: list[str]) -> list[float]:
    """The task's reward without a server: 1 for a completion that says the word, else 0."""
    return [float(PPO_TARGET_WORD in completion.split()) for completion in completions]


def launch_ppo_processes(
    policy: Path,
    run_dir: Path,
    out: Path,
    settings: dict,
    *options: str,
    processes: int = 2,
) -> subprocess.CompletedProcess:
    """Runs this file in `processes` processes under `accelerate launch` (gloo on CPU)."""
    launch = ["--num_processes", str(processes), "--main_process_port", str(free_port())]
    return subprocess.run(
        _accelerate_command(launch, policy, run_dir, out, settings, options),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
        cwd=REPO_ROOT,
        env=_launch_environment(),
    )


def launch_ppo_machines(
    policy: Path,
    run_dir: Path,
    out: Path,
    settings: dict,
    *options: str,
    machines: int = 2,
) -> list[subprocess.CompletedProcess]:
    """Runs this file as `machines` machines of one process each, on loopback: one `accelerate
    launch --num_machines N --machine_rank R` per machine, as each machine of a real cluster
    would run it, meeting through the c10d rendezvous at machine 0's address. The machines share
    `run_dir`, as machines share their output folder (see docs/ppo.md). Returns each machine's
    result, in rank order. A machine that fails gets the others killed (they would wait for it
    in a collective until gloo's timeout), and any that outlive `LAUNCH_TIMEOUT_S` are killed
    too, with every process they started."""
    port = free_port()
    results: list[subprocess.CompletedProcess] = []
    with ExitStack() as stack:
        started = []
        for machine_rank in range(machines):
            launch = [
                "--num_machines", str(machines), "--machine_rank", str(machine_rank),
                "--num_processes", str(machines),  # the total over all machines: one each
                "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                # c10d: the machines meet at a TCP store that machine 0's launcher hosts; under
                # the "static" rendezvous a probe found the launchers hung at exit. 127.0.0.1 is
                # every machine's own address here, so each would try to host the store: say
                # which one does (machine 1 first on the port would fail machine 0's launcher,
                # which checks that the port is free).
                "--rdzv_backend", "c10d", "--rdzv_conf", f"is_host={int(machine_rank == 0)}",
            ]  # fmt: skip
            command = _accelerate_command(launch, policy, run_dir, out, settings, options)
            logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in ("out", "err")]
            # GLOO_SOCKET_IFNAME: without it gloo binds to the address the host's name resolves
            # to (loopback if that is none of the host's own). Machines on one host reach each
            # other on any of its addresses, so the test passes here without it (this host's
            # name is 127.0.0.1, and eth0 works too); naming lo keeps it off the network and
            # independent of /etc/hosts. A session of its own: killing its group reaches the
            # launcher's workers too.
            process = subprocess.Popen(
                command, stdout=logs[0], stderr=logs[1], text=True, cwd=REPO_ROOT,
                env=_launch_environment(GLOO_SOCKET_IFNAME="lo"), start_new_session=True,
            )  # fmt: skip
            stack.callback(_kill_group, process)
            started.append((command, process, logs))
        _wait_for_all([process for _, process, _ in started], LAUNCH_TIMEOUT_S)
        for command, process, (stdout, stderr) in started:
            stdout.seek(0)
            stderr.seek(0)
            results.append(
                subprocess.CompletedProcess(
                    command, process.returncode, stdout.read(), stderr.read()
                )
            )
    return results


def _accelerate_command(
    launch: list[str],
    policy: Path,
    run_dir: Path,
    out: Path,
    settings: dict,
    options: Sequence[str],
) -> list[str]:
    """`accelerate launch` of this file with the `launch` options (processes, machines)."""
    return [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",  # torchrun's launcher; on a machine without CUDA its processes use gloo
        *launch,
        "--num_cpu_threads_per_process",
        "1",
        str(Path(__file__).resolve()),
        str(policy),
        str(run_dir),
        str(out),
        "--settings",
        json.dumps(settings),
        *options,
    ]


def _launch_environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _wait_for_all(processes: list[subprocess.Popen], timeout_s: float) -> None:
    """Waits until every process has exited, or one has failed, or `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        codes = [process.poll() for process in processes]
        if all(code is not None for code in codes) or any(code for code in codes):
            break
        time.sleep(0.1)
    for process in processes:
        _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    """Kills a launcher still running and every process it started (its session's group); one
    that has exited has already ended its workers, and its group's id may no longer be ours."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main() -> int:
    from policy_trainer.checkpoint import trainable_state
    from policy_trainer.config import PPOConfig
    from policy_trainer.prompts import PromptRecord
    from policy_trainer.trainer import PPOTrainer, TrainingStopped
    from reward_service.client import Unavailable

    parser = argparse.ArgumentParser()
    parser.add_argument("policy", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--settings", type=json.loads, default={})
    parser.add_argument("--fail-at-step", type=int, help="process 0's scoring fails at this step")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    config = PPOConfig(**{**PPO_TASK_SETTINGS, "samples_per_log": 0, **args.settings})

    rank = int(os.environ.get("RANK", "0"))
    calls = 0

    def score(prompts: list[str], completions: list[str]) -> list[float]:
        nonlocal calls
        calls += 1
        if rank == 0 and calls == args.fail_at_step:
            raise Unavailable("the test's reward is down for this step")
        return says_the_target_word(prompts, completions)

    trainer = PPOTrainer(
        config,
        policy_source=args.policy,
        prompts=[PromptRecord(text=prompt) for prompt in PPO_PROMPTS],
        score=score,
        run_dir=args.run_dir,
        resume=args.resume,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        trainer.train()
    except TrainingStopped as stop:
        (args.out / f"rank-{trainer.rank}.stopped").write_text(str(stop.checkpoint))
        return 0
    state = {
        "parameters": trainable_state(trainer.accelerator.unwrap_model(trainer.module)),
        "beta": trainer.kl_controller.beta,
        "step": trainer.step,
    }
    torch.save(state, args.out / f"rank-{trainer.rank}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
