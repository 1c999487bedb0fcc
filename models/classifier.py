"""A plain image classifier: the smallest model that exercises the whole privzoo stack end to end.

It also serves as the attribute model of DPFE's Procedure 1 and as a sanity baseline for the datamodules.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from models.backbones import create_backbone
from models.hub import PrivzooHubMixin

__all__ = ["ImageClassifier"]


class ImageClassifier(PrivzooHubMixin, L.LightningModule):
    """Backbone + linear head trained with cross-entropy.

    Consumes the privzoo batch format: ``{"image": float [B, C, H, W] in [0, 1], "label": int64 [B], ...}``.
    Saves / loads in Hub layout (``save_pretrained`` / ``from_pretrained``, see :mod:`models.hub`).

    Args:
        num_classes: number of classes K.
        in_chans: image channels C.
        backbone: ``"small_cnn"`` or a timm model name.
        pretrained: start the backbone from timm's pretrained weights.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
    """

    card_method = (
        "Image classifier: a backbone and a linear head trained with cross-entropy (no privacy method)"
    )
    card_task = "image-classification"
    card_usage = "logits = model(images)  # float [B, C, H, W] in [0, 1] -> logits [B, num_classes]"
    card_threat_model = (
        "This is a plain classifier, a utility baseline (and DPFE's attribute model): it offers **no privacy "
        "protection** at all, and its features may reveal any attribute of the input images."
    )

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        backbone: str = "small_cnn",
        pretrained: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = create_backbone(backbone, in_chans=in_chans, pretrained=pretrained)
        self.head = nn.Linear(self.backbone.num_features, num_classes)
        # one collection per stage, logged as "<stage>/acc" (torchmetrics syncs them across DDP ranks)
        self.train_metrics = MetricCollection(
            {"acc": MulticlassAccuracy(num_classes, average="micro")}, prefix="train/"
        )
        self.val_metrics = self.train_metrics.clone(prefix="val/")
        self.test_metrics = self.train_metrics.clone(prefix="test/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps images [B, C, H, W] in [0, 1] to logits [B, K]."""
        return self.head(self.backbone(x))

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        metrics = getattr(self, f"{stage}_metrics")
        metrics(logits, batch["label"])
        self.log(f"{stage}/loss", loss, prog_bar=stage != "train", sync_dist=stage != "train")
        self.log_dict(metrics, prog_bar=True)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"index": batch["index"], "prediction": self(batch["image"]).argmax(dim=1)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
