"""SE/CBAM ResNet-18: parameter overheads, torchvision weight loading, shapes and gradient flow."""

from __future__ import annotations

import pytest
import torch
import torchvision

from insplad_tools.errors import InspladError
from methods.backbones.resnet import ResNet18Features, resnet18_extractor


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("attention, extra", [("none", 0), ("se", 87_040), ("cbam", 89_880)])
def test_attention_parameter_overhead_matches_fact_sheet(attention, extra):
    plain_torchvision = sum(p.numel() for n, p in torchvision.models.resnet18().named_parameters() if not n.startswith("fc."))
    model = ResNet18Features(attention)
    assert _count(model) - plain_torchvision == extra
    assert sum(p.numel() for p in model.attention_parameters()) == extra


@pytest.mark.parametrize("attention", ["none", "se", "cbam"])
def test_torchvision_weights_load_with_only_attention_new(tmp_path, attention):
    reference = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    model = resnet18_extractor(attention, pretrained=False, weights=path)
    ours = model.state_dict()
    new_keys = [k for k in ours if k not in reference.state_dict()]
    assert all(".attention." in k for k in new_keys)
    assert (len(new_keys) > 0) == (attention != "none")
    for key, value in reference.state_dict().items():
        if key in ours:
            assert torch.equal(ours[key], value), key
    # the conv trunk computes what torchvision's does when the attention is the identity
    if attention == "none":
        model.eval(), reference.eval()
        x = torch.randn(1, 3, 64, 64)
        trunk = torch.nn.Sequential(reference.conv1, reference.bn1, reference.relu, reference.maxpool,
                                    reference.layer1, reference.layer2, reference.layer3)
        with torch.no_grad():
            assert torch.allclose(model(x, ("layer3",))["layer3"], trunk(x), atol=1e-5)


def test_wrong_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet().features.state_dict(), path)
    with pytest.raises(InspladError, match="not a ResNet-18 state dict"):
        resnet18_extractor("se", pretrained=False, weights=path)


def test_feature_shapes_and_gradients_reach_attention_through_frozen_convs():
    model = ResNet18Features("cbam", last_layer="layer3")
    for p in model.conv_parameters():
        p.requires_grad_(False)
    feats = model(torch.randn(2, 3, 64, 64), ("layer2", "layer3"))
    assert feats["layer2"].shape == (2, 128, 8, 8) and feats["layer3"].shape == (2, 256, 4, 4)
    (feats["layer2"].sum() + feats["layer3"].sum()).backward()
    grads = [p.grad for p in model.attention_parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.conv_parameters())
    assert not hasattr(model, "layer4")
