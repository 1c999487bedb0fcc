"""PPL's objective terms (paper eqs. 4-11), on relaxed codes ``h = tanh(F(.))`` in ``[-1, 1]^c``.

Notation: ``h_x`` [n, c] codes of clean images, ``h_z`` [n, c] codes of their adversarial versions,
``S`` [n, n] the similarity matrix (:func:`similarity_matrix`).

Convention of ``S``: ``S_ij = +1`` (similar) / ``-1`` (dissimilar). The paper states it in its
Preliminaries ("S_ij = 1 if the i-th and the j-th data points are semantically similar and S_ij = -1
otherwise"), and eqs. 4 and 9 compare ``h_i^T h_j`` (in ``[-c, c]``) with ``c * S_ij``, which only makes
sense for +-1: with a {0, 1} S dissimilar codes would be pushed to be orthogonal instead of opposite. The
SMMD's ``S+ = [S_ij > 0]``, ``S- = [S_ij <= 0]`` are consistent with it.

Scaling: every term is implemented exactly at the paper's scale, i.e. as the plain sums it writes --
``Jo`` (eq. 4) and ``Js`` (eq. 9) sum ``(h_i^T h_j - c S_ij)^2`` over the ``n^2`` pairs (O(n^2 c^2)),
``Je`` (eq. 10) sums ``||h(x_i) - h(z_i)||^2`` over the ``n`` images (O(n c)), and ``D_s`` (eqs. 7-8) is
a difference of kernel averages (O(1)) -- so that alpha, beta, gamma (paper: 1, 10, 1) and the relative
weight of ``Jo`` mean what they mean in the paper. The module divides the *total* objective by ONE
constant, :func:`objective_scale` ``= n^2 c^2``, to keep gradients O(1) (Adam is nearly invariant to a
global scale); the ratios between the terms stay the paper's. An earlier version averaged every term to
O(1) separately, which over-weighted ``Je`` by ~``n c`` and ``D_s`` by ~``n^2 c^2`` relative to the paper;
both vanish at the all-zero code, and the surrogate collapsed to it on real Fashion-MNIST.

Jo is on the adversarial codes ``h(z)`` among themselves, as eq. 4 is written (its ``h(z_i)^T h(z_i)``
is read as ``h(z_i)^T h(z_j)``, the only reading consistent with the double sum over ``i, j``): the
protected data keep the similarity structure ("normal use guarantee").

Kernel bandwidth of the SMMD (eqs. 5-8): Gaussian ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))`` with the
median heuristic ``2 sigma^2 = median of the squared pairwise distances between the 2B pooled codes``
(``h_x`` and ``h_z``, self-pairs excluded), computed without gradient (Gretton et al., JMLR 2012);
the mean is used where the median is ~0 (more than half the codes identical). A fixed ``bandwidth``
(the value of ``2 sigma^2``) can be passed instead.
"""

from __future__ import annotations

import torch

__all__ = [
    "affinity_loss",
    "gaussian_kernel",
    "matching_loss",
    "median_bandwidth",
    "objective_scale",
    "privacy_loss",
    "similarity_loss",
    "similarity_matrix",
    "smmd",
]


def similarity_matrix(labels: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    """``S`` [B, B'] with ``S_ij = +1`` when items i and j are similar, ``-1`` otherwise (Preliminaries).

    Args:
        labels: class ids [B] (similar = same class) or multi-hot [B, L] (similar = a shared label).
        other: labels of the second set [B'] / [B', L]; ``None`` = ``labels``.

    Returns:
        float32 [B, B'] of +-1 (the paper's convention, see the module docstring).
    """
    other = labels if other is None else other
    if labels.dim() == 1:
        same = labels[:, None] == other[None, :]
    else:
        same = (labels.float() @ other.float().T) > 0.5
    return same.float() * 2.0 - 1.0


def objective_scale(n: int, c: int) -> float:
    """The one global normaliser ``1 / (n^2 c^2)`` applied to the whole objective ``Jo + Jp``.

    ``n^2 c^2`` is the order of ``Jo`` and ``Js`` (``n^2`` pairs, ``|h_i^T h_j - c S_ij| <= 2c``); one
    constant for all terms keeps the paper's ratios between them.
    """
    return 1.0 / (float(n) ** 2 * float(c) ** 2)


def _pairwise_code_loss(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return (a @ b.T - a.shape[1] * s).square().sum()


def affinity_loss(h_z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Affinity-preserving loss Jo: adversarial codes keep the similarity structure among themselves.

    Args:
        h_z: relaxed codes of the adversarial images [B, c].
        s: similarity matrix [B, B] of +-1.

    Returns:
        Scalar ``sum_ij (h(z_i)^T h(z_j) - c S_ij)^2`` (paper scale, O(n^2 c^2)).
    """
    # eq. 4: Jo = sum_ij ||h(z_i)^T h(z_j) - c S_ij||^2
    return _pairwise_code_loss(h_z, h_z, s)


def similarity_loss(h_x: torch.Tensor, h_z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Similarity loss Js between the clean and the adversarial domain (cross-domain search).

    Args:
        h_x: relaxed codes of the clean images [B, c].
        h_z: relaxed codes of the adversarial images [B, c].
        s: similarity matrix [B, B] of +-1.

    Returns:
        Scalar ``sum_ij (h(x_i)^T h(z_j) - c S_ij)^2`` (paper scale, O(n^2 c^2)).
    """
    # eq. 9: Js = sum_ij ||h(x_i)^T h(z_j) - c S_ij||^2
    return _pairwise_code_loss(h_x, h_z, s)


def matching_loss(h_x: torch.Tensor, h_z: torch.Tensor) -> torch.Tensor:
    """Matching loss Je between every clean image and its own adversarial version.

    Args:
        h_x: relaxed codes of the clean images [B, c].
        h_z: relaxed codes of the adversarial images [B, c] (row i is the version of image i).

    Returns:
        Scalar ``sum_i ||h(x_i) - h(z_i)||^2`` (paper scale, in ``[0, 4 n c]``).
    """
    # eq. 10: Je = sum_i ||h(x_i) - h(z_i)||^2
    return (h_x - h_z).square().sum()


@torch.no_grad()
def median_bandwidth(h_x: torch.Tensor, h_z: torch.Tensor) -> torch.Tensor:
    """Median heuristic ``2 sigma^2`` = median squared distance of the pooled codes (no gradient).

    Args:
        h_x: codes [B, c]; h_z: codes [B', c].

    Returns:
        Positive scalar tensor.
    """
    pooled = torch.cat([h_x, h_z]).detach().float()
    d2 = torch.cdist(pooled, pooled).square()
    n = pooled.shape[0]
    off = d2[~torch.eye(n, dtype=torch.bool, device=d2.device)]
    if off.numel() == 0:
        return torch.ones((), device=d2.device)
    med = off.median()
    return torch.where(med > 1e-6, med, off.mean()).clamp(min=1e-6)


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, bandwidth: torch.Tensor | float) -> torch.Tensor:
    """Gaussian kernel matrix ``exp(-||a_i - b_j||^2 / bandwidth)`` [B, B'] (``bandwidth = 2 sigma^2``)."""
    d2 = (a.square().sum(1, keepdim=True) + b.square().sum(1)[None, :] - 2.0 * a @ b.T).clamp(min=0)
    return torch.exp(-d2 / bandwidth)


def smmd(
    h_x: torch.Tensor,
    h_z: torch.Tensor,
    s: torch.Tensor,
    bandwidth: torch.Tensor | float | None = None,
) -> dict[str, torch.Tensor]:
    """Similarity-aware MMD D_s, unbiased estimate over the similar and the dissimilar pairs.

    ``D^* = sum_ij S*_ij [k(x_i, x_j) + k(z_i, z_j) - k(x_i, z_j) - k(x_j, z_i)] / sum_ij S*_ij`` for
    ``* in {+, -}`` (``S+`` = similar pairs, ``S-`` = dissimilar), ``D_s = D+ - D-``. The sums run over
    ``i != j`` (the U-statistic of Gretton et al. 2012, unbiased for the paired samples ``(x_i, z_i)``;
    the ``i = i`` matching is Je's job). A pair set that is empty in the batch contributes 0.

    Args:
        h_x: relaxed codes of the clean images [B, c].
        h_z: relaxed codes of the adversarial images [B, c].
        s: similarity matrix [B, B] of +-1.
        bandwidth: ``2 sigma^2`` of the Gaussian kernel; ``None`` = :func:`median_bandwidth`.

    Returns:
        ``{"ds": D_s, "ds_pos": D+, "ds_neg": D-, "bandwidth": 2 sigma^2}`` (scalars).
    """
    if bandwidth is None:
        bandwidth = median_bandwidth(h_x, h_z)
    bandwidth = torch.as_tensor(bandwidth, dtype=h_x.dtype, device=h_x.device)
    k_xz = gaussian_kernel(h_x, h_z, bandwidth)
    # eq. 8 summand: k(x_i, x_j) + k(z_i, z_j) - 2 k(x_i, z_j), the cross term symmetrised over (i, j)
    pair = gaussian_kernel(h_x, h_x, bandwidth) + gaussian_kernel(h_z, h_z, bandwidth) - k_xz - k_xz.T
    off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    out = {}
    for name, mask in (("ds_pos", (s > 0) & off), ("ds_neg", (s <= 0) & off)):
        weight = mask.to(pair.dtype)
        # eq. 8: D^* = sum S*_ij (...) / sum S*_ij
        out[name] = (pair * weight).sum() / weight.sum().clamp(min=1.0)
    # eq. 7: D_s = D+ - D-
    out["ds"] = out["ds_pos"] - out["ds_neg"]
    out["bandwidth"] = bandwidth.detach()
    return out


def privacy_loss(
    h_x: torch.Tensor,
    h_z: torch.Tensor,
    s: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 10.0,
    gamma: float = 1.0,
    bandwidth: torch.Tensor | float | None = None,
) -> dict[str, torch.Tensor]:
    """Privacy-preserving loss Jp = alpha D_s + beta Js + gamma Je and its parts, at the paper's scale.

    Args:
        h_x: relaxed codes of the clean images [B, c].
        h_z: relaxed codes of the adversarial images [B, c].
        s: similarity matrix [B, B] of +-1.
        alpha, beta, gamma: balance weights (paper: 1, 10, 1).
        bandwidth: see :func:`smmd`.

    Returns:
        ``{"jp", "ds", "ds_pos", "ds_neg", "bandwidth", "js", "je"}`` (scalars).
    """
    out = smmd(h_x, h_z, s, bandwidth)
    out["js"] = similarity_loss(h_x, h_z, s)
    out["je"] = matching_loss(h_x, h_z)
    # eq. 11: Jp = alpha * D_s + beta * Js + gamma * Je
    out["jp"] = alpha * out["ds"] + beta * out["js"] + gamma * out["je"]
    return out
