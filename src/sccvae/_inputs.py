"""Checking and reading the expression a user registers: finite values, counts, dense rows."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from ._constants import REGISTRY_KEYS
from ._perturbations import check_control_label, parse_perturbation, perturbation_labels

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


def check_setup(
    adata,
    perturbation_key: str,
    control_label: str,
    layer: str | None,
    delimiter: str,
    min_cells: int,
    stacklevel: int = 2,
) -> None:
    """Check an AnnData before registration; nothing is written into it.

    Every label must parse (:func:`~sccvae._perturbations.parse_perturbation`), control
    cells must exist, ``layer`` must exist and the expression be finite (errors); labels with
    fewer than ``min_cells`` cells are warned about. ``stacklevel`` is that of the caller.
    """
    labels = perturbation_labels(adata.obs, perturbation_key)
    check_control_label(labels, control_label, perturbation_key)
    uniques, counts = np.unique(labels, return_counts=True)
    for label in uniques:
        parse_perturbation(label, control_label, delimiter)
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"Layer {layer!r} not found in adata.layers ({list(adata.layers)}).")
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_finite(adata.X if layer is None else adata.layers[layer], where)
    rare = [
        f"{u} ({c})"
        for u, c in zip(uniques, counts, strict=True)
        if c < min_cells and u != control_label
    ]
    if rare:
        warnings.warn(
            f"{len(rare)} perturbation(s) have fewer than {min_cells} cells and will be "
            f"learned poorly: {rare[:10]}.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


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
    return 0.0 if _lowest(matrix) >= 0 else None


def _lowest(matrix) -> float:
    """Return the smallest value of a dense, sparse or backed matrix (0 when empty)."""
    if isinstance(matrix, np.ndarray | np.matrix) or sp.issparse(matrix):
        values = _values(matrix)
        lowest = float(values.min()) if values.size else 0.0
        # a sparse matrix with implicit zeros holds 0 too
        if sp.issparse(matrix) and values.size < np.prod(matrix.shape):
            lowest = min(lowest, 0.0)
        return lowest
    rows = range(0, matrix.shape[0], CHUNK)
    return min((float(dense(matrix[i : i + CHUNK]).min()) for i in rows), default=0.0)


def looks_like_counts(matrix, n_check: int = 100_000) -> bool:
    """Tell whether ``matrix`` holds raw counts: non-negative integers, some above 1.

    Log-normalised values are almost never integers, so integer values mean counts; a 0 / 1
    matrix is more likely binarised than counts and is left as it is. Only the first
    ``n_check`` stored values are read (of the first rows, for a backed matrix).
    """
    if not (isinstance(matrix, np.ndarray | np.matrix) or sp.issparse(matrix)):
        matrix = matrix[:CHUNK]
    values = np.asarray(_values(matrix)[:n_check])
    if values.size == 0:
        return False
    return bool(values.min() >= 0 and np.all(values == np.round(values)) and values.max() > 1)


def check_expression(matrix, where: str, likelihood: str, stacklevel: int = 2) -> float | None:
    """Check the registered expression against the likelihood; return the expression floor.

    ``"nb"`` needs raw counts (a ValueError otherwise, see :func:`check_counts`) and has no
    floor. ``"gaussian"`` models log-normalised expression: raw counts get a UserWarning
    naming both fixes (``likelihood="nb"``, or ``normalize_total`` + ``log1p``), negative
    (scaled) values one saying that predictions have no floor and stay on that scale.
    ``stacklevel`` is that of the caller's caller, the user's line.
    """
    if likelihood == "nb":
        check_counts(matrix, where)
        return 0.0
    if looks_like_counts(matrix):
        warnings.warn(
            f"{where} looks like raw counts (non-negative integers), but likelihood='gaussian' "
            "models log-normalised expression: the model would fit and predict counts on a "
            "linear scale, dominated by the most expressed genes. Either keep the counts and "
            "use SCCVAE(adata, likelihood='nb'), or log-normalise them first "
            "(scanpy.pp.normalize_total(adata, target_sum=1e4); scanpy.pp.log1p(adata)) and "
            "call setup_anndata again.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
    floor = expression_floor(matrix)
    if floor is None:
        warnings.warn(
            f"{where} has negative values (scaled or z-scored expression?): with "
            "likelihood='gaussian' predictions are on that scale and have no expression floor "
            "(a knock-down can take a gene below any observed value). For a floor at zero "
            "and changes on the log scale, register log-normalised expression "
            "(normalize_total + log1p, not scaled), e.g. a layer kept before scaling "
            "(setup_anndata(adata, layer='log1p')).",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
    return floor


def check_counts(matrix, where: str) -> None:
    """Raise a ValueError unless ``matrix`` holds non-negative integers (raw counts)."""
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


def log_normalize(
    counts, target_sum: float = 1e4, totals: np.ndarray | None = None
) -> np.ndarray | sp.spmatrix:
    """Return ``log1p(counts / rowsum * target_sum)``, sparse if ``counts`` is.

    scanpy's ``normalize_total`` + ``log1p``, computed in float64; rows without counts stay 0.
    ``totals``: each row's total count, when ``counts`` holds only some of each cell's genes.
    (:func:`sccvae.data.log_normalize_counts` gives it as float32 CSR.)
    """
    if totals is None:
        totals = counts.sum(axis=1, dtype=np.float64)
    scale = target_sum / np.maximum(np.asarray(totals, dtype=np.float64).ravel(), 1.0)
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


def registered_expression(adata_manager, adata):
    """Return the expression matrix registered at setup (``X`` or its layer) of ``adata``."""
    layer = adata_manager.registry["setup_args"]["layer"]
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"Layer {layer!r}, used at setup, is missing from the AnnData given.")
    return adata.X if layer is None else adata.layers[layer]


def registered_label_codes(adata_manager) -> np.ndarray:
    """Return each cell's perturbation label as its registered integer code."""
    return adata_manager.get_from_registry(REGISTRY_KEYS.PERTURBATION_KEY).ravel().astype(int)
