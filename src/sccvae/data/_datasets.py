"""Loaders and converters for public Perturb-seq datasets.

Every loader returns an AnnData in the package conventions (see
:mod:`sccvae.data._preprocessing`): ``obs["perturbation"]`` with ``"control"`` and sorted
``"A+B"`` combinations, raw counts in ``layers["counts"]`` (CSR float32), log-normalised
``X`` (CSR float32) and unique gene symbols as ``var_names``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccvae._perturbations import canonical_label

from ._download import DATASETS, download_dataset
from ._preprocessing import CONTROL_LABEL, COUNTS_LAYER, _as_csr_float32, log_normalize_counts

logger = logging.getLogger(__name__)

#: Labels read as "unperturbed" (case-insensitive), whole or as a component of a combination.
CONTROL_ALIASES: tuple[str, ...] = (
    "control",
    "ctrl",
    "non-targeting",
    "nontargeting",
    "non_targeting",
    "negative_control",
    "neg_ctrl",
    "",
)
#: Delimiters read as joining the targets of a combination.
COMBINATION_DELIMITERS: tuple[str, ...] = ("+", "_", "|")


def standardize_perturbation_labels(
    labels: Sequence,
    control_aliases: Sequence[str] = CONTROL_ALIASES,
    delimiters: Sequence[str] = COMBINATION_DELIMITERS,
) -> np.ndarray:
    """Rewrite perturbation labels into the package convention.

    A label equal (case-insensitively, after stripping spaces) to one of
    ``control_aliases`` becomes ``"control"``. Otherwise it is split on any of
    ``delimiters``; components that are control aliases are dropped (``"KLF1_ctrl"`` and
    ``"ctrl+KLF1"`` mean the single perturbation ``"KLF1"``) and the rest are joined by
    ``"+"`` in sorted order (``"KLF1_CEBPA"`` -> ``"CEBPA+KLF1"``).

    Parameters
    ----------
    labels
        Labels (strings; missing values raise a ``ValueError``).
    control_aliases
        Labels meaning "unperturbed".
    delimiters
        Strings that join the components of a combination. Do not include ``"_"`` for
        datasets whose gene names contain underscores.

    Returns
    -------
    An object array of standardised labels.
    """
    values = pd.Series(labels, dtype=object)
    if values.isna().any():
        raise ValueError(f"{int(values.isna().sum())} perturbation labels are missing.")
    aliases = {a.strip().lower() for a in control_aliases}
    splitter = re.compile("|".join(re.escape(d) for d in delimiters)) if delimiters else None
    cache: dict[str, str] = {}

    def convert(label: str) -> str:
        text = str(label).strip()
        if text.lower() in aliases:
            return CONTROL_LABEL
        parts = splitter.split(text) if splitter is not None else [text]
        parts = [p.strip() for p in parts if p.strip().lower() not in aliases]
        return canonical_label(parts) if parts else CONTROL_LABEL

    out = []
    for label in values:
        key = str(label)
        if key not in cache:
            cache[key] = convert(key)
        out.append(cache[key])
    return np.array(out, dtype=object)


def _is_integer_valued(matrix, n_check: int = 200_000) -> bool:
    data = matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    data = data[:n_check]
    return bool(np.all(data >= 0) and np.allclose(data, np.round(data)))


def _read_counts_h5ad(path: Path, chunk_rows: int = 20_000) -> AnnData:
    """Read an h5ad whose ``X`` holds counts, converting ``X`` to CSR float32 chunk by chunk.

    Reading in backed mode and sparsifying row blocks keeps memory close to the size of the
    sparse result even when ``X`` is stored dense (as in the Replogle files).
    """
    backed = ad.read_h5ad(path, backed="r")
    try:
        obs, var = backed.obs.copy(), backed.var.copy()
        parts = [
            _as_csr_float32(backed.X[s : s + chunk_rows])
            for s in range(0, backed.n_obs, chunk_rows)
        ]
    finally:
        backed.file.close()
    matrix = (
        sp.vstack(parts, format="csr", dtype=np.float32)
        if parts
        else sp.csr_matrix((0, var.shape[0]), dtype=np.float32)
    )
    return AnnData(X=matrix, obs=obs, var=var)


def _unique_index(names: np.ndarray) -> pd.Index:
    """Gene names made unique the anndata way (``"A"``, ``"A-1"``, ...), logging duplicates."""
    index = pd.Index(names)
    if not index.is_unique:
        logger.info(
            "Making %d duplicated gene names unique (suffixes -1, -2, ...).",
            int(index.duplicated().sum()),
        )
        index = ad.utils.make_index_unique(index)
    return index


def _finish(adata: AnnData, counts, labels: np.ndarray, original_key: str | None) -> AnnData:
    """Assemble the conventions: labels, counts layer, log-normalised X, unique var names."""
    counts = _as_csr_float32(counts)
    obs = adata.obs.copy()
    if original_key is not None and original_key in obs.columns and original_key == "perturbation":
        obs["perturbation_raw"] = obs["perturbation"].astype(str)
    obs["perturbation"] = pd.Categorical(labels)
    out = AnnData(X=log_normalize_counts(counts), obs=obs, var=adata.var.copy())
    out.layers[COUNTS_LAYER] = counts
    out.var_names = out.var_names.astype(str)
    if not out.var_names.is_unique:
        out.var_names = _unique_index(out.var_names.to_numpy())
    out.uns["log1p"] = {"base": None}
    return out


def from_replogle(
    adata: AnnData,
    gene_key: str = "gene",
    control_value: str = "non-targeting",
    gene_name_key: str = "gene_name",
) -> AnnData:
    """Convert a Replogle et al. 2022 raw single-cell h5ad to the package conventions.

    The raw files (``*_raw_singlecell_01.h5ad``) hold raw UMI counts in ``X`` (cells x
    genes, Ensembl IDs as ``var_names``, symbols in ``var["gene_name"]``) and the targeted
    gene in ``obs["gene"]`` (``"non-targeting"`` for control cells), with the guide in
    ``obs["gene_transcript"]`` / ``obs["sgID_AB"]``.

    Parameters
    ----------
    adata
        The raw AnnData (not modified).
    gene_key
        obs column with the targeted gene.
    control_value
        Value of ``gene_key`` for control cells.
    gene_name_key
        var column with gene symbols (kept ``var_names`` when absent). The original
        ``var_names`` are kept in ``var["gene_id"]``.

    Returns
    -------
    A new AnnData in the package conventions; all original obs columns are kept.
    """
    if gene_key not in adata.obs.columns:
        raise KeyError(
            f"Column {gene_key!r} not found in adata.obs (columns: {list(adata.obs.columns)}); "
            "pass the column with the targeted gene as `gene_key`."
        )
    raw = adata.obs[gene_key]
    if raw.isna().any():
        raise ValueError(f"adata.obs[{gene_key!r}] has {int(raw.isna().sum())} missing values.")
    raw = raw.astype(str).str.strip()
    if not (raw == control_value).any():
        raise ValueError(
            f"No control cells: no cell has obs[{gene_key!r}] == {control_value!r} "
            f"(values include {list(pd.unique(raw))[:5]}). Pass the right `control_value`."
        )
    labels = np.where(raw.to_numpy() == control_value, CONTROL_LABEL, raw.to_numpy()).astype(
        object
    )
    counts = adata.X
    if not _is_integer_valued(counts):
        raise ValueError("adata.X does not hold raw counts (non-integer or negative values).")
    var = adata.var.copy()
    var["gene_id"] = adata.var_names.astype(str)
    if gene_name_key in var.columns:
        var.index = _unique_index(var[gene_name_key].astype(str).to_numpy())
    tmp = AnnData(obs=adata.obs, var=var, X=sp.csr_matrix(adata.shape, dtype=np.float32))
    return _finish(tmp, counts, labels, None)


def from_scperturb(
    adata: AnnData,
    perturbation_key: str = "perturbation",
    control_aliases: Sequence[str] = CONTROL_ALIASES,
    delimiters: Sequence[str] = COMBINATION_DELIMITERS,
    counts_layer: str = COUNTS_LAYER,
) -> AnnData:
    """Convert an scPerturb-style h5ad (e.g. ``NormanWeissman2019_filtered.h5ad``).

    scPerturb files hold raw counts in ``X``, gene symbols as ``var_names`` and the
    perturbation in ``obs["perturbation"]``; the Norman 2019 file writes controls as
    ``"control"`` and doubles as ``"GENE1_GENE2"``. Because such conventions differ between
    releases, labels are read robustly by :func:`standardize_perturbation_labels`: control
    aliases ``"control"``, ``"ctrl"``, ``"non-targeting"``, ``""`` (case-insensitive,
    whole or as a component) and delimiters ``"_"``, ``"+"``, ``"|"``. Cells without a label
    are dropped (logged). The original labels are kept in ``obs["perturbation_raw"]``.

    Parameters
    ----------
    adata
        The scPerturb AnnData (not modified).
    perturbation_key
        obs column with the perturbation labels.
    control_aliases, delimiters
        See :func:`standardize_perturbation_labels`.
    counts_layer
        Used for the counts when ``X`` does not hold integers and this layer exists.

    Returns
    -------
    A new AnnData in the package conventions.
    """
    if perturbation_key not in adata.obs.columns:
        raise KeyError(
            f"Column {perturbation_key!r} not found in adata.obs "
            f"(columns: {list(adata.obs.columns)}); "
            "pass the column with perturbation labels as `perturbation_key`."
        )
    missing = adata.obs[perturbation_key].isna().to_numpy()
    if missing.any():
        logger.warning("Dropping %d cells without a perturbation label.", int(missing.sum()))
        adata = adata[~missing]
    labels = standardize_perturbation_labels(
        adata.obs[perturbation_key].astype(str), control_aliases, delimiters
    )
    if not np.any(labels == CONTROL_LABEL):
        raise ValueError(
            f"No control cells: no label in obs[{perturbation_key!r}] is a control alias "
            f"{list(control_aliases)}; values include {list(pd.unique(labels))[:5]}."
        )
    if _is_integer_valued(adata.X):
        counts = adata.X
    elif counts_layer in adata.layers and _is_integer_valued(adata.layers[counts_layer]):
        counts = adata.layers[counts_layer]
    else:
        raise ValueError(
            f"Neither adata.X nor layers[{counts_layer!r}] holds raw counts "
            "(non-negative integers)."
        )
    obs = adata.obs.copy()
    obs["perturbation_raw"] = obs[perturbation_key].astype(str)
    var = adata.var.copy()
    var.index = _unique_index(var.index.astype(str).to_numpy())
    tmp = AnnData(obs=obs, var=var, X=sp.csr_matrix(adata.shape, dtype=np.float32))
    return _finish(tmp, counts, labels, None)


def _resolve(path: str | os.PathLike | None, name: str, cache_dir, force_download: bool) -> Path:
    if path is not None:
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist. Pass the path of a local copy of "
                f"{DATASETS[name].filename} "
                f"(from {DATASETS[name].url}) as `path=`, or leave `path=None` to download it."
            )
        return path
    return download_dataset(name, cache_dir=cache_dir, force_download=force_download)


def replogle2022_k562_essential(
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
) -> AnnData:
    """Replogle et al. 2022 K562 essential-gene CRISPRi Perturb-seq (raw single cells).

    Source: ``K562_essential_raw_singlecell_01.h5ad`` on figshare
    (https://plus.figshare.com/ndownloader/files/35773219; about 10 GB, ~310k cells x 8,563
    genes, ~10.7k non-targeting controls). With ``path=None`` the file is downloaded on first
    use into the cache (``cache_dir``, else ``$SCCVAE_CACHE_DIR``, else
    ``platformdirs.user_cache_dir("sccvae")``). We do not know a published checksum for this
    file: the SHA-256 of the first download is recorded next to it (``<file>.sha256``) and
    later uses are verified against it. A local copy given as ``path=`` is used as is.

    ``X`` of the raw file (dense counts) is converted to sparse in row blocks. The result
    still needs memory for two sparse matrices of ~1e9 non-zeros (counts and log values):
    plan for ~20 GB of RAM. Use :func:`filter_strong_perturbations` and
    :func:`select_genes` afterwards to reproduce the paper's 276 perturbations.

    Parameters
    ----------
    path
        A local copy of the raw h5ad (skips the download).
    cache_dir
        Download cache directory.
    force_download
        Download again even if cached.

    Returns
    -------
    AnnData in the package conventions (``obs["perturbation"]`` is the targeted gene or
    ``"control"``; original obs columns such as ``gene_transcript`` are kept; Ensembl IDs in
    ``var["gene_id"]``).

    Raises
    ------
    DatasetDownloadError
        When the download fails (e.g. no network); the message shows how to pass ``path=``.
    """
    file = _resolve(path, "replogle2022_k562_essential", cache_dir, force_download)
    logger.info("Reading %s", file)
    return from_replogle(_read_counts_h5ad(file))


def norman2019(
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    perturbation_key: str = "perturbation",
) -> AnnData:
    """Norman et al. 2019 K562 CRISPRa screen of single and double perturbations.

    Source: the scPerturb harmonised file ``NormanWeissman2019_filtered.h5ad`` (zenodo,
    https://zenodo.org/records/13350497; earlier record 7041849 hosts the same file name),
    raw counts in ``X``, gene symbols as ``var_names``, labels in ``obs["perturbation"]``
    written ``"control"`` / ``"KLF1"`` / ``"CEBPA_KLF1"``. Labels are converted with
    :func:`standardize_perturbation_labels`, which also accepts ``"ctrl"``,
    ``"non-targeting"``, ``""`` and the ``"+"`` / ``"|"`` delimiters, so other releases of the
    file load too. The download is verified against the md5 reported for the scPerturb file
    by independent public projects (``c870e696...``); a local ``path=`` is used as is.

    Parameters
    ----------
    path
        A local copy of the h5ad (skips the download).
    cache_dir
        Download cache directory.
    force_download
        Download again even if cached.
    perturbation_key
        obs column with the labels in the source file.

    Returns
    -------
    AnnData in the package conventions (doubles as ``"A+B"``, original labels in
    ``obs["perturbation_raw"]``).

    Raises
    ------
    DatasetDownloadError
        When the download fails (e.g. no network); the message shows how to pass ``path=``.
    """
    file = _resolve(path, "norman2019", cache_dir, force_download)
    logger.info("Reading %s", file)
    raw = _read_counts_h5ad(file)
    if not _is_integer_valued(raw.X):
        raw = ad.read_h5ad(file)  # counts may live in a layer: read everything
    return from_scperturb(raw, perturbation_key=perturbation_key)


def recover_counts(log_normalized, tolerance: float = 0.05) -> tuple[sp.csr_matrix, float]:
    """Recover integer counts from ``log1p(normalize_total(counts))`` values.

    Within a cell, ``expm1(x)`` is proportional to the counts; assuming the smallest non-zero
    value is one UMI, ``counts = round(expm1(x) / min_nonzero(expm1(x)))``. This holds for
    data normalised on all genes and subset afterwards as long as each cell keeps a gene with
    a single UMI.

    Returns
    -------
    counts
        CSR float32.
    fraction_off
        Fraction of non-zero entries farther than ``tolerance`` from an integer before
        rounding (near 0 when the assumption holds).
    """
    matrix = sp.csr_matrix(log_normalized, dtype=np.float64, copy=True)
    matrix.eliminate_zeros()
    values = np.expm1(matrix.data)
    nnz_per_row = np.diff(matrix.indptr)
    has = nnz_per_row > 0
    mins = np.ones(matrix.shape[0])
    if values.size:
        mins[has] = np.minimum.reduceat(values, matrix.indptr[:-1][has])
    scaled = values / np.repeat(mins, nnz_per_row)
    rounded = np.rint(scaled)
    fraction_off = float(np.mean(np.abs(scaled - rounded) > tolerance)) if scaled.size else 0.0
    counts = sp.csr_matrix(
        (rounded.astype(np.float32), matrix.indices, matrix.indptr), shape=matrix.shape
    )
    counts.eliminate_zeros()
    return counts, fraction_off


def perturbench_devel(
    path: str | os.PathLike,
    dataset: str | None = "norman19",
    renormalize: bool = False,
) -> AnnData:
    """Read the perturbench development subset (``devel.h5ad``) in the package conventions.

    The file (5,961 cells x 500 highly variable genes; ``obs["condition"]`` labels,
    ``obs["dataset"]`` in ``{"norman19", "mcfaline23"}``) holds
    ``log1p(normalize_total(1e4))`` values computed on all genes before gene selection and no
    counts. Counts are recovered exactly with :func:`recover_counts`.

    Parameters
    ----------
    path
        Path to the h5ad.
    dataset
        Value of ``obs["dataset"]`` to keep; ``None`` keeps all cells.
    renormalize
        With ``False`` (default) ``X`` is the file's values as float32, i.e. normalised by each
        cell's *full-transcriptome* total (the same recipe, before gene selection). With
        ``True`` ``X`` is recomputed from the recovered counts of the 500 genes.

    Returns
    -------
    AnnData with ``obs["perturbation"]`` (from ``condition``), ``layers["counts"]`` and
    ``X`` (CSR float32).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    adata = ad.read_h5ad(path)
    if "condition" not in adata.obs.columns:
        raise KeyError(f"{path} has no obs['condition'] column; is it the perturbench devel file?")
    if dataset is not None:
        if "dataset" not in adata.obs.columns:
            raise KeyError(f"{path} has no obs['dataset'] column; pass dataset=None.")
        available = sorted(adata.obs["dataset"].astype(str).unique())
        if dataset not in available:
            raise ValueError(f"Unknown dataset {dataset!r}; available: {available}.")
        adata = adata[adata.obs["dataset"].astype(str).to_numpy() == dataset].copy()
    counts, off = recover_counts(adata.X)
    if off > 0.001:
        logger.warning(
            "%.3f%% of entries were not close to integer counts when recovering counts.", 100 * off
        )
    labels = standardize_perturbation_labels(adata.obs["condition"].astype(str), delimiters=("+",))
    obs = adata.obs.copy()
    for column in obs.columns:
        if isinstance(obs[column].dtype, pd.CategoricalDtype):
            obs[column] = obs[column].cat.remove_unused_categories()
    obs["perturbation"] = pd.Categorical(labels)
    x = log_normalize_counts(counts) if renormalize else _as_csr_float32(adata.X)
    out = AnnData(X=x, obs=obs, var=adata.var.copy())
    out.layers[COUNTS_LAYER] = counts
    out.uns["log1p"] = {"base": None}
    out.uns["counts_recovery_fraction_off"] = off
    return out
