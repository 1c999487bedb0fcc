"""Learned inversion: an attacker trains a decoder from what is released back to the image.

Threat model: the attacker knows the public release function (SCA: encoder + public ambiguation; DPFE:
the feature extractor) and holds images of its own (the TRAINING split, disjoint from the evaluated test
images). It releases its own images, trains an MLP or a conv decoder (:class:`InversionNet`, a
LightningModule, MSE loss, early stopping on a held-out part of its data), and outputs a reconstruction
of every evaluated release. Reported: NMSE and SSIM against the true test images.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from models.attacks.metrics import nmse, ssim
from models.attacks.training import fit, predict

__all__ = ["ARCHS", "InversionNet", "learned_inversion", "mean_image_nmse", "mlp_inverter"]

ARCHS = ("mlp", "conv")


def mlp_inverter(in_dim: int, out_dim: int, hidden: int = 512) -> nn.Sequential:
    """The MLP of ``inversion_mlp``: ``in_dim`` -> two ReLU layers of ``hidden`` -> ``out_dim`` logits."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_dim),
    )


class InversionNet(L.LightningModule):
    """Release vector ``[B, d]`` -> image ``[B, C, H, W]`` in [0, 1] (sigmoid output), MSE loss.

    Args:
        in_dim: size of the released vector.
        image_shape: ``(C, H, W)``; the conv decoder needs ``H, W`` divisible by 4.
        arch: ``"mlp"`` (two hidden layers) or ``"conv"`` (linear to ``[64, H/4, W/4]``, two upsampling
            transposed convs).
        hidden: width of the MLP.
        lr: Adam learning rate.
    """

    def __init__(
        self,
        in_dim: int,
        image_shape: tuple[int, int, int],
        arch: str = "mlp",
        hidden: int = 512,
        lr: float = 1e-3,
    ):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown inversion arch {arch!r}; valid: {ARCHS}")
        self.save_hyperparameters()
        c, h, w = image_shape
        if arch == "mlp":
            self.net = mlp_inverter(in_dim, c * h * w, hidden)
        else:
            if h % 4 or w % 4:
                raise ValueError(f"the conv decoder needs H, W divisible by 4, got {image_shape}")
            self.net = nn.Sequential(
                nn.Linear(in_dim, 64 * (h // 4) * (w // 4)),
                nn.ReLU(),
                nn.Unflatten(1, (64, h // 4, w // 4)),
                nn.ConvTranspose2d(64, 32, 4, 2, 1),
                nn.ReLU(),
                nn.Conv2d(32, 32, 3, padding=1),
                nn.ReLU(),
                nn.ConvTranspose2d(32, c, 4, 2, 1),
            )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z)).view(z.shape[0], *self.hparams.image_shape)

    def training_step(self, batch, batch_idx):
        z, x = batch
        loss = F.mse_loss(self(z), x)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        z, x = batch
        self.log("val_loss", F.mse_loss(self(z), x))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def learned_inversion(
    fit_release: torch.Tensor,
    fit_images: torch.Tensor,
    holdout_release: torch.Tensor,
    holdout_images: torch.Tensor,
    test_release: torch.Tensor,
    test_images: torch.Tensor,
    arch: str = "mlp",
    max_epochs: int = 30,
    patience: int = 3,
    seed: int = 0,
) -> dict:
    """Trains :class:`InversionNet` on the attacker's (release, image) pairs, reconstructs the test images.

    Args:
        fit_release, fit_images: the attacker's training pairs (``[N, d]``, float images ``[N, C, H, W]``).
        holdout_release, holdout_images: its early-stopping pairs.
        test_release, test_images: the evaluated releases and their true images (only used to score).

    Returns:
        ``{"nmse", "ssim", "epochs", "best_val_loss"}``.
    """
    scale = fit_release.float().std().clamp(min=1e-6)  # the attacker standardises its inputs
    net = InversionNet(fit_release.shape[1], tuple(fit_images.shape[1:]), arch)
    info = fit(
        net,
        (fit_release.float() / scale, fit_images.float()),
        (holdout_release.float() / scale, holdout_images.float()),
        max_epochs=max_epochs,
        patience=patience,
        seed=seed,
    )
    recon = predict(net, test_release.float() / scale)
    return {"nmse": nmse(recon, test_images.float()), "ssim": ssim(recon, test_images.float()), **info}


def mean_image_nmse(train_images: torch.Tensor, test_images: torch.Tensor) -> float:
    """NMSE of predicting the attacker's mean training image for every test image (a no-information floor)."""
    mean = train_images.float().mean(0, keepdim=True).expand_as(test_images)
    return nmse(mean, test_images.float())
