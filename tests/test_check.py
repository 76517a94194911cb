"""``leaderboard check``: a clean submission passes; every kind of tampering is caught and named."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from insplad_tools import mvtec
from leaderboard import predictions
from leaderboard.check import check_submission
from leaderboard.cli import leaderboard
from leaderboard.predictions import write_category
from leaderboard.results import aggregate_runs, build_results, mean_row, write_results
from leaderboard.scoring import score_run

MARKER_NAME = "pickle-payload-ran"


def _touch(path: str) -> None:
    Path(path).write_text("the payload was unpickled")


class Payload:
    """Unpickling this object creates a marker file: proof that something executed it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


@pytest.fixture(scope="module")
def pristine(toy_dataset, tmp_path_factory) -> Path:
    """A clean two-seed submission with noisy scores and 32x32 maps for both toy categories."""
    sub = tmp_path_factory.mktemp("pristine") / "submission"
    dataset = mvtec.read_dataset(toy_dataset)
    scored = {}
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        run = sub / "predictions" / f"seed-{seed}"
        for name, cat in dataset.items():
            items = []
            for s in cat.test:
                amap = rng.random((32, 32)).astype(np.float32)
                if s.label:
                    amap[8:20, 8:20] += 0.5
                items.append((s.rel, float(s.label + rng.normal(0, 0.8)), amap))
            write_category(run / name, name, items)
        scored[seed] = score_run(toy_dataset, run)
    per_category = {}
    for name in dataset:
        first = scored[0][name]
        per_category[name] = {"n_test_good": first["n_test_good"], "n_test_anomalous": first["n_test_anomalous"],
                              "n_masks": first["n_masks"],
                              "runs": [{"seed": s, **{k: scored[s][name][k] for k in
                                                      ("image_auroc", "pixel_auroc", "aupro", "f1_max")}}
                                       for s in (0, 1)]}
    doc = build_results(method="differnet", variant={"backbone": "alexnet", "attention": "se", "blocks": [1, 2, 3]},
                        dataset={"name": "toy", "manifest_sha256": mvtec.dataset_digest(toy_dataset)},
                        seeds=[0, 1], report="best", per_category=per_category,
                        training={"epochs": 1, "image_size": 64, "batch_size": 2}, wall_time_s=1.0,
                        trainable_params=10, package_version="0.1.0", git_commit=None,
                        created="2026-11-23T20:00:00+00:00")
    write_results(sub / "results.json", doc)
    return sub


@pytest.fixture
def sub(pristine, tmp_path) -> Path:
    target = tmp_path / "submission"
    shutil.copytree(pristine, target, symlinks=True)
    return target


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def preds_file(sub: Path, seed: int = 0, category: str = "disc") -> Path:
    return sub / "predictions" / f"seed-{seed}" / category / "predictions.json"


def problems_of(sub: Path, toy_dataset: Path) -> str:
    problems = check_submission(sub, toy_dataset)
    assert problems, "the tampered submission was accepted"
    return "\n".join(problems)


def test_clean_submission_passes_and_exits_zero(sub, toy_dataset):
    assert check_submission(sub, toy_dataset) == []
    result = CliRunner().invoke(leaderboard, ["check", str(sub), "--data", str(toy_dataset)])
    assert result.exit_code == 0, result.output
    assert "every claimed number matches" in result.output


def test_tampered_claim_is_caught_and_exit_is_nonzero(sub, toy_dataset):
    def bump(doc):
        row = doc["categories"][0]
        run = row["runs"][0]
        run["image_auroc"] = round(min(1.0, run["image_auroc"] + 0.01), 6)
        # keep the document self-consistent so only the recomputation can catch it
        row.update(aggregate_runs(row["runs"], "best"))
        doc["mean"] = mean_row(doc["categories"])
    edit_json(sub / "results.json", bump)
    assert "runs[seed=0].image_auroc: claims" in problems_of(sub, toy_dataset)
    result = CliRunner().invoke(leaderboard, ["check", str(sub), "--data", str(toy_dataset)])
    assert result.exit_code == 1
    assert "but the predictions give" in result.output


def test_inconsistent_aggregate_is_caught(sub, toy_dataset):
    edit_json(sub / "results.json", lambda d: d["mean"].update(image_auroc=0.99))
    assert "mean.image_auroc: claims 0.99" in problems_of(sub, toy_dataset)


def test_wrong_dataset_digest_is_caught(sub, toy_dataset):
    edit_json(sub / "results.json", lambda d: d["dataset"].update(manifest_sha256="0" * 64))
    assert "does not match the dataset" in problems_of(sub, toy_dataset)


def test_missing_image(sub, toy_dataset):
    edit_json(preds_file(sub), lambda d: d["items"].pop(3))
    assert "1 test image(s) without a prediction: disc/test/good/003.png" in problems_of(sub, toy_dataset)


def test_duplicate_image(sub, toy_dataset):
    edit_json(preds_file(sub), lambda d: d["items"].append(dict(d["items"][0])))
    assert "predicted more than once: disc/test/good/000.png" in problems_of(sub, toy_dataset)


def test_training_image(sub, toy_dataset):
    edit_json(preds_file(sub), lambda d: d["items"].append({"image": "disc/train/good/000.png", "score": 0.1, "map": None}))
    assert "training image(s) among the predictions: disc/train/good/000.png" in problems_of(sub, toy_dataset)


def test_nan_score(sub, toy_dataset):
    edit_json(preds_file(sub), lambda d: d["items"][0].update(score=float("nan")))
    assert "predictions.json: JSON holds the non-standard constant NaN" in problems_of(sub, toy_dataset)


def test_score_too_large_for_a_float(sub, toy_dataset):
    edit_json(preds_file(sub), lambda d: d["items"][0].update(score=1e308))
    preds_file(sub).write_text(preds_file(sub).read_text().replace("1e+308", "1e999", 1))
    assert "score(s) are NaN or infinite: disc/test/good/000.png" in problems_of(sub, toy_dataset)


def test_nan_map(sub, toy_dataset):
    bad = np.zeros((32, 32), np.float32)
    bad[3, 3] = np.nan
    np.savez_compressed(sub / "predictions/seed-1/ring/maps/good/002.npz", map=bad)
    assert "002.npz: map contains NaN or inf" in problems_of(sub, toy_dataset)


def test_degenerate_map_shape(sub, toy_dataset):
    np.savez_compressed(sub / "predictions/seed-0/disc/maps/good/001.npz", map=np.zeros((1, 32), np.float32))
    assert "map shape (1, 32) is not a sane image shape" in problems_of(sub, toy_dataset)


def test_pickle_bombs_are_refused_without_running(sub, toy_dataset, tmp_path):
    marker = tmp_path / MARKER_NAME
    # Control: the payload really does run when something unpickles it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()

    folder = sub / "predictions/seed-0/disc"
    # 1. an .npz whose 'map' member is an object array holding the payload
    np.savez(folder / "maps/good/000.npz", map=np.array([Payload(marker)], dtype=object))
    # 2. a .npy file (pickled object array) named as the map of another image
    np.save(folder / "maps/good/001.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    # 3. a bare pickle stream under an .npz name
    (folder / "maps/good/002.npz").write_bytes(pickle.dumps(Payload(marker)))

    def point_001_to_npy(d):
        d["items"][1]["map"] = "maps/good/001.npy"
    edit_json(folder / "predictions.json", point_001_to_npy)
    text = problems_of(sub, toy_dataset)
    assert "000.npz: unreadable map" in text and "allow_pickle" in text
    assert "001.npy: map must be an .npz file" in text
    assert "002.npz: not an npz (zip) file" in text
    assert not marker.exists()


def test_path_escaping_the_folder(sub, toy_dataset):
    edit_json(preds_file(sub), lambda d: d["items"][0].update(map="../../../../outside.npz"))
    assert "escapes the folder" in problems_of(sub, toy_dataset)


def test_symlink_escaping_the_folder(sub, toy_dataset, tmp_path):
    outside = tmp_path / "outside.npz"
    np.savez_compressed(outside, map=np.zeros((32, 32), np.float32))
    target = sub / "predictions/seed-0/disc/maps/good/000.npz"
    target.unlink()
    target.symlink_to(outside)
    assert "escapes the folder" in problems_of(sub, toy_dataset)


def test_symlinked_category_folder_escaping(sub, toy_dataset, tmp_path):
    folder = sub / "predictions/seed-1/ring"
    moved = tmp_path / "ring-elsewhere"
    shutil.move(folder, moved)
    folder.symlink_to(moved, target_is_directory=True)
    assert "resolves outside the submission folder" in problems_of(sub, toy_dataset)


def test_oversize_files_are_refused(sub, toy_dataset, monkeypatch):
    monkeypatch.setattr(predictions, "MAX_MAP_BYTES", 200)
    assert "map file larger than" in problems_of(sub, toy_dataset)
    monkeypatch.undo()
    monkeypatch.setattr(predictions, "MAX_JSON_BYTES", 100)
    assert "bytes, larger than the 100-byte limit for a JSON file" in problems_of(sub, toy_dataset)


def test_missing_run_and_schema_problems(sub, toy_dataset):
    shutil.rmtree(sub / "predictions/seed-1")
    edit_json(sub / "results.json", lambda d: d.update(schema="something-else"))
    text = problems_of(sub, toy_dataset)
    assert "seed-1: missing (aggregation.seeds lists it)" in text
    assert "schema: expected 'insplad-results/1'" in text


def test_score_command_reproduces_the_submission(sub, toy_dataset, tmp_path):
    out = tmp_path / "rescored.json"
    result = CliRunner().invoke(leaderboard, ["score", str(sub), "--data", str(toy_dataset), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ours, theirs = json.loads(out.read_text()), json.loads((sub / "results.json").read_text())
    assert ours["method"] == "differnet" and ours["aggregation"] == theirs["aggregation"]
    for a, b in zip(ours["categories"], theirs["categories"]):
        assert a["runs"] == b["runs"]
    assert "disc" in result.output and "mean" in result.output


def test_results_file_symlinked_outside_is_refused(sub, toy_dataset, tmp_path):
    outside = tmp_path / "elsewhere.json"
    shutil.move(sub / "results.json", outside)
    (sub / "results.json").symlink_to(outside)
    assert "results.json: resolves outside the submission folder" in problems_of(sub, toy_dataset)


def test_predictions_for_an_unlisted_category_are_reported(sub, toy_dataset):
    shutil.copytree(sub / "predictions/seed-0/disc", sub / "predictions/seed-0/extra")
    assert "seed-0/extra: predictions for a category that results.json does not list" in problems_of(sub, toy_dataset)
