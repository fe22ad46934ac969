"""Metrics of the Virtual Cell Challenge: DE-gene overlap and perturbation discrimination.

The definitions follow Arc Institute's ``cell-eval`` (the challenge's scorer); the test suite
compares both numbers with ``cell-eval`` on a small fixture. They are reimplemented here
rather than called because ``cell-eval`` scores a whole prediction file at once through a
polars pipeline, while :func:`sccvae.metrics.evaluate` scores one perturbation at a time
inside its own loop, on the same pseudobulks as every other metric.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import false_discovery_control, norm


class ReferenceCells:
    """Control cells prepared once for many Mann-Whitney U tests against them.

    The cells of every gene are sorted once (one global sort, genes kept apart by an
    offset), so that testing a group of cells costs binary searches of the group's values,
    not a sort of the pooled sample per gene: the same exact statistic, tie correction and
    p-value as :func:`scipy.stats.mannwhitneyu` (asymptotic, continuity-corrected,
    two-sided), much faster for many groups.

    Parameters
    ----------
    cells
        Control cells x genes (dense), log1p-normalised expression.
    """

    def __init__(self, cells: np.ndarray):
        cells = np.asarray(cells, dtype=np.float64)
        self.n_cells, self.n_genes = cells.shape
        self._low = float(cells.min()) if cells.size else 0.0
        self._span = float(cells.max() - self._low) + 1.0 if cells.size else 1.0
        self._offset = np.arange(self.n_genes) * self._span
        self._sorted = np.sort((cells - self._low + self._offset).T, axis=None)
        self._start = np.arange(self.n_genes) * self.n_cells
        with np.errstate(divide="ignore"):  # a gene never expressed: -inf, as in cell-eval
            self.log_pseudobulk = np.log2(np.expm1(cells.mean(axis=0)))
        # tie term of the control cells alone, sum over tied values of t^3 - t
        _, first, counts = np.unique(self._sorted, return_index=True, return_counts=True)
        gene = first // self.n_cells
        self._ties = np.bincount(gene, weights=counts**3.0 - counts, minlength=self.n_genes)

    def pvalues(self, group: np.ndarray) -> np.ndarray:
        """Two-sided Mann-Whitney U p-value of every gene, ``group`` cells vs the controls."""
        group = np.asarray(group, dtype=np.float64)
        n1, n2 = group.shape[0], self.n_cells
        # values beyond the controls' range are moved just outside it, inside the gene's band:
        # their order relative to the controls (all that U needs) is unchanged
        clipped = np.clip(group, self._low - 0.25, self._low + self._span - 0.75)
        shifted = (clipped - self._low + self._offset).ravel()
        genes = np.broadcast_to(np.arange(self.n_genes), group.shape).ravel()
        # sorted by gene, then value: binary searches of sorted keys, and runs of equal values
        raw = group.ravel()
        order = np.lexsort((raw, genes))
        raw, genes, shifted = raw[order], genes[order], shifted[order]
        below = np.searchsorted(self._sorted, shifted, side="left") - self._start[genes]
        not_above = np.searchsorted(self._sorted, shifted, side="right") - self._start[genes]
        u1 = np.bincount(genes, weights=below + 0.5 * (not_above - below), minlength=self.n_genes)
        # ties among the group's own values are counted on the values themselves
        new_run = np.ones(raw.size, dtype=bool)
        new_run[1:] = (raw[1:] != raw[:-1]) | (genes[1:] != genes[:-1])
        starts = np.flatnonzero(new_run)
        counts = np.diff(np.append(starts, raw.size))
        gene = genes[starts]
        in_controls = not_above[starts] - below[starts]
        pooled = in_controls + counts
        extra = (pooled**3.0 - pooled) - (in_controls**3.0 - in_controls)
        ties = self._ties + np.bincount(gene, weights=extra, minlength=self.n_genes)
        n = n1 + n2
        sigma = np.sqrt(n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1))))
        u = np.maximum(u1, n1 * n2 - u1)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (u - n1 * n2 / 2.0 - 0.5) / sigma
        p = np.clip(2.0 * norm.sf(z), 0.0, 1.0)
        return np.where(sigma > 0, p, 1.0)

    def de_genes(self, group: np.ndarray, fdr: float = 0.05) -> np.ndarray:
        """Genes differentially expressed in ``group``, most changed first.

        As ``cell-eval`` (through ``pdex``) computes them on log1p-normalised expression: a
        two-sided Mann-Whitney U test per gene against the controls, Benjamini-Hochberg FDR
        over the genes, and the significant genes (``FDR < fdr``) ranked by the absolute
        log2 fold change of pseudobulks, ``log2(expm1(mean(group)) / expm1(mean(control)))``.

        Returns
        -------
        Column positions of the significant genes, in decreasing order of ``|log2 FC|`` (ties
        keep gene order).
        """
        group = np.asarray(group, dtype=np.float64)
        if group.shape[0] < 1:
            return np.zeros(0, dtype=np.int64)
        qvalues = false_discovery_control(self.pvalues(group))
        with np.errstate(divide="ignore", invalid="ignore"):
            lfc = np.log2(np.expm1(group.mean(axis=0))) - self.log_pseudobulk
        # a gene silenced in one set has an infinite fold change and ranks first, as in
        # cell-eval; 0 / 0 (silent in both) is undefined and left out
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
