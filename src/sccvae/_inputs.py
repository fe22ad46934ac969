"""Checking and reading the expression a user registers: finite values, counts, dense rows."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Rows read at a time from a (possibly backed or sparse) matrix.
CHUNK = 2048


def dense(matrix) -> np.ndarray:
    """Return a dense numpy array of a dense or sparse matrix (rows of it)."""
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def _values(matrix) -> np.ndarray:
    """Return the stored values of a matrix (for checks that ignore implicit zeros)."""
    if sp.issparse(matrix):
        return matrix.data
    return np.asarray(matrix).ravel()


def check_finite(matrix, where: str) -> None:
    bad = _count_nonfinite(matrix)
    if bad:
        raise ValueError(
            f"{where} contains {bad} NaN or infinite values; remove or impute them before "
            "setup_anndata."
        )


def _count_nonfinite(matrix) -> int:
    if isinstance(matrix, np.ndarray | np.matrix) or sp.issparse(matrix):
        return int(np.size(_values(matrix)) - np.isfinite(_values(matrix)).sum())
    return sum(_count_nonfinite(matrix[i : i + CHUNK]) for i in range(0, matrix.shape[0], CHUNK))


def expression_floor(matrix) -> float | None:
    """Return the floor of the expression: 0 if no value is negative, else ``None``.

    For non-negative (e.g. ``log1p``) data no prediction goes below 0, as a knock-down cannot
    take a gene below zero counts.
    """
    if isinstance(matrix, np.ndarray | np.matrix) or sp.issparse(matrix):
        values = _values(matrix)
        lowest = float(values.min()) if values.size else 0.0
    else:
        rows = range(0, matrix.shape[0], CHUNK)
        lowest = min(float(dense(matrix[i : i + CHUNK]).min()) for i in rows)
    return 0.0 if lowest >= 0 else None


def check_counts(matrix, where: str) -> None:
    for start in range(0, matrix.shape[0], CHUNK):
        values = _values(matrix[start : start + CHUNK])
        if np.any(values < 0):
            raise ValueError(
                f"likelihood='nb' needs raw counts, but {where} has negative values; pass the "
                "counts layer (layer='counts' in setup_anndata)."
            )
        if np.any(np.abs(values - np.round(values)) > 1e-6):
            raise ValueError(
                f"likelihood='nb' needs integer counts, but {where} has non-integer values "
                "(log-normalised data?); register the raw counts layer "
                "(setup_anndata(..., layer='counts')) or use likelihood='gaussian'."
            )


def log_normalize(counts) -> np.ndarray | sp.spmatrix:
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scale = 1e4 / np.maximum(totals, 1.0)
    if sp.issparse(counts):
        scaled = sp.diags(scale) @ counts
        return scaled.log1p()
    return np.log1p(np.asarray(counts) * scale[:, None])


def check_loadable_genes(adata, genes) -> None:
    """Raise a ValueError unless ``adata`` has exactly the model's ``genes``, in order."""
    import pandas as pd

    if not pd.Index(adata.var_names).equals(pd.Index(genes)):
        raise ValueError(
            f"Cannot load the model onto this AnnData: it has {adata.n_vars} genes but the "
            f"model was trained on {len(genes)} different or differently ordered genes. "
            "Subset and order it as the training data (adata[:, genes])."
        )


def check_model_genes(adata, genes) -> None:
    """Raise a ValueError unless ``adata`` has the model's ``genes``, in order."""
    import pandas as pd

    expected = pd.Index(genes)
    if not pd.Index(adata.var_names).equals(expected):
        raise ValueError(
            f"The AnnData's genes ({adata.n_vars}) differ from the model's ({len(expected)}): "
            "subset it to the model's genes in their order (adata[:, model.adata.var_names])."
        )
