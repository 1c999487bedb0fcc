"""PPL's surrogate hashing network F (eq. 3): a backbone, an fc layer with ``bits`` units and tanh."""

from __future__ import annotations

import torch
from torch import nn

from models.backbones import SmallCNN, create_backbone

__all__ = ["PPLCNN", "HashSurrogate"]


class PPLCNN(SmallCNN):
    """The paper's grayscale surrogate features: :class:`models.backbones.SmallCNN` without its linear layer.

    Two 5x5 conv layers (20 and 50 channels, ReLU, 2x2 max-pool), average-pooled to 7x7 (a no-op for
    28x28 inputs); features [B, 50 * 49]. The fc layer with ``bits`` units lives in :class:`HashSurrogate`.
    """

    def __init__(self, in_chans: int = 1, channels: tuple[int, int] = (20, 50)) -> None:
        super().__init__(in_chans, channels, num_features=None)


class HashSurrogate(nn.Module):
    """F(.; theta_f): backbone -> fc(bits) -> tanh, the relaxed codes of eq. 3 used during training.

    Args:
        in_chans: image channels C.
        bits: code length c.
        backbone: ``"ppl_cnn"`` (the paper's 2-conv grayscale net, :class:`PPLCNN`), ``"small_cnn"``
            (:class:`models.backbones.SmallCNN`) or any timm model name, e.g. ``"resnet50"`` (its
            classifier is removed, ``num_classes=0``).
        pretrained: load timm's pretrained weights (needs the HF cache offline).
        fc_init_gain: the fc weights start as N(0, (gain / sqrt(num_features))^2) with zero bias, so the
            initial pre-tanh codes are O(1). PyTorch's default start gives codes of ~0.04, and from there
            the +-1 pairwise losses (eqs. 4, 9) keep F at the all-zero stationary point (measured on
            Fashion-MNIST: mean |code| 0.003 after 100 steps). ``None`` keeps PyTorch's default.

    Raises:
        ValueError: unknown backbone name, ``bits < 1``.
    """

    def __init__(
        self,
        in_chans: int = 1,
        bits: int = 16,
        backbone: str = "ppl_cnn",
        pretrained: bool = False,
        fc_init_gain: float | None = 5.0,
    ):
        super().__init__()
        if bits < 1:
            raise ValueError(f"bits must be >= 1, got {bits}")
        if backbone == "ppl_cnn":
            if pretrained:
                raise ValueError(
                    "ppl_cnn has no pretrained weights; set pretrained=False or pick a timm model"
                )
            self.backbone: nn.Module = PPLCNN(in_chans)
        else:
            self.backbone = create_backbone(backbone, in_chans=in_chans, pretrained=pretrained)
        self.fc = nn.Linear(self.backbone.num_features, bits)
        if fc_init_gain is not None:
            if fc_init_gain <= 0:
                raise ValueError(f"fc_init_gain must be > 0 or None, got {fc_init_gain}")
            nn.init.normal_(self.fc.weight, std=fc_init_gain / self.backbone.num_features**0.5)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Relaxed codes ``tanh(fc(backbone(x)))`` [B, bits] in (-1, 1) for images [B, C, H, W]."""
        return torch.tanh(self.fc(self.backbone(x)))
