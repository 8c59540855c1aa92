"""Supervised fine-tuning: loss masks, training on a tiny seeded Llama, LoRA, the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from policy_trainer.config import SFTOptions
from policy_trainer.models import load_policy
from policy_trainer.sft import (
    IGNORE_INDEX,
    Conversation,
    PromptResponse,
    SFTDataError,
    make_collator,
    mean_response_loss,
    read_demonstrations,
    tokenize_demonstration,
    train_sft,
)

DEMONSTRATIONS = [
    {"prompt": "The movie was", "response": " a delight from start to finish."},
    {"prompt": "One of the best", "response": " films of the year, funny and warm."},
    {"prompt": "A gorgeous,", "response": " moving story about family and loss."},
    {"prompt": "I loved", "response": " every minute of it."},
]


@pytest.fixture(scope="module")
def tiny_lm(tiny_causal_lm_factory) -> Path:
    return tiny_causal_lm_factory("sft-base")


@pytest.fixture()
def demonstrations_file(tmp_path: Path) -> Path:
    path = tmp_path / "demonstrations.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in DEMONSTRATIONS))
    return path


def test_collated_labels_are_minus_100_exactly_on_prompt_and_padding_tokens(tiny_lm: Path):
    _, tokenizer = load_policy(tiny_lm)
    short = PromptResponse(prompt="I loved", response=" it.")
    long = PromptResponse(prompt="The movie was a", response=" delight from start to finish.")
    batch = make_collator(tokenizer)(
        [tokenize_demonstration(short, tokenizer), tokenize_demonstration(long, tokenizer)]
    )

    width = batch["input_ids"].shape[1]
    for row, demonstration in enumerate([short, long]):
        prompt_length = len(tokenizer(demonstration.prompt)["input_ids"])
        response_ids = tokenizer(demonstration.response, add_special_tokens=False)["input_ids"]
        learned = [*response_ids, tokenizer.eos_token_id]
        padding = width - prompt_length - len(learned)
        expected = [IGNORE_INDEX] * prompt_length + learned + [IGNORE_INDEX] * padding
        assert batch["labels"][row].tolist() == expected
        assert batch["attention_mask"][row].tolist() == [1] * (width - padding) + [0] * padding
    assert batch["labels"][0, -1] == IGNORE_INDEX  # the short row is padded


def test_chat_demonstrations_learn_the_assistant_turns_only(tiny_lm: Path):
    _, tokenizer = load_policy(tiny_lm)
    conversation = Conversation.model_validate(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "The film?"},
                {"role": "assistant", "content": "Great fun."},
                {"role": "user", "content": "And the plot?"},
                {"role": "assistant", "content": "Thin."},
            ]
        }
    )
    example = tokenize_demonstration(conversation, tokenizer)

    full_text = tokenizer.apply_chat_template(
        [message.model_dump() for message in conversation.messages], tokenize=False
    )
    assert example["input_ids"] == tokenizer(full_text, add_special_tokens=False)["input_ids"]
    learned_spans, span = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        assert label in (token, IGNORE_INDEX)
        if label == IGNORE_INDEX and span:
            learned_spans.append(tokenizer.decode(span))
            span = []
        elif label != IGNORE_INDEX:
            span.append(token)
    if span:
        learned_spans.append(tokenizer.decode(span))
    assert learned_spans == ["Great fun.<|im_end|>\n", "Thin.<|im_end|>\n"]


def test_sft_lowers_the_response_loss_on_its_data_and_saves_that_model(
    tiny_lm: Path, demonstrations_file: Path, tmp_path: Path
):
    options = SFTOptions(epochs=10, learning_rate=1e-2, batch_size=2, warmup_ratio=0.0)
    result = train_sft(tiny_lm, demonstrations_file, tmp_path / "sft", options)

    assert result.steps == 20
    assert result.loss_after < result.loss_before - 1.0
    _, tokenizer = load_policy(tiny_lm)
    tokenized = [
        tokenize_demonstration(d, tokenizer) for d in read_demonstrations(demonstrations_file)
    ]
    base, _ = load_policy(tiny_lm)
    trained, _ = load_policy(tmp_path / "sft")
    assert mean_response_loss(base, tokenized, tokenizer) == pytest.approx(result.loss_before)
    assert mean_response_loss(trained, tokenized, tokenizer) == pytest.approx(result.loss_after)
    summary = json.loads((tmp_path / "sft" / "sft_summary.json").read_text())
    assert summary["loss_after"] == pytest.approx(result.loss_after)


def test_lora_sft_command_changes_only_the_adapted_layers_and_saves_a_plain_folder(
    tiny_lm: Path, demonstrations_file: Path, tmp_path: Path
):
    import torch

    out = tmp_path / "sft-lora"
    command = [sys.executable, "-m", "policy_trainer.cli", "sft", "--model", str(tiny_lm),
               "--data", str(demonstrations_file), "--output-dir", str(out), "--epochs", "5",
               "--lr", "1e-2", "--batch-size", "2",
               "--lora-r", "4", "--lora-alpha", "8"]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == str(out)

    assert not (out / "adapter_config.json").exists()  # merged: a plain model folder
    base, _ = load_policy(tiny_lm)
    trained, _ = load_policy(out)
    base_weights, trained_weights = base.state_dict(), trained.state_dict()
    assert trained_weights.keys() == base_weights.keys()
    for name, weight in trained_weights.items():
        adapted = name.endswith("_proj.weight")  # every linear layer of attention and MLP
        assert torch.equal(weight, base_weights[name]) != adapted, name
    summary = json.loads((out / "sft_summary.json").read_text())
    full_parameters = sum(p.numel() for p in base.parameters())
    assert 0 < summary["trainable_parameters"] < full_parameters / 4
    assert summary["loss_after"] < summary["loss_before"]


def test_a_malformed_demonstration_names_its_file_and_line(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(DEMONSTRATIONS[0]) + "\n\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(SFTDataError, match=r"bad\.jsonl:3: .*response"):
        read_demonstrations(path)


def test_chat_demonstrations_need_a_chat_template(tiny_lm: Path):
    _, tokenizer = load_policy(tiny_lm)
    tokenizer.chat_template = None
    conversation = Conversation.model_validate(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    with pytest.raises(SFTDataError, match="chat template"):
        tokenize_demonstration(conversation, tokenizer)
