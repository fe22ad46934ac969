"""Distances between cell sets (energy distance, MMD) and the PCA space they use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from anndata import AnnData
from scipy.spatial.distance import cdist

from sccvae._inputs import dense

from ._core import _MMD_MULTIPLIERS, _matrix


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
    cells = dense(x).astype(np.float64)
    mean = cells.mean(axis=0)
    k = int(min(n_components, min(cells.shape) - 1))
    if k < 1:
        raise ValueError(f"Too few cells ({cells.shape[0]}) or genes to fit a PCA.")
    centred = cells - mean
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


def _project(x, rows: np.ndarray, mean: np.ndarray, comps: np.ndarray) -> np.ndarray:
    return (dense(x[rows]).astype(np.float64) - mean) @ comps.T
