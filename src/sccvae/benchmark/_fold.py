"""One fold of a benchmark as the methods see it, and what the folds give.

:class:`Fold` holds the AnnData objects of one split (training, training cells, test) and
their designs; :class:`FoldScores` gathers the scores over the folds
(:mod:`sccvae.benchmark._scoring` fills it). Data only: the methods read a ``Fold``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from sccvae._perturbations import PerturbationDesign
from sccvae.splits import Split


@dataclass
class Fold:
    """One split of the data, as the methods see it."""

    index: int
    name: str
    split: Split
    #: training and validation cells (the models are set up on these only)
    training: AnnData
    #: positions of the training / validation cells within ``training``
    train_positions: np.ndarray
    validation_positions: np.ndarray
    #: training cells only: predictions start from their control cells, and the
    #: evaluation's control reference and PCA come from them
    train_cells: AnnData
    test: AnnData
    #: the designs of ``training``, ``train_cells`` and ``test``: subsets of the run's design
    training_design: PerturbationDesign
    train_cells_design: PerturbationDesign
    test_design: PerturbationDesign

    @classmethod
    def from_split(
        cls, index: int, split: Split, work: AnnData, design: PerturbationDesign
    ) -> Fold:
        """Cut the fold's AnnData objects (and their designs) out of the working copy."""
        keep = np.union1d(split.train_idx, split.validation_idx)
        return cls(
            index=index,
            name=split.name or f"split{index}",
            split=split,
            training=work[keep].copy(),
            train_positions=np.searchsorted(keep, split.train_idx),
            validation_positions=np.searchsorted(keep, split.validation_idx),
            train_cells=work[split.train_idx].copy(),
            test=split.subset(work, "test"),
            training_design=design.subset(keep),
            train_cells_design=design.subset(split.train_idx),
            test_design=design.subset(split.test_idx),
        )


@dataclass
class FoldScores:
    """What the folds of a run give, gathered over the folds."""

    #: one score table per method and fold (an SCCVAE variant's averaged over its seeds)
    rows: list[pd.DataFrame] = field(default_factory=list)
    #: the per-seed score tables of SCCVAE variants trained with several seeds
    seed_rows: list[pd.DataFrame] = field(default_factory=list)
    #: one record per fitted model that reports its training (SCCVAE's epochs, losses...)
    training_rows: list[dict[str, Any]] = field(default_factory=list)
    #: per method (and ``"observed"``), each fold's mean change of every test perturbation
    deltas: dict[str, list[pd.DataFrame]] = field(default_factory=dict)
