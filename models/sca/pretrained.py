"""SCA's pretrained checkpoints."""

from functools import partial

from datamodules import FashionMNISTDataModule
from models.pretrained import ZooEntry
from models.sca.evaluate import PAPER_AUTH, PAPER_SERVER, zoo_metrics
from models.sca.module import SCA

__all__ = ["ZOO"]


def _entry(name: str, description: str) -> ZooEntry:
    """A Fashion-MNIST SCA checkpoint, compared with Table I at Sx = 16 (authorized) and Sp = 32 (server)."""
    return ZooEntry(
        name=name,
        model_class=SCA,
        dataset="Fashion-MNIST",
        datamodule=partial(FashionMNISTDataModule, eval_batch_size=1000, val_size=5000),
        evaluate=zoo_metrics,
        utility="ssim_sx16",
        privacy="server_nmse_sp32",
        paper={
            "ssim_sx16": PAPER_AUTH[16][1],
            "nmse_sx16": PAPER_AUTH[16][0],
            "server_nmse_sp32": PAPER_SERVER[32][0],
        },
        paper_ref=(
            "SCA Table I, Fashion-MNIST: authorized SSIM at Sx=16, Sp=0; curious-server NMSE at Sx=16, "
            "Sp=32 (strongest of the paper's as_is / top_sx attacks; higher = more private)"
        ),
        description=description,
    )


ZOO = (
    _entry(
        "sca-fashion-mnist-sx16",
        "SCA conv autoencoder + sparse codes with ambiguation, L=128, one model for Sx<=16",
    ),
    _entry(
        "sca-fashion-mnist-sx16-ft",
        "sca-fashion-mnist-sx16 with its decoder fine-tuned (trainable='decoder'): the same codes and public "
        "codes, a sharper authorized reconstruction",
    ),
)
