"""Attack a zoo checkpoint with every attack of its declared threat model; headline the worst case.

    python scripts/attack.py NAME [--attacks A ...] [--out DIR] [--data-dir DIR] [--quick]

Loads ``models.zoo.load(NAME)``, reads its class's ``attack_surface`` / ``attack_settings`` /
``release`` (see :mod:`models.attacks`), runs every applicable attack (or the ``--attacks`` subset) on
real Fashion-MNIST -- attackers train on their own TRAINING-split data, the test images are evaluated --
and writes ``attacks.json`` + ``attacks.md`` into ``--out`` (default: the checkpoint folder, whose card's
"Privacy under attack" section is then re-rendered from it) and an offline wandb table.

``--quick`` shrinks every size (attacker data, evaluated images, epochs, victims, purifications) for the
demo and tests; the sizes used are recorded in each result's ``setting["attacker"]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from models.attacks import ATTACKS, build_report, result, select_attacks, write_report
from models.attacks.data import attacker_split, check_disjoint
from models.ppl.protocol import PRIVACY_SCENARIOS

#: sizes of the full run and of --quick
SIZES = {
    "full": {
        "fit": 10000,
        "holdout": 2000,
        "test": 10000,
        "epochs": 15,
        "patience": 2,
        "probe_patience": 10,  # probes on low-dimensional releases are cheap: let them converge
        "num_query": 2000,
        "num_database": 10000,
        "num_train": 5000,
        "victim_epochs": 6,
        "metric_victim_epochs": None,  # per loss: models.attacks.metric_learning.VICTIM_EPOCHS
        "purifications": ("none", "jpeg_q90", "jpeg_q75", "jpeg_q50", "median3", "gaussian1", "bits3"),
        "a_purifications": ("none", "jpeg_q75"),
    },
    "quick": {
        "fit": 1000,
        "holdout": 300,
        "test": 500,
        "epochs": 3,
        "patience": 1,
        "probe_patience": 2,
        "num_query": 200,
        "num_database": 1000,
        "num_train": 500,
        "victim_epochs": 1,
        "metric_victim_epochs": 1,
        "purifications": ("none", "jpeg_q75"),
        "a_purifications": ("none",),
    },
}
ADSH_VICTIM = "adsh-fashion-mnist-16bit"
#: map_ratio is only reported for victims whose clean C->C mAP reaches this (chance is ~0.1 on 10 classes)
MIN_MAP_CC = 0.3
_PAPER_SERVER = ("as_is", "top_sx", "posterior_mean")
_PROBES = ("probe_linear", "probe_mlp", "knn")
_METRIC_PROBES = ("probe_proxy_anchor", "probe_softtriple", "probe_chest")


def _batched(fn, images: torch.Tensor, batch_size: int = 1000, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [
                fn(images[s : s + batch_size].float() / 255, **kwargs)
                for s in range(0, len(images), batch_size)
            ]
        )


def _settings(model, only: dict | None = None) -> list[dict]:
    """The release settings to sweep: the cartesian product of ``attack_settings`` (``only`` restricts)."""
    out = [{}]
    declared = dict(getattr(model, "attack_settings", None) or {})
    for key, values in (only or {}).items():
        if key not in declared or not set(values) <= set(declared[key]):
            raise SystemExit(f"--sp {list(values)}: the model declares attack_settings {declared}")
        declared[key] = tuple(values)
    for key, values in declared.items():
        out = [{**s, key: v} for s in out for v in values]
    return out


def _release(model, images: torch.Tensor, setting: dict, seed: int) -> torch.Tensor:
    kwargs = dict(setting)
    if "sp" in setting:  # ambiguation noise: the attacker's own draws differ from the evaluated ones
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return _batched(model.release, images, **kwargs)


def standard_data(data_dir: str, sizes: dict, seed: int, val_size: int | None = None) -> dict:
    """The attacker's rows (training split) and the evaluated rows (test split) of one image pool.

    With ``val_size`` (to choose among models without the test set) the evaluated rows are the
    ``val_size`` held-out training images of the configs, and the attacker's rows the other training images.
    """
    from datamodules import FashionMNISTDataModule

    held_out = val_size is not None
    dm = FashionMNISTDataModule(data_dir=data_dir, download=False, val_size=val_size if held_out else 1)
    dm.prepare_data()
    dm.setup("test")
    pool, labels = dm.train_set.images, dm.train_set.labels
    # test evaluation: the attacker may use every training image (train + the 1-image val split)
    train_rows = dm.train_set.indices if held_out else torch.cat([dm.train_set.indices, dm.val_set.indices])
    fit_pos, hold_pos = attacker_split(len(train_rows), sizes["fit"], sizes["holdout"], seed)
    fit, hold = train_rows[fit_pos], train_rows[hold_pos]
    test = (dm.val_set if held_out else dm.test_set).indices[: sizes["test"]]
    check_disjoint(attacker_fit=fit, attacker_holdout=hold, evaluated=test)
    return {"pool": pool, "labels": labels, "fit": fit, "holdout": hold, "test": test}


def _who(data: dict, **extra) -> dict:
    return {
        "data": f"train split: {len(data['fit'])} fit + {len(data['holdout'])} early-stopping images",
        "evaluated": f"{len(data['test'])} test images",
        **extra,
    }


def run_release_attacks(
    model, attacks: list[str], data: dict, sizes: dict, seed: int, bar, privacy_fn=None, only=None
):
    """Reconstruction, attribute inference and distinguishability on ``model.release`` (SCA, DPFE)."""
    from models.attacks.distinguish import ks_attack, noise_classifier_attack
    from models.attacks.inference import probe_attack
    from models.attacks.inversion import learned_inversion, mean_image_nmse
    from models.attacks.metrics import nmse, ssim

    pool, labels = data["pool"], data["labels"]
    x = {k: pool[data[k]] for k in ("fit", "holdout", "test")}
    xf = {k: v.float() / 255 for k, v in x.items()}
    y = {k: labels[data[k]] for k in ("fit", "holdout", "test")}
    mean_nmse = round(mean_image_nmse(xf["fit"], xf["test"]), 4)
    epochs, patience = sizes["epochs"], sizes["patience"]
    out = []
    for setting in _settings(model, only):
        rel = {
            "fit": _release(model, x["fit"], setting, seed + 1),
            "holdout": _release(model, x["holdout"], setting, seed + 2),
            "test": _release(model, x["test"], setting, seed),
        }
        sx = {"sx": setting["sx"]} if "sx" in setting else {}
        tag = ", ".join(f"{k}={v}" for k, v in setting.items()) or "features"
        for name in attacks:
            spec = ATTACKS[name]
            bar.set_postfix_str(f"{name} {tag}")
            if name in _PAPER_SERVER:
                with torch.no_grad():
                    recon = torch.cat(
                        [
                            model.server_attacks(rel["test"][s : s + 1000], **sx)[name]
                            for s in range(0, len(rel["test"]), 1000)
                        ]
                    )
                who = {
                    "knows": "the whole model, not the support",
                    "evaluated": f"{len(x['test'])} test images",
                }
                for metric, value in (("nmse", nmse(recon, xf["test"])), ("ssim", ssim(recon, xf["test"]))):
                    out.append(result(name, spec.threat, metric, value, {**setting, "attacker": who}))
            elif name.startswith("inversion_"):
                arch = name.split("_")[1]
                r = learned_inversion(
                    rel["fit"], xf["fit"], rel["holdout"], xf["holdout"], rel["test"], xf["test"],
                    arch=arch, max_epochs=epochs, patience=patience, seed=seed,
                )  # fmt: skip
                who = _who(data, epochs=r["epochs"], mean_image_nmse=mean_nmse)
                for metric in ("nmse", "ssim"):
                    out.append(result(name, spec.threat, metric, r[metric], {**setting, "attacker": who}))
            elif name in _PROBES:
                r = probe_attack(
                    rel["fit"], y["fit"], rel["holdout"], y["holdout"], rel["test"], y["test"], 10,
                    arch=name.replace("probe_", ""), max_epochs=4 * epochs, patience=sizes["probe_patience"],
                    seed=seed,
                )  # fmt: skip
                who = _who(data, **({"epochs": r["epochs"]} if "epochs" in r else {"k": r.get("k")}))
                for metric in ("class_accuracy", "lrp"):
                    out.append(result(name, spec.threat, metric, r[metric], {**setting, "attacker": who}))
            elif name in _METRIC_PROBES:
                from models.attacks.metric_learning import metric_probe_attack

                r = metric_probe_attack(
                    rel["fit"], y["fit"], rel["holdout"], y["holdout"], rel["test"], y["test"], 10,
                    loss=name.replace("probe_", ""), max_epochs=4 * epochs, patience=patience, seed=seed,
                )  # fmt: skip
                who = _who(data, epochs=r["epochs"], k=r["k"])
                for metric in ("class_accuracy", "lrp"):
                    out.append(result(name, spec.threat, metric, r[metric], {**setting, "attacker": who}))
            elif name == "paper_kde":
                lrp = float(privacy_fn(rel["test"].double(), y["test"], 10)["lrp"])
                who = {"estimator": "per-class KDE, leave-one-out on the evaluated features (the paper's)"}
                out.append(result(name, spec.threat, "lrp", lrp, {**setting, "attacker": who}))
            elif name == "ks_test":
                codes = _batched(model.encode, x["test"], **sx)
                r = ks_attack(rel["test"], codes)
                who = {"score": "|value|", **{k: v for k, v in r.items() if k != "auc"}}
                out.append(result(name, spec.threat, "auc", r["auc"], {**setting, "attacker": who}))
            elif name == "noise_classifier":
                fit_codes = _batched(model.encode, x["fit"], **sx)
                codes = _batched(model.encode, x["test"], **sx)
                maps = int(getattr(model, "hparams", {}).get("code_maps", 1) or 1)
                r = noise_classifier_attack(rel["fit"], fit_codes, rel["test"], codes, maps, seed=seed)
                who = _who(data, entries=r["train_entries"], epochs=r["epochs"])
                out.append(result(name, spec.threat, "auc", r["auc"], {**setting, "attacker": who}))
            bar.update(1)
    return out


def run_retrieval_attacks(model, attacks: list[str], data_dir: str, sizes: dict, seed: int, bar):
    """Hashing victims on the PPL protocol (query = test, database = training images), with purification."""
    from datamodules import FashionMNISTDataModule
    from models import zoo
    from models.attacks.retrieval import purify, scenario_maps, train_victim
    from models.ppl.protocol import protect_uint8

    dm = FashionMNISTDataModule(
        data_dir=data_dir,
        download=False,
        split="retrieval",
        num_query=sizes["num_query"],
        num_database=sizes["num_database"],
        num_train=sizes["num_train"],
        seed=seed,
    )
    dm.prepare_data()
    dm.setup("test")
    pool, labels = dm.query_set.images, dm.query_set.labels
    q_idx, d_idx, t_idx = dm.query_set.indices, dm.database_set.indices, dm.train_set.indices
    check_disjoint(victim_training=t_idx, queries=q_idx)
    rows = torch.unique(torch.cat([q_idx, d_idx, t_idx]))
    bar.set_postfix_str(f"protecting {len(rows)} images")
    protected = pool.clone()
    protected[rows] = protect_uint8(model.release, pool[rows])
    bits = int(getattr(model, "bits", 16))
    q_lab, d_lab = labels[q_idx], labels[d_idx]
    out = []

    def record(name, maps, who, clean_cc):
        # map_ratio: what the attacker keeps of the retrieval it would have without protection, i.e. the
        # cross-domain mAP over the C->C mAP of the same architecture trained on CLEAN images (for a
        # protected-trained victim its own C->C is out of domain and would inflate the ratio)
        spec = ATTACKS[name]
        who = {**who, "map_cc": round(maps["C->C"], 4), "clean_trained_map_cc": round(clean_cc, 4)}
        who |= {"query": len(q_idx), "database": len(d_idx)}
        for scen in PRIVACY_SCENARIOS[who["trained_on"]]:
            setting = {"scenario": scen, "bits": bits, "attacker": who}
            out.append(result(name, spec.threat, "map", maps[scen], setting))
            if clean_cc >= MIN_MAP_CC:  # a clean-trained victim that learned nothing gives no ratio
                out.append(result(name, spec.threat, "map_ratio", maps[scen] / clean_cc, setting))

    def evaluate(hash_fn, purification, scenarios=scenario_maps):
        pq = purify(protected[q_idx], purification)
        pd = purify(protected[d_idx], purification)
        return scenarios(hash_fn, {"c": pool[q_idx], "a": pq}, {"c": pool[d_idx], "a": pd}, q_lab, d_lab)

    adsh_cc = None  # the gate of the metric-learning victims: ADSH's clean C->C on this split

    for name in attacks:
        if name in _METRIC_VICTIMS:
            if adsh_cc is None:
                adsh_cc = evaluate(zoo.load(ADSH_VICTIM).hash, "none")["C->C"]
            _metric_victim_rows(name, evaluate, record, pool, labels, d_idx, sizes, bits, seed, adsh_cc)
            bar.update(1)
            continue
        if name == "victim_adsh":
            victim = zoo.load(ADSH_VICTIM)
            for p in sizes["purifications"]:
                bar.set_postfix_str(f"{name} {p}")
                who = {"victim": ADSH_VICTIM, "trained_on": "C", "purification": p}
                maps = evaluate(victim.hash, p)
                record(name, maps, who, maps["C->C"])
            bar.update(1)
            continue
        arch = name.replace("victim_", "")
        # the C-trained victim is trained once and evaluated per purification; an A-trained victim is
        # trained on the purified protected images of the purification it is evaluated with
        runs = [("C", p) for p in sizes["purifications"]] + [("A", p) for p in sizes["a_purifications"]]
        victim, info, clean_cc = None, {}, 0.0
        for trained_on, p in runs:
            bar.set_postfix_str(f"{name} {trained_on} {p}")
            if trained_on == "A" or victim is None:
                imgs = pool[t_idx] if trained_on == "C" else purify(protected[t_idx], p)
                victim, info = train_victim(
                    arch, imgs, labels[t_idx], bits, 10, max_epochs=sizes["victim_epochs"], seed=seed
                )
            who = {
                "victim": f"{arch}{' resnet10t' if arch == 'timm' else ''} classification hash",
                "trained_on": trained_on,
                "purification": p,
                "train_images": len(t_idx),
                "epochs": info["epochs"],
            }
            maps = evaluate(victim.hash, p)
            clean_cc = maps["C->C"] if trained_on == "C" else clean_cc
            record(name, maps, who, clean_cc)
        bar.update(1)
    return out


_METRIC_VICTIMS = ("victim_proxy_anchor", "victim_softtriple", "victim_chest")


def _metric_victim_rows(name, evaluate, record, pool, labels, t_idx, sizes, bits, seed, adsh_cc) -> None:
    """A deep-metric-learning victim trained on clean (C) images ``t_idx`` (the database's training-split
    images, as ADSH trains on its database; ``metric_victim_epochs`` epochs, or the loss's own), ranked by its
    real embedding
    and by its sign codes; a ranking is used (its rows recorded) only when its clean C->C mAP reaches
    ``adsh_cc``, the ADSH victim's on the same split."""
    from models.attacks.metric_learning import VICTIM_SETTINGS, scenario_maps_real, train_metric_victim
    from models.attacks.retrieval import scenario_maps

    loss = name.replace("victim_", "")
    victim, info = train_metric_victim(
        loss, pool[t_idx], labels[t_idx], bits, 10, max_epochs=sizes["metric_victim_epochs"], seed=seed
    )  # fmt: skip
    victim.eval()
    for ranking, fn, scenarios in (
        ("euclidean", victim.embedding, scenario_maps_real),
        ("hamming", victim.hash, scenario_maps),
    ):
        clean = evaluate(fn, "none", scenarios)
        if clean["C->C"] < adsh_cc:
            print(
                f"{name} ({ranking}): clean C->C mAP {clean['C->C']:.4f} < the ADSH victim's {adsh_cc:.4f}: "
                "not used as an attacker",
                file=sys.stderr,
            )
            continue
        for p in sizes["purifications"]:
            maps = clean if p == "none" else evaluate(fn, p, scenarios)
            who = {
                "victim": f"cnn {loss} ({'real embedding' if ranking == 'euclidean' else 'sign codes'})",
                "ranking": ranking, "trained_on": "C", "purification": p, "train_images": len(t_idx),
                "epochs": info["epochs"], "adsh_map_cc": round(adsh_cc, 4), **VICTIM_SETTINGS.get(loss, {}),
            }  # fmt: skip
            record(name, maps, who, clean["C->C"])


def merge_results(old: list[dict], new: list[dict], ran: list[str]) -> list[dict]:
    """``--merge``: the old results, less those the run replaces, then the new ones. A row is replaced by a
    new row of the same attack and family (so a run over some Sp keeps the other Sp); every old row of an
    attack that ran and produced none (e.g. a metric-learning victim now below the ADSH gate) is dropped."""
    from models.attacks.report import family_key

    replaced = {(r["attack"], family_key(r)) for r in new}
    silent = set(ran) - {r["attack"] for r in new}
    kept = [r for r in old if (r["attack"], family_key(r)) not in replaced and r["attack"] not in silent]
    return kept + new


def _wandb_table(report: dict, out: Path, mode: str) -> None:
    if mode == "disabled":
        return
    import wandb

    out.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project="privzoo", name=f"attack-{report['model']}", dir=str(out), mode=mode)
    table = wandb.Table(columns=["attack", "metric", "setting", "value", "private_if", "worst_case"])
    keys = {(r["attack"], r["metric"], str(r["setting"])) for r in report["worst_case"]}
    for r in report["results"]:
        key = (r["attack"], r["metric"], str(r["setting"]))
        table.add_data(r["attack"], r["metric"], str(r["setting"]), r["value"], r["private_if"], key in keys)
    run.log({"attacks/results": table})
    run.finish()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", help="zoo checkpoint name")
    parser.add_argument("--attacks", nargs="+", default=None, help="run only these attacks")
    parser.add_argument(
        "--out", default=None, help="output folder (default: the checkpoint folder + its card)"
    )
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--quick", action="store_true", help="small sizes (demo / tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wandb", choices=["offline", "disabled"], default="offline")
    parser.add_argument("--fit", type=int, default=None, help="attacker's fit images (default: by size)")
    parser.add_argument("--epochs", type=int, default=None, help="max epochs of the learned attackers")
    parser.add_argument("--sp", type=int, nargs="+", default=None, help="only these Sp (SCA)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the existing attacks.json results except those of the same attack and family",
    )
    parser.add_argument(
        "--card-only",
        action="store_true",
        help="re-render the card from the existing attacks.json, no attacks",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")

    from tqdm.auto import tqdm

    from models import zoo

    entry = zoo.get_entry(args.name)
    if args.card_only:
        import json

        from models.attacks import validate_report
        from models.cards import update_card_attacks, update_card_threat_model

        report = json.loads((zoo.folder(entry.name) / "attacks.json").read_text())
        validate_report(report)
        source = f"scripts/attack.py {args.name}"
        update_card_attacks(zoo.folder(entry.name), report, source=source)
        update_card_threat_model(zoo.folder(entry.name), entry.model_class.card_threat_model)
        return report
    available, privacy_fn = [], None
    if entry.model_class.__module__.startswith("models.dpfe"):
        from models.dpfe.privacy import identity_privacy as privacy_fn

        available.append("privacy_fn")
    if ADSH_VICTIM in zoo.available():
        available.append("victim_fn")
    model = zoo.load(args.name)
    attacks = select_attacks(model, args.attacks, available)
    sizes = dict(SIZES["quick" if args.quick else "full"])
    sizes.update({k: v for k, v in (("fit", args.fit), ("epochs", args.epochs)) if v is not None})
    only = {"sp": args.sp} if args.sp else None
    t0 = time.perf_counter()
    retrieval = [a for a in attacks if ATTACKS[a].family == "retrieval"]
    other = [a for a in attacks if a not in retrieval]
    results = []
    with tqdm(
        total=len(retrieval) + len(other) * len(_settings(model, only)), desc=args.name, unit="attack"
    ) as bar:
        if other:
            data = standard_data(args.data_dir, sizes, args.seed)
            results += run_release_attacks(model, other, data, sizes, args.seed, bar, privacy_fn, only)
        if retrieval:
            results += run_retrieval_attacks(model, retrieval, args.data_dir, sizes, args.seed, bar)
    folder = Path(args.out) if args.out else zoo.folder(entry.name)
    if (folder / "attacks.json").is_file():
        import json

        old = json.loads((folder / "attacks.json").read_text())["results"]
        if not args.merge:  # rows written by other scripts (ppl_table --card's table1_*) stay
            old = [r for r in old if r["attack"] not in ATTACKS]
        results = merge_results(old, results, attacks)
    if not results:
        raise SystemExit(
            f"no attack produced results for {args.name} (a metric-learning victim below the ADSH victim's "
            "clean C->C mAP is not used); add other --attacks"
        )
    report = build_report(args.name, entry.dataset, "test", results)
    js, md = write_report(report, folder)
    if args.out is None or folder.resolve() == zoo.folder(entry.name).resolve():
        from models.cards import update_card_attacks, update_card_threat_model

        flags = "".join(
            f" {flag}" for flag in (argv if argv is not None else sys.argv[1:])[1:] if flag != args.data_dir
        ).replace(" --data-dir", "")
        source = f"scripts/attack.py {args.name}{flags}"
        if args.merge:
            source = f"scripts/attack.py {args.name} (earlier run) merged with {source}"
        update_card_attacks(zoo.folder(entry.name), report, source=source)
        update_card_threat_model(zoo.folder(entry.name), entry.model_class.card_threat_model)
    _wandb_table(report, Path("runs") / "attacks" / args.name, args.wandb)
    print(md.read_text())
    print(f"{len(results)} results in {time.perf_counter() - t0:.0f} s: {js}, {md}")
    return report


if __name__ == "__main__":
    main()
