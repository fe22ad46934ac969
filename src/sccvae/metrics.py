"""Model-agnostic evaluation of perturbation-response predictions.

Everything here works on plain :class:`~anndata.AnnData` objects, so SCCVAE, the baselines
in :mod:`sccvae.baselines` and any external model can be scored the same way:

>>> table = evaluate(predicted, observed, control)  # doctest: +SKIP
>>> tables = {"sccvae": table, "mean": table_mean}  # doctest: +SKIP
>>> summary = summarize(tables, reference="sccvae")  # doctest: +SKIP

:func:`evaluate` returns one row per perturbation and one column per metric (see
:data:`METRICS`); :func:`summarize` averages them per method with bootstrap confidence
intervals and paired win rates against a reference method.

Conventions
-----------
- ``mu_hat`` is the mean of the predicted cells of a perturbation, ``mu`` the mean of its
  observed cells, ``mu0`` the mean of the *control* AnnData (pass the training control
  cells so that the reference never includes test cells). All means are computed in
  float64.
- **DE genes** ``D``: the top ``n_de_genes`` genes of the observed perturbation cells versus
  the control cells, ranked by the absolute Welch t statistic
  ``|mu - mu0| / sqrt(s^2 / n + s0^2 / n0)`` (unbiased variances; the ranking scanpy's
  ``rank_genes_groups(method="t-test")`` uses). With ``de_method="abs_change"`` genes are
  ranked by ``|mu - mu0|`` instead. Ties keep gene order. ``D'`` (the ``*_notarget``
  metrics) is the top ``n_de_genes`` after removing the perturbation's own target gene(s).
- **Pearson correlations** of a vector that is constant (standard deviation below
  ``1e-6 * (1 + RMS(mu0))``, e.g. a control prediction given as a mean) are undefined and
  reported as NaN rather than 0.
- **Direction accuracy**: ``sign(mu_hat - mu0) == sign(mu - mu0)`` averaged over genes;
  genes whose *observed* change is exactly zero (e.g. never detected in either group) are
  excluded; a predicted change that is numerically zero (``|change| <=`` the tolerance
  above, e.g. a control-mean prediction) counts as wrong. NaN when no gene is left. So
  predicting the exact control mean scores 0, while predicting *sampled* control cells
  scores about 0.5 (the paper's "control cells as prediction" row).
- **Distribution metrics** (``energy_distance``, ``mmd``) compare cells in a PCA space
  (50 components by default) fitted on training cells: pass ``pca`` (a fitted
  :class:`sklearn.decomposition.PCA` or a ``(mean, components)`` pair, see :func:`fit_pca`);
  otherwise it is fitted on the control AnnData. The larger of the two cell sets is
  subsampled (seeded, per perturbation) to the size of the smaller, capped at ``n_cells``
  (default 500) per side. NaN when either side has fewer than 2 cells (e.g. predictions
  made with ``return_mean=True``).
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial.distance import cdist

from sccvae._perturbations import (
    canonical_label,
    parse_perturbation,
    perturbation_labels,
)

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS",
    "evaluate",
    "summarize",
    "fit_pca",
    "mean_of_perturbation_means",
    "energy_distance",
    "mmd",
    "pearson",
]

#: Registry of the per-perturbation metrics of :func:`evaluate`:
#: ``name -> (higher_is_better, description)``.
METRICS: dict[str, tuple[bool, str]] = {
    "mse_all": (False, "MSE between predicted and observed mean expression, all genes"),
    "mse_de": (False, "MSE of means on the top DE genes D (vs control)"),
    "mse_de_notarget": (False, "MSE of means on D' (top DE genes excluding the targets)"),
    "pearson_delta_all": (True, "Pearson r of (mu_hat - mu0, mu - mu0), all genes"),
    "pearson_delta_de": (True, "Pearson r of (mu_hat - mu0, mu - mu0) on D"),
    "pearson_delta_de_notarget": (True, "Pearson r of (mu_hat - mu0, mu - mu0) on D'"),
    "pearson_delta_pertmean_all": (
        True,
        "Pearson r of changes from the mean of training perturbations, all genes",
    ),
    "direction_accuracy_de": (True, "Fraction of D with the right sign of change vs control"),
    "direction_accuracy_de_notarget": (
        True,
        "Fraction of D' with the right sign of change vs control",
    ),
    "direction_accuracy_all": (
        True,
        "Fraction of all genes (observed change != 0) with the right sign of change",
    ),
    "pearson_means_all": (True, "Pearson r of raw means (paper-comparable; inflated)"),
    "pearson_means_de": (True, "Pearson r of raw means on D"),
    "energy_distance": (
        False,
        "Energy distance between predicted and observed cells in PCA space",
    ),
    "mmd": (False, "Squared MMD (multi-bandwidth RBF) between cell sets in PCA space"),
    "rank": (
        False,
        "Fraction of other perturbations' predictions closer to this observed mean than its own "
        "(0 best, 0.5 random)",
    ),
}

_CONSTANT_RTOL = 1e-6
_MMD_MULTIPLIERS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
_DEFAULT_MAX_CELLS = 500


# ---------------------------------------------------------------------------------------------
# small numerical helpers


def pearson(a: np.ndarray, b: np.ndarray, atol: float = 0.0) -> float:
    """Pearson correlation of two vectors; NaN if either is (numerically) constant.

    Parameters
    ----------
    a, b
        Vectors of equal length.
    atol
        A vector whose standard deviation is ``<= atol`` counts as constant.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"Vectors of different shapes: {a.shape} and {b.shape}.")
    if a.size < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    sa = np.sqrt(np.mean(a * a))
    sb = np.sqrt(np.mean(b * b))
    if sa <= atol or sb <= atol or sa == 0 or sb == 0:
        return float("nan")
    return float(np.clip(np.mean(a * b) / (sa * sb), -1.0, 1.0))


def _direction_accuracy(
    pred_change: np.ndarray, obs_change: np.ndarray, atol: float = 0.0
) -> float:
    keep = obs_change != 0
    if not keep.any():
        return float("nan")
    pred_sign = np.where(np.abs(pred_change) <= atol, 0.0, np.sign(pred_change))
    return float(np.mean(pred_sign[keep] == np.sign(obs_change[keep])))


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return float("nan")
    return float(np.mean((a - b) ** 2))


def _median_bandwidth(sq_dist: np.ndarray) -> float:
    n = sq_dist.shape[0]
    off = sq_dist[~np.eye(n, dtype=bool)]
    base = float(np.median(off)) if off.size else 0.0
    if base <= 0:
        positive = off[off > 0]
        base = float(positive.mean()) if positive.size else 1.0
    return base


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` with (unsquared) Euclidean distances.

    The V-statistic (within-set averages include the zero diagonal), so identical samples
    give exactly 0 and the value is non-negative. Memory is ``n x m`` distances.

    Parameters
    ----------
    x, y
        ``n x p`` and ``m x p`` samples.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] == 0 or y.shape[0] == 0:
        return float("nan")
    d_xy = cdist(x, y).mean()
    d_xx = cdist(x, x).mean()
    d_yy = cdist(y, y).mean()
    return float(max(2.0 * d_xy - d_xx - d_yy, 0.0))


def mmd(
    x: np.ndarray, y: np.ndarray, bandwidth_multipliers: Sequence[float] = _MMD_MULTIPLIERS
) -> float:
    """Biased squared MMD with a mixture of RBF kernels (median heuristic bandwidths).

    The base bandwidth ``h`` is the median pairwise squared distance of the pooled sample;
    kernels ``exp(-|a - b|^2 / (m h))`` for each multiplier ``m`` are averaged, so the value
    lies in ``[0, 2]``. Identical samples give 0.

    Parameters
    ----------
    x, y
        ``n x p`` and ``m x p`` samples.
    bandwidth_multipliers
        Multiples of the median heuristic bandwidth.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] == 0 or y.shape[0] == 0:
        return float("nan")
    pooled = np.vstack([x, y])
    sq = cdist(pooled, pooled, "sqeuclidean")
    base = _median_bandwidth(sq)
    kernel = np.zeros_like(sq)
    for m in bandwidth_multipliers:
        kernel += np.exp(-sq / (base * m))
    kernel /= len(bandwidth_multipliers)
    n = x.shape[0]
    value = kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2.0 * kernel[:n, n:].mean()
    return float(max(value, 0.0))


# ---------------------------------------------------------------------------------------------
# AnnData helpers


def _matrix(adata: AnnData, name: str):
    x = adata.X
    if x is None:
        raise ValueError(f"`{name}.X` is empty; put (log-normalised) expression in X.")
    if sp.issparse(x):
        return sp.csr_matrix(x)
    return np.asarray(x)


def _gene_columns(adata: AnnData, genes: pd.Index, name: str) -> np.ndarray | None:
    """Column positions of ``genes`` in ``adata`` (None when already identical)."""
    var = pd.Index([str(g) for g in adata.var_names])
    if var.equals(genes):
        return None
    if not var.is_unique:
        raise ValueError(
            f"`{name}.var_names` are not unique; call `{name}.var_names_make_unique()`."
        )
    pos = var.get_indexer(genes)
    missing = genes[pos < 0]
    if missing.size:
        raise ValueError(
            f"{missing.size} gene(s) of `observed` are missing from `{name}` (e.g. "
            f"{list(missing[:5])}); predict all observed genes or subset `observed` to "
            f"`{name}.var_names`."
        )
    return pos


def _select_columns(x, cols: np.ndarray | None):
    if cols is None:
        return x
    return x[:, cols]


def _group_moments(x, codes: np.ndarray, n_groups: int, chunk: int = 8192):
    """Per-group sums, sums of squares and counts of the rows of ``x`` (codes < 0 ignored)."""
    n_genes = x.shape[1]
    sums = np.zeros((n_groups, n_genes))
    sq = np.zeros((n_groups, n_genes))
    for start in range(0, x.shape[0], chunk):
        stop = min(start + chunk, x.shape[0])
        c = codes[start:stop]
        keep = c >= 0
        if not keep.any():
            continue
        block = x[start:stop][keep]
        c = c[keep]
        indicator = sp.csr_matrix(
            (np.ones(c.size), (c, np.arange(c.size))), shape=(n_groups, c.size)
        )
        if sp.issparse(block):
            block = block.astype(np.float64)
            sums += np.asarray((indicator @ block).todense())
            sq += np.asarray((indicator @ block.multiply(block)).todense())
        else:
            block = np.asarray(block, dtype=np.float64)
            sums += indicator @ block
            sq += indicator @ (block * block)
    counts = np.bincount(codes[codes >= 0], minlength=n_groups).astype(np.float64)
    return sums, sq, counts


def _canonical_codes(
    labels: np.ndarray, keep: Sequence[str], control_label: str, delimiter: str
) -> tuple[np.ndarray, dict[str, tuple[str, ...]]]:
    """Code of every cell's canonical label in ``keep`` (-1 otherwise) and targets per label."""
    uniques, inverse = np.unique(labels, return_inverse=True)
    position = {label: i for i, label in enumerate(keep)}
    unique_codes = np.full(uniques.size, -1, dtype=np.int64)
    targets: dict[str, tuple[str, ...]] = {}
    for i, u in enumerate(uniques):
        t = parse_perturbation(str(u), control_label, delimiter)
        canon = canonical_label(t, control_label, delimiter)
        if canon in position:
            unique_codes[i] = position[canon]
            targets[canon] = t
    return unique_codes[inverse], targets


def _canonical_set(labels: np.ndarray, control_label: str, delimiter: str) -> list[str]:
    out = set()
    for u in np.unique(labels):
        canon = canonical_label(
            parse_perturbation(str(u), control_label, delimiter), control_label, delimiter
        )
        if canon != control_label:
            out.add(canon)
    return sorted(out)


def fit_pca(
    adata: AnnData, n_components: int = 50, max_cells: int = 20_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Fit the PCA space used by the distribution metrics.

    Parameters
    ----------
    adata
        Training cells (e.g. ``split.subset(adata, "train")``); ``adata.X`` is used.
    n_components
        Number of components, capped at ``min(n_cells, n_genes) - 1``.
    max_cells
        Cells beyond this number are subsampled (seeded).
    seed
        Seed for the subsample and the randomized SVD.

    Returns
    -------
    ``(mean, components)``: the gene means (length ``n_genes``) and a
    ``n_components x n_genes`` matrix with orthonormal rows. Project with
    ``(x - mean) @ components.T``.
    """
    return _fit_pca_matrix(_matrix(adata, "adata"), n_components, max_cells, seed)


def _fit_pca_matrix(
    x, n_components: int, max_cells: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.utils.extmath import randomized_svd

    n = x.shape[0]
    rng = np.random.default_rng(seed)
    if n > max_cells:
        x = x[np.sort(rng.choice(n, size=max_cells, replace=False))]
    dense = x.toarray() if sp.issparse(x) else np.asarray(x)
    dense = dense.astype(np.float64)
    mean = dense.mean(axis=0)
    k = int(min(n_components, min(dense.shape) - 1))
    if k < 1:
        raise ValueError(f"Too few cells ({dense.shape[0]}) or genes to fit a PCA.")
    centred = dense - mean
    if min(centred.shape) <= 2000:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        vt = vt[:k]
    else:
        _, _, vt = randomized_svd(centred, n_components=k, random_state=seed)
    # deterministic signs (largest-magnitude loading positive)
    signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1.0
    return mean, vt * signs[:, None]


def _pca_parts(pca: Any, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(pca, "components_") and hasattr(pca, "mean_"):
        mean, comps = np.asarray(pca.mean_), np.asarray(pca.components_)
    elif isinstance(pca, tuple | list) and len(pca) == 2:
        mean, comps = np.asarray(pca[0], dtype=np.float64), np.asarray(pca[1], dtype=np.float64)
    else:
        raise ValueError(
            "`pca` must be a fitted sklearn PCA or a (mean, components) pair (see `fit_pca`), "
            f"got {type(pca).__name__}."
        )
    if comps.ndim != 2 or comps.shape[1] != n_genes or mean.shape != (n_genes,):
        raise ValueError(
            f"`pca` is for {comps.shape[-1]} genes but {n_genes} genes are evaluated; fit it on "
            "cells with the same genes (in the same order) as `observed`."
        )
    return mean.astype(np.float64), comps.astype(np.float64)


def mean_of_perturbation_means(
    adata: AnnData,
    perturbation_key: str = "perturbation",
    control_label: str = "control",
    combination_delimiter: str = "+",
) -> pd.Series:
    """Mean over (non-control) perturbations of their mean expression, as a gene Series.

    Pass it, computed on the *training* cells, as ``training_perturbation_mean`` to
    :func:`evaluate`.
    """
    labels = perturbation_labels(adata.obs, perturbation_key)
    perts = _canonical_set(labels, control_label, combination_delimiter)
    if not perts:
        raise ValueError(f"No non-control perturbations in adata.obs[{perturbation_key!r}].")
    codes, _ = _canonical_codes(labels, perts, control_label, combination_delimiter)
    sums, _, counts = _group_moments(_matrix(adata, "adata"), codes, len(perts))
    means = sums / counts[:, None]
    return pd.Series(means.mean(axis=0), index=pd.Index([str(g) for g in adata.var_names]))


def _seed_for(label: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(label.encode())])


def _project(x, rows: np.ndarray, mean: np.ndarray, comps: np.ndarray) -> np.ndarray:
    block = x[rows]
    block = block.toarray() if sp.issparse(block) else np.asarray(block)
    return (block.astype(np.float64) - mean) @ comps.T


# ---------------------------------------------------------------------------------------------
# evaluate


def evaluate(
    predicted: AnnData,
    observed: AnnData,
    control: AnnData,
    perturbation_key: str = "perturbation",
    control_label: str = "control",
    combination_delimiter: str = "+",
    n_de_genes: int = 20,
    training_perturbation_mean: np.ndarray | pd.Series | None = None,
    pca: Any = None,
    n_cells: int | None = None,
    seed: int = 0,
    de_method: str = "welch",
    distribution_metrics: bool = True,
) -> pd.DataFrame:
    """Score predictions against observed cells, one row per perturbation.

    Parameters
    ----------
    predicted
        Predicted cells (or one mean row per perturbation), labelled in
        ``obs[perturbation_key]``; ``X`` on the same scale as ``observed``. It must contain
        every gene of ``observed`` (extra genes are ignored; order may differ).
    observed
        Held-out observed cells. Control cells in it are ignored.
    control
        Reference control cells (use the *training* controls). If it has a
        ``perturbation_key`` column, only cells labelled ``control_label`` are used;
        otherwise all of its cells.
    perturbation_key, control_label, combination_delimiter
        How perturbations are labelled; labels are matched in canonical form, so ``"B+A"``
        in ``predicted`` matches ``"A+B"`` in ``observed``.
    n_de_genes
        Size of the DE gene sets ``D`` and ``D'``.
    training_perturbation_mean
        Mean over training perturbations of their mean expression (see
        :func:`mean_of_perturbation_means`): a Series indexed by gene, or an array in the
        gene order of ``observed``. Without it ``pearson_delta_pertmean_all`` is NaN.
    pca
        PCA space of the distribution metrics: a fitted sklearn PCA or ``(mean, components)``
        (see :func:`fit_pca`), fitted on training cells with the genes of ``observed``. If
        None, a 50-component PCA is fitted on ``control``.
    n_cells
        Maximum cells per side for the distribution metrics (default 500).
    seed
        Seed of the per-perturbation cell subsampling (derived per label, so a perturbation's
        score does not depend on which other perturbations are evaluated).
    de_method
        ``"welch"`` (rank by absolute Welch t statistic, default) or ``"abs_change"``.
    distribution_metrics
        Compute ``energy_distance`` and ``mmd`` (set False to skip them for speed).

    Returns
    -------
    DataFrame indexed by canonical perturbation label (sorted), with the columns of
    :data:`METRICS` plus ``n_cells_predicted``, ``n_cells_observed``, ``n_targets`` and
    ``n_de_genes_used``. See the module docstring for the conventions.
    """
    for name, obj in (("predicted", predicted), ("observed", observed), ("control", control)):
        if not isinstance(obj, AnnData):
            raise TypeError(f"`{name}` must be an AnnData, got {type(obj).__name__}.")
    if de_method not in ("welch", "abs_change"):
        raise ValueError(f"`de_method` must be 'welch' or 'abs_change', got {de_method!r}.")
    n_de_genes = int(n_de_genes)
    if n_de_genes < 1:
        raise ValueError(f"`n_de_genes` must be positive, got {n_de_genes}.")
    max_cells = _DEFAULT_MAX_CELLS if n_cells is None else int(n_cells)
    if max_cells < 2:
        raise ValueError(f"`n_cells` must be at least 2, got {n_cells}.")

    genes = pd.Index([str(g) for g in observed.var_names])
    if not genes.is_unique:
        raise ValueError("`observed.var_names` are not unique; call `var_names_make_unique()`.")
    n_genes = genes.size
    gene_pos = {g: i for i, g in enumerate(genes)}
    x_obs = _matrix(observed, "observed")
    x_pred = _select_columns(
        _matrix(predicted, "predicted"), _gene_columns(predicted, genes, "predicted")
    )
    x_ctrl = _select_columns(_matrix(control, "control"), _gene_columns(control, genes, "control"))

    # --- control reference
    if perturbation_key in control.obs.columns:
        ctrl_labels = perturbation_labels(control.obs, perturbation_key)
        ctrl_rows = np.flatnonzero(ctrl_labels == control_label)
        if ctrl_rows.size == 0:
            raise ValueError(
                f"`control` has no cells labelled {control_label!r} in obs[{perturbation_key!r}]; "
                "pass the training control cells (or an AnnData without that column)."
            )
        if ctrl_rows.size < control.n_obs:
            x_ctrl = x_ctrl[ctrl_rows]
    if x_ctrl.shape[0] < 2:
        raise ValueError("`control` needs at least 2 cells.")
    ctrl_codes = np.zeros(x_ctrl.shape[0], dtype=np.int64)
    s0, q0, n0 = _group_moments(x_ctrl, ctrl_codes, 1)
    mu0 = s0[0] / n0[0]
    var0 = np.maximum(q0[0] - n0[0] * mu0**2, 0.0) / (n0[0] - 1)
    atol = _CONSTANT_RTOL * (1.0 + float(np.sqrt(np.mean(mu0**2))))

    # --- perturbations in common
    obs_labels = perturbation_labels(observed.obs, perturbation_key)
    pred_labels = perturbation_labels(predicted.obs, perturbation_key)
    obs_set = _canonical_set(obs_labels, control_label, combination_delimiter)
    pred_set = _canonical_set(pred_labels, control_label, combination_delimiter)
    perts = sorted(set(obs_set) & set(pred_set))
    if not perts:
        raise ValueError(
            "No perturbation is present in both `predicted` and `observed` "
            f"(observed e.g. {obs_set[:5]}, predicted e.g. {pred_set[:5]}); check labels, "
            "`perturbation_key` and `control_label`."
        )
    only_obs = sorted(set(obs_set) - set(pred_set))
    if only_obs:
        warnings.warn(
            f"{len(only_obs)} observed perturbation(s) have no prediction and are not scored "
            f"(e.g. {only_obs[:5]}).",
            UserWarning,
            stacklevel=2,
        )
    n_p = len(perts)
    obs_codes, targets = _canonical_codes(obs_labels, perts, control_label, combination_delimiter)
    pred_codes, _ = _canonical_codes(pred_labels, perts, control_label, combination_delimiter)
    s_obs, q_obs, n_obs = _group_moments(x_obs, obs_codes, n_p)
    s_pred, _, n_pred = _group_moments(x_pred, pred_codes, n_p)
    mu = s_obs / n_obs[:, None]
    mu_hat = s_pred / n_pred[:, None]
    var = np.maximum(q_obs - n_obs[:, None] * mu**2, 0.0) / np.maximum(n_obs[:, None] - 1, 1)
    if not np.all(np.isfinite(mu_hat)):
        raise ValueError("`predicted.X` contains NaN or infinite values.")

    # --- training perturbation mean
    pert_mean = None
    if training_perturbation_mean is not None:
        if isinstance(training_perturbation_mean, pd.Series):
            index = pd.Index([str(g) for g in training_perturbation_mean.index])
            pos = index.get_indexer(genes)
            if (pos < 0).any():
                raise ValueError(
                    f"`training_perturbation_mean` lacks {(pos < 0).sum()} gene(s) of `observed` "
                    f"(e.g. {list(genes[pos < 0][:5])})."
                )
            pert_mean = training_perturbation_mean.to_numpy(dtype=np.float64)[pos]
        else:
            pert_mean = np.asarray(training_perturbation_mean, dtype=np.float64).ravel()
            if pert_mean.size != n_genes:
                raise ValueError(
                    f"`training_perturbation_mean` has {pert_mean.size} values but `observed` "
                    f"has {n_genes} genes; pass a gene-indexed Series or an array in observed "
                    "gene order."
                )

    # --- DE scores (perturbations x genes)
    obs_change = mu - mu0
    pred_change = mu_hat - mu0
    if de_method == "welch":
        se = np.sqrt(var / n_obs[:, None] + var0 / n0[0])
        score = np.zeros_like(obs_change)
        np.divide(np.abs(obs_change), se, out=score, where=se > 0)
        score[(se == 0) & (obs_change != 0)] = np.inf
    else:
        score = np.abs(obs_change)

    # --- rank (Euclidean on means): distance of every prediction to every observed mean
    dist = cdist(mu, mu_hat)  # observed p x predicted q
    own = np.diag(dist)
    if n_p > 1:
        closer = (dist < own[:, None]).sum(axis=1)
        ties = (dist == own[:, None]).sum(axis=1) - 1
        rank = (closer + 0.5 * ties) / (n_p - 1)
    else:
        rank = np.full(n_p, np.nan)

    # --- PCA space
    if distribution_metrics:
        if pca is None:
            pca_mean, comps = _fit_pca_matrix(x_ctrl, n_components=50, max_cells=20_000, seed=seed)
        else:
            pca_mean, comps = _pca_parts(pca, n_genes)
        obs_rows = [np.flatnonzero(obs_codes == i) for i in range(n_p)]
        pred_rows = [np.flatnonzero(pred_codes == i) for i in range(n_p)]

    rows = []
    for i, p in enumerate(perts):
        t = targets.get(p, ())
        order = np.argsort(-score[i], kind="stable")
        de = order[:n_de_genes]
        target_cols = {gene_pos[g] for g in t if g in gene_pos}
        de_nt = np.array([g for g in order if g not in target_cols][:n_de_genes], dtype=np.int64)
        row = {
            "mse_all": _mse(mu_hat[i], mu[i]),
            "mse_de": _mse(mu_hat[i, de], mu[i, de]),
            "mse_de_notarget": _mse(mu_hat[i, de_nt], mu[i, de_nt]),
            "pearson_delta_all": pearson(pred_change[i], obs_change[i], atol),
            "pearson_delta_de": pearson(pred_change[i, de], obs_change[i, de], atol),
            "pearson_delta_de_notarget": pearson(
                pred_change[i, de_nt], obs_change[i, de_nt], atol
            ),
            "pearson_delta_pertmean_all": (
                pearson(mu_hat[i] - pert_mean, mu[i] - pert_mean, atol)
                if pert_mean is not None
                else float("nan")
            ),
            "direction_accuracy_de": _direction_accuracy(
                pred_change[i, de], obs_change[i, de], atol
            ),
            "direction_accuracy_de_notarget": _direction_accuracy(
                pred_change[i, de_nt], obs_change[i, de_nt], atol
            ),
            "direction_accuracy_all": _direction_accuracy(pred_change[i], obs_change[i], atol),
            "pearson_means_all": pearson(mu_hat[i], mu[i], atol),
            "pearson_means_de": pearson(mu_hat[i, de], mu[i, de], atol),
            "energy_distance": float("nan"),
            "mmd": float("nan"),
            "rank": float(rank[i]),
            "n_cells_predicted": int(n_pred[i]),
            "n_cells_observed": int(n_obs[i]),
            "n_targets": len(t),
            "n_de_genes_used": int(de.size),
        }
        if distribution_metrics:
            a, b = pred_rows[i], obs_rows[i]
            m = min(a.size, b.size, max_cells)
            if m >= 2:
                rng = _seed_for(p, seed)
                a = np.sort(rng.choice(a, size=m, replace=False)) if a.size > m else a
                b = np.sort(rng.choice(b, size=m, replace=False)) if b.size > m else b
                za = _project(x_pred, a, pca_mean, comps)
                zb = _project(x_obs, b, pca_mean, comps)
                row["energy_distance"] = energy_distance(za, zb)
                row["mmd"] = mmd(za, zb)
        rows.append(row)
    table = pd.DataFrame(rows, index=pd.Index(perts, name="perturbation"))
    logger.info("Evaluated %d perturbations on %d genes", n_p, n_genes)
    return table


# ---------------------------------------------------------------------------------------------
# summarize


def summarize(
    results: Mapping[str, pd.DataFrame],
    reference: str | None = None,
    metrics: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Average per-perturbation metrics per method, with bootstrap CIs and paired win rates.

    Parameters
    ----------
    results
        ``method -> evaluate() table`` (perturbations as index).
    reference
        A method of ``results``; for every other method and metric, the fraction of shared
        perturbations (both values non-NaN) on which ``reference`` is better is reported
        (ties count one half; orientation from :data:`METRICS`).
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
    ``reference_win_rate`` and ``n_paired`` (NaN / 0 for the reference itself or without a
    reference).
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
                        rate = win_rate(
                            joined["ref"].to_numpy(), joined["other"].to_numpy(), higher
                        )
                        row["reference_win_rate"] = rate
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
