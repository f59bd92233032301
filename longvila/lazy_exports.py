"""Package attributes resolved on first use, so that importing one light submodule does not import its siblings.

``longvila.model`` would otherwise pull in transformers' model zoo for ``longvila.model.projector``, and
``longvila.eval`` the whole evaluation stack for a constant. A package lists which submodule defines each public
name; the returned ``__getattr__`` imports that submodule when the name is first read (PEP 562).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, by_module: Mapping[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for ``package``, whose submodule ``m`` defines every name in ``by_module[m]``."""
    home = {name: module for module, names in by_module.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{home[name]}"), name)

    return __getattr__, sorted(home)
