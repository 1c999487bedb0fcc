"""models.search: replicated SCA codes, recall, PQ, and the encrypted-query PQ search (tiny data)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from models.search import (
    Packing,
    ProductQuantizer,
    TrustedScanner,
    adc_scan,
    recall_at_k,
    replicate_public_codes,
    sca_coefficients,
)

needs_tenseal = pytest.mark.skipif(
    importlib.util.find_spec("tenseal") is None, reason="tenseal not installed"
)


def _tables(centroids, q):
    m, _, dsub = centroids.shape
    return (centroids**2).sum(-1) - 2 * np.einsum("mjd,md->mj", centroids, q.reshape(m, dsub))


@pytest.fixture(scope="module")
def pq_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 8)).astype(np.float32)
    pq = ProductQuantizer(8, m=2).train(x)
    return x, pq, pq.encode(x), rng.standard_normal((3, 8)).astype(np.float32)


def test_replicas_are_sca_public_codes(tiny_sca):
    model = tiny_sca().eval()
    images = torch.rand(6, 1, 28, 28)
    coeff = sca_coefficients(model, images, batch_size=4)
    assert coeff.shape == (6, 1, 32)
    g = torch.Generator().manual_seed(0)
    public, clean, source = replicate_public_codes(
        model, coeff, 15, noise=0.5, generator=g, chunk=4, keep_clean=True
    )
    assert public.shape == clean.shape == (15, 32)
    assert torch.equal(source, torch.arange(15) % 6)
    assert ((public != 0).sum(1) == model.sx + model.hparams.sp).all()  # Sx informative + Sp noise
    assert torch.equal(public * (clean != 0), clean)  # the support entries are the clean code's
    with torch.no_grad():
        real = model.encode(images)
    assert torch.allclose(clean[:6], real, atol=1e-5)  # replica 0 = the real code
    assert not torch.equal(clean[6:12] != 0, clean[:6] != 0)  # later replicas move
    with pytest.raises(ValueError, match="n >= 1"):
        replicate_public_codes(model, coeff, 0)


def test_recall_at_k():
    truth = torch.tensor([[0, 1, 2], [3, 4, 5]])
    ids = torch.tensor([[2, 9, 0], [-1, -1, 5]])
    assert recall_at_k(ids, truth, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert recall_at_k(truth, truth, 3) == 1.0
    with pytest.raises(ValueError, match="ground-truth rows"):
        recall_at_k(ids[:1], truth, 3)


def test_product_quantizer(pq_data):
    x, pq, codes, _ = pq_data
    assert codes.shape == (600, 2) and codes.dtype == np.uint8
    rec = pq.decode(codes)
    assert rec.shape == x.shape
    assert ((rec - x) ** 2).sum(1).mean() < (x**2).sum(1).mean() / 2  # 256 centroids per 4-d sub-space
    assert np.allclose(pq.centroids[np.arange(2), codes[5]].reshape(-1), rec[5])
    with pytest.raises(RuntimeError, match="train"):
        ProductQuantizer(8, m=2).encode(x)
    with pytest.raises(ValueError, match="multiple"):
        ProductQuantizer(10, m=4)


def test_packing_layout_gives_adc_tables(pq_data):
    """The slot arithmetic the server does under CKKS, done in the clear, gives the ADC tables."""
    _, pq, _, queries = pq_data
    pk = Packing(8, 2, 256, slots=128)  # dsub 4, 32 windows per ciphertext, 16 ciphertexts
    assert (pk.dsub, pk.windows, pk.groups) == (4, 32, 16)
    q = queries[0]
    slots = pk.query_slots(q)
    groups = [
        (slots * minus_two_c).reshape(pk.dsub, pk.windows).sum(0) + norms  # product, rotation sum, + ||c||^2
        for minus_two_c, norms in pk.server_plaintexts(pq.centroids)
    ]
    assert np.allclose(pk.unpack_tables(groups), _tables(pq.centroids.astype(np.float64), q), atol=1e-5)
    with pytest.raises(ValueError, match="power of two"):
        Packing(12, 2, 256, 4096)
    with pytest.raises(ValueError, match="multiple"):
        Packing(8, 3, 256, 4096)
    with pytest.raises(ValueError, match="centroids must be"):
        pk.server_plaintexts(pq.centroids[:1])


def test_adc_scan_is_pq_brute_force(pq_data):
    _, pq, codes, queries = pq_data
    onehot = TrustedScanner.make_onehot(codes, 2, 256)
    tables = torch.as_tensor(np.stack([_tables(pq.centroids, q) for q in queries]))
    d, i = adc_scan(onehot, tables, 5)
    rec = pq.decode(codes)
    brute = ((queries[:, None] - rec[None]) ** 2).sum(-1) - (queries**2).sum(1)[:, None]
    assert np.allclose(d.numpy(), np.sort(brute, 1)[:, :5], atol=1e-4)
    assert np.allclose(np.take_along_axis(brute, i.numpy(), 1), d.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="codes must lie"):
        TrustedScanner.make_onehot(codes.astype(np.int64) + 256, 2, 256)


@needs_tenseal
def test_encrypted_query_search(pq_data):
    from models.search import QueryClient, TableServer, TrustedProcess

    _, pq, codes, queries = pq_data
    pk = Packing(8, 2, 256, slots=4096)
    client = QueryClient(pk)
    server = TableServer(pk, pq.centroids, client.public_context())
    assert not server.context.has_secret_key()  # the server cannot decrypt
    enc = [server.tables(client.encrypt(q)) for q in queries]
    scanner = TrustedScanner(pk, codes, client.secret_context())
    for q, groups in zip(queries, enc, strict=True):
        # CKKS is approximate
        assert np.allclose(scanner.decrypt(groups), _tables(pq.centroids, q), atol=1e-3)
    onehot = TrustedScanner.make_onehot(codes, 2, 256)
    plain_ids = adc_scan(onehot, torch.as_tensor(np.stack([_tables(pq.centroids, q) for q in queries])), 5)[1]
    _, ids = scanner.search(enc, 5)
    assert (ids == plain_ids.numpy()).mean() >= 0.9  # near-ties may swap under CKKS noise
    with TrustedProcess(pk, codes, client.secret_context()) as tp:  # the simulated trusted component
        tp.submit(enc[:2], 5)
        tp.submit(enc[2:], 5)
        first, second = tp.receive()[1], tp.receive()[1]
    assert np.array_equal(np.concatenate([first, second]), ids)
    with pytest.raises(ValueError, match="secret key"):
        TableServer(pk, pq.centroids, client.secret_context())
    with pytest.raises(ValueError, match="secret key"):
        TrustedScanner(pk, codes, client.public_context())
    with pytest.raises(ValueError, match="slots"):
        QueryClient(Packing(8, 2, 256, slots=2048))
