"""Retrieval by hashing victims nobody tuned the protection against, with purification.

Threat model: a curious party crawls released (protected, uint8) images. It trains a deep hashing model of
its own -- a classification-hash net (:class:`HashVictim`: backbone -> bits-wide tanh layer -> class
logits; codes = sign of the tanh layer) with a CNN, a timm backbone or an MLP -- on clean (C) or
protected (A) labelled training images, and may PURIFY protected images before training and hashing
(:data:`PURIFIERS`: JPEG, median / Gaussian blur, bit-depth reduction). It then ranks a database by
Hamming distance to each query (query = test images, database = training images). Reported: mAP@all of
every scenario (query domain -> database domain) outside the victim's own training domain -- C->A, A->C,
A->A for a clean-trained victim; C->C, A->C, C->A for a protected-trained one, whose A->A is the use the
protection keeps (the paper's Table 1 cells) -- and ``map_ratio`` = that mAP / the C->C mAP of the same
architecture trained on clean images (1 = the protection removed nothing).
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from models.attacks.training import fit_holding_out
from models.metrics import hamming_map

__all__ = ["PURIFIERS", "VICTIM_ARCHS", "HashVictim", "hash_uint8", "purify", "scenario_maps", "train_victim"]

VICTIM_ARCHS = ("cnn", "timm", "mlp")
SCENARIOS = (("C->C", "c", "c"), ("C->A", "c", "a"), ("A->C", "a", "c"), ("A->A", "a", "a"))


def _jpeg(quality: int) -> Callable[[torch.Tensor], torch.Tensor]:
    t = v2.JPEG(quality)
    return lambda x: torch.stack([t(img) for img in x])


def _median(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(x):
        xf = F.pad(x.float(), (k // 2,) * 4, mode="reflect")
        patches = xf.unfold(2, k, 1).unfold(3, k, 1)
        return patches.reshape(*patches.shape[:4], -1).median(-1).values.round().clamp(0, 255).to(torch.uint8)

    return f


def _gaussian(sigma: float) -> Callable[[torch.Tensor], torch.Tensor]:
    t = v2.GaussianBlur(kernel_size=2 * round(2 * sigma) + 1, sigma=sigma)
    return lambda x: t(x)


def _bits(b: int) -> Callable[[torch.Tensor], torch.Tensor]:
    step = 256 // (2**b)
    return lambda x: ((x.long() // step) * step + step // 2).clamp(0, 255).to(torch.uint8)


#: name -> uint8 [N, C, H, W] -> uint8 [N, C, H, W]
PURIFIERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "jpeg_q90": _jpeg(90),
    "jpeg_q75": _jpeg(75),
    "jpeg_q50": _jpeg(50),
    "jpeg_q25": _jpeg(25),
    "median3": _median(3),
    "gaussian1": _gaussian(1.0),
    "bits3": _bits(3),
}


def purify(images: torch.Tensor, name: str, batch_size: int = 2000) -> torch.Tensor:
    """Purified uint8 images ``[N, C, H, W]`` (same shape and dtype)."""
    if name not in PURIFIERS:
        raise ValueError(f"unknown purification {name!r}; valid: {sorted(PURIFIERS)}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    fn = PURIFIERS[name]
    return torch.cat([fn(images[s : s + batch_size]) for s in range(0, len(images), batch_size)])


class HashVictim(L.LightningModule):
    """Classification hashing: backbone -> Linear(bits) -> tanh (the code) -> Linear(classes).

    Loss: cross-entropy of the class + 0.1 * mean (|h| - 1)^2 quantisation. ``hash(x)`` = sign of the tanh
    layer, ``x`` float in [0, 1].

    Args:
        arch: ``"cnn"`` (3 conv blocks), ``"timm"`` (``timm_name``, in_chans = C) or ``"mlp"`` (pixels).
        bits: code length.
        num_classes: classes of the training labels.
        in_chans, image_size: input shape.
    """

    def __init__(
        self,
        arch: str = "cnn",
        bits: int = 16,
        num_classes: int = 10,
        in_chans: int = 1,
        image_size: int = 28,
        timm_name: str = "resnet10t",
        lr: float = 1e-3,
    ):
        super().__init__()
        self.save_hyperparameters()
        if arch == "cnn":
            self.backbone = nn.Sequential(
                nn.Conv2d(in_chans, 32, 3, padding=1),
                nn.BatchNorm2d(32),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(64, 128, 3, padding=1),
                nn.BatchNorm2d(128),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            width = 128
        elif arch == "timm":
            import timm

            self.backbone = timm.create_model(timm_name, pretrained=False, num_classes=0, in_chans=in_chans)
            width = self.backbone.num_features
        elif arch == "mlp":
            self.backbone = nn.Sequential(
                nn.Flatten(),
                nn.Linear(in_chans * image_size**2, 512),
                nn.ReLU(),
                nn.Linear(512, 256),
                nn.ReLU(),
            )
            width = 256
        else:
            raise ValueError(f"unknown victim arch {arch!r}; valid: {VICTIM_ARCHS}")
        self.code = nn.Linear(width, bits)
        self.head = nn.Linear(bits, num_classes)

    def forward(self, x):
        return torch.tanh(self.code(self.backbone(x)))

    @torch.no_grad()
    def hash(self, x: torch.Tensor) -> torch.Tensor:
        h = self(x)
        return torch.where(h >= 0, 1.0, -1.0)

    def _loss(self, batch):
        x, y = batch
        x = x.float() / 255
        h = self(x)
        return F.cross_entropy(self.head(h), y) + 0.1 * (h.abs() - 1).pow(2).mean()

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def train_victim(
    arch: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    bits: int = 16,
    num_classes: int = 10,
    max_epochs: int = 10,
    patience: int = 2,
    seed: int = 0,
) -> tuple[HashVictim, dict]:
    """Trains a :class:`HashVictim` on uint8 images (10% held out for early stopping)."""
    victim = HashVictim(arch, bits, num_classes, images.shape[1], images.shape[-1])
    return victim, fit_holding_out(victim, images, labels, max_epochs, patience, seed)


@torch.no_grad()
def hash_uint8(
    hash_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 1000
) -> torch.Tensor:
    """Codes of uint8 images (``hash_fn`` takes float images in [0, 1])."""
    return torch.cat(
        [hash_fn(images[s : s + batch_size].float() / 255).float() for s in range(0, len(images), batch_size)]
    )


def scenario_maps(
    hash_fn: Callable[[torch.Tensor], torch.Tensor],
    query: dict[str, torch.Tensor],
    database: dict[str, torch.Tensor],
    query_labels: torch.Tensor,
    db_labels: torch.Tensor,
    map_fn: Callable[..., torch.Tensor | float] = hamming_map,
) -> dict[str, float]:
    """mAP@all of the four scenarios; ``query`` / ``database``: ``{"c": clean, "a": released}`` uint8.

    ``map_fn(query_codes, query_labels, db_codes, db_labels)`` ranks the outputs of ``hash_fn`` (default:
    Hamming ranking of sign codes).
    """
    codes = {("q", d): hash_uint8(hash_fn, query[d]) for d in "ca"} | {
        ("d", d): hash_uint8(hash_fn, database[d]) for d in "ca"
    }
    return {
        name: float(map_fn(codes[("q", q)], query_labels, codes[("d", d)], db_labels))
        for name, q, d in SCENARIOS
    }
