"""`insplad demo --quick`: the README's main job, end to end on generated data."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from insplad_tools.cli import main
from insplad_tools.demo import _imagenet_cached, _offline_weights_available
from leaderboard.check import check_submission
from leaderboard.results import validate_results


def test_quick_demo_runs_every_stage_and_writes_checkable_results(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--quick", "--quiet"])
    assert result.exit_code == 0, result.output
    for stage in ("1/6 synth", "2/6 build-splits", "3/6 validate", "4/6 benchmark", "5/6 benchmark", "6/6 leaderboard"):
        assert stage in result.output
    assert (out / "raw" / "README.txt").read_text().upper().count("SYNTHETIC") >= 1
    assert (out / "data" / "manifest.json").is_file()
    runs = sorted(p.name for p in (out / "runs").iterdir())
    lite0 = not _imagenet_cached() and _offline_weights_available()  # offline, with the offline-weights extra
    assert runs == ["differnet-none", "differnet-se", "efficientad-none"] + ["patchcore-lite0"] * lite0 + ["patchcore-none"]
    if lite0:  # real pretrained features offline, labelled as not the paper's backbone in tables and plot legends
        label = "PatchCore on EfficientNet-Lite0 (ImageNet, offline) — not the paper's backbone"
        assert label in (out / "image_auroc.md").read_text() and label in (out / "aupro.md").read_text()
        doc = json.loads((out / "runs" / "patchcore-lite0" / "results.json").read_text())
        assert doc["variant"]["backbone"] == "efficientnet_lite0"
        assert list((out / "overlays" / "patchcore-lite0").glob("*.png"))
    for name in runs:
        doc = json.loads((out / "runs" / name / "results.json").read_text())
        assert validate_results(doc) == []
        assert check_submission(out / "runs" / name, out / "data") == []
    for name in ("efficientad-none", "patchcore-none"):
        pixel = json.loads((out / "runs" / name / "results.json").read_text())
        assert all(row["aupro"] is not None for row in pixel["categories"])
        assert any("randomly initialised" in note for note in pixel["notes"])
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["aupro.png", "image_auroc.png"]
    for name in ("efficientad-none", "patchcore-none"):
        overlays = list((out / "overlays" / name).glob("*.png"))
        assert overlays and all(p.stat().st_size > 1000 for p in overlays)
    assert "| Category |" in (out / "image_auroc.md").read_text()


def test_demo_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("do not delete")
    result = CliRunner().invoke(main, ["demo", "--out", str(target), "--quick", "--quiet"])
    assert result.exit_code != 0
    assert "not an insplad demo folder" in result.output
    assert (target / "thesis.tex").read_text() == "do not delete"
