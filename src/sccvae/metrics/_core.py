"""Shared numerics of the metrics: correlations and group moments."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccvae._perturbations import PerturbationDesign, design_of

_CONSTANT_RTOL = 1e-6
_MMD_MULTIPLIERS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
_DEFAULT_MAX_CELLS = 500


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


def mean_of_perturbation_means(
    adata: AnnData,
    perturbation_key: str = "perturbation",
    control_label: str = "control",
    combination_delimiter: str = "+",
    *,
    design: PerturbationDesign | None = None,
) -> pd.Series:
    """Mean over (non-control) perturbations of their mean expression, as a gene Series.

    Pass it, computed on the *training* cells, as ``training_perturbation_mean`` to
    :func:`evaluate`. ``design`` is the
    :class:`~sccvae._perturbations.PerturbationDesign` of ``adata`` when the caller has one
    (otherwise it is built from the labels).
    """
    design = design_of(adata.obs, perturbation_key, control_label, combination_delimiter, design)
    perts = design.perturbations
    if not perts:
        raise ValueError(f"No non-control perturbations in adata.obs[{perturbation_key!r}].")
    sums, _, counts = _group_moments(_matrix(adata, "adata"), design.codes, len(perts))
    means = sums / counts[:, None]
    return pd.Series(means.mean(axis=0), index=pd.Index([str(g) for g in adata.var_names]))


def _seed_for(label: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(label.encode())])
