"""Chat markup a policy's decoded text carries, removed before a reward model reads it.

OpenRLHF sends `prompt + response` decoded with `skip_special_tokens=False`, so a chat policy's
queries arrive wrapped in its template (`<|im_start|>user\\n...<|im_end|>`), padded with its pad
and EOS tokens. A BERT-class reward model never saw those strings in training, and they move
its score. Each known template lists its markers and what each becomes: a role header or a
start token nothing, an end-of-turn marker a line break (so turns stay apart). A text in which
nothing matched is left exactly as it was; one in which markup was removed loses the whitespace
the markup leaves behind: at its ends, and before a line break.

A model chooses in its reward_config.json (`strip_markup`): known template names and/or literal
strings; by default every known template (see DEFAULT_STRIP_MARKUP); `[]` turns it off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

# (regular expression, replacement) per marker. The patterns are exact token spellings from each
# family's tokenizer, so ordinary text is never touched.
_TURN_BREAK = "\n"
# Every pattern starts with "<" or "[": a text with neither is passed over without a search.
KNOWN_TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    # Qwen, SmolLM2, Phi-3.5 and others: <|im_start|>role\n ... <|im_end|>\n
    "chatml": (
        (r"<\|im_start\|>(?:system|user|assistant|tool)?\n?", ""),
        (r"<\|im_end\|>\n?", _TURN_BREAK),
    ),
    # Llama 3: <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\n ... <|eot_id|>
    "llama3": (
        (r"<\|begin_of_text\|>", ""),
        (r"<\|start_header_id\|>[^<\n]*<\|end_header_id\|>\n*", ""),
        (r"<\|eot_id\|>", _TURN_BREAK),
    ),
    # Llama 2 and Mistral: <s>[INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] answer</s>
    "llama2": (
        (r"\[INST\][ \t]*", ""),
        (r"\[/INST\][ \t]*", _TURN_BREAK),
        (r"<<SYS>>\s*", ""),
        (r"<</SYS>>\s*", ""),
    ),
    # Bare BOS, EOS and pad tokens of common families (left padding, EOS after the answer).
    "special-tokens": (
        (r"<s>|</s>|<pad>", ""),
        (r"<\|endoftext\|>|<\|end_of_text\|>|<\|finetune_right_pad_id\|>|<\|pad\|>", ""),
    ),
}

DEFAULT_STRIP_MARKUP: tuple[str, ...] = tuple(KNOWN_TEMPLATES)

# What a removed marker leaves behind: "user [/INST]" would end its line in a space.
_SPACE_BEFORE_BREAK = re.compile(r"[ \t]+\n")


@dataclass(frozen=True)
class MarkupStripper:
    """Removes one set of markers from texts: `clean(text)`; built by `markup_stripper`."""

    # Every marker, as one alternation without capturing groups: Python's re then skips to the
    # next possible first character fast (with a group per marker it tries every position, ~30x
    # slower on a 16 MiB body).
    pattern: re.Pattern[str] | None
    # Each marker on its own, in the same order, with what it becomes.
    markers: tuple[tuple[re.Pattern[str], str], ...]

    def clean(self, text: str) -> str:
        if self.pattern is None or ("<" not in text and "[" not in text):
            return text
        cleaned, found = self.pattern.subn(self._replacement, text)
        if not found:
            return text
        return _SPACE_BEFORE_BREAK.sub("\n", cleaned).strip()

    def _replacement(self, match: re.Match[str]) -> str:
        # The alternation took the first marker that matches here, so the first marker that
        # matches the text it took is that one.
        found = match.group()
        return next(replacement for marker, replacement in self.markers if marker.fullmatch(found))


@lru_cache(maxsize=64)
def markup_stripper(entries: tuple[str, ...]) -> MarkupStripper:
    """The stripper for `entries`: names in KNOWN_TEMPLATES, anything else a literal string
    removed wherever it occurs. Compiled once per distinct list (models share it)."""
    markers: list[tuple[str, str]] = []
    for entry in entries:
        markers += KNOWN_TEMPLATES.get(entry, ((re.escape(entry), ""),))
    if not markers:
        return MarkupStripper(pattern=None, markers=())
    return MarkupStripper(
        pattern=re.compile("|".join(f"(?:{expression})" for expression, _ in markers)),
        markers=tuple((re.compile(expression), replacement) for expression, replacement in markers),
    )
