"""What a method declares about each of its pretrained checkpoints (timm's pretrained configs).

Each method folder lists its checkpoints next to its code, in ``models/<method>/pretrained.py``::

    ZOO = (
        ZooEntry(
            name="ppl-fashion-mnist-16bit",
            model_class=PPL,
            dataset="Fashion-MNIST",
            datamodule=partial(FashionMNISTDataModule, split="retrieval", eval_batch_size=1000),
            evaluate=zoo_metrics,            # fn(model, datamodule, **evaluate_kwargs) -> dict[str, float]
            utility="ssim",
            privacy="adsh_map_ca",
            paper={"adsh_map_ca": PAPER_TABLE1[("adsh", "C")]["C->A"]},   # the paper's numbers, defined once
        ),
    )

and the registry :mod:`models.zoo` collects those tuples: the registry imports the methods, never the
reverse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from models.hub import PrivzooHubMixin, hub_repo_id

__all__ = ["ZooEntry"]


@dataclass(frozen=True)
class ZooEntry:
    """One pretrained checkpoint of the zoo.

    Args:
        name: checkpoint name, ``<method>-<dataset>[-<variant>]``; also the folder and Hub repo name.
        model_class: its :class:`models.hub.PrivzooHubMixin` class.
        dataset: display name of the dataset it was trained and is evaluated on.
        datamodule: ``factory(data_dir=..., download=False) -> datamodule`` of the evaluation data.
        evaluate: ``fn(model, datamodule, **evaluate_kwargs) -> dict[str, float]``, the evaluation the demo
            runs (and whose numbers go into the card); ``None`` = not evaluated. The datamodule is built by
            the registry and not set up yet.
        utility: key of the utility metric in ``evaluate``'s result (higher = better unless stated).
        privacy: key of the privacy metric in ``evaluate``'s result.
        paper: the paper's values of those metrics, for the demo table (metric key -> value).
        paper_ref: where ``paper`` comes from (paper, table, setting).
        evaluate_kwargs: extra keyword arguments of ``evaluate``.
        victims: names of other zoo checkpoints the evaluation attacks with; the registry loads them and
            passes ``victims={name: model}`` to ``evaluate``.
        description: one line for listings.
        repo_id: Hub repo (default ``privzoo/<name>``).
    """

    name: str
    model_class: type[PrivzooHubMixin]
    dataset: str
    datamodule: Callable[..., Any] | None = None
    evaluate: Callable[..., Mapping[str, float]] | None = None
    utility: str | None = None
    privacy: str | None = None
    paper: Mapping[str, float | None] = field(default_factory=dict)
    paper_ref: str = ""
    evaluate_kwargs: Mapping[str, Any] = field(default_factory=dict)
    victims: tuple[str, ...] = ()
    description: str = ""
    repo_id: str = ""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name != self.name.strip():
            raise ValueError(
                f"zoo entry name {self.name!r} must be a plain folder name, e.g. 'ppl-fashion-mnist'"
            )
        if not (isinstance(self.model_class, type) and issubclass(self.model_class, PrivzooHubMixin)):
            raise TypeError(
                f"zoo entry {self.name!r}: {self.model_class!r} is not a PrivzooHubMixin model class: add "
                "models.hub.PrivzooHubMixin as its first base"
            )
        if self.evaluate is not None and self.datamodule is None:
            raise ValueError(f"zoo entry {self.name!r}: an evaluate function needs a datamodule factory")
        if not self.repo_id:
            object.__setattr__(self, "repo_id", hub_repo_id(self.name))
        for key in (self.utility, self.privacy):
            if key is not None and self.paper and key not in self.paper:
                raise ValueError(f"zoo entry {self.name!r}: paper has no value for metric {key!r}")
        object.__setattr__(self, "paper", MappingProxyType(dict(self.paper)))
        object.__setattr__(self, "evaluate_kwargs", MappingProxyType(dict(self.evaluate_kwargs)))
        object.__setattr__(self, "victims", tuple(self.victims))
