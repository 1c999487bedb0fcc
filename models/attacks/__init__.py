"""privzoo's attack harness: attacks that every privacy checkpoint is measured against.

Each attack is a small unit with a stated threat model (what the attacker knows, sees, trains on and
outputs). Attacks take tensors, callables (the released encode / protect functions) and datasets; they
never import a method package (``models.sca``, ``models.dpfe``, ``models.ppl``, ``models.hashing``) nor
``models.zoo`` -- methods may import the attacks, not the reverse. ``scripts/attack.py`` ties the zoo to
them.

A privacy model class declares its threat model with two class attributes and one method:

* ``attack_surface: ClassVar[tuple[str, ...]]``: the attack families of :data:`FAMILIES` that apply;
* ``attack_settings: ClassVar[dict]``: the release settings to sweep (SCA: ``{"sp": (8, 16, 24, 32)}``);
* ``release(x, **setting)``: what is released for images ``x`` in [0, 1] (SCA public codes, DPFE features,
  PPL protected images).

Results are rows ``{"attack", "threat", "metric", "value", "private_if", "setting"}``
(:func:`models.attacks.report.result`); the headline is the worst case over attacks per (metric,
setting) family (:func:`models.attacks.report.worst_case`). Every number is empirical: it is what these
attacks measured, never a bound.
"""

from models.attacks.registry import ATTACKS, FAMILIES, AttackError, applicable_attacks, select_attacks
from models.attacks.report import METRICS, build_report, result, validate_report, worst_case, write_report

__all__ = [
    "ATTACKS",
    "FAMILIES",
    "METRICS",
    "AttackError",
    "applicable_attacks",
    "build_report",
    "result",
    "select_attacks",
    "validate_report",
    "worst_case",
    "write_report",
]
