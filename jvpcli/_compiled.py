"""``compile=True``: jvpcli's forward method, traced by dynamo and compiled (by inductor).

The compiled function is the eager forward method itself: the inputs become dual tensors, the
function runs under :class:`~jvpcli._tangent_rules.FastTangentRules`, and the outputs are
unpacked into primals and tangents (with ``batched_v``, ``torch.func.vmap`` of that over the K
directions). Dynamo traces all of it, tangent rules included, into one graph of plain ops (the
rules have already expanded the tangent math, so the zero-tangent products stay gone), which
the backend compiles. ``fullgraph=True``: a function dynamo cannot trace whole (data-dependent
Python control flow on tensor values, an ``autograd.Function``, an op it does not know) raises
here, and the engine computes eagerly instead, with the reason among its fallbacks. A graph
broken in pieces would hand dual tensors from one piece to the next, which is no place to trust.

Compiled callables are cached per (function, backend, ``batched_v``, the inputs' and tangents'
sizes, dtypes and devices), in a bounded cache shared by every call in the process (and so by
every run of a sweep). Dynamo's guards stay on inside each entry: a function that changes in a
way that matters (another module attribute, a weight replaced by a tensor of another size) is
traced again, never reused stale; weights updated in place are read as they are at each call.
Every graph is checked by the probe (:func:`_refuse_what_a_graph_gets_wrong`): the first before
it is compiled, each later one (dynamo tracing again after a guard failed, e.g. a module put in
train mode, which may now reach dropout or a custom ``autograd.Function``) right after its first
run, from the random state it ran with; a graph the probe refuses is not used, and the entry is
computed eagerly from then on.
Each entry compiles its own copy of the wrapper's code, so that dynamo's per-code recompile
limit counts one function's recompiles only.

This module imports dynamo (1.5 s): the engine imports it only when a call asks to compile.
"""

from __future__ import annotations

import time
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.autograd.forward_ad as fwAD
import torch.utils._pytree as pytree
from torch import Tensor
from torch.overrides import TorchFunctionMode

from jvpcli._tangent_rules import (
    AUTOGRAD_STATE,
    FastTangentRules,
    reads_autograd_state,
    traced_lookup,
)
from jvpcli.engine import (
    _check_inputs_unmodified,
    _dual_ready,
    _first_line,
    _make_duals,
    _RandomState,
)

__all__ = ["CACHE_SIZE", "Backend", "clear_cache", "forward"]

_Selected = TypeVar("_Selected")

Backend = str | Callable[..., Any]
"""What ``compile`` names: ``True`` for inductor, or a ``torch.compile`` backend."""

CACHE_SIZE = 64
"""How many compiled callables are kept; the least recently used goes first."""


@dataclass
class _Entry:
    owner: Callable[[], object | None]  # the function it was compiled for, or None once gone
    compiled: Callable[..., tuple[object, object]] = field(init=False)  # by _compile
    compiled_once: bool = False
    failure: str | None = None  # why it failed to trace or compile, or why the probe refused it
    # Set by the backend when dynamo compiles another graph for a compiled entry during a call:
    # the random state before that graph first ran, for the probe after it.
    recompiled_from: _RandomState | None = None


_CACHE: OrderedDict[Hashable, _Entry] = OrderedDict()

_TRACED_LOOKUP = torch._dynamo.assume_constant_result(traced_lookup)
"""The rule tables, a constant to dynamo: guarded on, their hundred keys would cost each call
more than a small function's whole graph."""


def clear_cache() -> None:
    """Forget every compiled callable (the next call of each function compiles again)."""
    _CACHE.clear()


def forward(
    func: Callable[..., object],
    inputs: tuple[Tensor, ...],
    v: tuple[Tensor, ...],
    batched: bool,
    backend: Backend,
    identity: object,
    select: Callable[[object, object], _Selected],
) -> tuple[_Selected, float]:
    """The forward method, compiled: ``(select(outputs, tangents), compile_seconds)``.

    ``outputs`` is what ``func`` returned, each tensor leaf (of torch's pytrees) replaced by its
    primal, detached; ``tangents`` the same structure with each tensor's tangent (zeros for a
    tensor that does not depend on the inputs) and None for every other leaf; ``select`` makes
    the caller's results of them, and raises if it cannot (a leaf torch's pytrees left whole).
    ``compile_seconds``: the time spent tracing and compiling in this call (the whole first call
    of a cache entry), 0 when the entry was compiled before. ``identity``: what the cache knows
    the function by (``func`` itself, or, for ``jvp_tree``, the user's function, whose wrapper is
    new on every call: it is passed to the compiled callable as an argument, and dynamo's guards
    check it).

    Raises:
        Exception: whatever tracing, compiling, the probe or ``select`` raised; the engine then
            computes eagerly. An entry whose first call failed, whose probe refused a graph or
            whose results ``select`` refused is computed eagerly at every later call too.
    """
    primals = _dual_ready(tuple(x.detach() for x in inputs))
    tangents = tuple(t.detach() for t in v)
    key = (
        id(identity),
        backend if isinstance(backend, str) else id(backend),
        batched,
        *map(_tensor_key, primals),
        len(primals),  # where the primals' keys end
        *map(_tensor_key, tangents),
    )
    entry = _CACHE.get(key)
    if entry is not None and entry.owner() is not identity:
        entry = None  # the id of a function that is gone, reused by another
    if entry is None:
        entry = _Entry(_reference(identity))
        entry.compiled = _compile(batched, backend, entry)
        _CACHE[key] = entry
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    if entry.failure is not None:
        raise RuntimeError(entry.failure)  # it failed for these shapes before: not again
    versions = [x._version for x in primals]
    start = time.perf_counter()
    grad_enabled = torch.is_grad_enabled()
    try:
        if not entry.compiled_once:
            random_state = _RandomState()
            try:
                _refuse_what_a_graph_gets_wrong(func, primals, random_state)
            finally:
                random_state.restore()  # the probe's draws are not the function's
        entry.recompiled_from = None
        torch._C._set_grad_enabled(False)  # torch.no_grad, without its Python frames
        outputs, jvps = entry.compiled(func, primals, tangents)
    except Exception as error:
        if not entry.compiled_once:
            entry.failure = _first_line(error)
        elif entry.recompiled_from is not None:
            entry.recompiled_from.restore()  # a new graph's draws are not the function's
        raise
    finally:
        torch._C._set_grad_enabled(grad_enabled)
    if entry.recompiled_from is not None:
        _probe_again(entry, func, primals, entry.recompiled_from)
    try:
        selected = select(outputs, jvps)
    except Exception as error:
        entry.failure = _first_line(error)  # it would fail the same way at every call
        raise
    compile_seconds = 0.0
    if not entry.compiled_once:
        compile_seconds = time.perf_counter() - start
        entry.compiled_once = True
    _check_inputs_unmodified(primals, versions)
    return selected, compile_seconds


def _probe_again(
    entry: _Entry,
    func: Callable[..., object],
    primals: tuple[Tensor, ...],
    random_state: _RandomState,
) -> None:
    """The probe, for a graph dynamo compiled again during this call (it has run once, from
    ``random_state``): raise, and compute the entry eagerly from now on, if the probe refuses the
    function as it is now.

    Either way the random state is the one the graph ran from: a graph the probe accepts draws
    no random numbers, and one it refuses may have drawn its own (inductor's), which are not the
    function's."""
    entry.recompiled_from = None
    random_state.restore()
    try:
        _refuse_what_a_graph_gets_wrong(func, primals, random_state)
    except Exception as error:
        entry.failure = _first_line(error)
        raise
    finally:
        random_state.restore()


def _refuse_what_a_graph_gets_wrong(
    func: Callable[..., object], primals: tuple[Tensor, ...], random_state: _RandomState
) -> None:
    """Raise if ``func`` calls a custom ``torch.autograd.Function``, reads autograd's state, or
    draws random numbers (``random_state``: the generators' state before the call).

    Dynamo traces such a Function's ``forward`` into the graph and differentiates that, ignoring
    its ``jvp`` and ``backward`` (a straight-through estimator's derivative becomes 0): a wrong
    result, silently. One eager call with autograd's graph recorded finds them, by their nodes.
    The same call finds reads of ``requires_grad``, whose values dynamo would bake into the graph
    as forward mode sees them (:class:`~jvpcli._tangent_rules.NeedsAutograd`: computed eagerly,
    the engine reruns such a function as torch.autograd.functional.jvp would run it), and draws
    from torch's global random number generator, which inductor replaces with its own.
    """
    inputs = tuple(x.detach().requires_grad_() for x in primals)
    reads = _AutogradStateReads()
    with torch.enable_grad():
        with reads:
            outputs = func(*inputs)
        if reads.found is not None:
            raise RuntimeError(reads.found)
        if random_state.drawn():
            raise RuntimeError(
                "the function draws random numbers, which a compiled graph would draw otherwise "
                "than the eager function (another dropout mask)"
            )
        nodes = [t.grad_fn for t in pytree.tree_leaves(outputs) if isinstance(t, Tensor)]
        seen: set[int] = set()
        while nodes:
            node = nodes.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, torch.autograd.function.BackwardCFunction):
                raise RuntimeError(
                    f"the function calls a custom autograd.Function ({type(node).__name__}), "
                    "whose own jvp or backward a compiled function would not use"
                )
            nodes.extend(next_node for next_node, _ in node.next_functions)


class _AutogradStateReads(TorchFunctionMode):
    """Finds the function's reads of autograd's state (``found``: the message, or None).

    Any read the function makes itself: the compiled graph would hold forward mode's answer, a
    constant, where the engine's eager rules rerun the function when theirs is False. The read
    raises; ``found`` stays set should the function catch the error."""

    def __init__(self) -> None:
        super().__init__()
        self.found: str | None = None

    def __torch_function__(
        self, func: Callable[..., Any], types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        attribute = AUTOGRAD_STATE.get(func)
        if attribute is not None:
            self.found = str(reads_autograd_state(attribute))
            raise RuntimeError(self.found)
        return func(*args, **(kwargs or {}))


def _tensor_key(x: Tensor) -> tuple[object, ...]:
    return (x.shape, x.dtype, x.device, x.is_contiguous())


def _reference(identity: object) -> Callable[[], object | None]:
    try:
        return weakref.ref(identity)
    except TypeError:  # builtins (torch.sin) cannot be weakly referenced: kept alive instead
        return lambda: identity


def _compile(batched: bool, backend: Backend, entry: _Entry) -> Callable[..., Any]:
    compile_graph = torch._dynamo.lookup_backend(backend) if isinstance(backend, str) else backend

    def probed(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        if entry.compiled_once and entry.recompiled_from is None:
            entry.recompiled_from = _RandomState()  # the graph has not run yet
        return compile_graph(graph, example_inputs)

    wrapper = _batched_wrapper if batched else _wrapper
    # A copy of the code object: dynamo keeps its compiled graphs (and counts recompiles) per code.
    fresh = types.FunctionType(
        wrapper.__code__.replace(), wrapper.__globals__, wrapper.__name__, wrapper.__defaults__
    )
    # dynamic stays None: each entry sees one set of input shapes (its key), and dynamic=False
    # would patch dynamo's config around every call (a few µs, a small function's whole graph).
    return torch.compile(fresh, backend=probed, fullgraph=True)


def _wrapper(
    func: Callable[..., object], primals: tuple[Tensor, ...], tangents: tuple[Tensor, ...]
) -> tuple[object, object]:
    """What dynamo traces: the eager forward method without its checks (made outside)."""
    with fwAD.dual_level() as level:
        duals = _make_duals(primals, tangents, level)
        with FastTangentRules(level, _TRACED_LOOKUP):
            raw_outputs = func(*duals)
        return _split_tree(raw_outputs, level)


def _batched_wrapper(
    func: Callable[..., object], primals: tuple[Tensor, ...], tangents: tuple[Tensor, ...]
) -> tuple[object, object]:
    """The batched forward method: ``torch.func.vmap`` over the K directions of ``tangents``."""

    def ruled(*duals: Tensor) -> object:
        with FastTangentRules(fwAD._current_level, _TRACED_LOOKUP):
            return func(*duals)

    def one_direction(*direction: Tensor) -> tuple[object, object]:
        return torch.func.jvp(ruled, primals, direction)

    return torch.func.vmap(one_direction, out_dims=(None, 0))(*tangents)


def _split_tree(tree: object, level: int) -> tuple[object, object]:
    """The primals and the tangents of the dual tensors in ``tree`` (torch's pytrees): ``tree``
    with each tensor's primal, and with each tensor's tangent (zeros for a tensor that does not
    depend on the inputs) and None for every other leaf."""

    def primal(x: object) -> object:
        return fwAD.unpack_dual(x, level=level).primal if isinstance(x, Tensor) else x

    def tangent(x: object) -> object:
        if not isinstance(x, Tensor):
            return None
        primal, tangent = fwAD.unpack_dual(x, level=level)
        return torch.zeros_like(primal) if tangent is None else tangent

    return pytree.tree_map(primal, tree), pytree.tree_map(tangent, tree)
