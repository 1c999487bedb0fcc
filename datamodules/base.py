"""Shared base of privzoo's vision datamodules.

Batch format (fixed interface, relied upon by models and callbacks)
-------------------------------------------------------------------
Every dataloader of every datamodule in this package yields a ``dict``:

* ``"image"``: as it leaves the DataLoader, ``uint8`` ``[B, C, H, W]``. Lightning then calls
  :meth:`VisionDataModule.on_after_batch_transfer` on the target device, which converts it to
  ``float32`` ``[B, C, H, W]`` in ``[0, 1]`` (``/ 255``) and, only when ``augment=True`` and
  ``trainer.training`` is true, applies the dataset's batched augmentation (random horizontal flip
  and/or random crop with zero padding). Models therefore always see ``float32`` in ``[0, 1]``.
* ``"label"``: ``int64`` ``[B]`` class ids; CelebA: ``float32`` ``[B, K]`` multi-hot of the ``K``
  attributes chosen with ``attributes=[...]`` (in that order, see ``attribute_names``).
* ``"index"``: ``int64`` ``[B]`` position of the sample inside the dataset of its split (the
  train / val / test / query / database set it was drawn from), e.g. for asymmetric hashing.
* CelebA only: ``"identity"``: ``int64`` ``[B]`` identity remapped to ``0 .. num_identities - 1``;
  ``"attributes"``: ``float32`` ``[B, 40]`` all 40 binary attributes (0/1, official order).

Splits
------
* ``split="standard"`` (reconstruction / classification): ``train_dataloader`` = official train set
  minus a seeded held-out part of ``val_size`` images, ``val_dataloader`` = that held-out part,
  ``test_dataloader`` = official test set.
* ``split="retrieval"`` (hashing papers): ``train_dataloader`` = the train subset (sampled from the
  database), ``val_dataloader()`` and ``test_dataloader()`` both return the list
  ``[query_loader, database_loader]`` (``dataloader_idx`` 0 = query, 1 = database); the same loaders
  come from :meth:`VisionDataModule.query_dataloader` and :meth:`VisionDataModule.database_dataloader`.

All splits are drawn with a ``torch.Generator`` seeded with ``seed`` and are reproducible. Eval
loaders never shuffle; the train loader shuffles with its own generator seeded with ``seed``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate

from datamodules.loader import ResumableDataLoader

Split = Literal["standard", "retrieval"]

__all__ = [
    "Split",
    "TensorImageDataset",
    "VisionDataModule",
    "batch_random_crop",
    "batch_random_hflip",
    "passthrough_collate",
]


def passthrough_collate(batch: Any) -> Any:
    """Collate function for datasets whose ``__getitems__`` already returns a collated batch.

    Args:
        batch: Either an already collated ``dict`` (from :meth:`TensorImageDataset.__getitems__`),
            returned unchanged, or a list of per-sample dicts, collated with ``default_collate``.

    Returns:
        The collated batch dict.
    """
    if isinstance(batch, dict):
        return batch
    return default_collate(batch)


class TensorImageDataset(Dataset):
    """In-memory image dataset over (a subset of) one uint8 image tensor.

    The images of a whole dataset live in ONE tensor; a split is a view given by ``indices`` (no
    copy). Samples are dicts ``{"image": uint8 [C, H, W], "label": int64 [], "index": int64 []}``
    where ``index`` is the position of the sample in THIS dataset (``0 .. len(self) - 1``).

    ``__getitems__`` is PyTorch's batched fetch (``torch.utils.data._utils.fetch._MapDatasetFetcher``
    calls it with the sampler's list of indices, in the main process and in workers alike): it
    returns one already collated dict ``{"image": uint8 [B, C, H, W], "label": int64 [B],
    "index": int64 [B]}`` with a single advanced-indexing gather. Use it with
    ``collate_fn=passthrough_collate`` (available as :attr:`collate_fn`).

    Args:
        images: ``uint8`` ``[N, C, H, W]`` all images of the underlying pool.
        labels: ``int64`` ``[N]`` class ids of the pool.
        indices: ``int64`` ``[M]`` rows of the pool that make up this dataset; ``None`` = all ``N``.
    """

    collate_fn = staticmethod(passthrough_collate)

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels.long()
        if indices is None:
            indices = torch.arange(images.shape[0])
        self.indices = torch.as_tensor(indices, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        src = self.indices[i]
        return {"image": self.images[src], "label": self.labels[src], "index": torch.tensor(int(i))}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        src = self.indices[idx]
        return {"image": self.images[src], "label": self.labels[src], "index": idx}

    @property
    def targets(self) -> torch.Tensor:
        """``int64`` ``[M]`` labels of this dataset, in order."""
        return self.labels[self.indices]


def batch_random_hflip(images: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Flip each image of a batch horizontally with probability ``p`` (independently).

    Args:
        images: ``[B, C, H, W]`` (any dtype, any device).
        p: Flip probability.

    Returns:
        ``[B, C, H, W]`` tensor of the same dtype/device.
    """
    flip = torch.rand(images.shape[0], device=images.device) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def batch_random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad each image by ``padding`` pixels and crop back to ``H x W`` at a random offset.

    Batched equivalent of ``torchvision.transforms.RandomCrop(size, padding=padding)``: each sample
    gets its own offset; one gather, no Python loop.

    Args:
        images: ``[B, C, H, W]``.
        padding: Pixels of zero padding on each side; ``0`` returns ``images`` unchanged.

    Returns:
        ``[B, C, H, W]`` tensor of the same dtype/device.
    """
    if padding <= 0:
        return images
    b, _, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (padding, padding, padding, padding)).permute(0, 2, 3, 1)  # [B, H+2p, W+2p, C]
    oy = torch.randint(0, 2 * padding + 1, (b,), device=dev)
    ox = torch.randint(0, 2 * padding + 1, (b,), device=dev)
    rows = oy[:, None] + torch.arange(h, device=dev)  # [B, H]
    cols = ox[:, None] + torch.arange(w, device=dev)  # [B, W]
    bi = torch.arange(b, device=dev)[:, None, None]
    out = padded[bi, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


class VisionDataModule(pl.LightningDataModule):
    """Base of the vision datamodules (lightning-bolts style uniform arguments).

    Subclasses implement :meth:`prepare_data` and :meth:`_setup_datasets` (which assigns
    ``train_set`` / ``val_set`` / ``test_set`` for ``split="standard"`` or ``train_set`` /
    ``query_set`` / ``database_set`` for ``split="retrieval"``), and set the class attributes
    ``augment_flip`` / ``augment_crop_padding`` describing their ``augment=True`` policy.

    Args:
        data_dir: Root folder of the datasets (torchvision layout below it).
        batch_size: Batch size of the train loader.
        eval_batch_size: Batch size of the eval loaders (val/test/query/database); ``None`` = ``batch_size``.
        num_workers: DataLoader worker processes (``0`` = load in the main process).
        download: Let ``prepare_data`` download missing files through torchvision.
        seed: Seed of the split generator and of the train loader's shuffling generator.
        split: ``"standard"`` (train/val/test) or ``"retrieval"`` (train/query/database).
        val_size: Standard split: number of official-train images held out for validation (>= 1).
        num_query: Retrieval split: query set size; ``None`` = the paper default.
        num_database: Retrieval split: database size; ``None`` = the paper default.
        num_train: Retrieval split: train subset size (sampled from the database); ``None`` = paper default.
        augment: Apply the dataset's batched augmentation to training batches (on device).
        pin_memory: DataLoader ``pin_memory``.
    """

    augment_flip: ClassVar[bool] = False
    augment_crop_padding: ClassVar[int] = 0

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
        super().__init__()
        if split not in ("standard", "retrieval"):
            raise ValueError(f"split must be 'standard' or 'retrieval', got {split!r}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch sizes must be >= 1, got {batch_size=}, {eval_batch_size=}")
        if split == "standard" and val_size < 1:
            raise ValueError(f"val_size must be >= 1, got {val_size}")
        for name, value in (
            ("num_query", num_query),
            ("num_database", num_database),
            ("num_train", num_train),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        self.data_dir = os.fspath(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.download = download
        self.seed = seed
        self.split = split
        self.val_size = val_size
        self.num_query = num_query
        self.num_database = num_database
        self.num_train = num_train
        self.augment = augment
        self.pin_memory = pin_memory
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.query_set: Dataset | None = None
        self.database_set: Dataset | None = None
        #: Retrieval split: ``int64`` ``[num_train]`` positions of the train subset inside ``database_set``.
        self.train_in_database: torch.Tensor | None = None
        self._is_setup = False

    # ------------------------------------------------------------------ to implement
    @property
    def num_classes(self) -> int:
        """Number of classes (CelebA: number of chosen attributes ``K``)."""
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images (as the model sees them)."""
        raise NotImplementedError

    def _setup_datasets(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Load the data and build the split (once; later calls are no-ops).

        Args:
            stage: Lightning stage (``fit``/``validate``/``test``/``predict``); all splits are built at once.
        """
        if self._is_setup:
            return
        self._setup_datasets()
        self._is_setup = True

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: Dataset | None, train: bool, name: str) -> DataLoader:
        if dataset is None:
            if not self._is_setup:
                raise RuntimeError(f"{type(self).__name__}: call prepare_data() and setup() before {name}()")
            raise RuntimeError(
                f"{type(self).__name__}: {name}() is not available with split={self.split!r} "
                f"(query/database loaders need split='retrieval', val/test loaders split='standard')"
            )
        # the train loader saves its position in Lightning checkpoints: a mid-epoch resume is exact
        loader_cls = ResumableDataLoader if train else DataLoader
        return loader_cls(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            generator=self._generator() if train else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=getattr(dataset, "collate_fn", None) or default_collate,
        )

    def train_dataloader(self) -> DataLoader:
        """Train loader (shuffled with a generator seeded with ``seed``)."""
        return self._loader(self.train_set, True, "train_dataloader")

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Standard: the val loader. Retrieval: ``[query_loader, database_loader]``."""
        if self.split == "retrieval":
            return [self.query_dataloader(), self.database_dataloader()]
        return self._loader(self.val_set, False, "val_dataloader")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """Standard: the official test set loader. Retrieval: ``[query_loader, database_loader]``."""
        if self.split == "retrieval":
            return [self.query_dataloader(), self.database_dataloader()]
        return self._loader(self.test_set, False, "test_dataloader")

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test loader(s): standard = the official test set, retrieval = ``[query, database]``."""
        return self.test_dataloader()

    def query_dataloader(self) -> DataLoader:
        """Retrieval split only: the query set loader (not shuffled)."""
        return self._loader(self.query_set, False, "query_dataloader")

    def database_dataloader(self) -> DataLoader:
        """Retrieval split only: the database loader (not shuffled)."""
        return self._loader(self.database_set, False, "database_dataloader")

    # ------------------------------------------------------------------ device-side processing
    def augment_images(self, images: torch.Tensor) -> torch.Tensor:
        """Apply this dataset's batched augmentation.

        Args:
            images: ``float32`` ``[B, C, H, W]`` in ``[0, 1]``.

        Returns:
            ``float32`` ``[B, C, H, W]``, randomly flipped (if ``augment_flip``) and cropped from a
            zero-padded copy (if ``augment_crop_padding > 0``).
        """
        if self.augment_flip:
            images = batch_random_hflip(images)
        if self.augment_crop_padding > 0:
            images = batch_random_crop(images, self.augment_crop_padding)
        return images

    def _is_training(self) -> bool:
        trainer = self.trainer
        return bool(trainer is not None and getattr(trainer, "training", False))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Convert ``batch["image"]`` ``uint8`` -> ``float32`` in ``[0, 1]``; augment when training.

        Args:
            batch: Batch dict with ``"image"`` ``uint8`` ``[B, C, H, W]`` (already on the device).
            dataloader_idx: Index of the loader (retrieval: 0 = query, 1 = database).

        Returns:
            A new dict, ``"image"`` ``float32`` ``[B, C, H, W]``; other entries unchanged.
        """
        if not isinstance(batch, dict) or "image" not in batch:
            return batch
        images = batch["image"]
        if not torch.is_floating_point(images):
            images = images.float().div_(255.0)
        if self.augment and self._is_training():
            images = self.augment_images(images)
        return {**batch, "image": images}


# ---------------------------------------------------------------------- split helpers
def random_split_indices(
    n: int, n_first: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``range(n)`` into two disjoint sorted index sets.

    Args:
        n: Number of items.
        n_first: Size of the first part (``0 <= n_first <= n``).
        generator: Seeded generator.

    Returns:
        ``(first, rest)``: ``int64`` ``[n_first]`` and ``[n - n_first]``, each sorted.
    """
    if not 0 <= n_first <= n:
        raise ValueError(f"cannot take {n_first} of {n} items")
    perm = torch.randperm(n, generator=generator)
    return perm[:n_first].sort().values, perm[n_first:].sort().values


def sample_subset(
    pool: torch.Tensor, size: int | None, generator: torch.Generator, what: str
) -> torch.Tensor:
    """Seeded subset of ``pool`` without replacement (``None`` = all of it), sorted.

    Args:
        pool: ``int64`` ``[P]`` candidate indices.
        size: Number to draw, or ``None`` for all.
        generator: Seeded generator.
        what: Name used in the error message (e.g. ``"num_train"``).

    Returns:
        ``int64`` ``[size]`` sorted subset of ``pool``.
    """
    if size is None or size == pool.shape[0]:
        return pool.clone()
    if size > pool.shape[0]:
        raise ValueError(f"{what}={size} exceeds the {pool.shape[0]} available images")
    return pool[torch.randperm(pool.shape[0], generator=generator)[:size]].sort().values
