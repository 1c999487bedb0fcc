"""Where DPFE's primary variable z and sensitive variable y come from, per dataset.

Fashion-MNIST (y = the 10 classes, sensitive): z = coarse binary attributes of the class, by this table
(class ids are the official ones)::

    attribute    classes that have it (1), all others 0
    footwear     5 Sandal, 7 Sneaker, 9 Ankle boot
    upper_body   0 T-shirt/top, 2 Pullover, 4 Coat, 6 Shirt
    warm         2 Pullover, 4 Coat, 9 Ankle boot

Attribute sets (the analogue of the paper's G / GA / GAS ... sets), chosen by name:
``F`` = {footwear}, ``FU`` = {footwear, upper_body}, ``FUW`` = {footwear, upper_body, warm}.

CelebA (y = identity): z = the datamodule's ``label`` (the multi-hot of its ``attributes=[...]``); the sets
of the paper (section 6.1) are ``G`` = {Male}, ``GA`` = + Young, ``GAS`` = + Smiling, ``GASL`` = + Big_Lips,
``GASLN`` = + Big_Nose. The module checks that the datamodule's attributes are the set's.
"""

from __future__ import annotations

import torch

__all__ = [
    "ATTRIBUTE_SETS",
    "CELEBA_ATTRIBUTE_SETS",
    "FASHION_MNIST_ATTRIBUTES",
    "FASHION_MNIST_ATTRIBUTE_SETS",
    "FASHION_MNIST_CLASSES",
    "attribute_names",
    "fashion_mnist_attribute_table",
]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

#: attribute name -> class ids that have it
FASHION_MNIST_ATTRIBUTES: dict[str, tuple[int, ...]] = {
    "footwear": (5, 7, 9),
    "upper_body": (0, 2, 4, 6),
    "warm": (2, 4, 9),
}

FASHION_MNIST_ATTRIBUTE_SETS: dict[str, tuple[str, ...]] = {
    "F": ("footwear",),
    "FU": ("footwear", "upper_body"),
    "FUW": ("footwear", "upper_body", "warm"),
}

CELEBA_ATTRIBUTE_SETS: dict[str, tuple[str, ...]] = {
    "G": ("Male",),
    "GA": ("Male", "Young"),
    "GAS": ("Male", "Young", "Smiling"),
    "GASL": ("Male", "Young", "Smiling", "Big_Lips"),
    "GASLN": ("Male", "Young", "Smiling", "Big_Lips", "Big_Nose"),
}

ATTRIBUTE_SETS: dict[str, dict[str, tuple[str, ...]]] = {
    "fashion_mnist": FASHION_MNIST_ATTRIBUTE_SETS,
    "celeba": CELEBA_ATTRIBUTE_SETS,
}


def attribute_names(dataset: str, attribute_set: str) -> list[str]:
    """The attribute names of a named set.

    Args:
        dataset: ``"fashion_mnist"`` or ``"celeba"``.
        attribute_set: a set name of that dataset (e.g. ``"FU"``, ``"GA"``).

    Returns:
        The names, in the order of the z columns.

    Raises:
        ValueError: unknown dataset or set name (the message lists the valid ones).
    """
    if dataset not in ATTRIBUTE_SETS:
        raise ValueError(f"unknown dataset {dataset!r} for DPFE; valid: {', '.join(ATTRIBUTE_SETS)}")
    sets = ATTRIBUTE_SETS[dataset]
    if attribute_set not in sets:
        valid = "; ".join(f"{k} = {{{', '.join(v)}}}" for k, v in sets.items())
        raise ValueError(f"unknown {dataset} attribute set {attribute_set!r}; valid sets: {valid}")
    return list(sets[attribute_set])


def fashion_mnist_attribute_table(names: list[str]) -> torch.Tensor:
    """The class -> attributes lookup table of Fashion-MNIST.

    Args:
        names: attribute names (keys of :data:`FASHION_MNIST_ATTRIBUTES`).

    Returns:
        float32 ``[10, K]``: row c is the 0/1 attributes z of class c.

    Raises:
        ValueError: an unknown attribute name (the message lists the valid ones).
    """
    unknown = [n for n in names if n not in FASHION_MNIST_ATTRIBUTES]
    if unknown or not names:
        raise ValueError(
            f"unknown Fashion-MNIST attribute(s) {unknown or '(empty list)'}; "
            f"valid names: {', '.join(FASHION_MNIST_ATTRIBUTES)}"
        )
    table = torch.zeros(len(FASHION_MNIST_CLASSES), len(names))
    for k, name in enumerate(names):
        table[list(FASHION_MNIST_ATTRIBUTES[name]), k] = 1.0
    return table
