"""Resume with changed optimizer hyperparameters: applied to the restored optimizers, never ignored.

``fit --ckpt_path X --model.init_args.lr 5e-4``: Lightning restores the optimizer state saved in ``X``,
param groups included, so the optimizer would keep the checkpoint's learning rate while the model's
hyperparameters (and every checkpoint written afterwards) record the new one. :class:`ResumeOverrides`
(added by :mod:`models.cli` to every ``fit``) compares, once the training state is restored
(``on_train_start``), the param groups of the restored optimizers with those the module's
``configure_optimizers()`` builds from its current hyperparameters, and writes every changed value (``lr``,
``weight_decay``, ``betas``, ...) into the restored param groups, keeping the optimizer state (Adam
moments, step counts). It prints each model argument that differs from the checkpoint's and each
optimizer value it changed.

It refuses (:class:`ResumeOverrideError`) what it cannot apply faithfully: a different number or type of
optimizers or param groups, or a change while learning-rate schedulers are restored (a scheduler's saved
``base_lrs`` would fight the new value). The message says how to start a fresh run from the weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["ResumeOverrideError", "ResumeOverrides", "fresh_optimizers"]

_NOT_HYPERPARAMETERS = ("params", "initial_lr")


class ResumeOverrideError(RuntimeError):
    """A changed optimizer setting cannot be applied to the optimizer restored from the checkpoint."""


def fresh_optimizers(configured) -> list[torch.optim.Optimizer]:
    """The optimizers in any return value of ``configure_optimizers`` (schedulers dropped)."""
    if configured is None:
        return []
    if isinstance(configured, torch.optim.Optimizer):
        return [configured]
    if isinstance(configured, Mapping):
        return fresh_optimizers(configured.get("optimizer"))
    if isinstance(configured, tuple) and len(configured) == 2 and isinstance(configured[0], Sequence):
        return fresh_optimizers(list(configured[0]))  # ([optimizers], [schedulers])
    if isinstance(configured, Sequence):
        return [opt for item in configured for opt in fresh_optimizers(item)]
    return []


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return bool(torch.equal(torch.as_tensor(a), torch.as_tensor(b)))
    return a == b


class ResumeOverrides(L.Callback):
    """Applies changed optimizer hyperparameters to the optimizers restored by ``--ckpt_path``.

    Args:
        announce: Print the model arguments that differ from the checkpoint's (the CLI prints them itself
            when it read the checkpoint before building the model).
    """

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce
        self._checkpoint_hparams: dict | None = None

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._checkpoint_hparams = dict(checkpoint.get("hyper_parameters") or {})

    def _refuse(self, trainer, why: str) -> ResumeOverrideError:
        path = trainer.ckpt_path
        return ResumeOverrideError(
            f"--ckpt_path {path}: {why}, so the new optimizer settings cannot be applied to the restored "
            "optimizer. Either resume without the changed model arguments, or start a fresh run (new "
            "optimizer) from these weights: DPFE with --model.init_args.init_from "
            f"{path}; any model with `python scripts/convert_checkpoint.py {path} <folder>` and "
            "Model.from_pretrained(<folder>) before fitting it."
        )

    def on_train_start(self, trainer, pl_module) -> None:
        old = self._checkpoint_hparams
        self._checkpoint_hparams = None
        if trainer.ckpt_path is None or old is None:
            return
        new = dict(pl_module.hparams)
        diffs = {k: (old[k], v) for k, v in new.items() if k in old and not k.startswith("_") and old[k] != v}
        if not diffs:
            return
        if self.announce:
            for key, (before, after) in diffs.items():
                rank_zero_info(
                    f"--ckpt_path {trainer.ckpt_path}: model.{key} = {after!r} (checkpoint: {before!r})"
                )
        fresh = fresh_optimizers(pl_module.configure_optimizers())
        restored = list(trainer.optimizers)
        if len(fresh) != len(restored):
            raise self._refuse(
                trainer, f"the model now builds {len(fresh)} optimizers, the checkpoint has {len(restored)}"
            )
        changes = []
        for i, (opt, ref) in enumerate(zip(restored, fresh, strict=True)):
            if type(opt) is not type(ref) or len(opt.param_groups) != len(ref.param_groups):
                raise self._refuse(
                    trainer,
                    f"optimizer {i} is now {type(ref).__name__} with {len(ref.param_groups)} param "
                    f"groups, the checkpoint's is {type(opt).__name__} with {len(opt.param_groups)}",
                )
            for j, (group, ref_group) in enumerate(zip(opt.param_groups, ref.param_groups, strict=True)):
                for key, value in ref_group.items():
                    if key in _NOT_HYPERPARAMETERS or key not in group or _same(group[key], value):
                        continue
                    changes.append((i, j, key, group[key], value))
        if not changes:
            return
        if trainer.lr_scheduler_configs:
            raise self._refuse(trainer, "learning-rate schedulers are restored with their own base values")
        for i, j, key, before, after in changes:
            group = restored[i].param_groups[j]
            group[key] = type(group[key])(after) if isinstance(group[key], (tuple, list)) else after
            rank_zero_info(
                f"--ckpt_path {trainer.ckpt_path}: optimizer {i} param group {j}: {key} {before!r} -> "
                f"{after!r} (new model arguments applied to the restored optimizer; its state is kept)"
            )
