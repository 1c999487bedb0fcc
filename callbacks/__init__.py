"""Lightning callbacks shared by the privzoo methods (pictures and tables for wandb, fit guards)."""

from callbacks.checkpoint import LastCheckpoint
from callbacks.dpfe import AccuracyPrivacyCurveLogger  # DPFE curve
from callbacks.finite import FiniteLossCheck, NonFiniteLossError
from callbacks.images import ImageGridLogger, log_image_grids, to_uint8_grid
from callbacks.sca import SCAPlotsLogger  # SCA plots (models.sca)

__all__ = [
    "AccuracyPrivacyCurveLogger",
    "FiniteLossCheck",
    "ImageGridLogger",
    "LastCheckpoint",
    "NonFiniteLossError",
    "SCAPlotsLogger",
    "log_image_grids",
    "to_uint8_grid",
]
