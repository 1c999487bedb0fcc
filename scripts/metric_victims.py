"""Clean-retrieval gate of the metric-learning victims: C->C mAP / nDCG@100 against the shipped ADSH victim.

    python scripts/metric_victims.py --data-dir data                       # the harness's full split
    python scripts/metric_victims.py --data-dir data --losses proxy_anchor --epochs 2

On clean Fashion-MNIST with the split of ``scripts/attack.py``'s retrieval attacks (query = test images,
database and victim training = training images, disjoint from the queries), trains each
:class:`models.attacks.metric_learning.MetricVictim` and reports C->C mAP@all and nDCG@100 of its
real-valued embedding (Euclidean ranking) and of its sign codes (Hamming ranking, ``models.metrics``),
next to the shipped ADSH victim's on the same split. Defaults = how ``scripts/attack.py`` trains them
(on the 10,000 database images, each loss's ``VICTIM_EPOCHS`` and ``VICTIM_SETTINGS``, no early stopping).
A victim passes the gate (may be used as an attacker) when its C->C mAP reaches ADSH's. Writes
``--out``/metric_victims.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from models.attacks.data import check_disjoint
from models.attacks.metric_learning import (
    METRIC_LOSSES,
    VICTIM_SETTINGS,
    distance_map_ndcg,
    train_metric_victim,
)
from models.attacks.retrieval import hash_uint8
from models.metrics import hamming_map, hamming_ndcg

ADSH_VICTIM = "adsh-fashion-mnist-16bit"


def _sign_scores(codes_q, codes_d, ql, dl) -> dict:
    return {
        "map": round(float(hamming_map(codes_q, ql, codes_d, dl)), 4),
        "ndcg_at_100": round(float(hamming_ndcg(codes_q, ql, codes_d, dl, k=100)), 4),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--losses", nargs="+", default=list(METRIC_LOSSES), choices=METRIC_LOSSES)
    parser.add_argument("--num-query", type=int, default=2000)
    parser.add_argument("--num-database", type=int, default=10000)
    parser.add_argument("--num-train", type=int, default=10000, help="<= --num-database (drawn from it)")
    parser.add_argument("--epochs", type=int, default=None, help="default: per loss, VICTIM_EPOCHS")
    parser.add_argument("--patience", type=int, default=None, help="early-stopping patience (default: none)")
    parser.add_argument("--dim", type=int, default=16, help="embedding size = sign-code bits")
    parser.add_argument("--out", default="runs/metric_victims")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from datamodules import FashionMNISTDataModule
    from models import zoo

    dm = FashionMNISTDataModule(
        data_dir=args.data_dir, download=False, split="retrieval", num_query=args.num_query,
        num_database=args.num_database, num_train=args.num_train, seed=args.seed,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("test")
    pool, labels = dm.query_set.images, dm.query_set.labels
    q_idx, d_idx, t_idx = dm.query_set.indices, dm.database_set.indices, dm.train_set.indices
    check_disjoint(victim_training=t_idx, queries=q_idx)
    ql, dl = labels[q_idx], labels[d_idx]

    adsh = zoo.load(ADSH_VICTIM)
    ref = _sign_scores(hash_uint8(adsh.hash, pool[q_idx]), hash_uint8(adsh.hash, pool[d_idx]), ql, dl)
    print(f"{ADSH_VICTIM}: C->C mAP {ref['map']:.4f}, nDCG@100 {ref['ndcg_at_100']:.4f}", flush=True)
    rows = []
    for loss in args.losses:
        start = time.perf_counter()
        victim, info = train_metric_victim(
            loss, pool[t_idx], labels[t_idx], args.dim, 10, max_epochs=args.epochs, patience=args.patience,
            seed=args.seed,
        )  # fmt: skip
        victim.eval()
        eq, ed = hash_uint8(victim.embedding, pool[q_idx]), hash_uint8(victim.embedding, pool[d_idx])
        real_map, real_ndcg = distance_map_ndcg(eq, ql, ed, dl, k=100)
        sign = _sign_scores(
            hash_uint8(victim.hash, pool[q_idx]), hash_uint8(victim.hash, pool[d_idx]), ql, dl
        )
        row = {
            "loss": loss,
            "real_map": round(real_map, 4),
            "real_ndcg_at_100": round(real_ndcg, 4),
            "sign_map": sign["map"],
            "sign_ndcg_at_100": sign["ndcg_at_100"],
            "epochs": info["epochs"],
            "settings": VICTIM_SETTINGS.get(loss, {}),
            "train_images": len(t_idx),
            "seconds": round(time.perf_counter() - start, 1),
            "passes_gate_real": real_map >= ref["map"],
            "passes_gate_sign": sign["map"] >= ref["map"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {
        "adsh": {"checkpoint": ADSH_VICTIM, **ref},
        "split": {"query": len(q_idx), "database": len(d_idx), "train": len(t_idx)},
        "dim": args.dim,
        "rows": rows,
    }
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    from models.io import atomic_write_text

    atomic_write_text(folder / "metric_victims.json", json.dumps(out, indent=2))
    lines = [
        f"Clean C->C on {len(q_idx)} queries x {len(d_idx)} database images; ADSH ({ADSH_VICTIM}) "
        f"mAP {ref['map']:.4f}, nDCG@100 {ref['ndcg_at_100']:.4f}.",
        "",
        "| loss | settings | real mAP | real nDCG@100 | sign mAP | sign nDCG@100 | epochs "
        "| gate (real / sign) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['loss']} | {', '.join(f'{k}={v}' for k, v in r['settings'].items()) or 'defaults'} | "
        f"{r['real_map']:.4f} | {r['real_ndcg_at_100']:.4f} | {r['sign_map']:.4f} | "
        f"{r['sign_ndcg_at_100']:.4f} | {r['epochs']} | {r['passes_gate_real']} / {r['passes_gate_sign']} |"
        for r in rows
    ]
    atomic_write_text(folder / "metric_victims.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()
