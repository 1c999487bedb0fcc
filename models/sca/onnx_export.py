"""ONNX export of SCA's client side (encoder, eq. 2's sparse code and the ambiguation of eq. 4), for
on-device use: the data owner encodes and ambiguates on its device and sends only the public code.

ONNX has no random generators worth trusting for this (and none reproducible against PyTorch), so the
randomness is an INPUT of the graph, drawn by the host (:func:`client_noise`):

* ``paper`` mechanism: ``u_ratio [B, maps]`` (the gap ratio ``r`` of ``lambda' = r lambda``), ``u_pos
  [B, maps, L]`` (the noise positions, drawn without replacement with weights ``T_l(lambda')`` by the
  Gumbel-top-k trick: same law as sequential sampling without replacement) and ``u_val [B, maps, L]``
  (the noise values, from the per-position law truncated to ``|v| >= lambda'``). The empirical CDF /
  quantile lookups are comparisons against the quantile tables (no ``searchsorted`` in ONNX);
* ``decoy`` mechanism: ``decoys [B, K, maps * L]`` (K codes the host drew from its secret pool) and
  ``u_order [B, K, maps * L]`` (the order in which their entries are taken): exactly
  :func:`models.sca.ambiguation.decoy_ambiguate` given the same draws.

Outputs: ``public [B, maps * L]`` (what is sent) and ``codes [B, maps * L]`` (the private sparse code,
whose support the data owner keeps).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.onnx_runtime import cpu_session, mean_latency_ms
from models.sca.ambiguation import quantile_grid

__all__ = ["SCAClient", "client_noise", "export_client", "onnx_latency", "onnx_parity"]


def _quantile(table: torch.Tensor, u: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``F^-1(u)`` of piecewise-linear laws: ``table [..., Q]`` quantile rows, ``u [...]``."""
    q = table.shape[-1]
    lo = ((grid <= u.unsqueeze(-1)).sum(-1) - 1).clamp(0, q - 2)
    g_lo, g_hi = grid[lo], grid[lo + 1]
    frac = ((u - g_lo) / (g_hi - g_lo).clamp(min=1e-30)).clamp(0, 1)
    a = table.gather(-1, lo.unsqueeze(-1)).squeeze(-1)
    b = table.gather(-1, (lo + 1).unsqueeze(-1)).squeeze(-1)
    return a + (b - a) * frac


def _cdf(table: torch.Tensor, t: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``F(t)`` of piecewise-linear laws: ``table [..., Q]`` quantile rows, ``t [...]``."""
    q = table.shape[-1]
    idx = (table <= t.unsqueeze(-1)).sum(-1)  # searchsorted(right=True)
    hi = idx.clamp(1, q - 1)
    lo = hi - 1
    a = table.gather(-1, lo.unsqueeze(-1)).squeeze(-1)
    b = table.gather(-1, hi.unsqueeze(-1)).squeeze(-1)
    frac = ((t - a) / (b - a).clamp(min=1e-12)).clamp(0, 1)
    p = grid[lo] + frac * (grid[hi] - grid[lo])
    return torch.where(idx == 0, torch.zeros_like(p), torch.where(idx >= q, torch.ones_like(p), p))


class SCAClient(nn.Module):
    """``image [B, C, H, W] (+ host randomness) -> (public, codes)``, both ``[B, maps * L]`` (eval mode).

    Args:
        model: a trained :class:`models.sca.SCA`.
        sp: ambiguation entries per code map.
        sx: sparsity; ``None`` = the model's.
        mechanism: ``"paper"`` / ``"decoy"``; ``None`` = the model's ``ambiguation``.
        num_decoys: ``K`` decoy codes per image (decoy mechanism); ``None`` = ``4 ceil(sp / sx) + 4``.
            When the K decoys cover fewer than ``sp`` free positions of a code, its public code has fewer
            than ``Sx + Sp`` non-zeros: the host checks the count and draws again (or raises K).
    """

    def __init__(self, model, sp: int, sx: int | None = None, mechanism: str | None = None, num_decoys=None):
        super().__init__()
        hp = model.hparams
        self.sx = int(hp.sx if sx is None else sx)
        model._check_sx(self.sx)
        model._check_sp(sp, self.sx)
        self.sp, self.maps, self.length = int(sp), int(hp.code_maps), int(hp.code_length)
        self.mechanism = hp.ambiguation if mechanism is None else mechanism
        if self.mechanism not in ("paper", "decoy"):
            raise ValueError(f"unknown ambiguation mechanism {self.mechanism!r}; valid: ('paper', 'decoy')")
        self.ternary = bool(hp.ternary)
        self.image_shape = (int(hp.in_chans), *model._image_hw)
        self.num_decoys = int(num_decoys or 4 * math.ceil(max(sp, 1) / self.sx) + 4)
        self.encoder = model.encoder
        self.register_buffer("transform", model.transform.detach().float().clone())
        self.register_buffer("quantiles", model.quantiles.detach().float().clone())
        # the gap-ratio law of codes with exactly sx non-zeros (the only ones this client makes)
        self.register_buffer("ratio_rows", model.ratios.detach().float()[:, self.sx - 1].clone())
        self.register_buffer("threshold", model.threshold.detach().float().clone())
        self.register_buffer("grid", quantile_grid(hp.num_quantiles).float())

    def noise_names(self) -> list[str]:
        return ["u_ratio", "u_pos", "u_val"] if self.mechanism == "paper" else ["decoys", "u_order"]

    def forward(self, image: torch.Tensor, *noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = image.shape[0]
        f = self.encoder(image)
        coeff = torch.einsum("mln,bmn->bml", self.transform, f)
        keep = coeff.abs().topk(self.sx, dim=-1).indices  # eq. (2), as models.sca.transform.sparsify
        codes = coeff * torch.zeros_like(coeff).scatter(-1, keep, torch.ones_like(keep, dtype=coeff.dtype))
        if self.ternary:
            codes = torch.sign(codes)
        if self.sp == 0:
            return codes.flatten(1), codes.flatten(1)
        if self.mechanism == "decoy":
            public = self._decoy(codes, *noise)
        else:
            public = self._paper(codes, *noise)
        return public.reshape(b, -1), codes.reshape(b, -1)

    def _paper(self, codes, u_ratio, u_pos, u_val):
        support = codes != 0
        if self.ternary:
            lam = self.threshold.unsqueeze(0).expand(codes.shape[0], -1)
        else:
            mags = codes.abs().masked_fill(~support, float("inf")).amin(-1)
            rows = self.ratio_rows.unsqueeze(0).expand(codes.shape[0], -1, -1)
            lam = mags * _quantile(rows, u_ratio, self.grid)  # lambda' = r lambda
        lam_l = lam.unsqueeze(-1).expand_as(codes)
        tab = self.quantiles.unsqueeze(0).expand(codes.shape[0], -1, -1, -1)
        below = _cdf(tab, -lam_l, self.grid)
        upper_start = _cdf(tab, lam_l, self.grid)
        above = 1 - upper_start
        total = below + above  # T_l(lambda') = P(|v_l| >= lambda')
        weights = (total.clamp(min=0) + 1e-12).masked_fill(support, 0)
        keys = torch.log(weights) - torch.log(-torch.log(u_pos))  # Gumbel-top-k: without replacement
        positions = keys.topk(self.sp, dim=-1).indices
        u = u_val * total  # eq. (4): v ~ F_l restricted to |v| >= lambda'
        value = torch.where(
            u < below, _quantile(tab, u, self.grid), _quantile(tab, upper_start + u - below, self.grid)
        )
        value = torch.where(value < 0, torch.minimum(value, -lam_l), torch.maximum(value, lam_l))
        value = torch.where(total > 1e-9, value, torch.where(above >= below, lam_l, -lam_l))
        if self.ternary:
            value = torch.where(value < 0, -torch.ones_like(value), torch.ones_like(value))
        return codes.scatter(-1, positions, value.gather(-1, positions))

    def _decoy(self, codes, decoys, u_order):
        b, k = codes.shape[0], decoys.shape[1]
        d = decoys.reshape(b, k, self.maps, self.length)
        u = u_order.reshape(b, k, self.maps, self.length)
        rank = torch.arange(k, dtype=codes.dtype, device=codes.device).view(1, k, 1, 1)
        avail = (d != 0) & (codes == 0).unsqueeze(1)
        key = torch.where(avail, rank + u, torch.full_like(u, float("inf")))
        best, first = key.min(1)  # each position: the first decoy that has it, in the draw order
        value = d.gather(1, first.unsqueeze(1)).squeeze(1)
        value = torch.where(torch.isinf(best), codes, value)  # never overwrite the support
        positions = best.topk(self.sp, dim=-1, largest=False).indices
        return codes.scatter(-1, positions, value.gather(-1, positions))


def client_noise(
    client: SCAClient, batch: int, generator: torch.Generator | None = None, pool: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """The host's random inputs of :class:`SCAClient` for ``batch`` images (in :meth:`noise_names` order).

    For the decoy mechanism the draws are those of :func:`models.sca.ambiguation.decoy_ambiguate` with the
    same generator (per round: a pool row per image, then the entries' order), ``pool [N, maps * L]``.
    """
    maps, length = client.maps, client.length
    if client.mechanism == "paper":
        eps = 1e-7
        u_ratio = torch.rand(batch, maps, generator=generator)
        u_pos = torch.rand(batch, maps, length, generator=generator).clamp(eps, 1 - eps)
        u_val = torch.rand(batch, maps, length, generator=generator)
        return u_ratio, u_pos, u_val
    if pool is None or pool.dim() != 2 or pool.shape[1] != maps * length or not bool((pool != 0).any()):
        raise ValueError(
            f"the decoy client needs the data owner's decoy pool [N, {maps * length}] of real codes, got "
            f"{None if pool is None else tuple(pool.shape)}; pass pool=model.encode(private_images)"
        )
    decoys, order = [], []
    for _ in range(client.num_decoys):
        decoys.append(pool[torch.randint(pool.shape[0], (batch,), generator=generator)])
        order.append(torch.rand(batch, maps, length, generator=generator).flatten(1))
    return torch.stack(decoys, 1).float(), torch.stack(order, 1)


def export_client(client: SCAClient, path: str | Path, opset: int = 17) -> Path:
    """Writes ``client`` to ONNX with a dynamic batch axis (inputs: ``image`` + :meth:`noise_names`)."""
    client = client.eval().cpu()
    dummy = torch.rand(2, *client.image_shape)
    pool = torch.randn(8, client.maps * client.length).sign() if client.mechanism == "decoy" else None
    noise = client_noise(client, 2, torch.Generator().manual_seed(0), pool)
    names = client.noise_names()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {n: {0: "batch"} for n in ["image", *names, "public", "codes"]}
    torch.onnx.export(
        client,
        (dummy, *noise),
        str(path),
        input_names=["image", *names],
        output_names=["public", "codes"],
        dynamic_axes=axes,
        opset_version=opset,
        dynamo=False,
    )
    return path


def onnx_parity(path: str | Path, client: SCAClient, images: torch.Tensor, noise) -> dict[str, float]:
    """onnxruntime vs PyTorch on the same images and randomness: max abs differences of the public codes
    and of the private codes, and the fraction of codes whose public support differs."""
    with torch.no_grad():
        ref_public, ref_codes = client.eval()(images, *noise)
    feeds = {"image": images.numpy().astype(np.float32)}
    feeds |= {n: t.numpy().astype(np.float32) for n, t in zip(client.noise_names(), noise, strict=True)}
    public, codes = cpu_session(path).run(["public", "codes"], feeds)
    support_diff = ((public != 0) != (ref_public.numpy() != 0)).any(1).mean()
    return {
        "public_max_abs_diff": float(np.abs(public - ref_public.numpy()).max()),
        "codes_max_abs_diff": float(np.abs(codes - ref_codes.numpy()).max()),
        "support_mismatch_rate": float(support_diff),
    }


def onnx_latency(
    path: str | Path, client: SCAClient, image_shape, pool=None, runs: int = 200, warmup: int = 20
):
    """Mean onnxruntime CPU latency (one thread) per single image (encode + ambiguate), in milliseconds."""
    feeds = {"image": np.random.default_rng(0).random((1, *image_shape), dtype=np.float32)}
    noise = client_noise(client, 1, torch.Generator().manual_seed(0), pool)
    feeds |= {n: t.numpy().astype(np.float32) for n, t in zip(client.noise_names(), noise, strict=True)}
    return mean_latency_ms(path, feeds, None, runs, warmup)
