"""End-to-end demo until the zoo lands: train the baseline classifier on real Fashion-MNIST, then test it.

    python scripts/demo.py [--data-dir data] [--epochs 2]

Runs through the same LightningCLI as ``scripts/cli.py`` (config ``configs/classifier/fashion_mnist.yaml``),
logs to an offline wandb run under ``logs/`` unless wandb is configured (``wandb sync logs/wandb/<run>``
uploads it), and tests the best checkpoint on the 10,000 test images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli import cli_main  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    config = Path(__file__).resolve().parents[1] / "configs" / "classifier" / "fashion_mnist.yaml"
    cli = cli_main(
        [
            f"--config={config}",
            f"--data.init_args.data_dir={args.data_dir}",
            f"--trainer.max_epochs={args.epochs}",
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best")
    print(f"test accuracy of the best checkpoint on Fashion-MNIST: {results[0]['test/acc']:.4f}")


if __name__ == "__main__":
    main()
