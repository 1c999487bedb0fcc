"""Distinguishability of ambiguation noise: can the public code alone tell noise from informative entries?

Threat model: the attacker sees public codes (sparse code + noise entries) and knows the ambiguation
mechanism, so it can encode and ambiguate images of its own (training split) and label which non-zero
entries are noise. Two attackers:

* :func:`ks_attack`: a two-sample Kolmogorov-Smirnov test on the values and magnitudes of the evaluated
  codes' informative vs noise entries (what an auditor sees), plus the rank AUC of ``|value|`` as a score;
* :func:`noise_classifier_attack`: a per-entry classifier (small MLP on value, |value|, rank of |value|
  within its code map, one-hot position), trained on the attacker's own codes, scored by its AUC on the
  evaluated codes' non-zero entries (0.5 = indistinguishable).
"""

from __future__ import annotations

import torch
from scipy import stats

from models.attacks.inference import Probe
from models.attacks.metrics import auc
from models.attacks.training import fit, predict

__all__ = ["entry_features", "ks_attack", "noise_classifier_attack"]


def entry_features(public: torch.Tensor, maps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[M, 3 + L]`` and ``(row, column)`` of the non-zero entries of public codes ``[B, maps*L]``.

    Features: value, |value|, rank of |value| within its code map (0 = largest, normalised by the map's
    non-zero count), one-hot position within the map.
    """
    b, n = public.shape
    p = public.view(b, maps, n // maps)
    mag = p.abs()
    order = mag.argsort(-1, descending=True).argsort(-1).float()
    nnz = (p != 0).sum(-1, keepdim=True).clamp(min=1).float()
    rank = order / nnz
    rows, cols = (public != 0).nonzero(as_tuple=True)
    pos = cols % (n // maps)
    onehot = torch.nn.functional.one_hot(pos, n // maps).float()
    flat_rank = rank.view(b, n)[rows, cols]
    vals = public[rows, cols]
    feats = torch.cat([vals[:, None], vals.abs()[:, None], flat_rank[:, None], onehot], 1)
    return feats, torch.stack([rows, cols])


def ks_attack(public: torch.Tensor, codes: torch.Tensor) -> dict:
    """KS tests and the |value| rank AUC, informative (``codes != 0``) vs noise entries of ``public``."""
    info = public[codes != 0]
    noise = public[(public != 0) & (codes == 0)]
    ks_v, ks_m = (
        stats.ks_2samp(info.numpy(), noise.numpy()),
        stats.ks_2samp(info.abs().numpy(), noise.abs().numpy()),
    )
    scores = torch.cat([noise.abs(), info.abs()])
    labels = torch.cat([torch.ones(len(noise)), torch.zeros(len(info))])
    a = auc(scores, labels)
    return {
        "auc": max(a, 1 - a),
        "ks_values_statistic": round(float(ks_v.statistic), 4),
        "ks_values_pvalue": float(ks_v.pvalue),
        "ks_magnitudes_statistic": round(float(ks_m.statistic), 4),
        "ks_magnitudes_pvalue": float(ks_m.pvalue),
    }


def noise_classifier_attack(
    fit_public: torch.Tensor,
    fit_codes: torch.Tensor,
    test_public: torch.Tensor,
    test_codes: torch.Tensor,
    maps: int = 1,
    max_entries: int = 200_000,
    max_epochs: int = 20,
    seed: int = 0,
) -> dict:
    """Trains a noise-vs-informative classifier on the attacker's codes; AUC on the evaluated codes.

    ``*_codes`` are the sparse codes before ambiguation (the attacker knows them for its own images; for
    the evaluated images they are only used to score).
    """
    g = torch.Generator().manual_seed(seed)

    def data(public, codes):
        feats, (r, c) = entry_features(public, maps)
        labels = (codes[r, c] == 0).long()  # 1 = noise
        if len(labels) > max_entries:
            keep = torch.randperm(len(labels), generator=g)[:max_entries]
            feats, labels = feats[keep], labels[keep]
        return feats, labels

    fz, fy = data(fit_public, fit_codes)
    tz, ty = data(test_public, test_codes)
    n_hold = max(1, len(fy) // 10)
    probe = Probe(fz.shape[1], 2, "mlp", hidden=64)
    info = fit(
        probe,
        (fz[n_hold:], fy[n_hold:]),
        (fz[:n_hold], fy[:n_hold]),
        max_epochs=max_epochs,
        batch_size=1024,
        seed=seed,
    )
    logits = predict(probe, tz, 10_000)
    return {
        "auc": auc(logits[:, 1] - logits[:, 0], ty),
        "train_entries": len(fy) - n_hold,
        "test_entries": len(ty),
        **info,
    }
