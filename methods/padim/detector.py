"""PaDiM behind the shared :class:`~methods.base.Detector` contract.

Defaults follow the PaDiM paper (Defard et al., ICPR 2020 workshops) and its reference code
(``xiahaifeng1995/PaDiM-Anomaly-Detection-Localization-master``) for the ResNet-18 setting:
layer1+layer2+layer3 of a frozen ImageNet ResNet-18 (64+128+256 = 448 channels), layer2/layer3
upsampled (nearest) to the layer-1 grid (stride 4), a random subset of d = 100 channels drawn with
``random.sample`` under seed 1024 (the reference's draw; ``n_features=0`` picks 100 for 448
channels and 550 for WideResNet-50-2's 1792, the paper's two settings), one multivariate Gaussian
per position (unbiased covariance + 0.01·I), Mahalanobis distance map, bilinear upsampling to the
input, Gaussian blur σ=4, image score = max of the map. Batch 32, 256 px input.

Deviations: images are resized to ``image_size`` square with no 256→224 centre crop (as anomalib),
so maps cover the whole image; maps are not min-max normalised over the test set (the reference
does that for display; it changes no ranking). The statistics are accumulated in one streaming pass
(shifted float32 sums, finished in float64) instead of stacking every embedding, so memory does
not grow with the train set. PaDiM trains nothing: one "epoch" is that pass (``default_epochs=1``;
more epochs recompute the same statistics). ``--attention se|cbam`` puts SE/CBAM blocks, at random
init and untrained, in the shared ResNet-18 (a one-line consequence of sharing the backbone, as for
PatchCore): 0 trainable parameters either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from insplad_tools.errors import InspladError
from methods.base import MapDetector, RunConfig
from methods.data import load_images_uint8, normalise, to_device
from methods.precision import full_precision
from methods.padim.model import PadimModel, gaussian_statistics, random_channel_index
from methods.simplenet.detector import calibrate_batchnorm

LAYERS = ("layer1", "layer2", "layer3")
PAPER_D = {448: 100, 1792: 550}  # channels of layers 1-3 -> the paper's d (ResNet-18, WideResNet-50-2)


def trunk_for_run(name: str, attention: str, run: RunConfig, pretrained: bool, last_layer: str = "layer3"
                  ) -> tuple[nn.Module, str]:
    """A backbone whose ``forward(x, layers)`` returns named feature maps, and where its weights came from.

    Uses the shared backbone registry when present; otherwise only the (SE-/CBAM-)ResNet-18.
    """
    try:
        from methods.backbones.registry import build_backbone
    except ImportError:
        build_backbone = None
    if build_backbone is not None:
        return build_backbone(name, attention=attention, pretrained=pretrained, weights=run.weights,
                              progress=run.progress, last_layer=last_layer)
    if name != "resnet18":
        raise InspladError(f"unknown backbone {name!r}; available: resnet18")
    from methods.backbones.resnet import resnet18_for_run

    return resnet18_for_run(attention, pretrained=pretrained, weights=run.weights, progress=run.progress,
                            last_layer=last_layer)


@dataclass
class PadimOptions:
    backbone: str = "resnet18"
    attention: str = "none"  # none | se | cbam in every ResNet-18 BasicBlock (random init, untrained)
    n_features: int = 0  # d, channels kept at random (0 = the paper's: 100 for ResNet-18, 550 for WRN-50-2)
    channel_seed: int = 1024  # seed of the channel draw (the reference code's)
    regularisation: float = 0.01  # added to every covariance's diagonal
    map_sigma: float = 4.0
    buffer_mb: int = 256  # embeddings buffered before each update of the covariance sums


class PadimDetector(MapDetector):
    """PaDiM on (SE-/CBAM-)ResNet-18 layers 1-3; image scores and pixel maps."""

    name = "padim"
    Options = PadimOptions
    default_epochs = 1
    default_batch_size = 32
    default_image_size = 256

    def __init__(self, options: PadimOptions, run: RunConfig) -> None:
        super().__init__(options, run)
        if options.n_features < 0:
            raise InspladError("option n_features must be >= 0 (0 = the paper's choice)")
        if options.regularisation < 0:
            raise InspladError("option regularisation must be >= 0")
        if options.map_sigma < 0:
            raise InspladError("option map_sigma must be >= 0")
        self.model: PadimModel | None = None
        self.backbone_source = "unset"
        self.train_data: torch.Tensor | None = None

    # -- construction ---------------------------------------------------------------------------
    def _build(self, pretrained: bool) -> PadimModel:
        o = self.options
        backbone, self.backbone_source = trunk_for_run(o.backbone, o.attention, self.run, pretrained)
        backbone = backbone.to(self.device).eval()
        with torch.no_grad():
            try:
                probe = backbone(torch.zeros(1, 3, 64, 64, device=self.device), LAYERS)
                channels = [int(probe[name].shape[1]) for name in LAYERS]
            except (KeyError, TypeError, RuntimeError) as exc:
                raise InspladError(f"backbone {o.backbone!r} does not give PaDiM's layers "
                                   f"{', '.join(LAYERS)} ({type(exc).__name__})") from exc
        total = sum(channels)
        keep = o.n_features or PAPER_D.get(total, min(100, total))
        if keep > total:
            raise InspladError(f"option n_features={keep} exceeds the {total} channels of layers 1-3")
        index = random_channel_index(total, keep, o.channel_seed)
        return PadimModel(backbone, channels, index, LAYERS, o.map_sigma).to(self.device)

    def _ensure_model(self) -> PadimModel:
        """The model; when neither fitted nor loaded, a random backbone with stand-in statistics
        (zero mean, identity precision) on the layer-1 grid of ``image_size`` (timing and size only)."""
        if self.model is None:
            self.model = self._build(pretrained=False)
            with torch.no_grad():
                grid = self.model.embed(torch.zeros(1, 3, self.run.image_size, self.run.image_size,
                                                    device=self.device)).shape[-2:]
            p, d = grid[0] * grid[1], self.model.n_features
            self.model.set_statistics(torch.zeros(p, d), torch.eye(d).expand(p, d, d))
        return self.model

    # -- Detector API ---------------------------------------------------------------------------
    def setup(self, train_images: Sequence[Path]) -> None:
        if len(train_images) < 2:
            raise InspladError("PaDiM needs at least two training images (a covariance per position)")
        self.model = self._build(pretrained=self.run.pretrained or self.run.weights is not None)
        self.train_data = load_images_uint8(train_images, self.run.image_size, self.run.progress, "padim load", run=self.run)
        if self.backbone_source == "random":
            calibrate_batchnorm(self.model.backbone, self.train_data, self.run.batch_size, self.device)

    @torch.no_grad()
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass: per-position shifted sums of embeddings and their outer products, then the Gaussians."""
        assert self.model is not None and self.train_data is not None, "setup() first"
        model = self.model.eval()
        bs = max(1, self.run.batch_size)
        shift = total = outer = None
        pending: list[torch.Tensor] = []
        n = pending_bytes = 0

        def flush() -> None:  # one large batched product per buffer beats one per small batch
            nonlocal pending_bytes
            if pending:
                x = torch.cat(pending, dim=1)  # (P, N_buffered, d)
                total.add_(x.sum(1))
                with full_precision(x.device):  # covariance sums in fp32 under any --precision
                    outer.baddbmm_(x.transpose(1, 2).contiguous(), x)
                pending.clear()
                pending_bytes = 0

        for start in tqdm(range(0, self.train_data.shape[0], bs), desc="padim features", unit="batch",
                          disable=not self.run.progress, leave=False):
            emb = model.embed(normalise(to_device(self.train_data[start:start + bs], self.device))).float()
            b, d, h, w = emb.shape
            x = emb.reshape(b, d, h * w).permute(2, 0, 1)  # (P, B, d)
            if shift is None:
                shift = x.mean(1)  # centring on the first batch keeps float32 sums accurate
                total = torch.zeros_like(shift)
                outer = torch.zeros(h * w, d, d, device=x.device)
            pending.append((x - shift[:, None, :]).contiguous())
            pending_bytes += x.numel() * 4
            n += b
            if pending_bytes > self.options.buffer_mb * 2**20:
                flush()
        flush()
        mean, inv_cov = gaussian_statistics(total, outer, shift, n, self.options.regularisation)
        model.set_statistics(mean, inv_cov)
        return {"images": float(n), "positions": float(mean.shape[0]), "features": float(mean.shape[1])}

    def finish_training(self) -> None:
        self.train_data = None

    def state(self) -> dict[str, Any]:
        model = self._ensure_model()
        return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "backbone_source": self.backbone_source}

    def load_state(self, state: dict[str, Any]) -> None:
        model = self._ensure_model()
        weights = dict(state["model"])
        if not torch.equal(weights["channel_index"].cpu(), model.channel_index.cpu()):
            raise InspladError("PaDiM channel subset in the checkpoint differs from the options' draw")
        model.set_statistics(weights["mean"], weights["inv_covariance"])  # sizes only known from the checkpoint
        model.load_state_dict(weights)
        self.backbone_source = str(state.get("backbone_source", "unknown"))

    def trainable_modules(self) -> list[torch.nn.Module]:
        return []

    def variant(self) -> dict[str, Any]:
        o = self.options
        model = self.model
        return {"backbone": o.backbone, "attention": o.attention, "layers": list(LAYERS),
                "n_features": model.n_features if model is not None else o.n_features,
                "channel_seed": o.channel_seed, "regularisation": o.regularisation, "map_sigma": o.map_sigma}

    @property
    def notes(self) -> list[str]:
        """Caveats for the results file (read by ``insplad benchmark``)."""
        notes = []
        if self.backbone_source == "random":
            notes.append(f"{self.options.backbone} backbone randomly initialised (--no-pretrained): "
                         "not comparable to ImageNet runs")
        if self.options.attention != "none":
            notes.append(f"{self.options.attention.upper()} blocks at random init (PaDiM trains nothing)")
        notes.append("images resized square to image_size without the reference's 256->224 centre crop")
        return notes
