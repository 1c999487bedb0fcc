"""Extracted MNIST / Fashion-MNIST IDX files: SHA-256 content check and unwritable data_dir errors."""

import errno
import hashlib
import os
from pathlib import Path

import pytest
from fixtures import MNIST_FILES, write_mnist_idx

import datamodules.mnist as mnist
from datamodules import (
    DatasetCorruptedError,
    DatasetNotWritableError,
    FashionMNISTDataModule,
    MNISTDataModule,
)
from datamodules.mnist import DEBIAN_FASHION_MNIST_DIR, check_idx_sha256, read_idx_header

REAL_RAW = Path(__file__).resolve().parents[1] / "data" / "FashionMNIST" / "raw"


def patch_sha256(monkeypatch, raw: Path, dataset: str = "FashionMNIST") -> None:
    """Make the fixture files the 'official' ones (header dims + digest), as fixtures do for md5s."""
    table = {
        name: (read_idx_header(str(raw / name)), hashlib.sha256((raw / name).read_bytes()).hexdigest())
        for name in MNIST_FILES
    }
    monkeypatch.setitem(mnist.IDX_SHA256, dataset, table)


def test_tampered_pixels_with_an_intact_header_are_refused(fashion_mnist_dir, monkeypatch):
    raw = fashion_mnist_dir / "FashionMNIST" / "raw"
    patch_sha256(monkeypatch, raw)
    dm = FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), val_size=32, download=False, debian_dir=None)
    dm.setup("fit")  # the official content passes
    path = raw / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[-100:] = os.urandom(100)  # same size, same header
    path.write_bytes(bytes(data))
    dm = FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), val_size=32, download=False, debian_dir=None)
    with pytest.raises(DatasetCorruptedError, match=f"{path}: content differs from the official"):
        dm.setup("fit")


def test_files_that_are_not_the_official_size_are_not_checked(fashion_mnist_dir):
    # the fixture's 128 images are not the official 60,000: the table has nothing to compare them with
    raw = fashion_mnist_dir / "FashionMNIST" / "raw"
    check_idx_sha256(str(raw / "train-images-idx3-ubyte"), "FashionMNIST")


def test_debian_extraction_checks_the_extracted_content(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    write_mnist_idx(debian, 20, 10, gz=True, seed=3)
    reference = tmp_path / "reference"
    write_mnist_idx(reference, 20, 10, gz=False, seed=3)
    patch_sha256(monkeypatch, reference)
    data = tmp_path / "data"
    FashionMNISTDataModule(data_dir=str(data), download=False, debian_dir=str(debian)).prepare_data()
    name = "t10k-labels-idx1-ubyte"
    dims, _ = mnist.IDX_SHA256["FashionMNIST"][name]
    monkeypatch.setitem(mnist.IDX_SHA256["FashionMNIST"], name, (dims, "0" * 64))
    (data / "FashionMNIST" / "raw" / name).unlink()
    dm = FashionMNISTDataModule(data_dir=str(data), download=False, debian_dir=str(debian))
    with pytest.raises(DatasetCorruptedError, match=f"{debian / name}.gz.*content differs from the official"):
        dm.prepare_data()
    assert not list((data / "FashionMNIST" / "raw").glob("*.tmp-*"))


def _read_only(monkeypatch):
    real = os.makedirs

    def makedirs(path, *args, **kwargs):
        if "ro-data" in str(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", makedirs)


@pytest.mark.parametrize("cls", [FashionMNISTDataModule, MNISTDataModule])
def test_unwritable_data_dir_names_the_folder_and_the_fix(tmp_path, monkeypatch, cls):
    debian = tmp_path / "debian"
    write_mnist_idx(debian, 20, 10, gz=True, seed=3)
    kwargs = {"debian_dir": str(debian)} if cls is FashionMNISTDataModule else {}
    data = tmp_path / "ro-data"
    _read_only(monkeypatch)
    dm = cls(data_dir=str(data), download=True, **kwargs)  # MNIST: refused before any download
    with pytest.raises(DatasetNotWritableError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert dm.raw_dir in message and "Read-only file system" in message
    assert "pass a writable data_dir (--data.init_args.data_dir DIR" in message
    assert "reinstall" not in message and "apt" not in message


@pytest.mark.skipif(not (REAL_RAW / MNIST_FILES[0]).is_file(), reason="real Fashion-MNIST not extracted")
def test_real_fashion_mnist_matches_the_digest_table():
    for name in MNIST_FILES:
        check_idx_sha256(str(REAL_RAW / name), "FashionMNIST")


@pytest.mark.skipif(
    not os.path.isdir(DEBIAN_FASHION_MNIST_DIR), reason="Debian's dataset-fashion-mnist absent"
)
def test_debian_package_extracts_to_the_digest_table(tmp_path):
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), download=False)
    dm.prepare_data()  # gunzip + header + SHA-256 of the four files
    for name in MNIST_FILES:
        dims, digest = mnist.IDX_SHA256["FashionMNIST"][name]
        assert read_idx_header(os.path.join(dm.raw_dir, name)) == dims
