"""GPU execution options (methods.accel): channels_last, --compile, CUDA graphs; CPU behaviour and wiring.

No GPU here: CUDA graphs can only be checked for their CPU fallback (benchmarks/gpu_latency.py checks
graph replays against eager on a GPU). torch.compile runs for real, through dynamo with the "eager"
backend (inductor's C++ build takes tens of seconds cold, too slow for the suite).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import methods.accel as accel
from insplad_tools.errors import InspladError
from insplad_tools.mvtec import read_category
from methods.base import RunConfig
from methods.registry import build_detector, load_detector

EAD_TINY = {"pdn_width": 8, "out_channels": 8}
DIFFERNET_TINY = {"n_scales": 1, "flow_width": 32, "coupling_blocks": 2, "n_transforms": 2, "n_transforms_test": 4}


def _run(**kw) -> RunConfig:
    return RunConfig(epochs=1, batch_size=1, image_size=64, device="cpu", pretrained=False, progress=False, workers=0,
                     **kw)


@pytest.fixture(scope="module")
def disc(toy_dataset: Path):
    return read_category(toy_dataset, "disc")


@pytest.fixture(scope="module")
def efficientad(disc):
    """A trained tiny EfficientAD (random teacher) and its test images."""
    detector = build_detector("efficientad", {**EAD_TINY, "steps": "4"}, _run())
    detector.fit([s.path for s in disc.train])
    return detector, [s.path for s in disc.test[::4]]  # good and anomalous


def _predict(detector, paths) -> tuple[np.ndarray, np.ndarray]:
    results = detector.predict(paths)
    return np.array([r.score for r in results]), np.stack([r.map for r in results])


def test_channels_last_auto_is_cuda_only_and_bad_values_are_one_line_errors() -> None:
    assert accel.resolve_channels_last("auto", "cpu") is False
    assert accel.resolve_channels_last("auto", "cuda") is True
    assert accel.resolve_channels_last("on", "cpu") is True and accel.resolve_channels_last("off", "cuda") is False
    with pytest.raises(InspladError, match="--channels-last 'nhwc'"):
        accel.resolve_channels_last("nhwc", "cpu")
    # graphs apply only on CUDA and only to methods that declare a graph batch
    assert accel.Execution.of(_run(), "cpu", 1) == accel.Execution(False, False, False)
    assert accel.Execution.of(_run(), "cuda", 1).cuda_graphs and not accel.Execution.of(_run(), "cuda", 0).cuda_graphs


def test_cpu_defaults_run_the_plain_model(efficientad) -> None:
    """Nothing wraps inference on the CPU by default, so CPU scores are exactly the eager ones."""
    detector, _ = efficientad
    assert detector.cuda_graph_batch == 1
    assert detector.inference_module(detector.model) is detector.model
    differnet = build_detector("differnet", DIFFERNET_TINY, _run())
    model = differnet._ensure_model()
    assert differnet.inference_module(model) is model


def test_channels_last_on_cpu_changes_layout_not_scores(efficientad) -> None:
    detector, paths = efficientad
    scores, maps = _predict(detector, paths)
    detector.run.channels_last = "on"
    try:
        wrapped = detector.inference_module(detector.model)
        assert isinstance(wrapped, accel.ChannelsLastInput)
        conv = next(m for m in detector.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        nhwc_scores, nhwc_maps = _predict(detector, paths)
    finally:
        detector.run.channels_last = "auto"
    np.testing.assert_allclose(nhwc_scores, scores, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(nhwc_maps, maps, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["padim", "simplenet"])
def test_every_map_method_runs_channels_last(method) -> None:
    """The layout CUDA gets by default works through each model (no stride-dependent view anywhere)."""
    detector = build_detector(method, {}, _run())
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        ref = detector.profile_forward(x)
        detector.run.channels_last = "on"
        out = detector.profile_forward(x)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_compile_goes_through_torch_compile_with_the_same_scores(efficientad, monkeypatch) -> None:
    monkeypatch.setattr(accel, "COMPILE_BACKEND", "eager")  # real dynamo tracing, no C++ build
    detector, paths = efficientad
    scores, maps = _predict(detector, paths)
    detector.run.compile = True
    try:
        wrapped = detector.inference_module(detector.model)
        assert isinstance(wrapped, accel.CompiledModule)
        assert isinstance(wrapped.compiled, torch._dynamo.eval_frame.OptimizedModule)
        compiled_scores, compiled_maps = _predict(detector, paths)
    finally:
        detector.run.compile = False
    np.testing.assert_allclose(compiled_scores, scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(compiled_maps, maps, rtol=1e-5, atol=1e-6)
    assert detector.inference_module(detector.model) is detector.model  # flag off again: plain model


def test_compile_failures_are_one_clear_line(efficientad, monkeypatch, tmp_path: Path) -> None:
    def broken_backend(graph, example_inputs):  # what a failing inductor build looks like to dynamo
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

    detector, paths = efficientad
    monkeypatch.setattr(accel, "COMPILE_BACKEND", broken_backend)
    detector.run.compile = True
    try:
        with pytest.raises(InspladError) as info:
            detector.predict(paths[:1])
    finally:
        detector.run.compile = False
    message = info.value.message
    assert message.startswith("--compile: torch.compile failed on cpu") and "InvalidCxxCompiler" in message
    assert "\n" not in message and "without --compile" in message

    from methods.cli import profile

    monkeypatch.setattr(accel, "COMPILE_BACKEND", "inductor")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    result = CliRunner().invoke(profile, ["--method", "efficientad", "--image-size", "64", "--device", "cpu",
                                          "--batch-sizes", "1", "--repeats", "1", "--option", "pdn_width=8",
                                          "--option", "out_channels=8", "--compile"])
    assert result.exit_code != 0
    assert "needs a C++ compiler" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cuda_graph_path_falls_back_to_eager_on_cpu(efficientad) -> None:
    detector, paths = efficientad
    graphed = accel.CUDAGraphModule(detector.model, max_batch=1)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        eager = detector.model(x)
        out = graphed(x)
    assert torch.equal(out[0], eager[0]) and torch.equal(out[1], eager[1])
    assert graphed.captures == 0 and graphed.replays == 0 and not graphed.graphs
    scores, maps = _predict(detector, paths)
    detector.run.cuda_graphs = False
    try:
        eager_scores, eager_maps = _predict(detector, paths)
    finally:
        detector.run.cuda_graphs = True
    assert np.array_equal(scores, eager_scores) and np.array_equal(maps, eager_maps)


def test_flags_reach_results_profile_and_predict(toy_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    from methods.cli import benchmark, predict, profile

    monkeypatch.setattr(accel, "COMPILE_BACKEND", "eager")
    runner = CliRunner()
    result = runner.invoke(profile, ["--method", "efficientad", "--image-size", "64", "--device", "cpu",
                                     "--batch-sizes", "1", "--repeats", "1", "--option", "pdn_width=8",
                                     "--option", "out_channels=8", "--channels-last", "on", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert (doc["channels_last"], doc["compile"], doc["cuda_graphs"]) == (True, False, False)

    out = tmp_path / "run"
    result = runner.invoke(benchmark, ["--method", "efficientad", "--data", str(toy_dataset), "--category", "disc",
                                       "--image-size", "64", "--epochs", "1", "--device", "cpu", "--no-pretrained",
                                       "--quiet", "--option", "pdn_width=8", "--option", "out_channels=8",
                                       "--option", "steps=2",
                                       "--channels-last", "on", "--compile", "--workers", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    training = json.loads((out / "results.json").read_text())["training"]
    assert (training["channels_last"], training["compile"], training["cuda_graphs"]) == (True, True, False)

    checkpoint = next((out / "checkpoints").rglob("disc.pt"))
    assert load_detector(checkpoint).run.compile is False  # execution is the caller's, not the checkpoint's
    images = [str(p) for p in sorted((toy_dataset / "disc" / "test").rglob("*.png"))[:3]]
    plain = runner.invoke(predict, ["--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0", *images])
    nhwc = runner.invoke(predict, ["--checkpoint", str(checkpoint), "--device", "cpu", "--channels-last", "on",
                                   "--no-cuda-graphs", "--workers", "0", *images])
    assert plain.exit_code == 0 and nhwc.exit_code == 0, plain.output + nhwc.output

    def scores(output: str) -> np.ndarray:
        return np.array([float(line.split(",")[1]) for line in output.strip().splitlines()[1:]])

    np.testing.assert_allclose(scores(nhwc.output), scores(plain.output), rtol=1e-4)
