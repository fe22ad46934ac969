"""The benchmark runner: check the input, fit every method on every fold, score, summarise."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccvae._perturbations import (
    PerturbationDesign,
    design_of,
    perturbation_labels,
)
from sccvae.metrics import METRICS, evaluate, fit_pca, mean_of_perturbation_means, summarize
from sccvae.splits import Split

from ._data import SPLITS, _describe, _make_splits, _onehot_embedding, _working_copy, load_data
from ._errors import BenchmarkInputError
from ._methods import DEFAULT_MAX_EPOCHS, DEFAULT_MODEL_KWARGS, REGISTRY, fit_method, parse_methods
from ._progress import Progress, cpu_threads, quiet_lightning
from ._result import HEADLINE_METRICS, BenchmarkResult

logger = logging.getLogger(__name__)

#: Metrics reported by default (table, summary.md), in this order.
KEY_METRICS: tuple[str, ...] = (
    *HEADLINE_METRICS,
    "mae_all",
    "direction_accuracy_de",
    "pearson_delta_pertmean_all",
    "energy_distance",
    "rank",
    "mse_all",
    "pearson_means_all",
    "direction_accuracy_all",
)


@dataclass(frozen=True)
class RunSettings:
    """Everything a benchmark run decides once and every fold and method reads."""

    perturbation_key: str
    control_label: str
    combination_delimiter: str
    split: str
    methods: tuple[str, ...]
    reference: str
    seed: int
    max_epochs: int | None
    n_cells: int
    n_de_genes: int
    metrics: tuple[str, ...]
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    train_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: gene embedding for the baselines that take one (a user DataFrame, or one-hot when
    #: targets are not measured); None: their coexpression default
    target_embedding: pd.DataFrame | None = None
    #: every measured perturbation target of the data (names only): SCCVAE makes them
    #: latent nodes, as a user makes the genes they will predict nodes (``node_genes``)
    measured_targets: tuple[str, ...] = ()


@dataclass
class Fold:
    """One split of the data, as the methods see it."""

    index: int
    name: str
    split: Split
    #: training and validation cells (the models are set up on these only)
    training: AnnData
    #: positions of the training / validation cells within ``training``
    train_positions: np.ndarray
    validation_positions: np.ndarray
    #: training cells only: predictions start from their control cells, and the
    #: evaluation's control reference and PCA come from them
    train_cells: AnnData
    test: AnnData
    #: the designs of ``training``, ``train_cells`` and ``test``: subsets of the run's design
    training_design: PerturbationDesign
    train_cells_design: PerturbationDesign
    test_design: PerturbationDesign

    @classmethod
    def from_split(
        cls, index: int, split: Split, work: AnnData, design: PerturbationDesign
    ) -> Fold:
        """Cut the fold's AnnData objects (and their designs) out of the working copy."""
        keep = np.union1d(split.train_idx, split.validation_idx)
        return cls(
            index=index,
            name=split.name or f"split{index}",
            split=split,
            training=work[keep].copy(),
            train_positions=np.searchsorted(keep, split.train_idx),
            validation_positions=np.searchsorted(keep, split.validation_idx),
            train_cells=work[split.train_idx].copy(),
            test=split.subset(work, "test"),
            training_design=design.subset(keep),
            train_cells_design=design.subset(split.train_idx),
            test_design=design.subset(split.test_idx),
        )


def run_benchmark(
    adata: AnnData | None = None,
    data: str | os.PathLike = "simulated",
    perturbation_key: str = "perturbation",
    control_label: str = "control",
    split: str = "unseen",
    n_folds: int = 5,
    max_epochs: int | None = DEFAULT_MAX_EPOCHS,
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
    scenario: str = "default",
    folds: Sequence[int] | None = None,
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
        SCCVAE training epochs; ``None`` (default) is the model's own default (about 3,000
        optimiser steps).
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
        SCCVAE arguments, on top of :data:`DEFAULT_MODEL_KWARGS` (a variant's own arguments,
        e.g. ``graph``, come from the method). A DataFrame ``perturbation_embedding`` is also
        given to the baselines that take an embedding.
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
    scenario
        Simulated scenario (:data:`sccvae.data.SIMULATION_SCENARIOS`) for
        ``data="simulated"``.
    folds
        Run only these folds of the split (positions, e.g. ``[0]`` for a quick check);
        all by default.

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
    if split not in SPLITS:
        raise BenchmarkInputError(f"Unknown split {split!r}; use one of {list(SPLITS)}.")
    method_list = parse_methods(methods, split)
    metrics = list(metrics)
    unknown_metrics = [m for m in metrics if m not in METRICS]
    if unknown_metrics:
        raise BenchmarkInputError(f"Unknown metric(s) {unknown_metrics}; known: {list(METRICS)}.")
    if max_epochs is not None and int(max_epochs) < 1:
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

    adata, data_description = _input_data(
        adata, data, dataset, seed, split, simulate_kwargs, scenario
    )
    try:
        work = _working_copy(adata, perturbation_key)
        # the run's one perturbation design: every label parsed here, once (a bad label is an
        # input error); the splits, methods and metrics get it or its subsets
        design = design_of(
            work.obs, perturbation_key, control_label, combination_delimiter, require_controls=True
        )
        data_description.update(_describe(work, design))
        splits = _make_splits(work, split, n_folds, perturbation_key, seed, design)
    except (KeyError, ValueError) as err:
        if isinstance(err, BenchmarkInputError):
            raise
        raise BenchmarkInputError(_message(err)) from err
    fold_ids = list(range(len(splits)))
    if folds is not None:
        fold_ids = sorted({int(f) for f in folds})
        if not fold_ids or fold_ids[0] < 0 or fold_ids[-1] >= len(splits):
            raise BenchmarkInputError(f"`folds` must be positions among the {len(splits)} splits.")
        splits = [splits[f] for f in fold_ids]
    if data_description["n_perturbations"] < 2:
        raise BenchmarkInputError("At least 2 perturbations are needed for a benchmark.")

    notes: list[str] = []
    if "note" in data_description:
        notes.append(data_description.pop("note"))
    all_targets = sorted({t for p in design.perturbations for t in design.targets(p)})
    target_embedding = _target_embedding(
        method_list, all_targets, set(work.var_names), split, model_kwargs, notes
    )
    reference = next((m for m in method_list if m == "sccvae"), None)
    reference = reference or next(
        (m for m in method_list if REGISTRY[m].is_sccvae), method_list[0]
    )
    settings = RunSettings(
        perturbation_key=perturbation_key,
        control_label=control_label,
        combination_delimiter=combination_delimiter,
        split=split,
        methods=tuple(method_list),
        reference=reference,
        seed=int(seed),
        max_epochs=None if max_epochs is None else int(max_epochs),
        n_cells=int(n_cells),
        n_de_genes=int(n_de_genes),
        metrics=tuple(metrics),
        model_kwargs=model_kwargs,
        train_kwargs=train_kwargs,
        target_embedding=target_embedding,
        measured_targets=tuple(t for t in all_targets if t in set(work.var_names)),
    )
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
        "max_epochs": "model default (~3,000 steps)" if max_epochs is None else int(max_epochs),
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
        "Benchmark: %s split, %d split(s), methods %s, epochs: %s",
        split,
        len(splits),
        method_list,
        max_epochs,
    )

    rows: list[pd.DataFrame] = []
    training_rows: list[dict[str, Any]] = []
    deltas: dict[str, list[pd.DataFrame]] = {m: [] for m in [*method_list, "observed"]}
    with (
        cpu_threads(n_threads),
        quiet_lightning(True),
        Progress(progress) as bars,
        warnings.catch_warnings(),
    ):
        # expected in this setting: test perturbations are never predicted by all methods
        warnings.filterwarnings("ignore", message=".*observed perturbation.*no prediction.*")
        overall = bars.add("Benchmark", len(splits) * len(method_list))
        for index, split_ in zip(fold_ids, splits, strict=True):
            fold = Fold.from_split(index, split_, work, design)
            rows += _run_fold(fold, settings, bars, overall, notes, training_rows, deltas)

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
        from ._report import write_outputs

        write_outputs(result, out)
        result.wall_time_s = time.perf_counter() - start
    return result


def _message(err: BaseException) -> str:
    return str(err.args[0]) if err.args else str(err)


def _input_data(adata, data, dataset, seed, split, simulate_kwargs, scenario):
    """Return the AnnData to benchmark and its description (input errors: BenchmarkInputError)."""
    if adata is None:
        try:
            return load_data(
                data,
                dataset=dataset,
                seed=seed,
                split=split,
                simulate_kwargs=simulate_kwargs,
                scenario=scenario,
            )
        except (KeyError, ValueError) as err:
            if isinstance(err, BenchmarkInputError):
                raise
            raise BenchmarkInputError(_message(err)) from err
    if not isinstance(adata, AnnData):
        raise BenchmarkInputError(f"`adata` must be an AnnData, got {type(adata).__name__}.")
    if scenario != "default":
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


def _target_embedding(
    method_list: list[str],
    all_targets: list[str],
    genes: set[str],
    split: str,
    model_kwargs: dict[str, Any],
    notes: list[str],
) -> pd.DataFrame | None:
    """Return the embedding of the baselines; one-hot where targets are unmeasured.

    Raises a BenchmarkInputError where an unseen split cannot represent the targets.
    ``model_kwargs`` is updated for SCCVAE when it must switch to one-hot too.
    """
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
    embedding = user_embedding if isinstance(user_embedding, pd.DataFrame) else None
    needs_embedding = [m for m in method_list if REGISTRY[m].needs_embedding]
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
            f"{embedding_name} (e.g. {missing[:5]}): SCCVAE and the baselines that take an "
            "embedding use one-hot target embeddings instead (seen targets only)."
        )
        logger.warning(msg)
        notes.append(msg)
        if any(REGISTRY[m].is_sccvae for m in method_list):
            model_kwargs["perturbation_embedding"] = "onehot"
        embedding = _onehot_embedding(all_targets)
    unmeasured = [t for t in all_targets if t not in genes]
    if unmeasured and "coexpression" in method_list:
        raise BenchmarkInputError(
            f"{len(unmeasured)} of {len(all_targets)} perturbation targets are unmeasured "
            f"genes (e.g. {unmeasured[:5]}): the coexpression baseline cannot predict them. "
            "Drop 'coexpression' from the methods."
        )
    if user_embedding == "onehot" and split == "unseen" and needs_embedding:
        raise BenchmarkInputError(
            "perturbation_embedding='onehot' cannot represent unseen perturbations; use "
            "'coexpression' or a DataFrame for split='unseen'."
        )
    return embedding


def _mean_delta(
    pred: AnnData, design: PerturbationDesign, control_mean: np.ndarray
) -> pd.DataFrame:
    """Mean predicted (or observed) change of each perturbation from the control mean.

    ``design`` is the perturbation design of ``pred``'s cells.
    """
    x = pred.X.toarray() if sp.issparse(pred.X) else np.asarray(pred.X)
    frame = pd.DataFrame(x.astype(np.float64), columns=[str(g) for g in pred.var_names])
    means = frame.groupby(np.asarray(design.canonical_labels), sort=True).mean()
    return means - control_mean


def _run_fold(
    fold: Fold,
    settings: RunSettings,
    bars: Progress,
    overall: Any,
    notes: list[str],
    training_rows: list[dict[str, Any]],
    deltas: dict[str, list[pd.DataFrame]],
) -> list[pd.DataFrame]:
    """Fit, predict and score every method on one fold."""
    key, control = settings.perturbation_key, settings.control_label
    test_perts = list(fold.split.test_perturbations)
    pca = fit_pca(fold.train_cells, seed=settings.seed)
    pert_mean = mean_of_perturbation_means(
        fold.train_cells,
        key,
        control,
        settings.combination_delimiter,
        design=fold.train_cells_design,
    )
    ctrl_rows = fold.train_cells_design.labels == control
    control_mean = np.asarray(fold.train_cells.X[ctrl_rows].mean(axis=0), dtype=np.float64).ravel()
    observed = _mean_delta(fold.test, fold.test_design, control_mean)
    observed.index = pd.MultiIndex.from_product([[fold.index], observed.index])
    deltas["observed"].append(observed)

    out = []
    scoring_cache: dict = {}  # control ranks and observed DE genes, shared by the methods
    for method in settings.methods:
        bars.advance(overall, 0, description=f"Benchmark [{fold.name}: {method}]")
        fitted = fit_method(method, fold, settings, bars)
        pred, failed = fitted.predict(test_perts)
        if fitted.info is not None:
            training_rows.append({"method": method, "fold": fold.index, **fitted.info})
        if failed:
            msg = (
                f"{method} ({fold.name}) cannot represent {len(failed)} of {len(test_perts)} "
                f"test perturbation(s) (targets without embedding), not scored: {failed[:8]}"
            )
            logger.warning(msg)
            notes.append(msg)
        if pred is not None:
            table = evaluate(
                pred,
                fold.test,
                fold.train_cells,
                perturbation_key=key,
                control_label=control,
                combination_delimiter=settings.combination_delimiter,
                n_de_genes=settings.n_de_genes,
                training_perturbation_mean=pert_mean,
                pca=pca,
                seed=settings.seed,
                cache=scoring_cache,
                design=fold.test_design,
            ).reset_index()
            table.insert(0, "fold", fold.index)
            table.insert(0, "method", method)
            categories = [fold.split.categories.get(p, "all") for p in table["perturbation"]]
            table.insert(3, "category", categories)
            out.append(table)
            # predictions carry canonical labels: looked up in the run's design, not parsed
            pred_design = fold.test_design.with_labels(perturbation_labels(pred.obs, key))
            delta = _mean_delta(pred, pred_design, control_mean)
            delta.index = pd.MultiIndex.from_product([[fold.index], delta.index])
            deltas[method].append(delta)
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
