"""Lightning callbacks shared by the privzoo methods (pictures and tables for wandb)."""

from callbacks.images import ImageGridLogger, log_image_grids, to_uint8_grid

__all__ = ["ImageGridLogger", "log_image_grids", "to_uint8_grid"]
