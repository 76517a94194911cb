"""Per-crop masks from Roboflow exports drawn on full frames or on crops (annotations.masks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from skimage.draw import polygon2mask

from annotations.masks import CropMask, open_mask_source
from insplad_tools.errors import InspladError
from tests.test_roboflow_export import image_entry, polygon_ann, rf_name, uncompressed_rle, write_split

FRAME = (400, 300)  # W, H of the original frame
BOX_A = (50, 40, 150, 200)      # defective object, polygon well inside
BOX_B = (250, 50, 350, 250)     # defective object
BOX_N = (160, 200, 240, 290)    # normal object
POLY_A = [60, 60, 120, 70, 100, 150, 70, 130]
POLY_B = [260, 100, 340, 100, 340, 180, 300, 200]
POLY_STRAY = [140, 20, 230, 20, 230, 60, 140, 60]   # mostly outside A's box: belongs to nobody


def direct(flat: list[float], size: tuple[int, int] = FRAME) -> np.ndarray:
    """Rasterise an original-resolution polygon at the original size (the reference)."""
    return mask_utils.decode(mask_utils.frPyObjects([list(map(float, flat))], size[1], size[0]))[:, :, 0].astype(bool)


def crop(mask: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return mask[y0:y1, x0:x1]


def pad(box: tuple[int, int, int, int], p: int = 10) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return max(x0 - p, 0), max(y0 - p, 0), min(x1 + p, FRAME[0]), min(y1 + p, FRAME[1])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def frame_export(tmp: Path, export_size: tuple[int, int] = (200, 150), *, rle: bool = False, extra: bool = True,
                 decimals: int = 3) -> Path:
    """A frame-drawn export: one frame with three defect polygons, resized to ``export_size``."""
    sx, sy = export_size[0] / FRAME[0], export_size[1] / FRAME[1]

    def to_export(flat: list[float]) -> list[float]:
        return [round(v * (sx if i % 2 == 0 else sy), decimals) for i, v in enumerate(flat)]

    anns = []
    for ann_id, (cat, poly) in enumerate([(1, POLY_A), (2, POLY_B), (2, POLY_STRAY)], start=1):
        ann = polygon_ann(ann_id, 1, cat, to_export(poly))
        if rle:
            grid = mask_utils.decode(mask_utils.frPyObjects([ann["segmentation"][0]], export_size[1], export_size[0]))
            ann["segmentation"] = uncompressed_rle(grid[:, :, 0]) if ann_id % 2 else \
                {"size": [export_size[1], export_size[0]],
                 "counts": mask_utils.encode(np.asfortranarray(grid[:, :, 0]))["counts"].decode()}
            ann["iscrowd"] = 1
        anns.append(ann)
    root = tmp / "frames"
    write_split(root / "train", [image_entry(1, "flight01_tower001_001.jpg", *export_size, extra=extra),
                                 image_entry(2, "flight01_tower001_002.jpg", *export_size, extra=extra)], anns)
    return root


def ask(source, box, crop_box=None, *, frame="flight01_tower001_001.jpg", crop_shape=None) -> CropMask | None:
    crop_box = crop_box or pad(box)
    h, w = crop_shape or (crop_box[3] - crop_box[1], crop_box[2] - crop_box[0])
    return source.mask_for_crop(frame_name=frame, frame_size=FRAME, object_box=box, crop_box=crop_box,
                                crop_pixels=np.zeros((h, w, 3), np.uint8))


def test_frame_masks_land_pixel_exact(tmp_path: Path) -> None:
    source = open_mask_source(frame_export(tmp_path))
    got = ask(source, BOX_A)
    assert got is not None and got.annotation_ids == [1]
    assert got.mask.dtype == np.uint8 and set(np.unique(got.mask)) == {0, 255}
    assert got.source == f"train/{rf_name('flight01_tower001_001.jpg')}"
    assert np.array_equal(got.mask > 0, crop(direct(POLY_A), pad(BOX_A)))
    # An independent rasteriser agrees up to its own edge convention.
    sk = polygon2mask((FRAME[1], FRAME[0]), np.array(POLY_A, float).reshape(-1, 2)[:, ::-1])
    assert iou(got.mask > 0, crop(sk, pad(BOX_A))) > 0.95
    b = ask(source, BOX_B)
    assert b is not None and b.annotation_ids == [2]
    assert np.array_equal(b.mask > 0, crop(direct(POLY_B), pad(BOX_B)))


def test_stray_and_normal_objects_get_no_mask(tmp_path: Path) -> None:
    source = open_mask_source(frame_export(tmp_path))
    assert ask(source, BOX_N) is None
    # Frame 2 is in the export without annotations; an unknown frame finds nothing either.
    assert ask(source, BOX_A, frame="flight01_tower001_002.jpg") is None
    assert ask(source, BOX_A, frame="flight09_tower009_009.jpg") is None
    # The crop box of A reaches into the stray polygon, but the stray polygon belongs to no object.
    wide = (40, 10, 240, 210)
    got = ask(source, BOX_A, wide)
    assert got is not None and got.annotation_ids == [1]
    assert not (got.mask[:, 100:] > 0).any()  # nothing of the stray polygon (x >= 140)


def test_stretched_export_maps_back_to_the_original_size(tmp_path: Path) -> None:
    source = open_mask_source(frame_export(tmp_path, (256, 160), extra=False))
    for box, poly in ((BOX_A, POLY_A), (BOX_B, POLY_B)):
        got = ask(source, box)
        want = crop(direct(poly), pad(box))
        assert got is not None and got.mask.shape == want.shape
        assert iou(got.mask > 0, want) > 0.97


def test_rle_export_gives_the_polygon_masks(tmp_path: Path) -> None:
    poly_src = open_mask_source(frame_export(tmp_path / "p"))
    rle_src = open_mask_source(frame_export(tmp_path / "r", rle=True))
    for box in (BOX_A, BOX_B):
        p, r = ask(poly_src, box), ask(rle_src, box)
        assert p is not None and r is not None and p.annotation_ids == r.annotation_ids
        # RLE is a pixel grid at half resolution: equal up to the 2x block round-off at the edges.
        assert iou(p.mask > 0, r.mask > 0) > 0.9
        want = crop(np.kron(mask_utils.decode(mask_utils.frPyObjects(
            [[v / 2 for v in (POLY_A if box == BOX_A else POLY_B)]], 150, 200))[:, :, 0], np.ones((2, 2), np.uint8)) > 0,
            pad(box))
        assert np.array_equal(r.mask > 0, want)


def test_resized_crop_gets_a_mask_of_its_own_shape(tmp_path: Path) -> None:
    source = open_mask_source(frame_export(tmp_path))
    got = ask(source, BOX_A, crop_shape=(90, 60))
    assert got is not None and got.mask.shape == (90, 60)


def test_augmented_copies_are_resolved_or_refused(tmp_path: Path) -> None:
    name = "f.jpg"
    train = [image_entry(1, name, 200, 150), {**image_entry(2, name, 200, 150), "file_name": "f_jpg.rf.ffff0000.jpg"}]
    anns = [polygon_ann(1, 1, 2, [10, 10, 40, 10, 40, 40]), polygon_ann(2, 2, 2, [160, 10, 190, 10, 160, 40])]
    write_split(tmp_path / "aug" / "train", train, anns)
    source = open_mask_source(tmp_path / "aug")
    with pytest.raises(InspladError, match="appears 2 times with different masks.*without augmentations"):
        source.mask_for_crop(frame_name=name, frame_size=(200, 150), object_box=(0, 0, 200, 150),
                             crop_box=(0, 0, 200, 150), crop_pixels=np.zeros((150, 200, 3), np.uint8))
    write_split(tmp_path / "aug" / "valid", [image_entry(5, name, 200, 150)], [polygon_ann(9, 5, 2, [10, 10, 40, 10, 40, 40])])
    got = open_mask_source(tmp_path / "aug").mask_for_crop(
        frame_name=name, frame_size=(200, 150), object_box=(0, 0, 200, 150), crop_box=(0, 0, 200, 150),
        crop_pixels=np.zeros((150, 200, 3), np.uint8))
    assert got is not None and got.annotation_ids == [9] and got.source.startswith("valid/")


# --------------------------------------------------------------------------- crop-drawn exports

def _crop_image(seed: int, h: int, w: int) -> np.ndarray:
    """A smooth random picture, so that different crops have clearly different thumbnails."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


CROPS = {f"glass_{i:03d}.png": _crop_image(i, 90 + 7 * i, 60 + 5 * i) for i in range(4)}
CROP_POLY = [0.2, 0.2, 0.7, 0.25, 0.6, 0.8, 0.25, 0.6]  # in fractions of the crop's width/height


def crop_export(tmp: Path, *, resize: tuple[int, int] | None, names: bool) -> Path:
    images, anns, pixels = [], [], {}
    for i, (name, arr) in enumerate(CROPS.items(), start=1):
        if i == 4:
            break  # the last crop is not in the export
        h, w = arr.shape[:2]
        ew, eh = resize or (w, h)
        original = name if names else f"upload_{i}.{'jpg' if resize else 'png'}"
        if resize:
            original = original.rsplit(".", 1)[0] + ".jpg"
        entry = image_entry(i, original, ew, eh, extra=False)
        images.append(entry)
        pixels[entry["file_name"]] = np.asarray(Image.fromarray(arr).resize((ew, eh), Image.Resampling.BILINEAR))
        if i != 2:  # crop 2 is in the export but has no annotation
            flat = [v * (ew if k % 2 == 0 else eh) for k, v in enumerate(CROP_POLY)]
            anns.append(polygon_ann(100 + i, i, 1, flat))
    write_split(tmp / "crops" / "test", images, anns, pixels=pixels)
    return tmp / "crops"


def _ask_crop(source, name: str, *, give_name: bool) -> CropMask | None:
    arr = CROPS[name]
    h, w = arr.shape[:2]
    return source.mask_for_crop(frame_name="frame_not_in_export.jpg", frame_size=(1000, 800), object_box=(0, 0, w, h),
                                crop_box=(0, 0, w, h), crop_pixels=arr, crop_name=name if give_name else None)


@pytest.mark.parametrize("resize,names,give_name", [(None, False, False), ((64, 64), False, False),
                                                    ((64, 64), True, True)])
def test_crop_drawn_masks_match_by_pixels_or_name(tmp_path: Path, resize, names: bool, give_name: bool) -> None:
    source = open_mask_source(crop_export(tmp_path, resize=resize, names=names))
    for i, name in enumerate(CROPS, start=1):
        got = _ask_crop(source, name, give_name=give_name)
        if i in (2, 4):
            assert got is None, name
            continue
        h, w = CROPS[name].shape[:2]
        want = direct([v * (w if k % 2 == 0 else h) for k, v in enumerate(CROP_POLY)], (w, h))
        assert got is not None and got.annotation_ids == [100 + i] and got.mask.shape == (h, w)
        if resize is None:
            assert np.array_equal(got.mask > 0, want)
        else:
            assert iou(got.mask > 0, want) > 0.9


def test_frames_only_kind_ignores_crop_matches(tmp_path: Path) -> None:
    source = open_mask_source(crop_export(tmp_path, resize=None, names=True), kind="frames")
    assert _ask_crop(source, "glass_000.png", give_name=True) is None
    with pytest.raises(InspladError, match="unknown mask export kind"):
        open_mask_source(crop_export(tmp_path / "x", resize=None, names=True), kind="nope")
