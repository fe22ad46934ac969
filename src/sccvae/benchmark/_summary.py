"""Pooling the folds' scores and summarising them.

The summary compares the methods on the (fold, perturbation) pairs every method scored,
per test category: bootstrap intervals, win rates and paired tests
(:func:`sccvae.metrics.summarize`), and, with several seeds, the spread across seeds of each
SCCVAE variant's mean.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sccvae.metrics import summarize

if TYPE_CHECKING:
    from ._fold import FoldScores
    from ._settings import RunSettings

logger = logging.getLogger(__name__)


def _pool_and_summarise(
    scores: FoldScores, settings: RunSettings, notes: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return the run's score table, its per-seed score table and its summary.

    ``notes`` gains a note when some perturbations are left out of the summary.
    """
    rows, seed_rows = scores.rows, scores.seed_rows
    results = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    seed_results = pd.concat(seed_rows, ignore_index=True) if seed_rows else pd.DataFrame()
    metrics = list(settings.metrics)
    scored = _common_perturbations(results, notes)
    summary = _summaries(
        scored, list(settings.methods), settings.reference, metrics, settings.seed
    )
    if settings.n_seeds > 1:
        summary = _with_seed_spread(summary, scored, seed_results, metrics)
    return results, seed_results, summary


def _common_perturbations(results: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Rows of the (fold, perturbation) pairs scored by every method with any score."""
    if results.empty:
        return results
    keys = results["fold"].astype(str) + ":" + results["perturbation"].astype(str)
    n_methods = results["method"].nunique()
    counts = keys.groupby(keys).transform("size")
    common = counts == n_methods
    if not common.any():
        return results
    if not common.all():
        dropped = sorted(set(results.loc[~common, "perturbation"]))
        msg = (
            f"The summary compares methods on the {keys[common].nunique()} test "
            f"perturbation(s) that every method could predict; {len(dropped)} scored by some "
            f"methods only are in results.csv but not summarised: {dropped[:8]}"
        )
        logger.warning(msg)
        notes.append(msg)
    return results[common]


def _summaries(
    results: pd.DataFrame, methods: list[str], reference: str, metrics: list[str], seed: int
) -> pd.DataFrame:
    """Summarise ``results`` per method, over all perturbations and per test category."""
    if results.empty:
        return pd.DataFrame()
    categories = ["all"]
    if "category" in results and set(results["category"]) != {"all"}:
        categories += sorted(set(results["category"]))
    frames = []
    for category in categories:
        sub = results if category == "all" else results[results["category"] == category]
        tables = {}
        for m in methods:
            t = sub[sub["method"] == m]
            if t.empty:
                continue
            index = t["fold"].astype(str) + ":" + t["perturbation"].astype(str)
            tables[m] = t.set_index(index)
        if not tables:
            continue
        ref = reference if reference in tables else None
        s = summarize(tables, reference=ref, metrics=metrics, seed=seed)
        s.insert(0, "category", category)
        frames.append(s)
    return pd.concat(frames, ignore_index=True)


def _with_seed_spread(
    summary: pd.DataFrame, scored: pd.DataFrame, seed_results: pd.DataFrame, metrics: list[str]
) -> pd.DataFrame:
    """Add the spread across seeds of each SCCVAE variant's per-seed mean to the summary.

    Per (category, method, metric): ``n_seeds`` (seeds with a defined mean), the standard
    deviation (``seed_sd``, ddof 1) and range (``seed_min``, ``seed_max``) of the per-seed
    means over the summarised perturbations (those of ``scored``). NaN for the baselines.
    """
    columns = ["n_seeds", "seed_sd", "seed_min", "seed_max"]
    if summary.empty or seed_results.empty:
        return summary.assign(**{c: np.nan for c in columns})
    keys = ["method", "fold", "perturbation"]
    shared = seed_results.merge(scored[keys].drop_duplicates(), on=keys, how="inner")
    categories = list(dict.fromkeys(summary["category"]))
    rows = []
    for category in categories:
        sub = shared if category == "all" else shared[shared["category"] == category]
        for method, per_method in sub.groupby("method", sort=False):
            # mean over perturbations of each seed (NaN scores skipped, as in summarize)
            per_seed = per_method.groupby("seed")[[m for m in metrics if m in sub]].mean()
            for metric in per_seed.columns:
                values = per_seed[metric].dropna()
                rows.append(
                    {
                        "category": category,
                        "method": method,
                        "metric": metric,
                        "n_seeds": int(values.size),
                        "seed_sd": float(values.std(ddof=1)) if values.size > 1 else np.nan,
                        "seed_min": float(values.min()) if values.size else np.nan,
                        "seed_max": float(values.max()) if values.size else np.nan,
                    }
                )
    spread = pd.DataFrame(rows, columns=["category", "method", "metric", *columns])
    return summary.merge(spread, on=["category", "method", "metric"], how="left")
