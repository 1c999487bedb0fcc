"""Converts a Lightning ``.ckpt`` (from ``scripts/cli.py fit``) into a Hub-layout checkpoint folder.

    python scripts/convert_checkpoint.py CKPT OUT_DIR [--class models.ppl.PPL] [--config CONFIG_YAML]
                                         [--name NAME] [--split TEXT] [--force]

    python scripts/convert_checkpoint.py runs/ppl/last.ckpt checkpoints/ppl-fashion-mnist-16bit

writes ``OUT_DIR/config.json`` (the model's init arguments, from the checkpoint's ``hyper_parameters``),
``OUT_DIR/model.safetensors`` and a model card ``OUT_DIR/README.md`` (method, paper, dataset and split
from the checkpoint's datamodule hyperparameters, the training config, threat model, loading example), then
loads the folder back with ``from_pretrained`` and checks every tensor against the checkpoint.

* The class comes from ``--class`` or from the ``_class_path`` LightningCLI stores in the checkpoint.
* The checkpoint is read with ``torch.load(weights_only=True)`` only (no unpickling of arbitrary Python
  objects: that can run code); a checkpoint written by ``scripts/cli.py fit`` needs nothing more.
* The folder is written atomically: into a temporary sibling folder, loaded back and checked there, then
  renamed into place (into an existing ``--force`` folder each file is replaced with ``os.replace``), so a
  failed or interrupted conversion never leaves a half-written folder.
* The LightningCLI config is ``--config``, else the ``config.yaml`` LightningCLI saved next to the run
  (the checkpoint's folder or its parent) when its model section matches the checkpoint.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from models.hub import CARD_NAME, CONFIG_NAME, LIGHTNING_PRIVATE_KEYS, WEIGHTS_NAME
from models.io import atomic_dir
from models.zoo import resolve_class

GIT_SIZE_LIMIT = 20 * 2**20  # the zoo ships folders in git: keep each under 20 MB


class ConversionError(RuntimeError):
    """The checkpoint cannot be converted (the message says why and what to do)."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, read with ``torch.load(weights_only=True)`` (never unpickles other objects)."""
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConversionError(
            f"{path} holds Python objects that torch.load(weights_only=True) refuses "
            f"({str(err).splitlines()[0]}); privzoo does not unpickle checkpoints (that can run code): "
            "convert a checkpoint written by scripts/cli.py fit, or re-save this one as plain tensors / "
            "dicts (torch.save({'state_dict': ..., 'hyper_parameters': ...}))"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ConversionError(
            f"{path} is not a readable PyTorch checkpoint ({err}): truncated or damaged?"
        ) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConversionError(
            f"{path} is not a Lightning checkpoint (no 'state_dict'): convert the .ckpt written by "
            "scripts/cli.py fit (last.ckpt or the best one)"
        )
    return checkpoint


def model_class(checkpoint: dict[str, Any], class_path: str | None, path: Path) -> type:
    """The model class from ``--class`` and / or the checkpoint's ``_class_path``; they must agree."""
    stored = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if class_path is None and stored is None:
        raise ConversionError(
            f"{path} does not say which class it is (no '_class_path' in its hyper_parameters: it was not "
            "trained through LightningCLI); pass --class, e.g. --class models.ppl.PPL"
        )
    cls = resolve_class(class_path or stored)
    if class_path is not None and stored is not None and resolve_class(stored) is not cls:
        raise ConversionError(f"--class {class_path} differs from the checkpoint's class {stored}")
    return cls


def find_cli_config(ckpt: Path, explicit: Path | None, cls: type, hparams: dict[str, Any]) -> Path | None:
    """The LightningCLI config YAML of the run, checked against the checkpoint's hparams."""
    candidates = [explicit] if explicit else [ckpt.parent / "config.yaml", ckpt.parent.parent / "config.yaml"]
    for candidate in candidates:
        if candidate is None or not candidate.is_file():
            if explicit:
                raise ConversionError(f"--config {explicit} does not exist")
            continue
        try:
            model_cfg = (yaml.safe_load(candidate.read_text()) or {}).get("model") or {}
            same_class = resolve_class(model_cfg["class_path"]) is cls
            init_args = model_cfg.get("init_args") or {}
        except Exception as err:  # not a LightningCLI config
            if explicit:
                raise ConversionError(
                    f"--config {explicit} is not a LightningCLI config with a model: {err}"
                ) from err
            continue
        differs = sorted(k for k, v in init_args.items() if k in hparams and hparams[k] != v)
        if same_class and not differs:
            return candidate
        message = f"{candidate} does not match the checkpoint (class or arguments {differs} differ)"
        if explicit:
            raise ConversionError(message)
        print(f"note: {message}; not put in the card", file=sys.stderr)
    return None


def convert(
    ckpt: Path,
    out_dir: Path,
    class_path: str | None = None,
    config: Path | None = None,
    name: str | None = None,
    split: str | None = None,
    force: bool = False,
    notes: str | None = None,
) -> Path:
    """Converts ``ckpt`` into the Hub folder ``out_dir`` (see the module docstring); returns ``out_dir``."""
    ckpt, out_dir = Path(ckpt), Path(out_dir)
    existing = [p.name for p in out_dir.iterdir()] if out_dir.is_dir() else []
    if existing and not force:
        raise ConversionError(
            f"{out_dir} is not empty ({', '.join(sorted(existing))}); pass --force to overwrite its "
            f"{CONFIG_NAME}, {WEIGHTS_NAME} and {CARD_NAME} (the card's metrics are reset)"
        )
    checkpoint = read_checkpoint(ckpt)
    cls = model_class(checkpoint, class_path, ckpt)
    hparams = {
        k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if k not in LIGHTNING_PRIVATE_KEYS
    }
    kwargs = cls._config_to_kwargs(hparams, {}, f"{ckpt} hyper_parameters")
    model = cls(**kwargs)
    model.on_load_checkpoint(checkpoint)  # Lightning's own order: hook, then a strict state-dict load
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as err:
        raise ConversionError(f"the weights in {ckpt} do not fit {cls.__name__}({kwargs}): {err}") from err

    datamodule_hparams = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    datamodule = None
    if datamodule_hparams:
        datamodule = {
            "class_path": datamodule_hparams.pop("_class_path", None),
            "init_args": {k: v for k, v in datamodule_hparams.items() if k not in LIGHTNING_PRIVATE_KEYS},
        }
    cli_config = find_cli_config(ckpt, config, cls, hparams)
    context: dict[str, Any] = {
        "name": name or out_dir.name,
        "source": (
            f"`{ckpt.name}` (epoch {checkpoint.get('epoch')}, global step {checkpoint.get('global_step')}, "
            f"Lightning {checkpoint.get('pytorch-lightning_version')})"
        ),
    }
    if datamodule:
        context["datamodule"] = datamodule
    if split:
        context["split"] = split
    if notes:
        context["notes"] = notes
    if cli_config is not None:
        context["training_config"] = cli_config.read_text()
        context["training_config_path"] = cli_config.name
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, model_card_kwargs=context)
        # the folder must rebuild the same model: reload it strictly and compare every tensor
        reloaded = cls.from_pretrained(tmp)
        expected = model.state_dict()
        for key, tensor in reloaded.state_dict().items():
            if not torch.equal(tensor, expected[key]):
                raise ConversionError(f"round trip changed tensor {key}: please report this as a bug")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ckpt", type=Path, help="Lightning checkpoint (.ckpt)")
    parser.add_argument("out_dir", type=Path, help="output folder, e.g. checkpoints/<name>")
    parser.add_argument("--class", dest="class_path", help="model class, e.g. models.ppl.PPL")
    parser.add_argument("--config", type=Path, help="LightningCLI config.yaml of the training run")
    parser.add_argument("--name", help="zoo name for the card (default: the folder name)")
    parser.add_argument("--split", help="text describing the data split, for the card")
    parser.add_argument(
        "--notes", help="how the weights were trained (e.g. a run stopped early), for the card"
    )
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    try:
        out = convert(
            args.ckpt,
            args.out_dir,
            args.class_path,
            args.config,
            args.name,
            args.split,
            args.force,
            args.notes,
        )
    except (ConversionError, ImportError, TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    total = 0
    for path in sorted(out.iterdir()):
        total += path.stat().st_size
        print(f"{path}  {path.stat().st_size:,} bytes")
    if total > GIT_SIZE_LIMIT:
        print(
            f"warning: {out} is {total / 2**20:.1f} MB, over the 20 MB the zoo ships in git", file=sys.stderr
        )
    print(
        f"converted {args.ckpt} -> {out} (loads back identically); "
        "next: add its ZooEntry to models/<method>/pretrained.py"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
