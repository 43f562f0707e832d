"""jvpcli: fast, faithful Jacobian-vector products of PyTorch functions and saved models.

The library API is :func:`jvp`, a drop-in replacement for ``torch.autograd.functional.jvp``,
:func:`jvp_with_info`, which also says how the product was computed, and :func:`jvp_tree`, for
functions of nested arguments and outputs and for a module's own parameters.

torch is imported lazily: importing :mod:`jvpcli` (which the command line does for ``--help``)
stays instant, and the engine loads on first use of one of its names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Fallback",
    "JvpInfo",
    "JvpResult",
    "OutputLeaf",
    "TreeJvpResult",
    "__version__",
    "jvp",
    "jvp_tree",
    "jvp_with_info",
]

_ENGINE_NAMES = frozenset({"METHODS", "Fallback", "JvpInfo", "JvpResult", "jvp", "jvp_with_info"})
_TREE_NAMES = frozenset({"OutputLeaf", "TreeJvpResult", "jvp_tree"})

if TYPE_CHECKING:
    from jvpcli._tree_jvp import OutputLeaf, TreeJvpResult, jvp_tree
    from jvpcli.engine import METHODS, Fallback, JvpInfo, JvpResult, jvp, jvp_with_info


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from jvpcli import engine as module
    elif name in _TREE_NAMES:
        from jvpcli import _tree_jvp as module
    else:
        raise AttributeError(f"module 'jvpcli' has no attribute {name!r}")
    value = globals()[name] = getattr(module, name)  # found directly from now on: no call
    return value
