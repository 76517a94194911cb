"""EfficientAD as published: reference teacher files, EfficientAD-M, what --epochs means, validation split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from insplad_tools.errors import InspladError
from insplad_tools.mvtec import read_category
from methods.base import RunConfig
from methods.benchmarking import BenchmarkConfig
from methods.efficientad.distill import load_teacher
from methods.registry import build_detector

NARROW = {"pdn_width": "16", "out_channels": "8", "steps": "2"}


def _run(epochs: int = 1) -> RunConfig:
    return RunConfig(epochs=epochs, batch_size=1, image_size=64, pretrained=False, progress=False)


def _nelson_style_small(width: int, out: int) -> nn.Sequential:
    """A narrow PDN-small with the reference file's layout (``nn.Sequential``, keys 0/3/6/8)."""
    return nn.Sequential(nn.Conv2d(3, width // 2, 4), nn.ReLU(), nn.AvgPool2d(2, 2), nn.Conv2d(width // 2, width, 4),
                         nn.ReLU(), nn.AvgPool2d(2, 2), nn.Conv2d(width, width, 3), nn.ReLU(), nn.Conv2d(width, out, 4))


def test_reference_teacher_file_trains_a_detector_and_is_named_in_results(toy_dataset, tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "teacher_small.pth"
    torch.save(_nelson_style_small(16, 8).state_dict(), path)
    category = read_category(toy_dataset, "disc")
    detector = build_detector("efficientad", {**NARROW, "teacher": str(path), "attention": "se"}, _run())
    detector.fit([s.path for s in category.train[:5]])
    assert torch.equal(detector.model.teacher.conv4.weight, torch.load(path, weights_only=True)["8.weight"])
    variant = detector.variant()
    assert "nelson1425/EfficientAD teacher_small.pth" in variant["teacher"]
    assert variant["backbone"] == "wide_resnet101_2" and variant["size"] == "small"
    transforms = variant["augmentation"]["autoencoder"]["transform"]["transforms"][0]
    assert transforms["__class_fullname__"] == "OneOf" and len(transforms["transforms"]) == 3


def test_teacher_that_fits_no_layout_is_a_one_line_error(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(InspladError, match=r"other\.pth: neither .* reference EfficientAD teacher"):
        load_teacher(path)
    with pytest.raises(InspladError, match="teacher file not found"):
        load_teacher(tmp_path / "teacher_medium.pth")
    small = _nelson_style_small(16, 8)
    torch.save(small.state_dict(), tmp_path / "small.pth")
    with pytest.raises(InspladError, match="PDN-small with 8 channels.*model_size=medium"):
        build_detector("efficientad", {**NARROW, "teacher": str(tmp_path / "small.pth"), "model_size": "medium"},
                       _run()).setup([tmp_path / "x.png"] * 3)


def test_explicit_epochs_without_steps_means_passes_over_the_train_split(toy_dataset, tmp_path) -> None:
    base = dict(method="efficientad", data=toy_dataset, out=tmp_path, device="cpu")
    explicit = BenchmarkConfig(**base, epochs=1).resolved()
    assert explicit.options["steps"] == "0" and "one pass over the train split" in explicit.notices[0]
    assert BenchmarkConfig(**base).resolved().options == {}  # no --epochs: the paper's 70,000 steps
    kept = BenchmarkConfig(**base, epochs=1, options={"steps": "500"}).resolved()
    assert kept.options == {"steps": "500"} and kept.notices == []
    category = read_category(toy_dataset, "disc")
    detector = build_detector("efficientad", {**NARROW, **explicit.options}, _run(epochs=1))
    detector.fit([s.path for s in category.train[:6]])
    assert detector.step == 5  # one pass over int(0.9 * 6) = 5 images at batch 1, not 70,000 steps


def test_validation_split_feeds_the_map_quantiles(toy_dataset) -> None:
    category = read_category(toy_dataset, "disc")
    paths = [s.path for s in category.train[:6]]
    detector = build_detector("efficientad", NARROW, _run())
    detector.validation_images = paths[4:]
    detector.setup(paths[:4])
    assert detector.train_data.shape[0] == 4 and detector.val_data.shape[0] == 2


def test_medium_model_builds_and_predicts() -> None:
    detector = build_detector("efficientad", {"model_size": "medium", "pdn_width": "16", "out_channels": "8",
                                              "attention": "cbam"}, _run())
    model = detector._ensure_model()
    assert model.student.size == "medium" and hasattr(model.student, "att4")
    scores, maps = model.eval()(torch.randn(2, 3, 64, 64))
    assert scores.shape == (2,) and maps.shape == (2, 64, 64)


def test_wide_resnet101_distillation_gives_a_teacher_the_detector_uses(toy_dataset, tmp_path) -> None:
    """The paper's teacher target (WideResNet-101-2, PatchCore aggregation to 384 channels), end to end."""
    from methods.efficientad.distill import distill_teacher

    paths = [s.path for s in read_category(toy_dataset, "disc").train[:6]]
    payload = distill_teacher(paths, steps=2, image_size=64, batch_size=2, pretrained=False, progress=False,
                              backbone="wide_resnet101_2", stat_images=4)
    config = payload["config"]
    assert config["backbone"] == "wide_resnet101_2" and config["out_channels"] == 384
    assert torch.isfinite(torch.tensor([config["first_loss"], config["last_loss"]])).all()
    path = tmp_path / "teacher.pt"
    torch.save(payload, path)
    teacher, loaded = load_teacher(path)
    assert loaded["backbone"] == "wide_resnet101_2"
    assert torch.equal(teacher.state_dict()["conv4.weight"], payload["state_dict"]["conv4.weight"])
    detector = build_detector("efficientad", {"teacher": str(path), "steps": "1"}, _run())
    detector.fit(paths[:2])
    assert len(detector.predict(paths[:1])) == 1
