"""PPL's Table 1 on Fashion-MNIST (or any config): argument parsing and files around
:mod:`models.ppl.protocol`.

One PPL generator (``--ppl-bits``, the paper's 8 by default; trained here through the CLI config, or given
with ``--ppl-ckpt``) protects the whole image pool; for every victim code length ``--bits``, each victim
(ADSH, DSDH: ``configs/<victim>/<dataset>.yaml``) is trained on the clean (C) and on the protected (A)
training data and evaluated in the four scenarios C->C, C->A, A->C, A->A (query = test set, database =
training set, mAP@all); PSNR / SSIM of the released (8-bit) protected queries vs the clean ones. Writes
``table.json`` and ``table.md`` under ``--out`` and logs the table plus a clean-vs-protected image grid to
an (offline by default) wandb run.

    python scripts/ppl_table.py --bits 8 12 16 24 --out runs/ppl_table               # trains PPL too
    python scripts/ppl_table.py --bits 16 --ppl-ckpt runs/ppl8/ckpt/last.ckpt --out runs/ppl_table
    python scripts/ppl_table.py --bits 16 --ppl-ckpt X --victims adsh --train-domains C \\
        --victim-arg model.init_args.backbone=resnet10t --tag transfer-resnet10t    # transferability

Paper values (Table 1, Fashion-MNIST, 16 bits) are printed next to the measured ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from models.ppl.protocol import (
    SCENARIOS,
    TABLE_ATTACK_PREFIX,
    compare_markdown,
    compare_tables,
    merge_tables,
    paper_row,
    privacy_cells,
    released_pool,
    surrogate_row,
    table_attack_results,
    table_markdown,
    train_ppl,
    victim_row,
    worst_cells,
)

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist", help="config name under configs/<method>/")
    p.add_argument("--bits", type=int, nargs="+", default=[16], help="code lengths of the victims")
    p.add_argument(
        "--ppl-bits", type=int, default=8, help="code length of the generator's surrogate (paper: 8)"
    )
    p.add_argument("--victims", nargs="+", default=["adsh", "dsdh"], choices=["adsh", "dsdh"])
    p.add_argument("--train-domains", nargs="+", default=["C", "A"], choices=["C", "A"])
    p.add_argument(
        "--ppl-ckpt",
        default=None,
        help="trained PPL checkpoint or PPL zoo name (any code length); else one is trained",
    )
    p.add_argument("--ppl-arg", action="append", default=[], help="CLI override for PPL, key=value")
    p.add_argument(
        "--victim-ckpt",
        action="append",
        default=[],
        metavar="VICTIM:DOMAIN=PATH",
        help="evaluate this trained victim (a checkpoint or a zoo name) instead of training it, e.g. "
        "adsh:C=runs/adsh/last.ckpt or adsh:C=adsh-fashion-mnist-16bit "
        "(a clean-trained victim does not depend on PPL, so it can be trained beforehand)",
    )
    p.add_argument("--victim-arg", action="append", default=[], help="CLI override for victims, key=value")
    p.add_argument("--data-arg", action="append", default=[], help="CLI override for all data, key=value")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="TABLE_JSON",
        help="only combine the table.json files of earlier runs (e.g. victims trained in parallel processes) "
        "into one table under --out; rows measured twice must agree",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="LABEL=TABLE_JSON",
        help="only compare the table.json files of several generators cell by cell (the most private one "
        "per privacy cell, worst cells, SSIM, utility) into compare.json / compare.md under --out",
    )
    p.add_argument("--out", default="runs/ppl_table")
    p.add_argument(
        "--card",
        default=None,
        metavar="FOLDER",
        help="also write the table into the card of this checkpoint folder (section 'Table 1 at every code "
        "length'); every code length's generator must be that folder's model (its zoo name or path)",
    )
    p.add_argument(
        "--card-reference",
        default=None,
        metavar="FOLDER",
        help="write the table of ANOTHER generator (e.g. the paper's 8-bit one) into this checkpoint "
        "folder's card as a reference section under a 'not these weights' line; it does not enter the "
        "card's attacks",
    )
    p.add_argument("--tag", default="", help="suffix of the output files (e.g. a transferability run)")
    p.add_argument("--wandb", choices=["offline", "online", "disabled"], default="offline")
    p.add_argument("--batch-size", type=int, default=1000, help="images per protect / hash call")
    return p.parse_args(argv)


def _overrides(pairs: list[str]) -> list[str]:
    out = []
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"override {pair!r} is not key=value (e.g. model.init_args.lr=0.001)")
        key, value = pair.split("=", 1)
        out += [f"--{key}", value]
    return out


def _victim_ckpts(pairs: list[str]) -> dict[tuple[str, str], Any]:
    out = {}
    for pair in pairs:
        key, sep, path = pair.partition("=")
        victim, _, domain = key.partition(":")
        if not sep or victim not in ("adsh", "dsdh") or domain not in ("C", "A"):
            raise SystemExit(f"--victim-ckpt {pair!r}: expected VICTIM:DOMAIN=PATH, e.g. adsh:C=last.ckpt")
        if Path(path).is_file():
            out[(victim, domain)] = path
            continue
        from models import zoo

        if path not in zoo.available():
            raise SystemExit(
                f"--victim-ckpt {pair!r}: {path} is neither a checkpoint file nor a zoo name "
                f"({', '.join(n for n in zoo.available() if n.startswith(victim))})"
            )
        out[(victim, domain)] = zoo.load(path)  # e.g. adsh:C=adsh-fashion-mnist-16bit
    return out


def log_wandb(args, results: dict, grid: torch.Tensor | None, out: Path) -> None:
    if args.wandb == "disabled":
        return
    import wandb

    from callbacks.images import to_uint8_grid

    run = wandb.init(
        project="privzoo",
        name=f"ppl-table{args.tag}",
        dir=str(out),
        mode=args.wandb,
        config=vars(args),
        reinit="finish_previous",
    )
    names = [n for n, _, _ in SCENARIOS]
    table = wandb.Table(columns=["bits", "model", "trained_on"] + names)
    for bits, res in results["bits"].items():
        for row in res["rows"]:
            table.add_data(int(bits), row["model"], row["trained_on"], *[row["map"][n] for n in names])
    log = {"ppl/table": table}
    if grid is not None:
        log["ppl/clean_vs_protected"] = wandb.Image(to_uint8_grid(grid, nrow=16))
    run.log(log)
    run.finish()


def worst_privacy_cell(results: dict) -> dict:
    """The highest-mAP privacy cell of the table's victims (not the surrogate) over every code length, and
    the highest cross/clean ratio (a cell over the clean-trained C->C of the same victim and code length)."""
    return worst_cells(privacy_cells(results))


def table_into_attacks(folder: Path, results: dict, command: str) -> dict | None:
    """Table 1's privacy cells join the folder's ``attacks.json`` (attacks ``table1_*``, replacing those of
    an earlier table) and its card's "Privacy under attack" section, so the card's worst case covers them.
    Returns the other attacks' worst ``map_ratio`` row (``None`` without an ``attacks.json``)."""
    from models.attacks import build_report, validate_report, worst_case, write_report
    from models.cards import update_card_attacks

    if not (folder / "attacks.json").is_file():
        return None
    report = json.loads((folder / "attacks.json").read_text())
    validate_report(report)
    harness = [r for r in report["results"] if not r["attack"].startswith(TABLE_ATTACK_PREFIX)]
    ratios = [r for r in worst_case(harness) if r["metric"] == "map_ratio"]
    before = max(ratios, key=lambda r: r["value"], default=None)
    report = build_report(
        report["model"], report["dataset"], report["split"], harness + table_attack_results(results)
    )
    write_report(report, folder)
    source = f"scripts/attack.py {folder.name} (earlier runs) merged with the Table 1 victims of {command}"
    update_card_attacks(folder, report, source=source)
    return before


def _ordered(results: dict) -> dict:
    return {**results, "bits": dict(sorted(results["bits"].items(), key=lambda kv: int(kv[0])))}


def _generators(results: dict) -> set[str]:
    return {res["ppl"]["ckpt"] for res in results["bits"].values()}


def _is_folder_model(used: set[str], folder: str) -> bool:
    path = Path(folder)
    return used <= {path.name, folder, str(path), str(path.resolve())}


def table_reference_card(folder: str, results: dict, command: str) -> None:
    """Writes the table of a generator that is NOT the folder's weights (e.g. the paper's Table 1 generator,
    learned at 8 bits) into the folder's card, in its own section under a "not these weights" line; its
    cells stay out of the card's attacks and headline, which describe the card's own weights."""
    from models.cards import update_card_section

    path = Path(folder)
    used = _generators(results)
    if _is_folder_model(used, folder):
        raise SystemExit(
            f"--card-reference {folder}: the table measured this folder's own model; use --card {folder}"
        )
    ordered = _ordered(results)
    w = worst_privacy_cell(ordered)
    gens = sorted({f"{res['ppl']['bits']}-bit" for res in ordered["bits"].values()})
    names = ", ".join(f"`{u}`" for u in sorted(used))
    intro = (
        f"**Not these weights:** this table measures the generator {names} ({' / '.join(gens)} surrogate "
        f"codes, the paper's Table 1 setting), not `{path.name}`, so it does not enter 'Privacy under "
        "attack' or this card's headline. Same protocol as 'Table 1 at every code length'. "
        f"Its worst privacy cell: mAP **{w['map']:.4f}** ({w['model']}-{w['trained_on']}, {w['bits']} bits, "
        f"{w['scenario']})."
    )
    title = f"Table 1 with the paper's {' / '.join(gens)} generator (not these weights)"
    body = intro + "\n\n" + table_markdown(ordered)
    update_card_section(folder, "table1-reference", title, body, command, of_these_weights=False)
    print(f"wrote the reference table into {path / 'README.md'} (worst privacy cell {w})")


def table_card(folder: str, results: dict, command: str) -> None:
    """Writes the table (code lengths in order) into a checkpoint folder's card, with its worst cell; its
    privacy cells also join the card's attack harness (:func:`table_into_attacks`)."""
    from models.cards import update_card_section

    path = Path(folder)
    used = _generators(results)
    if not _is_folder_model(used, folder):
        raise SystemExit(
            f"--card {folder}: the table's generator is {sorted(used)}, not this folder's model; run "
            f"ppl_table with --ppl-ckpt {path.name} (its zoo name) or --ppl-ckpt {folder}"
        )
    ordered = _ordered(results)
    w = worst_privacy_cell(ordered)
    r = w["worst_ratio"]
    before = table_into_attacks(path, ordered, command)
    ratio_text = ""
    if r is not None:
        ratio_text = (
            f" Worst cross/clean mAP ratio here: **{r['ratio']:.4f}** ({r['model']}-{r['trained_on']}, "
            f"{r['bits']} bits, {r['scenario']}, over the clean-trained C->C of the same victim and code "
            "length)"
        )
        if before is not None:
            worse = r["ratio"] > before["value"]
            ratio_text += (
                f", {'worse than' if worse else 'within'} the other attacks' worst ratio "
                f"{before['value']:.4f} (`{before['attack']}`)"
            )
        ratio_text += "."
    joined = (
        " Every privacy cell here is also a row of 'Privacy under attack' (attacks `table1_*`), whose worst "
        "case the card headlines; that section also covers victims this table does not."
        if before is not None
        else " No `attacks.json` beside the weights yet: run scripts/attack.py, then this table again."
    )
    intro = (
        "The paper's protocol (Table 1): these weights protect the test queries and the training database; "
        "ADSH / DSDH victims at each code length are trained on the clean (C) or the protected (A) training "
        "images (`configs/<victim>/fashion_mnist.yaml`) and ranked by Hamming distance (query = test set, "
        "database = training set). Privacy cells: C->A, A->C, A->A of a C-trained victim; C->C, A->C, C->A "
        "of an A-trained one (its A->A is normal use). "
        f"Worst privacy cell here: mAP **{w['map']:.4f}** ({w['model']}-{w['trained_on']}, {w['bits']} bits, "
        f"{w['scenario']}).{ratio_text}{joined}"
    )
    update_card_section(
        folder, "table1", "Table 1 at every code length", intro + "\n\n" + table_markdown(ordered), command
    )
    print(
        f"wrote the table into {path / 'README.md'} (worst privacy cell {w}, other attacks' worst ratio "
        f"{before['value'] if before else None})"
    )


def write(args, results: dict, grid: torch.Tensor | None) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"table{args.tag}.json").write_text(json.dumps(results, indent=2))
    (out / f"table{args.tag}.md").write_text(table_markdown(results))
    print(table_markdown(results))
    log_wandb(args, results, grid, out)
    if args.card:
        table_card(args.card, results, args.command)
    if args.card_reference:
        table_reference_card(args.card_reference, results, args.command)
    return results


def compare(args) -> dict:
    """``--compare``: generators' tables cell by cell (:func:`models.ppl.protocol.compare_tables`)."""
    tables, sources = {}, {}
    for pair in args.compare:
        label, sep, path = pair.partition("=")
        if not sep or not label:
            raise SystemExit(f"--compare {pair!r}: expected LABEL=TABLE_JSON, e.g. shipped=runs/t/table.json")
        if label in tables:
            raise SystemExit(f"--compare: label {label!r} given twice; give each table its own label")
        try:
            tables[label], sources[label] = json.loads(Path(path).read_text()), path
        except (OSError, ValueError) as err:
            raise SystemExit(f"--compare {pair!r}: cannot read {path}: {err}") from err
    try:
        comparison = compare_tables(tables)
    except ValueError as err:
        raise SystemExit(f"--compare: {err}") from err
    comparison["command"] = args.command
    comparison["sources"] = sources
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"compare{args.tag}.json").write_text(json.dumps(comparison, indent=2))
    md = compare_markdown(comparison)
    (out / f"compare{args.tag}.md").write_text(md)
    print(md)
    return comparison


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.command = "scripts/ppl_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.compare:
        return compare(args)
    if args.merge:
        try:
            parts = [json.loads(Path(p).read_text()) for p in args.merge]
            results = merge_tables(parts, args.merge)
        except (OSError, ValueError) as err:
            raise SystemExit(f"--merge: {err}") from err
        return write(args, {**results, "command": args.command}, None)
    out = Path(args.out)
    ppl_cfg = REPO / "configs" / "ppl" / f"{args.dataset}.yaml"
    data = _overrides(args.data_arg)
    victim_ckpts = _victim_ckpts(args.victim_ckpt)
    if args.ppl_ckpt:
        from models.ppl.figures import load_protector

        try:
            protector = load_protector(args.ppl_ckpt)  # a Lightning checkpoint or a PPL zoo name
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"--ppl-ckpt: {err}") from err
        ppl_ckpt = args.ppl_ckpt
    else:
        root = out / f"ppl_{args.ppl_bits}"
        extra = ["--model.init_args.bits", str(args.ppl_bits), *_overrides(args.ppl_arg), *data]
        protector, ppl_ckpt = train_ppl(ppl_cfg, extra, root), str(root / "final.ckpt")
    # ONE released (8-bit protected) image pool, shared by every scenario and code length
    released = released_pool(ppl_cfg, data, protector.protect, out / "tmp", args.batch_size)
    pool, protected = released["pool"], released["protected"]
    ppl = {"epsilon": protector.epsilon, "norm": protector.norm, "bits": protector.bits, "ckpt": ppl_ckpt}
    surrogate = surrogate_row(protector, released, args.batch_size)
    print("[surrogate] " + ", ".join(f"{k} {v:.4f}" for k, v in surrogate["map"].items()))
    results: dict = {"dataset": args.dataset, "bits": {}, "command": args.command}
    for bits in args.bits:
        rows = []
        for victim in args.victims:
            for domain in args.train_domains:
                cfg = REPO / "configs" / victim / f"{args.dataset}.yaml"
                extra = ["--model.init_args.bits", str(bits)]
                if (
                    victim == "adsh"
                ):  # database codes from images: the database domain changes between scenarios
                    extra += ["--model.init_args.eval_database_codes", "hash"]
                extra += [*_overrides(args.victim_arg), *data]
                root = out / f"{victim}_{domain}_{bits}{args.tag}"
                ckpt = victim_ckpts.get((victim, domain))
                row = victim_row(cfg, extra, root, domain, pool, protected, ckpt, args.batch_size)
                source = ckpt if isinstance(ckpt, str) else f"zoo {type(ckpt).__name__} victim"
                fit = f"fit {row['fit_s']:.0f} s" if row["fit_s"] is not None else f"loaded {source}"
                print(f"[{victim} {bits} bits, trained on {domain}] {fit}: {row['map']}")
                paper = paper_row(args.dataset, bits, victim, domain)
                rows.append(
                    {"model": victim.upper(), "trained_on": domain, "map": row["map"],
                     "ndcg_100": row["ndcg_100"], "paper": paper, "fit_s": row["fit_s"]}
                )  # fmt: skip
        rows.append(
            {"model": "PPL surrogate", "trained_on": "PPL", "map": surrogate["map"],
             "ndcg_100": surrogate["ndcg_100"], "paper": None}
        )  # fmt: skip
        results["bits"][str(bits)] = {
            "ppl": ppl,
            "rows": rows,
            "quality": surrogate["quality"],
            "protect_s": released["protect_s"],
        }
    q = released["datamodule"].query_set.indices[:16]
    grid = torch.cat([pool[q], protected[q]]).float() / 255
    return write(args, results, grid)


if __name__ == "__main__":
    main()
