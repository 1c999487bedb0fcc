"""privzoo's command line from a checkout: the same as the installed ``privzoo`` console script.

    python scripts/cli.py fit  --config configs/<method>/<dataset>.yaml
    python scripts/cli.py test --config configs/<method>/<dataset>.yaml --ckpt_path last
    python scripts/cli.py fit  --config ... --print_config

See :mod:`models.cli` (LightningCLI with privzoo's checkpointing, wandb defaults and ``--ckpt_path``
handling).
"""

from models.cli import main

if __name__ == "__main__":
    main()
