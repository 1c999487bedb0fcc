"""PPL's pretrained checkpoints: the generator and the clean-trained victim it is measured against."""

from functools import partial

from datamodules import FashionMNISTDataModule
from models.hashing import ADSH
from models.ppl.evaluate import victim_metrics, zoo_metrics
from models.ppl.module import PPL
from models.ppl.protocol import PAPER_TABLE1
from models.pretrained import ZooEntry

__all__ = ["ZOO"]

_RETRIEVAL = partial(FashionMNISTDataModule, split="retrieval", eval_batch_size=1000)
_TABLE1 = "PPL Table 1, Fashion-MNIST, 16 bits, clean-trained ADSH"

ZOO = (
    ZooEntry(
        name="ppl-fashion-mnist-16bit",
        model_class=PPL,
        dataset="Fashion-MNIST",
        datamodule=_RETRIEVAL,
        evaluate=zoo_metrics,
        victims=("adsh-fashion-mnist-16bit",),
        utility="ssim",
        privacy="adsh_map_ca",
        paper={"ssim": None, "adsh_map_ca": PAPER_TABLE1[("adsh", "C")]["C->A"]},
        paper_ref=f"{_TABLE1}, C->A",
        description="PPL generator + surrogate (l_inf epsilon 0.3), 16-bit codes",
    ),
    ZooEntry(
        name="adsh-fashion-mnist-16bit",
        model_class=ADSH,
        dataset="Fashion-MNIST",
        datamodule=_RETRIEVAL,
        evaluate=victim_metrics,
        utility="map_cc",
        paper={"map_cc": PAPER_TABLE1[("adsh", "C")]["C->C"]},
        paper_ref=f"{_TABLE1}, C->C",
        description="ADSH victim retrieval model trained on clean images (PPL's evaluation)",
    ),
)
