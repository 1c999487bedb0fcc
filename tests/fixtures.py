"""Writers of tiny datasets in the OFFICIAL on-disk formats, read back through torchvision's real loaders.

* :func:`write_mnist_idx`: MNIST / Fashion-MNIST IDX files (raw or ``.gz``, like Debian's package).
* :func:`write_cifar10_batches`: CIFAR-10 python pickles (protocol 2, Python-2 ``str`` keys like the
  originals, so ``pickle.load(f, encoding="latin1")`` gives ``"data"`` and ``encoding="bytes"`` gives
  ``b"data"``) + :func:`patch_cifar10_md5`.
* :func:`write_celeba`: CelebA JPEGs and the five annotation text files + :func:`patch_celeba_md5`.
* :func:`write_imagenet_folder`: ILSVRC-2012 ImageFolder layout ``imagenet/{train,val}/<wnid>/*.JPEG``.

Images carry a class-dependent pattern plus noise, so a tiny model can learn something from them.
torchvision checks md5 sums of CIFAR-10 / CelebA files; tests monkeypatch its class attributes with
the md5 sums these writers return (production code keeps the real checks).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
from PIL import Image

from datamodules.celeba import CELEBA_ATTRIBUTE_NAMES

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5sum(path: str | os.PathLike) -> str:
    """Hex md5 of a file."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes).astype(np.uint8)


def class_pattern_images(
    labels: np.ndarray, channels: int, h: int, w: int, rng: np.random.Generator
) -> np.ndarray:
    """Structured uint8 images: a class-dependent bar / blob plus noise.

    Args:
        labels: ``[N]`` class ids.
        channels: ``C``.
        h: Height.
        w: Width.
        rng: numpy generator.

    Returns:
        ``uint8`` ``[N, H, W, C]``.
    """
    n = labels.shape[0]
    img = rng.integers(0, 60, size=(n, h, w, channels)).astype(np.int32)
    for i, c in enumerate(labels.astype(int)):
        r = (c * h) // 10
        img[i, r : r + max(1, h // 8), :, :] += 150  # horizontal bar, row depends on the class
        col = ((9 - c) * w) // 10
        img[i, :, col : col + max(1, w // 10), c % channels] += 100  # vertical bar, column and channel too
    return np.clip(img, 0, 255).astype(np.uint8)


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x0800 | array.ndim  # unsigned byte data
    return struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def write_mnist_idx(
    root_dir: str | os.PathLike, n_train: int, n_test: int, gz: bool = False, seed: int = 0
) -> dict[str, Path]:
    """Write MNIST-format IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` into ``root_dir``.

    Images: magic 2051, big-endian ``[N, 28, 28]``; labels: magic 2049, ``[N]`` (balanced classes).

    Args:
        root_dir: Target folder (e.g. ``<data_dir>/MNIST/raw``, ``<data_dir>/FashionMNIST/raw`` or a fake
            Debian folder with ``gz=True``); created if needed.
        n_train: Number of training images.
        n_test: Number of test images.
        gz: Write gzip-compressed ``.gz`` files (Debian package layout) instead of raw files.
        seed: numpy seed.

    Returns:
        ``{file name without .gz: written path}``.
    """
    root = Path(root_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = _balanced_labels(n, 10, rng)
        images = class_pattern_images(labels, 1, 28, 28, rng)[..., 0]
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = _idx_bytes(array)
            path = root / (name + ".gz" if gz else name)
            if gz:
                with gzip.open(path, "wb") as f:
                    f.write(data)
            else:
                path.write_bytes(data)
            out[name] = path
    return out


# ---------------------------------------------------------------------- CIFAR-10
class _Py2Str(str):
    """Marker: pickle this ``str`` as a Python-2 byte string (SHORT_BINSTRING / BINSTRING)."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler has an extensible dispatch table
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2str(self, obj: _Py2Str) -> None:
        data = obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[_Py2Str] = save_py2str


def _py2(obj: object) -> object:
    if isinstance(obj, str):
        return _Py2Str(obj)
    if isinstance(obj, dict):
        return {_py2(k): _py2(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_py2(v) for v in obj]
    return obj


def _pickle_py2(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(_py2(obj))
    return buf.getvalue()


def write_cifar10_batches(root: str | os.PathLike, n_per_batch: int = 20, seed: int = 0) -> dict[str, str]:
    """Write ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` like the originals.

    Each batch is a protocol-2 pickle of ``{"batch_label", "labels", "data", "filenames"}`` with
    ``data`` ``uint8`` ``[n_per_batch, 3072]`` (channel-major 3x32x32 rows) and balanced labels.

    Args:
        root: Data dir (the ``cifar-10-batches-py`` folder is created in it).
        n_per_batch: Images per batch file (6 files: 5 train, 1 test).
        seed: numpy seed.

    Returns:
        ``{file name: md5}`` for the 7 files (pass to :func:`patch_cifar10_md5`).
    """
    base = Path(root) / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        labels = _balanced_labels(n_per_batch, 10, rng)
        hwc = class_pattern_images(labels, 3, 32, 32, rng)
        data = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)).reshape(n_per_batch, 3072)
        label = "testing batch 1 of 1" if name == "test_batch" else f"training batch {k + 1} of 5"
        entry = {
            "batch_label": label,
            "labels": [int(x) for x in labels],
            "data": data,
            "filenames": [f"fixture_{name}_{i:05d}.png" for i in range(n_per_batch)],
        }
        (base / name).write_bytes(_pickle_py2(entry))
    meta = {"num_cases_per_batch": n_per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072}
    (base / "batches.meta").write_bytes(_pickle_py2(meta))
    return {name: md5sum(base / name) for name in [*names, "batches.meta"]}


def patch_cifar10_md5(monkeypatch, md5s: dict[str, str]) -> None:
    """Make torchvision's ``CIFAR10`` accept the fixture files (``train_list``, ``test_list``, ``meta``).

    Args:
        monkeypatch: pytest's ``monkeypatch`` fixture (restored after the test).
        md5s: ``{file name: md5}`` as returned by :func:`write_cifar10_batches`.
    """
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5s[n]] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5s[n]] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5s[CIFAR10.meta["filename"]]})


# ---------------------------------------------------------------------- CelebA
def write_celeba(
    root: str | os.PathLike,
    n_identities: int = 6,
    images_per_identity: int | Sequence[int] = 5,
    size: tuple[int, int] = (20, 24),
    seed: int = 0,
) -> dict[str, str]:
    """Write a tiny CelebA in torchvision's layout ``<root>/celeba/``.

    Files (official whitespace formats, as parsed by ``torchvision.datasets.CelebA``):
    ``img_align_celeba/000001.jpg ...`` (RGB JPEGs of ``size`` = (W, H)), ``list_attr_celeba.txt``
    (count line, the 40 attribute names, rows ``name  1 -1 ...``), ``identity_CelebA.txt`` and
    ``list_eval_partition.txt`` (``name value``), ``list_bbox_celeba.txt`` (count, ``image_id x_1 y_1
    width height``, rows) and ``list_landmarks_align_celeba.txt`` (count, 10 landmark names, rows).
    Identity ids are non-contiguous (``7 * k + 3``) and images of identities are interleaved; ``Male``
    is constant per identity, other attributes random.

    Args:
        root: Data dir.
        n_identities: Number of identities.
        images_per_identity: Images per identity, or one count per identity.
        size: ``(width, height)`` of the JPEGs.
        seed: numpy seed.

    Returns:
        ``{annotation file name: md5}`` (pass to :func:`patch_celeba_md5`).
    """
    base = Path(root) / "celeba"
    img_dir = base / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = (
        [images_per_identity] * n_identities
        if isinstance(images_per_identity, int)
        else list(images_per_identity)
    )
    if len(counts) != n_identities:
        raise ValueError("images_per_identity must have one count per identity")
    ids = np.concatenate([np.full(c, 7 * k + 3) for k, c in enumerate(counts)])
    ids = ids[rng.permutation(ids.shape[0])]
    n = ids.shape[0]
    male_col = CELEBA_ATTRIBUTE_NAMES.index("Male")
    attrs = rng.choice([-1, 1], size=(n, 40))
    attrs[:, male_col] = np.where((ids // 7) % 2 == 0, 1, -1)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    w, h = size
    images = class_pattern_images((ids // 7) % 10, 3, h, w, rng)
    for name, img in zip(names, images, strict=True):
        Image.fromarray(img, mode="RGB").save(img_dir / name, quality=95)

    def write(fname: str, lines: list[str]) -> None:
        (base / fname).write_text("\n".join(lines) + "\n")

    write(
        "list_attr_celeba.txt",
        [str(n), " ".join(CELEBA_ATTRIBUTE_NAMES)]
        + [f"{nm} " + " ".join(f"{v:2d}" for v in row) for nm, row in zip(names, attrs, strict=True)],
    )
    write("identity_CelebA.txt", [f"{nm} {i}" for nm, i in zip(names, ids, strict=True)])
    write(
        "list_eval_partition.txt",
        [f"{nm} {int(p)}" for nm, p in zip(names, rng.choice(3, size=n), strict=True)],
    )
    bbox = rng.integers(1, 200, size=(n, 4))
    write(
        "list_bbox_celeba.txt",
        [str(n), "image_id x_1 y_1 width height"]
        + [f"{nm} " + " ".join(f"{v:4d}" for v in row) for nm, row in zip(names, bbox, strict=True)],
    )
    marks = rng.integers(60, 160, size=(n, 10))
    landmark_names = " ".join(
        f"{part}_{axis}"
        for part in ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
        for axis in "xy"
    )
    write(
        "list_landmarks_align_celeba.txt",
        [str(n), landmark_names]
        + [f"{nm} " + " ".join(f"{v:4d}" for v in row) for nm, row in zip(names, marks, strict=True)],
    )
    txt = [
        "list_attr_celeba.txt",
        "identity_CelebA.txt",
        "list_bbox_celeba.txt",
        "list_landmarks_align_celeba.txt",
        "list_eval_partition.txt",
    ]
    return {f: md5sum(base / f) for f in txt}


def patch_celeba_md5(monkeypatch, md5s: dict[str, str]) -> None:
    """Make torchvision's ``CelebA`` accept the fixture files (patches ``CelebA.file_list``).

    Args:
        monkeypatch: pytest's ``monkeypatch`` fixture.
        md5s: ``{file name: md5}`` as returned by :func:`write_celeba` (the zip entry is kept as is).
    """
    from torchvision.datasets import CelebA

    monkeypatch.setattr(
        CelebA, "file_list", [(fid, md5s.get(name, md5), name) for fid, md5, name in CelebA.file_list]
    )


# ---------------------------------------------------------------------- ImageNet (ILSVRC-2012 ImageFolder)
def write_imagenet_folder(
    root: str | os.PathLike,
    wnids: Sequence[str],
    n_train: int = 4,
    n_val: int = 2,
    root_name: str = "imagenet",
    seed: int = 0,
) -> dict[str, list[Path]]:
    """Write a tiny ILSVRC-2012 in the ImageFolder layout ``<root>/<root_name>/{train,val}/<wnid>/``.

    Train files are named like the originals (``<wnid>_<n>.JPEG``), val files like the official val images
    (``ILSVRC2012_val_<8 digits>.JPEG``, already sorted into class folders). The JPEGs have varied sizes
    (portrait and landscape, 20..47 px per side) and a class-dependent pattern; the first train image of
    the first class is grayscale (mode ``L``) and the first val image of the last class CMYK, as a few
    real ImageNet JPEGs are.

    Args:
        root: Data dir.
        wnids: The class folder names (WordNet ids), class ``k`` gets pattern ``k``.
        n_train: Train images per class.
        n_val: Val images per class.
        root_name: Folder below ``root``.
        seed: numpy seed.

    Returns:
        ``{"train": [paths], "val": [paths]}`` in writing order.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {"train": [], "val": []}
    val_number = 0
    for part, n in (("train", n_train), ("val", n_val)):
        for k, wnid in enumerate(wnids):
            folder = Path(root) / root_name / part / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(20, 48, size=2))
                pixels = class_pattern_images(np.array([k % 10]), 3, h, w, rng)[0]
                image = Image.fromarray(pixels, mode="RGB")
                if part == "train" and k == 0 and i == 0:
                    image = image.convert("L")
                elif part == "val" and k == len(wnids) - 1 and i == 0:
                    image = image.convert("CMYK")
                if part == "train":
                    path = folder / f"{wnid}_{i + 1}.JPEG"
                else:
                    val_number += 1
                    path = folder / f"ILSVRC2012_val_{val_number:08d}.JPEG"
                image.save(path, format="JPEG", quality=95)
                out[part].append(path)
    return out


def quiet_trainer(**kwargs) -> L.Trainer:
    """A Lightning ``Trainer`` for tests: no logger, checkpoints, progress bar or model summary.

    Args:
        **kwargs: the test's own ``Trainer`` arguments (steps, limits, accelerator, ...).
    """
    return L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
