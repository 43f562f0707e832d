"""jvpcli: fast, faithful Jacobian-vector products of PyTorch functions and saved models.

The library API is :func:`jvp`, a drop-in replacement for ``torch.autograd.functional.jvp``,
and :func:`jvp_with_info`, which also says how the product was computed.

torch is imported lazily: importing :mod:`jvpcli` (which the command line does for ``--help``)
stays instant, and the engine loads on first use of one of its names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["METHODS", "Fallback", "JvpInfo", "JvpResult", "__version__", "jvp", "jvp_with_info"]

_ENGINE_NAMES = frozenset({"METHODS", "Fallback", "JvpInfo", "JvpResult", "jvp", "jvp_with_info"})

if TYPE_CHECKING:
    from jvpcli.engine import METHODS, Fallback, JvpInfo, JvpResult, jvp, jvp_with_info


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from jvpcli import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'jvpcli' has no attribute {name!r}")
