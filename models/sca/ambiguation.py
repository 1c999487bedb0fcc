"""Ambiguation (eqs. 4-5) and purification of sparse codes.

The public code is ``p = phi(x) (+) n`` (eq. 4): ``Sp`` entries of the complement of the support get
noise. For a curious server not to tell noise from information by value, the noise of one code is drawn
from the distribution of that code's informative entries:

* the informative entries of a code are its ``Sx`` largest magnitudes, i.e. the values with
  ``|v| >= lambda`` (``lambda`` = the code's smallest kept magnitude). For i.i.d. coefficients this is
  exactly the coefficient distribution *truncated to the complement* of ``(-lambda, lambda)``;
* so each noise value is drawn from the empirical distribution of the coefficient at its position
  (a per-position quantile table of ``W x`` over the training set), restricted to ``|v| >= lambda`` of the
  code it goes into: the "complementary truncated Gaussian" of the Geneva code, with the empirical law
  in place of the Gaussian (exact for non-Gaussian coefficients too);
* the truncation point is the code's unseen next magnitude ``lambda' = r lambda`` (``r`` drawn from the
  model's table of gap ratios), not ``lambda`` itself, since the smallest informative entry sits above
  it, not at it;
* the noise positions are drawn without replacement from the complement of the support with
  probability ``P(|v_l| >= lambda')``, the chance that position ``l`` is informative in a code with that
  threshold, so the positions do not give the noise away either.

Ternary codes (values in ``{-1, 0, +1}``) get ``+-1`` noise with the sign probabilities of that same
truncated law at the model's mean threshold.

All randomness comes from an explicit ``torch.Generator`` when one is given.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "ambiguate_codes",
    "check_finite",
    "decoy_ambiguate",
    "empirical_cdf",
    "gap_ratios",
    "match_decoys",
    "quantile_grid",
    "empirical_quantile",
    "purify",
    "sample_complement_tail",
    "value_quantiles",
]


def check_finite(values: Tensor, name: str) -> None:
    """Raises ``ValueError`` when ``values`` holds NaN or infinite entries (they would pass silently)."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        rows = bad.flatten(1).any(1).nonzero().flatten()[:5].tolist() if values.dim() > 1 else []
        raise ValueError(
            f"{name} contain {int(bad.sum())} NaN / infinite entries (first rows {rows}); "
            "fix or drop those inputs before encoding / ambiguating"
        )


def quantile_grid(num_quantiles: int, device=None) -> Tensor:
    """Probabilities ``[Q]`` of the quantile tables: ``0``, ``Phi(z)`` for ``Q - 2`` equally spaced normal
    scores ``z`` in ``[-4, 4]``, and ``1`` (dense in the tails, where the informative entries live)."""
    if num_quantiles < 3:
        return torch.linspace(0, 1, num_quantiles, dtype=torch.float64, device=device)
    z = torch.linspace(-4, 4, num_quantiles - 2, dtype=torch.float64, device=device)
    inner = torch.special.ndtr(z)
    return torch.cat([inner.new_zeros(1), inner, inner.new_ones(1)])


def value_quantiles(values: Tensor, num_quantiles: int) -> Tensor:
    """Per-column quantile table of ``values`` at the probabilities :func:`quantile_grid`.

    Args:
        values: ``[M, D]`` coefficients (one data point per row).
        num_quantiles: ``Q >= 2`` table size (endpoints = min and max).

    Returns:
        ``[D, Q]`` non-decreasing rows.
    """
    if values.shape[0] < 2:
        raise ValueError(f"need at least 2 points to estimate quantiles, got {values.shape[0]}")
    ordered = values.detach().sort(dim=0).values  # [M, D]
    m = ordered.shape[0]
    pos = quantile_grid(num_quantiles, values.device) * (m - 1)
    lo, hi = pos.floor().long(), pos.ceil().long()
    frac = (pos - lo).to(values.dtype)[:, None]
    table = ordered[lo] * (1 - frac) + ordered[hi] * frac  # [Q, D]
    return table.T.contiguous()


def _law_index(table: Tensor, t: Tensor, law: Tensor | None) -> Tensor:
    if law is not None:
        return law.long()
    if t.shape[0] != table.shape[0]:
        raise ValueError(
            f"without law, t needs one row per table row ({table.shape[0]}), got {tuple(t.shape)}"
        )
    return torch.arange(table.shape[0], device=t.device).view(-1, *([1] * (t.dim() - 1))).expand(t.shape)


def empirical_cdf(table: Tensor, t: Tensor, law: Tensor | None = None) -> Tensor:
    """``F(t)`` of the piecewise-linear laws whose quantile rows are ``table``.

    One ``searchsorted`` over all rows at once (each row shifted into its own band), without copying a
    table row per point.

    Args:
        table: ``[P, Q]`` non-decreasing quantile rows (``P`` laws).
        t: points, any shape.
        law: row of ``table`` for each point (shape of ``t``); ``None``: row ``i`` for ``t[i, ...]``.

    Returns:
        Probabilities in ``[0, 1]``, the shape of ``t``.
    """
    law = _law_index(table, t, law)
    q = table.shape[1]
    tab = table.double()
    bound = float(tab.abs().max()) + 1.0
    offsets = torch.arange(tab.shape[0], device=tab.device, dtype=torch.float64) * (2 * bound + 1)
    flat = (tab + offsets[:, None]).reshape(-1)
    tt = t.double().clamp(-bound + 0.5, bound - 0.5)
    idx = torch.searchsorted(flat, (tt + offsets[law]).contiguous(), right=True) - law * q  # in [0, Q]
    hi = idx.clamp(1, q - 1)
    lo = hi - 1
    a, b = tab[law, lo], tab[law, hi]
    frac = ((tt - a) / (b - a).clamp(min=1e-12)).clamp(0, 1)
    grid = quantile_grid(q, tab.device)
    p = grid[lo] + frac * (grid[hi] - grid[lo])
    p = torch.where(idx == 0, torch.zeros_like(p), torch.where(idx >= q, torch.ones_like(p), p))
    return p.to(t.dtype)


def empirical_quantile(table: Tensor, u: Tensor, law: Tensor | None = None) -> Tensor:
    """``F^-1(u)`` of the piecewise-linear laws whose quantile rows are ``table``.

    Args:
        table: ``[P, Q]``.
        u: probabilities in ``[0, 1]``, any shape.
        law: row of ``table`` for each point (shape of ``u``); ``None``: row ``i`` for ``u[i, ...]``.

    Returns:
        Values, the shape of ``u``.
    """
    law = _law_index(table, u, law)
    q = table.shape[1]
    grid = quantile_grid(q, table.device)
    uu = u.double().clamp(0, 1)
    lo = (torch.searchsorted(grid, uu.contiguous(), right=True) - 1).clamp(0, q - 2)
    frac = ((uu - grid[lo]) / (grid[lo + 1] - grid[lo]).clamp(min=1e-300)).clamp(0, 1).to(u.dtype)
    a, b = table[law, lo].to(u.dtype), table[law, lo + 1].to(u.dtype)
    return a + (b - a) * frac


def sample_complement_tail(
    table: Tensor, lam: Tensor, generator: torch.Generator | None = None, law: Tensor | None = None
) -> Tensor:
    """Draws ``v ~ F`` conditioned on ``|v| >= lambda`` (the complement of the truncation interval).

    Args:
        table: ``[P, Q]`` quantile rows of the laws.
        lam: ``[K]`` thresholds (>= 0).
        generator: random source.
        law: ``[K]`` row of ``table`` of each draw; ``None``: ``P = K``, row ``k`` for draw ``k``.

    Returns:
        ``[K]`` values with ``|v| >= lambda``; where the law has no mass beyond ``lambda`` the value is
        ``+-lambda`` with the sign of the law's larger tail.
    """
    law = _law_index(table, lam, law)
    below = empirical_cdf(table, -lam, law)  # mass of v <= -lambda
    upper_start = empirical_cdf(table, lam, law)
    above = 1 - upper_start  # mass of v >= lambda
    total = below + above
    u = torch.rand(lam.shape, generator=generator, device=lam.device, dtype=lam.dtype) * total
    value = torch.where(
        u < below, empirical_quantile(table, u, law), empirical_quantile(table, upper_start + u - below, law)
    )
    # keep the truncation exact where interpolation rounds inside (-lambda, lambda)
    value = torch.where(value < 0, torch.minimum(value, -lam), torch.maximum(value, lam))
    fallback = torch.where(above >= below, lam, -lam)
    return torch.where(total > 1e-9, value, fallback)


def gap_ratios(coefficients: Tensor, num_quantiles: int) -> Tensor:
    """Quantile tables of ``|v|_(s+1) / |v|_(s)`` (next-largest over smallest kept magnitude) for every ``s``.

    Args:
        coefficients: ``[M, maps, L]`` transform coefficients.
        num_quantiles: table size ``Q``.

    Returns:
        ``[maps, L, Q]``; row ``s - 1`` describes sparsity ``s`` (row ``L - 1``, nothing dropped, is 0).
    """
    m, maps, length = coefficients.shape
    mags = coefficients.detach().abs().sort(dim=-1, descending=True).values  # [M, maps, L]
    ratio = mags[..., 1:] / mags[..., :-1].clamp(min=1e-12)  # [M, maps, L - 1]
    table = value_quantiles(ratio.reshape(m, -1), num_quantiles).view(maps, length - 1, num_quantiles)
    return torch.cat([table, table.new_zeros(maps, 1, num_quantiles)], 1)


def ambiguate_codes(
    codes: Tensor,
    sp: int,
    quantiles: Tensor,
    ratios: Tensor,
    generator: torch.Generator | None = None,
    ternary: bool = False,
    threshold: Tensor | None = None,
) -> Tensor:
    """Adds ambiguation noise on ``sp`` positions of the complement of the support of every code map (eq. 4).

    For a code map with ``s`` non-zeros and smallest kept magnitude ``lambda``, the informative entries are
    the coefficients above the (unseen) next magnitude ``lambda' = r lambda``; ``r`` is drawn from the
    model's table of such ratios. Given ``lambda'``, position ``l`` is informative with probability
    ``T_l(lambda') = P(|v_l| >= lambda')`` and then holds a draw of ``v_l`` truncated to
    ``|v_l| >= lambda'``; the noise copies exactly that: positions drawn (without replacement, off the
    support) with weights ``T_l(lambda')``, values from the truncated law of their position.

    Args:
        codes: ``[B, maps, L]`` sparse codes (zeros off the support).
        sp: noise entries per code map, ``0 <= sp <= L - (non-zeros of the map)``.
        quantiles: ``[maps, L, Q]`` per-position quantile tables of the coefficients.
        ratios: ``[maps, L, Q]`` gap-ratio tables (:func:`gap_ratios`).
        generator: random source.
        ternary: codes are ``{-1, 0, +1}``; noise is ``+-1`` (``lambda' = threshold``).
        threshold: ``[maps]`` magnitude threshold of the ternary codes.

    Returns:
        ``[B, maps, L]`` public codes; the support entries are unchanged.
    """
    b, maps, length = codes.shape
    check_finite(codes, "codes")
    if sp == 0:
        return codes.clone()
    support = codes != 0
    count = support.sum(-1)  # [B, maps]
    free = length - count
    if bool((free < sp).any()):
        raise ValueError(
            f"sp={sp} noise entries do not fit: a code map has only {int(free.min())} free positions "
            f"(L - Sx); use sp <= L - Sx"
        )
    dtype = codes.dtype
    tables = quantiles.to(dtype)
    map_id = torch.arange(maps, device=codes.device)
    if ternary:
        lam = threshold.to(dtype)[None].expand(b, maps)
    else:
        mags = codes.abs().masked_fill(~support, float("inf")).amin(-1)
        lam = torch.where(torch.isfinite(mags), mags, torch.zeros_like(mags))  # an empty map: no truncation
        rows = ratios.to(dtype)[map_id[None].expand(b, -1), (count - 1).clamp(min=0)]  # [B, maps, Q]
        u = torch.rand(b * maps, generator=generator, device=codes.device, dtype=dtype)
        lam = lam * empirical_quantile(rows.reshape(b * maps, -1), u).view(b, maps)
    # T_l(lambda') of every position of every code: [B, maps, L]
    tail = torch.stack(
        [
            1
            - empirical_cdf(tables[m], lam[:, m][None].expand(length, -1))
            + empirical_cdf(tables[m], -lam[:, m][None].expand(length, -1))
            for m in range(maps)
        ],
        1,
    ).transpose(0, 2)
    weights = (tail.to(torch.float64).clamp(min=0) + 1e-12).masked_fill(support, 0).reshape(b * maps, length)
    positions = torch.multinomial(weights, sp, replacement=False, generator=generator)  # [B*maps, sp]
    rows_map = map_id.repeat(b)[:, None].expand(-1, sp).reshape(-1)
    law = rows_map * length + positions.reshape(-1)  # row of the flattened [maps * L, Q] tables
    lam_rows = lam.reshape(b * maps)[:, None].expand(-1, sp).reshape(-1)
    noise = sample_complement_tail(tables.reshape(maps * length, -1), lam_rows, generator, law)  # eq. (4)
    if ternary:
        noise = torch.where(noise < 0, -1.0, 1.0).to(dtype)
    public = codes.reshape(b * maps, length).clone()
    public.scatter_(1, positions, noise.reshape(b * maps, sp))
    return public.reshape(b, maps, length)


def decoy_ambiguate(
    codes: Tensor,
    sp: int,
    pool: Tensor,
    generator: torch.Generator | None = None,
    max_rounds: int = 1000,
) -> Tensor:
    """Decoy ambiguation (privzoo's option in place of eq. 4's noise): the ``sp`` entries added off the
    support of a code map are informative entries of OTHER real images' codes.

    Code ``b`` draws decoy codes ``pool[j_1], pool[j_2], ...`` (uniformly, with replacement). Entries
    are taken decoy by decoy (a random order inside each decoy), skipping positions on the code's own
    support or already filled, until ``sp`` positions are filled: for ``sp >= Sx`` the public code is
    the true code superposed with whole decoy codes (the last one partial), a plausible mixture of real
    codes rather than noise a learned decoder can learn to ignore. Values are the decoys' own values, so
    entries of a code whose decoys are known (the pool leaked) are identified by exact matching: the
    pool is the data owner's secret, like the support.

    Args:
        codes: ``[B, maps, L]`` sparse codes (zeros off the support).
        sp: decoy entries per code map, ``0 <= sp <= L - (non-zeros of the map)``.
        pool: ``[N, maps, L]`` sparse codes of real images (the decoy pool; zeros off their supports).
        generator: random source.
        max_rounds: give up after this many decoys per code (a pool too sparse to fill ``sp`` positions).

    Returns:
        ``[B, maps, L]`` public codes; the support entries are unchanged.

    Raises:
        ValueError: no pool, a pool of another code shape, NaN codes, ``sp`` too large for the pool.
    """
    check_finite(codes, "codes")
    b, maps, length = codes.shape
    if pool is None or pool.dim() != 3 or pool.shape[0] == 0 or not bool((pool != 0).any()):
        raise ValueError(
            "decoy ambiguation needs a decoy pool of real codes [N, maps, L] (none given or it is empty); "
            "build one with model.set_decoy_pool(model.encode(training_images)) or pass pool="
        )
    if tuple(pool.shape[1:]) != (maps, length):
        raise ValueError(
            f"the decoy pool holds codes [N, {pool.shape[1]}, {pool.shape[2]}] but the codes are "
            f"[B, {maps}, {length}] (a pool from another model?); rebuild it with this model's encode"
        )
    if sp == 0:
        return codes.clone()
    support = codes != 0
    free = length - support.sum(-1)
    if bool((free < sp).any()):
        raise ValueError(
            f"sp={sp} decoy entries do not fit: a code map has only {int(free.min())} free positions "
            f"(L - Sx); use sp <= L - Sx"
        )
    pool = pool.to(codes.device, codes.dtype)
    key = torch.full(codes.shape, float("inf"), device=codes.device)  # order of filling: round + U(0, 1)
    value = torch.zeros_like(codes)
    rnd = 0
    while rnd < max_rounds and bool((torch.isfinite(key).sum(-1) < sp).any()):
        decoy = pool[torch.randint(pool.shape[0], (b,), generator=generator).to(codes.device)]
        take = (decoy != 0) & ~support & torch.isinf(key)
        u = torch.rand(codes.shape, generator=generator).to(codes.device)
        key = torch.where(take, rnd + u, key)
        value = torch.where(take, decoy, value)
        rnd += 1
    if bool((torch.isfinite(key).sum(-1) < sp).any()):
        raise ValueError(
            f"{max_rounds} decoys did not fill sp={sp} positions off the support: the pool's codes are "
            "informative on too few positions; lower sp or use a larger pool"
        )
    positions = key.topk(sp, dim=-1, largest=False).indices  # the first sp filled positions
    return codes.clone().scatter_(-1, positions, value.gather(-1, positions))


def match_decoys(public: Tensor, pool: Tensor) -> Tensor:
    """What a server holding the decoy pool learns: the entries of ``public`` that are NOT a pool code's
    value at the same position (exact match), i.e. its estimate of the true support.

    Args:
        public: ``[B, maps, L]`` public codes (decoy mechanism).
        pool: ``[N, maps, L]`` the decoy pool (leaked).

    Returns:
        ``[B, maps, L]`` bool, the non-zeros of ``public`` that match no pool entry at their position.
    """
    if tuple(pool.shape[1:]) != tuple(public.shape[1:]):
        raise ValueError(f"pool codes {tuple(pool.shape)} and public codes {tuple(public.shape)} differ")
    keep = public != 0
    _, maps, length = public.shape
    for m in range(maps):
        for pos in range(length):
            values = pool[:, m, pos]
            values = values[values != 0]
            if len(values):
                keep[:, m, pos] &= ~torch.isin(public[:, m, pos], values.to(public.dtype))
    return keep


def purify(public: Tensor, support_mask: Tensor) -> Tensor:
    """Removes the ambiguation noise with the secret support: ``p * 1[support]``.

    Args:
        public: ``[B, D]`` public (ambiguated) codes.
        support_mask: ``[B, D]`` bool, the true support (known to the authorized user).

    Returns:
        ``[B, D]`` the purified codes (equal to the sparse codes when the support is the true one).
    """
    if public.shape != support_mask.shape:
        raise ValueError(
            f"support_mask must have the shape of the public codes {tuple(public.shape)}, "
            f"got {tuple(support_mask.shape)}"
        )
    return torch.where(support_mask.bool(), public, torch.zeros_like(public))
