"""DPFE losses, eq. (7): the z-predictor's classification loss and the contrastive y-remover."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attribute_loss", "check_features", "y_remover_loss"]


def check_features(features: torch.Tensor, what: str = "features") -> None:
    """Raises a clear ``FloatingPointError`` when features contain NaN/inf.

    Args:
        features: ``[B, d]``.
        what: name used in the message.
    """
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        raise FloatingPointError(
            f"{bad} of {features.shape[0]} {what} contain NaN/inf: the model diverged or the input is "
            "corrupt (lower the learning rate, check the images are finite floats in [0, 1])"
        )


def attribute_loss(logits: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """First term of eq. (7), -log q(z|f): sigmoid cross-entropy averaged over samples and attributes.

    Args:
        logits: ``[B, K]`` z-predictor outputs.
        z: ``[B, K]`` 0/1 primary attributes.

    Returns:
        Scalar loss.
    """
    return F.binary_cross_entropy_with_logits(logits, z.to(logits.dtype))


def y_remover_loss(features: torch.Tensor, y: torch.Tensor, margin: float = 10.0) -> torch.Tensor:
    """Second term of eq. (7) as the reference code's contrastive loss with the pair label inverted.

    Pairs are built inside the batch: all ``B (B - 1) / 2`` unordered pairs ``(i, j)``. Pairs of
    DIFFERENT identities are pulled together (``d_ij^2``), pairs of the SAME identity are pushed past
    the margin (``max(margin - d_ij, 0)^2``), ``d_ij = ||f_i - f_j||_2``; the loss is Caffe's
    ``1 / (2 P) * sum`` over the ``P`` pairs.

    Args:
        features: ``[B, d]`` private features (B >= 2).
        y: ``[B]`` integer sensitive labels (identities).
        margin: contrastive margin (reference code: 10).

    Returns:
        Scalar loss.

    Raises:
        ValueError: fewer than 2 samples, or a batch whose samples all share one identity (no
            different-identity pair: shuffle the training set or use a larger batch).
    """
    if features.dim() != 2 or y.dim() != 1 or features.shape[0] != y.shape[0]:
        raise ValueError(
            f"expected features [B, d] and y [B], got {tuple(features.shape)} and {tuple(y.shape)}"
        )
    b = features.shape[0]
    if b < 2:
        raise ValueError(f"the y-remover needs pairs: got a batch of {b} sample(s); use batch_size >= 2")
    if bool((y == y[0]).all()):
        raise ValueError(
            f"the y-remover needs pairs of two identities, but all {b} samples of this batch have identity "
            f"{int(y[0])}: shuffle the training data and/or use a larger batch"
        )
    check_features(features)
    i, j = torch.triu_indices(b, b, offset=1, device=features.device)
    diff = features[i] - features[j]
    dist_sq = diff.pow(2).sum(1)
    same = y[i] == y[j]
    dist = (dist_sq + 1e-12).sqrt()
    per_pair = torch.where(same, (margin - dist).clamp_min(0).pow(2), dist_sq)
    return per_pair.sum() / (2 * per_pair.shape[0])
