"""A training DataLoader whose position inside an epoch is saved in Lightning checkpoints.

Lightning saves ``state_dict()`` of every loader that has one (its ``_Stateful`` protocol) with the fit
loop, and calls ``load_state_dict()`` before iterating again when a fit resumes. The state is the
shuffling generator's state at the start of the current epoch plus the number of batches already handed
out (and the generator's current state, for a checkpoint taken after the epoch's last batch), so a
fit killed mid-epoch and resumed from ``last.ckpt`` sees the same batches in the same order as an
uninterrupted one. Skipping re-reads the consumed batches, which is cheap for privzoo's in-memory
datasets. Under DDP Lightning swaps in a ``DistributedSampler`` (shuffled by seed and epoch), and the
skip count alone restores the position.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

__all__ = ["ResumableDataLoader"]


class ResumableDataLoader(DataLoader):
    """``torch.utils.data.DataLoader`` plus ``state_dict``/``load_state_dict`` for mid-epoch resume."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = 0
        self._epoch_generator_state: torch.Tensor | None = None
        self._resume: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        skip = 0
        if self._resume is not None:
            state, self._resume = self._resume, None
            finished = state["batches_done"] >= len(self)
            key = "generator_state_now" if finished else "generator_state"
            if self.generator is not None and state[key] is not None:
                self.generator.set_state(state[key])
            skip = 0 if finished else state["batches_done"]
        self._epoch_generator_state = self.generator.get_state() if self.generator is not None else None
        self._batches_done = 0
        iterator = super().__iter__()
        for _ in range(skip):
            next(iterator)
            self._batches_done += 1
        return self._count(iterator)

    def _count(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator_state": self._epoch_generator_state,  # replays the current epoch's order
            "generator_state_now": self.generator.get_state() if self.generator is not None else None,
            "batches_done": self._batches_done,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict)
