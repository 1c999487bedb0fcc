"""Tests of the datamodules on tiny fixtures written in the official formats (tests/fixtures.py)."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from fixtures import (
    md5sum,
    patch_celeba_md5,
    patch_cifar10_md5,
    quiet_trainer,
    write_celeba,
    write_cifar10_batches,
    write_mnist_idx,
)
from torch.utils.data import DataLoader

from datamodules import (
    CELEBA_ATTRIBUTE_NAMES,
    CelebADataModule,
    CIFAR10DataModule,
    DatasetCorruptedError,
    DatasetNotFoundError,
    FashionMNISTDataModule,
    MNISTDataModule,
    TensorImageDataset,
    passthrough_collate,
)
from datamodules.mnist import DEBIAN_FASHION_MNIST_DIR, MNIST_FILES

N_TRAIN, N_TEST = 120, 40


def _first_batch(loader: DataLoader) -> dict[str, torch.Tensor]:
    return next(iter(loader))


def _check_batch(dm, batch: dict[str, torch.Tensor], batch_size: int) -> dict[str, torch.Tensor]:
    c, h, w = dm.image_shape
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (batch_size, c, h, w)
    assert batch["index"].dtype == torch.int64 and batch["index"].shape == (batch_size,)
    out = dm.on_after_batch_transfer(batch, 0)
    assert out["image"].dtype == torch.float32 and out["image"].shape == (batch_size, c, h, w)
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
    torch.testing.assert_close(out["image"], batch["image"].float() / 255)
    return out


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    write_mnist_idx(tmp_path / "MNIST" / "raw", N_TRAIN, N_TEST, gz=False, seed=1)
    return tmp_path


@pytest.fixture
def cifar_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    patch_cifar10_md5(monkeypatch, write_cifar10_batches(tmp_path, n_per_batch=20, seed=2))
    return tmp_path


@pytest.fixture
def celeba_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # 8 identities with 2..9 images: min_images_per_identity=4 drops the first two
    patch_celeba_md5(monkeypatch, write_celeba(tmp_path, 8, [2, 3, 4, 5, 6, 7, 8, 9], size=(20, 24), seed=3))
    return tmp_path


# ---------------------------------------------------------------------- TensorImageDataset
@pytest.mark.parametrize("num_workers", [0, 2])
def test_tensor_dataset_batched_fetch(num_workers: int) -> None:
    images = torch.randint(0, 256, (30, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(30) % 3
    ds = TensorImageDataset(images, labels, torch.arange(10, 30))
    assert len(ds) == 20
    sample = ds[3]
    assert torch.equal(sample["image"], images[13]) and sample["label"] == labels[13] and sample["index"] == 3
    loader = DataLoader(ds, batch_size=8, num_workers=num_workers, collate_fn=passthrough_collate)
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [8, 8, 4]
    index = torch.cat([b["index"] for b in batches])
    assert torch.equal(index, torch.arange(20))
    assert torch.equal(torch.cat([b["image"] for b in batches]), images[10:30])
    assert torch.equal(torch.cat([b["label"] for b in batches]), labels[10:30])


# ---------------------------------------------------------------------- MNIST / Fashion-MNIST
def test_mnist_standard_split(mnist_dir: Path) -> None:
    dm = MNISTDataModule(
        data_dir=str(mnist_dir), batch_size=16, eval_batch_size=32, val_size=20, download=False
    )
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (N_TRAIN - 20, 20, N_TEST)
    assert set(dm.train_set.indices.tolist()).isdisjoint(dm.val_set.indices.tolist())
    assert dm.num_classes == 10 and dm.image_shape == (1, 28, 28)
    out = _check_batch(dm, _first_batch(dm.train_dataloader()), 16)
    assert out["label"].dtype == torch.int64 and out["label"].max() < 10
    val = _first_batch(dm.val_dataloader())
    assert torch.equal(val["index"], torch.arange(20))  # eval loaders do not shuffle
    _check_batch(dm, _first_batch(dm.test_dataloader()), 32)
    with pytest.raises(RuntimeError, match="retrieval"):
        dm.query_dataloader()
    assert dm.hparams["val_size"] == 20


def test_fashion_mnist_standard_split(fashion_mnist_dir: Path) -> None:
    dm = FashionMNISTDataModule(
        data_dir=str(fashion_mnist_dir), batch_size=8, val_size=28, download=False, debian_dir=None
    )
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (100, 28, 64)
    _check_batch(dm, _first_batch(dm.train_dataloader()), 8)


def test_mnist_retrieval_split(mnist_dir: Path) -> None:
    dm = MNISTDataModule(
        data_dir=str(mnist_dir), batch_size=10, split="retrieval", num_train=50, download=False
    )
    dm.prepare_data()
    dm.setup()
    assert (len(dm.query_set), len(dm.database_set), len(dm.train_set)) == (N_TEST, N_TRAIN, 50)
    query, database = set(dm.query_set.indices.tolist()), set(dm.database_set.indices.tolist())
    assert query.isdisjoint(database)  # query = test rows, database = train rows of the pool
    assert set(dm.train_set.indices.tolist()) <= database
    assert torch.equal(dm.database_set.indices[dm.train_in_database], dm.train_set.indices)
    val = dm.val_dataloader()
    assert isinstance(val, list) and len(val) == 2
    assert len(val[0].dataset) == N_TEST and len(val[1].dataset) == N_TRAIN
    assert len(dm.test_dataloader()) == 2
    _check_batch(dm, _first_batch(dm.query_dataloader()), 10)
    assert torch.equal(_first_batch(dm.database_dataloader())["index"], torch.arange(10))
    # smaller query / database on request
    dm2 = MNISTDataModule(
        data_dir=str(mnist_dir),
        split="retrieval",
        num_query=10,
        num_database=60,
        num_train=30,
        download=False,
    )
    dm2.setup()
    assert (len(dm2.query_set), len(dm2.database_set), len(dm2.train_set)) == (10, 60, 30)
    with pytest.raises(ValueError, match="num_train"):
        MNISTDataModule(data_dir=str(mnist_dir), split="retrieval", num_train=500, download=False).setup()


def test_mnist_reproducible(mnist_dir: Path) -> None:
    def splits(seed: int, split: str) -> list[list[int]]:
        dm = MNISTDataModule(
            data_dir=str(mnist_dir), seed=seed, split=split, val_size=20, num_train=30, download=False
        )
        dm.setup()
        sets = [dm.train_set, dm.val_set] if split == "standard" else [dm.train_set, dm.query_set]
        first = _first_batch(dm.train_dataloader())["index"].tolist()
        return [s.indices.tolist() for s in sets] + [first]

    for split in ("standard", "retrieval"):
        assert splits(0, split) == splits(0, split)
        assert splits(0, split) != splits(1, split)


def test_train_loader_num_workers(mnist_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=str(mnist_dir), batch_size=32, val_size=20, num_workers=2, download=False)
    dm.setup()
    index = torch.cat([b["index"] for b in dm.train_dataloader()])
    assert sorted(index.tolist()) == list(range(N_TRAIN - 20))


def test_fashion_mnist_debian_extraction(tmp_path: Path) -> None:
    debian = tmp_path / "debian"
    write_mnist_idx(debian, 50, 20, gz=True, seed=4)
    data_dir = tmp_path / "data"
    dm = FashionMNISTDataModule(data_dir=str(data_dir), val_size=10, download=False, debian_dir=str(debian))
    dm.prepare_data()
    raw = data_dir / "FashionMNIST" / "raw"
    for name in MNIST_FILES:
        assert (raw / name).is_file() and not (raw / name).is_symlink()
        assert (raw / name).read_bytes() == gzip.decompress((debian / f"{name}.gz").read_bytes())
    assert not any(p.is_symlink() for p in data_dir.rglob("*"))
    assert sorted(os.listdir(raw)) == sorted(MNIST_FILES)  # no temp files left behind
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 10, 20)


def test_fashion_mnist_prefers_existing_files(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    write_mnist_idx(raw, 30, 10, seed=5)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-images-idx3-ubyte").unlink()
    before = md5sum(raw / "train-images-idx3-ubyte")
    debian = tmp_path / "debian"
    write_mnist_idx(debian, 50, 10, gz=True, seed=6)
    dm = FashionMNISTDataModule(
        data_dir=str(tmp_path / "data"), val_size=5, download=False, debian_dir=str(debian)
    )
    dm.prepare_data()  # fills only the two missing files from the Debian dir
    assert md5sum(raw / "train-images-idx3-ubyte") == before
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 30 and len(dm.test_set) == 10


def test_fashion_mnist_corrupt_debian_file(tmp_path: Path) -> None:
    debian = tmp_path / "debian"
    files = write_mnist_idx(debian, 20, 10, gz=True, seed=7)
    bad = Path(f"{files['train-images-idx3-ubyte']}")
    bad.write_bytes(bad.read_bytes()[:100])
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "data"), download=False, debian_dir=str(debian))
    with pytest.raises(DatasetCorruptedError, match=str(bad)):
        dm.prepare_data()
    assert not (tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()


@pytest.mark.parametrize("cls", [MNISTDataModule, FashionMNISTDataModule])
def test_mnist_missing_files_without_download(tmp_path: Path, cls) -> None:
    kwargs = {"debian_dir": str(tmp_path / "no-debian")} if cls is FashionMNISTDataModule else {}
    dm = cls(data_dir=str(tmp_path), download=False, **kwargs)
    with pytest.raises(FileNotFoundError) as info:
        dm.prepare_data()
    assert isinstance(info.value, DatasetNotFoundError)
    message = str(info.value)
    assert str(tmp_path / cls._tv_class.__name__ / "raw" / "train-images-idx3-ubyte") in message
    assert "download=True" in message
    if cls is FashionMNISTDataModule:
        assert "apt install dataset-fashion-mnist" in message
    with pytest.raises(DatasetNotFoundError):
        dm.setup()


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_truncated_idx_file(mnist_dir: Path, name: str) -> None:
    path = mnist_dir / "MNIST" / "raw" / name
    path.write_bytes(path.read_bytes()[:-7])
    dm = MNISTDataModule(data_dir=str(mnist_dir), val_size=10, download=False)
    dm.prepare_data()  # files exist
    with pytest.raises(DatasetCorruptedError, match=str(path)):
        dm.setup()


# ---------------------------------------------------------------------- CIFAR-10
def test_cifar10_standard_split(cifar_dir: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(cifar_dir), batch_size=12, val_size=20, download=False)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (80, 20, 20)
    assert dm.image_shape == (3, 32, 32)
    out = _check_batch(dm, _first_batch(dm.train_dataloader()), 12)
    assert out["label"].dtype == torch.int64
    # the pattern written by the fixture survives the round trip: class c has a bright bar at row 3c
    batch = _first_batch(dm.test_dataloader())
    for img, label in zip(batch["image"], batch["label"], strict=True):
        row = int(label) * 32 // 10
        assert img[:, row].float().mean() > img[:, (row + 16) % 32].float().mean() + 50


def test_cifar10_retrieval_split(cifar_dir: Path) -> None:
    dm = CIFAR10DataModule(
        data_dir=str(cifar_dir),
        batch_size=8,
        split="retrieval",
        num_query_per_class=2,
        num_train=30,
        download=False,
    )
    dm.setup()
    pool = 6 * 20
    assert (len(dm.query_set), len(dm.database_set), len(dm.train_set)) == (20, pool - 20, 30)
    assert torch.bincount(dm.query_set.targets, minlength=10).tolist() == [2] * 10
    query, database = set(dm.query_set.indices.tolist()), set(dm.database_set.indices.tolist())
    assert query.isdisjoint(database) and query | database == set(range(pool))  # train + test pooled
    assert set(dm.train_set.indices.tolist()) <= database
    q, d = dm.val_dataloader()
    _check_batch(dm, _first_batch(q), 8)
    assert len(d.dataset) == pool - 20
    same = CIFAR10DataModule(data_dir=str(cifar_dir), split="retrieval", num_query=20, num_train=30)
    same.setup()
    assert torch.equal(same.query_set.indices, dm.query_set.indices)
    other = CIFAR10DataModule(data_dir=str(cifar_dir), split="retrieval", num_query=20, num_train=30, seed=1)
    other.setup()
    assert not torch.equal(other.query_set.indices, dm.query_set.indices)


def test_cifar10_augmentation_only_when_training(cifar_dir: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(cifar_dir), batch_size=64, val_size=20, augment=True, download=False)
    dm.setup()
    batch = _first_batch(dm.train_dataloader())
    plain = batch["image"].float() / 255
    dm.trainer = SimpleNamespace(training=False)
    torch.testing.assert_close(dm.on_after_batch_transfer(batch, 0)["image"], plain)
    dm.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    out = dm.on_after_batch_transfer(batch, 0)["image"]
    assert out.shape == plain.shape and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1 and not torch.equal(out, plain)
    assert torch.equal(out.sum(dim=(1, 2, 3)) > 0, plain.sum(dim=(1, 2, 3)) > 0)


def test_cifar10_missing_files_without_download(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "cifar-10-batches-py" / "data_batch_1")):
        dm.prepare_data()


@pytest.mark.parametrize("repatch_md5", [False, True], ids=["md5-mismatch", "unpickling-error"])
def test_cifar10_corrupt_batch(cifar_dir: Path, monkeypatch: pytest.MonkeyPatch, repatch_md5: bool) -> None:
    path = cifar_dir / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    if repatch_md5:  # md5 matches the damaged file: the pickle load itself must fail and name the file
        md5s = {
            n: md5sum(cifar_dir / "cifar-10-batches-py" / n)
            for n in os.listdir(cifar_dir / "cifar-10-batches-py")
        }
        patch_cifar10_md5(monkeypatch, md5s)
    dm = CIFAR10DataModule(data_dir=str(cifar_dir), val_size=10, download=False)
    with pytest.raises(DatasetCorruptedError, match=str(path)) as info:
        dm.setup()
    if repatch_md5:
        assert isinstance(info.value.__cause__, Exception)
    else:
        assert "md5" in str(info.value)


def test_cifar10_bad_pickle_content(cifar_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = cifar_dir / "cifar-10-batches-py"
    (base / "test_batch").write_bytes(pickle.dumps({"no": "data"}, protocol=2))
    patch_cifar10_md5(monkeypatch, {n: md5sum(base / n) for n in os.listdir(base)})
    with pytest.raises(DatasetCorruptedError, match=str(base / "test_batch")):
        CIFAR10DataModule(data_dir=str(cifar_dir), val_size=10, download=False).setup()


# ---------------------------------------------------------------------- CelebA
def test_celeba_split_and_batch(celeba_dir: Path) -> None:
    dm = CelebADataModule(
        data_dir=str(celeba_dir),
        batch_size=4,
        attributes=["Male", "Smiling"],
        image_size=16,
        min_images_per_identity=4,
        test_fraction=0.25,
        val_fraction=0.2,
        download=False,
    )
    dm.prepare_data()
    dm.setup()
    assert dm.num_identities == 6 and dm.num_classes == 2 and dm.image_shape == (3, 16, 16)
    assert dm.attribute_names == ["Male", "Smiling"] and len(dm.all_attribute_names) == 40
    train, val, test = dm.train_set, dm.val_set, dm.test_set
    # the identities with 2 and 3 images are dropped
    assert len(train) + len(val) + len(test) == 4 + 5 + 6 + 7 + 8 + 9
    rows = [set(s.rows.tolist()) for s in (train, val, test)]
    assert rows[0].isdisjoint(rows[1]) and rows[0].isdisjoint(rows[2]) and rows[1].isdisjoint(rows[2])
    train_ids = set(train.identities.tolist())
    assert train_ids == set(range(6)) == set(test.identities.tolist())  # every test identity is in train
    assert set(val.identities.tolist()) <= train_ids
    batch = _first_batch(dm.train_dataloader())
    out = _check_batch(dm, batch, 4)
    assert out["label"].dtype == torch.float32 and out["label"].shape == (4, 2)
    assert out["attributes"].shape == (4, 40) and set(out["attributes"].unique().tolist()) <= {0.0, 1.0}
    male = CELEBA_ATTRIBUTE_NAMES.index("Male")
    assert torch.equal(out["label"][:, 0], out["attributes"][:, male])
    assert out["identity"].dtype == torch.int64 and 0 <= out["identity"].min() and out["identity"].max() < 6
    # reproducible
    again = CelebADataModule(
        data_dir=str(celeba_dir),
        min_images_per_identity=4,
        test_fraction=0.25,
        val_fraction=0.2,
        download=False,
    )
    again.setup()
    assert torch.equal(again.test_set.rows, test.rows)


def test_celeba_unknown_attribute() -> None:
    with pytest.raises(ValueError, match="Nope") as info:
        CelebADataModule(attributes=["Male", "Nope"])
    assert "Wearing_Necktie" in str(info.value) and "5_o_Clock_Shadow" in str(info.value)


def test_celeba_missing_files_without_download(tmp_path: Path) -> None:
    dm = CelebADataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path / "celeba" / "list_attr_celeba.txt") in message and "Google Drive" in message


def test_celeba_corrupt_annotation(celeba_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = celeba_dir / "celeba" / "identity_CelebA.txt"
    path.write_text(path.read_text().replace(" 3\n", " three\n", 1))
    dm = CelebADataModule(data_dir=str(celeba_dir), min_images_per_identity=4, download=False)
    with pytest.raises(DatasetCorruptedError, match=f"{path}.*md5"):  # production check: md5
        dm.setup()
    patch_celeba_md5(monkeypatch, {"identity_CelebA.txt": md5sum(path)})
    with pytest.raises(DatasetCorruptedError, match=f"{path}.*parse"):  # md5 accepted: parse failure
        dm.setup()


# ---------------------------------------------------------------------- Lightning integration
class _Probe(pl.LightningModule):
    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.net = torch.nn.Linear(in_features, 10)
        self.seen: list[tuple[str, int]] = []

    def training_step(self, batch, batch_idx):
        assert batch["image"].dtype == torch.float32 and batch["image"].max() <= 1
        return torch.nn.functional.cross_entropy(self.net(batch["image"].flatten(1)), batch["label"])

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        assert batch["image"].dtype == torch.float32
        self.seen.append(("val", dataloader_idx))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit_retrieval(mnist_dir: Path) -> None:
    dm = MNISTDataModule(
        data_dir=str(mnist_dir), batch_size=16, split="retrieval", num_train=32, augment=True, download=False
    )
    model = _Probe(28 * 28)
    trainer = quiet_trainer(max_epochs=1, accelerator="cpu", limit_val_batches=2)
    trainer.fit(model, datamodule=dm)
    assert {idx for _, idx in model.seen} == {0, 1}  # query and database loaders


# ---------------------------------------------------------------------- real data
@pytest.mark.skipif(
    not all(os.path.isfile(os.path.join(DEBIAN_FASHION_MNIST_DIR, f"{n}.gz")) for n in MNIST_FILES),
    reason=f"Debian's dataset-fashion-mnist is not installed (no .gz files in {DEBIAN_FASHION_MNIST_DIR})",
)
def test_real_fashion_mnist_from_debian(tmp_path: Path) -> None:
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), batch_size=256, split="retrieval", download=False)
    dm.prepare_data()
    raw = tmp_path / "FashionMNIST" / "raw"
    assert all((raw / n).is_file() and not (raw / n).is_symlink() for n in MNIST_FILES)
    dm.setup()
    assert (len(dm.query_set), len(dm.database_set), len(dm.train_set)) == (10_000, 60_000, 10_000)
    assert set(dm.train_set.indices.tolist()) <= set(dm.database_set.indices.tolist())
    assert torch.bincount(dm.query_set.targets).tolist() == [1000] * 10
    assert torch.bincount(dm.database_set.targets).tolist() == [6000] * 10
    _check_batch(dm, _first_batch(dm.train_dataloader()), 256)
    standard = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=5000, download=False)
    standard.prepare_data()  # already extracted: nothing to do
    standard.setup()
    assert (len(standard.train_set), len(standard.val_set), len(standard.test_set)) == (55_000, 5_000, 10_000)
