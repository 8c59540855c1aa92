"""Chat markup a policy's decoded text carries is removed before scoring (model.markup), by
template, so a marked-up prompt and completion read as the clean pair; ordinary text is never
changed."""

from __future__ import annotations

import pytest
from helpers import CLEAN_COMPLETION, CLEAN_PROMPT, MARKED_UP

from reward_service.errors import MappingError
from reward_service.model.inputs import format_inputs
from reward_service.model.mapping import RewardMapping, build_mapping
from reward_service.model.markup import DEFAULT_STRIP_MARKUP, KNOWN_TEMPLATES, markup_stripper

STRIP = markup_stripper(DEFAULT_STRIP_MARKUP).clean


def test_every_known_template_is_stripped_by_default_and_has_an_example_here():
    assert set(DEFAULT_STRIP_MARKUP) == set(KNOWN_TEMPLATES) == set(MARKED_UP)


@pytest.mark.parametrize("template", sorted(MARKED_UP))
def test_a_marked_up_prompt_and_completion_strip_to_the_clean_pair(template):
    prompt, completion = MARKED_UP[template]
    assert STRIP(prompt) == CLEAN_PROMPT
    assert STRIP(completion) == CLEAN_COMPLETION


@pytest.mark.parametrize("template", sorted(MARKED_UP))
def test_each_template_alone_strips_its_own_markup(template):
    prompt, completion = MARKED_UP[template]
    strip = markup_stripper((template, "special-tokens")).clean
    assert (strip(prompt), strip(completion)) == (CLEAN_PROMPT, CLEAN_COMPLETION)


def test_end_of_turn_markers_become_line_breaks_so_turns_stay_apart():
    conversation = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>"
    )
    assert STRIP(conversation) == "Be brief.\nHi\nHello!"
    llama2_with_system = "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello!</s>"
    assert STRIP(llama2_with_system) == "Be brief.\nHi\nHello!"


@pytest.mark.parametrize(
    "text",
    [
        "  a plain text, with its spaces  ",
        "x < y and [a] list",
        "<im_start> is not ChatML's spelling, nor is [inst]",
        "a <b>bold</b> word",
        "",
    ],
)
def test_a_text_without_markup_is_returned_exactly_as_sent(text):
    assert STRIP(text) == text


def test_literal_strings_are_removed_wherever_they_occur():
    strip = markup_stripper(("<|tool_call|>", "[END]")).clean
    assert strip("call<|tool_call|>me[END]") == "callme"
    assert strip("<|im_end|>") == "<|im_end|>"  # no template named: ChatML is kept


def test_an_empty_list_keeps_texts_as_sent():
    assert markup_stripper(()).clean("<|im_start|>user\nHi<|im_end|>") == (
        "<|im_start|>user\nHi<|im_end|>"
    )


# --- through the mapping ------------------------------------------------------------------------


def test_format_inputs_strips_texts_prompts_and_completions_before_shaping_them():
    prompt, completion = MARKED_UP["chatml"]
    mapping = RewardMapping(template="{prompt}\n{completion}")
    assert format_inputs(mapping, prompts=[prompt], completions=[completion]) == [
        f"{CLEAN_PROMPT}\n{CLEAN_COMPLETION}"
    ]
    pair = RewardMapping(input_format="pair")
    assert format_inputs(pair, prompts=[prompt], completions=[completion]) == [
        (CLEAN_PROMPT, CLEAN_COMPLETION)
    ]
    assert format_inputs(mapping, texts=[prompt + completion]) == [
        f"{CLEAN_PROMPT}\n{CLEAN_COMPLETION}"
    ]


def test_a_mapping_may_keep_markup_or_strip_its_own_strings():
    prompt, completion = MARKED_UP["chatml"]
    kept = RewardMapping(strip_markup=[])
    assert format_inputs(kept, texts=[completion]) == [completion]
    own = build_mapping(
        model_ref="m", folder_mapping=RewardMapping(strip_markup=["<|endoftext|>"]), overrides={}
    )
    assert format_inputs(own, texts=[completion]) == [f"{CLEAN_COMPLETION}<|im_end|>"]


def test_an_empty_marker_is_refused():
    with pytest.raises(MappingError, match="strip_markup"):
        build_mapping(model_ref="m", folder_mapping=None, overrides={"strip_markup": [""]})
