"""The attack registry: attack name -> family, requirement and one-line threat model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ATTACKS", "FAMILIES", "AttackError", "AttackSpec", "applicable_attacks", "select_attacks"]

#: attack families a model can list in its ``attack_surface``
FAMILIES = {
    "reconstruction": "reconstruct the input image from what is released",
    "attribute_inference": "infer the sensitive class from what is released",
    "distinguishability": "tell ambiguation-noise entries of a public code from informative ones",
    "retrieval": "retrieve protected images with a hashing model nobody tuned the protection against",
}


class AttackError(ValueError):
    """A request the harness cannot run (unknown / inapplicable attack, no declared threat model)."""


@dataclass(frozen=True)
class AttackSpec:
    """One attack: its family, the model method it needs beyond ``release`` (if any) and its threat."""

    name: str
    family: str
    threat: str
    requires: str | None = None


_SPECS = (
    AttackSpec(
        "as_is",
        "reconstruction",
        "paper's curious server: knows the whole model, decodes the public code as it is",
        "server_attacks",
    ),
    AttackSpec(
        "top_sx",
        "reconstruction",
        "paper's curious server: keeps the Sx largest magnitudes per map, decodes",
        "server_attacks",
    ),
    AttackSpec(
        "posterior_mean",
        "reconstruction",
        "curious server: scales every non-zero by Sx / (Sx + Sp) (its posterior mean), decodes",
        "server_attacks",
    ),
    AttackSpec(
        "inversion_mlp",
        "reconstruction",
        "knows the public release function; releases its own training-split images and trains an MLP "
        "from release to image (early stopping on a held-out part of its data)",
    ),
    AttackSpec(
        "inversion_conv",
        "reconstruction",
        "as inversion_mlp with a convolutional decoder",
    ),
    AttackSpec(
        "probe_linear",
        "attribute_inference",
        "sees released features of its own labelled training-split images; trains a linear classifier "
        "of the sensitive class",
    ),
    AttackSpec("probe_mlp", "attribute_inference", "as probe_linear with a one-hidden-layer MLP"),
    AttackSpec(
        "knn",
        "attribute_inference",
        "as probe_linear with a k-nearest-neighbour vote (standardised features, k in 10 / 50 / 200 "
        "chosen on its held-out part)",
    ),
    AttackSpec(
        "paper_kde",
        "attribute_inference",
        "the paper's measure: per-class Gaussian KDE posterior, leave-one-out on the evaluated features",
        "privacy_fn",
    ),
    AttackSpec(
        "ks_test",
        "distinguishability",
        "sees one public code per image; two-sample KS test and rank AUC of |value|, informative vs noise",
    ),
    AttackSpec(
        "noise_classifier",
        "distinguishability",
        "knows the ambiguation mechanism: ambiguates its own training-split codes and trains a per-entry "
        "classifier (value, |value|, rank in the code, position) of noise vs informative entries",
    ),
    AttackSpec(
        "victim_adsh",
        "retrieval",
        "the shipped ADSH victim (trained on clean images), querying and indexing released images",
        "victim_fn",
    ),
    AttackSpec(
        "victim_cnn",
        "retrieval",
        "a classification-hash CNN (bits-wide tanh layer, sign codes) the attacker trains on clean (C) or "
        "protected (A) training images, optionally purified",
    ),
    AttackSpec("victim_timm", "retrieval", "as victim_cnn with a timm resnet10t backbone (in_chans=1)"),
    AttackSpec("victim_mlp", "retrieval", "as victim_cnn with an MLP on pixels"),
    AttackSpec(
        "victim_proxy_anchor",
        "retrieval",
        "a deep-metric-learning CNN (Proxy-Anchor loss, pytorch-metric-learning) trained like victim_cnn; "
        "ranks by its real embedding (Euclidean) and by sign codes; used only if its clean C->C mAP "
        "reaches the ADSH victim's",
    ),
    AttackSpec("victim_softtriple", "retrieval", "as victim_proxy_anchor with the SoftTriple loss"),
    AttackSpec(
        "victim_chest",
        "retrieval",
        "as victim_proxy_anchor with Euclidean + Poincare-ball SoftTriple (our reading of CHEST, without "
        "its undefined hierarchical-clustering term)",
    ),
    AttackSpec(
        "probe_proxy_anchor",
        "attribute_inference",
        "trains an MLP embedding with the Proxy-Anchor loss on its own (release, sensitive class) pairs, "
        "then k-NN votes in that embedding",
    ),
    AttackSpec("probe_softtriple", "attribute_inference", "as probe_proxy_anchor with the SoftTriple loss"),
    AttackSpec(
        "probe_chest",
        "attribute_inference",
        "as probe_proxy_anchor with the CHEST-style loss (see victim_chest)",
    ),
)

ATTACKS: dict[str, AttackSpec] = {s.name: s for s in _SPECS}


def applicable_attacks(model, available: Sequence[str] = ()) -> list[str]:
    """Names of the attacks that apply to a model's declared threat model.

    Args:
        model: an object (or class) with ``attack_surface`` (families of :data:`FAMILIES`) and ``release``.
        available: extra capabilities the caller provides (``"privacy_fn"``, ``"victim_fn"``).

    Raises:
        AttackError: the model declares no threat model, or an unknown family.
    """
    surface = getattr(model, "attack_surface", None)
    name = getattr(model, "__name__", type(model).__name__)
    if not surface or not callable(getattr(model, "release", None)):
        raise AttackError(
            f"{name} declares no threat model for the attack harness: it needs a class attribute "
            f"attack_surface (a tuple of {sorted(FAMILIES)}) and a release(x, **setting) method"
        )
    unknown = sorted(set(surface) - set(FAMILIES))
    if unknown:
        raise AttackError(f"{name}.attack_surface has unknown families {unknown}; valid: {sorted(FAMILIES)}")
    out = []
    for spec in _SPECS:
        if spec.family not in surface:
            continue
        if spec.requires and not (
            callable(getattr(model, spec.requires, None)) or spec.requires in available
        ):
            continue
        out.append(spec.name)
    return out


def select_attacks(model, requested: Sequence[str] | None, available: Sequence[str] = ()) -> list[str]:
    """The attacks to run: all applicable ones (``requested`` empty / ``None``) or the requested ones.

    Raises:
        AttackError: an unknown name, or one that does not apply (the message lists those that do).
    """
    ok = applicable_attacks(model, available)
    if not requested:
        return ok
    unknown = [a for a in requested if a not in ATTACKS]
    if unknown:
        raise AttackError(f"unknown attack(s) {unknown}; attacks that apply to this model: {ok}")
    bad = [a for a in requested if a not in ok]
    if bad:
        raise AttackError(
            f"attack(s) {bad} do not apply to this model's threat model; attacks that apply: {ok}"
        )
    return list(dict.fromkeys(requested))
