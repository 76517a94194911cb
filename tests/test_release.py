"""The real release's shape: InsPLAD-det reader, conditions files, link-crops, re-split, audit, aliases.

Everything runs on `insplad synth --layout insplad-det` output (small frames): synth -> link-crops ->
build-splits --conditions -> audit, checked against the generator's truth.json.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from insplad_tools.cli import main
from insplad_tools.dataset.conditions import ConditionsError, apply_conditions, read_conditions, resolve_missing
from insplad_tools.dataset.det import parse_frame_name, read_insplad_det
from insplad_tools.dataset.split import Grouper
from insplad_tools.dataset.taxonomy import load_taxonomy, taxonomy_from_dict
from insplad_tools.errors import DatasetError, InspladError
from insplad_tools.mvtec import read_crop_folder, read_dataset
from insplad_tools.synth.generate import SynthConfig
from insplad_tools.synth.released import DET_CATEGORIES, generate_released

RELEASE_CLASSES = [name for name, _ in DET_CATEGORIES]


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("release") / "raw"
    generate_released(root, SynthConfig(seed=3, frames=12, towers=3, frame_size=(480, 320)))
    return root


@pytest.fixture(scope="module")
def linked(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("link") / "link"
    result = run("link-crops", release / "InsPLAD-det", release / "InsPLAD-fault", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    return out


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------ taxonomy, names

def test_all_18_release_classes_are_known_5_mapped_13_ignored() -> None:
    tax = load_taxonomy()
    mapped = {name: tax.category_of(name) for name in RELEASE_CLASSES}
    assert len(RELEASE_CLASSES) == 18
    assert sorted(c for c in mapped.values() if c) == sorted(tax.categories)
    assert sum(c is None for c in mapped.values()) == 13


@settings(deadline=None, max_examples=60)
@given(st.sampled_from(RELEASE_CLASSES), st.lists(st.sampled_from([" ", "-", "_", "  ", " - "]), min_size=3, max_size=3),
       st.booleans())
def test_class_names_match_whatever_their_spacing_or_case(name: str, seps: list[str], upper: bool) -> None:
    tax = load_taxonomy()
    words = name.replace("-", " ").split()
    variant = "".join(w + seps[i % len(seps)] for i, w in enumerate(words)).strip(" -_")
    variant = variant.upper() if upper else variant
    assert tax.category_of(variant) == tax.category_of(name)


def test_released_condition_and_asset_folder_names_resolve() -> None:
    tax = load_taxonomy()
    assert [tax.normalize_condition(c) for c in ("rust", "corrosao", "corrosão", "missing-cap", "bird-nest", "good")] == \
        ["corrosion", "corrosion", "corrosion", "missing_cap", "bird_nest", None]
    assert tax.category_of("isolador_vidro") == "glass_insulator"
    assert tax.category_of("polymer-insulator-upper-shackle") == "polymer_insulator_upper_shackle"


def test_an_alias_naming_two_categories_is_an_error_at_load() -> None:
    doc = {"categories": {"a": {"classes": ["Shared Name"]}, "b": {"classes": ["shared_name"]}}}
    with pytest.raises(InspladError, match="maps to both a and b"):
        taxonomy_from_dict(doc, "tax.json")


def test_frame_names_give_tower_and_visit_without_a_regex() -> None:
    assert parse_frame_name("284-1_DJI_0495.jpg").visit_id == "284-1"
    assert parse_frame_name("flight01_tower002_003.jpg") is None
    assert Grouper.create("tower").group_of("284-1_DJI_0495.jpg") == "tower284"
    assert Grouper.create("visit").group_of("284-2_DJI_0001.jpg") == "tower284-visit2"
    assert Grouper.create("tower").group_of("flight01_tower002_003.jpg") == "tower002"


# ------------------------------------------------------------------------------ InsPLAD-det reader

def test_det_reader_reads_every_split_and_handles_duplicate_names(release: Path) -> None:
    det = release / "InsPLAD-det"
    truth = json.loads((release / "truth.json").read_text())
    dups = set(truth["duplicate_names"])
    assert dups
    n_files = len(list((det / "train").glob("*.jpg"))) + len(list((det / "val").glob("*.jpg")))
    frames, problems = read_insplad_det(det, "exclude")
    assert {f.name for f in frames}.isdisjoint(dups) and len(frames) == n_files - len(dups)
    assert sum("--duplicate-images exclude" in str(p) for p in problems) == len(dups)
    assert not any("unknown" in str(p) for p in problems)
    first, _ = read_insplad_det(det, "first")
    assert len(first) == n_files
    with pytest.raises(InspladError, match="several image ids"):
        read_insplad_det(det, "error")
    ann = json.loads((det / "annotations" / "instances_train.json").read_text())["annotations"][0]
    assert set(ann) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}


# ------------------------------------------------------------------------------ link-crops

def test_link_crops_finds_the_true_source_of_every_crop_and_guesses_none(release: Path, linked: Path) -> None:
    truth = json.loads((release / "truth.json").read_text())["crops"]
    prov = rows(linked / "provenance.csv")
    assert sorted(r["crop"] for r in prov) == sorted(truth)  # one row per crop
    for r in prov:
        t = truth[r["crop"]]
        if t["duplicate_name"]:           # its frame is excluded: must not be linked elsewhere
            assert r["status"] == "unmatched", r
        else:
            assert r["status"] == "matched", r
            assert (r["frame"], r["annotation_id"]) == (t["frame"], str(t["annotation_id"]))
            assert abs(float(r["pad"]) - t["pad"]) <= 0.05  # the padding is recovered too (grid step 0.025)
    assert (linked / "scores.png").read_bytes().startswith(b"\x89PNG")
    cond = rows(linked / "conditions.csv")
    assert len(cond) == sum(r["status"] == "matched" for r in prov)
    assert {r["condition"] for r in cond} <= {"good", "rust", "missing-cap", "bird-nest"}


def test_link_crops_reports_ambiguous_unmatched_and_conflicting_crops(release: Path, tmp_path: Path) -> None:
    det, fault = tmp_path / "det", tmp_path / "fault"
    shutil.copytree(release / "InsPLAD-det", det)
    shutil.copytree(release / "InsPLAD-fault", fault)
    truth = json.loads((release / "truth.json").read_text())["crops"]
    # a second copy of one frame: its crops now fit two boxes equally -> ambiguous
    crop_rel, t = next((k, v) for k, v in sorted(truth.items()) if not v["duplicate_name"] and v["det_split"] == "train")
    coco_path = det / "annotations" / "instances_train.json"
    coco = json.loads(coco_path.read_text())
    img = next(i for i in coco["images"] if i["file_name"] == t["frame"])
    shutil.copy(det / "train" / t["frame"], det / "train" / "999-1_DJI_9999.jpg")
    new_id = max(i["id"] for i in coco["images"]) + 1
    coco["images"].append({**img, "id": new_id, "file_name": "999-1_DJI_9999.jpg"})
    next_ann = max(a["id"] for a in coco["annotations"]) + 1
    for k, a in enumerate([a for a in coco["annotations"] if a["image_id"] == img["id"]]):
        coco["annotations"].append({**a, "id": next_ann + k, "image_id": new_id})
    coco_path.write_text(json.dumps(coco))
    # a crop of nothing -> unmatched; the same crop filed under another condition -> conflict
    from PIL import Image
    import numpy as np
    asset = crop_rel.split("/")[0]
    noise = np.random.default_rng(0).integers(0, 255, (60, 40, 3), dtype=np.uint8)
    (fault / asset / "test" / "good").mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise).save(fault / asset / "test" / "good" / "noise.png")
    other_id, other = next((k, v) for k, v in sorted(truth.items())
                           if not v["duplicate_name"] and v["frame"] != t["frame"] and k.startswith("vari-grip/"))
    target = fault / "vari-grip" / "test" / ("rust" if other["condition"] != "corrosion" else "bird-nest")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(fault / other_id, target / "copy.jpg")

    out = tmp_path / "link"
    result = run("link-crops", det, fault, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    by_crop = {r["crop"]: r for r in rows(out / "provenance.csv")}
    assert by_crop[crop_rel]["status"] == "ambiguous"
    assert by_crop[f"{asset}/test/good/noise.png"]["status"] == "unmatched"
    copy_rel = f"vari-grip/test/{target.name}/copy.jpg"
    assert by_crop[copy_rel]["status"] == by_crop[other_id]["status"] == "conflict"
    linked_crops = {r["crop"] for r in rows(out / "conditions.csv")}
    assert crop_rel not in linked_crops and copy_rel not in linked_crops and other_id not in linked_crops


def test_link_crops_refuses_an_output_inside_its_input(release: Path) -> None:
    result = CliRunner().invoke(main, ["link-crops", str(release / "InsPLAD-det"), str(release / "InsPLAD-fault"),
                                       "--out", str(release / "InsPLAD-fault" / "link")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert not (release / "InsPLAD-fault" / "link").exists()


# ------------------------------------------------------------------------------ conditions + build-splits

def test_conditions_file_errors_name_the_line(release: Path, tmp_path: Path) -> None:
    det = release / "InsPLAD-det"
    frames, _ = read_insplad_det(det)
    tax = load_taxonomy()
    frame = next(f for f in frames if any(tax.category_of(o.raw_class) == "vari_grip" for o in f.objects))
    obj = next(o for o in frame.objects if tax.category_of(o.raw_class) == "vari_grip")
    x0, y0, x1, y1 = obj.box
    cases = {
        "image,annotation_id,condition\nnope.jpg,1,good\n": "line 2: image nope.jpg is not among the frames",
        f"image,annotation_id,condition\n{frame.name},99999,good\n": "line 2: annotation id 99999",
        f"image,annotation_id,condition\n{frame.name},{obj.annotation_id},rust\n{frame.name},{obj.annotation_id},good\n":
            "line 3: condition 'good' .* conflicts with 'rust' on line 2",
        f"image,annotation_id,condition\n{frame.name},{obj.annotation_id},melted\n": "line 2: unknown condition 'melted'",
        f"image,annotation_id,condition\n{frame.name},{obj.annotation_id},missing-cap\n": "line 2: .*not a defect type of vari_grip",
    }
    for text, message in cases.items():
        path = tmp_path / "c.csv"
        path.write_text(text)
        with pytest.raises(ConditionsError, match=message):
            apply_conditions(frames, read_conditions(path), tax, path)
    # keyed by image + box, and JSON: both accepted
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"image": frame.name, "x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0,
                                 "condition": "bird-nest"}]))
    out = apply_conditions(frames, read_conditions(path), tax, path)
    got = next(o for f in out if f.name == frame.name for o in f.objects if o.annotation_id == obj.annotation_id)
    assert got.condition == "bird-nest"
    with pytest.raises(ConditionsError, match="have no condition"):
        resolve_missing(out, tax, "error", labelled=True)
    skipped, problems = resolve_missing(out, tax, "skip", labelled=True)
    assert sum(len(f.objects) for f in out) - sum(len(f.objects) for f in skipped) == len(problems) > 0


def test_a_bad_conditions_file_fails_the_cli_in_one_line_and_writes_nothing(release: Path, tmp_path: Path) -> None:
    bad = tmp_path / "c.csv"
    bad.write_text("image,annotation_id,condition\nmissing.jpg,1,good\n")
    out = tmp_path / "out"
    result = run("build-splits", release / "InsPLAD-det", out, "--conditions", bad, "-q")
    assert result.exit_code != 0 and "c.csv" in result.output and "line 2" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_resplit_by_tower_is_leak_free_where_the_official_split_leaks(release: Path, linked: Path,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "refit"
    result = run("build-splits", release / "InsPLAD-det", out, "--conditions", linked / "conditions.csv",
                 "--group-by", "tower", "--missing-condition", "skip", "--min-size", "8", "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arguments"]["conditions"]["file"] == "conditions.csv"
    assert any("--duplicate-images exclude" in p for p in manifest["problems"])
    truth = json.loads((release / "truth.json").read_text())["crops"]
    want = {(t["frame"], str(t["annotation_id"])): t["condition"] for t in truth.values() if not t["duplicate_name"]}
    for entry in manifest["files"]:   # every object carries the condition of its released crop
        expected = want[(entry["frame"], entry["annotation_id"])]
        assert (entry["defect"] == "good") == (expected == "normal")
    # the re-split passes the audit; the official-style random split does not
    clean = run("audit", out, "--strict", "-q")
    assert clean.exit_code == 0, clean.output
    png = tmp_path / "leaks.png"
    leaky = run("audit", release / "InsPLAD-fault", "--provenance", linked / "provenance.csv", "--strict", "-q",
                "--examples", png)
    assert leaky.exit_code == 1 and png.read_bytes().startswith(b"\x89PNG")
    report = json.loads(run("audit", release / "InsPLAD-fault", "--provenance", linked / "provenance.csv",
                            "--json").output)
    assert report["leaks"] > 0 and sum(c["counts"]["tower"] for c in report["categories"]) > 0


def test_audit_finds_exact_and_near_duplicates_without_provenance(release: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(release / "InsPLAD-fault", data)
    cat = data / "glass-insulator"
    train = sorted((cat / "train" / "good").iterdir())[0]
    shutil.copy(train, cat / "test" / "good" / "exact.jpg")
    from PIL import Image
    with Image.open(train) as img:
        img.resize((img.width + 3, img.height + 4)).save(cat / "test" / "good" / "near.png")
    report = json.loads(run("audit", data, "--json").output)
    glass = next(c for c in report["categories"] if c["category"] == "glass-insulator")
    assert glass["counts"]["exact"] >= 1 and glass["counts"]["near"] >= 1
    kinds = {(p["kind"], p["test"].rsplit("/", 1)[-1]) for p in glass["examples"]}
    assert ("exact", "exact.jpg") in kinds and ("near", "near.png") in kinds
    assert report["provenance"] is None


# ------------------------------------------------------------------------------ released folders as they are

def test_released_folders_read_as_they_ship(release: Path, tmp_path: Path) -> None:
    cats = read_dataset(release / "InsPLAD-fault")
    assert set(cats) == {"glass-insulator", "lightning-rod-suspension", "polymer-insulator-upper-shackle",
                         "vari-grip", "yoke-suspension"}
    assert {d for c in cats.values() for d in c.defects} <= {"rust", "missing-cap", "bird-nest"}
    flat = tmp_path / "flat"
    for crop in read_crop_folder(release / "InsPLAD-fault"):
        dest = flat / crop.asset / crop.condition / f"{crop.split}_{Path(crop.rel).name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(release / "InsPLAD-fault" / crop.rel, dest)
    flat_crops = read_crop_folder(flat)
    assert len(flat_crops) == len(read_crop_folder(release / "InsPLAD-fault"))
    assert all(c.split is None for c in flat_crops)
    with pytest.raises(DatasetError, match="link-crops"):
        read_dataset(flat)


def test_leaderboard_lines_released_names_up_with_the_papers_rows() -> None:
    from leaderboard.render import build_table
    from leaderboard.results import build_results

    per_category = {name: {"n_test_good": 10, "n_test_anomalous": 5, "n_masks": 0,
                           "runs": [{"seed": 0, "image_auroc": 0.9, "pixel_auroc": None, "aupro": None, "f1_max": 0.5}]}
                    for name in ("glass-insulator", "vari-grip")}
    doc = build_results(method="differnet", variant={"backbone": "alexnet", "attention": "se", "blocks": [1, 2, 3]},
                        dataset={"name": "insplad-fault", "manifest_sha256": "a" * 64}, seeds=[0], report="best",
                        per_category=per_category)
    table = build_table([("ours.json", doc)], reference="insplad-fault")
    ours = table.columns[-1]
    assert ours.values["glass_insulator"] == ours.values["vari_grip"] == pytest.approx(90.0)
    assert {c for c, _ in table.rows} == {"glass_insulator", "lightning_rod_suspension",
                                          "polymer_insulator_upper_shackle", "vari_grip", "yoke_suspension", "mean"}


@settings(deadline=None, max_examples=40)
@given(st.integers(0, 2**32 - 1), st.floats(0, 20), st.floats(0, 20), st.floats(2, 40), st.floats(2, 40),
       st.sampled_from([4, 8, 24]))
def test_area_thumbnails_are_exact_area_means(seed: int, x0: float, y0: float, w: float, h: float, size: int) -> None:
    import numpy as np
    from insplad_tools.dataset.link import area_thumbnails

    grey = np.random.default_rng(seed).integers(0, 256, (128, 128)).astype(np.uint8)
    thumb = area_thumbnails(grey, np.array([[x0, y0, x0 + w, y0 + h]]), size)[0]
    # equal-area cells: the thumbnail's mean is the box's mean, which a 1x1 thumbnail gives directly
    whole = area_thumbnails(grey, np.array([[x0, y0, x0 + w, y0 + h]]), 1)[0, 0]
    assert abs(float(thumb.mean()) - float(whole)) < 1e-3
    assert grey.min() - 1e-3 <= thumb.min() and thumb.max() <= grey.max() + 1e-3
    # an integer-aligned box of whole blocks is the block mean
    block = area_thumbnails(grey, np.array([[8.0, 16.0, 8.0 + 4 * size, 16.0 + 2 * size]]), size)[0].reshape(size, size)
    assert np.allclose(block, grey[16:16 + 2 * size, 8:8 + 4 * size].reshape(size, 2, size, 4).mean((1, 3)), atol=1e-3)


def test_portuguese_and_condition_only_folders_link_and_rebuild(release: Path, tmp_path: Path) -> None:
    """A folder sorted by condition only, with Portuguese asset/condition names, links and re-splits."""
    flat = tmp_path / "fault"
    rename_asset = {"glass-insulator": "isolador_vidro"}
    rename_cond = {"rust": "corrosão"}
    for crop in read_crop_folder(release / "InsPLAD-fault"):
        asset = rename_asset.get(crop.asset, crop.asset)
        dest = flat / asset / rename_cond.get(crop.condition, crop.condition) / f"{crop.split}-{Path(crop.rel).name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(release / "InsPLAD-fault" / crop.rel, dest)
    out = tmp_path / "link"
    assert run("link-crops", release / "InsPLAD-det", flat, "--out", out, "-q").exit_code == 0
    prov = rows(out / "provenance.csv")
    assert {r["category"] for r in prov} >= {"glass_insulator", "yoke_suspension"}
    assert not any(r["status"] == "skipped" for r in prov)
    assert "corrosão" in {r["condition"] for r in rows(out / "conditions.csv")}
    built = tmp_path / "built"
    result = run("build-splits", release / "InsPLAD-det", built, "--conditions", out / "conditions.csv",
                 "--group-by", "visit", "--missing-condition", "skip", "--min-size", "8", "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((built / "manifest.json").read_text())
    assert {e["defect"] for e in manifest["files"]} >= {"good", "corrosion"}
    assert all(e["group"].startswith("tower") and "-visit" in e["group"] for e in manifest["files"])
