"""Metrics of the Virtual Cell Challenge: DE-gene overlap and perturbation discrimination.

The definitions follow Arc Institute's ``cell-eval`` (the challenge's scorer); the test suite
compares both numbers with ``cell-eval`` on a small fixture. They are reimplemented here
rather than called because ``cell-eval`` scores a whole prediction file at once through a
polars pipeline, while :func:`sccvae.metrics.evaluate` scores one perturbation at a time
inside its own loop, on the same pseudobulks as every other metric.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import false_discovery_control, mannwhitneyu


def de_genes(group: np.ndarray, reference: np.ndarray, fdr: float = 0.05) -> np.ndarray:
    """Genes differentially expressed between two cell sets, most changed first.

    As ``cell-eval`` (through ``pdex``) computes them on log1p-normalised expression: a
    two-sided Mann-Whitney U test per gene (asymptotic, with tie and continuity
    corrections), Benjamini-Hochberg FDR over the genes, and the significant genes
    (``FDR < fdr``) ranked by the absolute log2 fold change of pseudobulks,
    ``log2(expm1(mean(group)) / expm1(mean(reference)))``.

    Parameters
    ----------
    group, reference
        Cells x genes, log1p-normalised expression (dense).
    fdr
        FDR threshold of significance.

    Returns
    -------
    Column positions of the significant genes, in decreasing order of ``|log2 FC|`` (ties
    keep gene order).
    """
    group = np.asarray(group, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if group.shape[0] < 1 or reference.shape[0] < 1:
        return np.zeros(0, dtype=np.int64)
    varying = np.ptp(np.vstack([group, reference]), axis=0) > 0
    pvalues = np.ones(group.shape[1])
    if varying.any():
        test = mannwhitneyu(
            group[:, varying], reference[:, varying], axis=0, method="asymptotic",
            use_continuity=True, alternative="two-sided",
        )  # fmt: skip
        pvalues[varying] = np.nan_to_num(test.pvalue, nan=1.0)
    qvalues = false_discovery_control(np.clip(pvalues, 0.0, 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        lfc = np.log2(np.expm1(group.mean(axis=0)) / np.expm1(reference.mean(axis=0)))
    # a gene silenced in one set has an infinite fold change and ranks first, as in cell-eval;
    # 0 / 0 (silent in both) is undefined and left out
    significant = np.flatnonzero((qvalues < fdr) & ~np.isnan(lfc))
    order = np.argsort(-np.abs(lfc[significant]), kind="stable")
    return significant[order]


def de_overlap(observed_de: np.ndarray, predicted_de: np.ndarray) -> float:
    """Share of the observed DE genes found among the predicted top-k (k = observed count).

    ``|top-k(observed) ∩ top-k(predicted)| / k`` with ``k`` the number of significant
    observed genes, both lists ranked as :func:`de_genes` returns them (``cell-eval``'s
    ``overlap_at_N``). NaN when the observed cells have no DE gene (``cell-eval`` reports
    0 there; an undefined score should not count as a failure).
    """
    k = int(np.asarray(observed_de).size)
    if k == 0:
        return float("nan")
    top_predicted = np.asarray(predicted_de)[:k]
    return float(np.intersect1d(observed_de, top_predicted).size / k)


def discrimination_scores(
    predicted_change: np.ndarray, observed_change: np.ndarray, excluded: list[np.ndarray]
) -> np.ndarray:
    """Score every perturbation by the Virtual Cell Challenge's perturbation discrimination.

    For perturbation ``i``, the L1 distances from its predicted change to the observed change
    of every perturbation ``j`` (the columns in ``excluded[i]``, its target genes, left out)
    are ranked; with ``r`` the number of perturbations strictly closer than its own, the
    score is ``1 - r / N``: 1 when its own observed change is the closest, ``1 / N`` when it
    is the farthest.

    Parameters
    ----------
    predicted_change, observed_change
        Perturbations x genes changes from control (same perturbation order).
    excluded
        Column positions to leave out for each perturbation.
    """
    n = predicted_change.shape[0]
    scores = np.empty(n)
    keep = np.ones(predicted_change.shape[1], dtype=bool)
    for i in range(n):
        keep[:] = True
        keep[np.asarray(excluded[i], dtype=np.int64)] = False
        distances = np.abs(observed_change[:, keep] - predicted_change[i, keep]).sum(axis=1)
        scores[i] = 1.0 - np.sum(distances < distances[i]) / n
    return scores
