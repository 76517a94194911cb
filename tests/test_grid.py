"""``insplad grid``: grid files, resumable local runs, Ray runs with identical merged results, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from insplad_tools.cli import main
from insplad_tools.grid.spec import GridError, load_grid
from leaderboard.check import check_submission
from leaderboard.results import load_results

REPO = Path(__file__).resolve().parents[1]
TINY = (REPO / "grids" / "tiny.toml").read_text(encoding="utf-8")  # 2 methods x 2 seeds, 32 px, 1 epoch
ONE = """
[grid]
categories = ["disc"]
[defaults]
epochs = 1
image_size = 32
batch_size = 4
device = "cpu"
pretrained = false
[[variants]]
method = "patchcore"
options = { backbone = "resnet18" }
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def invoke(*args: str):
    return CliRunner().invoke(main, ["grid", *args], catch_exceptions=False)


def merged_files(runs: Path) -> dict[str, bytes]:
    """The merged artefacts (results, predictions, leaderboards), by path relative to results/."""
    root = runs / "results"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".insplad-output.json"}


def done_markers(runs: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((runs / "trials").rglob("*.done.json"))}


@pytest.fixture(scope="module")
def local_runs(toy_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny grid (2 methods x 2 categories x 2 seeds) killed with SIGKILL after some trials, then
    re-run with the same command to the end."""
    base = tmp_path_factory.mktemp("grid")
    grid_file = write(base / "tiny.toml", TINY)
    runs = base / "runs"
    args = ["grid", str(grid_file), "--data", str(toy_dataset), "--out", str(runs), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from insplad_tools.cli import main; main()", *args],
                            cwd=base, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (runs / "trials").is_dir() or len(done_markers(runs)) < 3:
        if proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = done_markers(runs)
    plan = invoke(str(grid_file), "--data", str(toy_dataset), "--out", str(runs), "--dry-run")
    resumed = invoke(str(grid_file), "--data", str(toy_dataset), "--out", str(runs), "--quiet")
    return {"runs": runs, "grid": grid_file, "before": before, "plan": plan, "resumed": resumed}


def test_killed_grid_resumes_without_repeating_finished_trials(local_runs: dict, toy_dataset: Path) -> None:
    runs, before = local_runs["runs"], local_runs["before"]
    assert 3 <= len(before) < 8, "the grid was not interrupted mid-way"
    assert f"{len(before)} done, {8 - len(before)} to run" in local_runs["plan"].output
    assert local_runs["resumed"].exit_code == 0, local_runs["resumed"].output
    after = done_markers(runs)
    assert len(after) == 8
    assert {name: after[name] for name in before} == before  # finished trials were not run again
    for name in before:
        trial_id = json.loads(before[name])["trial"]
        log = (runs / "logs" / f"{trial_id}.log").read_text()
        assert log.count("=== ") == 1, log
    for variant in ("patchcore-none", "simplenet-none"):
        doc = load_results(runs / "results" / variant / "results.json")
        assert doc["aggregation"] == {"seeds": [0, 1], "report": "mean"}
        assert [r["category"] for r in doc["categories"]] == ["disc", "ring"]
        assert "wall_time_s" not in doc and "hardware" not in doc  # volatile fields stay out of merged results
        assert check_submission(runs / "results" / variant, toy_dataset) == []
    table = (runs / "results" / "leaderboard-image_auroc.md").read_text()
    assert "PatchCore on ResNet-18 (random init) — not the paper's backbone [mean of 2]" in table and "SimpleNet (RN18) [mean of 2]" in table
    assert (runs / "results" / "leaderboard-aupro.png").stat().st_size > 0


def test_rerun_of_a_finished_grid_runs_nothing_and_merges_the_same_bytes(local_runs: dict, toy_dataset: Path) -> None:
    runs = local_runs["runs"]
    merged, markers = merged_files(runs), done_markers(runs)
    again = invoke(str(local_runs["grid"]), "--data", str(toy_dataset), "--out", str(runs), "--quiet")
    assert again.exit_code == 0, again.output
    assert done_markers(runs) == markers
    assert merged_files(runs) == merged


def test_ray_engine_gives_byte_identical_merged_results(local_runs: dict, toy_dataset: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = invoke(str(local_runs["grid"]), "--data", str(toy_dataset), "--out", str(tmp_path / "ray"),
                        "--engine", "ray", "--quiet")
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    assert merged_files(tmp_path / "ray") == merged_files(local_runs["runs"])
    engines = {json.loads(t)["engine"] for t in done_markers(tmp_path / "ray").values()}
    assert engines == {"ray"}


def test_failing_trial_is_retried_then_reported_with_its_log(toy_dataset: Path, tmp_path: Path) -> None:
    gone = tmp_path / "gone.pt"  # a weights file that does not exist: the trial fails when it starts
    grid_file = write(tmp_path / "g.toml", ONE + f'[[variants]]\nname = "broken"\nmethod = "patchcore"\npretrained = true\nweights = "{gone}"\n')
    result = CliRunner().invoke(main, ["grid", str(grid_file), "--data", str(toy_dataset), "--out",
                                       str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 1
    assert "1 trial(s) failed: broken--disc--seed-0" in result.output and "after 2 attempts" in result.output
    log = (tmp_path / "runs" / "logs" / "broken--disc--seed-0.log").read_text()
    assert log.count("=== broken--disc--seed-0 attempt") == 2 and "gone.pt: weights file not found" in log
    failures = json.loads((tmp_path / "runs" / "failures.json").read_text())
    assert list(failures) == ["broken--disc--seed-0"]
    assert (tmp_path / "runs" / "results" / "patchcore-none" / "results.json").is_file()  # the rest is merged
    assert not (tmp_path / "runs" / "results" / "broken").exists()


def test_out_must_not_overlap_the_dataset_or_a_foreign_folder(toy_dataset: Path, tmp_path: Path) -> None:
    grid_file = write(tmp_path / "g.toml", TINY)
    inside = CliRunner().invoke(main, ["grid", str(grid_file), "--data", str(toy_dataset), "--out", str(toy_dataset / "runs")])
    assert inside.exit_code == 1 and "lies inside the input --data" in inside.output
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    refused = CliRunner().invoke(main, ["grid", str(grid_file), "--data", str(toy_dataset), "--out", str(foreign)])
    assert refused.exit_code == 1 and "not written by insplad grid" in refused.output
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]


def test_ray_engine_without_ray_says_how_to_install(toy_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    grid_file = write(tmp_path / "g.toml", TINY)
    result = CliRunner().invoke(main, ["grid", str(grid_file), "--data", str(toy_dataset), "--out", str(tmp_path / "r"),
                                       "--engine", "ray"])
    assert result.exit_code == 1 and 'pip install "insplad[ray]"' in result.output


@pytest.mark.parametrize("text, message", [
    ("[grid]\nseeds = [0, 0]\n[[variants]]\nmethod = 'patchcore'\n", "grid.seeds: [0, 0] repeats a seed"),
    ("[[variants]]\nmethod = 'nope'\n", "unknown method 'nope'"),
    ("[[variants]]\nmethod = 'differnet'\nblocks = [1, 4]\n", "not a non-empty set of attention blocks"),
    ("[[variants]]\nmethod = 'differnet'\nattention = ['se', 'cbam']\nname = 'x'\n", "expands to 2"),
    ("[[variants]]\nmethod = 'patchcore'\n[[variants]]\nmethod = 'patchcore'\n", "appear twice"),
    ("[grid]\nseed = [0]\n[[variants]]\nmethod = 'patchcore'\n", "unknown key(s) seed"),
    ("[grid\n", "not valid TOML"),
    ("[defaults]\nprotocol = 'best'\n[[variants]]\nmethod = 'patchcore'\n", "defaults].protocol: 'best' is not one of clean, paper"),
    ("[[variants]]\nmethod = 'patchcore'\noptions = { no_such_option = 1 }\n", "unknown option(s) no_such_option"),
    ("[grid]\nname = 'x'\n", "give at least one [[variants]] table"),
])
def test_bad_grid_files_are_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(GridError) as caught:
        load_grid(path)
    assert str(path) in caught.value.message and message in caught.value.message


@settings(deadline=None, max_examples=25)
@given(attentions=st.lists(st.sampled_from(["none", "se", "cbam"]), min_size=1, max_size=3, unique=True),
       subsets=st.lists(st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=3, unique=True), min_size=1, max_size=4,
                        unique_by=lambda s: tuple(sorted(s))))
def test_variants_expand_to_the_product_of_their_axes(tmp_path_factory, attentions: list[str], subsets: list[list[int]]) -> None:
    path = tmp_path_factory.mktemp("g") / "g.toml"
    write(path, f"[[variants]]\nmethod = 'differnet'\nattention = {json.dumps(attentions)}\nblocks = {json.dumps(subsets)}\n")
    spec = load_grid(path)
    assert len(spec.variants) == len(attentions) * len(subsets)
    assert len({v.name for v in spec.variants}) == len(spec.variants)
    assert {(v.options["attention"], v.options["blocks"]) for v in spec.variants} == {
        (a, ",".join(map(str, sorted(s)))) for a in attentions for s in subsets}


def test_shipped_grid_files_are_valid_and_cover_the_papers(toy_dataset: Path) -> None:
    from methods.registry import METHODS

    grids = {p.stem: load_grid(p) for p in sorted((REPO / "grids").glob("*.toml"))}
    assert {"tiny", "seed000-table2", "seed000-table5", "seed003-tables2-3"} <= set(grids)
    table2 = grids["seed000-table2"]
    assert table2.seeds == [0, 1] and table2.report == "best" and table2.references == ["insplad-fault"]
    paper_methods = {"differnet", "fastflow", "rdpp", "csflow", "cflow", "patchcore"}
    assert {v.method for v in table2.variants} == paper_methods & set(METHODS)
    attentions = {v.options.get("attention") for v in table2.variants if v.method == "differnet"}
    assert attentions == {"none", "se", "cbam"}
    table5 = grids["seed000-table5"]
    assert table5.categories == ["glass_insulator"]
    assert sorted(v.options.get("blocks", "") for v in table5.variants) == ["", "1", "1,2", "1,2,3", "1,3", "2", "2,3", "3"]
    seg = grids["seed003-tables2-3"]
    assert {(v.method, v.options["attention"]) for v in seg.variants} == {
        (m, a) for m in ("simplenet", "efficientad") for a in ("none", "se", "cbam")}
