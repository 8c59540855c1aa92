"""Reading completions to rank: a `policy-trainer sample` file, or a PPO run's samples.jsonl.

Two formats, told apart by the first line:

- **sample file** (``policy-trainer sample --out``): one line per prompt,
  ``{"prompt", "completions": [K], "source": {...}, "model_scores": [K] (optional)}``; a line
  may add ``"gold": {criterion: ranks}`` to make the item a gold item, whose known ranking
  measures each rater: ranks in the completions' order, 1 = best, ties shared (``{"overall":
  [2, 1, 3]}``), for some or all of the campaign's criteria (checked against the campaign, like
  a rater's ranking, when the campaign is created);
- **PPO samples** (``RUN/samples.jsonl``, written every ``--sample-every`` steps): one line per
  completion, ``{"step", "prompt", "completion", "score"}``. Lines are grouped by prompt (the
  exact text), in order of each prompt's first line, each group's completions in file order
  (so oldest step first); ``model_scores`` are PPO's scores, from the reward model PPO trained
  against at the time, and ``source`` is ``{"policy", "steps", "temperature",
  "max_new_tokens"}`` from the run's ``run.json`` beside the file where it is there (the
  policy the run started from, the step each completion was sampled at, PPO's sampling
  settings), else ``{"steps"}`` alone.

How many completions a prompt keeps (K): with ``k`` given, a prompt needs at least ``k``
completions and keeps its first ``k`` (a PPO prompt with fewer is left out, a sample-file line
with fewer is an error); with ``k`` None, a sample-file line keeps all its completions, and a
PPO prompt with at least 2 keeps all of its own (K may then differ between prompts), a prompt
seen once being left out. A line that can't be read is a :class:`DataError` naming
``file:line``. No torch here: the ranking app reads these files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reward_service.errors import DataError
from reward_service.training.data import finite_number, json_lines, text_field

# What a PPO run folder holds beside samples.jsonl (policy_trainer.run_log).
RUN_INFO_FILENAME = "run.json"
MIN_COMPLETIONS = 2  # a ranking needs two


@dataclass
class SampledPrompt:
    """A prompt and its completions to rank, where they came from, and the reward model's
    score of each (None where none was stored), and a gold item's known ranks. Source, scores
    and gold are never shown to raters."""

    prompt: str
    completions: list[str]
    source: dict[str, Any]
    model_scores: list[float] | None = None
    gold: dict[str, list[int]] | None = None  # criterion -> ranks; only in a sample file
    where: str = field(default="", compare=False)  # "file:line", for error messages


def read_samples(path: Path | str, *, k: int | None = None) -> list[SampledPrompt]:
    """The prompts of a sample file or of a PPO samples.jsonl (see the module for both, and for
    how K is chosen)."""
    path = Path(path)
    if k is not None and k < MIN_COMPLETIONS:
        raise ValueError(f"k must be at least {MIN_COMPLETIONS}, got {k}")
    lines = list(json_lines(path))
    if not lines:
        raise DataError(
            f"{path}: line 1: the file is empty; expected a sample file or samples.jsonl"
        )
    number, first = lines[0]
    if "completions" in first:
        return [_sampled_line(content, f"{path}:{n}", k) for n, content in lines]
    if "completion" in first:
        return _grouped_ppo_samples(path, lines, k)
    raise DataError(
        f"{path}:{number}: neither a sample file line ('prompt', 'completions') nor a PPO "
        f"samples.jsonl line ('step', 'prompt', 'completion', 'score'); found {sorted(first)}"
    )


def _sampled_line(content: dict[str, Any], where: str, k: int | None) -> SampledPrompt:
    prompt = text_field(content, "prompt", where)
    completions = content.get("completions")
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise DataError(f"{where}: 'completions' must be a list of strings")
    needed = k or MIN_COMPLETIONS
    if len(completions) < needed:
        raise DataError(f"{where}: {len(completions)} completions; at least {needed} are needed")
    source = content.get("source", {})
    if not isinstance(source, dict):
        raise DataError(f"{where}: 'source' must be an object")
    scores = content.get("model_scores")
    if scores is not None:
        if not isinstance(scores, list) or len(scores) != len(completions):
            raise DataError(
                f"{where}: 'model_scores' must be a list of one number per completion "
                f"({len(completions)})"
            )
        scores = [finite_number(score, "model_scores", where) for score in scores]
    gold = content.get("gold")
    if gold is not None and not isinstance(gold, dict):
        raise DataError(
            f"{where}: 'gold' must be an object of criterion -> ranks, e.g. "
            f'{{"overall": [2, 1, 3]}}, got {gold!r:.100}'
        )
    return SampledPrompt(
        prompt,
        completions[:k],
        source,
        None if scores is None else scores[:k],
        gold,
        where,
    )


def _grouped_ppo_samples(
    path: Path, lines: list[tuple[int, dict[str, Any]]], k: int | None
) -> list[SampledPrompt]:
    groups: dict[str, list[tuple[str, float | None, Any]]] = {}
    first_lines: dict[str, str] = {}  # each prompt's first line, for error messages
    for number, content in lines:
        where = f"{path}:{number}"
        if "completion" not in content:
            raise DataError(f"{where}: missing field 'completion' (a PPO samples.jsonl line)")
        completion = text_field(content, "completion", where)
        score = content.get("score")
        score = None if score is None else finite_number(score, "score", where)
        step = content.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise DataError(f"{where}: 'step' must be an integer, got {step!r}")
        prompt = text_field(content, "prompt", where)
        groups.setdefault(prompt, []).append((completion, score, step))
        first_lines.setdefault(prompt, where)
    run = _run_source(path)
    needed = k or MIN_COMPLETIONS
    prompts = []
    for prompt, rows in groups.items():
        if len(rows) < needed:
            continue
        kept = rows[:k]
        scores = [score for _, score, _ in kept]
        prompts.append(
            SampledPrompt(
                prompt,
                [completion for completion, _, _ in kept],
                {**run, "steps": [step for _, _, step in kept]},
                None if None in scores else scores,  # type: ignore[arg-type]
                where=first_lines[prompt],
            )
        )
    return prompts


def _run_source(samples_path: Path) -> dict[str, Any]:
    """What the run's run.json says of the policy and its sampling; {} without one."""
    info_path = samples_path.parent / RUN_INFO_FILENAME
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    config = info.get("config") if isinstance(info, dict) else None
    if not isinstance(config, dict):
        return {}
    return {
        "policy": info.get("policy"),
        "temperature": config.get("temperature"),
        "max_new_tokens": config.get("max_new_tokens"),
    }
