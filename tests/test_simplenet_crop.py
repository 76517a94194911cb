"""SimpleNet's original preprocessing (``preprocess=crop``): one crop geometry for images, masks,
scoring and ``leaderboard check``; the full-image default unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from insplad_tools import mvtec
from leaderboard.check import check_submission
from leaderboard.cli import leaderboard
from leaderboard.predictions import read_category, write_category
from leaderboard.region import CentreCrop, crop_from_json
from leaderboard.results import validate_results
from leaderboard.scoring import score_category
from methods.base import RunConfig
from methods.benchmarking import BenchmarkConfig, run_benchmark
from methods.data import load_images_uint8
from methods.registry import build_detector
from tests.toydata import make_toy_mvtec

TINY = {"pretrain_embed_dim": "64", "target_embed_dim": "32", "dsc_hidden": "16"}
NOTE = "SimpleNet original preprocessing: resize 37, centre-crop 32; masks cropped identically (pixel metrics over the crop)"


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Path:
    """A toy dataset of 64x96 (rows x cols) images, so that the centre crop leaves parts of them out."""
    root = make_toy_mvtec(tmp_path_factory.mktemp("wide"), size=96, n_train=8, n_test_good=4, n_test_bad=4)
    for path in root.rglob("*.png"):
        Image.fromarray(np.asarray(Image.open(path))[16:80]).save(path)
    return root


# -- the geometry ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(80, 120), (120, 80)])
def test_a_marked_pixel_lands_where_the_image_puts_it(shape):
    crop = CentreCrop(40, 32)  # halves the shorter side: 80x120 -> 40x60, crop box from (4, 14)
    h, w = shape
    top, left = crop.box(h, w)
    assert crop.resized_shape(h, w) == (h // 2, w // 2) and (top, left) == ((h // 2 - 32) // 2, (w // 2 - 32) // 2)
    r, c = top + 6, left + 9  # a resized pixel inside the crop, and its 2x2 source block
    mask = np.zeros((h, w), bool)
    mask[2 * r:2 * r + 2, 2 * c:2 * c + 2] = True
    image = np.zeros((h, w, 3), np.uint8)
    image[mask] = 255
    cropped = crop.mask(mask)
    assert cropped.shape == (32, 32) and cropped.dtype == bool
    assert list(zip(*np.nonzero(cropped))) == [(6, 9)]
    seen = np.asarray(crop.image(Image.fromarray(image)))[..., 0]
    assert seen.shape == (32, 32) and np.unravel_index(seen.argmax(), seen.shape) == (6, 9)


@settings(deadline=None, max_examples=12)
@given(h=st.integers(8, 40), w=st.integers(8, 40), resize=st.integers(4, 24), data=st.data())
def test_crop_is_torchvision_resize_then_centre_crop_for_images_and_masks(h, w, resize, data):
    """The reference's transforms (bilinear for images; nearest for masks) are the oracle, pixel for pixel."""
    from torchvision import transforms

    size = data.draw(st.integers(1, resize))
    rng = np.random.default_rng(h * 1000 + w)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    mask = rng.random((h, w)) > 0.7
    crop = CentreCrop(resize, size)
    ref_image = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size)])(image)
    ref_mask = transforms.Compose([transforms.Resize(resize, interpolation=transforms.InterpolationMode.NEAREST),
                                   transforms.CenterCrop(size)])(Image.fromarray(mask.astype(np.uint8) * 255))
    assert np.array_equal(np.asarray(crop.image(image)), np.asarray(ref_image))
    assert np.array_equal(crop.mask(mask), np.asarray(ref_mask) > 0)


def test_crop_declarations_are_checked():
    assert crop_from_json(None) is None
    assert crop_from_json({"resize": 329, "crop": 288}) == CentreCrop(329, 288)
    for bad in ({"resize": 10, "crop": 12}, {"resize": 329}, {"resize": "329", "crop": 288}, [329, 288]):
        with pytest.raises(ValueError):
            crop_from_json(bad)


# -- scoring ----------------------------------------------------------------------------------------
def test_scoring_crops_the_masks_as_the_predictions_declare(wide, tmp_path):
    category = mvtec.read_category(wide, "disc")
    crop = CentreCrop(37, 32)
    items = []
    for s in category.test:  # a perfect map of the crop: the cropped mask itself
        mask = np.asarray(Image.open(s.mask_path)) > 0 if s.mask_path else np.zeros((64, 96), bool)
        items.append((s.rel, float(s.label), crop.mask(mask).astype(np.float32)))
    write_category(tmp_path / "crop", "disc", items, crop=crop)
    write_category(tmp_path / "full", "disc", items)
    declared = score_category(category, read_category(tmp_path / "crop"))
    assert declared["pixel_auroc"] == 1.0 and declared["aupro"] == 1.0
    assert declared["crop"] == {"resize": 37, "crop": 32}
    undeclared = score_category(category, read_category(tmp_path / "full"))  # stretched over the whole image
    assert "crop" not in undeclared and undeclared["pixel_auroc"] < 0.99


# -- SimpleNet end to end -----------------------------------------------------------------------------
def _bench(data: Path, out: Path, options: dict) -> dict:
    return run_benchmark(BenchmarkConfig(method="simplenet", data=data, out=out, options={**TINY, **options},
                                         epochs=1, image_size=32, batch_size=4, device="cpu", pretrained=False,
                                         progress=False), log=lambda _: None)


@pytest.fixture(scope="module")
def cropped_run(wide, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("simplenet-crop") / "run"
    _bench(wide, out, {"preprocess": "crop"})
    return out


def test_crop_run_writes_crop_sized_maps_and_a_submission_check_accepts(cropped_run, wide):
    doc = json.loads((cropped_run / "results.json").read_text())
    assert doc["crop"] == {"resize": 37, "crop": 32} and NOTE in doc["notes"]
    assert doc["variant"]["preprocess"] == "crop (resize 37, centre-crop 32)"
    assert doc["categories"][0]["pixel_auroc"] is not None
    preds = read_category(cropped_run / "predictions" / "seed-0" / "disc")
    assert preds.crop == CentreCrop(37, 32)
    assert all(preds.load_map(p).shape == (32, 32) for p in preds.items)
    assert check_submission(cropped_run, wide) == []
    result = CliRunner().invoke(leaderboard, ["check", str(cropped_run), "--data", str(wide)])
    assert result.exit_code == 0, result.output


def test_score_command_keeps_the_crop_of_the_predictions(cropped_run, wide, tmp_path):
    out = tmp_path / "rescored.json"
    result = CliRunner().invoke(leaderboard, ["score", str(cropped_run / "predictions" / "seed-0"), "--data", str(wide),
                                              "--out", str(out)])
    assert result.exit_code == 0, result.output
    rescored, doc = json.loads(out.read_text()), json.loads((cropped_run / "results.json").read_text())
    assert rescored["crop"] == doc["crop"] and rescored["categories"][0]["runs"] == doc["categories"][0]["runs"]


def test_check_refuses_predictions_whose_crop_differs_from_the_results(cropped_run, wide, tmp_path):
    import shutil

    sub = tmp_path / "sub"
    shutil.copytree(cropped_run, sub)
    path = sub / "predictions" / "seed-0" / "disc" / "predictions.json"
    payload = json.loads(path.read_text())
    del payload["crop"]  # the maps now claim to cover the whole image: masks are no longer cropped
    path.write_text(json.dumps(payload))
    problems = "\n".join(check_submission(sub, wide))
    assert "maps cover the whole image but results.json records crop" in problems
    assert "but the predictions give" in problems  # and the recomputed pixel numbers no longer match
    doc = json.loads((cropped_run / "results.json").read_text())
    assert validate_results({**doc, "crop": {"resize": 30, "crop": 32}})  # a crop that cannot fit is invalid


def test_the_full_image_default_is_unchanged(wide, tmp_path):
    run = RunConfig(epochs=1, batch_size=4, image_size=32, pretrained=False, progress=False)
    default = build_detector("simplenet", TINY, run)
    assert default.crop is None and "preprocess" not in default.variant()
    assert "images resized to image_size without SimpleNet's 329->288 centre crop" in default.notes
    train = [s.path for s in mvtec.read_category(wide, "disc").train][:4]
    default.setup(train)
    squashed = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BILINEAR)) for p in train])
    assert np.array_equal(default.train_data.numpy(), squashed.transpose(0, 3, 1, 2))  # whole image, 32x32
    crop = build_detector("simplenet", {**TINY, "preprocess": "crop"}, run).crop
    cropped = np.stack([np.asarray(crop.image(Image.open(p).convert("RGB"))) for p in train])
    assert np.array_equal(load_images_uint8(train, crop).numpy(), cropped.transpose(0, 3, 1, 2))
    write_category(tmp_path / "disc", "disc", [("disc/test/good/000.png", 0.0, np.zeros((4, 4), np.float32))])
    assert "crop" not in json.loads((tmp_path / "disc" / "predictions.json").read_text())  # the old format


def test_bad_crop_options_are_one_line_errors():
    from insplad_tools.errors import InspladError

    run = RunConfig(epochs=1, batch_size=4, image_size=32, pretrained=False, progress=False)
    with pytest.raises(InspladError, match="preprocess='centre'"):
        build_detector("simplenet", {"preprocess": "centre"}, run)
    with pytest.raises(InspladError, match="crop_resize=20"):
        build_detector("simplenet", {"preprocess": "crop", "crop_resize": "20"}, run)
    assert build_detector("simplenet", {"preprocess": "crop", "crop_resize": "48"}, run).crop == CentreCrop(48, 32)
