"""Input transforms inside PPL's game (options beyond the paper; off by default).

The paper feeds the surrogate F the protected images ``z`` as they are. Two known levers for
perturbations that transfer to models nobody tuned against, and survive purification, act on the ``z``
that F sees on the privacy path (Jp, eq. 11) only:

* :func:`random_resize_pad` -- input diversity (Xie et al., CVPR 2019, "DI-FGSM"): shrink the batch to
  a random size and zero-pad it back at a random offset, so G cannot rely on pixel-exact patterns;
* :func:`jpeg_straight_through` -- JPEG compression in the forward pass with the identity as its
  gradient (BPDA, Athalye et al., ICML 2018), so the perturbation is trained to survive the JPEG
  purification an attacker applies (``models.attacks.retrieval.purify``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

__all__ = ["check_jpeg_quality", "check_probability", "jpeg_straight_through", "random_resize_pad"]


def check_probability(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} is a probability per step and must lie in [0, 1], got {p}")
    return float(p)


def check_jpeg_quality(quality: int) -> int:
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"jpeg_quality must be an integer in [1, 100] (libjpeg's range), got {quality}")
    return int(quality)


def random_resize_pad(x: torch.Tensor, min_scale: float = 0.8, generator: torch.Generator | None = None):
    """DI-FGSM's transform: resize [B, C, H, W] to a random ``h x w`` in ``[min_scale, 1] x (H, W)``, zero-pad
    back to ``H x W`` at a random offset; one draw per batch. Differentiable in ``x``.
    """
    h, w = x.shape[-2:]
    s = float(torch.empty(()).uniform_(min_scale, 1.0, generator=generator))
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) == (h, w):
        return x
    small = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    top = int(torch.randint(0, h - nh + 1, (), generator=generator))
    left = int(torch.randint(0, w - nw + 1, (), generator=generator))
    return F.pad(small, (left, w - nw - left, top, h - nh - top))


def jpeg_straight_through(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compressed ``x`` (float [B, C, H, W] in [0, 1], C = 1 or 3) with the identity's gradient.

    Forward: each image rounded to uint8, compressed by libjpeg (torchvision) at ``quality`` and decoded.
    Backward: ``d out / d x = I`` (straight-through / BPDA).
    """
    with torch.no_grad():
        x8 = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        jpeg = TF.jpeg(x8, quality=check_jpeg_quality(quality)).to(x.device, x.dtype) / 255
    return x + (jpeg - x).detach()
