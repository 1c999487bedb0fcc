"""Noise addition (section 4.3, Procedure 2): Gaussian noise with covariance r * C on the private features."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["PAPER_RATIOS", "add_feature_noise", "feature_covariance"]

#: Procedure 2's noise ratios r, as listed in the issue.
PAPER_RATIOS: tuple[float, ...] = (0.0, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 4.0, 6.0, 8.0)


def feature_covariance(features: Tensor) -> Tensor:
    """C, the (unbiased) covariance of the private features.

    Args:
        features: ``[N, d]`` (N >= 2), e.g. training features.

    Returns:
        ``[d, d]`` float64 covariance.
    """
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, d], got {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        raise FloatingPointError("NaN/inf features: cannot estimate their covariance")
    return torch.cov(features.double().T).reshape(features.shape[1], features.shape[1])


def add_feature_noise(
    features: Tensor, cov: Tensor, ratio: float, generator: torch.Generator | None = None
) -> Tensor:
    """``H_r = H + N_r``, ``N_r ~ N(0, r C)`` (Procedure 2).

    Args:
        features: ``[B, d]``.
        cov: ``[d, d]`` covariance C (symmetric PSD).
        ratio: r >= 0.
        generator: CPU generator for reproducible noise.

    Returns:
        ``[B, d]`` noisy features (``features`` itself when r = 0).
    """
    if ratio < 0:
        raise ValueError(f"noise ratio must be >= 0, got {ratio}")
    if ratio == 0:
        return features
    lam, vec = torch.linalg.eigh(cov.double())
    root = vec * lam.clamp_min(0).sqrt()  # root @ root.T = C, also for singular C
    eps = torch.randn(features.shape, generator=generator, dtype=torch.float64)
    noise = (eps @ root.T) * ratio**0.5
    return features + noise.to(features.device, features.dtype)
