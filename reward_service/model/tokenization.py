"""Text to token ids (no padding, truncated per the mapping), and padding a batch of them.

The tokenizer's work per item is bounded by the model, not by the request: a text far longer
than the model reads is cut to a character budget before it is tokenised, in a way that gives
exactly the tokens the whole text would (see `TextEncoder`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from tokenizers import Encoding, Tokenizer

from reward_service.errors import ModelLoadError

# Characters read per token of max_length before a text is cut. Ordinary text needs 3 to 6 (BERT's
# English vocabulary averages about 4.5), so 8 leaves room; a text that needs more (long runs the
# pre-tokenizer never splits, words past WordPiece's 100 characters) is read again with twice the
# budget, until the cut provably changes nothing or the whole text is read. That worst case
# costs what tokenising the whole text costs, bounded by the per-item and per-request
# character limits.
CHARS_PER_TOKEN = 8
# Texts tokenised together: enough for the Rust tokenizer's batch call to pay off, few enough
# that one request's tokens (each costs the tokenizer ~100 bytes) never pile up.
ENCODE_GROUP = 32


@dataclass(frozen=True, slots=True)
class EncodedText:
    input_ids: list[int]
    token_type_ids: list[int]
    truncated: bool


class TextEncoder:
    """Tokenises texts and pairs as the tokenizer itself would with truncation to `max_length`
    (longest-first for pairs), with work bounded by the model's length, not the text's.

    The Rust tokenizer is used directly: it releases the GIL while encoding and, configured once
    here, is safe to share between threads (the Python wrapper reconfigures itself on every call).

    A text is encoded without special tokens or truncation after being cut, on its truncation
    side, to `char_budget` characters. The cut is kept only when it provably changes nothing: the
    tokens the model keeps all lie in words before the one the cut may have split (pre-tokenisation
    is per word, so earlier words tokenise the same whether or not the text goes on); otherwise the
    budget doubles. Truncation is then done here, on token lists, and the
    special tokens placed as the tokenizer's post-processor places them (learned once from a
    probe). The tokenizer's own truncation is never used: it copies every overflowing chunk, and
    for a pair it builds every combination of the two sides' chunks (a pair of two 4,096-"!" texts
    cost 1.6 s and ~100 MiB that way).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        max_length: int,
        truncation_side: Literal["right", "left"],
        pad_token_id: int,
        input_names: Sequence[str],
    ) -> None:
        self._pieces = Tokenizer.from_str(tokenizer.to_str())
        self._pieces.no_padding()
        self._pieces.no_truncation()
        self.max_length = max_length
        self.truncation_side = truncation_side
        self.char_budget = CHARS_PER_TOKEN * max_length
        self._single = SpecialTokens.learn(self._pieces, pair=False)
        self._pair = SpecialTokens.learn(self._pieces, pair=True)
        # Content tokens kept at most, for one text and for a pair (special tokens take the rest).
        self._kept_single = max_length - self._single.count
        self._kept_pair = max_length - self._pair.count
        if min(self._kept_single, self._kept_pair) < 1:
            raise ModelLoadError(
                f"max_length {max_length} leaves no room for text besides the special tokens"
            )
        self.pad_token_id = pad_token_id
        self.input_names = tuple(input_names)

    def encode(self, inputs: Sequence[str] | Sequence[tuple[str, str]]) -> list[EncodedText]:
        inputs = list(inputs)
        encoded: list[EncodedText] = []
        for start in range(0, len(inputs), ENCODE_GROUP):
            group = inputs[start : start + ENCODE_GROUP]
            if isinstance(group[0], str):
                encoded.extend(map(self._encode_single, self._cut_texts(group)))
            else:
                sides = self._cut_texts([side for item in group for side in item])
                encoded.extend(map(self._encode_pair, sides[0::2], sides[1::2]))
        return encoded

    def _cut_texts(self, texts: list[str]) -> list[_CutText]:
        cuts = [_CutText(text, self.char_budget, self.truncation_side) for text in texts]
        encodings = self._pieces.encode_batch([cut.kept for cut in cuts], add_special_tokens=False)
        for cut, encoding in zip(cuts, encodings, strict=True):
            cut.take(encoding)
        return cuts

    def _encode_single(self, text: _CutText) -> EncodedText:
        kept = self._kept_single
        while not text.settled(kept):
            text.widen(self._pieces)
        ids = text.release()
        truncated = text.is_cut or len(ids) > kept
        input_ids, type_ids = self._single.place([self._keep(ids, kept)])
        return EncodedText(input_ids, type_ids, truncated)

    def _encode_pair(self, first: _CutText, second: _CutText) -> EncodedText:
        kept = self._kept_pair
        while not pair_settled(first, second, kept):
            unsettled = [side for side in (first, second) if not side.settled(kept)]
            # Widen an unsettled side; else the shorter cut side, whose length is known soonest.
            open_sides = unsettled or [side for side in (first, second) if side.is_cut]
            min(open_sides, key=lambda side: side.exact).widen(self._pieces)
        first_kept, second_kept = longest_first(
            first.length_for_truncation(kept, second),
            second.length_for_truncation(kept, first),
            kept,
        )
        first_ids, second_ids = first.release(), second.release()
        truncated = first.is_cut or second.is_cut or len(first_ids) + len(second_ids) > kept
        input_ids, type_ids = self._pair.place(
            [self._keep(first_ids, first_kept), self._keep(second_ids, second_kept)]
        )
        return EncodedText(input_ids, type_ids, truncated)

    def _keep(self, ids: list[int], count: int) -> list[int]:
        if len(ids) <= count:
            return ids
        return ids[:count] if self.truncation_side == "right" else ids[len(ids) - count :]

    def pad(self, items: Sequence[EncodedText]) -> dict[str, np.ndarray]:
        """Right-pads a batch to its longest item; returns only the inputs the model takes."""
        longest = max(len(item.input_ids) for item in items)
        input_ids = np.full((len(items), longest), self.pad_token_id, dtype=np.int64)
        token_type_ids = np.zeros((len(items), longest), dtype=np.int64)
        attention_mask = np.zeros((len(items), longest), dtype=np.int64)
        for row, item in enumerate(items):
            length = len(item.input_ids)
            input_ids[row, :length] = item.input_ids
            token_type_ids[row, :length] = item.token_type_ids
            attention_mask[row, :length] = 1
        features = {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
        }
        return {name: features[name] for name in self.input_names}


def longest_first(first: int, second: int, kept: int) -> tuple[int, int]:
    """How many tokens of each side of a pair longest-first truncation to `kept` content tokens
    keeps, as the Rust tokenizers library decides it (`truncate_encodings`): the shorter side whole
    if the longer still gets as much, else half each, the odd token to the longer (to the second
    side on a tie)."""
    if first + second <= kept:
        return first, second
    shorter, longer = (second, first) if first > second else (first, second)
    longer = shorter if shorter > kept else max(shorter, kept - shorter)
    if shorter + longer > kept:
        shorter = kept // 2
        longer = shorter + kept % 2
    return (longer, shorter) if first > second else (shorter, longer)


@dataclass(frozen=True, slots=True)
class SpecialTokens:
    """Where a tokenizer's post-processor puts its special tokens around the content of one text
    or a pair, and each part's type id: `layout` holds (token id, type id) for a special token and
    (None, type id) where a sequence's content goes, in order."""

    layout: tuple[tuple[int | None, int], ...]

    @property
    def count(self) -> int:
        return sum(token is not None for token, _ in self.layout)

    @classmethod
    def learn(cls, tokenizer: Tokenizer, *, pair: bool) -> SpecialTokens:
        """Read the layout off the tokenizer's own encoding of a probe text (or pair of them)."""
        probe = next(
            (word for word in ("a", "the", "0", ".", "x") if _content(tokenizer, word)), None
        )
        if probe is None:
            raise ModelLoadError("the tokenizer gives no tokens for any probe text")
        encoding = tokenizer.encode(probe, probe if pair else None, add_special_tokens=True)
        layout: list[tuple[int | None, int]] = []
        content_runs: list[int] = []
        for token, type_id, sequence, special in zip(
            encoding.ids,
            encoding.type_ids,
            encoding.sequence_ids,
            encoding.special_tokens_mask,
            strict=True,
        ):
            if special or sequence is None:
                layout.append((token, type_id))
            elif not content_runs or content_runs[-1] != sequence or layout[-1][0] is not None:
                content_runs.append(sequence)
                layout.append((None, type_id))
        if content_runs != ([0, 1] if pair else [0]):
            raise ModelLoadError(
                "the tokenizer's post-processor places a text's tokens other than in one run per "
                f"text (runs of sequences {content_runs}); it is not supported"
            )
        return cls(tuple(layout))

    def place(self, contents: list[list[int]]) -> tuple[list[int], list[int]]:
        """Token ids and type ids of the content lists, in order, with the special tokens."""
        parts = iter(contents)
        input_ids: list[int] = []
        type_ids: list[int] = []
        for token, type_id in self.layout:
            if token is None:
                content = next(parts)
                input_ids.extend(content)
                type_ids.extend([type_id] * len(content))
            else:
                input_ids.append(token)
                type_ids.append(type_id)
        return input_ids, type_ids


def _content(tokenizer: Tokenizer, text: str) -> bool:
    try:
        return bool(tokenizer.encode(text, add_special_tokens=False).ids)
    except Exception:  # a vocabulary without an unknown token raises on words it lacks
        return False


class _CutText:
    """One text cut to a character budget on its truncation side, and the tokens of what is kept
    (no truncation, no special tokens).

    `exact` counts the tokens, from the kept side, that are certainly the whole text's: all but
    those of the word the cut may have split. (A split word can give more tokens than the whole
    one: a word past WordPiece's 100 characters is one [UNK], its first 60 characters many
    pieces.) The whole text has more tokens than `exact`."""

    def __init__(self, text: str, budget: int, side: str) -> None:
        self._text = text
        self._budget = budget
        self._side = side
        self._cut()

    def _cut(self) -> None:
        self.is_cut = len(self._text) > self._budget
        if not self.is_cut:
            self.kept = self._text
        elif self._side == "right":
            self.kept = self._text[: self._budget]
        else:
            self.kept = self._text[-self._budget :]

    def take(self, encoding: Encoding) -> None:
        self.encoding = encoding
        # Word ids are a Python list per token: read them only for a cut text, not per request.
        self.exact = (
            _tokens_outside_split_word(encoding.word_ids, self._side)
            if self.is_cut
            else len(encoding.ids)
        )

    def release(self) -> list[int]:
        """The token ids; the tokenizer's encoding (~100 bytes a token) is let go."""
        ids = self.encoding.ids
        self.encoding = None  # type: ignore[assignment]
        return ids

    def widen(self, tokenizer: Tokenizer) -> None:
        self._budget *= 2
        self._cut()
        self.take(tokenizer.encode(self.kept, add_special_tokens=False))

    def settled(self, kept: int) -> bool:
        """Whether the `kept` tokens truncation keeps are certainly those of the whole text."""
        return not self.is_cut or self.exact >= kept

    def length_for_truncation(self, kept: int, other: _CutText) -> int:
        """A token count that truncation treats as it treats the whole text's: the real one for
        a whole text; for a cut one, more than `kept` and than the other side's tokens (what
        `pair_settled` established of the whole text, or what the cut makes it stand for)."""
        if not self.is_cut:
            return len(self.encoding.ids)
        return max(kept, len(other.encoding.ids) if not other.is_cut else kept) + 1


def _tokens_outside_split_word(words: list[int | None], side: str) -> int:
    """Tokens outside the run of the split word: the last word for a text cut on the right, the
    first for one cut on the left (tokens without a word id count as one word)."""
    if not words:
        return 0
    if side == "right":
        split = len(words)
        while split and words[split - 1] == words[-1]:
            split -= 1
        return split
    split = 0
    while split < len(words) and words[split] == words[0]:
        split += 1
    return len(words) - split


def pair_settled(first: _CutText, second: _CutText, kept: int) -> bool:
    """Whether truncating the cut pair keeps the same tokens as truncating the whole pair.

    Each side keeps at most `kept` tokens, so each must be settled for that many. Longest-first
    truncation also depends on which side is longer, where both are cut to half and the longer
    gets the odd token, which only matters when `kept` is odd; the order is known when a cut side
    certainly has more tokens than the whole other side."""
    if not (first.settled(kept) and second.settled(kept)):
        return False
    if kept % 2 == 0 or not (first.is_cut or second.is_cut):
        return True
    if first.is_cut and second.is_cut:
        return False
    cut, whole = (first, second) if first.is_cut else (second, first)
    return cut.exact >= len(whole.encoding.ids)
