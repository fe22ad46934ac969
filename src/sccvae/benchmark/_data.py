"""Benchmark data: reading or simulating it, checking it, and splitting it into folds."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccvae._inputs import dense
from sccvae._perturbations import PerturbationDesign, perturbation_labels
from sccvae.splits import (
    Split,
    combination_split,
    seen_perturbation_split,
    unseen_perturbation_folds,
)

from ._errors import BenchmarkInputError, _as_input_errors

logger = logging.getLogger(__name__)

#: Extra simulator arguments for ``data="simulated"`` with ``split="combo"``.
SIMULATED_COMBINATIONS = 30

SPLITS = ("unseen", "seen", "combo")

#: Layer of the working copy that keeps the raw counts SCCVAE's ``"nb"`` likelihood reads.
COUNTS_LAYER = "counts"


def _as_float32(x):
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        return x if x.dtype == np.float32 else x.astype(np.float32)
    return np.asarray(x, dtype=np.float32)


#: The simulated scenario of the main benchmark (``sccvae benchmark`` with no data given).
DEFAULT_SCENARIO = "realistic"
#: The main benchmark's test seed. Fixed before the ``realistic`` scenario was recalibrated
#: (its control-cell coexpression, against the real screen): designs are chosen on other
#: seeds (1-5) and on real screens, never on this one. 7, the test seed before that
#: recalibration, and 0, the ``default`` scenario's, were looked at and are not test seeds.
TEST_SEED = 11


def load_data(
    data: str | os.PathLike = "simulated",
    dataset: str | None = None,
    seed: int = TEST_SEED,
    split: str = "unseen",
    simulate_kwargs: dict[str, Any] | None = None,
    scenario: str | None = None,
) -> tuple[AnnData, dict[str, Any]]:
    """Read or simulate the benchmark data.

    Parameters
    ----------
    data
        ``"simulated"`` (:func:`sccvae.data.simulate_perturbseq` with its defaults, plus
        ``n_combinations=30`` for ``split="combo"``, and the arguments of ``scenario``) or a
        path to an ``.h5ad`` file whose ``X`` holds log-normalised expression
        (``normalize_total`` + ``log1p``) or raw counts (non-negative integers; the run
        log-normalises them, see :func:`~sccvae.benchmark.run_benchmark`). A
        ``layers["counts"]`` layer is not used.
    dataset
        For files with an ``obs["dataset"]`` column (e.g. the perturbench devel file), keep
        only the cells of this dataset.
    seed
        Seed of the simulation.
    split
        The split design (decides whether simulated data get combinations).
    simulate_kwargs
        Extra arguments of :func:`~sccvae.data.simulate_perturbseq` (they override the
        scenario's).
    scenario
        A simulated scenario of :data:`sccvae.data.SIMULATION_SCENARIOS` (``"realistic"``,
        ``"default"``, ``"shared-response"``, ``"weak"``, ``"saturation"``); only for
        ``data="simulated"``, where ``None`` is :data:`DEFAULT_SCENARIO`.

    Returns
    -------
    The AnnData and a description (for ``summary.md``).
    """
    from sccvae.data import SIMULATION_SCENARIOS

    if str(data) != "simulated" and scenario is not None:
        raise BenchmarkInputError("`scenario` only applies to simulated data (data='simulated').")
    scenario = DEFAULT_SCENARIO if scenario is None else scenario
    if scenario not in SIMULATION_SCENARIOS:
        raise BenchmarkInputError(
            f"Unknown scenario {scenario!r}; choose among {', '.join(SIMULATION_SCENARIOS)}."
        )
    if str(data) == "simulated":
        from sccvae.data import simulate_perturbseq

        kwargs = {**SIMULATION_SCENARIOS[scenario], **(simulate_kwargs or {})}
        kwargs.setdefault("seed", seed)
        if split == "combo":
            kwargs.setdefault("n_combinations", SIMULATED_COMBINATIONS)
        if dataset is not None:
            raise BenchmarkInputError("`dataset` only applies to data read from a file.")
        adata = simulate_perturbseq(**kwargs)
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        call = f"simulate_perturbseq({args})"
        return adata, {"source": "simulated", "scenario": scenario, "call": call}
    path = Path(data).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"Data file {str(path)!r} not found; pass an existing .h5ad file or 'simulated'."
        )
    if path.is_dir() or path.suffix != ".h5ad":
        raise BenchmarkInputError(f"{str(path)!r} is not an .h5ad file.")
    import anndata as ad

    adata = ad.read_h5ad(path)
    description: dict[str, Any] = {"source": str(path.resolve())}
    if dataset is not None:
        if "dataset" not in adata.obs.columns:
            raise BenchmarkInputError(
                f"`--dataset {dataset}` given but {path.name} has no obs['dataset'] column."
            )
        available = sorted(adata.obs["dataset"].astype(str).unique())
        if dataset not in available:
            raise BenchmarkInputError(
                f"Unknown dataset {dataset!r}; {path.name} holds {available}."
            )
        adata = adata[adata.obs["dataset"].astype(str).to_numpy() == dataset].copy()
        description["dataset"] = dataset
    elif "dataset" in adata.obs.columns and adata.obs["dataset"].nunique() > 1:
        available = sorted(adata.obs["dataset"].astype(str).unique())
        msg = (
            f"{path.name} holds several datasets {available} and all are used together; "
            "pass `dataset` (CLI: --dataset NAME) to benchmark one."
        )
        logger.warning(msg)
        description["note"] = msg
    return adata, description


#: File types :func:`load_embedding` reads.
EMBEDDING_FORMATS = (".csv", ".tsv", ".parquet", ".h5ad")


def load_embedding(path: str | os.PathLike) -> pd.DataFrame:
    """Read a gene embedding (genes x dimensions) for ``perturbation_embedding``.

    Parameters
    ----------
    path
        ``.csv`` / ``.tsv``: a table with gene names in its first column (the index) and one
        numeric column per dimension; ``.parquet``: the same (its stored index, else its
        first column, names the genes); ``.h5ad``: genes as ``obs_names``, dimensions in
        ``X``.

    Returns
    -------
    A float32 DataFrame indexed by gene name (strings), as SCCVAE
    (``perturbation_embedding=``), the linear baseline and kNN take it.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    BenchmarkInputError
        For another file type, an empty table, non-numeric or non-finite values, or a gene
        named twice.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"Embedding file {str(path)!r} not found; pass a genes x dimensions table "
            f"({', '.join(EMBEDDING_FORMATS)})."
        )
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        frame = pd.read_csv(path, index_col=0, sep="\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        frame = pd.read_parquet(path)
        if isinstance(frame.index, pd.RangeIndex) and frame.shape[1] > 1:
            frame = frame.set_index(frame.columns[0])  # gene names stored as a column
    elif suffix == ".h5ad":
        import anndata as ad

        table = ad.read_h5ad(path)
        x = dense(table.X)
        frame = pd.DataFrame(x, index=table.obs_names, columns=table.var_names)
    else:
        raise BenchmarkInputError(
            f"Cannot read the embedding {path.name!r}: use a file ending in "
            f"{', '.join(EMBEDDING_FORMATS)} (genes x dimensions, gene names as the index)."
        )
    where = f"The embedding {path.name!r}"
    if frame.empty:
        raise BenchmarkInputError(f"{where} is empty; it needs one row per gene.")
    text = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise BenchmarkInputError(
            f"{where} has non-numeric columns {text[:5]}: it must hold gene names in its "
            "index (the first column of a CSV) and numbers in every other column."
        )
    frame.index = pd.Index([str(g) for g in frame.index])
    if frame.index.has_duplicates:
        twice = sorted(set(frame.index[frame.index.duplicated()]))
        raise BenchmarkInputError(f"{where} names genes more than once: {twice[:5]}.")
    values = frame.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise BenchmarkInputError(f"{where} has NaN or infinite values; fill or drop them.")
    return frame.astype(np.float32)


def _input_data(adata, data, dataset, seed, split, simulate_kwargs, scenario, obs_filter):
    """Return the AnnData to benchmark and its description (input errors: BenchmarkInputError).

    ``adata`` when given (restricted to ``dataset``), else :func:`load_data` of ``data``;
    then only the cells that pass ``obs_filter`` (:func:`_filter_cells`), if given.
    """
    if adata is None:
        with _as_input_errors():
            adata, description = load_data(
                data,
                dataset=dataset,
                seed=seed,
                split=split,
                simulate_kwargs=simulate_kwargs,
                scenario=scenario,
            )
    else:
        adata, description = _given_data(adata, dataset, scenario)
    if obs_filter is not None:
        adata, filtered = _filter_cells(adata, obs_filter)
        description.update(filtered)
    return adata, description


def _given_data(
    adata: AnnData, dataset: str | None, scenario: str | None
) -> tuple[AnnData, dict[str, Any]]:
    """Check an AnnData given to run_benchmark; keep only ``dataset``'s cells, if given."""
    if not isinstance(adata, AnnData):
        raise BenchmarkInputError(f"`adata` must be an AnnData, got {type(adata).__name__}.")
    if scenario is not None:
        raise BenchmarkInputError("`scenario` only applies to simulated data, not to `adata`.")
    description: dict[str, Any] = {"source": "AnnData given to run_benchmark"}
    if dataset is not None:
        if "dataset" not in adata.obs.columns:
            raise BenchmarkInputError("`dataset` given but adata.obs has no 'dataset' column.")
        keep = adata.obs["dataset"].astype(str).to_numpy() == dataset
        if not keep.any():
            raise BenchmarkInputError(f"No cell has obs['dataset'] == {dataset!r}.")
        adata = adata[keep]
        description["dataset"] = dataset
    return adata, description


def _describe(adata: AnnData, design: PerturbationDesign) -> dict[str, Any]:
    """Count the cells, genes, controls, perturbations and combinations of ``adata``.

    ``design`` is the perturbation design of ``adata``.
    """
    perts = design.perturbations
    n_combos = sum(1 for p in perts if len(design.targets(p)) > 1)
    return {
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_control_cells": int((design.labels == design.control_label).sum()),
        "n_perturbations": len(perts),
        "n_combinations": n_combos,
    }


def _working_copy(
    adata: AnnData, key: str, counts: bool = False, keep_counts: bool = False
) -> AnnData:
    """Return a light float32 copy with only X, the label column and gene names.

    With ``counts`` (``adata.X`` holds raw counts), X of the copy is their log-normalisation
    (:func:`sccvae.data.log_normalize_counts`: ``normalize_total(target_sum=1e4)`` + ``log1p``,
    each cell on its own total) and, with ``keep_counts``, the counts are kept in
    ``layers[COUNTS_LAYER]`` (for SCCVAE's negative binomial likelihood).
    """
    from sccvae.data import log_normalize_counts

    if adata.X is None:
        raise BenchmarkInputError(
            "adata.X is empty; put log-normalised expression or raw counts in X."
        )
    var_names = pd.Index([str(g) for g in adata.var_names])
    if not var_names.is_unique:
        raise BenchmarkInputError(
            "Gene names (var_names) are not unique; call var_names_make_unique()."
        )
    labels = perturbation_labels(adata.obs, key)
    obs = pd.DataFrame({key: pd.Categorical(labels)}, index=adata.obs_names.astype(str))
    layers = {}
    if counts:
        raw = _as_float32(adata.X)
        x = log_normalize_counts(raw)
        if keep_counts:
            layers[COUNTS_LAYER] = sp.csr_matrix(raw)
    else:
        x = _as_float32(adata.X)
    work = AnnData(X=x, obs=obs, var=pd.DataFrame(index=var_names), layers=layers)
    if work.obs_names.has_duplicates:
        work.obs_names_make_unique()
    return work


def _filter_cells(adata: AnnData, expression: str) -> tuple[AnnData, dict[str, Any]]:
    """Keep the cells whose ``obs`` satisfies ``expression`` (a ``DataFrame.query``).

    Returns a view of the kept cells (``adata`` is not modified) and a description.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise BenchmarkInputError(
            f"`obs_filter` must be a non-empty pandas query string, e.g. "
            f"'grna_max_frac >= 0.8'; got {expression!r}."
        )
    # positions, not names: obs_names may repeat
    obs = adata.obs.reset_index(drop=True)
    try:
        kept = obs.query(expression).index.to_numpy()
    except Exception as err:  # pandas raises many types (NameError, SyntaxError, TypeError...)
        raise BenchmarkInputError(
            f"The cell filter {expression!r} cannot be applied to obs: {err}. It must be a "
            f"pandas DataFrame.query expression over the obs columns {list(adata.obs.columns)}."
        ) from err
    if kept.size == 0:
        raise BenchmarkInputError(f"The cell filter {expression!r} keeps no cell.")
    description = f"{expression} (kept {kept.size} of {adata.n_obs} cells)"
    return adata[np.sort(kept)], {"obs_filter": description}


def _make_splits(
    adata: AnnData,
    split: str,
    n_folds: int,
    key: str,
    seed: int,
    design: PerturbationDesign,
    eligible: Sequence[str] | None = None,
) -> list[Split]:
    """Split ``adata`` (perturbation design ``design``) by the split design ``split``.

    ``eligible``: the perturbations an unseen split may test (None: all).
    """
    labelling = {
        "perturbation_key": key,
        "control_label": design.control_label,
        "combination_delimiter": design.delimiter,
        "design": design,
    }
    if split == "unseen":
        return unseen_perturbation_folds(
            adata, n_folds=n_folds, seed=seed, eligible=eligible, **labelling
        )
    if split == "seen":
        return [seen_perturbation_split(adata, seed=seed, **labelling)]
    return [combination_split(adata, seed=seed, **labelling)]


def _onehot_embedding(targets: Sequence[str]) -> pd.DataFrame:
    targets = sorted(set(targets))
    return pd.DataFrame(np.eye(len(targets), dtype=np.float32), index=targets, columns=targets)
