"""What a benchmark run returns, its summary as a table, and the error it raises on bad input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sccvae.splits import Split

from ._errors import BenchmarkInputError  # noqa: F401 - re-exported

#: The headline metrics of a benchmark run, in report order.
HEADLINE_METRICS: tuple[str, ...] = (
    "pearson_delta_all",
    "pearson_delta_all_notarget",
    "pearson_delta_de",
    "pearson_delta_de_notarget",
    "mse_de",
    "discrimination_score",
    "de_overlap",
)


@dataclass
class BenchmarkResult:
    """Outcome of :func:`run_benchmark`.

    Attributes
    ----------
    results
        One row per (method, fold, test perturbation): columns ``method``, ``fold``,
        ``perturbation``, ``category`` (combination split: ``"seen 0/1/2"``, ``"single"``;
        otherwise ``"all"``) and every metric of :func:`sccvae.metrics.evaluate`. With
        ``n_seeds > 1``, an SCCVAE variant's metrics are averaged over its seeds.
    summary
        :func:`sccvae.metrics.summarize` of all test perturbations (pooled over folds) with
        an extra ``category`` column (``"all"`` plus, for combination splits, each category)
        and, with ``n_seeds > 1``, the spread across seeds of each SCCVAE variant's per-seed
        means: ``n_seeds``, ``seed_sd``, ``seed_min``, ``seed_max`` (NaN for baselines).
    splits
        The :class:`~sccvae.splits.Split` objects used.
    training
        One row per trained SCCVAE (method, fold, epochs, seconds, last train / validation
        loss, best validation loss and its epoch, and how unseen targets are described: the
        magnitude rule, borrowing temperature and propagation weight chosen after training).
    config
        The run's settings (data description, split, seeds, epochs, model arguments...).
    notes
        Warnings worth recording (fallback embeddings, unpredictable perturbations...).
    wall_time_s
        Duration of the run in seconds.
    deltas
        ``method -> DataFrame`` (perturbations x genes) of predicted mean change from the
        training control mean (SCCVAE variants: averaged over seeds), plus ``"observed"``;
        used for the scatter plots.
    seed_results
        With ``n_seeds > 1``: the rows of ``results`` of each SCCVAE variant, one per seed
        (a ``seed`` column after ``fold``); empty otherwise.
    """

    results: pd.DataFrame
    summary: pd.DataFrame
    splits: list[Split]
    training: pd.DataFrame = field(default_factory=pd.DataFrame)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_time_s: float = float("nan")
    deltas: dict[str, pd.DataFrame] = field(default_factory=dict)
    seed_results: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def methods(self) -> list[str]:
        """Methods in the order they were run."""
        return list(dict.fromkeys(self.results["method"]))

    def table(
        self, metrics: Sequence[str] | None = None, category: str = "all", digits: int = 3
    ) -> pd.DataFrame:
        """Return a metric x method table of ``"mean [low, high]"`` (:func:`format_table`)."""
        return format_table(self.summary, metrics=metrics, category=category, digits=digits)

    def __repr__(self) -> str:
        return (
            f"BenchmarkResult(split={self.config.get('split')!r}, methods={self.methods}, "
            f"{len(self.splits)} split(s), {self.results['perturbation'].nunique()} test "
            f"perturbations, {self.wall_time_s:.0f} s)"
        )


#: Significance level of the paired tests behind the verdicts' "beats" and "loses to".
ALPHA = 0.05


def _fmt(value: float, digits: int) -> str:
    if value is None or not np.isfinite(value):
        return "nan"
    if value != 0 and abs(value) < 10 ** (-digits + 1):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}"


def _fmt_p(p: float) -> str:
    """``"p=0.031"``: two significant digits, never rounded up to the level (0.0496: "p<0.05")."""
    if p is None or not np.isfinite(p):
        return "p=nan"
    if p < 0.001:
        return "p<0.001"
    text = f"{p:.2g}"
    if p < ALPHA <= float(text):
        return f"p<{ALPHA:g}"
    return f"p={text}"


def format_table(
    summary: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    category: str = "all",
    digits: int = 3,
    win_rates: bool = True,
    separator: str = " ",
) -> pd.DataFrame:
    """Metric x method table of ``"mean [ci_low, ci_high]"`` strings.

    Parameters
    ----------
    summary
        ``BenchmarkResult.summary``.
    metrics
        Rows (default: the summary's metrics, in order).
    category
        Test-perturbation category (``"all"`` or a combination category).
    digits
        Decimals.
    win_rates
        Append ``"win X%, p=P"``: how often the reference method is better than this one,
        and the two-sided paired Wilcoxon p-value (where the summary has one).
    separator
        Between the value and the win rate, and before the spread across seeds of a method
        trained with several (``"3 seeds: sd 0.012, 0.500–0.530"``: standard deviation and
        range of its per-seed means), e.g. a newline for terminals.
    """
    s = summary[summary["category"] == category] if "category" in summary else summary
    if metrics is None:
        metrics = list(dict.fromkeys(s["metric"]))
    methods = list(dict.fromkeys(s["method"]))
    table = pd.DataFrame(
        index=pd.Index(list(metrics), name="metric"), columns=methods, dtype=object
    )
    for _, row in s.iterrows():
        if row["metric"] not in table.index:
            continue
        text = (
            f"{_fmt(row['mean'], digits)} [{_fmt(row['ci_low'], digits)}, "
            f"{_fmt(row['ci_high'], digits)}]"
        )
        if win_rates and np.isfinite(row["reference_win_rate"]):
            text += f"{separator}win {100 * row['reference_win_rate']:.0f}%"
            if np.isfinite(row.get("reference_p_value", np.nan)):
                text += f", {_fmt_p(row['reference_p_value'])}"
        n_seeds = row.get("n_seeds", np.nan)
        if np.isfinite(n_seeds) and n_seeds > 1:
            text += (
                f"{separator}{int(n_seeds)} seeds: sd {_fmt(row['seed_sd'], digits)}, "
                f"{_fmt(row['seed_min'], digits)}–{_fmt(row['seed_max'], digits)}"
            )
        table.loc[row["metric"], row["method"]] = text
    return table.fillna("")
