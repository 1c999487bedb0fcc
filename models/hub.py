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

The mixin is huggingface_hub's :class:`~huggingface_hub.PyTorchModelHubMixin` used at its extension points
(``_save_pretrained``, ``_from_pretrained``, ``generate_model_card``); file handling is
``safetensors.torch.save_model`` / ``load_model`` (shared tensors stored once) and huggingface_hub's
downloads. What privzoo adds, and nothing else:

* **hparams as config**: ``config.json`` is the model's Lightning ``hparams`` (its init arguments,
  LightningCLI bookkeeping keys dropped), checked to be JSON that rebuilds the model.
* **strict loading by default**, every key / shape / dtype checked against the model rebuilt from
  ``config.json`` before any tensor is copied; eval mode on ``map_location`` (default CPU).
* **pickle refusal**: ``pytorch_model.bin`` and other pickle weights are never loaded.
* **the checksum**: the safetensors header carries a sha256 of the model's tensors; a mismatch is an error,
  and so is a file without it unless ``allow_unchecked=True`` (third-party files).
* **typed errors** (:class:`HubLoadError` subclasses) that name the file and the fix.
* **the card** (:mod:`models.cards`), always fresh: new weights mean the old card's metrics no longer apply.

The Hub organisation, library name, license and file names are defined here, once.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
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
from safetensors.torch import load_model, save_model

from models import cards
from models.io import atomic_write_text

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "HUB_ORG",
    "LIBRARY_NAME",
    "LICENSE",
    "PICKLE_SUFFIXES",
    "REPO_URL",
    "WEIGHTS_NAME",
    "ConfigError",
    "CorruptFileError",
    "HubLoadError",
    "MissingFileError",
    "PickleWeightsError",
    "PrivzooHubMixin",
    "UncheckedWeightsError",
    "WeightsMismatchError",
    "check_folder",
    "hub_repo_id",
    "tensor_digest",
]

HUB_ORG = "privzoo"
LIBRARY_NAME = "privzoo"
LICENSE = "apache-2.0"
REPO_URL = "https://github.com/privzoo/privzoo"
CONFIG_NAME = constants.CONFIG_NAME  # "config.json"
WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE  # "model.safetensors"
CARD_NAME = constants.REPOCARD_NAME  # "README.md"
#: weight files in pickle formats: refused (unpickling runs arbitrary code)
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


def hub_repo_id(name: str) -> str:
    """The Hub repo of a zoo checkpoint name: ``privzoo/<name>``."""
    return f"{HUB_ORG}/{name}"


class HubLoadError(Exception):
    """Base of the errors raised while loading a checkpoint folder / Hub repo (nothing is returned)."""


class MissingFileError(HubLoadError, FileNotFoundError):
    """A folder / repo lacks ``config.json`` or ``model.safetensors``."""


class CorruptFileError(HubLoadError, ValueError):
    """A file exists but cannot be read: invalid JSON, truncated safetensors, checksum mismatch."""


class UncheckedWeightsError(CorruptFileError):
    """``model.safetensors`` carries no privzoo checksum (a third-party or stripped file)."""


class PickleWeightsError(HubLoadError, ValueError):
    """Only pickle weights (``pytorch_model.bin`` ...) are present: refused."""


class ConfigError(HubLoadError, ValueError):
    """``config.json`` does not match the class's ``__init__`` (unknown / missing arguments)."""


class WeightsMismatchError(HubLoadError, ValueError):
    """The weights do not fit the model rebuilt from the config (missing / unexpected keys, shapes)."""


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of the tensors (on the CPU), in sorted name order."""
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


def _shared_names(state: Mapping[str, torch.Tensor]) -> dict[str, set[str]]:
    """Each state-dict name -> the names of the same tensor (tied weights), itself included."""
    by_storage: dict[tuple, set[str]] = {}
    for name, t in state.items():
        if t.device.type != "meta" and t.numel():
            by_storage.setdefault((t.device, t.untyped_storage().data_ptr()), set()).add(name)
    return {name: group for group in by_storage.values() for name in group}


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


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
        pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))
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
        config = json.loads(path.read_text(encoding="utf-8"))
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


class PrivzooHubMixin(
    PyTorchModelHubMixin,
    library_name=LIBRARY_NAME,
    license=LICENSE,
    tags=["privzoo", "privacy"],
    repo_url=REPO_URL,
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
    # config: the hparams
    # ------------------------------------------------------------------------------------------------
    @classmethod
    def _init_parameters(cls) -> tuple[dict[str, inspect.Parameter], bool]:
        params = cls._hub_mixin_init_parameters  # huggingface_hub's signature of __init__, with self
        has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        named = {
            k: p
            for k, p in list(params.items())[1:]
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
        """Init arguments from ``config`` + ``overrides``, checked against ``__init__`` (``ConfigError``)."""
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
    # saving: huggingface_hub's save_pretrained, our _save_pretrained and card
    # ------------------------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        config: dict | None = None,
        model_card_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str | None:
        """huggingface_hub's ``save_pretrained``, after checking the config and card context.

        Nothing is written (and nothing already in ``save_directory`` is touched) when the hparams cannot
        rebuild the model or the card context has unknown keys.

        Args:
            save_directory: the folder (created if needed); ``config.json``, ``model.safetensors`` and
                ``README.md`` in it are replaced.
            config: must equal :meth:`hub_config` if given (config.json is written from the hparams).
            model_card_kwargs: training context for the card, keys in :data:`models.cards.CARD_CONTEXT_KEYS`.
            kwargs: ``repo_id``, ``push_to_hub`` and push options, as in huggingface_hub.

        Returns:
            The commit URL when ``push_to_hub``, else ``None``.
        """
        own = self.hub_config()
        if config is not None and json.loads(json.dumps(config)) != own:
            raise ValueError(
                "config differs from the model's hparams; privzoo writes config.json from hparams only "
                "(omit config=)"
            )
        context = cards.check_context(model_card_kwargs)
        return super().save_pretrained(save_directory, model_card_kwargs=context, **kwargs)

    def _save_weights(self, path: Path) -> None:
        """``model.safetensors`` (shared tensors once, CPU, contiguous, checksum of the state dict)."""
        tmp = path.with_name(path.name + ".tmp")
        # ONE metadata entry: safetensors writes its metadata map in an unspecified order, so with two
        # entries saving the same weights twice could give different bytes (and noisy git diffs)
        save_model(self, str(tmp), metadata={DIGEST_KEY: tensor_digest(self.state_dict())})
        os.replace(tmp, path)  # same folder: atomic, a reader never sees a half-written file

    def _save_pretrained(self, save_directory: Path) -> None:
        """huggingface_hub's extension point: weights, ``config.json`` from the hparams; drops a stale card.

        The card is then written fresh by ``save_pretrained`` through :meth:`generate_model_card`.
        """
        self._save_weights(save_directory / WEIGHTS_NAME)
        atomic_write_text(
            save_directory / CONFIG_NAME, json.dumps(self.hub_config(), sort_keys=True, indent=2) + "\n"
        )
        (save_directory / CARD_NAME).unlink(missing_ok=True)  # old metrics describe old weights
        self._card_weights = save_directory / WEIGHTS_NAME

    def generate_model_card(self, *args: Any, **kwargs: Any):
        """The privzoo card of the current weights (no metrics yet); ``kwargs``: card context keys."""
        context = cards.check_context(kwargs)
        if context.get("name") and not context.get("repo_id"):
            context["repo_id"] = hub_repo_id(context["name"])
        weights = self.__dict__.pop("_card_weights", None)  # just written by _save_pretrained
        if weights is not None:
            sha = cards.file_sha256(weights)
        else:  # a card for weights not saved yet: the bytes they would have (saving is deterministic)
            with tempfile.TemporaryDirectory() as tmp:
                self._save_weights(Path(tmp) / WEIGHTS_NAME)
                sha = cards.file_sha256(Path(tmp) / WEIGHTS_NAME)
        return cards.render_card(type(self), self.hub_config(), sha, context)

    # ------------------------------------------------------------------------------------------------
    # loading: resolve + check the folder, then huggingface_hub's from_pretrained -> our _from_pretrained
    # ------------------------------------------------------------------------------------------------
    @classmethod
    def _download(cls, repo_id: str, **hub_kwargs: Any) -> Path:
        """Downloads ``config.json`` + ``model.safetensors`` (+ card) of one revision; returns the folder."""
        from huggingface_hub import file_exists, snapshot_download

        try:
            folder = Path(
                snapshot_download(
                    repo_id, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME], **hub_kwargs
                )
            )
        except RepositoryNotFoundError as err:
            raise MissingFileError(
                f"Hub repo {repo_id!r} does not exist (or needs a token): check the name "
                "(models.zoo.available() lists the zoo) or log in with `hf auth login`"
            ) from err
        except RevisionNotFoundError as err:
            raise MissingFileError(
                f"Hub repo {repo_id!r} has no revision {hub_kwargs.get('revision')!r}"
            ) from err
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
        if not (folder / WEIGHTS_NAME).is_file():
            try:
                pickled = file_exists(
                    repo_id,
                    constants.PYTORCH_WEIGHTS_NAME,
                    revision=hub_kwargs.get("revision"),
                    token=hub_kwargs.get("token"),
                )
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
    def read_state(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> dict[str, torch.Tensor]:
        """The tensors of an earlier run of this class, to start a new stage from (``init_from``).

        ``path`` is a Hub-layout folder (a zoo checkpoint; checked like every folder, checksum included) or
        a Lightning checkpoint, read with ``weights_only=True``: a checkpoint is data, never code to unpickle.

        Raises:
            HubLoadError: a bad folder; ``ValueError``: an unreadable checkpoint file.
        """
        if os.path.isdir(path):
            return {k: v.to(map_location) for k, v in cls.from_pretrained(path).state_dict().items()}
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except (OSError, RuntimeError, EOFError) as err:
            raise ValueError(
                f"init_from={path} is not a readable Lightning checkpoint ({err}): point it at the earlier "
                "run's last.ckpt or its Hub folder"
            ) from err
        return state.get("state_dict", state)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        allow_unchecked: bool = False,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        **model_kwargs: Any,
    ):
        """Rebuilds the model from a checkpoint folder or a Hub repo id and loads its weights strictly.

        The source is resolved to a local folder first (a Hub repo is downloaded), its files and config are
        checked, then huggingface_hub's ``from_pretrained`` builds the model through :meth:`_from_pretrained`.
        On any problem an error is raised and no model comes back.

        Args:
            pretrained_model_name_or_path: a local folder, or a Hub repo id such as ``"privzoo/<name>"``.
            map_location: device the returned model is moved to (default ``"cpu"``).
            strict: ``False`` tolerates missing / unexpected keys (shapes and dtypes are still checked).
            allow_unchecked: load a ``model.safetensors`` that carries no privzoo checksum (third-party
                files); its content cannot be verified.
            force_download, token, cache_dir, local_files_only, revision: Hub download options.
            model_kwargs: init arguments overriding config.json.

        Returns:
            The model, in eval mode on ``map_location``.

        Raises:
            MissingFileError, PickleWeightsError, CorruptFileError (UncheckedWeightsError), ConfigError,
            WeightsMismatchError.
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
        config_path, _ = check_folder(folder)
        cls._config_to_kwargs(_read_config(config_path), model_kwargs, str(config_path))
        model = super().from_pretrained(
            folder,
            map_location=map_location,
            strict=strict,
            allow_unchecked=allow_unchecked,
            **model_kwargs,
        )
        # as after load_from_checkpoint, loaded weights count as initialised: fine-tuning the returned model
        # does not re-apply the init_from stage that its config.json names (DPFE, SCA)
        if hasattr(model, "_initialised"):
            model._initialised = True
        return model

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        allow_unchecked: bool = False,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        **model_kwargs: Any,
    ):
        """huggingface_hub's extension point: build, check, load ``model.safetensors`` of a local folder."""
        weights_path = Path(model_id) / WEIGHTS_NAME
        header, metadata = _safetensors_header(weights_path)
        stored = metadata.get(DIGEST_KEY)
        if stored is None and not allow_unchecked:
            raise UncheckedWeightsError(
                f"{weights_path} carries no privzoo checksum ({DIGEST_KEY!r} in its header), so its content "
                "cannot be verified: it was not written by privzoo, or the checksum was stripped. Pass "
                f"allow_unchecked=True to load a third-party file you trust, or {FIX_REEXPORT}."
            )
        with torch.device("cpu"):
            model = cls(**model_kwargs)
        # data-sized ("lazy") buffers, e.g. a hashing model's database codes, take the file's shapes;
        # every other tensor is checked against the model built from config.json
        for name in getattr(model, "_lazy_buffers", ()):
            if name in header and header[name][0] in _SAFETENSORS_DTYPES:
                model._resize_lazy(name, header[name][1], _SAFETENSORS_DTYPES[header[name][0]])
        cls._check_weights(model, header, weights_path, strict)
        load_model(model, weights_path, strict=strict)
        if stored is not None and tensor_digest(model.state_dict()) != stored:
            raise CorruptFileError(
                f"the tensor data in {weights_path} does not match the checksum in its header: the file was "
                f"modified or damaged after it was saved. Download it again or {FIX_REEXPORT}."
            )
        model.eval()
        return model.to(map_location)

    @classmethod
    def _check_weights(
        cls, model: Any, header: dict[str, tuple[str, tuple[int, ...]]], path: Path, strict: bool
    ) -> None:
        """Every name / shape / dtype of the file against the model, before any tensor is copied."""
        state = model.state_dict()
        shared = _shared_names(state)
        missing = sorted(k for k in state if not any(n in header for n in shared.get(k, {k})))
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
