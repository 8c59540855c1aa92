"""The demo's data: SFT demonstrations from clearly positive training snippets, prompts from the
reward model's held-out test snippets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policy_trainer.demo_data import (
    held_out_prompts,
    sft_demonstrations,
    split_opening,
    write_demo_data,
)
from policy_trainer.sft import PromptResponse, read_demonstrations
from reward_service.training.vader import read_movie_snippets, split_of


@pytest.fixture(scope="module")
def snippets():
    return read_movie_snippets()


def normalised(text: str) -> str:
    return " ".join(text.split())


def test_an_opening_and_its_rest_join_back_into_the_normalised_text():
    assert split_opening("A  thoughtful, provocative   film.", 2) == (
        "A thoughtful,",
        " provocative film.",
    )
    assert split_opening("Short one", 5) == ("Short one", "")


def test_demonstrations_are_clearly_positive_training_snippets_completing_their_openings(
    snippets,
):
    by_text = {normalised(s.text): s for s in snippets}
    demonstrations = sft_demonstrations(snippets, min_rating=2.5)

    assert len(demonstrations) > 300
    for demonstration in demonstrations:
        snippet = by_text[demonstration["prompt"] + demonstration["response"]]
        assert split_of(snippet.id) == "train"
        assert snippet.mean >= 2.5
        assert 4 <= len(demonstration["prompt"].split()) <= 8
        assert demonstration["response"].startswith(" ")
    eligible = {
        normalised(s.text)
        for s in snippets
        if split_of(s.id) == "train" and s.mean >= 2.5 and len(s.text.split()) >= 10
    }
    assert eligible <= {d["prompt"] + d["response"] for d in demonstrations}


def test_prompts_are_openings_of_test_snippets_with_evaluation_prompts_apart(snippets):
    test_texts = [normalised(s.text) for s in snippets if split_of(s.id) == "test"]
    ppo, evaluation = held_out_prompts(snippets, eval_prompts=50)

    assert len(evaluation) == 50
    assert len(ppo) > 800
    assert not set(ppo) & set(evaluation)
    for prompt in ppo + evaluation:
        assert 4 <= len(prompt.split()) <= 8
        assert any(text.startswith(prompt + " ") for text in test_texts), prompt
    assert held_out_prompts(snippets, eval_prompts=50) == (ppo, evaluation)
    assert held_out_prompts(snippets, eval_prompts=50, seed=1) != (ppo, evaluation)


def test_written_files_are_read_by_sft_and_hold_one_prompt_per_line(tmp_path: Path):
    files = write_demo_data(tmp_path, min_rating=3.0, eval_prompts=10)

    demonstrations = read_demonstrations(files.sft_demonstrations)
    assert demonstrations and all(isinstance(d, PromptResponse) for d in demonstrations)
    evaluation = [json.loads(line) for line in files.eval_prompts.read_text().splitlines()]
    ppo = [json.loads(line) for line in files.ppo_prompts.read_text().splitlines()]
    assert len(evaluation) == 10
    assert all(list(record) == ["prompt"] for record in evaluation + ppo)
