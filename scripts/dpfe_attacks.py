"""DPFE extractors against the harness's attribute attackers, one line per model: z-accuracy (utility) and
the class accuracy of the strongest probe on the released features (privacy; the FU floor is 0.30).

    python scripts/dpfe_attacks.py checkpoints/dpfe-fashion-mnist runs/dpfe_adv/w1/epoch=2.ckpt \\
        [--data-dir data] [--out runs/dpfe_attacks.json]

Each model is a zoo folder or a Lightning checkpoint. The attackers (linear probe, MLP probe, 10-NN) are
those of ``scripts/attack.py`` with its full-run sizes: they train on their own labelled training-split
images (released by the extractor), early-stop on a held-out part, and are scored on the 10,000 test
images, disjoint from theirs. Use it to choose among candidates; ship the chosen one through
``scripts/convert_checkpoint.py`` + ``scripts/attack.py`` (which writes its card).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from attack import SIZES, _batched, standard_data

from models.attacks.inference import probe_attack
from models.dpfe import DPFE
from models.dpfe.attributes import fashion_mnist_attribute_table
from models.dpfe.curve import z_accuracy
from models.io import atomic_write_text

PROBES = ("linear", "mlp", "knn")


def load(path: str) -> DPFE:
    if Path(path).is_dir():
        return DPFE.from_pretrained(path)
    return DPFE.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()


def attack(model: DPFE, data: dict, sizes: dict, seed: int = 0) -> dict:
    pool, labels = data["pool"], data["labels"]
    rel = {part: _batched(model.release, pool[data[part]]) for part in ("fit", "holdout", "test")}
    y = {part: labels[data[part]] for part in ("fit", "holdout", "test")}
    with torch.no_grad():
        logits = model.predict_from_features(rel["test"])
    z = fashion_mnist_attribute_table(model.attribute_names)[y["test"]]
    row = {"z_acc": z_accuracy(logits, z)}
    for arch in PROBES:
        r = probe_attack(
            rel["fit"], y["fit"], rel["holdout"], y["holdout"], rel["test"], y["test"], 10,
            arch=arch, max_epochs=4 * sizes["epochs"], patience=sizes["patience"], seed=seed,
        )  # fmt: skip
        row[f"{arch}_class_accuracy"] = r["class_accuracy"]
    row["worst_class_accuracy"] = max(row[f"{a}_class_accuracy"] for a in PROBES)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="zoo folders or Lightning checkpoints of DPFE extractors")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    sizes = SIZES["full"]
    data = standard_data(args.data_dir, sizes, seed=0)
    rows = []
    for path in args.models:
        t0 = time.perf_counter()
        row = {"model": path, **attack(load(path), data, sizes), "seconds": 0.0}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row))
    if args.out:
        atomic_write_text(args.out, json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
