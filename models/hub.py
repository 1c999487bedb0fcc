"""Hugging Face Hub layout for privzoo models: ``config.json`` + ``model.safetensors`` + ``README.md``.

A method opts in by putting :class:`PrivzooHubMixin` FIRST among its bases and calling
``self.save_hyperparameters()`` exactly once, in the innermost (most derived) ``__init__``::

    class PPL(PrivzooHubMixin, L.LightningModule):
        card_method = "PPL: proactive privacy-preserving learning ..."     # optional card texts
        card_threat_model = "..."

        def __init__(self, bits: int = 16, ...) -> None:
            super().__init__()
            self.save_hyperparameters()

    model.save_pretrained("checkpoints/ppl-fashion-mnist-16bit", model_card_kwargs={"name": ...})
    model = PPL.from_pretrained("checkpoints/ppl-fashion-mnist-16bit")   # or "privzoo/ppl-fashion-..."

What it adds to huggingface_hub's :class:`~huggingface_hub.PyTorchModelHubMixin`:

* ``config.json`` is the model's Lightning ``hparams`` (its init arguments, Lightning-CLI bookkeeping keys
  dropped), checked to be JSON that rebuilds the model; after loading, ``model.hparams == config.json``.
* weights go to ``model.safetensors`` only, never pickle; tied parameters are stored once, non-persistent
  buffers not at all (they are rebuilt by ``__init__``); the header carries a sha256 of the tensor data.
* ``from_pretrained`` loads STRICTLY (the base class defaults to ``strict=False``), returns the model in
  eval mode on ``map_location`` (default CPU), and checks everything before returning: files present,
  valid JSON, config keys against ``__init__``, safetensors header readable, every key / shape / dtype
  against the rebuilt model, the data checksum. Pickle weights (``pytorch_model.bin``) are refused.
  Errors are :class:`HubLoadError` subclasses that name the file and the fix.
* ``save_pretrained`` writes a privzoo model card (:mod:`models.cards`), always fresh: new weights
  mean the old card's metrics no longer apply.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import PyTorchModelHubMixin, constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from models import cards

__all__ = [
    "CONFIG_NAME",
    "PICKLE_NAMES",
    "WEIGHTS_NAME",
    "ConfigError",
    "CorruptFileError",
    "HubLoadError",
    "MissingFileError",
    "PickleWeightsError",
    "PrivzooHubMixin",
    "WeightsMismatchError",
    "check_folder",
    "tensor_digest",
]

CONFIG_NAME = constants.CONFIG_NAME  # "config.json"
WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE  # "model.safetensors"
CARD_NAME = "README.md"
#: weight files in pickle formats: refused (unpickling runs arbitrary code)
PICKLE_NAMES = (constants.PYTORCH_WEIGHTS_NAME, "model.ckpt", "model.pt", "model.pth", "pytorch_model.pt")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
#: keys LightningCLI adds to ``hparams`` that are not init arguments
LIGHTNING_PRIVATE_KEYS = ("_instantiator", "_class_path")
DIGEST_KEY = "privzoo_sha256"
FIX_REEXPORT = "re-export the folder with scripts/convert_checkpoint.py (or model.save_pretrained)"

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class HubLoadError(Exception):
    """Base of the errors raised while loading a checkpoint folder / Hub repo (nothing is returned)."""


class MissingFileError(HubLoadError, FileNotFoundError):
    """A folder / repo lacks ``config.json`` or ``model.safetensors``."""


class CorruptFileError(HubLoadError, ValueError):
    """A file exists but cannot be read: invalid JSON, truncated safetensors, checksum mismatch."""


class PickleWeightsError(HubLoadError, ValueError):
    """Only pickle weights (``pytorch_model.bin`` ...) are present: refused."""


class ConfigError(HubLoadError, ValueError):
    """``config.json`` does not match the class's ``__init__`` (unknown / missing arguments)."""


class WeightsMismatchError(HubLoadError, ValueError):
    """The weights do not fit the model rebuilt from the config (missing / unexpected keys, shapes)."""


# ----------------------------------------------------------------------------------------------------
# tensors
# ----------------------------------------------------------------------------------------------------
def _alias_groups(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Groups state-dict names that are the SAME tensor (tied weights), in state-dict order.

    Raises:
        ValueError: two entries share memory without being the same view (safetensors cannot store that).
    """
    by_storage: dict[tuple, list[str]] = {}
    singles: list[list[str]] = []
    for name, t in state.items():
        if t.device.type == "meta" or t.numel() == 0:
            singles.append([name])
            continue
        by_storage.setdefault((t.device, t.untyped_storage().data_ptr()), []).append(name)
    groups = singles + list(by_storage.values())
    for names in groups:
        views = {
            (state[n].storage_offset(), tuple(state[n].shape), tuple(state[n].stride()), state[n].dtype)
            for n in names
        }
        if len(views) > 1:
            raise ValueError(
                f"state-dict entries {names} share memory but are different views of it; safetensors cannot "
                "store that: clone one of them in __init__, or register it as a non-persistent buffer"
            )
    order = {name: i for i, name in enumerate(state)}
    return sorted(groups, key=lambda g: order[g[0]])


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of CPU tensors, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _safetensors_header(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """``({name: (dtype, shape)}, metadata)`` of a safetensors file, without reading the tensor data."""
    try:
        with safe_open(str(path), framework="pt") as f:
            entries = {}
            for key in f.keys():
                piece = f.get_slice(key)
                entries[key] = (piece.get_dtype(), tuple(int(s) for s in piece.get_shape()))
            return entries, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptFileError(
            f"{path} is not a readable safetensors file ({err}): it is truncated, damaged or not "
            f"safetensors at all. Download it again (force_download=True for a Hub repo) or {FIX_REEXPORT}."
        ) from err


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


# ----------------------------------------------------------------------------------------------------
# folder checks (also used by scripts/publish.py)
# ----------------------------------------------------------------------------------------------------
def _pickle_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))


def check_folder(folder: str | os.PathLike) -> tuple[Path, Path]:
    """Paths of ``config.json`` and ``model.safetensors`` in a checkpoint folder, or a clear error.

    Raises:
        MissingFileError: the folder or one of the two files does not exist.
        PickleWeightsError: the weights exist only as pickle (``pytorch_model.bin`` ...).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"checkpoint folder {folder} does not exist (or is not a folder)")
    config, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not weights.is_file():
        pickles = _pickle_files(folder)
        if pickles:
            raise PickleWeightsError(
                f"{folder} has pickle weights ({', '.join(pickles)}) but no {WEIGHTS_NAME}: privzoo refuses "
                "pickle because unpickling a file can run arbitrary code. Convert it, in an environment you "
                f"trust, with scripts/convert_checkpoint.py (or load it there and call save_pretrained)."
            )
        raise MissingFileError(f"{weights} does not exist: the folder has no weights; {FIX_REEXPORT}")
    if not config.is_file():
        raise MissingFileError(
            f"{config} does not exist: without it the model cannot be rebuilt; {FIX_REEXPORT} "
            "(it writes config.json from the model's hparams)"
        )
    return config, weights


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        config = json.loads(text)
    except UnicodeDecodeError as err:
        raise CorruptFileError(
            f"{path} is not UTF-8 text ({err}); download it again or {FIX_REEXPORT}"
        ) from err
    except json.JSONDecodeError as err:
        raise CorruptFileError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): the file is "
            "damaged or was edited by hand. Download it again (force_download=True for a Hub repo) or "
            f"{FIX_REEXPORT}."
        ) from err
    if not isinstance(config, dict):
        raise CorruptFileError(
            f"{path} must hold a JSON object of init arguments, got {type(config).__name__}; {FIX_REEXPORT}"
        )
    return config


def _is_path_like(name: str) -> bool:
    return os.path.exists(name) or name.startswith((".", "/", "~")) or "\\" in name or name.count("/") != 1


# ----------------------------------------------------------------------------------------------------
# the mixin
# ----------------------------------------------------------------------------------------------------
class PrivzooHubMixin(
    PyTorchModelHubMixin,
    library_name="privzoo",
    license="apache-2.0",
    tags=["privzoo", "privacy"],
    repo_url="https://github.com/privzoo/privzoo",
):
    """Save / load a LightningModule in Hub layout (see the module docstring). Put it FIRST in the bases.

    Class attributes a method may set for its model card (all optional):

    Attributes:
        card_method: one line naming the method (default: first line of the class docstring).
        card_paper: the paper's citation.
        card_paper_url: a link to the paper.
        card_threat_model: the "threat model and limits" section (default:
            :data:`models.cards.GENERIC_THREAT_MODEL`).
        card_usage: the third line of the loading example, e.g. ``"z = model.protect(x)  # [B, 1, 28, 28]"``.
        card_task: Hub ``pipeline_tag`` / evaluation task type (default ``"image-feature-extraction"``).
        card_tags: extra Hub tags.
    """

    card_method: ClassVar[str | None] = None
    card_paper: ClassVar[str | None] = None
    card_paper_url: ClassVar[str | None] = None
    card_threat_model: ClassVar[str] = cards.GENERIC_THREAT_MODEL
    card_usage: ClassVar[str | None] = None
    card_task: ClassVar[str] = "image-feature-extraction"
    card_tags: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------------------------------------
    # config
    # ------------------------------------------------------------------------------------------------
    @classmethod
    def _init_parameters(cls) -> tuple[dict[str, inspect.Parameter], bool]:
        params = dict(inspect.signature(cls.__init__).parameters)
        params.pop("self", None)
        has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        named = {
            k: p
            for k, p in params.items()
            if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        }
        return named, has_var_kw

    def hub_config(self) -> dict[str, Any]:
        """The ``config.json`` content: the model's hparams (its init arguments), JSON-checked.

        Raises:
            ValueError: no hparams (``save_hyperparameters()`` not called), a value that is not JSON, or an
                init argument without a default missing from hparams.
        """
        hparams = getattr(self, "hparams", None)
        params, has_var_kw = self._init_parameters()
        if not hparams and params:
            raise ValueError(
                f"{type(self).__name__} has no hparams: call self.save_hyperparameters() once in its "
                "__init__ (config.json is written from them)"
            )
        config = {k: v for k, v in dict(hparams or {}).items() if k not in LIGHTNING_PRIVATE_KEYS}
        for key, value in config.items():
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"hparam {key!r} = {value!r} of {type(self).__name__} cannot go into config.json "
                    f"({err}): init arguments must be JSON values (int, float, str, bool, None, lists / "
                    "dicts of those)"
                ) from err
        config = json.loads(json.dumps(config))  # tuples -> lists, exactly what loading will pass back
        if not has_var_kw:
            extra = sorted(set(config) - set(params))
            if extra:
                raise ValueError(
                    f"hparams {extra} of {type(self).__name__} are not __init__ arguments: "
                    "call save_hyperparameters() once, in the innermost __init__, without extra arguments"
                )
        missing = sorted(
            k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in config
        )
        if missing:
            raise ValueError(
                f"init arguments {missing} of {type(self).__name__} are not in hparams (save_hyperparameters "
                "ignore=...?): config.json could not rebuild the model"
            )
        return config

    @classmethod
    def _config_to_kwargs(
        cls, config: dict[str, Any], overrides: dict[str, Any], path: str
    ) -> dict[str, Any]:
        params, has_var_kw = cls._init_parameters()
        config = {k: v for k, v in config.items() if k not in LIGHTNING_PRIVATE_KEYS}
        if not has_var_kw:
            unknown = sorted(set(config) - set(params))
            if unknown:
                raise ConfigError(
                    f"{path} has argument(s) {unknown} that {cls.__name__}.__init__ does not take (it takes "
                    f"{sorted(params)}): the folder was written for another class or another version of it. "
                    f"Load it with the class named in its README.md, or {FIX_REEXPORT}."
                )
            bad = sorted(set(overrides) - set(params))
            if bad:
                raise ConfigError(
                    f"{cls.__name__}.__init__ takes no argument(s) {bad}; it takes {sorted(params)}"
                )
        kwargs = {**config, **overrides}
        missing = sorted(
            k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs
        )
        if missing:
            raise ConfigError(
                f"{path} lacks required argument(s) {missing} of {cls.__name__}.__init__; {FIX_REEXPORT}"
            )
        return kwargs

    # ------------------------------------------------------------------------------------------------
    # saving
    # ------------------------------------------------------------------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        """Writes ``model.safetensors`` (tied tensors once, CPU, contiguous, data checksum in the header).

        The same weights always give the same bytes.
        """
        state = self.state_dict()
        tensors = {
            group[0]: state[group[0]].detach().to("cpu").contiguous() for group in _alias_groups(state)
        }
        tmp = save_directory / (WEIGHTS_NAME + ".tmp")
        # ONE metadata entry: safetensors writes its metadata map in an unspecified order, so with two
        # entries saving the same weights twice could give different bytes (and noisy git diffs)
        save_file(tensors, str(tmp), metadata={DIGEST_KEY: tensor_digest(tensors)})
        os.replace(tmp, save_directory / WEIGHTS_NAME)

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        config: dict | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Writes ``config.json``, ``model.safetensors`` and a fresh model card ``README.md``.

        Args:
            save_directory: the folder (created if needed); existing files of these three names are replaced.
            config: must equal :meth:`hub_config` if given (kept for huggingface_hub compatibility).
            repo_id: Hub repo for ``push_to_hub`` (default: the folder name).
            push_to_hub: also upload the folder (see :meth:`push_to_hub`).
            model_card_kwargs: training context for the card, keys in :data:`models.cards.CARD_CONTEXT_KEYS`
                (``name``, ``dataset``, ``datamodule``, ``split``, ``training_config``, ``source``, ...).
            push_to_hub_kwargs: passed to :meth:`push_to_hub`.

        Returns:
            The commit URL when ``push_to_hub``, else ``None``.
        """
        own = self.hub_config()
        if config is not None and json.loads(json.dumps(config)) != own:
            raise ValueError(
                "config differs from the model's hparams; privzoo writes config.json from hparams only "
                "(omit config=)"
            )
        card_context = cards.check_context(model_card_kwargs)  # before anything is written
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        self._save_pretrained(save_directory)
        tmp = save_directory / (CONFIG_NAME + ".tmp")
        tmp.write_text(json.dumps(own, sort_keys=True, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, save_directory / CONFIG_NAME)
        card = cards.render_card(
            type(self), own, cards.file_sha256(save_directory / WEIGHTS_NAME), card_context
        )
        card.save(save_directory / CARD_NAME)
        if push_to_hub:
            return self.push_to_hub(
                repo_id or save_directory.name, model_card_kwargs=card_context, **push_to_hub_kwargs
            )
        return None

    def generate_model_card(self, *args: Any, **kwargs: Any):
        """The privzoo card for the current weights (no metrics yet); ``kwargs``: card context keys."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self._save_pretrained(Path(tmp))
            sha = cards.file_sha256(Path(tmp) / WEIGHTS_NAME)
        return cards.render_card(type(self), self.hub_config(), sha, kwargs)

    # ------------------------------------------------------------------------------------------------
    # loading
    # ------------------------------------------------------------------------------------------------
    @classmethod
    def _download(
        cls,
        repo_id: str,
        *,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        token: str | bool | None,
        local_files_only: bool,
    ) -> Path:
        """Downloads ``config.json`` + ``model.safetensors`` (+ card) of one revision; returns the folder."""
        from huggingface_hub import file_exists, snapshot_download

        try:
            folder = snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
                allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
            )
        except RepositoryNotFoundError as err:
            raise MissingFileError(
                f"Hub repo {repo_id!r} does not exist (or needs a token): check the name "
                "(models.zoo.available() lists the zoo) or log in with `hf auth login`"
            ) from err
        except RevisionNotFoundError as err:
            raise MissingFileError(f"Hub repo {repo_id!r} has no revision {revision!r}") from err
        except LocalEntryNotFoundError as err:
            raise MissingFileError(
                f"{repo_id!r} is neither a local folder nor in the Hugging Face cache, and the Hub is not "
                f"reachable (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}, endpoint "
                f"{constants.ENDPOINT}): connect and unset HF_HUB_OFFLINE, or pass a local folder ({err})"
            ) from err
        except HfHubHTTPError as err:
            raise MissingFileError(
                f"could not download {repo_id!r} from {constants.ENDPOINT}: {err}"
            ) from err
        folder = Path(folder)
        if not (folder / WEIGHTS_NAME).is_file():
            try:
                pickled = file_exists(repo_id, constants.PYTORCH_WEIGHTS_NAME, revision=revision, token=token)
            except Exception:  # offline or a network error: we only wanted a better message
                pickled = False
            if pickled:
                raise PickleWeightsError(
                    f"Hub repo {repo_id!r} has only pickle weights ({constants.PYTORCH_WEIGHTS_NAME}), no "
                    f"{WEIGHTS_NAME}: privzoo refuses pickle because unpickling can run arbitrary code. Ask "
                    "the owner for safetensors, or convert it yourself in an environment you trust."
                )
            raise MissingFileError(
                f"Hub repo {repo_id!r} has no {WEIGHTS_NAME}; {FIX_REEXPORT} and publish it"
            )
        if not (folder / CONFIG_NAME).is_file():
            raise MissingFileError(
                f"Hub repo {repo_id!r} has no {CONFIG_NAME}; {FIX_REEXPORT} and publish it"
            )
        return folder

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        **model_kwargs: Any,
    ):
        """Rebuilds the model from a checkpoint folder or a Hub repo id and loads its weights strictly.

        Everything is checked before the model is returned (files, JSON, config keys, every weight's name,
        shape and dtype, the data checksum); on any problem an error is raised and no model comes back.

        Args:
            pretrained_model_name_or_path: a local folder, or a Hub repo id such as ``"privzoo/<name>"``.
            map_location: device the returned model is moved to (default ``"cpu"``).
            strict: ``False`` tolerates missing / unexpected keys (shapes and dtypes are still checked).
            force_download: re-download even if cached.
            token: Hub token (default: the usual huggingface_hub places).
            cache_dir: Hugging Face cache folder.
            local_files_only: use the cache only.
            revision: branch, tag or commit of the Hub repo.
            model_kwargs: init arguments overriding config.json.

        Returns:
            The model, in eval mode on ``map_location``.

        Raises:
            MissingFileError, PickleWeightsError, CorruptFileError, ConfigError, WeightsMismatchError.
        """
        name = str(pretrained_model_name_or_path)
        if os.path.isdir(name):
            folder = Path(name)
        elif _is_path_like(name):
            raise MissingFileError(
                f"checkpoint folder {name} does not exist (and it is not a Hub repo id like 'privzoo/<name>')"
            )
        else:
            folder = cls._download(
                name,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        config_path, weights_path = check_folder(folder)
        kwargs = cls._config_to_kwargs(_read_config(config_path), model_kwargs, str(config_path))
        header, metadata = _safetensors_header(weights_path)
        with torch.device("cpu"):
            model = cls(**kwargs)
        # data-sized ("lazy") buffers, e.g. a hashing model's database codes, take the file's shapes;
        # every other tensor is checked against the model built from config.json
        for name in getattr(model, "_lazy_buffers", ()):
            if name in header and hasattr(model, "_resize_lazy"):
                dtype = _SAFETENSORS_DTYPES.get(header[name][0])
                if dtype is not None:
                    model._resize_lazy(name, header[name][1], dtype)
        cls._check_weights(model, header, weights_path, strict)
        tensors = load_file(str(weights_path), device="cpu")
        stored = metadata.get(DIGEST_KEY)
        if stored is not None and tensor_digest(tensors) != stored:
            raise CorruptFileError(
                f"the tensor data in {weights_path} does not match the checksum in its header: the file was "
                f"modified or damaged after it was saved. Download it again or {FIX_REEXPORT}."
            )
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        tied = {n for g in _alias_groups(model.state_dict()) if len(g) > 1 for n in g}
        if strict and (set(missing) - tied or unexpected):  # _check_weights makes this unreachable
            raise WeightsMismatchError(f"{weights_path}: missing {missing}, unexpected {unexpected}")
        model.eval()
        return model.to(map_location)

    @classmethod
    def _check_weights(
        cls, model: Any, header: dict[str, tuple[str, tuple[int, ...]]], path: Path, strict: bool
    ) -> None:
        state = model.state_dict()
        groups = _alias_groups(state)
        missing = [g[0] if len(g) == 1 else "=".join(g) for g in groups if not any(n in header for n in g)]
        unexpected = sorted(set(header) - set(state))
        wrong = []
        for key, (dtype, shape) in header.items():
            if key not in state:
                continue
            want = state[key]
            if shape != tuple(want.shape):
                wrong.append(f"{key}: file {list(shape)} vs model {list(want.shape)}")
            elif _SAFETENSORS_DTYPES.get(dtype) != want.dtype:
                wrong.append(f"{key}: file dtype {dtype} vs model {want.dtype}")
        problems = []
        if wrong:
            problems.append(f"{len(wrong)} tensor(s) of the wrong shape/dtype ({_listing(wrong, 4)})")
        if strict and missing:
            problems.append(f"{len(missing)} missing key(s) ({_listing(missing)})")
        if strict and unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s) ({_listing(unexpected)})")
        if problems:
            raise WeightsMismatchError(
                f"{path} does not fit the {cls.__name__} built from {path.parent / CONFIG_NAME}: "
                + "; ".join(problems)
                + ". The weights were saved from another model or config: use the config.json that came with "
                f"them, load them with the right class, or {FIX_REEXPORT}."
            )
