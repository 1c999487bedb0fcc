"""PPL four-scenario protocol: released 8-bit protected images, pool swap, scenario mAPs, table script."""

import json
import math
from pathlib import Path

import pytest
import torch

from models.ppl.protocol import (
    PRIVACY_SCENARIOS,
    SCENARIOS,
    hash_images,
    image_quality,
    protect_datamodule,
    protect_uint8,
    scenario_maps,
)

REPO = Path(__file__).resolve().parents[1]


def _shift(eps):
    # a "protector" that pushes every pixel by up to eps (sign pattern), like an l_inf generator
    def protect(x):
        sign = torch.where(torch.arange(x[0].numel()).reshape(x.shape[1:]) % 2 == 0, 1.0, -1.0)
        return (x + eps * sign).clamp(0, 1)

    return protect


@pytest.mark.parametrize("eps", [0.3, 0.1, 7.5 / 255])
def test_protect_uint8_keeps_the_linf_budget_exactly(eps):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 1, 8, 8), generator=g, dtype=torch.uint8)
    out = protect_uint8(_shift(eps), images, batch_size=7)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    diff = (out.float() - images.float()).abs() / 255
    assert float(diff.max()) <= eps + 1e-7  # rounding goes towards the clean pixel, never past the budget
    z = _shift(eps)(images.float() / 255) * 255
    assert torch.all((out.float() - z).abs() < 1)  # and stays within one grey level of the float image


def test_protect_datamodule_swaps_the_shared_pool(fashion_mnist_dir):
    from datamodules import FashionMNISTDataModule

    dm = FashionMNISTDataModule(
        data_dir=str(fashion_mnist_dir), split="retrieval", num_train=32, num_query=16, download=False
    )
    with pytest.raises(RuntimeError, match="setup"):
        protect_datamodule(dm, _shift(0.1))
    dm.setup("fit")
    before = {
        n: (getattr(dm, n).indices.clone(), getattr(dm, n)[0]["image"].clone())
        for n in ("train_set", "query_set")
    }
    originals = protect_datamodule(dm, _shift(0.1), batch_size=50)
    assert len(originals) == 1  # one pool shared by every split, protected once
    assert dm.train_set.images is dm.query_set.images is dm.database_set.images
    for n, (idx, img) in before.items():
        ds = getattr(dm, n)
        assert torch.equal(ds.indices, idx)
        assert not torch.equal(ds[0]["image"], img)
        assert float((ds[0]["image"].float() - img.float()).abs().max()) <= 0.1 * 255


def test_scenario_maps_and_hash_images():
    labels = torch.tensor([0, 0, 1, 1])
    perfect = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    swapped = -perfect  # the protected domain maps every class onto the other one
    codes = {"query_c": perfect, "query_a": swapped, "db_c": perfect, "db_a": swapped}
    maps = scenario_maps(codes, labels, labels)
    assert list(maps) == [name for name, _, _ in SCENARIOS]
    assert maps["C->C"] == pytest.approx(1.0) and maps["A->A"] == pytest.approx(1.0)
    assert maps["C->A"] < 0.6 and maps["A->C"] < 0.6
    images = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    out = hash_images(lambda x: torch.sign(x.flatten(1)[:, :3] - 0.5), images, batch_size=2)
    assert torch.equal(out, torch.sign(images.float().flatten(1)[:, :3] / 255 - 0.5))


def test_image_quality_matches_the_definitions():
    x = torch.full((2, 1, 16, 16), 100, dtype=torch.uint8)
    z = x.clone()
    z[0] += 10  # MSE (10/255)^2
    z[1] += 20
    q = image_quality(x, z, batch_size=1)
    expected = sum(10 * math.log10(1 / (d / 255) ** 2) for d in (10, 20)) / 2
    assert q["psnr"] == pytest.approx(expected, rel=1e-4)
    assert 0 < q["ssim"] <= 1


def test_ppl_table_script_runs_the_whole_protocol(fashion_mnist_dir, tmp_path, monkeypatch):
    import ppl_table

    monkeypatch.chdir(tmp_path)
    data = [
        f"data.init_args.data_dir={fashion_mnist_dir}",
        "data.init_args.num_train=32",
        "data.init_args.batch_size=16",
        "data.init_args.eval_batch_size=64",
        "data.init_args.download=false",
    ]
    argv = ["--bits", "12", "--out", str(tmp_path / "out"), "--ppl-arg", "trainer.max_steps=2"]
    argv += ["--victim-arg", "trainer.max_epochs=1", "--batch-size", "50"]
    for d in data:
        argv += ["--data-arg", d]
    results = ppl_table.main(argv)
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert table == json.loads(json.dumps(results))
    rows = table["bits"]["12"]["rows"]
    # the paper's protocol: ONE generator learned at 8 bits, victims at another code length
    assert table["bits"]["12"]["ppl"]["bits"] == 8
    from models.hashing import ADSH

    victim = ADSH.load_from_checkpoint(tmp_path / "out" / "adsh_C_12" / "final.ckpt", weights_only=True)
    assert victim.bits == 12
    assert [(r["model"], r["trained_on"]) for r in rows] == [
        ("ADSH", "C"),
        ("ADSH", "A"),
        ("DSDH", "C"),
        ("DSDH", "A"),
        ("PPL surrogate", "PPL"),
    ]
    for r in rows:
        assert set(r["map"]) == set(r["ndcg_100"]) == {"C->C", "C->A", "A->C", "A->A"}
        assert all(0 < v <= 1 for v in [*r["map"].values(), *r["ndcg_100"].values()])
    q = table["bits"]["12"]["quality"]
    assert 5 < q["psnr"] < 60 and 0 < q["ssim"] < 1
    md = (tmp_path / "out" / "table.md").read_text()
    assert "| ADSH | A |" in md and "PSNR" in md and "nDCG@100" in md
    assert list((tmp_path / "out" / "wandb").glob("offline-run-*"))  # the wandb table + image grid

    # evaluating the saved final weights instead of training reproduces the row exactly
    out = tmp_path / "out"
    rerun = ["--bits", "12", "--out", str(tmp_path / "again"), "--victims", "adsh", "--train-domains", "C"]
    rerun += ["--ppl-ckpt", str(out / "ppl_8" / "final.ckpt"), "--wandb", "disabled"]
    rerun += ["--victim-ckpt", f"adsh:C={out / 'adsh_C_12' / 'final.ckpt'}"]
    for d in data:
        rerun += ["--data-arg", d]
    again = ppl_table.main(rerun)
    assert again["bits"]["12"]["rows"][0]["map"] == rows[0]["map"]
    assert again["bits"]["12"]["quality"] == pytest.approx(q, rel=1e-5)
    # rows of separate runs (e.g. victims trained in parallel) merge into one table
    merged = ppl_table.main(
        [
            "--merge",
            str(tmp_path / "again" / "table.json"),
            str(out / "table.json"),
            "--out",
            str(tmp_path / "m"),
        ]
        + ["--wandb", "disabled"]
    )
    assert [(r["model"], r["trained_on"]) for r in merged["bits"]["12"]["rows"]] == [
        ("ADSH", "C"),
        ("ADSH", "A"),
        ("DSDH", "C"),
        ("DSDH", "A"),
        ("PPL surrogate", "PPL"),
    ]
    assert "| DSDH | A |" in (tmp_path / "m" / "table.md").read_text()
    # --card writes the table into the card of the generator's own folder, and refuses another model's
    import shutil

    folder = tmp_path / "ppl-fashion-mnist-16bit"
    shutil.copytree(REPO / "checkpoints" / "ppl-fashion-mnist-16bit", folder)
    with pytest.raises(SystemExit, match="not this folder's model"):
        ppl_table.main(
            ["--merge", str(out / "table.json"), "--out", str(tmp_path / "m2"), "--card", str(folder)]
        )
    mine = json.loads(json.dumps(table))
    mine["bits"]["12"]["ppl"]["ckpt"] = "ppl-fashion-mnist-16bit"
    ppl_table.table_card(str(folder), mine, "scripts/ppl_table.py --merge t.json")
    card = (folder / "README.md").read_text()
    worst = ppl_table.worst_privacy_cell(mine)
    assert worst["map"] == max(
        r["map"][s] for r in rows if r["trained_on"] != "PPL" for s in PRIVACY_SCENARIOS[r["trained_on"]]
    )
    assert "## Table 1 at every code length" in card and f"mAP **{worst['map']:.4f}**" in card
    ratio = worst["worst_ratio"]
    adsh_c = next(r for r in rows if (r["model"], r["trained_on"]) == ("ADSH", "C"))
    if ratio["model"] == "ADSH":
        assert ratio["ratio"] == pytest.approx(ratio["map"] / adsh_c["map"]["C->C"])
    assert f"ratio here: **{ratio['ratio']:.4f}**" in card and "the other attacks' worst ratio" in card
    # ... and its privacy cells join the harness's attacks.json, whose worst case the card headlines
    shipped = json.loads((REPO / "checkpoints" / "ppl-fashion-mnist-16bit" / "attacks.json").read_text())
    harness = [r for r in shipped["results"] if not r["attack"].startswith("table1_")]
    report = json.loads((folder / "attacks.json").read_text())
    table_rows = [r for r in report["results"] if r["attack"].startswith("table1_")]
    assert report["results"][: len(harness)] == harness
    assert {r["attack"] for r in table_rows} == {"table1_adsh", "table1_dsdh"}
    assert len(table_rows) == 2 * 3 * 4  # ADSH/DSDH x C/A: 3 privacy cells each, map and map_ratio
    cell = next(r for r in table_rows if r["metric"] == "map" and r["value"] == round(worst["map"], 4))
    assert cell["setting"]["bits"] == 12 and cell["setting"]["scenario"] == worst["scenario"]
    worst_ratio = max(r["value"] for r in report["worst_case"] if r["metric"] == "map_ratio")
    assert worst_ratio >= round(ratio["ratio"], 4)
    assert "table1_" in card.split("## Privacy under attack")[1].split("## Table 1")[0]
    ppl_table.table_card(str(folder), mine, "scripts/ppl_table.py --merge t.json")  # a rerun replaces them
    assert json.loads((folder / "attacks.json").read_text())["results"] == report["results"]
    assert "| ADSH | A |" in card and card.index("Table 1 at every") < card.index("## Threat model")
    # --card-reference: another generator's table (the paper's 8-bit one) as its own section of the card,
    # under a "not these weights" line, without touching the card's attacks; the own model is refused
    before = (folder / "attacks.json").read_text()
    ppl_table.main(
        ["--merge", str(out / "table.json"), "--out", str(tmp_path / "m3"), "--card-reference", str(folder)]
        + ["--wandb", "disabled"]
    )
    card = (folder / "README.md").read_text()
    section = card.split("## Table 1 with the paper's 8-bit generator (not these weights)")[1]
    section = section.split("<!-- privzoo:table1-reference:end -->")[0]
    ref_worst = ppl_table.worst_privacy_cell(table)
    assert "**Not these weights:**" in section and str(out / "ppl_8" / "final.ckpt") in section
    assert "it does not measure those weights" in section and "Measured by" not in section
    assert f"mAP **{ref_worst['map']:.4f}**" in section and "| DSDH | A |" in section
    assert (folder / "attacks.json").read_text() == before
    assert "## Table 1 at every code length" in card  # the own table stays
    with pytest.raises(SystemExit, match="use --card"):
        ppl_table.table_reference_card(str(folder), mine, "scripts/ppl_table.py --merge t.json")
    with pytest.raises(SystemExit, match="VICTIM:DOMAIN=PATH"):
        ppl_table.main(rerun[:-2] + ["--victim-ckpt", "adsh=x.ckpt"])
    with pytest.raises(SystemExit, match="neither a checkpoint file nor a zoo name"):
        ppl_table.main(rerun[:-2] + ["--victim-ckpt", "adsh:C=no-such-victim"])
    from models.hashing import ADSH

    zoo_victim = ppl_table._victim_ckpts(["adsh:C=adsh-fashion-mnist-16bit"])[("adsh", "C")]
    assert isinstance(zoo_victim, ADSH) and zoo_victim.bits == 16  # a shipped victim, loaded offline


def _toy_table(ckpt: str, shift: float, ssim: float) -> dict:
    """A two-code-length table whose every mAP is a known value plus ``shift``."""
    bits = {}
    for b in (8, 16):
        rows = []
        for model, base in (("ADSH", 0.5), ("DSDH", 0.4)):
            for domain, cc in (("C", 0.8), ("A", 0.6)):
                maps = {"C->C": cc, "C->A": base + shift, "A->C": base + 0.1 + shift}
                maps["A->A"] = base - 0.1 + shift
                if domain == "A":
                    maps["A->A"] = 0.7
                rows.append({"model": model, "trained_on": domain, "map": maps})
        rows.append({"model": "PPL surrogate", "trained_on": "PPL", "map": dict.fromkeys(maps, 0.3)})
        bits[str(b)] = {"ppl": {"bits": 8, "ckpt": ckpt}, "quality": {"ssim": ssim}, "rows": rows}
    return {"dataset": "fashion_mnist", "bits": bits}


def test_compare_tables_counts_the_most_private_generator_per_cell(tmp_path):
    import ppl_table

    from models.ppl.protocol import compare_markdown, compare_tables

    a, b = _toy_table("a.ckpt", 0.0, 0.75), _toy_table("b.ckpt", -0.05, 0.64)
    b["bits"]["16"]["rows"][0]["map"]["C->A"] = 0.9  # b loses one cell: ADSH-C 16 bits C->A
    cmp = compare_tables({"a": a, "b": b})
    n = 2 * 2 * 2 * 3  # code lengths x victims x domains x privacy cells per domain
    assert cmp["n_cells"] == n
    # the A-trained victims' C->C (0.6 in both) is a tie: a win for neither
    ties = [c for c in cmp["cells"] if len(c["best"]) == 2]
    assert len(ties) == 4 and {c["scenario"] for c in ties} == {"C->C"}
    assert {k: s["wins"] for k, s in cmp["summary"].items()} == {"a": 1, "b": n - 5}
    lost = next(c for c in cmp["cells"] if c["best"] == ["a"])
    assert (lost["bits"], lost["model"], lost["trained_on"], lost["scenario"]) == (16, "ADSH", "C", "C->A")
    assert cmp["summary"]["b"]["worst_map"]["map"] == 0.9
    # the worst ratio is over the clean-trained C->C of the same victim and code length
    assert math.isclose(cmp["summary"]["b"]["worst_ratio"]["ratio"], 0.9 / 0.8)
    assert cmp["summary"]["a"]["ssim"] == {8: 0.75, 16: 0.75}
    assert cmp["summary"]["a"]["utility"]["DSDH-A 16 bits A->A"] == 0.7
    md = compare_markdown(cmp)
    assert f"| b | {n - 5} of {n} cells | 0.9000 (ADSH-C 16 bits C->A)" in md
    assert "| 16 | ADSH-C | C->A | **0.5000** | 0.9000 |" in md
    assert "| 16 | ADSH-A | C->C | **0.6000** | **0.6000** |" in md
    with pytest.raises(ValueError, match="at least two"):
        compare_tables({"a": a})

    # the script: LABEL=TABLE_JSON pairs in, compare.json / compare.md out; bad pairs are named
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    argv = ["--compare", f"a={tmp_path / 'a.json'}", f"b={tmp_path / 'b.json'}", "--out", str(tmp_path / "o")]
    got = ppl_table.main(argv)
    assert got["summary"]["b"]["wins"] == n - 5
    saved = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert saved["sources"] == {"a": str(tmp_path / "a.json"), "b": str(tmp_path / "b.json")}
    assert saved["command"].startswith("scripts/ppl_table.py --compare")
    assert (tmp_path / "o" / "compare.md").read_text() == md
    with pytest.raises(SystemExit, match="expected LABEL=TABLE_JSON"):
        ppl_table.main(["--compare", str(tmp_path / "a.json"), f"b={tmp_path / 'b.json'}"])
    with pytest.raises(SystemExit, match="given twice"):
        ppl_table.main(["--compare", f"a={tmp_path / 'a.json'}", f"a={tmp_path / 'b.json'}"])
    with pytest.raises(SystemExit, match="cannot read"):
        ppl_table.main(["--compare", f"a={tmp_path / 'a.json'}", f"b={tmp_path / 'missing.json'}"])
