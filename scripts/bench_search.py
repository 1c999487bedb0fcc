"""Private search side by side on the same vectors: SCA's index, faiss flat / IVF-PQ, encrypted-query PQ.

    python scripts/bench_search.py --data-dir data                  # n = 1,000,000, 1,000 queries
    python scripts/bench_search.py --data-dir data --n 100000 --no-inversion

Vectors: SCA public codes (128-d, ``Sx`` informative + ``Sp`` ambiguation entries) of the real Fashion-MNIST
training images from the shipped ``sca-fashion-mnist-sx16``, replicated with noise up to ``--n``
(:func:`models.search.replicate_public_codes`: replica 0 of each image is its real code). Queries: the
first ``--queries`` test images as SCA's authorized query codes (eq. 5, ``Sq`` noise entries); every row
gets the same query vectors.

Rows (``k = 10``):

* ``sca``: :class:`models.sca.SupportIntersectionIndex` (sign-aware support intersection);
* ``faiss_flat``: ``IndexFlatL2`` on the public codes -- the exact search every recall is measured
  against (its own recall is 1 by construction);
* ``faiss_ivfpq``: ``IndexIVFPQ`` (``--nlist`` / ``--pq-m`` sub-quantizers / 8 bits / ``--nprobe``),
  trained on a ``--train-sample`` sample;
* ``pq_encrypted_query``: our reading of PPPQ-ANN (:mod:`models.search.encrypted_pq`): the client
  CKKS-encrypts its query (TenSEAL), the server computes the encrypted ADC tables against its plaintext PQ
  centroids, a trusted component decrypts them and scans the PQ codes (same ``--pq-m``, no IVF). The
  trusted component is SIMULATED by a separate process: there is no enclave here.

Each row: recall@10 against exact search (and against exact search on the clean, un-ambiguated codes:
the neighbours an authorized user wants), queries/s on one thread and on all (``--threads``), build time,
stored bytes, and what the server learns. ``pq_encrypted_query`` is timed on the first ``--enc-queries``
queries (one CKKS pipeline per query). "All threads" for it = the server pipelined with the trusted process.

Privacy (``--no-inversion`` skips it): the attack harness's learned inversion
(:func:`models.attacks.inversion.learned_inversion`, MLP and conv decoders, its full-run sizes: 10,000 +
2,000 attacker training images, 10,000 evaluated test images) on what each server stores: the public codes
(faiss_flat; SCA's server receives them), their signed support (what SCA's index keeps), the IVF-PQ
reconstruction and the PQ reconstruction (codes + the server's plaintext codebooks).

Writes ``--out``/search.json ``{"rows": [...], "inversion": [...], ...}`` and search.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from models.search import (
    Packing,
    ProductQuantizer,
    QueryClient,
    TableServer,
    TrustedProcess,
    recall_at_k,
    replicate_public_codes,
    sca_coefficients,
)

K = 10
LEARNS = {
    "sca": (
        "the public codes (support hidden among Sx + Sp non-zeros; the index keeps their signs), the "
        "query code (Sq noise entries) in the clear, and the result ids"
    ),
    "faiss_flat": "the public codes and every query in the clear, and the result ids",
    "faiss_ivfpq": (
        "the public codes at build time (it trains and encodes them), every query in the clear, "
        "which inverted lists each query probes, and the result ids"
    ),
    "pq_encrypted_query": (
        "the PQ codes and plaintext codebooks, only a CKKS ciphertext of each query, and the result ids "
        "returned through it; the trusted component (a simulated separate process, no enclave) sees the "
        "decrypted distance tables, from which the query is solvable by least squares"
    ),
}


def _threads(n: int) -> None:
    import faiss

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def _timed(fn, threads: int):
    _threads(threads)
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def load_vectors(args) -> dict:
    from datamodules import FashionMNISTDataModule
    from models import zoo

    model = zoo.load(args.checkpoint).eval()
    dm = FashionMNISTDataModule(data_dir=args.data_dir, download=False, val_size=1)
    dm.prepare_data()
    dm.setup("test")
    pool = dm.train_set.images
    train_rows = torch.cat([dm.train_set.indices, dm.val_set.indices])
    test_rows = dm.test_set.indices
    g = torch.Generator().manual_seed(args.seed)
    coeff = sca_coefficients(model, pool[train_rows])
    public, clean, source = replicate_public_codes(
        model, coeff, args.n, noise=args.noise, sp=args.sp, generator=g, keep_clean=True
    )
    qx = pool[test_rows[: args.queries]].float() / 255
    with torch.no_grad():
        q_public, _ = model.query(qx, sp=args.sp, generator=g)  # eq. (5): Sq noise entries
        q_clean = model.encode(qx)
    return {
        "model": model,
        "pool": pool,
        "labels": dm.train_set.labels,
        "train_rows": train_rows,
        "test_rows": test_rows,
        "public": public.numpy(),
        "clean": clean.numpy(),
        "source": source,
        "q_public": q_public.numpy().astype(np.float32),
        "q_clean": q_clean.numpy().astype(np.float32),
    }


def _row(method, params, ids, truth, truth_clean, sec1, sec_all, nq, threads, build, nbytes, **extra):
    return {
        "method": method,
        "params": params,
        "recall_at_10": round(recall_at_k(torch.as_tensor(ids), truth, K), 4),
        "recall_at_10_clean": round(recall_at_k(torch.as_tensor(ids), truth_clean[: len(ids)], K), 4),
        "qps": round(nq / sec_all, 2),
        "qps_1_thread": round(nq / sec1, 2),
        "threads": threads,
        "queries": nq,
        "build_s": round(build, 2),
        "memory_bytes": int(nbytes),
        "server_learns": LEARNS[method],
        **extra,
    }


def bench_flat(v, threads):
    import faiss

    d = v["public"].shape[1]
    start = time.perf_counter()
    flat = faiss.IndexFlatL2(d)
    flat.add(v["public"])
    build = time.perf_counter() - start
    (_, ids1), sec1 = _timed(lambda: flat.search(v["q_public"], K), 1)
    (_, ids), sec = _timed(lambda: flat.search(v["q_public"], K), threads)
    flat.reset()  # frees the vectors
    clean = faiss.IndexFlatL2(d)
    clean.add(v["clean"])
    _threads(threads)
    _, truth_clean = clean.search(v["q_clean"], K)
    clean.reset()
    truth = torch.as_tensor(ids)  # the exact search
    row = _row(
        "faiss_flat", "IndexFlatL2", ids1, truth, torch.as_tensor(truth_clean), sec1, sec,
        len(ids), threads, build, v["public"].nbytes,
    )  # fmt: skip
    return row, truth, torch.as_tensor(truth_clean)


def bench_sca(v, truth, truth_clean, threads):
    from models.sca import SupportIntersectionIndex

    start = time.perf_counter()
    index = SupportIntersectionIndex(v["public"].shape[1])
    index.add(torch.from_numpy(v["public"]))
    build = time.perf_counter() - start
    q = torch.from_numpy(v["q_public"])
    (_, ids1), sec1 = _timed(lambda: index.search(q, K), 1)
    (_, ids), sec = _timed(lambda: index.search(q, K), threads)
    nbytes = sum(b.numel() * b.element_size() for b in index._blocks + index._nnz)
    _, cand = index.search(q, 100)  # how deep the exact neighbours sit in SCA's ranking (not timed)
    in_100 = float((cand[:, :, None] == truth[:, None, :K]).any(1).double().mean())
    return _row(
        "sca", "sign-aware support intersection, int8 blocks of 8192, query batch 512",
        ids, truth, truth_clean, sec1, sec, len(q), threads, build, nbytes,
        exact_top10_in_first_100=round(in_100, 4),
    )  # fmt: skip


def _sample(x: np.ndarray, size: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).choice(len(x), min(size, len(x)), replace=False)
    return np.ascontiguousarray(x[np.sort(rows)])


def bench_ivfpq(v, truth, truth_clean, threads, args):
    import faiss

    d = v["public"].shape[1]
    _threads(threads)
    start = time.perf_counter()
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFPQ(quantizer, d, args.nlist, args.pq_m, 8)
    index.cp.seed = args.seed
    index.train(_sample(v["public"], args.train_sample, args.seed))
    index.add(v["public"])
    build = time.perf_counter() - start
    index.nprobe = args.nprobe
    (_, ids1), sec1 = _timed(lambda: index.search(v["q_public"], K), 1)
    (_, ids), sec = _timed(lambda: index.search(v["q_public"], K), threads)
    nbytes = faiss.serialize_index(index).nbytes
    params = f"nlist={args.nlist} M={args.pq_m} nbits=8 nprobe={args.nprobe}, trained on {args.train_sample}"
    row = _row("faiss_ivfpq", params, ids, truth, truth_clean, sec1, sec, len(ids), threads, build, nbytes)
    return row, index


def _encrypted_pass(client, server, tp, queries, batch, pipelined):
    """All queries through client -> server -> trusted process; ``(ids, client_s, server_s, wall_s)``."""
    ids, client_s, server_s = [], 0.0, 0.0
    pending = 0
    start = time.perf_counter()
    for s in range(0, len(queries), batch):
        t0 = time.perf_counter()
        enc = [client.encrypt(q) for q in queries[s : s + batch]]
        t1 = time.perf_counter()
        tables = [server.tables(e) for e in enc]
        t2 = time.perf_counter()
        client_s, server_s = client_s + t1 - t0, server_s + t2 - t1
        if pipelined and pending:  # the previous batch was scanned while this one was computed
            ids.append(tp.receive()[1])
            pending -= 1
        tp.submit(tables, K)
        pending += 1
        if not pipelined:
            ids.append(tp.receive()[1])
            pending -= 1
    while pending:
        ids.append(tp.receive()[1])
        pending -= 1
    return np.concatenate(ids), client_s, server_s, time.perf_counter() - start


def bench_encrypted(v, truth, truth_clean, threads, args):
    from models.search import adc_scan
    from models.search.encrypted_pq import CKKS_DEFAULTS, TrustedScanner

    d = v["public"].shape[1]
    nq = min(args.enc_queries, len(v["q_public"]))
    queries = v["q_public"][:nq]
    _threads(threads)
    start = time.perf_counter()
    pq = ProductQuantizer(d, args.pq_m, seed=args.seed).train(
        _sample(v["public"], args.train_sample, args.seed)
    )
    codes = pq.encode(v["public"])
    build_pq = time.perf_counter() - start
    packing = Packing(d, args.pq_m, pq.ksub, CKKS_DEFAULTS["poly_modulus_degree"] // 2)
    client = QueryClient(packing)
    t0 = time.perf_counter()
    server = TableServer(packing, pq.centroids, client.public_context())
    with TrustedProcess(packing, codes, client.secret_context(), threads=1) as tp:
        build = build_pq + time.perf_counter() - t0  # the client's key generation is not the server's build
        _threads(1)
        ids1, client_s, server_s, sec1 = _encrypted_pass(client, server, tp, queries, args.tc_batch, False)
        tp.set_threads(max(1, threads - 1))
        ids, _, _, sec = _encrypted_pass(client, server, tp, queries, args.tc_batch, True)
    # the same search on plaintext tables (what CKKS's approximation changes)
    _threads(threads)
    c = pq.centroids.astype(np.float64)
    qs = queries.reshape(nq, args.pq_m, -1).astype(np.float64)
    plain = (c**2).sum(-1)[None] - 2 * np.einsum("mjd,bmd->bmj", c, qs)
    onehot = TrustedScanner.make_onehot(codes, args.pq_m, pq.ksub)
    plain_ids = torch.cat(
        [adc_scan(onehot, torch.as_tensor(plain[s : s + 64]), K)[1] for s in range(0, nq, 64)]
    )
    enc_q = client.encrypt(queries[0])
    params = (
        f"M={args.pq_m} nbits=8 flat ADC scan, trained on {args.train_sample}; CKKS N="
        f"{CKKS_DEFAULTS['poly_modulus_degree']}, moduli {list(CKKS_DEFAULTS['coeff_mod_bit_sizes'])}, "
        f"scale 2^{CKKS_DEFAULTS['scale_bits']}; trusted component = separate process (simulated, no enclave)"
    )
    return _row(
        "pq_encrypted_query", params, ids, truth[:nq], truth_clean, sec1, sec, nq, threads, build,
        codes.nbytes + pq.centroids.nbytes,
        recall_at_10_vs_plaintext_pq=round(recall_at_k(torch.as_tensor(ids), plain_ids, K), 4),
        ms_per_query_1_thread={
            "client_encrypt": round(1000 * client_s / nq, 2),
            "server_tables": round(1000 * server_s / nq, 2),
            "trusted_decrypt_scan": round(1000 * (sec1 - client_s - server_s) / nq, 2),
        },
        query_ciphertext_bytes=len(enc_q),
        table_ciphertext_bytes=sum(len(t) for t in server.tables(enc_q)),
        trusted_component_bytes=int(onehot.values().nbytes + onehot.col_indices().nbytes + codes.nbytes),
    ), pq  # fmt: skip


def inversion_rows(v, ivfpq, pq, args) -> list[dict]:
    """The harness's learned inversion on what each server stores, attacker on training-split images."""
    from models.attacks.data import attacker_split, check_disjoint
    from models.attacks.inversion import learned_inversion, mean_image_nmse

    model, pool = v["model"], v["pool"]
    fit_pos, hold_pos = attacker_split(len(v["train_rows"]), args.inv_fit, args.inv_holdout, args.seed)
    rows = {
        "fit": v["train_rows"][fit_pos],
        "holdout": v["train_rows"][hold_pos],
        "test": v["test_rows"][: args.inv_test],
    }
    check_disjoint(attacker_fit=rows["fit"], attacker_holdout=rows["holdout"], evaluated=rows["test"])
    images = {k: pool[r].float() / 255 for k, r in rows.items()}
    public = {}
    for i, (k, x) in enumerate(images.items()):  # the attacker's own ambiguation draws differ
        g = torch.Generator().manual_seed(args.seed + 100 + i)
        with torch.no_grad():
            public[k] = torch.cat([model.release(x[s : s + 1000], sp=args.sp or model.hparams.sp, generator=g)
                                   for s in range(0, len(x), 1000)])  # fmt: skip
    stored = {
        "public codes (faiss_flat; received by SCA's server)": lambda p: p,
        "signed support (sca index)": torch.sign,
        "IVF-PQ reconstruction (faiss_ivfpq)": lambda p: torch.from_numpy(
            ivfpq.sa_decode(ivfpq.sa_encode(np.ascontiguousarray(p.numpy())))
        ),
        "PQ reconstruction (pq_encrypted_query)": lambda p: torch.from_numpy(pq.decode(pq.encode(p.numpy()))),
    }
    floor = round(mean_image_nmse(images["fit"], images["test"]), 4)
    out = []
    for name, fn in stored.items():
        rel = {k: fn(p).float() for k, p in public.items()}
        for arch in args.inversion_archs:
            start = time.perf_counter()
            r = learned_inversion(
                rel["fit"], images["fit"], rel["holdout"], images["holdout"], rel["test"], images["test"],
                arch=arch, max_epochs=args.inv_epochs, patience=args.inv_patience, seed=args.seed,
            )  # fmt: skip
            out.append({
                "stored": name, "arch": arch, "nmse": round(r["nmse"], 4), "ssim": round(r["ssim"], 4),
                "epochs": r["epochs"], "seconds": round(time.perf_counter() - start, 1),
                "mean_image_nmse": floor,
            })  # fmt: skip
            print(f"  inversion {arch:4s} on {name}: NMSE {r['nmse']:.4f} SSIM {r['ssim']:.4f}", flush=True)
    return out


_STORED_OF = {
    "sca": "signed support (sca index)",
    "faiss_flat": "public codes (faiss_flat; received by SCA's server)",
    "faiss_ivfpq": "IVF-PQ reconstruction (faiss_ivfpq)",
    "pq_encrypted_query": "PQ reconstruction (pq_encrypted_query)",
}


def markdown(out: dict) -> str:
    lines = [
        f"n = {out['n']:,} vectors x {out['dim']}, {out['queries']} queries, k = {K}, "
        f"threads = {out['threads']}; total {out['seconds_search']:.0f} s for the four rows.",
        "",
        "| method | recall@10 | recall@10 (clean codes) | qps 1 thread | qps all | build s | memory MB "
        "| params |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in out["rows"]:
        lines.append(
            f"| {r['method']} | {r['recall_at_10']:.4f} | {r['recall_at_10_clean']:.4f} | "
            f"{r['qps_1_thread']:.1f} | {r['qps']:.1f} | {r['build_s']:.1f} | "
            f"{r['memory_bytes'] / 2**20:.1f} | "
            f"{r['params']} |"
        )
    sca = next(r for r in out["rows"] if r["method"] == "sca")
    if "exact_top10_in_first_100" in sca:
        lines += [
            "",
            f"sca ranks by the signed support only: {sca['exact_top10_in_first_100']:.4f} of the exact "
            "(L2 on values) top-10 are among its first 100 results.",
        ]
    lines += ["", "What the server learns:", ""]
    lines += [f"- **{r['method']}**: {r['server_learns']}." for r in out["rows"]]
    enc = next(r for r in out["rows"] if r["method"] == "pq_encrypted_query")
    lines += [
        "",
        f"pq_encrypted_query: {enc['queries']} queries; ms per query on one thread "
        f"{enc['ms_per_query_1_thread']}; query ciphertext {enc['query_ciphertext_bytes']:,} B, tables "
        f"{enc['table_ciphertext_bytes']:,} B; recall@10 against the same search on plaintext tables "
        f"{enc['recall_at_10_vs_plaintext_pq']:.4f}. The trusted component is a separate process, "
        "not an enclave.",
    ]
    if out.get("inversion"):
        lines += [
            "",
            f"Privacy against speed (learned inversion, higher NMSE = more private; mean-image floor "
            f"{out['inversion'][0]['mean_image_nmse']}):",
            "",
            "| method | stored | inversion NMSE (worst arch) | SSIM | qps all |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in out["rows"]:
            inv = [i for i in out["inversion"] if i["stored"] == _STORED_OF[r["method"]]]
            worst = min(inv, key=lambda i: i["nmse"])
            lines.append(
                f"| {r['method']} | {worst['stored']} | {worst['nmse']:.4f} ({worst['arch']}) | "
                f"{worst['ssim']:.4f} | {r['qps']:.1f} |"
            )
        lines += ["", "| stored | arch | NMSE | SSIM | epochs |", "| --- | --- | --- | --- | --- |"]
        lines += [
            f"| {i['stored']} | {i['arch']} | {i['nmse']:.4f} | {i['ssim']:.4f} | {i['epochs']} |"
            for i in out["inversion"]
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="database vectors")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--enc-queries", type=int, default=1000, help="queries of pq_encrypted_query")
    parser.add_argument("--checkpoint", default="sca-fashion-mnist-sx16")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--sp", type=int, default=None, help="ambiguation entries (default: the model's)")
    parser.add_argument("--noise", type=float, default=0.1, help="replica noise, in coefficient std")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--pq-m", type=int, default=16, help="PQ sub-quantizers (IVF-PQ and encrypted PQ)")
    parser.add_argument("--train-sample", type=int, default=100_000)
    parser.add_argument("--tc-batch", type=int, default=32, help="queries per trusted-component scan")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="'all' threads")
    parser.add_argument("--no-inversion", action="store_true")
    parser.add_argument("--inversion-archs", nargs="+", default=["mlp", "conv"])
    parser.add_argument("--inv-fit", type=int, default=10000)
    parser.add_argument("--inv-holdout", type=int, default=2000)
    parser.add_argument("--inv-test", type=int, default=10000)
    parser.add_argument("--inv-epochs", type=int, default=15)
    parser.add_argument("--inv-patience", type=int, default=2)
    parser.add_argument("--out", default="runs/search")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < K or args.queries < 1 or args.enc_queries < 1:
        raise SystemExit(f"need --n >= {K} and at least one query, got n={args.n}, queries={args.queries}")

    t_start = time.perf_counter()
    _threads(args.threads)
    v = load_vectors(args)
    t_data = time.perf_counter() - t_start
    print(f"data: {args.n:,} public codes x {v['public'].shape[1]} ({t_data:.0f} s)", flush=True)
    flat_row, truth, truth_clean = bench_flat(v, args.threads)
    rows = {"faiss_flat": flat_row}
    print(f"  faiss_flat {flat_row['qps']:.1f} qps", flush=True)
    rows["sca"] = bench_sca(v, truth, truth_clean, args.threads)
    print(f"  sca {rows['sca']['qps']:.1f} qps, recall@10 {rows['sca']['recall_at_10']}", flush=True)
    rows["faiss_ivfpq"], ivfpq = bench_ivfpq(v, truth, truth_clean, args.threads, args)
    ivf = rows["faiss_ivfpq"]
    print(f"  faiss_ivfpq {ivf['qps']:.1f} qps, recall@10 {ivf['recall_at_10']}", flush=True)
    rows["pq_encrypted_query"], pq = bench_encrypted(v, truth, truth_clean, args.threads, args)
    enc = rows["pq_encrypted_query"]
    print(f"  pq_encrypted_query {enc['qps']:.1f} qps, recall@10 {enc['recall_at_10']}", flush=True)
    t_search = time.perf_counter() - t_start
    out = {
        "n": args.n,
        "dim": int(v["public"].shape[1]),
        "queries": args.queries,
        "threads": args.threads,
        "args": vars(args),
        "seconds_data": round(t_data, 1),
        "seconds_search": round(t_search, 1),
        "rows": [rows[m] for m in ("sca", "faiss_flat", "faiss_ivfpq", "pq_encrypted_query")],
    }
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    from models.io import atomic_write_text

    atomic_write_text(folder / "search.json", json.dumps(out, indent=2))  # the rows, before the inversions
    if not args.no_inversion:
        out["inversion"] = inversion_rows(v, ivfpq, pq, args)
        for r in out["rows"]:
            inv = [i for i in out["inversion"] if i["stored"] == _STORED_OF[r["method"]]]
            r["inversion_nmse"] = min(i["nmse"] for i in inv)
    out["seconds_total"] = round(time.perf_counter() - t_start, 1)
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    atomic_write_text(folder / "search.json", json.dumps(out, indent=2))
    md = markdown(out)
    atomic_write_text(folder / "search.md", md)
    print(md)
    print(f"search rows {t_search:.0f} s, total {out['seconds_total']:.0f} s; wrote {folder}/search.json")
    return out


if __name__ == "__main__":
    main()
