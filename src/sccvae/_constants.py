"""Registry keys and defaults shared across the package."""

from __future__ import annotations

from typing import NamedTuple


class _RegistryKeys(NamedTuple):
    X_KEY: str = "X"
    PERTURBATION_KEY: str = "perturbation"


REGISTRY_KEYS = _RegistryKeys()

#: Below this many parameters, training on the CPU uses one torch thread by default: the
#: operations are too small to gain from threads, and threads that wait on a busy core slow
#: every step down (see ``benchmarks/threads_under_load.py``).
SMALL_MODEL_PARAMETERS = 5_000_000

#: Defaults that depend on the kind of latent nodes. Gene nodes: chosen on validation screens
#: (``benchmarks/ablations.py``, simulated with another seed than the benchmark's); abstract
#: nodes: the paper's settings, kept for comparison.
MODEL_DEFAULTS: dict[str, dict[str, float | str]] = {
    "genes": {
        "n_hidden": 512,
        "n_layers": 1,
        "mmd_weight": 0.0,
        "mean_weight": 10.0,
        "control_reconstruction_weight": 16.0,
        "perturbation_encoder": "direction",
    },
    "abstract": {
        "n_hidden": 512,
        "n_layers": 2,
        "mmd_weight": 10.0,
        "mean_weight": 0.0,
        "control_reconstruction_weight": 0.25,
        "perturbation_encoder": "softmax",
    },
}
#: Training defaults (:meth:`SCCVAE.train`) per kind of latent nodes.
#: Optimiser steps the default number of epochs aims at (chosen on validation screens).
DEFAULT_TRAINING_STEPS = 3000
TRAIN_DEFAULTS: dict[str, dict[str, float]] = {
    "genes": {"batch_size": 64, "lr": 2e-3, "max_kl_weight": 0.1},
    "abstract": {"batch_size": 32, "lr": 1e-3, "max_kl_weight": 1.0},
}
