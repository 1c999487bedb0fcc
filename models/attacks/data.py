"""The attacker's own data: training-split rows, split into a fit part and an early-stopping holdout.

Threat-model rule of the harness: an attacker trains only on images it could hold itself, the TRAINING
split, never on the evaluated test images; :func:`check_disjoint` enforces it on row indices of one pool.
"""

from __future__ import annotations

import torch

__all__ = ["attacker_split", "check_disjoint"]


def attacker_split(
    num_pool: int, num_fit: int, num_holdout: int, seed: int = 0, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random disjoint rows ``(fit, holdout)`` of a pool of ``num_pool`` items (sizes capped by the pool).

    Args:
        num_pool: rows available (e.g. the training split's size).
        num_fit: rows the attacker fits on.
        num_holdout: rows it early-stops on.
        seed: permutation seed.
        exclude: rows that must not be used (e.g. evaluated images when pools coincide).
    """
    rows = torch.randperm(num_pool, generator=torch.Generator().manual_seed(seed))
    if exclude is not None:
        rows = rows[~torch.isin(rows, exclude.long())]
    num_holdout = min(num_holdout, max(1, len(rows) // 5))
    num_fit = min(num_fit, len(rows) - num_holdout)
    if num_fit < 1:
        raise ValueError(f"pool of {num_pool} rows is too small for an attacker split")
    return rows[:num_fit].clone(), rows[num_fit : num_fit + num_holdout].clone()


def check_disjoint(**index_sets: torch.Tensor) -> None:
    """``ValueError`` when two named index sets (rows of the same pool) share a row."""
    names = list(index_sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = torch.isin(index_sets[a].long(), index_sets[b].long()).sum()
            if shared:
                raise ValueError(
                    f"{a} and {b} share {int(shared)} rows: the attacker must not see evaluated images"
                )
