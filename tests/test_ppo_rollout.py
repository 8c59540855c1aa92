"""The pieces of a PPO rollout: prompt files, the prompt stream, generation, decoding, log-probs
under padding, the value model, background scoring, and the PPO settings."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import pytest
import torch
from helpers import build_word_level_lm

from policy_trainer.config import ConfigError, LoraOptions, PPOConfig, build_config
from policy_trainer.forward import (
    position_ids_from_attention_mask,
    response_logits,
    response_logprobs,
)
from policy_trainer.lora import apply_lora
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


@pytest.fixture(scope="module")
def gpt2(tiny_causal_lm_factory) -> Path:
    """A tiny GPT-2: absolute position embeddings, so a misplaced position changes its output
    (rotary positions, as in the word-level Llama, can't tell a constant shift)."""
    return tiny_causal_lm_factory("rollout-gpt2", architecture="gpt2")


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def left_padded_generation(tokenizer, prompts: list[str], responses: list[str]) -> Generation:
    """Prompts and responses as generation leaves them: prompts left-padded, each response ended
    by EOS and padded after it."""
    eos = tokenizer.eos_token_id
    prompt_ids, prompt_mask = left_pad([ids(tokenizer, text) for text in prompts], eos)
    tokens = [ids(tokenizer, text) + [eos] for text in responses]
    length = max(len(response) for response in tokens)
    response_ids = torch.tensor(
        [response + [eos] * (length - len(response)) for response in tokens]
    )
    response_mask = torch.tensor([[1.0] * len(r) + [0.0] * (length - len(r)) for r in tokens])
    ended = torch.ones(len(responses), dtype=torch.bool)
    return Generation(prompt_ids, prompt_mask, response_ids, response_mask, responses, ended)


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


def test_left_padding_leaves_the_log_probs_of_a_model_with_absolute_positions_unchanged(gpt2):
    model, tokenizer = load_policy(gpt2)
    prompts, responses = ["One of the best films of", "A", "I loved"], [" the year", " it", " a"]
    batch = left_padded_generation(tokenizer, prompts, responses)
    together, _ = response_logprobs(model, batch, temperature=0.7)
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        alone = left_padded_generation(tokenizer, [prompt], [response])
        expected, _ = response_logprobs(model, alone, temperature=0.7)
        # float32 passes over batches of other shapes: a few ulps of log-probs of order 1-10.
        length = expected.shape[1]
        torch.testing.assert_close(together[row, :length], expected[0], atol=1e-5, rtol=0)
        assert batch.response_mask[row, length:].eq(0).all()


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


@pytest.mark.parametrize("value_model", ["separate", "shared"])
def test_logits_and_values_are_read_where_each_response_token_is_predicted(
    gpt2: Path, value_model: str
):
    """For response token t: logits / T and the value of the state before it, i.e. of the prompt
    and the response's first t tokens alone, whatever the padding."""
    policy, tokenizer = load_policy(gpt2)
    module = build_policy_and_value(policy, str(gpt2), value_model)
    head = module.value_head if value_model == "shared" else module.value_model.head
    torch.manual_seed(0)
    with torch.no_grad():  # a head that says something: a zero one reads 0 anywhere
        head.linear.weight.normal_()
        head.linear.bias.normal_()
    generation = left_padded_generation(
        tokenizer, ["One of the best films of", "I loved"], [" the year", " it"]
    )
    response_length = generation.response_ids.shape[1]
    with torch.no_grad():
        logits, values = module(
            generation.input_ids, generation.attention_mask, response_length, 0.5
        )
        for row in range(2):
            prompt = generation.prompt_ids[row][generation.prompt_mask[row].bool()]
            for t in range(int(generation.response_lengths[row])):
                # prompt + response[:t], unpadded
                state = torch.cat([prompt, generation.response_ids[row, :t]])[None]
                if value_model == "shared":
                    output = policy(state, output_hidden_states=True)
                    value = module.value_head(output.hidden_states[-1])[0, -1]
                else:
                    output = policy(state)
                    value = module.value_model(state, torch.ones_like(state))[0, -1]
                # float32 passes over other shapes: a few ulps of logits and values of order 1.
                torch.testing.assert_close(
                    logits[row, t], output.logits[0, -1] / 0.5, atol=1e-5, rtol=0
                )
                torch.testing.assert_close(values[row, t], value, atol=1e-5, rtol=0)


# --- sampling: exactly from softmax(logits / T) ------------------------------------------------

# Sampling settings a model folder's generation_config.json may hold, which generate() applies
# unless told otherwise: Qwen2.5-Instruct ships top_k 20, top_p 0.8 and repetition_penalty 1.05;
# the rest are other logits processors a folder can switch on.
FOLDER_SAMPLING_SETTINGS = {
    "do_sample": True,
    "temperature": 1.3,
    "top_k": 20,
    "top_p": 0.8,
    "repetition_penalty": 1.05,
    "min_p": 0.05,
    "typical_p": 0.9,
    "no_repeat_ngram_size": 2,
    "min_new_tokens": 3,
    "suppress_tokens": [5, 6],
    "bad_words_ids": [[7]],
    "forced_eos_token_id": 2,
    "exponential_decay_length_penalty": [2, 1.5],
}


def record_scores(model, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The processed scores of each generation step of `model.generate`, the scores its tokens
    are sampled from (softmax of them), recorded with generate()'s own `output_scores`."""
    scores: list[torch.Tensor] = []
    generate = model.generate

    def generate_recording_scores(*args, generation_config, **kwargs):
        recording = copy.deepcopy(generation_config)
        recording.output_scores = recording.return_dict_in_generate = True
        output = generate(*args, generation_config=recording, **kwargs)
        scores.extend(output.scores)
        return output.sequences

    monkeypatch.setattr(model, "generate", generate_recording_scores)
    return scores


@pytest.mark.parametrize(
    ("folder_settings", "lora"),
    [(None, False), (FOLDER_SAMPLING_SETTINGS, False), (FOLDER_SAMPLING_SETTINGS, True)],
    ids=["no-settings", "folder-settings", "folder-settings-lora"],
)
def test_responses_are_sampled_from_the_whole_softmax_at_the_temperature_whatever_the_folder_says(
    tiny_causal_lm_factory,
    monkeypatch: pytest.MonkeyPatch,
    folder_settings: dict | None,
    lora: bool,
):
    """Every score a token is sampled from is logits / T, at every position of every response:
    no logits processor from the folder, none from the library's defaults (top_k 50), also
    under LoRA's peft wrapper; and the positions of the tokens generation adds are those the
    scoring passes give them (a GPT-2, whose absolute positions tell)."""
    name = "gpt2-" + ("plain" if folder_settings is None else "folder-sampling")
    folder = tiny_causal_lm_factory(name, architecture="gpt2", generation_config=folder_settings)
    model, tokenizer = load_policy(folder)
    if folder_settings is not None:  # the folder does ask for them
        assert (model.generation_config.top_k, model.generation_config.top_p) == (20, 0.8)
    if lora:
        model = apply_lora(model, LoraOptions(r=4, target_modules=["c_attn"]))
    scores = record_scores(model, monkeypatch)
    prompts = [ids(tokenizer, text) for text in ["The movie was", "A", "One of the best"]] * 2
    torch.manual_seed(0)
    generation = generate_responses(model, tokenizer, prompts, max_new_tokens=8, temperature=0.7)
    if folder_settings is not None:  # set aside for the call only: the model keeps (and saves) them
        kept = model.get_base_model() if lora else model
        assert kept.generation_config.top_k == 20

    sampled_from = torch.stack(scores, dim=1)  # (batch, response length, vocabulary)
    assert sampled_from.shape[2] == model.config.vocab_size == 300  # more than top-k 50 keeps
    logits, _ = response_logits(
        model,
        generation.input_ids,
        generation.attention_mask,
        generation.response_ids.shape[1],
        temperature=0.7,
    )
    real = generation.response_mask.bool()  # after its EOS a row's tokens are padding
    assert real.sum() > len(prompts)  # responses of more than one token
    # KV-cached decoding against one pass over the whole sequence: float32 rounding of logits of
    # order 1, divided by 0.7.
    torch.testing.assert_close(sampled_from[real], logits[real], atol=1e-5, rtol=0)


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


@pytest.mark.parametrize("setting", [{"top_k": 50}, {"top_p": 0.9}])
def test_ppo_refuses_top_k_and_top_p_sampling_saying_why(setting: dict):
    # PPO's log-probs are those of the whole softmax(logits / T): it must sample from it.
    (name,) = setting
    with pytest.raises(ConfigError, match=f"{name}: .* truncated distribution.*whole softmax"):
        build_config(None, setting)
