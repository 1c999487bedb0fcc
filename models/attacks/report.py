"""Attack results, their worst case and the ``attacks.json`` / ``attacks.md`` files.

Schema of ``attacks.json``::

    {"model", "dataset", "split",
     "results": [{"attack", "threat", "metric", "value", "private_if": "higher" | "lower", "setting"}],
     "worst_case": [one entry of results per (metric, setting) family]}

``setting`` holds the release setting that defines the family (e.g. ``{"sx": 16, "sp": 32}``,
``{"scenario": "C->A", "bits": 16}``) and, under ``setting["attacker"]``, the attacker's own choices
(architecture, training sizes, purification, ...), which are NOT part of the family: the worst case of a
family is the least private value over every attacker that was tried on it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "METRICS",
    "build_report",
    "family_key",
    "markdown_table",
    "result",
    "validate_report",
    "worst_case",
    "write_report",
]

#: metric -> the direction that is more private
METRICS = {
    "nmse": "higher",
    "ssim": "lower",
    "class_accuracy": "lower",
    "lrp": "higher",
    "map": "lower",
    "map_ratio": "lower",
    "auc": "lower",
}
_KEYS = ("attack", "threat", "metric", "value", "private_if", "setting")


def result(attack: str, threat: str, metric: str, value: float, setting: Mapping[str, Any]) -> dict[str, Any]:
    """One result row; ``private_if`` follows from the metric (:data:`METRICS`)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {sorted(METRICS)}")
    value = float(value)
    return {
        "attack": attack,
        "threat": threat,
        "metric": metric,
        "value": round(value, 4) if math.isfinite(value) else value,
        "private_if": METRICS[metric],
        "setting": dict(setting),
    }


def family_key(row: Mapping[str, Any]) -> str:
    """``(metric, setting without "attacker")`` as a sortable string."""
    setting = {k: v for k, v in row["setting"].items() if k != "attacker"}
    return json.dumps([row["metric"], setting], sort_keys=True)


def worst_case(results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The least private result per (metric, setting) family (lowest value when higher is private)."""
    best: dict[str, Mapping[str, Any]] = {}
    for row in results:
        key = family_key(row)
        sign = 1 if row["private_if"] == "higher" else -1
        if key not in best or sign * row["value"] < sign * best[key]["value"]:
            best[key] = row
    return [dict(best[k]) for k in sorted(best)]


def build_report(model: str, dataset: str, split: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``attacks.json`` content (validated)."""
    report = {
        "model": model,
        "dataset": dataset,
        "split": split,
        "results": list(results),
        "worst_case": worst_case(results),
    }
    validate_report(report)
    return report


def validate_report(report: Mapping[str, Any]) -> None:
    """Checks the ``attacks.json`` schema; ``ValueError`` says what is wrong."""
    if set(report) != {"model", "dataset", "split", "results", "worst_case"}:
        raise ValueError(
            f"attacks.json keys must be model, dataset, split, results, worst_case; got {sorted(report)}"
        )
    if not report["results"]:
        raise ValueError("attacks.json has no results")
    for where in ("results", "worst_case"):
        for row in report[where]:
            if tuple(sorted(row)) != tuple(sorted(_KEYS)):
                raise ValueError(f"{where} row keys must be {list(_KEYS)}, got {sorted(row)}")
            if row["metric"] not in METRICS or row["private_if"] != METRICS[row["metric"]]:
                raise ValueError(f"bad metric / private_if in {row}")
            if not isinstance(row["setting"], dict) or not isinstance(row["value"], (int, float)):
                raise ValueError(f"bad setting / value in {row}")
    families = [family_key(r) for r in report["worst_case"]]
    if len(set(families)) != len(families) or set(families) != {family_key(r) for r in report["results"]}:
        raise ValueError("worst_case must hold exactly one entry per (metric, setting) family of results")
    if report["worst_case"] != worst_case(report["results"]):
        raise ValueError("worst_case is not the least private result of each family")


def _setting_text(setting: Mapping[str, Any], attacker: bool = False) -> str:
    parts = [f"{k}={v}" for k, v in setting.items() if k != "attacker"]
    if attacker and setting.get("attacker"):
        parts += [f"{k}={v}" for k, v in setting["attacker"].items()]
    return ", ".join(parts)


def markdown_table(report: Mapping[str, Any]) -> str:
    """Worst case first (one row per family, the attack that achieved it), then every result."""
    lines = [
        "| family | worst-case value | private if | attack | attacker |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for r in report["worst_case"]:
        family = f"`{r['metric']}` {_setting_text(r['setting'])}".strip()
        lines.append(
            f"| {family} | {r['value']:.4f} | {r['private_if']} | `{r['attack']}` | "
            f"{_setting_text(r['setting'].get('attacker') or {})} |"
        )
    lines += ["", "All results:", "", "| attack | metric | setting | value |", "| --- | --- | --- | ---: |"]
    for r in report["results"]:
        lines.append(
            f"| `{r['attack']}` | `{r['metric']}` | {_setting_text(r['setting'], True)} | {r['value']:.4f} |"
        )
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_report(report: Mapping[str, Any], folder: str | os.PathLike) -> tuple[Path, Path]:
    """Writes ``attacks.json`` and ``attacks.md`` into ``folder`` atomically (temp file + ``os.replace``)."""
    validate_report(report)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    js, md = folder / "attacks.json", folder / "attacks.md"
    _atomic_write(js, json.dumps(report, indent=2) + "\n")
    head = f"# Privacy under attack: {report['model']} ({report['dataset']}, {report['split']} split)\n\n"
    _atomic_write(md, head + markdown_table(report) + "\n")
    return js, md
