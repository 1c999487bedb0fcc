"""DPFE extractors against the harness's attackers, with and without Procedure 2's noise: one
accuracy-privacy curve per extractor, all on one plot.

    python scripts/dpfe_attacks.py dpfe-fashion-mnist dpfe-fashion-mnist-simple dpfe-fashion-mnist-ib \\
        [--ratios 0 0.1 0.5 1 2.5] [--data-dir data] [--out runs/dpfe_attacks]

Each model is a zoo name, a zoo folder or a Lightning checkpoint. ``--split val`` evaluates on the 5,000
held-out training images instead of the test set (attackers on the other training images): use it to
choose among candidates. For every noise ratio r the released
features get Procedure 2's noise N(0, r C) (C = covariance of the releases of the attacker's own training
images) and, per point:

* utility: the z-accuracy of the server's z-predictor on the noisy test features;
* attribute inference: the class accuracy (and log-rank privacy) of a linear probe, an MLP probe and a
  k-NN vote, trained by the attacker on noisy releases of its own labelled training-split images
  (early stopping / k chosen on a held-out part), scored on the 10,000 test images, disjoint from theirs;
  ``worst_class_accuracy`` is the strongest of them, the curve's privacy axis (``attacker_error`` =
  1 - it). The floor is what knowing z exactly gives: (distinct attribute vectors) / 10 = 0.30 for FU;
* the paper's KDE log-rank privacy of the noisy test features (Procedure 2's measure);
* a learned MLP reconstruction of the image from the noisy features (NMSE, SSIM).

It also prints whether each extractor's curve is Acc-Priv superior (Definition 11, ``compare_curves``) to
each other's, by LRP and by the strongest attacker's error.

The attackers are those of ``scripts/attack.py`` with its full-run sizes (``--quick``: its quick sizes).
Writes ``attacks_curve.json``, ``attacks_curve.md`` and ``attacks_curve.png`` (z-accuracy against the
strongest attacker's class accuracy, next to z-accuracy against LRP), logged as a uint8 image to an offline
wandb run unless ``--no-wandb``. Ship a chosen extractor through ``scripts/convert_checkpoint.py`` +
``scripts/attack.py`` (which writes its card).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from attack import SIZES, _batched, standard_data

from models import zoo
from models.attacks.inference import probe_attack
from models.attacks.inversion import learned_inversion
from models.dpfe import DPFE, add_feature_noise, feature_covariance, identity_privacy
from models.dpfe.attributes import fashion_mnist_attribute_table
from models.dpfe.curve import compare_curves, z_accuracy
from models.io import atomic_write_text

PROBES = ("linear", "mlp", "knn")
DEFAULT_RATIOS = (0.0, 0.1, 0.5, 1.0, 2.5)


def load(path: str) -> DPFE:
    """A zoo name, a Hub-layout folder or a Lightning checkpoint."""
    if not Path(path).exists() and zoo.folder(path).is_dir():
        path = str(zoo.folder(path))
    if Path(path).is_dir():
        return DPFE.from_pretrained(path)
    if not Path(path).is_file():
        raise SystemExit(f"{path}: not a zoo name ({', '.join(zoo.available())}), folder or checkpoint")
    return DPFE.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()


def floor(model: DPFE, num_classes: int = 10) -> float:
    """Class accuracy of an attacker who knows z exactly: distinct attribute vectors / classes (balanced)."""
    table = fashion_mnist_attribute_table(model.attribute_names)
    return len({tuple(row.tolist()) for row in table}) / num_classes


def attack(
    model: DPFE, data: dict, sizes: dict, ratios=(0.0,), seed: int = 0, inversion: bool = True
) -> list[dict]:
    """One curve: a row per noise ratio r (see the module docstring)."""
    pool, labels = data["pool"], data["labels"]
    parts = ("fit", "holdout", "test")
    torch.manual_seed(seed)  # the extractor's own channel noise (feature_noise > 0) draws from it
    clean = {part: _batched(model.release, pool[data[part]]).float() for part in parts}
    y = {part: labels[data[part]] for part in parts}
    images = {part: pool[data[part]].float() / 255 for part in parts}
    cov = feature_covariance(clean["fit"])  # the attacker's (and Procedure 2's) training features
    z = fashion_mnist_attribute_table(model.attribute_names)[y["test"]]
    rows = []
    for r in ratios:
        gen = torch.Generator().manual_seed(seed + 1)
        rel = {part: add_feature_noise(clean[part], cov, float(r), gen) for part in parts}
        with torch.no_grad():
            logits = model.predict_from_features(rel["test"])
        row = {"r": float(r), "z_acc": z_accuracy(logits, z)}
        for arch in PROBES:
            res = probe_attack(
                rel["fit"], y["fit"], rel["holdout"], y["holdout"], rel["test"], y["test"], 10,
                arch=arch, max_epochs=4 * sizes["epochs"], patience=sizes["probe_patience"], seed=seed,
            )  # fmt: skip
            row[f"{arch}_class_accuracy"] = res["class_accuracy"]
            row[f"{arch}_lrp"] = res["lrp"]
        strongest = max(PROBES, key=lambda a: row[f"{a}_class_accuracy"])
        row["worst_class_accuracy"] = row[f"{strongest}_class_accuracy"]
        row["worst_attacker"] = strongest
        row["attacker_error"] = 1.0 - row["worst_class_accuracy"]  # higher = more private, for compare_curves
        row["worst_lrp"] = min(row[f"{a}_lrp"] for a in PROBES)
        row["lrp"] = float(identity_privacy(rel["test"].double(), y["test"], 10)["lrp"])  # paper's KDE
        if inversion:
            res = learned_inversion(
                rel["fit"], images["fit"], rel["holdout"], images["holdout"], rel["test"], images["test"],
                arch="mlp", max_epochs=sizes["epochs"], patience=sizes["patience"], seed=seed,
            )  # fmt: skip
            row["inversion_nmse"], row["inversion_ssim"] = res["nmse"], res["ssim"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def plot(curves: dict[str, list[dict]], floor_acc: float) -> np.ndarray:
    """z-accuracy vs the strongest attacker's class accuracy (left) and vs the KDE LRP (right); uint8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=100)
    for name, rows in curves.items():
        acc = [row["z_acc"] for row in rows]
        for ax, key in zip(axes, ("worst_class_accuracy", "lrp"), strict=True):
            ax.plot([row[key] for row in rows], acc, "o-", markersize=4, label=name)
            for row in rows:
                ax.annotate(f"r={row['r']:g}", (row[key], row["z_acc"]), fontsize=6, alpha=0.7)
    axes[0].axvline(floor_acc, color="grey", ls="--", lw=1, label=f"floor (knows z only) {floor_acc:.2f}")
    axes[0].set_xlabel("strongest attacker's class accuracy (lower = more private)")
    axes[1].set_xlabel("log-rank privacy, paper's KDE (higher = more private)")
    for ax in axes:
        ax.set_ylabel("z accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("DPFE extractors on Fashion-MNIST test, Procedure 2 noise ratio r on each point")
    fig.tight_layout()
    fig.canvas.draw()
    picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return picture


def markdown(curves: dict[str, list[dict]], floor_acc: float, sizes: dict, split: str = "test") -> str:
    where = "test set" if split == "test" else "validation split (held-out training images)"
    lines = [
        f"# DPFE extractors under attack, Fashion-MNIST {where} (scripts/dpfe_attacks.py)",
        "",
        f"Attackers train on {sizes['fit']} + {sizes['holdout']} of their own training-split images and are "
        f"scored on {sizes['test']} evaluated {split} images. Floor (an attacker who knows z exactly): "
        f"{floor_acc:.2f}.",
        "",
        "| model | r | z acc | linear | MLP | k-NN | strongest | strongest-probe LRP | KDE LRP "
        "| inversion NMSE |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rows in curves.items():
        for row in rows:
            inv = f"{row['inversion_nmse']:.4f}" if "inversion_nmse" in row else "-"
            lines.append(
                f"| {name} | {row['r']:g} | {row['z_acc']:.4f} | {row['linear_class_accuracy']:.4f} | "
                f"{row['mlp_class_accuracy']:.4f} | {row['knn_class_accuracy']:.4f} | "
                f"{row['worst_class_accuracy']:.4f} | {row['worst_lrp']:.4f} | {row['lrp']:.4f} | {inv} |"
            )
    return "\n".join(lines) + "\n"


def write_cards(result: dict, cards: list[str], how: str) -> dict:
    """Writes a test-split result's curve table into each card as the "dpfe-attack-curve" section."""
    from models.cards import update_card_section

    if result.get("split", "test") != "test":
        raise SystemExit("only a --split test result goes into a card (val results are for choosing)")
    body = markdown(result["curves"], result["floor"], result["sizes"], "test").split("\n", 2)[2]
    for name in cards:
        folder = Path(name) if Path(name).is_dir() else zoo.folder(name)
        if not folder.is_dir():
            raise SystemExit(f"--card {name}: not a zoo name ({', '.join(zoo.available())}) or folder")
        update_card_section(
            folder, "dpfe-attack-curve", "Accuracy-privacy curves under attack", body,
            f"scripts/dpfe_attacks.py {how}",
        )  # fmt: skip
        print(f"wrote the curve table into {folder / 'README.md'}")
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="zoo names, zoo folders or Lightning checkpoints")
    p.add_argument("--ratios", type=float, nargs="+", default=list(DEFAULT_RATIOS))
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", default="runs/dpfe_attacks")
    p.add_argument("--quick", action="store_true", help="scripts/attack.py's quick sizes")
    p.add_argument("--no-inversion", action="store_true", help="skip the learned reconstruction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-size", type=int, default=5000, help="held-out training images (as in the configs)")
    p.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="evaluated images: the test set, or (to choose among candidates) the 5,000 held-out training "
        "images of the configs, with the attackers' rows from the other training images",
    )
    p.add_argument("--no-wandb", action="store_true")
    p.add_argument(
        "--card",
        nargs="*",
        default=[],
        help="zoo names / folders whose card gets the test-split curve table as a section",
    )
    p.add_argument(
        "--render",
        default=None,
        help="an attacks_curve.json this script wrote: write its table into --card (no measurement)",
    )
    args = p.parse_args(argv)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        how = f"{' '.join(saved['models'].values())} (table rendered from {args.render})"
        return write_cards(saved, args.card, how)
    if not args.models:
        raise SystemExit("name at least one extractor (zoo name, folder or checkpoint), or use --render")
    if any(r < 0 for r in args.ratios):
        raise SystemExit(f"--ratios must be >= 0 (Procedure 2's r), got {args.ratios}")
    sizes = SIZES["quick" if args.quick else "full"]
    models = {path: load(path) for path in args.models}  # fail on a bad name before any work
    names = [Path(p).name for p in args.models]
    labels = {p: (n if names.count(n) == 1 else p) for p, n in zip(args.models, names, strict=True)}
    data = standard_data(args.data_dir, sizes, args.seed, None if args.split == "test" else args.val_size)
    curves, seconds = {}, {}
    for path, model in models.items():
        t0 = time.perf_counter()
        curves[labels[path]] = attack(model, data, sizes, args.ratios, args.seed, not args.no_inversion)
        seconds[labels[path]] = round(time.perf_counter() - t0, 1)
    floor_acc = floor(next(iter(models.values())))
    # Acc-Priv superiority (Definition 11) of every extractor over every other, by LRP and by attacker error
    superior = {
        f"{a} over {b}": {p: compare_curves(curves[a], curves[b], p) for p in ("lrp", "attacker_error")}
        for a in curves
        for b in curves
        if a != b
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "floor": floor_acc,
        "split": args.split,
        "sizes": {k: sizes[k] for k in ("fit", "holdout", "test", "epochs")},
        "models": {labels[p]: p for p in args.models},
        "seconds": seconds,
        "superior": superior,
        "curves": curves,
    }
    atomic_write_text(out / "attacks_curve.json", json.dumps(result, indent=2))
    atomic_write_text(out / "attacks_curve.md", markdown(curves, floor_acc, sizes, args.split))
    from PIL import Image

    picture = plot(curves, floor_acc)
    Image.fromarray(picture).save(out / "attacks_curve.png")
    if not args.no_wandb:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        run = wandb.init(project="privzoo", name="dpfe-attacks", dir=str(out), job_type="eval", config=result)
        run.log({"dpfe/attacks_curve": wandb.Image(picture)})
        run.finish()
    print(markdown(curves, floor_acc, sizes, args.split))
    if args.card:
        write_cards(result, args.card, " ".join(args.models))
    for pair, by in superior.items():
        print(
            f"{pair}: Acc-Priv superior by LRP at every r {by['lrp']['per_ratio']}, at equal accuracy "
            f"{by['lrp']['per_accuracy']}; by attacker error at every r {by['attacker_error']['per_ratio']}, "
            f"at equal accuracy {by['attacker_error']['per_accuracy']}"
        )
    print(f"wrote {out / 'attacks_curve.json'}, {out / 'attacks_curve.md'}, {out / 'attacks_curve.png'}")
    return result


if __name__ == "__main__":
    main()
