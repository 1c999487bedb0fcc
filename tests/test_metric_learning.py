"""models.attacks.metric_learning: DML victims / probes (Proxy-Anchor, SoftTriple, CHEST-style), tiny data."""

from __future__ import annotations

import pytest
import torch

from models.attacks.metric_learning import (
    METRIC_LOSSES,
    HyperbolicSoftTriple,
    MetricVictim,
    distance_map_ndcg,
    metric_probe_attack,
)
from models.metrics import hamming_map, hamming_ndcg


def test_distance_ranking_matches_hamming_on_sign_codes():
    """On -1/+1 codes Euclidean ranking is Hamming ranking; both break ties by database index."""
    g = torch.Generator().manual_seed(0)
    q = torch.where(torch.rand(30, 8, generator=g) < 0.5, -1.0, 1.0)
    d = torch.where(torch.rand(200, 8, generator=g) < 0.5, -1.0, 1.0)
    ql, dl = torch.randint(4, (30,), generator=g), torch.randint(4, (200,), generator=g)
    m, n = distance_map_ndcg(q, ql, d, dl, k=50, chunk=7)
    assert m == pytest.approx(float(hamming_map(q, ql, d, dl, ties="index")), abs=1e-6)
    assert n == pytest.approx(float(hamming_ndcg(q, ql, d, dl, k=50, ties="index")), abs=1e-6)


@pytest.mark.parametrize("loss", METRIC_LOSSES)
def test_metric_victim_losses_train(loss):
    torch.manual_seed(0)
    victim = MetricVictim(loss, dim=8, num_classes=3)
    x = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    y = torch.arange(12) % 3
    value = victim.training_step((x, y), 0)
    value.backward()
    assert torch.isfinite(value)
    proxies = list(victim.loss_fn.parameters())
    assert proxies and all(p.grad is not None for p in proxies)  # proxies learn
    victim.eval()
    emb, codes = victim.embedding(x.float() / 255), victim.hash(x.float() / 255)
    assert emb.shape == codes.shape == (12, 8)
    assert torch.allclose(emb.norm(dim=1), torch.ones(12), atol=1e-5)
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert (victim.ball_loss is not None) == (loss == "chest")


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="valid"):
        MetricVictim("triplet")
    with pytest.raises(ValueError, match="proxy_anchor_margin"):
        MetricVictim("proxy_anchor", proxy_anchor_margin=1.5)


def test_proxy_anchor_margin_reaches_the_loss_and_the_checkpoint():
    assert MetricVictim("proxy_anchor").loss_fn.margin == 0.1  # Proxy-Anchor's paper setting
    victim = MetricVictim("proxy_anchor", proxy_anchor_margin=0.5)
    assert victim.loss_fn.margin == 0.5 and victim.hparams.proxy_anchor_margin == 0.5


def test_hyperbolic_softtriple_learns_on_the_ball():
    import geoopt

    torch.manual_seed(0)
    y = torch.arange(60) % 3
    z = torch.randn(60, 4) * 0.3 + torch.eye(4)[y] * 2  # three separable clusters
    loss_fn = HyperbolicSoftTriple(3, 4, centers=2)
    assert loss_fn.to_ball(z).norm(dim=1).max() < 1  # inside the unit ball (c = 1)
    opt = geoopt.optim.RiemannianAdam(loss_fn.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        opt.zero_grad()
        value = loss_fn(z, y)
        first = float(value.detach()) if first is None else first
        value.backward()
        opt.step()
    assert float(loss_fn(z, y)) < 0.5 * first
    assert loss_fn.proxies.norm(dim=1).max() < 1  # Riemannian steps keep the proxies on the ball


def test_metric_probe_on_features():
    g = torch.Generator().manual_seed(0)

    def data(n):
        y = torch.randint(3, (n,), generator=g)
        return torch.randn(n, 6, generator=g) + 3 * torch.eye(6)[y], y

    (fz, fy), (hz, hy), (tz, ty) = data(300), data(60), data(100)
    r = metric_probe_attack(fz, fy, hz, hy, tz, ty, 3, loss="proxy_anchor", dim=4, max_epochs=3, seed=0)
    assert r["class_accuracy"] > 0.8  # chance is 1/3
    assert 0 <= r["lrp"] and r["k"] == 10


def test_metric_victims_gate_script(fashion_mnist_dir, tmp_path):
    """scripts/metric_victims.py trains each victim with its VICTIM_SETTINGS and compares with ADSH's."""
    import json

    import metric_victims

    from models.attacks.metric_learning import VICTIM_SETTINGS

    out = tmp_path / "gate"
    args = ["--data-dir", str(fashion_mnist_dir), "--num-query", "16", "--num-database", "48"]
    args += ["--num-train", "48", "--epochs", "1", "--out", str(out)]
    args += ["--losses", "proxy_anchor", "softtriple"]
    result = metric_victims.main(args)
    assert [r["loss"] for r in result["rows"]] == ["proxy_anchor", "softtriple"]
    pa, st = result["rows"]
    assert pa["settings"] == VICTIM_SETTINGS["proxy_anchor"] and st["settings"] == {}
    for r in result["rows"]:
        assert 0 < r["real_map"] <= 1 and r["passes_gate_real"] == (r["real_map"] >= result["adsh"]["map"])
    assert json.loads((out / "metric_victims.json").read_text()) == result
    md = (out / "metric_victims.md").read_text()
    assert "proxy_anchor_margin=0.5" in md and "| softtriple | defaults |" in md


def test_train_metric_victim_defaults_to_the_losses_own_epochs_and_settings(monkeypatch):
    from models.attacks import metric_learning

    monkeypatch.setitem(metric_learning.VICTIM_EPOCHS, "proxy_anchor", 2)
    x = torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8)
    victim, info = metric_learning.train_metric_victim("proxy_anchor", x, torch.arange(30) % 3, 8, 3)
    assert info["epochs"] == 2  # no early stop by default: every epoch of VICTIM_EPOCHS runs
    assert victim.loss_fn.margin == metric_learning.VICTIM_SETTINGS["proxy_anchor"]["proxy_anchor_margin"]
    _, info = metric_learning.train_metric_victim("proxy_anchor", x, torch.arange(30) % 3, 8, 3, max_epochs=1)
    assert info["epochs"] == 1
