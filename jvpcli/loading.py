"""Turn a config's ``function`` into a callable: a function, a model, an exported program.

Loading a function module executes its Python code: a config is as trusted as a Makefile. Weights
are read from safetensors files only. Errors raise :class:`~jvpcli.errors.FunctionLoadError`,
naming the file and line where the user's code failed.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import logging
import re
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from jvpcli.config import (
    ExportedFunction,
    FunctionSpec,
    ModelFunction,
    PlainFunction,
    PretrainedFunction,
    Reference,
)
from jvpcli.containment import describe, failures
from jvpcli.errors import (
    FunctionLoadError,
    display_path,
    format_shape,
    is_library_file,
    user_location,
)
from jvpcli.tensors import read_header, read_tensors

__all__ = ["LoadedFunction", "first_on_path", "load_function", "user_sources"]


@dataclass(frozen=True)
class LoadedFunction:
    """A callable ready for the engine, and what the rest of a run needs to know about it.

    Attributes:
        func: the callable; an ``nn.Module`` is in eval mode with its parameters frozen.
        name: how messages name it, e.g. ``"exp_reducer"``.
        parameters: the names of its positional parameters, or ``None`` when they cannot be known.
        required: how many of them have no default.
        source_files: the user's Python files it comes from, to point at in error messages.
        files: the files it was loaded from, by role (``"function"``, ``"function.weights"``,
            ``"function.exported"``, ``"function.pretrained/config.json"``, ...), whose digests
            a result records.
        keywords: the names of its keyword-only parameters.
        var_keyword: whether it takes ``**kwargs``.
        notes: what loading noticed that a user should know (weights a pretrained folder lacks).
        search_path: the folders first on ``sys.path`` while the user's code runs (its module's
            folder), so that it imports its siblings when called as when imported.
    """

    func: Callable[..., Any]
    name: str
    parameters: tuple[str, ...] | None
    required: int
    source_files: tuple[Path, ...]
    files: Mapping[str, Path]
    keywords: tuple[str, ...] = ()
    var_keyword: bool = False
    notes: tuple[str, ...] = ()
    search_path: tuple[Path, ...] = ()


def load_function(
    spec: FunctionSpec, modules: dict[str, ModuleType] | None = None
) -> LoadedFunction:
    """Load the function a config describes.

    Args:
        spec: a plain function, a model to build (and load weights into), or an exported archive.
        modules: the user's modules imported so far, by file path or dotted name: one found here
            is not imported again, and one imported is added. ``None``: import afresh.

    Returns:
        The callable, with its parameter names and the files it came from.

    Raises:
        FunctionLoadError: the module is missing or fails to import; the name is not in it or is
            not callable; building the model fails; the weights do not fit the model; the archive
            is not a loadable ``torch.export`` program.
        TensorFileError: the weights file is missing or corrupt.
    """
    if isinstance(spec, ExportedFunction):
        return _load_exported(spec.archive)
    if isinstance(spec, PretrainedFunction):
        return _load_pretrained(spec)
    before = set(sys.modules)
    module = None if modules is None else modules.get(spec.ref.module)
    if module is None:
        module = _import(spec.ref)
        if modules is not None:
            modules[spec.ref.module] = module
    source_files = (Path(module.__file__),) if getattr(module, "__file__", None) else ()
    files = {"function": Path(spec.ref.module)} if spec.ref.is_file else {}
    target = _lookup(module, spec.ref)
    if isinstance(spec, PlainFunction):
        if inspect.isclass(target):
            raise FunctionLoadError(
                f"{spec.ref} is a class. To build a model from it, write\n"
                f"  function: {{target: {spec.ref}, init: {{...}}, weights: FILE.safetensors}}"
            )
        func = target
    else:
        with first_on_path(_folder(spec.ref)):
            func = _build(target, spec, source_files)
        if spec.weights is not None:
            _load_weights(func, spec, spec.weights)
            files["function.weights"] = spec.weights
    if isinstance(func, nn.Module):
        func.eval().requires_grad_(False)
    new_modules = [sys.modules[name] for name in set(sys.modules) - before if name in sys.modules]
    for path in user_sources([module, *new_modules]):
        if path not in files.values():
            files[f"function.imports:{path}"] = path
    loaded = _loaded(func, spec.ref.name, source_files, files)
    return replace(loaded, search_path=(_folder(spec.ref),))


def _folder(ref: Reference) -> Path:
    return Path(ref.module).parent if ref.is_file else ref.search_dir


def user_sources(modules: Iterable[ModuleType]) -> tuple[Path, ...]:
    """The user's source files behind ``modules``: theirs, and those of every user module they
    reach through their globals (an imported module, or the module an imported name comes
    from), transitively; Python's, installed packages' and jvpcli's own files are left out.

    What a result depends on, for ``--resume``: editing a helper module the function imports
    makes its result stale.
    """
    found: dict[str, Path] = {}
    stack = list(modules)
    visited: set[int] = set()
    while stack:
        module = stack.pop()
        if id(module) in visited:
            continue
        visited.add(id(module))
        filename = getattr(module, "__file__", None)
        if not isinstance(filename, str) or is_library_file(filename):
            continue
        path = Path(filename).resolve()
        if path.suffix != ".py" or not path.is_file():
            continue
        found.setdefault(str(path), path)
        stack.extend(_imported_by(module, path))
        for value in list(vars(module).values()):
            if isinstance(value, ModuleType):
                stack.append(value)
                continue
            try:
                owner = sys.modules.get(getattr(value, "__module__", None) or "")
            except Exception:  # an object whose attributes cannot be read: nothing to follow
                continue
            if owner is not None:
                stack.append(owner)
    return tuple(found[key] for key in sorted(found))


def _loaded(
    func: Callable[..., Any],
    name: str,
    source_files: tuple[Path, ...],
    files: Mapping[str, Path],
    notes: tuple[str, ...] = (),
) -> LoadedFunction:
    parameters, required, keywords, var_keyword = _signature(func)
    return LoadedFunction(
        func, name, parameters, required, source_files, files, keywords, var_keyword, notes
    )


def _load_pretrained(spec: PretrainedFunction) -> LoadedFunction:
    from jvpcli.pretrained import load_pretrained

    loaded = load_pretrained(
        spec.folder,
        None if spec.cls is None else f"{spec.cls.module}:{spec.cls.name}",
        spec.init,
        search_dir=None if spec.cls is None else spec.cls.search_dir,
    )
    return _loaded(
        loaded.model, loaded.name, loaded.source_files, loaded.files, tuple(loaded.warnings)
    )


def _imported_by(module: ModuleType, path: Path) -> list[ModuleType]:
    """The modules ``module``'s source imports (``import a.b``, ``from a import b``, relative
    ones too), as far as they are loaded: what its globals cannot show (a constant imported by
    name has no module to point back to)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return []
    package = getattr(module, "__package__", None) or ""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}".strip(".") if base else anchor
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    found = []
    for name in names:
        for end in range(1, name.count(".") + 2):
            imported = sys.modules.get(".".join(name.split(".")[:end]))
            if imported is not None:
                found.append(imported)
    return found


def _import(ref: Reference) -> ModuleType:
    if not ref.is_file:
        return _import_dotted(ref)
    path = Path(ref.module)
    if path.is_dir():
        raise FunctionLoadError(f"function file {display_path(path)} is a folder, not a .py file.")
    if not path.is_file():
        raise FunctionLoadError(f"function file {display_path(path)} does not exist.")
    stem = re.sub(r"\W", "_", path.stem)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    name = f"_jvpcli_user_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FunctionLoadError(f"cannot import {display_path(path)} as a Python module.")
    module = importlib.util.module_from_spec(spec)
    _evict_shadowed(path.parent)
    sys.modules[name] = module  # dataclasses, pickling and torch.export look modules up there
    try:
        with first_on_path(path.parent):
            spec.loader.exec_module(module)
    except BaseException as error:
        del sys.modules[name]
        if not failures(error):
            raise
        raise _import_failure(display_path(path), error, [path]) from error
    return module


def _evict_shadowed(folder: Path) -> None:
    """Forget the user modules a file in ``folder`` would import by a name that another
    folder's module holds (two function files, each with its own ``helper.py``): the new file's
    ``import helper`` then imports its own sibling, not the first one loaded."""
    for name, module in list(sys.modules.items()):
        top = name.split(".")[0]
        filename = getattr(module, "__file__", None)
        if not isinstance(filename, str) or is_library_file(filename):
            continue
        sibling = folder / f"{top}.py"
        package = folder / top / "__init__.py"
        if (sibling.is_file() or package.is_file()) and not Path(filename).resolve().is_relative_to(
            folder.resolve()
        ):
            del sys.modules[name]


def _import_dotted(ref: Reference) -> ModuleType:
    try:
        with first_on_path(ref.search_dir):
            return importlib.import_module(ref.module)
    except ModuleNotFoundError as error:
        if error.name is not None and (ref.module + ".").startswith(error.name + "."):
            raise FunctionLoadError(
                f"no module named {error.name!r}: {ref.module!r} is neither installed nor a "
                f"module below {display_path(ref.search_dir)}. For a file, write FILE.py:NAME."
            ) from error
        raise _import_failure(ref.module, error, []) from error
    except BaseException as error:
        if not failures(error):
            raise
        raise _import_failure(ref.module, error, []) from error


def _import_failure(module: str, error: BaseException, files: list[Path]) -> FunctionLoadError:
    return FunctionLoadError(
        f"importing {module} failed: {describe(error)}",
        location=user_location(error, files),
    )


@contextlib.contextmanager
def first_on_path(folder: Path) -> Iterator[None]:
    """Run the block with ``folder`` first on ``sys.path`` (restored after): the user's code
    imports its siblings as a script would."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def _lookup(module: ModuleType, ref: Reference) -> Any:
    value: Any = module
    for depth, part in enumerate(ref.name.split(".")):
        if not hasattr(value, part):
            owner = ref.module if depth == 0 else ".".join(ref.name.split(".")[:depth])
            shown = display_path(Path(owner)) if depth == 0 and ref.is_file else owner
            candidates = [n for n in dir(value) if not n.startswith("_")]
            close = difflib.get_close_matches(part, candidates, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            defined = [n for n in candidates if callable(getattr(value, n, None))]
            listing = f" It defines: {', '.join(defined[:12])}." if defined and depth == 0 else ""
            raise FunctionLoadError(f"{shown} has no {part!r}.{hint}{listing}")
        value = getattr(value, part)
    if not callable(value):
        raise FunctionLoadError(
            f"{ref} is {type(value).__name__}, not a function, model or model class."
        )
    return value


def _build(
    target: Callable[..., Any], spec: ModelFunction, source_files: tuple[Path, ...]
) -> Callable[..., Any]:
    arguments = ", ".join(f"{k}={v!r}" for k, v in spec.init.items())
    try:
        model = target(**spec.init)
    except BaseException as error:
        if not failures(error):
            raise
        raise FunctionLoadError(
            f"building the model {spec.ref.name}({arguments}) failed: {describe(error)}",
            location=user_location(error, source_files),
        ) from error
    if not callable(model):
        raise FunctionLoadError(
            f"{spec.ref.name}({arguments}) returned {type(model).__name__}, which is not callable."
        )
    return model


def _load_weights(model: Callable[..., Any], spec: ModelFunction, weights: Path) -> None:
    if not isinstance(model, nn.Module):
        raise FunctionLoadError(
            f"function.weights needs an nn.Module, but {spec.ref.name} built a "
            f"{type(model).__name__}."
        )
    header = read_header(weights, "function.weights")
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    prefix = spec.weights_prefix or ""
    found = {
        name.removeprefix(prefix): info.shape
        for name, info in header.tensors.items()
        if name.startswith(prefix)
    }
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    wrong = [
        f"{name!r} is {format_shape(found[name])} in the file, {format_shape(shape)} in the model"
        for name, shape in expected.items()
        if name in found and found[name] != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    if wrong:
        problems.append("shape mismatch: " + _some(wrong, quote=False))
    if problems:
        arguments = ", ".join(f"{k}={v!r}" for k, v in spec.init.items())
        common = _common_prefix(list(header.tensors), list(expected))
        hint = (
            f" Its names carry the prefix {common!r} (saved from a wrapper, e.g. DataParallel's "
            f"'module.'): set function.weights_prefix: {common!r} to strip it."
            if common and not prefix
            else " Check function.init against the model that saved them."
        )
        raise FunctionLoadError(
            f"the weights in {display_path(weights)} do not fit {spec.ref.name}({arguments}): "
            + "; ".join(problems)
            + "."
            + hint
        )
    tensors = read_tensors(header)
    state = {name.removeprefix(prefix): t for name, t in tensors.items() if name.startswith(prefix)}
    model.load_state_dict(state, strict=True)


def _common_prefix(found: list[str], expected: list[str]) -> str | None:
    """The prefix that, stripped from every name of a weights file, gives the model's names."""
    wanted = set(expected)
    for name in found:
        for target in expected:
            if name.endswith("." + target):
                prefix = name[: -len(target)]
                stripped = {n.removeprefix(prefix) for n in found if n.startswith(prefix)}
                if stripped == wanted:
                    return prefix
    return None


def _load_exported(archive: Path) -> LoadedFunction:
    shown = display_path(archive)
    if archive.is_dir():
        raise FunctionLoadError(f"exported archive {shown} is a folder, not a .pt2 file.")
    if not archive.is_file():
        raise FunctionLoadError(f"exported archive {shown} does not exist.")
    if not zipfile.is_zipfile(archive):
        raise FunctionLoadError(
            f"{shown} is not a torch.export archive (not a zip file); write one with "
            "torch.export.save."
        )
    # torch.export.load logs the real error with its traceback, then raises a vaguer one: keep the
    # logged error for the message, and the traceback off the terminal.
    logged = _LoggedErrors()
    export_log = logging.getLogger("torch.export")
    handlers, export_log.handlers = export_log.handlers, [logged]
    was_propagating, export_log.propagate = export_log.propagate, False
    try:
        program = torch.export.load(archive)
    except Exception as error:
        cause = logged.errors[0] if logged.errors else error
        raise FunctionLoadError(
            f"cannot load the exported program {shown}: {type(cause).__name__}: {cause}"
        ) from error
    finally:
        export_log.handlers = handlers
        export_log.propagate = was_propagating
    module = program.module()
    module.requires_grad_(False)
    parameters = tuple(program.graph_signature.user_inputs)
    return LoadedFunction(
        module,
        f"exported program {archive.name}",
        parameters,
        len(parameters),
        (),
        {"function.exported": archive},
    )


class _LoggedErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


def _signature(
    func: Callable[..., Any],
) -> tuple[tuple[str, ...] | None, int, tuple[str, ...], bool]:
    """The names of ``func``'s positional parameters (``None`` when unknown: ``*args``, or no
    signature), how many have no default, its keyword-only parameters, and whether it takes
    ``**kwargs``."""
    target = func.forward if isinstance(func, nn.Module) else func
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None, 0, (), False
    names: list[str] = []
    keywords: list[str] = []
    required = 0
    var_positional = var_keyword = False
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            var_positional = True
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            keywords.append(parameter.name)
        elif not var_positional:
            names.append(parameter.name)
            required += parameter.default is inspect.Parameter.empty
    return (None if var_positional else tuple(names)), required, tuple(keywords), var_keyword


def _some(items: list[str], *, quote: bool = True, limit: int = 5) -> str:
    shown = [repr(i) if quote else i for i in items[:limit]]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(shown) + more
