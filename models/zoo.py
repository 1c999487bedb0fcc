"""The privzoo model zoo: a declarative table of pretrained checkpoints and one-line loading.

    >>> import models.zoo
    >>> models.zoo.available()                      # names of the shipped checkpoints
    >>> model = models.zoo.load("ppl-fashion-mnist-16bit")   # eval mode, CPU

Each entry maps a name to its class, its Hub repo ``privzoo/<name>`` and its folder
``checkpoints/<name>/`` in this repository (Hub layout: ``config.json``, ``model.safetensors``,
``README.md``). :func:`load` uses the folder first, so loading works offline; the Hub repo is the fallback
when the folder is not there (e.g. an installed package without the checkpoints).

Shipping a checkpoint = convert it into ``checkpoints/<name>/`` and add one :class:`ZooEntry` to
``_ENTRIES`` below::

    python scripts/convert_checkpoint.py runs/ppl/last.ckpt checkpoints/ppl-fashion-mnist-16bit \\
        --config runs/ppl/config.yaml

    ZooEntry(
        name="ppl-fashion-mnist-16bit",
        class_path="models.ppl.PPL",
        dataset="Fashion-MNIST",
        evaluate="models.ppl.evaluate.zoo_metrics",   # fn(model, data_dir: str) -> dict[str, float]
        utility="map_cc",                               # keys of what evaluate returns
        privacy="map_ac",
        paper={"map_cc": 0.0, "map_ac": 0.0},           # the paper's numbers (with paper_ref)
        paper_ref="PPL paper, Table N, Fashion-MNIST, 16 bits",
    ),
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from models.hub import HubLoadError, PrivzooHubMixin, check_folder

__all__ = [
    "CHECKPOINTS_DIR",
    "HUB_ORG",
    "REGISTRY",
    "UnknownCheckpointError",
    "ZooEntry",
    "available",
    "evaluate",
    "get_entry",
    "load",
    "resolve_callable",
    "resolve_class",
    "zoo_entries",
]

#: ``checkpoints/`` at the root of the checkout (the folders shipped with the repository); the environment
#: variable ``PRIVZOO_CHECKPOINTS`` points it elsewhere
CHECKPOINTS_DIR = Path(
    os.environ.get("PRIVZOO_CHECKPOINTS") or Path(__file__).resolve().parents[1] / "checkpoints"
)
HUB_ORG = "privzoo"


class UnknownCheckpointError(KeyError):
    """A checkpoint name that is not in the zoo (the message lists the available ones)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ZooEntry:
    """One pretrained checkpoint of the zoo.

    Args:
        name: checkpoint name, ``<method>-<dataset>[-<variant>]``; also the folder and Hub repo name.
        class_path: dotted path of its :class:`models.hub.PrivzooHubMixin` class, e.g. ``"models.ppl.PPL"``.
        dataset: display name of the dataset it was trained and is evaluated on.
        evaluate: dotted path of ``fn(model, data_dir: str, **evaluate_kwargs) -> dict[str, float]``, the
            evaluation the demo runs (and whose numbers go into the card); ``None`` = not evaluated.
        utility: key of the utility metric in ``evaluate``'s result (higher = better unless stated).
        privacy: key of the privacy metric in ``evaluate``'s result.
        paper: the paper's values of those metrics, for the demo table (metric key -> value).
        paper_ref: where ``paper`` comes from (paper, table, setting).
        evaluate_kwargs: extra keyword arguments of ``evaluate``.
        description: one line for listings.
        repo_id: Hub repo (default ``privzoo/<name>``).
    """

    name: str
    class_path: str
    dataset: str
    evaluate: str | None = None
    utility: str | None = None
    privacy: str | None = None
    paper: Mapping[str, float | None] = field(default_factory=dict)
    paper_ref: str = ""
    evaluate_kwargs: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    repo_id: str = ""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name != self.name.strip():
            raise ValueError(
                f"zoo entry name {self.name!r} must be a plain folder name, e.g. 'ppl-fashion-mnist'"
            )
        if not self.repo_id:
            object.__setattr__(self, "repo_id", f"{HUB_ORG}/{self.name}")
        for key in (self.utility, self.privacy):
            if key is not None and self.paper and key not in self.paper:
                raise ValueError(f"zoo entry {self.name!r}: paper has no value for metric {key!r}")
        object.__setattr__(self, "paper", MappingProxyType(dict(self.paper)))
        object.__setattr__(self, "evaluate_kwargs", MappingProxyType(dict(self.evaluate_kwargs)))

    @property
    def folder(self) -> Path:
        """``checkpoints/<name>/`` (looked up in :data:`CHECKPOINTS_DIR` at call time)."""
        return CHECKPOINTS_DIR / self.name

    def model_class(self) -> type[PrivzooHubMixin]:
        """The class, imported from :attr:`class_path`."""
        return resolve_class(self.class_path)

    def evaluate_fn(self) -> Callable[..., dict[str, float]]:
        """``evaluate`` imported, with ``evaluate_kwargs`` bound: ``fn(model, data_dir) -> dict``."""
        if self.evaluate is None:
            raise ValueError(f"zoo entry {self.name!r} has no evaluate function")
        fn = resolve_callable(self.evaluate)
        kwargs = dict(self.evaluate_kwargs)

        def evaluate(model: torch.nn.Module, data_dir: str) -> dict[str, float]:
            return fn(model, data_dir, **kwargs)

        evaluate.__name__ = self.evaluate.rpartition(".")[2]
        evaluate.__doc__ = fn.__doc__
        return evaluate


# ----------------------------------------------------------------------------------------------------
# the table: one ZooEntry per shipped checkpoint (see the module docstring for an example)
# ----------------------------------------------------------------------------------------------------
_ENTRIES: tuple[ZooEntry, ...] = (
    ZooEntry(
        name="ppl-fashion-mnist-16bit",
        class_path="models.ppl.PPL",
        dataset="Fashion-MNIST",
        evaluate="models.ppl.protocol.ppl_metrics",
        evaluate_kwargs={"victims": ("adsh-fashion-mnist-16bit",)},
        utility="ssim",
        privacy="adsh_map_ca",
        paper={"ssim": None, "adsh_map_ca": 0.3853},
        paper_ref="PPL Table 1, Fashion-MNIST, 16 bits, clean-trained ADSH, C->A",
        description="PPL generator + surrogate (l_inf epsilon 0.3), 16-bit codes",
    ),
    ZooEntry(
        name="adsh-fashion-mnist-16bit",
        class_path="models.hashing.ADSH",
        dataset="Fashion-MNIST",
        evaluate="models.ppl.protocol.victim_metrics",
        utility="map_cc",
        privacy=None,
        paper={"map_cc": 0.9007},
        paper_ref="PPL Table 1, Fashion-MNIST, 16 bits, clean-trained ADSH, C->C",
        description="ADSH victim retrieval model trained on clean images (PPL's evaluation)",
    ),
    ZooEntry(
        name="sca-fashion-mnist-sx16",
        class_path="models.sca.SCA",
        dataset="Fashion-MNIST",
        evaluate="models.sca.evaluation.zoo_metrics",
        utility="ssim_sx16",
        privacy="server_nmse_sp32",
        paper={"ssim_sx16": 0.8242, "nmse_sx16": 0.2236, "server_nmse_sp32": 0.4026},
        paper_ref=(
            "SCA Table I, Fashion-MNIST: authorized SSIM at Sx=16, Sp=0; curious-server NMSE at Sx=16, "
            "Sp=32 (strongest of the paper's as_is / top_sx attacks; higher = more private)"
        ),
        description="SCA conv autoencoder + sparse codes with ambiguation, L=128, one model for Sx<=16",
    ),
    ZooEntry(
        name="dpfe-fashion-mnist",
        class_path="models.dpfe.DPFE",
        dataset="Fashion-MNIST",
        evaluate="models.dpfe.evaluate.zoo_metrics",
        utility="z_acc",
        privacy="lrp",
        paper={"z_acc": None, "lrp": None},
        paper_ref="DPFE (Osia et al.): no Fashion-MNIST numbers in the paper (CelebA curves only)",
        description="DPFE private-feature extractor (d = 10, attribute set FU, y = class), r = 0",
    ),
    ZooEntry(
        name="dpfe-fashion-mnist-simple",
        class_path="models.dpfe.DPFE",
        dataset="Fashion-MNIST",
        evaluate="models.dpfe.evaluate.zoo_metrics",
        utility="z_acc",
        privacy="lrp",
        paper={"z_acc": None, "lrp": None},
        paper_ref="DPFE (Osia et al.): no Fashion-MNIST numbers in the paper (CelebA curves only)",
        description="DPFE's Simple baseline (AE bottleneck, no y-remover; d = 10, attribute set FU), r = 0",
    ),
)

REGISTRY: dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}
if len(REGISTRY) != len(_ENTRIES):
    raise ValueError("duplicate names in models.zoo._ENTRIES")


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
        listing = ", ".join(names) if names else "none yet: the zoo table models.zoo._ENTRIES is empty"
        raise UnknownCheckpointError(f"unknown checkpoint {name!r}; available: {listing}") from None


def resolve_callable(path: str) -> Any:
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
    cls = resolve_callable(class_path)
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
    cls = entry.model_class()
    folder = entry.folder
    if source == "local" or (source == "auto" and folder.exists()):
        check_folder(folder)  # a clear error if the shipped folder is incomplete; never a silent Hub fallback
        return cls.from_pretrained(folder, map_location=map_location, **kwargs)
    try:
        return cls.from_pretrained(
            entry.repo_id, map_location=map_location, revision=revision, cache_dir=cache_dir, **kwargs
        )
    except HubLoadError as err:
        if source == "hub":
            raise
        raise type(err)(f"checkpoint {name!r}: {folder} does not exist, and from the Hub: {err}") from err


def evaluate(
    name: str,
    data_dir: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    write_card: str | None = None,
    split: str = "test",
) -> dict[str, float]:
    """Loads a zoo checkpoint and runs its ``evaluate`` entry; optionally records the numbers in its card.

    Args:
        name: a name from :func:`available`.
        data_dir: the dataset root passed to the evaluate function.
        map_location: device of the model.
        write_card: ``None`` = leave the card alone; else the source to record (e.g. ``"scripts/demo.py"``):
            the metrics go into ``checkpoints/<name>/README.md`` via :func:`models.cards.update_card_metrics`.
        split: the split the evaluate function measures, for the card.

    Returns:
        ``{metric name: value}`` as returned by the entry's evaluate function.

    Raises:
        UnknownCheckpointError, models.hub.HubLoadError, ValueError (no evaluate entry, non-numeric values).
    """
    entry = get_entry(name)
    fn = entry.evaluate_fn()
    model = load(name, map_location=map_location)
    metrics = fn(model, str(data_dir))  # no inference_mode here: an attack may need gradients
    if not isinstance(metrics, Mapping):
        raise ValueError(f"{entry.evaluate} returned {type(metrics).__name__}, expected dict[str, float]")
    missing = [k for k in (entry.utility, entry.privacy) if k is not None and k not in metrics]
    if missing:
        raise ValueError(f"{entry.evaluate} returned {sorted(metrics)}, not the entry's metric(s) {missing}")
    if write_card is not None:
        from models.cards import update_card_metrics

        update_card_metrics(entry.folder, metrics, source=write_card, split=split, dataset=entry.dataset)
    return {k: float(v) for k, v in metrics.items()}
