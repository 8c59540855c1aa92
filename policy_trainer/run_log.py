"""What a PPO run writes to its folder besides checkpoints, and reading it back.

- `run.json`: the settings, the policy, the prompts file, the reward endpoint and its model.
- `metrics.jsonl`: one JSON object per step (scores, KL, losses, clip fractions, timings...).
- `samples.jsonl`: sample completions with their scores, every `sample_every` steps.
- `metrics.png`: mean score (with its spread) and KL against step, redrawn as the run goes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUN_INFO_FILENAME = "run.json"
METRICS_FILENAME = "metrics.jsonl"
SAMPLES_FILENAME = "samples.jsonl"
PLOT_FILENAME = "metrics.png"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's per-step metrics, in order."""
    return read_jsonl(run_dir / METRICS_FILENAME)


def read_run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_INFO_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {RUN_INFO_FILENAME}: not a PPO run folder")
    return json.loads(path.read_text())


class RunLog:
    """Appends a run's metrics and samples and redraws its plot. Only one process of a
    multi-process run writes (`enabled`); the others' calls do nothing."""

    def __init__(self, run_dir: Path, *, enabled: bool = True) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)

    def write_run_info(self, info: dict[str, Any]) -> None:
        if self.enabled:
            (self.run_dir / RUN_INFO_FILENAME).write_text(json.dumps(info, indent=2) + "\n")

    def log_step(self, metrics: dict[str, Any]) -> None:
        self._append(METRICS_FILENAME, metrics)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        for sample in samples:
            self._append(SAMPLES_FILENAME, {"step": step, **sample})

    def truncate_after(self, step: int) -> None:
        """Drop what was logged after `step`: a run resumed from checkpoint `step` logs those
        steps again, and each step must appear once."""
        if not self.enabled:
            return
        for name in (METRICS_FILENAME, SAMPLES_FILENAME):
            path = self.run_dir / name
            kept = [entry for entry in read_jsonl(path) if entry["step"] <= step]
            if path.is_file():
                path.write_text("".join(json.dumps(entry) + "\n" for entry in kept))

    def plot(self) -> Path | None:
        """Mean score (shaded: one std) and KL against step, as a PNG."""
        if not self.enabled:
            return None
        from matplotlib.figure import Figure  # no pyplot: no global figure state, no display

        metrics = read_metrics(self.run_dir)
        steps = [entry["step"] for entry in metrics]
        means = [entry["score_mean"] for entry in metrics]
        stds = [entry["score_std"] for entry in metrics]
        figure = Figure(figsize=(8, 6), layout="constrained")
        score_axes, kl_axes = figure.subplots(2, 1, sharex=True)
        score_axes.plot(steps, means, color="tab:blue", label="mean score")
        score_axes.fill_between(
            steps,
            [m - s for m, s in zip(means, stds, strict=True)],
            [m + s for m, s in zip(means, stds, strict=True)],
            color="tab:blue",
            alpha=0.2,
            label="± 1 std",
        )
        score_axes.set_ylabel("score")
        score_axes.legend(loc="best")
        kl_axes.plot(steps, [entry["kl"] for entry in metrics], color="tab:red")
        kl_axes.set_ylabel("KL to reference (nats)")
        kl_axes.set_xlabel("PPO step")
        figure.suptitle(f"PPO: {self.run_dir.name}")
        path = self.run_dir / PLOT_FILENAME
        figure.savefig(path, dpi=100)
        return path

    def _append(self, name: str, entry: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.run_dir / name, "a") as file:
                file.write(json.dumps(entry) + "\n")
