"""The pieces of a PPO rollout: prompt files, the prompt stream, generation, decoding, log-probs
under padding, the value model, background scoring, and the PPO settings."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from helpers import build_word_level_lm

from policy_trainer.config import ConfigError, PPOConfig, build_config
from policy_trainer.forward import position_ids_from_attention_mask, response_logprobs
from policy_trainer.models import load_policy
from policy_trainer.prompts import (
    PromptFileError,
    PromptRecord,
    PromptStream,
    encode_prompts,
    read_prompts,
)
from policy_trainer.rollout import (
    BackgroundScorer,
    Generation,
    decode_completions,
    generate_responses,
    left_pad,
    truncate_after_eos,
)
from policy_trainer.value_model import build_policy_and_value
from reward_service.client import Unavailable


@pytest.fixture(scope="module")
def word_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_word_level_lm(tmp_path_factory.mktemp("rollout") / "policy")


@pytest.fixture(scope="module")
def policy(word_lm: Path):
    return load_policy(word_lm)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


# --- padding, EOS, decoding --------------------------------------------------------------------


def test_prompts_are_left_padded_and_positions_count_from_the_first_real_token():
    prompt_ids, mask = left_pad([[5, 6, 7], [8]], pad_id=1)
    assert prompt_ids.tolist() == [[5, 6, 7], [1, 1, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids_from_attention_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_a_response_is_cut_after_its_first_eos_and_the_rest_is_masked_padding():
    responses = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [1, 9, 9, 9]])
    cut, mask, ended = truncate_after_eos(responses, eos_token_id=1, pad_token_id=0)
    assert cut.tolist() == [[5, 1, 0, 0], [5, 6, 7, 8], [1, 0, 0, 0]]
    # The EOS itself is a real token (it carries the score); what follows it is not.
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_completions_keep_the_space_that_joins_them_to_their_prompt(policy):
    _, tokenizer = policy
    prompt_ids, _ = left_pad([ids(tokenizer, "the movie was"), ids(tokenizer, "a film")], 1)
    response_ids = torch.tensor(
        [ids(tokenizer, "good film <eos>"), ids(tokenizer, "bad <eos> the")]
    )
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    completions = decode_completions(tokenizer, prompt_ids, response_ids, mask)
    # A word-level tokenizer joins words with spaces: the completion must start with one, or the
    # reward model would read "the movie wasgood".
    assert completions == [" good film", " bad"]


def test_generated_responses_stop_at_eos_and_decode_without_special_tokens(policy):
    model, tokenizer = policy
    torch.manual_seed(0)
    prompts = [ids(tokenizer, text) for text in ["the movie was", "a", "this story is very"]] * 8
    generation = generate_responses(model, tokenizer, prompts, max_new_tokens=6, temperature=1.0)
    assert generation.response_ids.shape[1] <= 6
    assert generation.prompt_ids.shape == (24, 4) and generation.prompt_mask[1].tolist() == [
        0,
        0,
        0,
        1,
    ]
    eos = tokenizer.eos_token_id
    for row, mask, ended, text in zip(
        generation.response_ids,
        generation.response_mask,
        generation.ended_with_eos,
        generation.completions,
        strict=True,
    ):
        length = int(mask.sum())
        assert mask[:length].eq(1).all() and mask[length:].eq(0).all()
        assert (eos in row[: length - 1].tolist()) is False  # nothing real follows an EOS
        assert bool(ended) == (row[length - 1].item() == eos)
        assert "<eos>" not in text
    assert generation.ended_with_eos.any() and not generation.ended_with_eos.all()


def test_batched_log_probs_under_left_padding_equal_each_sequence_scored_alone(policy):
    """Position ids from the attention mask: a padded prompt must score like an unpadded one."""
    model, tokenizer = policy
    prompts = [ids(tokenizer, "the movie was very"), ids(tokenizer, "a")]
    responses = torch.tensor([ids(tokenizer, "good film <eos>"), ids(tokenizer, "bad plot <eos>")])

    def generation(rows: list[int]) -> Generation:
        prompt_ids, prompt_mask = left_pad([prompts[row] for row in rows], 1)
        return Generation(
            prompt_ids,
            prompt_mask,
            responses[rows],
            torch.ones(len(rows), 3),
            ["?"] * len(rows),
            torch.ones(len(rows), dtype=torch.bool),
        )

    together, _ = response_logprobs(model, generation([0, 1]), temperature=0.7)
    alone = torch.cat(
        [response_logprobs(model, generation([row]), temperature=0.7)[0] for row in (0, 1)]
    )
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_log_probs_are_those_of_the_distribution_at_the_sampling_temperature(policy):
    model, tokenizer = policy
    prompt_ids, prompt_mask = left_pad([ids(tokenizer, "the movie was")], 1)
    response = torch.tensor([ids(tokenizer, "good")])
    generation = Generation(
        prompt_ids,
        prompt_mask,
        response,
        torch.ones(1, 1),
        ["good"],
        torch.zeros(1, dtype=torch.bool),
    )
    with torch.no_grad():
        logits = model(input_ids=generation.input_ids).logits[0, -2]
    expected = torch.log_softmax(logits / 0.5, dim=-1)[response[0, 0]]
    logprobs, _ = response_logprobs(model, generation, temperature=0.5)
    torch.testing.assert_close(logprobs[0, 0], expected, atol=1e-5, rtol=0)


# --- the value model ---------------------------------------------------------------------------


@pytest.mark.parametrize("value_model", ["separate", "shared"])
def test_the_value_head_starts_at_zero_and_gives_one_value_per_response_token(
    word_lm: Path, value_model: str
):
    policy, tokenizer = load_policy(word_lm)
    module = build_policy_and_value(policy, str(word_lm), value_model)
    input_ids = torch.tensor([ids(tokenizer, "the movie was good film")])
    logits, values = module(input_ids, torch.ones_like(input_ids), 2, 1.0)
    assert logits.shape == (1, 2, policy.config.vocab_size)
    assert values.shape == (1, 2) and values.eq(0).all()
    added = sum(p.numel() for p in module.parameters()) - sum(
        p.numel() for p in policy.parameters()
    )
    head_only = added == policy.config.hidden_size + 1  # shared: a head; separate: a trunk too
    assert head_only == (value_model == "shared")


# --- scoring in the background -----------------------------------------------------------------


def test_scoring_runs_in_the_background_while_the_caller_goes_on():
    started, release = threading.Event(), threading.Event()

    def score(prompts: list[str], completions: list[str]) -> list[float]:
        started.set()
        assert release.wait(10), "the caller never got to run while scoring was in flight"
        return [float(len(c)) for c in completions]

    scorer = BackgroundScorer(score)
    try:
        job = scorer.submit(["p", "q"], ["a", "bcd"])
        assert started.wait(10)  # the call is running, and this thread is free to work
        release.set()
        scores, times = job.result()
    finally:
        scorer.close()
    assert scores == [1.0, 3.0]
    assert 0 < times.overlap_s <= times.score_s


def test_a_scoring_failure_reaches_the_caller_as_the_clients_error():
    def score(prompts: list[str], completions: list[str]) -> list[float]:
        raise Unavailable("the service is down")

    scorer = BackgroundScorer(score)
    try:
        with pytest.raises(Unavailable, match="down"):
            scorer.submit(["p"], ["c"]).result()
    finally:
        scorer.close()


# --- prompt files and the prompt stream --------------------------------------------------------


def test_prompt_files_take_text_prompts_chat_prompts_and_plain_lines(tmp_path: Path):
    jsonl = tmp_path / "prompts.jsonl"
    chat = [{"role": "user", "content": "Hi"}]
    jsonl.write_text(
        "\n".join(
            [
                json.dumps({"prompt": "The movie was"}),
                json.dumps({"prompt": chat}),
                "",
                json.dumps({"messages": chat}),
            ]
        )
    )
    assert read_prompts(jsonl) == [
        PromptRecord(text="The movie was"),
        PromptRecord(messages=chat),
        PromptRecord(messages=chat),
    ]
    plain = tmp_path / "prompts.txt"
    plain.write_text("The movie was\n\nThis film is\n")
    assert read_prompts(plain) == [
        PromptRecord(text="The movie was"),
        PromptRecord(text="This film is"),
    ]


def test_a_malformed_prompt_line_is_reported_with_its_file_and_line(tmp_path: Path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": 3}) + "\n")
    with pytest.raises(PromptFileError, match=r"prompts.jsonl:2: 'prompt' must be"):
        read_prompts(path)


def test_chat_prompts_use_the_chat_template_for_the_policy_and_role_lines_for_the_reward(
    tiny_causal_lm_factory, policy
):
    chat = [{"role": "user", "content": "Hi"}]
    _, chatml_tokenizer = load_policy(tiny_causal_lm_factory("ppo-chat"))
    (encoded,) = encode_prompts([PromptRecord(messages=chat)], chatml_tokenizer)
    assert chatml_tokenizer.decode(encoded.input_ids).endswith("<|im_start|>assistant\n")
    assert encoded.reward_prompt == "user: Hi\nassistant: "
    _, no_template = policy
    with pytest.raises(PromptFileError, match="chat template"):
        encode_prompts([PromptRecord(messages=chat)], no_template)


def test_long_prompts_keep_their_last_tokens(policy):
    _, tokenizer = policy
    (encoded,) = encode_prompts(
        [PromptRecord(text="the movie was very good")], tokenizer, max_prompt_tokens=2
    )
    assert tokenizer.decode(encoded.input_ids) == "very good"


def test_the_prompt_stream_reshuffles_every_pass_and_continues_from_its_position():
    whole = PromptStream(5, seed=3).take(12)
    assert sorted(whole[:5]) == sorted(whole[5:10]) == list(range(5))  # each pass: all, once
    assert whole[:5] != whole[5:10]  # a fresh order each pass (seeded, so this one is fixed)
    first = PromptStream(5, seed=3)
    head = first.take(7)
    assert head + PromptStream(5, seed=3, position=first.position).take(5) == whole


# --- settings ----------------------------------------------------------------------------------


def test_flags_override_the_config_file_which_overrides_the_defaults(tmp_path: Path):
    path = tmp_path / "ppo.yaml"
    path.write_text("learning_rate: 3.0e-6\nbatch_size: 32\nkl_controller: adaptive\n")
    config = build_config(path, {"batch_size": 16})
    assert (config.learning_rate, config.batch_size, config.kl_controller) == (3e-6, 16, "adaptive")
    assert config.ppo_epochs == PPOConfig().ppo_epochs == 4


def test_unusable_settings_are_refused_naming_the_setting(tmp_path: Path):
    path = tmp_path / "ppo.json"
    path.write_text(json.dumps({"clip_range": -1}))
    with pytest.raises(ConfigError, match="clip_range"):
        build_config(path)
    with pytest.raises(ConfigError, match="batch_size .10. must be a multiple"):
        build_config(None, {"batch_size": 10, "num_mini_batches": 4})
    with pytest.raises(ConfigError, match="learning_rat"):
        build_config(None, {"learning_rat": 1e-5})
