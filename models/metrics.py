"""Retrieval metrics for binary (hashing) codes.

The main entry points are :func:`hamming_map` (a functional, exact mean average precision over Hamming
ranking of ``{-1, +1}`` codes), :func:`hamming_ndcg` (nDCG@k of the same ranking, linear gains) and
:class:`HammingMAP` / :class:`HammingNDCG` (the same as ``torchmetrics.Metric`` objects that accumulate
query and database codes, DDP-safe).

Both are computed where the work is: AP and nDCG of a query only depend on its (code, label) pair, and the
database enters through its distinct codes, so queries are deduplicated by (code, label) and the database
is grouped by code; tie-aware values come from per-distance histograms (no sort), index-tie values from
one stable sort per distinct query code. Everything stays on the device of the query codes.

Definitions (``N`` database items, ranking by ascending Hamming distance to the query):

* relevant: the query and the database item share a class id (``[N]`` integer labels) or at least one
  label (``[N, L]`` multi-hot labels).
* ``AP@K = (1 / M_K) * sum_{k <= K, item k relevant} precision@k`` where ``M_K`` is the number of relevant
  items retrieved within the top ``K``; a query with ``M_K = 0`` scores 0. ``K = N`` (``topk=None``) is
  mAP@all, the last database item included.
* ``ties="index"``: items at equal distance are ranked by database index (a stable sort), so the value is
  deterministic and equals the usual per-query ``np.argsort(kind="stable")`` implementation.
* ``ties="average"``: the expected AP over a uniformly random order inside every tie group (tie-aware AP,
  McSherry & Najork, "Computing information retrieval performance measures efficiently in the presence
  of tied scores", ECIR 2008). It only depends on the per-distance counts, so no sort is needed; the
  closed form is documented in :func:`hamming_map`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

__all__ = [
    "HammingMAP",
    "HammingNDCG",
    "hamming_ap",
    "hamming_map",
    "hamming_ndcg",
    "ranked_ndcg",
    "sign_codes",
]

_TIES = ("index", "average")
# Elements (queries x database items) handled per chunk; ~1M keeps the working set of one chunk within
# the CPU caches (measured fastest on 1k x 60k x 16 bits), a larger budget suits accelerators.
_CPU_CHUNK_ELEMENTS = 1 << 20
_ACCEL_CHUNK_ELEMENTS = 1 << 24


# ----------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------
def _check_codes(codes: Tensor, name: str) -> None:
    if not isinstance(codes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dim() != 2:
        raise ValueError(f"{name} must have shape [num_items, bits], got shape {tuple(codes.shape)}")
    if codes.dtype == torch.bool or codes.is_complex():
        raise ValueError(f"{name} must be a float or integer tensor of -1/+1 values, got dtype {codes.dtype}")
    if codes.shape[1] == 0:
        raise ValueError(f"{name} must have at least one bit, got shape {tuple(codes.shape)}")
    if codes.numel() and bool(((codes != 1) & (codes != -1)).any()):
        bad = codes[(codes != 1) & (codes != -1)][0].item()
        raise ValueError(
            f"{name} must contain only -1 and +1 (found {bad!r}); binarise with e.g. "
            "torch.where(x >= 0, 1, -1) rather than torch.sign, which maps 0 to 0"
        )


def _check_labels(labels: Tensor, num: int, name: str) -> None:
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() == 1:
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise ValueError(
                f"{name}: 1-D labels are class ids and must be an integer tensor, got dtype {labels.dtype}"
            )
    elif labels.dim() != 2:
        raise ValueError(
            f"{name} must be class ids [num_items] or multi-hot [num_items, num_labels], "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.shape[0] != num:
        raise ValueError(f"{name} has {labels.shape[0]} rows but the matching codes have {num}")


def sign_codes(x: Tensor) -> Tensor:
    """Binarize to exactly -1/+1 codes (``sign`` with ``0 -> +1``, so every bit is a valid code).

    Args:
        x: ``[..., bits]`` real (or integer) tensor, e.g. tanh outputs of a hashing head.

    Returns:
        Same shape, values in ``{-1, +1}``; floating dtype of ``x`` (float32 for integer input).
    """
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return torch.where(x >= 0, 1.0, -1.0).to(dtype)


def _check_args(
    query_codes: Tensor,
    query_labels: Tensor,
    db_codes: Tensor,
    db_labels: Tensor,
    topk: int | None,
    ties: str,
    cut_name: str = "topk",
) -> None:
    _check_codes(query_codes, "query_codes")
    _check_codes(db_codes, "db_codes")
    if query_codes.shape[1] != db_codes.shape[1]:
        raise ValueError(
            f"query_codes have {query_codes.shape[1]} bits but db_codes have {db_codes.shape[1]}"
        )
    _check_labels(query_labels, query_codes.shape[0], "query_labels")
    _check_labels(db_labels, db_codes.shape[0], "db_labels")
    if query_labels.dim() != db_labels.dim():
        raise ValueError(
            "query_labels and db_labels must be of the same kind (both class ids [N] or both multi-hot "
            f"[N, L]), got shapes {tuple(query_labels.shape)} and {tuple(db_labels.shape)}"
        )
    if query_labels.dim() == 2 and query_labels.shape[1] != db_labels.shape[1]:
        raise ValueError(
            f"multi-hot query_labels have {query_labels.shape[1]} labels but db_labels have "
            f"{db_labels.shape[1]}"
        )
    if ties not in _TIES:
        raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk <= 0):
        raise ValueError(f"{cut_name} must be a positive int or None (all of the database), got {topk!r}")
    if query_codes.shape[0] == 0:
        raise ValueError("no queries: query_codes is empty")
    if db_codes.shape[0] == 0:
        raise ValueError("empty database: db_codes is empty")


# ----------------------------------------------------------------------------------------------------
# grouping: queries by (code, label), the database by code and by (code, label)
# ----------------------------------------------------------------------------------------------------
def _small_int_dtype(max_value: int) -> torch.dtype:
    if max_value < 2**15:
        return torch.int16
    if max_value < 2**31:
        return torch.int32
    return torch.int64


def _unique_codes(codes: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct rows of ``[N, bits]`` -1/+1 codes: ``(codes [G, bits] float32 -1/+1, inverse [N] int64)``.

    Up to 62 bits a code is packed into one int64 (a 1-D ``unique``, much faster than ``unique(dim=0)``).
    """
    bits = codes.shape[1]
    positive = codes > 0
    if bits <= 62:
        shifts = torch.arange(bits, device=codes.device, dtype=torch.int64)
        uniq, inverse = torch.unique(_packed(codes), return_inverse=True)
        unpacked = (uniq.unsqueeze(1) >> shifts) & 1
        return unpacked.to(torch.float32).mul_(2).sub_(1), inverse
    uniq, inverse = torch.unique(positive.to(torch.uint8), dim=0, return_inverse=True)
    return uniq.to(torch.float32).mul_(2).sub_(1), inverse


@dataclass
class _Groups:
    """Queries deduplicated by (code, label) -- "pairs" -- and the database grouped by code.

    AP and nDCG of a query only depend on its pair; the database enters through its distinct codes
    (``g_*``), its (code, label) groups (``j_*``) and, for ``ties="index"``, each item's code and label.
    A "label" is a class id, or for multi-hot labels a distinct label set (``label_sets``).
    """

    bits: int
    q_codes: Tensor  # [U, bits] float32 distinct query codes
    pair_code: Tensor  # [P] int64 index into q_codes, non-decreasing
    pair_label: Tensor  # [P] int64 label id
    q_pair: Tensor  # [Q] int64 pair of every query
    g_codes: Tensor  # [G, bits] float32 distinct database codes
    g_count: Tensor  # [G] float64 items per distinct code
    db_group: Tensor  # [N] int64 code group of every item
    db_label: Tensor  # [N] int64 label id of every item
    j_group: Tensor  # [J] int64 code group of every (code, label) group, sorted by label then code
    j_label: Tensor  # [J] int64
    j_count: Tensor  # [J] float64 items per (code, label) group
    label_count: Tensor  # [num_labels] float64 database items per label id
    num_labels: int
    label_sets: Tensor | None  # [num_labels, L] float32 0/1 label sets (multi-hot), None for class ids

    @property
    def num_db(self) -> int:
        return self.db_group.shape[0]


def _group(query_codes: Tensor, query_labels: Tensor, db_codes: Tensor, db_labels: Tensor) -> _Groups:
    device = query_codes.device
    db_codes, db_labels, query_labels = db_codes.to(device), db_labels.to(device), query_labels.to(device)
    q_codes, q_code_id = _unique_codes(query_codes)
    g_codes, db_group = _unique_codes(db_codes)
    num_q = query_codes.shape[0]
    if query_labels.dim() == 1:
        label_sets = None
        _, label_id = torch.unique(torch.cat([query_labels, db_labels]).to(torch.int64), return_inverse=True)
    else:
        both = torch.cat([query_labels != 0, db_labels != 0]).to(torch.uint8)
        sets, label_id = torch.unique(both, dim=0, return_inverse=True)
        label_sets = sets.to(torch.float32)
    q_label, db_label = label_id[:num_q], label_id[num_q:]
    num_labels = int(label_id.max().item()) + 1
    pairs, q_pair = torch.unique(q_code_id * num_labels + q_label, return_inverse=True)
    num_groups = g_codes.shape[0]
    j_key, j_count = torch.unique(db_label * num_groups + db_group, return_counts=True)
    return _Groups(
        bits=query_codes.shape[1],
        q_codes=q_codes,
        pair_code=pairs // num_labels,
        pair_label=pairs % num_labels,
        q_pair=q_pair,
        g_codes=g_codes,
        g_count=torch.bincount(db_group, minlength=num_groups).to(torch.float64),
        db_group=db_group,
        db_label=db_label,
        j_group=j_key % num_groups,
        j_label=j_key // num_groups,
        j_count=j_count.to(torch.float64),
        label_count=torch.bincount(db_label, minlength=num_labels).to(torch.float64),
        num_labels=num_labels,
        label_sets=label_sets,
    )


def _hamming(a: Tensor, b: Tensor, row_offset: int = 0, dtype: torch.dtype = torch.int64) -> Tensor:
    """Hamming distances ``[A, B]`` (int64) of -1/+1 float32 codes ``a [A, bits]`` and ``b [B, bits]``.

    ``a @ b.T`` of exact +-1 floats is an exact integer (also under TF32 or reduced-precision matmul
    inputs), and ``d = (bits - a . b) / 2``. With ``row_offset = m > 0`` row ``i`` gets ``i * m`` added
    (histogram keys, folded into the same ``addmm``; exact while the keys stay below ``2**24``). ``dtype``:
    the integer type of the result.
    """
    bias = torch.full((1, 1), a.shape[1] / 2, device=a.device)
    if row_offset:
        bias = bias + torch.arange(a.shape[0], device=a.device, dtype=torch.float32).unsqueeze(1) * row_offset
    return torch.addmm(bias, a, b.T, alpha=-0.5).to(dtype)


def _stable_argsort_rows(keys: Tensor, num_values: int) -> Tensor:
    """Stable argsort of every row of ``keys [R, N]`` (integers in ``[0, num_values)``); ``[R, N]`` int64.

    On CPU numpy's stable argsort of 8/16-bit integers is a radix sort (~4x faster than ``torch.sort``);
    elsewhere one ``torch.sort`` of the flattened rows (row offsets keep the rows apart).
    """
    rows, width = keys.shape
    if keys.device.type == "cpu" and num_values <= 2**16:
        small = keys.to(torch.uint8 if num_values <= 2**8 else torch.int32).numpy()
        small = small if num_values <= 2**8 else small.astype(np.uint16)
        return torch.from_numpy(np.argsort(small, axis=1, kind="stable"))
    offset = torch.arange(rows, device=keys.device).unsqueeze(1)
    flat = (keys + offset * num_values).view(-1).to(_small_int_dtype(rows * num_values))
    return torch.sort(flat, stable=True).indices.view(rows, width) - offset * width


def _label_table(grp: _Groups, pairs: Tensor, kind: str) -> Tensor:
    """Multi-hot only: ``[Pc, num_labels]`` float64 relevance (``kind="rel"``: 0/1, at least one shared
    label) or gain (``kind="gain"``: the number of shared labels) of the given pairs against every label
    set."""
    assert grp.label_sets is not None
    shared = (grp.label_sets[grp.pair_label[pairs]] @ grp.label_sets.T).round_()  # exact small integers
    return (shared > 0.5).to(torch.float64) if kind == "rel" else shared.to(torch.float64)


def _key_rows(bins: int, rows: int) -> int:
    """``rows`` capped so that the float32 histogram keys ``row * bins + d`` stay exact (``< 2**24``)."""
    return max(1, min(rows, 2**24 // bins - 1))


def _weighted_histogram(keys: Tensor, weights: Tensor, bins: int) -> Tensor:
    """``out[i, d] = sum_j weights[i, j] [keys[i, j] == i * bins + d]`` for ``keys, weights [R, C]``
    (``keys`` from ``_hamming(..., row_offset=bins)``); ``[R, bins]`` float64."""
    rows = keys.shape[0]
    return torch.bincount(keys.view(-1), weights=weights.reshape(-1), minlength=rows * bins).view(rows, bins)


def _count_histogram(keys: Tensor, counts: Tensor, bins: int) -> Tensor:
    """``_weighted_histogram`` with column weights, ``out[i, d] = sum_j counts[j] [keys[i, j] == i * bins
    + d]``, for ``counts [C]`` positive integer-valued float64; ``[R, bins]`` float64.

    Most distinct codes of spread-out data hold one item: an unweighted count of every column plus a
    weighted one of the columns holding several items (weight ``count - 1``) is ~2x cheaper than one
    weighted pass over all of them.
    """
    rows = keys.shape[0]
    multi = (counts > 1).nonzero().squeeze(1)
    if 2 * multi.numel() > counts.numel():
        return _weighted_histogram(keys, counts.expand(rows, -1), bins)
    out = torch.bincount(keys.view(-1), minlength=rows * bins).view(rows, bins).to(torch.float64)
    if multi.numel():
        extra = (counts[multi] - 1).expand(rows, -1)
        out += _weighted_histogram(keys.index_select(1, multi), extra, bins)
    return out


def _packed(codes: Tensor) -> Tensor:
    """``[A]`` int64 key ``sum_b [code_b > 0] 2^b`` of ``[A, bits]`` -1/+1 codes (``bits <= 62``)."""
    shifts = torch.arange(codes.shape[1], device=codes.device, dtype=torch.int64)
    return ((codes > 0).to(torch.int64) << shifts).sum(1)


def _walsh_hadamard(x: Tensor) -> Tensor:
    """Unnormalised Walsh-Hadamard transform along the last dimension (length ``2**b``), exact in int64."""
    size = x.shape[-1]
    half = 1
    while half < size:
        y = x.reshape(*x.shape[:-1], size // (2 * half), 2, half)
        x = torch.stack([y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]], dim=-2).reshape(x.shape)
        half *= 2
    return x


def _distance_counts_wht(grp: _Groups) -> Tensor:
    """Items at every Hamming distance from every distinct query code, ``[U, bits + 1]`` float64.

    MacWilliams identity: with ``f`` the database's count per code and ``F`` its Walsh-Hadamard
    transform, ``n_d(u) = 2^-b WHT(F(w) K_d(|w|))(u)``, ``K_d`` the Krawtchouk polynomials. ``bits + 2``
    transforms of length ``2^bits`` give the counts for every possible query code at once; exact in int64.
    """
    bits, device = grp.bits, grp.g_codes.device
    size = 1 << bits
    f = torch.zeros(size, device=device, dtype=torch.int64)
    f[_packed(grp.g_codes)] = grp.g_count.to(torch.int64)
    big_f = _walsh_hadamard(f)
    w = torch.arange(bits + 1)
    # K_d(w) = sum_j (-1)^j C(w, j) C(bits - w, d - j), small exact integers (computed in python)
    kraw = torch.tensor(
        [
            [
                sum((-1) ** j * math.comb(wi, j) * math.comb(bits - wi, d - j) for j in range(d + 1))
                for wi in w.tolist()
            ]
            for d in range(bits + 1)
        ],
        dtype=torch.int64,
        device=device,
    )  # [bins, bins]
    weight = (
        (torch.arange(size, device=device).unsqueeze(1) >> torch.arange(bits, device=device))
        .bitwise_and_(1)
        .sum(1)
    )
    counts = _walsh_hadamard(big_f.unsqueeze(0) * kraw[:, weight]) >> bits  # [bins, 2^bits]
    return counts[:, _packed(grp.q_codes)].T.to(torch.float64)


def _distance_histograms(grp: _Groups, kind: str, budget: int) -> tuple[Tensor, Tensor]:
    """Per-pair, per-distance counts: ``n [P, bits + 1]`` (all items at Hamming distance d) and ``w [P,
    bits + 1]`` (relevant items for ``kind="rel"``, summed gains for ``kind="gain"``), both float64.

    ``n`` comes from the distinct query codes against the distinct database codes; ``w`` from each pair
    against the (code, label) groups it can match: for class ids only those of its own class.
    """
    bins = grp.bits + 1
    num_pairs, device = grp.pair_code.shape[0], grp.g_codes.device
    num_codes, num_groups = grp.q_codes.shape[0], grp.g_codes.shape[0]
    if grp.bits <= 18 and (grp.bits + 2) * grp.bits << grp.bits < num_codes * num_groups:
        # many distinct codes on both sides: cheaper for all 2^bits query codes at once (<= 40 MB at 18 bits)
        n_code = _distance_counts_wht(grp)
    else:
        n_code = torch.empty(num_codes, bins, device=device, dtype=torch.float64)
        step = _key_rows(bins, budget // num_groups)
        for i in range(0, num_codes, step):
            d = _hamming(grp.q_codes[i : i + step], grp.g_codes, bins, torch.int32)
            n_code[i : i + d.shape[0]] = _count_histogram(d, grp.g_count, bins)
    w = torch.zeros(num_pairs, bins, device=device, dtype=torch.float64)
    j_codes = grp.g_codes[grp.j_group]
    if grp.label_sets is None:
        # class ids: a pair only meets the (code, label) groups of its class, one contiguous run of j
        j_bounds = torch.bincount(grp.j_label, minlength=grp.num_labels).cumsum(0).tolist()
        order = torch.argsort(grp.pair_label, stable=True)
        p_sizes = torch.bincount(grp.pair_label, minlength=grp.num_labels).tolist()
        p_start = 0
        for label, size in enumerate(p_sizes):
            j0, j1 = (j_bounds[label - 1] if label else 0), j_bounds[label]
            pairs = order[p_start : p_start + size]
            p_start += size
            if size == 0 or j1 == j0:
                continue
            step = _key_rows(bins, budget // (j1 - j0))
            for i in range(0, size, step):
                rows = pairs[i : i + step]
                d = _hamming(grp.q_codes[grp.pair_code[rows]], j_codes[j0:j1], bins, torch.int32)
                w[rows] = _count_histogram(d, grp.j_count[j0:j1], bins)
    else:
        num_j = j_codes.shape[0]
        step = _key_rows(bins, budget // num_j)
        for i in range(0, num_pairs, step):
            rows = torch.arange(i, min(i + step, num_pairs), device=device)
            d = _hamming(grp.q_codes[grp.pair_code[rows]], j_codes, bins)
            table = _label_table(grp, rows, kind).gather(1, grp.j_label.expand(rows.shape[0], -1))
            w[rows] = _weighted_histogram(d, table * grp.j_count, bins)
    return n_code[grp.pair_code], w


def _index_pass(
    grp: _Groups, k: int, kind: str, budget: int, reduce: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """Rank the database by (Hamming distance, index) once per distinct query code and reduce every pair.

    ``reduce(values, pairs)`` gets the ``[Pc, k]`` relevance (bool, class ids / ``kind="rel"``) or gain
    (float64, multi-hot ``kind="gain"``) of the top-``k`` ranked items of the pairs ``pairs`` and returns
    ``[Pc]`` float64. Returns ``[P]`` float64.
    """
    bins, num_db, device = grp.bits + 1, grp.num_db, grp.g_codes.device
    num_codes, num_pairs = grp.q_codes.shape[0], grp.pair_code.shape[0]
    step = max(1, budget // num_db)
    pair_bounds = [0] + torch.bincount(grp.pair_code, minlength=num_codes).cumsum(0).tolist()
    label_dtype = _small_int_dtype(grp.num_labels)
    db_label = grp.db_label.to(label_dtype)
    # the per-item arrays are the bulk of the work: keep them small (uint8 distances up to 255 bits)
    dist_dtype = torch.uint8 if bins <= 2**8 else _small_int_dtype(bins)
    out = torch.zeros(num_pairs, device=device, dtype=torch.float64)
    # spread-out codes (most groups of one item): a matrix product against every item is cheaper than
    # gathering the per-group distances item by item
    item_codes = grp.g_codes[grp.db_group] if 2 * grp.g_codes.shape[0] > num_db else None
    for u0 in range(0, num_codes, step):
        u1 = min(u0 + step, num_codes)
        if item_codes is None:
            dist = _hamming(grp.q_codes[u0:u1], grp.g_codes, dtype=dist_dtype).index_select(1, grp.db_group)
        else:
            dist = _hamming(grp.q_codes[u0:u1], item_codes, dtype=dist_dtype)
        # stable: database-index order is kept inside every tie group
        order = _stable_argsort_rows(dist, bins)[:, :k]
        # [rows, k] label id at every rank (a flat index_select: ~4x faster than advanced indexing on CPU)
        ranked = db_label.index_select(0, order.reshape(-1)).view(order.shape)
        p0, p1 = pair_bounds[u0], pair_bounds[u1]
        p_step = max(1, budget // k)
        for i in range(p0, p1, p_step):
            pairs = torch.arange(i, min(i + p_step, p1), device=device)
            if p1 - p0 == u1 - u0:  # one pair per code: the rows are the pairs already
                labels = ranked[i - p0 : i - p0 + pairs.shape[0]]
            else:
                labels = ranked.index_select(0, grp.pair_code[pairs] - u0)
            if grp.label_sets is None:
                values = labels == grp.pair_label[pairs].to(label_dtype).unsqueeze(1)
            else:
                values = _label_table(grp, pairs, kind).gather(1, labels.long())
                values = values > 0.5 if kind == "rel" else values
            out[pairs] = reduce(values, pairs)
    return out


def _ap_of_ranked(rel: Tensor, pairs: Tensor) -> Tensor:
    """AP of ``[Pc, k]`` bool relevance in rank order: ``(1/M) sum_m m / rank_m`` over the relevant ranks."""
    hit = rel.nonzero()  # [M, 2] (row, column), row-major: columns ascend within a row
    found = torch.bincount(hit[:, 0], minlength=rel.shape[0])  # (cheaper than a sum over the bool rows)
    start = found.cumsum(0) - found
    m = torch.arange(1, hit.shape[0] + 1, device=rel.device) - start[hit[:, 0]]
    terms = m.to(torch.float64) / (hit[:, 1] + 1).to(torch.float64)
    total = torch.zeros(rel.shape[0], device=rel.device, dtype=torch.float64).index_add_(0, hit[:, 0], terms)
    return torch.where(found > 0, total / found.clamp(min=1), torch.zeros_like(total))


def _ap_from_counts(nd: Tensor, r: Tensor, k: int, harmonic: Tensor) -> Tensor:
    """Tie-aware (expected) AP@k from per-distance counts ``nd, r [P, bits + 1]`` (float64); ``[P]``."""
    s = nd.cumsum(1) - nd  # items ranked before the group          [P, G]
    r_prev = r.cumsum(1) - r  # relevant items ranked before the group  [P, G]
    hs = harmonic[s.long()]

    def group_sum(c: Tensor, x: Tensor, nz: Tensor) -> Tensor:
        # (x/c) * sum_{u=1..c} (r_prev + 1 + (u-1)(x-1)/(c-1)) / (s+u)
        #   = (x/c) * ((r_prev + 1) * H1 + (x-1)/(c-1) * H2),  H1 = H(s+c) - H(s),  H2 = c - (s+1) H1
        h1 = harmonic[(s + c).long()] - hs
        h2 = c - (s + 1) * h1
        c_safe = c.clamp(min=1)
        pair = torch.where(c > 1, (x - 1) / (c - 1).clamp(min=1), torch.zeros_like(c))
        return torch.where(nz, (x / c_safe) * ((r_prev + 1) * h1 + pair * h2), torch.zeros_like(c))

    full = s + nd <= k
    contrib = group_sum(nd, r, (nd > 0) & full)
    ap_sum = contrib.sum(1)
    found = (r * full).sum(1)  # relevant items in the groups wholly inside the top k
    ap = torch.where(found > 0, ap_sum / found.clamp(min=1), torch.zeros_like(ap_sum))

    # A tie group cut by the rank-k boundary: it takes c = k - s of its n positions, and the number X of
    # relevant items among them is hypergeometric(n, r, c). AP@k = E[(S_prev + T) / (R_prev + X)], with T
    # the cut group's precision sum, so condition on X = x (the relevant positions are then a uniform
    # x-subset of the c positions): E[T | x] = group_sum(c, x).
    cut = (s < k) & (s + nd > k)
    rows = cut.any(1).nonzero().squeeze(1)
    if rows.numel():
        g = cut[rows].to(torch.int8).argmax(1)

        def pick(t: Tensor) -> Tensor:
            return t[rows, g].unsqueeze(1)

        n_c, r_c, s_c, rp_c = pick(nd), pick(r), pick(s), pick(r_prev)
        c = k - s_c
        x_lo = (c - (n_c - r_c)).clamp(min=0)
        x_hi = torch.minimum(r_c, c)
        x = torch.arange(int(x_hi.max().item()) + 1, device=nd.device, dtype=torch.float64).unsqueeze(0)
        valid = (x >= x_lo) & (x <= x_hi)
        xv = torch.where(valid, x, x_lo)  # keep lgamma arguments in range; masked below

        def lfact(t: Tensor) -> Tensor:
            return torch.lgamma(t + 1)

        logp = (
            lfact(r_c)
            - lfact(xv)
            - lfact(r_c - xv)
            + lfact(n_c - r_c)
            - lfact(c - xv)
            - lfact(n_c - r_c - c + xv)
            - lfact(n_c)
            + lfact(c)
            + lfact(n_c - c)
        )
        p = torch.where(valid, torch.exp(logp), torch.zeros_like(logp))
        p = p / p.sum(1, keepdim=True)
        h1 = harmonic[(s_c + c).long()] - harmonic[s_c.long()]
        h2 = c - (s_c + 1) * h1
        pair = torch.where(c > 1, (x - 1) / (c - 1).clamp(min=1), torch.zeros_like(x))
        t = (x / c) * ((rp_c + 1) * h1 + pair * h2)
        denom = rp_c + x
        num = ap_sum[rows].unsqueeze(1) + t
        val = torch.where(denom > 0, num / denom.clamp(min=1), torch.zeros_like(num))
        ap = ap.index_copy(0, rows, (p * val).sum(1))
    return ap


def _budget(device: torch.device, chunk_size: int | None, num_db: int) -> int:
    """Elements (query codes x database items) per chunk: ``chunk_size * N``, or ~1M on CPU / ~16M on
    accelerators."""
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(
                f"chunk_size must be a positive int or None (chosen from the sizes), got {chunk_size!r}"
            )
        return chunk_size * num_db
    return _CPU_CHUNK_ELEMENTS if device.type == "cpu" else _ACCEL_CHUNK_ELEMENTS


def hamming_ap(
    query_codes: Tensor,
    query_labels: Tensor,
    db_codes: Tensor,
    db_labels: Tensor,
    topk: int | None = None,
    ties: str = "index",
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Per-query average precision over Hamming ranking; see :func:`hamming_map` for the definitions.

    The work is done once per distinct (query code, query label) pair, against the distinct database
    codes: ``ties="average"`` only needs per-distance counts (two weighted histograms, no sort);
    ``ties="index"`` sorts the database once per distinct query code (a stable radix sort by distance)
    and reads every pair's relevant ranks from that order. Everything runs on the device of
    ``query_codes``.

    Args:
        query_codes: ``[Q, bits]`` float or integer tensor of -1/+1.
        query_labels: ``[Q]`` integer class ids or ``[Q, L]`` multi-hot (nonzero = label present).
        db_codes: ``[N, bits]`` float or integer tensor of -1/+1.
        db_labels: ``[N]`` or ``[N, L]``, the same kind as ``query_labels``.
        topk: rank cut ``K`` (AP@K); ``None`` (or ``K >= N``) ranks the whole database.
        ties: ``"index"`` (ties broken by database index) or ``"average"`` (tie-aware expected AP).
        chunk_size: distinct query codes per chunk (memory ``O(chunk_size * N)``); default picks ~1M
            pairs per chunk on CPU, ~16M on accelerators.

    Returns:
        ``[Q]`` float64 tensor, on the device of ``query_codes``.

    Raises:
        ValueError: non -1/+1 codes, mismatched shapes, bad ``ties``, ``topk`` or ``chunk_size``, empty
            inputs.
    """
    _check_args(query_codes, query_labels, db_codes, db_labels, topk, ties)
    budget = _budget(query_codes.device, chunk_size, db_codes.shape[0])
    num_db = db_codes.shape[0]
    k = num_db if topk is None else min(topk, num_db)
    with torch.no_grad():
        grp = _group(query_codes, query_labels, db_codes, db_labels)
        if ties == "index":
            ap = _index_pass(grp, k, "rel", budget, _ap_of_ranked)
        else:
            nd, r = _distance_histograms(grp, "rel", budget)
            harmonic = torch.zeros(num_db + 1, device=nd.device, dtype=torch.float64)
            harmonic[1:] = torch.arange(1, num_db + 1, device=nd.device, dtype=torch.float64).reciprocal_()
            ap = _ap_from_counts(nd, r, k, harmonic.cumsum(0))  # harmonic[m] = H(m) = sum_{i<=m} 1/i
    return ap[grp.q_pair]


def hamming_map(
    query_codes: Tensor,
    query_labels: Tensor,
    db_codes: Tensor,
    db_labels: Tensor,
    topk: int | None = None,
    ties: str = "index",
    *,
    chunk_size: int | None = None,
) -> Tensor:
    r"""Exact mean average precision (mAP@K) of Hamming ranking of -1/+1 codes.

    For each query the database is ranked by Hamming distance ``d = (bits - q . x) / 2`` (computed by a
    matrix product of the distinct query codes and the distinct database codes).
    ``AP@K = (1 / M_K) sum_{k <= K, item k relevant} precision@k``, ``M_K`` = relevant items within the
    top ``K`` (``AP = 0`` when ``M_K = 0``); the result is the mean over queries. ``topk=None`` ranks the
    whole database (the last item included).

    Ties (equal distances) are resolved by ``ties``:

    * ``"index"``: by database index (a stable sort) -- deterministic, identical to a per-query
      ``np.argsort(hamming, kind="stable")`` loop.
    * ``"average"``: the expected AP over a uniformly random order inside every tie group (tie-aware AP,
      McSherry & Najork, ECIR 2008, "Computing information retrieval performance measures efficiently in
      the presence of tied scores"). Per query only the per-distance counts ``n_d`` (items at distance
      ``d``) and ``r_d`` (relevant items at ``d``) are needed (a ``bincount``, no sort). A group of ``n``
      items of which ``r`` relevant occupies ranks ``(s, s + n]`` with ``R`` relevant ranked before it. The
      item at rank ``j`` is relevant with probability ``r / n``, and given that, the expected number of
      relevant items before it in the group is ``(j - s - 1)(r - 1)/(n - 1)`` (hypergeometric), so its
      expected precision term is ``(r/n) (R + 1 + (j - s - 1)(r - 1)/(n - 1)) / j``. Summed over the group
      with harmonic numbers ``H(m) = sum_{i <= m} 1/i``::

          E[group sum] = (r/n) [(R + 1) H1 + (r - 1)/(n - 1) H2],
          H1 = H(s + n) - H(s),   H2 = sum_{u=1..n} (u - 1)/(s + u) = n - (s + 1) H1.

      Without a cut inside a group ``M_K`` is fixed, so ``E[AP] = sum_groups E[group sum] / M_K`` (this is
      McSherry & Najork's tie-aware AP). When ``K`` cuts a group (``s < K < s + n``), ``c = K - s`` of its
      positions are kept and the number ``X`` of relevant items among them is hypergeometric
      ``P(X = x) = C(r, x) C(n - r, c - x) / C(n, c)``; ``M_K = R + X`` is then random, and
      ``E[S] / E[M_K]`` (the expected truncated sum over the expected count) is *not* the expected AP.
      Conditioning on ``X = x`` (the kept relevant positions are a uniform ``x``-subset of the ``c``)::

          E[AP@K] = sum_x P(X = x) (S_prev + (x/c) [(R + 1) H1c + (x - 1)/(c - 1) H2c]) / (R + x),
          H1c = H(s + c) - H(s),   H2c = c - (s + 1) H1c,

      ``S_prev`` the summed ``E[group sum]`` of the groups before it (a term with ``R + x = 0`` is 0).
      With no ties (all ``n_d <= 1``) both modes give the same value.

    Args:
        query_codes: ``[Q, bits]`` float or integer tensor of -1/+1 (0 is rejected).
        query_labels: ``[Q]`` integer class ids, or ``[Q, L]`` multi-hot (nonzero = label present;
            relevant = at least one shared label).
        db_codes: ``[N, bits]`` float or integer tensor of -1/+1.
        db_labels: ``[N]`` or ``[N, L]``, the same kind as ``query_labels``.
        topk: rank cut ``K`` for mAP@K (``K > N`` is clamped to ``N``); ``None`` = all of the database.
        ties: ``"index"`` (default) or ``"average"``.
        chunk_size: distinct query codes per chunk (memory ``O(chunk_size * N)``); default picks it from
            ``N``.

    Returns:
        Scalar float64 tensor, on the device of ``query_codes``.

    Raises:
        ValueError: codes that are not all -1/+1, shape mismatches, ``ties`` not in
            ``("index", "average")``, ``topk <= 0``, empty query set or database.

    Example:
        >>> q = torch.tensor([[1, 1]])
        >>> db = torch.tensor([[1, 1], [-1, -1], [1, -1]])
        >>> hamming_map(q, torch.tensor([0]), db, torch.tensor([1, 0, 0]))  # relevant at ranks 2, 3
        tensor(0.5833, dtype=torch.float64)
    """
    return hamming_ap(
        query_codes, query_labels, db_codes, db_labels, topk=topk, ties=ties, chunk_size=chunk_size
    ).mean()


# ----------------------------------------------------------------------------------------------------
# nDCG@k
# ----------------------------------------------------------------------------------------------------
def _ideal_dcg(grp: _Groups, cum_discount: Tensor, k: int) -> Tensor:
    """Ideal DCG@k of every pair (the database's gains sorted in decreasing order); ``[P]`` float64."""
    capped = lambda m: cum_discount[m.clamp(max=k).long()]  # noqa: E731 -- sum of the first min(m, k) discounts
    if grp.label_sets is None:  # gains 0/1: the relevant items fill the first ranks
        return capped(grp.label_count[grp.pair_label])
    max_gain = grp.label_sets.shape[1]
    out = torch.zeros(grp.pair_code.shape[0], device=cum_discount.device, dtype=torch.float64)
    step = max(1, _CPU_CHUNK_ELEMENTS // grp.num_labels)
    for i in range(0, out.shape[0], step):
        pairs = torch.arange(i, min(i + step, out.shape[0]), device=out.device)
        gain = _label_table(grp, pairs, "gain").long()  # [Pc, num_labels]
        # per pair: how many database items have gain v, for v = 0..max_gain
        keys = gain + torch.arange(gain.shape[0], device=gain.device).unsqueeze(1) * (max_gain + 1)
        count = _weighted_histogram(keys, grp.label_count.expand(gain.shape[0], -1), max_gain + 1)
        count = count.flip(1)  # gains in decreasing order: max_gain, ..., 0
        end = count.cumsum(1)
        value = torch.arange(max_gain, -1, -1, device=out.device, dtype=torch.float64)
        out[pairs] = (value * (capped(end) - capped(end - count))).sum(1)
    return out


def _hamming_ndcg_per_query(
    query_codes: Tensor,
    query_labels: Tensor,
    db_codes: Tensor,
    db_labels: Tensor,
    k: int | None,
    ties: str,
    chunk_size: int | None,
) -> Tensor:
    """Per-query nDCG@k, ``[Q]`` float64 (see :func:`hamming_ndcg`)."""
    _check_args(query_codes, query_labels, db_codes, db_labels, k, ties, cut_name="k")
    budget = _budget(query_codes.device, chunk_size, db_codes.shape[0])
    num_db = db_codes.shape[0]
    kk = num_db if k is None else min(k, num_db)
    with torch.no_grad():
        grp = _group(query_codes, query_labels, db_codes, db_labels)
        device = grp.g_codes.device
        discount = torch.arange(2, num_db + 2, device=device, dtype=torch.float64).log2_().reciprocal_()
        discount[kk:] = 0
        cum_discount = torch.cat([discount.new_zeros(1), discount.cumsum(0)])  # [N + 1]
        if ties == "index":
            disc_k = discount[:kk]
            dcg = _index_pass(grp, kk, "gain", budget, lambda gains, pairs: gains.to(torch.float64) @ disc_k)
        else:
            # sklearn's tie-averaged DCG: every tie group gets its mean gain times the summed discounts of
            # the ranks it occupies (s, s + n], cut at k
            nd, gain = _distance_histograms(grp, "gain", budget)
            end = nd.cumsum(1)
            spans = cum_discount[end.clamp(max=kk).long()] - cum_discount[(end - nd).clamp(max=kk).long()]
            dcg = torch.where(nd > 0, gain / nd.clamp(min=1) * spans, torch.zeros_like(nd)).sum(1)
        ideal = _ideal_dcg(grp, cum_discount, kk)
        ndcg = torch.where(ideal > 0, dcg / ideal.clamp(min=1e-300), torch.zeros_like(dcg))
    return ndcg[grp.q_pair]


def hamming_ndcg(
    query_codes: Tensor,
    query_labels: Tensor,
    db_codes: Tensor,
    db_labels: Tensor,
    k: int | None = None,
    ties: str = "average",
    *,
    chunk_size: int | None = None,
) -> Tensor:
    r"""Mean nDCG@k of Hamming ranking of -1/+1 codes (Järvelin & Kekäläinen, TOIS 2002).

    For each query the database is ranked by ascending Hamming distance. The gain of an item is linear:
    1 when it shares the query's class (class ids), or the number of labels it shares with the query
    (multi-hot). ``DCG@k = sum_{j <= k} gain_j / log2(j + 1)``; the ideal DCG@k takes the database's
    gains in decreasing order; ``nDCG@k = DCG@k / IDCG@k`` (0 when the query has no relevant item), and
    the result is the mean over queries.

    Ties (equal distances) are resolved by ``ties``:

    * ``"average"`` (default): every tie group occupying ranks ``(s, s + n]`` contributes its mean gain
      times ``sum_{s < j <= min(s + n, k)} 1 / log2(j + 1)`` -- the expected DCG over a random order in
      the group, and exactly scikit-learn's ``ndcg_score(y_true, -distance, k=k, ignore_ties=False)``.
      Needs per-distance counts only.
    * ``"index"``: ties broken by database index (a stable sort), deterministic.

    Args:
        query_codes: ``[Q, bits]`` float or integer tensor of -1/+1.
        query_labels: ``[Q]`` integer class ids or ``[Q, L]`` multi-hot (nonzero = label present).
        db_codes: ``[N, bits]`` float or integer tensor of -1/+1.
        db_labels: ``[N]`` or ``[N, L]``, the same kind as ``query_labels``.
        k: rank cut (``k > N`` is clamped to ``N``); ``None`` = all of the database.
        ties: ``"average"`` or ``"index"``.
        chunk_size: distinct query codes per chunk (memory ``O(chunk_size * N)``).

    Returns:
        Scalar float64 tensor, on the device of ``query_codes``.

    Raises:
        ValueError: codes that are not all -1/+1, shape mismatches, ``ties`` not in
            ``("index", "average")``, ``k <= 0``, empty query set or database.

    Example:
        >>> q = torch.tensor([[1, 1]])
        >>> db = torch.tensor([[1, 1], [-1, -1], [1, -1]])
        >>> hamming_ndcg(q, torch.tensor([0]), db, torch.tensor([1, 0, 0]), k=2)  # relevant at 2 and 3
        tensor(0.3869, dtype=torch.float64)
    """
    return _hamming_ndcg_per_query(
        query_codes, query_labels, db_codes, db_labels, k=k, ties=ties, chunk_size=chunk_size
    ).mean()


def ranked_ndcg(ids: Tensor, query_labels: Tensor, db_labels: Tensor, k: int | None = None) -> Tensor:
    r"""Mean nDCG@k of result lists an index already ranked (e.g. SCA's support-intersection search).

    The gains and discount are :func:`hamming_ndcg`'s: linear gain (1 for a shared class id, or the number
    of shared labels for multi-hot labels), ``1 / log2(j + 1)`` at rank ``j``, the ideal DCG from the whole
    database's gains in decreasing order; 0 for a query with no relevant item.

    Args:
        ids: ``[Q, K]`` database indices in rank order; ``-1`` marks an empty slot (gain 0).
        query_labels: ``[Q]`` class ids or ``[Q, L]`` multi-hot.
        db_labels: ``[N]`` or ``[N, L]``, the same kind.
        k: rank cut (``None`` or ``k > K``: all ``K`` results).

    Returns:
        Scalar float64 tensor.

    Raises:
        ValueError: shape mismatches, ``k <= 0``, or ids outside ``[-1, N)``.
    """
    if ids.ndim != 2 or len(ids) != len(query_labels) or query_labels.ndim != db_labels.ndim:
        raise ValueError(
            f"need ids [Q, K] with Q = len(query_labels) and labels of one kind; got ids "
            f"{tuple(ids.shape)}, query labels {tuple(query_labels.shape)}, "
            f"db labels {tuple(db_labels.shape)}"
        )
    if k is not None and k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    n = len(db_labels)
    if ids.numel() and (int(ids.min()) < -1 or int(ids.max()) >= n):
        raise ValueError(
            f"ids must lie in [-1, {n}) (-1 = empty slot), got [{int(ids.min())}, {int(ids.max())}]"
        )
    k = ids.shape[1] if k is None else min(k, ids.shape[1])
    ids = ids[:, :k].long()
    if query_labels.ndim == 1:
        gains_all = (query_labels[:, None] == db_labels[None]).double()  # [Q, N]
    else:
        gains_all = (query_labels != 0).double() @ (db_labels != 0).double().T  # shared labels
    gains = gains_all.gather(1, ids.clamp(min=0)) * (ids >= 0)
    disc = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64, device=ids.device))
    ideal = gains_all.topk(min(k, n), dim=1).values
    idcg = (ideal * disc[: ideal.shape[1]]).sum(1)
    dcg = (gains * disc).sum(1)
    return torch.where(idcg > 0, dcg / idcg.clamp(min=1e-300), torch.zeros_like(dcg)).mean()


# ----------------------------------------------------------------------------------------------------
# torchmetrics wrapper
# ----------------------------------------------------------------------------------------------------
class _HammingRankingMetric(Metric):
    """Accumulates query and database codes for a Hamming-ranking metric (``HammingMAP``, ``HammingNDCG``).

    Query and database items are accumulated separately: ``update(codes, labels, role="query")`` and
    ``update(codes, labels, role="database")`` (or the aliases :meth:`update_query` and
    :meth:`update_database`); ``compute()`` ranks every query against the whole database.

    Under DDP the list states are gathered rank after rank, so the database order after the gather depends
    on how the sampler split the data. Pass the dataset ``index`` of every item: ``compute()`` then orders
    the database by it (making ``ties="index"`` identical to a single-process run) and drops repeated
    indices (``DistributedSampler`` pads the last batch by repeating items). Without ``index`` the items
    keep their accumulation order; mixing the two is an error.

    Calling the metric (``forward``) only accumulates and returns ``None``: the value of a single batch
    against nothing is not defined.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, cut: int | None, ties: str, cut_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if ties not in _TIES:
            raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
        if cut is not None and (isinstance(cut, bool) or not isinstance(cut, int) or cut <= 0):
            raise ValueError(f"{cut_name} must be a positive int or None (all of the database), got {cut!r}")
        self.ties = ties
        for role in ("query", "db"):
            self.add_state(f"{role}_codes", default=[], dist_reduce_fx="cat")
            self.add_state(f"{role}_labels", default=[], dist_reduce_fx="cat")
            self.add_state(f"{role}_index", default=[], dist_reduce_fx="cat")

    def update(self, codes: Tensor, labels: Tensor, role: str = "query", index: Tensor | None = None) -> None:
        """Accumulate a batch of query or database items.

        Args:
            codes: ``[B, bits]`` float or integer tensor of -1/+1.
            labels: ``[B]`` integer class ids or ``[B, L]`` multi-hot.
            role: ``"query"`` or ``"database"`` (``"db"`` also accepted).
            index: optional ``[B]`` integer dataset index of the items (orders and deduplicates the
                gathered state, see the class docstring).
        """
        if role not in ("query", "database", "db"):
            raise ValueError(f"role must be 'query' or 'database', got {role!r}")
        prefix = "query" if role == "query" else "db"
        _check_codes(codes, "codes")
        _check_labels(labels, codes.shape[0], "labels")
        if index is None:
            index = torch.full((codes.shape[0],), -1, dtype=torch.int64, device=codes.device)
        else:
            if not isinstance(index, Tensor) or index.dim() != 1 or index.shape[0] != codes.shape[0]:
                raise ValueError(f"index must be a 1-D tensor with one entry per item ({codes.shape[0]})")
            if index.is_floating_point() or index.dtype == torch.bool:
                raise ValueError(f"index must be an integer tensor, got dtype {index.dtype}")
            if index.numel() and bool((index < 0).any()):
                raise ValueError("index must be non-negative")
            index = index.to(torch.int64)
        labels = labels.to(torch.int64) if labels.dim() == 1 else (labels != 0).to(torch.uint8)
        getattr(self, f"{prefix}_codes").append(codes.detach().to(torch.int8))
        getattr(self, f"{prefix}_labels").append(labels.detach())
        getattr(self, f"{prefix}_index").append(index.detach())

    def update_query(self, codes: Tensor, labels: Tensor, index: Tensor | None = None) -> None:
        """Alias of ``update(codes, labels, role="query", index=index)``."""
        self.update(codes, labels, role="query", index=index)

    def update_database(self, codes: Tensor, labels: Tensor, index: Tensor | None = None) -> None:
        """Alias of ``update(codes, labels, role="database", index=index)``."""
        self.update(codes, labels, role="database", index=index)

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Accumulate only (same arguments as :meth:`update`); returns ``None``."""
        self.update(*args, **kwargs)

    def _ordered(self, codes: Tensor, labels: Tensor, index: Tensor, role: str) -> tuple[Tensor, Tensor]:
        known = index >= 0
        if bool(known.all()):
            order = torch.sort(index, stable=True).indices
            index = index[order]
            first = torch.ones_like(index, dtype=torch.bool)
            first[1:] = index[1:] != index[:-1]  # keep the first of repeated indices (sampler padding)
            order = order[first]
            return codes[order], labels[order]
        if bool(known.any()):
            raise ValueError(f"{type(self).__name__}: pass index for all {role} updates or for none")
        return codes, labels

    def _accumulated(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(query_codes, query_labels, db_codes, db_labels)`` of everything accumulated (in index order)."""
        states = {}
        for prefix, role in (("query", "query"), ("db", "database")):
            codes = getattr(self, f"{prefix}_codes")
            if isinstance(codes, list) and not codes:
                raise ValueError(f"{type(self).__name__}.compute(): no {role} items were given to update()")
            states[prefix] = self._ordered(
                dim_zero_cat(codes),
                dim_zero_cat(getattr(self, f"{prefix}_labels")),
                dim_zero_cat(getattr(self, f"{prefix}_index")),
                role,
            )
        (q, ql), (db, dbl) = states["query"], states["db"]
        return q, ql, db, dbl


class HammingMAP(_HammingRankingMetric):
    """mAP@K of Hamming ranking as a ``torchmetrics`` metric (see :func:`hamming_map`).

    Accumulation, DDP ordering by ``index`` and ``forward`` as in :class:`HammingNDCG`: ``update(codes,
    labels, role="query" | "database", index=None)``, then ``compute()``.

    Args:
        topk: rank cut ``K`` (``None`` = all of the database).
        ties: ``"index"`` or ``"average"``.
        **kwargs: forwarded to ``torchmetrics.Metric``.

    Example:
        >>> metric = HammingMAP()
        >>> metric.update(torch.tensor([[1, 1, -1]]), torch.tensor([0]), role="query")
        >>> metric.update(torch.tensor([[1, 1, 1], [-1, -1, -1]]), torch.tensor([0, 1]), role="database")
        >>> metric.compute()
        tensor(1., dtype=torch.float64)
    """

    def __init__(self, topk: int | None = None, ties: str = "index", **kwargs: Any) -> None:
        super().__init__(topk, ties, "topk", **kwargs)
        self.topk = topk

    def compute(self) -> Tensor:
        """Return the mAP (scalar float64 tensor) of the accumulated queries against the database."""
        return hamming_map(*self._accumulated(), topk=self.topk, ties=self.ties)


class HammingNDCG(_HammingRankingMetric):
    """nDCG@k of Hamming ranking as a ``torchmetrics`` metric (see :func:`hamming_ndcg`).

    Query and database items are accumulated separately: ``update(codes, labels, role="query")`` and
    ``update(codes, labels, role="database")`` (or :meth:`update_query` / :meth:`update_database`);
    ``compute()`` ranks every query against the whole database. Under DDP pass the dataset ``index`` of
    every item, so that the gathered database is put back in index order and sampler padding is dropped
    (mixing updates with and without ``index`` is an error). ``forward`` only accumulates.

    Args:
        k: rank cut (``None`` = all of the database).
        ties: ``"average"`` (scikit-learn's tie-averaged nDCG) or ``"index"``.
        **kwargs: forwarded to ``torchmetrics.Metric``.

    Example:
        >>> metric = HammingNDCG(k=2)
        >>> metric.update(torch.tensor([[1, 1]]), torch.tensor([0]), role="query")
        >>> metric.update(torch.tensor([[1, 1], [-1, -1], [1, -1]]), torch.tensor([1, 0, 0]), role="database")
        >>> metric.compute()
        tensor(0.3869, dtype=torch.float64)
    """

    def __init__(self, k: int | None = None, ties: str = "average", **kwargs: Any) -> None:
        super().__init__(k, ties, "k", **kwargs)
        self.k = k

    def compute(self) -> Tensor:
        """Return the mean nDCG@k (scalar float64 tensor) of the accumulated queries against the database."""
        return hamming_ndcg(*self._accumulated(), k=self.k, ties=self.ties)
