"""SCA's measurements: normalised MSE (Table I), R-recall@T (Fig. 3e-f), support probabilities Pc / Pm
(Fig. 3b) and the intra- vs inter-class distance divergence of the clustering leakage (Fig. 4f)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["NMSE", "RecallAtT", "intra_inter_kl", "pixel_ground_truth", "support_probabilities"]


class NMSE(Metric):
    """Normalised MSE ``||x - x_hat||^2 / ||x||^2`` of Table I, averaged over images.

    ``reduction="mean"`` (default) averages the per-image ratios; ``"global"`` divides the summed squared
    errors by the summed energies (both states are kept, so both are exact under DDP).

    Args:
        reduction: ``"mean"`` or ``"global"``.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, reduction: str = "mean", **kwargs) -> None:
        super().__init__(**kwargs)
        if reduction not in ("mean", "global"):
            raise ValueError(f"reduction must be 'mean' or 'global', got {reduction!r}")
        self.reduction = reduction
        self.add_state("ratio_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("error_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("energy_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``, ``target``: ``[B, ...]`` reconstructions and originals."""
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
        err = (preds.detach() - target).flatten(1).double().pow(2).sum(1)
        energy = target.flatten(1).double().pow(2).sum(1)
        self.ratio_sum += (err / energy.clamp(min=1e-12)).sum()
        self.error_sum += err.sum()
        self.energy_sum += energy.sum()
        self.count += err.numel()

    def compute(self) -> Tensor:
        if self.reduction == "global":
            return (self.error_sum / self.energy_sum.clamp(min=1e-12)).float()
        return (self.ratio_sum / self.count.clamp(min=1)).float()


class RecallAtT(Metric):
    """R-recall@T: the fraction of the ``R`` true nearest neighbours found in the first ``T`` results.

    Args:
        ts: the list positions ``T`` to report (a recall curve).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ts: Sequence[int] = (1, 2, 5, 10, 20, 50, 100), **kwargs) -> None:
        super().__init__(**kwargs)
        self.ts = sorted(int(t) for t in ts)
        if not self.ts or self.ts[0] < 1:
            raise ValueError(f"ts must be positive list lengths, got {ts}")
        self.add_state("hits", torch.zeros(len(self.ts), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, retrieved: Tensor, ground_truth: Tensor) -> None:
        """``retrieved``: ``[B, >= max T]`` ids in rank order (``-1`` = none); ``ground_truth``: ``[B, R]``"""
        if retrieved.shape[0] != ground_truth.shape[0]:
            raise ValueError("retrieved and ground_truth need one row per query")
        if retrieved.shape[1] < self.ts[-1]:
            raise ValueError(f"retrieved has {retrieved.shape[1]} columns, fewer than T = {self.ts[-1]}")
        found = (retrieved[:, :, None] == ground_truth[:, None, :]) & (retrieved[:, :, None] >= 0)
        first = found.any(2).double().cumsum(1)  # hits within the first t results
        r = ground_truth.shape[1]
        for j, t in enumerate(self.ts):
            self.hits[j] += (first[:, t - 1] / r).sum()
        self.count += retrieved.shape[0]

    def compute(self) -> Tensor:
        """``[len(ts)]`` recall at each ``T``."""
        return (self.hits / self.count.clamp(min=1)).float()


def pixel_ground_truth(queries: Tensor, database: Tensor, r: int, chunk: int = 1024) -> Tensor:
    """Ids ``[B, r]`` of the ``r`` nearest database images to each query in pixel Euclidean distance."""
    q, db = queries.flatten(1).float(), database.flatten(1).float()
    out = []
    db_sq = db.pow(2).sum(1)
    for s in range(0, q.shape[0], chunk):
        d = db_sq[None] - 2 * q[s : s + chunk] @ db.T
        out.append(d.topk(r, dim=1, largest=False).indices)
    return torch.cat(out)


def support_probabilities(codes_x: Tensor, codes_y: Tensor) -> tuple[float, float]:
    """Pc / Pm of Fig. 3b: the fraction of the support of ``phi(x)`` kept / missed in ``phi(y)``.

    ``Pc = (1 / (M Sx)) sum_m |supp phi(x_m) cap supp phi(y_m)|``, ``Pm = 1 - Pc``.

    Args:
        codes_x: ``[M, D]`` codes of the clean points.
        codes_y: ``[M, D]`` codes of their noisy versions.
    """
    sx = (codes_x != 0).sum(1).double()
    common = ((codes_x != 0) & (codes_y != 0)).sum(1).double()
    pc = float(common.sum() / sx.sum().clamp(min=1))
    return pc, 1.0 - pc


def intra_inter_kl(points: Tensor, labels: Tensor, bins: int = 64, max_pairs: int = 200_000) -> float:
    """``D(P_intra || P_inter)`` of the histograms of intra- and inter-class pairwise distances (Fig. 4f).

    A space that leaks the clustering has intra-class distances clearly smaller than inter-class ones (a
    large divergence); an ambiguated space should bring it towards 0. Distances are normalised by their
    median; histograms get a 1e-6 floor.

    Args:
        points: ``[M, D]``.
        labels: ``[M]`` class ids.
        bins: histogram bins.
        max_pairs: pairs used (the first ones of the upper triangle order).
    """
    x = points.flatten(1).double()
    d = torch.cdist(x, x)
    iu = torch.triu_indices(x.shape[0], x.shape[0], 1)
    dist, same = d[iu[0], iu[1]][:max_pairs], (labels[iu[0]] == labels[iu[1]])[:max_pairs]
    dist = dist / dist.median().clamp(min=1e-12)
    hi = float(dist.max()) + 1e-9
    p = torch.histc(dist[same], bins=bins, min=0, max=hi) + 1e-6
    q = torch.histc(dist[~same], bins=bins, min=0, max=hi) + 1e-6
    p, q = p / p.sum(), q / q.sum()
    return float((p * (p / q).log()).sum())
