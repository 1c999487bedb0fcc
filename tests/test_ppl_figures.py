"""PPL figures 3, 5, 6: the subcommands end to end on a tiny Fashion-MNIST, the mixed pool, errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from models.ppl.figures import DEFAULT_BACKBONES, check_backbones, load_protector, mixed_pool
from models.ppl.protocol import SCENARIOS, released_pool, victim_row

NAMES = [n for n, _, _ in SCENARIOS]


def _argv(data_dir, out, *extra):
    data = [
        f"data.init_args.data_dir={data_dir}",
        "data.init_args.num_train=32",
        "data.init_args.batch_size=16",
        "data.init_args.eval_batch_size=64",
        "data.init_args.download=false",
    ]
    argv = [*extra, "--bits", "8", "--out", str(out), "--ppl-arg", "trainer.max_steps=2"]
    argv += ["--victim-arg", "trainer.max_epochs=1", "--batch-size", "50"]
    for d in data:
        argv += ["--data-arg", d]
    return argv


def _check_files(out, figure, results):
    assert json.loads((out / f"{figure}.json").read_text()) == json.loads(json.dumps(results))
    md = (out / f"{figure}.md").read_text()
    assert "reduced scale" in md and "trainer.max_epochs=1" in md and "nDCG@100" in md
    assert "data.init_args.num_train=32" in md and "data_dir" not in md
    picture = np.asarray(Image.open(out / f"{figure}.png"))
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert picture.std() > 0  # a drawn plot, not a blank canvas
    for row in results["rows"]:
        assert list(row["map"]) == list(row["ndcg_100"]) == NAMES
        assert all(0 < v <= 1 for v in [*row["map"].values(), *row["ndcg_100"].values()])
    return md


def test_transfer_scores_each_backbone_trained_on_clean_and_protected(fashion_mnist_dir, tmp_path):
    import ppl_figures

    from models.hashing import ADSH

    out = tmp_path / "out"
    argv = _argv(fashion_mnist_dir, out, "transfer", "--victims", "adsh")
    results = ppl_figures.main(argv + ["--backbones", "resnet10t", "mobilenetv3_small_050"])
    assert [(r["victim"], r["backbone"], r["trained_on"]) for r in results["rows"]] == [
        ("ADSH", "resnet10t", "C"),
        ("ADSH", "resnet10t", "A"),
        ("ADSH", "mobilenetv3_small_050", "C"),
        ("ADSH", "mobilenetv3_small_050", "A"),
    ]
    md = _check_files(out, "transfer", results)
    assert "| ADSH | mobilenetv3_small_050 | A |" in md and "PSNR" in md
    assert results["ppl"]["ckpt"] == str(out / "ppl_8" / "final.ckpt")  # trained here: none was given
    victim = ADSH.load_from_checkpoint(
        out / "adsh_mobilenetv3_small_050_A_8" / "final.ckpt", weights_only=True
    )
    assert victim.hparams.backbone == "mobilenetv3_small_050" and victim.bits == 8
    assert list((out / "wandb").glob("offline-run-*"))  # the wandb table + plot


def test_default_backbones_run_at_28x28_with_the_feature_width_they_report():
    from models.backbones import create_backbone

    # MobileNetV3 / GhostNet have a conv head after pooling: timm's num_features (576) is not their output
    assert check_backbones([*DEFAULT_BACKBONES, "mobilenetv3_small_050", "ghostnet_050"])
    assert create_backbone("mobilenetv3_small_100", in_chans=1).num_features == 1024
    assert create_backbone("resnet18", in_chans=1).num_features == 512


def test_mixed_pool_protects_round_p_n_nested_training_rows():
    pool = torch.zeros(40, 1, 2, 2, dtype=torch.uint8)
    protected = torch.full_like(pool, 255)
    train_idx = torch.arange(10, 30)
    previous = set()
    for share, k in ((0.0, 0), (0.25, 5), (0.5, 10), (0.62, 12), (1.0, 20)):
        mixed, rows = mixed_pool(pool, protected, train_idx, share, seed=3)
        changed = set((mixed.flatten(1) == 255).all(1).nonzero().flatten().tolist())
        assert len(rows) == k and changed == set(rows.tolist()) <= set(train_idx.tolist())
        assert previous <= changed  # a larger share protects a superset of the smaller one
        previous = changed
    assert not torch.equal(
        mixed_pool(pool, protected, train_idx, 0.5, 0)[1], mixed_pool(pool, protected, train_idx, 0.5, 1)[1]
    )
    assert pool.max() == 0  # the clean pool itself is untouched


def test_ratio_share_0_and_1_are_the_clean_and_protected_victims(fashion_mnist_dir, tmp_path):
    import ppl_figures

    out = tmp_path / "out"
    argv = _argv(fashion_mnist_dir, out, "ratio", "--victims", "dsdh", "--shares", "0", "0.5", "1")
    results = ppl_figures.main(argv + ["--wandb", "disabled"])
    assert [(r["share"], r["protected_rows"], r["train_rows"]) for r in results["rows"]] == [
        (0.0, 0, 32),
        (0.5, 16, 32),
        (1.0, 32, 32),
    ]
    md = _check_files(out, "ratio", results)
    assert "| DSDH | 0.5 | 16 | 32 |" in md
    # the same seeded victims trained by the Table-1 protocol on all-clean / all-protected training images
    args = ppl_figures.parse_args(argv)
    setup = ppl_figures._setup(args)
    protector = load_protector(results["ppl"]["ckpt"])
    released = released_pool(setup.config("ppl"), setup.data_args, protector.protect, tmp_path / "t", 50)
    for domain, share_row in (("C", results["rows"][0]), ("A", results["rows"][2])):
        row = victim_row(
            setup.config("dsdh"),
            setup.victim_overrides("dsdh"),
            tmp_path / f"dsdh_{domain}",
            domain,
            released["pool"],
            released["protected"],
            batch_size=50,
        )
        assert row["map"] == share_row["map"]
    # `card`: only a figure of the folder's own generator goes into its card, once per figure
    folder = tmp_path / "ppl-tiny"
    protector.save_pretrained(folder, model_card_kwargs={"name": "ppl-tiny"})
    with pytest.raises(SystemExit, match="goes only into that generator's card"):
        ppl_figures.main(["card", str(folder), str(out / "ratio.json")])
    mine = tmp_path / "ratio_of_ppl_tiny.json"
    mine.write_text(json.dumps({**results, "ppl": {**results["ppl"], "ckpt": "ppl-tiny"}}))
    for _ in range(2):
        assert ppl_figures.main(["card", str(folder), str(mine)])["sections"] == [results["title"]]
    card = (folder / "README.md").read_text()
    assert card.count(f"## {results['title']}") == 1 and "| DSDH | 0.5 | 16 | 32 |" in card
    assert f"Measured by `{results['command']}`" in card


def test_victim_row_train_released_must_match_the_pool(fashion_mnist_dir, tmp_path):
    import ppl_figures

    setup = ppl_figures._setup(ppl_figures.parse_args(_argv(fashion_mnist_dir, tmp_path, "ratio")))
    released = released_pool(setup.config("ppl"), setup.data_args, lambda x: x, tmp_path / "t", 50)
    pool = released["pool"]
    assert torch.equal(released["protected"], pool)  # the identity "protector" releases the clean pool
    with pytest.raises(ValueError, match="train_released is torch.uint8 .10, 1, 28, 28.: give a uint8 pool"):
        victim_row(
            setup.config("dsdh"), setup.victim_overrides("dsdh"), tmp_path, "C", pool, pool,
            train_released=pool[:10],
        )  # fmt: skip


def test_epsilon_trains_a_generator_per_budget_and_the_clean_victim_once(fashion_mnist_dir, tmp_path):
    import ppl_figures

    from models.hashing import ADSH

    out = tmp_path / "out"
    argv = _argv(fashion_mnist_dir, out, "epsilon", "--victims", "adsh", "--epsilons", "0.1", "0.3")
    argv += [
        "--victim-arg",
        "adsh:model.init_args.num_samples=24",
        "--victim-arg",
        "dsdh:model.init_args.mu=9",
    ]
    results = ppl_figures.main(argv + ["--l2-epsilons", "2.0"])
    points = [(p["norm"], p["epsilon"]) for p in results["points"]]
    assert points == [("inf", 0.1), ("inf", 0.3), ("2", 2.0)]
    for p in results["points"]:
        protector = load_protector(p["ckpt"])
        assert (protector.norm, protector.epsilon) == (p["norm"], p["epsilon"])
        assert 5 < p["quality"]["psnr"] < 80 and 0 < p["quality"]["ssim"] <= 1
    assert [(r["norm"], r["epsilon"], r["trained_on"]) for r in results["rows"]] == [
        (n, e, d) for n, e in points for d in ("C", "A")
    ]
    md = _check_files(out, "epsilon", results)
    assert "| l_2 | 2 |" in md and "SSIM" in md and "adsh:model.init_args.num_samples=24" in md
    # a VICTIM:key=value override reaches that victim only (DSDH's mu would not even parse for ADSH)
    assert (
        ADSH.load_from_checkpoint(out / "adsh_C_8" / "final.ckpt", weights_only=True).hparams.num_samples
        == 24
    )
    clean = [r for r in results["rows"] if r["trained_on"] == "C"]
    # one clean-trained victim, scored against every budget: its clean->clean mAP cannot change
    assert [r["victim_ckpt"] for r in clean] == [None] + [str(out / "adsh_C_8" / "final.ckpt")] * 2
    assert len({r["map"]["C->C"] for r in clean}) == 1
    assert sorted(p.name for p in out.glob("adsh_*")) == [
        "adsh_A_8_l2_2",
        "adsh_A_8_linf_0.1",
        "adsh_A_8_linf_0.3",
        "adsh_C_8",
    ]

    # given generators (EPS=PATH) and the clean victim: the same rows for that budget
    again = _argv(
        fashion_mnist_dir, tmp_path / "again", "epsilon", "--victims", "adsh", "--wandb", "disabled"
    )
    again += [
        "--ppl-ckpt",
        f"0.3={results['points'][1]['ckpt']}",
        "--victim-arg",
        "adsh:model.init_args.num_samples=24",
    ]
    again += ["--victim-ckpt", f"adsh:C={out / 'adsh_C_8' / 'final.ckpt'}"]
    rerun = ppl_figures.main(again)
    assert [(p["norm"], p["epsilon"]) for p in rerun["points"]] == [("inf", 0.3)]
    assert rerun["points"][0]["quality"] == results["points"][1]["quality"]
    assert [r["map"] for r in rerun["rows"]] == [r["map"] for r in results["rows"][2:4]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ratio", "--shares", "0", "1.5"], r"in \[0, 1\]"),
        (["epsilon", "--epsilons", "0.1", "0"], "> 0"),
        (["epsilon", "--l2-epsilons", "-1"], "l2 epsilon"),
        (
            ["transfer", "--backbones", "resnet10t", "mobilenetv3_smal_050"],
            "did you mean mobilenetv3_small_050",
        ),
        (["transfer", "--backbones", "densenet121"], "does not run on 1x28x28"),
        (["transfer", "--backbones", "resnet10t", "--ppl-ckpt", "nope.ckpt"], "no such checkpoint file"),
        (["ratio", "--ppl-ckpt", "nope.ckpt"], "zoo PPL names"),
        (["epsilon", "--ppl-ckpt", "0.1"], "EPS=PATH"),
        (["epsilon", "--ppl-ckpt", "big=a.ckpt"], "EPS=PATH"),
        (["epsilon", "--ppl-ckpt", "0.2=ppl-fashion-mnist-16bit"], "trained with epsilon 0.3"),
        (["ratio", "--victim-arg", "cnn:trainer.max_epochs=1"], "VICTIM:key=value"),
        (["ratio", "--victim-arg", "trainer.max_epochs"], "not key=value"),
        (["levers", "--levers", "paper", "fastest"], "define your own as NAME:key=value"),
        (["levers", "--levers", "lr:model.init_args.lr_generator"], "expected NAME:key=value"),
        (["levers", "--levers", "paper", "paper"], "given twice"),
        (["levers", "--levers", "paper", "--ppl-ckpt", "ensemble_small_cnn=x.ckpt"], "is not in --levers"),
    ],
)
def test_bad_inputs_stop_with_a_clear_error(tmp_path, argv, message):
    import ppl_figures

    with pytest.raises(SystemExit, match=message):
        ppl_figures.main([*argv, "--out", str(tmp_path), "--wandb", "disabled"])
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


def test_only_clean_victims_are_reused_across_budgets(tmp_path):
    import ppl_figures

    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"")
    with pytest.raises(SystemExit, match="only clean-trained"):
        ppl_figures.main(["epsilon", "--victim-ckpt", f"adsh:A={ckpt}", "--out", str(tmp_path / "o")])


def test_levers_train_one_generator_per_lever_against_one_clean_victim(fashion_mnist_dir, tmp_path):
    import ppl_figures

    from models.ppl.figures import DEFAULT_LEVERS

    assert DEFAULT_LEVERS["paper"] == ()  # the paper's setting is the reference point
    out = tmp_path / "out"
    argv = _argv(fashion_mnist_dir, out, "levers", "--victims", "adsh")
    argv += ["--victim-arg", "adsh:model.init_args.num_samples=24"]
    argv += ["--levers", "paper", "lambda_warmup_100", "big_eps:model.init_args.epsilon=0.5"]
    results = ppl_figures.main(argv)
    assert [p["lever"] for p in results["points"]] == ["paper", "lambda_warmup_100", "big_eps"]
    hp = [load_protector(p["ckpt"]).hparams for p in results["points"]]
    assert [h.lambda_warmup_steps for h in hp] == [0, 100, 0]  # each lever alone
    assert [h.epsilon for h in hp] == [0.3, 0.3, 0.5] and {h.bits for h in hp} == {8}
    assert results["points"][2]["overrides"] == ["--model.init_args.epsilon", "0.5"]
    assert [(r["lever"], r["trained_on"]) for r in results["rows"]] == [
        (lever, d) for lever in ("paper", "lambda_warmup_100", "big_eps") for d in ("C", "A")
    ]
    clean = [r for r in results["rows"] if r["trained_on"] == "C"]
    assert len({r["map"]["C->C"] for r in clean}) == 1  # one clean-trained victim for every lever
    md = _check_files(out, "levers", results)
    assert "| lever |" in md and "- lambda_warmup_100: `--model.init_args.lambda_warmup_steps 100`" in md

    # into any PPL card, under a line saying that it measures the method, not that card's weights
    folder = tmp_path / "ppl-tiny"
    load_protector(results["points"][0]["ckpt"]).save_pretrained(
        folder, model_card_kwargs={"name": "ppl-tiny"}
    )
    for _ in range(2):
        assert ppl_figures.main(["card", str(folder), str(out / "levers.json")])["sections"] == [
            results["title"]
        ]
    card = (folder / "README.md").read_text()
    assert card.count(f"## {results['title']}") == 1 and "**Not these weights:**" in card
    assert "- lambda_warmup_100:" in card and "it does not measure those weights" in card

    # a generator given for a lever is scored, not retrained
    again = _argv(fashion_mnist_dir, tmp_path / "again", "levers", "--victims", "adsh", "--wandb", "disabled")
    again += ["--levers", "paper", "--ppl-ckpt", f"paper={results['points'][0]['ckpt']}"]
    again += ["--victim-arg", "adsh:model.init_args.num_samples=24"]
    again += ["--victim-ckpt", f"adsh:C={out / 'adsh_C_8' / 'final.ckpt'}"]
    rerun = ppl_figures.main(again)
    assert rerun["points"][0]["quality"] == results["points"][0]["quality"]
    assert not (tmp_path / "again" / "ppl_8_paper").exists()
    assert [r["map"] for r in rerun["rows"]] == [r["map"] for r in results["rows"][:2]]


def _lever_run(levers, command, cc=0.7, shift=0.0, scale="Victims at a reduced scale: trainer.max_epochs=1"):
    """A levers figure as ppl_figures writes it, with made-up numbers (for the merge only)."""
    points, rows = [], []
    for k, lever in enumerate(levers):
        q = {"psnr": 15.0, "ssim": 0.5 + 0.01 * k}
        sur = {n: 0.3 + 0.01 * k + shift for n in NAMES}
        points.append(
            {"lever": lever, "overrides": [], "epsilon": 0.3, "norm": "inf", "bits": 8, "ckpt": "x"}
        )
        points[-1] |= {"quality": q, "surrogate_map": sur}
        for domain in ("C", "A"):
            scores = {n: (cc if n == "C->C" and domain == "C" else 0.2 + 0.02 * k + shift) for n in NAMES}
            rows.append(
                {"victim": "ADSH", "lever": lever, "trained_on": domain, "map": scores, "ndcg_100": scores}
                | {"fit_s": None}
            )
    return {
        "figure": "levers",
        "title": "levers",
        "dataset": "fashion_mnist",
        "bits": 16,
        "victim_scale": scale,
        "columns": ["victim", "lever", "trained_on"],
        "rows": rows,
        "points": points,
        "command": command,
    }


def test_merge_joins_lever_runs_that_score_the_same_clean_victim(tmp_path):
    import ppl_figures

    old, new = _lever_run(["paper", "ensemble"], "cmd old"), _lever_run(["paper", "steps_4"], "cmd new")
    new["points"][1]["surrogate_map"] = {n: 0.9 for n in NAMES}  # steps_4 differs; paper is the same rerun
    paths = []
    for name, run in (("old", old), ("new", new)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(run))
    out = tmp_path / "merged"
    merged = ppl_figures.main(["merge", *map(str, paths), "--out", str(out), "--wandb", "disabled"])
    assert [p["lever"] for p in merged["points"]] == ["paper", "ensemble", "steps_4"]
    assert [(r["lever"], r["trained_on"]) for r in merged["rows"]] == [
        (lever, d) for lever in ("paper", "ensemble", "steps_4") for d in ("C", "A")
    ]
    assert merged["sources"] == ["cmd old", "cmd new"] and merged["command"].startswith(
        "scripts/ppl_figures.py merge"
    )
    assert json.loads((out / "levers.json").read_text()) == merged
    md = (out / "levers.md").read_text()
    assert "- `cmd old`" in md and "- `cmd new`" in md and "| steps_4 |" in md
    assert np.asarray(Image.open(out / "levers.png")).dtype == np.uint8
    # a merge of merges keeps every run's own command once
    again = ppl_figures.main(
        ["merge", str(out / "levers.json"), str(paths[1]), "--out", str(tmp_path / "m2")]
    )
    assert again["sources"] == ["cmd old", "cmd new"] and again["rows"] == merged["rows"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r["rows"][0]["map"].update({"C->C": 0.71}),
            "different clean-trained ADSH victims.*--victim-ckpt",
        ),
        (
            lambda r: r["rows"][1]["map"].update({"A->A": 0.99}),
            "row .*paper.*two runs with different numbers",
        ),
        (lambda r: r["points"][0]["surrogate_map"].update({"C->C": 0.99}), "point 'paper'.*two runs"),
        (lambda r: r.update(victim_scale="other"), "differs from run 0 in 'victim_scale'"),
        (lambda r: r.update(figure="transfer"), "differs from run 0 in 'figure'"),
    ],
)
def test_merge_refuses_runs_that_do_not_belong_together(tmp_path, change, message):
    import ppl_figures

    a, b = _lever_run(["paper"], "a"), _lever_run(["paper", "x"], "b")
    change(b)
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, run in zip(paths, (a, b), strict=True):
        path.write_text(json.dumps(run))
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=message):
        ppl_figures.main(["merge", *map(str, paths), "--out", str(out), "--wandb", "disabled"])
    assert not out.exists()  # nothing written


def test_merge_names_unreadable_or_foreign_files(tmp_path):
    import ppl_figures

    good = tmp_path / "good.json"
    good.write_text(json.dumps(_lever_run(["paper"], "a")))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    for name, message in (
        ("bad.json", "cannot read .*bad.json"),
        ("other.json", "other.json is not a figure"),
    ):
        with pytest.raises(SystemExit, match=message):
            ppl_figures.main(["merge", str(good), str(tmp_path / name), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="at least two runs"):
        ppl_figures.main(["merge", str(good), "--out", str(tmp_path / "o")])
    t = _lever_run(["paper"], "t") | {"figure": "transfer"}
    (tmp_path / "t.json").write_text(json.dumps(t))
    with pytest.raises(SystemExit, match="only the figures that train a generator per point"):
        ppl_figures.main(
            ["merge", str(tmp_path / "t.json"), str(tmp_path / "t.json"), "--out", str(tmp_path / "o")]
        )
