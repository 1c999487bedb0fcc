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
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from datamodules import FashionMNISTDataModule
from models.sca import SCA, SERVER_ATTACKS
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True)
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
    args = parser.parse_args(argv)
    model = SCA.load_from_checkpoint(args.ckpt, map_location="cpu", weights_only=True)
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
        checkpoint=str(args.ckpt),
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
