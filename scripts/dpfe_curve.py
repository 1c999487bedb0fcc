"""DPFE's accuracy-privacy curves on the real Fashion-MNIST test set (Procedure 2, paper section 6.2).

For Simple and DPFE (same backbone, cut and attribute set): C = covariance of the private features of
training images; for every r of the paper's list, Gaussian noise N(0, r C) is added to the test features
-> z-accuracy (mean over the attributes), log-rank privacy (per-identity KDE), 1-NN identity error and the
normalised rank mean / std. Writes ``curve.json`` + ``curve.md`` + the pictures (``curve_<measure>.png``),
logs them to an offline wandb run, and prints whether DPFE is Acc-Priv superior to Simple and the r = 0
accuracy gaps to the attribute model.

    python scripts/dpfe_curve.py --train            # trains the 3 stages via the CLI configs, then measures
                                                    # (into runs/dpfe/{attribute,simple,dpfe}/last.ckpt)
    python scripts/dpfe_curve.py --attribute A.ckpt --simple S.ckpt --dpfe D.ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from callbacks.dpfe import plot_accuracy_privacy
from datamodules import FashionMNISTDataModule
from models.dpfe import DPFE, PAPER_RATIOS, STAGES, feature_covariance
from models.dpfe.curve import accuracy_privacy_curve, collect_features, compare_curves, z_accuracy
from models.dpfe.evaluate import PRIVACY_MEASURES

REPO = Path(__file__).resolve().parents[1]

#: Procedure 1's stages (models.dpfe.STAGES, in order) -> their Fashion-MNIST configs
STAGE_CONFIGS = {
    "attribute": "configs/dpfe/fashion_mnist_attribute.yaml",
    "simple": "configs/dpfe/fashion_mnist_simple.yaml",
    "dpfe": "configs/dpfe/fashion_mnist.yaml",
}
assert tuple(STAGE_CONFIGS) == STAGES


def train_stages(
    out_dir: Path, data_dir: str, extra: list[str], stage_args: dict[str, list[str]]
) -> dict[str, Path]:
    """Runs Procedure 1's three stages through ``scripts/cli.py fit``; returns each stage's last.ckpt."""
    ckpts: dict[str, Path] = {}
    previous: Path | None = None
    for stage, config in STAGE_CONFIGS.items():
        ckpt_dir = out_dir / stage
        cmd = [
            sys.executable,
            str(REPO / "scripts" / "cli.py"),
            "fit",
            f"--config={REPO / config}",
            f"--data.init_args.data_dir={data_dir}",
            f"--checkpoint.dirpath={ckpt_dir}",
            "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={out_dir / 'logs'}",
            f"--trainer.logger.name={stage}",
            "--trainer.enable_progress_bar=false",
            *([f"--model.init_args.init_from={previous}"] if previous else []),
            *extra,
            *stage_args.get(stage, []),
        ]
        print("+", " ".join(cmd), flush=True)
        # one intra-op thread: on a small shared CPU machine this is several times faster than oversubscribing
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        subprocess.run(cmd, check=True, cwd=REPO, env=env)
        previous = ckpts[stage] = ckpt_dir / "last.ckpt"
    return ckpts


def markdown(curves: dict[str, list[dict]], summary: dict) -> str:
    lines = [
        "# DPFE accuracy-privacy curves, Fashion-MNIST test set",
        "",
        f"attribute set {summary['attribute_set']}, backbone {summary['backbone']}, cut {summary['cut']}, "
        f"d = {summary['feature_dim']}, privacy estimator {summary['estimator']}, c_y = 10 classes",
        "",
        "| model | r | z accuracy | LRP | 1-NN error | rank mean | rank std |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rows in curves.items():
        for row in rows:
            lines.append(
                f"| {name} | {row['r']:g} | {row['z_acc']:.4f} | {row['lrp']:.4f} | {row['nn_error']:.4f} | "
                f"{row['rank_mean']:.4f} | {row['rank_std']:.4f} |"
            )
    lines += [
        "",
        f"attribute model z accuracy (test): {summary['attribute_z_acc']:.4f}; r = 0 gaps: "
        f"Simple {summary['gap_simple']:+.4f}, DPFE {summary['gap_dpfe']:+.4f}",
        f"DPFE Acc-Priv superior to Simple (LRP, at every r: higher LRP and >= accuracy): "
        f"{summary['superior']['per_ratio']} (failing r: {summary['superior']['failures_per_ratio']})",
        f"DPFE Acc-Priv superior to Simple (LRP at equal accuracy, interpolated): "
        f"{summary['superior']['per_accuracy']} (failing r: {summary['superior']['failures_per_accuracy']}; "
        f"compared at r: {summary['superior']['compared_per_accuracy']})",
        "",
    ]
    return "\n".join(lines)


def log_wandb(out_dir: Path, curves: dict[str, list[dict]], pictures: dict[str, Path], summary: dict) -> str:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    run = wandb.init(project="privzoo", name="dpfe-curve", dir=str(out_dir), config=summary, job_type="eval")
    columns = ["model", "r", "z_acc", *PRIVACY_MEASURES]
    table = wandb.Table(
        columns=columns,
        data=[[n, *(row[c] for c in columns[1:])] for n, rows in curves.items() for row in rows],
    )
    from PIL import Image

    run.log(
        {
            "dpfe/curve": table,
            **{f"dpfe/acc_priv_{m}": wandb.Image(Image.open(p)) for m, p in pictures.items()},
        }
    )
    run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, bool, str))})
    run.finish()
    return run.dir


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", action="store_true", help="train the 3 stages first (CLI configs)")
    parser.add_argument("--train-args", nargs="*", default=[], help="extra CLI args for every stage")
    parser.add_argument("--attribute", default="runs/dpfe/attribute/last.ckpt")
    parser.add_argument("--simple", default="runs/dpfe/simple/last.ckpt")
    parser.add_argument("--dpfe", default="runs/dpfe/dpfe/last.ckpt")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="runs/dpfe/curve")
    parser.add_argument(
        "--val-size", type=int, default=5000, help="held-out train images (as in the configs)"
    )
    parser.add_argument("--train-samples", type=int, default=10000, help="training images for C")
    parser.add_argument("--test-samples", type=int, default=None, help="cap on test images (default: all)")
    parser.add_argument("--estimator", default="kde", choices=["kde", "knn"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ratios", type=float, nargs="*", default=list(PAPER_RATIOS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-draws", type=int, default=1, help="noise draws averaged per r")
    parser.add_argument("--no-wandb", action="store_true")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpts = {"attribute": Path(args.attribute), "simple": Path(args.simple), "dpfe": Path(args.dpfe)}
    if args.train:
        ckpts = train_stages(out.parent, args.data_dir, args.train_args, {})
    for name, path in ckpts.items():
        if not path.exists():
            raise SystemExit(f"missing {name} checkpoint {path}: pass --{name} PATH or use --train")

    torch.manual_seed(args.seed)
    models = {
        name: DPFE.load_from_checkpoint(str(p), map_location="cpu", weights_only=True).eval()
        for name, p in ckpts.items()
    }
    hp = models["dpfe"].hparams
    for key in ("backbone", "cut", "attribute_set", "feature_dim"):
        if models["simple"].hparams[key] != hp[key]:
            raise SystemExit(f"Simple and DPFE differ in {key}: {models['simple'].hparams[key]} vs {hp[key]}")
    dm = FashionMNISTDataModule(
        data_dir=args.data_dir, batch_size=1000, eval_batch_size=1000, val_size=args.val_size, download=False
    )
    dm.prepare_data()
    dm.setup()

    _, z_att, _ = collect_features(models["attribute"], dm.test_dataloader(), args.test_samples)
    with torch.no_grad():
        att_logits = torch.cat([models["attribute"](b["image"].float() / 255) for b in dm.test_dataloader()])[
            : z_att.shape[0]
        ]
    attribute_acc = z_accuracy(att_logits, z_att)

    curves = {}
    for name in ("simple", "dpfe"):
        model = models[name]
        train_f, _, _ = collect_features(model, dm.train_dataloader(), args.train_samples)
        cov = feature_covariance(train_f)
        test_f, z, y = collect_features(model, dm.test_dataloader(), args.test_samples)
        curves[name] = accuracy_privacy_curve(
            model, test_f, z, y, cov, args.ratios, 10, args.estimator, args.k, args.seed, args.noise_draws
        )
        for row in curves[name]:
            print(
                f"{name:6s} r={row['r']:<5g} z_acc={row['z_acc']:.4f} lrp={row['lrp']:.4f} "
                f"nn_error={row['nn_error']:.4f} rank_mean={row['rank_mean']:.4f} "
                f"rank_std={row['rank_std']:.4f}",
                flush=True,
            )

    superior = compare_curves(curves["dpfe"], curves["simple"], "lrp")
    r0 = (
        {name: next(row for row in rows if row["r"] == 0.0) for name, rows in curves.items()}
        if 0.0 in args.ratios
        else {}
    )
    summary = {
        "attribute_set": hp.attribute_set,
        "backbone": hp.backbone,
        "cut": hp.cut,
        "feature_dim": hp.feature_dim,
        "estimator": args.estimator,
        "noise_draws": args.noise_draws,
        "checkpoints": {k: str(v) for k, v in ckpts.items()},
        "attribute_z_acc": attribute_acc,
        "gap_simple": r0["simple"]["z_acc"] - attribute_acc if r0 else float("nan"),
        "gap_dpfe": r0["dpfe"]["z_acc"] - attribute_acc if r0 else float("nan"),
        "superior": superior,
        "superior_nn_error": compare_curves(curves["dpfe"], curves["simple"], "nn_error"),
        "test_samples": int(z_att.shape[0]),
    }
    (out / "curve.json").write_text(json.dumps({"summary": summary, "curves": curves}, indent=2))
    (out / "curve.md").write_text(markdown(curves, summary))
    pictures = {}
    from PIL import Image

    for measure in PRIVACY_MEASURES:
        pictures[measure] = out / f"curve_{measure}.png"
        Image.fromarray(plot_accuracy_privacy(curves, measure)).save(pictures[measure])
    if not args.no_wandb:
        print(f"wandb (offline) run: {log_wandb(out, curves, pictures, summary)}")

    within = all(abs(summary[g]) <= 0.005 for g in ("gap_simple", "gap_dpfe"))
    print(f"attribute model z accuracy: {attribute_acc:.4f}")
    print(
        f"r=0 z-accuracy gap to the attribute model: Simple {summary['gap_simple']:+.4f}, "
        f"DPFE {summary['gap_dpfe']:+.4f} -> within 0.5%: {within}"
    )
    print(
        f"DPFE Acc-Priv superior to Simple at every r (higher LRP, >= accuracy): {superior['per_ratio']} "
        f"(failing r: {superior['failures_per_ratio']})"
    )
    print(
        f"DPFE Acc-Priv superior at equal accuracy (interpolated LRP): {superior['per_accuracy']} "
        f"(failing r: {superior['failures_per_accuracy']}; "
        f"compared at r: {superior['compared_per_accuracy']})"
    )
    print(f"wrote {out / 'curve.json'}, {out / 'curve.md'}, {', '.join(str(p) for p in pictures.values())}")
    return {"summary": summary, "curves": curves}


if __name__ == "__main__":
    main()
