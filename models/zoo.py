"""The privzoo model zoo: the registry of pretrained checkpoints and one-line loading.

    >>> import models.zoo
    >>> models.zoo.available()                      # names of the shipped checkpoints
    >>> model = models.zoo.load("ppl-fashion-mnist-16bit")   # eval mode, CPU

Each method declares its checkpoints next to its code (``models/<method>/pretrained.py``, a tuple ``ZOO``
of :class:`models.pretrained.ZooEntry`); this module only collects them (it imports the methods, never the
reverse). Each entry maps a name to its class, its Hub repo ``privzoo/<name>`` and its folder
``checkpoints/<name>/`` in this repository (Hub layout: ``config.json``, ``model.safetensors``,
``README.md``). :func:`load` uses the folder first, so loading works offline; the Hub repo is the fallback
when the folder is not there (e.g. an installed package without the checkpoints).

Shipping a checkpoint = convert it into ``checkpoints/<name>/`` and add its ``ZooEntry`` to the method's
``pretrained.py``::

    python scripts/convert_checkpoint.py runs/ppl/last.ckpt checkpoints/ppl-fashion-mnist-16bit \\
        --config runs/ppl/config.yaml
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import models
from models.cards import update_card_metrics
from models.hub import HUB_ORG, HubLoadError, PrivzooHubMixin, check_folder
from models.pretrained import ZooEntry

__all__ = [
    "CHECKPOINTS_DIR",
    "HUB_ORG",
    "REGISTRY",
    "UnknownCheckpointError",
    "ZooEntry",
    "available",
    "evaluate",
    "folder",
    "get_entry",
    "load",
    "resolve_class",
    "zoo_entries",
]

#: ``checkpoints/`` at the root of the checkout (the folders shipped with the repository); the environment
#: variable ``PRIVZOO_CHECKPOINTS`` points it elsewhere
CHECKPOINTS_DIR = Path(
    os.environ.get("PRIVZOO_CHECKPOINTS") or Path(__file__).resolve().parents[1] / "checkpoints"
)


class UnknownCheckpointError(KeyError):
    """A checkpoint name that is not in the zoo (the message lists the available ones)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


# ----------------------------------------------------------------------------------------------------
# the table: each method declares its entries in models/<method>/pretrained.py; the registry collects them
# ----------------------------------------------------------------------------------------------------
def _method_entries() -> tuple[ZooEntry, ...]:
    """The ``ZOO`` tuples of every method package ``models/<method>/pretrained.py``, in package order.

    A new method is found here without editing this file: its folder and its ``pretrained.py`` suffice.
    """
    entries: list[ZooEntry] = []
    for info in sorted(pkgutil.iter_modules(models.__path__), key=lambda i: i.name):
        if info.ispkg and importlib.util.find_spec(f"models.{info.name}.pretrained") is not None:
            entries += importlib.import_module(f"models.{info.name}.pretrained").ZOO
    return tuple(entries)


_ENTRIES: tuple[ZooEntry, ...] = _method_entries()

REGISTRY: dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}
if len(REGISTRY) != len(_ENTRIES):
    raise ValueError("duplicate names among the methods' zoo entries (models/<method>/pretrained.py)")


def folder(name: str) -> Path:
    """``checkpoints/<name>/`` (looked up in :data:`CHECKPOINTS_DIR` at call time)."""
    return CHECKPOINTS_DIR / name


def available() -> list[str]:
    """Sorted names of the checkpoints in the zoo."""
    return sorted(REGISTRY)


def zoo_entries() -> list[ZooEntry]:
    """All entries, sorted by name (for the demo table and publishing)."""
    return [REGISTRY[name] for name in available()]


def get_entry(name: str) -> ZooEntry:
    """The entry of a checkpoint name.

    Raises:
        UnknownCheckpointError: the name is not in the zoo; the message lists the available names.
    """
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        names = available()
        listing = ", ".join(names) if names else "none yet: no method declares a checkpoint"
        raise UnknownCheckpointError(f"unknown checkpoint {name!r}; available: {listing}") from None


def _import(path: str) -> Any:
    """Imports ``"package.module.attribute"`` (or ``"package.module:attribute"``).

    Raises:
        ImportError: the module or the attribute does not exist.
    """
    module_name, sep, attr = path.replace(":", ".").rpartition(".")
    if not sep or not module_name:
        raise ImportError(f"{path!r} is not a dotted path 'package.module.name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"cannot import module {module_name!r} of {path!r}: {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ImportError(f"module {module_name!r} has no {attr!r} (from {path!r})") from err


def resolve_class(class_path: str) -> type[PrivzooHubMixin]:
    """The model class at a dotted path; it must save / load in Hub layout.

    Raises:
        ImportError: not importable.
        TypeError: not a :class:`models.hub.PrivzooHubMixin` subclass.
    """
    cls = _import(class_path)
    if not (isinstance(cls, type) and issubclass(cls, PrivzooHubMixin)):
        raise TypeError(
            f"{class_path} is not a PrivzooHubMixin model class: add models.hub.PrivzooHubMixin as its "
            "first base"
        )
    return cls


def load(
    name: str,
    *,
    map_location: str | torch.device = "cpu",
    source: str = "auto",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> PrivzooHubMixin:
    """Loads a zoo checkpoint by name (strictly, in eval mode).

    Args:
        name: a name from :func:`available`.
        map_location: device of the returned model.
        source: ``"auto"`` = the folder ``checkpoints/<name>/`` when it exists, else the Hub repo;
            ``"local"`` = the folder only; ``"hub"`` = the Hub repo only (cached copies are used offline).
        revision: Hub revision (``source`` ``"hub"`` / ``"auto"`` without a local folder).
        cache_dir: Hugging Face cache folder.
        kwargs: passed to ``from_pretrained`` (e.g. ``force_download``, ``token``).

    Returns:
        The model.

    Raises:
        UnknownCheckpointError: unknown name (lists the available ones).
        models.hub.HubLoadError: missing / corrupt / mismatching files (no model is returned).
        ValueError: unknown ``source``.
    """
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"source must be 'auto', 'local' or 'hub', got {source!r}")
    entry = get_entry(name)
    cls = entry.model_class
    local = folder(name)
    if source == "local" or (source == "auto" and local.exists()):
        check_folder(local)  # a clear error if the shipped folder is incomplete; never a silent Hub fallback
        return cls.from_pretrained(local, map_location=map_location, **kwargs)
    try:
        return cls.from_pretrained(
            entry.repo_id, map_location=map_location, revision=revision, cache_dir=cache_dir, **kwargs
        )
    except HubLoadError as err:
        if source == "hub":
            raise
        raise type(err)(f"checkpoint {name!r}: {local} does not exist, and from the Hub: {err}") from err


def evaluate(
    name: str,
    data_dir: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    write_card: str | None = None,
    split: str = "test",
) -> dict[str, float]:
    """Loads a zoo checkpoint and runs its ``evaluate`` entry; optionally records the numbers in its card.

    The registry builds what the evaluation receives: the model, the entry's datamodule on ``data_dir``
    (not set up; ``download=False``) and, when the entry names victims, ``victims={name: model}``.

    Args:
        name: a name from :func:`available`.
        data_dir: the dataset root of the entry's datamodule.
        map_location: device of the model (and of the victims).
        write_card: ``None`` = leave the card alone; else the source to record (e.g. ``"scripts/demo.py"``):
            the metrics go into ``checkpoints/<name>/README.md`` via :func:`models.cards.update_card_metrics`.
        split: the split the evaluate function measures, for the card.

    Returns:
        ``{metric name: value}`` as returned by the entry's evaluate function.

    Raises:
        UnknownCheckpointError, models.hub.HubLoadError, ValueError (no evaluate entry, non-numeric values).
    """
    entry = get_entry(name)
    if entry.evaluate is None:
        raise ValueError(f"zoo entry {name!r} has no evaluate function")
    model = load(name, map_location=map_location)
    datamodule = entry.datamodule(data_dir=str(data_dir), download=False)
    kwargs = dict(entry.evaluate_kwargs)
    if entry.victims:
        kwargs["victims"] = {v: load(v, map_location=map_location) for v in entry.victims}
    metrics = entry.evaluate(
        model, datamodule, **kwargs
    )  # no inference_mode here: an attack may need gradients
    if not isinstance(metrics, Mapping):
        raise ValueError(f"{name}'s evaluate returned {type(metrics).__name__}, expected dict[str, float]")
    missing = [k for k in (entry.utility, entry.privacy) if k is not None and k not in metrics]
    if missing:
        raise ValueError(f"{name}'s evaluate returned {sorted(metrics)}, not the entry's metric(s) {missing}")
    if write_card is not None:
        update_card_metrics(folder(name), metrics, source=write_card, split=split, dataset=entry.dataset)
    return {k: float(v) for k, v in metrics.items()}
