"""kill -9 then ``--ckpt_path last`` on every shipped Fashion-MNIST config, through the CLI (slow).

Each config runs as shipped (its ``checkpoint.monitor`` included), with only data / size / step overrides
for the tiny fixture dataset (96 training images, batch 32: 3 steps per epoch, 6 steps in all) and
``--checkpoint.every_n_train_steps 1``: once straight, once killed by SIGKILL in step 5 (mid-epoch, before
any validation for most configs), then resumed from ``last``. The resumed weights must equal the straight
run's bit for bit.
"""

import signal

import pytest
import torch
from conftest import REPO_ROOT
from test_cli import run_cli

STANDARD = ["--data.init_args.val_size=32"]
RETRIEVAL = ["--data.init_args.num_train=96"]
CONFIGS = {
    "classifier": ("classifier/fashion_mnist.yaml", [*STANDARD, "--trainer.max_epochs=2"]),
    "ppl": ("ppl/fashion_mnist.yaml", [*RETRIEVAL, "--trainer.max_steps=6"]),
    "sca": ("sca/fashion_mnist.yaml", [*STANDARD, "--trainer.max_epochs=2"]),
    "dpfe_attribute": ("dpfe/fashion_mnist_attribute.yaml", [*STANDARD, "--trainer.max_epochs=2"]),
    "dpfe_simple": ("dpfe/fashion_mnist_simple.yaml", [*STANDARD, "--trainer.max_epochs=2"]),
    "dpfe": ("dpfe/fashion_mnist.yaml", [*STANDARD, "--trainer.max_epochs=2"]),
    "adsh": (
        "adsh/fashion_mnist.yaml",
        [*RETRIEVAL, "--trainer.max_epochs=2", "--model.init_args.num_samples=64"],
    ),
    "dsdh": ("dsdh/fashion_mnist.yaml", [*RETRIEVAL, "--trainer.max_epochs=2"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_sigkill_then_resume_last_is_bit_exact_with_the_shipped_config(name, fashion_mnist_dir, tmp_path):
    config, extra = CONFIGS[name]
    common = [
        f"--config={REPO_ROOT / 'configs' / config}",
        f"--data.init_args.data_dir={fashion_mnist_dir}",
        "--data.init_args.batch_size=32",
        "--data.init_args.eval_batch_size=64",
        *extra,
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--checkpoint.every_n_train_steps=1",
    ]
    straight = run_cli(*common, f"--checkpoint.dirpath={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-3000:]

    crashed_dir = tmp_path / "crashed"
    crashed = run_cli(
        *common,
        f"--checkpoint.dirpath={crashed_dir}",
        "--trainer.callbacks+=_sigkill.SigkillAtStep",
        "--trainer.callbacks.step=5",
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    state = torch.load(crashed_dir / "last.ckpt", weights_only=True)
    assert 3 < state["global_step"] < 6, "the crash must come mid-epoch, after a step checkpoint"

    resumed = run_cli(*common, f"--checkpoint.dirpath={crashed_dir}", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "No checkpoint will be loaded" not in resumed.stderr

    expected = torch.load(tmp_path / "straight" / "last.ckpt", weights_only=True)
    got = torch.load(crashed_dir / "last.ckpt", weights_only=True)
    assert got["global_step"] == expected["global_step"] == 6
    assert got["epoch"] == expected["epoch"]
    assert expected["state_dict"].keys() == got["state_dict"].keys()
    for key, tensor in expected["state_dict"].items():
        assert torch.equal(tensor, got["state_dict"][key]), key
