"""DifferNet / AttentDifferNet: flow, training, determinism, checkpoints, resume, guards."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from insplad_tools.errors import InspladError
from insplad_tools.mvtec import read_category
from methods.base import RunConfig
from methods.differnet.detector import DegenerateFeaturesWarning, DifferNetDetector
from methods.differnet.flow import differnet_flow
from methods.differnet.model import DifferNetModel, rotate_batch
from methods.registry import build_detector, load_detector

TINY = {"n_scales": 1, "flow_width": 32, "coupling_blocks": 2, "n_transforms": 2, "n_transforms_test": 4}


def tiny(epochs: int = 3, seed: int = 0, weights: str | None = None, **options) -> DifferNetDetector:
    run = RunConfig(epochs=epochs, batch_size=4, image_size=64, device="cpu", seed=seed, pretrained=False,
                    weights=weights, progress=False)
    return build_detector("differnet", {**TINY, **options}, run)


@pytest.fixture(scope="module")
def disc(toy_dataset: Path):
    return read_category(toy_dataset, "disc")


@pytest.fixture(scope="module")
def scaled_weights(tmp_path_factory) -> str:
    """Random AlexNet convs scaled x3 per layer, so pooled features are O(1-10) like ImageNet ones at 448 px."""
    from methods.backbones.alexnet import alexnet_features

    torch.manual_seed(0)
    state = {k: v * 3 if k.endswith("weight") else v for k, v in alexnet_features().state_dict().items()}
    path = tmp_path_factory.mktemp("w") / "alexnet-scaled.pt"
    torch.save(state, path)
    return str(path)


def scores(detector, category) -> np.ndarray:
    return np.array([r.score for r in detector.predict([s.path for s in category.test])])


def test_flow_has_the_papers_parameter_count() -> None:
    with torch.device("meta"):  # shapes only: no 700 MB allocation
        flow = differnet_flow()  # 8 couplings, width 2048, 768-d
    assert sum(p.numel() for p in flow.parameters() if p.requires_grad) == 172_077_056


def test_flow_is_invertible_and_its_log_det_is_exact() -> None:
    torch.manual_seed(0)
    flow = differnet_flow(dims=6, coupling_blocks=3, width=16, clamp=3.0)
    x = torch.randn(4, 6) * 3
    z, log_det = flow(x)
    back, _ = flow(z, rev=True)
    assert torch.allclose(back, x, atol=1e-5)
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[i])
        assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, log_det[i], atol=1e-4)


def test_soft_clamp_bounds_each_coupling_scale() -> None:
    torch.manual_seed(0)
    flow = differnet_flow(dims=4, coupling_blocks=1, width=8, clamp=3.0)
    with torch.no_grad():
        for p in flow.parameters():
            if p.is_floating_point():
                p.mul_(1000.0)  # huge subnet outputs
    _, log_det = flow(torch.randn(16, 4))
    assert torch.all(log_det.abs() <= 4 * 3.0 + 1e-4)  # |log s| < alpha per dimension


def test_rotation_is_exact_at_multiples_of_90_degrees() -> None:
    x = torch.rand(2, 3, 8, 8)
    out = rotate_batch(x, torch.tensor([0.0, 90.0]))
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1], torch.rot90(x[1], k=1, dims=(1, 2))) or torch.equal(out[1], torch.rot90(x[1], k=-1, dims=(1, 2)))


def test_training_lowers_loss_and_separates_easy_anomalies(disc, scaled_weights) -> None:
    detector = tiny(epochs=3, weights=scaled_weights)
    history = detector.fit([s.path for s in disc.train])
    assert history[-1]["loss"] < history[0]["loss"]
    got = scores(detector, disc)
    assert roc_auc_score([s.label for s in disc.test], got) >= 0.8
    assert detector.trainable_parameters() == sum(p.numel() for p in detector.model.flow.parameters() if p.requires_grad)


def test_fixed_seed_reproduces_scores_exactly_and_other_seed_differs(disc) -> None:
    first, second, other = tiny(epochs=1), tiny(epochs=1), tiny(epochs=1, seed=1)
    for d in (first, second, other):
        d.fit([s.path for s in disc.train])
    a, b, c = scores(first, disc), scores(second, disc), scores(other, disc)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_checkpoint_round_trip_keeps_backbone_attention_and_flow(disc, tmp_path, scaled_weights) -> None:
    detector = tiny(epochs=1, attention="cbam", blocks=(3,), weights=scaled_weights)
    checkpoint = tmp_path / "disc.pt"
    detector.fit([s.path for s in disc.train], checkpoint=checkpoint)
    before = scores(detector, disc)
    restored = load_detector(checkpoint)  # rebuilt with pretrained=False: conv weights must come from the file
    assert restored.run.pretrained is False
    assert np.array_equal(scores(restored, disc), before)
    assert "optimizer" not in torch.load(checkpoint, weights_only=True)["state"]


def test_resume_after_interruption_matches_uninterrupted_run(disc, tmp_path, monkeypatch) -> None:
    straight = tiny(epochs=2)
    straight.fit([s.path for s in disc.train])
    expected = scores(straight, disc)

    checkpoint = tmp_path / "resume.pt"
    interrupted = tiny(epochs=2)
    original = DifferNetDetector.train_epoch

    def crash_in_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(DifferNetDetector, "train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit([s.path for s in disc.train], checkpoint=checkpoint)
    monkeypatch.setattr(DifferNetDetector, "train_epoch", original)
    resumed = tiny(epochs=2)
    resumed.fit([s.path for s in disc.train], checkpoint=checkpoint)
    assert [h["epoch"] for h in resumed.history] == [0, 1]
    assert np.array_equal(scores(resumed, disc), expected)


def test_nan_guard_names_epoch_and_batch(disc) -> None:
    detector = tiny(epochs=2, lr=1e30)
    with pytest.raises(InspladError, match=r"epoch \d+, batch \d+.*non-finite"):
        detector.fit([s.path for s in disc.train])


def test_rms_feature_norm_makes_a_global_shrink_invisible() -> None:
    from methods.backbones.alexnet import alexnet_extractor

    torch.manual_seed(0)
    extractor = alexnet_extractor("none")
    model = DifferNetModel(extractor, differnet_flow(256, 1, 8), n_scales=1, feature_norm="rms")
    x = torch.rand(2, 3, 64, 64)
    full = model.features(x)
    extractor.features[-2] = torch.nn.Sequential(torch.nn.ReLU(), _Scale(1e-3))  # shrink conv5's output 1000x
    assert torch.allclose(model.features(x), full, rtol=1e-4, atol=1e-6)
    model.feature_norm = "none"
    assert model.features(x).abs().max() < 1e-2 * full.abs().max()


class _Scale(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def test_paper_default_attention_degenerates_is_flagged_and_rms_option_prevents_it(disc, scaled_weights) -> None:
    """The paper's variant (no normalisation, the default) lets trainable SE shrink the flow input, which the
    monitor flags; the explicit feature_norm=rms deviation keeps it and says so in the notes."""
    common = dict(epochs=2, attention="se", blocks=(1, 2, 3), lr=1e-2, collapse_ratio=0.5, weights=scaled_weights)
    paper = tiny(**common)
    assert paper.feature_norm == "none" and paper.model is None
    with pytest.warns(DegenerateFeaturesWarning, match=r"degenerate features at epoch \d+"):
        paper.fit([s.path for s in disc.train])
    assert paper.history[-1]["feature_spread"] < 0.5
    assert any(h["degenerate"] == 1.0 for h in paper.history)
    assert any("degenerate" in n for n in paper.notes)
    assert not any("feature_norm=rms:" in n for n in paper.notes)

    protected = tiny(feature_norm="rms", **common)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateFeaturesWarning)
        protected.fit([s.path for s in disc.train])
    assert all(h["degenerate"] == 0.0 for h in protected.history)
    assert [n for n in protected.notes if "feature_norm=rms:" in n] == protected.notes != []


def test_cbam_defaults_to_the_attentdiffernet_49x49_reading() -> None:
    detector = tiny(attention="cbam")
    assert detector.options.cbam_kernel == 49
    attention = detector._ensure_model().extractor.attention
    assert sum(p.numel() for p in attention.parameters()) == 27_721


def test_options_cover_every_knob_and_validate() -> None:
    fields = {f.name for f in dataclasses.fields(DifferNetDetector.Options)}
    assert {"attention", "blocks", "flow_width", "coupling_blocks", "clamp", "n_transforms", "n_transforms_test", "lr",
            "cbam_kernel", "cbam_reduction", "cbam_residual", "se_reduction"} <= fields
    with pytest.raises(InspladError, match="63px"):
        tiny(n_scales=3)
    with pytest.raises(InspladError, match="unknown option"):
        build_detector("differnet", {"flow_depth": "3"}, RunConfig(epochs=1, batch_size=1, image_size=64))


def test_test_time_rotations_are_fixed_and_evenly_spaced() -> None:
    detector = tiny(n_transforms_test=8)
    angles = detector.test_angles()
    assert torch.allclose(angles, torch.arange(8) * 45.0)
    assert math.isclose(float(angles[-1]), 315.0)


def test_checkpoint_every_n_epochs_resumes_from_the_last_saved_epoch(disc, tmp_path, monkeypatch) -> None:
    straight = tiny(epochs=3)
    straight.fit([s.path for s in disc.train])
    expected = scores(straight, disc)

    checkpoint = tmp_path / "every2.pt"
    interrupted = tiny(epochs=3)
    interrupted.run.checkpoint_every = 2
    original = DifferNetDetector.train_epoch
    saved_epochs = []

    def crash_in_third_epoch(self, epoch):
        if checkpoint.is_file():
            saved_epochs.append(torch.load(checkpoint, weights_only=True)["epoch"])
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(DifferNetDetector, "train_epoch", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit([s.path for s in disc.train], checkpoint=checkpoint)
    monkeypatch.setattr(DifferNetDetector, "train_epoch", original)
    assert saved_epochs == [2]  # nothing after epoch 1, the checkpoint after epoch 2
    resumed = tiny(epochs=3)
    resumed.fit([s.path for s in disc.train], checkpoint=checkpoint)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert np.array_equal(scores(resumed, disc), expected)
