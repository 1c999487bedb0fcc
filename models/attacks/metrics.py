"""Measures shared by the attacks (no method-package imports)."""

from __future__ import annotations

import math

from torch import Tensor
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.functional.image import structural_similarity_index_measure

__all__ = ["auc", "log_rank_privacy", "nmse", "ssim"]


def nmse(preds: Tensor, target: Tensor) -> float:
    """Normalised MSE ``||x - x_hat||^2 / ||x||^2`` per image, averaged over images (SCA's Table I)."""
    if preds.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
    err = (preds.double() - target.double()).flatten(1).pow(2).sum(1)
    energy = target.double().flatten(1).pow(2).sum(1).clamp(min=1e-12)
    return float((err / energy).mean())


def ssim(preds: Tensor, target: Tensor, batch_size: int = 1000) -> float:
    """torchmetrics' SSIM (11x11 Gaussian window, data range 1), averaged over images."""
    total = 0.0
    for s in range(0, len(target), batch_size):
        p, t = preds[s : s + batch_size].float(), target[s : s + batch_size].float()
        total += float(structural_similarity_index_measure(p, t, data_range=1.0, reduction="sum"))
    return total / len(target)


def log_rank_privacy(scores: Tensor, labels: Tensor, num_classes: int) -> float:
    """``mean(log rank of the true class) / log c`` of an attacker's class scores ``[N, c]`` (ties: half).

    0 = the attacker always ranks the true class first; a random ranking gives about 0.66 for c = 10
    (``log(10!) / (10 log 10)``), as the DPFE paper's log-rank privacy (higher = more private).
    """
    true = scores.gather(1, labels.long()[:, None])
    rank = 1 + (scores > true).sum(1).double() + 0.5 * ((scores == true).sum(1).double() - 1)
    return float(rank.log().mean() / math.log(num_classes))


def auc(scores: Tensor, labels: Tensor) -> float:
    """ROC AUC of scores for binary labels (1 = positive)."""
    return float(binary_auroc(scores.float(), labels.long()))
