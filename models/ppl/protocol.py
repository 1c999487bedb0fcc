"""PPL's evaluation protocol (paper, "Results and Discussions"): victims in the four retrieval scenarios.

A victim hashing model (``models.hashing.ADSH`` / ``DSDH``) is trained either on the clean training
data (C) or on the PPL-protected training data (A); it is then evaluated with the query set (test
images) and the database (training images) each in the clean or the protected domain:
``C->C, C->A, A->C, A->A`` (query domain -> database domain), mAP@all of Hamming ranking.

Released images are 8-bit: :func:`protect_uint8` rounds ``z = clip(x + G(x), 0, 1)`` to uint8 *towards
the clean pixel* (``x`` is itself uint8), so ``|z_q - x| <= |z - x|`` per pixel and the l_p budget of
eq. 2 still holds exactly for what is released. :func:`protect_datamodule` swaps a set-up datamodule's
image pool for its protected version, so every split (train, query, database) is drawn from protected
images while indices, labels and the split itself stay the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from models.metrics import hamming_map

__all__ = [
    "SCENARIOS",
    "dataset_pools",
    "hash_images",
    "image_quality",
    "ppl_metrics",
    "victim_metrics",
    "protect_datamodule",
    "protect_uint8",
    "scenario_codes",
    "scenario_maps",
]

#: (name, query domain, database domain); "c" clean, "a" protected
SCENARIOS = (("C->C", "c", "c"), ("C->A", "c", "a"), ("A->C", "a", "c"), ("A->A", "a", "a"))


@torch.no_grad()
def protect_uint8(
    protect: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 1000
) -> torch.Tensor:
    """Protected 8-bit images, rounded towards the clean pixels (budget of eq. 2 kept exactly).

    Args:
        protect: maps float images [b, C, H, W] in [0, 1] to protected ones (e.g. ``PPL.protect``).
        images: uint8 [N, C, H, W] clean images.
        batch_size: images per call of ``protect``.

    Returns:
        uint8 [N, C, H, W] protected images.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    out = torch.empty_like(images)
    for start in range(0, images.shape[0], batch_size):
        x8 = images[start : start + batch_size]
        z = protect(x8.float() / 255).clamp(0, 1)
        delta = z * 255 - x8.float()
        # trunc rounds towards zero, i.e. towards the clean pixel: |x_q - x| <= |z - x|
        out[start : start + batch_size] = (x8.float() + delta.trunc()).clamp(0, 255).to(torch.uint8)
    return out


def dataset_pools(datamodule) -> list:
    """The set-up datasets of a retrieval datamodule that hold images (train / query / database / ...)."""
    names = ("train_set", "val_set", "test_set", "query_set", "database_set")
    return [getattr(datamodule, n) for n in names if getattr(datamodule, n, None) is not None]


def protect_datamodule(
    datamodule, protect: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 1000
) -> dict[int, torch.Tensor]:
    """Replaces the image pool(s) of a set-up in-memory datamodule by their protected versions.

    Every distinct image tensor shared by the splits is protected once; the splits keep their indices.

    Args:
        datamodule: a :class:`datamodules.base.VisionDataModule` whose ``setup`` has run (in-memory
            ``TensorImageDataset`` splits, e.g. MNIST / Fashion-MNIST / CIFAR-10).
        protect: float [b, C, H, W] in [0, 1] -> protected images.
        batch_size: images per call of ``protect``.

    Returns:
        ``{id(clean pool): clean pool}`` -- the original uint8 tensors, to restore or compare.
    """
    datasets = dataset_pools(datamodule)
    if not datasets:
        raise RuntimeError("the datamodule is not set up: call datamodule.setup('fit') first")
    originals: dict[int, torch.Tensor] = {}
    protected: dict[int, torch.Tensor] = {}
    for ds in datasets:
        images = getattr(ds, "images", None)
        if not isinstance(images, torch.Tensor):
            raise TypeError(
                f"{type(ds).__name__} keeps no in-memory image tensor; cannot protect it in place"
            )
        key = id(images)
        if key not in protected:
            originals[key] = images
            protected[key] = protect_uint8(protect, images, batch_size)
        ds.images = protected[key]
    return originals


@torch.no_grad()
def hash_images(
    hash_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 1000
) -> torch.Tensor:
    """Binary codes of uint8 images.

    Args:
        hash_fn: float [b, C, H, W] in [0, 1] -> codes [b, c] in {-1, +1} (e.g. ``victim.hash``).
        images: uint8 [N, C, H, W].
        batch_size: images per call.

    Returns:
        float32 [N, c] codes.
    """
    return torch.cat(
        [hash_fn(images[s : s + batch_size].float() / 255).float() for s in range(0, len(images), batch_size)]
    )


@torch.no_grad()
def scenario_codes(
    hash_fn: Callable[[torch.Tensor], torch.Tensor],
    pool: torch.Tensor,
    protected: torch.Tensor,
    query_idx: torch.Tensor,
    db_idx: torch.Tensor,
    batch_size: int = 1000,
) -> dict[str, torch.Tensor]:
    """Codes of the query and database sets in both domains, the input of :func:`scenario_maps`.

    Args:
        hash_fn: float [b, C, H, W] in [0, 1] -> codes [b, c] in {-1, +1}.
        pool: uint8 [N, C, H, W] clean image pool; protected: its released version, same shape.
        query_idx: [Nq] rows of the query set in the pool; db_idx: [Nd] rows of the database.
        batch_size: images per call of ``hash_fn``.

    Returns:
        ``{"query_c", "query_a", "db_c", "db_a"}`` -> float32 codes.
    """
    codes = {}
    for role, idx in (("query", query_idx), ("db", db_idx)):
        codes[f"{role}_c"] = hash_images(hash_fn, pool[idx], batch_size)
        codes[f"{role}_a"] = hash_images(hash_fn, protected[idx], batch_size)
    return codes


def scenario_maps(
    codes: dict[str, torch.Tensor],
    query_labels: torch.Tensor,
    db_labels: torch.Tensor,
    scenarios: Iterable[tuple[str, str, str]] = SCENARIOS,
) -> dict[str, float]:
    """mAP@all of the four scenarios from precomputed codes.

    Args:
        codes: ``{"query_c", "query_a", "db_c", "db_a"}`` -> codes [N, c] in {-1, +1}.
        query_labels: [Nq] (or multi-hot [Nq, L]).
        db_labels: [Nd] (or [Nd, L]).
        scenarios: (name, query domain, database domain) triples.

    Returns:
        ``{"C->C": map, ...}``.
    """
    return {
        name: float(hamming_map(codes[f"query_{q}"], query_labels, codes[f"db_{d}"], db_labels))
        for name, q, d in scenarios
    }


@torch.no_grad()
def image_quality(clean: torch.Tensor, protected: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """PSNR (dB) and SSIM of protected vs clean uint8 images (torchmetrics, data range 1), image-averaged.

    Args:
        clean: uint8 [N, C, H, W].
        protected: uint8 [N, C, H, W].
        batch_size: images per chunk.

    Returns:
        ``{"psnr": ..., "ssim": ...}``.
    """
    psnr, ssim, n = 0.0, 0.0, 0
    for s in range(0, len(clean), batch_size):
        x, z = clean[s : s + batch_size].float() / 255, protected[s : s + batch_size].float() / 255
        b = x.shape[0]
        psnr += float(peak_signal_noise_ratio(z, x, data_range=1.0, reduction="none", dim=(1, 2, 3)).sum())
        ssim += float(structural_similarity_index_measure(z, x, data_range=1.0, reduction="sum"))
        n += b
    return {"psnr": psnr / n, "ssim": ssim / n}


def _retrieval_datamodule(data_dir: str, datamodule: str):
    from models.zoo import resolve_callable

    dm = resolve_callable(datamodule)(data_dir=data_dir, split="retrieval")
    dm.prepare_data()
    dm.setup("test")
    return dm


@torch.no_grad()
def victim_metrics(victim, data_dir: str, datamodule: str = "datamodules.FashionMNISTDataModule") -> dict:
    """Zoo evaluation of a victim hashing model: clean mAP@all (query = test set, database = train set).

    Args:
        victim: a trained ``models.hashing`` model.
        data_dir: dataset root.
        datamodule: dotted path of the retrieval datamodule class.

    Returns:
        ``{"map_cc": ...}``.
    """
    dm = _retrieval_datamodule(data_dir, datamodule)
    pool = dm.query_set.images
    q = hash_images(victim.hash, pool[dm.query_set.indices])
    d = hash_images(victim.hash, pool[dm.database_set.indices])
    return {"map_cc": float(hamming_map(q, dm.query_set.targets, d, dm.database_set.targets))}


@torch.no_grad()
def ppl_metrics(
    model,
    data_dir: str,
    victims: tuple[str, ...] = ("adsh-fashion-mnist-16bit",),
    datamodule: str = "datamodules.FashionMNISTDataModule",
) -> dict:
    """Zoo evaluation of a PPL model: image quality, surrogate and zoo-victim mAPs in the four scenarios.

    The released (8-bit) protected version of the whole image pool is computed once; every victim (a zoo
    checkpoint name, trained on clean images) is then queried in the four scenarios.

    Args:
        model: a trained :class:`models.ppl.PPL`.
        data_dir: dataset root.
        victims: zoo names of victim hashing models.
        datamodule: dotted path of the retrieval datamodule class.

    Returns:
        ``{"psnr", "ssim", "surrogate_map_cc", ..., "<victim>_map_ca", ...}`` with ``<victim>`` the part of
        the name before the first ``-`` (e.g. ``adsh_map_ca``).
    """
    from models import zoo

    dm = _retrieval_datamodule(data_dir, datamodule)
    pool = dm.query_set.images
    protected = protect_uint8(model.protect, pool)
    q, d = dm.query_set.indices, dm.database_set.indices
    labels = dm.query_set.targets, dm.database_set.targets
    out = image_quality(pool[q], protected[q])
    for prefix, hash_fn in [("surrogate", model.hash)] + [
        (v.split("-")[0], zoo.load(v).hash) for v in victims
    ]:
        codes = scenario_codes(hash_fn, pool, protected, q, d)
        for name, value in scenario_maps(codes, *labels).items():
            out[f"{prefix}_map_{name.replace('->', '').lower()}"] = value
    return out
