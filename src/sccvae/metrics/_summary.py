"""Per-method averages of per-perturbation scores: bootstrap CIs, win rates, paired tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ._evaluate import METRICS


def summarize(
    results: Mapping[str, pd.DataFrame],
    reference: str | None = None,
    metrics: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Average per-perturbation metrics per method, with bootstrap CIs and paired comparisons.

    Parameters
    ----------
    results
        ``method -> evaluate() table`` (perturbations as index).
    reference
        A method of ``results``; every other method is compared with it, metric by metric,
        on their shared perturbations (pairs with a NaN on either side are dropped; their
        number is ``n_paired``): the fraction on which ``reference`` is better (ties count
        one half; orientation from :data:`METRICS`), and the two-sided Wilcoxon
        signed-rank test of the paired values with its rank-biserial correlation
        (:func:`paired_test`).
    metrics
        Metrics to summarise (default: every :data:`METRICS` entry found in the tables).
        Each must be in :data:`METRICS` so that its orientation is known.
    n_bootstrap
        Bootstrap resamples of perturbations for the percentile confidence interval.
    seed
        Seed of the bootstrap.
    confidence
        Coverage of the interval (default 95 %).

    Returns
    -------
    Long DataFrame with columns ``method``, ``metric``, ``higher_is_better``, ``mean``,
    ``ci_low``, ``ci_high``, ``n`` (non-NaN perturbations), ``reference``,
    ``reference_win_rate``, ``reference_p_value`` (two-sided, paired),
    ``reference_rank_biserial`` (in [-1, 1], positive where ``reference`` is better) and
    ``n_paired`` (NaN / 0 for the reference itself, without a reference, or without a
    shared perturbation).
    """
    if not results:
        raise ValueError("`results` is empty; pass {method_name: evaluate(...) table}.")
    if reference is not None and reference not in results:
        raise ValueError(f"Reference method {reference!r} not in results ({list(results)}).")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}.")
    if metrics is None:
        present = set().union(*(set(t.columns) for t in results.values()))
        metrics = [m for m in METRICS if m in present]
    else:
        metrics = list(metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(
                f"Unknown metric(s) {unknown}; `summarize` knows {list(METRICS)} (add new metrics "
                "to sccvae.metrics.METRICS with their orientation)."
            )
    ss = np.random.SeedSequence(seed)
    rows = []
    alpha = (1 - confidence) / 2
    for method, table in results.items():
        for metric in metrics:
            higher = METRICS[metric][0]
            row = {"method": method, "metric": metric, "higher_is_better": higher}
            if metric not in table.columns:
                values = np.zeros(0)
            else:
                values = table[metric].to_numpy(dtype=np.float64)
                values = values[np.isfinite(values)]
            rng = np.random.default_rng(ss.spawn(1)[0])
            row["n"] = int(values.size)
            if values.size:
                row["mean"] = float(values.mean())
                if values.size > 1 and n_bootstrap > 0:
                    idx = rng.integers(0, values.size, size=(int(n_bootstrap), values.size))
                    boot = values[idx].mean(axis=1)
                    row["ci_low"] = float(np.quantile(boot, alpha))
                    row["ci_high"] = float(np.quantile(boot, 1 - alpha))
                else:
                    row["ci_low"] = row["ci_high"] = float("nan")
            else:
                row["mean"] = row["ci_low"] = row["ci_high"] = float("nan")
            row["reference"] = reference
            row["reference_win_rate"] = float("nan")
            row["reference_p_value"] = float("nan")
            row["reference_rank_biserial"] = float("nan")
            row["n_paired"] = 0
            if reference is not None and method != reference:
                ref_table = results[reference]
                if metric in table.columns and metric in ref_table.columns:
                    joined = pd.concat(
                        [ref_table[metric].rename("ref"), table[metric].rename("other")],
                        axis=1,
                        join="inner",
                    ).dropna()
                    if len(joined):
                        ref_values = joined["ref"].to_numpy(dtype=np.float64)
                        other_values = joined["other"].to_numpy(dtype=np.float64)
                        row["reference_win_rate"] = win_rate(ref_values, other_values, higher)
                        p_value, effect = paired_test(ref_values, other_values, higher)
                        row["reference_p_value"] = p_value
                        row["reference_rank_biserial"] = effect
                        row["n_paired"] = int(len(joined))
            rows.append(row)
    columns = [
        "method",
        "metric",
        "higher_is_better",
        "mean",
        "ci_low",
        "ci_high",
        "n",
        "reference",
        "reference_win_rate",
        "reference_p_value",
        "reference_rank_biserial",
        "n_paired",
    ]
    return pd.DataFrame(rows, columns=columns)


def win_rate(reference: np.ndarray, other: np.ndarray, higher_is_better: bool) -> float:
    """Fraction of pairs where ``reference`` beats ``other`` (ties count one half).

    Parameters
    ----------
    reference, other
        Paired metric values (same perturbations, same order, no NaN).
    higher_is_better
        Orientation of the metric.
    """
    reference = np.asarray(reference, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    if reference.shape != other.shape or reference.size == 0:
        raise ValueError("`reference` and `other` must be non-empty and of equal shape.")
    better = reference > other if higher_is_better else reference < other
    ties = reference == other
    return float((better.sum() + 0.5 * ties.sum()) / reference.size)


def paired_test(
    reference: np.ndarray, other: np.ndarray, higher_is_better: bool
) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of paired scores, and its direction.

    The p-value is :func:`scipy.stats.wilcoxon` ``(reference, other)`` with its defaults:
    two-sided, pairs with equal values dropped (``zero_method="wilcox"``: they favour
    neither method; :func:`win_rate` counts them one half), and the exact null
    distribution up to 50 remaining pairs (a normal approximation beyond). With ``n``
    pairs that all favour one method the exact p-value is ``2 / 2**n``: 0.031 for 6 pairs,
    the fewest that can reach p < 0.05; with 5 or fewer, no difference is significant.
    Where every pair is equal (e.g. every method at a DE overlap of 0) there is nothing to
    test, which scipy reports with a warning and NaN: the p-value is 1 instead.

    Parameters
    ----------
    reference, other
        Paired metric values (same perturbations, same order, no NaN).
    higher_is_better
        Orientation of the metric (the p-value does not depend on it, the direction does).

    Returns
    -------
    ``(p_value, rank_biserial)``: the matched-pairs rank-biserial correlation
    ``(R+ - R-) / (R+ + R-)`` of the signed ranks the test uses, ``R+`` summing the ranks of
    the pairs where ``reference`` is better; positive where the test's evidence favours
    ``reference``, 1 where every unequal pair does, 0 where every pair is equal.
    """
    reference = np.asarray(reference, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    if reference.shape != other.shape or reference.size == 0:
        raise ValueError("`reference` and `other` must be non-empty and of equal shape.")
    if not (np.isfinite(reference).all() and np.isfinite(other).all()):
        raise ValueError("`reference` and `other` must not hold NaN; drop those pairs first.")
    difference = reference - other
    difference = difference[difference != 0]
    if difference.size == 0:
        return 1.0, 0.0
    p_value = float(stats.wilcoxon(reference, other).pvalue)
    ranks = stats.rankdata(np.abs(difference))
    favours = difference > 0 if higher_is_better else difference < 0
    effect = float((ranks[favours].sum() - ranks[~favours].sum()) / ranks.sum())
    return p_value, effect
