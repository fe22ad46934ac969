"""Benchmark runner: SCCVAE against simple baselines on held-out perturbations.

:func:`run_benchmark` splits a data set (:mod:`sccvae.splits`), trains SCCVAE and the
baselines of :mod:`sccvae.baselines` on the training cells of every split, predicts the
held-out perturbations, scores them with :func:`sccvae.metrics.evaluate` and summarises the
scores with bootstrap confidence intervals and paired win rates of SCCVAE against every
other method (:func:`sccvae.metrics.summarize`). The command line ``sccvae benchmark`` (see
:mod:`sccvae.cli`) wraps it and writes the outputs described in :func:`write_outputs`.

Leakage rules followed here:

- Every model is set up and trained on a copy holding only the split's *training and
  validation* cells, so the targets of test perturbations are truly unseen by SCCVAE (not
  even present, untrained, in its vocabulary). Baselines are fitted on training cells only.
- Predictions start from *training* control cells; the evaluation's control reference and
  its PCA space (distribution metrics) are computed from training cells only.
- Validation cells are given to SCCVAE so its validation loss is logged (and early stopping
  can use it); no test cell is used for training or for any choice.

Methods (:data:`METHODS`): ``"sccvae"`` (SCCVAE, ``graph="full"``), ``"sccvae_nograph"``
(the ``graph="none"`` ablation: shifts without propagation), ``"control"``, ``"mean"``,
``"additive"`` and ``"linear"`` (see :mod:`sccvae.baselines`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccvae._perturbations import (
    canonical_label,
    check_control_label,
    parse_perturbation,
    perturbation_labels,
)
from sccvae.metrics import METRICS, evaluate, fit_pca, mean_of_perturbation_means, summarize
from sccvae.splits import (
    Split,
    combination_split,
    seen_perturbation_split,
    unseen_perturbation_folds,
)

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "KEY_METRICS",
    "PLOT_METRICS",
    "DEFAULT_MAX_EPOCHS",
    "DEFAULT_MODEL_KWARGS",
    "BenchmarkInputError",
    "BenchmarkResult",
    "default_methods",
    "load_data",
    "run_benchmark",
    "write_outputs",
    "format_table",
    "print_table",
]

#: Method name -> description.
METHODS: dict[str, str] = {
    "sccvae": "SCCVAE, full latent graph (the paper's best)",
    "sccvae_nograph": "SCCVAE ablation, graph='none' (shifts are not propagated)",
    "sccvae_direction": "SCCVAE with target_direction=True (shift also along the target gene's latent direction)",
    "sccvae_vector": "SCCVAE with target_shift='vector' (a free latent shift vector per training target)",
    "control": "Training control cells as prediction (no change)",
    "mean": "Mean change over all training perturbations",
    "additive": "Sum of the components' observed single-perturbation changes",
    "linear": "Linear model on gene and perturbation embeddings (Ahlmann-Eltze et al. 2025)",
}

_SCCVAE_METHODS: dict[str, dict[str, Any]] = {
    "sccvae": {"graph": "full"},
    "sccvae_nograph": {"graph": "none"},
    "sccvae_direction": {"graph": "full", "target_direction": True},
    "sccvae_vector": {"graph": "full", "target_shift": "vector"},
}

#: Metrics reported by default (table, summary.md), in this order.
KEY_METRICS: tuple[str, ...] = (
    "pearson_delta_all",
    "pearson_delta_de",
    "mse_de",
    "pearson_delta_de_notarget",
    "direction_accuracy_de",
    "pearson_delta_pertmean_all",
    "energy_distance",
    "rank",
    "mse_all",
    "pearson_means_all",
    "direction_accuracy_all",
)

#: Metrics drawn as bar plots.
PLOT_METRICS: tuple[str, ...] = (
    "pearson_delta_all",
    "pearson_delta_de",
    "mse_de",
    "energy_distance",
    "rank",
)

#: Default training epochs of SCCVAE in the benchmark (chosen so that the default
#: ``sccvae benchmark`` run, 5 folds x 2 SCCVAE variants, fits in 10 minutes on 2 CPU cores).
DEFAULT_MAX_EPOCHS = 15

#: SCCVAE hyperparameters used by the benchmark unless ``model_kwargs`` overrides them.
DEFAULT_MODEL_KWARGS: dict[str, Any] = {"n_latent": 64, "n_hidden": 256}

#: Extra simulator arguments for ``data="simulated"`` with ``split="combo"``.
SIMULATED_COMBINATIONS = 30

_SPLITS = ("unseen", "seen", "combo")


class BenchmarkInputError(ValueError):
    """Bad benchmark input, detected before any training starts."""


# ---------------------------------------------------------------------------------------------
# result


@dataclass
class BenchmarkResult:
    """Outcome of :func:`run_benchmark`.

    Attributes
    ----------
    results
        One row per (method, fold, test perturbation): columns ``method``, ``fold``,
        ``perturbation``, ``category`` (combination split: ``"seen 0/1/2"``, ``"single"``;
        otherwise ``"all"``) and every metric of :func:`sccvae.metrics.evaluate`.
    summary
        :func:`sccvae.metrics.summarize` of all test perturbations (pooled over folds) with
        an extra ``category`` column (``"all"`` plus, for combination splits, each category).
    splits
        The :class:`~sccvae.splits.Split` objects used.
    training
        One row per trained SCCVAE (method, fold, epochs, seconds, last train / validation
        loss, best validation loss and its epoch).
    config
        The run's settings (data description, split, seeds, epochs, model arguments...).
    notes
        Warnings worth recording (fallback embeddings, unpredictable perturbations...).
    wall_time_s
        Duration of the run in seconds.
    deltas
        ``method -> DataFrame`` (perturbations x genes) of predicted mean change from the
        training control mean, plus ``"observed"``; used for the scatter plots.
    """

    results: pd.DataFrame
    summary: pd.DataFrame
    splits: list[Split]
    training: pd.DataFrame = field(default_factory=pd.DataFrame)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_time_s: float = float("nan")
    deltas: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """Methods in the order they were run."""
        return list(dict.fromkeys(self.results["method"]))

    def table(
        self, metrics: Sequence[str] | None = None, category: str = "all", digits: int = 3
    ) -> pd.DataFrame:
        """Return a metric x method table of ``"mean [low, high]"`` (:func:`format_table`)."""
        return format_table(self.summary, metrics=metrics, category=category, digits=digits)

    def __repr__(self) -> str:
        return (
            f"BenchmarkResult(split={self.config.get('split')!r}, methods={self.methods}, "
            f"{len(self.splits)} split(s), {self.results['perturbation'].nunique()} test "
            f"perturbations, {self.wall_time_s:.0f} s)"
        )


# ---------------------------------------------------------------------------------------------
# input handling


def default_methods(split: str) -> tuple[str, ...]:
    """Methods run by default for a split design (``"additive"`` only for combinations)."""
    base = ("sccvae", "sccvae_nograph", "control", "mean", "linear")
    return (*base, "additive") if split == "combo" else base


def _parse_methods(methods: str | Sequence[str] | None, split: str) -> list[str]:
    if methods is None:
        return list(default_methods(split))
    if isinstance(methods, str):
        methods = [m for m in methods.split(",")]
    out = [str(m).strip() for m in methods if str(m).strip()]
    if not out:
        raise BenchmarkInputError("No method given; choose among " + ", ".join(METHODS) + ".")
    unknown = [m for m in out if m not in METHODS]
    if unknown:
        raise BenchmarkInputError(
            f"Unknown method(s) {unknown}; choose among {', '.join(METHODS)}."
        )
    if len(set(out)) != len(out):
        raise BenchmarkInputError(f"Methods listed twice: {out}.")
    return out


def _as_float32(x):
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        return x if x.dtype == np.float32 else x.astype(np.float32)
    return np.asarray(x, dtype=np.float32)


def _looks_like_counts(x, n_check: int = 100_000) -> bool:
    values = x.data if sp.issparse(x) else np.asarray(x).ravel()
    values = values[:n_check]
    if values.size == 0:
        return False
    return bool(np.all(values == np.round(values)) and values.max() > 30)


def load_data(
    data: str | os.PathLike = "simulated",
    dataset: str | None = None,
    seed: int = 0,
    split: str = "unseen",
    simulate_kwargs: dict[str, Any] | None = None,
) -> tuple[AnnData, dict[str, Any]]:
    """Read or simulate the benchmark data.

    Parameters
    ----------
    data
        ``"simulated"`` (:func:`sccvae.data.simulate_perturbseq` with its defaults, plus
        ``n_combinations=30`` for ``split="combo"``) or a path to an ``.h5ad`` file whose
        ``X`` holds *log-normalised* expression (``normalize_total`` + ``log1p``; the
        default Gaussian likelihood models X). A ``layers["counts"]`` layer is not used.
    dataset
        For files with an ``obs["dataset"]`` column (e.g. the perturbench devel file), keep
        only the cells of this dataset.
    seed
        Seed of the simulation.
    split
        The split design (decides whether simulated data get combinations).
    simulate_kwargs
        Extra arguments of :func:`~sccvae.data.simulate_perturbseq`.

    Returns
    -------
    The AnnData and a description (for ``summary.md``).
    """
    if str(data) == "simulated":
        from sccvae.data import simulate_perturbseq

        kwargs = dict(simulate_kwargs or {})
        kwargs.setdefault("seed", seed)
        if split == "combo":
            kwargs.setdefault("n_combinations", SIMULATED_COMBINATIONS)
        if dataset is not None:
            raise BenchmarkInputError("`dataset` only applies to data read from a file.")
        adata = simulate_perturbseq(**kwargs)
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        return adata, {"source": "simulated", "call": f"simulate_perturbseq({args})"}
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


def _describe(adata: AnnData, key: str, control: str, delimiter: str) -> dict[str, Any]:
    labels = perturbation_labels(adata.obs, key)
    perts = {
        canonical_label(parse_perturbation(u, control, delimiter), control, delimiter)
        for u in np.unique(labels)
    } - {control}
    n_combos = sum(1 for p in perts if len(parse_perturbation(p, control, delimiter)) > 1)
    return {
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_control_cells": int((labels == control).sum()),
        "n_perturbations": len(perts),
        "n_combinations": n_combos,
    }


def _working_copy(adata: AnnData, key: str) -> AnnData:
    """Return a light float32 copy with only X, the label column and gene names."""
    if adata.X is None:
        raise BenchmarkInputError("adata.X is empty; put log-normalised expression in X.")
    var_names = pd.Index([str(g) for g in adata.var_names])
    if not var_names.is_unique:
        raise BenchmarkInputError(
            "Gene names (var_names) are not unique; call var_names_make_unique()."
        )
    if _looks_like_counts(adata.X):
        raise BenchmarkInputError(
            "adata.X looks like raw counts (integers); the benchmark models log-normalised "
            "expression in X. Normalise first, e.g. sccvae.data.normalize(adata) or "
            "scanpy's normalize_total(target_sum=1e4) + log1p."
        )
    labels = perturbation_labels(adata.obs, key)
    obs = pd.DataFrame({key: pd.Categorical(labels)}, index=adata.obs_names.astype(str))
    work = AnnData(X=_as_float32(adata.X), obs=obs, var=pd.DataFrame(index=var_names))
    if work.obs_names.has_duplicates:
        work.obs_names_make_unique()
    return work


def _make_splits(
    adata: AnnData, split: str, n_folds: int, key: str, control: str, delimiter: str, seed: int
) -> list[Split]:
    if split == "unseen":
        return unseen_perturbation_folds(
            adata,
            n_folds=n_folds,
            perturbation_key=key,
            control_label=control,
            seed=seed,
            combination_delimiter=delimiter,
        )
    if split == "seen":
        return [
            seen_perturbation_split(
                adata,
                perturbation_key=key,
                control_label=control,
                seed=seed,
                combination_delimiter=delimiter,
            )
        ]
    return [
        combination_split(
            adata,
            perturbation_key=key,
            control_label=control,
            combination_delimiter=delimiter,
            seed=seed,
        )
    ]


def _onehot_embedding(targets: Sequence[str]) -> pd.DataFrame:
    targets = sorted(set(targets))
    return pd.DataFrame(np.eye(len(targets), dtype=np.float32), index=targets, columns=targets)


# ---------------------------------------------------------------------------------------------
# progress


class _Progress:
    """A rich progress display, or a no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def add(self, description: str, total: int) -> Any:
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total)

    def advance(self, task: Any, n: int = 1, description: str | None = None) -> None:
        if self._progress is None or task is None:
            return
        kwargs = {"description": description} if description else {}
        self._progress.update(task, advance=n, **kwargs)

    def remove(self, task: Any) -> None:
        if self._progress is not None and task is not None:
            self._progress.remove_task(task)


def _epoch_callback(progress: _Progress, task: Any):
    import lightning.pytorch as pl

    class _EpochProgress(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: D102
            progress.advance(task)

    return _EpochProgress()


@contextlib.contextmanager
def _cpu_threads(n_threads: int | None) -> Iterator[None]:
    """Limit torch and BLAS (numpy / scipy) CPU threads for the run, restoring them after."""
    import torch

    if n_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n_threads))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - comes with scikit-learn
        limits = contextlib.nullcontext()
    else:
        limits = threadpool_limits(limits=int(n_threads))
    try:
        with limits:
            yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _quiet_lightning(enabled: bool) -> Iterator[None]:
    """Silence Lightning's per-fit INFO banners (GPU available, ...) for the run only."""
    if not enabled:
        yield
        return
    names = ["lightning.pytorch", "lightning.fabric", "lightning"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# ---------------------------------------------------------------------------------------------
# fitting one method


def _history_summary(model) -> dict[str, Any]:
    hist = getattr(model, "history", None) or {}
    out: dict[str, Any] = {}
    if "train_loss_epoch" in hist:
        out["train_loss_last"] = float(np.asarray(hist["train_loss_epoch"]).ravel()[-1])
    if "validation_loss" in hist:
        val = np.asarray(hist["validation_loss"]).ravel().astype(float)
        if val.size:
            out["validation_loss_last"] = float(val[-1])
            out["validation_loss_best"] = float(np.nanmin(val))
            out["validation_best_epoch"] = int(np.nanargmin(val))
    return out


def _predict_each(predict, perts: list[str]) -> tuple[AnnData | None, list[str]]:
    """Predict all ``perts``; on failure, one by one, returning those that failed."""
    import anndata as ad

    try:
        return predict(perts), []
    except ValueError:
        pass
    parts, failed = [], []
    for p in perts:
        try:
            parts.append(predict([p]))
        except ValueError as err:
            failed.append(p)
            logger.debug("Cannot predict %s: %s", p, err)
    if not parts:
        return None, failed
    return ad.concat(parts, index_unique="-"), failed


def _fit_predict(
    method: str,
    train_sub: AnnData,
    sub_train_pos: np.ndarray,
    sub_val_pos: np.ndarray,
    train_cells: AnnData,
    test_perts: list[str],
    *,
    key: str,
    control: str,
    delimiter: str,
    model_kwargs: dict[str, Any],
    train_kwargs: dict[str, Any],
    linear_embedding: pd.DataFrame | None,
    max_epochs: int,
    n_cells: int,
    seed: int,
    progress: _Progress,
    label: str,
) -> tuple[AnnData | None, list[str], dict[str, Any] | None]:
    """Fit ``method`` on the training cells and predict ``test_perts``."""
    if method in _SCCVAE_METHODS:
        from sccvae import SCCVAE

        kwargs = {**DEFAULT_MODEL_KWARGS, **model_kwargs}
        kwargs.update(_SCCVAE_METHODS[method])
        kwargs.setdefault("seed", seed)
        adata = train_sub.copy()
        SCCVAE.setup_anndata(
            adata, perturbation_key=key, control_label=control, combination_delimiter=delimiter
        )
        model = SCCVAE(adata, **kwargs)
        task = progress.add(f"  {label}: training {method}", max_epochs)
        tk = dict(train_kwargs)
        tk.setdefault("enable_progress_bar", False)
        tk.setdefault("enable_model_summary", False)
        callbacks = list(tk.pop("callbacks", []) or [])
        if task is not None:
            callbacks.append(_epoch_callback(progress, task))
        start = time.perf_counter()
        model.train(
            max_epochs=max_epochs,
            train_indices=sub_train_pos,
            validation_indices=sub_val_pos,
            callbacks=callbacks,
            **tk,
        )
        seconds = time.perf_counter() - start
        progress.remove(task)
        info = {"seconds": seconds, "epochs": int(max_epochs), **_history_summary(model)}
        pred, failed = _predict_each(
            lambda p: model.predict(p, n_cells=n_cells, adata=train_cells, seed=seed), test_perts
        )
        return pred, failed, info

    from sccvae import baselines

    if method == "control":
        model = baselines.ControlBaseline(seed=seed)
    elif method == "mean":
        model = baselines.MeanBaseline(seed=seed)
    elif method == "additive":
        model = baselines.AdditiveBaseline(seed=seed)
    elif method == "linear":
        model = baselines.LinearBaseline(seed=seed, perturbation_embedding=linear_embedding)
    else:  # pragma: no cover - validated before
        raise BenchmarkInputError(f"Unknown method {method!r}.")
    model.fit(
        train_sub,
        perturbation_key=key,
        control_label=control,
        combination_delimiter=delimiter,
        train_indices=sub_train_pos,
    )
    pred, failed = _predict_each(
        lambda p: model.predict(p, n_cells=n_cells, seed=seed), test_perts
    )
    return pred, failed, None


def _mean_delta(pred: AnnData, key: str, control_mean: np.ndarray, control: str, delimiter: str):
    labels = perturbation_labels(pred.obs, key)
    canon = [
        canonical_label(parse_perturbation(lab, control, delimiter), control, delimiter)
        for lab in labels
    ]
    x = pred.X.toarray() if sp.issparse(pred.X) else np.asarray(pred.X)
    frame = pd.DataFrame(x.astype(np.float64), columns=[str(g) for g in pred.var_names])
    means = frame.groupby(np.asarray(canon), sort=True).mean()
    return means - control_mean


# ---------------------------------------------------------------------------------------------
# main entry point


def run_benchmark(
    adata: AnnData | None = None,
    data: str | os.PathLike = "simulated",
    perturbation_key: str = "perturbation",
    control_label: str = "control",
    split: str = "unseen",
    n_folds: int = 5,
    max_epochs: int = DEFAULT_MAX_EPOCHS,
    methods: str | Sequence[str] | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    n_cells: int = 100,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    combination_delimiter: str = "+",
    dataset: str | None = None,
    metrics: Sequence[str] = KEY_METRICS,
    n_de_genes: int = 20,
    n_threads: int | None = 1,
    simulate_kwargs: dict[str, Any] | None = None,
    command: str | None = None,
) -> BenchmarkResult:
    """Benchmark SCCVAE and baselines on held-out perturbations.

    Parameters
    ----------
    adata
        Data to benchmark (log-normalised expression in ``X``, labels in
        ``obs[perturbation_key]``); not modified. If None, ``data`` is loaded.
    data
        ``"simulated"`` or a path to an ``.h5ad`` file (see :func:`load_data`).
    perturbation_key, control_label, combination_delimiter
        How cells are labelled (the perturbench devel file uses ``"condition"``).
    split
        ``"unseen"`` (:func:`~sccvae.splits.unseen_perturbation_folds`: test perturbations
        never seen in training, ``n_folds`` folds), ``"seen"``
        (:func:`~sccvae.splits.seen_perturbation_split`, one split) or ``"combo"``
        (:func:`~sccvae.splits.combination_split`: held-out combinations, one split).
    n_folds
        Folds of the unseen split (ignored by the others).
    max_epochs
        SCCVAE training epochs.
    methods
        Method names (list or comma-separated string, see :data:`METHODS`); default
        :func:`default_methods`. Win rates are of ``"sccvae"`` (or the first SCCVAE variant,
        else the first method) against every other method.
    seed
        Seed of the simulation, the splits, the models and the predictions.
    out
        If given, a directory receiving the outputs of :func:`write_outputs`.
    n_cells
        Cells predicted per test perturbation.
    model_kwargs
        SCCVAE arguments, on top of :data:`DEFAULT_MODEL_KWARGS` (``graph`` is set by the
        method). A DataFrame ``perturbation_embedding`` is also given to the linear baseline.
    train_kwargs
        Extra arguments of :meth:`sccvae.SCCVAE.train` (``batch_size``, ``plan_kwargs``,
        ``early_stopping``, ``accelerator``...).
    progress
        Show rich progress bars.
    dataset
        Keep only this ``obs["dataset"]`` value of a file (see :func:`load_data`).
    metrics
        Metrics summarised (all metrics stay in ``results``).
    n_de_genes
        Size of the DE gene sets of the ``*_de`` metrics.
    n_threads
        CPU threads of torch and of the BLAS libraries (numpy, scipy) during the run
        (restored afterwards); None leaves them as they are. The default 1 is much faster
        for these small models on a shared machine: on 2 cores busy with other work,
        2 threads made SCCVAE training steps ~70x and a 6000 x 1000 SVD ~25x slower than
        1 thread.
    simulate_kwargs
        Extra simulator arguments for ``data="simulated"``.
    command
        The command line to record in ``summary.md``.

    Returns
    -------
    A :class:`BenchmarkResult`.

    Raises
    ------
    BenchmarkInputError
        (a ValueError) for bad input: missing columns, no control cells, too few
        perturbations for the folds, unknown methods, a combination split without
        combinations, targets that cannot be embedded for unseen perturbations... All checks
        run before any training.
    FileNotFoundError
        If ``data`` is a path that does not exist.
    """
    start = time.perf_counter()
    if split not in _SPLITS:
        raise BenchmarkInputError(f"Unknown split {split!r}; use one of {list(_SPLITS)}.")
    method_list = _parse_methods(methods, split)
    metrics = list(metrics)
    unknown_metrics = [m for m in metrics if m not in METRICS]
    if unknown_metrics:
        raise BenchmarkInputError(f"Unknown metric(s) {unknown_metrics}; known: {list(METRICS)}.")
    if int(max_epochs) < 1:
        raise BenchmarkInputError(f"`max_epochs` must be at least 1, got {max_epochs}.")
    if int(n_cells) < 2:
        raise BenchmarkInputError(f"`n_cells` must be at least 2, got {n_cells}.")
    model_kwargs = dict(model_kwargs or {})
    train_kwargs = dict(train_kwargs or {})
    for reserved in ("graph",):
        if reserved in model_kwargs:
            raise BenchmarkInputError(
                f"`model_kwargs` may not set {reserved!r}: it is chosen by the method name."
            )
    for reserved in ("max_epochs", "train_indices", "validation_indices"):
        if reserved in train_kwargs:
            raise BenchmarkInputError(f"`train_kwargs` may not set {reserved!r}.")

    # ---- data and validation (everything that can fail on input fails here)
    if adata is None:
        try:
            adata, data_description = load_data(
                data, dataset=dataset, seed=seed, split=split, simulate_kwargs=simulate_kwargs
            )
        except (KeyError, ValueError) as err:
            if isinstance(err, BenchmarkInputError):
                raise
            raise BenchmarkInputError(_message(err)) from err
    else:
        if not isinstance(adata, AnnData):
            raise BenchmarkInputError(f"`adata` must be an AnnData, got {type(adata).__name__}.")
        data_description = {"source": "AnnData given to run_benchmark"}
        if dataset is not None:
            if "dataset" not in adata.obs.columns:
                raise BenchmarkInputError("`dataset` given but adata.obs has no 'dataset' column.")
            keep = adata.obs["dataset"].astype(str).to_numpy() == dataset
            if not keep.any():
                raise BenchmarkInputError(f"No cell has obs['dataset'] == {dataset!r}.")
            adata = adata[keep]
            data_description["dataset"] = dataset
    try:
        work = _working_copy(adata, perturbation_key)
        labels = perturbation_labels(work.obs, perturbation_key)
        check_control_label(labels, control_label, perturbation_key)
        for u in np.unique(labels):
            parse_perturbation(u, control_label, combination_delimiter)
        data_description.update(
            _describe(work, perturbation_key, control_label, combination_delimiter)
        )
        splits = _make_splits(
            work, split, n_folds, perturbation_key, control_label, combination_delimiter, seed
        )
    except (KeyError, ValueError) as err:
        if isinstance(err, BenchmarkInputError):
            raise
        raise BenchmarkInputError(_message(err)) from err
    if data_description["n_perturbations"] < 2:
        raise BenchmarkInputError("At least 2 perturbations are needed for a benchmark.")

    notes: list[str] = []
    if "note" in data_description:
        notes.append(data_description.pop("note"))
    genes = set(work.var_names)
    all_targets = sorted(
        {
            t
            for u in np.unique(labels)
            for t in parse_perturbation(u, control_label, combination_delimiter)
        }
    )
    user_embedding = model_kwargs.get("perturbation_embedding")
    if isinstance(user_embedding, pd.DataFrame):
        embeddable = {str(g) for g in user_embedding.index}
        embedding_name = "the perturbation_embedding DataFrame"
    elif user_embedding in (None, "coexpression"):
        embeddable = genes
        embedding_name = "the measured genes (coexpression embedding)"
    else:  # "onehot" or something SCCVAE will reject
        embeddable = None
        embedding_name = str(user_embedding)
    linear_embedding = user_embedding if isinstance(user_embedding, pd.DataFrame) else None
    needs_embedding = [m for m in method_list if m in _SCCVAE_METHODS or m == "linear"]
    missing = [t for t in all_targets if embeddable is not None and t not in embeddable]
    if missing and needs_embedding:
        if split == "unseen":
            raise BenchmarkInputError(
                f"{len(missing)} of {len(all_targets)} perturbation targets are not among "
                f"{embedding_name} (e.g. {missing[:5]}), so {needs_embedding} cannot represent "
                "them as unseen perturbations: nothing can embed an unmeasured gene without "
                "outside knowledge. Use split='seen' or 'combo' (one-hot embeddings), drop "
                f"these methods, or supply an embedding covering every target."
            )
        msg = (
            f"{len(missing)} of {len(all_targets)} perturbation targets are not among "
            f"{embedding_name} (e.g. {missing[:5]}): SCCVAE and the linear baseline use one-hot "
            "target embeddings instead (seen targets only)."
        )
        logger.warning(msg)
        notes.append(msg)
        if any(m in _SCCVAE_METHODS for m in method_list):
            model_kwargs["perturbation_embedding"] = "onehot"
        linear_embedding = _onehot_embedding(all_targets)
    if user_embedding == "onehot" and split == "unseen" and needs_embedding:
        raise BenchmarkInputError(
            "perturbation_embedding='onehot' cannot represent unseen perturbations; use "
            "'coexpression' or a DataFrame for split='unseen'."
        )

    reference = next((m for m in method_list if m == "sccvae"), None)
    reference = reference or next((m for m in method_list if m in _SCCVAE_METHODS), method_list[0])
    config: dict[str, Any] = {
        "command": command,
        "data": data_description,
        "perturbation_key": perturbation_key,
        "control_label": control_label,
        "combination_delimiter": combination_delimiter,
        "split": split,
        "n_folds": len(splits),
        "methods": method_list,
        "reference": reference,
        "seed": int(seed),
        "max_epochs": int(max_epochs),
        "n_cells": int(n_cells),
        "n_de_genes": int(n_de_genes),
        "model_kwargs": {
            k: (v if not isinstance(v, pd.DataFrame) else f"DataFrame {v.shape}")
            for k, v in {**DEFAULT_MODEL_KWARGS, **model_kwargs}.items()
        },
        "train_kwargs": {k: repr(v) for k, v in train_kwargs.items()},
        "n_threads": n_threads,
    }
    logger.info(
        "Benchmark: %s split, %d split(s), methods %s, %d epochs",
        split,
        len(splits),
        method_list,
        max_epochs,
    )

    # ---- run
    rows: list[pd.DataFrame] = []
    training_rows: list[dict[str, Any]] = []
    deltas: dict[str, list[pd.DataFrame]] = {m: [] for m in [*method_list, "observed"]}
    with (
        _cpu_threads(n_threads),
        _quiet_lightning(True),
        _Progress(progress) as bars,
        warnings.catch_warnings(),
    ):
        # expected in this setting: test perturbations are never predicted by all methods
        warnings.filterwarnings("ignore", message=".*observed perturbation.*no prediction.*")
        overall = bars.add("Benchmark", len(splits) * len(method_list))
        for fold, sp_ in enumerate(splits):
            fold_rows = _run_split(
                fold,
                sp_,
                work,
                method_list,
                key=perturbation_key,
                control=control_label,
                delimiter=combination_delimiter,
                model_kwargs=model_kwargs,
                train_kwargs=train_kwargs,
                linear_embedding=linear_embedding,
                max_epochs=int(max_epochs),
                n_cells=int(n_cells),
                n_de_genes=int(n_de_genes),
                seed=int(seed),
                bars=bars,
                overall=overall,
                notes=notes,
                training_rows=training_rows,
                deltas=deltas,
            )
            rows.extend(fold_rows)

    results = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    scored = _common_perturbations(results, notes)
    summary = _summaries(scored, method_list, reference, metrics, seed)
    result = BenchmarkResult(
        results=results,
        summary=summary,
        splits=splits,
        training=pd.DataFrame(training_rows),
        config=config,
        notes=notes,
        wall_time_s=time.perf_counter() - start,
        deltas={m: pd.concat(v) if v else pd.DataFrame() for m, v in deltas.items()},
    )
    if out is not None:
        write_outputs(result, out)
        result.wall_time_s = time.perf_counter() - start
    return result


def _message(err: BaseException) -> str:
    return str(err.args[0]) if err.args else str(err)


def _run_split(
    fold: int,
    split: Split,
    work: AnnData,
    method_list: list[str],
    *,
    key: str,
    control: str,
    delimiter: str,
    model_kwargs: dict[str, Any],
    train_kwargs: dict[str, Any],
    linear_embedding: pd.DataFrame | None,
    max_epochs: int,
    n_cells: int,
    n_de_genes: int,
    seed: int,
    bars: _Progress,
    overall: Any,
    notes: list[str],
    training_rows: list[dict[str, Any]],
    deltas: dict[str, list[pd.DataFrame]],
) -> list[pd.DataFrame]:
    label = split.name or f"split{fold}"
    keep = np.union1d(split.train_idx, split.validation_idx)
    train_sub = work[keep].copy()
    sub_train = np.searchsorted(keep, split.train_idx)
    sub_val = np.searchsorted(keep, split.validation_idx)
    train_cells = work[split.train_idx].copy()
    test = split.subset(work, "test")
    test_perts = list(split.test_perturbations)
    pca = fit_pca(train_cells, seed=seed)
    pert_mean = mean_of_perturbation_means(train_cells, key, control, delimiter)
    ctrl_rows = perturbation_labels(train_cells.obs, key) == control
    xc = train_cells.X[ctrl_rows]
    control_mean = np.asarray(xc.mean(axis=0), dtype=np.float64).ravel()
    observed = _mean_delta(test, key, control_mean, control, delimiter)
    observed.index = pd.MultiIndex.from_product([[fold], observed.index])
    deltas["observed"].append(observed)

    out = []
    for method in method_list:
        bars.advance(overall, 0, description=f"Benchmark [{label}: {method}]")
        pred, failed, info = _fit_predict(
            method,
            train_sub,
            sub_train,
            sub_val,
            train_cells,
            test_perts,
            key=key,
            control=control,
            delimiter=delimiter,
            model_kwargs=model_kwargs,
            train_kwargs=train_kwargs,
            linear_embedding=linear_embedding,
            max_epochs=max_epochs,
            n_cells=n_cells,
            seed=seed,
            progress=bars,
            label=label,
        )
        if info is not None:
            training_rows.append({"method": method, "fold": fold, **info})
        if failed:
            msg = (
                f"{method} ({label}) cannot represent {len(failed)} of {len(test_perts)} test "
                f"perturbation(s) (targets without embedding), not scored: {failed[:8]}"
            )
            logger.warning(msg)
            notes.append(msg)
        if pred is not None:
            table = evaluate(
                pred,
                test,
                train_cells,
                perturbation_key=key,
                control_label=control,
                combination_delimiter=delimiter,
                n_de_genes=n_de_genes,
                training_perturbation_mean=pert_mean,
                pca=pca,
                seed=seed,
            )
            table = table.reset_index()
            table.insert(0, "fold", fold)
            table.insert(0, "method", method)
            table.insert(
                3,
                "category",
                [split.categories.get(p, "all") for p in table["perturbation"]],
            )
            out.append(table)
            d = _mean_delta(pred, key, control_mean, control, delimiter)
            d.index = pd.MultiIndex.from_product([[fold], d.index])
            deltas[method].append(d)
        bars.advance(overall, 1)
    return out


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


# ---------------------------------------------------------------------------------------------
# reporting


def _fmt(value: float, digits: int) -> str:
    if value is None or not np.isfinite(value):
        return "nan"
    if value != 0 and abs(value) < 10 ** (-digits + 1):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}"


def format_table(
    summary: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    category: str = "all",
    digits: int = 3,
    win_rates: bool = True,
    separator: str = " ",
) -> pd.DataFrame:
    """Metric x method table of ``"mean [ci_low, ci_high]"`` strings.

    Parameters
    ----------
    summary
        ``BenchmarkResult.summary``.
    metrics
        Rows (default: the summary's metrics, in order).
    category
        Test-perturbation category (``"all"`` or a combination category).
    digits
        Decimals.
    win_rates
        Append ``"win X%"``: how often the reference method beats this one.
    separator
        Between the value and the win rate (e.g. a newline for terminals).
    """
    s = summary[summary["category"] == category] if "category" in summary else summary
    if metrics is None:
        metrics = list(dict.fromkeys(s["metric"]))
    methods = list(dict.fromkeys(s["method"]))
    table = pd.DataFrame(
        index=pd.Index(list(metrics), name="metric"), columns=methods, dtype=object
    )
    for _, row in s.iterrows():
        if row["metric"] not in table.index:
            continue
        text = (
            f"{_fmt(row['mean'], digits)} [{_fmt(row['ci_low'], digits)}, "
            f"{_fmt(row['ci_high'], digits)}]"
        )
        if win_rates and np.isfinite(row["reference_win_rate"]):
            text += f"{separator}win {100 * row['reference_win_rate']:.0f}%"
        table.loc[row["metric"], row["method"]] = text
    return table.fillna("")


def _metric_label(metric: str) -> str:
    arrow = "↑" if METRICS[metric][0] else "↓"
    return f"{metric} {arrow}"


def print_table(result: BenchmarkResult, console: Any = None, category: str = "all") -> None:
    """Print the metric x method table of a result with rich.

    Each cell shows the mean over test perturbations with its 95 % bootstrap interval and
    the share of perturbations on which the reference (SCCVAE) is better than that method.
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    reference = result.config.get("reference")
    table_df = format_table(result.summary, category=category, separator="\n")
    s = result.summary[result.summary["category"] == category]
    n = int(s["n"].max()) if len(s) else 0
    title = (
        f"{result.config.get('split')} split, {result.config.get('n_folds')} fold(s), "
        f"{n} test perturbations" + ("" if category == "all" else f", category {category!r}")
    )
    table = Table(
        title=title,
        caption=f"mean [95% CI]; win = share of perturbations where {reference} is better",
        show_lines=True,
    )
    table.add_column("metric", style="bold", no_wrap=True)
    for m in table_df.columns:
        table.add_column(m, justify="right", style="cyan" if m == reference else None)
    for metric, row in table_df.iterrows():
        table.add_row(_metric_label(metric), *[str(v) for v in row])
    console.print(table)


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| metric | " + " | ".join(frame.columns) + " |"
    rule = "|---|" + "---|" * len(frame.columns)
    lines = [header, rule]
    for metric, row in frame.iterrows():
        lines.append(f"| {_metric_label(metric)} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def _machine_info() -> dict[str, str]:
    import torch

    import sccvae

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": str(os.cpu_count()),
        "torch": torch.__version__,
        "torch_threads_default": str(torch.get_num_threads()),
        "sccvae": sccvae.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    try:
        import scvi

        info["scvi-tools"] = scvi.__version__
    except Exception:  # pragma: no cover
        pass
    return info


def _summary_markdown(result: BenchmarkResult, plots: list[str]) -> str:
    cfg = result.config
    data = cfg.get("data", {})
    lines = ["# SCCVAE benchmark", ""]
    command = cfg.get("command") or "(run_benchmark called from Python)"
    lines += ["## Command", "", "```", command, "```", ""]
    lines += ["## Data", ""]
    for k, v in data.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Settings", ""]
    settings_keys = (
        "split",
        "n_folds",
        "methods",
        "reference",
        "seed",
        "max_epochs",
        "n_cells",
        "n_de_genes",
        "model_kwargs",
        "train_kwargs",
        "perturbation_key",
        "control_label",
        "n_threads",
    )
    for k in settings_keys:
        lines.append(f"- {k}: {cfg.get(k)}")
    lines.append(
        "- seeds: one seed is used for the simulation, the split(s), model initialisation, "
        "training minibatches and predicted cells"
    )
    lines.append(f"- wall time: {result.wall_time_s:.1f} s")
    lines += ["", "## Machine", ""]
    for k, v in _machine_info().items():
        lines.append(f"- {k}: {v}")
    if result.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in result.notes]
    lines += [
        "",
        "## Results",
        "",
        "Mean over test perturbations (pooled over folds) [95 % bootstrap CI]; "
        f"win = share of test perturbations on which **{cfg.get('reference')}** is better "
        "than that method (paired, ties count half). ↑ higher is better, ↓ lower is better.",
        "",
    ]
    categories = list(dict.fromkeys(result.summary["category"])) if len(result.summary) else []
    if len(categories) == 2:  # a single category equals "all"
        categories = ["all"]
    for category in categories:
        if category != "all":
            s = result.summary[result.summary["category"] == category]
            lines += ["", f"### Category {category} ({int(s['n'].max())} perturbations)", ""]
        lines.append(_markdown_table(format_table(result.summary, category=category)))
    if not result.training.empty:
        lines += ["", "## SCCVAE training", ""]
        lines.append(_frame_markdown(result.training.round(4)))
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p}]({p})" for p in plots]
    lines += [
        "",
        "## Files",
        "",
        "- `results.csv`: one row per method, fold and test perturbation, all metrics",
        "- `summary.csv`: mean, CI and win rates per method and metric",
        "- `splits.json`: the train / validation / test cell positions of every split",
        "",
    ]
    return "\n".join(lines)


def _frame_markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def plot_metrics(result: BenchmarkResult, path: str | os.PathLike, metrics=PLOT_METRICS) -> None:
    """Bar plot of each metric's mean per method with its 95 % bootstrap CI."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    s = result.summary[result.summary["category"] == "all"]
    metrics = [m for m in metrics if m in set(s["metric"])]
    methods = list(dict.fromkeys(s["method"]))
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(2.2 + 2.6 * len(metrics), 3.6), squeeze=False
    )
    colors = plt.get_cmap("tab10")
    for ax, metric in zip(axes[0], metrics, strict=True):
        sm = s[s["metric"] == metric].set_index("method").reindex(methods)
        mean = sm["mean"].to_numpy(dtype=float)
        lo = np.clip(mean - sm["ci_low"].to_numpy(dtype=float), 0, None)
        hi = np.clip(sm["ci_high"].to_numpy(dtype=float) - mean, 0, None)
        x = np.arange(len(methods))
        ax.bar(
            x,
            np.nan_to_num(mean),
            yerr=np.nan_to_num(np.vstack([lo, hi])),
            color=[colors(i % 10) for i in range(len(methods))],
            capsize=3,
        )
        ax.set_xticks(x)
        ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(_metric_label(metric), fontsize=9)
        ax.axhline(0, color="black", linewidth=0.5)
    fig.suptitle(f"{result.config.get('split')} split: mean over test perturbations, 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scatter(
    result: BenchmarkResult, path: str | os.PathLike, n_perturbations: int = 4
) -> list[str]:
    """Predicted vs observed change from control (all genes) for a few test perturbations.

    The perturbations with the largest observed change are shown; rows are the reference
    (SCCVAE) and the best baseline by mean ``pearson_delta_all``. Returns the labels shown.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    reference = result.config.get("reference")
    s = result.summary[
        (result.summary["category"] == "all") & (result.summary["metric"] == "pearson_delta_all")
    ]
    baselines = s[~s["method"].isin(list(_SCCVAE_METHODS))].dropna(subset=["mean"])
    rows = [reference]
    if len(baselines):
        best = baselines.sort_values("mean", ascending=False)["method"].iloc[0]
        rows.append(best)
    rows = [r for r in rows if r in result.deltas and not result.deltas[r].empty]
    observed = result.deltas.get("observed", pd.DataFrame())
    if not rows or observed.empty:
        return []
    shared = observed.index
    for r in rows:
        shared = shared.intersection(result.deltas[r].index)
    if len(shared) == 0:
        return []
    norms = np.sqrt((observed.loc[shared] ** 2).sum(axis=1)).sort_values(ascending=False)
    chosen = list(norms.index[:n_perturbations])
    fig, axes = plt.subplots(
        len(rows), len(chosen), figsize=(3.0 * len(chosen), 3.0 * len(rows)), squeeze=False
    )
    for i, method in enumerate(rows):
        for j, idx in enumerate(chosen):
            ax = axes[i, j]
            obs = observed.loc[idx].to_numpy()
            pred = result.deltas[method].loc[idx].reindex(observed.columns).to_numpy()
            ax.scatter(obs, pred, s=4, alpha=0.5)
            lim = np.nanmax(np.abs(np.concatenate([obs, pred]))) * 1.05 or 1.0
            ax.plot([-lim, lim], [-lim, lim], color="grey", linewidth=0.6)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            r = np.corrcoef(obs, pred)[0, 1] if np.std(pred) > 0 else float("nan")
            ax.set_title(f"{idx[1]} (fold {idx[0]})\n{method}: r={r:.2f}", fontsize=8)
            if j == 0:
                ax.set_ylabel("predicted change")
            if i == len(rows) - 1:
                ax.set_xlabel("observed change")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [f"{idx[1]} (fold {idx[0]})" for idx in chosen]


def write_outputs(result: BenchmarkResult, out: str | os.PathLike) -> Path:
    """Write a result to a directory.

    Files: ``results.csv`` (per perturbation), ``summary.csv``, ``training.csv`` (SCCVAE
    fits), ``summary.md`` (markdown table, command line, data, seeds, epochs, wall time,
    machine), ``splits.json``, ``metrics.png`` (bars with CIs for :data:`PLOT_METRICS`) and
    ``scatter.png`` (predicted vs observed change, SCCVAE vs the best baseline).

    Returns
    -------
    The directory.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.results.to_csv(out / "results.csv", index=False)
    result.summary.to_csv(out / "summary.csv", index=False)
    if not result.training.empty:
        result.training.to_csv(out / "training.csv", index=False)
    with open(out / "splits.json", "w") as handle:
        json.dump([s.to_dict() for s in result.splits], handle)
    plots = []
    try:
        plot_metrics(result, out / "metrics.png")
        plots.append("metrics.png")
        if plot_scatter(result, out / "scatter.png"):
            plots.append("scatter.png")
    except Exception as err:  # plotting must not lose the results
        logger.warning("Could not draw the plots: %s", err)
    (out / "summary.md").write_text(_summary_markdown(result, plots))
    logger.info("Benchmark outputs written to %s", out)
    return out


def command_line(argv: Sequence[str] | None = None) -> str:
    """Return the current command line, shell-quoted (for ``summary.md``)."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return shlex.join(argv)
