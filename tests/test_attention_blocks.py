"""SE / CBAM blocks and the AlexNet extractor with AttentDifferNet's attention blocks AB1..AB3."""

from __future__ import annotations

import itertools
import socket
import urllib.error

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from insplad_tools.errors import InspladError
from methods.attention import CBAM, SE
from methods.backbones.alexnet import BLOCK_POSITIONS, alexnet_extractor

SE_ATTENT = {"reduction": 2, "bias": False}
CBAM_ATTENT = {"reduction": 16, "kernel_size": 49, "mlp_bias": False, "spatial_bn": False, "residual": True}
COMBINATIONS = [c for n in range(1, 4) for c in itertools.combinations((1, 2, 3), n)]


@settings(max_examples=15, deadline=None)
@given(channels=st.sampled_from([4, 16, 64]), h=st.integers(1, 9), w=st.integers(1, 9), kind=st.sampled_from(["se", "cbam"]))
def test_blocks_keep_shape(channels: int, h: int, w: int, kind: str) -> None:
    block = SE(channels, reduction=2) if kind == "se" else CBAM(channels, reduction=4, kernel_size=3)
    x = torch.randn(2, channels, h, w)
    assert block(x).shape == x.shape


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.01, 100.0))
def test_se_gates_lie_in_unit_interval(seed: int, scale: float) -> None:
    torch.manual_seed(seed)
    block = SE(32, reduction=2)
    x = torch.rand(3, 32, 5, 5) * scale + 1e-3  # positive, like post-ReLU features
    gates = block(x) / x
    assert gates.min() >= 0.0 and gates.max() <= 1.0
    # one gate per channel: constant over space
    assert torch.allclose(gates, gates[:, :, :1, :1].expand_as(gates), rtol=1e-5, atol=1e-6)


def test_cbam_residual_never_shrinks_positive_features() -> None:
    torch.manual_seed(0)
    block = CBAM(16, reduction=4, kernel_size=7, residual=True)
    x = torch.rand(2, 16, 8, 8)
    out = block(x)
    assert torch.all(out >= x) and torch.all(out <= 2 * x + 1e-6)


@pytest.mark.parametrize("kind, kwargs, expected", [("se", SE_ATTENT, 106_496), ("cbam", CBAM_ATTENT, 27_721)])
def test_attentdiffernet_attention_parameter_counts(kind: str, kwargs: dict, expected: int) -> None:
    """The fact sheet's counts for AB1..AB3 at 64/192/256 channels (SE r=2 no bias; CBAM r=16, k=49, residual)."""
    extractor = alexnet_extractor(kind, (1, 2, 3), **kwargs)
    assert sum(p.numel() for p in extractor.attention_parameters()) == expected
    assert sum(p.numel() for p in extractor.conv_parameters()) == 2_469_696


def test_blocks_sit_after_relu1_relu2_relu5_before_the_pools() -> None:
    extractor = alexnet_extractor("se", (1, 2, 3), **SE_ATTENT)
    seen: dict[str, tuple] = {}
    for key, module in extractor.attention.items():
        module.register_forward_pre_hook(lambda m, args, key=key: seen.__setitem__(key, tuple(args[0].shape)))
    extractor(torch.randn(1, 3, 448, 448))
    # channels 64/192/256; 111x111, 55x55, 27x27 at 448 px: before the following max-pool
    assert seen == {"1": (1, 64, 111, 111), "2": (1, 192, 55, 55), "3": (1, 256, 27, 27)}
    for block, (index, _) in BLOCK_POSITIONS.items():
        assert isinstance(extractor.features[index], torch.nn.ReLU)
        assert isinstance(extractor.features[index + 1], torch.nn.MaxPool2d)


@pytest.mark.parametrize("kind", ["se", "cbam"])
@pytest.mark.parametrize("blocks", COMBINATIONS, ids=lambda b: "AB" + "".join(map(str, b)))
def test_every_block_combination_trains_attention_through_frozen_convs(kind: str, blocks: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    extractor = alexnet_extractor(kind, blocks, **(SE_ATTENT if kind == "se" else CBAM_ATTENT))
    for p in extractor.conv_parameters():
        p.requires_grad_(False)
    assert sorted(extractor.attention) == sorted(str(b) for b in blocks)
    out = extractor(torch.rand(2, 3, 67, 67))
    assert out.shape == (2, 256, 1, 1)
    out.pow(2).sum().backward()
    for key, module in extractor.attention.items():
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), f"AB{key} got no gradient"
        assert any(g.abs().sum() > 0 for g in grads), f"AB{key} got a zero gradient"
    assert all(p.grad is None for p in extractor.conv_parameters())


def test_no_attention_is_plain_alexnet() -> None:
    torch.manual_seed(0)
    extractor = alexnet_extractor("none", (1, 2, 3))
    x = torch.randn(1, 3, 96, 96)
    assert len(extractor.attention) == 0
    assert torch.equal(extractor(x), extractor.features(x))


def test_weights_file_loads_convs_and_leaves_attention_random(tmp_path) -> None:
    from torchvision.models import alexnet

    torch.manual_seed(1)
    reference = alexnet(weights=None)
    path = tmp_path / "alexnet.pt"
    torch.save(reference.state_dict(), path)  # a full torchvision AlexNet state dict (features + classifier)
    extractor = alexnet_extractor("cbam", (2,), weights=path, **CBAM_ATTENT)
    for (name, a), b in zip(reference.features.state_dict().items(), extractor.features.state_dict().values()):
        assert torch.equal(a, b), name
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(InspladError, match="does not fit AlexNet"):
        alexnet_extractor("none", weights=bad)


def test_offline_without_cached_weights_names_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network blocked by test")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("blocked")))
    with pytest.raises(InspladError) as info:
        alexnet_extractor("se", pretrained=True, **SE_ATTENT)
    message = info.value.message
    assert "alexnet-owt-7be5be79.pth" in message and "--no-pretrained" in message
    assert str(tmp_path / "empty-torch-home") in message


def test_features_match_torchvision_alexnet_layout() -> None:
    from torchvision.models import alexnet

    from methods.backbones.alexnet import alexnet_features

    reference = alexnet(weights=None).features
    ours = alexnet_features()
    assert str(ours) == str(reference)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 80, 80)
    assert torch.equal(ours(x), reference(x))
