"""Lazy re-exports for package ``__init__`` modules (PEP 562).

``from meddiff_cli.sample import sample_volumes`` keeps working, but importing the package (which Python
does before any of its submodules, e.g. the light ``sample.options`` the CLI reads its defaults from) no
longer imports torch or MONAI: a name's module is imported the first time the name is looked up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, modules: dict[str, list[str]]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``: ``modules`` maps a submodule name to the names it exports."""
    owner = {name: f"{package}.{module}" for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in owner:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(owner[name]), name)

    def __dir__() -> list[str]:
        return sorted(owner)

    return __getattr__, __dir__, sorted(owner)
