"""What the hostile test files share (imported by them: pytest puts this folder on sys.path)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType


def forget_user_modules(folder: Path) -> None:
    """Drop the modules imported from ``folder`` (each test's helper.py is a module named
    "helper"), as a new process would not have them."""
    for name, module in list(sys.modules.items()):
        if not isinstance(module, ModuleType):
            continue
        # vars(), not getattr(): a test module's own __getattr__ may call sys.exit.
        namespace = vars(module)
        places = [namespace.get("__file__") or "", *(namespace.get("__path__") or ())]
        if any(str(place).startswith(str(folder)) for place in places):
            del sys.modules[name]
