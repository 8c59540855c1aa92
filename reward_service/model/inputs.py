"""How a request's texts, or prompt/completion pairs, become what the tokenizer reads: cleared of
a chat policy's markup (``strip_markup``, model.markup), shaped by the model's reward mapping
(``input_format``, ``template``), and how long an item is."""

from __future__ import annotations

import re
from collections.abc import Callable

from reward_service.client.contract import check_items
from reward_service.model.mapping import RewardMapping
from reward_service.model.markup import markup_stripper

TokenizerInput = str | tuple[str, str]
# A model's chat template, applied to one prompt (the user's message) and its completion (the
# assistant's): see model.loading.chat_renderer.
ChatRenderer = Callable[[str, str], str]

_TEMPLATE_PLACEHOLDER = re.compile(r"\{(prompt|completion)\}")


def format_inputs(
    mapping: RewardMapping,
    *,
    texts: list[str] | None = None,
    prompts: list[str] | None = None,
    completions: list[str] | None = None,
    render_chat: ChatRenderer | None = None,
) -> list[str] | list[tuple[str, str]]:
    """What the tokenizer receives: texts, else prompts and completions shaped by
    ``input_format`` (a missing prompt list means empty prompts), each cleared of markup first.
    ``render_chat``: the model's chat template, for input_format chat."""
    if texts is None and completions is None:
        raise ValueError("format_inputs needs texts or completions")
    if texts is None:
        prompts = [""] * len(completions) if prompts is None else prompts
    check_items(texts, prompts, completions)
    strip = markup_stripper(mapping.markup_to_strip).clean
    if texts is not None:
        return [strip(text) for text in texts]
    prompts = [strip(prompt) for prompt in prompts]
    completions = [strip(completion) for completion in completions]
    if mapping.input_format == "text":
        return list(completions)
    if mapping.input_format == "pair":
        return list(zip(prompts, completions, strict=True))
    if mapping.input_format == "chat":
        if render_chat is None:
            raise ValueError("input_format chat needs the model's chat template")
        return [render_chat(p, c) for p, c in zip(prompts, completions, strict=True)]
    return [
        fill_template(mapping.template, p, c) for p, c in zip(prompts, completions, strict=True)
    ]


def fill_template(template: str, prompt: str, completion: str) -> str:
    """Substitute both placeholders in one pass, so braces (or a literal ``{completion}``) inside
    the prompt, the completion or the template's other text are left exactly as written."""
    values = {"prompt": prompt, "completion": completion}
    return _TEMPLATE_PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def characters(item: TokenizerInput) -> int:
    """An item's length in characters; a (prompt, completion) pair counts both texts."""
    return len(item) if isinstance(item, str) else len(item[0]) + len(item[1])
