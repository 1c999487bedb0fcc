"""PPL's evaluation protocol (paper, "Results and Discussions", Table 1): victims in the four scenarios.

A victim hashing model (``models.hashing.ADSH`` / ``DSDH``) is trained either on the clean training
data (C) or on the PPL-protected training data (A); it is then evaluated with the query set (test
images) and the database (training images) each in the clean or the protected domain:
``C->C, C->A, A->C, A->A`` (query domain -> database domain), mAP@all of Hamming ranking.

Released images are 8-bit: :func:`protect_uint8` rounds ``z = clip(x + G(x), 0, 1)`` to uint8 *towards
the clean pixel* (``x`` is itself uint8), so ``|z_q - x| <= |z - x|`` per pixel and the l_p budget of
eq. 2 still holds exactly for what is released. :func:`protect_datamodule` swaps a set-up datamodule's
image pool for its protected version, so every split (train, query, database) is drawn from protected
images while indices, labels and the split itself stay the same.

The whole Table 1 run (generator, victims trained on C or A, the four scenarios, the surrogate row, the
table) is here; ``scripts/ppl_table.py`` only parses arguments and writes files. The generator's code
length is independent of the victims': the paper reports Table 1 "with the generator learned from PPL with
8-bit code length" against victims of every code length.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from models.cli import cli_main
from models.metrics import hamming_map, hamming_ndcg

__all__ = [
    "PAPER_TABLE1",
    "PRIVACY_SCENARIOS",
    "SCENARIOS",
    "TABLE_ATTACK_PREFIX",
    "compare_markdown",
    "compare_tables",
    "dataset_pools",
    "hash_images",
    "image_quality",
    "merge_tables",
    "paper_row",
    "privacy_cells",
    "protect_datamodule",
    "protect_uint8",
    "released_pool",
    "retrieval_datamodule",
    "scenario_codes",
    "scenario_maps",
    "scenario_ndcgs",
    "surrogate_row",
    "table_attack_results",
    "table_markdown",
    "train_ppl",
    "victim_row",
    "worst_cells",
]

#: (name, query domain, database domain); "c" clean, "a" protected
SCENARIOS = (("C->C", "c", "c"), ("C->A", "c", "a"), ("A->C", "a", "c"), ("A->A", "a", "a"))
#: the privacy cells of a victim trained on clean (C) or protected (A) images: every scenario but the one in
#: its own training domain, which is the use the protection keeps (paper: A->A of a protected-trained
#: victim is "normal use"; Table 1's privacy cells are C->A, A->C, A->A for C and C->C, A->C, C->A for A)
PRIVACY_SCENARIOS = {"C": ("C->A", "A->C", "A->A"), "A": ("C->C", "A->C", "C->A")}

#: the attack names of Table 1's victims in ``attacks.json`` (``table1_adsh``, ``table1_dsdh``)
TABLE_ATTACK_PREFIX = "table1_"

#: the paper's Table 1, Fashion-MNIST, 16 bits: (victim, training domain) -> scenario -> mAP
PAPER_TABLE1 = {
    ("dsdh", "C"): {"C->C": 0.6978, "C->A": 0.2803, "A->C": 0.3032, "A->A": 0.2858},
    ("adsh", "C"): {"C->C": 0.9007, "C->A": 0.3853, "A->C": 0.4118, "A->A": 0.3212},
    ("adsh", "A"): {"A->A": 0.8852, "A->C": 0.2631, "C->A": 0.4116, "C->C": 0.3134},
    ("dsdh", "A"): {"A->A": 0.6955, "A->C": 0.2813, "C->A": 0.3481, "C->C": 0.3229},
}


def paper_row(dataset: str, bits: int, victim: str, domain: str) -> dict[str, float] | None:
    """The paper's Table 1 row of a victim (``None`` where the paper has no such setting)."""
    return PAPER_TABLE1.get((victim, domain)) if dataset == "fashion_mnist" and bits == 16 else None


@torch.no_grad()
def protect_uint8(
    protect: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 1000
) -> torch.Tensor:
    """Protected 8-bit images, rounded towards the clean pixels (budget of eq. 2 kept exactly).

    Args:
        protect: maps float images [b, C, H, W] in [0, 1] to protected ones (e.g. ``PPL.protect``).
        images: uint8 [N, C, H, W] clean images.
        batch_size: images per call of ``protect``.

    Returns:
        uint8 [N, C, H, W] protected images.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    out = torch.empty_like(images)
    for start in range(0, images.shape[0], batch_size):
        x8 = images[start : start + batch_size]
        z = protect(x8.float() / 255).clamp(0, 1)
        delta = z * 255 - x8.float()
        # trunc rounds towards zero, i.e. towards the clean pixel: |x_q - x| <= |z - x|
        out[start : start + batch_size] = (x8.float() + delta.trunc()).clamp(0, 255).to(torch.uint8)
    return out


def dataset_pools(datamodule) -> list:
    """The set-up datasets of a retrieval datamodule that hold images (train / query / database / ...)."""
    names = ("train_set", "val_set", "test_set", "query_set", "database_set")
    return [getattr(datamodule, n) for n in names if getattr(datamodule, n, None) is not None]


def protect_datamodule(
    datamodule,
    protect: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 1000,
    released: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """Replaces the image pool(s) of a set-up in-memory datamodule by their protected versions.

    Every distinct image tensor shared by the splits is protected once; the splits keep their indices.

    Args:
        datamodule: a :class:`datamodules.base.VisionDataModule` whose ``setup`` has run (in-memory
            ``TensorImageDataset`` splits, e.g. MNIST / Fashion-MNIST / CIFAR-10).
        protect: float [b, C, H, W] in [0, 1] -> protected images.
        batch_size: images per call of ``protect``.
        released: instead of ``protect``, the already released uint8 version of the (single) image pool.

    Returns:
        ``{id(clean pool): clean pool}`` -- the original uint8 tensors, to restore or compare.
    """
    if (protect is None) == (released is None):
        raise ValueError("give exactly one of protect (a function) and released (the protected pool)")
    datasets = dataset_pools(datamodule)
    if not datasets:
        raise RuntimeError("the datamodule is not set up: call datamodule.setup('fit') first")
    originals: dict[int, torch.Tensor] = {}
    protected: dict[int, torch.Tensor] = {}
    for ds in datasets:
        images = getattr(ds, "images", None)
        if not isinstance(images, torch.Tensor):
            raise TypeError(
                f"{type(ds).__name__} keeps no in-memory image tensor; cannot protect it in place"
            )
        key = id(images)
        if key not in protected:
            if released is not None and released.shape != images.shape:
                raise ValueError(
                    f"released pool {tuple(released.shape)} does not match the datamodule's images "
                    f"{tuple(images.shape)}: same dataset and split?"
                )
            originals[key] = images
            protected[key] = released if released is not None else protect_uint8(protect, images, batch_size)
        ds.images = protected[key]
    return originals


@torch.no_grad()
def hash_images(
    hash_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 1000
) -> torch.Tensor:
    """Binary codes of uint8 images.

    Args:
        hash_fn: float [b, C, H, W] in [0, 1] -> codes [b, c] in {-1, +1} (e.g. ``victim.hash``).
        images: uint8 [N, C, H, W].
        batch_size: images per call.

    Returns:
        float32 [N, c] codes.
    """
    return torch.cat(
        [hash_fn(images[s : s + batch_size].float() / 255).float() for s in range(0, len(images), batch_size)]
    )


@torch.no_grad()
def scenario_codes(
    hash_fn: Callable[[torch.Tensor], torch.Tensor],
    pool: torch.Tensor,
    protected: torch.Tensor,
    query_idx: torch.Tensor,
    db_idx: torch.Tensor,
    batch_size: int = 1000,
) -> dict[str, torch.Tensor]:
    """Codes of the query and database sets in both domains, the input of :func:`scenario_maps`.

    Args:
        hash_fn: float [b, C, H, W] in [0, 1] -> codes [b, c] in {-1, +1}.
        pool: uint8 [N, C, H, W] clean image pool; protected: its released version, same shape.
        query_idx: [Nq] rows of the query set in the pool; db_idx: [Nd] rows of the database.
        batch_size: images per call of ``hash_fn``.

    Returns:
        ``{"query_c", "query_a", "db_c", "db_a"}`` -> float32 codes.
    """
    codes = {}
    for role, idx in (("query", query_idx), ("db", db_idx)):
        codes[f"{role}_c"] = hash_images(hash_fn, pool[idx], batch_size)
        codes[f"{role}_a"] = hash_images(hash_fn, protected[idx], batch_size)
    return codes


def scenario_maps(
    codes: dict[str, torch.Tensor],
    query_labels: torch.Tensor,
    db_labels: torch.Tensor,
    scenarios: Iterable[tuple[str, str, str]] = SCENARIOS,
) -> dict[str, float]:
    """mAP@all of the four scenarios from precomputed codes.

    Args:
        codes: ``{"query_c", "query_a", "db_c", "db_a"}`` -> codes [N, c] in {-1, +1}.
        query_labels: [Nq] (or multi-hot [Nq, L]).
        db_labels: [Nd] (or [Nd, L]).
        scenarios: (name, query domain, database domain) triples.

    Returns:
        ``{"C->C": map, ...}``.
    """
    return {
        name: float(hamming_map(codes[f"query_{q}"], query_labels, codes[f"db_{d}"], db_labels))
        for name, q, d in scenarios
    }


def scenario_ndcgs(
    codes: dict[str, torch.Tensor],
    query_labels: torch.Tensor,
    db_labels: torch.Tensor,
    k: int = 100,
    scenarios: Iterable[tuple[str, str, str]] = SCENARIOS,
) -> dict[str, float]:
    """nDCG@k (tie-averaged, the MPA papers' metric) of the four scenarios, beside :func:`scenario_maps`."""
    return {
        name: float(hamming_ndcg(codes[f"query_{q}"], query_labels, codes[f"db_{d}"], db_labels, k=k))
        for name, q, d in scenarios
    }


@torch.no_grad()
def image_quality(clean: torch.Tensor, protected: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """PSNR (dB) and SSIM of protected vs clean uint8 images (torchmetrics, data range 1), image-averaged.

    Args:
        clean: uint8 [N, C, H, W].
        protected: uint8 [N, C, H, W].
        batch_size: images per chunk.

    Returns:
        ``{"psnr": ..., "ssim": ...}``.
    """
    psnr, ssim, n = 0.0, 0.0, 0
    for s in range(0, len(clean), batch_size):
        x, z = clean[s : s + batch_size].float() / 255, protected[s : s + batch_size].float() / 255
        b = x.shape[0]
        psnr += float(peak_signal_noise_ratio(z, x, data_range=1.0, reduction="none", dim=(1, 2, 3)).sum())
        ssim += float(structural_similarity_index_measure(z, x, data_range=1.0, reduction="sum"))
        n += b
    return {"psnr": psnr / n, "ssim": ssim / n}


# ----------------------------------------------------------------------------------------------------
# Table 1 end to end: the generator, the released pool, victims and the surrogate, the table
# ----------------------------------------------------------------------------------------------------
def _cli(config: str | Path, overrides: Sequence[str], root: Path):
    """The privzoo CLI of ``config`` (instantiated, not run) with its outputs under ``root``."""
    config = Path(config)
    if not config.is_file():
        others = sorted(p.stem for p in config.parent.glob("*.yaml")) if config.parent.is_dir() else []
        raise FileNotFoundError(f"no config {config}; configs there: {others}")
    args = ["--config", str(config), "--trainer.logger", "false", "--trainer.default_root_dir", str(root)]
    args += ["--trainer.enable_progress_bar", "true", "--checkpoint.dirpath", str(root / "ckpt")]
    return cli_main(args + list(overrides), run=False)


def retrieval_datamodule(config: str | Path, overrides: Sequence[str], root: Path):
    """The set-up (``fit``) retrieval datamodule of ``config``: the split a PPL / victim run trains on."""
    dm = _cli(config, overrides, root).datamodule
    dm.prepare_data()
    dm.setup("fit")
    return dm


def train_ppl(config: str | Path, overrides: Sequence[str], root: Path):
    """Trains a PPL generator + surrogate from a CLI config; the final weights go to ``root/final.ckpt``."""
    cli = _cli(config, overrides, root)
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.save_checkpoint(root / "final.ckpt")  # the final weights (last.ckpt may predate max_steps)
    print(f"[ppl {cli.model.bits} bits] trained in {time.perf_counter() - t0:.0f} s -> {root / 'final.ckpt'}")
    return cli.model.eval()


def released_pool(
    config: str | Path, overrides: Sequence[str], protect: Callable, root: Path, batch_size: int = 1000
) -> dict[str, Any]:
    """The retrieval split of ``config``'s datamodule and ONE released (8-bit protected) version of its pool.

    Returns:
        ``{"datamodule", "pool", "protected", "protect_s"}`` (uint8 pools ``[N, C, H, W]``).
    """
    dm = _cli(config, overrides, root).datamodule
    dm.prepare_data()
    dm.setup("test")
    pool = dm.query_set.images
    t0 = time.perf_counter()
    protected = protect_uint8(protect, pool, batch_size)
    return {"datamodule": dm, "pool": pool, "protected": protected, "protect_s": time.perf_counter() - t0}


def victim_row(
    config: str | Path,
    overrides: Sequence[str],
    root: Path,
    domain: str,
    pool: torch.Tensor,
    protected: torch.Tensor,
    ckpt: str | Path | torch.nn.Module | None = None,
    batch_size: int = 1000,
    train_released: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Trains (or loads) one victim on the clean (C) or protected (A) pool; its four scenario mAPs.

    Args:
        config: the victim's CLI config (``configs/<adsh|dsdh>/<dataset>.yaml``).
        overrides: CLI arguments (``--model.init_args.bits 16`` ...).
        root: output folder (``final.ckpt`` of a trained victim).
        domain: ``"C"`` or ``"A"``: the training images.
        pool, protected: uint8 ``[N, C, H, W]`` clean pool and its released version.
        ckpt: a trained victim to evaluate instead of training one (a Lightning checkpoint, or the model).
        batch_size: images per hash call.
        train_released: a uint8 pool (same shape) the training split draws its images from instead, e.g.
            clean rows with a share protected (paper, "Ratio of Adversaries", Fig. 5); the scenarios
            still use ``pool`` / ``protected``.

    Returns:
        ``{"map": {scenario: mAP}, "fit_s": seconds or None, "model": the victim}``.
    """
    if domain not in ("C", "A"):
        raise ValueError(f"domain must be 'C' (clean) or 'A' (protected), got {domain!r}")
    extra = ["--trainer.limit_val_batches", "0", "--checkpoint.monitor", "null", *overrides]
    cli = _cli(config, extra, root)
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    if any(not torch.equal(ds.images, pool) for ds in dataset_pools(dm)):
        raise RuntimeError(f"{config}'s datamodule holds other images than the PPL pool: same dataset?")
    if domain == "A":  # every split now draws the released (protected) images
        protect_datamodule(dm, released=protected)
    if train_released is not None:
        if train_released.shape != pool.shape or train_released.dtype != pool.dtype:
            raise ValueError(
                f"train_released is {train_released.dtype} {tuple(train_released.shape)}: give a uint8 pool "
                f"shaped like the clean one, {tuple(pool.shape)}"
            )
        dm.train_set.images = train_released
    if ckpt is None:
        t0 = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=dm)
        fit_s = time.perf_counter() - t0
        cli.trainer.save_checkpoint(root / "final.ckpt")
        model = cli.model.eval()
    else:
        if isinstance(ckpt, torch.nn.Module):  # an already loaded victim (e.g. a zoo checkpoint)
            model = ckpt.eval()
            if not isinstance(model, type(cli.model)):
                raise TypeError(
                    f"the given victim is a {type(model).__name__}, but {config} trains a "
                    f"{type(cli.model).__name__}"
                )
        else:
            model = type(cli.model).load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
        if model.bits != cli.model.bits:
            raise ValueError(f"{ckpt} is a {model.bits}-bit victim, not {cli.model.bits}")
        fit_s = None
    return {**_scenario_scores(model.hash, dm, pool, protected, batch_size), "fit_s": fit_s, "model": model}


def _scenario_scores(hash_fn, dm, pool: torch.Tensor, protected: torch.Tensor, batch_size: int) -> dict:
    """``{"map", "ndcg_100"}`` of the four scenarios for one hash function on the retrieval split."""
    codes = scenario_codes(
        hash_fn, pool, protected, dm.query_set.indices, dm.database_set.indices, batch_size
    )
    labels = dm.query_set.targets, dm.database_set.targets
    return {"map": scenario_maps(codes, *labels), "ndcg_100": scenario_ndcgs(codes, *labels)}


def surrogate_row(protector, released: dict[str, Any], batch_size: int = 1000) -> dict[str, Any]:
    """The PPL surrogate's own four scenarios and the released test images' PSNR / SSIM."""
    dm, pool, protected = released["datamodule"], released["pool"], released["protected"]
    q = dm.query_set.indices
    return {
        **_scenario_scores(protector.hash, dm, pool, protected, batch_size),
        "quality": image_quality(pool[q], protected[q], batch_size),
    }


def table_markdown(results: dict) -> str:
    """Table 1 as markdown: one table per victim code length, [paper] values beside the measured ones."""
    lines = []
    for bits, res in results["bits"].items():
        ppl = res["ppl"]
        lines += [
            f"### {results['dataset']}, {bits}-bit victims (PPL generator: {ppl.get('bits', bits)} bits, "
            f"epsilon {ppl['epsilon']}, l_{ppl['norm']})",
            "",
            f"PSNR {res['quality']['psnr']:.2f} dB, SSIM {res['quality']['ssim']:.4f} "
            "(released 8-bit protected test images vs clean)",
            "",
            "| model | trained on | " + " | ".join(n for n, _, _ in SCENARIOS) + " |",
            "| --- | --- | " + " | ".join("---" for _ in SCENARIOS) + " |",
        ]
        for row in res["rows"]:
            paper = row.get("paper") or {}
            cells = [
                f"{row['map'][n]:.4f}" + (f" [{paper[n]:.4f}]" if n in paper else "") for n, _, _ in SCENARIOS
            ]
            lines.append(f"| {row['model']} | {row['trained_on']} | " + " | ".join(cells) + " |")
        ndcg = [row for row in res["rows"] if row.get("ndcg_100")]
        if ndcg:
            lines += ["", "nDCG@100 (tie-averaged):", ""]
            lines += ["| model | trained on | " + " | ".join(n for n, _, _ in SCENARIOS) + " |"]
            lines += ["| --- | --- | " + " | ".join("---" for _ in SCENARIOS) + " |"]
            for row in ndcg:
                cells = [f"{row['ndcg_100'][n]:.4f}" for n, _, _ in SCENARIOS]
                lines.append(f"| {row['model']} | {row['trained_on']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Measured mAP@all; [paper Table 1] where the paper reports the setting.")
    return "\n".join(lines) + "\n"


def privacy_cells(results: dict) -> list[dict[str, Any]]:
    """Every privacy cell of a table's victims (not the surrogate), over every code length: its mAP and its
    ratio over the clean-trained C->C of the same victim and code length (``None`` without that victim)."""
    cells = []
    for bits, res in results["bits"].items():
        clean = {r["model"]: r["map"]["C->C"] for r in res["rows"] if r["trained_on"] == "C"}
        for row in res["rows"]:
            for s in PRIVACY_SCENARIOS.get(row["trained_on"], ()):
                ratio = row["map"][s] / clean[row["model"]] if clean.get(row["model"]) else None
                cells.append({"bits": int(bits), "model": row["model"], "trained_on": row["trained_on"],
                              "scenario": s, "map": row["map"][s], "ratio": ratio,
                              "clean_trained_map_cc": clean.get(row["model"])})  # fmt: skip
    return cells


def worst_cells(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The highest-mAP cell of :func:`privacy_cells`' ``cells`` and, under ``worst_ratio``, the one of highest
    cross/clean ratio (``None`` when no cell has a ratio)."""
    if not cells:
        raise ValueError("the table has no victim rows (only the surrogate's)")
    ratios = [c for c in cells if c["ratio"] is not None]
    worst = max(cells, key=lambda c: c["map"])
    return {**worst, "worst_ratio": max(ratios, key=lambda c: c["ratio"]) if ratios else None}


def table_attack_results(results: dict) -> list[dict[str, Any]]:
    """Table 1's privacy cells as attack-harness rows (``attacks.json``; attacks ``table1_adsh`` /
    ``table1_dsdh``), so that the card's worst case covers the paper's victims at every code length too.

    Families are the harness's (``scenario``, ``bits``); the victim, its training domain and config are the
    attacker's choices. ``map_ratio`` is over the clean-trained C->C of the same victim and code length.
    """
    from models.attacks.report import result

    rows = []
    for c in privacy_cells(results):
        name = c["model"]
        attack = f"{TABLE_ATTACK_PREFIX}{name.lower()}"
        threat = (
            f"a {name} victim (the paper's Table 1 protocol) trained on "
            f"{'clean' if c['trained_on'] == 'C' else 'released (protected)'} training images, querying and "
            "indexing clean or released images"
        )
        attacker = {
            # the run's --victim-arg overrides (in its command) apply on top of the config
            "victim": f"{name} (configs/{name.lower()}/{results['dataset']}.yaml + run overrides)",
            "trained_on": c["trained_on"],
            "purification": "none",
            "clean_trained_map_cc": round(c["clean_trained_map_cc"] or 0.0, 4) or None,
            "query": "test set",
            "database": "training set",
        }
        setting = {"scenario": c["scenario"], "bits": c["bits"], "attacker": attacker}
        rows.append(result(attack, threat, "map", c["map"], setting))
        if c["ratio"] is not None:
            rows.append(result(attack, threat, "map_ratio", c["ratio"], setting))
    return rows


def merge_tables(parts: Sequence[dict], sources: Sequence[str]) -> dict:
    """One results dict from several runs' tables (the same protector per code length).

    Raises:
        ValueError: two parts used different protectors, or measured the same row differently.
    """
    merged: dict = {"dataset": None, "bits": {}, "merged_from": list(sources)}
    for part, source in zip(parts, sources, strict=True):
        merged["dataset"] = merged["dataset"] or part["dataset"]
        for bits, res in part["bits"].items():
            into = merged["bits"].setdefault(bits, {"ppl": res["ppl"], "quality": res["quality"], "rows": []})
            if into["ppl"]["ckpt"] != res["ppl"]["ckpt"]:
                raise ValueError(
                    f"{source}: {bits}-bit rows come from PPL {res['ppl']['ckpt']}, not {into['ppl']['ckpt']}"
                )
            for row in res["rows"]:
                key = (row["model"], row["trained_on"])
                same = [r for r in into["rows"] if (r["model"], r["trained_on"]) == key]
                if same and _rounded(same[0]["map"]) != _rounded(row["map"]):
                    raise ValueError(
                        f"{source}: {row['model']} ({row['trained_on']}) disagrees with an earlier file"
                    )
                if not same:
                    into["rows"].append(row)
    for res in merged["bits"].values():  # victims first, in a fixed order, the surrogate last
        res["rows"].sort(key=lambda r: (r["model"] == "PPL surrogate", r["model"], r["trained_on"] != "C"))
    return merged


def _rounded(maps: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in maps.items()}


def compare_tables(tables: dict[str, dict]) -> dict[str, Any]:
    """Cell-by-cell privacy of several generators' Table 1s (``{label: table.json}``): every privacy cell that
    all tables measured (same code length, victim, training domain, scenario) with each table's mAP and the
    lowest (most private) label; per label its wins, its worst cell / worst cross-clean ratio, its
    SSIM per code length and its utility cells (C-trained C->C, A-trained A->A). A cell whose lowest value
    (to 4 decimals) several labels share counts as a win for none of them."""
    if len(tables) < 2:
        raise ValueError("compare_tables needs at least two tables, e.g. {'shipped': t1, 'step600': t2}")
    keyed = {}
    for label, table in tables.items():
        cells_of = privacy_cells(table)
        keyed[label] = {(c["bits"], c["model"], c["trained_on"], c["scenario"]): c for c in cells_of}
    common = sorted(set.intersection(*(set(k) for k in keyed.values())))
    if not common:
        raise ValueError(f"the tables {sorted(tables)} share no privacy cell (code length, victim, domain)")
    cells, wins = [], dict.fromkeys(tables, 0)
    for key in common:
        maps = {label: keyed[label][key]["map"] for label in tables}
        low = min(round(v, 4) for v in maps.values())
        best = [label for label, v in maps.items() if round(v, 4) == low]  # ties (as printed) win for none
        if len(best) == 1:
            wins[best[0]] += 1
        bits, model, domain, scenario = key
        cells.append(
            {
                "bits": bits,
                "model": model,
                "trained_on": domain,
                "scenario": scenario,
                "map": maps,
                "best": best,
            }
        )
    summary = {}
    for label, table in tables.items():
        worst = worst_cells([keyed[label][k] for k in common])
        utility = {}
        for bits, res in table["bits"].items():
            for row in res["rows"]:
                domain = row["trained_on"]
                if domain not in PRIVACY_SCENARIOS:  # the surrogate, as in privacy_cells
                    continue
                s = f"{domain}->{domain}"  # its own training domain: the use the protection keeps
                utility[f"{row['model']}-{domain} {int(bits)} bits {s}"] = row["map"][s]
        summary[label] = {
            "wins": wins[label],
            "worst_map": {k: v for k, v in worst.items() if k != "worst_ratio"},
            "worst_ratio": worst["worst_ratio"],
            "ssim": {int(b): res["quality"]["ssim"] for b, res in table["bits"].items()},
            "utility": utility,
        }
    return {"labels": list(tables), "cells": cells, "n_cells": len(cells), "summary": summary}


def compare_markdown(comparison: dict) -> str:
    """The comparison of :func:`compare_tables` as markdown: the per-label summary, then every cell."""
    labels = comparison["labels"]
    summary = comparison["summary"]

    def row(*cells) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    lines = [
        row("generator", "most private in", "worst privacy cell (mAP)", "worst cross/clean ratio", "SSIM"),
        row(*["---"] * 5),
    ]
    for label in labels:
        s = summary[label]
        w, r = s["worst_map"], s["worst_ratio"]
        where = f"{w['model']}-{w['trained_on']} {w['bits']} bits {w['scenario']}"
        ratio = "n/a"
        if r is not None:
            ratio = f"{r['ratio']:.4f} ({r['model']}-{r['trained_on']} {r['bits']} bits {r['scenario']})"
        ssim = " / ".join(f"{v:.4f}" for v in sorted({round(x, 4) for x in s["ssim"].values()}))
        wins = f"{s['wins']} of {comparison['n_cells']} cells"
        lines.append(row(label, wins, f"{w['map']:.4f} ({where})", ratio, ssim))
    lines += [
        "",
        "Privacy cells (mAP@all, lower is more private; **bold** = lowest; a tie wins for none):",
        "",
        row("bits", "victim", "scenario", *labels),
        row(*["---"] * (3 + len(labels))),
    ]
    for c in comparison["cells"]:
        vals = [f"**{c['map'][x]:.4f}**" if x in c["best"] else f"{c['map'][x]:.4f}" for x in labels]
        lines.append(row(c["bits"], f"{c['model']}-{c['trained_on']}", c["scenario"], *vals))
    lines += ["", "Utility cells (C-trained C->C, A-trained A->A):", "", row("cell", *labels)]
    lines.append(row(*["---"] * (1 + len(labels))))
    keys = set.intersection(*(set(summary[x]["utility"]) for x in labels))
    for k in sorted(keys, key=lambda k: (int(k.split()[1]), k)):
        lines.append(row(k, *(f"{summary[x]['utility'][k]:.4f}" for x in labels)))
    return "\n".join(lines) + "\n"
