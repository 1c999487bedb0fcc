"""Shared parts of the supervised deep hashing victims (ADSH, DSDH): network, codes, retrieval evaluation.

Network: ``backbone`` (``models.backbones.create_backbone``: the PPL paper's 2-conv 20/50-channel
``small_cnn`` for grayscale, or any timm model) followed by ``fc(bits)`` (``+ tanh`` where the method
uses it). ``hash(x)`` gives the binary codes ``sign(F(x))`` of any images, so the PPL protocol can swap
the query / database domain between clean and protected images.

Validation / test use the retrieval split: loaders ``[query (dataloader_idx 0), database (1)]``; mAP@all of
Hamming ranking (``models.metrics.HammingMAP``, one metric object per stage) is logged as ``val/map`` and
``test/map``, and nDCG@100 (``models.metrics.HammingNDCG``, tie-averaged) beside it as ``val/ndcg_100`` and
``test/ndcg_100``.

State that depends on the dataset size (ADSH's database codes ``V``, the per-sample net outputs ``U``,
DSDH's codes ``B``) lives in *lazy* buffers: created empty at construction, sized from the datamodule in
``setup("fit")``, saved in checkpoints, and resized to the checkpoint's shape when a state dict is loaded
(so ``load_from_checkpoint`` works without a datamodule).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from models.backbones import create_backbone
from models.hub import PrivzooHubMixin
from models.metrics import HammingMAP, HammingNDCG, sign_codes

__all__ = ["HashingModule", "label_similarity", "sign_codes"]


def label_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """0/1 semantic similarity: 1 when two items share a class (multi-hot: at least one label).

    Args:
        a: ``[P]`` int class ids or ``[P, L]`` multi-hot.
        b: ``[Q]`` or ``[Q, L]``, the same kind as ``a``.

    Returns:
        ``float32`` ``[P, Q]`` of 0/1.
    """
    if a.dim() == 1:
        return (a[:, None] == b[None, :]).float()
    return ((a.float() @ b.float().T) > 0).float()


class HashingModule(PrivzooHubMixin, L.LightningModule):
    """Base LightningModule of the deep hashing victims (not used directly).

    Args:
        in_chans: image channels C.
        bits: code length c (>= 1).
        num_classes: number of classes K (multi-hot: number of labels).
        backbone: ``"small_cnn"`` or a timm model name (unknown names: ``ValueError``).
        pretrained: start a timm backbone from pretrained weights.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        use_tanh: put ``tanh`` on the ``fc(bits)`` output.
    """

    # model card texts shared by the victims (each sets its own card_method)
    card_task = "image-feature-extraction"
    card_tags = ("hashing", "image-retrieval")
    card_usage = "codes = model.hash(x)  # x: float [B, C, H, W] in [0, 1] -> {-1, +1} codes [B, bits]"
    card_threat_model = (
        "This is not a privacy model: it is a retrieval model that PPL's protection is measured against "
        "(the 'victim'). Its mAP on protected images is empirical evidence for PPL, not a bound."
    )

    #: rank cut of the nDCG logged next to mAP (``{stage}/ndcg_100``)
    ndcg_k = 100

    #: names of the buffers whose first dimension depends on the data (resized on state-dict load)
    _lazy_buffers: tuple[str, ...] = ()

    def __init__(
        self,
        in_chans: int,
        bits: int,
        num_classes: int,
        backbone: str,
        pretrained: bool,
        lr: float,
        weight_decay: float,
        use_tanh: bool,
    ) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
            raise ValueError(f"bits must be an int >= 1, got {bits!r}")
        if num_classes < 1 or in_chans < 1:
            raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes=}, {in_chans=}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.bits = bits
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.use_tanh = use_tanh
        self.lr = lr
        self.weight_decay = weight_decay
        self.backbone = create_backbone(backbone, in_chans=in_chans, pretrained=pretrained)
        self.hash_layer = nn.Linear(self.backbone.num_features, bits)
        # one metric object per stage: torchmetrics syncs them across DDP ranks
        self.val_map = HammingMAP()
        self.test_map = HammingMAP()
        self.val_ndcg = HammingNDCG(k=self.ndcg_k)
        self.test_ndcg = HammingNDCG(k=self.ndcg_k)

    # ------------------------------------------------------------------ network
    def _check_images(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_chans:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected images [B, {self.in_chans}, H, W], got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"expected float images in [0, 1], got dtype {x.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous codes ``u = F(x)`` (``tanh``-squashed when ``use_tanh``).

        Args:
            x: ``float`` ``[B, C, H, W]`` in ``[0, 1]``.

        Returns:
            ``[B, bits]`` real codes.
        """
        self._check_images(x)
        u = self.hash_layer(self.backbone(x))
        return torch.tanh(u) if self.use_tanh else u

    @torch.no_grad()
    def hash(self, x: torch.Tensor) -> torch.Tensor:
        """Binary codes ``sign(F(x))`` of images (``0 -> +1``), whatever domain they come from.

        Args:
            x: ``float`` ``[B, C, H, W]`` in ``[0, 1]``.

        Returns:
            ``float32`` ``[B, bits]`` with values exactly in ``{-1, +1}``.
        """
        return sign_codes(self(x).float())

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _labels(batch: dict[str, Any]) -> torch.Tensor:
        if "label" not in batch:
            raise ValueError("hashing models need supervised batches with a 'label' entry")
        return batch["label"]

    def _check_labels(self, labels: torch.Tensor) -> None:
        if labels.dim() == 1:
            if labels.is_floating_point() or (labels.numel() and int(labels.max()) >= self.num_classes):
                raise ValueError(f"labels must be int64 class ids < num_classes={self.num_classes}")
        elif labels.dim() != 2 or labels.shape[1] != self.num_classes:
            raise ValueError(f"multi-hot labels must be [N, num_classes={self.num_classes}]")

    def _one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """``float32`` ``[N, K]`` one-hot (int labels) or 0/1 multi-hot."""
        if labels.dim() == 1:
            return nn.functional.one_hot(labels, self.num_classes).float()
        return (labels != 0).float()

    def _datamodule(self) -> Any:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or getattr(dm, "split", None) != "retrieval" or dm.train_set is None:
            raise RuntimeError(
                f"{type(self).__name__} trains on a retrieval datamodule (split='retrieval', set up): "
                "pass datamodule=... to trainer.fit"
            )
        return dm

    @staticmethod
    def _dataset_labels(dataset: Any) -> torch.Tensor:
        """All labels of a dataset, in order (``targets`` when available)."""
        targets = getattr(dataset, "targets", None)
        if isinstance(targets, torch.Tensor):
            return targets.clone()
        return torch.stack([torch.as_tensor(dataset[i]["label"]) for i in range(len(dataset))])

    def _resize_lazy(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """(Re)create lazy buffer ``name`` with ``shape`` (zeros) unless it already has that shape."""
        cur = getattr(self, name)
        if tuple(cur.shape) != tuple(shape) or cur.dtype != dtype:
            setattr(self, name, torch.zeros(shape, dtype=dtype, device=cur.device))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # lazy buffers take the checkpoint's shape, so a fresh module can load a trained one
        for name in self._lazy_buffers:
            key = prefix + name
            if key in state_dict:
                self._resize_lazy(name, tuple(state_dict[key].shape), state_dict[key].dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def _gather_rows(self, values: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Merge per-rank row buffers under DDP (each rank filled the rows of the samples it saw).

        Args:
            values: ``[N, c]`` rows written by this rank.
            seen: ``bool`` ``[N]`` rows written by this rank.

        Returns:
            ``(values, seen)`` over all ranks (rows seen by several ranks, e.g. sampler padding, averaged);
            identical on every rank.
        """
        if self.trainer is None or self.trainer.world_size <= 1:
            return values, seen
        all_values = self.all_gather(values)  # [world, N, c]
        all_seen = self.all_gather(seen.to(torch.uint8)).to(values.dtype)  # [world, N]
        count = all_seen.sum(0)
        merged = (all_values * all_seen[..., None]).sum(0) / count.clamp(min=1)[:, None]
        return merged, count > 0

    def _broadcast_(self, tensor: torch.Tensor) -> None:
        """Overwrite ``tensor`` in place with rank 0's copy (no-op on one process)."""
        if self.trainer is not None and self.trainer.world_size > 1:
            tensor.copy_(self.trainer.strategy.broadcast(tensor, src=0))

    # ------------------------------------------------------------------ evaluation
    def _database_codes(self, batch: dict[str, Any]) -> torch.Tensor:
        """Codes of database items (default: ``hash`` of the images; ADSH may use its learned ``V``)."""
        return self.hash(batch["image"])

    def _eval_step(self, batch: dict[str, Any], dataloader_idx: int, stage: str) -> None:
        labels = self._labels(batch)
        if dataloader_idx == 0:
            codes, role = self.hash(batch["image"]), "query"
        else:
            codes, role = self._database_codes(batch), "database"
        for metric in (getattr(self, f"{stage}_map"), getattr(self, f"{stage}_ndcg")):
            metric.update(codes, labels, role=role, index=batch["index"])

    def _eval_epoch_end(self, stage: str) -> None:
        # synced over DDP ranks by torchmetrics: same values everywhere
        for name, metric in (
            ("map", getattr(self, f"{stage}_map")),
            (f"ndcg_{self.ndcg_k}", getattr(self, f"{stage}_ndcg")),
        ):
            self.log(f"{stage}/{name}", metric.compute().float(), prog_bar=name == "map")
            metric.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict:
        return {"index": batch["index"], "codes": self.hash(batch["image"])}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
