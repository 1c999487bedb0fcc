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
``fast_dev_run`` writes no checkpoint.

``--ckpt_path`` (resume, fine-tune, test): the checkpoint's model hyperparameters fill in every model argument
that neither a config file nor the command line sets; the ones they set win (stock Lightning 2.6 lets the
checkpoint override them silently, Lightning-AI/pytorch-lightning#21455), and the CLI prints which
arguments differ from the checkpoint's::

    privzoo fit --config configs/sca/fashion_mnist.yaml --ckpt_path run.ckpt \
        --model.init_args.ssim_weight 0.5     # continues run.ckpt with the new loss weight
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from callbacks.checkpoint import LastCheckpoint

__all__ = ["PrivzooCLI", "cli_main", "main", "trainer_defaults", "wandb_offline_default"]


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
    it takes over ``checkpoint.save_last``).
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})

    def parse_arguments(self, parser, args) -> None:
        self._cli_args = args
        super().parse_arguments(parser, args)

    def _instantiate_trainer(self, config: dict, callbacks: list) -> object:
        checkpoint = self._get(self.config_init, "checkpoint")
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.save_last:
            # the monitored callback rewrites last.ckpt only when it saves a top-k file: LastCheckpoint does
            callbacks.append(LastCheckpoint(checkpoint.dirpath, checkpoint._every_n_train_steps))
            checkpoint.save_last = False
        return super()._instantiate_trainer(config, callbacks)

    def _parse_ckpt_path(self) -> None:
        """The checkpoint's hyperparameters become the model's defaults; config files and flags win.

        Parses the arguments again with the checkpoint's init arguments as the defaults of ``--model``
        (jsonargparse's priority: command line > config files > defaults).
        """
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu")
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
    """Console entry point (``privzoo`` / ``python scripts/cli.py``)."""
    cli_main()


if __name__ == "__main__":
    main()
