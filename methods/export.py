"""Export a trained detector's scoring graph for the edge, and run exported models.

``insplad export CHECKPOINT --format onnx|openvino --out DIR`` writes::

    DIR/model.onnx            (or model.xml + model.bin for OpenVINO)
    DIR/preprocess.json       what the graph expects and returns (format ``insplad-export/1``)

The exported graph takes RGB images already resized to ``image_size`` x ``image_size`` (bilinear,
as :func:`methods.data.load_images_uint8` does) and scaled to [0, 1], NCHW float32, any batch size.
ImageNet normalisation and any test-time transforms the method applies (DifferNet's fixed
rotations) are inside the graph, so a deployment only resizes and divides by 255. Outputs: ``score``
(B,) and, for methods with maps, ``map`` (B, H, W) at the input resolution.

ONNX export uses torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``), which needs the
``onnx`` and ``onnxscript`` packages; running needs ``onnxruntime`` (``pip install "insplad[deploy]"``)
or ``openvino``. A method whose scoring cannot be expressed as one graph says so through
:meth:`methods.base.Detector.export_module`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from insplad_tools import __version__
from insplad_tools.errors import InspladError
from insplad_tools.fsutil import atomic_output_dir, sha256_file
from methods.base import ImageResult

EXPORT_FORMAT = "insplad-export/1"
SPEC_FILE = "preprocess.json"
FORMATS = ("onnx", "openvino")
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
OPSET = 18


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InspladError(f"{module} is not installed: pip install \"insplad[{extra}]\"") from exc


def export_detector(checkpoint: Path, out: Path, fmt: str = "onnx", *, batch_size: int = 2, overwrite: bool = False,
                    log: Any = None) -> Path:
    """Export the finished detector in ``checkpoint`` to ``out`` (written atomically); returns the model file."""
    from methods.registry import load_detector

    if fmt not in FORMATS:
        raise InspladError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    _require("onnx", "deploy")
    _require("onnxscript", "deploy")
    if fmt == "openvino":
        _require("openvino", "openvino")
    detector = load_detector(Path(checkpoint), "cpu")
    module = detector.export_module().eval()
    size = detector.run.image_size
    example = torch.rand(batch_size, 3, size, size)
    with torch.no_grad():
        reference = module(example)
    outputs = ["score", "map"] if isinstance(reference, tuple) else ["score"]
    with atomic_output_dir(Path(out), overwrite=overwrite) as tmp:
        onnx_path = tmp / MODEL_FILES["onnx"]
        start = time.perf_counter()
        _onnx_export(module, example, onnx_path, outputs)
        graph_batch = _graph_batch(onnx_path)
        if fmt == "openvino":
            ov = _require("openvino", "openvino")
            ov.save_model(ov.convert_model(str(onnx_path)), str(tmp / MODEL_FILES["openvino"]), compress_to_fp16=False)
            onnx_path.unlink()
        spec = {
            "format": EXPORT_FORMAT,
            "runtime": fmt,
            "model": MODEL_FILES[fmt],
            "method": detector.name,
            "variant": detector.variant(),
            "image_size": size,
            "input": {"name": "image", "shape": ["batch", 3, size, size], "dtype": "float32",
                      "preprocessing": f"RGB, resized to {size}x{size} (bilinear), values scaled to [0, 1]; "
                                       "normalisation and test-time transforms are inside the graph"},
            "outputs": {"score": "(batch,) anomaly score, higher = more anomalous",
                        **({"map": f"(batch, {size}, {size}) anomaly map"} if "map" in outputs else {})},
            "batch": graph_batch,
            "opset": OPSET,
            "checkpoint_sha256": sha256_file(Path(checkpoint)),
            "insplad_version": __version__,
            "torch_version": torch.__version__,
        }
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
        if log is not None:
            log(f"exported {detector.name} to {fmt} in {time.perf_counter() - start:.1f} s")
    return Path(out) / MODEL_FILES[fmt]


def _onnx_export(module: torch.nn.Module, example: torch.Tensor, path: Path, outputs: list[str]) -> None:
    import contextlib
    import io
    import logging

    # AUTO keeps the batch dimension dynamic where the method's code allows it and fixes it to the
    # example's size where the code specialises on it; ExportedModel pads to a fixed batch.
    batch = torch.export.Dim.AUTO
    sink = io.StringIO()
    # The dynamo exporter reports each phase on stdout; the CLI prints its own one-line summary.
    previous = logging.getLogger("torch.onnx").level
    try:
        with contextlib.redirect_stdout(sink), torch.no_grad():
            program = torch.onnx.export(module, (example,), dynamo=True, input_names=["image"],
                                        output_names=outputs, dynamic_shapes=({0: batch},), opset_version=OPSET,
                                        verbose=False)
        program.save(str(path))
    except InspladError:
        raise
    except Exception as exc:  # exporter errors are long; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InspladError(f"ONNX export failed ({type(exc).__name__}: {first})") from exc
    finally:
        logging.getLogger("torch.onnx").setLevel(previous)


def _graph_batch(path: Path) -> int | str:
    """The exported input's batch dimension: an int when the graph fixed it, else "dynamic"."""
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") else "dynamic"


@dataclass
class ExportedModel:
    """An exported model folder, run with ONNX Runtime or OpenVINO on the CPU."""

    folder: Path
    spec: dict[str, Any]
    _run: Any

    @classmethod
    def open(cls, folder: Path) -> ExportedModel:
        folder = Path(folder)
        spec_path = folder / SPEC_FILE
        if not spec_path.is_file():
            raise InspladError(f"{folder}: not an exported model folder (no {SPEC_FILE}; run insplad export)")
        try:
            spec = json.loads(spec_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InspladError(f"{spec_path}: not valid JSON ({exc})") from exc
        if not isinstance(spec, dict) or spec.get("format") != EXPORT_FORMAT:
            raise InspladError(f"{spec_path}: not an {EXPORT_FORMAT} description")
        runtime, size = spec.get("runtime"), spec.get("image_size")
        if runtime not in FORMATS or spec.get("model") != MODEL_FILES.get(runtime):
            raise InspladError(f"{spec_path}: runtime/model must be one of {MODEL_FILES}")
        if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 8192:
            raise InspladError(f"{spec_path}: image_size must be an integer in [16, 8192]")
        model_path = folder / spec["model"]
        if not model_path.is_file():
            raise InspladError(f"{model_path}: model file missing")
        if runtime == "onnx":
            ort = _require("onnxruntime", "deploy")
            try:
                options = ort.SessionOptions()
                options.log_severity_level = 3  # shape notes about the traced example batch are noise
                session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
                raise InspladError(f"{model_path}: ONNX Runtime cannot load it ({type(exc).__name__})") from exc

            def run(batch: np.ndarray) -> list[np.ndarray]:
                return session.run(None, {"image": batch})
        else:
            ov = _require("openvino", "openvino")
            try:
                # f32 explicitly: on CPUs with bf16 units OpenVINO would otherwise lower the precision.
                compiled = ov.Core().compile_model(str(model_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            except Exception as exc:  # openvino raises RuntimeError subclasses for bad IR
                raise InspladError(f"{model_path}: OpenVINO cannot load it ({type(exc).__name__})") from exc

            def run(batch: np.ndarray) -> list[np.ndarray]:
                result = compiled(batch)
                return [np.asarray(result[output]) for output in compiled.outputs]
        return cls(folder, spec, run)

    @property
    def image_size(self) -> int:
        return int(self.spec["image_size"])

    @property
    def fixed_batch(self) -> int | None:
        batch = self.spec.get("batch")
        return batch if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0 else None

    def run_batch(self, images01: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (B,) and maps (B, H, W) or None for a float32 batch in [0, 1], NCHW."""
        images01 = np.ascontiguousarray(images01, dtype=np.float32)
        fixed, n = self.fixed_batch, len(images01)
        chunks = [images01] if fixed is None else [images01[i:i + fixed] for i in range(0, n, fixed)]
        scores, maps = [], []
        for chunk in chunks:
            if fixed is not None and len(chunk) < fixed:  # graphs with a fixed batch get zero padding
                chunk = np.concatenate([chunk, np.zeros((fixed - len(chunk), *chunk.shape[1:]), np.float32)])
            outputs = self._run(chunk)
            scores.append(np.asarray(outputs[0], dtype=np.float64).reshape(-1))
            if len(outputs) > 1:
                maps.append(np.asarray(outputs[1], dtype=np.float32))
        return np.concatenate(scores)[:n], (np.concatenate(maps)[:n] if maps else None)

    def predict(self, paths: Sequence[Path], batch_size: int = 8) -> list[ImageResult]:
        from methods.data import load_images_uint8

        results: list[ImageResult] = []
        paths = list(paths)
        for start in range(0, len(paths), max(1, batch_size)):
            batch = load_images_uint8(paths[start:start + batch_size], self.image_size).numpy().astype(np.float32) / 255
            scores, maps = self.run_batch(batch)
            for i, score in enumerate(scores):
                results.append(ImageResult(float(score), None if maps is None else maps[i]))
        return results
