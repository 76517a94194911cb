"""Faults for ``insplad benchmark / predict / profile / distill-teacher``.

Overlapping paths, foreign and concurrent output folders, resumes that would mix runs, hostile
checkpoints, weights and teachers, decompression bombs, bad numbers, a full disk, and kill -9 /
SIGTERM during a benchmark (the rerun must give the same prediction bytes as an uninterrupted run).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

from tests.faults.conftest import BENCH_ARGS
from tests.faults.harness import (assert_no_leftovers, assert_one_line_error, diff_snapshots, insplad_exe, run_cli,
                                  run_fault, snapshot)


def bench(data: Path, out: Path, *extra: str | Path) -> list[str | Path]:
    return ["benchmark", *BENCH_ARGS, "--data", data, "--out", out, *extra]


def bomb_png(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A tiny file whose PNG header claims width x height pixels (Pillow refuses it on open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def run_copy(bench_master: Path, tmp_path: Path) -> Path:
    """A private copy of the finished benchmark folder, checkpoints included."""
    return Path(shutil.copytree(bench_master, tmp_path / "run", symlinks=True))


@pytest.fixture
def ckpt(run_copy: Path) -> Path:
    return run_copy / "checkpoints" / "seed-0" / "disc.pt"


def predictions_bytes(out: Path) -> dict[str, bytes]:
    base = out / "predictions"
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def popen(args: list[str | Path], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*insplad_exe(), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kwargs)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"process ended before {path} appeared: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


# -- overlapping and foreign output folders -----------------------------------------------------------
@pytest.mark.parametrize("where", ["is", "inside", "contains"])
def test_benchmark_out_overlapping_data_is_refused(where: str, toy: Path, tmp_path: Path) -> None:
    out = {"is": toy, "inside": toy / "disc" / "runs", "contains": tmp_path}[where]
    run_fault(bench(toy, out), world=tmp_path, names=["--data"])


def test_benchmark_out_that_is_a_foreign_folder_is_refused(toy: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    run_fault(bench(toy, foreign), world=tmp_path, names=[str(foreign), "not written by insplad benchmark"])


def test_benchmark_out_that_is_a_file_is_refused(toy: Path, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    run_fault(bench(toy, target), world=tmp_path, code=2, names=[str(target)])


def test_benchmark_out_under_a_file_is_one_line(toy: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    run_fault(bench(toy, blocker / "out"), world=tmp_path, names=["blocker"])


def test_benchmark_weights_inside_out_is_refused(toy: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    weights = out / "w.pt"
    torch.save({"a": torch.zeros(1)}, weights)
    args = ["benchmark", "--method", "patchcore", "--option", "backbone=resnet18", "--data", toy, "--out", out,
            "--weights", weights, "--quiet"]
    run_fault(args, world=tmp_path, names=["--weights"])


# -- resume never mixes runs -----------------------------------------------------------------------
def test_other_method_on_a_killed_runs_checkpoints_is_refused(run_copy: Path, toy_master: Path, tmp_path: Path) -> None:
    (run_copy / "benchmark-state.json").unlink()  # as if killed right after the first checkpoint
    args = ["benchmark", "--method", "simplenet", "--data", toy_master, "--out", run_copy, "--epochs", "1",
            "--image-size", "32", "--no-pretrained", "--quiet", "--device", "cpu"]
    run_fault(args, world=tmp_path, names=["disc.pt", "different run", "patchcore"])


def test_other_settings_on_the_same_out_are_refused(run_copy: Path, toy_master: Path, tmp_path: Path) -> None:
    args = [a if a != "32" else "48" for a in bench(toy_master, run_copy)]
    run_fault(args, world=tmp_path, names=["image_size", "different settings"])


def test_changed_dataset_is_refused(run_copy: Path, toy: Path, tmp_path: Path) -> None:
    shutil.copy(toy / "disc/train/good/001.png", toy / "disc/train/good/000.png")
    run_fault(bench(toy, run_copy), world=tmp_path, names=["data", "different settings"])


def test_checkpoint_of_other_options_is_never_resumed(run_copy: Path, toy_master: Path, tmp_path: Path) -> None:
    (run_copy / "benchmark-state.json").unlink()
    args = [*bench(toy_master, run_copy), "--option", "coreset_ratio=0.5"]
    run_fault(args, world=tmp_path, names=["disc.pt", "options differ"])


def test_failing_category_keeps_the_others(toy: Path, tmp_path: Path) -> None:
    shutil.rmtree(toy / "rod" / "test" / "good")
    out = tmp_path / "out"
    before = snapshot(toy)
    outcome = run_cli(bench(toy, out))
    line = assert_one_line_error(outcome, names=["rod", "test/good", "results.json holds the 2"])
    assert "1 category failed" in line
    assert not diff_snapshots(before, snapshot(toy))
    from leaderboard.results import load_results

    doc = load_results(out / "results.json")
    assert [r["category"] for r in doc["categories"]] == ["disc", "ring"]
    assert doc["dataset"]["categories"] == ["disc", "ring", "rod"]
    check = run_cli(["leaderboard", "check", out, "--data", toy])
    assert check.exit_code == 1 and "missing (rod)" in check.output


def test_stale_temporaries_and_lock_are_removed_and_reported(run_copy: Path, toy_master: Path) -> None:
    stale = run_copy / "checkpoints" / "seed-0" / ".disc.pt.tmp-999999"
    stale.write_bytes(b"half a checkpoint")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = run_copy.parent / f".{run_copy.name}.lock"
    lock.write_text(f'{{"pid": {dead.pid}, "host": "{os.uname().nodename}", "started": "x", "command": "insplad benchmark"}}')
    outcome = run_cli(bench(toy_master, run_copy))
    assert outcome.exit_code == 0, outcome.output
    assert f"removed stale temporary file {stale}" in outcome.output
    assert "removed stale lock" in outcome.output
    assert not stale.exists() and not lock.exists()


# -- concurrency, signals, kill -9, full disk (real processes) --------------------------------------
@pytest.fixture(scope="module")
def reference(toy_master: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Prediction bytes of an uninterrupted run in a subprocess (same environment as the faulted ones)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    proc = popen(bench(toy_master, out))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return predictions_bytes(out)


def test_sigterm_then_kill_9_then_rerun_gives_the_same_predictions(toy_master: Path, tmp_path: Path,
                                                                   reference: dict[str, bytes]) -> None:
    """SIGTERM after the first checkpoint, kill -9 of the resumed run after the second, then a clean rerun."""
    out = tmp_path / "out"
    lock = out.parent / f".{out.name}.lock"
    proc = popen(bench(toy_master, out))
    wait_for(out / "checkpoints" / "seed-0" / "disc.pt", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert not list(out.rglob("*.tmp-*")) and not lock.exists()  # SIGTERM cleans up temporary files and the lock
    assert_no_leftovers(out)

    resumed = popen(bench(toy_master, out))
    wait_for(out / "checkpoints" / "seed-0" / "ring.pt", resumed)
    resumed.kill()
    resumed.wait()
    assert lock.exists()  # kill -9 leaves the lock: the rerun must take it over

    rerun = popen(bench(toy_master, out))
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "removed stale lock" in err
    assert predictions_bytes(out) == reference
    assert not list(out.rglob("*.tmp-*")) and not list(out.rglob(".*.json.*"))
    assert_no_leftovers(out)


def test_second_benchmark_on_the_same_out_fails_while_the_first_runs(toy_master: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = popen(bench(toy_master, out))
    wait_for(out.parent / f".{out.name}.lock", first)
    first.send_signal(signal.SIGSTOP)  # hold the first run mid-way, so the race is deterministic
    try:
        busy = [out, out.parent / f".{out.name}.lock"]  # the first run's own files
        before = snapshot(tmp_path, exclude=busy)
        second = run_cli(bench(toy_master, out))
        assert_one_line_error(second, names=["another insplad benchmark", f"pid {first.pid}", str(out)])
        assert not diff_snapshots(before, snapshot(tmp_path, exclude=busy))
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert run_cli(["leaderboard", "check", out, "--data", toy_master]).exit_code == 0


def test_full_disk_is_one_line_and_leaves_no_partial_checkpoint(toy_master: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    def small_files() -> None:  # writes beyond 1 MB fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = popen(bench(toy_master, out, "--category", "disc"), preexec_fn=small_files)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "disc.pt" in errors[0] and "File too large" in errors[0], stderr
    assert "Traceback" not in stderr
    assert not list(out.rglob("*.tmp-*")) and not (out / "results.json").exists()
    assert_no_leftovers(out)


# -- hostile checkpoints, weights and teachers -------------------------------------------------------
def edit_checkpoint(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def predict_fault(ckpt: Path, world: Path, toy_master: Path, *names: str) -> None:
    run_fault(["predict", "--checkpoint", ckpt, toy_master / "disc/test/good/000.png", "--device", "cpu"],
              world=world, names=[str(ckpt), *names])


def test_checkpoint_of_random_bytes(ckpt: Path, tmp_path: Path, toy_master: Path) -> None:
    ckpt.write_bytes(os.urandom(4096))
    predict_fault(ckpt, tmp_path, toy_master, "not a readable insplad checkpoint")


def test_checkpoint_holding_code_is_never_unpickled(ckpt: Path, tmp_path: Path, toy_master: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    ckpt.write_bytes(pickle.dumps({"format": "insplad-checkpoint/1", "x": Evil()}))
    predict_fault(ckpt, tmp_path, toy_master, "never unpickled")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind,names", [
    ("no-run", ["'run' section"]),
    ("run-as-string", ["'run' section"]),
    ("epochs-negative", ["run.epochs"]),
    ("relabelled", ["relabelled"]),
    ("unknown-method", ["not registered"]),
    ("state-mismatch", ["does not fit a patchcore model"]),
    ("unfinished", ["unfinished"]),
    ("options-unknown", ["unknown option"]),
])
def test_malformed_checkpoints(kind: str, names: list[str], ckpt: Path, tmp_path: Path, toy_master: Path) -> None:
    changes = {
        "no-run": lambda p: p.pop("run"),
        "run-as-string": lambda p: p.update(run="fast"),
        "epochs-negative": lambda p: p["run"].update(epochs=-3),
        "relabelled": lambda p: p.update(method="simplenet"),
        "unknown-method": lambda p: p.update(method="nosuch", identity=None),
        "state-mismatch": lambda p: p.update(state={"model": {"memory_bank": torch.zeros(3, 7)}}),
        "unfinished": lambda p: p.update(finished=False),
        "options-unknown": lambda p: p["options"].update(evil=1),
    }
    edit_checkpoint(ckpt, changes[kind])
    predict_fault(ckpt, tmp_path, toy_master, *names)


@pytest.mark.parametrize("content,names", [("hello", ["str"]), ({"conv.weight": "abc"}, ["not a tensor"]),
                                          ({}, ["empty"])])
def test_weights_of_the_wrong_structure(content, names, toy: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    weights = tmp_path / "w.pt"
    torch.save(content, weights)
    args = ["benchmark", "--method", "patchcore", "--option", "backbone=resnet18", "--data", toy, "--out",
            tmp_path / "out", "--category", "disc", "--image-size", "32", "--weights", weights, "--quiet", "--device", "cpu"]
    run_fault(args, world=tmp_path, out=tmp_path / "out", out_may_change=True, names=["w.pt", *names])
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("payload,names", [
    ({"format": "insplad-efficientad-teacher/1", "state_dict": {}}, ["'config'"]),
    ({"format": "insplad-efficientad-teacher/1", "state_dict": {}, "config": {"out_channels": [384]}}, ["out_channels"]),
    ({"format": "insplad-efficientad-teacher/1", "state_dict": {"w": "x"}, "config": {"out_channels": 8}}, ["state_dict"]),
])
def test_teachers_of_the_wrong_structure(payload, names, toy: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    teacher = tmp_path / "teacher.pt"
    torch.save(payload, teacher)
    args = ["benchmark", "--method", "efficientad", "--data", toy, "--out", tmp_path / "out", "--category", "disc",
            "--image-size", "64", "--epochs", "1", "--option", f"teacher={teacher}", "--quiet", "--device", "cpu"]
    run_fault(args, world=tmp_path, out=tmp_path / "out", out_may_change=True, names=["teacher.pt", *names])


# -- decompression bombs -----------------------------------------------------------------------------
def test_bomb_in_the_training_set(toy: Path, tmp_path: Path) -> None:
    bomb = bomb_png(toy / "disc/train/good/999.png")
    run_fault(bench(toy, tmp_path / "out", "--category", "disc"), world=tmp_path, out=tmp_path / "out",
              out_may_change=True, names=[str(bomb), "too large"])


def test_bomb_given_to_predict(ckpt: Path, tmp_path: Path) -> None:
    bomb = bomb_png(tmp_path / "big.png")
    run_fault(["predict", "--checkpoint", ckpt, bomb, "--device", "cpu"], world=tmp_path, names=[str(bomb), "too large"])


def test_bomb_given_to_distill_teacher(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    bomb = bomb_png(images / "big.png")
    args = ["distill-teacher", images, "--out", tmp_path / "t.pt", "--steps", "1", "--image-size", "64",
            "--batch-size", "1", "--no-pretrained", "--no-progress", "--device", "cpu"]
    run_fault(args, world=tmp_path, names=[str(bomb), "too large"])


# -- outputs of predict and distill-teacher ------------------------------------------------------------
def test_distill_out_inside_image_dir_is_refused(toy: Path, tmp_path: Path) -> None:
    run_fault(["distill-teacher", toy, "--out", toy / "teacher.pt", "--steps", "1"], world=tmp_path, names=["IMAGE_DIR"])


def test_distill_never_overwrites_a_foreign_file(toy: Path, tmp_path: Path) -> None:
    precious = tmp_path / "notes.pt"
    precious.write_text("my notes")
    run_fault(["distill-teacher", toy, "--out", precious, "--steps", "1"], world=tmp_path,
              names=[str(precious), "never overwritten"])


def test_predict_out_containing_its_image_is_refused(ckpt: Path, tmp_path: Path) -> None:
    image = tmp_path / "imgs" / "a.png"
    image.parent.mkdir()
    bomb_png(image, 8, 8)
    run_fault(["predict", "--checkpoint", ckpt, image, "--out", tmp_path / "imgs"], world=tmp_path, names=["IMAGE"])


def test_predict_out_that_is_a_foreign_folder_is_refused(ckpt: Path, tmp_path: Path, toy_master: Path) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.png").write_bytes(b"x")
    run_fault(["predict", "--checkpoint", ckpt, toy_master / "disc/test/good/000.png", "--out", foreign],
              world=tmp_path, names=[str(foreign), "not written by insplad predict"])


# -- numeric options ------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,code,name", [
    (["--epochs", "0"], 2, "--epochs"),
    (["--image-size", "1000000"], 2, "--image-size"),
    (["--batch-size", "0"], 2, "--batch-size"),
    (["--seed", "-1"], 2, "--seed"),
    (["--runs", "0"], 2, "--runs"),
    (["--checkpoint-every", "-2"], 2, "--checkpoint-every"),
    (["--seed", str(2**31 - 1), "--runs", "2"], 1, "--seed"),
    (["--option", "coreset_ratio=nan"], 1, "coreset_ratio"),
    (["--option", "max_bank=" + "9" * 40], 1, "max_bank"),
    (["--device", "tpu"], 1, "--device"),
])
def test_benchmark_numeric_options(extra: list[str], code: int, name: str, toy: Path, tmp_path: Path) -> None:
    args = ["benchmark", "--method", "patchcore", "--data", toy, "--out", tmp_path / "out", "--quiet", *extra]
    run_fault(args, world=tmp_path, code=code, names=[name])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sizes", ["0", "-4", "1,abc", ","])
def test_profile_batch_sizes(sizes: str, tmp_path: Path) -> None:
    run_fault(["profile", "--method", "patchcore", "--batch-sizes", sizes], world=tmp_path, code=2, names=["--batch-sizes"])


@pytest.mark.parametrize("extra,name", [(["--lr", "nan"], "--lr"), (["--lr", "0"], "--lr"), (["--workers", "-1"], "--workers"),
                                        (["--steps", "0"], "--steps")])
def test_distill_numeric_options(extra: list[str], name: str, toy: Path, tmp_path: Path) -> None:
    run_fault(["distill-teacher", toy, "--out", tmp_path / "t.pt", *extra], world=tmp_path, code=2, names=[name])


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_out_parent_is_one_line(toy: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        run_fault(bench(toy, locked / "out"), world=tmp_path, names=["locked"])
    finally:
        locked.chmod(0o700)


def test_hostile_benchmark_state_is_one_line(run_copy: Path, toy_master: Path, tmp_path: Path) -> None:
    (run_copy / "benchmark-state.json").write_text("[" * 100_000)
    run_fault(bench(toy_master, run_copy), world=tmp_path, names=["benchmark-state.json", "nested too deeply"])


def test_checkpoint_of_another_format_is_refused(ckpt: Path, tmp_path: Path, toy_master: Path) -> None:
    edit_checkpoint(ckpt, lambda p: p.update(format="insplad-checkpoint/0"))
    predict_fault(ckpt, tmp_path, toy_master, "not an insplad-checkpoint/1 checkpoint")
