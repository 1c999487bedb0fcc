"""Test-wide settings: everything offline, tiny datasets written in their official formats."""

import os

# before anything imports wandb or huggingface_hub: no network, no retries
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PYTHONHASHSEED", "0")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
sys.path.insert(0, str(TESTS_DIR))  # tests/fixtures.py and test helpers
sys.path.insert(1, str(REPO_ROOT / "scripts"))  # the scripts, imported by file name (import demo, ...)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def fashion_mnist_dir(tmp_path):
    """A data_dir with a tiny Fashion-MNIST (128 train / 64 test IDX images) in torchvision's layout."""
    from fixtures import write_mnist_idx

    write_mnist_idx(tmp_path / "FashionMNIST" / "raw", n_train=128, n_test=64, gz=False, seed=0)
    return tmp_path


# ----------------------------------------------------------------------------------------------------
# shared factories of tiny models / data (tests take them as fixtures)
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_ppl():
    """``tiny_ppl(**overrides)``: a small PPL (8 bits, 4/4/8/8 generator widths, l_inf epsilon 0.3)."""
    from models.ppl import PPL

    def make(**kwargs):
        args = dict(in_chans=1, image_size=28, bits=8, generator_channels=[4, 4, 8, 8], epsilon=0.3)
        return PPL(**{**args, **kwargs})

    return make


@pytest.fixture
def tiny_sca():
    """``tiny_sca(**overrides)``: a small SCA (L = 32, Sx = 4, Sp = 8, Sq = 4)."""
    from models.sca import SCA

    def make(**kwargs):
        args = dict(
            channels=[4, 8], code_length=32, sx=4, sp=8, sq=4, num_quantiles=33, transform_iterations=2
        )
        return SCA(**{**args, **kwargs})

    return make


@pytest.fixture
def tiny_dm():
    """``tiny_dm(data_dir, **overrides)``: a retrieval Fashion-MNIST datamodule sized for the fixtures."""
    from datamodules import FashionMNISTDataModule

    def make(data_dir, **kwargs):
        args = dict(
            split="retrieval", num_train=64, num_query=32, num_database=96, batch_size=16, download=False
        )
        return FashionMNISTDataModule(data_dir=str(data_dir), **{**args, **kwargs})

    return make


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.fixture
def assert_same_state():
    """``assert_same_state(a, b)``: the two modules have the same state-dict keys, dtypes and values."""
    return _assert_same_state


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory):
    """A real ``privzoo fit`` run (classifier config, 1 epoch on a tiny Fashion-MNIST, CSVLogger): its log
    folder, with ``checkpoints/last.ckpt`` and the ``config.yaml`` LightningCLI saved."""
    from fixtures import write_mnist_idx

    from models.cli import cli_main

    root = tmp_path_factory.mktemp("cli_run")
    write_mnist_idx(root / "data" / "FashionMNIST" / "raw", n_train=128, n_test=64, seed=0)
    cli = cli_main(
        [
            "fit",
            f"--config={REPO_ROOT / 'configs' / 'classifier' / 'fashion_mnist.yaml'}",
            f"--data.init_args.data_dir={root / 'data'}",
            "--data.init_args.batch_size=32",
            "--data.init_args.val_size=32",
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={root / 'logs'}",
        ]
    )
    return Path(cli.trainer.log_dir)
