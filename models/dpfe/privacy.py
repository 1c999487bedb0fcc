"""Identity-privacy measures of section 5 / 6.2: log-rank privacy (Definition 10), rank mean / std and the
1-NN identity error, as a functional and as a torchmetrics ``Metric``.

Estimating p(y|f) (the attacker's posterior) on one set of features, leave-one-out (a sample never
votes for itself):

* ``estimator="kde"`` (the paper and reference code: a kernel density per identity): features are
  standardised per dimension (zero mean, unit variance over the set, section 3); identity a's density is
  a Gaussian KDE over its other samples with an isotropic bandwidth from Silverman's rule of thumb,
  ``h_a = s_a * (4 / ((d + 2) n_a)) ** (1 / (d + 4))`` where ``n_a`` is a's sample count and ``s_a`` the
  root mean (over dimensions) within-identity variance (1 when ``n_a < 2``); then
  ``p(a|f) ∝ p(a) p(f|a)`` with ``p(a) = n_a / N``.
* ``estimator="knn"``: ``p(a|f)`` = fraction of identity a among the k nearest neighbours.

Rank of the true identity among the ``c_y`` posteriors (1 = most likely); ties count half (the expected
rank under a random order of the tied identities); identities absent from the set have p = 0.
``LRP = mean(log rank) / log c_y`` (eq. 9); the normalised rank ``(rank - 1) / (c_y - 1)`` has mean 0.5 and
std 0.289 when the posterior is uniform (the paper's "0.5 and 0.28", section 6.2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from models.dpfe.losses import check_features

__all__ = ["ESTIMATORS", "IdentityPrivacy", "identity_privacy", "silverman_bandwidths"]

ESTIMATORS = ("kde", "knn")
_CHUNK_ELEMENTS = 1 << 22


def _check(features: Tensor, identities: Tensor, num_identities: int) -> None:
    if features.dim() != 2 or identities.dim() != 1 or features.shape[0] != identities.shape[0]:
        raise ValueError(
            "expected features [N, d] and identities [N], got "
            f"{tuple(features.shape)} and {tuple(identities.shape)}"
        )
    if identities.is_floating_point() or identities.dtype == torch.bool:
        raise ValueError(f"identities must be integer ids, got dtype {identities.dtype}")
    if num_identities < 2:
        raise ValueError(f"privacy needs c_y >= 2 identities, got num_identities={num_identities}")
    if identities.numel() and (identities.min() < 0 or identities.max() >= num_identities):
        raise ValueError(
            f"identities must lie in 0..{num_identities - 1}, got {identities.min()}..{identities.max()}"
        )
    check_features(features)


def silverman_bandwidths(features: Tensor, identities: Tensor, num_identities: int) -> Tensor:
    """Per-identity Silverman bandwidths ``h_a`` (see the module docstring).

    Args:
        features: standardised features ``[N, d]``.
        identities: ``[N]`` ids in ``0 .. num_identities - 1``.
        num_identities: c_y.

    Returns:
        ``[c_y]`` bandwidths (1 for identities absent from the set).
    """
    n, d = features.shape
    ones = torch.ones(n, dtype=features.dtype, device=features.device)
    count = torch.zeros(num_identities, dtype=features.dtype, device=features.device).index_add_(
        0, identities, ones
    )
    s1 = torch.zeros(num_identities, d, dtype=features.dtype, device=features.device).index_add_(
        0, identities, features
    )
    s2 = torch.zeros_like(s1).index_add_(0, identities, features.pow(2))
    c = count.clamp_min(1)[:, None]
    var = ((s2 - s1.pow(2) / c) / (c - 1).clamp_min(1)).clamp_min(0).mean(1)
    s = torch.where(count >= 2, var.sqrt().clamp_min(1e-6), torch.ones_like(var))
    return s * (4.0 / ((d + 2) * count.clamp_min(1))) ** (1.0 / (d + 4))


def _group_logsumexp(logk: Tensor, ids: Tensor, num_identities: int) -> Tensor:
    """``out[i, a] = logsumexp_{j: ids[j] = a} logk[i, j]`` (``-inf`` for empty groups), ``logk [m, N]``."""
    m = logk.shape[0]
    index = ids[None, :].expand(m, -1)
    peak = torch.full((m, num_identities), -math.inf, dtype=logk.dtype, device=logk.device)
    peak = peak.scatter_reduce(1, index, logk, reduce="amax", include_self=True)
    safe = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = torch.zeros_like(peak).scatter_add_(1, index, (logk - safe.gather(1, index)).exp())
    return total.log() + safe


def identity_privacy(
    features: Tensor, identities: Tensor, num_identities: int, estimator: str = "kde", k: int = 10
) -> dict[str, Tensor]:
    """Log-rank privacy, normalised rank mean / std and 1-NN identity error of features w.r.t. identities.

    Args:
        features: ``[N, d]`` private features (N >= 2).
        identities: ``[N]`` int sensitive labels in ``0 .. num_identities - 1``.
        num_identities: c_y, the number of possible identities (the log c_y normaliser).
        estimator: ``"kde"`` (per-identity kernel density) or ``"knn"`` (k nearest neighbours).
        k: neighbours of the ``"knn"`` estimator.

    Returns:
        ``{"lrp", "rank_mean", "rank_std", "nn_error"}`` scalar float tensors.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    _check(features, identities, num_identities)
    n, d = features.shape
    if n < 2:
        raise ValueError(f"privacy needs at least 2 samples, got {n}")
    if estimator == "knn" and not 1 <= k < n:
        raise ValueError(f"knn needs 1 <= k < N={n}, got k={k}")
    x = features.double()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-12)
    ids = identities.long()
    counts = torch.bincount(ids, minlength=num_identities).to(x.dtype)
    h = silverman_bandwidths(x, ids, num_identities)
    rank_parts, nn_wrong = [], []
    step = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n, step):
        rows = torch.arange(start, min(start + step, n), device=x.device)
        dist2 = torch.cdist(x[rows], x).pow(2)  # [m, N]
        dist2[torch.arange(rows.shape[0], device=x.device), rows] = math.inf  # leave one out
        nn_wrong.append(ids[dist2.argmin(1)] != ids[rows])
        if estimator == "kde":
            hj = h[ids]  # bandwidth of each column's identity
            logk = -dist2 / (2 * hj.pow(2)) - d * hj.log()
            loo = counts[None, :].expand(rows.shape[0], -1).clone()
            loo.scatter_add_(
                1, ids[rows, None], -torch.ones(rows.shape[0], 1, dtype=x.dtype, device=x.device)
            )
            # log p(a) + log p(f|a) = log n_a - log N + logsumexp(...) - log n_a' (LOO count n_a')
            score = _group_logsumexp(logk, ids, num_identities) + counts.log() - loo.clamp_min(1).log()
        else:
            knn = dist2.topk(k, dim=1, largest=False).indices
            score = torch.zeros(rows.shape[0], num_identities, dtype=x.dtype, device=x.device)
            score.scatter_add_(1, ids[knn], torch.ones_like(knn, dtype=x.dtype))
        true = score.gather(1, ids[rows, None])
        greater = (score > true).sum(1).to(x.dtype)
        ties = (score == true).sum(1).to(x.dtype) - 1  # minus the true identity itself
        rank_parts.append(1 + greater + 0.5 * ties)
    rank = torch.cat(rank_parts)
    norm_rank = (rank - 1) / (num_identities - 1)
    return {
        "lrp": (rank.log().mean() / math.log(num_identities)).float(),
        "rank_mean": norm_rank.mean().float(),
        "rank_std": norm_rank.std(unbiased=False).float(),
        "nn_error": torch.cat(nn_wrong).double().mean().float(),
    }


class IdentityPrivacy(Metric):
    """:func:`identity_privacy` as a torchmetrics ``Metric`` (features and identities kept as "cat" states,
    gathered across DDP ranks; everything is computed once at the end).

    Args:
        num_identities: c_y.
        estimator: ``"kde"`` or ``"knn"``.
        k: neighbours of ``"knn"``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_identities: int, estimator: str = "kde", k: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
        if num_identities < 2:
            raise ValueError(f"privacy needs c_y >= 2 identities, got num_identities={num_identities}")
        self.num_identities = num_identities
        self.estimator = estimator
        self.k = k
        self.add_state("features", default=[], dist_reduce_fx="cat")
        self.add_state("identities", default=[], dist_reduce_fx="cat")

    def update(self, features: Tensor, identities: Tensor) -> None:
        """Adds a batch: ``features`` ``[B, d]``, ``identities`` ``[B]``."""
        _check(features, identities, self.num_identities)
        self.features.append(features.detach().float())
        self.identities.append(identities.detach().long())

    def compute(self) -> dict[str, Tensor]:
        """``{"lrp", "rank_mean", "rank_std", "nn_error"}`` over everything seen."""
        return identity_privacy(
            dim_zero_cat(self.features),
            dim_zero_cat(self.identities),
            self.num_identities,
            self.estimator,
            self.k,
        )
