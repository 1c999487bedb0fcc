"""DPFE's accuracy-privacy curve (Procedure 2) as a uint8 picture, and a callback that logs it to wandb."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from models.dpfe.curve import accuracy_privacy_curve, pareto_mask
from models.dpfe.noise import PAPER_RATIOS, feature_covariance

__all__ = ["AccuracyPrivacyCurveLogger", "plot_accuracy_privacy"]

_LABELS = {
    "lrp": "log-rank privacy",
    "nn_error": "1-NN identity error",
    "rank_mean": "normalised rank mean",
    "rank_std": "normalised rank std",
}


def plot_accuracy_privacy(
    curves: dict[str, list[dict[str, float]]], privacy: str = "lrp", title: str | None = None
) -> np.ndarray:
    """Draws accuracy (x) vs privacy (y) curves, one per model, Pareto points marked.

    Pareto points are those of the union of all curves that no other point beats in both accuracy and
    privacy (black-edged stars); each point is annotated with its noise ratio r.

    Args:
        curves: model name -> rows ``{"r", "z_acc", <privacy>, ...}``
            (:func:`models.dpfe.curve.accuracy_privacy_curve`).
        privacy: which privacy measure is the y axis (``lrp``, ``nn_error``, ``rank_mean``, ``rank_std``).
        title: figure title.

    Returns:
        uint8 ``[H, W, 3]`` picture.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    points = [(name, row) for name, rows in curves.items() for row in rows]
    front = pareto_mask([row["z_acc"] for _, row in points], [row[privacy] for _, row in points])
    for name, rows in curves.items():
        acc = [row["z_acc"] for row in rows]
        priv = [row[privacy] for row in rows]
        ax.plot(acc, priv, "o-", label=name, markersize=4)
        for row in rows:
            ax.annotate(f"{row['r']:g}", (row["z_acc"], row[privacy]), fontsize=6, alpha=0.7)
    pareto = [row for (_, row), keep in zip(points, front, strict=True) if keep]
    if pareto:
        ax.scatter(
            [row["z_acc"] for row in pareto],
            [row[privacy] for row in pareto],
            marker="*",
            s=120,
            facecolors="none",
            edgecolors="black",
            label="Pareto points",
            zorder=3,
        )
    ax.set_xlabel("z accuracy (mean over attributes)")
    ax.set_ylabel(_LABELS.get(privacy, privacy))
    ax.set_title(title or f"DPFE accuracy-privacy trade-off ({privacy})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.uint8)


def _log_picture(trainer: L.Trainer, key: str, picture: np.ndarray) -> None:
    from PIL import Image

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key, [picture], step=trainer.global_step)
        elif getattr(logger, "log_dir", None):
            folder = Path(logger.log_dir) / "images"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(folder / f"{key.replace('/', '_')}_step{trainer.global_step}.png")


class AccuracyPrivacyCurveLogger(L.Callback):
    """Runs Procedure 2 on the validation features of a :class:`models.dpfe.DPFE` and logs the curve.

    Uses the ``{"features", "z", "y"}`` that ``validation_step`` returns; C is estimated on these
    validation features (the standalone ``scripts/dpfe_curve.py`` uses training features). Under DDP the
    features of all ranks are gathered and rank 0 draws the picture.

    Args:
        ratios: noise ratios r (default: the paper's list).
        privacy: the privacy measure on the y axis.
        every_n_epochs: logging period.
        max_samples: cap on the validation samples used (the KDE is O(N^2)).
    """

    def __init__(
        self,
        ratios: Sequence[float] = PAPER_RATIOS,
        privacy: str = "lrp",
        every_n_epochs: int = 1,
        max_samples: int = 5000,
    ) -> None:
        super().__init__()
        self.ratios = [float(r) for r in ratios]
        self.privacy = privacy
        self.every_n_epochs = every_n_epochs
        self.max_samples = max_samples
        self._parts: list[dict[str, torch.Tensor]] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._parts = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if isinstance(outputs, dict) and "features" in outputs:
            self._parts.append({k: outputs[k].detach().cpu() for k in ("features", "z", "y")})

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs or not self._parts:
            return
        parts = self._parts
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, parts)
            parts = [p for rank_parts in gathered for p in rank_parts]
        self._parts = []
        if not trainer.is_global_zero:
            return
        f, z, y = (torch.cat([p[k] for p in parts])[: self.max_samples] for k in ("features", "z", "y"))
        rows = accuracy_privacy_curve(
            pl_module,
            f,
            z,
            y,
            feature_covariance(f),
            self.ratios,
            pl_module.val_privacy.num_identities,
            pl_module.hparams.privacy_estimator,
            pl_module.hparams.privacy_k,
        )
        name = pl_module.hparams.stage
        _log_picture(
            trainer, f"val/acc_priv_{self.privacy}", plot_accuracy_privacy({name: rows}, self.privacy)
        )
