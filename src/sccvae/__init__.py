"""sccvae: single-cell causal VAE for predicting seen and unseen genetic perturbations."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from . import baselines, data, metrics, pl, splits
from ._dataloading import PairedPerturbationSampler, PerturbationDataSplitter
from ._interpretation import module_recovery_score, perturbation_modules, pseudobulk_modules
from ._model import SCCVAE
from ._module import SCCVAEModule
from ._scm import LatentSCM, build_graph_mask
from ._training_plan import SCCVAETrainingPlan

try:
    __version__ = version("sccvae")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

logger = logging.getLogger(__name__)

__all__ = [
    "SCCVAE",
    "baselines",
    "data",
    "metrics",
    "pl",
    "splits",
    "module_recovery_score",
    "perturbation_modules",
    "pseudobulk_modules",
    "SCCVAEModule",
    "SCCVAETrainingPlan",
    "LatentSCM",
    "PairedPerturbationSampler",
    "PerturbationDataSplitter",
    "build_graph_mask",
    "__version__",
]
