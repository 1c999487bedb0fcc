"""SCA: eqs. (1)-(5), the support-intersection index, fairness (Definition 2), indistinguishability of the
ambiguation noise, bad input, buffers / checkpoints, the CLI and the plots."""

import math

import pytest
import torch
from conftest import REPO_ROOT
from fixtures import quiet_trainer
from scipy import stats

from models.sca import (
    NMSE,
    SCA,
    RecallAtT,
    SupportIntersectionIndex,
    ambiguate_codes,
    closed_form_decoder,
    decoder_objective,
    fit_transform,
    gap_ratios,
    intra_inter_kl,
    random_orthonormal,
    sample_complement_tail,
    sparsify,
    support_probabilities,
    transform_objective,
    value_quantiles,
)

CONFIG = str(REPO_ROOT / "configs" / "sca" / "fashion_mnist.yaml")


def correlated_features(m=2000, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g) / math.sqrt(n)
    # heavy-tailed (Laplace) sources, mixed: a sparsifying transform exists
    sources = torch.distributions.Laplace(0.0, 1.0).sample((m, n)) * torch.linspace(2, 0.2, n)
    return sources @ (torch.eye(n) + mix).T


# ----------------------------------------------------------------------------------------------------
# eqs. (1)-(3)
# ----------------------------------------------------------------------------------------------------
def test_sparsify_keeps_the_sx_largest_magnitudes():
    v = torch.tensor([[0.1, -3.0, 2.0, 0.5], [1.0, 0.2, -0.3, 4.0]])
    a = sparsify(v, 2)
    torch.testing.assert_close(a, torch.tensor([[0.0, -3.0, 2.0, 0.0], [1.0, 0.0, 0.0, 4.0]]))
    with pytest.raises(ValueError, match="sx"):
        sparsify(v, 5)


def test_transform_learner_decreases_eq1_and_sparsifies():
    torch.manual_seed(0)
    x = correlated_features()
    w0 = torch.eye(32)
    w, history = fit_transform(x, 4, w0, iterations=4, b_orth=1.0, b_logdet=1.0, inner_steps=15)
    assert all(b <= a + 1e-6 for a, b in zip(history, history[1:], strict=False)), history

    def objective(w):
        codes = sparsify(x.double() @ w.double().T, 4)
        xd = x.double()
        return transform_objective(
            w.double(), xd.T @ xd, codes.T @ xd, codes.pow(2).sum(), len(x), 0.0, 1.0, 1.0
        )

    assert objective(w) < objective(w0)
    # W stays well conditioned (the log-det / orthogonality terms of Omega_1 work)
    svals = torch.linalg.svdvals(w)
    assert svals.min() > 0.1 and svals.max() / svals.min() < 50


def test_closed_form_r_beats_random_orthonormal_r_on_eq3():
    x = correlated_features(1000, 32, seed=1).double()
    w, _ = fit_transform(x, 6, torch.eye(32, dtype=torch.float64), iterations=2, inner_steps=10)
    codes = sparsify(x @ w.T, 6)
    r = closed_form_decoder(w, codes, x, beta_r=0.1, beta=1e-3)
    torch.testing.assert_close(r.T @ r, torch.eye(32, dtype=torch.float64), atol=1e-8, rtol=0)
    best = decoder_objective(r, w, codes, x, 0.1, 1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        other = random_orthonormal(32, 32, g)
        assert best < decoder_objective(other, w, codes, x, 0.1, 1e-3)
    # a local optimum on the manifold too: small rotations R exp(S) never improve
    for _ in range(10):
        s = torch.randn(32, 32, generator=g, dtype=torch.float64) * 1e-3
        rotated = r @ torch.linalg.matrix_exp(s - s.T)
        assert best <= decoder_objective(rotated, w, codes, x, 0.1, 1e-3) + 1e-12


# ----------------------------------------------------------------------------------------------------
# ambiguation (eqs. 4-5)
# ----------------------------------------------------------------------------------------------------
def test_complement_tail_sampler_matches_the_truncated_law():
    g = torch.Generator().manual_seed(0)
    values = torch.distributions.Gamma(2.0, 1.0).sample((20000, 1)) - 1.5  # skewed law
    table = value_quantiles(values, 257)
    lam = torch.full((5000,), 1.0)
    drawn = sample_complement_tail(table.expand(5000, -1), lam, g)
    assert (drawn.abs() >= 1.0 - 1e-6).all()
    reference = values[values.abs() >= 1.0].flatten()
    ks = stats.ks_2samp(drawn.numpy(), reference.numpy())
    assert ks.statistic < 0.05, ks


def test_ambiguation_noise_is_indistinguishable_from_informative_values():
    # codes of a fitted transform on non-Gaussian features; the noise of each code must look like its
    # informative entries to a two-sample test on values (and on magnitudes)
    x = correlated_features(6000, 32, seed=2)
    w, _ = fit_transform(x, 4, torch.eye(32), iterations=2, inner_steps=10)
    coeff = (x @ w.T)[:, None, :]  # [M, 1, L]
    quantiles = value_quantiles(coeff.flatten(1), 257).view(1, 32, -1)
    codes = sparsify(coeff, 4)
    g = torch.Generator().manual_seed(0)
    public = ambiguate_codes(codes[:3000], 8, quantiles, gap_ratios(coeff, 257), g)
    support = codes[:3000] != 0
    noise_mask = (public != 0) & ~support
    assert (noise_mask.sum(-1) == 8).all() and torch.equal(public[support], codes[:3000][support])
    informative, noise = codes[:3000][support], public[noise_mask]
    ks = stats.ks_2samp(informative.numpy(), noise.numpy())
    assert ks.pvalue > 1e-3 and ks.statistic < 0.05, ks
    ks_abs = stats.ks_2samp(informative.abs().numpy(), noise.abs().numpy())
    assert ks_abs.statistic < 0.05, ks_abs
    # the positions look alike too: noise frequency per position follows the support frequency
    pos_info = support.float().mean((0, 1))
    pos_noise = noise_mask.float().mean((0, 1))
    assert torch.corrcoef(torch.stack([pos_info, pos_noise]))[0, 1] > 0.8
    # top-Sx by magnitude cannot separate them: about Sx / (Sx + Sp) of the kept entries are real
    kept = sparsify(public, 4) != 0
    real_share = float((kept & support).sum() / kept.sum())
    assert abs(real_share - 4 / 12) < 0.08, real_share


def test_model_ambiguate_purify_query_roundtrip_and_determinism(tiny_sca):
    torch.manual_seed(0)
    model = tiny_sca().eval()
    x = torch.rand(6, 1, 28, 28)
    codes = model.encode(x)
    assert codes.shape == (6, 32) and ((codes != 0).sum(1) == 4).all()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    p1, p2 = model.ambiguate(codes, 8, g1), model.ambiguate(codes, 8, g2)
    torch.testing.assert_close(p1, p2)
    assert ((p1 != 0).sum(1) == 12).all()
    torch.testing.assert_close(model.purify(p1, codes != 0), codes)
    torch.testing.assert_close(model.decode(model.purify(p1, codes != 0)), model.decode(codes))
    q, support = model.query(x, sq=2, generator=g1)
    assert ((q != 0).sum(1) == 6).all() and torch.equal(support, codes != 0)
    attacks = model.server_attacks(p1)
    assert set(attacks) == {"as_is", "top_sx", "posterior_mean"}
    assert all(v.shape == x.shape for v in attacks.values())


def test_ternary_codes(tiny_sca):
    model = tiny_sca(ternary=True).eval()
    x = torch.rand(5, 1, 28, 28)
    codes = model.encode(x)
    assert set(codes.unique().tolist()) <= {-1.0, 0.0, 1.0}
    public = model.ambiguate(codes, 8, torch.Generator().manual_seed(0))
    assert set(public.unique().tolist()) <= {-1.0, 0.0, 1.0} and ((public != 0).sum(1) == 12).all()
    assert model.decode(codes).shape == x.shape


# ----------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------
def test_bad_input_gets_clear_errors(tiny_sca):
    with pytest.raises(ValueError, match="Sx > L"):
        tiny_sca(sx=33)
    with pytest.raises(ValueError, match="L - Sx"):
        tiny_sca(sx=4, sp=29)
    with pytest.raises(ValueError, match="Sq=5 must be in"):
        tiny_sca(sp=4, sq=5)
    with pytest.raises(ValueError, match="divisible"):
        tiny_sca(image_size=30)
    model = tiny_sca().eval()
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="Sx > L"):
        model.encode(x, sx=40)
    with pytest.raises(ValueError, match=r"built for images \[B, 1, 28, 28\]"):
        model.encode(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"built for images"):
        model.encode(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        model.encode(torch.rand(1, 28, 28))
    codes = model.encode(x)
    with pytest.raises(ValueError, match="L - Sx"):
        model.ambiguate(codes, 29)
    with pytest.raises(ValueError, match="Sq=9 must be in"):
        model.query(x, sq=9)
    for bad in (torch.zeros(2, 64), torch.zeros(2, 31)):
        with pytest.raises(ValueError, match="different model"):
            model.decode(bad)
        with pytest.raises(ValueError, match="different model"):
            model.ambiguate(bad, 2)
        with pytest.raises(ValueError, match="different model"):
            model.server_attacks(bad)
    index = model.build_index(model.ambiguate(codes, 4))
    with pytest.raises(ValueError, match="different model"):
        index.search(torch.zeros(1, 64), 1)
    with pytest.raises(ValueError, match="different model"):
        index.add(torch.zeros(1, 16))
    with pytest.raises(ValueError, match="radius"):
        index.search(codes, 1, fair=True)


# ----------------------------------------------------------------------------------------------------
# search (section III-D, Definition 2)
# ----------------------------------------------------------------------------------------------------
def _random_ternary(m, d, nnz, g):
    idx = torch.rand(m, d, generator=g).argsort(1)[:, :nnz]
    signs = torch.where(torch.rand(m, nnz, generator=g) < 0.5, -1.0, 1.0)
    return torch.zeros(m, d).scatter_(1, idx, signs * torch.rand(m, nnz, generator=g).add(0.5))


def test_index_matches_brute_force_sign_aware_intersection():
    g = torch.Generator().manual_seed(0)
    db, q = _random_ternary(1000, 32, 8, g), _random_ternary(37, 32, 6, g)
    index = SupportIntersectionIndex(32, block_size=128, query_batch=16)
    index.add(db[:500])
    index.add(db[500:])  # ids continue, blocks are topped up
    assert len(index) == 1000
    dist, ids = index.search(q, 10)
    s, t = torch.sign(q), torch.sign(db)
    agree = ((s[:, None] * t[None]) > 0).sum(-1)
    disagree = ((s[:, None] * t[None]) < 0).sum(-1)
    brute = (s != 0).sum(1)[:, None] + (t != 0).sum(1)[None] - 2 * (agree - disagree)
    torch.testing.assert_close(brute.float(), torch.cdist(s, t).pow(2), atol=1e-4, rtol=0)
    expected = brute.float().sort(1).values[:, :10]
    torch.testing.assert_close(dist, expected)
    torch.testing.assert_close(brute.float().gather(1, ids), dist)
    # radius search keeps only the ball
    dist_r, ids_r = index.search(q, 10, radius=10.0)
    assert ((dist_r <= 10) | (ids_r == -1)).all()
    assert torch.equal((ids_r >= 0).sum(1), (brute <= 10).sum(1).clamp(max=10))


def test_fair_search_is_uniform_over_the_ball():
    g = torch.Generator().manual_seed(1)
    db = _random_ternary(300, 16, 4, g)
    query = db[:1].clone()
    index = SupportIntersectionIndex(16, block_size=64)
    index.add(db)
    s, t = torch.sign(query), torch.sign(db)
    dist = torch.cdist(s, t).pow(2)[0].round()
    radius = 4.0
    ball = torch.nonzero(dist <= radius).flatten()
    assert 3 <= len(ball) <= 60, len(ball)
    draws = 3000
    _, ids = index.search(
        query.expand(draws, -1), 1, radius=radius, fair=True, generator=torch.Generator().manual_seed(0)
    )
    ids = ids.flatten()
    assert torch.isin(ids, ball).all()
    counts = torch.bincount(ids, minlength=len(db))[ball].numpy()
    chi2 = stats.chisquare(counts)
    assert chi2.pvalue > 1e-3, chi2
    # the plain search returns the nearest instead (heavily non-uniform)
    _, nearest = index.search(query, 1)
    assert dist[nearest[0, 0]] == dist.min()


# ----------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------
def test_nmse_recall_support_and_kl():
    x = torch.rand(4, 1, 5, 5) + 0.1
    x_hat = x * 0.5
    metric = NMSE()
    metric.update(x_hat[:2], x[:2])
    metric.update(x_hat[2:], x[2:])
    torch.testing.assert_close(metric.compute(), torch.tensor(0.25))
    recall = RecallAtT([1, 2, 3])
    recall.update(torch.tensor([[5, 1, 2], [7, 8, 9]]), torch.tensor([[1], [9]]))
    torch.testing.assert_close(recall.compute(), torch.tensor([0.0, 0.5, 1.0]))
    a = torch.tensor([[1.0, 0, 2, 0], [0, 1, 1, 0]])
    b = torch.tensor([[1.0, 1, 0, 0], [0, 1, 1, 0]])
    assert support_probabilities(a, b) == (0.75, 0.25)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(30)
    clustered = (
        torch.randn(120, 8, generator=g) * 0.1 + torch.randn(4, 8, generator=g).repeat_interleave(30, 0) * 3
    )
    assert intra_inter_kl(clustered, labels) > 1.0 > intra_inter_kl(torch.randn(120, 8, generator=g), labels)


# ----------------------------------------------------------------------------------------------------
# module: buffers, the transform stage, training, the CLI and the plots
# ----------------------------------------------------------------------------------------------------
def test_fitted_state_lives_in_static_buffers_and_reloads(tiny_sca):
    torch.manual_seed(0)
    model = tiny_sca()
    names = {"transform", "reconstruct", "quantiles", "ratios", "threshold", "ternary_scale", "refits"}
    state = model.state_dict()
    assert names <= set(state)
    feats = correlated_features(500, 32, seed=3)[:, None, :]
    model.refit(feats)
    assert int(model.refits) == 1 and not torch.equal(model.transform[0], torch.eye(32))
    fresh = SCA(**model.hparams)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(fresh.encode(x), model.encode(x))


def test_other_dataset_shapes_cifar_and_celeba(tiny_sca):
    for kwargs, shape in (
        (dict(in_chans=3, image_size=32, code_maps=4), (2, 3, 32, 32)),
        (dict(in_chans=3, image_size=128, channels=[4, 4, 8, 8]), (2, 3, 128, 128)),
    ):
        model = tiny_sca(**kwargs).eval()
        x = torch.rand(shape)
        codes = model.encode(x)
        assert codes.shape == (2, kwargs.get("code_maps", 1) * 32)
        assert ((codes != 0).view(2, -1, 32).sum(-1) == 4).all()
        assert model.decode(model.ambiguate(codes, 8)).shape == shape


def test_cli_fit_test_and_plots_on_tiny_fashion_mnist(fashion_mnist_dir, tmp_path):

    from models.cli import cli_main

    args = [
        f"--config={CONFIG}",
        f"--data.init_args.data_dir={fashion_mnist_dir}",
        "--data.init_args.batch_size=32",
        "--data.init_args.eval_batch_size=64",
        "--data.init_args.val_size=32",
        "--model.init_args.channels=[4, 8]",
        "--model.init_args.transform_iterations=2",
        "--model.init_args.transform_epochs=1",
        "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=CSVLogger",
        f"--trainer.logger.save_dir={tmp_path}",
        "--trainer.callbacks.every_n_epochs=1",
        "--trainer.callbacks.tsne=false",
    ]
    cli = cli_main(["fit", *args])
    model = cli.model
    assert int(model.refits) == 1  # refit after epoch 0 only, statistics after both
    metrics = cli.trainer.callback_metrics
    assert 0 < float(metrics["val/nmse"]) < 2 and float(metrics["val/server_nmse"]) > 0
    images = list(tmp_path.rglob("sca_*.png"))
    names = {p.name.split("_step")[0] for p in images}
    assert {"sca_original", "sca_authorized", "sca_support", "sca_recall"} <= names, names
    from PIL import Image

    assert Image.open(images[0]).mode == "RGB"
    ckpt = next(tmp_path.rglob("last.ckpt"))
    reloaded = SCA.load_from_checkpoint(ckpt, weights_only=True)
    torch.testing.assert_close(reloaded.transform, model.transform)
    cli = cli_main(["test", *args, f"--ckpt_path={ckpt}"])
    assert 0 < float(cli.trainer.callback_metrics["test/nmse"]) < 2


def test_tsne_plot_is_uint8(tiny_sca):
    from callbacks.sca import sca_pictures

    model = tiny_sca()
    g = torch.Generator().manual_seed(0)
    pictures = sca_pictures(
        model, torch.rand(40, 1, 28, 28, generator=g), torch.arange(40) % 4, num_queries=8
    )
    assert set(pictures) == {"tsne", "support", "recall"}
    assert all(p.dtype.name == "uint8" and p.ndim == 3 and p.shape[2] == 3 for p in pictures.values())


def test_table_and_bench_scripts_on_tiny_inputs(tiny_sca, fashion_mnist_dir, tmp_path, capsys):
    import json

    import bench_sca
    import sca_table

    model = tiny_sca(code_length=128, sx=16)
    trainer = quiet_trainer(max_epochs=0)
    trainer.strategy.connect(model)
    ckpt = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(ckpt)
    out = tmp_path / "table"
    result = sca_table.main(
        ["--ckpt", str(ckpt), "--data-dir", str(fashion_mnist_dir), "--out", str(out), "--batch-size", "32"]
        + ["--val-size", "32", "--refit-statistics", "--save", str(tmp_path / "refit.ckpt")]
    )
    assert result["num_images"] == 64 and set(result["authorized"]) == {1, 2, 4, 8, 16}
    assert set(result["ambiguation"]) == {8, 16, 24, 32}
    saved = json.loads((out / "table.json").read_text())
    # purification gives the authorized user exactly the Sp = 0 reconstruction
    assert all(
        r["authorized"]["nmse"] == saved["authorized"]["16"]["nmse"] for r in saved["ambiguation"].values()
    )
    assert (out / "table.md").read_text().count("| server") == 12
    assert list((out / "wandb").glob("offline-run-*"))
    refit = torch.load(tmp_path / "refit.ckpt", weights_only=True)["state_dict"]
    assert not torch.equal(refit["quantiles"], model.quantiles) and torch.equal(
        refit["transform"], model.transform
    )
    assert {"statistic", "pvalue"} <= set(saved["ambiguation"]["16"]["ks_values"])
    # model selection on the held-out training images, not the test set
    val = sca_table.main(
        ["--ckpt", str(ckpt), "--data-dir", str(fashion_mnist_dir), "--out", str(tmp_path / "val")]
        + ["--val-size", "32", "--split", "val", "--sx", "16", "--sp", "8", "--no-wandb"]
    )
    assert val["split"] == "val" and val["num_images"] == 32
    assert "Fashion-MNIST val (32 images)" in (tmp_path / "val" / "table.md").read_text()
    bench = bench_sca.main(
        ["--num-codes", "3000", "--num-queries", "50", "--chunk", "1000", "--out", str(tmp_path / "b")]
    )
    assert bench["ratio_equal_recall"] > 0
    assert bench["results"]["sca"]["recall@10"] == pytest.approx(
        bench["results"]["faiss_ternary"]["recall@10"], abs=0.05
    )
    assert "speed ratio" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------
# the zoo: Hub layout and the zoo evaluation
# ----------------------------------------------------------------------------------------------------
def _trained_tiny_sca(tiny_sca):
    """A tiny SCA after a few Adam steps and one transform stage (all buffers moved off their init)."""
    torch.manual_seed(0)
    model = tiny_sca(code_length=64, sx=8, sp=16, sq=8, train_sx=[4, 8], ssim_weight=0.1)
    opt = model.configure_optimizers()
    model.train()
    for _ in range(3):
        x = torch.rand(16, 1, 28, 28)
        loss = model.training_step({"image": x}, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.refit(torch.cat(model._epoch_features))
    model._epoch_features = []
    return model.eval()


def test_hub_roundtrip_of_a_trained_model(tiny_sca, tmp_path):
    from models.hub import PrivzooHubMixin

    assert SCA.__mro__[1] is PrivzooHubMixin  # first base
    model = _trained_tiny_sca(tiny_sca)
    assert int(model.refits) == 1 and not torch.equal(model.transform[0], torch.eye(64))
    model.save_pretrained(tmp_path / "sca", model_card_kwargs={"name": "sca-tiny"})
    card = (tmp_path / "sca" / "README.md").read_text()
    assert "not a formal bound" in card and "curious server" in card
    loaded = SCA.from_pretrained(tmp_path / "sca")  # the generic contract: tests/test_hub_contract.py
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        codes = model.encode(x)
        torch.testing.assert_close(loaded.encode(x), codes, rtol=0, atol=0)
        public = model.ambiguate(codes, 16, torch.Generator().manual_seed(1))
        public2 = loaded.ambiguate(codes, 16, torch.Generator().manual_seed(1))
        torch.testing.assert_close(public2, public, rtol=0, atol=0)
        attacks, attacks2 = model.server_attacks(public), loaded.server_attacks(public)
        for name in attacks:
            torch.testing.assert_close(attacks2[name], attacks[name], rtol=0, atol=0)


def test_zoo_metrics_on_tiny_fashion_mnist(tiny_sca, fashion_mnist_dir):
    from datamodules import FashionMNISTDataModule
    from models.sca.evaluate import measure, zoo_metrics

    model = tiny_sca(code_length=64, sx=16)

    def data():
        return FashionMNISTDataModule(
            data_dir=str(fashion_mnist_dir), eval_batch_size=32, download=False, val_size=32
        )

    metrics = zoo_metrics(model, data(), sp_list=(8, 32))
    expected = {"ssim_sx16", "nmse_sx16", "num_images"} | {
        f"server_nmse{a}_sp{sp}" for a in ("", "_posterior_mean") for sp in (8, 32)
    }
    assert set(metrics) == expected and metrics["num_images"] == 64
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    # the same numbers as the full Table I measurement (scripts/sca_table.py) with the same seed
    dm = data()
    dm.setup("test")
    full = measure(model, dm.test_dataloader(), [16], [8, 32], 16, 0)
    assert metrics["ssim_sx16"] == full["authorized"][16]["ssim"]
    row = full["ambiguation"][32]
    assert metrics["server_nmse_sp32"] == min(row["as_is"]["nmse"], row["top_sx"]["nmse"])
    assert metrics["server_nmse_posterior_mean_sp32"] == row["posterior_mean"]["nmse"]
    with pytest.raises(ValueError, match="privacy_sp"):
        zoo_metrics(model, data(), sp_list=(8,))


def test_repeated_train_sx_weighs_the_loss(tiny_sca):
    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    model = tiny_sca(code_length=32, sx=4, train_sx=[2, 4, 4, 4]).train()
    weighted = model.training_step({"image": x}, 0)
    parts = {}
    for s in (2, 4):
        model.hparams.train_sx = [s]
        parts[s] = model.training_step({"image": x}, 0)
    torch.testing.assert_close(weighted, (parts[2] + 3 * parts[4]) / 4)


def test_decoder_fine_tune_from_a_zoo_folder_keeps_the_codes(tiny_sca, tiny_dm, fashion_mnist_dir, tmp_path):
    base = _trained_tiny_sca(tiny_sca)
    base.save_pretrained(tmp_path / "base", model_card_kwargs={"name": "sca-tiny"})
    args = dict(code_length=64, sx=8, sp=16, sq=8, train_sx=[8], ssim_weight=1.0, lr=1e-2)
    with pytest.raises(ValueError, match="set init_from"):
        tiny_sca(**args, trainable="decoder")
    with pytest.raises(ValueError, match="unknown trainable"):
        tiny_sca(**args, trainable="encoder")
    model = tiny_sca(**args, trainable="decoder", init_from=str(tmp_path / "base"))
    assert not any(p.requires_grad for p in model.encoder.parameters())
    dm = tiny_dm(fashion_mnist_dir, split="standard", val_size=32)
    quiet_trainer(max_epochs=2, limit_val_batches=0).fit(model, datamodule=dm)
    model.eval()
    x = torch.rand(6, 1, 28, 28)
    state, before = model.state_dict(), base.state_dict()
    weights = {f"decoder.{k}" for k, _ in model.decoder.named_parameters()}
    for key in set(state) - weights:  # E, W, R, the ambiguation and all BatchNorm statistics as loaded
        assert torch.equal(state[key], before[key]), key
    assert all(not torch.equal(state[k], before[k]) for k in weights)
    with torch.no_grad():
        codes = model.encode(x)
        torch.testing.assert_close(codes, base.encode(x), rtol=0, atol=0)
        g = [torch.Generator().manual_seed(3) for _ in range(2)]
        torch.testing.assert_close(model.ambiguate(codes, 16, g[0]), base.ambiguate(codes, 16, g[1]))
    # a loaded fine-tuned model counts as initialised: fitting it again does not re-apply init_from
    model.save_pretrained(tmp_path / "tuned", model_card_kwargs={"name": "sca-tiny-tuned"})
    again = SCA.from_pretrained(tmp_path / "tuned")
    assert again._initialised and again.hparams.init_from == str(tmp_path / "base")
    # a folder of another shape is refused by name
    other = tiny_sca(code_length=32, sx=4, trainable="decoder", init_from=str(tmp_path / "base"))
    with pytest.raises(ValueError, match="does not match this model"):
        quiet_trainer(max_steps=1, limit_val_batches=0).fit(other, datamodule=dm)


def test_adversary_gradient_is_reversed_into_the_encoder(tiny_sca, monkeypatch):
    import models.sca.module as sca_module

    with pytest.raises(ValueError, match="adversary_weight must be >= 0"):
        tiny_sca(adversary_weight=-1.0)
    with pytest.raises(ValueError, match="needs trainable='all'"):
        tiny_sca(adversary_weight=1.0, trainable="decoder", init_from="x")
    with pytest.raises(ValueError, match="Sp=40"):
        tiny_sca(adversary_weight=1.0, adversary_sp=40)
    assert not any(k.startswith("adversary.") for k in tiny_sca().state_dict())  # the paper: no adversary

    model = tiny_sca(adversary_weight=0.5, adversary_sp=8, adversary_hidden=16).train()
    model.refit(model.encoder(torch.rand(64, 1, 28, 28)))
    x = torch.rand(8, 1, 28, 28)

    def grads(reverse):
        monkeypatch.setattr(sca_module, "grad_reverse", reverse)
        model.zero_grad()
        torch.manual_seed(1)  # the same ambiguation noise in both passes
        model._adversary_loss(model.coefficients(model.features(x)), x).backward()
        enc = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])
        return enc, torch.cat([p.grad.flatten() for p in model.adversary.parameters()])

    enc_rev, adv_rev = grads(sca_module.grad_reverse)
    enc, adv = grads(lambda t, lambda_: t)
    assert enc.abs().sum() > 0
    torch.testing.assert_close(enc_rev, -0.5 * enc)  # the encoder ascends the inverter's error
    torch.testing.assert_close(adv_rev, adv)  # the inverter descends it


def test_adversarial_fine_tune_from_a_model_without_adversary(tiny_sca, tiny_dm, fashion_mnist_dir, tmp_path):
    base = _trained_tiny_sca(tiny_sca)
    base.save_pretrained(tmp_path / "base", model_card_kwargs={"name": "sca-tiny"})
    args = dict(code_length=64, sx=8, sp=16, sq=8, train_sx=[8], transform_epochs=0)
    model = tiny_sca(**args, adversary_weight=0.5, adversary_sp=16, init_from=str(tmp_path / "base"))
    dm = tiny_dm(fashion_mnist_dir, split="standard", val_size=32)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert "train/adversary_mse" in trainer.callback_metrics
    state, before = model.state_dict(), base.state_dict()
    assert torch.equal(state["transform"], before["transform"])  # W as loaded (transform_epochs=0)
    assert not torch.equal(state["encoder.conv.0.weight"], before["encoder.conv.0.weight"])
    # and back: a decoder fine-tune of the adversarial model drops its inverter
    model.save_pretrained(tmp_path / "adv", model_card_kwargs={"name": "sca-tiny-adv"})
    assert SCA.from_pretrained(tmp_path / "adv").adversary is not None
    plain = tiny_sca(**args, trainable="decoder", init_from=str(tmp_path / "adv"))
    quiet_trainer(max_steps=1, limit_val_batches=0).fit(plain, datamodule=dm)
    assert plain.adversary is None


def test_coefficient_correlation_penalty(tiny_sca):
    from models.sca.module import coefficient_correlation

    torch.manual_seed(0)
    a = torch.randn(4096, 2, 8)
    assert float(coefficient_correlation(a)) < 1e-3  # independent coefficients: ~ 1 / B
    b = a.clone()
    b[..., 1] = -b[..., 0]  # one fully correlated pair in each map: 2 of the 56 off-diagonal entries
    assert float(coefficient_correlation(b)) == pytest.approx(2 / 56, abs=2e-3)
    with pytest.raises(ValueError, match="decorrelation_weight must be >= 0"):
        tiny_sca(decorrelation_weight=-1.0)
    with pytest.raises(ValueError, match="needs trainable='all'"):
        tiny_sca(decorrelation_weight=1.0, trainable="decoder", init_from="x")
    x = torch.rand(8, 1, 28, 28)
    torch.manual_seed(1)
    plain = tiny_sca().train()
    torch.manual_seed(1)
    penalised = tiny_sca(decorrelation_weight=2.0).train()
    corr = coefficient_correlation(plain.coefficients(plain.features(x)))
    torch.testing.assert_close(
        penalised.training_step({"image": x}, 0), plain.training_step({"image": x}, 0) + 2.0 * corr
    )
