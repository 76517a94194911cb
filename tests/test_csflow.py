"""CS-Flow: localises the toy defects, the cross-scale flow is invertible, B5 wiring, checkpoints, options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from insplad_tools.errors import InspladError
from insplad_tools.mvtec import read_category
from leaderboard.metrics import aupro, image_auroc
from methods.base import RunConfig
from methods.csflow.model import EfficientNetB5Features, cs_flow
from methods.registry import build_detector, load_detector

TINY = {"backbone": "resnet18", "layer": "layer2", "hidden": "16", "coupling_blocks": "2"}


def _run(epochs: int = 2, size: int = 64) -> RunConfig:
    return RunConfig(epochs=epochs, batch_size=4, image_size=size, pretrained=False, progress=False)


@pytest.fixture(scope="module")
def trained(toy_dataset, tmp_path_factory):
    category = read_category(toy_dataset, "disc")
    detector = build_detector("csflow", TINY, _run())
    checkpoint = tmp_path_factory.mktemp("csflow") / "disc.pt"
    detector.fit([s.path for s in category.train], checkpoint=checkpoint)
    return category, detector, checkpoint, detector.predict([s.path for s in category.test])


def test_detects_and_localises_toy_defects(trained):
    category, detector, _, results = trained
    assert detector.model.shapes == [(128, 8, 8), (128, 4, 4), (128, 2, 2)]  # layer2 of 64, 32 and 16 px
    assert all(np.isfinite(h["loss"]) for h in detector.history) and len(detector.history) == 2
    assert all(r.map.shape == (64, 64) and r.map.dtype == np.float32 and np.isfinite(r.map).all() for r in results)
    assert all(r.score > 0 and r.map.min() >= 0 for r in results)
    assert image_auroc([s.label for s in category.test], [r.score for r in results]) >= 0.8
    masks = [np.zeros((64, 64), bool) if s.mask_path is None else np.asarray(Image.open(s.mask_path)) > 0
             for s in category.test]
    maps = [r.map for r in results]
    assert aupro(masks, maps) > aupro(masks, [np.zeros_like(m) for m in maps]) + 0.3


def test_cross_scale_flow_is_invertible_with_exact_log_determinant():
    torch.manual_seed(0)
    flow = cs_flow([(6, 8, 8), (6, 4, 4), (6, 2, 2)], coupling_blocks=2, hidden=8, kernel_sizes=(3, 5))
    x = [torch.randn(3, 6, s, s) for s in (8, 4, 2)]
    z, logdet = flow(x)
    assert torch.equal(logdet, torch.zeros(3))  # output gains start at 0: every coupling starts as identity
    with torch.no_grad():
        for name, p in flow.named_parameters():
            if name.endswith("gammas"):
                p.normal_()
    z, logdet = flow(x)
    back, logdet_rev = flow(list(z), rev=True)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(back, x))
    assert torch.allclose(logdet + logdet_rev, torch.zeros(3), atol=1e-4) and logdet.abs().min() > 0
    # the log-determinant is the true one: compare with autograd on a tiny flow
    tiny = cs_flow([(2, 2, 2), (2, 1, 1), (2, 1, 1)], coupling_blocks=1, hidden=4, kernel_sizes=(3,))
    with torch.no_grad():
        for name, p in tiny.named_parameters():
            if name.endswith("gammas"):
                p.fill_(0.7)
    sizes = [8, 2, 2]
    flat = torch.randn(12)

    def f(v: torch.Tensor) -> torch.Tensor:
        parts = torch.split(v, sizes)
        out, _ = tiny([parts[0].view(1, 2, 2, 2), parts[1].view(1, 2, 1, 1), parts[2].view(1, 2, 1, 1)])
        return torch.cat([o.flatten() for o in out])

    jac = torch.autograd.functional.jacobian(f, flat)
    _, logdet = tiny([t.view(1, 2, *s) for t, s in zip(torch.split(flat, sizes), [(2, 2), (1, 1), (1, 1)])])
    assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, logdet[0], atol=1e-4)


def test_checkpoint_round_trip_gives_identical_scores(trained):
    category, _, checkpoint, results = trained
    loaded = load_detector(checkpoint)
    again = loaded.predict([s.path for s in category.test])
    assert [r.score for r in again] == [r.score for r in results]
    assert any("EfficientNet-B5" in note for note in loaded.notes)


def test_default_backbone_is_efficientnet_b5_block35():
    feats = EfficientNetB5Features().eval()
    with torch.no_grad():
        out = feats(torch.zeros(1, 3, 64, 64))["block35"]
    assert out.shape == (1, 304, 2, 2)  # 304 channels at stride 32, as CS-Flow's 24x24 maps at 768 px


def test_bad_options_are_one_line_errors():
    for bad in ({"backbone": "resnet18"}, {"kernel_sizes": "3,4"}, {"coupling_blocks": "0"}, {"attention": "se"},
                {"layer": "layer3"}, {**TINY, "layer": "layer9"}):
        with pytest.raises(InspladError):
            build_detector("csflow", bad, _run()).trainable_parameters()
    with pytest.raises(InspladError, match="too small"):
        build_detector("csflow", TINY, _run(size=3)).trainable_parameters()
