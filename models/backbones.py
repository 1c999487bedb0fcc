"""Feature backbones shared by the methods: a small CNN for 28x28 images, or any timm model by name."""

from __future__ import annotations

import timm
import torch
from torch import nn

__all__ = ["SmallCNN", "create_backbone"]


class SmallCNN(nn.Module):
    """Two 5x5 conv blocks (ReLU, 2x2 max-pool), pooled to 7x7, and an optional linear layer.

    The conv part is the grayscale backbone of the hashing papers (20/50 channels); PPL's surrogate uses
    it without the linear layer (``num_features=None``) and puts its own fc(c) + tanh on top.

    Args:
        in_chans: image channels C.
        channels: output channels of the two conv layers.
        num_features: width of the final linear + ReLU layer; ``None`` = no such layer, the features are
            the flattened conv map (``channels[1] * 49``).
    """

    def __init__(
        self, in_chans: int = 1, channels: tuple[int, int] = (20, 50), num_features: int | None = 500
    ) -> None:
        super().__init__()
        c1, c2 = channels
        layers: list[nn.Module] = [
            nn.Conv2d(in_chans, c1, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),  # a no-op for 28x28 inputs; lets any image size through
            nn.Flatten(),
        ]
        if num_features is not None:
            layers += [nn.Linear(c2 * 49, num_features), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.num_features = c2 * 49 if num_features is None else num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps images [B, C, H, W] to features [B, num_features]."""
        return self.features(x)


def create_backbone(name: str, in_chans: int, pretrained: bool = False) -> nn.Module:
    """Builds a feature extractor whose output is [B, backbone.num_features].

    Args:
        name: ``"small_cnn"`` or any timm model name (``timm.list_models()``), e.g. ``"resnet50"``.
        in_chans: image channels C.
        pretrained: load timm's pretrained weights (needs the Hub or a local HF cache).

    Returns:
        The backbone module, with a ``num_features`` attribute.
    """
    if name == "small_cnn":
        if pretrained:
            raise ValueError("small_cnn has no pretrained weights; set pretrained=False or pick a timm model")
        return SmallCNN(in_chans=in_chans)
    if not timm.is_model(name):
        raise ValueError(
            f"unknown backbone {name!r}: use 'small_cnn' or a timm model name "
            f"(e.g. {', '.join(timm.list_models('resnet*')[:4])}; see timm.list_models())"
        )
    model = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans)
    # with num_classes=0 timm returns the pre-logits features, head_hidden_size wide; that is num_features
    # except for models with a conv / MLP head after pooling (MobileNetV3: 1024 vs 576, GhostNet: 1280 vs 480)
    model.num_features = getattr(model, "head_hidden_size", None) or model.num_features
    return model
