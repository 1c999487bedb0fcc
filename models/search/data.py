"""Search benchmark data: SCA public codes of real images replicated with noise; recall against exact search.

A replica of an image is the SCA release of a nearby virtual image: its transform coefficients ``W f``
plus Gaussian noise (``noise`` times each coefficient's standard deviation over the base images), then
sparsified (eq. 2) and ambiguated with fresh noise (eq. 4) exactly as the model does. Replica 0 of each
image is its real code (no added noise), so the first ``N`` database rows are the real release.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["recall_at_k", "replicate_public_codes", "sca_coefficients"]


@torch.no_grad()
def sca_coefficients(model, images: Tensor, batch_size: int = 1000) -> Tensor:
    """``[N, maps, L]`` transform coefficients of ``images`` (uint8 ``[N, C, H, W]`` or floats in [0, 1])."""
    out = []
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size]
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        out.append(model.coefficients(model.features(x)))
    return torch.cat(out) if out else torch.zeros(0, model.hparams.code_maps, model.hparams.code_length)


@torch.no_grad()
def replicate_public_codes(
    model,
    coefficients: Tensor,
    n: int,
    noise: float = 0.1,
    sp: int | None = None,
    sx: int | None = None,
    generator: torch.Generator | None = None,
    chunk: int = 50_000,
    keep_clean: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """``n`` public codes from ``N`` images' coefficients: row ``r * N + i`` is replica ``r`` of image ``i``.

    Args:
        model: an SCA model (its ``ambiguate``, ``sx``, ``hparams.sp`` are used).
        coefficients: ``[N, maps, L]`` from :func:`sca_coefficients`.
        n: rows to make (``>= 1``; may be smaller or larger than ``N``).
        noise: replica noise, in units of each coefficient's standard deviation over the ``N`` images.
        sp: ambiguation entries per map (default: the model's ``sp``).
        sx: sparsity (default: the model's ``sx``).
        generator: random source.
        chunk: rows made at once.
        keep_clean: also return the sparse codes before ambiguation.

    Returns:
        ``(public [n, maps * L] float32, clean [n, maps * L] or None, source [n] image row)``.
    """
    from models.sca.transform import sparsify

    base = coefficients.float()
    if base.dim() != 3 or base.shape[0] < 2:
        raise ValueError(f"coefficients must be [N >= 2, maps, L], got {tuple(base.shape)}")
    if n < 1 or noise < 0:
        raise ValueError(f"need n >= 1 and noise >= 0, got n={n}, noise={noise}")
    sp = int(model.hparams.sp if sp is None else sp)
    sx = int(model.sx if sx is None else sx)
    num = base.shape[0]
    std = base.std(0)
    public = torch.empty(n, base.shape[1] * base.shape[2])
    clean = torch.empty_like(public) if keep_clean else None
    source = torch.arange(n) % num
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(n, start + chunk))
        c = base[rows % num]
        scale = torch.where((rows >= num)[:, None, None], noise, 0.0)  # replica 0 = the real code
        c = c + scale * std * torch.randn(c.shape, generator=generator)
        codes = sparsify(c, sx)  # eq. (2)
        public[rows] = model.ambiguate(codes.flatten(1), sp, generator)  # eq. (4)
        if keep_clean:
            clean[rows] = codes.flatten(1)
    return public, clean, source


def recall_at_k(ids: Tensor, truth: Tensor, k: int = 10) -> float:
    """Mean ``|ids[:, :k] & truth[:, :k]| / k`` (``-1`` ids never match)."""
    a, b = torch.as_tensor(ids)[:, :k], torch.as_tensor(truth)[:, :k]
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{a.shape[0]} result rows but {b.shape[0]} ground-truth rows")
    hit = (a[:, :, None] == b[:, None, :]) & (a[:, :, None] >= 0)
    return float(hit.any(2).sum(1).double().mean() / k)
