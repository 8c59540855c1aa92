"""Decoder reward models (Llama- and Qwen-architecture sequence classifiers, as Skywork-Reward and
most TRL/OpenRLHF reward models are) read each item's reward at its last token that is not
padding. Their tokenizers often have no pad token; the service pads with the id the model's
config names (else the tokenizer's pad, else its EOS) and tells the model, so a batch of mixed
lengths scores each item as it scores alone. OpenRLHF's value-head checkpoints load as such a
classifier."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch
from helpers import HTTP_TIMEOUT_S, build_tiny_bpe_tokenizer
from safetensors.torch import load_file, save_file

from reward_service.errors import ModelLoadError
from reward_service.model.loading import load_model
from reward_service.model.spec import ModelSpec

# Lengths from 1 to about 20 tokens, so a batch pads most of its items.
TEXTS = [
    "I loved every minute of it.",
    "Thin.",
    "The plot is thin and the acting is worse, and the music is loud.",
    "A gorgeous, moving story about family and loss.",
    "ok",
]
# Rewards of one item agree across batch shapes to float32 rounding (~1e-6 relative on a 2-layer
# model's logits of order 1-10); 1e-4 leaves room and is far below the spread between items.
SAME_REWARD = 1e-4


def build_decoder_classifier(out, *, architecture: str, seed: int = 0, reward_config=None):
    """A seeded 2-layer decoder sequence classifier with one output and a tokenizer without a
    pad token; config.pad_token_id unset, as in many published reward models."""
    from transformers import (
        LlamaConfig,
        LlamaForSequenceClassification,
        Qwen2Config,
        Qwen2ForSequenceClassification,
    )

    tokenizer = build_tiny_bpe_tokenizer(eos_token="<|endoftext|>", pad_token=None)
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=1,
        pad_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    if architecture == "qwen2":
        model = Qwen2ForSequenceClassification(Qwen2Config(**shape))
    else:
        model = LlamaForSequenceClassification(LlamaConfig(**shape))
    with torch.no_grad():  # a random head barely separates items; scale it so rewards differ
        model.score.weight.mul_(20)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if reward_config is not None:
        (out / "reward_config.json").write_text(json.dumps(reward_config))
    return out, model, tokenizer


def as_openrlhf_value_head(folder):
    """The same weights as OpenRLHF saves a reward model: the head named `value_head`, the
    config of the base causal LM (no labels)."""
    weights = load_file(folder / "model.safetensors")
    weights["value_head.weight"] = weights.pop("score.weight")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = [
        name.replace("ForSequenceClassification", "ForCausalLM") for name in config["architectures"]
    ]
    del config["id2label"], config["label2id"]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def last_token_rewards(model, tokenizer, texts: list[str], side: str) -> list[float]:
    """An in-process forward of a padded batch that reads each item's score at its last real
    token (found from the attention mask, not from any pad id)."""
    pad_id = tokenizer.eos_token_id
    encoded = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in texts]
    longest = max(map(len, encoded))
    input_ids = torch.full((len(texts), longest), pad_id)
    mask = torch.zeros((len(texts), longest), dtype=torch.long)
    for row, ids in enumerate(encoded):
        span = slice(longest - len(ids), longest) if side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids)
        mask[row, span] = 1
    with torch.no_grad():
        hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        logits = model.score(hidden)[..., 0]
    last = [longest - 1 if side == "left" else len(ids) - 1 for ids in encoded]
    return [float(logits[row, position]) for row, position in enumerate(last)]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def decoder(request, tmp_path_factory, server_factory):
    folder, model, tokenizer = build_decoder_classifier(
        tmp_path_factory.mktemp(request.param) / "rm", architecture=request.param
    )
    server = server_factory(["--model", f"rm={folder}"])
    return server, model, tokenizer


def served(server, texts: list[str]) -> list[float]:
    response = httpx.post(f"{server.url}/v1/score", json={"texts": texts}, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 200, response.text
    return response.json()["rewards"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_batch_of_mixed_lengths_scores_each_item_at_its_last_real_token(decoder, side):
    server, model, tokenizer = decoder
    expected = last_token_rewards(model, tokenizer, TEXTS, side)
    np.testing.assert_allclose(served(server, TEXTS), expected, rtol=0, atol=SAME_REWARD)


def test_each_item_scores_in_a_batch_as_it_scores_alone(decoder):
    server, _, _ = decoder
    alone = [served(server, [text])[0] for text in TEXTS]
    np.testing.assert_allclose(served(server, TEXTS), alone, rtol=0, atol=SAME_REWARD)
    assert np.ptp(alone) > 100 * SAME_REWARD  # the items differ, so a mix-up would show


def test_an_openrlhf_value_head_checkpoint_loads_as_a_one_output_classifier(
    tmp_path, server_factory
):
    folder, model, tokenizer = build_decoder_classifier(tmp_path / "rm", architecture="llama")
    as_openrlhf_value_head(folder)
    server = server_factory(["--model", f"rm={folder}"])
    expected = last_token_rewards(model, tokenizer, TEXTS, "right")
    np.testing.assert_allclose(served(server, TEXTS), expected, rtol=0, atol=SAME_REWARD)
    listed = httpx.get(f"{server.url}/v1/models", timeout=HTTP_TIMEOUT_S).json()["models"]
    assert listed[0]["labels"] == ["LABEL_0"]


PAIRS = [
    ("What did you think of the film?", "I loved every minute of it."),
    ("Review:", "Thin."),
    ("Tell me about the plot.", "The plot is thin and the acting is worse."),
]


def test_input_format_chat_renders_prompt_and_completion_with_the_models_chat_template(
    tmp_path, server_factory
):
    folder, model, tokenizer = build_decoder_classifier(
        tmp_path / "rm", architecture="llama", reward_config={"input_format": "chat"}
    )
    server = server_factory(["--model", f"rm={folder}"])
    expected = []
    for prompt, completion in PAIRS:
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            expected.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    response = httpx.post(
        f"{server.url}/v1/score",
        json={"prompts": [p for p, _ in PAIRS], "completions": [c for _, c in PAIRS]},
        timeout=HTTP_TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["rewards"], expected, rtol=0, atol=SAME_REWARD)


def test_input_format_chat_without_a_chat_template_is_refused_at_load(tmp_path):
    folder, _, tokenizer = build_decoder_classifier(
        tmp_path / "rm", architecture="llama", reward_config={"input_format": "chat"}
    )
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="chat template"):
        load_model(ModelSpec(name="rm", source=str(folder)))
