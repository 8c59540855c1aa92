"""Reward functions for TRL's GRPOTrainer and RLOOTrainer (`reward_funcs=[...]`), backed by the
client: RewardFunction (blocking) and AsyncRewardFunction (awaited by TRL on its event loop). They
do not import TRL: TRL only needs a callable with a `__name__`. Where TRL passes `log_metric`,
each call logs `rewards/<name>/truncated_items` and `rewards/<name>/latency_s`.

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

from reward_service.client.async_client import AsyncRewardClient
from reward_service.client.base import ScoreResult
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


MetricLogger = Callable[[str, float], None]  # TRL's log_metric(name, value)


class RewardFunctionBase:
    """What both reward functions share: the client, the served model, TRL's name for them."""

    client_type: type[RewardClient] | type[AsyncRewardClient]

    def __init__(
        self,
        url_or_client: str | Sequence[str] | RewardClient | AsyncRewardClient,
        *,
        model: str | None = None,
        name: str = "reward_service",
        format_prompt: Callable[[Messages], str] = messages_to_text,
        **client_options: Any,
    ) -> None:
        self.owns_client = not isinstance(url_or_client, self.client_type)
        self.client = (
            self.client_type(url_or_client, **client_options)  # type: ignore[arg-type]
            if self.owns_client
            else url_or_client
        )
        self.model = model
        self.format_prompt = format_prompt
        self.__name__ = name

    def pair_texts(
        self, prompts: Sequence[str | Messages], completions: Sequence[str | Messages]
    ) -> dict[str, Any]:
        """TRL's prompts and completions (text or conversational) as score() arguments."""
        return {
            "prompts": [p if isinstance(p, str) else self.format_prompt(p) for p in prompts],
            "completions": [completion_text(c) for c in completions],
            "model": self.model,
        }

    def log_call_figures(self, result: ScoreResult, log_metric: MetricLogger | None) -> None:
        """Per call, through TRL's `log_metric` (TRL averages them over each logging step): how
        many completions the reward model saw cut short, and how long scoring took, retries
        included."""
        if log_metric is None:  # an older TRL, or a caller other than TRL
            return
        log_metric(f"rewards/{self.__name__}/truncated_items", float(result.truncated))
        log_metric(f"rewards/{self.__name__}/latency_s", result.elapsed_s)


class RewardFunction(RewardFunctionBase):
    """`reward_funcs=[RewardFunction("http://127.0.0.1:8000")]`: one reward per completion.

    `url_or_client`: endpoint URL(s), or a RewardClient to share; `model`: the served model to
    use; `name`: how TRL logs this reward; `format_prompt`: conversation -> prompt text;
    other keyword arguments are RewardClient options (deadline_s, api_key, ...).
    """

    client_type = RewardClient

    def __call__(
        self,
        prompts: Sequence[str | Messages],
        completions: Sequence[str | Messages],
        log_metric: MetricLogger | None = None,
        **kwargs: Any,
    ) -> list[float]:
        """TRL also passes completion_ids, trainer_state, log_extra and dataset columns; they
        are unused."""
        result = self.client.score_detailed(**self.pair_texts(prompts, completions))
        self.log_call_figures(result, log_metric)
        return result.rewards

    def close(self) -> None:
        if self.owns_client:
            self.client.close()


class AsyncRewardFunction(RewardFunctionBase):
    """`reward_funcs=[AsyncRewardFunction("http://127.0.0.1:8000")]`: RewardFunction on
    AsyncRewardClient. TRL awaits it on its own event loop, beside its other async reward
    functions (asyncio.gather), so a slow reward server does not hold those up.

    Same arguments as RewardFunction (an AsyncRewardClient to share instead of a RewardClient).
    Use it on one event loop only (TRL's): its connections belong to the loop that opened them.
    """

    client_type = AsyncRewardClient

    async def __call__(
        self,
        prompts: Sequence[str | Messages],
        completions: Sequence[str | Messages],
        log_metric: MetricLogger | None = None,
        **kwargs: Any,
    ) -> list[float]:
        """As RewardFunction.__call__."""
        result = await self.client.score_detailed(**self.pair_texts(prompts, completions))
        self.log_call_figures(result, log_metric)
        return result.rewards

    async def aclose(self) -> None:
        """Close the client's connections; call it on the loop that used them."""
        if self.owns_client:
            await self.client.aclose()
