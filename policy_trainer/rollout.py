"""Rollouts: generate responses, decode them, and score them remotely in the background.

Reusable pieces (PPO uses them all; `policy-trainer evaluate` too):
- `generate_responses(model, tokenizer, prompts, ...)`: left-padded batch, KV cache, sampling
  from the whole softmax at a temperature, stopping at EOS; token ids, a response mask and
  decoded completions.
- `RemoteReward` / `BackgroundScorer`: scores through the reward-service client, in a thread,
  so the trainer's next computation overlaps the service's scoring.
The log-probs of the responses under a model are `forward.response_logprobs`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from reward_service.client import RewardClient, RewardClientError

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

# (prompts, completions) -> one score each, in order.
ScoreFunction = Callable[[list[str], list[str]], list[float]]


@dataclass
class Generation:
    """A batch of prompts and sampled responses. Prompts are left-padded (`prompt_mask` 0 on
    padding); responses are cut after their first EOS, the rest padded (`response_mask` 0 there,
    1 on every real token including the EOS)."""

    prompt_ids: torch.Tensor  # (batch, prompt_length)
    prompt_mask: torch.Tensor  # (batch, prompt_length), long
    response_ids: torch.Tensor  # (batch, response_length)
    response_mask: torch.Tensor  # (batch, response_length), float
    completions: list[str]  # the decoded responses, as they continue the decoded prompts
    ended_with_eos: torch.Tensor  # (batch,) bool: False where max_new_tokens cut it off

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask.long()], dim=1)

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)

    def rows(self, index: torch.Tensor | slice) -> Generation:
        """The same batch restricted to some rows (completions follow)."""
        rows = range(len(self.completions))[index] if isinstance(index, slice) else index.tolist()
        return Generation(
            self.prompt_ids[index],
            self.prompt_mask[index],
            self.response_ids[index],
            self.response_mask[index],
            [self.completions[row] for row in rows],
            self.ended_with_eos[index],
        )


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids, attention mask), padded on the left so every prompt ends where
    generation starts."""
    longest = max(len(sequence) for sequence in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, longest - len(sequence) :] = torch.tensor(list(sequence), dtype=torch.long)
            mask[row, longest - len(sequence) :] = 1
    return ids, mask


def truncate_after_eos(
    response_ids: torch.Tensor, eos_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids with everything after the first EOS replaced by padding, mask of the tokens up to and
    including that EOS, whether each row has an EOS)."""
    is_eos = response_ids == eos_token_id
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    ids = response_ids.masked_fill(after_eos, pad_token_id)
    return ids, (~after_eos).float(), is_eos.any(dim=1)


def decode_completions(
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> list[str]:
    """Each response as text that continues its decoded prompt: the decoded prompt + response
    minus the decoded prompt, which keeps a leading space that decoding the response alone may
    drop. Special tokens (padding, EOS, chat markers) are left out."""
    prompts = [row.tolist() for row in prompt_ids]
    responses = [
        row[mask > 0].tolist() for row, mask in zip(response_ids, response_mask, strict=True)
    ]
    prompt_texts = tokenizer.batch_decode(prompts, skip_special_tokens=True)
    full_texts = tokenizer.batch_decode(
        [p + r for p, r in zip(prompts, responses, strict=True)], skip_special_tokens=True
    )
    completions = []
    for prompt_text, full_text, response in zip(prompt_texts, full_texts, responses, strict=True):
        if full_text.startswith(prompt_text):
            completions.append(full_text[len(prompt_text) :])
        else:  # a tokenizer whose decoding of the whole is not prefix-stable
            completions.append(tokenizer.decode(response, skip_special_tokens=True))
    return completions


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    do_sample: bool = True,
) -> Generation:
    """Sample one response per prompt (token id lists, e.g. from `prompts.encode_prompts`):
    left-padded batch, KV cache, stop at the tokenizer's EOS or after `max_new_tokens`.

    With `top_k` 0 and `top_p` 1.0 each token is drawn from exactly softmax(logits / temperature),
    the distribution whose log-probs `forward.response_logprobs` computes (N-impl: no top-k, no
    nucleus); `top_k` > 0 or `top_p` < 1 truncate it. Nothing else shapes it, whatever the model
    folder's generation_config.json asks for. `do_sample=False` is greedy over the same logits."""
    device = next(model.parameters()).device
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    generation_config = _generation_config(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
    )
    # No position ids: generate() derives them from the attention mask, for the prompt and for
    # every token it adds, as `forward.position_ids_from_attention_mask` does for the scoring
    # passes.
    with _without_folder_generation_defaults(model):
        output = model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=generation_config
        )
    response_ids, response_mask, ended = truncate_after_eos(
        output[:, prompt_ids.shape[1] :], tokenizer.eos_token_id, pad_id
    )
    completions = decode_completions(tokenizer, prompt_ids, response_ids, response_mask)
    return Generation(prompt_ids, prompt_mask, response_ids, response_mask, completions, ended)


def _generation_config(
    *,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_token_id: int,
    pad_token_id: int,
) -> GenerationConfig:
    """Every setting of transformers' GenerationConfig that changes the scores tokens are drawn
    from, stated: the temperature, and each other logits processor off. generate() fills a
    setting left at None from the model's own generation_config, then from the library's
    defaults (top_k 50): a value left out here would be inherited."""
    from transformers import GenerationConfig

    sampling = (
        dict(
            temperature=temperature,
            top_k=top_k,  # 0: no top-k
            top_p=top_p,  # 1.0: no nucleus
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
        )
        if do_sample
        else {}
    )
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,  # min_length, the same counted with the prompt, defaults to 0
        do_sample=do_sample,
        num_beams=1,
        num_return_sequences=1,
        **sampling,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0,
        guidance_scale=1.0,
        renormalize_logits=False,
        remove_invalid_values=False,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
    )


@contextlib.contextmanager
def _without_folder_generation_defaults(model: PreTrainedModel) -> Iterator[None]:
    """The model's own generation_config (its folder's generation_config.json) set aside for the
    call. The settings whose only neutral value is None (min_p, forced BOS/EOS, suppressed and
    bad words, sequence bias, stop strings, watermarking...) would otherwise come from it.
    Under a peft wrapper, generate() reads the base model's."""
    from transformers import GenerationConfig

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        yield
    finally:
        base.generation_config = own


# --- scoring -------------------------------------------------------------------------------------


class RemoteReward:
    """Scores (prompt, completion) pairs on a reward service through its client: a callable
    `ScoreFunction`. Retries ride out a restarting service; a call that can't finish within
    `max_wait_s` raises the client's DeadlineExceeded (or Unavailable once retries run out).

    `inputs="pairs"` sends prompts and completions, and the served model's reward mapping decides
    how they are joined; `inputs="text"` sends prompt + completion as one text."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        model: str | None = None,
        inputs: Literal["pairs", "text"] = "pairs",
        timeout_s: float = 60.0,
        max_wait_s: float = 600.0,
        api_key: str | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        """`ca_file`: PEM CA certificates that verify an https:// or grpcs:// service."""
        self.urls = [url] if isinstance(url, str) else list(url)
        self.inputs = inputs
        self.model = model
        self.api_key = api_key
        self.ca_file = ca_file
        # Retries are bounded by the deadline, not by a count: a restart takes what it takes.
        self.client = RewardClient(
            self.urls,
            model=model,
            timeout_s=timeout_s,
            deadline_s=max_wait_s,
            retry_budget_s=None,
            api_key=api_key,
            ca_file=ca_file,
        )

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        if self.inputs == "text":
            return self.client.score(
                texts=[p + c for p, c in zip(prompts, completions, strict=True)]
            )
        return self.client.score(prompts=prompts, completions=completions)

    def describe(self) -> dict[str, Any] | None:
        """The served model's entry in the service's model list (name, labels, reward mapping...),
        for the run's record; None where the service doesn't say (it is down, or has no such
        model)."""
        # One quick attempt of its own, not the scoring client's patient retries: a service that
        # is down at the start leaves the record blank, and the run's scoring rides out the outage.
        try:
            with RewardClient(
                self.urls, timeout_s=10, max_retries=0, api_key=self.api_key, ca_file=self.ca_file
            ) as client:
                models = client.list_models()
        except RewardClientError:
            return None
        return next(
            (entry for entry in models if self.model is None or entry.get("name") == self.model),
            None,
        )

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class ScoringTimes:
    """Where one background scoring call's time went, for the step's metrics."""

    score_s: float  # the scoring call, start to end
    wait_s: float  # how long the trainer blocked waiting for it
    overlap_s: float  # how much of the call ran while the trainer computed something else


class ScoringJob:
    """A scoring call running in the background; `result()` waits for it."""

    def __init__(self, future: Future, started: dict[str, float]) -> None:
        self._future = future
        self._times = started

    def result(self) -> tuple[list[float], ScoringTimes]:
        """The scores and their timing; raises what the score function raised."""
        wait_started = time.perf_counter()
        scores = self._future.result()
        wait_s = time.perf_counter() - wait_started
        start, end = self._times["start"], self._times["end"]
        overlap_s = max(0.0, min(end, wait_started) - start)
        return scores, ScoringTimes(end - start, wait_s, overlap_s)


class BackgroundScorer:
    """Runs a ScoreFunction on its own thread: submit a batch, compute what doesn't need the
    scores (reference log-probs, values), then collect them. The client's HTTP waits release the
    GIL, so the two really overlap."""

    def __init__(self, score: ScoreFunction) -> None:
        self.score = score
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ppo-scoring")

    def submit(self, prompts: list[str], completions: list[str]) -> ScoringJob:
        times: dict[str, float] = {}

        def run() -> list[float]:
            times["start"] = time.perf_counter()
            try:
                return [float(score) for score in self.score(prompts, completions)]
            finally:
                times["end"] = time.perf_counter()

        return ScoringJob(self._executor.submit(run), times)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
