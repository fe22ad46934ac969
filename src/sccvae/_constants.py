"""Registry keys and defaults shared across the package."""

from __future__ import annotations

from typing import NamedTuple


class _RegistryKeys(NamedTuple):
    X_KEY: str = "X"
    PERTURBATION_KEY: str = "perturbation"


REGISTRY_KEYS = _RegistryKeys()
