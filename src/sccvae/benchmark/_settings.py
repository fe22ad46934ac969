"""What a benchmark run decides once and every fold and method reads: :class:`RunSettings`.

The arguments it is made from are checked in :mod:`sccvae.benchmark._arguments`, which also
writes the run's record (``config.json``). Data only: the methods read these settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ._result import HEADLINE_METRICS

#: SCCVAE likelihoods a run can choose (``None``: ``"nb"`` on counts, else ``"gaussian"``).
LIKELIHOODS = ("nb", "gaussian")

#: Metrics reported by default (table, summary.md), in this order.
KEY_METRICS: tuple[str, ...] = (
    *HEADLINE_METRICS,
    "mae_all",
    "direction_accuracy_de",
    "pearson_delta_pertmean_all",
    "energy_distance",
    "rank",
    "mse_all",
    "pearson_means_all",
    "direction_accuracy_all",
)


@dataclass(frozen=True)
class RunSettings:
    """Everything a benchmark run decides once and every fold and method reads."""

    perturbation_key: str
    control_label: str
    combination_delimiter: str
    split: str
    methods: tuple[str, ...]
    reference: str
    seed: int
    max_epochs: int | None
    n_cells: int
    n_de_genes: int
    metrics: tuple[str, ...]
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    train_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: gene embedding for the baselines that take one (a user DataFrame, or one-hot when
    #: targets are not measured); None: their coexpression default
    target_embedding: pd.DataFrame | None = None
    #: every measured perturbation target of the data (names only): SCCVAE makes them
    #: latent nodes, as a user makes the genes they will predict nodes (``node_genes``)
    measured_targets: tuple[str, ...] = ()
    #: SCCVAE's likelihood: "nb" (raw counts of ``layers[counts_layer]``) or "gaussian" (X)
    likelihood: str = "gaussian"
    #: layer of the folds' AnnData holding the raw counts ("nb"); None: no counts kept
    counts_layer: str | None = None
    #: SCCVAE variants are trained with seeds seed, seed + 1, ..., seed + n_seeds - 1
    n_seeds: int = 1

    @property
    def sccvae_seeds(self) -> tuple[int, ...]:
        """Seeds of every SCCVAE variant (the data, splits and baselines keep ``seed``)."""
        return tuple(self.seed + i for i in range(self.n_seeds))
