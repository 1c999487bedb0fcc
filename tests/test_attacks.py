"""The attack harness (models.attacks, scripts/attack.py) on tiny synthetic data and tiny fixtures."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.attacks import (
    ATTACKS,
    AttackError,
    applicable_attacks,
    build_report,
    result,
    select_attacks,
    validate_report,
    worst_case,
    write_report,
)
from models.attacks.data import attacker_split, check_disjoint
from models.attacks.distinguish import entry_features, ks_attack
from models.attacks.inference import probe_attack
from models.attacks.inversion import learned_inversion, mean_image_nmse
from models.attacks.metrics import log_rank_privacy, nmse
from models.attacks.retrieval import PURIFIERS, HashVictim, purify

REPO_ROOT = Path(__file__).resolve().parents[1]


def _manifold_images(n: int, seed: int = 0) -> torch.Tensor:
    """Images [n, 1, 8, 8] on a 4-d smooth manifold (so a small MLP can learn them)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, 64, generator=torch.Generator().manual_seed(123))
    z = torch.randn(n, 4, generator=g)
    return torch.sigmoid(z @ basis).view(n, 1, 8, 8)


def _split(n_fit=1500, n_hold=300, n_test=300):
    x = _manifold_images(n_fit + n_hold + n_test)
    return x[:n_fit], x[n_fit : n_fit + n_hold], x[n_fit + n_hold :]


# ------------------------------------------------------------------------------------------- inversion
def test_learned_inversion_recovers_an_identity_like_encoder():
    fit, hold, test = _split()
    rotation = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(1)))[0]

    def encode(x):  # invertible, non-private
        return x.flatten(1) @ rotation

    r = learned_inversion(encode(fit), fit, encode(hold), hold, encode(test), test, "mlp", max_epochs=40)
    floor = mean_image_nmse(fit, test)
    assert r["nmse"] < 0.1 * floor and r["nmse"] < 0.02
    assert r["ssim"] > 0.9


def test_learned_inversion_on_pure_noise_codes_is_no_better_than_the_mean_image():
    fit, hold, test = _split()
    g = torch.Generator().manual_seed(2)
    noise = [torch.randn(len(t), 32, generator=g) for t in (fit, hold, test)]
    for arch in ("mlp", "conv"):
        r = learned_inversion(noise[0], fit, noise[1], hold, noise[2], test, arch, max_epochs=15)
        assert r["nmse"] >= 0.97 * mean_image_nmse(fit, test), arch


def test_nmse_is_per_image_normalised():
    x = torch.rand(5, 1, 4, 4) + 0.1
    assert nmse(x, x) == 0
    assert nmse(torch.zeros_like(x), x) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- inference
def test_probes_are_at_chance_on_random_features():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3500, 16, generator=g)
    y = torch.randint(0, 10, (3500,), generator=g)
    for arch in ("linear", "mlp", "knn"):
        r = probe_attack(
            z[:2000], y[:2000], z[2000:2500], y[2000:2500], z[2500:], y[2500:], 10, arch, max_epochs=10
        )
        assert r["class_accuracy"] < 0.15, arch
        assert r["lrp"] > 0.55, arch  # a random ranking gives ~0.66


def test_probe_reads_an_informative_feature():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (2000,), generator=g)
    z = torch.nn.functional.one_hot(y, 10).float() + 0.1 * torch.randn(2000, 10, generator=g)
    r = probe_attack(z[:1200], y[:1200], z[1200:1500], y[1200:1500], z[1500:], y[1500:], 10, "linear")
    assert r["class_accuracy"] > 0.95 and r["lrp"] < 0.05


def test_log_rank_privacy_ties_and_perfect_scores():
    labels = torch.arange(10)
    assert log_rank_privacy(torch.eye(10), labels, 10) == 0
    uniform = log_rank_privacy(torch.zeros(10, 10), labels, 10)
    assert uniform == pytest.approx(float(np.log(5.5) / np.log(10)))


# ---------------------------------------------------------------------------------- distinguishability
def test_ks_and_entry_features_tell_obvious_noise_apart():
    codes = torch.zeros(200, 32)
    codes[:, :4] = 5.0
    public = codes.clone()
    public[:, 10:14] = 0.1  # noise entries: much smaller
    r = ks_attack(public, codes)
    assert r["auc"] > 0.99 and r["ks_magnitudes_statistic"] > 0.99
    feats, (rows, cols) = entry_features(public)
    assert feats.shape == (200 * 8, 3 + 32) and len(rows) == 200 * 8


# ---------------------------------------------------------------------------------------- purification
def test_jpeg_purification_round_trips_uint8_images():
    from fixtures import class_pattern_images

    rng = np.random.default_rng(0)
    images = torch.from_numpy(class_pattern_images(np.arange(16) % 10, 1, 28, 28, rng)).permute(0, 3, 1, 2)
    images = images.contiguous()
    for name in PURIFIERS:
        out = purify(images, name)
        assert out.shape == images.shape and out.dtype == torch.uint8, name
    high = purify(images, "jpeg_q90").float()
    assert (high - images.float()).abs().mean() < 8
    assert (purify(images, "jpeg_q25").float() - images.float()).abs().mean() > (
        high - images.float()
    ).abs().mean()
    with pytest.raises(ValueError, match="unknown purification"):
        purify(images, "jpeg_q1000")
    with pytest.raises(ValueError, match="uint8"):
        purify(images.float(), "none")


def test_hash_victim_codes_are_signs():
    for arch in ("cnn", "mlp"):
        victim = HashVictim(arch, bits=8).eval()
        codes = victim.hash(torch.rand(4, 1, 28, 28))
        assert codes.shape == (4, 8) and set(codes.unique().tolist()) <= {-1.0, 1.0}


# ------------------------------------------------------------------------------------------ the report
def _rows():
    return [
        result("a", "t", "nmse", 0.5, {"sp": 32, "attacker": {"arch": "x"}}),
        result("b", "t", "nmse", 0.3, {"sp": 32, "attacker": {"arch": "y"}}),
        result("a", "t", "nmse", 0.6, {"sp": 8}),
        result("a", "t", "class_accuracy", 0.2, {}),
        result("b", "t", "class_accuracy", 0.7, {}),
    ]


def test_worst_case_is_the_least_private_result_of_each_family():
    worst = {(r["metric"], r["setting"].get("sp")): (r["attack"], r["value"]) for r in worst_case(_rows())}
    assert worst == {("nmse", 32): ("b", 0.3), ("nmse", 8): ("a", 0.6), ("class_accuracy", None): ("b", 0.7)}


def test_attacks_json_schema(tmp_path):
    report = build_report("m", "Fashion-MNIST", "test", _rows())
    js, md = write_report(report, tmp_path)
    loaded = json.loads(js.read_text())
    assert set(loaded) == {"model", "dataset", "split", "results", "worst_case"}
    for row in loaded["results"] + loaded["worst_case"]:
        assert set(row) == {"attack", "threat", "metric", "value", "private_if", "setting"}
        assert row["private_if"] in ("higher", "lower")
    validate_report(loaded)
    assert "worst-case" in md.read_text()
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file
    bad = dict(loaded, worst_case=loaded["worst_case"][:-1])
    with pytest.raises(ValueError, match="one entry per"):
        validate_report(bad)
    with pytest.raises(ValueError, match="keys"):
        validate_report({**loaded, "extra": 1})
    with pytest.raises(ValueError, match="unknown metric"):
        result("a", "t", "accuracy", 0.1, {})


# ------------------------------------------------------------------------------- the attacker's data
def test_attacker_split_is_disjoint_and_check_disjoint_catches_overlap():
    fit, hold = attacker_split(1000, 600, 100, seed=0, exclude=torch.arange(50))
    assert len(fit) == 600 and len(hold) == 100
    check_disjoint(fit=fit, holdout=hold, evaluated=torch.arange(50))
    with pytest.raises(ValueError, match="share"):
        check_disjoint(fit=fit, evaluated=fit[:3])


def _attack_script():
    spec = importlib.util.spec_from_file_location("attack_script", REPO_ROOT / "scripts" / "attack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attacker_data_never_overlaps_the_evaluated_images(fashion_mnist_dir):
    script = _attack_script()
    data = script.standard_data(str(fashion_mnist_dir), script.SIZES["quick"], seed=0)
    n_train = 128  # the pool holds the official training rows first, then the test rows
    assert (data["fit"] < n_train).all() and (data["holdout"] < n_train).all()
    assert (data["test"] >= n_train).all()
    assert not torch.isin(data["fit"], data["holdout"]).any()


# ---------------------------------------------------------------------------------------- bad input
class _NoThreat:
    pass


class _Features:
    attack_surface = ("attribute_inference",)

    def release(self, x):
        return x


def test_bad_input_errors_list_the_applicable_attacks():
    from models.dpfe import DPFE
    from models.ppl import PPL
    from models.sca import SCA

    assert {"as_is", "top_sx", "posterior_mean", "inversion_mlp", "noise_classifier"} <= set(
        applicable_attacks(SCA)
    )
    assert "as_is" not in applicable_attacks(DPFE)
    assert applicable_attacks(PPL, ["victim_fn"]) == [
        "victim_adsh",
        "victim_cnn",
        "victim_timm",
        "victim_mlp",
        "victim_proxy_anchor",
        "victim_softtriple",
        "victim_chest",
    ]
    with pytest.raises(AttackError, match="do not apply.*probe_linear"):
        select_attacks(_Features(), ["as_is"])
    with pytest.raises(AttackError, match="unknown attack.*probe_linear"):
        select_attacks(_Features(), ["probe_quantum"])
    with pytest.raises(AttackError, match="declares no threat model"):
        select_attacks(_NoThreat(), None)
    assert select_attacks(_Features(), None) == [
        "probe_linear",
        "probe_mlp",
        "knn",
        "probe_proxy_anchor",
        "probe_softtriple",
        "probe_chest",
    ]
    assert all(ATTACKS[a].threat for a in ATTACKS)


def test_attack_script_rejects_an_inapplicable_attack(fashion_mnist_dir, tmp_path):
    script = _attack_script()
    with pytest.raises(AttackError, match="do not apply"):
        script.main(
            ["dpfe-fashion-mnist", "--attacks", "as_is", "--out", str(tmp_path), "--wandb", "disabled"]
        )


# -------------------------------------------------------------------------------- script and the card
def test_attack_script_end_to_end_and_card_section(fashion_mnist_dir, tmp_path, monkeypatch):
    from models import zoo
    from models.cards import ATTACKS_END, ATTACKS_START

    script = _attack_script()
    out = tmp_path / "out"
    argv = ["dpfe-fashion-mnist", "--quick", "--data-dir", str(fashion_mnist_dir), "--out", str(out)]
    report = script.main(argv + ["--wandb", "disabled", "--attacks", "probe_linear", "knn", "paper_kde"])
    validate_report(json.loads((out / "attacks.json").read_text()))
    assert {r["attack"] for r in report["results"]} == {"probe_linear", "knn", "paper_kde"}
    assert (out / "attacks.md").is_file()

    # the card route: a copy of the checkpoint folder, attacked twice -> one section, latest numbers
    folder = tmp_path / "checkpoints" / "dpfe-fashion-mnist"
    shutil.copytree(zoo.folder("dpfe-fashion-mnist"), folder)
    monkeypatch.setattr(zoo, "CHECKPOINTS_DIR", tmp_path / "checkpoints")
    for _ in range(2):
        script.main(argv[:-2] + ["--wandb", "disabled", "--attacks", "knn"])
    text = (folder / "README.md").read_text()
    assert text.count(ATTACKS_START) == 1 and text.count(ATTACKS_END) == 1
    assert "## Privacy under attack" in text and "`knn`" in text
    assert text.index("## Privacy under attack") < text.index("## Threat model and limits")


def test_demo_prints_the_worst_case_beside_the_paper(tmp_path, monkeypatch, capsys):
    from models import zoo

    folder = tmp_path / "dpfe-fashion-mnist"
    shutil.copytree(zoo.folder("dpfe-fashion-mnist"), folder)
    monkeypatch.setattr(zoo, "CHECKPOINTS_DIR", tmp_path)
    rows = [result("knn", "t", "class_accuracy", 0.61, {}), result("paper_kde", "t", "lrp", 0.2, {})]
    write_report(build_report("dpfe-fashion-mnist", "Fashion-MNIST", "test", rows), folder)
    spec = importlib.util.spec_from_file_location("demo_script", REPO_ROOT / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    printed = demo.print_attack_headlines(["dpfe-fashion-mnist", "adsh-fashion-mnist-16bit"])
    assert [(r["family"], r["worst"]["attack"]) for r in printed] == [
        ("class_accuracy", "knn"),
        ("lrp", "paper_kde"),
    ]
    assert "Privacy under attack" in capsys.readouterr().out


def test_attack_script_merge_keeps_other_attacks(fashion_mnist_dir, tmp_path):
    script = _attack_script()
    argv = ["sca-fashion-mnist-sx16", "--quick", "--data-dir", str(fashion_mnist_dir), "--out", str(tmp_path)]
    argv += ["--wandb", "disabled", "--sp", "32"]
    script.main(argv + ["--attacks", "posterior_mean"])
    report = script.main(argv + ["--attacks", "ks_test", "--merge"])
    assert {(r["attack"], r["setting"]["sp"]) for r in report["results"]} == {
        ("posterior_mean", 32),
        ("ks_test", 32),
    }
    # without --merge the harness's rows are replaced; rows other scripts wrote (ppl_table's table1_*) stay
    report["results"].append(dict(report["results"][0], attack="table1_adsh"))
    (tmp_path / "attacks.json").write_text(json.dumps(report))
    again = script.main(argv + ["--attacks", "ks_test"])
    assert sorted(r["attack"] for r in again["results"]) == ["ks_test", "table1_adsh"]
    with pytest.raises(SystemExit, match="attack_settings"):
        script.main(argv[:-1] + ["7", "--attacks", "ks_test"])


def test_merge_drops_the_old_rows_of_an_attack_that_now_gives_none():
    script = _attack_script()

    def row(attack, scenario):
        return {"attack": attack, "metric": "map", "setting": {"scenario": scenario, "attacker": {}}}

    old = [row("victim_softtriple", "C->A"), row("victim_chest", "C->A"), row("victim_chest", "A->C")]
    new = [row("victim_chest", "C->A")]
    merged = script.merge_results(old, new, ["victim_softtriple", "victim_chest"])
    assert merged == [row("victim_chest", "A->C"), row("victim_chest", "C->A")]
    # an attack that did not run keeps its rows
    assert script.merge_results(old, new, ["victim_chest"])[0] == row("victim_softtriple", "C->A")


def test_knn_attacker_tunes_k_on_its_holdout():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (3000,), generator=g)
    z = torch.nn.functional.one_hot(y, 10).float() + 1.5 * torch.randn(3000, 10, generator=g)  # noisy
    parts = (z[:2000], y[:2000], z[2000:2500], y[2000:2500], z[2500:], y[2500:])
    tuned = probe_attack(*parts, 10, "knn", k=(1, 200))
    assert tuned["k"] == 200  # noisy releases: the large k wins on the holdout
    one = probe_attack(*parts, 10, "knn", k=1)
    assert one["k"] == 1 and tuned["class_accuracy"] > one["class_accuracy"] + 0.05


def test_retrieval_privacy_cells_leave_out_each_victims_own_training_domain(fashion_mnist_dir, monkeypatch):
    from models import zoo

    script = _attack_script()
    sizes = {**script.SIZES["quick"], "num_query": 16, "num_database": 60, "num_train": 40}
    sizes |= {"purifications": ("none",), "a_purifications": ("none",)}
    monkeypatch.setattr(script, "MIN_MAP_CC", 0.0)  # a 1-epoch victim on 40 images: keep its ratios
    rows = script.run_retrieval_attacks(
        zoo.load("ppl-fashion-mnist-16bit"), ["victim_mlp"], str(fashion_mnist_dir), sizes, 0, _Bar()
    )
    cells = {}
    for r in rows:
        cells.setdefault(r["setting"]["attacker"]["trained_on"], set()).add(r["setting"]["scenario"])
        assert 0.0 <= r["value"] and (r["metric"] == "map_ratio" or r["value"] <= 1.0)
    # the A->A search of a protected-trained victim is the protection's "normal use" (paper, Table 1)
    assert cells == {"C": {"C->A", "A->C", "A->A"}, "A": {"C->C", "A->C", "C->A"}}


class _Bar:
    def set_postfix_str(self, *_):
        pass

    def update(self, *_):
        pass
