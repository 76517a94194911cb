"""PaDiM: localises the toy defects, exact Gaussian statistics, reference channel draw, checkpoints, CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from insplad_tools.cli import main
from insplad_tools.errors import InspladError
from insplad_tools.mvtec import read_category
from leaderboard.check import check_submission
from leaderboard.metrics import aupro, image_auroc
from methods.base import RunConfig
from methods.data import load_images_uint8, normalise
from methods.padim.model import gaussian_statistics
from methods.registry import build_detector, load_detector


def _run(**kw) -> RunConfig:
    return RunConfig(**{"epochs": 1, "batch_size": 5, "image_size": 64, "pretrained": False, "progress": False, **kw})


@pytest.fixture(scope="module")
def trained(toy_dataset, tmp_path_factory):
    category = read_category(toy_dataset, "disc")
    detector = build_detector("padim", {}, _run())
    checkpoint = tmp_path_factory.mktemp("padim") / "disc.pt"
    detector.fit([s.path for s in category.train], checkpoint=checkpoint)
    return category, detector, checkpoint, detector.predict([s.path for s in category.test])


def test_detects_and_localises_toy_defects(trained):
    category, detector, _, results = trained
    assert detector.trainable_parameters() == 0
    assert detector.model.mean.shape == (16 * 16, 100)  # layer-1 grid of 64 px, d = 100 of 448
    assert all(r.map.shape == (64, 64) and r.map.dtype == np.float32 and np.isfinite(r.map).all() for r in results)
    assert all(r.score == pytest.approx(float(r.map.max())) for r in results)
    assert image_auroc([s.label for s in category.test], [r.score for r in results]) >= 0.9
    masks = [np.zeros((64, 64), bool) if s.mask_path is None else np.asarray(Image.open(s.mask_path)) > 0
             for s in category.test]
    maps = [r.map for r in results]
    assert aupro(masks, maps) > aupro(masks, [np.zeros_like(m) for m in maps]) + 0.4


def test_streamed_statistics_equal_the_direct_gaussian(trained):
    category, detector, _, _ = trained
    model = detector.model
    images = load_images_uint8([s.path for s in category.train], 64)
    emb = model.embed(normalise(images))  # (N, d, H, W)
    x = emb.flatten(2).permute(2, 0, 1).double()  # (P, N, d)
    mean = x.mean(1)
    centred = x - mean[:, None]
    cov = centred.transpose(1, 2) @ centred / (x.shape[1] - 1) + 0.01 * torch.eye(100, dtype=torch.float64)
    assert torch.allclose(model.mean.double(), mean, atol=1e-4)
    assert torch.allclose(model.inv_covariance.double(), torch.linalg.inv(cov), rtol=1e-3, atol=1e-3)
    # the map is the Mahalanobis distance: check one position of one test image by hand
    test = normalise(load_images_uint8([category.test[-1].path], 64))
    e = model.embed(test)[0, :, 3, 5].double()
    p = 3 * 16 + 5
    expected = torch.sqrt((e - mean[p]) @ torch.linalg.inv(cov[p]) @ (e - mean[p]))
    assert float(model.distances(model.embed(test))[0, 3, 5]) == pytest.approx(float(expected), rel=1e-3)


def test_gaussian_statistics_reject_a_single_sample():
    with pytest.raises(ValueError):
        gaussian_statistics(torch.zeros(4, 3), torch.zeros(4, 3, 3), torch.zeros(4, 3), 1, 0.01)


def test_channel_subset_is_the_reference_draw_and_checked_on_load(trained):
    _, detector, checkpoint, results = trained
    assert detector.model.channel_index.tolist() == random.Random(1024).sample(range(448), 100)
    loaded = load_detector(checkpoint)
    category = trained[0]
    again = loaded.predict([s.path for s in category.test])
    assert [r.score for r in again] == [r.score for r in results]
    with pytest.raises(InspladError, match="channel subset"):
        other = build_detector("padim", {"channel_seed": "7"}, _run())
        other.load_state(torch.load(checkpoint, weights_only=True)["state"])


def test_options_and_inputs_are_checked(toy_dataset):
    for bad in ({"n_features": "-1"}, {"n_features": "449"}, {"attention": "x"}, {"backbone": "vgg"}):
        with pytest.raises(InspladError):
            build_detector("padim", bad, _run()).profile_forward(torch.zeros(1, 3, 64, 64))
    category = read_category(toy_dataset, "disc")
    with pytest.raises(InspladError, match="at least two"):
        build_detector("padim", {}, _run()).fit([category.train[0].path])


def test_benchmark_and_profile_cli(toy_dataset, tmp_path):
    out = tmp_path / "run"
    args = ["benchmark", "--method", "padim", "--attention", "se", "--data", str(toy_dataset), "--out", str(out),
            "--image-size", "64", "--batch-size", "4", "--device", "cpu", "--no-pretrained", "--quiet"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert check_submission(out, toy_dataset) == []
    doc = json.loads((out / "results.json").read_text())
    assert doc["method"] == "padim" and doc["trainable_params"] == 0 and doc["training"]["epochs"] == 1
    assert doc["mean"]["image_auroc"] >= 0.9
    result = CliRunner().invoke(main, ["profile", "--method", "padim", "--image-size", "64", "--device", "cpu",
                                       "--batch-sizes", "1", "--repeats", "1", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["trainable_params"] == 0
