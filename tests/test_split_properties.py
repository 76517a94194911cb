"""Property tests of the grouped split: never leaks, deterministic, stable when frames are added."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from insplad_tools.dataset.pipeline import BuildOptions, build_dataset
from insplad_tools.dataset.split import TEST, TRAIN, Grouper, side_of, split_items
from tests.test_build_splits import make_raw

CATEGORIES = ("glass_insulator", "vari_grip", "yoke_suspension")
item = st.tuples(st.sampled_from(CATEGORIES), st.text("abcdef0123", min_size=1, max_size=3), st.booleans())
items_st = st.lists(item, max_size=60)


def leaks(items: list[tuple[str, str, bool]], splits: list[str]) -> set[tuple[str, str]]:
    sides: dict[tuple[str, str], set[str]] = {}
    for (cat, group, _), split in zip(items, splits):
        sides.setdefault((cat, group), set()).add(split)
    return {key for key, s in sides.items() if len(s) > 1}


@settings(max_examples=200, deadline=None)
@given(items=items_st, seed=st.integers(0, 2**31), ratio=st.floats(0.01, 0.99))
def test_split_never_leaks_and_anomalies_go_to_test(items, seed, ratio) -> None:
    splits = split_items(items, seed, ratio)
    assert not leaks(items, splits)
    assert all(split == TEST for (_, _, anomalous), split in zip(items, splits) if anomalous)
    assert set(splits) <= {TRAIN, TEST}


@settings(max_examples=200, deadline=None)
@given(items=items_st, seed=st.integers(0, 2**31), ratio=st.floats(0.01, 0.99), data=st.data())
def test_split_is_deterministic_and_order_free(items, seed, ratio, data) -> None:
    splits = split_items(items, seed, ratio)
    assert split_items(list(items), seed, ratio) == splits
    order = data.draw(st.permutations(range(len(items))))
    shuffled = split_items([items[i] for i in order], seed, ratio)
    assert [splits[i] for i in order] == shuffled


@settings(max_examples=200, deadline=None)
@given(old=items_st, new=items_st, seed=st.integers(0, 2**31), ratio=st.floats(0.01, 0.99))
def test_adding_items_never_moves_existing_ones(old, new, seed, ratio) -> None:
    """New groups may bring anything; existing groups may only gain normal crops (an anomaly would
    pull the whole group of that category to test, the one documented exception)."""
    old_groups = {(c, g) for c, g, _ in old}
    added = [(c, g, a and (c, g) not in old_groups) for c, g, a in new]
    before = split_items(old, seed, ratio)
    after = split_items(old + added, seed, ratio)
    assert after[: len(old)] == before


def test_side_depends_only_on_group_and_seed_and_meets_the_ratio() -> None:
    groups = [f"tower{i:04d}" for i in range(4000)]
    share = sum(side_of(g, 7, 0.2) == TEST for g in groups) / len(groups)
    assert abs(share - 0.2) < 0.025
    assert [side_of(g, 7, 0.2) for g in groups] == [side_of(g, 7, 0.2) for g in groups]
    assert [side_of(g, 7, 0.2) for g in groups] != [side_of(g, 8, 0.2) for g in groups]
    assert Grouper.create("tower").group_of("flight03_Tower_012_004.jpg") == "tower012"
    assert Grouper.create("flight").group_of("flight03_tower012_004.jpg") == "flight03"
    assert Grouper.create(group_regex=r"^(\w+?)_").group_of("siteA_0001.jpg") == "siteA"
    assert Grouper.create(group_regex=r"^site(?P<group>[A-Z])").group_of("siteB_0001.jpg") == "B"


# --------------------------------------------------------------------------------- end to end

CLASSES = (("glass-insulator", "missing-cap"), ("vari-grip", "bird-nest"), ("yoke-suspension", "rust"))
BOXES = ((4, 4, 30, 34), (34, 6, 60, 40), (62, 10, 92, 44), (10, 40, 40, 70))
obj_st = st.tuples(st.sampled_from(range(len(CLASSES))), st.booleans(), st.sampled_from(range(len(BOXES))))
frame_st = st.lists(obj_st, min_size=1, max_size=3)


def to_frames(spec: dict[tuple[int, int], list[tuple[int, bool, int]]], normal_only: set[int] = frozenset()):
    frames = {}
    for (tower, k), objs in spec.items():
        frames[f"flight00_tower{tower:03d}_{k:03d}.jpg"] = [
            (CLASSES[c][0], CLASSES[c][1] if bad and tower not in normal_only else None, BOXES[b]) for c, bad, b in objs]
    return frames


@settings(max_examples=8, deadline=None)
@given(first=st.dictionaries(st.tuples(st.integers(0, 5), st.integers(0, 2)), frame_st, min_size=2, max_size=8),
       later=st.dictionaries(st.tuples(st.integers(0, 8), st.integers(3, 4)), frame_st, min_size=1, max_size=5),
       seed=st.integers(0, 1000))
def test_built_datasets_keep_existing_crops_when_frames_are_added(first, later, seed) -> None:
    old_frames = to_frames(first)
    # frames added to towers that already exist bring only normal objects
    new_frames = {**old_frames, **to_frames(later, normal_only={t for t, _ in first})}
    opts = BuildOptions(group_by="tower", seed=seed, test_ratio=0.4, progress=False, min_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = make_raw(tmp / "raw1", old_frames, fmt="voc", size=(96, 72))
        raw2 = make_raw(tmp / "raw2", new_frames, fmt="voc", size=(96, 72))
        runs = []
        for i, source in enumerate((raw, raw2)):
            try:
                build_dataset(source, tmp / f"out{i}", opts)
            except Exception as exc:  # too few crops for any category to have both train and test
                assert "no usable crops" in str(exc)
                runs.append({})
                continue
            doc = json.loads((tmp / f"out{i}" / "manifest.json").read_text())
            runs.append({e["path"]: e for e in doc["files"]})
            sides: dict[tuple[str, str], set[str]] = {}
            for e in doc["files"]:
                sides.setdefault((e["category"], e["group"]), set()).add(e["split"])
            assert all(len(s) == 1 for s in sides.values())
        before, after = runs
        for path, entry in before.items():
            assert path in after, path
            assert after[path]["sha256"] == entry["sha256"]
