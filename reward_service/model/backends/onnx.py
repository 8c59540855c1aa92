"""ONNX Runtime backend: the model.onnx that `reward-service export` writes, on CPU or CUDA."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reward_service.errors import ModelLoadError, first_line

ONNX_FILENAME = "model.onnx"
EXPORT_METADATA_FILENAME = "onnx_export.json"


def cpu_threads() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def session_options():
    """ONNX Runtime settings for serving: full graph optimisation, all cores on one run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One batch at a time per model (the engine's compute thread): all cores go to that one run.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = cpu_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; ORT's warnings are about its own fusions
    return options


def export_metadata(folder: Path) -> dict:
    path = folder / EXPORT_METADATA_FILENAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from None


class OnnxBackend:
    name = "onnx"

    def __init__(self, session, device: str, dtype: str) -> None:
        self.session = session
        self.device = device
        self.dtype = dtype
        self._input_names = [graph_input.name for graph_input in session.get_inputs()]

    @classmethod
    def load(
        cls,
        folder: Path,
        *,
        device: str,
        dtype: str,
        input_names: Sequence[str],
        num_labels: int,
    ) -> OnnxBackend:
        """Opens folder/model.onnx and checks now that it fits the tokenizer and config."""
        import onnxruntime as ort

        path = folder / ONNX_FILENAME
        if not path.is_file():
            raise ModelLoadError(
                f"{folder} has no {ONNX_FILENAME}: make one with "
                f"`reward-service export --model {folder} --out DIR`"
            )
        if dtype != "float32":
            raise ModelLoadError(
                f"the onnx backend runs the graph as exported; --dtype {dtype} does not apply "
                "(export with --quantize int8 for a smaller, faster model)"
            )
        providers, device_name = _providers(device, ort.get_available_providers())
        try:
            session = ort.InferenceSession(str(path), session_options(), providers=providers)
        except Exception as error:  # ORT raises its own untyped errors for a bad file
            raise ModelLoadError(
                f"could not load {path} with ONNX Runtime: {first_line(error)}"
            ) from None
        quantization = export_metadata(folder).get("quantization")
        backend = cls(session, device_name, quantization or "float32")
        backend.check_fits(path, input_names, num_labels)
        return backend

    def check_fits(self, path: Path, input_names: Sequence[str], num_labels: int) -> None:
        """A graph exported from another model must fail here, not at the first request."""
        graph_inputs = set(self._input_names)
        if graph_inputs != set(input_names):
            raise ModelLoadError(
                f"{path} takes inputs {sorted(graph_inputs)} but the tokenizer in its folder "
                f"produces {sorted(input_names)}: the graph was exported from another model"
            )
        for graph_input in self.session.get_inputs():
            if graph_input.type != "tensor(int64)" or len(graph_input.shape) != 2:
                raise ModelLoadError(
                    f"{path} input {graph_input.name!r} is {graph_input.type} of shape "
                    f"{graph_input.shape}; token ids of shape (batch, sequence) as int64 are needed"
                )
        outputs = self.session.get_outputs()
        if len(outputs) != 1:
            raise ModelLoadError(
                f"{path} has {len(outputs)} outputs ({', '.join(o.name for o in outputs)}); "
                "a sequence classifier's graph has one, the logits"
            )
        # The label dimension is usually static; a probe settles it either way.
        probe = {name: np.zeros((1, 2), dtype=np.int64) for name in self._input_names}
        if "attention_mask" in probe:
            probe["attention_mask"][:] = 1
        try:
            shape = self.forward(probe).shape
        except Exception as error:  # ORT raises its own untyped errors
            raise ModelLoadError(f"{path} fails on a probe input: {first_line(error)}") from None
        if shape != (1, num_labels):
            raise ModelLoadError(
                f"{path} returns logits of shape {shape} for one text, but config.json has "
                f"{num_labels} labels: the graph was exported from another model"
            )

    def forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {name: features[name] for name in self._input_names}
        (logits,) = self.session.run(None, inputs)
        return np.asarray(logits, dtype=np.float32)


def _providers(device: str, available: Sequence[str]) -> tuple[list[str], str]:
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cpu" or (device == "auto" and not has_cuda):
        return ["CPUExecutionProvider"], "cpu"
    index = "0" if device == "auto" else device.removeprefix("cuda").removeprefix(":") or "0"
    if not (device == "auto" or device.startswith("cuda")) or not index.isdigit():
        raise ModelLoadError(f"unknown device {device!r}: cpu, cuda, cuda:N or auto")
    if not has_cuda:
        raise ModelLoadError(
            f"device {device!r} was asked for, but this onnxruntime has only "
            f"{', '.join(available)} (onnxruntime-gpu brings CUDA)"
        )
    cuda = ("CUDAExecutionProvider", {"device_id": int(index)})
    return [cuda, "CPUExecutionProvider"], f"cuda:{index}"
