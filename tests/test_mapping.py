"""Specification of how classifier logits become rewards (reward_service.model.mapping)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from reward_service.errors import MappingError
from reward_service.model.inputs import fill_template, format_inputs
from reward_service.model.mapping import (
    KNOWN_MODEL_PRESETS,
    PRESETS,
    REWARD_CONFIG_FILENAME,
    Normalization,
    OutputSelector,
    ResolvedMapping,
    RewardMapping,
    build_mapping,
    detect_preset,
    load_reward_config,
    mapping_summary,
    resolve,
)

SENTIMENT_LABELS = {0: "NEGATIVE", 1: "POSITIVE"}
TOXICITY_LABELS = {
    0: "toxic",
    1: "severe_toxic",
    2: "obscene",
    3: "threat",
    4: "insult",
    5: "identity_hate",
}
HATE_LABELS = {0: "nothate", 1: "hate"}
SINGLE_LABEL = {0: "LABEL_0"}
THREE_CLASS_LABELS = {0: "negative", 1: "neutral", 2: "positive"}

LOGITS = np.array([[1.0, -2.0, 0.5], [-0.3, 4.0, 2.0]])


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softmax(row: list[float]) -> list[float]:
    total = sum(math.exp(value) for value in row)
    return [math.exp(value) / total for value in row]


def rewards(
    mapping: RewardMapping,
    labels: dict[int, str],
    logits: np.ndarray,
    problem_type: str | None = None,
) -> np.ndarray:
    resolved = resolve(mapping, id2label=labels, problem_type=problem_type)
    return resolved.map_logits(logits)


def preset_rewards(name: str, labels: dict[int, str], logits: np.ndarray) -> np.ndarray:
    mapping = build_mapping(model_ref="some/model", folder_mapping=None, preset=name)
    return rewards(mapping, labels, logits)


# --- activations -----------------------------------------------------------------------------


def test_activation_none_passes_the_raw_logit_through():
    mapping = RewardMapping(outputs=[OutputSelector(label=1)], activation="none")
    np.testing.assert_allclose(rewards(mapping, THREE_CLASS_LABELS, LOGITS), [-2.0, 4.0], atol=1e-9)


def test_activation_softmax_normalises_over_every_label_before_selecting():
    mapping = RewardMapping(outputs=[OutputSelector(label=1)], activation="softmax")
    expected = [softmax([1.0, -2.0, 0.5])[1], softmax([-0.3, 4.0, 2.0])[1]]
    np.testing.assert_allclose(rewards(mapping, THREE_CLASS_LABELS, LOGITS), expected, atol=1e-9)


def test_activation_log_softmax_is_the_log_of_softmax():
    mapping = RewardMapping(outputs=[OutputSelector(label=2)], activation="log_softmax")
    expected = [math.log(softmax([1.0, -2.0, 0.5])[2]), math.log(softmax([-0.3, 4.0, 2.0])[2])]
    np.testing.assert_allclose(rewards(mapping, THREE_CLASS_LABELS, LOGITS), expected, atol=1e-9)


def test_activation_sigmoid_is_elementwise():
    mapping = RewardMapping(outputs=[OutputSelector(label=0)], activation="sigmoid")
    expected = [sigmoid(1.0), sigmoid(-0.3)]
    np.testing.assert_allclose(rewards(mapping, THREE_CLASS_LABELS, LOGITS), expected, atol=1e-9)


def test_softmax_and_log_softmax_stay_finite_for_huge_logits():
    huge = np.array([[1000.0, 0.0], [-1000.0, 0.0]])
    softmax_mapping = RewardMapping(outputs=[OutputSelector(label=0)], activation="softmax")
    log_mapping = RewardMapping(outputs=[OutputSelector(label=0)], activation="log_softmax")
    np.testing.assert_allclose(rewards(softmax_mapping, SENTIMENT_LABELS, huge), [1.0, 0.0])
    np.testing.assert_allclose(rewards(log_mapping, SENTIMENT_LABELS, huge), [0.0, -1000.0])


def test_sigmoid_stays_finite_and_exact_at_the_extremes():
    extremes = np.array([[-1000.0], [0.0], [1000.0]])
    mapping = RewardMapping(activation="sigmoid")
    with np.errstate(over="raise", invalid="raise"):  # underflow to 0 is exact
        np.testing.assert_allclose(rewards(mapping, SINGLE_LABEL, extremes), [0.0, 0.5, 1.0])


def test_multi_label_classifiers_default_to_sigmoid():
    mapping = RewardMapping(outputs=[OutputSelector(label="toxic")])
    logits = np.array([[0.7, 0, 0, 0, 0, 0]])
    multi_label = rewards(mapping, TOXICITY_LABELS, logits, "multi_label_classification")
    np.testing.assert_allclose(multi_label, [sigmoid(0.7)], atol=1e-9)


def test_single_label_classifiers_default_to_no_activation():
    mapping = RewardMapping(outputs=[OutputSelector(label="toxic")])
    logits = np.array([[0.7, 0, 0, 0, 0, 0]])
    for problem_type in (None, "single_label_classification", "regression"):
        np.testing.assert_allclose(rewards(mapping, TOXICITY_LABELS, logits, problem_type), [0.7])


def test_an_explicit_activation_beats_the_multi_label_default():
    mapping = RewardMapping(outputs=[OutputSelector(label="toxic")], activation="none")
    logits = np.array([[0.7, 0, 0, 0, 0, 0]])
    multi_label = rewards(mapping, TOXICITY_LABELS, logits, "multi_label_classification")
    np.testing.assert_allclose(multi_label, [0.7])


# --- selecting, weighting, combining -----------------------------------------------------------


def test_labels_are_matched_by_name_case_insensitively():
    mapping = RewardMapping(outputs=[OutputSelector(label="Positive")])
    resolved = resolve(mapping, id2label=SENTIMENT_LABELS, problem_type=None)
    assert resolved.indices == (1,)


def test_a_label_name_and_its_index_select_the_same_output():
    by_name = RewardMapping(outputs=[OutputSelector(label="neutral")])
    by_index = RewardMapping(outputs=[OutputSelector(label=1)])
    np.testing.assert_array_equal(
        rewards(by_name, THREE_CLASS_LABELS, LOGITS), rewards(by_index, THREE_CLASS_LABELS, LOGITS)
    )


def test_a_numeric_string_selects_by_index_when_no_label_has_that_name():
    mapping = RewardMapping(outputs=[OutputSelector(label="1")])
    assert resolve(mapping, id2label=SENTIMENT_LABELS, problem_type=None).indices == (1,)


def test_a_label_named_like_a_number_wins_over_the_index_reading():
    mapping = RewardMapping(outputs=[OutputSelector(label="1")])
    labels = {0: "1", 1: "0"}
    assert resolve(mapping, id2label=labels, problem_type=None).indices == (0,)


def test_id2label_with_string_keys_as_in_raw_config_json_is_accepted():
    mapping = RewardMapping(outputs=[OutputSelector(label="POSITIVE")])
    labels = {"0": "NEGATIVE", "1": "POSITIVE"}
    assert resolve(mapping, id2label=labels, problem_type=None).indices == (1,)


def test_outputs_accept_bare_labels_as_shorthand():
    mapping = RewardMapping.model_validate({"outputs": ["POSITIVE", 0]})
    assert mapping.outputs == [OutputSelector(label="POSITIVE"), OutputSelector(label=0)]


def test_weighted_outputs_are_summed_by_default():
    mapping = RewardMapping(
        outputs=[OutputSelector(label="positive", weight=1.0), OutputSelector(label=0, weight=-0.5)]
    )
    expected = [0.5 - 0.5 * 1.0, 2.0 - 0.5 * -0.3]
    np.testing.assert_allclose(rewards(mapping, THREE_CLASS_LABELS, LOGITS), expected, atol=1e-9)


def test_reduce_max_takes_the_largest_weighted_output():
    mapping = RewardMapping(
        outputs=[OutputSelector(label=0), OutputSelector(label=2, weight=3.0)], reduce="max"
    )
    expected = [max(1.0, 3.0 * 0.5), max(-0.3, 3.0 * 2.0)]
    np.testing.assert_allclose(rewards(mapping, THREE_CLASS_LABELS, LOGITS), expected, atol=1e-9)


def test_reduce_min_takes_the_smallest_weighted_output():
    mapping = RewardMapping(
        outputs=[OutputSelector(label=0), OutputSelector(label=2)], reduce="min"
    )
    np.testing.assert_allclose(rewards(mapping, THREE_CLASS_LABELS, LOGITS), [0.5, -0.3])


def test_reduce_max_or_min_without_outputs_combines_every_label():
    for reduce, expected in (("max", [1.0, 4.0]), ("min", [-2.0, -0.3])):
        mapping = RewardMapping(reduce=reduce)
        resolved = resolve(mapping, id2label=THREE_CLASS_LABELS, problem_type=None)
        assert resolved.indices == (0, 1, 2)
        np.testing.assert_allclose(resolved.map_logits(LOGITS), expected)


def test_the_same_label_may_be_selected_twice_and_counts_twice():
    mapping = RewardMapping(outputs=[OutputSelector(label=0), OutputSelector(label=0)])
    np.testing.assert_allclose(rewards(mapping, THREE_CLASS_LABELS, LOGITS), [2.0, -0.6])


# --- scale, shift, normalization ---------------------------------------------------------------


def test_the_reward_is_scaled_then_shifted_then_normalized():
    mapping = RewardMapping(
        outputs=[OutputSelector(label=0)],
        scale=2.0,
        shift=3.0,
        normalization=Normalization(mean=1.0, std=4.0),
    )
    expected = [((2.0 * 1.0 + 3.0) - 1.0) / 4.0, ((2.0 * -0.3 + 3.0) - 1.0) / 4.0]
    np.testing.assert_allclose(rewards(mapping, THREE_CLASS_LABELS, LOGITS), expected, atol=1e-9)


def test_negative_scale_flips_the_sign():
    mapping = RewardMapping(outputs=[OutputSelector(label=1)], scale=-1.0)
    np.testing.assert_allclose(rewards(mapping, THREE_CLASS_LABELS, LOGITS), [2.0, -4.0])


def test_without_normalization_the_mean_is_zero_and_the_std_one():
    resolved = resolve(RewardMapping(), id2label=SINGLE_LABEL, problem_type=None)
    assert (resolved.mean, resolved.std) == (0.0, 1.0)


def test_rewards_are_float64_of_shape_batch_even_for_float32_logits():
    resolved = resolve(RewardMapping(), id2label=SINGLE_LABEL, problem_type=None)
    result = resolved.map_logits(np.zeros((5, 1), dtype=np.float32))
    assert result.dtype == np.float64
    assert result.shape == (5,)


def test_an_empty_batch_gives_no_rewards():
    resolved = resolve(RewardMapping(reduce="max"), id2label=SENTIMENT_LABELS, problem_type=None)
    assert resolved.map_logits(np.zeros((0, 2))).shape == (0,)


def test_map_logits_rejects_logits_that_are_not_two_dimensional():
    resolved = resolve(RewardMapping(), id2label=SINGLE_LABEL, problem_type=None)
    with pytest.raises(ValueError, match="shape"):
        resolved.map_logits(np.zeros(3))


def test_map_logits_rejects_logits_narrower_than_the_selected_index():
    resolved = ResolvedMapping(
        indices=(3,), weights=(1.0,), activation="none", reduce="sum", scale=1.0, shift=0.0
    )
    with pytest.raises(ValueError, match="index 3"):
        resolved.map_logits(np.zeros((1, 2)))


# --- default output selection ------------------------------------------------------------------


def test_a_single_label_model_defaults_to_its_only_logit():
    resolved = resolve(RewardMapping(), id2label=SINGLE_LABEL, problem_type=None)
    assert resolved.indices == (0,)
    assert resolved.weights == (1.0,)


def test_a_two_label_model_defaults_to_the_label_named_positive():
    labels = {0: "POSITIVE", 1: "NEGATIVE"}
    assert resolve(RewardMapping(), id2label=labels, problem_type=None).indices == (0,)


def test_a_two_label_model_defaults_to_the_label_named_pos():
    labels = {0: "pos", 1: "neg"}
    assert resolve(RewardMapping(), id2label=labels, problem_type=None).indices == (0,)


def test_a_two_label_model_without_a_positive_label_defaults_to_index_one():
    labels = {0: "LABEL_0", 1: "LABEL_1"}
    assert resolve(RewardMapping(), id2label=labels, problem_type=None).indices == (1,)


# --- errors ------------------------------------------------------------------------------------


def test_more_than_two_labels_without_outputs_asks_to_choose_outputs():
    with pytest.raises(MappingError, match="outputs") as caught:
        resolve(RewardMapping(), id2label=THREE_CLASS_LABELS, problem_type=None)
    assert "0=negative, 1=neutral, 2=positive" in str(caught.value)


def test_an_unknown_label_name_lists_the_models_labels():
    mapping = RewardMapping(outputs=[OutputSelector(label="happy")])
    with pytest.raises(MappingError, match="'happy'.*0=NEGATIVE, 1=POSITIVE"):
        resolve(mapping, id2label=SENTIMENT_LABELS, problem_type=None)


def test_an_index_out_of_range_is_rejected():
    mapping = RewardMapping(outputs=[OutputSelector(label=2)])
    with pytest.raises(MappingError, match="index 2 is out of range.*2 labels"):
        resolve(mapping, id2label=SENTIMENT_LABELS, problem_type=None)


def test_a_negative_index_is_rejected_rather_than_counted_from_the_end():
    mapping = RewardMapping(outputs=[OutputSelector(label=-1)])
    with pytest.raises(MappingError, match="out of range"):
        resolve(mapping, id2label=SENTIMENT_LABELS, problem_type=None)


def test_a_label_name_matching_two_labels_case_insensitively_is_ambiguous():
    mapping = RewardMapping(outputs=[OutputSelector(label="pos")])
    with pytest.raises(MappingError, match="several"):
        resolve(mapping, id2label={0: "POS", 1: "pos"}, problem_type=None)


def test_a_model_without_labels_is_rejected():
    with pytest.raises(MappingError, match="id2label"):
        resolve(RewardMapping(), id2label={}, problem_type=None)


def test_a_model_whose_label_indices_have_gaps_is_rejected():
    with pytest.raises(MappingError, match="id2label"):
        resolve(RewardMapping(), id2label={0: "a", 2: "b"}, problem_type=None)


@pytest.mark.parametrize(
    "fields",
    [
        {"normalization": {"mean": 0.0, "std": 0.0}},
        {"normalization": {"mean": 0.0, "std": -1.0}},
        {"template": "{prompt} only"},
        {"outputs": []},
        {"activation": "relu"},
        {"reduce": "mean"},
        {"input_format": "messages"},
        {"truncation_side": "middle"},
        {"max_length": 0},
        {"scael": 2.0},
        {"outputs": [{"label": "x", "wieght": 2.0}]},
    ],
)
def test_invalid_fields_are_rejected_as_mapping_errors_naming_the_field(fields):
    field_name = next(iter(fields))
    with pytest.raises(MappingError, match=field_name):
        build_mapping(model_ref="some/model", folder_mapping=None, overrides=fields)


# --- presets on logits shaped like their models -------------------------------------------------


def test_the_sentiment_preset_rewards_the_raw_positive_logit():
    logits = np.array([[2.0, -1.5], [-0.5, 3.0]])
    np.testing.assert_allclose(preset_rewards("sentiment", SENTIMENT_LABELS, logits), [-1.5, 3.0])
    assert PRESETS["sentiment"].input_format == "template"


def test_the_toxicity_preset_rewards_minus_the_probability_of_toxic():
    logits = np.array([[2.0, 5.0, 5.0, 5.0, 5.0, 5.0], [-1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    expected = [-sigmoid(2.0), -sigmoid(-1.0)]
    result = preset_rewards("toxicity", TOXICITY_LABELS, logits)
    np.testing.assert_allclose(result, expected, atol=1e-9)


def test_the_toxicity_any_preset_rewards_one_minus_the_most_likely_label():
    logits = np.array([[-3.0, -4.0, 1.5, -2.0, 0.0, -5.0], [-6.0, -6.0, -6.0, -6.0, -6.0, -1.0]])
    expected = [1.0 - sigmoid(1.5), 1.0 - sigmoid(-1.0)]
    result = preset_rewards("toxicity-any", TOXICITY_LABELS, logits)
    np.testing.assert_allclose(result, expected, atol=1e-9)


def test_the_hate_preset_rewards_the_nothate_logit():
    logits = np.array([[1.25, -0.75], [-2.0, 2.5]])
    np.testing.assert_allclose(preset_rewards("hate", HATE_LABELS, logits), [1.25, -2.0])


def test_the_reward_model_preset_rewards_the_single_logit_of_a_text_pair():
    logits = np.array([[-4.5], [0.25]])
    np.testing.assert_allclose(preset_rewards("reward-model", SINGLE_LABEL, logits), [-4.5, 0.25])
    assert PRESETS["reward-model"].input_format == "pair"


def test_every_known_model_names_an_existing_preset():
    assert set(KNOWN_MODEL_PRESETS.values()) <= set(PRESETS)


def test_presets_are_immutable_so_no_caller_can_change_them_for_everyone():
    with pytest.raises(Exception, match="frozen"):
        PRESETS["sentiment"].scale = 2.0


# --- detect_preset ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_ref", "preset"),
    [
        ("lvwerra/distilbert-imdb", "sentiment"),
        ("distilbert-base-uncased-finetuned-sst-2-english", "sentiment"),
        ("distilbert/distilbert-base-uncased-finetuned-sst-2-english", "sentiment"),
        ("unitary/toxic-bert", "toxicity"),
        ("Unitary/Toxic-BERT", "toxicity"),
        ("facebook/roberta-hate-speech-dynabench-r4-target", "hate"),
        ("OpenAssistant/reward-model-deberta-v3-large-v2", "reward-model"),
        ("openassistant/reward-model-deberta-v3-large", "reward-model"),
        ("OpenAssistant/reward-model-deberta-v3-base", "reward-model"),
    ],
)
def test_detect_preset_knows_hub_ids_case_insensitively(model_ref, preset):
    assert detect_preset(model_ref) == preset


@pytest.mark.parametrize(
    "path",
    [
        "/cache/unitary/toxic-bert",
        "/cache/unitary/toxic-bert/",
        "models/unitary/toxic-bert",
        "/root/.cache/huggingface/hub/models--unitary--toxic-bert/snapshots/0123abc",
    ],
)
def test_detect_preset_finds_a_hub_id_at_the_end_of_a_local_path(path):
    assert detect_preset(path) == "toxicity"


def test_detect_preset_finds_an_organisationless_id_as_the_last_path_component():
    assert detect_preset("/models/distilbert-base-uncased-finetuned-sst-2-english") == "sentiment"


@pytest.mark.parametrize(
    "model_ref", ["bert-base-uncased", "/models/my-model", "unitary/toxic-bert-v2", "toxic-bert"]
)
def test_detect_preset_returns_none_for_unknown_models(model_ref):
    assert detect_preset(model_ref) is None


# --- build_mapping: layer precedence ------------------------------------------------------------


def test_a_known_model_gets_its_detected_preset():
    mapping = build_mapping(model_ref="unitary/toxic-bert", folder_mapping=None)
    assert mapping.preset == "toxicity"
    assert mapping.outputs == [OutputSelector(label="toxic")]
    assert mapping.scale == -1.0


def test_an_unknown_model_without_layers_gets_the_defaults():
    mapping = build_mapping(model_ref="/models/mine", folder_mapping=None)
    assert mapping == RewardMapping()


def test_the_folder_config_overrides_the_detected_preset_only_where_it_sets_fields():
    folder = RewardMapping(scale=-2.0)
    mapping = build_mapping(model_ref="unitary/toxic-bert", folder_mapping=folder)
    assert mapping.scale == -2.0
    assert mapping.activation == "sigmoid"
    assert mapping.outputs == [OutputSelector(label="toxic")]
    assert mapping.preset == "toxicity"


def test_an_explicit_preset_overrides_the_folder_config_only_where_the_preset_sets_fields():
    folder = RewardMapping(scale=5.0, template="Q: {prompt} A: {completion}")
    mapping = build_mapping(model_ref="/models/mine", folder_mapping=folder, preset="toxicity")
    assert mapping.scale == -1.0  # set by the preset
    assert mapping.template == "Q: {prompt} A: {completion}"  # not set by the preset
    assert mapping.preset == "toxicity"


def test_an_explicit_preset_replaces_the_detected_one():
    mapping = build_mapping(model_ref="unitary/toxic-bert", folder_mapping=None, preset="hate")
    assert mapping.preset == "hate"
    assert mapping.outputs == [OutputSelector(label="nothate")]
    assert mapping.scale == -1.0  # toxicity set it, hate does not: unset fields don't clobber


def test_overrides_win_over_every_other_layer():
    folder = RewardMapping(shift=1.0, max_length=128)
    mapping = build_mapping(
        model_ref="unitary/toxic-bert",
        folder_mapping=folder,
        preset="toxicity-any",
        overrides={"shift": 0.5, "activation": "none"},
    )
    assert mapping.shift == 0.5
    assert mapping.activation == "none"
    assert mapping.max_length == 128
    assert mapping.reduce == "max"


def test_overrides_are_validated_into_typed_fields():
    mapping = build_mapping(
        model_ref="/models/mine",
        folder_mapping=None,
        overrides={
            "outputs": [{"label": "toxic", "weight": 2}],
            "normalization": {"mean": 1, "std": 2},
        },
    )
    assert mapping.outputs == [OutputSelector(label="toxic", weight=2.0)]
    assert mapping.normalization == Normalization(mean=1.0, std=2.0)


def test_an_override_of_none_resets_a_field_to_its_default_meaning():
    folder = RewardMapping(normalization=Normalization(mean=0.0, std=2.0))
    mapping = build_mapping(
        model_ref="/models/mine", folder_mapping=folder, overrides={"normalization": None}
    )
    assert mapping.normalization is None


def test_a_folder_config_that_names_a_preset_starts_from_it():
    folder = RewardMapping(preset="toxicity", shift=0.25)
    mapping = build_mapping(model_ref="/models/mine", folder_mapping=folder)
    assert mapping.preset == "toxicity"
    assert mapping.outputs == [OutputSelector(label="toxic")]
    assert mapping.shift == 0.25


def test_an_unknown_explicit_preset_lists_the_known_names():
    with pytest.raises(MappingError, match="'nope'.*hate, reward-model, sentiment"):
        build_mapping(model_ref="/models/mine", folder_mapping=None, preset="nope")


def test_an_unknown_preset_named_in_the_folder_config_is_rejected():
    with pytest.raises(MappingError, match="'nope'"):
        build_mapping(model_ref="/models/mine", folder_mapping=RewardMapping(preset="nope"))


def test_the_merged_mapping_remembers_only_the_fields_some_layer_set():
    mapping = build_mapping(
        model_ref="unitary/toxic-bert", folder_mapping=None, overrides={"max_length": 64}
    )
    assert "max_length" in mapping.model_fields_set
    assert "template" not in mapping.model_fields_set


# --- format_inputs ------------------------------------------------------------------------------

PROMPTS = ["Say hi.", "Count {to} 3."]
COMPLETIONS = [" Hi!", " 1 {completion} 2, 3"]


def test_ready_texts_are_passed_through_whatever_the_input_format():
    for input_format in ("text", "pair", "template"):
        mapping = RewardMapping(input_format=input_format)
        assert format_inputs(mapping, texts=["a {b}", "c"]) == ["a {b}", "c"]


def test_text_format_scores_the_completion_alone():
    mapping = RewardMapping(input_format="text")
    formatted = format_inputs(mapping, prompts=PROMPTS, completions=COMPLETIONS)
    assert formatted == COMPLETIONS


def test_pair_format_gives_the_tokenizer_prompt_completion_pairs():
    mapping = RewardMapping(input_format="pair")
    formatted = format_inputs(mapping, prompts=PROMPTS, completions=COMPLETIONS)
    assert formatted == [("Say hi.", " Hi!"), ("Count {to} 3.", " 1 {completion} 2, 3")]


def test_the_default_template_concatenates_prompt_and_completion():
    formatted = format_inputs(RewardMapping(), prompts=PROMPTS, completions=COMPLETIONS)
    assert formatted == ["Say hi. Hi!", "Count {to} 3. 1 {completion} 2, 3"]


def test_a_custom_template_places_prompt_and_completion():
    mapping = RewardMapping(template="User: {prompt}\nAssistant:{completion}")
    formatted = format_inputs(mapping, prompts=["Hello"], completions=[" Hi"])
    assert formatted == ["User: Hello\nAssistant: Hi"]


def test_placeholders_inside_user_text_are_not_substituted_again():
    assert fill_template("{prompt}|{completion}", "{completion}", "{prompt}") == (
        "{completion}|{prompt}"
    )


def test_other_braces_in_the_template_are_kept_literally():
    template = '{"q": "{prompt}", "a": "{completion}", "n": {0}}'
    assert fill_template(template, "x", "y") == '{"q": "x", "a": "y", "n": {0}}'


def test_a_template_may_leave_out_the_prompt():
    mapping = RewardMapping(template="Answer: {completion}")
    assert format_inputs(mapping, prompts=["ignored"], completions=["42"]) == ["Answer: 42"]


def test_missing_prompts_are_empty_prompts():
    mapping = RewardMapping(input_format="pair")
    assert format_inputs(mapping, completions=["a"]) == [("", "a")]


def test_prompts_and_completions_must_have_equal_lengths():
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        format_inputs(RewardMapping(), prompts=["a", "b"], completions=["c"])


def test_format_inputs_needs_texts_or_completions():
    with pytest.raises(ValueError, match="texts or completions"):
        format_inputs(RewardMapping(), prompts=["a"])


# --- load_reward_config -------------------------------------------------------------------------


def write_config(folder: Path, content: str) -> None:
    (folder / REWARD_CONFIG_FILENAME).write_text(content, encoding="utf-8")


def test_a_folder_without_reward_config_has_no_folder_mapping(tmp_path):
    assert load_reward_config(tmp_path) is None


def test_a_partial_reward_config_sets_only_its_fields(tmp_path):
    write_config(tmp_path, json.dumps({"outputs": [{"label": "POSITIVE"}], "scale": 2}))
    mapping = load_reward_config(tmp_path)
    assert mapping == RewardMapping(outputs=[OutputSelector(label="POSITIVE")], scale=2.0)
    assert mapping.model_fields_set == {"outputs", "scale"}


def test_a_full_reward_config_round_trips(tmp_path):
    original = RewardMapping(
        preset="sentiment",
        description="tuned",
        outputs=[OutputSelector(label=1, weight=0.5)],
        activation="softmax",
        reduce="min",
        scale=-2.0,
        shift=0.1,
        normalization=Normalization(mean=0.3, std=1.7),
        input_format="pair",
        template="<{prompt}>{completion}",
        max_length=256,
        truncation_side="left",
    )
    write_config(tmp_path, original.model_dump_json())
    assert load_reward_config(tmp_path) == original


def test_invalid_json_names_the_file_and_the_position(tmp_path):
    write_config(tmp_path, '{"scale": 2,,}')
    with pytest.raises(
        MappingError, match=r"reward_config\.json: invalid JSON at line 1"
    ) as caught:
        load_reward_config(tmp_path)
    assert "\n" not in str(caught.value)


def test_a_schema_error_names_the_file_and_the_field(tmp_path):
    write_config(tmp_path, json.dumps({"normalization": {"mean": 0, "std": 0}}))
    with pytest.raises(MappingError, match=r"reward_config\.json: normalization\.std") as caught:
        load_reward_config(tmp_path)
    assert "\n" not in str(caught.value)


def test_an_unknown_field_in_the_file_is_rejected_by_name(tmp_path):
    write_config(tmp_path, json.dumps({"activaton": "sigmoid"}))
    with pytest.raises(MappingError, match="activaton"):
        load_reward_config(tmp_path)


def test_a_file_that_is_not_a_json_object_is_rejected(tmp_path):
    write_config(tmp_path, "[1, 2]")
    with pytest.raises(MappingError, match=r"reward_config\.json: \(top level\)"):
        load_reward_config(tmp_path)


def test_a_file_that_is_not_utf8_is_rejected(tmp_path):
    (tmp_path / REWARD_CONFIG_FILENAME).write_bytes(b'{"description": "\xff"}')
    with pytest.raises(MappingError, match="UTF-8"):
        load_reward_config(tmp_path)


# --- mapping_summary ----------------------------------------------------------------------------


def test_the_summary_describes_outputs_by_name_and_index_and_is_json_ready():
    mapping = build_mapping(
        model_ref="unitary/toxic-bert",
        folder_mapping=None,
        overrides={"normalization": {"mean": 0.5, "std": 2.0}},
    )
    resolved = resolve(mapping, id2label=TOXICITY_LABELS, problem_type="multi_label_classification")
    summary = mapping_summary(mapping, resolved, TOXICITY_LABELS)
    assert summary == {
        "preset": "toxicity",
        "description": PRESETS["toxicity"].description,
        "outputs": [{"label": "toxic", "index": 0, "weight": 1.0}],
        "activation": "sigmoid",
        "reduce": "sum",
        "scale": -1.0,
        "shift": 0.0,
        "normalization": {"mean": 0.5, "std": 2.0},
        "input_format": "text",
        "template": "{prompt}{completion}",
        "max_length": None,
        "truncation_side": "right",
        "strip_markup": ["chatml", "llama3", "llama2", "special-tokens"],
    }
    assert json.loads(json.dumps(summary)) == summary


def test_the_summary_reports_the_resolved_defaults():
    mapping = RewardMapping()
    resolved = resolve(mapping, id2label=SENTIMENT_LABELS, problem_type=None)
    summary = mapping_summary(mapping, resolved, SENTIMENT_LABELS)
    assert summary["outputs"] == [{"label": "POSITIVE", "index": 1, "weight": 1.0}]
    assert summary["activation"] == "none"
    assert summary["normalization"] is None
