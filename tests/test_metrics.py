"""Tests of models.metrics: exact Hamming-ranking mAP (ties by index and tie-aware) and its Metric."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from models.metrics import HammingMAP, HammingNDCG, hamming_ap, hamming_map, hamming_ndcg


# ----------------------------------------------------------------------------------------------------
# naive references (pure python)
# ----------------------------------------------------------------------------------------------------
def _relevant(ql, dl) -> bool:
    if isinstance(ql, list):
        return any(a and b for a, b in zip(ql, dl, strict=True))
    return ql == dl


def _ap_of_flags(flags: list[bool], k: int) -> float:
    hits, total = 0, 0.0
    for rank, rel in enumerate(flags[:k], start=1):
        if rel:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def _distances_and_rel(qc, ql, dbc, dbl):
    dist = [sum(a != b for a, b in zip(qc, x, strict=True)) for x in dbc]
    rel = [_relevant(ql, y) for y in dbl]
    return dist, rel


def naive_ap_index(qc, ql, dbc, dbl, topk=None) -> list[float]:
    """Per-query AP@K, ties broken by database index (python lists in, python floats out)."""
    out = []
    for c, y in zip(qc, ql, strict=True):
        dist, rel = _distances_and_rel(c, y, dbc, dbl)
        order = sorted(range(len(dbc)), key=lambda j: (dist[j], j))
        out.append(_ap_of_flags([rel[j] for j in order], topk or len(dbc)))
    return out


def brute_ap_average(qc, ql, dbc, dbl, topk=None) -> list[float]:
    """Expected AP@K over every order inside tie groups (enumerates the placements of relevant items)."""
    out = []
    for c, y in zip(qc, ql, strict=True):
        dist, rel = _distances_and_rel(c, y, dbc, dbl)
        groups = []
        for d in sorted(set(dist)):
            members = [rel[j] for j in range(len(dbc)) if dist[j] == d]
            n, r = len(members), sum(members)
            # every placement of the r relevant items among n slots is equally likely
            groups.append([[i in pos for i in range(n)] for pos in itertools.combinations(range(n), r)])
        values = [
            _ap_of_flags([f for g in combo for f in g], topk or len(dbc))
            for combo in itertools.product(*groups)
        ]
        out.append(sum(values) / len(values))
    return out


def _random_case(num_q, num_db, bits, classes, seed, multi_hot=False):
    g = torch.Generator().manual_seed(seed)
    qc = torch.randint(0, 2, (num_q, bits), generator=g) * 2 - 1
    dbc = torch.randint(0, 2, (num_db, bits), generator=g) * 2 - 1
    if multi_hot:
        ql = (torch.rand(num_q, classes, generator=g) < 0.3).long()
        dl = (torch.rand(num_db, classes, generator=g) < 0.3).long()
    else:
        ql = torch.randint(0, classes, (num_q,), generator=g)
        dl = torch.randint(0, classes, (num_db,), generator=g)
    return qc, ql, dbc, dl


def _lists(*tensors):
    return [t.tolist() for t in tensors]


# ----------------------------------------------------------------------------------------------------
# hand-computed values
# ----------------------------------------------------------------------------------------------------
def test_hand_computed_single_query():
    q = torch.tensor([[1, 1]])
    db = torch.tensor([[1, 1], [-1, -1], [1, -1]])  # distances 0, 2, 1
    # ranking: idx0 (irrelevant), idx2 (relevant), idx1 (relevant) -> AP = (1/2 + 2/3) / 2
    value = hamming_map(q, torch.tensor([0]), db, torch.tensor([1, 0, 0]))
    assert value.dtype == torch.float64 and value.dim() == 0
    assert value.item() == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-12)


def test_hand_computed_two_queries_and_index_ties():
    q = torch.tensor([[1, 1, 1], [-1, -1, -1]])
    db = torch.tensor([[1, 1, -1], [1, -1, 1], [-1, -1, -1], [1, 1, 1]])
    # query 0: distances 1, 1, 3, 0 -> order idx3, idx0, idx1, idx2; labels 5, 7, 5, 7; query label 7
    #   relevant at ranks 1 and 3 -> AP = (1 + 2/3) / 2
    # query 1: distances 2, 2, 0, 3 -> order idx2, idx0, idx1, idx3; query label 5 -> relevant at 1, 2
    #   -> AP = 1
    labels_db = torch.tensor([5, 7, 5, 7])
    ap = hamming_ap(q, torch.tensor([7, 5]), db, labels_db)
    assert ap.tolist() == pytest.approx([(1 + 2 / 3) / 2, 1.0], abs=1e-12)
    # ties="average": query 0 has a tie {idx0 (irr), idx1 (rel)} at ranks 2-3 -> relevant at rank 1
    #   and at rank 2 or 3 with probability 1/2 each: AP = 1/2 (1 + 1)/2 + 1/2 (1 + 2/3)/2
    # query 1 has a tie {idx0 (rel), idx1 (irr)} at ranks 2-3, same value
    expected = 0.5 * 1.0 + 0.5 * (1 + 2 / 3) / 2
    ap_avg = hamming_ap(q, torch.tensor([7, 5]), db, labels_db, ties="average")
    assert ap_avg.tolist() == pytest.approx([expected, expected], abs=1e-12)


def test_multi_hot_labels():
    q = torch.tensor([[1, 1]])
    db = torch.tensor([[1, 1], [1, -1], [-1, -1]])  # distances 0, 1, 2
    ql = torch.tensor([[1, 0, 1]])
    dl = torch.tensor([[0, 1, 0], [0, 1, 1], [1, 1, 0]])  # shares: no, yes (label 2), yes (label 0)
    assert hamming_map(q, ql, db, dl).item() == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-12)
    # float multi-hot (CelebA-style) gives the same
    assert hamming_map(q.float(), ql.float(), db.float(), dl.float()).item() == pytest.approx(
        (1 / 2 + 2 / 3) / 2, abs=1e-12
    )


def test_topk_cut_hand_computed():
    q = torch.tensor([[1, 1, 1]])
    db = torch.tensor([[1, 1, 1], [1, 1, -1], [1, -1, -1], [-1, -1, -1]])  # distances 0, 1, 2, 3
    dl = torch.tensor([1, 0, 1, 1])  # relevant at ranks 1, 3, 4
    ql = torch.tensor([1])
    assert hamming_map(q, ql, db, dl, topk=1).item() == pytest.approx(1.0)
    assert hamming_map(q, ql, db, dl, topk=2).item() == pytest.approx(1.0)
    assert hamming_map(q, ql, db, dl, topk=3).item() == pytest.approx((1 + 2 / 3) / 2)
    assert hamming_map(q, ql, db, dl).item() == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert hamming_map(q, ql, db, dl, topk=100).item() == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # nothing relevant within the top K scores 0
    assert hamming_map(q, torch.tensor([0]), db, dl, topk=1).item() == 0.0


def test_query_without_relevant_items_scores_zero():
    q = torch.tensor([[1, -1], [1, 1]])
    db = torch.tensor([[1, -1], [-1, 1]])
    ql = torch.tensor([9, 0])  # class 9 is not in the database
    dl = torch.tensor([0, 0])
    for ties in ("index", "average"):
        ap = hamming_ap(q, ql, db, dl, ties=ties)
        assert ap[0].item() == 0.0 and not torch.isnan(ap).any()
        assert hamming_map(q, ql, db, dl, ties=ties).item() == pytest.approx(ap[1].item() / 2)


def test_topk_none_includes_last_database_item():
    # the only relevant item is the last one, ranked last: DeepHash's topK=-1 would drop it
    n = 7
    q = torch.ones(1, n - 1, dtype=torch.int64)
    db = torch.ones(n, n - 1, dtype=torch.int64)
    for i in range(n):
        db[i, :i] = -1  # item i at distance i
    dl = torch.zeros(n, dtype=torch.int64)
    dl[-1] = 1
    ql = torch.tensor([1])
    for ties in ("index", "average"):
        assert hamming_map(q, ql, db, dl, ties=ties).item() == pytest.approx(1 / n)
        assert hamming_map(q, ql, db, dl, topk=n - 1, ties=ties).item() == 0.0
        assert hamming_map(q, ql, db, dl, topk=n, ties=ties).item() == pytest.approx(1 / n)


# ----------------------------------------------------------------------------------------------------
# against the references
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("multi_hot", [False, True])
@pytest.mark.parametrize("topk", [None, 1, 5, 17, 40])
def test_ties_index_matches_naive_reference(multi_hot, topk):
    qc, ql, dbc, dl = _random_case(12, 40, 4, 3, seed=1 + (topk or 0), multi_hot=multi_hot)  # many ties
    expected = naive_ap_index(*_lists(qc, ql, dbc, dl), topk=topk)
    got = hamming_ap(qc, ql, dbc, dl, topk=topk)
    assert got.tolist() == pytest.approx(expected, abs=1e-9)
    # deterministic, and independent of the query chunking
    assert torch.equal(got, hamming_ap(qc, ql, dbc, dl, topk=topk))
    assert torch.allclose(got, hamming_ap(qc, ql, dbc, dl, topk=topk, chunk_size=5), atol=1e-12, rtol=0)
    assert hamming_map(qc, ql, dbc, dl, topk=topk).item() == pytest.approx(sum(expected) / 12, abs=1e-9)


@pytest.mark.parametrize("multi_hot", [False, True])
@pytest.mark.parametrize("topk", [None, 1, 2, 3, 4, 5, 6, 7, 9, 11])
def test_ties_average_matches_brute_force(multi_hot, topk):
    # 12 items on 2 bits: tie groups of ~3, ~6, ~3 items, every cut position covered by the topk list
    qc, ql, dbc, dl = _random_case(6, 12, 2, 2, seed=7 + (topk or 0), multi_hot=multi_hot)
    expected = brute_ap_average(*_lists(qc, ql, dbc, dl), topk=topk)
    got = hamming_ap(qc, ql, dbc, dl, topk=topk, ties="average")
    assert got.tolist() == pytest.approx(expected, abs=1e-10)


def test_ties_average_brute_force_larger_groups():
    qc, ql, dbc, dl = _random_case(4, 16, 3, 2, seed=3)
    for topk in (None, 2, 5, 8, 13):
        expected = brute_ap_average(*_lists(qc, ql, dbc, dl), topk=topk)
        got = hamming_ap(qc, ql, dbc, dl, topk=topk, ties="average", chunk_size=3)
        assert got.tolist() == pytest.approx(expected, abs=1e-10)


def test_ties_average_equals_index_without_ties():
    # per query, the database items are at pairwise different distances
    bits, n = 10, 11
    g = torch.Generator().manual_seed(0)
    qc = torch.randint(0, 2, (3, bits), generator=g) * 2 - 1
    ql = torch.tensor([0, 1, 0])
    for row in range(3):
        db = qc[row].repeat(n, 1)
        for i in range(n):
            db[i, :i] *= -1  # item i at distance i from query `row`
        perm = torch.randperm(n, generator=g)
        db, dl = db[perm], torch.randint(0, 2, (n,), generator=g)
        for topk in (None, 1, 4, 10):
            a = hamming_ap(qc[row : row + 1], ql[row : row + 1], db, dl, topk=topk, ties="index")
            b = hamming_ap(qc[row : row + 1], ql[row : row + 1], db, dl, topk=topk, ties="average")
            assert b.item() == pytest.approx(a.item(), abs=1e-12)


def test_ties_average_monte_carlo_medium():
    # bigger tie groups than brute force allows: the expectation matches a random-permutation average
    qc, ql, dbc, dl = _random_case(2, 60, 3, 3, seed=11)
    exact = hamming_ap(qc, ql, dbc, dl, topk=20, ties="average")
    g = torch.Generator().manual_seed(0)
    runs = 3000
    dist = ((qc.shape[1] - qc @ dbc.T) // 2).double()
    rel = (ql.unsqueeze(1) == dl.unsqueeze(0)).double()
    score = dist.unsqueeze(0) + 0.5 * torch.rand(runs, *dist.shape, generator=g)  # random order in ties
    order = score.argsort(-1)
    flags = torch.gather(rel.expand(runs, -1, -1), 2, order)[..., :20]
    hits = flags.cumsum(-1)
    prec = (hits / torch.arange(1, 21)).mul(flags).sum(-1)
    mc = torch.where(hits[..., -1] > 0, prec / hits[..., -1].clamp(min=1), 0.0).mean(0)
    assert torch.allclose(exact, mc, atol=0.01)


def test_large_chunks_of_long_codes_stay_exact():
    # 2 * chunk * (bits + 1) > 2**24: the chunk is capped so that the float32 keys stay exact
    qc, ql, dbc, dl = _random_case(8000, 3, 1100, 2, seed=6)
    qc, dbc = qc.to(torch.int8), dbc.to(torch.int8)
    head = _lists(qc[:50], ql[:50], dbc, dl)
    for ties, reference in (("index", naive_ap_index), ("average", brute_ap_average)):
        got = hamming_ap(qc, ql, dbc, dl, ties=ties, chunk_size=8000)
        assert got[:50].tolist() == pytest.approx(reference(*head), abs=1e-12)
        assert torch.allclose(got, hamming_ap(qc, ql, dbc, dl, ties=ties, chunk_size=97), atol=1e-12, rtol=0)


def test_code_dtypes_are_equivalent():
    qc, ql, dbc, dl = _random_case(5, 30, 6, 3, seed=5)
    ref = hamming_ap(qc, ql, dbc, dl)
    for dtype in (torch.int8, torch.int32, torch.float16, torch.float32, torch.float64):
        assert torch.equal(hamming_ap(qc.to(dtype), ql, dbc.to(dtype), dl), ref)


# ----------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------
def test_bad_inputs_raise():
    q = torch.tensor([[1, -1]])
    db = torch.tensor([[1, 1], [-1, 1]])
    ql, dl = torch.tensor([0]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="only -1 and \\+1"):
        hamming_map(torch.tensor([[1, 0]]), ql, db, dl)  # torch.sign of 0
    with pytest.raises(ValueError, match="only -1 and \\+1"):
        hamming_map(q, ql, torch.tensor([[0.5, 1.0], [1.0, 1.0]]), dl)
    with pytest.raises(ValueError, match="only -1 and \\+1"):
        hamming_map(q, ql, torch.tensor([[1, 1], [0, 1]]), dl)
    with pytest.raises(ValueError, match="float or integer"):
        hamming_map(q > 0, ql, db, dl)
    with pytest.raises(ValueError, match="bits"):
        hamming_map(q, ql, torch.tensor([[1, 1, 1], [1, 1, 1]]), dl)
    with pytest.raises(ValueError, match="shape"):
        hamming_map(q[0], ql, db, dl)
    with pytest.raises(ValueError, match="rows"):
        hamming_map(q, ql, db, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="rows"):
        hamming_map(q, torch.tensor([0, 1]), db, dl)
    with pytest.raises(ValueError, match="same kind"):
        hamming_map(q, torch.tensor([[1, 0]]), db, dl)
    with pytest.raises(ValueError, match="multi-hot"):
        hamming_map(q, torch.tensor([[1, 0]]), db, torch.tensor([[1, 0, 0], [0, 1, 0]]))
    with pytest.raises(ValueError, match="integer"):
        hamming_map(q, ql.float(), db, dl.float())
    with pytest.raises(ValueError, match="ties"):
        hamming_map(q, ql, db, dl, ties="random")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="topk"):
            hamming_map(q, ql, db, dl, topk=bad)
    with pytest.raises(ValueError, match="no queries"):
        hamming_map(q[:0], ql[:0], db, dl)
    with pytest.raises(ValueError, match="empty database"):
        hamming_map(q, ql, db[:0], dl[:0])
    with pytest.raises(ValueError, match="ties"):
        HammingMAP(ties="mean")
    with pytest.raises(ValueError, match="topk"):
        HammingMAP(topk=0)
    metric = HammingMAP()
    with pytest.raises(ValueError, match="role"):
        metric.update(q, ql, role="gallery")
    with pytest.raises(ValueError, match="only -1 and \\+1"):
        metric.update(torch.zeros(1, 2), ql)
    with pytest.raises(ValueError, match="index"):
        metric.update(q, ql, index=torch.tensor([0, 1]))


# ----------------------------------------------------------------------------------------------------
# the Metric
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ties", ["index", "average"])
@pytest.mark.parametrize("multi_hot", [False, True])
def test_metric_equals_function(ties, multi_hot):
    qc, ql, dbc, dl = _random_case(20, 70, 5, 4, seed=2, multi_hot=multi_hot)
    metric = HammingMAP(topk=25, ties=ties)
    assert metric.higher_is_better is True and metric.full_state_update is False
    for i in range(0, 70, 16):
        metric.update_database(dbc[i : i + 16], dl[i : i + 16])
    for i in range(0, 20, 8):
        metric.update(qc[i : i + 8].float(), ql[i : i + 8], role="query")
    value = metric.compute()
    expected = hamming_map(qc, ql, dbc, dl, topk=25, ties=ties)
    assert value.dim() == 0
    assert value.item() == pytest.approx(expected.item(), abs=1e-12)
    metric.reset()
    with (
        pytest.warns(UserWarning, match="before the ``update``"),
        pytest.raises(ValueError, match="no query"),
    ):
        metric.compute()


def test_metric_forward_only_accumulates():
    qc, ql, dbc, dl = _random_case(4, 10, 4, 2, seed=4)
    metric = HammingMAP()
    assert metric(qc, ql, role="query") is None
    assert metric(dbc, dl, role="database") is None
    assert metric.compute().item() == pytest.approx(hamming_map(qc, ql, dbc, dl).item(), abs=1e-12)


@pytest.mark.parametrize("ties", ["index", "average"])
def test_metric_ddp_order_with_indices(ties):
    """Two simulated ranks with a shuffling, padding DistributedSampler: the result equals the function."""
    qc, ql, dbc, dl = _random_case(15, 61, 4, 3, seed=9)  # 4 bits: plenty of index ties
    expected = hamming_map(qc, ql, dbc, dl, topk=30, ties=ties)

    def shards(num, seed, world=2):
        perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed)).tolist()
        perm += perm[: (-num) % world]  # DistributedSampler pads by repeating items
        return [torch.tensor(perm[rank::world]) for rank in range(world)]

    ranks = [HammingMAP(topk=30, ties=ties) for _ in range(2)]
    for metric, db_idx, q_idx in zip(ranks, shards(61, 0), shards(15, 1), strict=True):
        for i in range(0, len(db_idx), 7):
            b = db_idx[i : i + 7]
            metric.update(dbc[b], dl[b], role="database", index=b)
        for i in range(0, len(q_idx), 4):
            b = q_idx[i : i + 4]
            metric.update(qc[b], ql[b], role="query", index=b)
    # the all-gather concatenates the ranks' states rank after rank, which merge_state reproduces
    ranks[0].merge_state(ranks[1])
    assert ranks[0].compute().item() == pytest.approx(expected.item(), abs=1e-12)

    # the other gather order (rank 1 first) gives the identical value
    swapped = HammingMAP(topk=30, ties=ties)
    for metric in reversed(ranks[1:] + ranks[:1]):
        for prefix in ("query", "db"):
            for name in ("codes", "labels", "index"):
                getattr(swapped, f"{prefix}_{name}").extend(getattr(metric, f"{prefix}_{name}"))
    swapped._update_count = 1
    assert swapped.compute().item() == pytest.approx(expected.item(), abs=1e-12)


def test_metric_rejects_mixed_index_usage():
    qc, ql, dbc, dl = _random_case(2, 6, 3, 2, seed=8)
    metric = HammingMAP()
    metric.update(qc, ql, role="query")
    metric.update(dbc[:3], dl[:3], role="database", index=torch.arange(3))
    metric.update(dbc[3:], dl[3:], role="database")
    with pytest.raises(ValueError, match="index"):
        metric.compute()


def test_harmonic_identity_used_by_average():
    # H2 = sum_{u=1..n} (u-1)/(s+u) = n - (s+1) (H(s+n) - H(s)), the identity behind ties="average"
    for s, n in ((0, 1), (0, 5), (3, 4), (10, 7)):
        h1 = sum(1 / (s + u) for u in range(1, n + 1))
        h2 = sum((u - 1) / (s + u) for u in range(1, n + 1))
        assert math.isclose(h2, n - (s + 1) * h1, abs_tol=1e-12)


# ----------------------------------------------------------------------------------------------------
# grouped fast paths: tie-heavy codes, the Walsh-Hadamard distance counts
# ----------------------------------------------------------------------------------------------------
def _few_codes_case(num_q, num_db, bits, distinct, classes, seed, multi_hot=False):
    """Codes drawn from a handful of distinct codes (like trained hashing codes): huge tie groups."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randint(0, 2, (distinct, bits), generator=g) * 2 - 1
    qc = pool[torch.randint(0, distinct, (num_q,), generator=g)]
    dbc = pool[torch.randint(0, distinct, (num_db,), generator=g)]
    _, ql, _, dl = _random_case(num_q, num_db, bits, classes, seed, multi_hot=multi_hot)
    return qc, ql, dbc, dl


@pytest.mark.parametrize("multi_hot", [False, True])
@pytest.mark.parametrize("topk", [None, 3, 25, 70])
def test_tie_heavy_codes_match_references(multi_hot, topk):
    qc, ql, dbc, dl = _few_codes_case(30, 90, 6, 5, 3, seed=21 + (topk or 0), multi_hot=multi_hot)
    lists = _lists(qc, ql, dbc, dl)
    assert hamming_ap(qc, ql, dbc, dl, topk=topk).tolist() == pytest.approx(
        naive_ap_index(*lists, topk=topk), abs=1e-10
    )
    # the tie-aware value against a random-order Monte Carlo would be loose; use the exact enumeration on
    # a subset small enough for it (9 database items from 3 codes)
    small = _few_codes_case(5, 9, 4, 3, 2, seed=5 + (topk or 0), multi_hot=multi_hot)
    kk = None if topk is None else min(topk, 9)
    assert hamming_ap(*small, topk=kk, ties="average").tolist() == pytest.approx(
        brute_ap_average(*_lists(*small), topk=kk), abs=1e-10
    )


@pytest.mark.parametrize("bits", [6, 12])
@pytest.mark.parametrize("ties", ["index", "average"])
def test_random_codes_match_references(ties, bits):
    # 6 bits: 60 queries x ~64 database codes, the distance counts take the Walsh-Hadamard path;
    # 12 bits: most database codes hold one item, the histograms count them unweighted
    qc, ql, dbc, dl = _random_case(60, 300, bits, 4, seed=31)
    reference = naive_ap_index if ties == "index" else _tie_aware_reference
    got = hamming_ap(qc, ql, dbc, dl, ties=ties)
    assert got.tolist() == pytest.approx(reference(*_lists(qc, ql, dbc, dl)), abs=1e-10)
    # chunking does not change anything
    assert torch.allclose(got, hamming_ap(qc, ql, dbc, dl, ties=ties, chunk_size=3), atol=1e-12, rtol=0)


def _tie_aware_reference(qc, ql, dbc, dbl) -> list[float]:
    """Tie-aware AP@all by an explicit sum over ranks (no harmonic numbers, no enumeration)."""
    out = []
    for c, y in zip(qc, ql, strict=True):
        dist, rel = _distances_and_rel(c, y, dbc, dbl)
        total, before, before_rel = 0.0, 0, 0
        for d in sorted(set(dist)):
            n = sum(1 for x in dist if x == d)
            r = sum(1 for x, f in zip(dist, rel, strict=True) if x == d and f)
            for j in range(before + 1, before + n + 1):
                pair = (j - before - 1) * (r - 1) / (n - 1) if n > 1 else 0.0
                total += r / n * (before_rel + 1 + pair) / j
            before, before_rel = before + n, before_rel + r
        out.append(total / before_rel if before_rel else 0.0)
    return out


def test_walsh_hadamard_counts_equal_direct_histograms():
    from models import metrics

    qc, ql, dbc, dl = _random_case(40, 500, 7, 3, seed=41)
    grp = metrics._group(qc, ql, dbc, dl)
    direct = metrics._weighted_histogram(
        metrics._hamming(grp.q_codes, grp.g_codes, grp.bits + 1),
        grp.g_count.expand(grp.q_codes.shape[0], -1),
        grp.bits + 1,
    )
    assert torch.equal(metrics._distance_counts_wht(grp), direct)


# ----------------------------------------------------------------------------------------------------
# nDCG
# ----------------------------------------------------------------------------------------------------
def _gains_and_scores(qc, ql, dbc, dl):
    dist = ((qc.shape[1] - qc.double() @ dbc.double().T) / 2).numpy()
    if ql.dim() == 1:
        gains = (ql.unsqueeze(1) == dl.unsqueeze(0)).double().numpy()
    else:
        gains = (ql.double() @ dl.double().T).numpy()
    return gains, -dist


def naive_ndcg_index(qc, ql, dbc, dl, k=None) -> list[float]:
    """nDCG@k with ties broken by database index (python lists in, python floats out)."""
    out = []
    for c, y in zip(qc, ql, strict=True):
        dist = [sum(a != b for a, b in zip(c, x, strict=True)) for x in dbc]
        gain = [
            sum(a * b for a, b in zip(y, z, strict=True)) if isinstance(y, list) else float(y == z)
            for z in dl
        ]
        order = sorted(range(len(dbc)), key=lambda j: (dist[j], j))
        kk = k or len(dbc)
        dcg = sum(gain[j] / math.log2(r + 2) for r, j in enumerate(order[:kk]))
        ideal = sum(g / math.log2(r + 2) for r, g in enumerate(sorted(gain, reverse=True)[:kk]))
        out.append(dcg / ideal if ideal > 0 else 0.0)
    return out


@pytest.mark.parametrize("multi_hot", [False, True])
@pytest.mark.parametrize("k", [None, 1, 5, 30, 100, 1000])
@pytest.mark.parametrize("few_codes", [False, True, "spread"])
def test_ndcg_average_equals_sklearn(multi_hot, k, few_codes):
    from sklearn.metrics import ndcg_score

    if few_codes == "spread":  # mostly one item per database code
        qc, ql, dbc, dl = _random_case(20, 150, 12, 4, seed=51 + (k or 0), multi_hot=multi_hot)
    elif few_codes:
        qc, ql, dbc, dl = _few_codes_case(20, 150, 8, 6, 4, seed=51 + (k or 0), multi_hot=multi_hot)
    else:
        qc, ql, dbc, dl = _random_case(20, 150, 5, 4, seed=51 + (k or 0), multi_hot=multi_hot)
    gains, scores = _gains_and_scores(qc, ql, dbc, dl)
    expected = ndcg_score(gains, scores, k=k, ignore_ties=False)
    assert hamming_ndcg(qc, ql, dbc, dl, k=k).item() == pytest.approx(expected, abs=1e-9)
    assert hamming_ndcg(qc, ql, dbc, dl, k=k, chunk_size=4).item() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("multi_hot", [False, True])
@pytest.mark.parametrize("k", [None, 1, 4, 17])
def test_ndcg_index_matches_naive_reference(multi_hot, k):
    qc, ql, dbc, dl = _random_case(10, 40, 4, 3, seed=61 + (k or 0), multi_hot=multi_hot)
    expected = naive_ndcg_index(*_lists(qc, ql, dbc, dl), k=k)
    got = hamming_ndcg(qc, ql, dbc, dl, k=k, ties="index")
    assert got.item() == pytest.approx(sum(expected) / len(expected), abs=1e-10)


def test_ndcg_hand_computed_and_edge_cases():
    q = torch.tensor([[1, 1]])
    db = torch.tensor([[1, 1], [-1, -1], [1, -1]])  # distances 0, 2, 1
    dl = torch.tensor([1, 0, 0])  # query class 0: relevant at ranks 2 and 3
    ideal = 1 + 1 / math.log2(3)
    for ties in ("index", "average"):  # no ties here
        assert hamming_ndcg(q, torch.tensor([0]), db, dl, ties=ties).item() == pytest.approx(
            (1 / math.log2(3) + 1 / 2) / ideal, abs=1e-12
        )
        # a class absent from the database scores 0, not NaN; k > N is clamped
        assert hamming_ndcg(q, torch.tensor([7]), db, dl, k=10, ties=ties).item() == 0.0
    # a tie group {d=0: two items, one relevant} at ranks 1-2, cut at k=1: mean gain 1/2 times 1/log2(2)
    db2, dl2 = torch.tensor([[1, 1], [1, 1], [-1, -1]]), torch.tensor([0, 1, 1])
    assert hamming_ndcg(q, torch.tensor([0]), db2, dl2, k=1).item() == pytest.approx(0.5, abs=1e-12)
    assert hamming_ndcg(q, torch.tensor([0]), db2, dl2, k=1, ties="index").item() == 1.0
    with pytest.raises(ValueError, match="k must be a positive int"):
        hamming_ndcg(q, torch.tensor([0]), db, dl, k=0)
    with pytest.raises(ValueError, match="ties"):
        hamming_ndcg(q, torch.tensor([0]), db, dl, ties="mean")
    with pytest.raises(ValueError, match="k must be a positive int"):
        HammingNDCG(k=-1)


@pytest.mark.parametrize("ties", ["index", "average"])
@pytest.mark.parametrize("multi_hot", [False, True])
def test_ndcg_metric_equals_function(ties, multi_hot):
    qc, ql, dbc, dl = _random_case(20, 70, 5, 4, seed=71, multi_hot=multi_hot)
    metric = HammingNDCG(k=25, ties=ties)
    assert metric.higher_is_better is True and metric.full_state_update is False
    perm = torch.randperm(70, generator=torch.Generator().manual_seed(0))
    for i in range(0, 70, 16):  # shuffled batches with their dataset index
        b = perm[i : i + 16]
        metric.update(dbc[b], dl[b], role="database", index=b)
    for i in range(0, 20, 8):
        metric.update_query(qc[i : i + 8].float(), ql[i : i + 8])
    expected = hamming_ndcg(qc, ql, dbc, dl, k=25, ties=ties)
    assert metric.compute().item() == pytest.approx(expected.item(), abs=1e-12)
    metric.reset()
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="HammingNDCG.compute\\(\\): no query"):
        metric.compute()


@pytest.mark.parametrize("multi_hot", [False, True])
def test_ranked_ndcg_matches_scikit_learn_and_hamming_index_ranking(multi_hot):
    from sklearn.metrics import ndcg_score

    from models.metrics import ranked_ndcg

    g = torch.Generator().manual_seed(3)
    ql = (
        (torch.rand(20, 4, generator=g) < 0.4).long()
        if multi_hot
        else torch.randint(0, 4, (20,), generator=g)
    )
    dl = (
        (torch.rand(300, 4, generator=g) < 0.4).long()
        if multi_hot
        else torch.randint(0, 4, (300,), generator=g)
    )
    scores = torch.rand(20, 300, generator=g, dtype=torch.float64)  # real scores: no ties
    ids = scores.argsort(dim=1, descending=True)
    gains = (ql[:, None] == dl[None]).double() if not multi_hot else ql.double() @ dl.double().T
    for k in (1, 10, 100):
        expected = ndcg_score(gains.numpy(), scores.numpy(), k=k)
        assert float(ranked_ndcg(ids[:, :k], ql, dl)) == pytest.approx(expected, abs=1e-9)
    # a Hamming ranking with ties broken by database index is hamming_ndcg(ties="index")
    qc = torch.where(torch.rand(20, 8, generator=g) < 0.5, 1, -1)
    dc = torch.where(torch.rand(300, 8, generator=g) < 0.5, 1, -1)
    dist = (8 - qc @ dc.T) // 2
    order = dist.argsort(dim=1, stable=True)[:, :50]
    ref = hamming_ndcg(qc, ql, dc, dl, k=50, ties="index")
    assert float(ranked_ndcg(order, ql, dl)) == pytest.approx(float(ref), abs=1e-9)
    # empty slots (-1) gain nothing; bad input is refused with the fix
    padded = torch.cat([ids[:, :5], torch.full((20, 5), -1)], dim=1)
    assert float(ranked_ndcg(padded, ql, dl, k=10)) < float(ranked_ndcg(ids[:, :10], ql, dl))
    with pytest.raises(ValueError, match=r"ids must lie in \[-1, 300\)"):
        ranked_ndcg(ids + 1, ql, dl)
    with pytest.raises(ValueError, match="k must be positive"):
        ranked_ndcg(ids, ql, dl, k=0)
