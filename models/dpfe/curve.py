"""Procedure 2 (the DPFE test phase): noisy private features -> (z-accuracy, identity privacy) per ratio r,
and the comparison of two curves by Acc-Priv superiority (Definition 11)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from models.dpfe.noise import add_feature_noise
from models.dpfe.privacy import identity_privacy

__all__ = ["accuracy_privacy_curve", "collect_features", "compare_curves", "pareto_mask", "z_accuracy"]


@torch.no_grad()
def collect_features(
    module, loader: Iterable, max_samples: int | None = None, seed: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Private features and targets of a loader's images (eval mode).

    Args:
        module: a :class:`models.dpfe.DPFE`.
        loader: yields privzoo batches (``image`` uint8 or float in [0, 1]).
        max_samples: stop after this many samples (``None`` = all).
        seed: seed of the extractor's channel noise (``feature_noise > 0``); ``None`` = torch's global RNG.

    Returns:
        ``(features [N, d], z [N, K], y [N])`` on the CPU.
    """
    was_training = module.training
    module.eval()
    feats, zs, ys, n = [], [], [], 0
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    for batch in loader:
        x = batch["image"].to(module.device)
        x = x.float() / 255.0 if not x.is_floating_point() else x
        batch = {**batch, "label": batch["label"].to(module.device)}
        if "identity" in batch:
            batch["identity"] = batch["identity"].to(module.device)
        z, y = module.targets(batch)
        feats.append(module.extract(x, generator=generator).cpu())
        zs.append(z.cpu())
        ys.append(y.cpu())
        n += x.shape[0]
        if max_samples is not None and n >= max_samples:
            break
    module.train(was_training)
    cut = slice(0, max_samples)
    return torch.cat(feats)[cut], torch.cat(zs)[cut], torch.cat(ys)[cut]


def z_accuracy(logits: Tensor, z: Tensor) -> float:
    """Average accuracy of the binary attributes (paper footnote 4). ``logits``, ``z``: ``[N, K]``."""
    return float(((logits > 0).float() == z).float().mean())


@torch.no_grad()
def accuracy_privacy_curve(
    module,
    features: Tensor,
    z: Tensor,
    y: Tensor,
    cov: Tensor,
    ratios: Sequence[float],
    num_identities: int,
    estimator: str = "kde",
    k: int = 10,
    seed: int = 0,
    noise_draws: int = 1,
) -> list[dict[str, float]]:
    """For each r: H_r = H + N(0, r C) -> z-accuracy of the z-predictor on H_r and identity privacy of H_r.

    Args:
        module: the :class:`models.dpfe.DPFE` whose ``predict_from_features`` is the z-predictor.
        features: ``[N, d]`` clean private features of the evaluation set.
        z: ``[N, K]`` primary attributes.
        y: ``[N]`` identities.
        cov: ``[d, d]`` feature covariance C (Procedure 2: estimated on training features).
        ratios: the noise ratios r.
        num_identities: c_y.
        estimator: privacy estimator (``"kde"`` / ``"knn"``).
        k: k of ``"knn"``.
        seed: noise seed (the same noise draws for every model compared).
        noise_draws: independent noise draws per r (seeds ``seed .. seed + noise_draws - 1``); every
            measure is averaged over them (r = 0 needs one).

    Returns:
        One dict per r: ``{"r", "z_acc", "lrp", "rank_mean", "rank_std", "nn_error"}``.
    """
    was_training = module.training
    module.eval()
    rows = []
    features = features.float()  # features released under bf16 autocast: the curve is measured in float32
    if noise_draws < 1:
        raise ValueError(f"noise_draws must be >= 1, got {noise_draws}")
    for r in ratios:
        draws = []
        for i in range(noise_draws if r > 0 else 1):
            noisy = add_feature_noise(features, cov, float(r), torch.Generator().manual_seed(seed + i))
            logits = torch.cat(
                [module.predict_from_features(c.to(module.device)).cpu() for c in noisy.split(4096)]
            )
            priv = identity_privacy(noisy, y, num_identities, estimator, k)
            draws.append({"z_acc": z_accuracy(logits, z), **{n: float(v) for n, v in priv.items()}})
        rows.append({"r": float(r), **{key: float(np.mean([d[key] for d in draws])) for key in draws[0]}})
    module.train(was_training)
    return rows


def pareto_mask(acc: Sequence[float], priv: Sequence[float]) -> list[bool]:
    """Points not dominated by another point (higher-or-equal accuracy AND privacy, one strictly)."""
    a, p = np.asarray(acc, float), np.asarray(priv, float)
    out = []
    for i in range(len(a)):
        dominated = (a >= a[i]) & (p >= p[i]) & ((a > a[i]) | (p > p[i]))
        out.append(not bool(dominated.any()))
    return out


def compare_curves(
    candidate: list[dict[str, float]], baseline: list[dict[str, float]], privacy: str = "lrp"
) -> dict[str, object]:
    """Is ``candidate`` Acc-Priv superior to ``baseline``?

    Two readings are reported:

    * ``per_ratio``: at every r, candidate privacy > baseline privacy AND candidate accuracy >= baseline
      accuracy (the issue's target, "higher LRP at equal or better z-accuracy").
    * ``per_accuracy`` (Definition 11 read on the curves): at each candidate point whose accuracy lies inside
      the baseline curve's accuracy range, its privacy exceeds the baseline's privacy linearly interpolated
      at that accuracy (points outside that range have no baseline point of equal accuracy and are not
      compared; ``compared_per_accuracy`` lists the r that were).

    Returns:
        ``{"per_ratio": bool, "per_accuracy": bool, "failures_per_ratio": [r, ...],
        "failures_per_accuracy": [r, ...], "compared_per_accuracy": [r, ...]}``.
    """
    by_r = {row["r"]: row for row in baseline}
    fail_r = [
        c["r"]
        for c in candidate
        if not (c[privacy] > by_r[c["r"]][privacy] and c["z_acc"] >= by_r[c["r"]]["z_acc"])
    ]
    acc_b = np.array([row["z_acc"] for row in baseline])
    priv_b = np.array([row[privacy] for row in baseline])
    order = np.argsort(acc_b)
    fail_a, compared = [], []
    for c in candidate:
        if acc_b.min() <= c["z_acc"] <= acc_b.max():
            compared.append(c["r"])
            ref = float(np.interp(c["z_acc"], acc_b[order], priv_b[order]))
            if not c[privacy] > ref:
                fail_a.append(c["r"])
    return {
        "per_ratio": not fail_r,
        "per_accuracy": not fail_a,
        "failures_per_ratio": fail_r,
        "failures_per_accuracy": fail_a,
        "compared_per_accuracy": compared,
    }
