"""Benchmark models.metrics.hamming_map / hamming_ndcg against the peer and reference implementations.

One run measures, on the same data:

* random -1/+1 codes (default 1k queries x 60k database items, 16 bits, 10 classes) and the REAL codes of
  the shipped ADSH victim (``checkpoints/adsh-fashion-mnist-16bit``): the 10,000 Fashion-MNIST test images
  as queries, the 60,000 training images as the database (hashed once, cached in ``--codes-cache``);
* the peer: DeepHash-pytorch's ``CalcTopMap`` algorithm (per query: Hamming distance by a matrix product,
  numpy's default -- unstable -- argsort, cumulative precision over all retrieved items, one-hot labels),
  written here from that description;
* the index-tie reference: the same numpy loop with a stable argsort (and the last item kept);
* ``hamming_map(ties="index")``, asserted equal to the index-tie reference to 1e-6, and
  ``hamming_map(ties="average")``, asserted equal to a numpy tie-aware reference (an explicit sum over
  every rank position, no closed form) to 1e-6; how far the peer's unstable order moves the value is
  printed;
* on random codes, the floor of each mode's work: the Hamming matrix product (``index``) and the matrix
  product plus one histogram pass (``average``), timed with torch on the same data;
* nDCG@k (300 queries x 20,000 items, random and real codes) against scikit-learn's
  ``ndcg_score(..., ignore_ties=False)``, asserted equal to 1e-6.

Targets (issue 18): real codes ``ties="index"`` >= 20x and ``ties="average"`` >= 50x the peer; nDCG >= 10x
scikit-learn. Exits 1 when a target is missed (values that disagree raise).

    .venv/bin/python scripts/bench_map.py [--data-dir data] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from models.metrics import hamming_map, hamming_ndcg

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# numpy implementations
# ----------------------------------------------------------------------------------------------------
def peer_calc_topmap(
    q_codes: np.ndarray, q_onehot: np.ndarray, db_codes: np.ndarray, db_onehot: np.ndarray, topk: int
) -> float:
    """DeepHash-pytorch's CalcTopMap algorithm: per query, Hamming by a matrix product, numpy's default
    (unstable quicksort) argsort, then the mean of ``count / rank`` over the relevant retrieved items."""
    num_query, bits = q_codes.shape
    total = 0.0
    for i in range(num_query):
        gnd = (q_onehot[i] @ db_onehot.T > 0).astype(np.float32)
        hamm = 0.5 * (bits - q_codes[i] @ db_codes.T)
        gnd = gnd[np.argsort(hamm)][:topk]
        tsum = int(gnd.sum())
        if tsum == 0:
            continue
        count = np.linspace(1, tsum, tsum)
        tindex = np.asarray(np.where(gnd == 1)) + 1.0
        total += float(np.mean(count / tindex))
    return total / num_query


def numpy_map(
    q_codes: np.ndarray,
    q_labels: np.ndarray,
    db_codes: np.ndarray,
    db_labels: np.ndarray,
    topk: int | None = None,
) -> float:
    """Index-tie reference: per query, numpy Hamming distances, stable argsort, precision at the relevant
    ranks (the last database item included)."""
    num_query, bits = q_codes.shape
    k = db_codes.shape[0] if topk is None else min(topk, db_codes.shape[0])
    aps = np.zeros(num_query)
    for i in range(num_query):
        hamm = 0.5 * (bits - db_codes @ q_codes[i])
        order = np.argsort(hamm, kind="stable")[:k]
        gnd = db_labels[order] == q_labels[i]
        found = int(gnd.sum())
        if found == 0:
            continue
        aps[i] = np.mean(np.arange(1, found + 1) / (np.flatnonzero(gnd) + 1.0))
    return float(aps.mean())


def numpy_map_tie_aware(
    q_codes: np.ndarray,
    q_labels: np.ndarray,
    db_codes: np.ndarray,
    db_labels: np.ndarray,
    weights: np.ndarray | None = None,
) -> float:
    """Tie-aware mAP@all: per rank j of a tie group (s, s+n] with r relevant and R before it, add
    (r/n) (R + 1 + (j-s-1)(r-1)/(n-1)) / j -- summed explicitly over all j, no closed form. ``weights``:
    query multiplicities (the reference then runs once per distinct (code, label) query)."""
    num_query, bits = q_codes.shape
    num_db = db_codes.shape[0]
    j = np.arange(1, num_db + 1, dtype=np.float64)
    aps = np.zeros(num_query)
    for i in range(num_query):
        dist = np.rint(0.5 * (bits - db_codes @ q_codes[i])).astype(np.int64)
        rel = db_labels == q_labels[i]
        n = np.bincount(dist, minlength=bits + 1).astype(np.float64)
        r = np.bincount(dist, weights=rel, minlength=bits + 1)
        if r.sum() == 0:
            continue
        s = np.cumsum(n) - n
        r_prev = np.cumsum(r) - r
        g = np.repeat(np.arange(bits + 1), n.astype(np.int64))  # group of each rank position
        ng, rg, sg, rpg = n[g], r[g], s[g], r_prev[g]
        pair = np.where(ng > 1, (j - sg - 1) * (rg - 1) / np.maximum(ng - 1, 1), 0.0)
        aps[i] = np.sum(rg / ng * (rpg + 1 + pair) / j) / r.sum()
    return float(np.average(aps, weights=weights))


# ----------------------------------------------------------------------------------------------------
# the floor of the work (random codes)
# ----------------------------------------------------------------------------------------------------
def floor_matmul(q: torch.Tensor, db: torch.Tensor, chunk: int) -> float:
    """The Hamming matrix product of every query against every item (chunks of ``chunk`` queries)."""
    db_t = db.T.contiguous()
    acc = 0.0
    for i in range(0, q.shape[0], chunk):
        acc += float(
            torch.addmm(torch.full((1, 1), q.shape[1] / 2), q[i : i + chunk], db_t, alpha=-0.5)[0, 0]
        )
    return acc


def floor_histogram(
    q: torch.Tensor, ql: torch.Tensor, db: torch.Tensor, dl: torch.Tensor, chunk: int
) -> float:
    """The matrix product plus one histogram pass: per query, counts by (distance, relevant)."""
    bits = q.shape[1]
    bins = 2 * (bits + 1)
    db_t = db.T.contiguous()
    acc = 0.0
    for i in range(0, q.shape[0], chunk):
        qc = q[i : i + chunk]
        offset = torch.arange(qc.shape[0], dtype=torch.float32).mul_(bins).add_(bits).unsqueeze(1)
        keys = torch.addmm(offset, qc, db_t, alpha=-1.0)  # 2 * (row * (bits + 1) + d)
        keys += (ql[i : i + chunk].unsqueeze(1) == dl.unsqueeze(0)).to(keys.dtype)
        acc += float(torch.bincount(keys.to(torch.int32).view(-1), minlength=qc.shape[0] * bins)[0])
    return acc


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------
def random_codes(num_q: int, num_db: int, bits: int, classes: int, seed: int) -> tuple[torch.Tensor, ...]:
    """``(query codes [Q, bits] float32, query labels [Q], db codes [N, bits], db labels [N])``."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 2, (num_q, bits), generator=gen).float() * 2 - 1
    db = torch.randint(0, 2, (num_db, bits), generator=gen).float() * 2 - 1
    ql = torch.randint(0, classes, (num_q,), generator=gen)
    dl = torch.randint(0, classes, (num_db,), generator=gen)
    return q, ql, db, dl


def real_codes(cache: Path, data_dir: Path) -> tuple[torch.Tensor, ...]:
    """Codes of the shipped ADSH victim on Fashion-MNIST: (test codes, test labels, train codes, train
    labels), hashed once from float images in [0, 1] and cached in ``cache``."""
    if cache.exists():
        d = torch.load(cache)
    else:
        from torchvision.datasets import FashionMNIST

        from models import zoo

        model = zoo.load("adsh-fashion-mnist-16bit")
        d = {}
        for name, train in (("query", False), ("db", True)):
            try:
                ds = FashionMNIST(str(data_dir), train=train, download=False)
            except RuntimeError as err:
                raise SystemExit(
                    f"Fashion-MNIST not found under {data_dir}: pass --data-dir DIR (the folder holding "
                    f"FashionMNIST/raw) or prepare it with the datamodule ({err})"
                ) from err
            x = ds.data.unsqueeze(1).float() / 255
            codes = torch.cat([model.hash(x[i : i + 2000]) for i in range(0, len(x), 2000)])
            d[f"{name}_codes"], d[f"{name}_labels"] = codes.to(torch.int8), ds.targets.long()
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(d, cache)
        print(f"hashed Fashion-MNIST with adsh-fashion-mnist-16bit, cached in {cache}")
    return d["query_codes"].float(), d["query_labels"], d["db_codes"].float(), d["db_labels"]


def timed(fn: Callable[[], float], repeats: int) -> tuple[float, float, float]:
    """Return (value, best seconds, median seconds) over ``repeats`` calls."""
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return value, min(times), statistics.median(times)


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]


# ----------------------------------------------------------------------------------------------------
# benches
# ----------------------------------------------------------------------------------------------------
def bench_map(name: str, data: tuple[torch.Tensor, ...], args: argparse.Namespace, with_floor: bool) -> dict:
    q, ql, db, dl = data
    qn, dbn, qln, dln = q.numpy(), db.numpy(), ql.numpy(), dl.numpy()
    classes = int(max(ql.max(), dl.max())) + 1
    qoh, dboh = one_hot(qln, classes), one_hot(dln, classes)
    num_q, num_db = q.shape[0], db.shape[0]
    dev = torch.device(args.device)
    qd, qld, dbd, dld = (t.to(dev) for t in data)
    reps = args.repeats if num_q <= 2000 else args.real_repeats
    print(f"\n== {name}: {num_q} queries x {num_db} database items x {q.shape[1]} bits, {classes} classes")
    distinct = (
        torch.unique(q, dim=0).shape[0],
        torch.unique(torch.cat([q, ql[:, None].float()], 1), dim=0).shape[0],
    )
    print(
        f"   distinct query codes {distinct[0]}, (code, label) pairs {distinct[1]}; distinct database codes "
        f"{torch.unique(db, dim=0).shape[0]}"
    )

    peer_map = lambda: peer_calc_topmap(qn, qoh, dbn, dboh, num_db)  # noqa: E731
    index_map = lambda: hamming_map(qd, qld, dbd, dld, ties="index").item()  # noqa: E731
    average_map = lambda: hamming_map(qd, qld, dbd, dld, ties="average").item()  # noqa: E731
    index_map(), average_map()  # warm-up
    peer, peer_best, _ = timed(peer_map, reps)
    ref, ref_best, _ = timed(lambda: numpy_map(qn, qln, dbn, dln), reps)
    idx, idx_best, idx_med = timed(index_map, args.torch_repeats)
    avg, avg_best, avg_med = timed(average_map, args.torch_repeats)

    assert abs(idx - ref) <= 1e-6, f"{name}: ties=index {idx!r} != stable numpy loop {ref!r}"
    sub = slice(0, min(100, num_q))
    for topk in (1, 100, 1000):
        a = hamming_map(qd[sub], qld[sub], dbd, dld, topk=topk).item()
        b = numpy_map(qn[sub], qln[sub], dbn, dln, topk=topk)
        assert abs(a - b) <= 1e-6, f"{name}: ties=index topk={topk}: {a!r} != stable numpy loop {b!r}"
    # the tie-aware reference, once per distinct (code, label) query weighted by its multiplicity (AP only
    # depends on that pair)
    keys, first, mult = np.unique(
        np.concatenate([qn, qln[:, None]], 1), axis=0, return_index=True, return_counts=True
    )
    tie_ref = numpy_map_tie_aware(qn[first], qln[first], dbn, dln, weights=mult)
    assert abs(avg - tie_ref) <= 1e-6, (
        f"{name}: ties=average {avg!r} != numpy tie-aware reference {tie_ref!r}"
    )

    print(f"   mAP@all  index-tie reference (stable numpy loop) {ref:.9f}")
    print(f"            ties=index                             {idx:.9f}  |diff| {abs(idx - ref):.1e}")
    print(
        f"            peer (unstable argsort)                {peer:.9f}  "
        f"moved by {peer - ref:+.2e} by its order"
    )
    print(
        f"            ties=average                           {avg:.9f}  vs numpy tie-aware {tie_ref:.9f} "
        f"(|diff| {abs(avg - tie_ref):.1e})"
    )
    print(
        f"   seconds (best of {reps} numpy / {args.torch_repeats} privzoo): peer {peer_best:.3f}, "
        f"stable loop {ref_best:.3f}, index {idx_best:.4f} (median {idx_med:.4f}), average {avg_best:.4f} "
        f"(median {avg_med:.4f})"
    )
    out = {"peer": peer_best, "index": idx_best, "average": avg_best}
    for mode, best in (("index", idx_best), ("average", avg_best)):
        print(f"   ties={mode}: {peer_best / best:.1f}x the peer, {ref_best / best:.1f}x the stable loop")
    if with_floor:
        chunk = max(1, (1 << 20) // num_db)
        _, mm_best, _ = timed(lambda: floor_matmul(qd.cpu(), dbd.cpu(), chunk), args.torch_repeats)
        _, hist_best, _ = timed(
            lambda: floor_histogram(qd.cpu(), qld.cpu(), dbd.cpu(), dld.cpu(), chunk), args.torch_repeats
        )
        print(
            f"   floor: Hamming matrix product {mm_best:.4f} s, + one histogram pass {hist_best:.4f} s "
            "(torch, CPU)"
        )
        print(
            f"   ties=index   takes {idx_best / mm_best:.2f}x its floor (the matrix product; it also sorts)"
        )
        print(f"   ties=average takes {avg_best / hist_best:.2f}x its floor (matrix product + histogram)")
    return out


def bench_ndcg(name: str, data: tuple[torch.Tensor, ...], args: argparse.Namespace) -> list[float]:
    from sklearn.metrics import ndcg_score

    q, ql = data[0][: args.ndcg_query], data[1][: args.ndcg_query]
    db, dl = data[2][: args.ndcg_db], data[3][: args.ndcg_db]
    dev = torch.device(args.device)
    qd, qld, dbd, dld = q.to(dev), ql.to(dev), db.to(dev), dl.to(dev)
    gains = (ql.numpy()[:, None] == dl.numpy()[None, :]).astype(np.float64)
    scores = -(0.5 * (q.shape[1] - q.double().numpy() @ db.double().numpy().T))
    print(f"\n== nDCG, {name}: {q.shape[0]} queries x {db.shape[0]} items")
    ratios = []
    for k in (100, None):
        ours_fn = lambda k=k: hamming_ndcg(qd, qld, dbd, dld, k=k).item()  # noqa: E731
        ours_fn()
        ref, sk_best, _ = timed(
            lambda k=k: float(ndcg_score(gains, scores, k=k, ignore_ties=False)), args.repeats
        )
        ours, ours_best, _ = timed(ours_fn, args.torch_repeats)
        assert abs(ours - ref) <= 1e-6, f"nDCG@{k} {name}: {ours!r} != sklearn {ref!r}"
        idx, idx_best, _ = timed(
            lambda k=k: hamming_ndcg(qd, qld, dbd, dld, k=k, ties="index").item(), args.torch_repeats
        )
        ratios.append(sk_best / ours_best)
        print(
            f"   nDCG@{k}: sklearn {ref:.9f} in {sk_best:.3f} s | ties=average {ours:.9f} (|diff| "
            f"{abs(ours - ref):.1e}) in {ours_best:.4f} s = {sk_best / ours_best:.1f}x | "
            f"ties=index {idx:.9f} in {idx_best:.4f} s"
        )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-query", type=int, default=1000)
    parser.add_argument("--num-db", type=int, default=60000)
    parser.add_argument("--bits", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / "data", help="folder holding FashionMNIST/raw"
    )
    parser.add_argument(
        "--codes-cache", type=Path, default=ROOT / "runs" / "bench_map" / "adsh_fmnist16_codes.pt"
    )
    parser.add_argument("--skip-real", action="store_true", help="random codes only")
    parser.add_argument("--device", default="cpu", help="device of the codes given to privzoo (e.g. cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the numpy loops (random)")
    parser.add_argument("--real-repeats", type=int, default=1, help="timed repeats of the numpy loops (real)")
    parser.add_argument("--torch-repeats", type=int, default=7, help="timed repeats of privzoo")
    parser.add_argument("--ndcg-query", type=int, default=300)
    parser.add_argument("--ndcg-db", type=int, default=20000)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, device {args.device}), "
        f"numpy {np.__version__}"
    )

    rand = random_codes(args.num_query, args.num_db, args.bits, args.classes, args.seed)
    bench_map(f"random codes (seed {args.seed})", rand, args, with_floor=True)
    ndcg_ratios = bench_ndcg(
        "random codes", random_codes(args.ndcg_query, args.ndcg_db, args.bits, args.classes, args.seed), args
    )
    checks = []
    if not args.skip_real:
        real = real_codes(args.codes_cache, args.data_dir)
        times = bench_map(
            "real codes: adsh-fashion-mnist-16bit, Fashion-MNIST test -> train", real, args, with_floor=False
        )
        checks += [
            ("mAP ties=index, real codes, vs the peer", times["peer"] / times["index"], 20.0),
            ("mAP ties=average, real codes, vs the peer", times["peer"] / times["average"], 50.0),
        ]
        ndcg_ratios += bench_ndcg("real codes", real, args)
    checks += [(f"nDCG vs sklearn, run {i + 1}", r, 10.0) for i, r in enumerate(ndcg_ratios)]
    print("\n== targets")
    ok = True
    for name, ratio, target in checks:
        met = ratio >= target
        ok &= met
        print(f"   {name}: {ratio:.1f}x (target >= {target:g}x) {'met' if met else 'MISSED'}")
    print("all values agree to 1e-6; targets " + ("met" if ok else "NOT all met"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
