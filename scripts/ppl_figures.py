"""PPL's figures (paper Figs. 3, 5, 6) on Fashion-MNIST (or any config): arguments and files around
:mod:`models.ppl.figures`.

    python scripts/ppl_figures.py transfer --ppl-ckpt ppl-fashion-mnist-16bit --out runs/ppl_figures
    python scripts/ppl_figures.py ratio --ppl-ckpt runs/ppl8/final.ckpt --shares 0 0.5 1 --out runs/figs
    python scripts/ppl_figures.py epsilon --ppl-arg trainer.max_steps=1000 --out runs/ppl_figures
    python scripts/ppl_figures.py epsilon --ppl-ckpt 0.1=runs/a.ckpt --ppl-ckpt 0.3=runs/b.ckpt \\
        --victim-ckpt adsh:C=runs/adsh_C/final.ckpt --victims adsh

* ``transfer`` (Fig. 3): one generator (``--ppl-ckpt``: a Lightning checkpoint or a PPL zoo name; trained
  here otherwise) against victims built on the timm ``--backbones``, each trained on clean (@C) and protected
  (@A) data.
* ``ratio`` (Fig. 5): victims trained on training sets in which a seeded share p (``--shares``) of the
  images is protected.
* ``card FOLDER FIG.json ...``: writes measured figures into FOLDER's model card, one section each: Figs. 3
  and 5 only of FOLDER's own generator (``--ppl-ckpt`` its zoo name); Fig. 6 and the levers, which train
  their own generators, under a line saying so.
* ``merge FIG.json FIG.json ... --out DIR``: runs of one method figure (levers, Fig. 6) as one figure, for
  runs that score the same clean-trained victims (checked); a point measured twice must agree.
* ``levers``: issue 15's levers for a stronger generator (``--levers``: names of
  ``models.ppl.figures.DEFAULT_LEVERS`` or ``NAME:key=value,...``), one generator per lever, each lever alone
  on top of the config; victims as for ``epsilon``.
* ``epsilon`` (Fig. 6): a generator per budget (``--epsilons`` l_inf, ``--l2-epsilons`` l2), trained here
  or given as ``--ppl-ckpt EPS=PATH``; clean-trained victims are trained once (or ``--victim-ckpt
  VICTIM:C=PATH``) and scored against every budget; PSNR / SSIM per budget.

Writes ``<figure>.json``, ``<figure>.md`` and ``<figure>.png`` under ``--out`` and logs the table and the
plot to an (offline by default) wandb run. ``--victim-arg trainer.max_epochs=5`` shrinks the victims (the
markdown states the scale used).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from ppl_table import _overrides, _victim_ckpts

from models.ppl.figures import (
    DEFAULT_BACKBONES,
    DEFAULT_EPSILONS,
    DEFAULT_L2_EPSILONS,
    DEFAULT_LEVERS,
    DEFAULT_SHARES,
    FigureSetup,
    check_backbones,
    check_epsilons,
    check_shares,
    epsilon_figure,
    figure_markdown,
    figure_plot,
    levers_figure,
    load_protector,
    merge_figures,
    parse_epsilon_ckpts,
    parse_levers,
    protector_for,
    ratio_figure,
    transfer_figure,
)
from models.ppl.protocol import SCENARIOS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dataset", default="fashion_mnist", help="config name under configs/<method>/")
    common.add_argument("--victims", nargs="+", default=["adsh", "dsdh"], choices=["adsh", "dsdh"])
    common.add_argument("--bits", type=int, default=16, help="code length of the victims (paper: 16)")
    common.add_argument("--ppl-bits", type=int, default=8, help="code length of a generator trained here")
    common.add_argument("--ppl-arg", action="append", default=[], help="CLI override for PPL, key=value")
    common.add_argument(
        "--victim-arg",
        action="append",
        default=[],
        help="CLI override for the victims, key=value, or VICTIM:key=value for one of them "
        "(e.g. adsh:trainer.max_epochs=15)",
    )
    common.add_argument(
        "--data-arg", action="append", default=[], help="CLI override for all data, key=value"
    )
    common.add_argument("--out", default="runs/ppl_figures")
    common.add_argument("--wandb", choices=["offline", "disabled"], default="offline")
    common.add_argument("--batch-size", type=int, default=1000, help="images per protect / hash call")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True)
    one = "trained PPL checkpoint or PPL zoo name (e.g. ppl-fashion-mnist-16bit); else one is trained"
    t = sub.add_parser("transfer", parents=[common], help="Fig. 3: transferability across backbones")
    t.add_argument("--ppl-ckpt", default=None, help=one)
    t.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES), help="timm model names")
    t.add_argument("--train-domains", nargs="+", default=["C", "A"], choices=["C", "A"])
    r = sub.add_parser("ratio", parents=[common], help="Fig. 5: share of protected training images")
    r.add_argument("--ppl-ckpt", default=None, help=one)
    r.add_argument("--shares", type=float, nargs="+", default=list(DEFAULT_SHARES))
    r.add_argument("--seed", type=int, default=0, help="seed of the choice of protected training images")
    c = sub.add_parser(
        "card", help="write measured figures (their JSON) into the card of the generator they measured"
    )
    c.add_argument("folder", help="a PPL checkpoint folder, e.g. checkpoints/ppl-fashion-mnist-16bit")
    c.add_argument("figures", nargs="+", help="<figure>.json files written by this script")
    m = sub.add_parser("merge", help="runs of one method figure (levers, epsilon) as one figure")
    m.add_argument("figures", nargs="+", help="<figure>.json files of runs of that figure")
    m.add_argument("--out", default="runs/ppl_figures")
    m.add_argument("--wandb", choices=["offline", "disabled"], default="offline")
    e = sub.add_parser("epsilon", parents=[common], help="Fig. 6: effect of the perturbation budget")
    e.add_argument(
        "--ppl-ckpt",
        action="append",
        default=[],
        metavar="EPS=PATH",
        help="a trained generator of budget EPS (its norm is the checkpoint's); budgets of --epsilons / "
        "--l2-epsilons without one are trained. Given alone, only these budgets are plotted",
    )
    e.add_argument(
        "--epsilons", type=float, nargs="*", default=None, help=f"l_inf (default {DEFAULT_EPSILONS})"
    )
    e.add_argument(
        "--l2-epsilons", type=float, nargs="*", default=None, help=f"l2 (default {DEFAULT_L2_EPSILONS})"
    )
    e.add_argument(
        "--victim-ckpt",
        action="append",
        default=[],
        metavar="VICTIM:C=PATH",
        help="a clean-trained victim to score instead of training it (protected-trained ones depend on eps)",
    )
    v = sub.add_parser("levers", parents=[common], help="levers for a stronger generator, one at a time")
    v.add_argument(
        "--levers",
        nargs="+",
        default=list(DEFAULT_LEVERS),
        help=f"names of {sorted(DEFAULT_LEVERS)} or NAME:key=value[,key=value...] (default: all of them)",
    )
    v.add_argument(
        "--ppl-ckpt",
        action="append",
        default=[],
        metavar="LEVER=PATH",
        help="a generator already trained for that lever (e.g. paper=<Fig. 6's l_inf 0.3 generator>)",
    )
    v.add_argument(
        "--victim-ckpt",
        action="append",
        default=[],
        metavar="VICTIM:C=PATH",
        help="a clean-trained victim to score instead of training it",
    )
    return p.parse_args(argv)


_WHERE = ("data_dir", "download")  # data overrides that do not change what is measured


def _victim_args(pairs: list[str]) -> dict[str, tuple[str, ...]]:
    """``key=value`` (every victim) or ``VICTIM:key=value`` (that victim only) -> CLI overrides per victim."""
    per: dict[str, list[str]] = {"*": []}
    for pair in pairs:
        key = pair.partition("=")[0]
        victim, sep, rest = pair.partition(":") if ":" in key else ("*", "", pair)
        if sep and victim not in ("adsh", "dsdh"):
            raise SystemExit(
                f"--victim-arg {pair!r}: expected key=value or VICTIM:key=value, VICTIM adsh or dsdh"
            )
        per.setdefault(victim, []).append(rest)
    return {victim: tuple(_overrides(p)) for victim, p in per.items()}


def _setup(args) -> FigureSetup:
    return FigureSetup(
        dataset=args.dataset,
        victims=tuple(args.victims),
        bits=args.bits,
        ppl_bits=args.ppl_bits,
        ppl_args=tuple(_overrides(args.ppl_arg)),
        victim_args=_victim_args(args.victim_arg),
        data_args=tuple(_overrides(args.data_arg)),
        scale=(*args.victim_arg, *(d for d in args.data_arg if not d.partition("=")[0].endswith(_WHERE))),
        out=Path(args.out),
        batch_size=args.batch_size,
    )


def _points(args) -> tuple[list[tuple[str, float]], dict]:
    """The budgets to plot: --epsilons / --l2-epsilons (defaults unless only checkpoints are given), then the
    checkpoints' own budgets not among them."""
    generators = parse_epsilon_ckpts(args.ppl_ckpt)
    only_ckpts = generators and args.epsilons is None and args.l2_epsilons is None
    linf = args.epsilons if args.epsilons is not None else ([] if only_ckpts else list(DEFAULT_EPSILONS))
    l2 = (
        args.l2_epsilons
        if args.l2_epsilons is not None
        else ([] if only_ckpts else list(DEFAULT_L2_EPSILONS))
    )
    points = [("inf", e) for e in check_epsilons(linf)] + [("2", e) for e in check_epsilons(l2, "l2 epsilon")]
    points += [key for key in sorted(generators, key=lambda k: (k[0] != "inf", k[1])) if key not in points]
    return points, generators


def _checked(args) -> dict:
    """The figure's inputs, checked (and given generators loaded) before anything is trained."""
    if args.figure == "transfer":
        return {"backbones": check_backbones(args.backbones), "protector": _given(args.ppl_ckpt)}
    if args.figure == "ratio":
        return {"shares": check_shares(args.shares), "protector": _given(args.ppl_ckpt)}
    clean = {}
    for (victim, domain), path in _victim_ckpts(args.victim_ckpt).items():
        if domain != "C":
            raise ValueError(f"--victim-ckpt {victim}:{domain}: only clean-trained (C) victims are reused")
        clean[victim] = path
    if args.figure == "levers":
        levers, generators = parse_levers(args.levers), {}
        for pair in args.ppl_ckpt:
            lever, sep, path = pair.partition("=")
            if not sep or not path:
                raise ValueError(f"--ppl-ckpt {pair!r}: expected LEVER=PATH, e.g. paper=runs/x/final.ckpt")
            if lever not in levers:
                raise ValueError(f"--ppl-ckpt {pair!r}: lever {lever!r} is not in --levers {list(levers)}")
            generators[lever] = (load_protector(path), path)
        return {"levers": levers, "generators": generators, "clean": clean}
    points, generators = _points(args)
    return {"points": points, "generators": generators, "clean": clean}


def _given(spec: str | None) -> tuple | None:
    return None if spec is None else (load_protector(spec), spec)


def run(args) -> dict:
    setup = _setup(args)
    try:
        inputs = _checked(args)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"ppl_figures {args.figure}: {err}") from err
    if args.figure == "epsilon":
        return epsilon_figure(setup, inputs["points"], inputs["generators"], inputs["clean"])
    if args.figure == "levers":
        return levers_figure(setup, inputs["levers"], inputs["generators"], inputs["clean"])
    protector, ckpt = inputs["protector"] or protector_for(setup, None)
    if args.figure == "transfer":
        return transfer_figure(setup, protector, ckpt, inputs["backbones"], args.train_domains)
    return ratio_figure(setup, protector, ckpt, inputs["shares"], args.seed)


def log_wandb(args, results: dict, picture: np.ndarray, out: Path) -> None:
    if args.wandb == "disabled":
        return
    import wandb

    names = [n for n, _, _ in SCENARIOS]
    cols = results["columns"]
    table = wandb.Table(columns=[*cols, *(f"map {n}" for n in names), *(f"ndcg_100 {n}" for n in names)])
    for row in results["rows"]:
        table.add_data(
            *[row[c] for c in cols], *[row["map"][n] for n in names], *[row["ndcg_100"][n] for n in names]
        )
    name, config = f"ppl-figure-{args.figure}", vars(args)
    run = wandb.init(
        project="privzoo", name=name, dir=str(out), mode=args.wandb, config=config, job_type="eval"
    )
    run.log({f"ppl_figures/{args.figure}": table, f"ppl_figures/{args.figure}_plot": wandb.Image(picture)})
    run.finish()


#: figures that train their own generator per point (budget, lever): they measure the method, not a folder's
#: weights, and go into a card only under that label
METHOD_FIGURES = ("epsilon", "levers")


def write_card(folder: str, paths: list[str]) -> list[str]:
    """Each figure's markdown as a card section (slug ``figure-<figure>``; a re-run replaces it), with the
    figure's own recorded command. Figures of one generator (Figs. 3, 5) go only into that generator's card;
    :data:`METHOD_FIGURES` (Fig. 6, the levers) train one generator per point, so they enter a card under a
    first line saying that their numbers describe the method at those settings, not the card's weights.

    Returns:
        the section titles written.
    """
    from models.cards import update_card_section

    name, titles = Path(folder).name, []
    for path in paths:
        results = json.loads(Path(path).read_text())
        text, ours = figure_markdown(results), results["figure"] not in METHOD_FIGURES
        if not ours:
            text = (
                "**Not these weights:** this figure trains its own generator per point (the settings in its "
                f"command), so it measures the method, not `{name}`.\n\n" + text
            )
        else:
            ckpt = (results.get("ppl") or {}).get("ckpt")
            if ckpt != name:
                raise SystemExit(
                    f"{path} measured the generator {ckpt!r}, not {name!r}: a figure of one generator goes "
                    f"only into that generator's card (run it with --ppl-ckpt {name})"
                )
        title = results["title"]
        update_card_section(
            folder, f"figure-{results['figure']}", title, text, results["command"], of_these_weights=ours
        )
        titles.append(title)
    return titles


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.figure == "card":
        return {"sections": write_card(args.folder, args.figures)}
    command = " ".join(["scripts/ppl_figures.py", *(sys.argv[1:] if argv is None else argv)])
    if args.figure == "merge":
        runs = []
        for path in args.figures:
            try:
                figure = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise SystemExit(f"ppl_figures merge: cannot read {path}: {err}") from err
            missing = sorted(
                {"figure", "rows", "points", "command"} - set(figure if isinstance(figure, dict) else {})
            )
            if missing:
                raise SystemExit(
                    f"ppl_figures merge: {path} is not a figure written by this script (no {missing})"
                )
            runs.append(figure)
        try:
            results = merge_figures(runs, command)
        except ValueError as err:
            raise SystemExit(f"ppl_figures merge: {err}") from err
        args.figure = results["figure"]
    else:
        results = {**run(args), "command": command}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    picture = figure_plot(results)
    (out / f"{args.figure}.json").write_text(json.dumps(results, indent=2))
    (out / f"{args.figure}.md").write_text(figure_markdown(results))
    from PIL import Image

    Image.fromarray(picture).save(out / f"{args.figure}.png")
    print(figure_markdown(results))
    log_wandb(args, results, picture, out)
    return results


if __name__ == "__main__":
    main()
