"""The Hub contract, the same for every model class and every zoo entry (timm-style, over the registry):
round trip, strict loading, refusal of tampered or unchecked weights."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import zoo
from models.classifier import ImageClassifier
from models.dpfe import DPFE
from models.hashing import ADSH, DSDH, HashingModule
from models.hub import (
    CorruptFileError,
    PrivzooHubMixin,
    UncheckedWeightsError,
    WeightsMismatchError,
    tensor_digest,
)
from models.ppl import PPL
from models.sca import SCA


def _adsh():
    model = ADSH(bits=8)
    model._resize_lazy("V", (20, 8), torch.float32)  # data-sized database codes travel with the weights
    model.V.copy_(torch.randint(0, 2, (20, 8), generator=torch.Generator().manual_seed(0)).float() * 2 - 1)
    return model


#: one tiny instance of every model class of the zoo
FACTORIES = {
    "classifier": lambda: ImageClassifier(num_classes=4),
    "ppl": lambda: PPL(bits=8, generator_channels=[4, 4, 8, 8]),
    "sca": lambda: SCA(channels=[4, 8], code_length=32, sx=4, sp=8, num_quantiles=33),
    "dpfe-attribute": lambda: DPFE(stage="attribute"),
    "dpfe": lambda: DPFE(stage="dpfe"),
    "adsh": _adsh,
    "dsdh": lambda: DSDH(bits=8),
}


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_model_class_has_a_contract_case():
    classes = {c for c in _subclasses(PrivzooHubMixin) if c.__module__.startswith("models.")} - {
        HashingModule
    }
    assert classes == {type(make()) for make in FACTORIES.values()}


@pytest.fixture(params=sorted(FACTORIES), ids=str)
def saved(request, tmp_path):
    torch.manual_seed(0)
    model = FACTORIES[request.param]().eval()
    folder = tmp_path / request.param
    model.save_pretrained(folder, model_card_kwargs={"name": f"{request.param}-tiny"})
    return model, folder


def _rewrite(folder, change):
    """Rewrites model.safetensors with ``change(tensors)`` applied and a valid privzoo checksum."""
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"privzoo_sha256": tensor_digest(tensors)})


def test_round_trip_is_exact_and_in_eval_mode(saved, assert_same_state):
    model, folder = saved
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    loaded = type(model).from_pretrained(folder)
    assert type(loaded) is type(model) and not loaded.training
    assert dict(loaded.hparams) == json.loads((folder / "config.json").read_text()) == model.hub_config()
    assert_same_state(model, loaded)
    assert f"`{type(model).__module__}.{type(model).__name__}`" in (folder / "README.md").read_text()


def test_loading_is_strict(saved):
    model, folder = saved
    name = next(iter(model.state_dict()))
    _rewrite(folder, lambda t: t.update({"extra.weight": torch.ones(2)}))
    with pytest.raises(WeightsMismatchError, match=r"unexpected key\(s\) \(extra\.weight\)"):
        type(model).from_pretrained(folder)
    _rewrite(folder, lambda t: (t.pop("extra.weight"), t.pop(name)))
    with pytest.raises(WeightsMismatchError, match="missing key"):
        type(model).from_pretrained(folder)
    with pytest.raises(WeightsMismatchError, match="missing key"):
        type(model).from_pretrained(folder, strict=True)


def test_tampered_or_unchecked_weights_are_refused(saved):
    model, folder = saved
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte of tensor data: the header is intact
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="does not match the checksum"):
        type(model).from_pretrained(folder)
    tensors = load_file(str(path))
    save_file(tensors, str(path))  # a third-party file: no privzoo checksum
    with pytest.raises(UncheckedWeightsError, match="allow_unchecked=True"):
        type(model).from_pretrained(folder)


@pytest.mark.parametrize("name", zoo.available())
def test_every_zoo_entry_honours_the_contract(name, tmp_path, assert_same_state):
    entry = zoo.get_entry(name)
    shipped = zoo.load(name)
    assert type(shipped) is entry.model_class and not shipped.training
    copy = tmp_path / name
    shutil.copytree(zoo.folder(name), copy)
    assert_same_state(shipped, entry.model_class.from_pretrained(copy))
    header = set(load_file(str(copy / "model.safetensors")))
    assert header == set(shipped.state_dict())  # every tensor stored, nothing else
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="does not match the checksum"):
        entry.model_class.from_pretrained(copy)
