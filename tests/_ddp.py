"""``ddp_spawn`` on the CPU (gloo) for tests: two ranks and a callback that lets them leave together."""

import lightning as L
import torch


class LeaveGroupTogether(L.Callback):
    """Ranks leave the gloo group together: rank 0 hosts the TCPStore, and a rank still talking to it when
    rank 0 exits aborts (SIGABRT, seen in CI). Lightning destroys the process group at exit only for nccl."""

    def teardown(self, trainer, pl_module, stage):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def ddp_spawn_kwargs() -> dict:
    """Trainer arguments of a two-process ``ddp_spawn`` run (with ``accelerator="cpu"``: gloo)."""
    return dict(strategy="ddp_spawn", devices=2, callbacks=[LeaveGroupTogether()])
