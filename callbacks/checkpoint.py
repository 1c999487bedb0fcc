"""``last.ckpt`` that follows training whatever ``checkpoint.monitor`` says (added by :mod:`models.cli`).

Lightning's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only when it also saves a top-k
checkpoint, and a monitored one defers every step-triggered save until its metric exists: with
``every_n_train_steps`` and a validation-only monitor, nothing is written before the first validation.
:class:`LastCheckpoint` is a second, monitor-less ``ModelCheckpoint`` whose only file is ``last.ckpt``
(``filename="last"``, ``save_top_k=1``, no version counter), saved

* every ``every_n_train_steps`` training steps (when > 0), whatever the monitor;
* at the end of every training epoch (after that epoch's validation);
* at the end of ``fit``, so that ``last.ckpt`` is the state of the true last step, after its validation
  (a step-triggered save comes before the validation of the same step).

Every checkpoint of the run (this callback's state is in all of them) also carries the global random
states (``torch``, CUDA, ``numpy``, ``random``; Lightning saves none), restored when training starts after
a resume (after the sanity check), so that code drawing from the global generators (SCA's
``train_sx_samples``, batch augmentation) resumes bit-exactly too.

``fast_dev_run`` and non-fit stages never write (stock ``ModelCheckpoint.on_train_end`` writes
``last.ckpt`` even under ``fast_dev_run``).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

__all__ = ["LastCheckpoint"]


class LastCheckpoint(ModelCheckpoint):
    """Monitor-less ``ModelCheckpoint`` writing only ``<dirpath>/last.ckpt`` (see the module docstring).

    Args:
        dirpath: Folder of ``last.ckpt`` (``None``: Lightning's default, as for ``ModelCheckpoint``).
        every_n_train_steps: Also save every N training steps (0: only at epoch ends and at the end).
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 0) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=self.CHECKPOINT_NAME_LAST,
            monitor=None,
            save_top_k=1,
            save_last=False,
            every_n_train_steps=every_n_train_steps or 0,
            every_n_epochs=0 if every_n_train_steps else 1,  # (Lightning: mutually exclusive)
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        self._validated_after_save = False
        self._loaded_rng: dict | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(role="last", every_n_train_steps=self._every_n_train_steps)

    # ------------------------------------------------------------------ global random states
    def state_dict(self) -> dict:
        state = super().state_dict()
        version, mt, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(mt), gauss],
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._loaded_rng = state_dict.get("rng")

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        rng, self._loaded_rng = self._loaded_rng, None
        if not rng:
            return
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        version, mt, gauss = rng["python"]
        random.setstate((version, tuple(mt), gauss))

    def _writes(self, trainer) -> bool:
        return (
            not trainer.fast_dev_run and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        )

    def _save_now(self, trainer) -> None:
        self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
        self._validated_after_save = False

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._writes(trainer) and self._last_global_step_saved == trainer.global_step:
            self._validated_after_save = True  # the file of this step predates this validation

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._writes(trainer):
            return
        if self._last_global_step_saved != trainer.global_step or self._validated_after_save:
            self._save_now(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self._writes(trainer):
            return
        if self._last_global_step_saved != trainer.global_step or self._validated_after_save:
            self._save_now(trainer)
