"""Retrieval metrics for binary (hashing) codes.

The main entry points are :func:`hamming_map` (a functional, exact mean average precision over Hamming
ranking of ``{-1, +1}`` codes) and :class:`HammingMAP` (the same as a ``torchmetrics.Metric`` that
accumulates query and database codes, DDP-safe).

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

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

__all__ = ["HammingMAP", "hamming_ap", "hamming_map", "sign_codes"]

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
        raise ValueError(f"topk must be a positive int or None (all of the database), got {topk!r}")
    if query_codes.shape[0] == 0:
        raise ValueError("no queries: query_codes is empty")
    if db_codes.shape[0] == 0:
        raise ValueError("empty database: db_codes is empty")


# ----------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------
def _key_dtype(max_key: int) -> torch.dtype:
    if max_key < 2**15:
        return torch.int16
    if max_key < 2**31:
        return torch.int32
    return torch.int64


def _relevance(q_labels: Tensor, db_labels: Tensor) -> Tensor:
    """Relevance mask ``[Qc, N]`` (bool) of a chunk of queries against the database."""
    if q_labels.dim() == 1:
        return q_labels.unsqueeze(1) == db_labels.unsqueeze(0)
    # multi-hot (already float 0/1): the shared-label count is an exact small integer
    return (q_labels @ db_labels.T) > 0.5


def _distance_keys(q: Tensor, db_t: Tensor, scale: int) -> Tensor:
    """Float keys ``scale * (row * (bits + 1) + hamming)`` for a chunk, ``[Qc, N]``.

    ``q`` and ``db_t`` hold exact +-1 floats, so ``q @ db_t`` is an exact integer (also under TF32 or
    reduced-precision matmul inputs); ``hamming = (bits - q.x) / 2`` is folded into one ``addmm``.
    """
    n, bits = q.shape
    offset = torch.arange(n, device=q.device, dtype=q.dtype).mul_(scale * (bits + 1)).add_(scale * bits / 2)
    return torch.addmm(offset.unsqueeze(1), q, db_t, alpha=-scale / 2)


def _ap_index(q: Tensor, ql: Tensor, db_t: Tensor, dbl: Tensor, k: int, inv_ranks: Tensor) -> Tensor:
    """Per-query AP@k with ties broken by database index; returns ``[Qc]`` float64."""
    n, bits = q.shape
    num_db = db_t.shape[1]
    keys = _distance_keys(q, db_t, 1).to(_key_dtype(n * (bits + 1))).view(-1)
    # One stable sort of the flattened chunk by (row, distance): rows stay contiguous and the stable
    # order keeps database-index order inside every tie group (a single radix pass on CPU for small
    # keys, far cheaper than a per-row comparison sort).
    perm = torch.sort(keys, stable=True).indices
    rel = _relevance(ql, dbl).view(-1).index_select(0, perm).view(n, num_db)[:, :k]
    hits = rel.cumsum(1, dtype=torch.int32)  # relevant items retrieved up to rank j
    found = hits[:, -1].to(torch.float64)
    # sum over relevant ranks j of precision@j = hits_j / j: zero the irrelevant ranks in place, then one
    # float64 matrix-vector product with 1/j (exact to ~1e-15, and faster than elementwise float ops)
    total = hits.mul_(rel).to(torch.float64) @ inv_ranks[:k]
    return torch.where(found > 0, total / found.clamp(min=1), torch.zeros_like(total))


def _ap_average(q: Tensor, ql: Tensor, db_t: Tensor, dbl: Tensor, k: int, harmonic: Tensor) -> Tensor:
    """Per-query tie-aware (expected) AP@k from per-distance counts; returns ``[Qc]`` float64."""
    n, bits = q.shape
    groups = bits + 1
    keys = _distance_keys(q, db_t, 2)  # 2 * (row * groups + d)
    keys.add_(_relevance(ql, dbl))  # + 1 if relevant
    counts = torch.bincount(keys.to(_key_dtype(2 * n * groups)).view(-1), minlength=2 * n * groups)
    counts = counts.view(n, groups, 2).to(torch.float64)
    r = counts[..., 1]  # r_d: relevant items at distance d          [Qc, G]
    nd = counts.sum(-1)  # n_d: all items at distance d              [Qc, G]
    s = nd.cumsum(1) - nd  # items ranked before the group          [Qc, G]
    r_prev = r.cumsum(1) - r  # relevant items ranked before the group  [Qc, G]
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
        x = torch.arange(int(x_hi.max().item()) + 1, device=q.device, dtype=torch.float64).unsqueeze(0)
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


def _prepare(query_codes: Tensor, query_labels: Tensor, db_codes: Tensor, db_labels: Tensor):
    device = query_codes.device
    q = query_codes.to(device=device, dtype=torch.float32)
    db_t = db_codes.to(device=device, dtype=torch.float32).T.contiguous()
    if query_labels.dim() == 1:
        ql = query_labels.to(device=device, dtype=torch.int64)
        dbl = db_labels.to(device=device, dtype=torch.int64)
    else:
        ql = (query_labels != 0).to(device=device, dtype=torch.float32)
        dbl = (db_labels != 0).to(device=device, dtype=torch.float32)
    return q, ql, db_t, dbl


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

    Args:
        query_codes: ``[Q, bits]`` float or integer tensor of -1/+1.
        query_labels: ``[Q]`` integer class ids or ``[Q, L]`` multi-hot (nonzero = label present).
        db_codes: ``[N, bits]`` float or integer tensor of -1/+1.
        db_labels: ``[N]`` or ``[N, L]``, the same kind as ``query_labels``.
        topk: rank cut ``K`` (AP@K); ``None`` (or ``K >= N``) ranks the whole database.
        ties: ``"index"`` (ties broken by database index) or ``"average"`` (tie-aware expected AP).
        chunk_size: queries per chunk (bounds memory to ``O(chunk_size * N)``); default picks ~1M pairs
            per chunk on CPU, ~16M on accelerators.

    Returns:
        ``[Q]`` float64 tensor, on the device of ``query_codes``.

    Raises:
        ValueError: non -1/+1 codes, mismatched shapes, bad ``ties`` or ``topk``, empty inputs.
    """
    _check_args(query_codes, query_labels, db_codes, db_labels, topk, ties)
    if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    q, ql, db_t, dbl = _prepare(query_codes, query_labels, db_codes, db_labels)
    num_q, num_db = q.shape[0], db_t.shape[1]
    k = num_db if topk is None else min(topk, num_db)
    if chunk_size is None:
        budget = _CPU_CHUNK_ELEMENTS if q.device.type == "cpu" else _ACCEL_CHUNK_ELEMENTS
        chunk_size = max(1, budget // num_db)
    # the float32 keys (at most 2 * chunk_size * (bits + 1)) must stay exact integers (< 2**24)
    chunk_size = max(1, min(chunk_size, num_q, 2**23 // (q.shape[1] + 1)))
    out = []
    with torch.no_grad():
        if ties == "index":
            inv_ranks = torch.arange(1, num_db + 1, device=q.device, dtype=torch.float64).reciprocal_()
            for i in range(0, num_q, chunk_size):
                sl = slice(i, i + chunk_size)
                out.append(_ap_index(q[sl], ql[sl], db_t, dbl, k, inv_ranks))
        else:
            harmonic = torch.zeros(num_db + 1, device=q.device, dtype=torch.float64)
            harmonic[1:] = torch.arange(1, num_db + 1, device=q.device, dtype=torch.float64).reciprocal_()
            harmonic = harmonic.cumsum(0)  # harmonic[m] = H(m) = sum_{i<=m} 1/i
            for i in range(0, num_q, chunk_size):
                sl = slice(i, i + chunk_size)
                out.append(_ap_average(q[sl], ql[sl], db_t, dbl, k, harmonic))
    return torch.cat(out)


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
    matrix product, in chunks of queries). ``AP@K = (1 / M_K) sum_{k <= K, item k relevant} precision@k``,
    ``M_K`` = relevant items within the top ``K`` (``AP = 0`` when ``M_K = 0``); the result is the mean
    over queries. ``topk=None`` ranks the whole database (the last item included).

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
        chunk_size: queries per chunk (memory ``O(chunk_size * N)``); default picks it from ``N``.

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
# torchmetrics wrapper
# ----------------------------------------------------------------------------------------------------
class HammingMAP(Metric):
    """mAP@K of Hamming ranking as a ``torchmetrics`` metric (see :func:`hamming_map`).

    Query and database items are accumulated separately: ``update(codes, labels, role="query")`` and
    ``update(codes, labels, role="database")`` (or the aliases :meth:`update_query` and
    :meth:`update_database`); ``compute()`` ranks every query against the whole database.

    Under DDP the list states are gathered rank after rank, so the database order after the gather depends
    on how the sampler split the data. Pass the dataset ``index`` of every item: ``compute()`` then orders
    the database by it (making ``ties="index"`` identical to a single-process run) and drops repeated
    indices (``DistributedSampler`` pads the last batch by repeating items). Without ``index`` the items
    keep their accumulation order; mixing the two is an error.

    Calling the metric (``forward``) only accumulates and returns ``None``: the mAP of a single batch
    against nothing is not defined.

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

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, topk: int | None = None, ties: str = "index", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if ties not in _TIES:
            raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
        if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk <= 0):
            raise ValueError(f"topk must be a positive int or None (all of the database), got {topk!r}")
        self.topk = topk
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

    @staticmethod
    def _ordered(codes: Tensor, labels: Tensor, index: Tensor, role: str) -> tuple[Tensor, Tensor]:
        known = index >= 0
        if bool(known.all()):
            order = torch.sort(index, stable=True).indices
            index = index[order]
            first = torch.ones_like(index, dtype=torch.bool)
            first[1:] = index[1:] != index[:-1]  # keep the first of repeated indices (sampler padding)
            order = order[first]
            return codes[order], labels[order]
        if bool(known.any()):
            raise ValueError(f"HammingMAP: pass index for all {role} updates or for none")
        return codes, labels

    def compute(self) -> Tensor:
        """Return the mAP (scalar float64 tensor) of the accumulated queries against the database."""
        states = {}
        for prefix, role in (("query", "query"), ("db", "database")):
            codes = getattr(self, f"{prefix}_codes")
            if isinstance(codes, list) and not codes:
                raise ValueError(f"HammingMAP.compute(): no {role} items were given to update()")
            states[prefix] = self._ordered(
                dim_zero_cat(codes),
                dim_zero_cat(getattr(self, f"{prefix}_labels")),
                dim_zero_cat(getattr(self, f"{prefix}_index")),
                role,
            )
        (q, ql), (db, dbl) = states["query"], states["db"]
        return hamming_map(q, ql, db, dbl, topk=self.topk, ties=self.ties)
