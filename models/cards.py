"""Model cards (``README.md`` with Hub YAML front matter) for privzoo checkpoint folders.

A card is written by :meth:`models.hub.PrivzooHubMixin.save_pretrained` from the model class (method,
paper, threat model: class attributes), its ``config.json`` and the training context (dataset, split,
LightningCLI config); its metrics table is written ONLY by evaluation code through
:func:`update_card_metrics`, never typed by hand::

    from models.cards import update_card_metrics
    update_card_metrics("checkpoints/ppl-fashion-mnist-16bit", {"map_cc": 0.91}, source="scripts/demo.py")

The metrics live in the front matter twice: ``privzoo.metrics`` (name, value, split, dataset, source, UTC
date: what the table is rendered from) and ``model-index`` (the Hub's evaluation-results format). Every
card records the sha256 of the ``model.safetensors`` it was written for (``privzoo.weights_sha256``, the
same value as the file's Git LFS oid on the Hub); metrics cannot be added to a card whose weights changed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants

from models.io import atomic_write_text

__all__ = [
    "CARD_CONTEXT_KEYS",
    "DATASETS",
    "GENERIC_THREAT_MODEL",
    "METRICS_END",
    "METRICS_START",
    "ATTACKS_END",
    "ATTACKS_START",
    "StaleCardError",
    "check_context",
    "update_card_threat_model",
    "file_sha256",
    "read_card_metrics",
    "render_card",
    "update_card_attacks",
    "update_card_metrics",
    "update_card_section",
]

CARD_NAME = constants.REPOCARD_NAME  # "README.md"
WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE  # "model.safetensors"
METRICS_START = "<!-- privzoo:metrics:start -->"
METRICS_END = "<!-- privzoo:metrics:end -->"
ATTACKS_START = "<!-- privzoo:attacks:start -->"
ATTACKS_END = "<!-- privzoo:attacks:end -->"

GENERIC_THREAT_MODEL = (
    "The privacy this model offers is **empirical**: it was measured against the attackers, data and "
    "metrics reported in the table above, and it is **not a formal bound** (no differential-privacy "
    "epsilon, no proof). An adaptive attacker who knows the method, a stronger or differently trained "
    "model, other data, or side information may recover more than these numbers suggest. Measure it "
    "against your own threat model before relying on it."
)

# datamodule class name -> (display name, Hugging Face Hub dataset id for the card's ``datasets`` field)
DATASETS: dict[str, tuple[str, str | None]] = {
    "FashionMNISTDataModule": ("Fashion-MNIST", "zalando-datasets/fashion_mnist"),
    "MNISTDataModule": ("MNIST", "ylecun/mnist"),
    "CIFAR10DataModule": ("CIFAR-10", "uoft-cs/cifar10"),
    "CelebADataModule": ("CelebA", None),
    "ImageNetSubsetDataModule": ("ImageNet (ILSVRC-2012 class subset)", "ILSVRC/imagenet-1k"),
}

#: keys accepted in ``save_pretrained(..., model_card_kwargs={...})``
CARD_CONTEXT_KEYS = {
    "name": "zoo name of the checkpoint (title and loading example), e.g. 'ppl-fashion-mnist-16bit'",
    "repo_id": "Hub repo id (models.hub fills in 'privzoo/<name>' when only the name is given)",
    "dataset": "display name of the training dataset, e.g. 'Fashion-MNIST'",
    "dataset_id": "Hub dataset id for the front matter, e.g. 'zalando-datasets/fashion_mnist'",
    "datamodule": "{'class_path': ..., 'init_args': {...}} of the datamodule the weights were trained with",
    "split": "free text describing the split (train / val / test / query / database)",
    "training_config": "the LightningCLI config YAML (text) of the training run",
    "training_config_path": "where that YAML came from (shown in the card)",
    "source": "where the weights came from, e.g. 'runs/x/last.ckpt (epoch 9, global step 4690)'",
    "notes": "free text on how the weights were trained, e.g. where the run departs from the config",
}


class StaleCardError(ValueError):
    """The card in a folder was written for other weights than its ``model.safetensors``."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (for ``model.safetensors``: the Git LFS oid the Hub shows)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _first_doc_line(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else cls.__name__


def _loading_example(cls: type, name: str | None, repo_id: str | None) -> str:
    usage = getattr(cls, "card_usage", None) or "out = model(x)"
    if name:
        lines = ["from models.zoo import load", f'model = load("{name}")  # eval mode, CPU', usage]
    else:
        target = repo_id or "path/to/this/folder"
        module, _, cls_name = _class_path(cls).rpartition(".")
        lines = [f"from {module} import {cls_name}", f'model = {cls_name}.from_pretrained("{target}")', usage]
    return "```python\n" + "\n".join(lines) + "\n```"


def _dataset_section(context: Mapping[str, Any]) -> str:
    datamodule = context.get("datamodule") or {}
    lines = []
    dataset = context.get("dataset")
    if dataset:
        lines.append(
            f"- **Dataset**: {dataset}"
            + (f" (Hub id `{context['dataset_id']}`)" if context.get("dataset_id") else "")
        )
    if datamodule.get("class_path"):
        lines.append(f"- **Datamodule**: `{datamodule['class_path']}`")
    if context.get("split"):
        lines.append(f"- **Split**: {context['split']}")
    init_args = {k: v for k, v in (datamodule.get("init_args") or {}).items() if k != "data_dir"}
    if init_args:
        lines.append("- **Datamodule arguments** (they define the split; `data_dir` omitted):")
        lines.append("")
        lines.append("| argument | value |")
        lines.append("| --- | --- |")
        lines += [f"| `{k}` | `{json.dumps(v)}` |" for k, v in sorted(init_args.items())]
    return "\n".join(lines) if lines else "Not recorded (the weights were saved without a training context)."


def _metrics_block(metrics: list[dict[str, Any]], weights_sha256: str | None) -> str:
    if not metrics:
        body = (
            "No metrics measured yet. They are written here by the evaluation script (through "
            "`models.cards.update_card_metrics`), never by hand."
        )
    else:
        rows = [
            "| metric | value | dataset | split | source | measured (UTC) |",
            "| --- | ---: | --- | --- | --- | --- |",
        ]
        for m in metrics:
            value = m["value"]
            shown = f"{value:.4f}" if math.isfinite(value) else str(value)
            rows.append(
                f"| `{m['name']}` | {shown} | {m.get('dataset') or ''} | {m.get('split') or ''} | "
                f"`{m['source']}` | {m['date']} |"
            )
        body = "\n".join(rows)
        if weights_sha256:
            body += f"\n\nMeasured on `model.safetensors` with sha256 `{weights_sha256}`."
    return f"{METRICS_START}\n{body}\n{METRICS_END}"


def _eval_results(
    model_name: str, task: str, dataset_id: str | None, metrics: list[dict[str, Any]]
) -> list[EvalResult]:
    return [
        EvalResult(
            task_type=task,
            dataset_type=m.get("dataset_id") or dataset_id or (m.get("dataset") or "unknown"),
            dataset_name=m.get("dataset") or "unknown",
            dataset_split=m.get("split"),
            metric_type=m["name"],
            metric_name=m["name"],
            metric_value=m["value"],
        )
        for m in metrics
        if math.isfinite(m["value"])
    ]


def check_context(context: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of a card context, or ``ValueError`` naming unknown keys (see :data:`CARD_CONTEXT_KEYS`)."""
    context = dict(context or {})
    unknown = sorted(set(context) - set(CARD_CONTEXT_KEYS))
    if unknown:
        raise ValueError(
            f"unknown model card key(s) {unknown}; use {sorted(CARD_CONTEXT_KEYS)} "
            "(see models.cards.CARD_CONTEXT_KEYS)"
        )
    return context


def render_card(
    cls: type, config: Mapping[str, Any], weights_sha256: str, context: Mapping[str, Any] | None = None
) -> ModelCard:
    """Builds the model card of a checkpoint folder (no metrics yet).

    Args:
        cls: the model class (reads ``card_method``, ``card_paper``, ``card_paper_url``,
            ``card_threat_model``, ``card_usage``, ``card_task``, ``card_tags`` from it).
        config: the ``config.json`` content (the model's init arguments).
        weights_sha256: sha256 of the ``model.safetensors`` written next to the card.
        context: training context, keys in :data:`CARD_CONTEXT_KEYS`.

    Returns:
        The card; ``card.save(folder / "README.md")`` writes it.

    Raises:
        ValueError: an unknown context key.
    """
    context = check_context(context)
    datamodule = context.get("datamodule") or {}
    dm_name = str(datamodule.get("class_path", "")).rpartition(".")[2]
    if dm_name in DATASETS:
        context.setdefault("dataset", DATASETS[dm_name][0])
        if DATASETS[dm_name][1]:
            context.setdefault("dataset_id", DATASETS[dm_name][1])
    name = context.get("name")
    repo_id = context.get("repo_id")
    method = getattr(cls, "card_method", None) or _first_doc_line(cls)
    paper = getattr(cls, "card_paper", None)
    # huggingface_hub class keywords (library_name, license, tags, repo_url, paper_url), set in models.hub
    mixin_info = cls._hub_mixin_info
    mixin_data = mixin_info.model_card_data
    paper_url = getattr(cls, "card_paper_url", None) or mixin_info.paper_url
    task = getattr(cls, "card_task", None) or "image-feature-extraction"
    threat = getattr(cls, "card_threat_model", None) or GENERIC_THREAT_MODEL
    tags = sorted(
        set(getattr(cls, "card_tags", ()) or ()) | set(mixin_data.tags or []) | {"privzoo", "pytorch"}
    )

    data = ModelCardData(
        library_name=mixin_data.library_name,
        license=mixin_data.license,
        tags=tags,
        pipeline_tag=task,
        datasets=[context["dataset_id"]] if context.get("dataset_id") else None,
        model_name=name or cls.__name__,
        privzoo={
            "class_path": _class_path(cls),
            "weights_sha256": weights_sha256,
            "dataset": context.get("dataset"),
            "dataset_id": context.get("dataset_id"),
            "task": task,
            "metrics": [],
        },
    )
    paper_line = paper or "see the method's module docstring"
    if paper_url:
        paper_line += f" — <{paper_url}>"
    cli_yaml = context.get("training_config")
    cli_part = (
        f"LightningCLI config (`{context.get('training_config_path') or 'config.yaml'}`), as run:\n\n"
        f"```yaml\n{cli_yaml.rstrip()}\n```"
        if cli_yaml
        else "The LightningCLI config of the training run was not recorded with these weights."
    )
    sections = [
        f"# {name or cls.__name__}",
        f"- **Method**: {method}\n- **Paper**: {paper_line}\n- **Class**: `{_class_path(cls)}` "
        f"([{mixin_data.library_name}]({mixin_info.repo_url}))"
        + (f"\n- **Hub repo**: `{repo_id}`" if repo_id else "")
        + f"\n- **Weights**: `{WEIGHTS_NAME}` (safetensors, sha256 `{weights_sha256}`)"
        + (f"\n- **Weights source**: {context['source']}" if context.get("source") else ""),
        "## Loading\n\n" + _loading_example(cls, name, repo_id),
        "## Dataset and split\n\n" + _dataset_section(context),
        "## Training config\n\nModel init arguments (`config.json`, rebuilds the model):\n\n"
        f"```json\n{json.dumps(dict(config), sort_keys=True, indent=2)}\n```\n\n{cli_part}"
        + (f"\n\n**Training notes**: {context['notes']}" if context.get("notes") else ""),
        "## Metrics\n\n" + _metrics_block([], None),
        "## Privacy under attack\n\n" + _attacks_block(None, None, None),
        "## Threat model and limits\n\n" + threat,
    ]
    text = "\n\n".join(sections) + "\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def _load_card(folder: Path) -> ModelCard:
    path = folder / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: write the folder with save_pretrained or "
            "scripts/convert_checkpoint.py first"
        )
    card = ModelCard.load(path)
    info = getattr(card.data, "privzoo", None)
    if not isinstance(info, dict) or METRICS_START not in card.text or METRICS_END not in card.text:
        raise ValueError(
            f"{path} is not a privzoo model card (no 'privzoo' front matter or metrics markers): "
            "write it with save_pretrained / scripts/convert_checkpoint.py"
        )
    return card


def read_card_metrics(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The metrics recorded in a folder's card: ``[{name, value, dataset, split, source, date}]``."""
    return list(_load_card(Path(folder)).data.privzoo.get("metrics") or [])


def update_card_metrics(
    folder: str | os.PathLike,
    metrics: Mapping[str, float],
    source: str,
    *,
    split: str = "test",
    dataset: str | None = None,
) -> ModelCard:
    """Writes measured metrics into the card of a checkpoint folder (the only way metrics get there).

    A metric with the same name, dataset and split as a recorded one replaces it; the others are kept.

    Args:
        folder: checkpoint folder with ``README.md`` (a privzoo card) and ``model.safetensors``.
        metrics: metric name -> value, e.g. ``{"test/map_cc": 0.91}`` (numbers only).
        source: the script / command that measured them, e.g. ``"scripts/demo.py"``.
        split: the data split they were measured on.
        dataset: display name of the dataset; default: the card's training dataset.

    Returns:
        The updated card (also saved to ``folder/README.md``).

    Raises:
        StaleCardError: ``model.safetensors`` is not the file the card was written for.
        ValueError: empty metrics, a non-numeric value, an empty source, not a privzoo card.
        FileNotFoundError: no card or no weights in the folder.
    """
    folder = Path(folder)
    if not source or not str(source).strip():
        raise ValueError("source must name the script that measured the metrics, e.g. 'scripts/demo.py'")
    if not metrics:
        raise ValueError("metrics is empty: pass {name: value} as measured by the evaluation script")
    clean: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            if isinstance(value, (bool, str, bytes)):
                raise TypeError
            clean[str(key)] = float(value)  # int, float, numpy / 0-dim torch scalars
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"metric {key!r} must be a number, got {type(value).__name__}: {value!r}"
            ) from err
    card = _load_card(folder)
    info = dict(card.data.privzoo)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist: the card has no weights to describe")
    sha = file_sha256(weights)
    if info.get("weights_sha256") != sha:
        raise StaleCardError(
            f"{folder / CARD_NAME} was written for model.safetensors with sha256 "
            f"{info.get('weights_sha256')}, but {weights} has sha256 {sha}: the weights changed after the "
            "card was written. Re-save the folder with save_pretrained (or scripts/convert_checkpoint.py) "
            "and measure again."
        )
    dataset = dataset or info.get("dataset")
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    new = [
        {"name": k, "value": v, "dataset": dataset, "split": split, "source": str(source), "date": date}
        for k, v in clean.items()
    ]
    keys = {(m["name"], m["dataset"], m["split"]) for m in new}
    kept = [m for m in info.get("metrics") or [] if (m["name"], m.get("dataset"), m.get("split")) not in keys]
    recorded = sorted(kept + new, key=lambda m: (str(m.get("split")), m["name"]))
    info["metrics"] = recorded
    card.data.privzoo = info
    card.data.metrics = sorted({m["name"] for m in recorded})
    card.data.model_name = card.data.model_name or folder.name
    card.data.eval_results = (
        _eval_results(
            card.data.model_name,
            info.get("task") or "image-feature-extraction",
            info.get("dataset_id"),
            recorded,
        )
        or None
    )
    pattern = re.compile(re.escape(METRICS_START) + ".*?" + re.escape(METRICS_END), flags=re.S)
    card.text = pattern.sub(lambda _: _metrics_block(recorded, sha), card.text, count=1)
    atomic_write_text(folder / CARD_NAME, str(card), newline="")  # (ModelCard.save, atomically)
    return card


def _attacks_block(report: Mapping[str, Any] | None, source: str | None, weights_sha256: str | None) -> str:
    if not report:
        body = (
            "Not attacked yet. `scripts/attack.py NAME` runs every attack of the model's declared threat "
            "model and writes the worst case here from `attacks.json`, never by hand."
        )
    else:
        rows = [
            f"Measured by `{source}` on the {report['dataset']} {report['split']} split (`attacks.json` "
            "beside the weights, every result in `attacks.md`). Each row is the **worst case** over the "
            "attacks tried on that (metric, setting) family -- the least private value; attackers train on "
            "training-split data, disjoint from the evaluated images. Empirical: stronger attacks may do "
            "better.",
            "",
            "| metric | setting | worst case | private if | attack | attacker |",
            "| --- | --- | ---: | --- | --- | --- |",
        ]

        def natural(r):  # metric, then numeric settings in numeric order (sp=8 before sp=16)
            items = [
                (k, (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))
                for k, v in r["setting"].items()
            ]
            return r["metric"], [i for i in items if i[0] != "attacker"]

        for r in sorted(report["worst_case"], key=natural):
            setting = ", ".join(f"{k}={v}" for k, v in r["setting"].items() if k != "attacker")
            attacker = ", ".join(f"{k}={v}" for k, v in (r["setting"].get("attacker") or {}).items())
            rows.append(
                f"| `{r['metric']}` | {setting} | {r['value']:.4f} | {r['private_if']} | `{r['attack']}` | "
                f"{attacker} |"
            )
        body = "\n".join(rows)
        if weights_sha256:
            body += f"\n\nAttacked `model.safetensors` with sha256 `{weights_sha256}`."
    return f"{ATTACKS_START}\n{body}\n{ATTACKS_END}"


def update_card_attacks(folder: str | os.PathLike, report: Mapping[str, Any], source: str) -> ModelCard:
    """Renders the "Privacy under attack" section of a card from an ``attacks.json`` report.

    Replaces the section between :data:`ATTACKS_START` / :data:`ATTACKS_END`; a card written before the
    section existed gets it inserted before "## Threat model and limits".

    Raises:
        StaleCardError: ``model.safetensors`` is not the file the card was written for.
    """
    folder = Path(folder)
    card, sha = _fresh_card(folder, "attack again")
    block = _attacks_block(report, source, sha)
    _put_section(card, ATTACKS_START, ATTACKS_END, block, "Privacy under attack")
    card.save(folder / CARD_NAME)
    return card


def _fresh_card(folder: Path, then: str) -> tuple[ModelCard, str]:
    """The card of ``folder`` and the sha256 of its weights; ``StaleCardError`` when the card was written
    for other weights (``then`` says what to do after re-saving)."""
    card = _load_card(folder)
    sha = file_sha256(folder / WEIGHTS_NAME)
    recorded = card.data.privzoo.get("weights_sha256")
    if recorded != sha:
        raise StaleCardError(
            f"{folder / CARD_NAME} was written for other weights than its model.safetensors (recorded "
            f"sha256 {recorded}, the file's {sha}): re-save the folder and {then}"
        )
    return card, sha


def _put_section(card: ModelCard, start: str, end: str, block: str, title: str) -> None:
    """Replaces the text between the ``start`` / ``end`` markers by ``block``; a card without them gets
    ``## title`` + ``block`` inserted before "## Threat model and limits" (or appended)."""
    if start in card.text and end in card.text:
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), flags=re.S)
        card.text = pattern.sub(lambda _: block, card.text, count=1)
        return
    section = f"## {title}\n\n{block}\n\n"
    anchor = "## Threat model and limits"
    card.text = (
        card.text.replace(anchor, section + anchor, 1) if anchor in card.text else card.text + "\n" + section
    )


def update_card_threat_model(folder: str | os.PathLike, text: str) -> ModelCard:
    """Replaces the "Threat model and limits" section (the card's last) by ``text``, e.g. the class's
    current ``card_threat_model`` after the attacks it cites were run."""
    folder = Path(folder)
    card = _load_card(folder)
    anchor = "## Threat model and limits\n\n"
    if anchor not in card.text:
        raise ValueError(f"{folder / CARD_NAME} has no threat-model section: re-save it with save_pretrained")
    card.text = card.text[: card.text.index(anchor) + len(anchor)] + text.strip() + "\n"
    card.save(folder / CARD_NAME)
    return card


def update_card_section(
    folder: str | os.PathLike, slug: str, title: str, body: str, source: str, *, of_these_weights: bool = True
) -> ModelCard:
    """Writes a measured, script-rendered section (``## title``) into a card, before "## Threat model and
    limits"; a later call with the same ``slug`` replaces it. ``body`` must come from a script run
    (``source`` names the command), with the weights' sha256 appended. ``of_these_weights=False`` marks a
    section that measures something else (another generator, the method's own training runs).

    Raises:
        StaleCardError: ``model.safetensors`` is not the file the card was written for.
    """
    if not re.fullmatch(r"[a-z0-9-]+", slug):
        raise ValueError(f"section slug must be lowercase letters, digits and '-', got {slug!r}")
    folder = Path(folder)
    card, sha = _fresh_card(folder, "measure again")
    start, end = f"<!-- privzoo:{slug}:start -->", f"<!-- privzoo:{slug}:end -->"
    header = f"Measured by `{source}` on `model.safetensors` with sha256 `{sha}`."
    if not of_these_weights:
        header = (
            f"Written by `{source}` into the card of `model.safetensors` with sha256 `{sha}`; it does not "
            "measure those weights."
        )
    _put_section(card, start, end, f"{start}\n{header}\n\n{body.strip()}\n{end}", title)
    card.save(folder / CARD_NAME)
    return card
