"""What a benchmark run returns, and the error it raises on bad input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sccvae.splits import Split

from ._errors import BenchmarkInputError  # noqa: F401 - re-exported


@dataclass
class BenchmarkResult:
    """Outcome of :func:`run_benchmark`.

    Attributes
    ----------
    results
        One row per (method, fold, test perturbation): columns ``method``, ``fold``,
        ``perturbation``, ``category`` (combination split: ``"seen 0/1/2"``, ``"single"``;
        otherwise ``"all"``) and every metric of :func:`sccvae.metrics.evaluate`.
    summary
        :func:`sccvae.metrics.summarize` of all test perturbations (pooled over folds) with
        an extra ``category`` column (``"all"`` plus, for combination splits, each category).
    splits
        The :class:`~sccvae.splits.Split` objects used.
    training
        One row per trained SCCVAE (method, fold, epochs, seconds, last train / validation
        loss, best validation loss and its epoch).
    config
        The run's settings (data description, split, seeds, epochs, model arguments...).
    notes
        Warnings worth recording (fallback embeddings, unpredictable perturbations...).
    wall_time_s
        Duration of the run in seconds.
    deltas
        ``method -> DataFrame`` (perturbations x genes) of predicted mean change from the
        training control mean, plus ``"observed"``; used for the scatter plots.
    """

    results: pd.DataFrame
    summary: pd.DataFrame
    splits: list[Split]
    training: pd.DataFrame = field(default_factory=pd.DataFrame)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_time_s: float = float("nan")
    deltas: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """Methods in the order they were run."""
        return list(dict.fromkeys(self.results["method"]))

    def table(
        self, metrics: Sequence[str] | None = None, category: str = "all", digits: int = 3
    ) -> pd.DataFrame:
        """Return a metric x method table of ``"mean [low, high]"`` (:func:`format_table`)."""
        from ._report import format_table

        return format_table(self.summary, metrics=metrics, category=category, digits=digits)

    def __repr__(self) -> str:
        return (
            f"BenchmarkResult(split={self.config.get('split')!r}, methods={self.methods}, "
            f"{len(self.splits)} split(s), {self.results['perturbation'].nunique()} test "
            f"perturbations, {self.wall_time_s:.0f} s)"
        )
