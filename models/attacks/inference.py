"""Attribute inference: an attacker predicts the sensitive class from released features / codes.

Threat model: the attacker sees the released vectors of the evaluated (test) images and holds its own
LABELLED images (the training split), which it releases itself with the public release function. It
trains a linear probe or an MLP (:class:`Probe`, early stopping on a held-out part of its data), or uses
a k-NN vote over its own releases (k tuned on the held-out part), and outputs class scores for every
evaluated release. Reported: the sensitive-class accuracy and the log-rank privacy of its scores
(:func:`models.attacks.metrics.log_rank_privacy`).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from models.attacks.metrics import log_rank_privacy
from models.attacks.training import fit, predict

__all__ = ["KNN_KS", "PROBES", "Probe", "knn_scores", "probe_attack", "standardiser"]

PROBES = ("linear", "mlp", "knn")
#: the k-NN attacker's candidate k (chosen on its held-out data)
KNN_KS = (10, 50, 200)


class Probe(L.LightningModule):
    """Linear or one-hidden-layer MLP classifier ``[B, d] -> [B, c]`` (cross-entropy)."""

    def __init__(
        self, in_dim: int, num_classes: int, arch: str = "linear", hidden: int = 256, lr: float = 1e-3
    ):
        super().__init__()
        self.save_hyperparameters()
        if arch == "linear":
            self.net = nn.Linear(in_dim, num_classes)
        elif arch == "mlp":
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        else:
            raise ValueError(f"unknown probe arch {arch!r}; valid: linear, mlp")

    def forward(self, z):
        return self.net(z)

    def training_step(self, batch, batch_idx):
        z, y = batch
        return F.cross_entropy(self(z), y)

    def validation_step(self, batch, batch_idx):
        z, y = batch
        self.log("val_loss", F.cross_entropy(self(z), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def standardiser(fit_z: torch.Tensor):
    """The attacker-side standardisation: ``z -> (z - mean) / std`` with the statistics of its own data."""
    mean, std = fit_z.float().mean(0), fit_z.float().std(0).clamp(min=1e-6)
    return lambda z: (z.float() - mean) / std


@torch.no_grad()
def knn_scores(
    ref: torch.Tensor, ref_labels: torch.Tensor, query: torch.Tensor, num_classes: int, k: int = 10
) -> torch.Tensor:
    """Vote counts ``[Nq, c]`` of the ``k`` nearest reference vectors (Euclidean)."""
    out = []
    for s in range(0, len(query), 1000):
        idx = torch.cdist(query[s : s + 1000], ref).topk(k, largest=False).indices
        votes = torch.zeros(len(idx), num_classes).scatter_add_(1, ref_labels[idx], torch.ones(idx.shape))
        out.append(votes)
    return torch.cat(out)


def probe_attack(
    fit_z: torch.Tensor,
    fit_y: torch.Tensor,
    holdout_z: torch.Tensor,
    holdout_y: torch.Tensor,
    test_z: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    arch: str = "linear",
    max_epochs: int = 50,
    patience: int = 3,
    k: int | Sequence[int] = KNN_KS,
    seed: int = 0,
) -> dict:
    """Trains / applies one attacker on its own labelled releases, scores the evaluated releases.

    The k-NN attacker with several ``k`` picks the one whose vote is most accurate on its held-out part
    (as an attacker tunes it on its own data; noisy releases favour large k).

    Returns:
        ``{"class_accuracy", "lrp", ...training info}``.
    """
    norm = standardiser(fit_z)
    info: dict = {}
    if arch == "knn":
        ks = [k] if isinstance(k, int) else [int(v) for v in k]
        ks = [v for v in ks if v <= len(fit_z)] or [len(fit_z)]
        if len(ks) > 1:
            hits = [
                float((knn_scores(norm(fit_z), fit_y.long(), norm(holdout_z), num_classes, v).argmax(1)
                       == holdout_y).float().mean())
                for v in ks
            ]  # fmt: skip
            ks = [ks[max(range(len(ks)), key=hits.__getitem__)]]
        scores = knn_scores(norm(fit_z), fit_y.long(), norm(test_z), num_classes, ks[0])
        info["k"] = ks[0]
    else:
        probe = Probe(fit_z.shape[1], num_classes, arch, lr=1e-2 if arch == "linear" else 3e-3)
        info = fit(
            probe,
            (norm(fit_z), fit_y.long()),
            (norm(holdout_z), holdout_y.long()),
            max_epochs=max_epochs,
            patience=patience,
            seed=seed,
        )
        scores = predict(probe, norm(test_z))
    acc = float((scores.argmax(1) == test_y).float().mean())
    return {"class_accuracy": acc, "lrp": log_rank_privacy(scores, test_y, num_classes), **info}
