"""PPL: the epsilon bound (eq. 2), the losses (eqs. 4-11), the GRL game (eqs. 12-14), end to end."""

import itertools
import math

import lightning as L
import pytest
import torch
import yaml
from conftest import REPO_ROOT
from fixtures import quiet_trainer

from datamodules import FashionMNISTDataModule
from models.metrics import sign_codes
from models.ppl import (
    PPL,
    HashSurrogate,
    PerturbationGenerator,
    affinity_loss,
    matching_loss,
    median_bandwidth,
    privacy_loss,
    project_perturbation,
    similarity_loss,
    similarity_matrix,
    smmd,
)
from models.ppl.losses import gaussian_kernel

P = {"inf": math.inf, "2": 2, "1": 1}
TOL = 1e-5


def lp(t, norm):
    return t.flatten(1).norm(p=P[norm], dim=1)


# ----------------------------------------------------------------------------------------------------
# generator and the l_p bound
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_projection_bound_holds_for_every_image(norm):
    g = torch.Generator().manual_seed(0)
    eps = {"inf": 0.1, "2": 1.5, "1": 20.0}[norm]
    # images far outside, near and inside the ball
    raw = torch.randn(12, 3, 9, 7, generator=g) * torch.logspace(-3, 2, 12)[:, None, None, None]
    delta = project_perturbation(raw, eps, norm)
    assert (lp(delta, norm) <= eps * (1 + TOL)).all()
    x = torch.rand(12, 3, 9, 7, generator=g)
    z = (x + delta).clamp(0, 1)
    assert (lp(z - x, norm) <= eps * (1 + TOL)).all()
    assert z.min() >= 0 and z.max() <= 1
    if norm != "inf":  # a projection: points inside the ball stay, points outside land on the sphere
        inside = lp(raw, norm) <= eps
        assert inside.any() and (~inside).any()
        torch.testing.assert_close(delta[inside], raw[inside])
        torch.testing.assert_close(lp(delta[~inside], norm), torch.full(((~inside).sum(),), eps))


def test_l1_projection_is_the_euclidean_projection():
    # Duchi et al.: the solution is soft-thresholding with the theta that puts the point on the sphere;
    # check against a bisection on theta and that no random point of the ball is closer
    g = torch.Generator().manual_seed(1)
    v = torch.randn(4, 50, generator=g) * 3
    w = project_perturbation(v, 5.0, "1")
    lo, hi = torch.zeros(4, 1), v.abs().amax(1, keepdim=True)
    for _ in range(100):
        mid = (lo + hi) / 2
        big = (v.abs() - mid).clamp(min=0).sum(1, keepdim=True) > 5.0
        lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
    torch.testing.assert_close(w, v.sign() * (v.abs() - lo).clamp(min=0), atol=1e-5, rtol=1e-5)
    others = project_perturbation(torch.randn(200, 50, generator=g) * 3, 5.0, "1")
    for i in range(4):
        assert (v[i] - w[i]).norm() <= (v[i] - others).norm(dim=1).min() + 1e-5


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
@pytest.mark.parametrize(("chans", "size"), [(1, (28, 28)), (3, (32, 32)), (3, (17, 23))])
def test_generator_any_size_and_bound(norm, chans, size):
    torch.manual_seed(0)
    eps = {"inf": 0.05, "2": 0.5, "1": 2.0}[norm]
    gen = PerturbationGenerator(chans, (4, 8, 8, 16), epsilon=eps, norm=norm)
    with torch.no_grad():  # blow the raw output up so that the projection is active
        gen.decoder[-1].weight.mul_(100)
    x = torch.rand(3, chans, *size)
    delta = gen(x)
    assert delta.shape == x.shape
    z = (x + delta).clamp(0, 1)
    assert (lp(z - x, norm) <= eps * (1 + TOL)).all()


# ----------------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------------
def test_similarity_matrix_class_ids_and_multi_hot():
    s = similarity_matrix(torch.tensor([0, 1, 0]))
    assert s.tolist() == [[1, -1, 1], [-1, 1, -1], [1, -1, 1]]
    multi = similarity_matrix(torch.tensor([[1, 0, 1], [0, 1, 1], [1, 0, 0]]))
    assert multi.tolist() == [[1, 1, 1], [1, 1, -1], [1, -1, 1]]


def test_pairwise_losses_vanish_on_ideal_codes_and_match_the_equations():
    u = torch.tensor([1.0, -1.0, 1.0, 1.0])
    labels = torch.tensor([0, 1, 0, 1])
    ideal = torch.stack([u, -u, u, -u])  # h_i^T h_j = c S_ij for two classes
    s = similarity_matrix(labels)
    assert affinity_loss(ideal, s) == 0 and similarity_loss(ideal, ideal, s) == 0
    assert matching_loss(ideal, ideal) == 0 and matching_loss(ideal, -ideal) == 4 * 16  # sum_i ||2u||^2
    h_x, h_z = torch.rand(4, 4) * 2 - 1, torch.rand(4, 4) * 2 - 1
    c = 4
    # the paper's plain sums, no per-term averaging
    jo = sum((h_z[i] @ h_z[j] - c * s[i, j]) ** 2 for i in range(4) for j in range(4))  # eq. 4
    js = sum((h_x[i] @ h_z[j] - c * s[i, j]) ** 2 for i in range(4) for j in range(4))  # eq. 9
    je = sum(((h_x[i] - h_z[i]) ** 2).sum() for i in range(4))  # eq. 10
    torch.testing.assert_close(affinity_loss(h_z, s), jo)
    torch.testing.assert_close(similarity_loss(h_x, h_z, s), js)
    torch.testing.assert_close(matching_loss(h_x, h_z), je)


def test_smmd_matches_a_loop_over_eqs_7_8():
    g = torch.Generator().manual_seed(2)
    h_x, h_z = torch.rand(6, 5, generator=g) * 2 - 1, torch.rand(6, 5, generator=g) * 2 - 1
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    s = similarity_matrix(labels)
    bw = 1.7
    k = lambda a, b: math.exp(-float(((a - b) ** 2).sum()) / bw)

    def d(star):
        pairs = [(i, j) for i, j in itertools.product(range(6), repeat=2) if i != j and (s[i, j] > 0) == star]
        terms = [k(h_x[i], h_x[j]) + k(h_z[i], h_z[j]) - 2 * k(h_x[i], h_z[j]) for i, j in pairs]
        return sum(terms) / len(pairs)

    out = smmd(h_x, h_z, s, bandwidth=bw)
    assert out["ds_pos"].item() == pytest.approx(d(True), abs=1e-5)
    assert out["ds_neg"].item() == pytest.approx(d(False), abs=1e-5)
    assert out["ds"].item() == pytest.approx(d(True) - d(False), abs=1e-5)
    # identical domains: no discrepancy at all
    assert smmd(h_x, h_x, s)["ds"].abs() < 1e-6


def test_median_bandwidth_is_the_median_squared_distance_without_gradient():
    h_x = torch.randn(5, 3, requires_grad=True)
    h_z = torch.randn(5, 3, requires_grad=True)
    bw = median_bandwidth(h_x, h_z)
    pooled = torch.cat([h_x, h_z]).detach()
    d2 = [float(((pooled[i] - pooled[j]) ** 2).sum()) for i in range(10) for j in range(10) if i != j]
    assert not bw.requires_grad
    assert bw.item() == pytest.approx(float(torch.tensor(d2).median()), rel=1e-4)
    # collapsed codes fall back to a positive bandwidth
    same = torch.zeros(4, 3)
    assert median_bandwidth(same, same) > 0
    assert gaussian_kernel(same, same, median_bandwidth(same, same)).eq(1).all()


def test_privacy_loss_combines_eq_11():
    g = torch.Generator().manual_seed(3)
    h_x, h_z = torch.rand(8, 6, generator=g) * 2 - 1, torch.rand(8, 6, generator=g) * 2 - 1
    s = similarity_matrix(torch.randint(0, 3, (8,), generator=g))
    out = privacy_loss(h_x, h_z, s, alpha=0.5, beta=3.0, gamma=2.0)
    expected = 0.5 * out["ds"] + 3.0 * similarity_loss(h_x, h_z, s) + 2.0 * matching_loss(h_x, h_z)
    torch.testing.assert_close(out["jp"], expected)


# ----------------------------------------------------------------------------------------------------
# the one-step game through the GRL
# ----------------------------------------------------------------------------------------------------
def _grads(loss, params):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)])


@pytest.mark.parametrize("lambda_", [1.0, 0.5])
def test_grl_gives_g_the_gradient_of_jo_minus_jp_and_f_that_of_jo_plus_jp(tiny_ppl, lambda_):
    torch.manual_seed(0)
    model = tiny_ppl(lambda_=lambda_)
    x, labels = torch.rand(16, 1, 28, 28), torch.randint(0, 3, (16,))
    g_params, f_params = list(model.generator.parameters()), list(model.surrogate.parameters())
    game = model.compute_losses(x, labels)  # reverse=True: what training_step optimises
    g_game, f_game = _grads(game["loss"], g_params), _grads(game["loss"], f_params)
    plain = model.compute_losses(x, labels, reverse=False)
    torch.testing.assert_close(plain["loss"], game["loss"])
    # one global normaliser 1 / (n^2 c^2) on the whole objective, the terms at the paper's scale
    scale = 1.0 / (16**2 * model.bits**2)
    assert plain["scale"].item() == pytest.approx(scale)
    torch.testing.assert_close(plain["loss"], scale * (plain["jo"] + plain["jp"]))
    g_jo, g_jp = _grads(scale * plain["jo"], g_params), _grads(scale * plain["jp"], g_params)
    f_jo, f_jp = _grads(scale * plain["jo"], f_params), _grads(scale * plain["jp"], f_params)
    assert g_jp.norm() > 0 and g_jo.norm() > 0
    # eq. 12: G minimises Jo - Jp (times lambda through the reversal), F minimises Jo + Jp
    torch.testing.assert_close(g_game, g_jo - lambda_ * g_jp, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(f_game, f_jo + f_jp, atol=1e-6, rtol=1e-4)
    # G's update -grad moves Jp up, F's moves it down (first order)
    assert torch.dot(-(g_game - g_jo), g_jp) > 0
    assert torch.dot(-f_game, f_jo + f_jp) < 0


def test_lambda_warmup_starts_without_reversed_gradient(tiny_ppl):
    torch.manual_seed(0)
    model = tiny_ppl(lambda_warmup_steps=10)  # not attached to a trainer: step 0, lambda = 0
    assert model.current_lambda() == 0.0
    x, labels = torch.rand(8, 1, 28, 28), torch.randint(0, 3, (8,))
    g_params = list(model.generator.parameters())
    g_game = _grads(model.compute_losses(x, labels)["loss"], g_params)
    plain = model.compute_losses(x, labels, reverse=False)
    g_jo = _grads(plain["scale"] * plain["jo"], g_params)
    torch.testing.assert_close(g_game, g_jo, atol=1e-6, rtol=1e-4)


def test_one_optimizer_step_updates_both_players_with_their_learning_rates(tiny_ppl):
    torch.manual_seed(0)
    model = tiny_ppl(lr_generator=1e-4, lr_surrogate=1e-3)
    opt = model.configure_optimizers()
    assert [group["lr"] for group in opt.param_groups] == [1e-4, 1e-3]
    g0 = [p.detach().clone() for p in model.generator.parameters()]
    f0 = [p.detach().clone() for p in model.surrogate.parameters()]
    model.compute_losses(torch.rand(8, 1, 28, 28), torch.randint(0, 2, (8,)))["loss"].backward()
    opt.step()
    # Adam's first step moves every parameter with a gradient by ~lr
    g_step = max(float((p - q).abs().max()) for p, q in zip(model.generator.parameters(), g0, strict=True))
    f_step = max(float((p - q).abs().max()) for p, q in zip(model.surrogate.parameters(), f0, strict=True))
    assert g_step == pytest.approx(1e-4, rel=1e-2) and f_step == pytest.approx(1e-3, rel=1e-2)


def test_generator_steps_update_the_surrogate_every_kth_step_only(tiny_ppl):
    import lightning as L
    from torch.utils.data import DataLoader

    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(
                (
                    [p.detach().clone() for p in pl_module.generator.parameters()],
                    [p.detach().clone() for p in pl_module.surrogate.parameters()],
                )
            )

    torch.manual_seed(0)
    model = tiny_ppl(generator_steps=3)
    assert [model.surrogate_updates_at(s) for s in range(7)] == [True, False, False, True, False, False, True]
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(1, 28, 28, generator=g), "label": i % 3, "index": i} for i in range(40)]
    trainer = L.Trainer(
        max_steps=5,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        callbacks=[Spy()],
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, DataLoader(batches, batch_size=8))
    seen.append(
        (
            [p.detach() for p in model.generator.parameters()],
            [p.detach() for p in model.surrogate.parameters()],
        )
    )

    def moved(a, b):
        return any(not torch.equal(p, q) for p, q in zip(a, b, strict=True))

    steps = list(zip(seen, seen[1:], strict=False))
    assert len(steps) == 5
    assert all(moved(g0, g1) for (g0, _), (g1, _) in steps)  # G takes every step
    assert [moved(f0, f1) for (_, f0), (_, f1) in steps] == [True, False, False, True, False]


def test_ensemble_g_plays_the_average_game_and_every_surrogate_learns(tiny_ppl):
    torch.manual_seed(0)
    model = tiny_ppl(extra_surrogates=["small_cnn"])
    assert len(model.extra_surrogates) == 1
    x, labels = torch.rand(16, 1, 28, 28), torch.randint(0, 3, (16,))
    g_params = list(model.generator.parameters())
    game = model.compute_losses(x, labels)
    g_game = _grads(game["loss"], g_params)
    # G's gradient = the average over the surrogates of the single-surrogate game (eq. 12 per surrogate)
    singles = []
    for surrogate in (model.surrogate, model.extra_surrogates[0]):
        z = model.protect(x)
        s = similarity_matrix(labels)
        h_z, h_x = surrogate(z), surrogate(x)
        jo, jp = affinity_loss(h_z, s), privacy_loss(h_x, h_z, s, 1.0, 10.0, 1.0)["jp"]
        singles.append(game["scale"] * (_grads(jo, g_params) - _grads(jp, g_params)))
    torch.testing.assert_close(g_game, (singles[0] + singles[1]) / 2, atol=1e-6, rtol=1e-4)
    # the extra surrogate is a player: in F's parameter group, with a gradient
    opt = model.configure_optimizers()
    extra = {id(p) for p in model.extra_surrogates.parameters()}
    assert extra <= {id(p) for p in opt.param_groups[1]["params"]}
    assert _grads(game["loss"], list(model.extra_surrogates.parameters())).norm() > 0
    assert model.hash(x).shape == (16, model.bits)  # the first surrogate's codes


def test_input_diversity_and_jpeg_act_on_the_privacy_path_in_training_only(tiny_ppl, monkeypatch):
    import models.ppl.module as module

    torch.manual_seed(0)
    x, labels = torch.rand(16, 1, 28, 28), torch.randint(0, 3, (16,))
    paper = tiny_ppl()
    model = tiny_ppl(input_diversity=1.0, jpeg_prob=1.0, jpeg_quality=50)
    model.load_state_dict(paper.state_dict())
    seen = []
    for name in ("random_resize_pad", "jpeg_straight_through"):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda z, *a, _r=real, _n=name: seen.append(_n) or _r(z, *a))
    model.train()
    game, plain = model.compute_losses(x, labels), paper.compute_losses(x, labels)
    assert seen == ["random_resize_pad", "jpeg_straight_through"]
    torch.testing.assert_close(game["jo"], plain["jo"])  # Jo (eq. 4) sees z as it is
    assert not torch.allclose(game["jp"], plain["jp"])  # Jp (eq. 11) sees the transformed z
    g = _grads(game["loss"], list(model.generator.parameters()))
    assert torch.isfinite(g).all() and g.norm() > 0  # the straight-through JPEG passes G's gradient
    model.eval()
    seen.clear()
    torch.testing.assert_close(model.compute_losses(x, labels)["jp"], plain["jp"])
    assert seen == []


def test_diversity_transforms():
    from torchvision.transforms.v2 import functional as TF

    from models.ppl.diversity import jpeg_straight_through, random_resize_pad

    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    y = jpeg_straight_through(x, 60)
    x8 = (x.detach() * 255).round().to(torch.uint8)
    torch.testing.assert_close(y.detach(), TF.jpeg(x8, quality=60).float() / 255)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))  # identity gradient (BPDA)
    ones = torch.ones(2, 1, 28, 28)
    kept = []
    for seed in range(8):
        out = random_resize_pad(ones, min_scale=0.5, generator=torch.Generator().manual_seed(seed))
        assert out.shape == ones.shape
        kept.append(int((out[0] > 0.5).sum()))  # pixels of the shrunk copy, the rest is zero padding
        assert torch.equal(out[0], out[1])  # one draw per batch
    assert all(14 * 14 <= k <= 28 * 28 for k in kept) and min(kept) < 28 * 28


# ----------------------------------------------------------------------------------------------------
# public API and bad input
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_protect_and_hash(tiny_ppl, norm):
    torch.manual_seed(0)
    eps = {"inf": 0.3, "2": 2.0, "1": 20.0}[norm]
    model = tiny_ppl(norm=norm, epsilon=eps)
    assert model.hparams.epsilon == eps and model.hparams.norm == norm and model.hparams.bits == 8
    x = torch.rand(5, 1, 28, 28)
    z = model.protect(x)
    assert z.shape == x.shape and z.min() >= 0 and z.max() <= 1
    assert (lp(z - x, norm) <= eps * (1 + TOL)).all()
    codes = model.hash(x)
    assert codes.shape == (5, 8) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    vis = model.visualize({"image": x})
    assert set(vis) == {"protected", "perturbation"}
    for images in vis.values():
        assert images.shape == x.shape and images.min() >= 0 and images.max() <= 1


def test_hash_maps_zero_to_plus_one(tiny_ppl):
    model = tiny_ppl()
    with torch.no_grad():
        model.surrogate.fc.weight.zero_()
        model.surrogate.fc.bias.zero_()
    assert model.hash(torch.rand(2, 1, 28, 28)).eq(1).all()


def test_timm_surrogate_for_rgb():
    torch.manual_seed(0)
    net = HashSurrogate(in_chans=3, bits=12, backbone="test_resnet")
    h = net(torch.rand(2, 3, 32, 32))
    assert h.shape == (2, 12) and h.abs().max() < 1
    assert set(sign_codes(net(torch.rand(2, 3, 32, 32))).unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -0.1}, "epsilon"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"norm": "3"}, "unknown norm"),
        ({"surrogate_backbone": "no_such_net"}, "unknown backbone"),
        ({"lambda_": -1.0}, "lambda_"),
        ({"lambda_warmup_steps": -1}, "lambda_warmup_steps"),
        ({"generator_steps": 0}, "generator_steps.*integer >= 1"),
        ({"generator_steps": 1.5}, "generator_steps.*integer >= 1"),
        ({"bandwidth": 0.0}, "bandwidth"),
        ({"generator_channels": [4, 8]}, "4 positive widths"),
        ({"surrogate_backbone": "ppl_cnn", "pretrained": True}, "pretrained"),
        ({"input_diversity": 1.5}, "input_diversity.*probability"),
        ({"jpeg_prob": -0.1}, "jpeg_prob.*probability"),
        ({"jpeg_quality": 0}, r"jpeg_quality.*\[1, 100\]"),
        ({"extra_surrogates": ["no_such_net_xyz"]}, "no_such_net_xyz"),
    ],
)
def test_bad_construction_arguments(tiny_ppl, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_ppl(**kwargs)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.rand(2, 3, 28, 28), "1-channel"),
        (torch.rand(2, 1, 32, 32), "28x28"),
        (torch.rand(2, 1, 28, 28) * 255, r"\[0, 1\]"),
        (torch.rand(2, 1, 28, 28) - 0.5, r"\[0, 1\]"),
        (torch.full((2, 1, 28, 28), float("nan")), r"\[0, 1\]"),
        (torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8), "float"),
        (torch.rand(1, 28, 28), r"\[B, C, H, W\]"),
    ],
)
def test_bad_images_at_call_time(tiny_ppl, x, match):
    model = tiny_ppl()
    for call in (model.protect, model.hash, model):
        with pytest.raises(ValueError, match=match):
            call(x)


# ----------------------------------------------------------------------------------------------------
# configs and end to end
# ----------------------------------------------------------------------------------------------------
def test_fashion_mnist_config_follows_the_paper():
    cfg = yaml.safe_load(open(REPO_ROOT / "configs" / "ppl" / "fashion_mnist.yaml"))
    args = cfg["model"]["init_args"]
    assert cfg["model"]["class_path"] == "models.ppl.PPL"
    assert (args["alpha"], args["beta"], args["gamma"], args["lambda_"]) == (1, 10, 1, 1)
    assert (args["epsilon"], args["norm"], args["bits"]) == (0.3, "inf", 16)
    assert (args["lr_generator"], args["lr_surrogate"]) == (1e-4, 1e-3)
    assert cfg["trainer"]["max_steps"] == 1000 and cfg["data"]["init_args"]["batch_size"] == 512
    assert cfg["data"]["init_args"]["num_train"] == 10000
    model = PPL(**args)
    assert [m.out_channels for m in model.generator.encoder if isinstance(m, torch.nn.Conv2d)] == [
        16,
        32,
        64,
        128,
    ]


def test_fit_validate_on_tiny_fashion_mnist(tiny_ppl, fashion_mnist_dir):
    L.seed_everything(0)
    dm = FashionMNISTDataModule(
        data_dir=fashion_mnist_dir,
        batch_size=16,
        split="retrieval",
        num_train=32,
        num_query=16,
        num_database=32,
    )
    model = tiny_ppl()
    trainer = quiet_trainer(accelerator="cpu", max_steps=2, num_sanity_val_steps=0)
    before = [p.detach().clone() for p in model.generator.parameters()]
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/jo", "train/jp", "train/ds", "train/js", "train/je", "train/code_abs"):
        assert torch.isfinite(metrics[key]), key
    for key in (
        "val/map_cc",
        "val/map_ac",
        "val/map_ca",
        "val/map_aa",
        "val/map_gap",
        "val/psnr",
        "val/ssim",
    ):
        assert key in metrics, key
    assert 0 <= metrics["val/map_cc"] <= 1 and 0 <= metrics["val/map_ac"] <= 1
    assert metrics["val/psnr"] > 10 and -1 <= metrics["val/ssim"] <= 1
    assert any((p != q).any() for p, q in zip(model.generator.parameters(), before, strict=True))
    test = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert {"test/map_cc", "test/map_ac", "test/psnr", "test/ssim"} <= set(test)


def test_fashion_mnist_config_trains_through_the_cli(fashion_mnist_dir, tmp_path):

    from models.cli import cli_main

    cli = cli_main(
        [
            "fit",
            f"--config={REPO_ROOT / 'configs' / 'ppl' / 'fashion_mnist.yaml'}",
            f"--data.init_args.data_dir={fashion_mnist_dir}",
            "--data.init_args.batch_size=16",
            "--data.init_args.num_train=32",
            "--data.init_args.num_query=16",
            "--data.init_args.num_database=32",
            "--model.init_args.generator_channels=[4,4,8,8]",
            "--trainer.max_steps=4",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={tmp_path / 'logs'}",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert cli.trainer.global_step == 4
    assert "val/map_gap" in cli.trainer.callback_metrics
    assert cli.trainer.checkpoint_callback.best_model_path
    final = tmp_path / "final.ckpt"
    cli.trainer.save_checkpoint(final)
    restored = PPL.load_from_checkpoint(final, weights_only=True)  # hparams alone rebuild the model
    assert restored.hparams.epsilon == 0.3 and restored.hparams.norm == "inf"
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(restored.protect(x), cli.model.protect(x))


def test_surrogate_starts_with_order_one_codes_and_rejects_bad_gain():
    from models.ppl.surrogate import HashSurrogate

    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28)
    default = HashSurrogate(1, 16, fc_init_gain=None)(x).abs().mean()
    scaled = HashSurrogate(1, 16)(x).abs().mean()
    assert scaled > 5 * default, (float(scaled), float(default))
    with pytest.raises(ValueError, match="fc_init_gain"):
        HashSurrogate(1, 16, fc_init_gain=0.0)


def test_channels_last_fit_matches_the_default_format(tiny_ppl, fashion_mnist_dir, tmp_path):
    def fit(channels_last: bool) -> PPL:
        L.seed_everything(0)
        dm = FashionMNISTDataModule(
            data_dir=fashion_mnist_dir, batch_size=16, split="retrieval", num_train=32, num_query=16
        )
        model = tiny_ppl(channels_last=channels_last)
        trainer = quiet_trainer(accelerator="cpu", max_steps=2, limit_val_batches=0)
        trainer.fit(model, datamodule=dm)
        return model

    plain, fast = fit(False), fit(True)
    assert fast.hparams.channels_last and not plain.hparams.channels_last
    for name, q in fast.named_parameters():
        # back in the default format after the fit (safetensors exports need contiguous tensors)
        assert q.is_contiguous(), name
    fast.on_fit_start()  # what the fit trained in
    conv = fast.generator.encoder[3].weight  # a conv with 4 input channels
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    fast.on_fit_end()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    plain.eval(), fast.eval()
    # same model up to float rounding (weights with ~0 gradients differ more: Adam normalises the noise)
    torch.testing.assert_close(fast.protect(x), plain.protect(x), rtol=0, atol=2e-3)
    torch.testing.assert_close(fast.surrogate(x), plain.surrogate(x), rtol=0, atol=2e-3)
    fast.save_pretrained(tmp_path / "hub")
    reloaded = PPL.from_pretrained(tmp_path / "hub")
    for (name, p), q in zip(fast.state_dict().items(), reloaded.state_dict().values(), strict=True):
        torch.testing.assert_close(q, p, msg=name)
