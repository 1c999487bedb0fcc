"""Chooses a PPL generator checkpoint on a validation split against held-out victims (never the test set).

Every candidate checkpoint (e.g. one every 100 steps of a fit, ``--checkpoint.every_n_train_steps 100
--checkpoint.save_top_k -1``) protects a validation split carved from the training images the generator did
not train on; held-out victims of the attack harness (classification hashes, trained once on the clean
validation database) score it in the four scenarios. Chosen: the lowest worst cross/clean mAP ratio among
checkpoints whose released validation images keep SSIM >= ``--min-ssim``. See :mod:`models.ppl.selection`.

    python scripts/ppl_select.py --ckpts runs/ppl8/ckpt/epoch=*.ckpt --out runs/ppl8_select
    python scripts/ppl_select.py --ckpts runs/a/ckpt/*.ckpt runs/b/ckpt/*.ckpt --out runs/select_ab

Writes ``selection.json`` and ``selection.md`` under ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from ppl_table import _overrides

from models.io import atomic_write_text
from models.ppl import PPL
from models.ppl.protocol import retrieval_datamodule
from models.ppl.selection import PRIVACY_CELLS, select_checkpoint, train_selection_victims, validation_split

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpts", nargs="+", required=True, help="candidate PPL checkpoints")
    p.add_argument(
        "--config", default=str(REPO / "configs/ppl/fashion_mnist.yaml"), help="the PPL fit's config"
    )
    p.add_argument("--data-arg", action="append", default=[], help="CLI override of the data, key=value")
    p.add_argument("--victims", nargs="+", default=["cnn", "mlp"], help="held-out victim architectures")
    p.add_argument("--victim-bits", type=int, default=16)
    p.add_argument("--victim-epochs", type=int, default=6)
    p.add_argument("--num-query", type=int, default=1000)
    p.add_argument("--num-database", type=int, default=10000)
    p.add_argument("--min-ssim", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/ppl_select")
    return p.parse_args(argv)


def _step(ckpt: str) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True).get("global_step", -1))


def _victims(args: argparse.Namespace, split: dict, cache: Path) -> dict:
    """The held-out victims: trained here, or loaded from ``cache`` when an earlier run in ``--out`` trained
    them on the same split with the same settings (they do not depend on the candidates)."""
    from models.attacks.retrieval import HashVictim

    key = [args.config, args.data_arg, args.victims, args.victim_bits, args.victim_epochs]
    key += [args.num_query, args.num_database, args.seed]
    if cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        if saved["key"] == json.dumps(key):
            shape = split["pool"].shape
            victims = {}
            for arch, state in saved["victims"].items():
                victims[arch] = HashVictim(arch, args.victim_bits, int(saved["classes"]), shape[1], shape[-1])
                victims[arch].load_state_dict(state)
            print(f"[select] held-out victims loaded from {cache}", flush=True)
            return victims
    t0 = time.perf_counter()
    victims = train_selection_victims(split, args.victims, args.victim_bits, args.victim_epochs, args.seed)
    print(f"[select] {len(victims)} held-out victims trained in {time.perf_counter() - t0:.0f} s", flush=True)
    classes = next(iter(victims.values())).hparams.num_classes
    state = {
        "key": json.dumps(key),
        "classes": classes,
        "victims": {a: v.state_dict() for a, v in victims.items()},
    }
    torch.save(state, cache)
    return victims


def markdown(result: dict) -> str:
    victims = list(result["rows"][0]["map"]) if result["rows"] else []
    head = ["checkpoint", "step", "score"] + [f"{v} ratio" for v in victims]
    head += [f"{v} {c}" for v in victims for c in ("C->C", *PRIVACY_CELLS)] + ["SSIM"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in result["rows"]:
        cells = [f"`{Path(r['ckpt']).parent.parent.name}/{Path(r['ckpt']).name}`", str(r["step"])]
        cells += [f"{r['score']:.4f}"] + [f"{r['ratio'][v]:.4f}" for v in victims]
        cells += [f"{r['map'][v][c]:.4f}" for v in victims for c in ("C->C", *PRIVACY_CELLS)]
        cells += [f"{r['quality']['ssim']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    s = result["split"]
    lines += [
        "",
        f"Validation split: {s['num_query']} queries and a {s['num_database']}-image database drawn (seed "
        f"{s['seed']}) from the training images outside the generator's training subset; the test set is not "
        f"used. Held-out victims: {', '.join(victims)} classification hashes ({result['victim_bits']} bits, "
        "trained on the clean validation database). Score: worst over the victims of "
        f"max({', '.join(PRIVACY_CELLS)}) / C->C; chosen among SSIM >= {result['min_ssim']}: "
        f"**{result['chosen']}**.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    missing = [c for c in args.ckpts if not Path(c).is_file()]
    if missing:
        raise SystemExit(f"no such checkpoint(s): {missing}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dm = retrieval_datamodule(args.config, _overrides(args.data_arg), out / "cli")
    split = validation_split(dm, args.num_query, args.num_database, args.seed)
    victims = _victims(args, split, out / "victims.pt")
    steps = {c: _step(c) for c in dict.fromkeys(args.ckpts)}  # each checkpoint read once for its step
    ckpts = sorted(steps, key=steps.get)
    result = select_checkpoint(
        ckpts,
        lambda c: PPL.load_from_checkpoint(c, map_location="cpu", weights_only=False),
        split,
        victims,
        args.min_ssim,
    )
    for row in result["rows"]:
        row["step"] = steps[row["ckpt"]]
    result |= {
        "split": {"num_query": args.num_query, "num_database": args.num_database, "seed": args.seed},
        "victim_bits": args.victim_bits,
        "victim_epochs": args.victim_epochs,
        "command": " ".join(sys.argv),
    }
    atomic_write_text(out / "selection.json", json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    atomic_write_text(out / "selection.md", md)
    print(md)
    return result


if __name__ == "__main__":
    main()
