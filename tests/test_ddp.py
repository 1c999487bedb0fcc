"""CPU DDP (2 processes, gloo) on the tiny model: training runs and metrics sync across ranks."""

import lightning as L
import pytest
import torch
from _ddp import ddp_spawn_kwargs

from datamodules import FashionMNISTDataModule
from models.classifier import ImageClassifier


def test_ddp_spawn_two_cpu_processes_trains_and_syncs_metrics(fashion_mnist_dir):
    L.seed_everything(0)
    dm = FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), batch_size=16, val_size=32)
    model = ImageClassifier(num_classes=10, in_chans=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    common = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    ddp = L.Trainer(max_epochs=1, enable_checkpointing=False, **ddp_spawn_kwargs(), **common)
    ddp.fit(model, datamodule=dm)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()), "weights did not train"

    # the 64 test images split over 2 ranks: the synced accuracy must equal the single-process one
    ddp_acc = L.Trainer(**ddp_spawn_kwargs(), **common).test(model, datamodule=dm)[0]["test/acc"]
    one_acc = L.Trainer(devices=1, **common).test(model, datamodule=dm)[0]["test/acc"]
    assert ddp_acc == pytest.approx(one_acc, abs=1e-6)
