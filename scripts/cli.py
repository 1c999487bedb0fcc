"""privzoo's command line: LightningCLI over every model and datamodule of the zoo.

    python scripts/cli.py fit  --config configs/<method>/<dataset>.yaml
    python scripts/cli.py test --config configs/<method>/<dataset>.yaml --ckpt_path last
    python scripts/cli.py fit  --config ... --trainer.logger CSVLogger      # no wandb
    python scripts/cli.py fit  --config ... --print_config                  # the resolved config

Logging defaults to wandb, offline unless wandb is configured on this machine (``WANDB_MODE`` set, or an
API key from ``wandb login``); offline runs are uploaded later with ``wandb sync <run dir>``.
Checkpointing keeps ``last.ckpt`` and the best checkpoint by ``checkpoint.monitor`` (set per config);
``checkpoint.every_n_train_steps`` makes ``last.ckpt`` follow mid-epoch progress, which resumes exactly.
"""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


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
    """LightningCLI with privzoo's checkpointing arguments (``--checkpoint.*``)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})


def trainer_defaults() -> dict:
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"project": "privzoo", "save_dir": "logs", "offline": wandb_offline_default()},
        },
    }


def cli_main(args: list[str] | None = None, run: bool = True) -> PrivzooCLI:
    return PrivzooCLI(
        trainer_defaults=trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    cli_main()
