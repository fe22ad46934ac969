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

#: The paper's model (Zhang, Liu & Uhler 2025): abstract latent nodes, the softmax choice of
#: nodes from each target's embedding and the paper's loss weights. SCCVAE's defaults are
#: those of gene nodes, chosen on validation screens; ``SCCVAE(adata, **PAPER_MODEL)`` and
#: ``model.train(**PAPER_TRAINING)`` give the paper's settings.
PAPER_MODEL: dict[str, float | int | str] = {
    "latent_nodes": "abstract",
    "n_layers": 2,
    "mmd_weight": 10.0,
    "mean_weight": 0.0,
    "control_reconstruction_weight": 0.25,
    "perturbation_encoder": "softmax",
}
#: The paper's training settings (see :data:`PAPER_MODEL`).
PAPER_TRAINING: dict = {"batch_size": 32, "plan_kwargs": {"lr": 1e-3, "max_kl_weight": 1.0}}

#: Optimiser steps the default number of epochs aims at (chosen on validation screens).
DEFAULT_TRAINING_STEPS = 3000
