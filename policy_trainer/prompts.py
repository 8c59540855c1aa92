"""Prompt files, what the policy and the reward model each see of a prompt, and the prompt stream.

A prompt file is JSONL, one object a line, either `{"prompt": "text"}`, `{"prompt": [messages]}`
or `{"messages": [{"role": ..., "content": ...}, ...]}`; a Parquet file or JSON array of such rows
(TRL's prompt-only datasets); or plain text, one prompt a line.
Chat prompts are rendered for the policy with its tokenizer's chat template (generation prompt
added), and for the reward model as "role: content" lines ending in "assistant: " (the same
convention as the reward client's TRL adapter), since the reward model has its own tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reward_service.client import messages_to_text
from reward_service.data_files import hub_dataset, read_rows

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Messages = list[dict[str, Any]]


class PromptFileError(ValueError):
    """A prompt file that can't be read; the message names the file and line."""


@dataclass(frozen=True)
class PromptRecord:
    """One prompt as written in the file: plain text, or a conversation to answer."""

    text: str | None = None
    messages: Messages | None = None


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt ready for a rollout: the policy's token ids (unpadded) and the prompt text the
    reward model is sent."""

    input_ids: list[int]
    reward_prompt: str


def read_prompts(path: Path) -> list[PromptRecord]:
    """The prompts of a JSONL file (`.jsonl`, or any file whose first line is a JSON object), a
    Parquet file or JSON array (`.parquet`, `.json`, read with `datasets`), or a plain-text file
    (one prompt a non-empty line); or a Hugging Face Hub dataset id where a network exists."""
    if hub_dataset(path) is None and path.suffix.lower() not in (".jsonl", ".json", ".parquet"):
        lines = path.read_text(encoding="utf-8").splitlines()
        first = next((line.strip() for line in lines if line.strip()), "")
        if not first.startswith("{"):
            return [PromptRecord(text=line) for line in lines if line.strip()]
    records = [_record(item, where) for where, item in read_rows(path, PromptFileError)]
    if not records:
        raise PromptFileError(f"{path}: no prompts")
    return records


def _record(item: Any, where: str) -> PromptRecord:
    if not isinstance(item, dict):
        raise PromptFileError(f"{where}: expected an object with 'prompt' or 'messages'")
    prompt = item.get("prompt", item.get("messages"))
    if isinstance(prompt, str):
        return PromptRecord(text=prompt)
    if isinstance(prompt, list) and all(
        isinstance(message, dict) and "role" in message and "content" in message
        for message in prompt
    ):
        return PromptRecord(messages=prompt)
    raise PromptFileError(
        f"{where}: 'prompt' must be a string or a list of {{'role', 'content'}} messages "
        "(or give 'messages')"
    )


def encode_prompts(
    records: Sequence[PromptRecord],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_prompt_tokens: int | None = None,
) -> list[EncodedPrompt]:
    """Tokenize prompts for the policy: text as it is (with the tokenizer's special tokens),
    conversations through the chat template. A prompt longer than `max_prompt_tokens` keeps its
    last tokens, the ones the response follows."""
    encoded = []
    for record in records:
        if record.messages is not None:
            if not getattr(tokenizer, "chat_template", None):
                raise PromptFileError(
                    "chat prompts need a policy tokenizer with a chat template; this one has "
                    "none: give plain-text prompts instead"
                )
            text = tokenizer.apply_chat_template(
                record.messages, add_generation_prompt=True, tokenize=False
            )
            input_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            reward_prompt = messages_to_text(record.messages)
        else:
            input_ids = tokenizer(record.text)["input_ids"]
            reward_prompt = record.text or ""
        if max_prompt_tokens is not None:
            input_ids = input_ids[-max_prompt_tokens:]
        if not input_ids:
            raise PromptFileError(f"an empty prompt gives the policy nothing to follow: {record}")
        encoded.append(EncodedPrompt(list(input_ids), reward_prompt))
    return encoded


class PromptStream:
    """An endless, reproducible order over `count` prompts: each pass over them is a fresh
    shuffle seeded by (seed, pass). Its `position` (prompts handed out so far) is all a
    checkpoint needs to continue it exactly."""

    def __init__(self, count: int, seed: int, position: int = 0) -> None:
        if count < 1:
            raise ValueError("a prompt stream needs at least one prompt")
        self.count = count
        self.seed = seed
        self.position = position
        self._order_pass = -1
        self._order: list[int] = []

    def take(self, n: int) -> list[int]:
        """The next `n` prompt indices."""
        indices = []
        for _ in range(n):
            order_pass, offset = divmod(self.position, self.count)
            indices.append(self._pass_order(order_pass)[offset])
            self.position += 1
        return indices

    def _pass_order(self, order_pass: int) -> list[int]:
        import torch

        if order_pass != self._order_pass:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + order_pass)
            self._order = torch.randperm(self.count, generator=generator).tolist()
            self._order_pass = order_pass
        return self._order
