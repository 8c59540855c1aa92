"""Model loading: what is accepted, and the one-line errors for what is not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import WAIT_S
from safetensors.torch import load_file

from reward_service.errors import ModelLoadError
from reward_service.model.loading import load_model, resolve_model_folder
from reward_service.model.spec import ModelSpec


@pytest.fixture
def classifier(tiny_model_factory):
    return tiny_model_factory(
        "loading-sentiment", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
    )


def copy_of(folder, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def test_a_local_classifier_folder_loads_with_its_mapping(classifier):
    model = load_model(ModelSpec(name="m", source=str(classifier)))
    assert model.backend.name == "torch"
    assert model.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    assert model.resolved.indices == (1,)
    assert model.encoder.max_length == 128


def test_a_missing_folder_is_a_one_line_error():
    with pytest.raises(ModelLoadError, match="does not exist") as caught:
        resolve_model_folder("./no/such/folder", allow_pickle=False)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("config.json", "no config.json"),
        ("tokenizer.json", "no tokenizer"),
        ("model.safetensors", "no weights"),
    ],
)
def test_an_incomplete_folder_names_what_is_missing(classifier, tmp_path, remove, message):
    folder = copy_of(classifier, tmp_path)
    (folder / remove).unlink()
    if remove == "tokenizer.json":
        (folder / "vocab.txt").unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match=message):
        resolve_model_folder(str(folder), allow_pickle=False)


def test_pickle_only_weights_are_refused_unless_explicitly_allowed(classifier, tmp_path):
    folder = copy_of(classifier, tmp_path)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()

    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_model(ModelSpec(name="m", source=str(folder)))
    model = load_model(ModelSpec(name="m", source=str(folder), allow_pickle=True))
    assert model.backend.name == "torch"


def test_a_base_encoder_without_a_trained_head_is_refused(tmp_path):
    from reward_service.training.base_encoder import minilm_folder

    with pytest.raises(ModelLoadError, match="not a trained sequence classifier"):
        load_model(ModelSpec(name="m", source=str(minilm_folder())))


def test_a_hub_id_offline_fails_naming_the_id_and_the_offline_mode():
    with pytest.raises(ModelLoadError) as caught:
        resolve_model_folder("unitary/toxic-bert", allow_pickle=False)
    message = str(caught.value)
    assert "unitary/toxic-bert" in message and "HF_HUB_OFFLINE" in message
    assert "\n" not in message


def test_a_known_hub_id_layout_gets_its_preset_without_a_reward_config(
    tiny_model_factory, tmp_path
):
    labels = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
    source = tiny_model_factory(
        "toxic-lookalike", labels=labels, problem_type="multi_label_classification"
    )
    folder = copy_of(source, tmp_path / "unitary", "toxic-bert")
    model = load_model(ModelSpec(name="m", source=str(folder)))
    assert model.mapping.preset == "toxicity"
    assert (model.resolved.indices, model.resolved.activation, model.resolved.scale) == (
        (0,),
        "sigmoid",
        -1.0,
    )


def test_a_bad_reward_config_is_a_one_line_error(classifier, tmp_path):
    folder = copy_of(classifier, tmp_path)
    (folder / "reward_config.json").write_text(json.dumps({"outputs": ["NO_SUCH_LABEL"]}))
    with pytest.raises(ModelLoadError, match="NO_SUCH_LABEL"):
        load_model(ModelSpec(name="m", source=str(folder)))


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "reward_service.cli", *args],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )


def test_score_command_prints_rewards_as_json(classifier):
    result = run_cli("score", "--model", str(classifier), "great movie", "awful", "--raw")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert len(body["rewards"]) == 2 and len(body["raw"]) == 2
    assert body["rewards"] == [row[1] for row in body["raw"]]


def test_score_command_overrides_the_mapping_from_flags(classifier):
    result = run_cli(
        "score",
        "--model",
        str(classifier),
        "great movie",
        "--raw",
        "--output=NEGATIVE",
        "--scale=-2",
        "--shift=1",
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["rewards"][0] == pytest.approx(-2 * body["raw"][0][0] + 1, abs=1e-6)


def test_cli_errors_are_one_line_without_a_traceback(tmp_path):
    result = run_cli("score", "--model", str(tmp_path / "missing"), "text")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "does not exist" in result.stderr
