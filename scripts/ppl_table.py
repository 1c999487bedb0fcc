"""PPL's evaluation protocol end to end: the paper's Table 1 rows on Fashion-MNIST (or any config).

For every code length: a PPL model (trained here through the CLI config, or given with ``--ppl-ckpt``)
protects the whole image pool; each victim (ADSH, DSDH: ``configs/<victim>/<dataset>.yaml``) is trained
on the clean (C) and on the protected (A) training data, and evaluated in the four scenarios C->C, C->A,
A->C, A->A (query = test set, database = training set, mAP@all); PSNR / SSIM of the released (8-bit)
protected queries vs the clean ones. Writes ``table.json`` and ``table.md`` under ``--out`` and logs the
table plus a clean-vs-protected image grid to an (offline by default) wandb run.

    python scripts/ppl_table.py --bits 16 --out runs/ppl_table                       # trains PPL too
    python scripts/ppl_table.py --bits 16 --ppl-ckpt runs/ppl16/ckpt/last.ckpt --out runs/ppl_table
    python scripts/ppl_table.py --bits 16 --ppl-ckpt X --victims adsh --train-domains C \\
        --victim-arg model.init_args.backbone=resnet10t --tag transfer-resnet10t    # transferability

Paper values (Table 1, Fashion-MNIST, 16 bits) are printed next to the measured ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from models.cli import cli_main
from models.ppl import PPL
from models.ppl.protocol import (
    SCENARIOS,
    image_quality,
    protect_uint8,
    scenario_codes,
    scenario_maps,
)

REPO = Path(__file__).resolve().parents[1]

# PPL paper, Table 1, Fashion-MNIST, 16 bits: (victim, training domain) -> scenario -> mAP
PAPER_FMNIST_16 = {
    ("dsdh", "C"): {"C->C": 0.6978, "C->A": 0.2803, "A->C": 0.3032, "A->A": 0.2858},
    ("adsh", "C"): {"C->C": 0.9007, "C->A": 0.3853, "A->C": 0.4118, "A->A": 0.3212},
    ("adsh", "A"): {"A->A": 0.8852, "A->C": 0.2631, "C->A": 0.4116, "C->C": 0.3134},
    ("dsdh", "A"): {"A->A": 0.6955, "A->C": 0.2813, "C->A": 0.3481, "C->C": 0.3229},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist", help="config name under configs/<method>/")
    p.add_argument("--bits", type=int, nargs="+", default=[16])
    p.add_argument("--victims", nargs="+", default=["adsh", "dsdh"], choices=["adsh", "dsdh"])
    p.add_argument("--train-domains", nargs="+", default=["C", "A"], choices=["C", "A"])
    p.add_argument("--ppl-ckpt", default=None, help="trained PPL checkpoint (one --bits value); else train")
    p.add_argument("--ppl-arg", action="append", default=[], help="CLI override for PPL, key=value")
    p.add_argument(
        "--victim-ckpt",
        action="append",
        default=[],
        metavar="VICTIM:DOMAIN=PATH",
        help="evaluate this trained victim instead of training it, e.g. adsh:C=runs/adsh/last.ckpt "
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
    p.add_argument("--out", default="runs/ppl_table")
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


def _cli(config: Path, extra: list[str], root: Path):
    if not config.is_file():
        raise SystemExit(
            f"no config {config}: pick --dataset among {sorted(p.stem for p in config.parent.glob('*.yaml'))}"
        )
    args = ["--config", str(config), "--trainer.logger", "false", "--trainer.default_root_dir", str(root)]
    args += ["--trainer.enable_progress_bar", "true", "--checkpoint.dirpath", str(root / "ckpt")]
    return cli_main(args + extra, run=False)


def train_ppl(args, bits: int, root: Path) -> PPL:
    cfg = REPO / "configs" / "ppl" / f"{args.dataset}.yaml"
    extra = ["--model.init_args.bits", str(bits)] + _overrides(args.ppl_arg) + _overrides(args.data_arg)
    cli = _cli(cfg, extra, root)
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.save_checkpoint(root / "final.ckpt")  # the final weights (last.ckpt may predate max_steps)
    print(f"[ppl {bits} bits] trained in {time.perf_counter() - t0:.0f} s -> {root / 'final.ckpt'}")
    return cli.model.eval()


def _victim_ckpts(pairs: list[str]) -> dict[tuple[str, str], str]:
    out = {}
    for pair in pairs:
        key, sep, path = pair.partition("=")
        victim, _, domain = key.partition(":")
        if not sep or victim not in ("adsh", "dsdh") or domain not in ("C", "A"):
            raise SystemExit(f"--victim-ckpt {pair!r}: expected VICTIM:DOMAIN=PATH, e.g. adsh:C=last.ckpt")
        if not Path(path).is_file():
            raise SystemExit(f"--victim-ckpt {pair!r}: no such file {path}")
        out[(victim, domain)] = path
    return out


def train_victim(
    args, victim: str, bits: int, domain: str, pool: torch.Tensor, protected: torch.Tensor, root: Path
):
    """Trains (or loads) one victim on the clean or protected pool and measures the four scenarios.

    ``pool`` / ``protected``: uint8 [N, C, H, W] clean image pool of the dataset and its released version.
    """
    cfg = REPO / "configs" / victim / f"{args.dataset}.yaml"
    ckpt = _victim_ckpts(args.victim_ckpt).get((victim, domain))
    extra = ["--model.init_args.bits", str(bits), "--trainer.limit_val_batches", "0"]
    extra += ["--checkpoint.monitor", "null"]
    if victim == "adsh":  # database codes from images: the database domain changes between scenarios
        extra += ["--model.init_args.eval_database_codes", "hash"]
    extra += _overrides(args.victim_arg) + _overrides(args.data_arg)
    cli = _cli(cfg, extra, root)
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    for ds in (dm.query_set, dm.database_set, dm.train_set):
        if not torch.equal(ds.images, pool):
            raise RuntimeError(f"{victim}'s datamodule holds other images than the PPL pool: same dataset?")
    if domain == "A":  # every split now draws the released (protected) images
        for ds in (dm.query_set, dm.database_set, dm.train_set):
            ds.images = protected
    if ckpt is None:
        t0 = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=dm)
        fit_s = time.perf_counter() - t0
        cli.trainer.save_checkpoint(root / "final.ckpt")
        model = cli.model.eval()
    else:
        model = type(cli.model).load_from_checkpoint(ckpt, map_location="cpu").eval()
        if model.bits != bits:
            raise SystemExit(f"{ckpt} is a {model.bits}-bit {victim}, not {bits}")
        fit_s = None
    q, d = dm.query_set.indices, dm.database_set.indices
    codes = scenario_codes(model.hash, pool, protected, q, d, args.batch_size)
    labels = dm.query_set.targets, dm.database_set.targets
    maps = scenario_maps(codes, *labels)
    fit = f"fit {fit_s:.0f} s" if fit_s is not None else f"loaded {ckpt}"
    print(f"[{victim} {bits} bits, trained on {domain}] {fit}: " + fmt(maps))
    return maps, fit_s


def fmt(maps: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in maps.items())


def markdown(results: dict) -> str:
    lines = []
    for bits, res in results["bits"].items():
        lines += [
            f"### {results['dataset']}, {bits} bits "
            f"(PPL epsilon {res['ppl']['epsilon']}, l_{res['ppl']['norm']})",
            "",
            f"PSNR {res['quality']['psnr']:.2f} dB, SSIM {res['quality']['ssim']:.4f} "
            "(released 8-bit protected test images vs clean)",
            "",
            "| model | trained on | " + " | ".join(n for n, _, _ in SCENARIOS) + " |",
            "| --- | --- | " + " | ".join("---" for _ in SCENARIOS) + " |",
        ]
        for row in res["rows"]:
            paper = row.get("paper") or {}
            cells = []
            for name, _, _ in SCENARIOS:
                cell = f"{row['map'][name]:.4f}"
                if name in paper:
                    cell += f" [{paper[name]:.4f}]"
                cells.append(cell)
            lines.append(f"| {row['model']} | {row['trained_on']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Measured mAP@all; [paper Table 1] where the paper reports the setting.")
    return "\n".join(lines) + "\n"


def log_wandb(args, results: dict, grids: dict[int, torch.Tensor], out: Path) -> None:
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
    for bits, grid in grids.items():
        log[f"ppl/clean_vs_protected_{bits}bits"] = wandb.Image(to_uint8_grid(grid, nrow=16))
    run.log(log)
    run.finish()


def merge(paths: list[str]) -> dict:
    """One results dict from several ``table.json`` files (same protector per code length)."""
    merged: dict = {"dataset": None, "bits": {}, "command": " ".join(sys.argv), "merged_from": paths}
    for path in paths:
        part = json.loads(Path(path).read_text())
        merged["dataset"] = merged["dataset"] or part["dataset"]
        for bits, res in part["bits"].items():
            into = merged["bits"].setdefault(bits, {"ppl": res["ppl"], "quality": res["quality"], "rows": []})
            if into["ppl"]["ckpt"] != res["ppl"]["ckpt"]:
                raise SystemExit(
                    f"{path}: {bits}-bit rows come from PPL {res['ppl']['ckpt']}, not {into['ppl']['ckpt']}"
                )
            for row in res["rows"]:
                same = [
                    r
                    for r in into["rows"]
                    if (r["model"], r["trained_on"]) == (row["model"], row["trained_on"])
                ]
                if same and _rounded(same[0]["map"]) != _rounded(row["map"]):
                    raise SystemExit(
                        f"{path}: {row['model']} ({row['trained_on']}) disagrees with an earlier file"
                    )
                if not same:
                    into["rows"].append(row)
    for res in merged["bits"].values():  # victims first, in a fixed order, the surrogate last
        res["rows"].sort(key=lambda r: (r["model"] == "PPL surrogate", r["model"], r["trained_on"] != "C"))
    return merged


def _rounded(maps: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in maps.items()}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.merge:
        results = merge(args.merge)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"table{args.tag}.json").write_text(json.dumps(results, indent=2))
        (out / f"table{args.tag}.md").write_text(markdown(results))
        print(markdown(results))
        log_wandb(args, results, {}, out)
        return results
    if args.ppl_ckpt and len(args.bits) != 1:
        raise SystemExit("--ppl-ckpt is one trained model: give exactly one --bits value")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"dataset": args.dataset, "bits": {}, "command": " ".join(sys.argv)}
    grids = {}
    for bits in args.bits:
        if args.ppl_ckpt:
            protector = PPL.load_from_checkpoint(args.ppl_ckpt, map_location="cpu").eval()
            if protector.bits != bits:
                raise SystemExit(f"{args.ppl_ckpt} is a {protector.bits}-bit PPL model, not {bits}")
        else:
            protector = train_ppl(args, bits, out / f"ppl_{bits}")
        ppl_ckpt = args.ppl_ckpt or str(out / f"ppl_{bits}" / "final.ckpt")
        res: dict = {
            "ppl": {"epsilon": protector.epsilon, "norm": protector.norm, "ckpt": ppl_ckpt},
            "rows": [],
        }
        # one released (protected, 8-bit) version of the whole image pool, shared by every scenario
        cli = _cli(REPO / "configs" / "ppl" / f"{args.dataset}.yaml", _overrides(args.data_arg), out / "tmp")
        dm = cli.datamodule
        dm.prepare_data()
        dm.setup("test")
        pool = dm.query_set.images
        t0 = time.perf_counter()
        protected = protect_uint8(protector.protect, pool, args.batch_size)
        res["protect_s"] = time.perf_counter() - t0
        for victim in args.victims:
            for domain in args.train_domains:
                root = out / f"{victim}_{domain}_{bits}{args.tag}"
                maps, fit_s = train_victim(args, victim, bits, domain, pool, protected, root)
                paper = (
                    PAPER_FMNIST_16.get((victim, domain))
                    if args.dataset == "fashion_mnist" and bits == 16
                    else None
                )
                res["rows"].append(
                    {
                        "model": victim.upper(),
                        "trained_on": domain,
                        "map": maps,
                        "paper": paper,
                        "fit_s": fit_s,
                    }
                )
        # the surrogate itself, and the image quality of the released protected test images
        q, d = dm.query_set.indices, dm.database_set.indices
        codes = scenario_codes(protector.hash, pool, protected, q, d, args.batch_size)
        maps = scenario_maps(codes, dm.query_set.targets, dm.database_set.targets)
        res["rows"].append({"model": "PPL surrogate", "trained_on": "PPL", "map": maps, "paper": None})
        res["quality"] = image_quality(pool[q], protected[q], args.batch_size)
        print(f"[surrogate {bits} bits] " + fmt(maps) + f"; quality {res['quality']}")
        grids[bits] = torch.cat([pool[q[:16]], protected[q[:16]]]).float() / 255
        results["bits"][str(bits)] = res
    (out / f"table{args.tag}.json").write_text(json.dumps(results, indent=2))
    (out / f"table{args.tag}.md").write_text(markdown(results))
    print(markdown(results))
    log_wandb(args, results, grids, out)
    return results


if __name__ == "__main__":
    main()
