"""PPL's figures as runs: transferability (Fig. 3), ratio of adversaries (Fig. 5), distortion (Fig. 6).

Every figure is built from :mod:`models.ppl.protocol`'s pieces -- one released 8-bit pool per generator
(:func:`~models.ppl.protocol.released_pool`), victims trained on clean (C) or protected (A) training images
and scored in the four scenarios C->C, C->A, A->C, A->A (:func:`~models.ppl.protocol.victim_row`), the
surrogate's scores and PSNR / SSIM (:func:`~models.ppl.protocol.surrogate_row`):

* ``transfer`` (paper, "Transferability", Fig. 3): one generator against ADSH / DSDH victims built on other
  backbones (timm names through ``models.backbones.create_backbone``), each trained @C and @A.
* ``ratio`` (paper, "Ratio of Adversaries", Fig. 5): victims trained on a training set in which a seeded
  share p of the images is protected (:func:`mixed_pool`), the rest clean.
* ``epsilon`` (paper, "Effect of Distortion", Fig. 6): one generator per budget (l_inf epsilons and l2
  points); a clean-trained victim does not depend on the generator, so it is trained once and scored
  against every budget's released pool, a protected-trained victim is trained per budget.

Results are plain dicts (``figure``, ``columns`` naming a row's keys, ``rows`` with ``map`` / ``ndcg_100``
per scenario); :func:`figure_markdown` and :func:`figure_plot` render them. ``scripts/ppl_figures.py`` only
parses arguments and writes files. The paper shows these figures as plots only (Figs. 3 and 5 on CIFAR-10),
so no paper numbers are printed next to the measured ones.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.backbones import create_backbone
from models.ppl.module import PPL
from models.ppl.protocol import (
    SCENARIOS,
    _cli,
    released_pool,
    surrogate_row,
    train_ppl,
    victim_row,
)

__all__ = [
    "DEFAULT_BACKBONES",
    "DEFAULT_EPSILONS",
    "DEFAULT_L2_EPSILONS",
    "DEFAULT_SHARES",
    "FIGURES",
    "FigureSetup",
    "check_backbones",
    "check_epsilons",
    "check_shares",
    "epsilon_figure",
    "figure_markdown",
    "figure_plot",
    "levers_figure",
    "load_protector",
    "merge_figures",
    "mixed_pool",
    "parse_epsilon_ckpts",
    "parse_levers",
    "protector_for",
    "ratio_figure",
    "transfer_figure",
]

FIGURES = {
    "transfer": "Fig. 3, transferability across backbones",
    "ratio": "Fig. 5, ratio of protected images in the victims' training set",
    "epsilon": "Fig. 6, effect of the perturbation budget",
    "levers": "levers beyond the paper, one at a time against the paper's setting",
}
#: issue 15's levers for a stronger generator, each ALONE on top of the config (PPL CLI overrides);
#: ``paper`` is the config as it is.
DEFAULT_LEVERS = {
    "paper": (),
    "surrogate_lr_1e-4": ("--model.init_args.lr_surrogate", "1e-4"),  # G/F lr ratio 1 (paper: 1/10)
    "surrogate_lr_3e-3": ("--model.init_args.lr_surrogate", "3e-3"),  # G/F lr ratio 1/30
    "lambda_0.5": ("--model.init_args.lambda_", "0.5"),  # reversal strength (paper: 1)
    "lambda_2": ("--model.init_args.lambda_", "2"),
    "lambda_warmup_100": ("--model.init_args.lambda_warmup_steps", "100"),
    "generator_steps_2": ("--model.init_args.generator_steps", "2"),  # 2 G steps per F step (paper: 1)
    "generator_steps_4": ("--model.init_args.generator_steps", "4"),
    "ensemble_small_cnn": ("--model.init_args.extra_surrogates", "[small_cnn]"),
    "diversity_jpeg": ("--model.init_args.input_diversity", "0.5", "--model.init_args.jpeg_prob", "0.5"),
}
#: CPU-friendly timm stand-ins for the paper's ResNet18 / MobileNet, plus a third family (RegNet); all
#: build with in_chans=1 and run on 28x28 (checked by :func:`check_backbones`). timm's only WideResNets
#: (wide_resnet50_2 / 101_2, 67M+ parameters) also run at 28x28 but are too heavy for a CPU default.
DEFAULT_BACKBONES = ("resnet18", "mobilenetv3_small_100", "regnetx_002")
DEFAULT_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_EPSILONS = (0.05, 0.1, 0.2, 0.3)
#: l2 budget for 1x28x28 images in [0, 1]: 2.0 is an RMS change of 2 / sqrt(784) = 0.071 per pixel, between
#: the l_inf 0.05 and 0.1 points (an l_inf-epsilon perturbation has an l2 norm of up to 28 epsilon, so the
#: paper's l_inf 0.3 allows up to 8.4): a visibly milder budget to compare with the l_inf curve.
DEFAULT_L2_EPSILONS = (2.0,)
_NORM_NAMES = {"inf": "l_inf", "2": "l_2", "1": "l_1"}


@dataclass(frozen=True)
class FigureSetup:
    """What every figure shares: configs, victims, code length, CLI overrides, the output folder.

    Args:
        dataset: config name under ``configs/<ppl|adsh|dsdh>/``.
        victims: victim names (``"adsh"``, ``"dsdh"``).
        bits: code length of the victims (paper's figures: 16).
        ppl_bits: code length of a generator trained here (paper: 8).
        ppl_args: CLI overrides of a generator trained here (``["--trainer.max_steps", "200"]``).
        victim_args: CLI overrides of the victims, ``{victim name or "*" (all): ("--key", value, ...)}``
            (e.g. a reduced ``--trainer.max_epochs`` per victim).
        data_args: CLI overrides of all data (generator and victims).
        scale: the ``key=value`` victim and data overrides, as typed, that change the victims' scale (not
            where the data lives), for the figure's text.
        out: output folder (checkpoints of trained generators / victims).
        batch_size: images per protect / hash call.
    """

    dataset: str = "fashion_mnist"
    victims: tuple[str, ...] = ("adsh", "dsdh")
    bits: int = 16
    ppl_bits: int = 8
    ppl_args: tuple[str, ...] = ()
    victim_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    data_args: tuple[str, ...] = ()
    scale: tuple[str, ...] = ()
    out: Path = Path("runs/ppl_figures")
    batch_size: int = 1000

    def config(self, method: str) -> Path:
        """``configs/<method>/<dataset>.yaml`` of the repository."""
        return Path(__file__).resolve().parents[2] / "configs" / method / f"{self.dataset}.yaml"

    def victim_overrides(self, victim: str, backbone: str | None = None) -> list[str]:
        """CLI overrides of a victim: code length, backbone, image-hashed database codes, the user's."""
        extra = ["--model.init_args.bits", str(self.bits)]
        if backbone is not None:
            extra += ["--model.init_args.backbone", backbone]
        if victim == "adsh":  # database codes from images: the database domain changes between scenarios
            extra += ["--model.init_args.eval_database_codes", "hash"]
        # the more specific last: data overrides, then every victim's, then this victim's own
        return [*extra, *self.data_args, *self.victim_args.get("*", ()), *self.victim_args.get(victim, ())]

    def victim_scale(self) -> str:
        """One sentence stating the victims' training scale."""
        configs = ", ".join(f"configs/{v}/{self.dataset}.yaml" for v in self.victims)
        if not self.scale:
            return f"Victims at their configs' full (paper) scale: {configs}, {self.bits} bits."
        return (
            f"Victims at a reduced scale: {configs} with {', '.join(self.scale)}, {self.bits} bits; compare "
            "these numbers with each other, not with the paper's full-scale victims."
        )


# ----------------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------------
def check_backbones(names: Sequence[str], in_chans: int = 1, image_size: int = 28) -> list[str]:
    """Each name builds through ``create_backbone`` and maps ``[2, in_chans, size, size]`` to features.

    Raises:
        ValueError: an unknown name (with timm's closest names) or one that cannot run at this size.
    """
    import timm

    for name in names:
        if name != "small_cnn" and not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
            raise ValueError(f"unknown backbone {name!r}: not a timm model name ({hint})")
        backbone = create_backbone(name, in_chans=in_chans).eval()
        try:
            with torch.no_grad():
                out = backbone(torch.zeros(2, in_chans, image_size, image_size))
        except (RuntimeError, AssertionError, ValueError) as err:
            raise ValueError(
                f"backbone {name!r} does not run on {in_chans}x{image_size}x{image_size} images ({err}); "
                f"pick another one (defaults: {', '.join(DEFAULT_BACKBONES)})"
            ) from err
        if tuple(out.shape) != (2, backbone.num_features):
            raise ValueError(
                f"backbone {name!r} gives features {tuple(out.shape)}, not [2, num_features = "
                f"{backbone.num_features}]: models.backbones.create_backbone reports a wrong width"
            )
    return list(names)


def check_shares(shares: Sequence[float]) -> list[float]:
    """Shares of protected training images, each in [0, 1]."""
    bad = [p for p in shares if not 0.0 <= p <= 1.0]
    if bad:
        raise ValueError(f"protected shares must lie in [0, 1] (0 = all clean, 1 = all protected), got {bad}")
    return [float(p) for p in shares]


def check_epsilons(epsilons: Sequence[float], what: str = "epsilon") -> list[float]:
    """Perturbation budgets, each finite and > 0 (eq. 2)."""
    bad = [e for e in epsilons if not (math.isfinite(e) and e > 0)]
    if bad:
        raise ValueError(f"every {what} must be a finite budget > 0 (eq. 2), got {bad}")
    return [float(e) for e in epsilons]


def load_protector(spec: str) -> PPL:
    """A trained PPL generator from a Lightning checkpoint file or a zoo name (``models.zoo``), in eval mode.

    Raises:
        FileNotFoundError: neither a file nor a PPL zoo name (lists the zoo's PPL names).
    """
    if Path(spec).is_file():
        return PPL.load_from_checkpoint(spec, map_location="cpu", weights_only=True).eval()
    from models import zoo

    names = [e.name for e in zoo.zoo_entries() if e.model_class is PPL]
    if spec in names:
        return zoo.load(spec).eval()
    raise FileNotFoundError(
        f"--ppl-ckpt {spec!r}: no such checkpoint file, and not a PPL zoo name (zoo PPL names: {names})"
    )


def parse_epsilon_ckpts(pairs: Sequence[str]) -> dict[tuple[str, float], tuple[PPL, str]]:
    """``EPS=PATH`` pairs -> ``{(norm, epsilon): (generator, PATH)}``; the norm is the checkpoint's own.

    Raises:
        ValueError: a malformed pair, EPS not a number > 0, or EPS not the checkpoint's epsilon.
        FileNotFoundError: PATH is neither a file nor a PPL zoo name.
    """
    out: dict[tuple[str, float], tuple[PPL, str]] = {}
    for pair in pairs:
        eps, sep, path = pair.partition("=")
        try:
            epsilon = float(eps)
        except ValueError:
            epsilon = None
        if not sep or not path or epsilon is None:
            raise ValueError(f"--ppl-ckpt {pair!r}: expected EPS=PATH, e.g. 0.1=runs/ppl_eps0.1/final.ckpt")
        check_epsilons([epsilon])
        protector = load_protector(path)
        if not math.isclose(protector.epsilon, epsilon, rel_tol=1e-6):
            raise ValueError(
                f"--ppl-ckpt {pair!r}: that generator was trained with epsilon {protector.epsilon} "
                f"({_NORM_NAMES[protector.norm]}), not {epsilon}"
            )
        out[(protector.norm, epsilon)] = (protector, path)
    return out


# ----------------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------------
def mixed_pool(
    pool: torch.Tensor, protected: torch.Tensor, train_idx: torch.Tensor, share: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean pool with ``round(share * n)`` of the ``n`` training rows replaced by protected ones.

    The rows are the first ones of ONE seeded permutation of the training rows, so a larger share protects a
    superset of a smaller one (the curve of Fig. 5 varies only the share).

    Args:
        pool: uint8 ``[N, C, H, W]`` clean pool; protected: its released version.
        train_idx: ``[n]`` rows of the victim's training set in the pool.
        share: protected share p in [0, 1].
        seed: seed of the choice.

    Returns:
        ``(mixed pool, the protected rows [round(p * n)] in the pool, sorted)``.
    """
    check_shares([share])
    k = round(share * len(train_idx))
    order = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(seed))
    rows = train_idx[order[:k]].sort().values
    mixed = pool.clone()
    mixed[rows] = protected[rows]
    return mixed, rows


def protector_for(
    setup: FigureSetup, spec: str | None, norm: str = "inf", epsilon: float | None = None
) -> tuple[PPL, str]:
    """A generator: loaded from ``spec``, else trained from the PPL config (budget ``epsilon`` / ``norm`` if
    given, the config's otherwise) under ``out/ppl_<bits>[_<norm><eps>]``. Returns ``(generator, ckpt)``."""
    if spec is not None:
        return load_protector(spec), spec
    extra = ["--model.init_args.bits", str(setup.ppl_bits)]
    name = f"ppl_{setup.ppl_bits}"
    if epsilon is not None:
        extra += ["--model.init_args.epsilon", str(epsilon), "--model.init_args.norm", norm]
        name += f"_{_point_tag(norm, epsilon)}"
    root = setup.out / name
    return train_ppl(setup.config("ppl"), [*extra, *setup.ppl_args, *setup.data_args], root), str(
        root / "final.ckpt"
    )


def _point_tag(norm: str, epsilon: float) -> str:
    return f"{_NORM_NAMES[norm].replace('_', '')}_{epsilon:g}"


def _released(setup: FigureSetup, protector: PPL, tag: str) -> dict[str, Any]:
    return released_pool(
        setup.config("ppl"), setup.data_args, protector.protect, setup.out / f"tmp_{tag}", setup.batch_size
    )


def _row(keys: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    return {**keys, "map": row["map"], "ndcg_100": row["ndcg_100"], "fit_s": row["fit_s"]}


def _ppl_info(protector: PPL, ckpt: str) -> dict[str, Any]:
    return {"epsilon": protector.epsilon, "norm": protector.norm, "bits": protector.bits, "ckpt": ckpt}


def _header(setup: FigureSetup, figure: str, columns: list[str]) -> dict[str, Any]:
    return {
        "figure": figure,
        "title": FIGURES[figure],
        "dataset": setup.dataset,
        "bits": setup.bits,
        "victim_scale": setup.victim_scale(),
        "columns": columns,
        "rows": [],
    }


# ----------------------------------------------------------------------------------------------------
# the three figures
# ----------------------------------------------------------------------------------------------------
def transfer_figure(
    setup: FigureSetup,
    protector: PPL,
    ppl_ckpt: str,
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    domains: Sequence[str] = ("C", "A"),
) -> dict[str, Any]:
    """Fig. 3: the generator's released pool against each victim on each backbone, trained @C and @A."""
    check_backbones(backbones)
    released = _released(setup, protector, "transfer")
    results = _header(setup, "transfer", ["victim", "backbone", "trained_on"])
    results["ppl"] = _ppl_info(protector, ppl_ckpt)
    results["quality"] = surrogate_row(protector, released, setup.batch_size)["quality"]
    for victim in setup.victims:
        for backbone in backbones:
            for domain in domains:
                root = setup.out / f"{victim}_{backbone}_{domain}_{setup.bits}"
                row = victim_row(
                    setup.config(victim),
                    setup.victim_overrides(victim, backbone),
                    root,
                    domain,
                    released["pool"],
                    released["protected"],
                    batch_size=setup.batch_size,
                )
                print(f"[{victim} {backbone}@{domain}] fit {row['fit_s']:.0f} s: {row['map']}")
                keys = {"victim": victim.upper(), "backbone": backbone, "trained_on": domain}
                results["rows"].append(_row(keys, row))
    return results


def ratio_figure(
    setup: FigureSetup,
    protector: PPL,
    ppl_ckpt: str,
    shares: Sequence[float] = DEFAULT_SHARES,
    seed: int = 0,
) -> dict[str, Any]:
    """Fig. 5: victims trained with a share p of protected training images (:func:`mixed_pool`)."""
    shares = check_shares(shares)
    released = _released(setup, protector, "ratio")
    pool, protected = released["pool"], released["protected"]
    results = _header(setup, "ratio", ["victim", "share", "protected_rows", "train_rows"])
    results["ppl"] = _ppl_info(protector, ppl_ckpt)
    results["quality"] = surrogate_row(protector, released, setup.batch_size)["quality"]
    results["seed"] = seed
    for victim in setup.victims:
        overrides = setup.victim_overrides(victim)
        # the victim's own training rows (its config's num_train), from its datamodule as victim_row builds it
        dm = _cli(setup.config(victim), overrides, setup.out / "tmp_ratio").datamodule
        dm.prepare_data()
        dm.setup("fit")
        train_idx = dm.train_set.indices
        for share in shares:
            mixed, rows = mixed_pool(pool, protected, train_idx, share, seed)
            root = setup.out / f"{victim}_p{share:g}_{setup.bits}"
            row = victim_row(
                setup.config(victim),
                overrides,
                root,
                "C",
                pool,
                protected,
                batch_size=setup.batch_size,
                train_released=mixed,
            )
            print(f"[{victim} share {share:g}: {len(rows)}/{len(train_idx)} protected] {row['map']}")
            keys = {
                "victim": victim.upper(),
                "share": share,
                "protected_rows": len(rows),
                "train_rows": len(train_idx),
            }
            results["rows"].append(_row(keys, row))
    return results


def epsilon_figure(
    setup: FigureSetup,
    points: Sequence[tuple[str, float]],
    generators: dict[tuple[str, float], tuple[PPL, str]] | None = None,
    clean_ckpts: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Fig. 6: one generator per budget ``(norm, epsilon)``, victims @C (trained once) and @A (per budget).

    Args:
        setup: the shared settings.
        points: ``(norm, epsilon)`` budgets, in plot order.
        generators: trained generators by budget (:func:`parse_epsilon_ckpts`); the others are trained.
        clean_ckpts: ``{victim: checkpoint}`` of clean-trained victims to score instead of training them.
    """
    generators = dict(generators or {})
    clean = dict(clean_ckpts or {})
    results = _header(setup, "epsilon", ["victim", "norm", "epsilon", "trained_on"])
    results["points"] = []
    for norm, epsilon in points:
        check_epsilons([epsilon])
        if (norm, epsilon) in generators:
            protector, ckpt = generators[(norm, epsilon)]
        else:
            protector, ckpt = protector_for(setup, None, norm, epsilon)
        tag = _point_tag(norm, epsilon)
        released = _released(setup, protector, tag)
        surrogate = surrogate_row(protector, released, setup.batch_size)
        results["points"].append(
            {**_ppl_info(protector, ckpt), "quality": surrogate["quality"], "surrogate_map": surrogate["map"]}
        )
        print(f"[{tag}] PSNR {surrogate['quality']['psnr']:.2f} dB, SSIM {surrogate['quality']['ssim']:.4f}")
        _score_point(setup, released, tag, {"norm": norm, "epsilon": epsilon}, clean, results["rows"])
    return results


def _score_point(
    setup: FigureSetup,
    released: dict[str, Any],
    tag: str,
    keys: dict[str, Any],
    clean: dict[str, str],
    rows: list[dict[str, Any]],
) -> None:
    """One point's released pool (a budget, a lever) against every victim @C and @A, appended to ``rows``.

    A clean-trained victim is the same for every point: trained at the first (its checkpoint is then put
    in ``clean``), scored at the others; protected-trained ones are trained per point
    (``<victim>_A_<bits>_<tag>``).
    """
    for victim in setup.victims:
        for domain in ("C", "A"):
            root = setup.out / (
                f"{victim}_C_{setup.bits}" if domain == "C" else f"{victim}_A_{setup.bits}_{tag}"
            )
            ckpt_in = clean.get(victim) if domain == "C" else None
            row = victim_row(
                setup.config(victim),
                setup.victim_overrides(victim),
                root,
                domain,
                released["pool"],
                released["protected"],
                ckpt_in,
                setup.batch_size,
            )
            if domain == "C" and ckpt_in is None:
                clean[victim] = str(root / "final.ckpt")
            print(f"[{victim}@{domain} {tag}] {row['map']}")
            point = {"victim": victim.upper(), **keys, "trained_on": domain}
            rows.append({**_row(point, row), "victim_ckpt": ckpt_in})


def parse_levers(specs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Lever specs -> ``{name: PPL CLI overrides}``: a :data:`DEFAULT_LEVERS` name, or
    ``NAME:key=value[,key=value...]`` for one of your own (``wide:model.init_args.epsilon=0.3``).

    Raises:
        ValueError: an unknown name without overrides, a malformed override, a name given twice.
    """
    out: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        name, sep, rest = spec.partition(":")
        if not sep:
            if name not in DEFAULT_LEVERS:
                raise ValueError(
                    f"lever {name!r} is not one of {sorted(DEFAULT_LEVERS)}; define your own as "
                    "NAME:key=value[,key=value...]"
                )
            overrides = DEFAULT_LEVERS[name]
        else:
            pairs = [p for p in rest.split(",") if p]
            if not name or not pairs or any("=" not in p for p in pairs):
                raise ValueError(f"lever {spec!r}: expected NAME:key=value[,key=value...]")
            overrides = tuple(x for p in pairs for x in (f"--{p.partition('=')[0]}", p.partition("=")[2]))
        if name in out:
            raise ValueError(f"lever {name!r} is given twice")
        out[name] = overrides
    return out


def levers_figure(
    setup: FigureSetup,
    levers: Mapping[str, Sequence[str]],
    generators: Mapping[str, tuple[PPL, str]] | None = None,
    clean_ckpts: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Issue 15's levers: one generator per lever (the config plus that lever's overrides, under
    ``out/ppl_<bits>_<lever>``), each against the same clean-trained victims (trained once) and its own
    protected-trained ones, with PSNR / SSIM; ``generators`` gives trained ones by lever name."""
    generators = dict(generators or {})
    unknown = sorted(set(generators) - set(levers))
    if unknown:
        raise ValueError(f"generators given for levers {unknown} that are not measured ({sorted(levers)})")
    clean = dict(clean_ckpts or {})
    results = _header(setup, "levers", ["victim", "lever", "trained_on"])
    results["points"] = []
    for lever, overrides in levers.items():
        if lever in generators:
            protector, ckpt = generators[lever]
        else:
            root = setup.out / f"ppl_{setup.ppl_bits}_{lever}"
            extra = ["--model.init_args.bits", str(setup.ppl_bits), *setup.ppl_args, *overrides]
            protector = train_ppl(setup.config("ppl"), [*extra, *setup.data_args], root)
            ckpt = str(root / "final.ckpt")
        released = _released(setup, protector, lever)
        surrogate = surrogate_row(protector, released, setup.batch_size)
        results["points"].append(
            {
                "lever": lever,
                "overrides": list(overrides),
                **_ppl_info(protector, ckpt),
                "quality": surrogate["quality"],
                "surrogate_map": surrogate["map"],
            }
        )
        q = surrogate["quality"]
        print(f"[{lever}] PSNR {q['psnr']:.2f} dB, SSIM {q['ssim']:.4f}")
        _score_point(setup, released, lever, {"lever": lever}, clean, results["rows"])
    return results


#: figures whose points are generators trained per setting, keyed so that runs of them can be merged
_POINT_KEYS = {
    "levers": lambda p: p["lever"],
    "epsilon": lambda p: (p["norm"], p["epsilon"]),
}


def _keep_once(kept: dict, key: Any, item: dict, numbers: str, what: str, run: int) -> None:
    """Adds ``item`` under ``key`` unless an earlier run measured it; then its ``numbers`` must agree."""
    if key in kept and kept[key][numbers] != item[numbers]:
        raise ValueError(
            f"{what} was measured by two runs with different numbers (run {run} and an earlier one): "
            "merge only one of them"
        )
    kept.setdefault(key, item)


def merge_figures(figures: Sequence[dict[str, Any]], command: str) -> dict[str, Any]:
    """Runs of one method figure (``levers`` or ``epsilon``) as one figure: their points and rows in order,
    a point measured by several runs kept once. Each run trains its own clean-trained victims, so the merge
    holds only where they are the same victims: same scale, and the same clean C->C per victim (a seeded
    rerun reproduces it; ``--victim-ckpt`` shares one). ``sources`` keeps each run's own command.

    Raises:
        ValueError: fewer than two runs, a figure that is not a method figure, runs of other figures /
            datasets / code lengths / victim scales, different clean victims, or one point measured twice
            with different numbers.
    """
    if len(figures) < 2:
        raise ValueError(f"merge needs at least two runs of one figure, got {len(figures)}")
    first = figures[0]
    if first.get("figure") not in _POINT_KEYS:
        raise ValueError(
            f"only the figures that train a generator per point ({sorted(_POINT_KEYS)}) are merged, "
            f"got {first.get('figure')!r}"
        )
    for i, other in enumerate(figures[1:], 1):
        for key in ("figure", "dataset", "bits", "victim_scale", "columns"):
            if other.get(key) != first.get(key):
                raise ValueError(
                    f"run {i} differs from run 0 in {key!r} ({other.get(key)!r} vs {first.get(key)!r}); "
                    "only runs of one figure at one victim scale are merged"
                )
    point_key, cols = _POINT_KEYS[first["figure"]], first["columns"]
    clean = {}  # victim -> (C->C of its clean-trained victim, run)
    for i, fig in enumerate(figures):
        for row in fig["rows"]:
            if row["trained_on"] == "C":
                cc = row["map"]["C->C"]
                seen = clean.setdefault(row["victim"], (cc, i))
                if not math.isclose(seen[0], cc, rel_tol=0, abs_tol=1e-9):
                    raise ValueError(
                        f"runs {seen[1]} and {i} scored different clean-trained {row['victim']} victims "
                        f"(C->C {seen[0]:.4f} vs {cc:.4f}); rerun with --victim-ckpt {row['victim']}:C=PATH "
                        "so that every run scores the same one"
                    )
    points, rows = {}, {}
    for i, fig in enumerate(figures):
        for point in fig["points"]:
            _keep_once(points, point_key(point), point, "surrogate_map", f"point {point_key(point)!r}", i)
        for row in fig["rows"]:
            key = tuple(row[c] for c in cols)
            _keep_once(rows, key, row, "map", f"row {dict(zip(cols, key, strict=True))}", i)
    sources = [c for fig in figures for c in (fig.get("sources") or [fig["command"]])]
    return {
        **{k: v for k, v in first.items() if k not in ("rows", "points", "command", "sources")},
        "rows": list(rows.values()),
        "points": list(points.values()),
        "sources": list(dict.fromkeys(sources)),
        "command": command,
    }


# ----------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------
def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(cells) + " |" for cells in rows),
    ]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return (
        {"inf": "l_inf", "2": "l_2", "1": "l_1"}.get(value, str(value))
        if isinstance(value, str)
        else str(value)
    )


def figure_markdown(results: dict[str, Any]) -> str:
    """The figure's numbers as markdown: mAP@all and nDCG@100 per row and scenario, the victims' scale."""
    names = [n for n, _, _ in SCENARIOS]
    cols = results["columns"]
    lines = [f"### PPL {results['title']} ({results['dataset']}, {results['bits']}-bit victims)", ""]
    if "ppl" in results:
        ppl, q = results["ppl"], results["quality"]
        lines += [
            f"PPL generator: {ppl['bits']} bits, epsilon {ppl['epsilon']:g} ({_cell(ppl['norm'])}), "
            f"{ppl['ckpt']}; PSNR {q['psnr']:.2f} dB, SSIM {q['ssim']:.4f} (released 8-bit test images).",
            "",
        ]
    if "points" in results:
        lever = results["figure"] == "levers"
        lines += _md_table(
            [*(["lever"] if lever else []), "norm", "epsilon", "PSNR (dB)", "SSIM"]
            + [f"surrogate {n}" for n in names],
            [
                [
                    *([p["lever"]] if lever else []),
                    _cell(p["norm"]),
                    f"{p['epsilon']:g}",
                    f"{p['quality']['psnr']:.2f}",
                    f"{p['quality']['ssim']:.4f}",
                ]
                + [f"{p['surrogate_map'][n]:.4f}" for n in names]
                for p in results["points"]
            ],
        )
        lines.append("")
        if lever:
            lines += [
                "Overrides per lever (on top of the PPL config and the figure's own --ppl-arg):",
                "",
                *(f"- {p['lever']}: `{' '.join(p['overrides']) or 'none'}`" for p in results["points"]),
                "",
            ]
    for metric, label in (("map", "mAP@all"), ("ndcg_100", "nDCG@100 (tie-averaged)")):
        lines += [f"{label}:", ""]
        lines += _md_table(
            [*cols, *names],
            [[_cell(r[c]) for c in cols] + [f"{r[metric][n]:.4f}" for n in names] for r in results["rows"]],
        )
        lines.append("")
    lines += [
        results["victim_scale"],
        "",
        *(
            ["Merged from these runs (`scripts/ppl_figures.py merge`), which share their clean victims:", ""]
            + [f"- `{c}`" for c in results["sources"]]
            + [""]
            if results.get("sources")
            else []
        ),
        "Query = test images, database = training images, in the clean (C) or protected (A) domain. "
        "The paper gives this figure only as a plot, so no paper values are listed.",
    ]
    return "\n".join(lines) + "\n"


def _figure_array(fig) -> np.ndarray:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.canvas.draw()
    picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return picture


def figure_plot(results: dict[str, Any]) -> np.ndarray:
    """The figure as a uint8 RGB picture ``[H, W, 3]`` (matplotlib, Agg): a panel per victim (and domain)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _, _ in SCENARIOS]
    victims = list(dict.fromkeys(r["victim"] for r in results["rows"]))
    figure = results["figure"]
    cols = 2 if figure in ("epsilon", "levers") else 1
    fig, axes = plt.subplots(
        len(victims), cols, figsize=(6.5 * cols, 3.6 * len(victims)), dpi=100, squeeze=False
    )
    for i, victim in enumerate(victims):
        rows = [r for r in results["rows"] if r["victim"] == victim]
        if figure == "transfer":
            ax = axes[i][0]
            width = 0.8 / len(names)
            for j, n in enumerate(names):
                xs = [k + (j - 1.5) * width for k in range(len(rows))]
                ax.bar(xs, [r["map"][n] for r in rows], width, label=n)
            ax.set_xticks(
                range(len(rows)),
                [f"{r['backbone']}@{r['trained_on']}" for r in rows],
                rotation=20,
                fontsize=7,
            )
            ax.set_title(f"{victim}: one PPL generator vs other backbones")
        elif figure == "ratio":
            ax = axes[i][0]
            for n in names:
                ax.plot([r["share"] for r in rows], [r["map"][n] for r in rows], "o-", markersize=4, label=n)
            ax.set_xlabel("share of protected images in the victim's training set")
            ax.set_title(f"{victim} trained on clean + protected images")
        else:
            labels = [
                (p["lever"] if figure == "levers" else f"{_cell(p['norm'])} {p['epsilon']:g}")
                + f"\n{p['quality']['ssim']:.2f} SSIM"
                for p in results["points"]
            ]
            for j, domain in enumerate(("C", "A")):
                ax = axes[i][j]
                at = [r for r in rows if r["trained_on"] == domain]
                for n in names:
                    ax.plot(range(len(at)), [r["map"][n] for r in at], "o-", markersize=4, label=n)
                slant = {"rotation": 25, "ha": "right"} if figure == "levers" else {}  # long lever names
                ax.set_xticks(range(len(labels)), labels, fontsize=7, **slant)
                ax.set_title(f"{victim}@{domain}")
        for ax in axes[i]:
            ax.set_ylabel("mAP@all")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"PPL {results['title']}, {results['dataset']}, {results['bits']} bits", fontsize=10)
    return _figure_array(fig)
