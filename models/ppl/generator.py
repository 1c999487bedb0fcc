"""PPL's adversarial generator G and the l_p projections that bound its perturbation (eq. 2).

``z = clip_[0, 1](x + G(x))`` with ``||G(x)||_p <= epsilon`` per image, ``p in {inf, 2, 1}``. The bound is
exact for every image by construction (not a penalty):

* ``inf``: ``delta = epsilon * tanh(raw)``.
* ``2``: ``delta = raw * min(1, epsilon / ||raw||_2)`` (projection onto the l2 ball).
* ``1``: Euclidean projection onto the l1 ball (Duchi et al., ICML 2008, sort-based, vectorised over
  the batch): soft-thresholding ``sign(v) * max(|v| - theta, 0)`` with the image's own ``theta``.

Clipping ``x + delta`` to ``[0, 1]`` (with ``x`` in ``[0, 1]``) only shrinks ``|delta|`` coordinate-wise,
so the effective perturbation ``z - x`` keeps the bound for every p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NORMS", "PerturbationGenerator", "apply_perturbation", "check_norm", "project_perturbation"]

NORMS = ("inf", "2", "1")


def check_norm(norm: str | int | float) -> str:
    """Normalises a norm name to ``"inf"``, ``"2"`` or ``"1"`` (also accepts ``2``, ``1``, ``math.inf``).

    Raises:
        ValueError: any other value.
    """
    if isinstance(norm, (int, float)) and not isinstance(norm, bool):
        norm = "inf" if norm == math.inf else (str(int(norm)) if float(norm).is_integer() else str(norm))
    if not isinstance(norm, str) or norm.lower() not in NORMS:
        raise ValueError(f"unknown norm {norm!r}: use one of {NORMS} (the l_p constraint of eq. 2)")
    return norm.lower()


def check_epsilon(epsilon: float) -> float:
    """Returns ``epsilon`` as a float after checking it is a finite positive number."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise ValueError(f"epsilon must be a positive number, got {epsilon!r}")
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be finite and > 0 (the l_p budget of eq. 2), got {epsilon}")
    return float(epsilon)


def _project_l1(v: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Projects every row of ``v`` [B, D] onto the l1 ball of radius ``epsilon`` (Duchi et al. 2008)."""
    a = v.abs()
    u = a.sort(dim=1, descending=True).values  # [B, D]
    css = u.cumsum(dim=1) - epsilon
    k = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    # rho = #{j : u_j > (sum_{r<=j} u_r - eps) / j}; the condition holds on a prefix of the sorted values
    rho = (u * k > css).sum(dim=1, keepdim=True).clamp(min=1)  # [B, 1]
    theta = css.gather(1, rho - 1) / rho.to(v.dtype)
    projected = v.sign() * (a - theta).clamp(min=0)
    inside = a.sum(dim=1, keepdim=True) <= epsilon
    return torch.where(inside, v, projected)


def project_perturbation(raw: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """Maps an unconstrained generator output to a perturbation with ``||delta||_p <= epsilon`` (eq. 2).

    Args:
        raw: unconstrained perturbation [B, C, H, W].
        epsilon: the per-image budget (> 0).
        norm: ``"inf"``, ``"2"`` or ``"1"``.

    Returns:
        ``delta`` [B, C, H, W], each image within the ``epsilon`` l_p ball.
    """
    norm = check_norm(norm)
    epsilon = check_epsilon(epsilon)
    if norm == "inf":
        return epsilon * torch.tanh(raw)
    flat = raw.flatten(1)
    if norm == "2":
        length = flat.norm(dim=1, keepdim=True)
        return (flat * (epsilon / length.clamp(min=epsilon))).view_as(raw)
    return _project_l1(flat, epsilon).view_as(raw)


def apply_perturbation(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``z = x + delta`` projected to the image range ``[0, 1]`` (eq. 2 and "projected into [0, 1]")."""
    return (x + delta).clamp(0.0, 1.0)


def _norm_layer(channels: int) -> nn.Module:
    # per-sample normalisation: protect(x) of one image does not depend on the rest of the batch or on
    # train/eval mode (no running statistics)
    return nn.GroupNorm(min(8, channels), channels)


class PerturbationGenerator(nn.Module):
    """Auto-encoder-like generator G: 4 conv layers down, 4 up, bounded output (eq. 2).

    Encoder: 3x3 conv (stride 1) then three 4x4 stride-2 convs with ``channels[0..3]``; decoder: three 4x4
    stride-2 transposed convs back to ``channels[0]`` and a 3x3 conv to ``in_chans``. GroupNorm + ReLU
    after every layer but the last. Any ``H x W`` works: the input is padded (replicate) to a multiple of 8
    and the output cropped back.

    Args:
        in_chans: image channels C.
        channels: the 4 encoder widths, e.g. ``(16, 32, 64, 128)`` (Fashion-MNIST) or
            ``(64, 128, 256, 512)`` (CIFAR-10); the decoder mirrors them.
        epsilon: l_p budget of the perturbation per image (> 0).
        norm: ``"inf"``, ``"2"`` or ``"1"``.
    """

    def __init__(
        self,
        in_chans: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        epsilon: float = 0.3,
        norm: str = "inf",
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) != 4 or min(channels) < 1:
            raise ValueError(f"channels must be 4 positive widths (4 encoder layers), got {channels}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        self.in_chans = in_chans
        self.epsilon = check_epsilon(epsilon)
        self.norm = check_norm(norm)
        c1, c2, c3, c4 = channels

        def block(layer: nn.Module, out: int) -> list[nn.Module]:
            return [layer, _norm_layer(out), nn.ReLU(inplace=True)]

        self.encoder = nn.Sequential(
            *block(nn.Conv2d(in_chans, c1, 3, padding=1), c1),
            *block(nn.Conv2d(c1, c2, 4, stride=2, padding=1), c2),
            *block(nn.Conv2d(c2, c3, 4, stride=2, padding=1), c3),
            *block(nn.Conv2d(c3, c4, 4, stride=2, padding=1), c4),
        )
        self.decoder = nn.Sequential(
            *block(nn.ConvTranspose2d(c4, c3, 4, stride=2, padding=1), c3),
            *block(nn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1), c2),
            *block(nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), c1),
            nn.Conv2d(c1, in_chans, 3, padding=1),
        )

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Unconstrained output [B, C, H, W] for images ``x`` [B, C, H, W] in [0, 1]."""
        h, w = x.shape[-2:]
        ph, pw = -h % 8, -w % 8
        y = x * 2.0 - 1.0
        if ph or pw:
            y = F.pad(y, (0, pw, 0, ph), mode="replicate")
        return self.decoder(self.encoder(y))[..., :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Perturbation ``delta = G(x)`` [B, C, H, W] with ``||delta_i||_p <= epsilon`` for every image i."""
        return project_perturbation(self.raw(x), self.epsilon, self.norm)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, norm={self.norm!r}"
