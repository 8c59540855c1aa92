"""ONNX export and the onnx backend: same rewards as PyTorch, same serving path, clear refusals."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from helpers import HTTP_TIMEOUT_S, WAIT_S

from reward_service.cli import main
from reward_service.engine.engine import Engine
from reward_service.engine.schemas import ScoreRequest
from reward_service.errors import ExportError, ModelLoadError
from reward_service.export.onnx import export_model
from reward_service.model.loading import LoadedModel, load_model
from reward_service.model.spec import ModelSpec

# Mixed lengths: one word, sentences, and one past the tiny model's 128 positions (truncated).
TEXTS = [
    "ok",
    "This answer is helpful and clear.",
    "The assistant refused to help, which was rude and not what the user asked for at all.",
    "Short.",
    " ".join(["a long rambling response that keeps going"] * 12),
    "Step one: read the question. Step two: answer it. Step three: check the answer is right.",
    "No.",
    "I think the summary leaves out the most important detail of the story.",
]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_factory) -> Path:
    # Reward = 100 x the POSITIVE logit: a random tiny model's logits differ by ~1e-3 between
    # texts; scaled, rewards spread far past the 1e-4 bound, which a padding bug would break.
    return tiny_model_factory(
        "onnx-tiny",
        labels=["NEGATIVE", "POSITIVE"],
        reward_config={"outputs": ["POSITIVE"], "activation": "none", "scale": 100},
    )


@pytest.fixture(scope="module")
def exported(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    export_model(str(tiny_model), out)
    return out


def load(folder: Path, backend: str = "auto") -> LoadedModel:
    return load_model(ModelSpec(name="m", source=str(folder), backend=backend))


def rewards(model: LoadedModel, texts: list[str]) -> np.ndarray:
    features = model.encoder.pad(model.encoder.encode(texts))
    return model.resolved.map_logits(model.backend.forward(features))


async def score_in_process(folder: Path, texts: list[str]) -> list[float]:
    engine = Engine([ModelSpec(name="m", source=str(folder))])
    await engine.start()
    try:
        return (await engine.score(ScoreRequest(texts=texts))).rewards
    finally:
        await engine.stop()


def copy_with_graph(folder: Path, destination: Path, graph: onnx.ModelProto) -> Path:
    shutil.copytree(folder, destination)
    onnx.save(graph, destination / "model.onnx")
    return destination


def test_export_writes_graph_tokenizer_configs_and_metadata(exported: Path, tiny_model: Path):
    names = {path.name for path in exported.iterdir()}
    assert {"model.onnx", "tokenizer.json", "config.json", "onnx_export.json"} <= names
    assert "model.safetensors" not in names
    metadata = json.loads((exported / "onnx_export.json").read_text())
    assert metadata["source"] == str(tiny_model.resolve())
    assert metadata["opset"] == 17
    assert metadata["quantization"] is None
    assert metadata["parity_with_torch"]["max_abs_logit_diff"] < 1e-4


def test_exported_graph_has_dynamic_batch_and_sequence_axes(exported: Path):
    graph = onnx.load(exported / "model.onnx").graph
    for graph_input in graph.input:
        batch, sequence = graph_input.type.tensor_type.shape.dim
        assert batch.dim_param and sequence.dim_param, graph_input.name


def test_a_folder_with_model_onnx_is_served_by_the_onnx_backend(exported: Path):
    model = load(exported)
    assert (model.backend.name, model.backend.device, model.backend.dtype) == (
        "onnx",
        "cpu",
        "float32",
    )


def test_fp32_onnx_rewards_equal_torch_within_1e_4(exported: Path, tiny_model: Path):
    torch_model, onnx_model = load(tiny_model, "torch"), load(exported, "onnx")
    batched = rewards(onnx_model, TEXTS)
    one_by_one = np.concatenate([rewards(onnx_model, [text]) for text in TEXTS])
    reference = rewards(torch_model, TEXTS)
    assert np.ptp(reference) > 0.1  # the texts' rewards differ, so equality means something
    np.testing.assert_allclose(batched, reference, atol=1e-4, rtol=0)
    np.testing.assert_allclose(one_by_one, reference, atol=1e-4, rtol=0)


def test_serving_an_exported_folder_over_rest_returns_in_process_onnx_rewards(
    exported: Path, server_factory
):
    expected = asyncio.run(score_in_process(exported, TEXTS))
    server = server_factory(["--model", f"tiny={exported}"])
    response = httpx.post(f"{server.url}/v1/score", json={"texts": TEXTS}, timeout=HTTP_TIMEOUT_S)
    response.raise_for_status()
    np.testing.assert_allclose(response.json()["rewards"], expected, atol=1e-6, rtol=0)
    (info,) = httpx.get(f"{server.url}/v1/models", timeout=HTTP_TIMEOUT_S).json()["models"]
    assert info["backend"] == "onnx"


def test_int8_export_from_the_cli_records_its_recipe_and_serves(
    tiny_model: Path, exported: Path, tmp_path: Path, capsys
):
    out = tmp_path / "int8"
    assert (
        main(["export", "--model", str(tiny_model), "--out", str(out), "--quantize", "int8"]) == 0
    )
    metadata = json.loads((out / "onnx_export.json").read_text())
    assert metadata["quantization"] == "int8"
    assert metadata["int8_recipe"]["per_channel"] is True
    assert json.loads(capsys.readouterr().out)["parity_with_torch"]["texts"] > 0
    assert (out / "model.onnx").stat().st_size < (exported / "model.onnx").stat().st_size
    model = load(out)
    assert model.backend.dtype == "int8"
    assert rewards(model, TEXTS).shape == (len(TEXTS),)


def test_export_refuses_a_folder_that_is_not_empty(tiny_model: Path, tmp_path: Path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an empty folder"):
        export_model(str(tiny_model), tmp_path)


def test_onnx_backend_on_a_folder_without_model_onnx_says_how_to_make_one(tiny_model: Path):
    with pytest.raises(ModelLoadError, match="reward-service export"):
        load(tiny_model, "onnx")


def test_a_graph_with_other_input_names_is_refused_at_load(exported: Path, tmp_path: Path):
    graph = onnx.load(exported / "model.onnx")
    for graph_input in graph.graph.input:
        if graph_input.name == "token_type_ids":
            graph_input.name = "segment_ids"
    for node in graph.graph.node:
        node.input[:] = ["segment_ids" if name == "token_type_ids" else name for name in node.input]
    folder = copy_with_graph(exported, tmp_path / "renamed", graph)
    with pytest.raises(ModelLoadError, match=r"takes inputs .*segment_ids.* tokenizer"):
        load(folder)


def test_a_graph_with_two_outputs_is_refused_at_load(exported: Path, tmp_path: Path):
    graph = onnx.load(exported / "model.onnx")
    extra = onnx.ValueInfoProto(name=graph.graph.node[0].output[0])
    graph.graph.output.append(extra)
    folder = copy_with_graph(exported, tmp_path / "two-outputs", graph)
    with pytest.raises(ModelLoadError, match="has 2 outputs"):
        load(folder)


def test_a_graph_from_a_model_with_other_labels_is_refused_at_load(
    exported: Path, tiny_model_factory, tmp_path: Path
):
    three_labels = tiny_model_factory(
        "onnx-three-labels", labels=["a", "b", "c"], reward_config={"outputs": ["c"]}
    )
    folder = tmp_path / "three-labels"
    shutil.copytree(three_labels, folder)
    shutil.copyfile(exported / "model.onnx", folder / "model.onnx")
    with pytest.raises(ModelLoadError, match=r"shape \(1, 2\).*3 labels"):
        load(folder)


def test_serve_exits_with_the_mismatch_before_answering(
    exported: Path, tiny_model_factory, tmp_path: Path, server_factory
):
    three_labels = tiny_model_factory(
        "onnx-three-labels", labels=["a", "b", "c"], reward_config={"outputs": ["c"]}
    )
    folder = tmp_path / "mismatch"
    shutil.copytree(three_labels, folder)
    shutil.copyfile(exported / "model.onnx", folder / "model.onnx")
    server = server_factory(["--model", str(folder)], wait_ready=False)
    assert server.process.wait(timeout=WAIT_S) == 2
    assert "config.json has 3 labels" in server.log()
