"""ImageNet-subset datamodule on a tiny ILSVRC-2012 ImageFolder fixture (real JPEGs, tests/fixtures.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from conftest import REPO_ROOT
from fixtures import quiet_trainer, write_imagenet_folder
from PIL import Image

from datamodules import DatasetCorruptedError, DatasetNotFoundError, ImageNetSubsetDataModule
from datamodules.imagenet import read_class_list
from models.ppl import PPL

# folder names sort differently from the list order: labels must follow the list, not the folder order
WNIDS = ["n01000003", "n01000001", "n01000002"]
N_TRAIN, N_VAL = 6, 3  # images per class
SIZE, RESIZE = 16, 20
CLASS_FILE = """# a tiny 3-class subset, in label order
n01000003 third folder by name, label 0

n01000001   # label 1
n01000002 label two, class 2 (LOC_synset_mapping.txt style: the id, then names)
"""


@pytest.fixture
def imagenet_dir(tmp_path: Path) -> Path:
    write_imagenet_folder(tmp_path, sorted(WNIDS), n_train=N_TRAIN, n_val=N_VAL, seed=4)
    (tmp_path / "imagenet" / "classes.txt").write_text(CLASS_FILE)
    return tmp_path


def make_dm(data_dir: Path, **kwargs) -> ImageNetSubsetDataModule:
    args = dict(
        class_list="imagenet/classes.txt", image_size=SIZE, resize=RESIZE, batch_size=4, val_size=5, seed=0
    )
    return ImageNetSubsetDataModule(data_dir=str(data_dir), **{**args, **kwargs})


def check_batch(dm: ImageNetSubsetDataModule, batch: dict[str, torch.Tensor], n: int) -> None:
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (n, 3, SIZE, SIZE)
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (n,)
    assert batch["index"].dtype == torch.int64 and batch["index"].shape == (n,)
    out = dm.on_after_batch_transfer(batch, 0)
    assert out["image"].dtype == torch.float32 and 0 <= out["image"].min() and out["image"].max() <= 1
    torch.testing.assert_close(out["image"], batch["image"].float() / 255)


def folder_of(path: str) -> str:
    return Path(path).parent.name


def part_of(path: str) -> str:
    return Path(path).parent.parent.name


# ---------------------------------------------------------------------- class list
def test_class_list_skips_comments_blanks_and_names_and_keeps_file_order(imagenet_dir: Path) -> None:
    assert read_class_list(str(imagenet_dir / "imagenet" / "classes.txt")) == WNIDS
    dm = make_dm(imagenet_dir)
    assert dm.class_names == WNIDS and dm.num_classes == 3 and dm.image_shape == (3, SIZE, SIZE)
    inline = make_dm(imagenet_dir, class_list=None, classes=WNIDS[:2])
    assert inline.class_names == WNIDS[:2] and inline.num_classes == 2
    absolute = make_dm(imagenet_dir, class_list=str(imagenet_dir / "imagenet" / "classes.txt"))
    assert absolute.class_names == WNIDS


def test_labels_are_positions_in_the_class_list(imagenet_dir: Path) -> None:
    for order in (WNIDS, WNIDS[::-1]):
        dm = make_dm(imagenet_dir, class_list=None, classes=order)
        dm.setup()
        for ds in (dm.train_set, dm.val_set, dm.test_set):
            assert ds.targets.tolist() == [order.index(folder_of(f)) for f in ds.files]
        batch = next(iter(dm.test_dataloader()))
        files = dm.test_set.files
        assert batch["label"].tolist() == [order.index(folder_of(files[int(i)])) for i in batch["index"]]


def test_a_subset_of_the_folders_reads_only_the_listed_classes(imagenet_dir: Path) -> None:
    dm = make_dm(imagenet_dir, class_list=None, classes=["n01000002"], val_size=2)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == N_TRAIN and len(dm.test_set) == N_VAL
    assert {folder_of(f) for f in dm.train_set.files + dm.test_set.files} == {"n01000002"}
    assert set(dm.train_set.targets.tolist()) == {0}


# ---------------------------------------------------------------------- splits and batches
def test_standard_split_holds_out_val_from_train_and_tests_on_the_val_folder(imagenet_dir: Path) -> None:
    dm = make_dm(imagenet_dir, split="standard", val_size=5)
    dm.prepare_data()
    dm.setup()
    n_train = N_TRAIN * 3
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (n_train - 5, 5, N_VAL * 3)
    train, val, test = set(dm.train_set.files), set(dm.val_set.files), set(dm.test_set.files)
    assert train.isdisjoint(val) and len(train | val) == n_train
    assert {part_of(f) for f in train | val} == {"train"} and {part_of(f) for f in test} == {"val"}
    check_batch(dm, next(iter(dm.train_dataloader())), 4)
    check_batch(dm, next(iter(dm.val_dataloader())), 4)
    test_batch = next(iter(dm.test_dataloader()))
    check_batch(dm, test_batch, 4)
    assert test_batch["index"].tolist() == [0, 1, 2, 3]  # eval loaders do not shuffle
    with pytest.raises(RuntimeError, match="split='retrieval'"):
        dm.query_dataloader()


def test_retrieval_split_sizes_and_disjointness(imagenet_dir: Path) -> None:
    dm = make_dm(imagenet_dir, split="retrieval", num_query=6, num_database=15, num_train=10)
    dm.setup()
    assert (len(dm.query_set), len(dm.database_set), len(dm.train_set)) == (6, 15, 10)
    query, database = dm.query_set.files, dm.database_set.files
    assert {part_of(f) for f in query} == {"val"} and {part_of(f) for f in database} == {"train"}
    assert set(query).isdisjoint(database) and len(set(database)) == 15
    assert dm.train_in_database.dtype == torch.int64 and dm.train_in_database.shape == (10,)
    assert dm.train_set.files == [database[int(i)] for i in dm.train_in_database]
    torch.testing.assert_close(dm.train_set.targets, dm.database_set.targets[dm.train_in_database])
    check_batch(dm, next(iter(dm.train_dataloader())), 4)
    q, d = dm.val_dataloader()
    check_batch(dm, next(iter(q)), 4)
    check_batch(dm, next(iter(d)), 4)
    assert [len(x.dataset) for x in dm.test_dataloader()] == [6, 15]
    assert dm.val_set is None and dm.test_set is None


def test_retrieval_defaults_take_every_val_and_train_image_and_10000_train(imagenet_dir: Path) -> None:
    dm = make_dm(imagenet_dir, split="retrieval", num_train=N_TRAIN * 3)
    dm.setup()
    assert (len(dm.query_set), len(dm.database_set)) == (N_VAL * 3, N_TRAIN * 3)
    assert torch.equal(dm.train_in_database, torch.arange(N_TRAIN * 3))
    too_few = make_dm(imagenet_dir, split="retrieval")  # paper default num_train = 10,000
    with pytest.raises(ValueError, match="num_train=10000 exceeds the 18 available images"):
        too_few.setup()


def test_split_and_shuffle_are_seeded(imagenet_dir: Path) -> None:
    def draw(seed: int) -> tuple[list[str], list[str], list[int]]:
        dm = make_dm(imagenet_dir, split="retrieval", num_query=5, num_database=12, num_train=8, seed=seed)
        dm.setup()
        first = next(iter(dm.train_dataloader()))
        return dm.query_set.files, dm.train_set.files, first["index"].tolist()

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)
    a, b = make_dm(imagenet_dir, val_size=5), make_dm(imagenet_dir, val_size=5)
    a.setup(), b.setup()
    assert a.val_set.files == b.val_set.files
    assert torch.equal(next(iter(a.train_dataloader()))["image"], next(iter(b.train_dataloader()))["image"])


def test_images_are_resized_cropped_rgb_uint8_whatever_the_jpeg_mode(imagenet_dir: Path) -> None:
    dm = make_dm(imagenet_dir, split="standard", val_size=1)
    dm.setup()
    files = dm.train_set.files + dm.val_set.files + dm.test_set.files
    modes = {Image.open(f).mode for f in files}
    assert modes == {"L", "RGB", "CMYK"}  # the fixture has one grayscale and one CMYK JPEG
    gray = next(f for f in files if Image.open(f).mode == "L")
    image = dm.test_set.load(gray)
    assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    sizes = {Image.open(f).size for f in files}
    assert len(sizes) > 3  # portrait and landscape images of different sizes, all come out SIZE x SIZE
    assert all(dm.test_set.load(f).shape == (3, SIZE, SIZE) for f in files)


def test_augmentation_flips_and_crops_only_when_training(imagenet_dir: Path) -> None:
    dm = make_dm(imagenet_dir, augment=True, batch_size=8, image_size=32, resize=36)
    assert dm.augment_crop_padding == 32 // 8 and dm.augment_flip
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    plain = batch["image"].float() / 255
    dm.trainer = SimpleNamespace(training=False)
    torch.testing.assert_close(dm.on_after_batch_transfer(batch, 0)["image"], plain)
    dm.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    out = dm.on_after_batch_transfer(batch, 0)["image"]
    assert out.shape == plain.shape and out.dtype == torch.float32 and not torch.equal(out, plain)
    assert 0 <= out.min() and out.max() <= 1


# ---------------------------------------------------------------------- errors
def test_missing_dataset_says_where_to_get_it_and_downloads_nothing(tmp_path: Path) -> None:
    dm = ImageNetSubsetDataModule(data_dir=str(tmp_path), classes=WNIDS, download=True)
    with pytest.raises(DatasetNotFoundError, match=r"missing folder .*imagenet/train(.|\n)*image-net\.org"):
        dm.prepare_data()
    with pytest.raises(DatasetNotFoundError, match="cannot be downloaded automatically"):
        dm.setup()
    assert list(tmp_path.iterdir()) == []


def test_missing_val_folder_is_named(imagenet_dir: Path) -> None:
    import shutil

    shutil.rmtree(imagenet_dir / "imagenet" / "val")
    with pytest.raises(DatasetNotFoundError, match=r"missing folder .*imagenet/val\."):
        make_dm(imagenet_dir).prepare_data()


def test_listed_classes_without_a_folder_are_listed(imagenet_dir: Path) -> None:
    extra = [f"n0999999{i}" for i in range(7)]
    dm = make_dm(imagenet_dir, class_list=None, classes=WNIDS + extra)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "7 of the 10 classes of classes=[...]" in message and "imagenet/train" in message
    assert ", ".join(extra[:5]) + " and 2 more" in message and extra[5] not in message


def test_empty_class_folder_is_named(imagenet_dir: Path) -> None:
    folder = imagenet_dir / "imagenet" / "val" / WNIDS[1]
    for f in folder.iterdir():
        f.unlink()
    (folder / "readme.txt").write_text("not an image")
    with pytest.raises(DatasetNotFoundError, match=f"hold no image.*{folder}"):
        make_dm(imagenet_dir).setup()


@pytest.mark.parametrize(
    "text, match",
    [
        ("# nothing but comments\n\n", "lists no class"),
        ("n01000001\nn01000002\nn01000001 again\n", r"more than once: n01000001 \(lines 1, 3\)"),
        ("n01000001/n01000001_1.JPEG 0\n", "not a class folder name"),
    ],
    ids=["empty", "duplicate", "image-list"],
)
def test_bad_class_list_file(imagenet_dir: Path, text: str, match: str) -> None:
    path = imagenet_dir / "imagenet" / "classes.txt"
    path.write_text(text)
    dm = make_dm(imagenet_dir)
    with pytest.raises(ValueError, match=match) as info:
        dm.prepare_data()
    assert str(path) in str(info.value)


def test_missing_class_list_and_bad_arguments(imagenet_dir: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"class list .*nope\.txt not found.*classes=\[\.\.\.\]"):
        make_dm(imagenet_dir, class_list="nope.txt").prepare_data()
    with pytest.raises(ValueError, match="exactly one of the two"):
        ImageNetSubsetDataModule(data_dir=str(imagenet_dir))
    with pytest.raises(ValueError, match="exactly one of the two"):
        make_dm(imagenet_dir, classes=WNIDS)
    with pytest.raises(ValueError, match="more than once: n01000001"):
        make_dm(imagenet_dir, class_list=None, classes=["n01000001", "n01000001"])
    with pytest.raises(ValueError, match="image_size <= resize"):
        make_dm(imagenet_dir, image_size=32, resize=16)


@pytest.mark.parametrize("damage, workers", [("garbage", 0), ("truncated", 0), ("garbage", 1)])
def test_corrupt_image_file_is_named(imagenet_dir: Path, damage: str, workers: int) -> None:
    dm = make_dm(imagenet_dir, split="standard", val_size=1, eval_batch_size=100, num_workers=workers)
    dm.setup()
    path = Path(dm.test_set.files[2])
    data = path.read_bytes()
    path.write_bytes(b"not a jpeg at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(DatasetCorruptedError, match=f"{path}: cannot decode this image"):
        next(iter(dm.test_dataloader()))


# ---------------------------------------------------------------------- PPL on the fixture
def test_ppl_fast_dev_run_on_the_imagenet_fixture(imagenet_dir: Path) -> None:
    L.seed_everything(0)
    dm = make_dm(imagenet_dir, split="retrieval", num_train=8, eval_batch_size=8)
    model = PPL(
        in_chans=3,
        image_size=SIZE,
        bits=8,
        generator_channels=[4, 4, 8, 8],
        surrogate_backbone="small_cnn",
        epsilon=0.032,
    )
    before = [p.detach().clone() for p in model.generator.parameters()]
    trainer = quiet_trainer(accelerator="cpu", fast_dev_run=True)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "val/map_gap" in trainer.callback_metrics
    assert any((p != q).any() for p, q in zip(model.generator.parameters(), before, strict=True))
    x = next(iter(dm.query_dataloader()))["image"].float() / 255
    assert (model.protect(x) - x).abs().max() <= 0.032 + 1e-6


def test_imagenet_config_follows_the_paper() -> None:
    cfg = yaml.safe_load(open(REPO_ROOT / "configs" / "ppl" / "imagenet.yaml"))
    args, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    assert cfg["model"]["class_path"] == "models.ppl.PPL"
    assert cfg["data"]["class_path"] == "datamodules.ImageNetSubsetDataModule"
    assert (args["alpha"], args["beta"], args["gamma"], args["lambda_"]) == (1, 10, 1, 1)
    assert (args["epsilon"], args["norm"], args["bits"]) == (0.032, "inf", 8)
    assert (args["lr_generator"], args["lr_surrogate"]) == (1e-4, 1e-3)
    assert args["generator_channels"] == [64, 128, 256, 512] and args["surrogate_backbone"] == "resnet50"
    assert (args["in_chans"], args["image_size"], data["image_size"]) == (3, 224, 224)
    assert cfg["trainer"]["max_steps"] == 500 and data["batch_size"] == 32 and data["num_train"] == 10000
    assert data["split"] == "retrieval"


def test_imagenet_config_trains_through_the_cli_on_the_fixture(imagenet_dir: Path, tmp_path: Path) -> None:
    from models.cli import cli_main

    # the shipped data section (class_list imagenet/classes.txt relative to data_dir) as is
    cli = cli_main(
        [
            "fit",
            f"--config={REPO_ROOT / 'configs' / 'ppl' / 'imagenet.yaml'}",
            f"--data.init_args.data_dir={imagenet_dir}",
            f"--data.init_args.image_size={SIZE}",
            f"--data.init_args.resize={RESIZE}",
            "--data.init_args.num_workers=0",
            "--data.init_args.batch_size=4",
            "--data.init_args.eval_batch_size=8",
            "--data.init_args.num_train=8",
            f"--model.init_args.image_size={SIZE}",
            "--model.init_args.generator_channels=[4,4,8,8]",
            "--model.init_args.surrogate_backbone=small_cnn",
            "--trainer.fast_dev_run=true",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert cli.trainer.global_step == 1 and cli.datamodule.class_names == WNIDS
    assert cli.model.hparams.epsilon == 0.032 and cli.model.hparams.bits == 8
