"""The zoo (models.zoo): registry, offline loading, evaluate entries; scripts/convert_checkpoint.py and
scripts/publish.py (dry run and a fake Hub API)."""

import json
from dataclasses import replace
from functools import partial

import convert_checkpoint
import publish
import pytest
import torch
from fixtures import quiet_trainer
from huggingface_hub import ModelCard

from datamodules import FashionMNISTDataModule
from models import zoo
from models.cards import read_card_metrics, update_card_metrics
from models.classifier import ImageClassifier
from models.hub import ConfigError, MissingFileError, PickleWeightsError


def evaluate_accuracy(model: torch.nn.Module, datamodule, limit: int = 4) -> dict[str, float]:
    """A zoo ``evaluate`` function: test accuracy of a classifier on its datamodule's test set."""
    trainer = quiet_trainer(accelerator="cpu", limit_test_batches=limit)
    return {"acc": trainer.test(model, datamodule=datamodule, verbose=False)[0]["test/acc"]}


TINY = zoo.ZooEntry(
    name="clf-tiny",
    model_class=ImageClassifier,
    dataset="Fashion-MNIST",
    datamodule=partial(FashionMNISTDataModule, batch_size=16, val_size=32),
    evaluate=evaluate_accuracy,
    evaluate_kwargs={"limit": 8},
    utility="acc",
    privacy="acc",
    paper={"acc": 0.9},
    paper_ref="not a paper: a test entry",
)


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """A zoo with one entry, ``clf-tiny``, whose folder is written into a temporary checkpoints dir."""
    monkeypatch.setattr(zoo, "CHECKPOINTS_DIR", tmp_path / "checkpoints")
    monkeypatch.setattr(zoo, "REGISTRY", {TINY.name: TINY})
    torch.manual_seed(0)
    model = ImageClassifier(num_classes=10, in_chans=1)
    model.save_pretrained(
        zoo.folder(TINY.name), model_card_kwargs={"name": TINY.name, "dataset": TINY.dataset}
    )
    return model


def test_available_and_load_from_the_shipped_folder_offline(tiny_zoo):
    assert zoo.available() == ["clf-tiny"] and zoo.zoo_entries() == [TINY]
    assert TINY.repo_id == "privzoo/clf-tiny" and zoo.folder(TINY.name) == zoo.CHECKPOINTS_DIR / "clf-tiny"
    model = zoo.load("clf-tiny")
    assert isinstance(model, ImageClassifier) and not model.training
    for key, value in tiny_zoo.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    local = zoo.load("clf-tiny", source="local")
    assert isinstance(local, ImageClassifier) and torch.equal(local.head.weight, tiny_zoo.head.weight)


def test_unknown_name_lists_the_available_ones(tiny_zoo, monkeypatch):
    with pytest.raises(zoo.UnknownCheckpointError, match=r"unknown checkpoint 'nope'; available: clf-tiny"):
        zoo.load("nope")
    with pytest.raises(KeyError):  # it is a KeyError too
        zoo.get_entry("nope")
    monkeypatch.setattr(zoo, "REGISTRY", {})
    with pytest.raises(zoo.UnknownCheckpointError, match="none yet"):
        zoo.load("clf-tiny")
    with pytest.raises(ValueError, match="source"):
        zoo.load("clf-tiny", source="web")


def test_broken_shipped_folder_is_an_error_not_a_silent_hub_fallback(tiny_zoo):
    (zoo.folder(TINY.name) / "config.json").unlink()
    with pytest.raises(MissingFileError, match=r"clf-tiny/config\.json does not exist"):
        zoo.load("clf-tiny")


def test_without_a_folder_the_hub_is_tried_and_offline_says_so(tiny_zoo, tmp_path):
    for path in zoo.folder(TINY.name).iterdir():
        path.unlink()
    zoo.folder(TINY.name).rmdir()
    with pytest.raises(
        MissingFileError, match=r"clf-tiny.*does not exist, and from the Hub: 'privzoo/clf-tiny'"
    ):
        zoo.load("clf-tiny", cache_dir=tmp_path / "hf")
    with pytest.raises(MissingFileError, match="does not exist"):
        zoo.load("clf-tiny", source="local")


def test_evaluate_entry_runs_and_its_numbers_go_into_the_card(tiny_zoo, fashion_mnist_dir):
    datamodule = TINY.datamodule(data_dir=str(fashion_mnist_dir), download=False)
    metrics = TINY.evaluate(zoo.load("clf-tiny"), datamodule, **TINY.evaluate_kwargs)
    assert set(metrics) == {"acc"} and 0.0 <= metrics["acc"] <= 1.0
    update_card_metrics(zoo.folder(TINY.name), metrics, source="tests/test_zoo.py")
    assert read_card_metrics(zoo.folder(TINY.name))[0]["value"] == pytest.approx(metrics["acc"])
    # the same in one call, written into the card by the evaluation itself
    again = zoo.evaluate("clf-tiny", fashion_mnist_dir, write_card="scripts/demo.py")
    assert again == pytest.approx(metrics)
    (row,) = read_card_metrics(zoo.folder(TINY.name))
    assert row["source"] == "scripts/demo.py" and row["dataset"] == "Fashion-MNIST" and row["split"] == "test"
    assert "| `acc` |" in (zoo.folder(TINY.name) / "README.md").read_text()


def test_evaluate_must_return_the_entry_metrics(tiny_zoo, monkeypatch, fashion_mnist_dir):
    monkeypatch.setitem(zoo.REGISTRY, "clf-tiny", replace(TINY, utility="top5", paper={}))
    with pytest.raises(ValueError, match=r"returned \['acc'\], not the entry's metric\(s\) \['top5'\]"):
        zoo.evaluate("clf-tiny", fashion_mnist_dir)


def test_entry_validation(tiny_zoo, fashion_mnist_dir, monkeypatch):
    with pytest.raises(ValueError, match="plain folder name"):
        zoo.ZooEntry(name="a/b", model_class=ImageClassifier, dataset="x")
    with pytest.raises(ValueError, match="no value for metric 'map'"):
        zoo.ZooEntry(name="a", model_class=ImageClassifier, dataset="x", utility="map", paper={"acc": 1.0})
    with pytest.raises(TypeError, match="not a PrivzooHubMixin"):
        zoo.ZooEntry(name="a", model_class=torch.nn.Linear, dataset="x")
    with pytest.raises(ValueError, match="needs a datamodule"):
        zoo.ZooEntry(name="a", model_class=ImageClassifier, dataset="x", evaluate=evaluate_accuracy)
    with pytest.raises(TypeError, match="not a PrivzooHubMixin"):
        zoo.resolve_class("torch.nn.Linear")
    with pytest.raises(ImportError, match="no 'Nope'"):
        zoo.resolve_class("models.classifier.Nope")
    monkeypatch.setitem(zoo.REGISTRY, "clf-tiny", replace(TINY, evaluate=None))
    with pytest.raises(ValueError, match="no evaluate"):
        zoo.evaluate("clf-tiny", fashion_mnist_dir)
    with pytest.raises(TypeError):  # entries are read-only
        TINY.paper["acc"] = 1.0


def test_registry_and_checkpoints_folder_agree():
    folders = (
        sorted(p.name for p in zoo.CHECKPOINTS_DIR.iterdir() if p.is_dir())
        if zoo.CHECKPOINTS_DIR.is_dir()
        else []
    )
    assert folders == zoo.available(), "every checkpoints/<name>/ folder needs a ZooEntry, and vice versa"
    for entry in zoo.zoo_entries():
        card = ModelCard.load(zoo.folder(entry.name) / "README.md")
        assert (
            card.data.privzoo["class_path"] == f"{entry.model_class.__module__}.{entry.model_class.__name__}"
        )
        assert callable(entry.evaluate) and callable(entry.datamodule)


@pytest.mark.parametrize("name", zoo.available())
def test_every_shipped_checkpoint_loads_offline(name):
    entry = zoo.get_entry(name)
    model = zoo.load(name, source="local")
    assert isinstance(model, entry.model_class) and not model.training
    config = json.loads((zoo.folder(name) / "config.json").read_text())
    assert dict(model.hparams) == config
    assert (zoo.folder(name) / "model.safetensors").stat().st_size < 20 * 2**20


# ------------------------------------------------------------------------------------------------------
# scripts/convert_checkpoint.py
# ------------------------------------------------------------------------------------------------------
def test_convert_a_cli_checkpoint_in_one_command(cli_run, tmp_path, capsys):
    ckpt = cli_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "clf-fashion-mnist"
    assert (
        convert_checkpoint.main([str(ckpt), str(out), "--split", "standard split, 32 validation images"]) == 0
    )
    assert "loads back identically" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    model = ImageClassifier.from_pretrained(out)
    assert model.state_dict().keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    config = json.loads((out / "config.json").read_text())
    assert config == {"num_classes": 10, "in_chans": 1, "backbone": "small_cnn", "pretrained": False,
                      "lr": 0.001, "weight_decay": 0.0}  # fmt: skip
    card = (out / "README.md").read_text()
    assert "datamodules.FashionMNISTDataModule" in card and "zalando-datasets/fashion_mnist" in card
    assert "standard split, 32 validation images" in card and "| `val_size` | `32` |" in card
    assert (
        "LightningCLI config (`config.yaml`)" in card
        and "class_path: models.classifier.ImageClassifier" in card
    )
    assert "`last.ckpt` (epoch 0, global step 3" in card
    # the class given explicitly must agree with the checkpoint's
    assert (
        convert_checkpoint.main(
            [str(ckpt), str(out), "--force", "--class", "models.classifier.ImageClassifier"]
        )
        == 0
    )
    assert convert_checkpoint.main([str(ckpt), str(tmp_path / "x"), "--class", "tests_missing.Nope"]) == 1
    assert "cannot import" in capsys.readouterr().err


def test_convert_refuses_to_clobber_and_explains_missing_class(cli_run, tmp_path, capsys):
    ckpt = cli_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("measured metrics")
    assert convert_checkpoint.main([str(ckpt), str(out)]) == 1
    assert "--force" in capsys.readouterr().err and (out / "README.md").read_text() == "measured metrics"

    # a checkpoint from a plain Trainer (no LightningCLI): no class path stored, --class is needed
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"].pop("_class_path")
    checkpoint["hyper_parameters"].pop("_instantiator")
    plain = tmp_path / "plain.ckpt"
    torch.save(checkpoint, plain)
    assert convert_checkpoint.main([str(plain), str(tmp_path / "p")]) == 1
    assert "pass --class" in capsys.readouterr().err
    args = [str(plain), str(tmp_path / "p"), "--class", "models.classifier.ImageClassifier"]
    assert convert_checkpoint.main(args) == 0
    assert (
        "LightningCLI config of the training run was not recorded"
        in (tmp_path / "p" / "README.md").read_text()
    )

    checkpoint["hyper_parameters"]["num_classes"] = 3  # hparams that do not fit the weights
    torch.save(checkpoint, plain)
    assert convert_checkpoint.main([*args[:1], str(tmp_path / "q"), *args[2:]]) == 1
    assert "do not fit ImageClassifier" in capsys.readouterr().err
    checkpoint["hyper_parameters"]["depth"] = 3
    torch.save(checkpoint, plain)
    with pytest.raises(ConfigError, match="depth"):
        convert_checkpoint.convert(plain, tmp_path / "r", class_path="models.classifier.ImageClassifier")
    with pytest.raises(convert_checkpoint.ConversionError, match="not a Lightning checkpoint"):
        torch.save({"weights": torch.zeros(1)}, plain)
        convert_checkpoint.convert(plain, tmp_path / "s")


# ------------------------------------------------------------------------------------------------------
# scripts/publish.py
# ------------------------------------------------------------------------------------------------------
class FakeApi:
    calls: list = []

    def __init__(self, token=None):
        FakeApi.calls.append(("init", token))

    def create_repo(self, **kwargs):
        FakeApi.calls.append(("create_repo", kwargs))
        return type("RepoUrl", (), {"repo_id": kwargs["repo_id"]})()

    def upload_folder(self, **kwargs):
        FakeApi.calls.append(("upload_folder", kwargs))
        return type("CommitInfo", (), {"commit_url": f"https://hub/{kwargs['repo_id']}/commit/1"})()


def test_publish_dry_run_lists_repo_ids_and_files_without_network(tiny_zoo, capsys, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the dry run touched the Hub API")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_network)
    assert publish.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"privzoo/clf-tiny  <-  {zoo.folder(TINY.name)}/" in out
    for name in ("config.json", "model.safetensors", "README.md"):
        assert f"    {name}  " in out
    assert "nothing uploaded" in out
    assert publish.main(["--dry-run", "--only", "nope"]) == 1
    assert "available: clf-tiny" in capsys.readouterr().err


def test_publish_creates_repos_and_uploads_folders(tiny_zoo, capsys):
    FakeApi.calls = []
    done = publish.publish(publish.plan(), dry_run=False, token="hf_x", api_factory=FakeApi)
    assert done == ["https://hub/privzoo/clf-tiny/commit/1"]
    (_, token), (_, create), (_, upload) = FakeApi.calls
    assert token == "hf_x"
    assert create == {"repo_id": "privzoo/clf-tiny", "repo_type": "model", "private": None, "exist_ok": True}
    assert upload["repo_id"] == "privzoo/clf-tiny" and upload["folder_path"] == str(zoo.folder(TINY.name))
    assert sorted(upload["allow_patterns"]) == ["README.md", "config.json", "model.safetensors"]


def test_publish_with_the_real_table(capsys):
    if zoo.available():
        assert publish.main(["--dry-run"]) == 0
        out = capsys.readouterr().out
        assert all(f"privzoo/{name}  <-  " in out for name in zoo.available())
    else:
        assert publish.main(["--dry-run"]) == 0
        assert "nothing to publish" in capsys.readouterr().out


def test_publish_refuses_pickles_orphans_and_broken_folders(tiny_zoo, capsys):
    torch.save({}, zoo.folder(TINY.name) / "pytorch_model.bin")
    with pytest.raises(PickleWeightsError, match="safetensors only"):
        publish.plan()
    (zoo.folder(TINY.name) / "pytorch_model.bin").unlink()
    (zoo.CHECKPOINTS_DIR / "stray").mkdir()
    assert publish.main(["--dry-run"]) == 1
    assert "['stray'] without a zoo entry" in capsys.readouterr().err
    assert publish.main(["--dry-run", "--only", "clf-tiny"]) == 0  # --only looks at that folder alone
    (zoo.folder(TINY.name) / "config.json").write_text("{broken")
    assert publish.main(["--dry-run", "--only", "clf-tiny"]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_demo_writes_cards_then_reproduces_them(tiny_zoo, fashion_mnist_dir, tmp_path):
    import demo

    args = ["--data-dir", str(fashion_mnist_dir), "--out", str(tmp_path / "demo"), "--wandb", "offline"]
    first = demo.main(args + ["--write-cards"])
    assert first[0]["utility"]["card"] is None  # nothing recorded before
    rows = demo.main(args)  # now the card holds the numbers and the demo must reproduce them
    (row,) = rows
    assert row["utility"]["measured"] == pytest.approx(row["utility"]["card"], abs=1e-6)
    assert row["utility"]["paper"] == 0.9
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved[0]["metrics"] == pytest.approx(row["metrics"])
    assert "| clf-tiny | acc |" in (tmp_path / "demo" / "results.md").read_text()
    assert list((tmp_path / "demo" / "wandb").glob("offline-run-*"))
    # a card that the checkpoint no longer reproduces is reported, not hidden
    update_card_metrics(zoo.folder(TINY.name), {"acc": 0.123}, source="tests")
    with pytest.raises(SystemExit, match="differ from the model cards"):
        demo.main(args + ["--wandb", "disabled"])
    with pytest.raises(zoo.UnknownCheckpointError, match="available: clf-tiny"):
        demo.main(args + ["--only", "nope"])


def test_train_zoo_replays_the_recorded_config_end_to_end(cli_run, tmp_path, monkeypatch, capsys):
    import train_zoo

    monkeypatch.setattr(zoo, "CHECKPOINTS_DIR", tmp_path / "checkpoints")
    monkeypatch.setattr(zoo, "REGISTRY", {TINY.name: TINY})
    assert (
        convert_checkpoint.main([str(cli_run / "checkpoints" / "last.ckpt"), str(zoo.folder(TINY.name))]) == 0
    )
    data = cli_run.parents[2] / "data"
    runs, dest = tmp_path / "runs", tmp_path / "rebuilt"
    common = ["--data-dir", str(data), "--out", str(runs), "--dest", str(dest)]
    capsys.readouterr()
    assert train_zoo.main([*common, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"[clf-tiny] privzoo fit --config={runs / 'clf-tiny' / 'config.yaml'}" in printed
    assert not runs.exists() and not dest.exists()  # a dry run runs nothing
    fast = ["--set", "trainer.fast_dev_run=true", "--set", "trainer.logger=false"]
    assert train_zoo.main([*common, *fast]) == 0
    rebuilt = ImageClassifier.from_pretrained(dest / "clf-tiny")
    assert rebuilt.hub_config() == ImageClassifier.from_pretrained(zoo.folder("clf-tiny")).hub_config()
    (row,) = read_card_metrics(dest / "clf-tiny")
    assert row["name"] == "acc" and row["source"] == "scripts/train_zoo.py"
    card = (dest / "clf-tiny" / "README.md").read_text()
    assert (
        "rebuilt by scripts/train_zoo.py" in card and "class_path: models.classifier.ImageClassifier" in card
    )
    assert read_card_metrics(zoo.folder("clf-tiny")) == []  # the source folder is left as it was


def test_train_zoo_names_a_missing_prerequisite(tmp_path, capsys):
    import train_zoo

    assert train_zoo.main(["--only", "sca-fashion-mnist-sx16", "--out", str(tmp_path)]) == 1
    assert "pass --from runs/sca/sca-fashion-mnist-sx16-e11.ckpt=CKPT" in capsys.readouterr().err
    assert train_zoo.main(["--dry-run", "--out", str(tmp_path)]) == 0  # every entry, placeholders shown
    assert "--from runs/dpfe/attribute/last.ckpt=CKPT" in capsys.readouterr().out


def test_train_zoo_chains_an_init_from_that_names_another_entrys_zoo_folder(tmp_path):
    import train_zoo

    steps = train_zoo.plan(
        ["sca-fashion-mnist-sx16-ft", "sca-fashion-mnist-sx16"], tmp_path, {}, strict=False
    )
    assert [s["name"] for s in steps] == ["sca-fashion-mnist-sx16", "sca-fashion-mnist-sx16-ft"]
    init = f"--model.init_args.init_from={tmp_path / 'sca-fashion-mnist-sx16' / 'final.ckpt'}"
    assert init in steps[1]["args"] and steps[1]["missing"] == []
