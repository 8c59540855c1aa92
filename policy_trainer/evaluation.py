"""Evaluating a policy on held-out prompts: reward, KL to a reference policy, response length.

For before/after tables: sample responses from the policy exactly as PPO samples them
(`rollout.generate_responses`: the whole softmax at the same temperature, no top-k/top-p, none of
the policy folder's own sampling settings), score them on the reward service, and, given a
reference policy, measure how far the policy has moved from it on its own samples:
KL(policy || reference) per sequence, the sum over a response's tokens of
``log p(token) - log p_ref(token)`` (the k1 estimator PPO penalises, ``ppo_math.kl_per_token``),
with both models' logits divided by the temperature, as in PPO. Its mean over responses estimates
the sequence-level KL; a single response's value can be negative.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from policy_trainer.config import EvaluationSettings
from policy_trainer.forward import response_logprobs
from policy_trainer.models import PolicyLoadError, load_policy
from policy_trainer.ppo_math import kl_per_token
from policy_trainer.prompts import encode_prompts, read_prompts
from policy_trainer.rollout import BackgroundScorer, ScoreFunction, generate_responses


@dataclass
class EvaluationResult:
    """The figures of one evaluation, and every sample they come from."""

    policy: str
    reference: str | None
    prompts_file: str
    prompts: int
    responses: int
    settings: EvaluationSettings
    score_mean: float
    score_std: float  # population std over responses
    kl_mean: float | None  # nats per sequence; None without a reference
    kl_std: float | None
    response_length_mean: float  # tokens, EOS included
    truncated_fraction: float  # responses cut at max_new_tokens without EOS
    seconds: float
    samples: list[dict[str, Any]] = field(default_factory=list)  # prompt, completion, score, kl

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "settings": self.settings.model_dump()}


def evaluate_policy(
    policy_source: str | Path,
    prompts_file: Path,
    score: ScoreFunction,
    *,
    reference_source: str | Path | None = None,
    settings: EvaluationSettings | None = None,
) -> EvaluationResult:
    """Sample, score and (with a reference) measure the KL of ``policy_source`` on the prompts."""
    settings = settings or EvaluationSettings()
    started = time.monotonic()
    model, tokenizer = load_policy(policy_source)
    reference = None
    if reference_source is not None:
        reference, _ = load_policy(reference_source)
        if reference.config.vocab_size != model.config.vocab_size:
            raise PolicyLoadError(
                f"the reference {reference_source} has a vocabulary of "
                f"{reference.config.vocab_size} tokens and the policy {model.config.vocab_size}: "
                "KL needs the same tokenizer"
            )
    records = read_prompts(Path(prompts_file))[: settings.max_prompts]
    encoded = encode_prompts(records, tokenizer)
    # Each prompt's samples side by side, so a batch holds whole prompts.
    jobs = [prompt for prompt in encoded for _ in range(settings.samples_per_prompt)]
    batch_rows = settings.batch_size * settings.samples_per_prompt

    torch.manual_seed(settings.seed)
    completions: list[str] = []
    scores: list[float] = []
    lengths: list[float] = []
    truncated: list[bool] = []
    kls: list[float] = []
    scorer = BackgroundScorer(score)
    try:
        for start in range(0, len(jobs), batch_rows):
            batch = jobs[start : start + batch_rows]
            generation = generate_responses(
                model,
                tokenizer,
                [prompt.input_ids for prompt in batch],
                max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
            )
            # Scored while the KL's forward passes run.
            scoring = scorer.submit([job.reward_prompt for job in batch], generation.completions)
            if reference is not None:
                logprobs, _ = response_logprobs(model, generation, temperature=settings.temperature)
                ref_logprobs, _ = response_logprobs(
                    reference, generation, temperature=settings.temperature
                )
                kl = kl_per_token(logprobs, ref_logprobs, "k1") * generation.response_mask
                kls.extend(kl.sum(dim=1).tolist())
            completions.extend(generation.completions)
            lengths.extend(generation.response_lengths.tolist())
            truncated.extend((~generation.ended_with_eos).tolist())
            scores.extend(scoring.result()[0])
    finally:
        scorer.close()

    samples = [
        {
            "prompt": job.reward_prompt,
            "completion": completion,
            "score": value,
            "kl": kls[index] if kls else None,
        }
        for index, (job, completion, value) in enumerate(
            zip(jobs, completions, scores, strict=True)
        )
    ]
    return EvaluationResult(
        policy=str(policy_source),
        reference=None if reference_source is None else str(reference_source),
        prompts_file=str(prompts_file),
        prompts=len(encoded),
        responses=len(jobs),
        settings=settings,
        score_mean=statistics.fmean(scores),
        score_std=statistics.pstdev(scores),
        kl_mean=statistics.fmean(kls) if kls else None,
        kl_std=statistics.pstdev(kls) if kls else None,
        response_length_mean=statistics.fmean(lengths),
        truncated_fraction=sum(truncated) / len(truncated),
        seconds=time.monotonic() - started,
        samples=samples,
    )
