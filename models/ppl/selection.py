"""Choosing a PPL generator checkpoint honestly: on a validation split, against held-out victims.

The test set (Table 1's query set) never takes part. The validation split is carved from the training
images that the generator did NOT train on (the retrieval split's database minus PPL's ``num_train``
subset): ``num_query`` validation queries and a disjoint validation database of ``num_database`` images.
Held-out victims -- classification-hash nets of the attack harness (:mod:`models.attacks.retrieval`),
architectures the game never played against -- are trained on the clean validation database, and every
candidate checkpoint's released validation images are scored in the four scenarios by them.

Score of a checkpoint (lower = more private): the worst over the victims of the cross-domain mAP ratio
``max(C->A, A->C, A->A) / C->C`` -- the same "cross / clean" ratio the attack harness headlines. Checkpoints
whose released validation queries have SSIM below ``min_ssim`` (the issue's quality floor) are not chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from models.attacks.retrieval import scenario_maps, train_victim
from models.ppl.protocol import PRIVACY_SCENARIOS, image_quality, protect_uint8

__all__ = [
    "PRIVACY_CELLS",
    "checkpoint_score",
    "select_checkpoint",
    "train_selection_victims",
    "validation_split",
]

#: the cells a clean-trained victim should lose on released images (query -> database domain)
PRIVACY_CELLS = PRIVACY_SCENARIOS["C"]


def validation_split(datamodule, num_query: int = 1000, num_database: int = 10000, seed: int = 0) -> dict:
    """Pool rows of a validation split outside the generator's training images and outside the test set.

    Args:
        datamodule: a set-up retrieval datamodule (``query_set``, ``database_set``, ``train_in_database``),
            the one PPL trained with.
        num_query, num_database: sizes of the validation query set and of the (disjoint) validation database.
        seed: seed of the draw.

    Returns:
        ``{"pool": uint8 [N, C, H, W], "labels": [N] (of the pool), "query": rows [num_query],
        "database": rows [num_database]}`` (rows of ``pool``, disjoint from the generator's training rows and
        from each other; the test images are not in the pool's database rows).
    """
    db = datamodule.database_set
    if getattr(datamodule, "train_in_database", None) is None:
        raise RuntimeError("validation_split needs a set-up retrieval datamodule: call setup('fit') first")
    used = torch.zeros(len(db.indices), dtype=torch.bool)
    used[datamodule.train_in_database] = True
    free = db.indices[~used]
    if num_query + num_database > len(free):
        raise ValueError(
            f"the validation split needs {num_query} + {num_database} images but only {len(free)} training "
            "images lie outside the generator's training subset; lower num_query / num_database"
        )
    perm = free[torch.randperm(len(free), generator=torch.Generator().manual_seed(seed))]
    return {
        "pool": db.images,
        "labels": db.labels,
        "query": perm[:num_query].sort().values,
        "database": perm[num_query : num_query + num_database].sort().values,
    }


def train_selection_victims(
    split: dict, archs: Sequence[str] = ("cnn", "mlp"), bits: int = 16, max_epochs: int = 6, seed: int = 0
) -> dict[str, Any]:
    """Held-out victims (harness classification hashes), trained on the clean validation database."""
    rows = split["database"]
    images, labels = split["pool"][rows], split["labels"][rows]
    return {
        arch: train_victim(arch, images, labels, bits, max_epochs=max_epochs, seed=seed)[0] for arch in archs
    }


def checkpoint_score(
    protect: Callable[[torch.Tensor], torch.Tensor], split: dict, victims: dict[str, Any]
) -> dict[str, Any]:
    """Four-scenario mAPs per victim, SSIM / PSNR of the released validation queries and the score."""
    q, d = split["query"], split["database"]
    pool, labels = split["pool"], split["labels"]
    query = {"c": pool[q], "a": protect_uint8(protect, pool[q])}
    database = {"c": pool[d], "a": protect_uint8(protect, pool[d])}
    maps = {
        name: scenario_maps(v.eval().hash, query, database, labels[q], labels[d])
        for name, v in victims.items()
    }
    ratios = {name: max(m[c] for c in PRIVACY_CELLS) / max(m["C->C"], 1e-12) for name, m in maps.items()}
    return {
        "map": maps,
        "ratio": ratios,
        "score": max(ratios.values()),
        "quality": image_quality(query["c"], query["a"]),
    }


def select_checkpoint(
    ckpts: Sequence[str | Path],
    load: Callable[[str | Path], Any],
    split: dict,
    victims: dict[str, Any],
    min_ssim: float = 0.6,
) -> dict[str, Any]:
    """Scores every checkpoint; the chosen one has the lowest score among those with SSIM >= ``min_ssim``.

    Args:
        ckpts: candidate checkpoints (e.g. every 100 steps of one fit, and its final weights).
        load: path -> model with ``protect`` (e.g. ``PPL.load_from_checkpoint``).
        split: :func:`validation_split`; victims: :func:`train_selection_victims`.
        min_ssim: quality floor of the released validation queries.

    Returns:
        ``{"rows": [{"ckpt", "score", "ratio", "map", "quality"}], "chosen": ckpt or None, "min_ssim"}``.
    """
    if not ckpts:
        raise ValueError("no candidate checkpoints to select from")
    rows = []
    for ckpt in ckpts:
        model = load(ckpt).eval()
        rows.append({"ckpt": str(ckpt), **checkpoint_score(model.protect, split, victims)})
    ok = [r for r in rows if r["quality"]["ssim"] >= min_ssim]
    chosen = min(ok, key=lambda r: r["score"])["ckpt"] if ok else None
    return {"rows": rows, "chosen": chosen, "min_ssim": min_ssim}
