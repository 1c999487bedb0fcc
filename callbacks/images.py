"""Image-grid logging for wandb (and any other logger), reusable across methods.

wandb stores float images by its own scaling rules (0.31 saves [0, 1] floats black), so every image
leaves privzoo as ``uint8`` [H, W, C] built by :func:`to_uint8_grid`.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torchvision.utils import make_grid

__all__ = ["ImageGridLogger", "log_image_grids", "to_uint8_grid"]


def to_uint8_grid(images: torch.Tensor, nrow: int = 8) -> np.ndarray:
    """Tiles a batch of images into one picture.

    Args:
        images: float images [B, C, H, W] in [0, 1] (values outside are clipped), C in {1, 3}.
        nrow: images per row.

    Returns:
        uint8 array [H', W', 3].
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, C, H, W] with C in (1, 3), got shape {tuple(images.shape)}")
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    return grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def log_image_grids(trainer: L.Trainer, grids: dict[str, torch.Tensor], nrow: int = 8) -> None:
    """Logs named image batches as uint8 grids to every logger of ``trainer``.

    wandb gets ``wandb.Image``s under each key (e.g. ``val/images``); loggers without an image API get a
    PNG under their ``log_dir``.

    Args:
        trainer: the running trainer.
        grids: name -> float images [B, C, H, W] in [0, 1].
        nrow: images per row.
    """
    if not trainer.is_global_zero:
        return
    pictures = {key: to_uint8_grid(images, nrow) for key, images in grids.items()}
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            for key, picture in pictures.items():
                logger.log_image(key, [picture], step=trainer.global_step)
        elif getattr(logger, "log_dir", None):
            from PIL import Image

            folder = Path(logger.log_dir) / "images"
            folder.mkdir(parents=True, exist_ok=True)
            for key, picture in pictures.items():
                name = f"{key.replace('/', '_')}_step{trainer.global_step}.png"
                Image.fromarray(picture).save(folder / name)


class ImageGridLogger(L.Callback):
    """Logs a grid of the first validation batch at the end of every ``every_n_epochs`` epochs.

    The grid shows the inputs and, when the module defines ``visualize(batch) -> dict[str, images]``
    (e.g. PPL's clean vs protected images, SCA's reconstructions), each of the returned image batches.

    Args:
        num_images: how many images of the batch to show.
        every_n_epochs: logging period in epochs.
        nrow: images per grid row.
    """

    def __init__(self, num_images: int = 16, every_n_epochs: int = 1, nrow: int = 8) -> None:
        super().__init__()
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.nrow = nrow
        self._batch: dict[str, torch.Tensor] | None = None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and isinstance(batch, dict) and "image" in batch:
            self._batch = {k: v[: self.num_images] for k, v in batch.items() if torch.is_tensor(v)}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch is None or trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        grids = {"val/inputs": self._batch["image"]}
        if hasattr(pl_module, "visualize"):
            with torch.no_grad():
                grids.update({f"val/{k}": v for k, v in pl_module.visualize(self._batch).items()})
        log_image_grids(trainer, grids, self.nrow)
        self._batch = None
