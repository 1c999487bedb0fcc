"""CIFAR-10 datamodule (held in memory as one ``uint8`` ``[N, 3, 32, 32]`` tensor).

On-disk layout is torchvision's: ``<data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
(the official python pickles). Their md5 sums are checked against torchvision's ``CIFAR10.train_list``,
``CIFAR10.test_list`` and ``CIFAR10.meta`` before loading; a mismatch raises an error naming the file.

Retrieval split (hashing papers): train and test sets are pooled (60,000 images); query = 100 images
per class (1,000), database = the other 59,000, train = 10,000 sampled from the database.
See :mod:`datamodules.base` for the batch format.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import torch
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import calculate_md5

from .base import Split, TensorImageDataset, VisionDataModule, random_split_indices, sample_subset
from .errors import DatasetCorruptedError, DatasetNotFoundError

__all__ = ["CIFAR10DataModule", "cifar10_files"]


def cifar10_files() -> list[tuple[str, str]]:
    """``(filename, md5)`` of the official CIFAR-10 python files, read from torchvision's ``CIFAR10``.

    Read at call time so tests can monkeypatch ``CIFAR10.train_list`` / ``test_list`` / ``meta``.
    """
    files = [(name, md5) for name, md5 in CIFAR10.train_list + CIFAR10.test_list]
    return files + [(CIFAR10.meta["filename"], CIFAR10.meta["md5"])]


class CIFAR10DataModule(VisionDataModule):
    """CIFAR-10 (``torchvision.datasets.CIFAR10`` files), 10 classes, images ``[3, 32, 32]``.

    Standard split: ``val_size`` images held out of the 50,000 training images; test = 10,000 test
    images. Retrieval split: query = ``num_query_per_class`` images per class drawn from train+test
    pooled (default 100, i.e. 1,000), database = all other pooled images (59,000; or a seeded subset of
    ``num_database``), train = ``num_train`` (default 10,000) drawn from the database
    (``train_in_database`` holds their positions in the database set). ``augment=True``: random
    horizontal flip + random crop with 4 px zero padding (batched, on device).

    Args:
        data_dir: Root folder; files live in ``<data_dir>/cifar-10-batches-py``.
        batch_size: Train batch size.
        eval_batch_size: Eval batch size (``None`` = ``batch_size``).
        num_workers: DataLoader workers.
        download: Allow torchvision's download in ``prepare_data``.
        seed: Split / shuffle seed.
        split: ``"standard"`` or ``"retrieval"``.
        val_size: Standard split: held-out part of the 50,000 training images.
        num_query: Retrieval: total query size, balanced over the 10 classes (must be a multiple of
            10); ``None`` = 1,000. Mutually exclusive with ``num_query_per_class``.
        num_database: Retrieval: database size (``None`` = all non-query images).
        num_train: Retrieval: train subset drawn from the database (``None`` = 10,000).
        augment: Batched on-device augmentation of training batches.
        pin_memory: DataLoader ``pin_memory``.
        num_query_per_class: Retrieval: query images per class (``None`` = 100 or ``num_query / 10``).
    """

    augment_flip = True
    augment_crop_padding = 4

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
        num_query_per_class: int | None = None,
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
        if num_query is not None and num_query_per_class is not None:
            raise ValueError("give num_query or num_query_per_class, not both")
        if num_query is not None and num_query % 10:
            raise ValueError(
                f"num_query={num_query} must be a multiple of the 10 classes (balanced query set)"
            )
        if num_query_per_class is not None and num_query_per_class < 1:
            raise ValueError(f"num_query_per_class must be >= 1, got {num_query_per_class}")
        self.num_query_per_class = num_query_per_class
        self.save_hyperparameters()

    @property
    def num_classes(self) -> int:
        """10."""
        return 10

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(3, 32, 32)``."""
        return (3, 32, 32)

    @property
    def base_dir(self) -> str:
        """``<data_dir>/cifar-10-batches-py``."""
        return os.path.join(self.data_dir, CIFAR10.base_folder)

    def _missing_files(self) -> list[str]:
        paths = [os.path.join(self.base_dir, name) for name, _ in cifar10_files()]
        return [p for p in paths if not os.path.isfile(p)]

    def _not_found(self, missing: list[str], cause: str = "") -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"CIFAR-10 not found: missing {', '.join(missing)}.{cause}\nTo get it:\n"
            f"  * set download=True to let torchvision download {CIFAR10.url}, or\n"
            f"  * download that archive yourself and extract it into {self.data_dir} "
            f"(it contains {CIFAR10.base_folder}/)"
        )

    def prepare_data(self) -> None:
        """Download the python batches through torchvision if missing and ``download=True``.

        Raises:
            DatasetNotFoundError: Naming the missing paths, if files are missing and cannot be downloaded.
        """
        missing = self._missing_files()
        if not missing:
            return
        if not self.download:
            raise self._not_found(missing, " (download=False)")
        try:
            CIFAR10(self.data_dir, train=True, download=True)
        except Exception as e:
            raise self._not_found(missing, f" torchvision's download failed: {e}") from e

    def _check_files(self) -> None:
        missing = self._missing_files()
        if missing:
            raise self._not_found(missing, " Did prepare_data() run?")
        for name, md5 in cifar10_files():
            path = os.path.join(self.base_dir, name)
            actual = calculate_md5(path)
            if actual != md5:
                raise DatasetCorruptedError(
                    f"{path}: md5 {actual} != expected {md5} (truncated or corrupt); delete {self.base_dir} "
                    "and run prepare_data() with download=True"
                )

    def _diagnose(self, error: Exception) -> DatasetCorruptedError:
        """Find which pickle torchvision failed on, to name it in the error."""
        for name, _ in cifar10_files():
            path = os.path.join(self.base_dir, name)
            try:
                with open(path, "rb") as f:
                    entry = pickle.load(f, encoding="latin1")
                if name != CIFAR10.meta["filename"]:
                    data = np.asarray(entry["data"])
                    if (
                        data.ndim != 2
                        or data.shape[1] != 3 * 32 * 32
                        or len(entry["labels"]) != data.shape[0]
                    ):
                        raise ValueError(
                            f"data {data.shape} / {len(entry['labels'])} labels, expected [N, 3072] / N"
                        )
                elif CIFAR10.meta["key"] not in entry:
                    raise KeyError(CIFAR10.meta["key"])
            except Exception as e:
                return DatasetCorruptedError(f"{path}: cannot load this CIFAR-10 python batch ({e!r})")
        return DatasetCorruptedError(f"torchvision could not read CIFAR-10 from {self.base_dir}: {error!r}")

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            ds = CIFAR10(self.data_dir, train=train, download=False)
        except Exception as e:
            raise self._diagnose(e) from e
        images = (
            torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        )  # [N,3,32,32]
        labels = torch.as_tensor(ds.targets, dtype=torch.long)
        return images, labels

    def _setup_datasets(self) -> None:
        self._check_files()
        train_x, train_y = self._load(train=True)
        test_x, test_y = self._load(train=False)
        n_train, n_test = train_x.shape[0], test_x.shape[0]
        images = torch.cat([train_x, test_x])  # pool: official train rows then official test rows
        labels = torch.cat([train_y, test_y])
        g = self._generator()
        if self.split == "standard":
            if self.val_size >= n_train:
                raise ValueError(
                    f"val_size={self.val_size} must be smaller than the {n_train} training images"
                )
            val_rows, train_rows = random_split_indices(n_train, self.val_size, g)
            self.train_set = TensorImageDataset(images, labels, train_rows)
            self.val_set = TensorImageDataset(images, labels, val_rows)
            self.test_set = TensorImageDataset(images, labels, torch.arange(n_train, n_train + n_test))
            return
        per_class = self.num_query_per_class
        if per_class is None:
            per_class = self.num_query // self.num_classes if self.num_query is not None else 100
        query_parts = []
        for c in range(self.num_classes):
            rows = torch.nonzero(labels == c).flatten()
            if rows.shape[0] <= per_class:
                raise ValueError(
                    f"class {c} has {rows.shape[0]} images, too few for {per_class} query images"
                )
            query_parts.append(rows[torch.randperm(rows.shape[0], generator=g)[:per_class]])
        query = torch.cat(query_parts).sort().values
        rest = torch.ones(labels.shape[0], dtype=torch.bool)
        rest[query] = False
        database = sample_subset(torch.nonzero(rest).flatten(), self.num_database, g, "num_database")
        num_train = self.num_train if self.num_train is not None else 10_000
        self.train_in_database = sample_subset(torch.arange(database.shape[0]), num_train, g, "num_train")
        self.query_set = TensorImageDataset(images, labels, query)
        self.database_set = TensorImageDataset(images, labels, database)
        self.train_set = TensorImageDataset(images, labels, database[self.train_in_database])
