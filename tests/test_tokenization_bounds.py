"""The tokenizer's work is bounded by the model: long texts are cut to a character budget before
tokenising, and the cut never changes a token the model reads."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from reward_service.model.tokenization import CHARS_PER_TOKEN, TextEncoder, longest_first
from tests.helpers import TINY_LM_CORPUS, minilm_folder

WORDS = ["movie", "film", "great", "dull", "the", "a", "of", "unbelievably", "café", "naïve"]
ODD_PIECES = [
    "!!!",
    "...",
    "[SEP]",
    "[CLS]",
    "東京",
    "タワー",
    "🙂🙃",
    "\t",
    "\n\n",
    "  ",
    "-",
    "x" * 150,
]


def random_text(rng: random.Random, length: int) -> str:
    """Words, punctuation runs, CJK, emoji, special-token strings and words longer than
    WordPiece's 100-character limit (which become one [UNK] however they are cut)."""
    parts, size = [], 0
    while size < length:
        piece = rng.choice(ODD_PIECES) if rng.random() < 0.2 else rng.choice(WORDS)
        if rng.random() < 0.05:
            piece = rng.choice("abcdefgh") * rng.randrange(50, 400)
        parts.append(piece)
        size += len(piece) + 1
    return (" " if rng.random() < 0.8 else "").join(parts)[:length]


def wordpiece() -> Tokenizer:
    return Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))


def byte_level_bpe() -> Tokenizer:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.train_from_iterator(
        TINY_LM_CORPUS,
        trainers.BpeTrainer(
            vocab_size=300,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return bpe


def metaspace_unigram() -> Tokenizer:
    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(
        TINY_LM_CORPUS * 20,
        trainers.UnigramTrainer(
            vocab_size=120, unk_token="<unk>", special_tokens=["<unk>"], show_progress=False
        ),
    )
    return unigram


TOKENIZERS = {
    "wordpiece": wordpiece,
    "byte_level_bpe": byte_level_bpe,
    "unigram": metaspace_unigram,
}


def whole_text_reference(tokenizer: Tokenizer, max_length: int, side: str) -> Tokenizer:
    """What tokenising the whole text gives: the tokenizer truncating it by itself."""
    reference = Tokenizer.from_str(tokenizer.to_str())
    reference.no_padding()
    reference.enable_truncation(max_length, strategy="longest_first", direction=side)
    return reference


def untruncated(tokenizer: Tokenizer) -> Tokenizer:
    whole = Tokenizer.from_str(tokenizer.to_str())
    whole.no_padding()
    whole.no_truncation()
    return whole


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("side", ["right", "left"])
# With BERT's three special tokens in a pair, 16 leaves an odd number of content tokens and 17
# an even one: longest-first truncation treats the two differently.
@pytest.mark.parametrize("max_length", [16, 17])
def test_cut_texts_give_exactly_the_tokens_of_whole_texts(name, side, max_length):
    tokenizer = TOKENIZERS[name]()
    encoder = TextEncoder(
        tokenizer,
        max_length=max_length,
        truncation_side=side,
        pad_token_id=0,
        input_names=["input_ids"],
    )
    reference, whole = whole_text_reference(tokenizer, max_length, side), untruncated(tokenizer)
    rng = random.Random(f"{name}-{side}-{max_length}")
    budget = encoder.char_budget
    lengths = [1, budget - 1, budget, budget + 1, 2 * budget, 5 * budget, 12 * budget]
    texts = [random_text(rng, rng.choice(lengths)) for _ in range(100)]
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(100)]
    for inputs in (texts, pairs):
        got = encoder.encode(inputs)
        assert len(got) == len(inputs)
        for item, encoded in zip(inputs, got, strict=True):
            sides = item if isinstance(item, tuple) else (item,)
            expected = reference.encode(*sides)
            assert (encoded.input_ids, encoded.token_type_ids) == (
                expected.ids,
                expected.type_ids,
            ), item
            assert encoded.truncated == (len(whole.encode(*sides).ids) > max_length), item


@pytest.mark.parametrize("kept", [1, 2, 7, 8, 13, 14])
def test_longest_first_keeps_what_the_tokenizer_keeps(kept):
    """Each "!" is one WordPiece token, so a side of n "!" has n tokens."""
    tokenizer = wordpiece()
    reference = whole_text_reference(tokenizer, kept + 3, "right")  # [CLS] a [SEP] b [SEP]
    for first in range(0, 2 * kept + 3):
        for second in range(0, 2 * kept + 3):
            encoding = reference.encode("!" * first, "!" * second)
            kept_first = encoding.sequence_ids.count(0)
            kept_second = encoding.sequence_ids.count(1)
            assert longest_first(first, second, kept) == (kept_first, kept_second), (first, second)


class ReadLengths:
    """Wraps a tokenizer and records how many characters each text it encodes has."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.read: list[int] = []

    def encode(self, text: str, **options):
        self.read.append(len(text))
        return self._tokenizer.encode(text, **options)

    def encode_batch(self, texts: list[str], **options):
        self.read.extend(map(len, texts))
        return self._tokenizer.encode_batch(texts, **options)


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_long_text_is_read_only_up_to_the_budget(side):
    encoder = TextEncoder(
        wordpiece(),
        max_length=512,
        truncation_side=side,
        pad_token_id=0,
        input_names=["input_ids"],
    )
    spy = ReadLengths(encoder._pieces)
    encoder._pieces = spy
    hostile = "!" * 32768  # one token per character: the whole text is 32,768 tokens
    prose = " ".join(["a dull film, the plot is thin and the acting is worse"] * 700)
    [punctuation, ordinary] = encoder.encode([hostile, prose])
    assert spy.read == [CHARS_PER_TOKEN * 512] * 2
    assert punctuation.truncated and ordinary.truncated
    assert len(punctuation.input_ids) == len(ordinary.input_ids) == 512


def test_a_text_whose_cut_proves_nothing_is_read_again_with_a_wider_budget():
    """Words longer than 100 characters are one [UNK] each, while a cut one of 100 or fewer is
    many pieces: 14 such words (16 tokens with [CLS] and [SEP]) and the start of the next take
    over 14 x 102 characters, so the budget of 8 x 16 = 128 doubles four times."""
    encoder = TextEncoder(
        wordpiece(),
        max_length=16,
        truncation_side="right",
        pad_token_id=0,
        input_names=["input_ids"],
    )
    spy = ReadLengths(encoder._pieces)
    encoder._pieces = spy
    text = " ".join(["y" * 101] * 40)
    reference = whole_text_reference(wordpiece(), 16, "right").encode(text)
    [encoded] = encoder.encode([text])
    assert encoded.input_ids == reference.ids
    assert spy.read == [128, 256, 512, 1024, 2048]
