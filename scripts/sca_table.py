"""Measures SCA's Table I (normalised MSE and SSIM vs Sx and Sp) on the Fashion-MNIST test set.

    python scripts/sca_table.py --ckpt runs/sca/sca-fashion-mnist-sx16.ckpt --out runs/sca/table

``--split val`` measures the same table on the 5,000 held-out training images, to choose among checkpoints
without looking at the test set.

* authorized user, Sp = 0, Sx in {1, 2, 4, 8, 16} (one model: the top-k is applied at encode time);
* Sx = 16, Sp in {8, 16, 24, 32}: the authorized user purifies the public code with the true support;
  a curious server runs every attack of :data:`models.sca.SERVER_ATTACKS`. The paper's attacks are
  ``as_is`` and ``top_sx`` (the strongest of them is compared with the paper); ``posterior_mean`` is an
  extra, stronger attack reported next to it.

Normalised MSE is ``||x - x_hat||^2 / ||x||^2`` averaged over images (``nmse``; ``nmse_global`` divides the
sums), SSIM is torchmetrics' (11x11 Gaussian window, data range 1). The measurement lives in
:mod:`models.sca.evaluate` (shared with the zoo's ``zoo_metrics``). Writes ``table.json``, ``table.md``
and an offline wandb run with the table (``WANDB_MODE`` respected).

``--tradeoff`` measures the privacy / utility / search trade-off instead (``tradeoff.json``, ``.md``,
``.png`` and a wandb table + image), for Sp in {8, 16, 24, 32, 48, 64, 96} at Sx = 16 and each ambiguation
mechanism (``paper``: eq. 4's noise; ``decoy``: entries of other real training-split codes)::

    python scripts/sca_table.py --zoo sca-fashion-mnist-sx16 --tradeoff --mechanisms paper --out runs/p
    python scripts/sca_table.py --zoo sca-fashion-mnist-sx16 --tradeoff --mechanisms decoy --out runs/d
    python scripts/sca_table.py --combine runs/p/tradeoff.json runs/d/tradeoff.json --out runs/tradeoff

Per row: the authorized user's NMSE / SSIM (purified codes), every reconstruction attack of the harness
(``as_is``, ``top_sx``, ``posterior_mean`` and the learned ``inversion_mlp`` / ``inversion_conv`` of
:mod:`models.attacks`, trained on training-split images disjoint from the test images) and the strongest
of them, the noise-distinguishability AUC (max of the KS |value| rank AUC and the learned noise
classifier), and recall@10 of the private search (authorized queries with ``min(Sq, Sp)`` noise entries
against the pixel-domain 10 nearest neighbours; faiss IndexFlatIP on the same codes next to it).

``--tradeoff --search-only`` measures only the search columns (recall@10 and nDCG@100 with class gains, for
both the private search and faiss) on the same split and seeds, in about a minute (``search.json``, ``.md``;
``--card`` writes it as the card's "Private search" section).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from datamodules import FashionMNISTDataModule
from models.sca import MECHANISMS, SCA, SERVER_ATTACKS
from models.sca.evaluate import (  # noqa: F401 (PAPER_* re-exported for callers of the script)
    PAPER_ATTACKS,
    PAPER_AUTH,
    PAPER_SERVER,
    measure,
    refit_statistics,
)


def markdown(result: dict) -> str:
    lines = [
        f"SCA Table I on Fashion-MNIST {result.get('split', 'test')} ({result['num_images']} images), "
        f"checkpoint `{result['checkpoint']}`",
        "",
        "| setting | NMSE | SSIM | paper NMSE | paper SSIM | meets |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for sx, r in result["authorized"].items():
        meets = "yes" if r.get("meets_nmse") and r.get("meets_ssim") else "no"
        lines.append(
            f"| authorized, Sp=0, Sx={sx} | {r['nmse']:.4f} | {r['ssim']:.4f} | "
            f"{r.get('paper_nmse', '-')} | {r.get('paper_ssim', '-')} | {meets} |"
        )
    sx = result["table_sx"]
    for sp, r in result["ambiguation"].items():
        a = r["authorized"]
        lines.append(f"| authorized, Sx={sx}, Sp={sp} | {a['nmse']:.4f} | {a['ssim']:.4f} | | | |")
        for name in SERVER_ATTACKS:
            s = r[name]
            tag = " (paper's attacks' strongest)" if name == r["strongest_paper_attack"] else ""
            tag += " (strongest)" if name == r["strongest_attack"] else ""
            meets = ""
            if "paper_server_nmse" in r:
                meets = "yes" if s["nmse"] >= r["paper_server_nmse"] else "no"
            lines.append(
                f"| server `{name}`{tag}, Sx={sx}, Sp={sp} | {s['nmse']:.4f} | {s['ssim']:.4f} | "
                f"{r.get('paper_server_nmse', '-')} | {r.get('paper_server_ssim', '-')} | {meets} |"
            )
    lines += ["", "Server rows: 'meets' = NMSE >= the paper's (privacy at least as strong).", ""]
    lines += [
        "Two-sample KS test, informative vs noise entries of the public codes (values / magnitudes):",
        "",
    ]
    for sp, r in result["ambiguation"].items():
        kv, km = r["ks_values"], r["ks_magnitudes"]
        lines.append(
            f"- Sp={sp}: D={kv['statistic']:.4f} (p={kv['pvalue']:.3g}) / "
            f"D={km['statistic']:.4f} (p={km['pvalue']:.3g})"
        )
    return "\n".join(lines) + "\n"


def log_wandb(result: dict, out_dir: Path) -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    table = wandb.Table(columns=["party", "attack", "Sx", "Sp", "nmse", "nmse_global", "ssim"])
    for sx, r in result["authorized"].items():
        table.add_data("authorized", "", int(sx), 0, r["nmse"], r["nmse_global"], r["ssim"])
    for sp, r in result["ambiguation"].items():
        a = r["authorized"]
        table.add_data("authorized", "", result["table_sx"], int(sp), a["nmse"], a["nmse_global"], a["ssim"])
        for name in SERVER_ATTACKS:
            s = r[name]
            table.add_data(
                "server", name, result["table_sx"], int(sp), s["nmse"], s["nmse_global"], s["ssim"]
            )
    run = wandb.init(
        project="privzoo", job_type="sca_table", dir=str(out_dir), config={"checkpoint": result["checkpoint"]}
    )
    run.log({"sca/table_I": table})
    run.finish()


# ----------------------------------------------------------------------------------------------------
# --tradeoff: privacy vs utility vs search over Sp, for each ambiguation mechanism
# ----------------------------------------------------------------------------------------------------
TRADEOFF_SP = (8, 16, 24, 32, 48, 64, 96)
RECON_ATTACKS = ("as_is", "top_sx", "posterior_mean", "inversion_mlp", "inversion_conv")
#: the curious server's target at Sx = 16 (Table I's claim at Sp = 32), now against every attack
SERVER_TARGET = PAPER_SERVER[32][0]


def _recall_at_k(ids: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean fraction of the true k nearest neighbours among the k results (``ids``, ``truth``: [B, k])."""
    hits = (ids[:, :, None] == truth[:, None, :]).any(1).sum(1).double()
    return float((hits / truth.shape[1]).mean())


def search_recall(model, released, x_query, x_db, sx, sp, sq, k, seed, labels=None) -> dict:
    """recall@k of the private search against the pixel-domain k nearest neighbours.

    The database holds the public codes (``released(images, sp, generator)``) of ``x_db``; an authorized
    query is ``phi(y)`` with ``Sq = min(sq, sp)`` noise entries (eq. 5). Ground truth: the ``k`` nearest
    database images of each query image in pixel space (L2). Also reported: faiss IndexFlatIP on the same
    real-valued query and public codes. With ``labels = (query_labels, db_labels)``, also nDCG@100 of
    both rankings with class gains (:func:`models.metrics.ranked_ndcg`).
    """
    import faiss

    from models.metrics import ranked_ndcg
    from models.sca import SupportIntersectionIndex

    sq = min(sq, sp)
    db = released(x_db, sp, torch.Generator().manual_seed(seed + 11))
    q = released(x_query, sq, torch.Generator().manual_seed(seed + 12))
    xq, xd = x_query.float().flatten(1) / 255, x_db.float().flatten(1) / 255
    truth = torch.cdist(xq, xd).topk(k, dim=1, largest=False).indices
    index = SupportIntersectionIndex(model.code_dim)
    index.add(db)
    flat = faiss.IndexFlatIP(model.code_dim)
    flat.add(db.numpy().astype("float32"))
    q32 = q.numpy().astype("float32")

    def ids(depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        # one search per depth: the index's integer distances tie, and topk orders ties by depth
        return index.search(q, depth)[1], torch.as_tensor(flat.search(q32, depth)[1])

    top, ftop = ids(k)
    out = {
        "sq": sq,
        "recall": round(_recall_at_k(top, truth), 4),
        "faiss_recall": round(_recall_at_k(ftop, truth), 4),
        "queries": len(x_query),
        "database": len(x_db),
    }
    if labels is not None:
        deep, fdeep = ids(100)
        out["ndcg_100"] = round(float(ranked_ndcg(deep, *labels, k=100)), 4)
        out["faiss_ndcg_100"] = round(float(ranked_ndcg(fdeep, *labels, k=100)), 4)
    return out


def tradeoff(model, data: dict, args, bar=None) -> dict:
    """Every row of the trade-off table: for each mechanism and Sp at Sx = ``args.table_sx``.

    Args:
        model: the SCA model (eval mode).
        data: ``scripts/attack.py``'s :func:`standard_data` (attacker's training-split rows, test rows)
            plus ``"decoy"``: training-split rows of the decoy pool (disjoint from the attacker's rows).
        args: the parsed command line (sizes, mechanisms, Sp list, seed).
    """
    from attack import _batched

    from models.attacks.distinguish import ks_attack, noise_classifier_attack
    from models.attacks.inversion import learned_inversion, mean_image_nmse
    from models.attacks.metrics import nmse, ssim
    from models.sca.ambiguation import match_decoys

    sx, seed, pool_img = args.table_sx, args.seed, data["pool"]
    x = {k: pool_img[data[k]] for k in ("fit", "holdout", "test")}
    xf = {k: v.float() / 255 for k, v in x.items()}
    codes = {k: _batched(model.encode, v, sx=sx) for k, v in x.items()}
    decoys = _batched(model.encode, pool_img[data["decoy"]], sx=sx)
    shape = (int(model.hparams.code_maps), int(model.hparams.code_length))
    search = _search_context(model, data, args, decoys)
    out = {
        "mean_image_nmse": round(mean_image_nmse(xf["fit"], xf["test"]), 4),
        "decoy_pool": len(data["decoy"]),
        "rows": [],
        "search_sp0": search("paper", 0),
    }
    for mechanism in args.mechanisms:
        for sp in args.tradeoff_sp:
            t0 = time.time()
            gens = {
                k: torch.Generator().manual_seed(seed + i) for i, k in enumerate(("test", "fit", "holdout"))
            }
            pub = {
                k: model.ambiguate(codes[k], sp, gens[k], mechanism=mechanism, pool=decoys)
                for k in ("test", "fit", "holdout")
            }
            row = {"mechanism": mechanism, "sp": sp, "sx": sx, "attacks": {}}
            with torch.no_grad():
                auth = _batched_decode(model, model.purify(pub["test"], codes["test"] != 0))
                row["authorized"] = {
                    "nmse": round(nmse(auth, xf["test"]), 4),
                    "ssim": round(ssim(auth, xf["test"]), 4),
                }
                server = {}
                for s in range(0, len(pub["test"]), 1000):
                    for name, images in model.server_attacks(pub["test"][s : s + 1000], sx=sx).items():
                        server.setdefault(name, []).append(images)
            for name, parts in server.items():
                recon = torch.cat(parts)
                row["attacks"][name] = {
                    "nmse": round(nmse(recon, xf["test"]), 4),
                    "ssim": round(ssim(recon, xf["test"]), 4),
                }
            for arch in ("mlp", "conv"):
                r = learned_inversion(
                    pub["fit"], xf["fit"], pub["holdout"], xf["holdout"], pub["test"], xf["test"],
                    arch=arch, max_epochs=args.epochs, patience=args.patience, seed=seed,
                )  # fmt: skip
                row["attacks"][f"inversion_{arch}"] = {
                    "nmse": round(r["nmse"], 4),
                    "ssim": round(r["ssim"], 4),
                    "epochs": r["epochs"],
                }
            if mechanism == "decoy":  # outside the threat model (the pool is secret): what a leak costs
                with torch.no_grad():
                    found = match_decoys(pub["test"].view(-1, *shape), decoys.view(-1, *shape)).flatten(1)
                    leak = _batched_decode(model, model.purify(pub["test"], found))
                row["pool_leaked"] = {
                    "nmse": round(nmse(leak, xf["test"]), 4),
                    "ssim": round(ssim(leak, xf["test"]), 4),
                    "support_recovered": round(
                        float((found == (codes["test"] != 0)).all(1).double().mean()), 4
                    ),
                }
            strongest = min(RECON_ATTACKS, key=lambda a: row["attacks"][a]["nmse"])
            row["strongest_attack"] = strongest
            row["strongest_nmse"] = row["attacks"][strongest]["nmse"]
            row["strongest_nmse_ssim"] = row["attacks"][strongest]["ssim"]
            best_ssim = max(RECON_ATTACKS, key=lambda a: row["attacks"][a]["ssim"])
            row["max_ssim_attack"], row["max_ssim"] = best_ssim, row["attacks"][best_ssim]["ssim"]
            ks = ks_attack(pub["test"], codes["test"])
            nc = noise_classifier_attack(
                pub["fit"], codes["fit"], pub["test"], codes["test"], int(model.hparams.code_maps),
                max_entries=args.noise_entries, max_epochs=args.noise_epochs, seed=seed,
            )  # fmt: skip
            row["auc_ks"], row["auc_noise_classifier"] = round(ks["auc"], 4), round(nc["auc"], 4)
            row["auc"] = max(row["auc_ks"], row["auc_noise_classifier"])
            row["search"] = search(mechanism, sp)
            row["meets_server_target"] = row["strongest_nmse"] >= SERVER_TARGET
            row["seconds"] = round(time.time() - t0, 1)
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
            if bar is not None:
                bar.update(1)
    out["first_sp_meeting_target"] = first_meeting_target(out["rows"])
    return out


def _search_context(model, data: dict, args, decoys: torch.Tensor):
    """``search(mechanism, sp)``: :func:`search_recall` of the trade-off's split (the first
    ``args.num_query`` test images query the other test images; ``decoys``: the decoy pool's codes)."""
    from attack import _batched

    sx, x_test = args.table_sx, data["pool"][data["test"]]
    labels = data["labels"][data["test"]]
    q, db = x_test[: args.num_query], x_test[args.num_query :]
    split_labels = (labels[: args.num_query], labels[args.num_query :])

    def search(mechanism: str, sp: int) -> dict:
        def released(images, sp, generator):
            fn = lambda xb: model.ambiguate(  # noqa: E731
                model.encode(xb, sx=sx), sp, generator, mechanism=mechanism, pool=decoys
            )
            return _batched(fn, images)

        return search_recall(model, released, q, db, sx, sp, args.sq, 10, args.seed, split_labels)

    return search


def search_only(model, data: dict, args) -> dict:
    """The trade-off table's search columns alone (recall@10, nDCG@100; no attackers), same split and seeds:
    its recall@10 values equal the full table's."""
    from attack import _batched

    decoys = _batched(model.encode, data["pool"][data["decoy"]], sx=args.table_sx)
    search = _search_context(model, data, args, decoys)
    rows = [{"mechanism": "none", "sp": 0, "search": search("paper", 0)}]
    for m in args.mechanisms:
        rows += [{"mechanism": m, "sp": sp, "search": search(m, sp)} for sp in args.tradeoff_sp]
    return {"decoy_pool": len(data["decoy"]), "rows": rows}


def search_markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"SCA private search at Sx={s['sx']} on Fashion-MNIST test, model `{result['model']}`: "
        f"{s['num_query']} test queries (authorized, Sq = min({s['sq']}, Sp) noise entries) vs the other "
        f"{s['test'] - s['num_query']} test images' public codes. recall@10 against the pixel-domain 10 "
        "nearest neighbours; nDCG@100 with class gains (1 for the query's class, discount "
        "1 / log2(rank + 1)). "
        "faiss: IndexFlatIP on the same real-valued query and public codes. Decoy pool: "
        f"{result['decoy_pool']} training-split codes.",
        "",
        "| mechanism | Sp | Sq | recall@10 | faiss recall@10 | nDCG@100 | faiss nDCG@100 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        q = r["search"]
        lines.append(
            f"| {r['mechanism']} | {r['sp']} | {q['sq']} | {q['recall']:.4f} | {q['faiss_recall']:.4f} | "
            f"{q['ndcg_100']:.4f} | {q['faiss_ndcg_100']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def first_meeting_target(rows: list[dict]) -> dict:
    """Per mechanism: the smallest Sp whose strongest attack meets the server target, and its recall@10."""
    out = {}
    for mechanism in dict.fromkeys(r["mechanism"] for r in rows):
        ok = [r for r in rows if r["mechanism"] == mechanism and r["meets_server_target"]]
        first = min(ok, key=lambda r: r["sp"]) if ok else None
        out[mechanism] = None if first is None else {"sp": first["sp"], "recall": first["search"]["recall"]}
    return out


def combine_tradeoffs(paths: list[str]) -> dict:
    """One trade-off table from several ``tradeoff.json`` runs of the same model and sizes (e.g. one run
    per mechanism, run in parallel)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    same = ("sx", "fit", "holdout", "test", "epochs", "patience", "noise_entries", "num_query", "sq", "seed")
    for p, part in zip(paths[1:], parts[1:], strict=True):
        diff = [k for k in same if part["settings"][k] != first["settings"][k]]
        if part["model"] != first["model"] or diff:
            raise SystemExit(f"{p} was measured with other settings ({diff or 'model'}) than {paths[0]}")
    order = {m: i for i, m in enumerate(MECHANISMS)}  # the paper's first, then by Sp
    rows = sorted((r for part in parts for r in part["rows"]), key=lambda r: (order[r["mechanism"]], r["sp"]))
    settings = dict(first["settings"])
    settings["mechanisms"] = list(dict.fromkeys(r["mechanism"] for r in rows))
    settings["sp"] = sorted({r["sp"] for r in rows})
    return {
        **first,
        "rows": rows,
        "settings": settings,
        "first_sp_meeting_target": first_meeting_target(rows),
        "seconds": round(sum(part["seconds"] for part in parts), 1),
        "combined_from": list(paths),
        "parts": [{k: part[k] for k in ("model", "settings", "decoy_pool")} for part in parts],
    }


def _batched_decode(model, codes: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat([model.decode(codes[s : s + batch_size]) for s in range(0, len(codes), batch_size)])


def tradeoff_commands(result: dict) -> list[str]:
    """The commands that reproduce a trade-off result (each run, then ``--combine`` of their outputs)."""
    if "parts" in result:
        runs = [_run_command(part, f"runs/sca/tradeoff_{i}") for i, part in enumerate(result["parts"])]
        outs = " ".join(f"runs/sca/tradeoff_{i}/tradeoff.json" for i in range(len(runs)))
        return runs + [f"scripts/sca_table.py --combine {outs} --out runs/sca/tradeoff"]
    return [_run_command(result, None)]


def _run_command(result: dict, out: str | None) -> str:
    s = result["settings"]
    model = result["model"]
    source = f"--ckpt {model}" if model.endswith(".ckpt") or "/" in model else f"--zoo {model}"
    common = (
        f"scripts/sca_table.py {source} --tradeoff --tradeoff-sp {' '.join(map(str, s['sp']))} "
        f"--fit {s['fit']} --holdout {s['holdout']} --epochs {s['epochs']} --patience {s['patience']} "
        f"--noise-entries {s['noise_entries']} --noise-epochs {s['noise_epochs']} --decoy-pool "
        f"{result['decoy_pool']} --num-query {s['num_query']} --sq {s['sq']} --seed {s['seed']} "
        f"--limit {s['test']}"
    )
    command = f"{common} --mechanisms {' '.join(s['mechanisms'])}"
    return command if out is None else f"{command} --out {out}"


def _ndcg_cell(search: dict) -> str:
    """nDCG@100 of the private search and of faiss (class gains); empty for tables measured before it."""
    if "ndcg_100" not in search:
        return ""
    return f"{search['ndcg_100']:.4f} / {search['faiss_ndcg_100']:.4f}"


def tradeoff_markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"SCA privacy / utility / search trade-off at Sx={s['sx']} on Fashion-MNIST test "
        f"({s['test']} images), model `{result['model']}`",
        "",
        f"Learned attackers: trained on {s['fit']} + {s['holdout']} (early stopping) training-split images "
        f"(disjoint from the test images), at most {s['epochs']} epochs (patience {s['patience']}); noise "
        f"classifier: {s['noise_entries']} entries, {s['noise_epochs']} epochs. Decoy pool: "
        f"{result['decoy_pool']} training-split codes disjoint from the attacker's images. Search: "
        f"{s['num_query']} test queries vs the other test images, recall@10 against the pixel-domain 10 "
        f"nearest neighbours; nDCG@100 with class gains. Mean-training-image NMSE: "
        f"{result['mean_image_nmse']:.4f}; server target: "
        f"NMSE >= {SERVER_TARGET} (the paper's claim at Sp=32).",
        "",
        "| mechanism | Sp | auth NMSE | auth SSIM | strongest attack | its NMSE | its SSIM | max attack SSIM "
        "| noise AUC (KS / classifier) | Sq | recall@10 | faiss recall@10 | nDCG@100 (sca / faiss) "
        "| meets target |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    r0 = result["search_sp0"]
    lines.append(
        f"| none | 0 | | | | | | | | 0 | {r0['recall']:.4f} | {r0['faiss_recall']:.4f} | {_ndcg_cell(r0)} | |"
    )
    for r in result["rows"]:
        a, q = r["authorized"], r["search"]
        lines.append(
            f"| {r['mechanism']} | {r['sp']} | {a['nmse']:.4f} | {a['ssim']:.4f} | "
            f"`{r['strongest_attack']}` | {r['strongest_nmse']:.4f} | {r['strongest_nmse_ssim']:.4f} | "
            f"{r['max_ssim']:.4f} (`{r['max_ssim_attack']}`) | {r['auc']:.4f} "
            f"({r['auc_ks']:.4f} / {r['auc_noise_classifier']:.4f}) "
            f"| {q['sq']} | {q['recall']:.4f} | {q['faiss_recall']:.4f} | {_ndcg_cell(q)} | "
            f"{'yes' if r['meets_server_target'] else 'no'} |"
        )
    lines += ["", "Every attack's NMSE / SSIM:", ""]
    lines += ["| mechanism | Sp | " + " | ".join(f"`{a}`" for a in RECON_ATTACKS) + " |"]
    lines += ["| --- | ---: |" + " --- |" * len(RECON_ATTACKS)]
    for r in result["rows"]:
        cells = [f"{r['attacks'][a]['nmse']:.4f} / {r['attacks'][a]['ssim']:.4f}" for a in RECON_ATTACKS]
        lines.append(f"| {r['mechanism']} | {r['sp']} | " + " | ".join(cells) + " |")
    lines += ["", "Reproduce (OMP_NUM_THREADS=1, data in `data/`):", "", "```bash"]
    lines += tradeoff_commands(result) + ["```"]
    leaked = [r for r in result["rows"] if "pool_leaked" in r]
    if leaked:
        lines += [
            "",
            "Outside the threat model: a server that holds the decoy pool removes the decoys by exact "
            "matching (NMSE / SSIM of its reconstruction, fraction of codes whose support it recovers "
            "exactly). The pool must stay the data owner's secret:",
            "",
        ]
        lines += [
            f"- decoy Sp={r['sp']}: {r['pool_leaked']['nmse']:.4f} / {r['pool_leaked']['ssim']:.4f}, "
            f"support recovered {r['pool_leaked']['support_recovered']:.4f}"
            for r in leaked
        ]
    lines += [""]
    for mechanism, first in result["first_sp_meeting_target"].items():
        if first is None:
            lines.append(
                f"- {mechanism}: no Sp of the table meets NMSE >= {SERVER_TARGET} against every attack."
            )
        else:
            lines.append(
                f"- {mechanism}: Sp={first['sp']} is the first to meet NMSE >= {SERVER_TARGET} against every "
                f"attack; recall@10 there {first['recall']:.4f} (Sp=0: {r0['recall']:.4f})."
            )
    return "\n".join(lines) + "\n"


def tradeoff_plot(result: dict):
    """uint8 RGB ``[H, W, 3]`` picture: strongest-attack / authorized NMSE and recall@10 vs Sp."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(15, 4), dpi=100)
    for mechanism in dict.fromkeys(r["mechanism"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["mechanism"] == mechanism]
        sps = [r["sp"] for r in rows]
        ax.plot(sps, [r["strongest_nmse"] for r in rows], "o-", label=f"{mechanism}: strongest attack")
        ax.plot(sps, [r["authorized"]["nmse"] for r in rows], "x--", label=f"{mechanism}: authorized")
        bx.plot([0] + sps, [result["search_sp0"]["recall"]] + [r["search"]["recall"] for r in rows], "o-",
                label=mechanism)  # fmt: skip
        cx.plot(
            [r["search"]["recall"] for r in rows], [r["strongest_nmse"] for r in rows], "o-", label=mechanism
        )
        for r in rows:
            cx.annotate(str(r["sp"]), (r["search"]["recall"], r["strongest_nmse"]), fontsize=7)
    ax.axhline(SERVER_TARGET, color="k", lw=0.8, ls=":", label=f"target {SERVER_TARGET}")
    ax.axhline(result["mean_image_nmse"], color="gray", lw=0.8, ls="-.", label="mean image")
    ax.set(xlabel="Sp", ylabel="NMSE (test)", title="reconstruction")
    bx.set(xlabel="Sp", ylabel="recall@10 (pixel-domain truth)", title="private search")
    cx.axhline(SERVER_TARGET, color="k", lw=0.8, ls=":")
    cx.set(xlabel="recall@10", ylabel="strongest attack NMSE", title="privacy vs search (labels: Sp)")
    cx.legend(fontsize=7)
    ax.legend(fontsize=7)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def tradeoff_wandb(result: dict, image, out_dir: Path) -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    cols = ["mechanism", "sp", "auth_nmse", "auth_ssim", "strongest_attack", "strongest_nmse",
            "strongest_nmse_ssim", "max_ssim", "auc", "sq", "recall@10", "faiss_recall@10"]  # fmt: skip
    table = wandb.Table(columns=cols)
    for r in result["rows"]:
        a, q = r["authorized"], r["search"]
        table.add_data(
            r["mechanism"], r["sp"], a["nmse"], a["ssim"], r["strongest_attack"], r["strongest_nmse"],
            r["strongest_nmse_ssim"], r["max_ssim"], r["auc"], q["sq"], q["recall"], q["faiss_recall"],
        )  # fmt: skip
    run = wandb.init(project="privzoo", job_type="sca_tradeoff", dir=str(out_dir), config=result["settings"])
    run.log({"sca/tradeoff": table, "sca/tradeoff_plot": wandb.Image(image)})
    run.finish()


def tradeoff_card(folder: str, result: dict, command: str) -> None:
    """Writes the trade-off table into a checkpoint folder's card ("Ambiguation trade-off" section)."""
    from models.cards import update_card_section

    intro = (
        "The privacy headline of this card stays the worst case of the shipped mechanism (the paper's, "
        "'Privacy under attack'). This table measures the same weights with both ambiguation mechanisms "
        "over Sp: `decoy` (privzoo's option, `SCA(ambiguation='decoy')`) fills the Sp positions with "
        "informative entries of other real codes from a decoy pool. It is **not** shipped in these weights: "
        "the pool must be the data owner's secret (codes of its own images, never released). Here a "
        "training-split pool stands in for it, disjoint from the attacker's images; a server that holds the "
        "pool removes the decoys by exact matching (last list below). The learned attackers train on the "
        "sizes stated below; where those are smaller than the attack run's, 'Privacy under attack' is the "
        "stronger (less private) measurement of the paper mechanism at the same Sp."
    )
    s = result["settings"]
    # one section per attacker size: a re-run with the same sizes replaces it
    slug = f"tradeoff-fit{s['fit']}-epochs{s['epochs']}"
    title = f"Ambiguation trade-off (attackers: {s['fit']} images, {s['epochs']} epochs)"
    update_card_section(folder, slug, title, intro + "\n\n" + tradeoff_markdown(result), command)


def run_tradeoff(args, model, name: str) -> dict:
    from attack import standard_data

    sizes = {"fit": args.fit, "holdout": args.holdout, "test": args.limit or 10000}
    data = standard_data(args.data_dir, sizes, args.seed)
    from models.attacks.data import check_disjoint

    dm = FashionMNISTDataModule(data_dir=args.data_dir, download=False, val_size=1)  # as standard_data
    dm.prepare_data()
    dm.setup("test")
    rows = torch.cat([dm.train_set.indices, dm.val_set.indices])  # the training split's rows of the pool
    rows = rows[~torch.isin(rows, torch.cat([data["fit"], data["holdout"]]))]
    rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(args.seed + 7))]
    data["decoy"] = rows[: args.decoy_pool]
    check_disjoint(decoy_pool=data["decoy"], evaluated=data["test"], attacker_fit=data["fit"])
    check_disjoint(decoy_pool=data["decoy"], attacker_holdout=data["holdout"])
    start = time.time()
    result = (search_only if args.search_only else tradeoff)(model, data, args)
    result.update(
        model=name,
        seconds=round(time.time() - start, 1),
        settings={
            "sx": args.table_sx, "sp": list(args.tradeoff_sp), "mechanisms": list(args.mechanisms),
            "fit": len(data["fit"]), "holdout": len(data["holdout"]), "test": len(data["test"]),
            "epochs": args.epochs, "patience": args.patience, "noise_entries": args.noise_entries,
            "noise_epochs": args.noise_epochs, "num_query": args.num_query, "sq": args.sq, "seed": args.seed,
        },
    )  # fmt: skip
    if args.search_only:
        return write_search(result, Path(args.out))
    return write_tradeoff(result, Path(args.out), not args.no_wandb)


def write_search(result: dict, out: Path) -> dict:
    from models.io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "search.json", json.dumps(result, indent=2))
    atomic_write_text(out / "search.md", search_markdown(result))
    print(search_markdown(result))
    return result


def search_card(folder: str, result: dict, command: str) -> None:
    """Writes the search-only table into a card's "Private search: recall@10 and nDCG@100" section."""
    from models.cards import update_card_section

    title = "Private search: recall@10 and nDCG@100"
    update_card_section(folder, "search-ndcg", title, search_markdown(result), command)


def write_tradeoff(result: dict, out: Path, use_wandb: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "tradeoff.json").write_text(json.dumps(result, indent=2))
    (out / "tradeoff.md").write_text(tradeoff_markdown(result))
    image = tradeoff_plot(result)
    from PIL import Image

    Image.fromarray(image).save(out / "tradeoff.png")
    if use_wandb:
        tradeoff_wandb(result, image, out)
    print(tradeoff_markdown(result))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ckpt", help="a Lightning checkpoint")
    source.add_argument("--zoo", help="a zoo checkpoint name (models.zoo.load)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="runs/sca/table")
    parser.add_argument("--sx", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--sp", type=int, nargs="+", default=[8, 16, 24, 32])
    parser.add_argument("--table-sx", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="test: the official test set (Table I); val: the held-out training images (model selection)",
    )
    parser.add_argument("--no-wandb", action="store_true")
    parser.add_argument(
        "--refit-statistics",
        action="store_true",
        help="first refresh the ambiguation statistics (W, R kept) from eval-mode training features",
    )
    parser.add_argument(
        "--val-size", type=int, default=5000, help="held-out part of the training split (as trained)"
    )
    parser.add_argument(
        "--save", default=None, help="with --refit-statistics: write the refreshed checkpoint here"
    )
    trade = parser.add_argument_group("--tradeoff: privacy / utility / search vs Sp, per mechanism")
    trade.add_argument("--tradeoff", action="store_true", help="measure the trade-off table instead")
    trade.add_argument("--tradeoff-sp", type=int, nargs="+", default=list(TRADEOFF_SP))
    trade.add_argument("--mechanisms", nargs="+", choices=MECHANISMS, default=list(MECHANISMS))
    trade.add_argument("--fit", type=int, default=10000, help="attacker's training-split fit images")
    trade.add_argument("--holdout", type=int, default=2000, help="attacker's early-stopping images")
    trade.add_argument("--epochs", type=int, default=15, help="max epochs of the learned inverters")
    trade.add_argument("--patience", type=int, default=2)
    trade.add_argument("--noise-entries", type=int, default=200_000, help="noise classifier's entries")
    trade.add_argument("--noise-epochs", type=int, default=20)
    trade.add_argument("--decoy-pool", type=int, default=20000, help="training-split codes of the pool")
    trade.add_argument("--num-query", type=int, default=1000, help="search queries (test images)")
    trade.add_argument("--sq", type=int, default=8, help="query noise entries (min(sq, sp) is used)")
    trade.add_argument(
        "--search-only",
        action="store_true",
        help="only the search columns (recall@10, nDCG@100) of the trade-off rows, no attackers: "
        "search.json / .md (and the card's 'Private search' section with --card)",
    )
    trade.add_argument(
        "--combine", nargs="+", default=None, help="merge these tradeoff.json runs into one table (no model)"
    )
    trade.add_argument(
        "--card",
        default=None,
        help="also write the trade-off table into the card of this checkpoint folder (e.g. "
        "checkpoints/sca-fashion-mnist-sx16), as its 'Ambiguation trade-off' section",
    )
    args = parser.parse_args(argv)
    command = "scripts/sca_table.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    if args.combine:
        out = "runs/sca/tradeoff" if args.out == "runs/sca/table" else args.out
        result = write_tradeoff(combine_tradeoffs(args.combine), Path(out), not args.no_wandb)
        if args.card:
            tradeoff_card(args.card, result, command)
        return result
    if not (args.ckpt or args.zoo):
        parser.error("one of --ckpt / --zoo is required (or --combine)")
    if args.zoo:
        from models import zoo

        model, name = zoo.load(args.zoo), args.zoo
    else:
        model = SCA.load_from_checkpoint(args.ckpt, map_location="cpu", weights_only=True)
        name = args.ckpt
    model.eval()
    if args.tradeoff:
        if args.out == "runs/sca/table":
            args.out = "runs/sca/tradeoff"
        result = run_tradeoff(args, model, name)
        if args.card:
            (search_card if args.search_only else tradeoff_card)(args.card, result, command)
        return result
    dm = FashionMNISTDataModule(
        data_dir=args.data_dir, eval_batch_size=args.batch_size, download=False, val_size=args.val_size
    )
    dm.setup("fit")
    dm.setup("test")
    if args.refit_statistics:
        refit_statistics(model, dm, args.ckpt, args.save)
    start = time.time()
    loader = dm.test_dataloader() if args.split == "test" else dm.val_dataloader()
    result = measure(model, loader, args.sx, args.sp, args.table_sx, args.seed, args.limit)
    result.update(
        checkpoint=str(name),
        split=args.split,
        table_sx=args.table_sx,
        seed=args.seed,
        seconds=round(time.time() - start, 1),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(result, indent=2))
    (out / "table.md").write_text(markdown(result))
    if not args.no_wandb:
        log_wandb(result, out)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
