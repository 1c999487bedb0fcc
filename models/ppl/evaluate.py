"""PPL's zoo evaluation: image quality and the four scenarios of Table 1 on the real test set.

:func:`zoo_metrics` evaluates a generator against the surrogate and clean-trained zoo victims;
:func:`victim_metrics` evaluates a victim hashing model alone (its clean mAP). Both receive the model and
a retrieval datamodule (query = test set, database = training set) from :func:`models.zoo.evaluate`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from models.metrics import hamming_map, hamming_ndcg
from models.ppl.protocol import (
    hash_images,
    image_quality,
    protect_uint8,
    scenario_codes,
    scenario_maps,
    scenario_ndcgs,
)

__all__ = ["victim_metrics", "zoo_metrics"]


def _setup(datamodule):
    datamodule.prepare_data()
    datamodule.setup("test")
    if getattr(datamodule, "split", None) != "retrieval":
        raise ValueError("PPL's evaluation needs a retrieval datamodule (split='retrieval')")
    return datamodule.query_set, datamodule.database_set


@torch.no_grad()
def victim_metrics(victim, datamodule) -> dict[str, float]:
    """Clean mAP@all and nDCG@100 of a victim hashing model: ``{"map_cc", "ndcg100_cc"}``."""
    query, database = _setup(datamodule)
    pool = query.images
    q, d = hash_images(victim.hash, pool[query.indices]), hash_images(victim.hash, pool[database.indices])
    return {
        "map_cc": float(hamming_map(q, query.targets, d, database.targets)),
        "ndcg100_cc": float(hamming_ndcg(q, query.targets, d, database.targets, k=100)),
    }


@torch.no_grad()
def zoo_metrics(model, datamodule, victims: Mapping[str, torch.nn.Module] = {}) -> dict[str, float]:  # noqa: B006
    """Image quality, surrogate and victim mAPs in the four scenarios of a PPL model.

    The released (8-bit) protected version of the whole image pool is computed once; every victim (trained
    on clean images) is then queried in the four scenarios.

    Args:
        model: a trained :class:`models.ppl.PPL`.
        datamodule: a retrieval datamodule (not set up yet).
        victims: zoo name -> victim hashing model.

    Returns:
        ``{"psnr", "ssim", "surrogate_map_cc", ..., "<victim>_map_ca", ..., "<victim>_ndcg100_ca", ...}``
        with ``<victim>`` the part of the name before the first ``-`` (e.g. ``adsh_map_ca``); nDCG@100 is
        tie-averaged.
    """
    query, database = _setup(datamodule)
    pool = query.images
    protected = protect_uint8(model.protect, pool)
    q, d = query.indices, database.indices
    out = image_quality(pool[q], protected[q])
    hashers = {"surrogate": model.hash} | {name.split("-")[0]: v.hash for name, v in victims.items()}
    for prefix, hash_fn in hashers.items():
        codes = scenario_codes(hash_fn, pool, protected, q, d)
        labels = query.targets, database.targets
        for metric, values in (
            ("map", scenario_maps(codes, *labels)),
            ("ndcg100", scenario_ndcgs(codes, *labels)),
        ):
            for name, value in values.items():
                out[f"{prefix}_{metric}_{name.replace('->', '').lower()}"] = value
    return out
