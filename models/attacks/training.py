"""One quiet Lightning fit with early stopping, shared by the learned attackers."""

from __future__ import annotations

import contextlib
import logging
import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["fit", "fit_holding_out", "predict"]


def fit(
    module: L.LightningModule,
    train: tuple[torch.Tensor, ...],
    holdout: tuple[torch.Tensor, ...],
    max_epochs: int = 30,
    batch_size: int = 256,
    patience: int = 3,
    seed: int = 0,
) -> dict:
    """Fits ``module`` (logs ``val_loss``) on tensors, early stopping on the holdout; restores the best.

    Returns:
        ``{"epochs", "best_val_loss"}``.
    """
    with _quiet_lightning():
        return _fit(module, train, holdout, max_epochs, batch_size, patience, seed)


def fit_holding_out(
    module: L.LightningModule,
    images: torch.Tensor,
    labels: torch.Tensor,
    max_epochs: int = 10,
    patience: int = 2,
    seed: int = 0,
    batch_size: int = 128,
) -> dict:
    """:func:`fit` on ``(images, labels)`` with a seeded 10% of them held out for early stopping."""
    n_hold = max(1, len(images) // 10)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    hold, tr = perm[:n_hold], perm[n_hold:]
    return fit(
        module,
        (images[tr], labels[tr]),
        (images[hold], labels[hold]),
        max_epochs=max_epochs,
        patience=patience,
        batch_size=batch_size,
        seed=seed,
    )


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's info messages off for an attacker's many small fits; the caller's levels come back."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _fit(module, train, holdout, max_epochs, batch_size, patience, seed) -> dict:
    L.seed_everything(seed, workers=False, verbose=False)
    stop = EarlyStopping("val_loss", patience=patience, mode="min")
    best = {"loss": float("inf"), "state": None}

    class _KeepBest(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            loss = float(trainer.callback_metrics.get("val_loss", float("inf")))
            if loss < best["loss"] and not trainer.sanity_checking:
                best["loss"] = loss
                best["state"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    trainer = L.Trainer(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[stop, _KeepBest()],
        accelerator="cpu",
        devices=1,
    )
    g = torch.Generator().manual_seed(seed)
    trainer.fit(
        module,
        DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True, generator=g),
        DataLoader(TensorDataset(*holdout), batch_size=1024),
    )
    if best["state"] is not None:
        module.load_state_dict(best["state"])
    module.eval()
    return {"epochs": int(trainer.current_epoch), "best_val_loss": round(best["loss"], 5)}


@torch.no_grad()
def predict(fn, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``fn`` applied in batches."""
    return torch.cat([fn(x[s : s + batch_size]) for s in range(0, len(x), batch_size)])
