"""Interrupted, concurrent and starved runs of the data commands, as real processes:
SIGTERM / SIGINT / kill -9 at several points of build-splits, two runs on one OUT, a full disk."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from insplad_tools.dataset.pipeline import BuildOptions, build_dataset
from insplad_tools.safety import OUTPUT_MARKER, lock_path
from insplad_tools.synth.generate import SynthConfig, generate
from tests.faults.harness import (assert_no_leftovers, assert_no_traceback, diff_snapshots, insplad_exe, run_cli,
                                  run_subprocess, snapshot)


@pytest.fixture(scope="module")
def slow_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw set whose build takes a few seconds (large frames), so a signal lands mid-build."""
    raw = tmp_path_factory.mktemp("slow") / "raw"
    generate(raw, SynthConfig(seed=3, frames=16, frame_size=(1600, 1200), defect_rate=0.5, roboflow=False,
                              progress=False))
    return raw


@pytest.fixture(scope="module")
def reference(slow_raw: Path) -> dict[str, str]:
    """Hashes of an uninterrupted build (without the marker, which records the time)."""
    out = slow_raw.parent / "reference"
    build_dataset(slow_raw, out, BuildOptions(progress=False))
    return {k: v for k, v in snapshot(out).items() if k != OUTPUT_MARKER}


def _start(raw: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*insplad_exe(), "build-splits", str(raw), str(out), "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the build ended (exit {proc.returncode}) before the trigger point: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("trigger point not reached")
        time.sleep(0.01)


def _temporaries(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]


def _staged(out: Path) -> int:
    return sum(len(list((t / ".staging").glob("*.png"))) for t in _temporaries(out) if (t / ".staging").is_dir())


TRIGGERS = {
    "temp-folder-created": lambda out: bool(_temporaries(out)),
    "first-crops-written": lambda out: _staged(out) >= 1,
    "many-crops-written": lambda out: _staged(out) >= 20,
}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("point", list(TRIGGERS))
def test_signal_mid_build_leaves_nothing(slow_raw: Path, tmp_path: Path, sig: signal.Signals, point: str) -> None:
    out = tmp_path / "out"
    before = snapshot(slow_raw)
    proc = _start(slow_raw, out)
    _wait_for(lambda: TRIGGERS[point](out), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and f"interrupted by {sig.name}" in err
    assert not out.exists()
    assert_no_leftovers(out)
    assert diff_snapshots(before, snapshot(slow_raw)) == []


@pytest.mark.parametrize("point", ["temp-folder-created", "many-crops-written"])
def test_kill_9_then_rerun_cleans_up_and_gives_the_same_bytes(slow_raw: Path, tmp_path: Path,
                                                               reference: dict[str, str], point: str) -> None:
    out = tmp_path / "out"
    proc = _start(slow_raw, out)
    _wait_for(lambda: TRIGGERS[point](out), proc)
    proc.kill()
    proc.wait(timeout=30)
    stale = _temporaries(out)
    assert stale and lock_path(out).exists()  # what kill -9 leaves behind
    rerun = run_subprocess(["build-splits", slow_raw, out, "-q"])
    assert_no_traceback(rerun)
    assert rerun.exit_code == 0, rerun.output
    assert "removed stale lock" in rerun.stderr and f"removed stale temporary folder {stale[0]}" in rerun.stderr
    assert_no_leftovers(out)
    assert {k: v for k, v in snapshot(out).items() if k != OUTPUT_MARKER} == reference


def test_second_concurrent_run_fails_with_the_lock_holder(slow_raw: Path, tmp_path: Path,
                                                           reference: dict[str, str]) -> None:
    out = tmp_path / "out"
    first = _start(slow_raw, out)
    _wait_for(lambda: lock_path(out).exists(), first)
    second = run_cli(["build-splits", slow_raw, out, "-q"])
    assert_no_traceback(second)
    assert second.exit_code == 1
    assert f"another insplad build-splits (pid {first.pid} on host" in second.output and str(out) in second.output
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert {k: v for k, v in snapshot(out).items() if k != OUTPUT_MARKER} == reference
    assert_no_leftovers(out)


def test_second_concurrent_synth_fails(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([*insplad_exe(), "synth", str(out), "--frames", "40", "--frame-size", "1600x1200", "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for(lambda: lock_path(out).exists(), first)
    second = run_cli(["synth", out, "--frames", "2", "--quiet"])
    assert second.exit_code == 1 and "another insplad synth" in second.output
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=60)
    assert not out.exists()
    assert_no_leftovers(out)


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 512 KiB tmpfs, where the platform lets us mount one (root on Linux); skipped otherwise."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()[:100]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_disk_full_is_one_line_and_leaves_nothing(slow_raw: Path, tiny_disk: Path) -> None:
    out = tiny_disk / "data"
    before = snapshot(slow_raw)
    outcome = run_subprocess(["build-splits", slow_raw, out, "-q"])
    assert_no_traceback(outcome)
    assert outcome.exit_code == 1
    errors = outcome.error_lines()
    assert len(errors) == 1 and "No space left on device" in errors[0] and "nothing was written" in errors[0]
    assert list(tiny_disk.iterdir()) == []
    assert diff_snapshots(before, snapshot(slow_raw)) == []


def _finaliser_that_gets_a_signal(kind: str) -> None:
    """Create and drop an object whose finaliser (``__del__`` or a weakref callback) receives SIGTERM."""
    import weakref

    def receive(*_: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs on a bytecode boundary inside the finaliser
            pass

    class Finalised:
        def __del__(self) -> None:
            receive()

    class Plain:
        pass

    if kind == "__del__":
        obj = Finalised()
        del obj
    else:
        obj2 = Plain()
        ref = weakref.ref(obj2, receive)
        del obj2
        assert ref() is None


@pytest.mark.parametrize("kind", ["__del__", "weakref callback"])
def test_signal_landing_in_a_finaliser_still_interrupts(kind: str) -> None:
    """Python drops exceptions raised in finalisers (tqdm's ``__del__`` got the SIGTERM in a CI run,
    which then finished and exited 0); the run must still stop with 128 + signum."""
    from insplad_tools.safety import Interrupted, signals_raise

    with pytest.raises(Interrupted) as caught:
        with signals_raise():
            _finaliser_that_gets_a_signal(kind)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                pass
    assert caught.value.code == 128 + signal.SIGTERM
