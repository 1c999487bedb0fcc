"""MNIST and Fashion-MNIST datamodules (held in memory as one ``uint8`` ``[N, 1, 28, 28]`` tensor).

On-disk layout is torchvision's: ``<data_dir>/MNIST/raw/`` and ``<data_dir>/FashionMNIST/raw/`` holding
the extracted IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``.

Fashion-MNIST is also taken from Debian's ``dataset-fashion-mnist`` package (gzipped IDX files in
:data:`DEBIAN_FASHION_MNIST_DIR`): ``prepare_data`` gunzips them into ``<data_dir>/FashionMNIST/raw``
(real copies, never symlinks: torchvision may write into that folder; the Debian ``.gz`` files are
recompressed, so their md5 differs from torchvision's, but the extracted content is the same).

Retrieval split (hashing papers): query = the 10,000 test images, database = the 60,000 training
images, train = 10,000 images sampled from the database. See :mod:`datamodules.base` for the batch format.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import struct
from typing import ClassVar

import torch
from torchvision.datasets import MNIST, FashionMNIST

from .base import Split, TensorImageDataset, VisionDataModule, random_split_indices, sample_subset
from .errors import DatasetCorruptedError, DatasetNotFoundError, DatasetNotWritableError

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "FashionMNISTDataModule",
    "IDX_SHA256",
    "check_idx_sha256",
    "MNISTDataModule",
    "MNIST_FILES",
    "read_idx_header",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the gzipped IDX files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: The four (extracted) IDX files torchvision's MNIST-like datasets read from ``<root>/<Name>/raw``.
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_IDX_MAGIC = {"images": 2051, "labels": 2049}  # uint8 data, 3 resp. 1 dimensions

#: SHA-256 of the extracted official IDX files: ``{torchvision class name: {file: (header dims, digest)}}``.
#: Fashion-MNIST: computed from the files extracted from Debian's ``dataset-fashion-mnist`` (2020 package;
#: headers and sizes are the official 60,000 / 10,000 x 28 x 28; zalando publishes md5 sums of its .gz files
#: only and Debian recompressed them, so the extracted digests could not be compared offline with an
#: independent source). MNIST: no published digests of the extracted files were found (only of the .gz
#: archives, which torchvision's download checks), so its extracted files are not checked.
IDX_SHA256: dict[str, dict[str, tuple[tuple[int, ...], str]]] = {
    "FashionMNIST": {
        "train-images-idx3-ubyte": (
            (60000, 28, 28),
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        "train-labels-idx1-ubyte": (
            (60000,),
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        "t10k-images-idx3-ubyte": (
            (10000, 28, 28),
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        "t10k-labels-idx1-ubyte": (
            (10000,),
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    },
    "MNIST": {},
}


def check_idx_sha256(path: str, dataset: str, name: str | None = None) -> None:
    """Compare the SHA-256 of an extracted IDX file with :data:`IDX_SHA256` (``name``: its official name).

    Only a file whose header announces the official dims is checked (a subset or a test fixture is not
    the official file); the header and size are checked by :func:`read_idx_header` first.

    Raises:
        DatasetCorruptedError: Naming ``path``, when the content differs from the official file.
    """
    name = name or os.path.basename(path)
    expected = IDX_SHA256.get(dataset, {}).get(name)
    if expected is None:
        return
    dims, digest = expected
    if read_idx_header(path) != dims:
        return
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            sha.update(chunk)
    if sha.hexdigest() != digest:
        raise DatasetCorruptedError(
            f"{path}: content differs from the official {name} (SHA-256 {sha.hexdigest()}, expected "
            f"{digest}; header and size are intact, the pixels or labels are not): delete it and run "
            "prepare_data() again to extract / download a fresh copy"
        )


def read_idx_header(path: str) -> tuple[int, ...]:
    """Validate an uncompressed uint8 IDX file (MNIST format) without reading its payload.

    Checks the magic number (2051 = images ``[N, H, W]``, 2049 = labels ``[N]``) and that the file
    size equals header + ``prod(dims)`` bytes (catches truncated downloads / extractions).

    Args:
        path: Path to the IDX file.

    Returns:
        The dimensions stored in the header, e.g. ``(60000, 28, 28)`` or ``(60000,)``.

    Raises:
        DatasetCorruptedError: Naming ``path``, if the header or size is wrong.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
    hint = "delete it and run prepare_data() again (download=True) or restore the file"
    if len(head) < 8:
        raise DatasetCorruptedError(f"{path}: file of {size} bytes is too short to be an IDX file; {hint}")
    magic = struct.unpack(">i", head[:4])[0]
    if magic not in _IDX_MAGIC.values():
        raise DatasetCorruptedError(
            f"{path}: bad IDX magic number {magic} (expected 2051 for images or 2049 for labels); {hint}"
        )
    ndim = magic & 0xFF
    if len(head) < 4 + 4 * ndim:
        raise DatasetCorruptedError(f"{path}: truncated IDX header ({size} bytes); {hint}")
    dims = struct.unpack(f">{ndim}i", head[4 : 4 + 4 * ndim])
    expected = 4 + 4 * ndim + math.prod(dims)
    if size != expected:
        raise DatasetCorruptedError(
            f"{path}: IDX header announces dims {dims} = {expected} bytes but the file has {size} bytes "
            f"(truncated or corrupt); {hint}"
        )
    return tuple(dims)


class _MNISTLikeDataModule(VisionDataModule):
    """Common code of MNIST-like datamodules (28x28 grayscale, 60k train / 10k test IDX files)."""

    _tv_class: ClassVar[type[MNIST]] = MNIST
    _display_name: ClassVar[str] = "MNIST"

    @property
    def num_classes(self) -> int:
        """10."""
        return 10

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(1, 28, 28)``."""
        return (1, 28, 28)

    @property
    def raw_dir(self) -> str:
        """Folder holding the extracted IDX files (``<data_dir>/<torchvision class name>/raw``)."""
        return os.path.join(self.data_dir, self._tv_class.__name__, "raw")

    def _missing_files(self) -> list[str]:
        return [
            os.path.join(self.raw_dir, f)
            for f in MNIST_FILES
            if not os.path.isfile(os.path.join(self.raw_dir, f))
        ]

    def _how_to_get(self) -> str:
        return (
            f"  * set download=True to let torchvision download it ({self._tv_class.mirrors[0]}), or\n"
            f"  * put the extracted official files {', '.join(MNIST_FILES)} into {self.raw_dir}"
        )

    def _not_found(self, missing: list[str], cause: str = "") -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"{self._display_name} not found: missing {', '.join(missing)}.{cause}\n"
            f"To get it:\n{self._how_to_get()}"
        )

    def _fill_from_local_sources(self, missing: list[str]) -> None:
        """Hook: obtain missing raw files from local sources (Fashion-MNIST: Debian package)."""

    def _ensure_writable(self, missing: list[str]) -> None:
        """Create :attr:`raw_dir` and check it takes files, else :class:`DatasetNotWritableError`."""
        probe = os.path.join(self.raw_dir, f".write-test-{os.getpid()}")
        try:
            os.makedirs(self.raw_dir, exist_ok=True)
            with open(probe, "wb"):
                pass
            os.remove(probe)
        except OSError as e:
            raise DatasetNotWritableError(
                f"{self._display_name}: cannot write into {self.raw_dir} ({e.strerror or e}), so the missing "
                f"files {', '.join(os.path.basename(m) for m in missing)} cannot be extracted / downloaded "
                f"there. Fix: make {self.data_dir} writable, or pass a writable data_dir "
                "(--data.init_args.data_dir DIR; the files go to DIR/"
                f"{self._tv_class.__name__}/raw), or put the extracted files into {self.raw_dir} yourself"
            ) from e

    def prepare_data(self) -> None:
        """Make sure the four IDX files exist in :attr:`raw_dir`.

        Order: existing extracted files; local sources (Fashion-MNIST: Debian package); torchvision
        download if ``download=True``; otherwise :class:`DatasetNotFoundError` naming the missing paths.
        """
        missing = self._missing_files()
        if missing:
            self._fill_from_local_sources(missing)
            missing = self._missing_files()
        if not missing:
            return
        if not self.download:
            raise self._not_found(missing, " (download=False)")
        self._ensure_writable(missing)
        try:
            self._tv_class(self.data_dir, train=True, download=True)
        except Exception as e:  # network errors, md5 mismatch of the downloaded archive, ...
            raise self._not_found(missing, f" torchvision's download failed: {e}") from e
        missing = self._missing_files()
        if missing:
            raise self._not_found(missing, " (still missing after torchvision's download)")
        for name in MNIST_FILES:
            check_idx_sha256(os.path.join(self.raw_dir, name), self._tv_class.__name__)

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = "train" if train else "t10k"
        img_path = os.path.join(self.raw_dir, f"{prefix}-images-idx3-ubyte")
        lbl_path = os.path.join(self.raw_dir, f"{prefix}-labels-idx1-ubyte")
        img_dims = read_idx_header(img_path)
        lbl_dims = read_idx_header(lbl_path)
        check_idx_sha256(img_path, self._tv_class.__name__)
        check_idx_sha256(lbl_path, self._tv_class.__name__)
        if len(img_dims) != 3:
            raise DatasetCorruptedError(
                f"{img_path}: expected an image file [N, H, W], header says {img_dims}"
            )
        if len(lbl_dims) != 1:
            raise DatasetCorruptedError(f"{lbl_path}: expected a label file [N], header says {lbl_dims}")
        if img_dims[0] != lbl_dims[0]:
            raise DatasetCorruptedError(
                f"{img_path} has {img_dims[0]} images but {lbl_path} has {lbl_dims[0]} labels"
            )
        try:
            ds = self._tv_class(self.data_dir, train=train, download=False)
        except Exception as e:
            raise DatasetCorruptedError(f"torchvision could not read {img_path} / {lbl_path}: {e}") from e
        images = ds.data.to(torch.uint8).unsqueeze(1).contiguous()  # [N, 1, H, W]
        labels = ds.targets.long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DatasetCorruptedError(f"{lbl_path}: labels outside 0..{self.num_classes - 1}")
        return images, labels

    def _setup_datasets(self) -> None:
        missing = self._missing_files()
        if missing:
            raise self._not_found(missing, " Did prepare_data() run?")
        train_x, train_y = self._load(train=True)
        test_x, test_y = self._load(train=False)
        n_train, n_test = train_x.shape[0], test_x.shape[0]
        images = torch.cat([train_x, test_x])  # pool: official train rows then official test rows
        labels = torch.cat([train_y, test_y])
        train_rows = torch.arange(n_train)
        test_rows = torch.arange(n_train, n_train + n_test)
        g = self._generator()
        if self.split == "standard":
            if self.val_size >= n_train:
                raise ValueError(
                    f"val_size={self.val_size} must be smaller than the {n_train} training images"
                )
            val_pos, train_pos = random_split_indices(n_train, self.val_size, g)
            self.train_set = TensorImageDataset(images, labels, train_rows[train_pos])
            self.val_set = TensorImageDataset(images, labels, train_rows[val_pos])
            self.test_set = TensorImageDataset(images, labels, test_rows)
        else:
            query = sample_subset(test_rows, self.num_query, g, "num_query")
            database = sample_subset(train_rows, self.num_database, g, "num_database")
            num_train = self.num_train if self.num_train is not None else 10_000
            self.train_in_database = sample_subset(torch.arange(database.shape[0]), num_train, g, "num_train")
            self.query_set = TensorImageDataset(images, labels, query)
            self.database_set = TensorImageDataset(images, labels, database)
            self.train_set = TensorImageDataset(images, labels, database[self.train_in_database])


class MNISTDataModule(_MNISTLikeDataModule):
    """MNIST (``torchvision.datasets.MNIST`` files), 10 classes, images ``[1, 28, 28]``.

    Retrieval split: query = 10,000 test images, database = 60,000 train images, train = 10,000
    sampled from the database (``train_in_database``: ``int64`` ``[num_train]`` positions of the
    train subset inside the database set). ``augment=True``: random crop with 2 px padding (no flip).

    Args:
        data_dir: Root folder; files live in ``<data_dir>/MNIST/raw``.
        batch_size: Train batch size.
        eval_batch_size: Eval batch size (``None`` = ``batch_size``).
        num_workers: DataLoader workers.
        download: Allow torchvision's download in ``prepare_data``.
        seed: Split / shuffle seed.
        split: ``"standard"`` or ``"retrieval"``.
        val_size: Standard split: held-out part of the 60,000 training images.
        num_query: Retrieval: query size drawn from the test set (``None`` = all 10,000).
        num_database: Retrieval: database size drawn from the train set (``None`` = all 60,000).
        num_train: Retrieval: train subset drawn from the database (``None`` = 10,000).
        augment: Batched on-device augmentation of training batches.
        pin_memory: DataLoader ``pin_memory``.
    """

    _tv_class = MNIST
    _display_name = "MNIST"
    augment_flip = False
    augment_crop_padding = 2

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        download: bool = True,
        seed: int = 0,
        split: Split = "standard",
        val_size: int = 5000,
        num_query: int | None = None,
        num_database: int | None = None,
        num_train: int | None = None,
        augment: bool = False,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            download=download,
            seed=seed,
            split=split,
            val_size=val_size,
            num_query=num_query,
            num_database=num_database,
            num_train=num_train,
            augment=augment,
            pin_memory=pin_memory,
        )
        self.save_hyperparameters()


class FashionMNISTDataModule(_MNISTLikeDataModule):
    """Fashion-MNIST (``torchvision.datasets.FashionMNIST`` files), 10 classes, images ``[1, 28, 28]``.

    ``prepare_data`` prefers already extracted files in ``<data_dir>/FashionMNIST/raw``, then Debian's
    ``dataset-fashion-mnist`` package in ``debian_dir`` (gunzipped into that folder), then
    torchvision's download (if ``download=True``). Splits as :class:`MNISTDataModule`.
    ``augment=True``: random horizontal flip + random crop with 2 px padding.

    Args:
        data_dir: Root folder; files live in ``<data_dir>/FashionMNIST/raw``.
        batch_size: Train batch size.
        eval_batch_size: Eval batch size (``None`` = ``batch_size``).
        num_workers: DataLoader workers.
        download: Allow torchvision's download in ``prepare_data``.
        seed: Split / shuffle seed.
        split: ``"standard"`` or ``"retrieval"``.
        val_size: Standard split: held-out part of the 60,000 training images.
        num_query: Retrieval: query size drawn from the test set (``None`` = all 10,000).
        num_database: Retrieval: database size drawn from the train set (``None`` = all 60,000).
        num_train: Retrieval: train subset drawn from the database (``None`` = 10,000).
        augment: Batched on-device augmentation of training batches.
        pin_memory: DataLoader ``pin_memory``.
        debian_dir: Folder with Debian's ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
            (``None`` = do not look for the Debian package).
    """

    _tv_class = FashionMNIST
    _display_name = "Fashion-MNIST"
    augment_flip = True
    augment_crop_padding = 2

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        download: bool = True,
        seed: int = 0,
        split: Split = "standard",
        val_size: int = 5000,
        num_query: int | None = None,
        num_database: int | None = None,
        num_train: int | None = None,
        augment: bool = False,
        pin_memory: bool = False,
        debian_dir: str | None = DEBIAN_FASHION_MNIST_DIR,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            download=download,
            seed=seed,
            split=split,
            val_size=val_size,
            num_query=num_query,
            num_database=num_database,
            num_train=num_train,
            augment=augment,
            pin_memory=pin_memory,
        )
        self.debian_dir = debian_dir
        self.save_hyperparameters()

    def _how_to_get(self) -> str:
        return (
            f"  * install Debian's package: `sudo apt install dataset-fashion-mnist` (gzipped files in "
            f"{self.debian_dir or DEBIAN_FASHION_MNIST_DIR}, extracted by prepare_data()), or\n"
            + super()._how_to_get()
        )

    def _fill_from_local_sources(self, missing: list[str]) -> None:
        """Gunzip the missing files from ``debian_dir`` (atomically: temp file + rename, header checked)."""
        if not self.debian_dir or not os.path.isdir(self.debian_dir):
            return
        sources = [
            (dst, os.path.join(self.debian_dir, os.path.basename(dst) + ".gz"))
            for dst in missing
            if os.path.isfile(os.path.join(self.debian_dir, os.path.basename(dst) + ".gz"))
        ]
        if sources:
            self._ensure_writable(missing)
        for dst, src in sources:
            tmp = f"{dst}.tmp-{os.getpid()}"
            try:
                with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout, length=1 << 20)
                read_idx_header(tmp)
                check_idx_sha256(tmp, self._tv_class.__name__, os.path.basename(dst))
            except (OSError, EOFError, DatasetCorruptedError) as e:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise DatasetCorruptedError(
                    f"{src}: cannot extract a valid IDX file from Debian's dataset-fashion-mnist file ({e}); "
                    "reinstall it with `sudo apt install --reinstall dataset-fashion-mnist`"
                ) from e
            os.replace(tmp, dst)
