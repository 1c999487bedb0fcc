"""A callback that kills its own process with SIGKILL at a given step (the resume test's crash)."""

import os
import signal

import lightning as L


class SigkillAtStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
