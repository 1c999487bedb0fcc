"""The zoo demo: load every shipped checkpoint and evaluate it on the real Fashion-MNIST test set.

    python scripts/demo.py [--data-dir data] [--out runs/demo] [--only NAME ...] [--write-cards]

For each entry of ``models.zoo`` (``checkpoints/<name>/``, loaded offline), runs the entry's evaluation
function and prints one table: the utility metric and the privacy metric next to the paper's numbers and
next to the values recorded in the checkpoint's model card (``card`` column: the measured value must
reproduce it). Writes the same results as ``results.json`` / ``results.md`` (atomically; an ``--only A B``
run writes ``results-A+B.json`` / ``.md`` instead, so runs sharing one ``--out`` keep each other's files)
and as an offline wandb run under ``--out`` (upload later with ``wandb sync <out>/wandb/offline-run-*``).

``--write-cards`` records the measured numbers in the cards instead (used when a checkpoint is shipped).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from models import zoo
from models.cards import read_card_metrics
from models.io import atomic_write_text


def results_stem(only: list[str] | None) -> str:
    """``results`` for the whole zoo; ``results-<name>[+<name>...]`` for an ``--only`` run, so that runs
    sharing one ``--out`` never overwrite each other's files (each file is written atomically)."""
    return "results" if not only else "results-" + "+".join(sorted(dict.fromkeys(only)))


def card_test_metrics(name: str) -> dict[str, float]:
    """The test-split metrics recorded in a zoo checkpoint's card."""
    return {m["name"]: m["value"] for m in read_card_metrics(zoo.folder(name)) if m.get("split") == "test"}


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


#: per method (zoo-name prefix): the worst-case families the demo headlines from attacks.json
ATTACK_HEADLINES = {
    "sca": (("nmse", {"sx": 16, "sp": 32}), ("ssim", {"sx": 16, "sp": 32})),
    "dpfe": (("class_accuracy", {}), ("lrp", {})),
    "ppl": (("map", {"scenario": "C->A", "bits": 16}), ("map", {"bits": 16}), ("map_ratio", {"bits": 16})),
}
# the first family of each method is the one the paper's number is compared with; a family given by a
# part of its setting (``{"bits": 16}``) headlines the least private of the families that match it


def print_attack_headlines(names: list[str]) -> list[dict]:
    """Per privacy checkpoint: the worst case of ``checkpoints/NAME/attacks.json`` (the full run of
    ``scripts/attack.py``, read, not re-run) beside the paper's attack as recorded in the card and the
    paper's number. Returns the printed rows."""
    rows, lines = [], ["| checkpoint | family | worst case | attack | paper's attack (card) | paper |"]
    lines.append("|" + " --- |" * 6)
    for name in names:
        entry = zoo.get_entry(name)
        path = zoo.folder(name) / "attacks.json"
        heads = ATTACK_HEADLINES.get(name.split("-")[0])
        if heads is None or not path.is_file():
            continue
        worst = json.loads(path.read_text())["worst_case"]
        card = card_test_metrics(name)
        paper_key = entry.privacy
        paper_attack = f"{paper_key} {_fmt(card.get(paper_key))}" if paper_key else "—"
        for i, (metric, setting) in enumerate(heads):
            match = [
                r
                for r in worst
                if r["metric"] == metric and all(r["setting"].get(k) == v for k, v in setting.items())
            ]
            if not match:
                continue
            sign = 1 if match[0]["private_if"] == "higher" else -1
            r = min(match, key=lambda m: sign * m["value"])
            shown = {k: v for k, v in r["setting"].items() if k != "attacker"}
            family = " ".join([metric] + [f"{k}={v}" for k, v in shown.items()])
            paper = entry.paper.get(paper_key) if paper_key and i == 0 else None
            paper_cells = f"{paper_attack} | {_fmt(paper)}" if i == 0 else " | "
            lines.append(f"| {name} | {family} | {r['value']:.4f} | {r['attack']} | {paper_cells} |")
            rows.append(
                {"name": name, "family": family, "worst": r, "card": card.get(paper_key), "paper": paper}
            )
    if rows:
        print(
            "\nPrivacy under attack (worst case over scripts/attack.py's attacks, full run read from "
            "checkpoints/NAME/attacks.json; all results in attacks.md):\n" + "\n".join(lines)
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--only", nargs="+", default=None, help="evaluate only these checkpoint names")
    parser.add_argument("--write-cards", action="store_true", help="record the numbers in the model cards")
    parser.add_argument("--wandb", choices=["offline", "online", "disabled"], default="offline")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="|measured - card| allowed")
    args = parser.parse_args(argv)
    names = args.only or zoo.available()
    for name in names:
        zoo.get_entry(name)  # unknown names fail before any work, listing the available ones
    if not names:
        raise SystemExit("the zoo has no checkpoints (models.zoo._ENTRIES is empty)")

    from tqdm.auto import tqdm

    rows = []
    for name in tqdm(names, desc="checkpoints", unit="ckpt"):
        entry = zoo.get_entry(name)
        recorded = card_test_metrics(name)
        t0 = time.perf_counter()
        metrics = zoo.evaluate(
            name, args.data_dir, write_card="scripts/demo.py" if args.write_cards else None
        )
        row = {
            "name": name,
            "dataset": entry.dataset,
            "seconds": time.perf_counter() - t0,
            "metrics": metrics,
        }
        for role in ("utility", "privacy"):
            key = getattr(entry, role)
            row[role] = {
                "metric": key,
                "measured": metrics.get(key) if key else None,
                "paper": entry.paper.get(key) if key else None,
                "card": recorded.get(key) if key else None,
            }
        row["paper_ref"] = entry.paper_ref
        rows.append(row)
        tqdm.write(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    header = "| checkpoint | utility | measured | paper | card | privacy | measured | paper | card |"
    lines = [header, "|" + " --- |" * 9]
    mismatches = []
    for row in rows:
        cells = [row["name"]]
        for role in ("utility", "privacy"):
            r = row[role]
            cells += [r["metric"] or "—", _fmt(r["measured"]), _fmt(r["paper"]), _fmt(r["card"])]
            if not args.write_cards and r["card"] is not None and r["measured"] is not None:
                if abs(r["measured"] - r["card"]) > args.tolerance:
                    mismatches.append(
                        f"{row['name']} {r['metric']}: measured {r['measured']:.4f}, card {r['card']:.4f}"
                    )
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    print("\npaper: " + "; ".join(f"{r['name']}: {r['paper_ref']}" for r in rows if r["paper_ref"]))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = results_stem(args.only)
    atomic_write_text(out / f"{stem}.json", json.dumps(rows, indent=2))
    atomic_write_text(out / f"{stem}.md", table + "\n")
    if args.wandb != "disabled":
        import wandb

        run = wandb.init(
            project="privzoo", name="zoo-demo", dir=str(out), mode=args.wandb, reinit="finish_previous"
        )
        columns = ["checkpoint", "utility", "measured", "paper", "privacy", "measured ", "paper "]
        wtable = wandb.Table(columns=columns)
        for row in rows:
            u, p = row["utility"], row["privacy"]
            wtable.add_data(
                row["name"], u["metric"], u["measured"], u["paper"], p["metric"], p["measured"], p["paper"]
            )
        run.log({"demo/zoo": wtable})
        run.finish()
    print(
        f"\nresults: {out / (stem + '.json')}, {out / (stem + '.md')}"
        + ("" if args.wandb == "disabled" else f", wandb run under {out / 'wandb'} (wandb sync to upload)")
    )
    print_attack_headlines(names)
    if mismatches:
        raise SystemExit("measured values differ from the model cards:\n  " + "\n  ".join(mismatches))
    return rows


if __name__ == "__main__":
    main()
