"""Nested values flattened to their leaves, with stable key paths, and rebuilt from new leaves.

This is the one place in jvpcli that walks nested inputs and outputs. ``torch.utils._pytree`` does
most of the work: tuples, lists, dicts, ``OrderedDict`` and ``defaultdict``, namedtuples (keyed by
field name) and every type registered with it, transformers' ``ModelOutput`` among them (keyed by
its field names; a ``ModelOutput`` holds no None fields, so they do not appear). Added here is what
it lacks:

- dataclass instances, keyed by field name and rebuilt as copies of the original with the new field
  values (``__init__`` and ``__post_init__`` are not run again, so the rebuilt value holds exactly
  the leaves it was given);
- Mappings that torch does not register (a dict subclass, ``UserDict``, transformers'
  ``BatchEncoding``), keyed like a dict and rebuilt by calling their type on a dict;
- transformers' caches (``DynamicCache`` and the other ``Cache`` classes) stay whole, even in
  versions of transformers that register them: they are state, not values to differentiate.

Every other object (a Tensor, None, a number, a string, any unregistered object) is a leaf.
A path is a tuple of ``torch.utils._pytree`` key entries: ``MappingKey`` for dict keys and
``ModelOutput`` fields, ``SequenceKey`` for sequence indices, ``GetAttrKey`` for namedtuple and
dataclass fields. The whole tree, when it is a leaf itself, has the empty path.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch.utils._pytree as pytree

__all__ = ["KeyPath", "TreeSpec", "dotted", "flatten", "keystr"]

KeyPath = tuple[pytree.KeyEntry, ...]
"""Where a leaf sits in its tree: the keys that lead to it from the root."""


class TreeSpec:
    """The structure of a flattened tree: rebuilds a tree of that structure from new leaves.

    Made by :func:`flatten`; its leaves are those :func:`flatten` returned, in that order.
    """

    __slots__ = ("_nodes", "_torch_spec", "num_leaves")

    def __init__(self, torch_spec: pytree.TreeSpec, nodes: tuple[_Node | None, ...]) -> None:
        self._torch_spec = torch_spec
        self._nodes = nodes  # one per leaf of torch_spec: None, or a node torch does not know
        self.num_leaves: int = sum(1 if n is None else n.content.num_leaves for n in nodes)
        """How many leaves the tree has."""

    def unflatten(self, leaves: Sequence[Any]) -> Any:
        """The tree of this structure whose leaves are ``leaves`` (in :func:`flatten`'s order).

        Raises:
            ValueError: ``leaves`` does not hold exactly :attr:`num_leaves` values.
        """
        if len(leaves) != self.num_leaves:
            raise ValueError(
                f"this tree has {self.num_leaves} leaves but {len(leaves)} values were given."
            )
        torch_leaves = []
        position = 0
        for node in self._nodes:
            if node is None:
                torch_leaves.append(leaves[position])
                position += 1
            else:
                count = node.content.num_leaves
                content = node.content.unflatten(leaves[position : position + count])
                torch_leaves.append(node.rebuild(content))
                position += count
        return pytree.tree_unflatten(torch_leaves, self._torch_spec)


@dataclasses.dataclass(frozen=True)
class _Node:
    """A dataclass or an unregistered Mapping: its content as a dict, and how to rebuild it."""

    content: TreeSpec
    rebuild: Callable[[dict], Any]
    key: Callable[[Any], pytree.KeyEntry]


def flatten(tree: Any) -> tuple[list[tuple[KeyPath, Any]], TreeSpec]:
    """Flatten ``tree`` into its leaves, each with its path.

    Args:
        tree: any value: containers (see the module's doc) are descended into, everything else
            is a leaf.

    Returns:
        ``(leaves, spec)``: the ``(path, leaf)`` pairs in a stable order (sequences by index,
        mappings and fields in their own order), and the :class:`TreeSpec` that rebuilds a tree
        of the same structure from new leaves.
    """
    torch_leaves, torch_spec = pytree.tree_flatten_with_path(tree, is_leaf=_stops_torch)
    leaves: list[tuple[KeyPath, Any]] = []
    nodes: list[_Node | None] = []
    for path, leaf in torch_leaves:
        node = _own_node(leaf)
        if node is None:
            leaves.append((path, leaf))
            nodes.append(None)
            continue
        content, rebuild, key = node
        content_leaves, content_spec = flatten(content)
        for content_path, value in content_leaves:
            first, *rest = content_path
            leaves.append(((*path, key(first.key), *rest), value))
        nodes.append(_Node(content_spec, rebuild, key))
    return leaves, TreeSpec(torch_spec, tuple(nodes))


def dotted(path: KeyPath) -> str:
    """``path`` as a dotted string: ``logits``, ``hidden_states.2``, ``0.mean``; ``""`` for the
    root. Dict keys appear as ``str`` of the key, indices as numbers, fields by name."""
    return ".".join(str(_key_value(key)) for key in path)


def keystr(path: KeyPath) -> str:
    """``path`` as Python would index it: ``[0]['a'].mean``; ``""`` for the root."""
    return pytree.keystr(path)


def _key_value(key: pytree.KeyEntry) -> Any:
    if isinstance(key, pytree.MappingKey):
        return key.key
    if isinstance(key, pytree.SequenceKey):
        return key.idx
    if isinstance(key, pytree.GetAttrKey):
        return key.name
    return key


def _stops_torch(value: Any) -> bool:
    """Whether torch's flattening must stop at ``value``: an opaque object, or one of ours."""
    return _is_opaque(value) or _node_kind(value) is not None


def _is_opaque(value: Any) -> bool:
    # transformers' caches, by their base class, without importing transformers.
    return any(
        cls.__name__ == "Cache" and cls.__module__.startswith("transformers.")
        for cls in type(value).__mro__
    )


def _node_kind(value: Any) -> str | None:
    if type(value) in pytree.SUPPORTED_NODES or _is_opaque(value):
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return "dataclass"
    if isinstance(value, Mapping) and not isinstance(value, tuple):
        return "mapping"
    return None


def _own_node(
    value: Any,
) -> tuple[dict, Callable[[dict], Any], Callable[[Any], pytree.KeyEntry]] | None:
    """For a node torch does not flatten: its content as a dict, how to rebuild it from that
    dict, and the key entry of its content's keys."""
    kind = _node_kind(value)
    if kind == "dataclass":
        content = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return content, _dataclass_rebuilder(value), pytree.GetAttrKey
    if kind == "mapping":
        return dict(value), type(value), pytree.MappingKey
    return None


def _dataclass_rebuilder(template: Any) -> Callable[[dict], Any]:
    def rebuild(fields: dict) -> Any:
        rebuilt = copy.copy(template)
        for name, field_value in fields.items():
            object.__setattr__(rebuilt, name, field_value)  # frozen dataclasses too
        return rebuilt

    return rebuild
