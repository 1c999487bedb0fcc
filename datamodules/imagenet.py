"""ImageNet (ILSVRC-2012) class-subset datamodule: JPEGs read lazily from the official ImageFolder layout.

On-disk layout (what ``torchvision.datasets.ImageFolder`` reads; ``root_name`` defaults to ``imagenet``)::

    <data_dir>/<root_name>/train/<wnid>/*.JPEG     # ILSVRC2012_img_train.tar, one folder per class
    <data_dir>/<root_name>/val/<wnid>/*.JPEG       # ILSVRC2012_img_val.tar, sorted into class folders

plus a class list: a text file with one WordNet id per line (anything after the id on the line, ``#``
comments and blank lines are ignored, so the devkit's ``LOC_synset_mapping.txt`` works too), like the
class-subset lists of the hashing papers; or the ids given inline with ``classes=[...]``. Label = position
of the id in that list. Only the listed classes are read.

ImageNet is NOT held in memory: every sample is read from its file (torchvision's ``pil_loader``, so
grayscale / CMYK JPEGs come out RGB), its shorter side resized to ``resize`` and center-cropped to
``image_size`` (``torchvision.transforms.v2.functional``), and returned as ``uint8`` ``[3, S, S]``; the
batched ``on_after_batch_transfer`` of :mod:`datamodules.base` applies unchanged. ImageNet cannot be
downloaded automatically (registration at image-net.org): missing files raise an error saying where to
get them.

Retrieval split (hashing papers): query = the official val images of the listed classes, database = their
train images, train = 10,000 images sampled from the database. See :mod:`datamodules.base` for the batch
format.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset, pil_loader
from torchvision.transforms.v2 import functional as TF

from .base import Split, VisionDataModule, random_split_indices, sample_subset
from .errors import DatasetCorruptedError, DatasetNotFoundError

__all__ = ["ImageFileDataset", "ImageNetSubsetDataModule", "read_class_list"]

IMAGENET_URL = "https://image-net.org/download-images.php"
#: The PyTorch ImageNet example's recipe that sorts the 50,000 val JPEGs into class folders.
VALPREP_URL = "https://github.com/pytorch/examples/blob/main/imagenet/extract_ILSVRC.sh"

_SHOW = 5  # how many missing / empty classes an error lists


def read_class_list(path: str) -> list[str]:
    """WordNet ids of a class-list file, in file order.

    One id per line, as its first whitespace-separated token; the rest of the line (e.g. the class name
    of ``LOC_synset_mapping.txt``), ``#`` comments and blank lines are ignored.

    Args:
        path: The class-list file.

    Returns:
        The ids, in file order (checked by :func:`check_class_list`).

    Raises:
        DatasetNotFoundError: ``path`` does not exist.
        ValueError: The file lists no id, or an id twice (naming the lines).
    """
    if not os.path.isfile(path):
        raise DatasetNotFoundError(
            f"ImageNet class list {path} not found: write the WordNet ids of the classes to use there, one "
            "per line (e.g. n01440764), or give them inline with classes=[...]"
        )
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    ids, lines_of = [], {}
    for number, line in enumerate(lines, start=1):
        tokens = line.split("#", 1)[0].split()
        if tokens:
            ids.append(tokens[0])
            lines_of.setdefault(tokens[0], []).append(number)
    return check_class_list(ids, path, lines_of)


def check_class_list(
    ids: Sequence[str], source: str, lines_of: dict[str, list[int]] | None = None
) -> list[str]:
    """``ids`` as a list, or ``ValueError`` if it is empty or repeats an id (``source`` names it)."""
    ids = [str(i) for i in ids]
    if not ids:
        raise ValueError(
            f"{source} lists no class: give at least one WordNet id (e.g. n01440764), one per line"
        )
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    if duplicates:
        where = ", ".join(
            f"{i} (lines {', '.join(map(str, lines_of[i]))})" if lines_of else i for i in duplicates
        )
        raise ValueError(f"{source} lists classes more than once: {where}; keep each WordNet id once")
    bad = [i for i in ids if "/" in i or "\\" in i]
    if bad:
        raise ValueError(
            f"{source}: {bad[0]!r} is not a class folder name (it holds a path separator); a class list has "
            "one WordNet id per line, not image paths"
        )
    return ids


class ImageFileDataset(Dataset):
    """Lazily loaded images of (a subset of) a pool of image files; samples are dicts.

    Sample ``i``: ``{"image": uint8 [3, S, S], "label": int64 [], "index": int64 [] (= i)}``. The file is
    read with torchvision's ``pil_loader`` (converted to RGB), its shorter side resized to ``resize``
    (bilinear, antialiased) and center-cropped to ``image_size``.

    Args:
        paths: ``[N]`` file paths of the whole pool (a numpy string array: no per-worker refcount copies).
        labels: ``int64`` ``[N]`` class ids of the pool.
        indices: ``int64`` ``[M]`` rows of the pool that make up this dataset.
        resize: Target of the shorter side before the crop.
        image_size: Side ``S`` of the square center crop.
    """

    def __init__(
        self, paths: np.ndarray, labels: torch.Tensor, indices: torch.Tensor, resize: int, image_size: int
    ) -> None:
        self.paths = paths
        self.labels = labels.long()
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.resize = resize
        self.image_size = image_size

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def load(self, path: str) -> torch.Tensor:
        """``uint8`` ``[3, S, S]`` image of ``path``; undecodable: :class:`DatasetCorruptedError`."""
        try:
            image = pil_loader(path)  # RGB, also for grayscale / CMYK JPEGs
        except FileNotFoundError as e:
            raise DatasetNotFoundError(
                f"{path}: image file vanished after setup(); restore it, or call setup() on a new datamodule"
            ) from e
        except (OSError, ValueError, SyntaxError) as e:
            raise DatasetCorruptedError(
                f"{path}: cannot decode this image ({type(e).__name__}: {e}); it is truncated or corrupt: "
                "extract it again from the ILSVRC-2012 archive (or delete it to drop the image)"
            ) from e
        image = TF.resize(image, [self.resize])  # shorter side -> resize
        image = TF.center_crop(image, [self.image_size])
        return TF.pil_to_tensor(image)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.indices[i])
        return {"image": self.load(str(self.paths[row])), "label": self.labels[row], "index": torch.tensor(i)}

    @property
    def targets(self) -> torch.Tensor:
        """``int64`` ``[M]`` labels of this dataset, in order."""
        return self.labels[self.indices]

    @property
    def files(self) -> list[str]:
        """File paths of this dataset, in order."""
        return [str(self.paths[int(r)]) for r in self.indices]


class ImageNetSubsetDataModule(VisionDataModule):
    """ImageNet ILSVRC-2012 restricted to a list of classes, images ``[3, image_size, image_size]``.

    The pool is the train-folder images of the listed classes followed by their val-folder images (each in
    torchvision's ``make_dataset`` order: by class folder name, then file name); ``indices`` of every split
    are rows of that pool. Standard split: ``val_size`` train-folder images held out (seeded) for
    validation; test = the official val folder. Retrieval split: query = the official val images
    (all, or a seeded subset of ``num_query``), database = the train-folder images (all, or a seeded
    subset of ``num_database``), train = ``num_train`` (default 10,000) drawn from the database
    (``train_in_database`` holds their positions in the database set); query and database never share a
    file. ``augment=True``: random horizontal flip + random crop with ``image_size // 8`` px zero padding
    (4 px at 32 px, as CIFAR-10; batched, on device).

    Args:
        data_dir: Root folder; images live in ``<data_dir>/<root_name>/{train,val}/<wnid>/``.
        batch_size: Train batch size.
        eval_batch_size: Eval batch size (``None`` = ``batch_size``).
        num_workers: DataLoader workers (JPEG decoding happens in them).
        download: Accepted for the uniform arguments and ignored: ImageNet cannot be downloaded
            automatically (a missing folder is an error saying where to get it).
        seed: Split / shuffle seed.
        split: ``"standard"`` or ``"retrieval"``.
        val_size: Standard split: held-out part of the train-folder images.
        num_query: Retrieval: query size drawn from the val folder (``None`` = all).
        num_database: Retrieval: database size drawn from the train folder (``None`` = all).
        num_train: Retrieval: train subset drawn from the database (``None`` = 10,000).
        augment: Batched on-device augmentation of training batches.
        pin_memory: DataLoader ``pin_memory``.
        class_list: Class-list file (one WordNet id per line), absolute or relative to ``data_dir``.
        classes: The WordNet ids inline instead of ``class_list`` (give exactly one of the two).
        root_name: Folder below ``data_dir`` holding ``train/`` and ``val/``.
        image_size: Side of the square center crop.
        resize: The shorter side is resized to this before the crop (>= ``image_size``).

    Raises:
        ValueError: Neither or both of ``class_list`` / ``classes``, bad sizes, an empty or repeating list.
    """

    augment_flip = True

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        download: bool = False,
        seed: int = 0,
        split: Split = "standard",
        val_size: int = 5000,
        num_query: int | None = None,
        num_database: int | None = None,
        num_train: int | None = None,
        augment: bool = False,
        pin_memory: bool = False,
        class_list: str | None = None,
        classes: list[str] | None = None,
        root_name: str = "imagenet",
        image_size: int = 224,
        resize: int = 256,
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
        if (class_list is None) == (classes is None):
            raise ValueError(
                "give the ImageNet classes either as a class-list file (class_list=PATH, one WordNet id per "
                "line) or inline (classes=[n01440764, ...]), exactly one of the two"
            )
        if image_size < 1 or resize < image_size:
            raise ValueError(f"need 1 <= image_size <= resize, got {image_size=}, {resize=}")
        self.class_list = class_list
        self.classes = check_class_list(classes, "classes") if classes is not None else None
        self.root_name = root_name
        self.image_size = image_size
        self.resize = resize
        self.augment_crop_padding = image_size // 8
        self._class_names: list[str] | None = self.classes
        self.save_hyperparameters()

    @property
    def class_list_path(self) -> str | None:
        """The class-list file (a relative ``class_list`` is taken relative to ``data_dir``)."""
        if self.class_list is None:
            return None
        return os.path.join(self.data_dir, os.path.expanduser(self.class_list))

    @property
    def class_names(self) -> list[str]:
        """The WordNet ids, in label order (read from ``class_list`` on first use)."""
        if self._class_names is None:
            self._class_names = read_class_list(self.class_list_path)
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        """Number of listed classes."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(3, image_size, image_size)``."""
        return (3, self.image_size, self.image_size)

    @property
    def base_dir(self) -> str:
        """``<data_dir>/<root_name>``."""
        return os.path.join(self.data_dir, self.root_name)

    def _how_to_get(self) -> str:
        return (
            "To get it: ImageNet cannot be downloaded automatically (download=True does not change that); "
            f"register at {IMAGENET_URL}, download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar, "
            f"extract the train archive (and its per-class tars) into {os.path.join(self.base_dir, 'train')}"
            f"/<wnid>/ and the val images into {os.path.join(self.base_dir, 'val')}/<wnid>/ (sorted into "
            f"class folders, e.g. with {VALPREP_URL}); only the listed classes are needed"
        )

    def _check_folders(self) -> None:
        """Every listed class has a folder in ``train/`` and ``val/``, else :class:`DatasetNotFoundError`."""
        for part in ("train", "val"):
            folder = os.path.join(self.base_dir, part)
            if not os.path.isdir(folder):
                raise DatasetNotFoundError(
                    f"ImageNet not found: missing folder {folder}.\n{self._how_to_get()}"
                )
            missing = [c for c in self.class_names if not os.path.isdir(os.path.join(folder, c))]
            if missing:
                shown = ", ".join(missing[:_SHOW]) + (
                    f" and {len(missing) - _SHOW} more" if len(missing) > _SHOW else ""
                )
                source = self.class_list_path or "classes=[...]"
                raise DatasetNotFoundError(
                    f"ImageNet: {len(missing)} of the {len(self.class_names)} classes of {source} have "
                    f"no folder in {folder}: {shown}. Check the WordNet ids in {source}, or extract those "
                    f"classes into {folder}/<wnid>/.\n{self._how_to_get()}"
                )

    def prepare_data(self) -> None:
        """Check the class list and the class folders (nothing is downloaded).

        Raises:
            DatasetNotFoundError: Naming the missing class list, folder or class folders, and where to get
                ImageNet.
            ValueError: The class list is empty or repeats an id.
        """
        self._check_folders()

    def _samples(self, part: str) -> list[tuple[str, int]]:
        """``(path, label)`` of the listed classes in ``part`` (``make_dataset`` of torchvision)."""
        folder = os.path.join(self.base_dir, part)
        class_to_idx = {c: i for i, c in enumerate(self.class_names)}
        samples = make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        counts = np.bincount([label for _, label in samples], minlength=len(class_to_idx))
        empty = [os.path.join(folder, c) for c, i in class_to_idx.items() if counts[i] == 0]
        if empty:
            raise DatasetNotFoundError(
                f"ImageNet: {len(empty)} class folder(s) hold no image ({', '.join(IMG_EXTENSIONS)}): "
                f"{', '.join(empty[:_SHOW])}. Extract the class's images there again, or drop the class from "
                f"{self.class_list_path or 'classes=[...]'}.\n{self._how_to_get()}"
            )
        return samples

    def _setup_datasets(self) -> None:
        self._check_folders()
        train_samples, val_samples = self._samples("train"), self._samples("val")
        n_train, n_val = len(train_samples), len(val_samples)
        samples = train_samples + val_samples  # pool: train-folder rows then val-folder rows
        paths = np.array([p for p, _ in samples])
        labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        train_rows, val_rows = torch.arange(n_train), torch.arange(n_train, n_train + n_val)

        def dataset(rows: torch.Tensor) -> ImageFileDataset:
            return ImageFileDataset(paths, labels, rows, self.resize, self.image_size)

        g = self._generator()
        if self.split == "standard":
            if self.val_size >= n_train:
                raise ValueError(
                    f"val_size={self.val_size} must be smaller than the {n_train} train-folder images"
                )
            held_out, kept = random_split_indices(n_train, self.val_size, g)
            self.train_set = dataset(train_rows[kept])
            self.val_set = dataset(train_rows[held_out])
            self.test_set = dataset(val_rows)
            return
        query = sample_subset(val_rows, self.num_query, g, "num_query")
        database = sample_subset(train_rows, self.num_database, g, "num_database")
        num_train = self.num_train if self.num_train is not None else 10_000
        self.train_in_database = sample_subset(torch.arange(database.shape[0]), num_train, g, "num_train")
        self.query_set = dataset(query)
        self.database_set = dataset(database)
        self.train_set = dataset(database[self.train_in_database])
