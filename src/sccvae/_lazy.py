"""Lazy package attributes, so that ``sccvae --help`` does not import torch or anndata.

A package's ``__init__`` lists where each public name lives; the module holding it is
imported on first access (PEP 562), once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_attributes(package: str, names: Mapping[str, str]) -> tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose ``names`` map to submodules.

    ``names`` maps a public name to the submodule (relative, e.g. ``"._model"``) that defines
    it; a name mapped to itself with a leading dot (``"metrics": ".metrics"``) is a
    submodule.
    """

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(names[name], package)
        value = module if names[name] == f".{name}" else getattr(module, name)
        importlib.import_module(package).__dict__[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(names))

    return __getattr__, __dir__
