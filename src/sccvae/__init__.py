"""sccvae: single-cell causal VAE for predicting seen and unseen genetic perturbations."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from ._lazy import lazy_attributes

# Public names and the modules defining them, imported on first use: `sccvae --help` and
# `import sccvae` stay fast, torch is imported when a model is.
_LAZY = {
    "baselines": ".baselines",
    "data": ".data",
    "metrics": ".metrics",
    "pl": ".pl",
    "splits": ".splits",
    "benchmark": ".benchmark",
    "PairedPerturbationSampler": ".train",
    "PerturbationDataSplitter": ".train",
    "module_recovery_score": ".model._functional_modules",
    "perturbation_modules": ".model._functional_modules",
    "pseudobulk_modules": ".model._functional_modules",
    "SCCVAE": ".model",
    "SCCVAEModule": ".module",
    "LatentSCM": ".module",
    "build_graph_mask": ".module",
    "SCCVAETrainingPlan": ".train",
    "coexpression_embedding": "._embedding",
    "PAPER_MODEL": "._constants",
    "PAPER_TRAINING": "._constants",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

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
    "coexpression_embedding",
    "PAPER_MODEL",
    "PAPER_TRAINING",
    "__version__",
]
