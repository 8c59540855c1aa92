"""How a request's texts, or prompt/completion pairs, become what the tokenizer reads: shaped by
the model's reward mapping (``input_format``, ``template``), and how long an item is."""

from __future__ import annotations

import re

from reward_service.client.contract import check_items
from reward_service.model.mapping import RewardMapping

TokenizerInput = str | tuple[str, str]

_TEMPLATE_PLACEHOLDER = re.compile(r"\{(prompt|completion)\}")


def format_inputs(
    mapping: RewardMapping,
    *,
    texts: list[str] | None = None,
    prompts: list[str] | None = None,
    completions: list[str] | None = None,
) -> list[str] | list[tuple[str, str]]:
    """What the tokenizer receives: ready texts as they are, else prompts and completions shaped
    by ``input_format`` (a missing prompt list means empty prompts)."""
    if texts is None and completions is None:
        raise ValueError("format_inputs needs texts or completions")
    if texts is None:
        prompts = [""] * len(completions) if prompts is None else prompts
    check_items(texts, prompts, completions)
    if texts is not None:
        return list(texts)
    if mapping.input_format == "text":
        return list(completions)
    if mapping.input_format == "pair":
        return list(zip(prompts, completions, strict=True))
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
