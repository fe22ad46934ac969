"""sccvae: single-cell causal VAE for predicting seen and unseen genetic perturbations."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sccvae")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

logger = logging.getLogger(__name__)

__all__ = ["__version__"]
