"""DPFE's pretrained checkpoints (Fashion-MNIST analogue): the paper's extractor, its Simple baseline and
the noisy-channel information-bottleneck extractor beyond the paper."""

from functools import partial

from datamodules import FashionMNISTDataModule
from models.dpfe.evaluate import zoo_metrics
from models.dpfe.module import DPFE
from models.pretrained import ZooEntry

__all__ = ["ZOO"]

_DATA = partial(FashionMNISTDataModule, batch_size=1000, eval_batch_size=1000, val_size=5000)
#: DPFE's paper reports CelebA curves only: no Fashion-MNIST numbers to compare with
_NO_PAPER = {"z_acc": None, "lrp": None}
_PAPER_REF = "DPFE (Osia et al.): no Fashion-MNIST numbers in the paper (CelebA curves only)"


def _entry(name: str, description: str) -> ZooEntry:
    """A Fashion-MNIST DPFE checkpoint: evaluated by Procedure 2 at r = 0 (z-accuracy, log-rank privacy)."""
    return ZooEntry(
        name=name,
        model_class=DPFE,
        dataset="Fashion-MNIST",
        datamodule=_DATA,
        evaluate=zoo_metrics,
        utility="z_acc",
        privacy="lrp",
        paper=_NO_PAPER,
        paper_ref=_PAPER_REF,
        description=description,
    )


ZOO = (
    _entry(
        "dpfe-fashion-mnist", "DPFE private-feature extractor (d = 10, attribute set FU, y = class), r = 0"
    ),
    _entry(
        "dpfe-fashion-mnist-simple",
        "DPFE's Simple baseline (AE bottleneck, no y-remover; d = 10, attribute set FU), r = 0",
    ),
    _entry(
        "dpfe-fashion-mnist-ib",
        "DPFE + noisy-channel information bottleneck (beyond the paper: feature_noise 0.85 in training and "
        "at every release; d = 10, attribute set FU), r = 0",
    ),
)
