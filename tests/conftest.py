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
