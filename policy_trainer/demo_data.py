"""The demo's data: movie-review openings from the VADER snippets, on the reward model's split.

The default reward model is trained on the train and validation splits of the VADER movie
snippets and tested on the test split (``reward_service.training.vader.split_of``, fixed by
snippet id). The demo keeps to the same split, so that PPO is scored on reviews the reward model
never saw:

- SFT demonstrations, from the **train** split: each snippet the raters found clearly positive
  (mean rating >= ``min_rating`` on the -4..+4 scale) as the completion of its own first words,
  ``{"prompt": "One of the greatest", "response": " family oriented, fantasy ..."}``.
- Prompts, from the **test** split: the first words of each snippet, ``{"prompt": "..."}``. A fixed
  seeded draw of ``eval_prompts`` of them is kept apart for before/after evaluation; PPO trains on
  the rest, so the evaluation prompts are held out from PPO too.

Each snippet's opening is 4 to 8 words long (drawn per snippet from its id and the seed, so it
does not depend on file order), as TRL's sentiment example cut IMDb reviews at a random length.
Whitespace is normalised (the snippets have runs of spaces where dashes were removed).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from policy_trainer.config import DemoDataOptions
from reward_service.training.vader import Snippet, read_movie_snippets, split_of

DEFAULTS = DemoDataOptions()
MIN_RESPONSE_WORDS = 2  # a demonstration continues its opening by at least this much


@dataclass(frozen=True)
class DemoFiles:
    """The three files `write_demo_data` writes."""

    sft_demonstrations: Path  # {"prompt", "response"} per line
    ppo_prompts: Path  # {"prompt"} per line
    eval_prompts: Path  # {"prompt"} per line, disjoint from ppo_prompts


def split_opening(text: str, words: int) -> tuple[str, str]:
    """The first ``words`` words and the rest (with its leading space, so the two join back into
    the whitespace-normalised text)."""
    tokens = text.split()
    rest = " ".join(tokens[words:])
    return " ".join(tokens[:words]), f" {rest}" if rest else ""


def opening_length(snippet_id: int, seed: int, prompt_words: tuple[int, int]) -> int:
    return random.Random(f"{seed}-{snippet_id}").randint(*prompt_words)


def sft_demonstrations(
    snippets: Iterable[Snippet],
    *,
    min_rating: float = DEFAULTS.min_rating,
    prompt_words: tuple[int, int] = DEFAULTS.prompt_words,
    seed: int = DEFAULTS.seed,
) -> list[dict[str, str]]:
    """Clearly positive train-split snippets as completions of their own openings."""
    demonstrations = []
    for snippet in snippets:
        if split_of(snippet.id) != "train" or snippet.mean < min_rating:
            continue
        words = opening_length(snippet.id, seed, prompt_words)
        if len(snippet.text.split()) < words + MIN_RESPONSE_WORDS:
            continue
        prompt, response = split_opening(snippet.text, words)
        demonstrations.append({"prompt": prompt, "response": response})
    return demonstrations


def held_out_prompts(
    snippets: Iterable[Snippet],
    *,
    prompt_words: tuple[int, int] = DEFAULTS.prompt_words,
    eval_prompts: int = DEFAULTS.eval_prompts,
    seed: int = DEFAULTS.seed,
) -> tuple[list[str], list[str]]:
    """Openings of the test-split snippets, as (PPO prompts, evaluation prompts)."""
    test = sorted((s for s in snippets if split_of(s.id) == "test"), key=lambda s: s.id)
    random.Random(seed).shuffle(test)
    prompts = []
    for snippet in test:
        words = opening_length(snippet.id, seed, prompt_words)
        # An opening must leave something to continue; shorter snippets are left out.
        if len(snippet.text.split()) > words:
            prompts.append(split_opening(snippet.text, words)[0])
    return prompts[eval_prompts:], prompts[:eval_prompts]


def write_demo_data(
    out: Path,
    *,
    min_rating: float = DEFAULTS.min_rating,
    prompt_words: tuple[int, int] = DEFAULTS.prompt_words,
    eval_prompts: int = DEFAULTS.eval_prompts,
    seed: int = DEFAULTS.seed,
) -> DemoFiles:
    """Write the three JSONL files into ``out``."""
    low, high = prompt_words
    if not 1 <= low <= high:
        raise ValueError(f"prompt_words must be 1 <= low <= high, got {prompt_words}")
    snippets = read_movie_snippets()
    files = DemoFiles(
        out / "sft_demonstrations.jsonl", out / "ppo_prompts.jsonl", out / "eval_prompts.jsonl"
    )
    demonstrations = sft_demonstrations(
        snippets, min_rating=min_rating, prompt_words=prompt_words, seed=seed
    )
    ppo, evaluation = held_out_prompts(
        snippets, prompt_words=prompt_words, eval_prompts=eval_prompts, seed=seed
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(files.sft_demonstrations, demonstrations)
    _write_jsonl(files.ppo_prompts, [{"prompt": prompt} for prompt in ppo])
    _write_jsonl(files.eval_prompts, [{"prompt": prompt} for prompt in evaluation])
    return files


def _write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
