"""Load a Hugging Face style model folder (``config.json`` + safetensors), offline and safely.

``function: {pretrained: models/tiny-gpt2, class: transformers:AutoModelForCausalLM}`` names a
folder written by ``save_pretrained`` and a class with a ``from_pretrained`` classmethod (a
transformers auto class or model class, a diffusers model, or the user's own subclass).

Loading never touches the network (``local_files_only=True``, and the Hub's offline mode for the
duration of the call), never runs code shipped with the folder (``trust_remote_code=False``), and
reads weights from safetensors files only (``use_safetensors=True``; a folder with only pickled
weights is refused). transformers is an optional extra (``pip install 'jvpcli[hf]'``), imported
only when a folder is loaded. Errors raise :class:`~jvpcli.errors.FunctionLoadError`.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from jvpcli.containment import describe, failures
from jvpcli.errors import FunctionLoadError, display_path, user_location

__all__ = ["DEFAULT_CLASS", "PretrainedModel", "load_pretrained"]

DEFAULT_CLASS = "transformers:AutoModel"
"""The class that loads a folder when the config names none."""

_ROLE = "function.pretrained"
_PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
_INSTALL_HINT = "pip install 'jvpcli[hf]'"
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

# from_pretrained's keyword arguments that would undo a guarantee, and why they are refused.
_REFUSED_INIT = {
    "trust_remote_code": "jvpcli never runs code shipped with a model folder",
    "code_revision": "jvpcli never runs code shipped with a model folder",
    "local_files_only": "jvpcli always loads offline, from the folder alone",
    "cache_dir": "jvpcli always loads offline, from the folder alone",
    "token": "jvpcli always loads offline, from the folder alone",
    "revision": "jvpcli always loads offline, from the folder alone",
    "force_download": "jvpcli always loads offline, from the folder alone",
    "proxies": "jvpcli always loads offline, from the folder alone",
    "use_safetensors": "jvpcli reads weights from safetensors files only",
    "weights_only": "jvpcli reads weights from safetensors files only",
    "gguf_file": "jvpcli reads weights from safetensors files only",
    "state_dict": "jvpcli reads weights from the folder's safetensors files only",
    "subfolder": "point function.pretrained at the subfolder itself",
}


@dataclass(frozen=True)
class PretrainedModel:
    """A model loaded from a pretrained folder, and what a run needs to know about it.

    Attributes:
        model: the model, in eval mode, every parameter frozen (``requires_grad`` false).
        name: how messages name it, e.g. ``"GPT2LMHeadModel from models/tiny-gpt2"``.
        files: the files it was loaded from, by role, whose digests a result records:
            ``"function.pretrained/config.json"``, each safetensors file and shard index
            (``"function.pretrained/model.safetensors"``, ...), and ``"function.class"`` for a
            class defined in a ``.py`` file.
        source_files: the user's Python files the class comes from (empty for an installed one),
            to point at in error messages.
        warnings: what loading noticed but did not refuse, one sentence each: weights of the
            model the folder lacks (left as initialised), weights in the folder the model does not
            use, weights whose shape differs.
    """

    model: nn.Module
    name: str
    files: dict[str, Path]
    source_files: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = field(default=())


def load_pretrained(
    folder: Path,
    class_ref: str | None = None,
    init: Mapping[str, Any] | None = None,
    *,
    search_dir: Path | None = None,
) -> PretrainedModel:
    """Load a model folder written by ``save_pretrained``.

    Args:
        folder: the folder, holding ``config.json`` and ``*.safetensors`` weights (one file, or
            shards with their ``*.safetensors.index.json``).
        class_ref: the class whose ``from_pretrained`` loads it, as ``package.module:Name`` (e.g.
            ``transformers:AutoModelForCausalLM``) or ``FILE.py:Name``. ``None``:
            :data:`DEFAULT_CLASS`.
        init: keyword arguments for ``from_pretrained``, e.g. ``{"attn_implementation": "sdpa"}``
            or ``{"dtype": "float64"}``; none may relax the guarantees above.
        search_dir: the folder a relative ``FILE.py`` resolves against, and that is first on
            ``sys.path`` while the class's module is imported (the config's folder). ``None``:
            the working directory.

    Returns:
        The model in eval mode with frozen parameters, its files and what loading noticed.

    Raises:
        FunctionLoadError: transformers is not installed; the folder is missing, is not a folder,
            lacks a readable ``config.json`` or safetensors weights, holds only pickled weights, or
            needs remote code; ``init`` sets a refused argument; the class cannot be imported, is
            not a class with ``from_pretrained``, is for another model type, or fails to load the
            folder.
    """
    transformers = _import_transformers()
    base = Path.cwd() if search_dir is None else search_dir
    init = dict(init or {})
    config = _read_config(folder)
    files = {f"{_ROLE}/config.json": folder / "config.json"}
    files.update(_weight_files(folder))
    _refuse_init(init)
    _refuse_remote_code(folder, config, transformers)
    cls, source_files = _resolve_class(class_ref or DEFAULT_CLASS, base)
    if source_files:
        files["function.class"] = source_files[0]
    _refuse_other_model_type(cls, folder, config, transformers)
    model, loading_info = _call_from_pretrained(cls, folder, init, source_files, transformers)
    if not isinstance(model, nn.Module):
        raise FunctionLoadError(
            f"{cls.__name__}.from_pretrained({display_path(folder)}) returned "
            f"{type(model).__name__}, not a torch.nn.Module."
        )
    model.eval().requires_grad_(False)
    return PretrainedModel(
        model=model,
        name=f"{type(model).__name__} from {display_path(folder)}",
        files=files,
        source_files=source_files,
        warnings=_loading_warnings(loading_info, type(model).__name__),
    )


def _import_transformers() -> ModuleType:
    try:
        return importlib.import_module("transformers")
    except ImportError as error:
        raise FunctionLoadError(
            "function.pretrained needs the transformers library, which is not installed (or "
            f"fails to import: {error}). Install jvpcli's Hugging Face extra: {_INSTALL_HINT}."
        ) from error


def _read_config(folder: Path) -> dict[str, Any]:
    shown = display_path(folder)
    if not folder.exists():
        raise FunctionLoadError(f"the pretrained model folder {shown} does not exist.")
    if not folder.is_dir():
        raise FunctionLoadError(
            f"function.pretrained must be a folder written by save_pretrained (holding "
            f"config.json and *.safetensors), but {shown} is a file."
        )
    path = folder / "config.json"
    if not path.is_file():
        raise FunctionLoadError(
            f"{shown} has no config.json, so it is not a folder written by save_pretrained. "
            "Point function.pretrained at the folder that holds config.json and the weights."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FunctionLoadError(
            f"cannot read {display_path(path)} as JSON: {error}. Write it again with "
            "model.save_pretrained(folder)."
        ) from error
    if not isinstance(config, dict):
        raise FunctionLoadError(
            f"{display_path(path)} holds a JSON {type(config).__name__}, not an object of model "
            "settings. Write it again with model.save_pretrained(folder)."
        )
    return config


def _weight_files(folder: Path) -> dict[str, Path]:
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.safetensors.index.json"))
    if weights:
        return {f"{_ROLE}/{path.name}": path for path in weights}
    shown = display_path(folder)
    pickled = sorted({p.name for pattern in _PICKLED_WEIGHTS for p in folder.glob(pattern)})
    if pickled:
        raise FunctionLoadError(
            f"{shown} holds weights only as pickle files ({', '.join(pickled)}), and jvpcli never "
            "unpickles: loading a pickle can run arbitrary code. Convert them once, yourself, in "
            "Python you trust: load the model (e.g. model = AutoModel.from_pretrained(folder)), "
            "then write model.save_pretrained(folder, safe_serialization=True), which adds "
            "model.safetensors."
        )
    raise FunctionLoadError(
        f"{shown} has a config.json but no weights: no *.safetensors file. Write the model with "
        "model.save_pretrained(folder)."
    )


def _refuse_init(init: Mapping[str, Any]) -> None:
    for key, reason in _REFUSED_INIT.items():
        if key in init:
            raise FunctionLoadError(
                f"function.init cannot set {key!r}: {reason}. Remove it from function.init."
            )


def _refuse_remote_code(folder: Path, config: Mapping[str, Any], transformers: ModuleType) -> None:
    model_type = config.get("model_type")
    if "auto_map" in config and model_type not in transformers.CONFIG_MAPPING:
        raise FunctionLoadError(_remote_code_message(folder, model_type))


def _remote_code_message(folder: Path, model_type: Any) -> str:
    kind = f"model type {model_type!r}" if model_type else "its model"
    return (
        f"{display_path(folder)}/config.json asks for code shipped with the folder (auto_map) to "
        f"build {kind}, which this transformers version does not know; jvpcli never runs remote "
        "code. Define the model class in a Python file you trust and name it in function.class "
        "(FILE.py:NAME), or upgrade transformers if it has since added this model type."
    )


def _resolve_class(class_ref: str, base: Path) -> tuple[type, tuple[Path, ...]]:
    from jvpcli.config import Reference
    from jvpcli.loading import _import

    module_name, colon, name = class_ref.rpartition(":")
    if not colon or not module_name or not name:
        raise FunctionLoadError(
            f"function.class must look like package.module:Name or FILE.py:Name (e.g. "
            f"transformers:AutoModelForCausalLM); got {class_ref!r}."
        )
    if module_name.endswith(".py"):
        module_name = str((base / module_name).resolve())
    module = _import(Reference(module_name, name, base))
    source_files = (Path(module_name),) if module_name.endswith(".py") else ()
    shown = display_path(Path(module_name)) if source_files else module_name
    value: Any = module
    for part in name.split("."):
        if not hasattr(value, part):
            candidates = [n for n in dir(value) if not n.startswith("_")]
            close = difflib.get_close_matches(part, candidates, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise FunctionLoadError(f"{shown} has no {part!r}.{hint}")
        value = getattr(value, part)
    if not inspect.isclass(value) or not callable(getattr(value, "from_pretrained", None)):
        kind = "a class" if inspect.isclass(value) else type(value).__name__
        raise FunctionLoadError(
            f"function.class {class_ref} is {kind} without a from_pretrained classmethod, so it "
            "cannot load a pretrained folder. Name a class such as "
            "transformers:AutoModelForCausalLM, a transformers model class, or a subclass of one."
        )
    _require_keyword_arguments(value, class_ref)
    return value, source_files


def _require_keyword_arguments(cls: type, class_ref: str) -> None:
    try:
        parameters = inspect.signature(cls.from_pretrained).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    names = {p.name for p in parameters}
    missing = [
        n for n in ("local_files_only", "use_safetensors", "trust_remote_code") if n not in names
    ]
    if missing:
        raise FunctionLoadError(
            f"{class_ref}.from_pretrained takes no {', '.join(missing)}, so jvpcli cannot make it "
            "load offline, from safetensors, without remote code. Name a class whose "
            "from_pretrained accepts them (as transformers' and diffusers' do)."
        )


def _refuse_other_model_type(
    cls: type, folder: Path, config: Mapping[str, Any], transformers: ModuleType
) -> None:
    # A transformers model class reads any config.json as its own type and merely logs the
    # mismatch, leaving every weight it does not recognise at random initial values.
    if not issubclass(cls, transformers.PreTrainedModel):
        return
    expected = getattr(getattr(cls, "config_class", None), "model_type", "")
    found = config.get("model_type")
    if expected and found and found != expected:
        raise FunctionLoadError(
            f"{cls.__name__} is a model of type {expected!r}, but {display_path(folder)} holds a "
            f"model of type {found!r}. Name a class for {found!r} models in function.class, or "
            "leave it out to load with transformers:AutoModel."
        )


def _call_from_pretrained(
    cls: type,
    folder: Path,
    init: Mapping[str, Any],
    source_files: tuple[Path, ...],
    transformers: ModuleType,
) -> tuple[Any, Mapping[str, Any] | None]:
    arguments = {
        **init,
        "local_files_only": True,
        "use_safetensors": True,
        "trust_remote_code": False,
    }
    wants_info = _reports_loading_info(cls, transformers)
    if wants_info:
        arguments["output_loading_info"] = True
    try:
        with _offline(), _quiet(transformers):
            loaded = cls.from_pretrained(str(folder), **arguments)
    except BaseException as error:
        if not failures(error):
            raise
        text = str(error)
        if "trust_remote_code" in text or "custom code" in text:
            raise FunctionLoadError(
                _remote_code_message(folder, None), location=user_location(error, source_files)
            ) from error
        first_line = text.strip().splitlines()[0] if text.strip() else ""
        init_text = "".join(f", {k}={v!r}" for k, v in init.items())
        raise FunctionLoadError(
            f"{cls.__name__}.from_pretrained({display_path(folder)}{init_text}) failed: "
            + (
                describe(error)
                if isinstance(error, SystemExit) or not first_line
                else f"{type(error).__name__}: {first_line}"
            ),
            location=user_location(error, source_files),
        ) from error
    if wants_info and isinstance(loaded, tuple) and len(loaded) == 2:
        model, info = loaded
        return model, info if isinstance(info, Mapping) else None
    return loaded, None


def _reports_loading_info(cls: type, transformers: ModuleType) -> bool:
    # transformers' and diffusers' classes return (model, info) for output_loading_info=True; an
    # unknown class might pass the flag on to its constructor, so it is not asked.
    auto_class = transformers.models.auto.auto_factory._BaseAutoModelClass
    if issubclass(cls, (transformers.PreTrainedModel, auto_class)):
        return True
    if any(klass.__module__.split(".")[0] == "diffusers" for klass in cls.__mro__):
        return True
    try:
        return "output_loading_info" in inspect.signature(cls.from_pretrained).parameters
    except (TypeError, ValueError):
        return False


def _loading_warnings(info: Mapping[str, Any] | None, model_name: str) -> tuple[str, ...]:
    if not info:
        return ()
    notes = []
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        notes.append(
            f"{len(missing)} weight(s) of {model_name} are not in the folder and keep their "
            f"initial (random) values: {_some(missing)}."
        )
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        notes.append(
            f"{len(unexpected)} weight(s) in the folder are not used by {model_name}: "
            f"{_some(unexpected)}."
        )
    mismatched = [
        str(key[0] if isinstance(key, tuple) else key) for key in info.get("mismatched_keys") or ()
    ]
    if mismatched:
        notes.append(
            f"{len(mismatched)} weight(s) in the folder have another shape than in "
            f"{model_name} and were not loaded: {_some(sorted(mismatched))}."
        )
    notes.extend(str(message) for message in info.get("error_msgs") or ())
    return tuple(notes)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    # The Hub reads HF_HUB_OFFLINE once, when it is first imported: import it first so it sees the
    # user's environment, then switch it to offline for this call only.
    try:
        constants: ModuleType | None = importlib.import_module("huggingface_hub.constants")
    except ImportError:
        constants = None
    saved_environment = {name: os.environ.get(name) for name in _OFFLINE_VARIABLES}
    saved_constant = getattr(constants, "HF_HUB_OFFLINE", None)
    os.environ.update(dict.fromkeys(_OFFLINE_VARIABLES, "1"))
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_constant


@contextlib.contextmanager
def _quiet(transformers: ModuleType) -> Iterator[None]:
    # transformers logs load reports and shows progress bars on stderr; the load report comes back
    # as PretrainedModel.warnings instead.
    logging = transformers.utils.logging
    verbosity = logging.get_verbosity()
    progress = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    if progress:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if progress:
            logging.enable_progress_bar()


def _some(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
