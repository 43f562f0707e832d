"""The JVP engine: ``jvp`` and ``jvp_with_info``.

A drop-in replacement for :func:`torch.autograd.functional.jvp` (same signature, results, flags and
errors) that computes with forward-mode AD by default, and falls back where PyTorch's forward mode
has gaps. This module imports only torch; it knows nothing of files, configs or terminals.

How a call runs (``method="auto"``):

1. Forward mode: each input becomes a dual tensor carrying its tangent, ``func`` runs once, and each
   output's tangent is J·v. With ``create_graph=False`` no reverse graph is recorded at all, so no
   activation is kept alive after its last use.
2. Kernels that have no forward-mode rule but an equivalent that has one are swapped for that call
   only: attention always runs on the math SDPA backend with the ``nn.MultiheadAttention`` fast path
   off (the fused CPU kernels support neither forward mode nor double backward); oneDNN RNN kernels
   are turned off when they are the ones that failed.
3. Where an op has no forward-mode rule at all (a custom ``autograd.Function`` without ``jvp``), the
   product is computed with the double-backward trick instead.

``strict=True`` needs to know which inputs each output depends on, which forward mode alone cannot
tell: strict calls also record the reverse graph's *structure* (saved tensors are discarded as they
are packed, so it costs no activation memory) and read the dependencies off it.

Inside someone else's ``torch.compile``: the public entry points are never traced by dynamo
(once dynamo is loaded they are wrapped in ``torch.compiler.disable``, recursively): dynamo breaks
the graph around them and they run eagerly, as they would outside, every result correct. Dynamo
tracing their insides would go wrong silently (dual tensors and the tangent-rule mode through
dynamo give zero tangents under ``strict``), and a torch.export trace or a backend's make_fx
cannot take them at all: there, and under ``fullgraph=True``, they raise :data:`INSIDE_COMPILE`.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from jvpcli._tangent_rules import FastTangentRules, NeedsAutograd

__all__ = ["METHODS", "Fallback", "JvpInfo", "JvpResult", "jvp", "jvp_with_info"]

METHODS: tuple[str, ...] = ("auto", "forward", "double-backward")
"""The values ``method`` accepts."""

TensorOrTuple = Tensor | tuple[Tensor, ...]
_R = TypeVar("_R")

INSIDE_COMPILE = (
    "jvpcli.{entry} was called while torch.compile or torch.export traces a function: jvpcli "
    "cannot run inside a compiled or exported function (its forward-mode dual tensors and tangent "
    "rules cannot be traced into someone else's graph, and a result traced anyway could be "
    "silently wrong). Call jvpcli.{entry}(..., compile=True) outside the compiled function to get "
    "a compiled jvp, or call jvpcli outside the compiled region (without fullgraph=True, "
    "torch.compile does this for you: it breaks the graph around jvpcli and runs it eagerly)."
)
"""The error jvpcli's entry points raise when a tracer (torch.export, a backend's make_fx, dynamo
with ``fullgraph=True``) would take them into its graph."""

_CREATE_GRAPH_NOTE = (
    "create_graph: auto uses double backward, whose graph PyTorch differentiates correctly "
    "through softmax, det and solve, where backward through their forward-mode rules fails or "
    "is wrong"
)


@dataclass(frozen=True)
class Fallback:
    """An attempt that failed before the one that produced the result.

    Attributes:
        method: the method that was attempted ("forward" or "double-backward").
        reason: the first line of the error it raised.
        remedy: what was changed for the next attempt.
    """

    method: str
    reason: str
    remedy: str

    def __str__(self) -> str:
        return f"{self.method} failed ({self.reason}); {self.remedy}"


@dataclass(frozen=True)
class JvpInfo:
    """How a JVP was computed.

    Attributes:
        method: the method requested ("auto", "forward" or "double-backward").
        method_used: the method that produced the result ("forward" or "double-backward").
        fallbacks: the attempts that failed before, in order, with why and what changed.
        seconds: wall time of the whole call, fallbacks and compiling included.
        note: why "auto" chose ``method_used`` without trying forward mode first, if it did.
        compile_seconds: with ``compile``, the time this call spent tracing and compiling (its
            first call for these shapes; 0.0 when it reused a compiled function); ``None`` when
            the result was not computed by a compiled function.
    """

    method: str
    method_used: str
    fallbacks: tuple[Fallback, ...]
    seconds: float
    note: str | None = None
    compile_seconds: float | None = None

    def __str__(self) -> str:
        reasons = [str(f) for f in self.fallbacks]
        if self.note:
            reasons.insert(0, self.note)
        if self.compile_seconds:
            reasons.insert(0, f"compiled in {self.compile_seconds:.1f} s")
        return f"{self.method_used} (" + "; ".join(reasons) + ")" if reasons else self.method_used


@dataclass(frozen=True)
class JvpResult:
    """What :func:`jvp_with_info` returns: the two results of :func:`jvp` and how they were made."""

    func_output: TensorOrTuple
    jvp: TensorOrTuple
    info: JvpInfo


def outside_compilers(entry: str) -> Callable[[Callable[..., _R]], Callable[..., _R]]:
    """Make the public entry point ``jvpcli.<entry>`` safe to call inside someone else's compile.

    Once dynamo is loaded (nothing can compile before), the entry point runs wrapped in
    ``torch.compiler.disable``, recursively, wherever dynamo could compile what it calls (its
    frame callback is set: inside a compiled function, after a graph break): dynamo never traces
    it nor anything it calls, but breaks the graph there and calls it eagerly (or, with
    ``fullgraph=True``, raises with :data:`INSIDE_COMPILE` as the reason). Without dynamo, or
    with no callback set (a plain eager call), no wrapper and no cost: the wrapper's own frames
    and switches cost a compiled call about as much as jvpcli's checks. Inside, a trace that is
    not dynamo's (torch.export, make_fx from a backend) gets :data:`INSIDE_COMPILE`.
    """
    message = INSIDE_COMPILE.format(entry=entry)

    def decorate(func: Callable[..., _R]) -> Callable[..., _R]:
        def checked(*args: object, **kwargs: object) -> _R:
            if torch.compiler.is_compiling() or torch.compiler.is_exporting():
                raise RuntimeError(message)
            return func(*args, **kwargs)

        disabled: list[Callable[..., _R]] = []

        @functools.wraps(func)
        def run(*args: object, **kwargs: object) -> _R:
            if "torch._dynamo" not in sys.modules:
                return checked(*args, **kwargs)
            if torch.compiler.is_compiling():
                # Dynamo is tracing this very call, and cannot trace torch.compiler.disable: the
                # error makes it run this frame eagerly (or, with fullgraph=True, says why not).
                raise RuntimeError(message)
            if _eval_frame_callback() is None:
                if torch.compiler.is_exporting():
                    raise RuntimeError(message)
                return func(*args, **kwargs)
            if not disabled:
                disabled.append(torch.compiler.disable(checked, recursive=True, reason=message))
            return disabled[0](*args, **kwargs)

        return run

    return decorate


def _eval_frame_callback() -> object:
    """What dynamo runs on each new Python frame now (None: nothing; dynamo is loaded)."""
    return torch._C._dynamo.eval_frame.get_eval_frame_callback()


@outside_compilers("jvp")
def jvp(
    func: Callable[..., TensorOrTuple],
    inputs: TensorOrTuple,
    v: TensorOrTuple | None = None,
    create_graph: bool = False,
    strict: bool = False,
    *,
    method: str = "auto",
    batched_v: bool = False,
    compile: bool | str | Callable[..., Any] = False,
) -> tuple[TensorOrTuple, TensorOrTuple]:
    """Compute the Jacobian-vector product of ``func`` at ``inputs`` along ``v``.

    A drop-in replacement for :func:`torch.autograd.functional.jvp`.

    Args:
        func: a Python function that takes Tensors positionally and returns a Tensor or a tuple of
            Tensors. Outputs of integer or bool dtype get a zero tangent.
        inputs: the point at which to differentiate: a Tensor or a tuple of Tensors, of floating
            point or complex dtype.
        v: the direction: a Tensor or tuple of Tensors with the structure, sizes, dtypes and devices
            of ``inputs``. May be ``None`` only when ``inputs`` is a single Tensor with a single
            element, and then stands for 1.
        create_graph: if True, both results are differentiable with respect to ``inputs`` and ``v``
            (also inside ``torch.no_grad()``); if False, neither result has history.
        strict: if True, raise RuntimeError when an output does not depend on the inputs, when an
            input influences no output, and (with ``create_graph``) when the Jacobian does not
            depend on the inputs. If False, independent outputs get a zero jvp.
        method: "auto" (forward mode, with fallbacks where it has gaps; double backward when
            ``create_graph`` is set, as PyTorch differentiates some forward-mode rules wrongly),
            "forward" (forward mode only) or "double-backward" (the reverse-of-reverse trick
            PyTorch's own jvp uses).
        batched_v: if True, the first dimension of every ``v`` tensor indexes K directions
            (each entry of ``v`` has the size ``(K, *input.size())``, the same K throughout), and
            each jvp gets that leading dimension: ``jvp[k]`` is J·v[k]. The primal is computed
            once and the K tangents are pushed through together.
        compile: if True, the forward method (with jvpcli's tangent rules) is traced by dynamo
            into one graph and compiled by inductor (``torch.compile``); a string or callable
            names another ``torch.compile`` backend ("aot_eager", "eager"). Compiled functions
            are cached per function, flags and the inputs' sizes, dtypes and devices, so only
            the first call for each compiles. Where the function cannot be traced whole or the
            compiler fails, and with ``create_graph``, ``strict`` or
            ``method="double-backward"``, the product is computed eagerly and
            ``info.fallbacks`` says why: never a different result.

    Returns:
        ``(func_output, jvp)``: each a Tensor, or a tuple when ``func`` returned a tuple.

    Raises:
        TypeError: ``inputs``, ``v`` or the outputs of ``func`` are not a Tensor or a tuple of
            Tensors.
        RuntimeError: ``v`` does not match ``inputs``; a strict-mode violation; ``func`` modified
            an input in place.
        ValueError: ``method`` is not one of :data:`METHODS`.
        Exception: whatever ``func`` raises propagates unchanged.
    """
    result = run_jvp(
        func, inputs, v, create_graph, strict, method=method, batched_v=batched_v, compile=compile
    )
    return result.func_output, result.jvp


@outside_compilers("jvp_with_info")
def jvp_with_info(
    func: Callable[..., TensorOrTuple],
    inputs: TensorOrTuple,
    v: TensorOrTuple | None = None,
    create_graph: bool = False,
    strict: bool = False,
    *,
    method: str = "auto",
    batched_v: bool = False,
    compile: bool | str | Callable[..., Any] = False,
) -> JvpResult:
    """Like :func:`jvp`, and also say how the product was computed.

    Takes the same arguments and raises the same errors as :func:`jvp`.

    Returns:
        A :class:`JvpResult`: ``func_output`` and ``jvp`` as :func:`jvp` returns them, and
        ``info``, a :class:`JvpInfo` with the method that produced them and the fallbacks tried.
    """
    return run_jvp(
        func, inputs, v, create_graph, strict, method=method, batched_v=batched_v, compile=compile
    )


def run_jvp(
    func: Callable[..., TensorOrTuple],
    inputs: TensorOrTuple,
    v: TensorOrTuple | None,
    create_graph: bool,
    strict: bool,
    *,
    method: str,
    batched_v: bool,
    compile: bool | str | Callable[..., Any] = False,
    compiled: CompiledCall | None = None,
) -> JvpResult:
    """:func:`jvp_with_info` without the guard against tracers, for jvpcli's own entry points.

    ``compiled``: what ``compile`` compiles, when not ``func`` itself (for ``jvp_tree``).
    """
    if method not in METHODS:
        raise ValueError(
            f"jvp got an invalid method {method!r}: expected one of "
            + ", ".join(repr(m) for m in METHODS)
            + "."
        )
    if not isinstance(compile, (bool, str)) and not callable(compile):
        raise TypeError(
            "jvp's compile must be True or False, or a torch.compile backend (its name or the "
            f"backend itself), but got {type(compile).__name__}."
        )
    start = time.perf_counter()
    is_inputs_tuple, inputs = _as_tuple(inputs, "inputs")
    _check_differentiable_dtypes(inputs, is_inputs_tuple)
    _refuse_enclosing_tangents(inputs)
    if v is None:
        if len(inputs) != 1 or inputs[0].nelement() != 1:
            raise RuntimeError(
                "The vector v can only be None if the input to the user-provided function is a "
                "single Tensor with a single element."
            )
        v = (torch.ones_like(inputs[0]).unsqueeze(0) if batched_v else torch.ones_like(inputs[0]),)
    else:
        _, v = _as_tuple(v, "v")
        _validate_v(v, inputs, is_inputs_tuple, batched_v)

    fallbacks: list[Fallback] = []
    outcome = None
    note = None
    compile_seconds = None
    if compile is not False:
        reason = _not_compiled_because(create_graph, strict, method)
        if reason is not None:
            fallbacks.append(Fallback(COMPILED, reason, "computed eagerly"))
        else:
            try:
                with _forward_friendly_kernels():
                    outcome, compile_seconds = _compiled_forward(
                        compiled or CompiledCall(func, func, _select_outputs),
                        inputs,
                        v,
                        batched_v,
                        compile,
                    )
            except Exception as error:  # any failure to trace or compile: computed eagerly
                _close_dual_level_left_open()
                fallbacks.append(Fallback(COMPILED, _first_line(error), "computed eagerly instead"))
    if outcome is not None:
        method_used = COMPILED
    else:
        if method == "auto" and create_graph:
            note = _CREATE_GRAPH_NOTE
        outcome, method_used = _compute_eagerly(
            func, inputs, v, create_graph, strict, method, batched_v, fallbacks
        )

    is_outputs_tuple, outputs, tangents = outcome
    info = JvpInfo(
        method, method_used, tuple(fallbacks), time.perf_counter() - start, note, compile_seconds
    )
    return JvpResult(
        _tuple_postprocess(outputs, is_outputs_tuple),
        _tuple_postprocess(tangents, is_outputs_tuple),
        info,
    )


def _compute_eagerly(
    func: Callable[..., TensorOrTuple],
    inputs: tuple[Tensor, ...],
    v: tuple[Tensor, ...],
    create_graph: bool,
    strict: bool,
    method: str,
    batched_v: bool,
    fallbacks: list[Fallback],
) -> tuple[tuple[bool, tuple[Tensor, ...], tuple[Tensor, ...]], str]:
    """The product without compiling, and the method that computed it: forward mode with its
    retries, else double backward (appending to ``fallbacks`` what was tried)."""
    # Taken here, not before a compiled call: a compiled function draws no random numbers (its
    # probe refuses those that do), and the snapshot would cost a small compiled call ~10%.
    random_state = _RandomState()
    if method == "forward" or (method == "auto" and not create_graph):
        forward = _forward_batched if batched_v else _forward
        try:
            return _forward_with_retries(
                lambda attempt: forward(func, inputs, v, create_graph, strict, attempt),
                fallbacks,
                batched_v,
                random_state,
            ), "forward"
        except (NotImplementedError, RuntimeError) as error:
            if method == "forward" or not _lacks_forward_rule(error):
                raise
            fallbacks.append(
                Fallback("forward", _first_line(error), "computed with double-backward instead")
            )
        # The failed attempt's traceback (and the activations its frames hold) is gone by here.
    if fallbacks:
        random_state.restore()
    with _forward_friendly_kernels():
        return _double_backward(func, inputs, v, create_graph, strict, batched_v), "double-backward"


# --------------------------------------------------------------------------------------------
# compile=True (in jvpcli._compiled, which imports dynamo: only when asked).

COMPILED = "forward (compiled)"
"""``JvpInfo.method_used`` of a product computed by a compiled function, and the ``method`` of a
:class:`Fallback` for a compile that was not used."""


def _close_dual_level_left_open() -> None:
    """Close the forward AD level a failed trace left open in C++ (fwAD's own record says none
    is open: the level was entered by the trace), without which every later forward-mode call in
    the process would fail ("Nested forward mode AD is not supported")."""
    if fwAD._current_level >= 0:
        return  # a level of the caller's, open on purpose
    try:
        level = torch._C._enter_dual_level()
    except RuntimeError:  # one is open, and only one can be: level 0
        torch._C._exit_dual_level(level=0)
    else:
        torch._C._exit_dual_level(level=level)


def _not_compiled_because(create_graph: bool, strict: bool, method: str) -> str | None:
    if method == "double-backward":
        return 'method="double-backward" is not compiled (compile applies to forward mode)'
    if create_graph:
        return "create_graph=True needs autograd's graph of the results, which is not compiled"
    if strict:
        return "strict=True reads the dependencies off autograd's graph, which is not compiled"
    return None


@dataclass(frozen=True)
class CompiledCall:
    """What ``compile=True`` compiles, and how its results become the engine's.

    Attributes:
        func: the function traced: it takes the inputs (dual tensors) and may return any of
            torch's pytrees, whose tensor leaves are unpacked inside the compiled function.
        identity: what the cache of compiled functions knows ``func`` by (``jvp_tree``'s
            ``func`` is new on every call; the user's function is not).
        select: ``(outputs, tangents)`` → the engine's ``(is_outputs_tuple, outputs, tangents)``
            from the primal and tangent trees the compiled function returns.
    """

    func: Callable[..., object]
    identity: object
    select: Callable[[object, object], tuple[bool, tuple[Tensor, ...], tuple[Tensor, ...]]]


def _select_outputs(
    outputs: object, tangents: object
) -> tuple[bool, tuple[Tensor, ...], tuple[Tensor, ...]]:
    """``jvp``'s outputs: a Tensor or a tuple of Tensors."""
    is_outputs_tuple, flat = _as_tuple(outputs, "outputs of the user-provided function")
    flat_tangents = tangents if is_outputs_tuple else (tangents,)
    return (
        is_outputs_tuple,
        flat,
        flat_tangents,
    )


def _compiled_forward(
    call: CompiledCall,
    inputs: tuple[Tensor, ...],
    v: tuple[Tensor, ...],
    batched: bool,
    compile: bool | str | Callable[..., Any],
) -> tuple[tuple[bool, tuple[Tensor, ...], tuple[Tensor, ...]], float]:
    compiled = sys.modules.get("jvpcli._compiled")
    if compiled is None:
        from jvpcli import _compiled as compiled

    backend = "inductor" if compile is True else compile
    return compiled.forward(call.func, inputs, v, batched, backend, call.identity, call.select)


# --------------------------------------------------------------------------------------------
# Argument checks. Messages keep the phrases of torch.autograd.functional so that code matching
# on them keeps working.


def _as_tuple(value: object, arg_name: str) -> tuple[bool, tuple[Tensor, ...]]:
    is_tuple = isinstance(value, tuple)
    values = value if is_tuple else (value,)
    for i, element in enumerate(values):
        if not isinstance(element, Tensor):
            where = f"the value at index {i}" if is_tuple else f"the given {arg_name}"
            raise TypeError(
                f"The {arg_name} given to jvp must be either a Tensor or a tuple of Tensors but "
                f"{where} has type {type(element)}."
            )
    return is_tuple, values


def _refuse_enclosing_tangents(inputs: tuple[Tensor, ...]) -> None:
    """Raise if an input is a dual tensor of a forward-AD level already open (jvpcli's jvp
    called inside the function of another jvp, or inside ``fwAD.dual_level``): this call would
    differentiate the primals only, and its result would silently lose the enclosing tangents."""
    if fwAD._current_level < 0:
        return
    for i, x in enumerate(inputs):
        if fwAD.unpack_dual(x).tangent is not None:
            raise RuntimeError(
                f"Input {i} of jvp carries the tangent of an enclosing jvp (a jvp nested inside "
                "the function of another, or inside a dual level): jvpcli does not nest, and "
                "would drop that tangent, giving a wrong result. Compute both products with "
                "torch.autograd.functional.jvp instead (create_graph=True for the inner one)."
            )


def _check_differentiable_dtypes(inputs: tuple[Tensor, ...], is_inputs_tuple: bool) -> None:
    for i, x in enumerate(inputs):
        if not (x.is_floating_point() or x.is_complex()):
            where = f"Entry {i} in inputs" if is_inputs_tuple else "The input"
            raise RuntimeError(
                f"{where} has dtype {x.dtype}: jvp differentiates with respect to its inputs, and "
                "only Tensors of floating point and complex dtype can require gradients."
            )


def _validate_v(
    v: tuple[Tensor, ...], inputs: tuple[Tensor, ...], is_inputs_tuple: bool, batched: bool
) -> None:
    if len(v) != len(inputs):
        if is_inputs_tuple:
            raise RuntimeError(
                f"v is a tuple of invalid length: should be {len(inputs)} but got {len(v)}."
            )
        raise RuntimeError("The given v should contain a single Tensor.")
    directions = v[0].size(0) if batched and v[0].dim() > 0 else None
    for i, (t, x) in enumerate(zip(v, inputs, strict=True)):
        prefix = f"Entry {i} in " if is_inputs_tuple else ""
        if batched:
            expected = torch.Size([directions or 1, *x.size()])
            if t.size() != expected:
                raise RuntimeError(
                    f"{prefix}v has invalid size: with batched_v=True it should be "
                    f"torch.Size([K, *{list(x.size())}]) with the same K for every entry, i.e. "
                    f"{expected}, but got {t.size()}."
                )
        elif t.size() != x.size():
            raise RuntimeError(
                f"{prefix}v has invalid size: should be {x.size()} but got {t.size()}."
            )
        if t.dtype != x.dtype:
            raise RuntimeError(
                f"{prefix}v has invalid dtype: should be {x.dtype} (the dtype of the input) but "
                f"got {t.dtype}."
            )
        if t.device != x.device:
            raise RuntimeError(
                f"{prefix}v has invalid device: should be {x.device} (the device of the input) but "
                f"got {t.device}."
            )


def _tuple_postprocess(values: tuple[Tensor, ...], was_tuple: bool) -> TensorOrTuple:
    return values if was_tuple else values[0]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --------------------------------------------------------------------------------------------
# Kernel choices that make forward mode (and double backward) possible.


class _forward_friendly_kernels:  # a context manager, named like torch.no_grad
    """Run attention in a form that forward mode and double backward support, for this call only.

    The fused CPU attention kernels (flash SDPA, the ``nn.MultiheadAttention`` /
    ``nn.TransformerEncoderLayer`` fast path) have neither a forward-mode rule nor a double
    backward; the math backend has both.

    Entered on every call, so it sets the backend flags directly: ``sdpa_kernel`` reads and
    writes them by name through Python, and cost most of a small function's jvp overhead.
    """

    def __enter__(self) -> None:
        self._fastpath = torch.backends.mha.get_fastpath_enabled()
        self._sdp = [get() for get, _, _ in _SDP_BACKEND_FLAGS]
        torch.backends.mha.set_fastpath_enabled(False)
        for _, set_enabled, is_math in _SDP_BACKEND_FLAGS:
            set_enabled(is_math)

    def __exit__(self, *_: object) -> None:
        for (_, set_enabled, _), enabled in zip(_SDP_BACKEND_FLAGS, self._sdp, strict=True):
            set_enabled(enabled)
        torch.backends.mha.set_fastpath_enabled(self._fastpath)


_SDP_BACKEND_FLAGS = tuple(
    (
        getattr(torch._C, f"_get_{name}_sdp_enabled"),
        getattr(torch._C, f"_set_sdp_use_{name}"),
        name == "math",
    )
    for name in ("cudnn", "flash", "mem_efficient", "math", "overrideable")
)
"""(get, set, whether enabled here) for each SDPA backend's switch."""


@contextlib.contextmanager
def _onednn_disabled() -> Iterator[None]:
    # torch.backends.mkldnn.flags() would also reset oneDNN's TF32 switch, which warns on CPU.
    enabled = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(enabled)


def _lacks_forward_rule(error: BaseException) -> bool:
    """Whether ``error`` says an op has no forward-mode AD rule (rather than being a user error)."""
    message = str(error)
    return (
        "forward AD" in message
        or "forward mode" in message
        or "forward-mode" in message
        or ("jvp" in message and isinstance(error, NotImplementedError))
    )


_DISCARDED = "jvpcli recorded this graph for strict mode without its saved tensors"


def _incompatible_with_vmap(error: BaseException) -> bool:
    """Whether ``func`` failed because batched tangents (vmap) cannot go through it."""
    message = str(error)
    return "functorch transforms" in message or "vmap" in message or "Batching rule" in message


def _needs_reverse_graph(error: BaseException) -> str | None:
    """Why ``func`` needs autograd's graph (a clause), if that is why it failed."""
    if isinstance(error, NeedsAutograd):
        return error.because
    message = str(error)
    if (
        "does not require grad and does not have a grad_fn" in message
        or _DISCARDED in message
        # torch.func.grad inside func, under strict mode's hooks that discard saved tensors
        or "don't yet support saved tensor hooks" in message
    ):
        return "the function differentiates"
    if (
        "cannot register a hook on a tensor that doesn't require gradient" in message
        or "can't retain_grad on Tensor that has requires_grad=False" in message
    ):
        return "the function uses autograd's graph (a hook, retain_grad)"
    return None


# --------------------------------------------------------------------------------------------
# Forward mode.


class _RandomState:
    """The random number generators' state (CPU, and CUDA once initialised) at its making.

    Restored before ``func`` runs again (a fallback, the next direction one at a time), so that
    each call draws the random numbers the first drew (dropout's masks): the results are those of
    the function as called once, as by ``torch.autograd.functional.jvp``, and so is the state
    after.
    """

    __slots__ = ("_cpu", "_cuda")

    def __init__(self) -> None:
        self._cpu = torch.get_rng_state()
        self._cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self._cpu)
        if self._cuda is not None:
            torch.cuda.set_rng_state_all(self._cuda)

    def drawn(self) -> bool:
        """Whether random numbers were drawn since (the generators' state moved)."""
        if not torch.equal(torch.get_rng_state(), self._cpu):
            return True
        if self._cuda is None:
            return False
        now = torch.cuda.get_rng_state_all()
        return any(not torch.equal(a, b) for a, b in zip(now, self._cuda, strict=True))


@dataclass(frozen=True)
class _Attempt:
    """How a forward-mode attempt runs; each retry turns on one more workaround."""

    onednn_off: bool = False  # oneDNN's RNN kernels have no forward rule
    record_graph: bool = False  # func differentiates internally: inputs must require grad, and
    # PyTorch's own forward rules run, as its backward pass needs tangents on the saved tensors
    one_direction: bool = False  # batched_v: func does not compose with vmap


def _forward_with_retries(
    compute: Callable[[_Attempt], tuple[bool, tuple[Tensor, ...], tuple[Tensor, ...]]],
    fallbacks: list[Fallback],
    batched: bool,
    random_state: _RandomState,
) -> tuple[bool, tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Run ``compute`` in forward mode, retried with a workaround when it fails for want of one
    (with the random state ``func`` first ran with)."""
    attempt = _Attempt()
    while True:
        if fallbacks:
            random_state.restore()
        settings = contextlib.ExitStack()
        settings.enter_context(_forward_friendly_kernels())
        if attempt.onednn_off:
            settings.enter_context(_onednn_disabled())
        try:
            with settings:
                return compute(attempt)
        except (NotImplementedError, RuntimeError) as error:
            reason = _first_line(error)
            if not attempt.onednn_off and "mkldnn" in reason and _lacks_forward_rule(error):
                attempt = replace(attempt, onednn_off=True)
                remedy = "retried with oneDNN kernels off"
            elif not attempt.record_graph and (because := _needs_reverse_graph(error)):
                attempt = replace(attempt, record_graph=True)
                remedy = (
                    "retried with inputs that require grad and PyTorch's own forward rules, as "
                    + because
                )
            elif batched and not attempt.one_direction and _incompatible_with_vmap(error):
                attempt = replace(attempt, one_direction=True)
                remedy = "retried one direction at a time"
            else:
                raise
        fallbacks.append(Fallback("forward", reason, remedy))


def _forward(
    func: Callable[..., object],
    inputs: tuple[Tensor, ...],
    v: tuple[Tensor, ...],
    create_graph: bool,
    strict: bool,
    attempt: _Attempt,
) -> tuple[bool, tuple[Tensor, ...], tuple[Tensor, ...]]:
    record_graph = attempt.record_graph
    # The reverse graph is recorded only when it is needed: to differentiate the results
    # (create_graph), to read dependencies off it (strict), or because func differentiates itself.
    track = create_graph or strict or record_graph
    if track:
        with torch.enable_grad():  # attaches to the caller's graph even inside torch.no_grad()
            primals = _dual_ready(_grad_preprocess(inputs, create_graph, need_graph=True))
            tangents = _grad_preprocess(v, create_graph, need_graph=False)
    else:
        primals = _dual_ready(tuple(x.detach() for x in inputs))
        tangents = tuple(t.detach() for t in v)
    versions = [x._version for x in primals]

    saved_tensors = contextlib.nullcontext()
    if strict and not (create_graph or record_graph):
        # Strict mode only reads the graph's structure: keep none of the tensors it would save.
        saved_tensors = torch.autograd.graph.saved_tensors_hooks(_discard, _discarded)
    with torch.set_grad_enabled(track), saved_tensors, fwAD.dual_level() as level:
        duals = _make_duals(primals, tangents, level)
        if record_graph:
            raw_outputs = func(*duals)
        else:
            rules = FastTangentRules(level)
            with rules:
                raw_outputs = func(*duals)
            if rules.needs_autograd is not None:  # the function caught NeedsAutograd
                raise rules.needs_autograd.again()
        is_outputs_tuple, outputs = _as_tuple(raw_outputs, "outputs of the user-provided function")
        unpacked = _unpack_duals(outputs, level)

    if not track:
        _check_inputs_unmodified(primals, versions)
    if strict:
        _check_outputs_require_grad(outputs)
        _check_dependencies(outputs, primals)
        if create_graph:
            _check_jacobian_dependence(outputs, primals, tangents)

    results = []
    jvps = []
    for primal, tangent in unpacked:
        if tangent is None or tangent._is_zerotensor():
            tangent = torch.zeros_like(primal)
        if create_graph:
            results.append(primal)
            jvps.append(tangent)
        else:
            results.append(primal.detach())
            jvps.append(tangent.detach())
    return is_outputs_tuple, tuple(results), tuple(jvps)


def _make_duals(
    primals: tuple[Tensor, ...], tangents: tuple[Tensor, ...], level: int
) -> tuple[Tensor, ...]:
    """``fwAD.make_dual`` of each pair, through its C entry point where fwAD would reach it too.

    fwAD's wrapper checks dtypes and level (validated already here) and routes the call through a
    tracing mode under torch.export / torch.compile; the checks cost more than the op itself on a
    small input. Tracing keeps the wrapper.
    """
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return tuple(
            fwAD.make_dual(p, t, level=level) for p, t in zip(primals, tangents, strict=True)
        )
    _load_forward_ad_decompositions()
    return tuple(torch._make_dual(p, t, level) for p, t in zip(primals, tangents, strict=True))


@functools.cache
def _load_forward_ad_decompositions() -> None:
    """What ``fwAD.make_dual`` does first, on every call: import forward AD's decompositions."""
    fwAD._maybe_load_decompositions()


def _unpack_duals(outputs: tuple[Tensor, ...], level: int) -> list[tuple[Tensor, Tensor | None]]:
    """``fwAD.unpack_dual`` of each output, through its C entry point as in :func:`_make_duals`."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return [tuple(fwAD.unpack_dual(out, level=level)) for out in outputs]
    return [torch._unpack_dual(out, level) for out in outputs]


def _forward_batched(
    func: Callable[..., object],
    inputs: tuple[Tensor, ...],
    v: tuple[Tensor, ...],
    create_graph: bool,
    strict: bool,
    attempt: _Attempt,
) -> tuple[bool, tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Forward mode with K directions: the primal once, the K tangents as one batch."""
    if create_graph or strict or attempt.record_graph or attempt.one_direction:
        # autograd's reverse graph does not compose with vmap: one direction at a time.
        return _one_direction_at_a_time(
            lambda tangents: _forward(func, inputs, tangents, create_graph, strict, attempt), v
        )
    primals = _dual_ready(tuple(x.detach() for x in inputs))
    versions = [x._version for x in primals]
    structure: list[bool] = []

    def ruled(*duals: Tensor) -> tuple[Tensor, ...]:
        rules = FastTangentRules(fwAD._current_level)
        with rules:
            raw_outputs = func(*duals)
        if rules.needs_autograd is not None:
            raise rules.needs_autograd.again()
        is_outputs_tuple, outputs = _as_tuple(raw_outputs, "outputs of the user-provided function")
        structure.append(is_outputs_tuple)
        return outputs

    def one_direction(*tangents: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        return torch.func.jvp(ruled, primals, tangents)

    with torch.no_grad():
        outputs, tangents = torch.func.vmap(one_direction, out_dims=(None, 0))(
            *(t.detach() for t in v)
        )
    _check_inputs_unmodified(primals, versions)
    return structure[0], outputs, tangents


def _one_direction_at_a_time(
    compute: Callable[[tuple[Tensor, ...]], tuple[bool, tuple[Tensor, ...], tuple[Tensor, ...]]],
    v: tuple[Tensor, ...],
) -> tuple[bool, tuple[Tensor, ...], tuple[Tensor, ...]]:
    """``compute`` along each direction, each from the same random state: the K directions are
    those of one function (one dropout mask), whose ``func_output`` is the first call's."""
    random_state = _RandomState()
    per_direction = []
    for k in range(v[0].size(0)):
        if k:
            random_state.restore()
        per_direction.append(compute(tuple(t[k] for t in v)))
    is_outputs_tuple, outputs, _ = per_direction[0]
    tangents = tuple(
        torch.stack([tangents[i] for _, _, tangents in per_direction]) for i in range(len(outputs))
    )
    return is_outputs_tuple, outputs, tangents


def _check_inputs_unmodified(primals: tuple[Tensor, ...], versions: list[int]) -> None:
    for i, (x, version) in enumerate(zip(primals, versions, strict=True)):
        if x._version != version:
            raise RuntimeError(
                f"The user-provided function modified input {i} in place, which jvp does not "
                "allow (torch.autograd.functional.jvp raises here too: a leaf Variable that "
                "requires grad is being used in an in-place operation). The tensor passed as "
                f"input {i} now holds the modified values."
            )


def _dual_ready(primals: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Primals that can carry a tangent: one whose elements may share memory (an expanded
    tensor, a stride of 0; sliding windows from ``unfold``) cannot, as its tangent is written in
    its layout, where the directions of the elements that share would overwrite each other; it
    is materialised."""
    # A contiguous tensor has no elements that share memory: checked first, in C.
    return tuple(x if x.is_contiguous() or not _may_overlap(x) else x.contiguous() for x in primals)


def _may_overlap(x: Tensor) -> bool:
    """False where no two elements of ``x`` can share memory: with the dimensions ordered by
    stride, each stride passes every offset the smaller ones reach (a stride of 0 never does)."""
    reach = 0
    for stride, size in sorted(zip(x.stride(), x.shape, strict=True)):
        if size > 1:
            if stride <= reach:
                return True
            reach += stride * (size - 1)
    return False


def _discard(_: Tensor) -> None:
    return None


def _discarded(_: None) -> Tensor:
    raise RuntimeError(_DISCARDED)


def _check_dependencies(outputs: tuple[Tensor, ...], inputs: tuple[Tensor, ...]) -> None:
    """Raise PyTorch's strict-mode errors for inputs no output depends on and vice versa.

    Walks the reverse graph from each output; an input is reached through its AccumulateGrad node
    (a leaf) or its own grad_fn (a view of a user tensor that requires grad, with create_graph).
    """
    leaf_index = {id(x): i for i, x in enumerate(inputs) if x.grad_fn is None}
    node_index = {id(x.grad_fn): i for i, x in enumerate(inputs) if x.grad_fn is not None}
    anchors = [x.grad_fn for x in inputs]  # keeps the nodes, so their ids stay unique
    reached: set[int] = set()
    output_reaches = []
    for out in outputs:
        found = _reachable_inputs(out, leaf_index, node_index, len(inputs))
        output_reaches.append(bool(found))
        reached |= found
    del anchors
    for i in range(len(inputs)):
        if i not in reached:
            raise RuntimeError(
                f"The output of the user-provided function is independent of input {i}. This is "
                "not allowed in strict mode."
            )
    for i, reaches in enumerate(output_reaches):
        if not reaches:
            _raise_independent_of_grad_output(i)


def _check_jacobian_dependence(
    outputs: tuple[Tensor, ...], primals: tuple[Tensor, ...], tangents: tuple[Tensor, ...]
) -> None:
    """Raise PyTorch's strict error for an output whose jvp does not depend on the inputs.

    The tangents' own graph cannot tell: forward-mode rules multiply the primal by zero tangents of
    constants (``2 * x`` has the tangent ``2 * v + 0 * x``), which links them structurally to the
    input. The reverse-of-reverse graph has no such links, so the check is made on it, as
    torch.autograd.functional.jvp does: twice the cost of a backward pass, only when both strict
    and create_graph are set.
    """
    _jvps_by_double_backward(outputs, primals, tangents, True, True, False)


def _reachable_inputs(
    out: Tensor, leaf_index: dict[int, int], node_index: dict[int, int], n_inputs: int
) -> set[int]:
    if id(out) in leaf_index:
        return {leaf_index[id(out)]}
    found: set[int] = set()
    seen: dict[int, object] = {}
    stack = [out.grad_fn]
    while stack and len(found) < n_inputs:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        if id(node) in node_index:
            found.add(node_index[id(node)])
            continue
        variable = getattr(node, "variable", None)
        if variable is not None:
            if id(variable) in leaf_index:
                found.add(leaf_index[id(variable)])
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


# --------------------------------------------------------------------------------------------
# Double backward: the trick torch.autograd.functional.jvp uses, with integer outputs allowed.


def _double_backward(
    func: Callable[..., object],
    inputs: tuple[Tensor, ...],
    v: tuple[Tensor, ...],
    create_graph: bool,
    strict: bool,
    batched: bool,
) -> tuple[bool, tuple[Tensor, ...], tuple[Tensor, ...]]:
    with torch.enable_grad():
        primals = _grad_preprocess(inputs, create_graph, need_graph=True)
        tangents = _grad_preprocess(v, create_graph, need_graph=False)
        is_outputs_tuple, outputs = _as_tuple(
            func(*primals), "outputs of the user-provided function"
        )
        if strict:
            _check_outputs_require_grad(outputs)
        jvps = _jvps_by_double_backward(outputs, primals, tangents, create_graph, strict, batched)
    if not create_graph:
        return is_outputs_tuple, tuple(o.detach() for o in outputs), jvps
    return is_outputs_tuple, outputs, jvps


def _jvps_by_double_backward(
    outputs: tuple[Tensor, ...],
    primals: tuple[Tensor, ...],
    tangents: tuple[Tensor, ...],
    create_graph: bool,
    strict: bool,
    batched: bool,
) -> tuple[Tensor, ...]:
    """J·v from the reverse graph of ``outputs``: the gradient of the vector-Jacobian product
    with respect to its (dummy) cotangents, along ``tangents``."""
    with torch.enable_grad():
        # The backward is linear in grad_outputs, so their value does not matter as long as the
        # backward is finite there: they are differentiated away below. Ones, not PyTorch's zeros:
        # some backward formulas take the log of grad_output (logcumsumexp) and give NaN at zero.
        differentiable = [i for i, out in enumerate(outputs) if out.requires_grad]
        grad_outputs = {i: torch.ones_like(outputs[i], requires_grad=True) for i in differentiable}
        if differentiable:
            grad_inputs = torch.autograd.grad(
                [outputs[i] for i in differentiable],
                primals,
                [grad_outputs[i] for i in differentiable],
                create_graph=True,
                allow_unused=True,
            )
        else:
            grad_inputs = (None,) * len(primals)
        if strict:
            for i, grad_input in enumerate(grad_inputs):
                if grad_input is None:
                    raise RuntimeError(
                        f"The output of the user-provided function is independent of input {i}. "
                        "This is not allowed in strict mode."
                    )
                if not grad_input.requires_grad:
                    raise RuntimeError(
                        f"The gradient with respect to input {i} is independent of the inputs of "
                        "the user-provided function. This is not allowed in strict mode."
                    )

        def second_backward(direction: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            used = [
                (g, t)
                for g, t in zip(grad_inputs, direction, strict=True)
                if g is not None and g.requires_grad
            ]
            by_output = {}
            if used:
                grad_results = torch.autograd.grad(
                    [g for g, _ in used],
                    [grad_outputs[i] for i in differentiable],
                    [t for _, t in used],
                    retain_graph=True,
                    create_graph=create_graph,
                    allow_unused=True,
                )
                by_output = dict(zip(differentiable, grad_results, strict=True))
            jvps = []
            for i, out in enumerate(outputs):
                tangent = by_output.get(i)
                if tangent is None:
                    if strict:
                        _raise_independent_of_grad_output(i)
                    tangent = torch.zeros_like(out)
                elif strict and create_graph and not tangent.requires_grad:
                    _raise_jacobian_independent(i)
                jvps.append(tangent)
            return tuple(jvps)

        if batched:
            # The primal and the first backward once; only the (linear) second backward per
            # direction.
            per_direction = [
                second_backward(tuple(t[k] for t in tangents)) for k in range(tangents[0].size(0))
            ]
            jvps = tuple(torch.stack(column) for column in zip(*per_direction, strict=True))
        else:
            jvps = second_backward(tangents)
    return jvps


# --------------------------------------------------------------------------------------------
# Shared by both methods.


def _grad_preprocess(
    tensors: tuple[Tensor, ...], create_graph: bool, need_graph: bool
) -> tuple[Tensor, ...]:
    """Fresh tensors for the call: attached to the caller's graph when it is to be extended."""
    return tuple(
        t.view_as(t) if create_graph and t.requires_grad else t.detach().requires_grad_(need_graph)
        for t in tensors
    )


def _check_outputs_require_grad(outputs: tuple[Tensor, ...]) -> None:
    for i, out in enumerate(outputs):
        if not out.requires_grad:
            raise RuntimeError(
                f"Output {i} of the user-provided function does not require gradients. The "
                "outputs must be computed in a differentiable manner from the input when running "
                "in strict mode."
            )


def _raise_independent_of_grad_output(i: int) -> None:
    raise RuntimeError(
        f"The gradient with respect to the input is independent of entry {i} in the "
        "grad_outputs when using the double backward trick to compute forward mode gradients. "
        "This is not allowed in strict mode."
    )


def _raise_jacobian_independent(i: int) -> None:
    raise RuntimeError(
        f"The jacobian of the user-provided function is independent of input {i}. This is not "
        f"allowed in strict mode when create_graph=True. (Here {i} indexes the output whose jvp "
        "does not depend on the inputs, as in torch.autograd.functional.jvp: a function linear "
        "in its inputs, for example.)"
    )
