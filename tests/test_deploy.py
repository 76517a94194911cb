"""insplad export / predict --model / explain / report: parity with torch, figures and a page a browser renders."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from insplad_tools.cli import main
from insplad_tools.mvtec import read_category
from methods.base import RunConfig
from methods.registry import build_detector

TINY = {
    "patchcore": {"backbone": "resnet18"},
    "simplenet": {"pretrain_embed_dim": "256", "target_embed_dim": "128", "dsc_hidden": "64"},
    "efficientad": {"pdn_width": "64", "out_channels": "64", "steps": "0"},
    "differnet": {"n_scales": "1", "flow_width": "32", "coupling_blocks": "2", "n_transforms": "2",
                  "n_transforms_test": "4"},
    "padim": {},
    "rdpp": {},
    "fastflow": {"flow_steps": "2", "layers": "layer2,layer3"},
    "cflow": {"backbone": "resnet18", "layers": "layer2,layer3", "coupling_blocks": "2", "condition_dims": "32"},
    "csflow": {"backbone": "resnet18", "layer": "layer2", "hidden": "16", "coupling_blocks": "2"},
}


@pytest.fixture(scope="module")
def disc(toy_dataset: Path):
    return read_category(toy_dataset, "disc")


@pytest.fixture(scope="module")
def checkpoints(disc, tmp_path_factory) -> dict[str, Path]:
    """One tiny trained checkpoint per exportable method."""
    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name, options in TINY.items():
        run = RunConfig(epochs=1, batch_size=4, image_size=64, pretrained=False, progress=False)
        detector = build_detector(name, options, run)
        detector.fit([s.path for s in disc.train], folder / f"{name}.pt")
        out[name] = folder / f"{name}.pt"
    return out


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _scores(csv_text: str) -> dict[str, float]:
    lines = [line.split(",") for line in csv_text.strip().splitlines() if "," in line]
    assert lines[0][:2] == ["image", "score"]
    return {row[0]: float(row[1]) for row in lines[1:]}


@pytest.mark.parametrize("method", list(TINY))
def test_onnx_export_matches_torch(method, checkpoints, disc, tmp_path):
    """The exported graph gives the checkpoint's scores (and maps) within 1e-4 relative, at batch 1 and 8."""
    from methods.export import ExportedModel
    from methods.registry import load_detector

    result = _invoke("export", checkpoints[method], "--out", tmp_path / "edge")
    assert result.exit_code == 0, result.output
    spec = json.loads((tmp_path / "edge" / "preprocess.json").read_text())
    assert spec["method"] == method and spec["image_size"] == 64 and spec["format"] == "insplad-export/1"
    images = [s.path for s in disc.test]
    torch_results = load_detector(checkpoints[method]).predict(images)
    model = ExportedModel.open(tmp_path / "edge")
    for batch in (1, 8):
        exported = model.predict(images, batch_size=batch)
        want = np.array([r.score for r in torch_results])
        got = np.array([r.score for r in exported])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
        if torch_results[0].map is not None:
            for t, e in zip(torch_results, exported):
                scale = float(np.abs(t.map).max()) or 1.0
                assert np.abs(t.map - e.map).max() <= 1e-4 * scale
    # predict --model prints the same image,score CSV as predict --checkpoint
    by_ckpt = _scores(_invoke("predict", "--checkpoint", checkpoints[method], *images[:3], "--device", "cpu").output)
    by_model = _scores(_invoke("predict", "--model", tmp_path / "edge", *images[:3]).output)
    assert by_ckpt.keys() == by_model.keys()
    for key in by_ckpt:
        assert by_model[key] == pytest.approx(by_ckpt[key], rel=1e-4, abs=1e-6)


def test_openvino_export_matches_torch(checkpoints, disc, tmp_path):
    pytest.importorskip("openvino")
    from methods.export import ExportedModel
    from methods.registry import load_detector

    result = _invoke("export", checkpoints["patchcore"], "--format", "openvino", "--out", tmp_path / "ov")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ov" / "model.xml").is_file() and not (tmp_path / "ov" / "model.onnx").exists()
    images = [s.path for s in disc.test]
    want = np.array([r.score for r in load_detector(checkpoints["patchcore"]).predict(images)])
    got = np.array([r.score for r in ExportedModel.open(tmp_path / "ov").predict(images)])
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_export_refuses_bad_requests(checkpoints, tmp_path):
    runner = CliRunner()
    # an unfinished checkpoint
    import torch

    payload = torch.load(checkpoints["patchcore"], weights_only=True)
    payload["finished"] = False
    torch.save(payload, tmp_path / "half.pt")
    result = runner.invoke(main, ["export", str(tmp_path / "half.pt"), "--out", str(tmp_path / "e1")])
    assert result.exit_code != 0 and "unfinished" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "e1").exists()
    # OUT may not contain the checkpoint it reads
    before = sorted(p.name for p in checkpoints["patchcore"].parent.iterdir())
    result = runner.invoke(main, ["export", str(checkpoints["patchcore"]), "--out", str(checkpoints["patchcore"].parent),
                                  "--overwrite"])
    assert result.exit_code != 0 and "contains the input" in result.output
    assert sorted(p.name for p in checkpoints["patchcore"].parent.iterdir()) == before
    # predict needs exactly one model source
    result = runner.invoke(main, ["predict", str(checkpoints["patchcore"])])
    assert result.exit_code != 0 and "exactly one" in result.output
    # a folder that is not an export
    (tmp_path / "empty").mkdir()
    result = runner.invoke(main, ["predict", "--model", str(tmp_path / "empty"), str(checkpoints["patchcore"])])
    assert result.exit_code != 0 and "preprocess.json" in result.output


def test_explain_shows_variants_side_by_side(disc, tmp_path, checkpoints):
    """Grad-CAM of DifferNet and AttentDifferNet-SE on the same crops; a map method shows its map."""
    run = RunConfig(epochs=1, batch_size=4, image_size=64, pretrained=False, progress=False)
    se = build_detector("differnet", {**TINY["differnet"], "attention": "se"}, run)
    se.fit([s.path for s in disc.train], tmp_path / "se.pt")
    images = [str(s.path) for s in disc.test if s.label == 1][:2]
    result = _invoke("explain", "--checkpoint", checkpoints["differnet"], "--checkpoint", tmp_path / "se.pt",
                     "--checkpoint", checkpoints["patchcore"], *images, "--out", tmp_path / "figs", "--device", "cpu")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "figs" / "explain.json").read_text())
    assert len(summary["figures"]) == 2
    assert set(summary["scores"]) == {"differnet", "differnet-se AB123", "patchcore"}
    assert any("patchcore" in note for note in summary["notes"])
    from PIL import Image

    with Image.open(tmp_path / "figs" / summary["figures"][0]) as fig:
        assert fig.width > 3 * fig.height  # input + 2 Grad-CAMs + a map, side by side


def test_gradcam_highlights_the_defect(disc, checkpoints):
    """The CAM is a finite [0, 1] map of the image's size that is not constant."""
    from methods.explain import explain_images
    from methods.registry import load_detector

    detector = load_detector(checkpoints["differnet"])
    detector.run.progress = False
    (explanation,) = explain_images(detector, [next(s.path for s in disc.test if s.label == 1)])
    assert explanation.cam.shape == (64, 64)
    assert np.isfinite(explanation.cam).all() and explanation.cam.min() >= 0 and explanation.cam.max() <= 1
    assert explanation.cam.std() > 0


@pytest.fixture(scope="module")
def two_runs(toy_dataset, tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("runs")
    runs = []
    for attention in ("none", "se"):
        out = base / f"pc-{attention}"
        result = _invoke("benchmark", "--method", "patchcore", "--attention", attention, "--option", "backbone=resnet18",
                         "--data", toy_dataset,
                         "--out", out, "--image-size", "64", "--epochs", "1", "--no-pretrained", "--quiet")
        assert result.exit_code == 0, result.output
        runs.append(out)
    return runs


def test_report_is_self_contained_and_complete(two_runs, toy_dataset, tmp_path):
    out = tmp_path / "report.html"
    result = _invoke("report", *two_runs, "--data", toy_dataset, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    page = out.read_text()
    for section in ('id="results"', 'id="runs"', 'id="cat-disc"', 'id="cat-ring"', "ROC", "worst cases",
                    "anomaly maps (green: ground truth)", "F1-max", "PatchCore (SENet) on ResNet-18 (random init)", "randomly initialised"):
        assert section in page, section
    # nothing outside the file: every src is inline data
    assert "http://" not in page and "https://" not in page
    assert all(src.startswith("data:image/png;base64,") for src in page.split('src="')[1:])
    # a grid-like parent folder finds both runs
    result = _invoke("report", two_runs[0].parent, "--out", tmp_path / "grid.html", "--quiet")
    assert result.exit_code == 0 and "2 run(s)" in (tmp_path / "grid.html").read_text()
    # the report never lands inside an input
    result = CliRunner().invoke(main, ["report", str(two_runs[0]), "--out", str(two_runs[0] / "r.html")])
    assert result.exit_code != 0 and not (two_runs[0] / "r.html").exists()


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine (apt-get install chromium)")
def test_report_renders_in_a_browser_without_console_errors(two_runs, toy_dataset, tmp_path):
    from PIL import Image

    out = tmp_path / "report.html"
    assert _invoke("report", *two_runs, "--data", toy_dataset, "--out", out, "--quiet").exit_code == 0
    shot = tmp_path / "shot.png"
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", "--window-size=1280,2000", f"--screenshot={shot}",
                           out.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "error" in line.lower() or "uncaught" in line.lower()], console
    with Image.open(shot) as img:
        grey = np.asarray(img.convert("L"), dtype=np.float32)
    assert grey.std() > 10  # tables, curves and thumbnails drawn, not a blank page
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'id="results"' in dom and dom.count("<img") >= 10
