"""Mixed precision: Lightning's ``precision="bf16-mixed"`` / ``"16-mixed"`` autocast the model; what must
stay float32 (metrics such as mAP, SSIM, NMSE; losses built on distances, kernels or SSIM; PCA / KDE
statistics) runs inside :func:`float32` on float32 inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["float32"]


@contextlib.contextmanager
def float32() -> Iterator[None]:
    """Turns autocast off (CPU and CUDA) inside the block; cast the inputs with ``.float()`` as well."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        yield
