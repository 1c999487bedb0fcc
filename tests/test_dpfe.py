"""DPFE: attribute sets, layer separation, PCA bottleneck, eq. (7) losses, privacy measures, noise,
Procedure 1 through the CLI (Fashion-MNIST and CelebA fixtures), the curve, ONNX parity, bad input."""

import json
import math

import lightning as L
import numpy as np
import pytest
import torch
from _ddp import ddp_spawn_kwargs
from conftest import REPO_ROOT
from fixtures import quiet_trainer
from torch import nn

from callbacks.dpfe import plot_accuracy_privacy
from datamodules import FashionMNISTDataModule
from models.cli import cli_main
from models.dpfe import (
    DPFE,
    IdentityPrivacy,
    LinearBottleneck,
    add_feature_noise,
    attribute_names,
    chain_layers,
    fashion_mnist_attribute_table,
    feature_covariance,
    identity_privacy,
    silverman_bandwidths,
    split_at,
    y_remover_loss,
)
from models.dpfe.curve import accuracy_privacy_curve, collect_features, compare_curves, pareto_mask
from models.grl import grad_reverse

CONFIGS = REPO_ROOT / "configs" / "dpfe"


# ----------------------------------------------------------------------------------------------------
# z and y
# ----------------------------------------------------------------------------------------------------
def test_fashion_mnist_attribute_table_and_sets():
    table = fashion_mnist_attribute_table(attribute_names("fashion_mnist", "FUW"))
    assert table.shape == (10, 3)
    assert table[:, 0].nonzero().flatten().tolist() == [5, 7, 9]  # footwear: sandal, sneaker, ankle boot
    assert table[:, 1].nonzero().flatten().tolist() == [0, 2, 4, 6]  # upper body
    assert table[:, 2].nonzero().flatten().tolist() == [2, 4, 9]  # warm
    model = DPFE(stage="attribute", attribute_set="FU")
    z, y = model.targets({"label": torch.tensor([9, 0, 1])})
    assert z.tolist() == [[1, 0], [0, 1], [0, 0]] and y.tolist() == [9, 0, 1]
    assert attribute_names("celeba", "GASLN") == ["Male", "Young", "Smiling", "Big_Lips", "Big_Nose"]


def test_unknown_attribute_names_are_clear_errors():
    with pytest.raises(
        ValueError, match=r"unknown fashion_mnist attribute set 'XYZ'.*FU = \{footwear, upper_body\}"
    ):
        DPFE(attribute_set="XYZ")
    with pytest.raises(ValueError, match=r"unknown Fashion-MNIST attribute\(s\) \['shoes'\].*footwear"):
        fashion_mnist_attribute_table(["footwear", "shoes"])
    with pytest.raises(ValueError, match=r"unknown celeba attribute set 'GX'.*GASLN"):
        DPFE(dataset="celeba", attribute_set="GX", in_chans=3)
    model = DPFE(stage="attribute", dataset="celeba", attribute_set="GA", in_chans=3, image_size=16)
    with pytest.raises(ValueError, match=r"label must be \[B, 2\].*data.attributes"):
        model.targets({"label": torch.zeros(4, 3), "identity": torch.zeros(4, dtype=torch.long)})


# ----------------------------------------------------------------------------------------------------
# layer separation and the bottleneck
# ----------------------------------------------------------------------------------------------------
def test_cut_layer_must_exist_and_the_split_composes_to_the_backbone():
    with pytest.raises(
        ValueError, match=r"cut layer 'conv7' does not exist.*valid cut layers: features.0, .*features.9"
    ):
        DPFE(cut="conv7")
    model = DPFE(stage="attribute", cut="features.5")
    x = torch.rand(3, 1, 28, 28)
    model.eval()
    torch.testing.assert_close(model.head(model.backbone(x)), model.predict(x))
    assert model.extract(x).shape == (3, 50 * 7 * 7)
    # a timm ResNet splits inside its stages
    from models.backbones import create_backbone

    resnet = create_backbone("resnet18", in_chans=3)
    names = [n for n, _ in chain_layers(resnet)]
    assert names[:4] == ["conv1", "bn1", "act1", "maxpool"] and "layer3.1" in names
    first, rest = split_at(resnet, "layer3.1", torch.rand(2, 3, 32, 32))
    resnet.eval()
    torch.testing.assert_close(rest(first(torch.ones(1, 3, 32, 32))), resnet(torch.ones(1, 3, 32, 32)))


def test_a_backbone_that_is_not_a_chain_is_refused():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.b(self.a(x))

    with pytest.raises(ValueError, match="not a plain chain"):
        chain_layers(Residual(), torch.rand(2, 4))


def test_pca_init_reconstructs_like_pca_and_standardises():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 20, generator=g)
    h = torch.randn(500, 3, generator=g) * torch.tensor([5.0, 2.0, 1.0]) @ basis + 3.0
    h = h + 0.01 * torch.randn(500, 20, generator=g)
    ae = LinearBottleneck(20, 3, [20])
    ratio = ae.init_pca(h)
    assert ratio > 0.999
    ae.eval()
    f = ae.encode(h)
    torch.testing.assert_close(f.mean(0), torch.zeros(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(f.var(0), torch.ones(3), atol=1e-3, rtol=0)
    assert (ae.decode(f) - h).abs().max() < 0.1  # rank-3 PCA reconstruction
    with pytest.raises(FloatingPointError, match="NaN"):
        ae.init_pca(torch.full((4, 20), float("nan")))


# ----------------------------------------------------------------------------------------------------
# eq. (7): the y-remover
# ----------------------------------------------------------------------------------------------------
def test_y_remover_values_and_gradient_directions():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1])
    loss = y_remover_loss(f, y, margin=10.0)
    # pairs: (0,1) same, d=5 -> (10-5)^2 = 25; (0,2) diff d^2 = 1; (1,2) diff d^2 = 9+9 = 18
    assert loss.item() == pytest.approx((25 + 1 + 18) / (2 * 3))
    loss.backward()
    # sample 1 is pushed away from its same-identity partner 0 (the gradient points towards it)
    assert torch.dot(f.grad[1], f[0].detach() - f[1].detach()) > 0


def test_y_remover_needs_two_identities_and_pairs():
    with pytest.raises(ValueError, match="pairs of two identities.*identity 3.*larger batch"):
        y_remover_loss(torch.randn(5, 10), torch.full((5,), 3))
    with pytest.raises(ValueError, match="batch of 1 sample"):
        y_remover_loss(torch.randn(1, 10), torch.zeros(1, dtype=torch.long))


def test_nan_features_are_clear_errors():
    model = DPFE(stage="simple").eval()  # (in train mode BatchNorm spreads one NaN over the batch)
    x = torch.rand(4, 1, 28, 28)
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="1 of 4 private features contain NaN"):
        model.extract(x)
    with pytest.raises(FloatingPointError, match="NaN"):
        y_remover_loss(torch.tensor([[0.0], [float("nan")]]), torch.tensor([0, 1]))
    with pytest.raises(FloatingPointError, match="NaN"):
        IdentityPrivacy(3).update(torch.tensor([[float("nan")]]), torch.tensor([0]))
    with pytest.raises(FloatingPointError, match="NaN"):
        feature_covariance(torch.tensor([[0.0], [float("inf")]]))


# ----------------------------------------------------------------------------------------------------
# privacy measures
# ----------------------------------------------------------------------------------------------------
def naive_kde_ranks(f, y, c):
    """Loop implementation of the documented KDE estimator (standardise, Silverman per identity, LOO)."""
    x = f.double()
    x = (x - x.mean(0)) / x.std(0)
    n, d = x.shape
    h = silverman_bandwidths(x, y, c)
    ranks = []
    for i in range(n):
        post = []
        for a in range(c):
            members = [j for j in range(n) if y[j] == a and j != i]
            if not members:
                post.append(0.0)
                continue
            dens = sum(
                math.exp(-((x[i] - x[j]) ** 2).sum().item() / (2 * h[a].item() ** 2)) / h[a].item() ** d
                for j in members
            ) / len(members)
            post.append(dens * int((y == a).sum()) / n)
        true = post[int(y[i])]
        others = [p for b, p in enumerate(post) if b != int(y[i])]
        ranks.append(1 + sum(p > true for p in others) + 0.5 * sum(p == true for p in others))
    return torch.tensor(ranks, dtype=torch.float64)


def test_kde_log_rank_privacy_matches_a_loop_implementation():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (40,), generator=g)
    f = torch.randn(40, 3, generator=g) + y[:, None] * 0.7
    ranks = naive_kde_ranks(f, y, 5)  # identity 4 never occurs: p = 0, it only counts in c_y
    got = identity_privacy(f, y, 5, "kde")
    assert got["lrp"].item() == pytest.approx((ranks.log().mean() / math.log(5)).item(), abs=1e-5)
    assert got["rank_mean"].item() == pytest.approx(((ranks - 1) / 4).mean().item(), abs=1e-5)


@pytest.mark.parametrize("estimator", ["kde", "knn"])
def test_privacy_extremes(estimator):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 10
    separated = identity_privacy(
        torch.randn(300, 4, generator=g) * 0.01 + y[:, None] * 10.0, y, 10, estimator
    )
    assert separated["lrp"] == 0 and separated["nn_error"] == 0 and separated["rank_mean"] == 0
    y = torch.arange(3000) % 10
    noise = identity_privacy(torch.randn(3000, 4, generator=g), y, 10, estimator, k=50)
    # an uninformative feature: ranks ~ uniform (mean 0.5, std 0.29), LRP ~ log(10!)/(10 log 10)
    assert noise["rank_mean"].item() == pytest.approx(0.5, abs=0.03)
    assert noise["rank_std"].item() == pytest.approx(math.sqrt(1 / 12 * 11 / 9), abs=0.03)
    assert noise["lrp"].item() == pytest.approx(math.lgamma(11) / 10 / math.log(10), abs=0.03)
    assert noise["nn_error"].item() == pytest.approx(0.9, abs=0.03)


def test_privacy_metric_accumulates_batches():
    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(64, 5, generator=g), torch.randint(0, 6, (64,), generator=g)
    metric = IdentityPrivacy(6)
    for fb, yb in zip(f.split(16), y.split(16), strict=True):
        metric.update(fb, yb)
    out = metric.compute()
    want = identity_privacy(f, y, 6)
    assert set(out) == {"lrp", "rank_mean", "rank_std", "nn_error"}
    for key in out:
        assert out[key].item() == pytest.approx(want[key].item())
    with pytest.raises(ValueError, match="identities must lie in 0..5"):
        metric.update(f[:2], torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="unknown estimator"):
        IdentityPrivacy(6, estimator="gmm")


# ----------------------------------------------------------------------------------------------------
# noise (Procedure 2) and the curve
# ----------------------------------------------------------------------------------------------------
def test_noise_has_covariance_r_times_c():
    g = torch.Generator().manual_seed(0)
    c = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    zeros = torch.zeros(200000, 2)
    assert add_feature_noise(zeros, c, 0.0) is zeros
    noise = add_feature_noise(zeros, c, 0.5, g)
    torch.testing.assert_close(feature_covariance(noise), 0.5 * c, atol=0.01, rtol=0)
    with pytest.raises(ValueError, match=">= 0"):
        add_feature_noise(zeros, c, -1.0)


def test_pareto_and_superiority():
    assert pareto_mask([0.9, 0.8, 0.85], [0.1, 0.5, 0.2]) == [True, True, True]
    assert pareto_mask([0.9, 0.8, 0.7], [0.1, 0.05, 0.5]) == [True, False, True]
    base = [{"r": 0.0, "z_acc": 0.9, "lrp": 0.2}, {"r": 1.0, "z_acc": 0.7, "lrp": 0.4}]
    better = [{"r": 0.0, "z_acc": 0.9, "lrp": 0.3}, {"r": 1.0, "z_acc": 0.8, "lrp": 0.5}]
    assert compare_curves(better, base)["per_ratio"] and compare_curves(better, base)["per_accuracy"]
    worse = compare_curves(base, better)
    assert not worse["per_ratio"] and worse["failures_per_ratio"] == [0.0, 1.0]


def test_curve_and_plot_on_a_tiny_model():
    model = DPFE(stage="simple").eval()
    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(60, 10, generator=g), torch.arange(60) % 10
    z = model.z_table[y]
    rows = accuracy_privacy_curve(model, f, z, y, feature_covariance(f), [0.0, 1.0, 8.0], 10)
    assert [row["r"] for row in rows] == [0.0, 1.0, 8.0]
    assert all(0 <= row["z_acc"] <= 1 and 0 <= row["lrp"] <= 1 for row in rows)
    picture = plot_accuracy_privacy({"simple": rows, "dpfe": rows}, "lrp")
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert picture.min() < 100 < picture.max()  # drawn, not blank


# ----------------------------------------------------------------------------------------------------
# Procedure 1 on the Fashion-MNIST fixture
# ----------------------------------------------------------------------------------------------------
def stage_args(stage, data_dir, run_dir, *extra):
    config = {
        "attribute": "fashion_mnist_attribute",
        "simple": "fashion_mnist_simple",
        "dpfe": "fashion_mnist",
    }
    return [
        f"--config={CONFIGS / config[stage]}.yaml",
        f"--data.init_args.data_dir={data_dir}",
        "--data.init_args.batch_size=16",
        "--data.init_args.val_size=32",
        "--data.init_args.eval_batch_size=32",
        "--model.init_args.pca_samples=64",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=CSVLogger",
        f"--trainer.logger.save_dir={run_dir / 'logs'}",
        f"--checkpoint.dirpath={run_dir / stage}",
        *extra,
    ]


def test_procedure_1_through_the_cli(fashion_mnist_dir, tmp_path):
    cli_main(["fit", *stage_args("attribute", fashion_mnist_dir, tmp_path)])
    attribute = torch.load(tmp_path / "attribute" / "last.ckpt", weights_only=True)["state_dict"]
    # Simple with lr 0: the backbone is exactly the attribute model's, the AE exactly the PCA init
    simple = cli_main(
        [
            "fit",
            *stage_args(
                "simple",
                fashion_mnist_dir,
                tmp_path,
                f"--model.init_args.init_from={tmp_path / 'attribute' / 'last.ckpt'}",
                "--model.init_args.lr=0.0",
            ),
        ]
    ).model
    for key, value in attribute.items():
        torch.testing.assert_close(simple.state_dict()[key], value, msg=key)
    dm = FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), batch_size=16, val_size=32)
    dm.setup()
    h = torch.cat([simple._elementary(b["image"].float() / 255) for b in dm.train_dataloader()])[:64]
    ref = LinearBottleneck(500, 10, [500])
    ref.init_pca(h.detach())
    torch.testing.assert_close(
        simple.bottleneck.encoder.weight.abs(), ref.encoder.weight.abs(), atol=1e-4, rtol=1e-3
    )
    # DPFE from Simple: the y-remover trains, the privacy metrics are logged, last.ckpt rebuilds the model
    cli = cli_main(
        [
            "fit",
            *stage_args(
                "dpfe",
                fashion_mnist_dir,
                tmp_path,
                f"--model.init_args.init_from={tmp_path / 'simple' / 'last.ckpt'}",
            ),
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert {"train/y_loss", "val/z_acc", "val/lrp", "val/nn_error", "val/rank_mean", "val/rank_std"} <= set(
        metrics
    )
    assert 0 <= float(metrics["val/lrp"]) <= 1
    # the config's AccuracyPrivacyCurveLogger drew the val curve (a PNG under the CSV logger's folder)
    assert list((tmp_path / "logs").glob("**/images/val_acc_priv_lrp_step*.png"))
    reloaded = DPFE.load_from_checkpoint(tmp_path / "dpfe" / "last.ckpt", weights_only=True).eval()
    assert reloaded.hparams.stage == "dpfe" and reloaded.extract(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    # fine-tuning a reloaded model keeps its weights: init_from (the Simple checkpoint) is not re-applied
    before = {k: v.clone() for k, v in reloaded.state_dict().items()}
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    reloaded.hparams.lr = 0.0
    trainer.fit(
        reloaded,
        datamodule=FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), batch_size=16, val_size=32),
    )
    assert trainer.global_step == 1
    for key, value in before.items():
        if "running" not in key and "num_batches" not in key:  # BatchNorm statistics move in train mode
            torch.testing.assert_close(reloaded.state_dict()[key], value, msg=key)
    # the curve script and the ONNX script end to end on these checkpoints
    import dpfe_curve
    import dpfe_onnx

    ckpts = [f"--{stage}={tmp_path / stage / 'last.ckpt'}" for stage in ("attribute", "simple", "dpfe")]
    out = dpfe_curve.main(
        [
            *ckpts,
            f"--data-dir={fashion_mnist_dir}",
            "--val-size=32",
            f"--out={tmp_path / 'curve'}",
            "--ratios",
            "0",
            "1",
        ]
    )
    assert [row["r"] for row in out["curves"]["dpfe"]] == [0.0, 1.0]
    assert {"per_ratio", "per_accuracy"} <= set(out["summary"]["superior"])
    assert (tmp_path / "curve" / "curve.json").exists() and (tmp_path / "curve" / "curve_lrp.png").exists()
    assert "| dpfe | 1 |" in (tmp_path / "curve" / "curve.md").read_text()
    assert list(
        (tmp_path / "curve" / "wandb").glob("offline-run-*/files/media/images/dpfe/acc_priv_lrp_*.png")
    )
    onnx = dpfe_onnx.main(
        [f"--ckpt={tmp_path / 'dpfe' / 'last.ckpt'}", f"--out={tmp_path / 'x.onnx'}", "--runs=5"]
    )
    assert onnx["max_abs_diff"] < 1e-4 and onnx["size_mb"] > 0 and onnx["latency_ms"] > 0
    with pytest.raises(ValueError, match=r"shape mismatch for \['head.weight', 'head.bias'\]"):
        DPFE(stage="simple", attribute_set="F")._load_previous_stage(
            str(tmp_path / "attribute" / "last.ckpt")
        )


def test_fit_on_single_class_batches_fails_clearly(fashion_mnist_dir):
    dm = FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), batch_size=16, val_size=32)
    dm.setup()
    dm.train_set.indices = dm.train_set.indices[dm.train_set.targets == 3]  # one class only
    trainer = quiet_trainer(max_steps=1, num_sanity_val_steps=0)
    with pytest.raises(ValueError, match="pairs of two identities"):
        trainer.fit(DPFE(stage="dpfe", pca_samples=16), datamodule=dm)


# ----------------------------------------------------------------------------------------------------
# CelebA through the CLI on the foundation's fixture
# ----------------------------------------------------------------------------------------------------
def test_celeba_config_fast_dev_run(tmp_path, monkeypatch):
    from fixtures import patch_celeba_md5, write_celeba

    patch_celeba_md5(monkeypatch, write_celeba(tmp_path, 8, [6, 6, 7, 7, 8, 8, 9, 9], size=(20, 24), seed=3))
    cli = cli_main(
        [
            "fit",
            f"--config={CONFIGS / 'celeba.yaml'}",
            f"--data.init_args.data_dir={tmp_path}",
            "--data.init_args.download=false",
            "--data.init_args.image_size=32",
            "--model.init_args.image_size=32",
            "--data.init_args.min_images_per_identity=4",
            "--data.init_args.batch_size=16",
            "--data.init_args.num_workers=0",
            "--model.init_args.pca_samples=32",
            "--trainer.fast_dev_run=true",
            "--trainer.logger=false",
            f"--checkpoint.dirpath={tmp_path / 'checkpoints'}",  # not ./checkpoints (the zoo's folder)
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    assert "val/z_acc" in cli.trainer.callback_metrics
    assert cli.model.val_privacy.num_identities == 8
    assert cli.model.extract(torch.rand(2, 3, 32, 32)).shape[0] == 2


def test_celeba_attributes_must_match_the_set(tmp_path, monkeypatch):
    from fixtures import patch_celeba_md5, write_celeba

    patch_celeba_md5(monkeypatch, write_celeba(tmp_path, 4, 8, size=(20, 24), seed=3))
    from datamodules import CelebADataModule

    dm = CelebADataModule(
        data_dir=str(tmp_path),
        attributes=["Male", "Smiling"],
        image_size=16,
        min_images_per_identity=4,
        val_fraction=0.2,
        download=False,
        batch_size=8,
    )
    trainer = quiet_trainer(fast_dev_run=True, default_root_dir=tmp_path)
    model = DPFE(stage="attribute", dataset="celeba", attribute_set="GA", in_chans=3, image_size=16)
    with pytest.raises(
        ValueError, match=r"\['Male', 'Young'\] but the datamodule serves \['Male', 'Smiling'\]"
    ):
        trainer.fit(model, datamodule=dm)


# ----------------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------------
def test_onnx_export_parity(tmp_path):
    from models.dpfe.onnx_export import export_feature_extractor, onnx_parity

    model = DPFE(stage="dpfe")
    with torch.no_grad():
        model.bottleneck.norm.running_mean.uniform_(-1, 1)
        model.bottleneck.norm.running_var.uniform_(0.5, 2)
    model.eval()
    path = export_feature_extractor(model, tmp_path / "extractor.onnx")
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert onnx_parity(path, model, images) < 1e-5
    torch.testing.assert_close(
        torch.from_numpy(
            __import__("onnxruntime").InferenceSession(str(path)).run(None, {"image": images.numpy()})[0]
        ),
        model.extract(images),
        atol=1e-5,
        rtol=1e-5,
    )


def test_onnx_export_of_a_noisy_channel_extractor_keeps_the_channel(tmp_path):
    from models.dpfe.onnx_export import export_feature_extractor, onnx_parity

    model = DPFE(stage="dpfe", feature_noise=0.5).eval()
    images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    path = export_feature_extractor(model, tmp_path / "extractor.onnx")
    assert onnx_parity(path, model, images) < 1e-5  # the deterministic part, through a channel-free twin
    released = __import__("onnxruntime").InferenceSession(str(path)).run(None, {"image": images.numpy()})[0]
    with torch.no_grad():
        clean = model.extract(images)  # noisy as well
        twin = export_feature_extractor(model, tmp_path / "twin.onnx", channel=False)
    det = __import__("onnxruntime").InferenceSession(str(twin)).run(None, {"image": images.numpy()})[0]
    assert float((released - det).std()) == pytest.approx(0.5, rel=0.1)  # the file draws the channel noise
    assert float((clean.numpy() - det).std()) == pytest.approx(0.5, rel=0.1)  # as extract does
    with pytest.raises(ValueError, match="channel"):  # a file without the channel is refused
        onnx_parity(twin, model, images)


# ----------------------------------------------------------------------------------------------------
# Hub layout (models.hub) and the zoo evaluation (models.dpfe.evaluate)
# ----------------------------------------------------------------------------------------------------
def _fit_steps(model, data_dir, steps):
    trainer = quiet_trainer(max_steps=steps, limit_val_batches=0, accelerator="cpu")
    trainer.fit(model, datamodule=FashionMNISTDataModule(data_dir=str(data_dir), batch_size=16, val_size=32))
    return trainer


def test_trained_model_round_trips_in_hub_layout(fashion_mnist_dir, tmp_path):
    from models.dpfe.evaluate import MEASURES, zoo_metrics

    L.seed_everything(0)
    model = DPFE(stage="dpfe", pca_samples=64)  # PCA-initialised AE, then 3 steps of eq. (7)
    _fit_steps(model, fashion_mnist_dir, 3)
    assert int(model.bottleneck.norm.num_batches_tracked) == 3  # BatchNorm statistics moved: they must travel
    model.eval()
    folder = tmp_path / "dpfe-tiny"
    model.save_pretrained(folder, model_card_kwargs={"name": "dpfe-tiny", "dataset": "Fashion-MNIST"})
    loaded = DPFE.from_pretrained(folder)  # the generic contract: tests/test_hub_contract.py
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.extract(x), loaded.extract(x)) and torch.equal(model(x), loaded(x))
    card = (folder / "README.md").read_text()
    assert "DPFE (deep private-feature extraction)" in card
    assert "**empirical**, not a formal bound" in card

    # the zoo evaluation on the fixture's 64 test images: the same numbers for the saved and the loaded model
    def data():
        return FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), batch_size=1000, val_size=32)

    metrics = zoo_metrics(loaded, data())
    assert set(metrics) == set(MEASURES)
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics == zoo_metrics(model, data())
    # it is Procedure 2 (models.dpfe.curve) at r = 0; other ratios add "<measure>_r<r>" keys
    dm = data()
    dm.setup()
    f, z, y = collect_features(loaded, dm.test_dataloader())
    (row,) = accuracy_privacy_curve(loaded, f, z, y, feature_covariance(f), [0.0], 10)
    assert metrics == pytest.approx({m: row[m] for m in MEASURES}, abs=1e-12)
    noisy = zoo_metrics(loaded, data(), ratios=(0.0, 1.0), train_samples=64)
    assert set(noisy) == set(MEASURES) | {f"{m}_r1" for m in MEASURES}
    assert {m: noisy[m] for m in MEASURES} == metrics and noisy["z_acc_r1"] <= 1.0
    with pytest.raises(ValueError, match="ratios is empty"):
        zoo_metrics(loaded, data(), ratios=())

    # fine-tuning a loaded model keeps its weights: init_from (here a missing file) and the PCA are not re-run
    tuned = DPFE.from_pretrained(folder, init_from=str(tmp_path / "missing.ckpt"), lr=0.0)
    _fit_steps(tuned, fashion_mnist_dir, 1)
    for key, value in loaded.state_dict().items():
        if "running" not in key and "num_batches" not in key:  # BatchNorm statistics move in train mode
            assert torch.equal(tuned.state_dict()[key], value), key


# ----------------------------------------------------------------------------------------------------
# DDP
# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow  # two ddp_spawn start-ups (~25 s on 2 busy cores)
def test_ddp_pca_init_and_synced_privacy_match_one_process(fashion_mnist_dir):
    L.seed_everything(0)

    def dm():  # a fresh (not yet set up) datamodule per run: ddp_spawn pickles it
        return FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), batch_size=16, val_size=32)

    common = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    # lr 0: after fit the weights are exactly the PCA initialisation; validation runs on them
    model = DPFE(stage="simple", lr=0.0, pca_samples=64)
    ddp = L.Trainer(
        max_epochs=1, limit_train_batches=1, enable_checkpointing=False, **ddp_spawn_kwargs(), **common
    )
    ddp.fit(model, datamodule=dm())
    # every rank computed the PCA from the same seeded images: equal to the single-process PCA
    data = dm()
    data.setup()
    h = torch.cat([model._elementary(b["image"].float() / 255) for b in data.train_dataloader()])[:64]
    ref = LinearBottleneck(500, 10, [500])
    ref.init_pca(h.detach())
    torch.testing.assert_close(
        model.bottleneck.encoder.weight.abs(), ref.encoder.weight.abs(), atol=1e-4, rtol=1e-3
    )
    # the 32 val images split over 2 ranks: the gathered privacy equals the single-process value
    one = L.Trainer(devices=1, **common).validate(model, datamodule=dm())[0]
    for key in ("val/lrp", "val/nn_error", "val/rank_mean", "val/z_acc"):
        assert float(ddp.callback_metrics[key]) == pytest.approx(one[key], abs=1e-6), key


def test_adversarial_remover_reverses_the_y_gradient_for_the_extractor_only(fashion_mnist_dir):
    L.seed_everything(0)
    model = DPFE(
        stage="dpfe", remover="adversarial", remover_weight=0.5, adversary_hidden=[8], pca_samples=64
    )
    assert model.adversary is not None and DPFE(stage="dpfe").adversary is None  # the paper's default
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6) % 10

    def grads(reverse: bool):
        model.zero_grad()
        f = model.extract(x)
        feats = grad_reverse(f, 0.5) if reverse else f  # (the step standardises f first; same sign)
        torch.nn.functional.cross_entropy(model.adversary(feats), y).backward()
        return model.bottleneck.encoder.weight.grad.clone(), model.adversary[0].weight.grad.clone()

    (enc_r, adv_r), (enc, adv) = grads(True), grads(False)
    torch.testing.assert_close(enc_r, -0.5 * enc)  # the extractor climbs the adversary's loss
    torch.testing.assert_close(adv_r, adv)  # the adversary descends it
    opt = model.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == [model.hparams.lr, model.hparams.adversary_lr]
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in model.adversary.parameters()}
    _fit_steps(model, fashion_mnist_dir, 2)  # and it trains through the Trainer
    with pytest.raises(ValueError, match="unknown remover"):
        DPFE(stage="dpfe", remover="gan")


def test_feature_noise_channel_is_part_of_every_release(fashion_mnist_dir):
    L.seed_everything(0)
    assert DPFE(stage="dpfe").hparams.feature_noise == 0.0  # the paper's deterministic feature
    model = DPFE(stage="dpfe", feature_noise=0.5, pca_samples=64).eval()
    x = torch.rand(256, 1, 28, 28)
    clean = DPFE(stage="dpfe", pca_samples=64).eval()
    clean.load_state_dict(model.state_dict())
    with torch.no_grad():
        f0 = clean.extract(x)
        a = model.extract(x, generator=torch.Generator().manual_seed(3))
        b = model.extract(x, generator=torch.Generator().manual_seed(3))
        c = model.extract(x)
    torch.testing.assert_close(a, b)  # a seeded release is reproducible
    assert not torch.allclose(a, c)  # and every unseeded release draws fresh noise
    noise = a - f0
    assert noise.std().item() == pytest.approx(0.5, rel=0.05)
    assert noise.mean().abs().item() < 0.02
    assert model.release(x).shape == (256, 10)  # what leaves the client is the noisy feature
    # the server's z-predictor is trained through the channel: a step runs and the noise is in the graph
    _fit_steps(model, fashion_mnist_dir, 2)
    # zoo evaluation seeds the channel: two evaluations of one model agree
    feats = [
        collect_features(
            model, [{"image": (x[:32] * 255).to(torch.uint8), "label": torch.arange(32) % 10}], seed=s
        )[0]  # fmt: skip
        for s in (0, 0, 1)
    ]
    torch.testing.assert_close(feats[0], feats[1])
    assert not torch.allclose(feats[0], feats[2])
    for bad in ({"feature_noise": -0.1}, {"feature_noise": 0.5, "stage": "attribute"}):
        with pytest.raises(ValueError, match="feature_noise"):
            DPFE(**{"stage": "dpfe", **bad})


def test_dpfe_attacks_script_writes_one_curve_per_extractor(fashion_mnist_dir, tmp_path):
    import dpfe_attacks
    from PIL import Image

    L.seed_everything(0)
    folders = []
    for name, noise in (("paper", 0.0), ("ib", 1.0)):
        model = DPFE(stage="dpfe", feature_noise=noise, pca_samples=64)
        _fit_steps(model, fashion_mnist_dir, 2)
        model.eval().save_pretrained(tmp_path / name, model_card_kwargs={"name": name})
        folders.append(str(tmp_path / name))
    out = tmp_path / "out"
    argv = [*folders, "--quick", "--ratios", "0", "1", "--data-dir", str(fashion_mnist_dir)]
    result = dpfe_attacks.main([*argv, "--out", str(out), "--no-wandb", "--no-inversion"])
    assert result["floor"] == pytest.approx(0.3)  # FU: 3 distinct attribute vectors over 10 classes
    assert list(result["curves"]) == ["paper", "ib"]
    for rows in result["curves"].values():
        assert [row["r"] for row in rows] == [0.0, 1.0]
        for row in rows:
            accs = [row[f"{a}_class_accuracy"] for a in dpfe_attacks.PROBES]
            assert row["worst_class_accuracy"] == max(accs) and 0 <= min(accs) <= max(accs) <= 1
            assert 0 <= row["z_acc"] <= 1 and math.isfinite(row["lrp"])
    saved = json.loads((out / "attacks_curve.json").read_text())
    assert saved["curves"] == json.loads(json.dumps(result["curves"]))
    assert "| ib | 1 |" in (out / "attacks_curve.md").read_text()
    picture = np.asarray(Image.open(out / "attacks_curve.png"))
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.std() > 0
    val_args = [
        "--split",
        "val",
        "--val-size",
        "32",
        "--out",
        str(tmp_path / "val"),
        "--no-wandb",
        "--no-inversion",
    ]
    val = dpfe_attacks.main([*argv, *val_args])
    assert val["split"] == "val" and "validation split" in (tmp_path / "val" / "attacks_curve.md").read_text()
    rows = dpfe_attacks.standard_data(str(fashion_mnist_dir), dpfe_attacks.SIZES["quick"], 0, val_size=32)
    assert (
        len(rows["test"]) == 32 and (rows["test"] < 128).all()
    )  # held-out TRAINING images, not the test set
    assert (
        not torch.isin(rows["fit"], rows["test"]).any()
        and not torch.isin(rows["holdout"], rows["test"]).any()
    )
    dpfe_attacks.main(["--render", str(out / "attacks_curve.json"), "--card", folders[1]])
    card = (tmp_path / "ib" / "README.md").read_text()
    assert "## Accuracy-privacy curves under attack" in card and "| ib | 1 |" in card
    with pytest.raises(SystemExit, match="val results"):
        dpfe_attacks.main(["--render", str(tmp_path / "val" / "attacks_curve.json"), "--card", folders[1]])
    with pytest.raises(SystemExit, match="not a zoo name"):
        dpfe_attacks.main(["no-such-extractor", "--out", str(out)])
    with pytest.raises(SystemExit, match="ratios"):
        dpfe_attacks.main([folders[0], "--ratios", "-1", "--out", str(out)])
