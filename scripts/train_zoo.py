"""Rebuilds the zoo: for every entry, its recorded training config (the one in its card) -> fit ->
convert -> evaluate -> card.

    python scripts/train_zoo.py --dry-run                      # the commands, nothing run
    python scripts/train_zoo.py --only ppl-fashion-mnist-16bit --data-dir /data
    python scripts/train_zoo.py --dest runs/zoo --set trainer.accelerator=gpu --set trainer.devices=4

This is the path to publishing checkpoints trained on a GPU machine that has the data (then
``scripts/publish.py``). For each entry:

1. the LightningCLI config recorded in ``checkpoints/<name>/README.md`` is written to
   ``--out/<name>/config.yaml``;
2. ``privzoo fit`` runs it with outputs under ``--out/<name>/`` (``--set`` adds CLI overrides, e.g. a
   device or, in tests, ``trainer.fast_dev_run=true``); the final weights go to ``final.ckpt``;
3. prerequisites are resolved: a config whose ``ckpt_path`` or ``model.init_args.init_from`` names the
   checkpoint folder of another entry's recorded run (DPFE's stages) or that entry's zoo folder (SCA's
   decoder fine-tune) gets that entry's new ``final.ckpt``
   (the entries run in dependency order); any other missing prerequisite is an error that names it, and
   ``--from PATH=CKPT`` supplies it (SCA's second stage continues an earlier run: see its card's notes);
4. ``final.ckpt`` is converted into ``--dest/<name>/`` (default: the zoo folder ``checkpoints/``), then
   the entry's evaluation writes the card's metrics.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import yaml
from huggingface_hub import ModelCard

from models import zoo
from models.cli import cli_main

CONFIG_HEADING = "LightningCLI config ("


def recorded_config(name: str) -> dict:
    """The LightningCLI config recorded in a zoo entry's card (``ValueError`` if it has none)."""
    card = ModelCard.load(zoo.folder(name) / "README.md").text
    start = card.find(CONFIG_HEADING)
    block = card.find("```yaml\n", start) if start >= 0 else -1
    if block < 0:
        raise ValueError(
            f"{name}: its card records no LightningCLI config, so its training cannot be replayed; "
            "convert the checkpoint with --config (scripts/convert_checkpoint.py) to record it"
        )
    text = card[block + len("```yaml\n") : card.find("\n```", block)]
    return yaml.safe_load(text)


def _run_dir(config: dict) -> str | None:
    return (config.get("checkpoint") or {}).get("dirpath")


def _prerequisites(config: dict) -> dict[str, str]:
    """``{"ckpt_path" | "init_from": path}`` that the config needs before it can run."""
    needs = {}
    if config.get("ckpt_path"):
        needs["ckpt_path"] = str(config["ckpt_path"])
    init_from = ((config.get("model") or {}).get("init_args") or {}).get("init_from")
    if init_from:
        needs["init_from"] = str(init_from)
    return needs


def plan(names: list[str], out: Path, supplied: dict[str, str], strict: bool = True) -> list[dict]:
    """One step per entry, in dependency order: ``{"name", "config", "args", "final", "missing"}``.

    Raises:
        ValueError: (``strict``) a prerequisite that is neither another entry's run nor supplied with
            ``--from``; without ``strict`` it is listed in the step's ``missing`` and shown as a placeholder.
    """
    configs = {name: recorded_config(name) for name in names}
    run_dirs = {
        os.path.normpath(_run_dir(c)): n for n, c in configs.items() if _run_dir(c)
    }  # recorded checkpoint folder -> the entry that produced it
    # an init_from may also name another entry's zoo folder (SCA's decoder fine-tune)
    folders = {os.path.abspath(zoo.folder(n)): n for n in names}
    steps: dict[str, dict] = {}

    def add(name: str, trail: tuple[str, ...] = ()) -> None:
        if name in steps:
            return
        if name in trail:
            raise ValueError(f"circular prerequisites: {' -> '.join(trail + (name,))}")
        config = configs[name]
        root = out / name
        args = [
            f"--config={root / 'config.yaml'}",
            f"--trainer.default_root_dir={root}",
            f"--checkpoint.dirpath={root / 'ckpt'}",
        ]
        missing: list[str] = []
        for key, path in _prerequisites(config).items():
            producer = run_dirs.get(os.path.normpath(os.path.dirname(path))) or folders.get(
                os.path.abspath(path)
            )
            if path in supplied:
                resolved = supplied[path]
            elif producer is not None and producer != name:
                add(producer, trail + (name,))
                resolved = str(steps[producer]["final"])
            elif Path(path).is_file():
                resolved = path
            elif not strict:
                resolved = f"<{path}: pass --from {path}=CKPT>"
                missing.append(path)
            else:
                raise ValueError(
                    f"{name}: its recorded config needs {key}={path}, which is not another zoo entry's run "
                    f"and does not exist here; train that stage first (see the card's training notes) and "
                    f"pass --from {path}=CKPT"
                )
            args.append(
                f"--ckpt_path={resolved}" if key == "ckpt_path" else f"--model.init_args.init_from={resolved}"
            )
        steps[name] = {
            "name": name,
            "config": config,
            "args": args,
            "final": root / "final.ckpt",
            "missing": missing,
        }

    for name in names:
        add(name)
    return list(steps.values())


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {value!r}: expected KEY=VALUE")
        out.append((key, rest))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", help="these zoo entries (and what they need); default: all")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--data-dir", default="data", help="dataset root for training and evaluation")
    p.add_argument("--out", type=Path, default=Path("runs/train_zoo"), help="training runs")
    p.add_argument("--dest", type=Path, default=None, help="zoo folder to write (default: checkpoints/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra CLI override")
    p.add_argument("--from", dest="supplied", action="append", default=[], metavar="PATH=CKPT")
    args = p.parse_args(argv)
    try:
        names = [zoo.get_entry(n).name for n in (args.only or zoo.available())]
        steps = plan(names, args.out, dict(_pairs(args.supplied, "--from")), strict=not args.dry_run)
    except (KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    extra = [f"--data.init_args.data_dir={args.data_dir}"] + [
        f"--{k}={v}" for k, v in _pairs(args.set, "--set")
    ]
    dest = args.dest or zoo.CHECKPOINTS_DIR
    for step in steps:
        command = ["privzoo", "fit", *step["args"], *extra]
        print(f"[{step['name']}] {shlex.join(command)}")
        print(f"[{step['name']}] convert {step['final']} -> {dest / step['name']}, evaluate, write the card")
        for path in step["missing"]:
            print(f"[{step['name']}] needs {path} (an earlier stage, not a zoo entry): --from {path}=CKPT")
    if args.dry_run:
        return 0
    from convert_checkpoint import convert  # the sibling script: scripts/ is this file's folder

    for step in steps:
        root = args.out / step["name"]
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.yaml").write_text(yaml.safe_dump(step["config"], sort_keys=False))
        cli = cli_main(["fit", *step["args"], *extra])
        cli.trainer.save_checkpoint(step["final"])  # the true last weights, whatever the monitor said
        notes = f"rebuilt by scripts/train_zoo.py from the config recorded in {zoo.folder(step['name'])}"
        convert(step["final"], dest / step["name"], config=root / "config.yaml", force=True, notes=notes)
        previous, zoo.CHECKPOINTS_DIR = zoo.CHECKPOINTS_DIR, dest
        try:
            metrics = zoo.evaluate(step["name"], args.data_dir, write_card="scripts/train_zoo.py")
        finally:
            zoo.CHECKPOINTS_DIR = previous
        print(f"[{step['name']}] " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
