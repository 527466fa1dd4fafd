"""Package namespaces that import their modules on first use (PEP 562).

A package's ``__init__`` that imported everything it offers would load torch for a caller that only
wants a name table (the command line's ``--help``, the task registry): ``lazy_names`` gives it a
module-level ``__getattr__`` / ``__dir__`` that import a name's module when the name is first read.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["lazy_names"]


def lazy_names(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``names`` maps each exported name to its module."""
    pkg = importlib.import_module(package)

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        setattr(pkg, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(pkg)) | set(names))

    return __getattr__, __dir__
