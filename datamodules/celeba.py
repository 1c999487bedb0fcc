"""CelebA datamodule with the image-level identity split of the DPFE reference code.

Files are torchvision's ``CelebA`` layout (``split="all"``, ``target_type=["attr", "identity"]``)::

    <data_dir>/celeba/img_align_celeba/000001.jpg ...
    <data_dir>/celeba/{list_attr_celeba,identity_CelebA,list_eval_partition,list_bbox_celeba,
                       list_landmarks_align_celeba}.txt

Their md5 sums are checked against torchvision's ``CelebA.file_list``. CelebA is NOT held in memory:
images are read per sample (PIL), resized (shorter side) and center-cropped to ``image_size`` and
returned as ``uint8`` ``[3, S, S]``, so the batched ``on_after_batch_transfer`` of
:mod:`datamodules.base` applies unchanged.

Split (image level, seeded): identities with fewer than ``min_images_per_identity`` images are dropped;
the images of every remaining identity are shuffled and split into test (``round(test_fraction * n)``,
at least 1), val (``round(val_fraction * n)``, possibly 0) and train (the rest, at least 1), so every
identity of val and test also appears in train. The official ``list_eval_partition.txt`` is ignored.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import CelebA
from torchvision.datasets.utils import calculate_md5

from .base import VisionDataModule
from .errors import DatasetCorruptedError, DatasetNotFoundError

__all__ = ["CELEBA_ATTRIBUTE_NAMES", "CelebADataModule", "CelebAIdentityDataset", "identity_split"]

#: The 40 binary attributes of CelebA, in the official column order of ``list_attr_celeba.txt``.
CELEBA_ATTRIBUTE_NAMES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip

CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
CELEBA_DRIVE_URL = "https://drive.google.com/drive/folders/0B7EVK8r0v71pWEZsZE9oNnFzTm8"


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


class _CheckedCelebA(CelebA):
    """torchvision's CelebA whose annotation parsing errors name the file."""

    def _load_csv(self, filename: str, header: int | None = None) -> Any:
        path = os.path.join(self.root, self.base_folder, filename)
        try:
            return super()._load_csv(filename, header)
        except (ValueError, IndexError, TypeError, UnicodeDecodeError, RuntimeError) as e:
            raise DatasetCorruptedError(f"{path}: cannot parse this CelebA annotation file ({e})") from e


def identity_split(
    identity: torch.Tensor,
    min_images_per_identity: int,
    test_fraction: float,
    val_fraction: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image-level split per identity (DPFE reference code).

    Args:
        identity: ``int64`` ``[N]`` identity of every image.
        min_images_per_identity: Identities with fewer images are dropped (must be >= 2).
        test_fraction: Fraction of each identity's images put in test (at least 1, leaving >= 1 for train).
        val_fraction: Fraction of each identity's images put in val (may round to 0; leaves >= 1 for train).
        generator: Seeded generator.

    Returns:
        ``(train_rows, val_rows, test_rows)``: sorted ``int64`` row indices into ``identity``.
    """
    sorted_ids, order = torch.sort(identity, stable=True)
    _, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    train, val, test = [], [], []
    for rows in torch.split(order, counts.tolist()):
        n = rows.shape[0]
        if n < min_images_per_identity:
            continue
        rows = rows[torch.randperm(n, generator=generator)]
        n_test = min(max(1, round(test_fraction * n)), n - 1)
        n_val = max(0, min(round(val_fraction * n), n - n_test - 1))
        test.append(rows[:n_test])
        val.append(rows[n_test : n_test + n_val])
        train.append(rows[n_test + n_val :])

    def cat(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts).sort().values if parts else torch.zeros(0, dtype=torch.long)

    return cat(train), cat(val), cat(test)


class CelebAIdentityDataset(Dataset):
    """A split of CelebA; samples are dicts (see :mod:`datamodules.base` for the batch format).

    Sample ``i``: ``{"image": uint8 [3, S, S], "label": float32 [K], "index": int64 [] (= i),
    "identity": int64 [] (remapped), "attributes": float32 [40]}``.

    Args:
        base: torchvision ``CelebA`` (``split="all"``) whose transform yields ``uint8`` ``[3, S, S]``.
        rows: ``int64`` ``[M]`` rows of ``base`` in this split.
        identity: ``int64`` ``[len(base)]`` remapped identity of every row (``-1`` = dropped).
        label_columns: Attribute columns (0..39) that make up ``"label"``.
    """

    def __init__(
        self, base: CelebA, rows: torch.Tensor, identity: torch.Tensor, label_columns: list[int]
    ) -> None:
        self.base = base
        self.rows = rows
        self.identity = identity
        self.label_columns = torch.as_tensor(label_columns, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r = int(self.rows[i])
        image, _ = self.base[r]
        attributes = self.base.attr[r].float()
        return {
            "image": image,
            "label": attributes[self.label_columns],
            "index": torch.tensor(int(i)),
            "identity": self.identity[r],
            "attributes": attributes,
        }

    @property
    def identities(self) -> torch.Tensor:
        """``int64`` ``[M]`` remapped identity of every sample of this split."""
        return self.identity[self.rows]


class CelebADataModule(VisionDataModule):
    """CelebA, labels = chosen binary attributes, identity-level closed-set split.

    ``num_classes`` is the number ``K`` of chosen attributes; ``attribute_names`` lists them (the columns
    of ``"label"``); ``all_attribute_names`` the 40 columns of ``"attributes"``; ``num_identities`` the
    identities kept (``"identity"`` is in ``0 .. num_identities - 1``). ``augment=True``: random
    horizontal flip. Only ``split="standard"`` is supported (train / val / test as described in the
    module docstring).

    Args:
        data_dir: Root folder; files live in ``<data_dir>/celeba``.
        batch_size: Train batch size.
        eval_batch_size: Eval batch size (``None`` = ``batch_size``).
        num_workers: DataLoader workers (JPEG decoding happens in them).
        download: Try torchvision's Google Drive download in ``prepare_data`` (often over quota).
        seed: Split / shuffle seed.
        split: Only ``"standard"``.
        attributes: Attribute names forming ``"label"`` (``ValueError`` listing the valid names otherwise).
        image_size: Images are resized (shorter side) and center-cropped to ``image_size x image_size``.
        min_images_per_identity: Identities with fewer images are dropped (>= 2).
        test_fraction: Per-identity fraction of images in test (at least one each).
        val_fraction: Per-identity fraction of images in val (carved like test; may be 0 per identity).
        augment: Batched on-device augmentation of training batches.
        pin_memory: DataLoader ``pin_memory``.
    """

    augment_flip = True
    augment_crop_padding = 0

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        download: bool = True,
        seed: int = 0,
        split: Literal["standard"] = "standard",
        attributes: list[str] = ["Male"],  # noqa: B006 (LightningCLI-friendly list default, copied below)
        image_size: int = 128,
        min_images_per_identity: int = 20,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
        augment: bool = False,
        pin_memory: bool = False,
    ) -> None:
        if split != "standard":
            raise ValueError(f"CelebADataModule supports only split='standard', got {split!r}")
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            download=download,
            seed=seed,
            split="standard",
            augment=augment,
            pin_memory=pin_memory,
        )
        attributes = list(attributes)
        unknown = [a for a in attributes if a not in CELEBA_ATTRIBUTE_NAMES]
        if unknown or not attributes:
            raise ValueError(
                f"unknown CelebA attribute(s) {unknown or '(empty list)'}; "
                f"valid names: {', '.join(CELEBA_ATTRIBUTE_NAMES)}"
            )
        if min_images_per_identity < 2:
            raise ValueError("min_images_per_identity must be >= 2 (one image for train and one for test)")
        if (
            not 0.0 < test_fraction < 1.0
            or not 0.0 <= val_fraction < 1.0
            or test_fraction + val_fraction >= 1.0
        ):
            raise ValueError(
                f"need 0 < test_fraction, 0 <= val_fraction, sum < 1; got {test_fraction}, {val_fraction}"
            )
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.attributes = attributes
        self.image_size = image_size
        self.min_images_per_identity = min_images_per_identity
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction
        self._num_identities: int | None = None
        self.save_hyperparameters()

    @property
    def num_classes(self) -> int:
        """Number ``K`` of chosen attributes (width of ``"label"``)."""
        return len(self.attributes)

    @property
    def attribute_names(self) -> list[str]:
        """Names of the ``K`` chosen attributes, in the column order of ``"label"``."""
        return list(self.attributes)

    @property
    def all_attribute_names(self) -> list[str]:
        """The 40 attribute names, in the column order of ``"attributes"``."""
        return list(CELEBA_ATTRIBUTE_NAMES)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(3, image_size, image_size)``."""
        return (3, self.image_size, self.image_size)

    @property
    def num_identities(self) -> int:
        """Number of identities kept (available after ``setup()``)."""
        if self._num_identities is None:
            raise RuntimeError("num_identities is known after setup()")
        return self._num_identities

    @property
    def base_dir(self) -> str:
        """``<data_dir>/celeba``."""
        return os.path.join(self.data_dir, CelebA.base_folder)

    def _required(self) -> list[tuple[str, str | None]]:
        """``(path, md5)`` of the annotation files and the image folder (md5 ``None``)."""
        files = [
            (os.path.join(self.base_dir, name), md5)
            for _, md5, name in CelebA.file_list
            if os.path.splitext(name)[1] not in (".zip", ".7z")
        ]
        return files + [(os.path.join(self.base_dir, "img_align_celeba"), None)]

    def _missing(self) -> list[str]:
        return [
            p for p, md5 in self._required() if not (os.path.isdir(p) if md5 is None else os.path.isfile(p))
        ]

    def _not_found(self, missing: list[str], cause: str = "") -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"CelebA not found: missing {', '.join(missing)}.{cause}\nTo get it:\n"
            f"  * download img_align_celeba.zip and the Anno/*.txt + Eval/list_eval_partition.txt files "
            f"by hand from the official Google Drive ({CELEBA_DRIVE_URL}, linked from {CELEBA_URL}) "
            f"into {self.base_dir} and unzip img_align_celeba.zip there (torchvision's automatic "
            f"download often hits the Drive quota), or\n"
            f"  * set download=True to try torchvision's download (needs the `gdown` package)"
        )

    def prepare_data(self) -> None:
        """Try torchvision's download if files are missing and ``download=True``.

        Raises:
            DatasetNotFoundError: Naming the missing paths and the manual download procedure.
        """
        missing = self._missing()
        if not missing:
            return
        if not self.download:
            raise self._not_found(missing, " (download=False)")
        try:
            CelebA(self.data_dir, split="all", download=True)
        except Exception as e:
            raise self._not_found(missing, f" torchvision's download failed: {e}") from e

    def _transform(self) -> transforms.Compose:
        return transforms.Compose(
            [
                transforms.Lambda(_to_rgb),
                transforms.Resize(self.image_size),
                transforms.CenterCrop(self.image_size),
                transforms.PILToTensor(),
            ]
        )

    def _load_base(self) -> CelebA:
        missing = self._missing()
        if missing:
            raise self._not_found(missing, " Did prepare_data() run?")
        for path, md5 in self._required():
            if md5 is not None and (actual := calculate_md5(path)) != md5:
                raise DatasetCorruptedError(
                    f"{path}: md5 {actual} != expected {md5} (truncated or corrupt); "
                    f"download it again ({CELEBA_URL})"
                )
        try:
            base = _CheckedCelebA(
                self.data_dir, split="all", target_type=["attr", "identity"], transform=self._transform()
            )
        except DatasetCorruptedError:
            raise
        except Exception as e:
            raise DatasetCorruptedError(
                f"torchvision could not read CelebA from {self.base_dir}: {e!r}"
            ) from e
        attr_file = os.path.join(self.base_dir, "list_attr_celeba.txt")
        names = [n for n in base.attr_names if n]
        if names != list(CELEBA_ATTRIBUTE_NAMES):
            raise DatasetCorruptedError(f"{attr_file}: header does not list the 40 official attribute names")
        n = len(base.filename)
        for what, tensor, fname in (
            ("attribute rows", base.attr, "list_attr_celeba.txt"),
            ("identity rows", base.identity, "identity_CelebA.txt"),
        ):
            if tensor.shape[0] != n:
                raise DatasetCorruptedError(
                    f"{os.path.join(self.base_dir, fname)}: {tensor.shape[0]} {what} but "
                    f"list_eval_partition.txt lists {n} images"
                )
        img_dir = os.path.join(self.base_dir, "img_align_celeba")
        present = set(os.listdir(img_dir))
        absent = [f for f in base.filename if f not in present]
        if absent:
            raise self._not_found(
                [os.path.join(img_dir, f) for f in absent[:5]], f" ({len(absent)} images missing)"
            )
        return base

    def _setup_datasets(self) -> None:
        base = self._load_base()
        identity = base.identity[:, 0].long()
        train, val, test = identity_split(
            identity, self.min_images_per_identity, self.test_fraction, self.val_fraction, self._generator()
        )
        if train.numel() == 0:
            raise ValueError(
                f"no identity has >= min_images_per_identity={self.min_images_per_identity} images"
            )
        if val.numel() == 0:
            raise ValueError(f"val_fraction={self.val_fraction} leaves the val split empty; increase it")
        kept = torch.unique(identity[train])  # sorted original ids
        remap = torch.full_like(identity, -1)
        keep_mask = torch.isin(identity, kept)
        remap[keep_mask] = torch.searchsorted(kept, identity[keep_mask])
        self._num_identities = int(kept.shape[0])
        columns = [CELEBA_ATTRIBUTE_NAMES.index(a) for a in self.attributes]
        self.train_set = CelebAIdentityDataset(base, train, remap, columns)
        self.val_set = CelebAIdentityDataset(base, val, remap, columns)
        self.test_set = CelebAIdentityDataset(base, test, remap, columns)
