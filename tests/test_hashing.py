"""ADSH / DSDH victims: closed-form discrete updates, codes, checkpoints, and tiny end-to-end fits."""

import lightning as L
import pytest
import torch
from fixtures import quiet_trainer

from models.hashing import (
    ADSH,
    DSDH,
    adsh_dcc_update,
    adsh_v_objective,
    dsdh_b_objective,
    dsdh_dcc_update,
    dsdh_w_update,
    label_similarity,
    sign_codes,
)
from models.metrics import hamming_map


def tiny_trainer(max_epochs, **kwargs):
    return quiet_trainer(accelerator="cpu", max_epochs=max_epochs, num_sanity_val_steps=0, **kwargs)


def random_codes(*shape, generator):
    return torch.randint(0, 2, shape, generator=generator).float() * 2 - 1


# ---------------------------------------------------------------------- closed-form updates
def adsh_full_objective(U, V, S, omega_rows, gamma):
    """ADSH's J written literally: sum_ij (u_i^T v_j - c S_ij)^2 + gamma sum_i ||v_idx(i) - u_i||^2."""
    c = U.shape[1]
    return ((U @ V.T - c * S) ** 2).sum() + gamma * ((V[omega_rows] - U) ** 2).sum()


def test_adsh_v_update_decreases_the_objective():
    g = torch.Generator().manual_seed(0)
    n, m, c, gamma = 50, 12, 8, 200.0
    db_labels = torch.randint(0, 4, (n,), generator=g)
    omega_rows = torch.randperm(n, generator=g)[:m]
    U = torch.tanh(torch.randn(m, c, generator=g))
    S = label_similarity(db_labels[omega_rows], db_labels) * 2 - 1
    Ubar = torch.zeros(n, c)
    Ubar[omega_rows] = U
    Q = -2 * c * S.T @ U - 2 * gamma * Ubar
    V0 = random_codes(n, c, generator=g)
    V1 = adsh_dcc_update(V0, U, Q)
    full0, full1 = (adsh_full_objective(U, V, S, omega_rows, gamma) for V in (V0, V1))
    assert full1 < full0
    # the V-part used by the update differs from the literal J by a V-independent constant
    assert torch.allclose(full0 - adsh_v_objective(V0, U, Q), full1 - adsh_v_objective(V1, U, Q), rtol=1e-4)
    # more sweeps never go back up, and the codes stay exactly -1/+1
    V3 = adsh_dcc_update(V1, U, Q, sweeps=3)
    assert adsh_v_objective(V3, U, Q) <= adsh_v_objective(V1, U, Q) + 1e-3
    assert set(V3.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(V0, V0.clone())  # input not modified in place


def test_dsdh_w_and_b_updates_decrease_their_objectives():
    g = torch.Generator().manual_seed(1)
    N, c, K, mu, nu, eta = 40, 6, 5, 0.5, 1.0, 0.1
    Y = torch.nn.functional.one_hot(torch.randint(0, K, (N,), generator=g), K).float()
    U = torch.randn(N, c, generator=g)
    B0 = random_codes(N, c, generator=g)

    def w_objective(W, B):
        return nu * ((Y - B @ W) ** 2).sum() + eta * (W**2).sum()

    W = dsdh_w_update(B0, Y, nu, eta)
    W_rand = torch.randn(c, K, generator=g)
    assert w_objective(W, B0) < w_objective(W_rand, B0)
    W_req = W.clone().requires_grad_(True)  # ridge solution: zero gradient
    w_objective(W_req, B0).backward()
    assert W_req.grad.abs().max() < 1e-3

    B1 = dsdh_dcc_update(B0, U, Y, W, mu, nu)
    assert dsdh_b_objective(B1, U, Y, W, mu, nu) < dsdh_b_objective(B0, U, Y, W, mu, nu)
    assert set(B1.unique().tolist()) <= {-1.0, 1.0}
    # each bit step is an exact minimisation: flipping any single bit afterwards cannot help much
    B2 = dsdh_dcc_update(B1, U, Y, W, mu, nu, sweeps=5)
    assert dsdh_b_objective(B2, U, Y, W, mu, nu) <= dsdh_b_objective(B1, U, Y, W, mu, nu) + 1e-3


def test_label_similarity_single_and_multi_label():
    assert torch.equal(
        label_similarity(torch.tensor([0, 1]), torch.tensor([1, 1, 0])),
        torch.tensor([[0.0, 0, 1], [1, 1, 0]]),
    )
    multi = torch.tensor([[1, 0, 1], [0, 1, 0]])
    assert torch.equal(label_similarity(multi, multi), torch.tensor([[1.0, 0], [0, 1]]))


# ---------------------------------------------------------------------- codes and bad input
@pytest.mark.parametrize("cls", [ADSH, DSDH])
def test_hash_gives_exact_plus_minus_one(cls):
    model = cls(bits=12).eval()
    codes = model.hash(torch.rand(3, 1, 28, 28))
    assert codes.shape == (3, 12) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(sign_codes(torch.tensor([0.0, -0.0, 2.0, -3.0])), torch.tensor([1.0, 1.0, 1.0, -1.0]))


@pytest.mark.parametrize("cls", [ADSH, DSDH])
def test_bad_input_raises(cls):
    with pytest.raises(ValueError, match="bits"):
        cls(bits=0)
    with pytest.raises(ValueError, match="unknown backbone"):
        cls(backbone="no_such_net")
    model = cls(bits=8)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        model.hash(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="label"):
        model.training_step({"image": torch.rand(2, 1, 28, 28), "index": torch.arange(2)}, 0)
    with pytest.raises(RuntimeError, match="retrieval datamodule"):
        tiny_trainer(1).fit(model, train_dataloaders=[{"image": torch.rand(2, 1, 28, 28)}])


def test_adsh_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="num_samples"):
        ADSH(num_samples=0)
    with pytest.raises(ValueError, match="eval_database_codes"):
        ADSH(eval_database_codes="other")


# ---------------------------------------------------------------------- end to end on the tiny fixture
def chance_map(dm):
    """mAP of random codes on the fixture's query/database: the level a useless model gets."""
    g = torch.Generator().manual_seed(0)
    q, db = dm.query_set.targets, dm.database_set.targets
    return float(
        hamming_map(random_codes(len(q), 8, generator=g), q, random_codes(len(db), 8, generator=g), db)
    )


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (ADSH, dict(num_samples=48, inner_epochs=2, outer_iterations=3, eval_database_codes="hash")),
        (DSDH, {}),
    ],
    ids=["adsh", "dsdh"],
)
def test_fit_then_test_learns_above_chance(tiny_dm, fashion_mnist_dir, cls, kwargs):
    L.seed_everything(0)
    dm = tiny_dm(fashion_mnist_dir)
    model = cls(bits=8, **kwargs)
    trainer = tiny_trainer(6)
    trainer.fit(model, datamodule=dm)
    assert "val/map" in trainer.callback_metrics and "val/ndcg_100" in trainer.callback_metrics
    logged = trainer.test(model, datamodule=dm, verbose=False)[0]
    result = logged["test/map"]
    assert 0.0 <= result <= 1.0
    assert result > chance_map(dm) + 0.3  # fixture images carry a class pattern: easy to separate
    assert 0.0 <= logged["test/ndcg_100"] <= 1.0
    if cls is ADSH:
        assert int(model.outer_iteration) == 3 and int(model.omega.sum()) == 48
        assert model.V.shape == (96, 8) and set(model.V.unique().tolist()) == {-1.0, 1.0}
    else:
        assert model.B.shape == (64, 8) and set(model.B.unique().tolist()) == {-1.0, 1.0}


def test_adsh_learned_database_codes_and_early_stop(tiny_dm, fashion_mnist_dir):
    dm = tiny_dm(fashion_mnist_dir)
    model = ADSH(bits=8, num_samples=None, inner_epochs=1, outer_iterations=2)
    trainer = tiny_trainer(10, limit_train_batches=2)  # stops after 2 outer iterations, not 10 epochs
    trainer.fit(model, datamodule=dm)
    assert trainer.current_epoch == 2 and int(model.outer_iteration) == 2
    assert model._v_covers_database()
    result = trainer.test(model, datamodule=dm, verbose=False)[0]["test/map"]
    assert 0.0 <= result <= 1.0


@pytest.mark.parametrize("cls", [ADSH, DSDH])
def test_checkpoint_round_trip_keeps_codes(tiny_dm, fashion_mnist_dir, tmp_path, cls):
    dm = tiny_dm(fashion_mnist_dir)
    model = cls(bits=8, **({"inner_epochs": 1} if cls is ADSH else {}))
    trainer = tiny_trainer(1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = cls.load_from_checkpoint(
        path, weights_only=True
    )  # fresh module, lazy buffers sized from the checkpoint
    names = ["V", "U", "omega"] if cls is ADSH else ["B", "U", "W"]
    for name in names:
        assert torch.equal(getattr(loaded, name), getattr(model, name)), name
    assert getattr(loaded, names[0]).abs().min() == 1  # trained codes, not the empty placeholder
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded.eval().hash(x), model.eval().hash(x))
    assert loaded.hparams.bits == 8


def test_adsh_soft_similarity_balances_the_targets():
    from models.hashing.adsh import adsh_similarity, similar_ratio

    a = torch.tensor([0, 0, 1, 2])
    b = torch.tensor([0, 1, 1, 2, 2, 2])
    s01 = (a[:, None] == b[None, :]).float()
    r = similar_ratio(a, b, chunk=4)  # chunked count == plain count
    assert r == pytest.approx(float(s01.sum() / (1 - s01).sum()))
    soft = adsh_similarity(a, b, r)
    assert torch.allclose(soft[s01 == 1], torch.ones(()))
    assert torch.allclose(soft[s01 == 0], torch.full((), -r))
    # the weighted targets are balanced: similar and dissimilar pairs pull with the same total weight
    assert float(soft.sum()) == pytest.approx(0.0, abs=1e-5)
    assert torch.equal(adsh_similarity(a, b, None), s01 * 2 - 1)
