"""K completions per prompt, for people to rank (`policy-trainer sample`).

Sampled exactly as PPO's rollout samples (`rollout.generate_responses`: the whole
softmax(logits / temperature), PPO's temperature and response length by default, none of the
policy folder's own sampling settings), from prompts read and encoded as PPO reads them
(`prompts.read_prompts`, `prompts.encode_prompts`). Each prompt's K completions sit side by side
in one generation batch. Optionally each completion is scored on a reward service through the
same client PPO scores with (`rollout.RemoteReward`), a batch's scoring running while the next
batch generates; the scores are stored for choosing which items people see first, never shown
to them.

The output is JSON Lines, one line per prompt, in the prompts file's order:

    {"prompt": "...", "completions": ["...", ...K],
     "source": {"policy": "/abs/folder", "step": 50 | null, "temperature": 0.7,
                "max_new_tokens": 53, "max_prompt_tokens": null, "seed": 0, "k": 4,
                "batch_size": 8},
     "model_scores": [K floats]}                     (only where a reward service scored them)

``prompt`` is the text the reward model is sent (a chat prompt as "role: content" lines), as in
PPO's samples.jsonl. ``step`` is the PPO step a policy folder was saved at: a PPO run's final
``policy/`` folder gets its run's last checkpoint step, a Hugging Face Trainer checkpoint its
``trainer_state.json`` global step; any other folder null. The same seed, settings and policy
give the same completions (the scores can differ in their last bits: a reward depends slightly
on what shares its batch on the server). `reward_service.feedback.samples` reads the file back.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from policy_trainer import checkpoint as checkpoints
from policy_trainer.config import SampleOptions
from policy_trainer.models import load_policy, resolve_policy_source
from policy_trainer.prompts import EncodedPrompt, encode_prompts, read_prompts
from policy_trainer.rollout import BackgroundScorer, ScoreFunction, ScoringJob, generate_responses
from policy_trainer.run_log import RUN_INFO_FILENAME

# A Hugging Face Trainer checkpoint folder's record of its step (SFT's checkpoints, say).
HF_TRAINER_STATE_FILENAME = "trainer_state.json"


def sample_prompts(
    policy_source: str | Path,
    prompts_file: Path,
    options: SampleOptions,
    *,
    score: ScoreFunction | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One line of the output (see the module) per prompt of `prompts_file`."""
    from tqdm.auto import tqdm

    folder = resolve_policy_source(policy_source)
    model, tokenizer = load_policy(folder)
    encoded = encode_prompts(
        read_prompts(Path(prompts_file)), tokenizer, max_prompt_tokens=options.max_prompt_tokens
    )
    source = {
        "policy": str(Path(folder).resolve()) if Path(folder).is_dir() else folder,
        "step": policy_step(Path(folder)),
        "temperature": options.temperature,
        "max_new_tokens": options.max_new_tokens,
        "max_prompt_tokens": options.max_prompt_tokens,
        "seed": options.seed,
        "k": options.k,
        "batch_size": options.batch_size,
    }
    torch.manual_seed(options.seed)
    lines: list[dict[str, Any]] = []
    scorer = BackgroundScorer(score) if score is not None else None
    pending: tuple[list[dict[str, Any]], ScoringJob] | None = None
    bar = tqdm(total=len(encoded), desc="sample", unit="prompt", disable=not progress)
    try:
        for batch in _batches(encoded, options.batch_size):
            rows = [prompt.input_ids for prompt in batch for _ in range(options.k)]
            generation = generate_responses(
                model,
                tokenizer,
                rows,
                max_new_tokens=options.max_new_tokens,
                temperature=options.temperature,
            )
            batch_lines = [
                {
                    "prompt": prompt.reward_prompt,
                    "completions": generation.completions[
                        index * options.k : (index + 1) * options.k
                    ],
                    "source": dict(source),
                }
                for index, prompt in enumerate(batch)
            ]
            if pending is not None:  # the previous batch, scored while this one generated
                _add_scores(*pending, options.k)
            if scorer is not None:
                job = scorer.submit(
                    [line["prompt"] for line in batch_lines for _ in range(options.k)],
                    [completion for line in batch_lines for completion in line["completions"]],
                )
                pending = (batch_lines, job)
            lines += batch_lines
            bar.update(len(batch))
        if pending is not None:
            _add_scores(*pending, options.k)
    finally:
        bar.close()
        if scorer is not None:
            scorer.close()
    return lines


def write_sample_file(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    """The lines as JSON Lines, written beside `path` and renamed onto it: an interrupted run
    leaves no half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            for line in lines:
                file.write(json.dumps(line, ensure_ascii=False) + "\n")
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def policy_step(folder: Path) -> int | None:
    """The training step a policy folder was saved at, where the folder says: a PPO run's final
    policy (``RUN/policy``, beside ``RUN/run.json``) was saved after its last checkpoint, a
    Hugging Face Trainer checkpoint records its global step; otherwise None."""
    trainer_state = folder / HF_TRAINER_STATE_FILENAME
    if trainer_state.is_file():
        step = json.loads(trainer_state.read_text()).get("global_step")
        return step if isinstance(step, int) else None
    run_dir = folder.parent
    if (run_dir / RUN_INFO_FILENAME).is_file():
        latest = checkpoints.latest_checkpoint(run_dir)
        if latest is not None:
            return int(latest.name.removeprefix("step-"))
    return None


def _batches(items: Sequence[EncodedPrompt], size: int) -> Iterator[Sequence[EncodedPrompt]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _add_scores(lines: list[dict[str, Any]], job: ScoringJob, k: int) -> None:
    scores, _ = job.result()
    for index, line in enumerate(lines):
        line["model_scores"] = scores[index * k : (index + 1) * k]
