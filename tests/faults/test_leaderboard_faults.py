"""Hostile submissions for ``insplad leaderboard check / score / render``.

Every case damages a private copy of a real (tiny) submission and asserts what a maintainer relies
on: a non-zero exit, a line naming the offending file or JSON key, no traceback, and nothing
changed anywhere in the world folder (the submission and the dataset are inputs).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.faults.harness import Outcome, assert_no_traceback, diff_snapshots, run_cli, run_fault, snapshot

PRED = "predictions/seed-0/disc/predictions.json"
MAP = "predictions/seed-0/disc/maps/good/000.npz"


def check(sub: Path, toy: Path, *extra: str) -> Outcome:
    return run_cli(["leaderboard", "check", sub, "--data", toy, *extra])


def assert_rejected(world: Path, sub: Path, toy: Path, *names: str, extra: tuple[str, ...] = ()) -> str:
    """``check`` exits 1 without a traceback, one ✗ line names every string of ``names``, nothing changes."""
    before = snapshot(world)
    outcome = check(sub, toy, *extra)
    assert_no_traceback(outcome)
    assert outcome.exit_code == 1, outcome.output
    lines = [line for line in outcome.output.splitlines() if line.startswith("✗")]
    assert any(all(n.lower() in line.lower() for n in names) for line in lines), outcome.output
    assert not diff_snapshots(before, snapshot(world))
    return outcome.output


def write_text(path: Path, text: str | bytes) -> None:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_clean_submission_passes_and_states_full_coverage(sub: Path, toy: Path) -> None:
    outcome = check(sub, toy)
    assert outcome.exit_code == 0, outcome.output
    assert "coverage: all 3 categories of the dataset" in outcome.output


# -- results.json: hostile JSON and wrong types -----------------------------------------------------
RESULTS_FAULTS: dict[str, Callable[[Path], None]] = {
    "deep-nesting": lambda p: write_text(p, "[" * 100_000 + "]" * 100_000),
    "5000-digit-int": lambda p: write_text(p, p.read_text().replace('"n_masks": 3', '"n_masks": ' + "9" * 5000, 1)),
    "infinity": lambda p: write_text(p, p.read_text().replace('"wall_time_s": ', '"wall_time_s": Infinity, "x": ', 1)),
    "non-utf8": lambda p: write_text(p, b"\xff\xfe{\x00"),
    "truncated": lambda p: write_text(p, p.read_text()[:200]),
    "top-level-list": lambda p: write_text(p, "[1, 2]"),
    "sha-as-list": lambda p: edit_json(p, lambda d: d["dataset"].update(manifest_sha256=["a", "b"])),
    "category-as-list": lambda p: edit_json(p, lambda d: d["categories"][0].update(category=["disc"])),
    "runs-as-int": lambda p: edit_json(p, lambda d: d["categories"][0].update(runs=7)),
    "seeds-as-dicts": lambda p: edit_json(p, lambda d: d["aggregation"].update(seeds=[{"a": 1}])),
}
RESULTS_NAMES = {"deep-nesting": "nested too deeply", "5000-digit-int": "5000 digits", "infinity": "Infinity",
                 "non-utf8": "not UTF-8", "truncated": "malformed JSON", "top-level-list": "top level",
                 "sha-as-list": "manifest_sha256", "category-as-list": "categories[0]", "runs-as-int": "runs",
                 "seeds-as-dicts": "aggregation.seeds"}


@pytest.mark.parametrize("kind", sorted(RESULTS_FAULTS))
def test_hostile_results_json_is_rejected(kind: str, sub: Path, toy: Path, tmp_path: Path) -> None:
    RESULTS_FAULTS[kind](sub / "results.json")
    assert_rejected(tmp_path, sub, toy, RESULTS_NAMES[kind])


# -- predictions.json and maps ---------------------------------------------------------------------
def _set_first(key: str, value: object) -> Callable[[Path], None]:
    return lambda p: edit_json(p, lambda d: d["items"][0].update({key: value}))


PRED_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "deep-nesting": (lambda p: write_text(p, '{"items": ' + "[" * 50_000 + "]" * 50_000 + "}"), "nested too deeply"),
    "5000-digit-score": (lambda p: write_text(p, p.read_text().replace('"score": ', '"score": ' + "7" * 5000 + ', "s": ', 1)),
                         "5000 digits"),
    "non-utf8": (lambda p: write_text(p, b'{"format": "\xc3\x28"}'), "not UTF-8"),
    "image-as-list": (_set_first("image", ["disc/test/good/000.png"]), "item 0"),
    "score-as-string": (_set_first("score", "0.5"), "item 0"),
    "map-absolute": (_set_first("map", "/etc/passwd"), "escapes"),
    "map-dotdot": (_set_first("map", "../../../../results.json"), "escapes"),
    "map-as-dict": (_set_first("map", {"a": 1}), "non-string 'map'"),
    "items-as-dict": (lambda p: edit_json(p, lambda d: d.update(items={"a": 1})), "'items' list"),
}


@pytest.mark.parametrize("kind", sorted(PRED_FAULTS))
def test_hostile_predictions_are_rejected(kind: str, sub: Path, toy: Path, tmp_path: Path) -> None:
    damage, name = PRED_FAULTS[kind]
    damage(sub / PRED)
    assert_rejected(tmp_path, sub, toy, name)


def test_map_symlink_leaving_the_submission_is_rejected(sub: Path, toy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.npz"
    shutil.copy(sub / MAP, outside)
    (sub / MAP).unlink()
    (sub / MAP).symlink_to(outside)
    assert_rejected(tmp_path, sub, toy, "000.npz", "escapes")


def test_results_symlink_outside_is_rejected(sub: Path, toy: Path, tmp_path: Path) -> None:
    shutil.move(sub / "results.json", tmp_path / "results.json")
    (sub / "results.json").symlink_to(tmp_path / "results.json")
    assert_rejected(tmp_path, sub, toy, "results.json", "outside the submission")


def test_run_folder_symlink_outside_is_rejected(sub: Path, toy: Path, tmp_path: Path) -> None:
    shutil.move(sub / "predictions/seed-0", tmp_path / "seed-0")
    (sub / "predictions/seed-0").symlink_to(tmp_path / "seed-0", target_is_directory=True)
    assert_rejected(tmp_path, sub, toy, "seed-0", "outside the submission")


def test_map_holding_a_pickle_is_never_unpickled(sub: Path, toy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    np.savez(sub / MAP, map=np.array([object()], dtype=object))
    assert_rejected(tmp_path, sub, toy, "000.npz")
    assert not marker.exists()


def test_map_that_is_a_raw_pickle_is_rejected(sub: Path, toy: Path, tmp_path: Path) -> None:
    (sub / MAP).write_bytes(pickle.dumps({"map": [1, 2]}))
    assert_rejected(tmp_path, sub, toy, "000.npz", "not an npz")


def test_map_of_wrong_rank_is_rejected(sub: Path, toy: Path, tmp_path: Path) -> None:
    np.savez_compressed(sub / MAP, map=np.zeros((2, 3, 4), np.float32))
    assert_rejected(tmp_path, sub, toy, "000.npz", "2-D")


def test_run_folder_that_is_not_a_seed_is_rejected(sub: Path, toy: Path, tmp_path: Path) -> None:
    (sub / "predictions" / "seed-x1").mkdir()
    assert_rejected(tmp_path, sub, toy, "seed-x1", "seed-<integer>")


# -- partial submissions -----------------------------------------------------------------------------
def drop_worst(sub: Path, *, keep_listing: bool = False) -> str:
    """Remove the worst category from results and predictions, recomputing the mean (the cheat; an
    honest partial run keeps ``dataset.categories``)."""
    from leaderboard.results import build_results

    doc = json.loads((sub / "results.json").read_text())
    worst = min(doc["categories"], key=lambda r: r["image_auroc"])["category"]
    per = {r["category"]: r for r in doc["categories"] if r["category"] != worst}
    meta = {k: doc[k] for k in ("training", "hardware", "notes")}
    rebuilt = build_results(method=doc["method"], variant=doc["variant"],
                            dataset={k: v for k, v in doc["dataset"].items() if keep_listing or k != "categories"},
                            seeds=doc["aggregation"]["seeds"], report=doc["aggregation"]["report"], per_category=per, **meta)
    (sub / "results.json").write_text(json.dumps(rebuilt))
    shutil.rmtree(sub / "predictions" / "seed-0" / worst)
    return worst


def test_dropping_the_worst_category_is_flagged(sub: Path, toy: Path, tmp_path: Path) -> None:
    worst = drop_worst(sub)
    output = assert_rejected(tmp_path, sub, toy, "missing", worst, "not the dataset mean")
    assert "coverage: PARTIAL, 2 of 3 categories" in output


def test_allow_partial_accepts_but_states_coverage(sub: Path, toy: Path) -> None:
    worst = drop_worst(sub)
    outcome = check(sub, toy, "--allow-partial")
    assert outcome.exit_code == 0, outcome.output
    assert f"coverage: PARTIAL, 2 of 3 categories (missing: {worst})" in outcome.output


def test_dataset_categories_that_lie_are_rejected(sub: Path, toy: Path, tmp_path: Path) -> None:
    edit_json(sub / "results.json", lambda d: d["dataset"].update(categories=["disc", "ring", "rod", "fake"]))
    assert_rejected(tmp_path, sub, toy, "dataset.categories")


def test_render_marks_partial_rows_and_hides_their_mean(sub: Path, toy: Path, tmp_path: Path) -> None:
    full = run_cli(["leaderboard", "render", sub / "results.json", "--format", "csv"])
    worst = drop_worst(sub, keep_listing=True)
    outcome = run_cli(["leaderboard", "render", sub / "results.json", "--format", "md"])
    assert outcome.exit_code == 0, outcome.output
    assert "[partial 2/3]" in outcome.output and f"missing: {worst}" in outcome.output
    mean_row = next(line for line in outcome.output.splitlines() if line.startswith("| Average"))
    assert mean_row.split("|")[2].strip() == "–"
    assert "[partial" not in full.output


# -- leaderboard outputs never land on their inputs --------------------------------------------------
@pytest.mark.parametrize("where", ["results-file", "inside-submission"])
def test_render_out_overlapping_its_input_is_refused(where: str, sub: Path, tmp_path: Path) -> None:
    target = sub / "results.json" if where == "results-file" else sub / "table.md"
    run_fault(["leaderboard", "render", sub, "--out", target], world=tmp_path, names=[str(target)])


def test_render_plot_inside_submission_is_refused(sub: Path, tmp_path: Path) -> None:
    run_fault(["leaderboard", "render", sub / "results.json", "--plot", sub / "p.png"], world=tmp_path, names=["p.png"])


def test_score_out_inside_the_submission_is_refused(sub: Path, toy: Path, tmp_path: Path) -> None:
    run_fault(["leaderboard", "score", sub, "--data", toy, "--out", sub / "results.json"], world=tmp_path,
              names=["results.json", "lies inside"])


def test_score_out_inside_the_dataset_is_refused(sub: Path, toy: Path, tmp_path: Path) -> None:
    run_fault(["leaderboard", "score", sub, "--data", toy, "--out", toy / "r.json"], world=tmp_path,
              names=["r.json", "--data"])


def test_score_with_hostile_previous_results_is_one_line(sub: Path, toy: Path, tmp_path: Path) -> None:
    (sub / "results.json").write_bytes(b"\x80\x81")
    run_fault(["leaderboard", "score", sub, "--data", toy], world=tmp_path, names=["results.json", "UTF-8"])


def test_render_hostile_results_is_one_line(sub: Path, tmp_path: Path) -> None:
    (sub / "results.json").write_text("[" * 100_000)
    run_fault(["leaderboard", "render", sub], world=tmp_path, names=["results.json", "nested"])


@pytest.mark.parametrize("args", [["check", "--thresholds", "1"], ["score", "--thresholds", "0"],
                                  ["score", "--thresholds", str(10**12)], ["score", "--seed", "-1"]])
def test_numeric_options_are_validated(args: list[str], sub: Path, toy: Path, tmp_path: Path) -> None:
    command, *rest = args
    run_fault(["leaderboard", command, sub, "--data", toy, *rest], world=tmp_path, code=2, names=[rest[0]])


def test_unwritable_output_location_is_one_line(sub: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    outcome = run_fault(["leaderboard", "render", sub, "--out", blocker / "t.md"], world=tmp_path, names=["file"])
    assert "Traceback" not in outcome.output and os.path.isfile(blocker)


def test_score_never_overwrites_a_foreign_file(sub: Path, toy: Path, tmp_path: Path) -> None:
    precious = tmp_path / "budget.json"
    precious.write_text('{"rent": 900}')
    run_fault(["leaderboard", "score", sub, "--data", toy, "--out", precious], world=tmp_path,
              names=[str(precious), "never overwritten"])
