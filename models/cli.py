"""privzoo's command line: LightningCLI over every model and datamodule of the zoo.

    privzoo fit  --config configs/<method>/<dataset>.yaml                  # or python scripts/cli.py ...
    privzoo test --config configs/<method>/<dataset>.yaml --ckpt_path last
    privzoo fit  --config ... --trainer.logger CSVLogger      # no wandb
    privzoo fit  --config ... --print_config                  # the resolved config

``privzoo`` is the console script of the installed package (``[project.scripts]``); ``scripts/cli.py`` is
the same entry point for a checkout. Both call :func:`main`; :func:`cli_main` builds the CLI in code
(tests, ``models.ppl.protocol``).

Logging defaults to wandb, offline unless wandb is configured on this machine (``WANDB_MODE`` set, or an
API key from ``wandb login``); offline runs are uploaded later with ``wandb sync <run dir>``.
Checkpointing keeps ``last.ckpt`` and the best checkpoint by ``checkpoint.monitor`` (set per config).
``last.ckpt`` is written by a second, monitor-less checkpoint callback
(:class:`callbacks.checkpoint.LastCheckpoint`, which takes over ``checkpoint.save_last``) after every training
epoch, at the end of the fit (the true last step, after its validation) and, with
``checkpoint.every_n_train_steps N``, every N steps whatever the monitor says: kill -9 a run, restart the
same command with ``--ckpt_path last`` and it continues bit-exactly (global random states included).
``fast_dev_run`` writes no checkpoint. :class:`callbacks.finite.FiniteLossCheck` stops a fit at the first
NaN / inf loss, gradient or weight, before it reaches a checkpoint (``--finite_loss.enabled false``: off).

``--ckpt_path`` (resume, fine-tune, test): the checkpoint's model hyperparameters fill in every model argument
that neither a config file nor the command line sets; the ones they set win (stock Lightning 2.6 lets the
checkpoint override them silently, Lightning-AI/pytorch-lightning#21455), and the CLI prints which
arguments differ from the checkpoint's::

    privzoo fit --config configs/sca/fashion_mnist.yaml --ckpt_path run.ckpt \
        --model.init_args.ssim_weight 0.5     # continues run.ckpt with the new loss weight

Changed optimizer hyperparameters are APPLIED on resume, never ignored: Lightning restores the optimizer's
param groups from the checkpoint, so ``--model.init_args.lr X --ckpt_path ...`` would keep the old learning
rate; :class:`callbacks.resume.ResumeOverrides` writes every value that the module's
``configure_optimizers()`` now builds differently (``lr``, ``weight_decay``, ...) into the restored param
groups, keeps the optimizer state (Adam moments) and prints each change. The same holds for
``--ckpt_path last`` (the differences are printed there too). What cannot be applied faithfully (another
number / type of optimizers or param groups, or restored lr schedulers) is refused with an error that says
how to start a fresh run from the weights. A missing or truncated ``--ckpt_path`` file is an error naming it.
"""

from __future__ import annotations

import netrc
import os
import pickle
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from callbacks.checkpoint import LastCheckpoint
from callbacks.finite import FiniteLossCheck, NonFiniteLossError
from callbacks.resume import ResumeOverrideError, ResumeOverrides

__all__ = [
    "CheckpointFileError",
    "PrivzooCLI",
    "cli_main",
    "main",
    "trainer_defaults",
    "wandb_offline_default",
]

_SPECIAL_CKPT_PATHS = ("last", "best", "hpc")


class CheckpointFileError(ValueError):
    """``--ckpt_path`` names a file that is missing or not a readable checkpoint (the message names it)."""


def read_checkpoint_file(path: str) -> dict:
    """``torch.load(path, weights_only=True)``; a missing / truncated file: :class:`CheckpointFileError`."""
    if not Path(path).is_file():
        raise CheckpointFileError(
            f"--ckpt_path {path}: no such file; give the path of a .ckpt written by fit, or `last` to resume "
            "from the newest last.ckpt in --checkpoint.dirpath"
        )
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise CheckpointFileError(
            f"--ckpt_path {path}: not a readable checkpoint, truncated or damaged ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); resume from another checkpoint of the run "
            "(last.ckpt or an epoch=... file)"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointFileError(f"--ckpt_path {path}: not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def wandb_offline_default() -> bool:
    """Whether the default WandbLogger runs offline: yes, unless the user configured wandb.

    ``WANDB_MODE`` wins when set (``offline``/``dryrun`` -> offline; ``online``/``disabled`` are left to
    wandb itself); otherwise a run goes online only when an API key is present (``WANDB_API_KEY`` or the
    netrc entry that ``wandb login`` writes).
    """
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun")
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
        return netrc.netrc().authenticators(host) is None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return True


class PrivzooCLI(LightningCLI):
    """LightningCLI with privzoo's checkpointing arguments (``--checkpoint.*``) and fit guards.

    Adds to every trainer: :class:`callbacks.checkpoint.LastCheckpoint` (``last.ckpt`` whatever the monitor;
    it takes over ``checkpoint.save_last``), :class:`callbacks.finite.FiniteLossCheck`
    (``--finite_loss.enabled false`` turns it off) and :class:`callbacks.resume.ResumeOverrides`.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(FiniteLossCheck, "finite_loss")

    def parse_arguments(self, parser, args) -> None:
        self._cli_args = args
        super().parse_arguments(parser, args)

    def _instantiate_trainer(self, config: dict, callbacks: list) -> object:
        checkpoint = self._get(self.config_init, "checkpoint")
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.save_last:
            # the monitored callback rewrites last.ckpt only when it saves a top-k file: LastCheckpoint does
            callbacks.append(LastCheckpoint(checkpoint.dirpath, checkpoint._every_n_train_steps))
            checkpoint.save_last = False
        callbacks.append(ResumeOverrides(announce=not getattr(self, "_announced_ckpt", False)))
        return super()._instantiate_trainer(config, callbacks)

    def _resolve_last(self, sub: str) -> str | None:
        """``--ckpt_path last`` with ``--checkpoint.dirpath``: its newest ``last*.ckpt`` (as Lightning)."""
        dirpath = (self.config[sub].get("checkpoint") or {}).get("dirpath")
        if not dirpath or not Path(dirpath).is_dir():
            return None
        lasts = [p for p in Path(dirpath).glob("last*.ckpt") if p.is_file()]
        return str(max(lasts, key=lambda p: p.stat().st_mtime)) if lasts else None

    def _parse_ckpt_path(self) -> None:
        """The checkpoint's hyperparameters become the model's defaults; config files and flags win.

        Parses the arguments again with the checkpoint's init arguments as the defaults of ``--model``
        (jsonargparse's priority: command line > config files > defaults). A missing or unreadable
        ``--ckpt_path`` file raises :class:`CheckpointFileError` naming it.
        """
        self._announced_ckpt = False
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt_path:
            return
        if ckpt_path == "last":
            ckpt_path = self._resolve_last(sub)
            if ckpt_path is None:  # Lightning resolves it later (ResumeOverrides reports the differences)
                return
        elif ckpt_path in _SPECIAL_CKPT_PATHS or "://" in str(ckpt_path):
            return
        checkpoint = read_checkpoint_file(ckpt_path)
        hparams = dict(checkpoint.get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        class_path = hparams.pop("_class_path", None)
        if class_path is None or not hparams:  # not saved by LightningCLI: Lightning's own merge
            return super()._parse_ckpt_path()
        defaults = {"model": {"class_path": class_path, "init_args": hparams}}
        self._subcommand_parsers[sub].set_defaults(defaults)
        self.parse_arguments(self.parser, self._cli_args)
        model = self.config[sub].get("model")
        if getattr(model, "class_path", None) == class_path:
            self._announced_ckpt = True
            init_args = model.init_args
            for key, old in hparams.items():
                new = init_args.get(key, old)
                if new != old:
                    rank_zero_info(f"--ckpt_path {ckpt_path}: model.{key} = {new!r} (checkpoint: {old!r})")


def trainer_defaults() -> dict:
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"project": "privzoo", "save_dir": "logs", "offline": wandb_offline_default()},
        },
    }


def cli_main(args: list[str] | None = None, run: bool = True) -> PrivzooCLI:
    """The CLI on ``args`` (``None``: ``sys.argv``); ``run=False`` only instantiates model, data, trainer."""
    return PrivzooCLI(
        trainer_defaults=trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main() -> None:
    """Console entry point (``privzoo`` / ``python scripts/cli.py``): privzoo's own errors as one message."""
    try:
        cli_main()
    except (CheckpointFileError, NonFiniteLossError, ResumeOverrideError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
