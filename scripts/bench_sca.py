"""Search speed of SCA's support-intersection index against faiss IndexFlatIP, on the same codes, in one run.

    python scripts/bench_sca.py                      # 1,000,000 codes, 1,000 queries
    python scripts/bench_sca.py --num-codes 100000   # smaller

Data ("random but structured"): ``--clusters`` Gaussian centres in R^L with decaying per-dimension scales;
each database point is a centre plus Gaussian noise, sparsified to its ``Sx`` largest coefficients and
ambiguated with ``Sp`` noise entries from the complementary truncated Gaussian (the Geneva form of SCA's
noise; cheaper than the model's empirical-law sampler at this size, and the index only sees supports).
A query is a noisy copy of a random database point, sparsified and ambiguated with ``Sq`` entries;
recall@10 is the fraction of queries whose source point is among the 10 results.

Compared, with the same number of threads:

* ``sca``: :class:`models.sca.SupportIntersectionIndex` (sign-aware support intersection, int8 storage);
* ``faiss_ternary``: faiss IndexFlatIP on the same codes densified as float32 ternary vectors, whose
  inner product is the same score (equal recall by construction);
* ``faiss_values``: faiss IndexFlatIP on the real-valued public codes (faiss's natural use).

Prints queries/s, recall@10 and the speed ratio sca / faiss, and writes JSON + markdown.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from models.sca import SupportIntersectionIndex, sparsify


def ambiguate_gaussian(
    codes: torch.Tensor, sp: int, scales: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Cheap ambiguation for large synthetic sets: ``sp`` uniformly placed entries off the support drawn
    from the complementary truncated Gaussian ``N(0, scale_l^2)`` restricted to ``|v| >= lambda`` (the
    code's smallest kept magnitude), the Geneva form of SCA's noise."""
    n, length = codes.shape
    if sp == 0:
        return codes
    keys = torch.rand(n, length, generator=gen).masked_fill(codes != 0, 2.0)
    pos = keys.topk(sp, dim=1, largest=False).indices
    lam = codes.abs().masked_fill(codes == 0, float("inf")).amin(1, keepdim=True)
    scale = scales[pos]
    tail = torch.special.ndtr(-lam / scale)  # P(v >= lambda) of N(0, scale^2)
    mag = -scale * torch.special.ndtri(torch.rand(n, sp, generator=gen) * tail)
    sign = torch.where(torch.rand(n, sp, generator=gen) < 0.5, -1.0, 1.0)
    return codes.clone().scatter_(1, pos, sign * mag.maximum(lam))


def make_data(args, gen: torch.Generator):
    length = args.code_length
    scales = torch.linspace(1.5, 0.5, length)
    centres = torch.randn(args.clusters, length, generator=gen) * scales
    source = torch.randint(args.num_codes, (args.num_queries,), generator=gen)
    db_values, db_ternary = [], []
    src_coeff = torch.zeros(args.num_queries, length)
    for start in range(0, args.num_codes, args.chunk):
        n = min(args.chunk, args.num_codes - start)
        ids = torch.randint(args.clusters, (n,), generator=gen)
        coeff = centres[ids] + args.spread * torch.randn(n, length, generator=gen) * scales
        public = ambiguate_gaussian(sparsify(coeff, args.sx), args.sp, scales, gen)
        db_values.append(public.numpy().astype(np.float32))
        db_ternary.append(torch.sign(public).to(torch.int8))
        sel = (source >= start) & (source < start + n)
        src_coeff[sel] = coeff[source[sel] - start]
    q_coeff = src_coeff + args.query_noise * torch.randn(args.num_queries, length, generator=gen) * scales
    queries = ambiguate_gaussian(sparsify(q_coeff, args.sx), args.sq, scales, gen)
    return np.concatenate(db_values), torch.cat(db_ternary), queries, source


def recall_at(ids: np.ndarray, source: torch.Tensor, k: int) -> float:
    return float((torch.as_tensor(ids[:, :k]) == source[:, None]).any(1).double().mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-codes", type=int, default=1_000_000)
    parser.add_argument("--num-queries", type=int, default=1000)
    parser.add_argument("--code-length", type=int, default=128)
    parser.add_argument("--sx", type=int, default=16)
    parser.add_argument("--sp", type=int, default=16)
    parser.add_argument("--sq", type=int, default=8)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.5)
    parser.add_argument("--query-noise", type=float, default=0.1)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="threads of both (default: torch's)")
    parser.add_argument("--out", default="runs/sca/bench")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import faiss

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    faiss.omp_set_num_threads(threads)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    db_values, db_ternary, queries, source = make_data(args, gen)
    print(
        f"data: {args.num_codes} codes x {args.code_length}, Sx={args.sx} Sp={args.sp} Sq={args.sq} "
        f"({time.time() - t0:.1f}s), {threads} threads"
    )
    results = {}

    index = SupportIntersectionIndex(args.code_length)
    index.add(db_ternary)
    del db_ternary
    start = time.perf_counter()
    _, ids = index.search(queries, args.k)
    sec = time.perf_counter() - start
    results["sca"] = {
        "qps": args.num_queries / sec,
        "recall@10": recall_at(ids.numpy(), source, 10),
        "seconds": sec,
    }

    q_np = queries.numpy().astype(np.float32)
    for name, base, q in (
        ("faiss_ternary", np.sign(db_values).astype(np.float32), np.sign(q_np).astype(np.float32)),
        ("faiss_values", db_values, q_np),
    ):
        flat = faiss.IndexFlatIP(args.code_length)
        flat.add(base)
        del base
        start = time.perf_counter()
        _, fids = flat.search(q, args.k)
        sec = time.perf_counter() - start
        results[name] = {
            "qps": args.num_queries / sec,
            "recall@10": recall_at(fids, source, 10),
            "seconds": sec,
        }
        del flat

    for name, r in results.items():
        print(f"{name:14s} {r['qps']:10.1f} queries/s   recall@10 {r['recall@10']:.4f}")
    ratio_eq = results["sca"]["qps"] / results["faiss_ternary"]["qps"]
    ratio_val = results["sca"]["qps"] / results["faiss_values"]["qps"]
    print(f"speed ratio sca / faiss IndexFlatIP (same ternary codes, equal recall): {ratio_eq:.2f}x")
    print(f"speed ratio sca / faiss IndexFlatIP (real-valued public codes): {ratio_val:.2f}x")
    out = {
        "args": vars(args),
        "threads": threads,
        "results": results,
        "ratio_equal_recall": ratio_eq,
        "ratio_vs_values": ratio_val,
    }
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.json").write_text(json.dumps(out, indent=2))
    lines = ["| index | queries/s | recall@10 |", "| --- | --- | --- |"]
    lines += [f"| {n} | {r['qps']:.1f} | {r['recall@10']:.4f} |" for n, r in results.items()]
    lines += [
        "",
        f"sca / faiss (equal recall): {ratio_eq:.2f}x; sca / faiss on real values: {ratio_val:.2f}x",
    ]
    (folder / "bench.md").write_text("\n".join(lines) + "\n")
    return out


if __name__ == "__main__":
    main()
