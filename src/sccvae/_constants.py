"""Registry keys and defaults shared across the package."""

from __future__ import annotations

from typing import NamedTuple


class _RegistryKeys(NamedTuple):
    X_KEY: str = "X"
    PERTURBATION_KEY: str = "perturbation"


REGISTRY_KEYS = _RegistryKeys()

#: Adam's learning rate in :class:`~sccvae.SCCVAETrainingPlan` (the reference uses 5e-4 over
#: far more steps).
DEFAULT_LEARNING_RATE = 1e-3
