"""Lightning callbacks shared by the privzoo methods (pictures and tables for wandb)."""

from callbacks.dpfe import AccuracyPrivacyCurveLogger  # DPFE curve
from callbacks.images import ImageGridLogger, log_image_grids, to_uint8_grid
from callbacks.sca import SCAPlotsLogger  # SCA plots (models.sca)

__all__ = [
    "AccuracyPrivacyCurveLogger",
    "ImageGridLogger",
    "SCAPlotsLogger",
    "log_image_grids",
    "to_uint8_grid",
]
