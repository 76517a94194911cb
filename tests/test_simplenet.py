"""SimpleNet: trains, localises the toy defects, is reproducible and round-trips through checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from insplad_tools.mvtec import read_category
from leaderboard.metrics import aupro, image_auroc
from methods.base import RunConfig
from methods.registry import build_detector, load_detector

# A small SimpleNet (random ResNet-18, so BatchNorm statistics are estimated on the train images).
TINY = {"pretrain_embed_dim": "256", "target_embed_dim": "128", "dsc_hidden": "64"}


def _run(epochs: int, seed: int = 0, **kw) -> RunConfig:
    return RunConfig(epochs=epochs, batch_size=4, image_size=128, pretrained=False, progress=False, seed=seed, **kw)


def _masks_and_maps(category, results):
    masks, maps = [], []
    for sample, result in zip(category.test, results):
        size = Image.open(sample.path).size
        mask = np.zeros(size[::-1], bool) if sample.mask_path is None else np.asarray(Image.open(sample.mask_path)) > 0
        masks.append(mask)
        maps.append(np.asarray(Image.fromarray(result.map).resize(size, Image.BILINEAR)))
    return masks, maps


@pytest.fixture(scope="module")
def trained(toy_dataset, tmp_path_factory):
    category = read_category(toy_dataset, "disc")
    detector = build_detector("simplenet", TINY, _run(200))
    checkpoint = tmp_path_factory.mktemp("simplenet") / "disc.pt"
    detector.fit([s.path for s in category.train])
    detector.save(checkpoint)
    return category, detector, checkpoint, detector.predict([s.path for s in category.test])


def test_loss_falls_and_maps_light_up_on_defects(trained):
    category, detector, _, results = trained
    losses = [h["loss"] for h in detector.history]
    assert losses[-1] < losses[0] - 0.1
    assert all(r.map.shape == (128, 128) and r.map.dtype == np.float32 for r in results)
    masks, maps = _masks_and_maps(category, results)
    constant = aupro(masks, [np.zeros_like(m) for m in maps])
    assert aupro(masks, maps) > constant + 0.25
    assert image_auroc([s.label for s in category.test], [r.score for r in results]) > 0.85
    # the image score is the maximum patch score, so it bounds the (blurred) map from above
    assert all(r.score >= float(r.map.max()) - 1e-5 for r in results)


def test_checkpoint_round_trip_gives_identical_scores(trained):
    category, _, checkpoint, results = trained
    loaded = load_detector(checkpoint)
    again = loaded.predict([s.path for s in category.test])
    assert [r.score for r in again] == [r.score for r in results]
    assert all(np.array_equal(a.map, b.map) for a, b in zip(again, results))
    assert loaded.notes and "randomly initialised" in loaded.notes[0]


def test_fixed_seed_is_reproducible(toy_dataset):
    category = read_category(toy_dataset, "ring")
    train, test = [s.path for s in category.train], [s.path for s in category.test[:4]]
    scores = []
    for seed in (3, 3, 4):
        detector = build_detector("simplenet", TINY, _run(3, seed))
        detector.fit(train)
        scores.append([r.score for r in detector.predict(test)])
    assert scores[0] == scores[1]
    assert scores[0] != scores[2]


@pytest.mark.parametrize("attention", ["se", "cbam"])
def test_attention_blocks_are_trained_jointly_when_asked_and_watched(toy_dataset, attention):
    category = read_category(toy_dataset, "disc")
    detector = build_detector("simplenet", {**TINY, "attention": attention, "train_attention": "true"},
                              RunConfig(epochs=2, batch_size=4, image_size=64, pretrained=False, progress=False))
    detector.setup([s.path for s in category.train[:4]])
    model = detector.model
    before_att = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if ".attention." in n}
    before_conv = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if ".attention." not in n}
    logs = detector.train_epoch(0)
    after = dict(model.backbone.named_parameters())
    assert any(not torch.equal(after[n], v) for n, v in before_att.items())
    assert all(torch.equal(after[n], v) for n, v in before_conv.items())
    # layer4 is never built, so only layers 1-3 carry attention: SE 21,504 / CBAM 23,056 extra parameters
    assert detector.trainable_parameters() - 24_960 == {"se": 21_504, "cbam": 23_056}[attention]
    # the collapse monitor compares the embedding spread with its initial value every epoch
    assert logs["feature_spread"] > 0 and logs["degenerate"] in (0.0, 1.0)
    assert any("trained from scratch" in n for n in detector.notes)


def test_attention_is_frozen_by_default_as_table_4_counts_it(toy_dataset):
    category = read_category(toy_dataset, "disc")
    detector = build_detector("simplenet", {**TINY, "attention": "se"},
                              RunConfig(epochs=1, batch_size=4, image_size=64, pretrained=False, progress=False))
    detector.setup([s.path for s in category.train[:4]])
    before = {n: p.detach().clone() for n, p in detector.model.backbone.named_parameters()}
    logs = detector.train_epoch(0)
    assert all(torch.equal(p, before[n]) for n, p in detector.model.backbone.named_parameters())
    assert "feature_spread" not in logs and detector.cache is not None  # frozen trunk: embeddings cached
    assert detector.variant()["attention_training"] == "frozen at random init"


def test_paper_dimensions_parameter_count():
    """d=1536, h=1024: adaptor 2,360,832 + discriminator 1,576,960 (seed 003's 1.58M counts the latter only)."""
    detector = build_detector("simplenet", {}, _run(1))
    assert detector.trainable_parameters() == 3_937_792
    assert sum(p.numel() for p in detector.model.discriminator.parameters()) == 1_576_960
    for attention, extra in (("se", 21_504), ("cbam", 23_056)):  # seed 003 Table 4: one count for all three
        assert build_detector("simplenet", {"attention": attention}, _run(1)).trainable_parameters() == 3_937_792
        trained = build_detector("simplenet", {"attention": attention, "train_attention": "true"}, _run(1))
        assert trained.trainable_parameters() == 3_937_792 + extra
