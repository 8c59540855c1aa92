"""A reward function for TRL's GRPOTrainer and RLOOTrainer (`reward_funcs=[...]`), backed by the
client. It does not import TRL: TRL only needs a callable with a `__name__`.

Conversational data (lists of `{"role", "content"}` messages) becomes text like this, unless you
pass your own `format_prompt` (e.g. a tokenizer's `apply_chat_template`):

    prompt      [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
             -> "system: Be brief.\\nuser: Hi\\nassistant: "
    completion  [{"role": "assistant", "content": "Hello!"}]
             -> "Hello!"

The prompt ends with "assistant: " (the generation prompt), so a model whose template is
`{prompt}{completion}` sees one natural transcript. Each pair is then scored as a prompt and a
completion: the server's reward mapping (`input_format`) decides how the two are joined.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from reward_service.client.sync_client import RewardClient

Messages = list[dict[str, Any]]


def content_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a multimodal content list."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def messages_to_text(messages: Messages) -> str:
    """A conversation prompt as "role: content" lines, then "assistant: " to answer after."""
    lines = [f"{message['role']}: {content_text(message['content'])}" for message in messages]
    return "\n".join([*lines, "assistant: "])


def completion_text(completion: str | Messages) -> str:
    if isinstance(completion, str):
        return completion
    return "\n".join(content_text(message["content"]) for message in completion)


class RewardFunction:
    """`reward_funcs=[RewardFunction("http://127.0.0.1:8000")]`: one reward per completion.

    `url_or_client`: endpoint URL(s), or a RewardClient to share; `model`: the served model to
    use; `name`: how TRL logs this reward; `format_prompt`: conversation -> prompt text;
    other keyword arguments are RewardClient options (deadline_s, api_key, ...).
    """

    def __init__(
        self,
        url_or_client: str | Sequence[str] | RewardClient,
        *,
        model: str | None = None,
        name: str = "reward_service",
        format_prompt: Callable[[Messages], str] = messages_to_text,
        **client_options: Any,
    ) -> None:
        self.owns_client = not isinstance(url_or_client, RewardClient)
        self.client = (
            RewardClient(url_or_client, **client_options) if self.owns_client else url_or_client
        )
        self.model = model
        self.format_prompt = format_prompt
        self.__name__ = name

    def __call__(
        self, prompts: Sequence[str | Messages], completions: Sequence[str | Messages], **kwargs
    ) -> list[float]:
        """TRL also passes completion_ids, trainer_state and dataset columns; they are unused."""
        prompt_texts = [p if isinstance(p, str) else self.format_prompt(p) for p in prompts]
        completion_texts = [completion_text(c) for c in completions]
        return self.client.score(
            prompts=prompt_texts, completions=completion_texts, model=self.model
        )

    def close(self) -> None:
        if self.owns_client:
            self.client.close()
