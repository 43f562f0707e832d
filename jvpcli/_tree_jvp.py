"""``jvp_tree``: Jacobian-vector products of functions of nested inputs, outputs and parameters.

The engine (:mod:`jvpcli.engine`) takes a Tensor or a tuple of Tensors in and out. ``jvp_tree``
takes what models take and return: positional and keyword arguments holding nested containers,
dataclasses and ``ModelOutput`` objects, with integer token ids, masks and other constants among
them, and a module's own parameters. The tensors that get a tangent become the engine's flat
inputs; everything else is passed through as given; the output is flattened (once per call of the
function, which the engine may call more than once) and its tensor leaves become the engine's
outputs, rebuilt into the output's structure afterwards. Flattening lives in :mod:`jvpcli._pytree`.
This module imports only torch and jvpcli's engine; it knows nothing of files, configs or
terminals.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from jvpcli import _pytree
from jvpcli.engine import CompiledCall, JvpInfo, outside_compilers, run_jvp

__all__ = ["OutputLeaf", "TreeJvpResult", "jvp_tree"]


@dataclass(frozen=True)
class OutputLeaf:
    """One tensor of the output and its tangent.

    Attributes:
        path: where the tensor sits in the output, dotted (``logits``, ``hidden_states.2``,
            ``0.mean``); ``""`` when the output is a bare Tensor.
        output: the tensor (detached unless ``create_graph``).
        tangent: its tangent J·v (with ``batched_v``, one per direction along the first dimension);
            zeros for an integer or bool tensor.
    """

    path: str
    output: Tensor
    tangent: Tensor


@dataclass(frozen=True)
class TreeJvpResult:
    """What :func:`jvp_tree` returns.

    Attributes:
        func_output: what ``func`` returned, in its structure; its tensor leaves are detached
            unless ``create_graph``, its other leaves are the objects ``func`` returned. With
            ``outputs``, a dict of the kept tensor leaves by dotted path instead.
        jvp: the same structure with each tensor leaf replaced by its tangent and every other leaf
            (None, a number, a cache object) by None; with ``outputs``, a dict like
            ``func_output``.
        info: how the engine computed the product (:class:`jvpcli.JvpInfo`).
        leaves: the output's tensor leaves with their paths and tangents, in the output's order.
        dropped: ``(dotted path, type name)`` of each output leaf that is not a tensor and so has
            no tangent.
    """

    func_output: Any
    jvp: Any
    info: JvpInfo
    leaves: tuple[OutputLeaf, ...]
    dropped: tuple[tuple[str, str], ...]


@outside_compilers("jvp_tree")
def jvp_tree(
    func: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    tangents: Sequence[Any] | None = None,
    kwarg_tangents: Mapping[str, Any] | None = None,
    param_tangents: Mapping[str, Tensor] | None = None,
    create_graph: bool = False,
    strict: bool = False,
    method: str = "auto",
    batched_v: bool = False,
    outputs: Sequence[str] | None = None,
    compile: bool | str | Callable[..., Any] = False,
) -> TreeJvpResult:
    """Compute the Jacobian-vector product of ``func(*args, **kwargs)`` along the given tangents.

    The differentiated values are the tensor leaves of ``args`` and ``kwargs`` that are given a
    tangent, and the parameters named in ``param_tangents``; every other value (integer token ids,
    bool masks, None, numbers, any object) is passed to ``func`` as given and held constant.
    Nested values are containers as :mod:`jvpcli._pytree` describes them: tuples, lists, dicts and
    other Mappings, namedtuples, dataclasses, transformers' ``ModelOutput``.

    Args:
        func: the function: any callable, called as ``func(*args, **kwargs)``; an ``nn.Module``
            when ``param_tangents`` is given. It may return any nested value; its tensor leaves
            are differentiated, its other leaves are reported in ``dropped``.
        args: the positional arguments, each any nested value.
        kwargs: the keyword arguments, each any nested value.
        tangents: one entry per positional argument, with that argument's structure, each tensor
            leaf of floating point or complex dtype replaced by its tangent (same size, dtype and
            device). A None, in place of a leaf or of a whole subtree, holds it constant; leaves
            that are not tensors, and integer or bool tensors, must get None.
        kwarg_tangents: tangents for some of ``kwargs``, by name, each with its keyword
            argument's structure as for ``tangents``; keyword arguments not named are constant.
        param_tangents: tangents for parameters (and floating point buffers) of ``func``, an
            ``nn.Module``, by their ``state_dict`` names; the others stay constant. Tied weights
            stay tied: a tangent for one name is the tangent of every name it is tied to. None for
            a name holds it constant.
        create_graph: if True, the results are differentiable with respect to the differentiated
            values and their tangents (as in :func:`torch.autograd.functional.jvp`).
        strict: if True, raise RuntimeError when an output tensor does not depend on the
            differentiated values or a differentiated value influences no output (the constants do
            not count); if False, independent outputs get a zero tangent.
        method: "auto", "forward" or "double-backward", as in :func:`jvpcli.jvp`.
        batched_v: if True, every tangent has a leading dimension of K directions (the size
            ``(K, *primal.size())``, the same K throughout), and so has every output tangent.
        outputs: keep only the output leaves at these dotted paths (``logits``,
            ``hidden_states.2``; a path keeps every leaf below it); the others are neither
            differentiated nor returned, and ``strict`` ignores them. ``None``: every leaf.
            Integer and bool output tensors get a zero tangent and are exempt from ``strict``
            (they cannot depend differentiably on anything).
        compile: compile the forward method, as in :func:`jvpcli.jvp` (cached per ``func``,
            flags and the differentiated values' sizes, dtypes and devices).

    Returns:
        A :class:`TreeJvpResult`: the output and its tangent in the output's structure, each
        output tensor with its path and tangent, the non-tensor output leaves, and how the
        product was computed.

        When no tangent is given at all (``tangents``, ``kwarg_tangents`` and ``param_tangents``
        all None) and ``args`` and ``kwargs`` hold exactly one floating point tensor, with a single
        element, its tangent is 1 (the rule of :func:`torch.autograd.functional.jvp` for
        ``v=None``).

    Raises:
        TypeError: ``args`` or ``tangents`` is not a sequence, ``kwargs`` or ``kwarg_tangents``
            not a mapping; a tangent is not a Tensor (or None); a tangent is given for a leaf that
            is not a tensor, or for an integer or bool tensor; ``param_tangents`` is given and
            ``func`` is not an ``nn.Module``.
        ValueError: a tangent's structure does not match its argument's; ``kwarg_tangents`` or
            ``param_tangents`` names something that does not exist; nothing is differentiated;
            ``method`` is not one of :data:`jvpcli.METHODS`.
        RuntimeError: a tangent's size, dtype or device differs from its primal's (with
            ``batched_v``: is not ``(K, *primal.size())`` with one K); a strict-mode violation;
            ``func`` modified a differentiated value in place.
        Exception: whatever ``func`` raises propagates unchanged.
    """
    args, kwargs = _check_arguments(args, kwargs, tangents, kwarg_tangents)
    inputs = _bind_input_tangents(args, kwargs, tangents, kwarg_tangents)
    params = _bind_param_tangents(func, param_tangents)
    primals = [p for argument in inputs for p in argument.primals] + [p for _, p, _ in params]
    directions = [t for argument in inputs for t in argument.tangents] + [t for *_, t in params]
    labels = [label for argument in inputs for label in argument.labels]
    labels += [f"param_tangents[{name!r}]" for name, *_ in params]
    if not primals:
        if tangents is not None or kwarg_tangents is not None or param_tangents is not None:
            raise ValueError(
                "jvp_tree got no tangent for any tensor (the tangents given are all None or "
                "empty): nothing is differentiated. Give a tangent for at least one floating point "
                "tensor."
            )
        inputs = _default_direction(args, kwargs, batched_v)
        primals = list(inputs[0].primals)
        directions = list(inputs[0].tangents)
    else:
        _check_directions(primals, directions, labels, batched_v)

    # The structure of func's output, from its latest call (fallbacks call it again), with the
    # tensors left out: the engine returns them, and the raw ones may hold a reverse graph.
    output_structure: list[tuple[list[tuple[_pytree.KeyPath, Any]], _pytree.TreeSpec]] = []
    param_names = [name for name, *_ in params]

    def call(*flat: Tensor) -> Any:
        call_args = list(args)
        call_kwargs = dict(kwargs)
        position = 0
        for argument in inputs:
            count = len(argument.primals)
            value = argument.rebuild(flat[position : position + count])
            position += count
            if isinstance(argument.key, int):
                call_args[argument.key] = value
            else:
                call_kwargs[argument.key] = value
        if param_names:
            return torch.func.functional_call(
                func,
                dict(zip(param_names, flat[position:], strict=True)),
                tuple(call_args),
                call_kwargs,
                strict=False,
            )
        return func(*call_args, **call_kwargs)

    def record(raw: Any) -> tuple[list[int], tuple[Tensor, ...]]:
        """Record the structure of ``raw``, an output; the positions among its leaves of the
        tensors the engine differentiates, and those tensors."""
        leaves, spec = _pytree.flatten(raw)
        kept = _kept(leaves, outputs)
        structure: list[tuple[_pytree.KeyPath, Any]] = []
        positions: list[int] = []
        differentiable: list[Tensor] = []
        for position, (path, leaf) in enumerate(kept):
            if isinstance(leaf, Tensor) and (strict and not _is_differentiable(leaf)):
                # Strict mode would call an integer output a violation: it bypasses the engine.
                structure.append((path, _Constant(leaf.detach())))
            elif isinstance(leaf, Tensor):
                structure.append((path, _TENSOR))
                positions.append(position)
                differentiable.append(leaf)
            else:
                structure.append((path, leaf))
        output_structure[:] = [(structure, spec, len(leaves) != len(kept))]
        return positions, tuple(differentiable)

    def flat_func(*flat: Tensor) -> tuple[Tensor, ...]:
        return record(call(*flat))[1]

    def select(raw: Any, raw_tangents: Any) -> tuple[bool, tuple[Tensor, ...], tuple[Tensor, ...]]:
        positions, differentiable = record(raw)
        tangent_leaves = _kept(_pytree.flatten(raw_tangents)[0], None)
        output_paths = [path for path, _ in _kept(_pytree.flatten(raw)[0], outputs)]
        by_path = dict(tangent_leaves)
        if any(output_paths[i] not in by_path for i in positions):
            # A container torch's pytrees do not know (a dataclass): its tensors left the
            # compiled function as they were, and their tangents with them.
            raise RuntimeError(
                "the output holds tensors in a container the compiled function cannot unpack"
            )
        tangents_out = tuple(by_path[output_paths[i]] for i in positions)
        return True, differentiable, tangents_out

    result = run_jvp(
        flat_func,
        tuple(primals),
        tuple(directions),
        create_graph,
        strict,
        method=method,
        batched_v=batched_v,
        compile=compile,
        compiled=CompiledCall(call, func, select),
    )
    leaves, spec, selected = output_structure[0]
    count = directions[0].size(0) if batched_v else None
    return _rebuild(leaves, spec, result.func_output, result.jvp, result.info, selected, count)


def _kept(
    leaves: list[tuple[_pytree.KeyPath, Any]], outputs: Sequence[str] | None
) -> list[tuple[_pytree.KeyPath, Any]]:
    """The leaves at or below the ``outputs`` paths (all of them when ``None``)."""
    if outputs is None:
        return leaves
    dotted = [_pytree.dotted(path) for path, _ in leaves]
    unknown = [w for w in outputs if not any(_below(d, w) for d in dotted)]
    if unknown:
        real = [d or "(the output itself)" for d, (_, leaf) in zip(dotted, leaves, strict=True)]
        more = f" and {len(real) - 12} more" if len(real) > 12 else ""
        raise ValueError(
            f"outputs names {', '.join(repr(u) for u in unknown)}, which the output does not "
            f"have. Its leaves are: {', '.join(real[:12])}{more}."
        )
    return [
        leaf for d, leaf in zip(dotted, leaves, strict=True) if any(_below(d, w) for w in outputs)
    ]


def _below(path: str, wanted: str) -> bool:
    return path == wanted or path.startswith(wanted + ".")


def _is_differentiable(tensor: Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


@dataclass(frozen=True)
class _Constant:
    """An integer output tensor, kept out of the engine: its tangent is zero."""

    tensor: Tensor


# --------------------------------------------------------------------------------------------
# Binding tangents to their primals.


@dataclass(frozen=True)
class _Argument:
    """A positional or keyword argument with at least one differentiated tensor leaf."""

    key: int | str  # its index in args, or its name in kwargs
    leaves: tuple[Any, ...]  # all its leaves, as given
    spec: _pytree.TreeSpec
    differentiated: tuple[int, ...]  # which leaves have a tangent
    tangents: tuple[Tensor, ...]  # theirs, in that order
    labels: tuple[str, ...]  # how errors name them: "tangents[0]['a']"

    @property
    def primals(self) -> tuple[Tensor, ...]:
        return tuple(self.leaves[i] for i in self.differentiated)

    def rebuild(self, values: Sequence[Tensor]) -> Any:
        """The argument with its differentiated leaves replaced by ``values``."""
        leaves = list(self.leaves)
        for i, value in zip(self.differentiated, values, strict=True):
            leaves[i] = value
        return self.spec.unflatten(leaves)


def _check_arguments(
    args: object, kwargs: object, tangents: object, kwarg_tangents: object
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    for name, value, kind in (
        ("args", args, "tuple or list"),
        ("tangents", tangents, "tuple or list"),
        ("kwargs", kwargs, "mapping"),
        ("kwarg_tangents", kwarg_tangents, "mapping"),
    ):
        if value is None and name != "args":
            continue
        if not isinstance(value, Mapping if kind == "mapping" else (tuple, list)):
            hint = "" if kind == "mapping" else " (for a single positional argument x: (x,))"
            raise TypeError(
                f"jvp_tree's {name} must be a {kind}{hint}, but got {type(value).__name__}."
            )
    args = tuple(args)
    if tangents is not None and len(tangents) != len(args):
        raise ValueError(
            f"jvp_tree's tangents must have one entry per positional argument: args has "
            f"{len(args)} but tangents has {len(tangents)} (None holds an argument constant)."
        )
    return args, dict(kwargs or {})


def _bind_input_tangents(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    tangents: Sequence[Any] | None,
    kwarg_tangents: Mapping[str, Any] | None,
) -> list[_Argument]:
    unknown = set(kwarg_tangents or {}) - set(kwargs)
    if unknown:
        name = sorted(unknown, key=str)[0]
        raise ValueError(
            f"jvp_tree's kwarg_tangents names {name!r}, which is not one of kwargs' names"
            + _known_names(name, kwargs)
        )
    bound = []
    pairs: list[tuple[int | str, Any, Any]] = [
        (i, arg, None if tangents is None else tangents[i]) for i, arg in enumerate(args)
    ]
    pairs += [(name, kwargs[name], tangent) for name, tangent in (kwarg_tangents or {}).items()]
    for key, primal, tangent in pairs:
        if tangent is None:
            continue
        if isinstance(key, int):
            primal_label, tangent_label = f"args[{key}]", f"tangents[{key}]"
        else:
            primal_label, tangent_label = f"kwargs[{key!r}]", f"kwarg_tangents[{key!r}]"
        argument = _match(key, primal, tangent, primal_label, tangent_label)
        if argument.differentiated:
            bound.append(argument)
    return bound


def _match(
    key: int | str, primal: Any, tangent: Any, primal_label: str, tangent_label: str
) -> _Argument:
    """Pair the tensor leaves of ``primal`` with those of ``tangent``, a tree of its structure
    in which a None stands for a leaf or a whole subtree held constant."""
    primal_leaves, spec = _pytree.flatten(primal)
    tangent_leaves, _ = _pytree.flatten(tangent)
    index = {path: i for i, (path, _) in enumerate(primal_leaves)}
    covered: set[int] = set()
    differentiated = []
    for path, value in tangent_leaves:
        where = _pytree.keystr(path)
        below = [i for i, (p, _) in enumerate(primal_leaves) if p[: len(path)] == path]
        if value is None:
            if not below:
                raise ValueError(_no_counterpart(tangent_label + where, primal, primal_leaves))
            covered.update(below)
            continue
        if path not in index:
            if below:
                raise ValueError(
                    f"jvp_tree's {tangent_label}{where} is a {type(value).__name__}, but "
                    f"{primal_label}{where} is a container: the tangent must have its structure, "
                    "or be None to hold all of it constant."
                )
            raise ValueError(_no_counterpart(tangent_label + where, primal, primal_leaves))
        i = index[path]
        covered.add(i)
        primal_leaf = primal_leaves[i][1]
        if not isinstance(primal_leaf, Tensor):
            raise TypeError(
                f"jvp_tree got a tangent at {tangent_label}{where}, but {primal_label}{where} is "
                f"not a Tensor (it is a {type(primal_leaf).__name__}): only tensors are "
                "differentiated; give None there."
            )
        if not isinstance(value, Tensor):
            raise TypeError(
                f"jvp_tree's {tangent_label}{where} must be a Tensor or None, but got "
                f"{type(value).__name__}."
            )
        if not (primal_leaf.is_floating_point() or primal_leaf.is_complex()):
            raise TypeError(
                f"jvp_tree got a tangent at {tangent_label}{where}, but {primal_label}{where} has "
                f"dtype {primal_leaf.dtype}: only floating point and complex tensors are "
                "differentiated. Give None there to hold it constant."
            )
        differentiated.append((i, value, tangent_label + where))
    missing = [i for i in range(len(primal_leaves)) if i not in covered]
    if missing:
        where = _pytree.keystr(primal_leaves[missing[0]][0])
        raise ValueError(
            f"jvp_tree's {tangent_label} does not match the structure of {primal_label}: it has "
            f"nothing at {where or 'the root'} (give None there to hold it constant)."
        )
    differentiated.sort()
    return _Argument(
        key,
        tuple(leaf for _, leaf in primal_leaves),
        spec,
        tuple(i for i, _, _ in differentiated),
        tuple(t for _, t, _ in differentiated),
        tuple(label for *_, label in differentiated),
    )


def _no_counterpart(
    tangent_where: str, primal: Any, primal_leaves: list[tuple[_pytree.KeyPath, Any]]
) -> str:
    paths = ", ".join(_pytree.keystr(p) or "the root" for p, _ in primal_leaves[:6])
    more = ", ..." if len(primal_leaves) > 6 else ""
    return (
        f"jvp_tree's {tangent_where} has no counterpart in its argument (a "
        f"{type(primal).__name__} whose leaves are at {paths or 'nowhere'}{more}): a tangent must "
        "have the structure of its argument."
    )


def _bind_param_tangents(
    func: Callable[..., Any], param_tangents: Mapping[str, Tensor] | None
) -> list[tuple[str, Tensor, Tensor]]:
    """``(name, parameter, tangent)`` for each parameter given a tangent."""
    if param_tangents is None:
        return []
    if not isinstance(func, torch.nn.Module):
        raise TypeError(
            "jvp_tree got param_tangents, which are tangents for the parameters of an nn.Module, "
            f"but func is a {type(func).__name__}, not an nn.Module."
        )
    if not isinstance(param_tangents, Mapping):
        raise TypeError(
            "jvp_tree's param_tangents must be a mapping from parameter names to tensors, but got "
            f"{type(param_tangents).__name__}."
        )
    tensors = dict(func.named_parameters(remove_duplicate=False))
    tensors.update(func.named_buffers(remove_duplicate=False))
    bound = []
    for name, tangent in param_tangents.items():
        if name not in tensors:
            raise ValueError(
                f"jvp_tree's param_tangents names {name!r}, which is not a parameter or buffer "
                f"of the {type(func).__name__}" + _known_names(name, tensors)
            )
        if tangent is None:
            continue
        if not isinstance(tangent, Tensor):
            raise TypeError(
                f"jvp_tree's param_tangents[{name!r}] must be a Tensor or None, but got "
                f"{type(tangent).__name__}."
            )
        primal = tensors[name]
        if not (primal.is_floating_point() or primal.is_complex()):
            raise TypeError(
                f"jvp_tree got param_tangents[{name!r}], but that buffer has dtype {primal.dtype}: "
                "only floating point and complex tensors are differentiated. Leave it out to hold "
                "it constant."
            )
        bound.append((name, primal, tangent))
    for i, (name, primal, _) in enumerate(bound):
        for other, other_primal, _ in bound[:i]:
            if primal is other_primal:
                raise ValueError(
                    f"jvp_tree's param_tangents names both {other!r} and {name!r}, which are tied "
                    "(one tensor): give the tangent under one of the names, it applies to both."
                )
    return bound


def _known_names(name: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    listed = ", ".join(repr(k) for k in list(known)[:8])
    return f" (they are {listed}{', ...' if len(known) > 8 else ''})." if known else " (none)."


def _check_directions(
    primals: list[Tensor], directions: list[Tensor], labels: list[str], batched: bool
) -> None:
    count = directions[0].size(0) if batched and directions[0].dim() > 0 else None
    for primal, tangent, label in zip(primals, directions, labels, strict=True):
        if batched:
            expected = torch.Size([count or 1, *primal.size()])
            if tangent.size() != expected:
                raise RuntimeError(
                    f"jvp_tree's {label} has size {tangent.size()}, but with batched_v=True it "
                    f"must be (K, *{list(primal.size())}) with the same K throughout, i.e. "
                    f"{expected}."
                )
        elif tangent.size() != primal.size():
            raise RuntimeError(
                f"jvp_tree's {label} has size {tangent.size()}, but its primal has size "
                f"{primal.size()}: a tangent must have its primal's size."
            )
        if tangent.dtype != primal.dtype:
            raise RuntimeError(
                f"jvp_tree's {label} has dtype {tangent.dtype}, but its primal has dtype "
                f"{primal.dtype}: a tangent must have its primal's dtype."
            )
        if tangent.device != primal.device:
            raise RuntimeError(
                f"jvp_tree's {label} is on device {tangent.device}, but its primal is on "
                f"{primal.device}: a tangent must be on its primal's device."
            )


def _default_direction(
    args: tuple[Any, ...], kwargs: dict[str, Any], batched: bool
) -> list[_Argument]:
    """With no tangent given: 1 for the only floating point tensor, if it has one element."""
    candidates = []
    for key, value in [*enumerate(args), *kwargs.items()]:
        leaves, spec = _pytree.flatten(value)
        for i, (_, leaf) in enumerate(leaves):
            if isinstance(leaf, Tensor) and (leaf.is_floating_point() or leaf.is_complex()):
                candidates.append((key, leaves, spec, i))
    if len(candidates) != 1 or candidates[0][1][candidates[0][3]][1].nelement() != 1:
        raise ValueError(
            "jvp_tree got no tangents, so nothing is differentiated: give tangents, "
            "kwarg_tangents or param_tangents. (Without any, the tangent is 1 only when the "
            f"arguments hold a single floating point tensor with a single element; they hold "
            f"{len(candidates)} floating point tensors.)"
        )
    key, leaves, spec, i = candidates[0]
    primal = leaves[i][1]
    one = torch.ones_like(primal)
    return [
        _Argument(
            key,
            tuple(leaf for _, leaf in leaves),
            spec,
            (i,),
            (one.unsqueeze(0) if batched else one,),
            ("the default tangent",),
        )
    ]


# --------------------------------------------------------------------------------------------
# Rebuilding the output.

_TENSOR = object()  # stands for an output tensor in the recorded structure


def _rebuild(
    leaves: list[tuple[_pytree.KeyPath, Any]],  # _TENSOR for each of outputs, in order
    spec: _pytree.TreeSpec,
    outputs: tuple[Tensor, ...],
    tangents: tuple[Tensor, ...],
    info: JvpInfo,
    selected: bool,
    count: int | None,
) -> TreeJvpResult:
    output_values = iter(outputs)
    tangent_values = iter(tangents)
    rebuilt_outputs: list[Any] = []
    rebuilt_tangents: list[Any] = []
    tensor_leaves = []
    dropped = []
    for path, leaf in leaves:
        if leaf is _TENSOR or isinstance(leaf, _Constant):
            if leaf is _TENSOR:
                output, tangent = next(output_values), next(tangent_values)
            else:
                output = leaf.tensor
                shape = output.shape if count is None else (count, *output.shape)
                tangent = output.new_zeros(shape)
            rebuilt_outputs.append(output)
            rebuilt_tangents.append(tangent)
            tensor_leaves.append(OutputLeaf(_pytree.dotted(path), output, tangent))
        else:
            rebuilt_outputs.append(leaf)
            rebuilt_tangents.append(None)
            dropped.append((_pytree.dotted(path), type(leaf).__name__))
    if selected:
        # Only some leaves were kept: the structure cannot be rebuilt, the leaves say it all.
        return TreeJvpResult(
            {leaf.path: leaf.output for leaf in tensor_leaves},
            {leaf.path: leaf.tangent for leaf in tensor_leaves},
            info,
            tuple(tensor_leaves),
            tuple(dropped),
        )
    return TreeJvpResult(
        spec.unflatten(rebuilt_outputs),
        spec.unflatten(rebuilt_tangents),
        info,
        tuple(tensor_leaves),
        tuple(dropped),
    )
