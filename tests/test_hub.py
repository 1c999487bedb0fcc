"""Hub layout (models.hub): save / load round trips, tied and non-persistent tensors, strictness, bad input,
and the model card (models.cards)."""

import copy
import json
import pickle

import lightning as L
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from models.cards import GENERIC_THREAT_MODEL, StaleCardError, read_card_metrics, update_card_metrics
from models.classifier import ImageClassifier
from models.hub import (
    ConfigError,
    CorruptFileError,
    HubLoadError,
    MissingFileError,
    PickleWeightsError,
    PrivzooHubMixin,
    UncheckedWeightsError,
    WeightsMismatchError,
)

HUB_FILES = {"config.json", "model.safetensors", "README.md"}


class TiedNet(PrivzooHubMixin, L.LightningModule):
    """Toy model with a tied weight, a persistent int buffer and a non-persistent buffer."""

    def __init__(
        self, vocab: int = 5, width: int = 3, scale: float = 2.0, sizes: tuple[int, int] = (1, 2)
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab, width)
        self.out = nn.Linear(width, vocab, bias=False)
        self.out.weight = self.embed.weight  # tied: one tensor, two state-dict names
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("table", torch.arange(vocab, dtype=torch.float32) * scale, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Maps token ids [B] to logits [B, vocab]."""
        return self.out(self.embed(tokens)) + self.table


class Base(PrivzooHubMixin, L.LightningModule):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layer = nn.Linear(width, width)


class Child(Base):
    """save_hyperparameters() once, in the innermost class only."""

    card_threat_model = "Child's own threat model text."

    def __init__(self, width: int = 4, depth: int = 2) -> None:
        super().__init__(width)
        self.save_hyperparameters()
        self.extra = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))


class NoHparams(PrivzooHubMixin, L.LightningModule):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layer = nn.Linear(width, width)


class TensorArg(PrivzooHubMixin, L.LightningModule):
    def __init__(self, init: torch.Tensor | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = ImageClassifier(num_classes=4, in_chans=1)
    folder = tmp_path / "clf"
    model.save_pretrained(folder, model_card_kwargs={"name": "clf-tiny", "dataset": "Fashion-MNIST"})
    return model, folder


def test_round_trip_writes_hub_layout_and_loads_strictly_in_eval_mode(saved, assert_same_state):
    model, folder = saved
    assert {p.name for p in folder.iterdir()} == HUB_FILES  # no pickle, nothing else
    config = json.loads((folder / "config.json").read_text())
    assert config == dict(model.hparams)
    loaded = ImageClassifier.from_pretrained(folder)
    assert isinstance(loaded, ImageClassifier) and not loaded.training
    assert all(not m.training for m in loaded.modules())
    assert next(loaded.parameters()).device == torch.device("cpu")
    assert dict(loaded.hparams) == config
    assert_same_state(model, loaded)
    x = torch.rand(2, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), loaded(x))
    # map_location-style device choice
    assert next(ImageClassifier.from_pretrained(folder, map_location=torch.device("cpu")).parameters()).is_cpu


def test_saving_is_deterministic_and_metadata_is_safetensors(saved, tmp_path):
    model, folder = saved
    for attempt in range(5):  # safetensors' metadata map has no fixed order: several tries catch that
        again = tmp_path / f"again{attempt}"
        model.save_pretrained(again)
        assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    assert list(metadata) == ["privzoo_sha256"] and len(metadata["privzoo_sha256"]) == 64


def test_tied_weights_stored_once_and_non_persistent_buffers_rebuilt(tmp_path):
    torch.manual_seed(0)
    model = TiedNet(vocab=6, width=3, scale=0.5)
    model.steps += 7
    model.save_pretrained(tmp_path / "tied")
    stored = load_file(str(tmp_path / "tied" / "model.safetensors"))
    assert set(stored) == {"embed.weight", "steps"}  # out.weight is the same tensor; table is not persistent
    config = json.loads((tmp_path / "tied" / "config.json").read_text())
    assert config["sizes"] == [1, 2]  # tuples are JSON lists, and come back as such in hparams
    loaded = TiedNet.from_pretrained(tmp_path / "tied")
    assert loaded.out.weight is loaded.embed.weight
    assert torch.equal(loaded.embed.weight, model.embed.weight) and int(loaded.steps) == 7
    assert torch.equal(loaded.table, torch.arange(6.0) * 0.5)
    assert dict(loaded.hparams) == config
    tokens = torch.tensor([0, 3, 5])
    assert torch.equal(loaded(tokens), model.eval()(tokens))


def test_save_hyperparameters_in_the_innermost_class_rebuilds_the_subclass(tmp_path, assert_same_state):
    model = Child(width=3, depth=3)
    model.save_pretrained(tmp_path / "child")
    assert json.loads((tmp_path / "child" / "config.json").read_text()) == {"width": 3, "depth": 3}
    loaded = Child.from_pretrained(tmp_path / "child")
    assert len(loaded.extra) == 3 and dict(loaded.hparams) == {"width": 3, "depth": 3}
    assert_same_state(model, loaded)
    card = (tmp_path / "child" / "README.md").read_text()
    assert "Child's own threat model text." in card and GENERIC_THREAT_MODEL not in card


def test_lightning_cli_bookkeeping_keys_stay_out_of_config(tmp_path):
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters_context

    hparams = {"_class_path": "models.classifier.ImageClassifier", "num_classes": 3}
    with _given_hyperparameters_context(hparams, "lightning.pytorch.cli.instantiate_module"):
        model = ImageClassifier(num_classes=3)
    assert "_instantiator" in model.hparams  # what LightningCLI leaves in hparams
    model.save_pretrained(tmp_path / "cli")
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config == {"num_classes": 3}
    assert ImageClassifier.from_pretrained(tmp_path / "cli").head.out_features == 3


def test_pickling_and_deepcopy_keep_working(saved, assert_same_state):
    model, _ = saved
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert_same_state(model, clone)
        assert clone.hub_config() == model.hub_config()


def test_save_refuses_models_that_config_json_cannot_rebuild(tmp_path):
    with pytest.raises(ValueError, match="save_hyperparameters"):
        NoHparams().save_pretrained(tmp_path / "a")
    with pytest.raises(ValueError, match="cannot go into config.json"):
        TensorArg(init=torch.zeros(2)).save_pretrained(tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------------
# bad input: a clear error naming the file and the fix; weights are checked before any load
# ------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_load(monkeypatch):
    """Fails the test if any state dict gets copied into a model."""
    calls = []
    original = nn.Module.load_state_dict

    def spy(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "load_state_dict", spy)
    yield calls
    assert calls == [], "weights were copied into a model before the error"


def test_missing_files(saved, tmp_path, no_load):
    _, folder = saved
    (folder / "config.json").unlink()
    with pytest.raises(MissingFileError, match=r"config\.json does not exist.*convert_checkpoint"):
        ImageClassifier.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(MissingFileError, match=r"model\.safetensors does not exist"):
        ImageClassifier.from_pretrained(folder)
    with pytest.raises(MissingFileError, match="does not exist"):
        ImageClassifier.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(MissingFileError, match="does not exist"):
        ImageClassifier.from_pretrained("./relative/nowhere")


def test_pickle_only_folder_is_refused(saved, no_load):
    model, folder = saved
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(PickleWeightsError, match=r"pytorch_model\.bin.*arbitrary code.*convert_checkpoint"):
        ImageClassifier.from_pretrained(folder)


def test_config_that_is_not_json_or_does_not_match_the_class(saved, no_load):
    _, folder = saved
    config = folder / "config.json"
    good = config.read_text()
    config.write_text(good[:-10])
    with pytest.raises(CorruptFileError, match=r"config\.json is not valid JSON .*line"):
        ImageClassifier.from_pretrained(folder)
    config.write_text("[1, 2]")
    with pytest.raises(CorruptFileError, match="JSON object"):
        ImageClassifier.from_pretrained(folder)
    config.write_text(json.dumps({**json.loads(good), "depth": 3}))
    with pytest.raises(ConfigError, match=r"\['depth'\].*does not take"):
        ImageClassifier.from_pretrained(folder)
    config.write_text(good)
    with pytest.raises(ConfigError, match="takes no argument"):
        ImageClassifier.from_pretrained(folder, depth=3)
    with pytest.raises(ConfigError, match="does not take"):
        TiedNet.from_pretrained(folder)  # the folder belongs to another class


def test_weights_that_do_not_fit_the_config(saved, no_load):
    _, folder = saved
    config = folder / "config.json"
    good = json.loads(config.read_text())
    config.write_text(json.dumps({**good, "num_classes": 7}))
    with pytest.raises(
        WeightsMismatchError, match=r"model\.safetensors does not fit.*head\.weight: file \[4, 500\]"
    ):
        ImageClassifier.from_pretrained(folder)
    config.write_text(json.dumps(good))
    # the same config, but an overriding argument changes the shapes
    with pytest.raises(WeightsMismatchError, match=r"head\.bias"):
        ImageClassifier.from_pretrained(folder, num_classes=5)


def _rewrite_weights(folder, change):
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_and_unexpected_keys_are_errors_unless_strict_false(saved):
    model, folder = saved
    load = ImageClassifier.from_pretrained
    _rewrite_weights(folder, lambda t: t.pop("head.bias"))  # a third-party file: no privzoo checksum
    with pytest.raises(WeightsMismatchError, match=r"1 missing key\(s\) \(head\.bias\)"):
        load(folder, allow_unchecked=True)
    loose = load(folder, strict=False, allow_unchecked=True)
    assert torch.equal(loose.head.weight, model.head.weight)

    _rewrite_weights(
        folder, lambda t: t.update({"head.bias": model.head.bias.detach(), "extra.w": torch.ones(2)})
    )
    with pytest.raises(WeightsMismatchError, match=r"unexpected key\(s\) \(extra\.w\)"):
        load(folder, allow_unchecked=True)
    assert torch.equal(load(folder, strict=False, allow_unchecked=True).head.bias, model.head.bias)

    _rewrite_weights(folder, lambda t: t.update({"head.bias": t["head.bias"].double()}))
    with pytest.raises(WeightsMismatchError, match="dtype F64"):
        load(folder, strict=False, allow_unchecked=True)


def test_weights_without_the_checksum_are_refused_unless_allowed(saved, no_load):
    model, folder = saved
    _rewrite_weights(folder, lambda t: None)  # same tensors, checksum metadata stripped
    with pytest.raises(UncheckedWeightsError, match=r"no privzoo checksum.*allow_unchecked=True"):
        ImageClassifier.from_pretrained(folder)
    assert issubclass(UncheckedWeightsError, CorruptFileError)


def test_third_party_weights_load_when_allowed(saved, assert_same_state):
    model, folder = saved
    _rewrite_weights(folder, lambda t: None)
    assert_same_state(model, ImageClassifier.from_pretrained(folder, allow_unchecked=True))


def test_tampered_weights_file(saved):
    _, folder = saved
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(
        CorruptFileError, match=r"model\.safetensors is not a readable safetensors file.*truncated"
    ):
        ImageClassifier.from_pretrained(folder)
    path.write_bytes(b"\xff" * 64)  # garbage header
    with pytest.raises(CorruptFileError, match="not a readable safetensors"):
        ImageClassifier.from_pretrained(folder)
    path.write_bytes(b"")
    with pytest.raises(CorruptFileError):
        ImageClassifier.from_pretrained(folder)
    flipped = bytearray(data)
    flipped[-3] ^= 0x40  # one bit in the tensor data: the header is intact
    path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError, match="does not match the checksum"):
        ImageClassifier.from_pretrained(folder)  # the freshly built model that failed it is discarded


def test_hub_id_that_is_not_cached_offline(tmp_path):
    with pytest.raises(MissingFileError, match="neither a local folder nor in the Hugging Face cache"):
        ImageClassifier.from_pretrained("privzoo/not-there", cache_dir=tmp_path / "hf")
    assert issubclass(MissingFileError, HubLoadError) and issubclass(MissingFileError, FileNotFoundError)


# ------------------------------------------------------------------------------------------------------
# the model card
# ------------------------------------------------------------------------------------------------------
def test_card_front_matter_and_sections(saved):
    _, folder = saved
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == "privzoo" and data.license == "apache-2.0"
    assert {"privzoo", "privacy", "pytorch"} <= set(data.tags)
    assert data.pipeline_tag == "image-classification"
    assert data.privzoo["class_path"] == "models.classifier.ImageClassifier"
    for section in (
        "## Loading",
        "## Dataset and split",
        "## Training config",
        "## Metrics",
        "## Threat model",
    ):
        assert section in card.text, section
    example = card.text.split("## Loading")[1].split("```python\n")[1].split("```")[0].strip().splitlines()
    assert example[:2] == ["from models.zoo import load", 'model = load("clf-tiny")  # eval mode, CPU']
    assert len(example) == 3
    assert "no privacy" in card.text  # ImageClassifier's own threat model text
    assert '"num_classes": 4' in card.text  # the exact config
    assert "No metrics measured yet" in card.text
    with pytest.raises(ValueError, match="unknown model card key"):
        ImageClassifier(num_classes=4).save_pretrained(
            folder.parent / "x", model_card_kwargs={"datset": "typo"}
        )
    assert not (folder.parent / "x").exists()  # checked before anything is written


def test_update_card_metrics_writes_table_and_model_index(saved):
    model, folder = saved
    update_card_metrics(
        folder, {"test/acc": 0.8125, "test/loss": torch.tensor(0.5)}, source="tests/test_hub.py"
    )
    update_card_metrics(folder, {"test/acc": 0.875}, source="scripts/demo.py")  # replaces the same metric
    rows = {m["name"]: m for m in read_card_metrics(folder)}
    assert rows["test/acc"]["value"] == 0.875 and rows["test/acc"]["source"] == "scripts/demo.py"
    assert rows["test/loss"]["value"] == 0.5 and rows["test/acc"]["dataset"] == "Fashion-MNIST"
    card = ModelCard.load(folder / "README.md")
    assert "| `test/acc` | 0.8750 | Fashion-MNIST | test | `scripts/demo.py` |" in card.text
    assert "0.8125" not in card.text
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"test/acc": 0.875, "test/loss": 0.5}
    assert ImageClassifier.from_pretrained(folder) is not None  # the card does not get in the way of loading
    for bad in ("high", True, torch.ones(2), None):
        with pytest.raises(ValueError, match="must be a number"):
            update_card_metrics(folder, {"x": bad}, source="s")
    with pytest.raises(ValueError, match="source"):
        update_card_metrics(folder, {"x": 1.0}, source=" ")
    # new weights: the card's metrics no longer apply
    with torch.no_grad():
        model.head.bias += 1
    model._save_weights(folder / "model.safetensors")  # weights replaced behind the card's back
    with pytest.raises(StaleCardError, match="weights changed"):
        update_card_metrics(folder, {"test/acc": 0.9}, source="s")
    model.save_pretrained(folder)  # a proper save writes a fresh card
    assert read_card_metrics(folder) == []


@pytest.mark.gpu
def test_map_location_cuda_and_saving_from_the_gpu(saved, tmp_path):
    model, folder = saved
    loaded = ImageClassifier.from_pretrained(folder, map_location="cuda")
    assert all(p.is_cuda for p in loaded.parameters()) and not loaded.training
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(loaded(x.cuda()).cpu(), model.eval()(x), atol=1e-5)
    loaded.save_pretrained(tmp_path / "from-gpu")  # written from CUDA tensors: the same bytes as from the CPU
    written = (tmp_path / "from-gpu" / "model.safetensors").read_bytes()
    assert written == (folder / "model.safetensors").read_bytes()
