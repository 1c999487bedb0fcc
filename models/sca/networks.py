"""Convolutional encoder / decoder around SCA's sparsifying layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ConvDecoder", "ConvEncoder"]


class ConvEncoder(nn.Module):
    """Images ``[B, C, H, W]`` -> standardised features ``[B, maps, N]``.

    Each stage halves the resolution (4x4 conv, stride 2), followed by ``extra_convs`` 3x3 convs; a linear
    layer maps the last feature map to ``maps * N`` features, standardised per feature by a non-affine
    BatchNorm so that the sparsifying transform sees zero-mean, unit-variance coefficients.

    Args:
        in_chans: image channels C.
        image_size: ``(H, W)``, both divisible by ``2 ** len(channels)``.
        channels: widths of the stages.
        maps: code maps.
        features: ``N`` features per code map.
    """

    def __init__(
        self,
        in_chans: int,
        image_size: tuple[int, int],
        channels: Sequence[int],
        maps: int,
        features: int,
        extra_convs: int = 0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for c in channels:
            layers += [
                nn.Conv2d(prev, c, 4, stride=2, padding=1),
                nn.BatchNorm2d(c),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            for _ in range(extra_convs):
                layers += [nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True)]
            prev = c
        scale = 2 ** len(channels)
        self.grid = (image_size[0] // scale, image_size[1] // scale)
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(prev * self.grid[0] * self.grid[1], maps * features)
        self.norm = nn.BatchNorm1d(maps * features, affine=False)
        self.maps, self.features = maps, features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, maps, N]``."""
        return self.norm(self.fc(self.conv(x).flatten(1))).view(x.shape[0], self.maps, self.features)


class ConvDecoder(nn.Module):
    """Features ``[B, maps, N]`` -> images ``[B, C, H, W]`` in ``[0, 1]`` (mirror of :class:`ConvEncoder`)."""

    def __init__(
        self,
        in_chans: int,
        image_size: tuple[int, int],
        channels: Sequence[int],
        maps: int,
        features: int,
        extra_convs: int = 0,
    ) -> None:
        super().__init__()
        scale = 2 ** len(channels)
        self.grid = (image_size[0] // scale, image_size[1] // scale)
        chans = list(channels)[::-1]
        self.fc = nn.Sequential(
            nn.Linear(maps * features, chans[0] * self.grid[0] * self.grid[1]), nn.LeakyReLU(0.2)
        )
        layers: list[nn.Module] = []
        for i, c in enumerate(chans):
            nxt = chans[i + 1] if i + 1 < len(chans) else None
            for _ in range(extra_convs):
                layers += [nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True)]
            if nxt is None:
                layers += [nn.ConvTranspose2d(c, in_chans, 4, stride=2, padding=1), nn.Sigmoid()]
            else:
                layers += [
                    nn.ConvTranspose2d(c, nxt, 4, stride=2, padding=1),
                    nn.BatchNorm2d(nxt),
                    nn.LeakyReLU(0.2, inplace=True),
                ]
        self.conv = nn.Sequential(*layers)
        self.top = chans[0]

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """``[B, maps, N]`` -> ``[B, C, H, W]``."""
        h = self.fc(f.flatten(1)).view(f.shape[0], self.top, *self.grid)
        return self.conv(h)
