"""insplad_tools.safety and fsutil.atomic_output_dir: overlap, marker, lock, paths inside a root, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from insplad_tools.errors import InspladError
from insplad_tools.fsutil import atomic_output_dir
from insplad_tools.safety import (OUTPUT_MARKER, ensure_disjoint, is_own_output, lock_path, output_lock,
                                  resolve_inside, write_marker)


def test_disjoint_refuses_same_inside_and_containing(tmp_path: Path) -> None:
    raw = tmp_path / "proj" / "raw"
    raw.mkdir(parents=True)
    with pytest.raises(InspladError, match=r"OUT .* is the input RAW"):
        ensure_disjoint(raw, {"RAW": raw})
    with pytest.raises(InspladError, match=r"contains the input RAW"):
        ensure_disjoint(tmp_path / "proj", {"RAW": raw})
    with pytest.raises(InspladError, match=r"lies inside the input --masks"):
        ensure_disjoint(raw / "out", {"RAW": None, "--masks": raw})
    ensure_disjoint(tmp_path / "proj" / "raw2", {"RAW": raw})  # a sibling with a common prefix is fine


def test_disjoint_sees_through_symlinks(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (tmp_path / "alias").symlink_to(raw)
    with pytest.raises(InspladError, match="alias"):
        ensure_disjoint(tmp_path / "alias", {"RAW": raw})


@settings(deadline=None, max_examples=60)
@given(st.lists(st.sampled_from(["a", "b", "..", "."]), min_size=0, max_size=4),
       st.lists(st.sampled_from(["a", "b"]), min_size=0, max_size=3))
def test_disjoint_agrees_with_path_containment(out_parts: list[str], in_parts: list[str]) -> None:
    base = Path("/nonexistent-insplad-root/x")
    out = Path(os.path.normpath(base.joinpath(*out_parts)))
    inp = base.joinpath(*in_parts)
    overlap = out == inp or out in inp.parents or inp in out.parents
    if overlap:
        with pytest.raises(InspladError):
            ensure_disjoint(out, {"RAW": inp})
    else:
        ensure_disjoint(out, {"RAW": inp})


def test_marker_and_own_output(tmp_path: Path) -> None:
    folder = tmp_path / "o"
    folder.mkdir()
    assert not is_own_output(folder)
    write_marker(folder, "insplad test")
    data = json.loads((folder / OUTPUT_MARKER).read_text())
    assert data["command"] == "insplad test" and data["pid"] == os.getpid() and "created" in data
    assert is_own_output(folder)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "manifest.json").write_text(json.dumps({"tool": {"name": "insplad build-splits"}}))
    assert is_own_output(legacy)
    (legacy / "manifest.json").write_text(json.dumps({"tool": "someone else"}))
    assert not is_own_output(legacy)


def test_overwrite_replaces_only_own_output(tmp_path: Path) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(InspladError, match="not a folder written by insplad"):
        with atomic_output_dir(foreign, overwrite=True):
            pass
    assert (foreign / "holiday.jpg").read_bytes() == b"x"
    with atomic_output_dir(tmp_path / "mine") as tmp:
        (tmp / "a").write_text("1")
    with atomic_output_dir(tmp_path / "mine", overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == [OUTPUT_MARKER, "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "photos"]


def test_failed_body_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    with output_lock(out, "insplad build-splits") as path:
        assert path == lock_path(out) and path.parent == tmp_path
        with pytest.raises(InspladError, match=rf"another insplad build-splits \(pid {os.getpid()} on host .* is writing"):
            with output_lock(out, "insplad build-splits"):
                pass
    assert not lock_path(out).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path(out).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                          "started": "then", "command": "insplad synth"}))
    with output_lock(out, "insplad synth"):
        pass
    assert "removed stale lock" in capsys.readouterr().err
    assert not lock_path(out).exists()


def test_lock_of_another_host_is_respected(tmp_path: Path) -> None:
    out = tmp_path / "out"
    lock_path(out).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "t", "command": "insplad synth"}))
    with pytest.raises(InspladError, match="on host elsewhere"):
        with output_lock(out, "insplad synth"):
            pass
    assert lock_path(out).exists()


@pytest.mark.parametrize("rel, why", [("/etc/passwd", "absolute"), ("../x", "outside"), ("a/../../x", "outside"),
                                      ("", "non-empty"), (["a"], "non-empty"), ("C:\\x", "absolute")])
def test_resolve_inside_refuses(tmp_path: Path, rel: object, why: str) -> None:
    with pytest.raises(InspladError, match=rf"coco.json: images\[3\].*{why}"):
        resolve_inside(tmp_path, rel, "coco.json: images[3]")  # type: ignore[arg-type]


def test_resolve_inside_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "in").symlink_to(root / "sub")
    (root / "out").symlink_to(tmp_path)
    assert resolve_inside(root, "in/a.jpg", "x") == (root / "sub" / "a.jpg").resolve()
    assert resolve_inside(root, "sub/../sub/a.jpg", "x") == (root / "sub" / "a.jpg").resolve()
    with pytest.raises(InspladError, match="leads outside"):
        resolve_inside(root, "out/secret", "x")


def test_sigterm_inside_atomic_output_removes_the_temporary_folder(tmp_path: Path) -> None:
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from insplad_tools.fsutil import atomic_output_dir\n"
        "with atomic_output_dir(Path(sys.argv[1])) as tmp:\n"
        "    (tmp / 'x').write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    raise AssertionError('not reached')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "Traceback" not in proc.stderr and "interrupted by SIGTERM" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_folder_of_a_dead_run_is_removed_and_reported(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = tmp_path / f".out.tmp-{dead}-abc"
    stale.mkdir()
    (stale / OUTPUT_MARKER).write_text(json.dumps({"tool": "insplad", "pid": dead}))
    (stale / "crop.png").write_bytes(b"x" * 100)
    foreign = tmp_path / f".out.tmp-{dead}-zzz"  # same name pattern, not ours: kept
    foreign.mkdir()
    (foreign / "keep").write_text("k")
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("1")
    assert not stale.exists() and (foreign / "keep").exists()
    assert f"removed stale temporary folder {stale}" in capsys.readouterr().err


def test_output_moved_aside_by_a_dead_run_is_restored(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """kill -9 between moving the old output aside and renaming the new one: the next run puts it back."""
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("old")
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    os.replace(tmp_path / "out", tmp_path / f".out.old-{dead}")
    with pytest.raises(InspladError, match="exists and is not empty"):
        with atomic_output_dir(tmp_path / "out"):
            pass
    assert (tmp_path / "out" / "a").read_text() == "old"
    assert "restored" in capsys.readouterr().err


@settings(deadline=None, max_examples=80)
@given(st.lists(st.sampled_from(["a", "b", "..", ".", "link", "c.jpg"]), min_size=1, max_size=6))
def test_resolve_inside_never_returns_a_path_outside(parts: list[str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        (root / "a").mkdir(parents=True)
        (root / "link").symlink_to(Path(tmp))  # a link leading out of the root
        rel = "/".join(parts)
        try:
            got = resolve_inside(root, rel, "entry")
        except InspladError as exc:
            assert "entry" in exc.message
        else:
            assert got == root.resolve() or root.resolve() in got.parents


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2 ** 32 - 1), st.floats(0, 1))
def test_rle_check_accepts_every_genuine_rle(h: int, w: int, seed: int, density: float) -> None:
    """The bounds checked before pycocotools sees an RLE never reject one pycocotools itself wrote."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from annotations.coco_export import _rle_problem
    from annotations.rasterize import decode_rle, rle_counts

    mask = (np.random.default_rng(seed).random((h, w)) < density).astype(np.uint8)
    encoded = mask_utils.encode(np.asfortranarray(mask))
    rle = {"size": [h, w], "counts": encoded["counts"].decode("ascii")}
    counts = rle_counts(rle["counts"])
    assert sum(counts) == h * w and min(counts) >= 0
    assert _rle_problem(rle) == ""
    assert np.array_equal(decode_rle(rle), mask.astype(bool))
    assert _rle_problem({"size": [h, w], "counts": counts}) == ""
    assert _rle_problem({"size": [h, w], "counts": [*counts[:-1], counts[-1] + 1]}) != ""


def test_stale_lock_takeover_never_removes_a_fresh_lock(tmp_path: Path) -> None:
    """Two runs judging one stale lock: the slower one must not remove the lock the faster one just took."""
    from insplad_tools.safety import _remove_stale

    path = lock_path(tmp_path / "out")
    stale = {"pid": 999999, "host": socket.gethostname(), "started": "t0", "command": "insplad synth"}
    fresh = {**stale, "pid": os.getpid(), "started": "t1"}
    path.write_text(json.dumps(fresh))  # someone took over between our judgement and our removal
    assert not _remove_stale(path, stale)
    assert json.loads(path.read_text()) == fresh
    path.write_text(json.dumps(stale))
    assert _remove_stale(path, stale) and not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
