"""SCA: refusal of NaN inputs, the decoy ambiguation option and the trade-off table (scripts/sca_table.py)."""

import json

import pytest
import torch
from fixtures import quiet_trainer

from models.sca import SCA, ambiguate_codes, decoy_ambiguate
from models.sca.ambiguation import match_decoys


def _sparse(b, length, nnz, g):
    idx = torch.rand(b, length, generator=g).argsort(1)[:, :nnz]
    vals = torch.randn(b, nnz, generator=g)
    vals = vals + vals.sign() * 0.5  # non-zero
    return torch.zeros(b, length).scatter_(1, idx, vals)[:, None]  # [B, 1, L]


# ----------------------------------------------------------------------------------------------------
# bad input: NaN images / codes
# ----------------------------------------------------------------------------------------------------
def test_nan_images_and_codes_are_refused(tiny_sca):
    model = tiny_sca().eval()
    x = torch.rand(3, 1, 28, 28)
    codes = model.encode(x)
    bad = x.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"images contain 1 NaN / infinite entries \(first rows \[1\]\)"):
        model.encode(bad)
    bad[1, 0, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN / infinite"):
        model.release(bad, sp=4)
    nan_codes = codes.clone()
    nan_codes[2, 0] = float("nan")
    for mechanism in ("paper", "decoy"):
        with pytest.raises(ValueError, match=r"codes contain 1 NaN / infinite entries \(first rows \[2\]\)"):
            model.ambiguate(nan_codes, 4, mechanism=mechanism, pool=codes)
    with pytest.raises(ValueError, match="NaN"):
        model.decode(nan_codes)
    with pytest.raises(ValueError, match="NaN"):
        ambiguate_codes(nan_codes.view(3, 1, 32), 4, model.quantiles, model.ratios)
    with pytest.raises(ValueError, match="decoy pool codes contain"):
        model.ambiguate(codes, 4, mechanism="decoy", pool=nan_codes)


# ----------------------------------------------------------------------------------------------------
# decoy ambiguation
# ----------------------------------------------------------------------------------------------------
def test_decoy_entries_are_real_codes_entries_off_the_support():
    g = torch.Generator().manual_seed(0)
    codes, pool = _sparse(20, 32, 4, g), _sparse(50, 32, 4, g)
    for sp in (2, 4, 11):
        public = decoy_ambiguate(codes, sp, pool, torch.Generator().manual_seed(sp))
        support = codes != 0
        assert torch.equal(public[support], codes[support])  # purification stays exact
        assert ((public != 0).sum(-1) == 4 + sp).all()
        rows, _, cols = ((public != 0) & ~support).nonzero(as_tuple=True)
        # every decoy entry is the value of some pool code at that very position
        assert all(bool((pool[:, 0, c] == public[r, 0, c]).any()) for r, c in zip(rows, cols, strict=True))
        # a server holding the pool recovers the support exactly: the pool is the data owner's secret
        assert torch.equal(match_decoys(public, pool), support)
    again = decoy_ambiguate(codes, 11, pool, torch.Generator().manual_seed(11))
    torch.testing.assert_close(again, decoy_ambiguate(codes, 11, pool, torch.Generator().manual_seed(11)))


def test_sp_equal_to_a_disjoint_decoys_size_superposes_the_whole_decoy():
    codes = torch.zeros(1, 1, 8)
    codes[0, 0, :2] = torch.tensor([3.0, -2.0])
    pool = torch.zeros(1, 1, 8)
    pool[0, 0, 4:7] = torch.tensor([1.5, -4.0, 2.5])
    public = decoy_ambiguate(codes, 3, pool)
    torch.testing.assert_close(public, codes + pool)
    # a decoy on the code's own support is skipped there, the rest of it is used
    pool2 = torch.zeros(1, 1, 8)
    pool2[0, 0, [0, 5, 6]] = torch.tensor([9.0, 1.0, -1.0])
    public = decoy_ambiguate(codes, 2, pool2)
    assert public[0, 0, 0] == 3.0 and torch.equal(public[0, 0, 5:7], torch.tensor([1.0, -1.0]))


def test_decoy_errors_name_the_problem_and_the_fix(tiny_sca):
    g = torch.Generator().manual_seed(0)
    codes = _sparse(4, 32, 4, g)
    with pytest.raises(ValueError, match="needs a decoy pool"):
        decoy_ambiguate(codes, 4, None)
    with pytest.raises(ValueError, match="needs a decoy pool"):
        decoy_ambiguate(codes, 4, torch.zeros(5, 1, 32))
    with pytest.raises(ValueError, match="another model"):
        decoy_ambiguate(codes, 4, _sparse(5, 64, 4, g))
    with pytest.raises(ValueError, match="L - Sx"):
        decoy_ambiguate(codes, 29, _sparse(5, 32, 4, g))
    narrow = torch.zeros(5, 1, 32)
    narrow[:, 0, :3] = 1.0  # informative on 3 positions only: cannot fill 6
    with pytest.raises(ValueError, match="did not fill sp=6 .* lower sp or use a larger pool"):
        decoy_ambiguate(torch.zeros(2, 1, 32).index_fill_(2, torch.tensor([10]), 1.0), 6, narrow)
    model = tiny_sca(ambiguation="decoy").eval()  # no pool
    x = torch.rand(3, 1, 28, 28)
    with pytest.raises(ValueError, match=r"needs a decoy pool.*set_decoy_pool"):
        model.release(x, sp=4)
    with pytest.raises(ValueError, match=r"\[N, maps \* L = 32\] of this model.*another model"):
        model.ambiguate(model.encode(x), 4, pool=torch.zeros(5, 64))
    with pytest.raises(ValueError, match="decoy_pool_size"):
        model.set_decoy_pool(model.encode(x))
    with pytest.raises(ValueError, match="unknown ambiguation"):
        tiny_sca(ambiguation="gaussian")
    with pytest.raises(ValueError, match="unknown ambiguation mechanism"):
        model.ambiguate(model.encode(x), 4, mechanism="gaussian")
    sized = tiny_sca(ambiguation="decoy", decoy_pool_size=10).eval()
    with pytest.raises(ValueError, match="holds a decoy pool of 10 codes .* got 3"):
        sized.set_decoy_pool(sized.encode(x))


def test_paper_mechanism_stays_the_default_and_unchanged(tiny_sca):
    torch.manual_seed(0)
    model = tiny_sca().eval()
    assert model.hparams.ambiguation == "paper" and model.decoy_pool is None
    assert "decoy_pool" not in model.state_dict()  # old paper-mechanism weights load strictly
    codes = model.encode(torch.rand(4, 1, 28, 28))
    public = model.ambiguate(codes, 8, torch.Generator().manual_seed(5))
    expected = ambiguate_codes(
        codes.view(4, 1, 32), 8, model.quantiles, model.ratios, torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(public, expected.flatten(1), rtol=0, atol=0)


def test_decoy_model_releases_with_its_pool_and_reloads_it(tiny_sca, tmp_path):
    torch.manual_seed(0)
    model = tiny_sca(ambiguation="decoy", decoy_pool_size=12, transform_iterations=1).eval()
    model.transform.copy_(torch.linalg.qr(torch.randn(32, 32))[0][None])  # supports spread over positions
    with torch.no_grad():
        model.set_decoy_pool(model.encode(torch.rand(12, 1, 28, 28)))
        x = torch.rand(5, 1, 28, 28)
        codes = model.encode(x)
        public = model.release(x, sp=4, generator=torch.Generator().manual_seed(2))
        added = (public != 0) & (codes == 0)
        pool = model.decoy_pool.flatten(1)
        rows, cols = added.nonzero(as_tuple=True)
        assert len(rows) == 5 * 4
        assert all(bool((pool[:, c] == public[r, c]).any()) for r, c in zip(rows, cols, strict=True))
        model.save_pretrained(tmp_path / "decoy")
        loaded = SCA.from_pretrained(tmp_path / "decoy")
        assert loaded.hparams.ambiguation == "decoy"
        torch.testing.assert_close(loaded.decoy_pool, model.decoy_pool, rtol=0, atol=0)
        again = loaded.release(x, sp=4, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(again, public, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------
# the trade-off table
# ----------------------------------------------------------------------------------------------------
def test_tradeoff_table_on_tiny_inputs(tiny_sca, fashion_mnist_dir, tmp_path):
    import sca_table

    model = tiny_sca(code_length=64, sx=8, sp=8)
    model.transform.copy_(torch.linalg.qr(torch.randn(64, 64))[0][None])
    trainer = quiet_trainer(max_epochs=0)
    trainer.strategy.connect(model)
    ckpt = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(ckpt)
    args = [
        "--ckpt",
        str(ckpt),
        "--data-dir",
        str(fashion_mnist_dir),
        "--tradeoff",
        "--tradeoff-sp",
        "4",
        "8",
    ]
    args += ["--fit", "40", "--holdout", "10", "--epochs", "1", "--limit", "40", "--num-query", "10"]
    args += ["--noise-entries", "500", "--noise-epochs", "1", "--decoy-pool", "30", "--sq", "2"]
    parts = []
    for mechanism in ("paper", "decoy"):
        out = tmp_path / mechanism
        result = sca_table.main(args + ["--mechanisms", mechanism, "--out", str(out), "--no-wandb"])
        assert [(r["mechanism"], r["sp"]) for r in result["rows"]] == [(mechanism, 4), (mechanism, 8)]
        parts.append(str(out / "tradeoff.json"))
    combined = sca_table.main(["--combine", *parts, "--out", str(tmp_path / "all")])
    rows = combined["rows"]
    # --search-only: the same search columns (same split and seeds) without the attackers
    search_args = [a for a in args if a != "--tradeoff"] + ["--tradeoff", "--search-only", "--no-wandb"]
    only = sca_table.main(search_args + ["--out", str(tmp_path / "search")])
    assert [(r["mechanism"], r["sp"]) for r in only["rows"]] == [("none", 0)] + [
        (r["mechanism"], r["sp"]) for r in rows
    ]
    assert only["rows"][0]["search"] == combined["search_sp0"]
    assert [r["search"] for r in only["rows"][1:]] == [r["search"] for r in rows]
    assert (tmp_path / "search" / "search.md").read_text().count("| decoy |") == 2
    assert len(rows) == 4 and set(combined["first_sp_meeting_target"]) == {"paper", "decoy"}
    auth = {r["authorized"]["nmse"] for r in rows}
    assert len(auth) == 1  # purification is exact for both mechanisms at every Sp
    for r in rows:
        assert r["strongest_nmse"] == min(a["nmse"] for a in r["attacks"].values())
        assert set(r["attacks"]) >= {"inversion_mlp", "inversion_conv", "posterior_mean"}
        assert 0 <= r["search"]["recall"] <= 1 and r["search"]["sq"] == 2 and 0.0 <= r["auc"] <= 1.0
        assert ("pool_leaked" in r) == (r["mechanism"] == "decoy")
        assert 0 < r["search"]["ndcg_100"] <= 1 and 0 < r["search"]["faiss_ndcg_100"] <= 1
    saved = json.loads((tmp_path / "all" / "tradeoff.json").read_text())
    assert saved["rows"] == rows and saved["settings"]["fit"] == 40
    md = (tmp_path / "all" / "tradeoff.md").read_text()
    assert md.count("| decoy |") == 4 and "40 + 10 (early stopping)" in md and "nDCG@100" in md
    from PIL import Image

    image = Image.open(tmp_path / "all" / "tradeoff.png")
    assert image.mode == "RGB" and image.size[0] > 100
    assert list((tmp_path / "all" / "wandb").glob("offline-run-*"))
    # the table goes into a checkpoint folder's card, once (a re-run replaces it), with its commands
    folder = tmp_path / "card"
    model.save_pretrained(folder, model_card_kwargs={"name": "sca-tiny"})
    for _ in range(2):
        sca_table.main(
            ["--combine", *parts, "--out", str(tmp_path / "all"), "--no-wandb", "--card", str(folder)]
        )
    card = (folder / "README.md").read_text()
    sca_table.main(search_args + ["--out", str(tmp_path / "search"), "--card", str(folder)])
    card = (folder / "README.md").read_text()
    assert card.count("## Private search: recall@10 and nDCG@100") == 1 and "--search-only" in card
    title = "## Ambiguation trade-off (attackers: 40 images, 1 epochs)"
    assert card.count(title) == 1 and card.count("<!-- privzoo:tradeoff-fit40-epochs1:start -->") == 1
    assert card.index(title) < card.index("## Threat model and limits")
    assert "--mechanisms decoy --out runs/sca/tradeoff_1" in card and "not** shipped" in card
    assert "--combine runs/sca/tradeoff_0/tradeoff.json runs/sca/tradeoff_1/tradeoff.json" in card
    from models.cards import StaleCardError, update_card_section

    with pytest.raises(ValueError, match="slug"):
        update_card_section(folder, "Trade Off", "t", "b", "s")
    (folder / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(StaleCardError, match="other weights"):
        update_card_section(folder, "tradeoff", "t", "b", "s")


# ----------------------------------------------------------------------------------------------------
# ONNX export of the client side
# ----------------------------------------------------------------------------------------------------
def _spread_tiny(tiny_sca, **kw):
    torch.manual_seed(0)
    model = tiny_sca(**kw).eval()
    model.transform.copy_(torch.linalg.qr(torch.randn(32, 32))[0][None])
    with torch.no_grad():
        feats = model.features(torch.rand(300, 1, 28, 28))
        model.refit(feats, refit_transform=False)  # quantile / gap-ratio tables of these coefficients
    return model


@pytest.mark.parametrize("mechanism", ["paper", "decoy"])
def test_onnx_client_matches_pytorch(tiny_sca, tmp_path, mechanism):
    from models.sca.onnx_export import SCAClient, client_noise, export_client, onnx_parity

    model = _spread_tiny(tiny_sca)
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        pool = model.encode(torch.rand(40, 1, 28, 28))
        client = SCAClient(model, 8, mechanism=mechanism, num_decoys=30).eval()
        noise = client_noise(client, 6, torch.Generator().manual_seed(1), pool)
        public, codes = client(x, *noise)
        torch.testing.assert_close(codes, model.encode(x))
        assert ((public != 0).sum(1) == 12).all() and torch.equal(public[codes != 0], codes[codes != 0])
        if mechanism == "decoy":  # the same draws as the PyTorch mechanism: the same public codes
            ref = model.ambiguate(codes, 8, torch.Generator().manual_seed(1), mechanism="decoy", pool=pool)
            torch.testing.assert_close(public, ref, rtol=0, atol=0)
    path = export_client(client, tmp_path / f"{mechanism}.onnx")
    parity = onnx_parity(path, client, x, noise)
    assert parity["codes_max_abs_diff"] < 1e-5 and parity["public_max_abs_diff"] < 1e-3
    assert parity["support_mismatch_rate"] == 0


def test_onnx_paper_client_draws_the_papers_noise_law(tiny_sca):
    from scipy import stats

    from models.sca.onnx_export import SCAClient, client_noise

    model = _spread_tiny(tiny_sca)
    with torch.no_grad():
        codes = model.encode(torch.rand(400, 1, 28, 28))
        client = SCAClient(model, 8, mechanism="paper")
        public, _ = client(
            torch.rand(400, 1, 28, 28), *client_noise(client, 400, torch.Generator().manual_seed(0))
        )
        ref = model.ambiguate(codes, 8, torch.Generator().manual_seed(0))
    ours = public[(public != 0)].abs()
    theirs = ref[ref != 0].abs()
    # same law of the public codes' magnitudes (informative + noise), Gumbel-top-k vs multinomial
    assert stats.ks_2samp(ours.numpy(), theirs.numpy()).pvalue > 1e-3


def test_onnx_script_and_its_errors(tiny_sca, tmp_path, capsys):
    import sca_onnx

    from models.sca.onnx_export import SCAClient, client_noise

    model = _spread_tiny(tiny_sca)
    trainer = quiet_trainer(max_epochs=0)
    trainer.strategy.connect(model)
    ckpt = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(ckpt)
    out = sca_onnx.main(["--ckpt", str(ckpt), "--sp", "8", "--out", str(tmp_path / "c.onnx"), "--runs", "3"])
    assert out["size_mb"] > 0 and out["latency_ms"] > 0 and out["support_mismatch_rate"] == 0
    assert "latency:" in capsys.readouterr().out
    client = SCAClient(model, 8, mechanism="decoy")
    with pytest.raises(ValueError, match="needs the data owner's decoy pool"):
        client_noise(client, 2)
    with pytest.raises(ValueError, match="L - Sx"):
        SCAClient(model, 29)
