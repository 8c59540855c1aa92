"""Loading policies: the default policy's GGUF conversion, and clear failures for bad sources.

The conversion test loads the real SmolLM2-135M-Instruct GGUF file once for the module (~25 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from policy_trainer.models import (
    DEFAULT_POLICY_DIRNAME,
    PolicyLoadError,
    default_policy_folder,
    default_policy_gguf,
    load_gguf_policy,
    load_policy,
    resolve_policy_source,
    save_plain_policy,
)

PROMPT = "The best thing about this movie is"
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def gguf_policy():
    model, tokenizer = load_gguf_policy(default_policy_gguf())
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def policy_cache(gguf_policy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir holding the converted default policy where `default_policy_folder` looks."""
    cache_dir = tmp_path_factory.mktemp("policy-cache")
    save_plain_policy(*gguf_policy, cache_dir / "models" / DEFAULT_POLICY_DIRNAME)
    return cache_dir


def greedy_tokens(model, tokenizer, prompt: str) -> list[int]:
    import torch

    encoded = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(
            **encoded, do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=2
        )
    return output[0, encoded["input_ids"].shape[1] :].tolist()


def test_converted_default_policy_generates_the_same_greedy_tokens_as_the_gguf_model(
    gguf_policy, policy_cache: Path
):
    gguf_model, gguf_tokenizer = gguf_policy
    model, tokenizer = load_policy(default_policy_folder(policy_cache))

    assert tokenizer(PROMPT)["input_ids"] == gguf_tokenizer(PROMPT)["input_ids"]
    expected = greedy_tokens(gguf_model, gguf_tokenizer, PROMPT)
    assert len(expected) == NEW_TOKENS
    assert greedy_tokens(model, tokenizer, PROMPT) == expected


def test_converted_default_policy_is_a_plain_folder_with_the_chat_template(policy_cache: Path):
    from transformers import AutoConfig, AutoTokenizer

    folder = default_policy_folder(policy_cache)
    config = AutoConfig.from_pretrained(folder)
    assert getattr(config, "quantization_config", None) is None
    assert config.architectures == ["LlamaForCausalLM"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"


def test_default_policy_folder_reuses_a_completed_conversion(policy_cache: Path):
    folder = policy_cache / "models" / DEFAULT_POLICY_DIRNAME
    weights_mtime_ns = (folder / "model.safetensors").stat().st_mtime_ns

    assert default_policy_folder(policy_cache) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights_mtime_ns
    # The command reads the cache from REWARD_SERVICE_CACHE and prints the folder.
    result = subprocess.run(
        [sys.executable, "-m", "policy_trainer.cli", "prepare-default"],
        env={**os.environ, "REWARD_SERVICE_CACHE": str(policy_cache)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights_mtime_ns


def test_a_hub_id_fails_offline_naming_the_id():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(PolicyLoadError, match=r"'HuggingFaceTB/SmolLM2-135M'.*HF_HUB_OFFLINE"):
        load_policy("HuggingFaceTB/SmolLM2-135M")


def test_a_folder_without_config_json_fails_clearly(tmp_path: Path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(PolicyLoadError, match="no config.json"):
        resolve_policy_source(tmp_path)


def test_a_missing_local_path_fails_clearly(tmp_path: Path):
    with pytest.raises(PolicyLoadError, match="no such model folder"):
        load_policy(tmp_path / "missing")
