"""Lazy package exports (PEP 562): a package names its public objects and the submodule of
each, and a submodule is imported only when one of its names is first used, so light helpers do
not pull in Lightning or webdataset."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``<package>.<exports[name]>`` on
    first use of ``name`` and returns its attribute ``name``."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
