"""Text to token ids (no padding, truncated per the mapping), and padding a batch of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from tokenizers import Tokenizer


@dataclass(frozen=True, slots=True)
class EncodedText:
    input_ids: list[int]
    token_type_ids: list[int]
    truncated: bool


class TextEncoder:
    """Wraps a fast tokenizer's Rust core with fixed truncation settings.

    The Rust tokenizer is used directly: it reports truncation per item (`overflowing`), releases
    the GIL while encoding, and, configured once here, is safe to share between threads (the
    Python wrapper reconfigures truncation on every call, which is neither).
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
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(
            max_length, strategy="longest_first", direction=truncation_side
        )
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.input_names = tuple(input_names)

    def encode(self, inputs: Sequence[str] | Sequence[tuple[str, str]]) -> list[EncodedText]:
        encodings = self._tokenizer.encode_batch(list(inputs), add_special_tokens=True)
        return [
            EncodedText(encoding.ids, encoding.type_ids, bool(encoding.overflowing))
            for encoding in encodings
        ]

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
