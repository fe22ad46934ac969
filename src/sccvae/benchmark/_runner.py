"""The benchmark runner: check the input, fit every method on every fold, score, summarise."""

from __future__ import annotations

import dataclasses
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

from sccvae._inputs import looks_like_counts
from sccvae._perturbations import (
    PerturbationDesign,
    design_of,
    perturbation_labels,
)
from sccvae.metrics import METRICS, evaluate, fit_pca, mean_of_perturbation_means, summarize
from sccvae.splits import Split

from ._coverage import _check_training_coverage, _target_embedding, _unseen_targets
from ._data import (
    COUNTS_LAYER,
    SPLITS,
    _describe,
    _filter_cells,
    _make_splits,
    _working_copy,
    load_data,
)
from ._errors import BenchmarkInputError
from ._methods import (
    DEFAULT_EPOCHS_TEXT,
    DEFAULT_MAX_EPOCHS,
    DEFAULT_MODEL_KWARGS,
    REGISTRY,
    fit_method,
    parse_methods,
)
from ._progress import Progress, cpu_threads, quiet_lightning
from ._result import HEADLINE_METRICS, BenchmarkResult

logger = logging.getLogger(__name__)

#: SCCVAE likelihoods a run can choose (``None``: ``"nb"`` on counts, else ``"gaussian"``).
LIKELIHOODS = ("nb", "gaussian")

#: The log-normalisation a run applies to raw counts (baselines and scoring use it).
NORMALISATION = "normalize_total(target_sum=1e4) + log1p, each cell on its own total"

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
    #: SCCVAE's likelihood: "nb" (raw counts of ``layers[counts_layer]``) or "gaussian" (X)
    likelihood: str = "gaussian"
    #: layer of the folds' AnnData holding the raw counts ("nb"); None: no counts kept
    counts_layer: str | None = None
    #: SCCVAE variants are trained with seeds seed, seed + 1, ..., seed + n_seeds - 1
    n_seeds: int = 1

    @property
    def sccvae_seeds(self) -> tuple[int, ...]:
        """Seeds of every SCCVAE variant (the data, splits and baselines keep ``seed``)."""
        return tuple(self.seed + i for i in range(self.n_seeds))


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
    likelihood: str | None = None,
    obs_filter: str | None = None,
    n_seeds: int = 1,
) -> BenchmarkResult:
    """Benchmark SCCVAE and baselines on held-out perturbations.

    **Expression.** ``X`` holds log-normalised expression (``normalize_total`` + ``log1p``)
    or raw counts, detected as non-negative integer values. Raw counts are log-normalised
    once by the run (``normalize_total(target_sum=1e4)`` + ``log1p``, each cell on its own
    total): every baseline is fitted and every method scored on that. SCCVAE keeps the counts
    with its negative binomial likelihood (``likelihood="nb"``, the default on counts) and
    makes its predictions on that log-normalised scale
    (:meth:`~sccvae.SCCVAE.predict` with ``log_normalized=True``).

    **Unseen split.** Test folds are drawn only among the perturbations *eligible* for
    testing: those whose every target every method of the run can represent unseen (for the
    default methods: measured genes, in ``var_names``, or genes of a DataFrame
    ``model_kwargs["perturbation_embedding"]``). The others (e.g. knock-outs of unmeasured
    genes) are in the training set of every fold; SCCVAE learns the targets it can
    neither make latent nodes of nor embed one-hot, and the baselines that embed targets
    leave those they cannot embed out of their fit. With fewer than
    ``2 * n_folds`` eligible perturbations, each is tested in its own fold (leave-one-out).
    The notes and ``config`` say which perturbations were eligible and how the folds were
    made.

    Parameters
    ----------
    adata
        Data to benchmark (log-normalised expression or raw counts in ``X``, labels in
        ``obs[perturbation_key]``); not modified. If None, ``data`` is loaded.
    data
        ``"simulated"`` or a path to an ``.h5ad`` file (see :func:`load_data`).
    perturbation_key, control_label, combination_delimiter
        How cells are labelled (the perturbench devel file uses ``"condition"``).
    split
        ``"unseen"`` (:func:`~sccvae.splits.unseen_perturbation_folds`: test perturbations
        never seen in training, ``n_folds`` folds over the eligible perturbations, or one
        per eligible perturbation when there are fewer than ``2 * n_folds``), ``"seen"``
        (:func:`~sccvae.splits.seen_perturbation_split`, one split) or ``"combo"``
        (:func:`~sccvae.splits.combination_split`: held-out combinations, one split).
    n_folds
        Folds of the unseen split (at least 2; ignored by the others).
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
    likelihood
        SCCVAE's likelihood: ``"nb"`` (negative binomial on the raw counts; ``X`` must hold
        counts), ``"gaussian"`` (on log-normalised expression: ``X``, or the run's
        log-normalisation of counts) or ``None`` (default): ``"nb"`` when ``X`` holds counts,
        else ``"gaussian"``.
    obs_filter
        Keep only the cells whose ``obs`` satisfies this :meth:`pandas.DataFrame.query`
        expression, applied right after loading (and ``dataset``), before the labels are
        read or anything is split, e.g. ``"grna_max_frac >= 0.8"`` (a clean gRNA
        assignment). An expression that fails on ``obs`` is a BenchmarkInputError; one that
        removes every control cell is the no-control-cells error.
    n_seeds
        Train every SCCVAE variant with this many seeds: ``seed``, ``seed + 1``, ... (model
        initialisation, training minibatches and predicted cells; the data, the splits, the
        baselines and the scoring keep ``seed``). Each perturbation's metrics are averaged
        over the seeds (a seed whose metric is NaN is left out of that average) and these
        averages are what ``results``, the bootstrap intervals, the win rates and the
        paired tests use; ``seed_results`` keeps the per-seed scores and the summary gains
        the spread across seeds of each variant's per-seed means (``n_seeds``, ``seed_sd``,
        ``seed_min``, ``seed_max``). Default 1: one seed, as before.

    Returns
    -------
    A :class:`BenchmarkResult`.

    Raises
    ------
    BenchmarkInputError
        (a ValueError) for bad input: missing columns, no control cells, too few
        perturbations for the folds, unknown methods, a combination split without
        combinations, no perturbation whose targets every method can represent unseen,
        ``likelihood="nb"`` without counts, a cell filter that cannot be applied... All
        checks run before any training.
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
    if isinstance(n_seeds, bool) or int(n_seeds) != n_seeds or int(n_seeds) < 1:
        raise BenchmarkInputError(f"`n_seeds` must be a positive integer, got {n_seeds!r}.")
    n_seeds = int(n_seeds)
    if split == "unseen" and int(n_folds) < 2:
        raise BenchmarkInputError(f"`n_folds` must be at least 2, got {n_folds}.")
    if likelihood is not None and likelihood not in LIKELIHOODS:
        raise BenchmarkInputError(
            f"Unknown likelihood {likelihood!r}; use one of {list(LIKELIHOODS)} or None "
            "(nb on raw counts, gaussian on log-normalised data)."
        )
    model_kwargs = dict(model_kwargs or {})
    train_kwargs = dict(train_kwargs or {})
    for reserved in ("graph",):
        if reserved in model_kwargs:
            raise BenchmarkInputError(
                f"`model_kwargs` may not set {reserved!r}: it is chosen by the method name."
            )
    if "likelihood" in model_kwargs:
        raise BenchmarkInputError(
            "`model_kwargs` may not set 'likelihood': pass run_benchmark(likelihood=...) "
            "(CLI: --likelihood), which also decides what SCCVAE is trained on."
        )
    for reserved in ("max_epochs", "train_indices", "validation_indices"):
        if reserved in train_kwargs:
            raise BenchmarkInputError(f"`train_kwargs` may not set {reserved!r}.")
    if n_seeds > 1 and "seed" in model_kwargs:
        raise BenchmarkInputError(
            "`model_kwargs` may not set 'seed' with n_seeds > 1: SCCVAE's seeds are `seed`, "
            "`seed + 1`, ... (pass run_benchmark(seed=...))."
        )

    adata, data_description = _input_data(
        adata, data, dataset, seed, split, simulate_kwargs, scenario
    )
    if obs_filter is not None:
        adata, filtered = _filter_cells(adata, obs_filter)
        data_description.update(filtered)
    counts = looks_like_counts(adata.X) if adata.X is not None else False
    likelihood, expression = _expression_plan(likelihood, counts)
    data_description["expression"] = expression["input"]
    has_sccvae = any(REGISTRY[m].is_sccvae for m in method_list)
    keep_counts = likelihood == "nb" and has_sccvae
    notes: list[str] = []
    try:
        work = _working_copy(adata, perturbation_key, counts=counts, keep_counts=keep_counts)
        # the run's one perturbation design: every label parsed here, once (a bad label is an
        # input error); the splits, methods and metrics get it or its subsets
        design = design_of(
            work.obs, perturbation_key, control_label, combination_delimiter, require_controls=True
        )
        data_description.update(_describe(work, design))
        if data_description["n_perturbations"] < 2:
            raise BenchmarkInputError("At least 2 perturbations are needed for a benchmark.")
        all_targets = sorted({t for p in design.perturbations for t in design.targets(p)})
        genes = set(work.var_names)
        if split == "unseen":
            target_embedding, eligible, covers = _unseen_targets(
                method_list, design, genes, model_kwargs, notes, explicit=methods is not None
            )
            method_list = [m for m in method_list if m in covers]  # narrow defaults left out
            n_eligible = len(design.perturbations if eligible is None else eligible)
            # folds of 1-2 perturbations say little each: test every one on its own instead
            leave_one_out = n_eligible < 2 * int(n_folds)
            fold_count = n_eligible if leave_one_out else int(n_folds)
            if leave_one_out:
                notes.append(
                    f"Leave-one-out: {n_eligible} perturbation(s) eligible for testing, fewer "
                    f"than 2 x n_folds = {2 * int(n_folds)}, so each is tested in a fold of "
                    f"its own ({n_eligible} folds instead of {int(n_folds)})."
                )
        else:
            target_embedding = _target_embedding(
                method_list, all_targets, genes, model_kwargs, notes
            )
            eligible, leave_one_out, fold_count = None, False, int(n_folds)
        splits = _make_splits(
            work, split, fold_count, perturbation_key, seed, design, eligible=eligible
        )
        if split == "unseen":
            _check_training_coverage(splits, design, covers)
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

    if "note" in data_description:
        notes.insert(0, data_description.pop("note"))
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
        measured_targets=tuple(t for t in all_targets if t in genes),
        likelihood=likelihood,
        counts_layer=COUNTS_LAYER if keep_counts else None,
        n_seeds=n_seeds,
    )
    config: dict[str, Any] = {
        "command": command,
        "data": data_description,
        "perturbation_key": perturbation_key,
        "control_label": control_label,
        "combination_delimiter": combination_delimiter,
        "split": split,
        "n_folds": len(splits),
        "fold_scheme": _fold_scheme(split, leave_one_out, fold_count, n_folds),
        "methods": method_list,
        "reference": reference,
        "seed": int(seed),
        "n_seeds": n_seeds,
        "sccvae_seeds": list(settings.sccvae_seeds) if has_sccvae else [],
        "max_epochs": DEFAULT_EPOCHS_TEXT if max_epochs is None else int(max_epochs),
        "n_cells": int(n_cells),
        "n_de_genes": int(n_de_genes),
        "model_kwargs": {
            k: (v if not isinstance(v, pd.DataFrame) else f"DataFrame {v.shape}")
            for k, v in {**DEFAULT_MODEL_KWARGS, **model_kwargs}.items()
        },
        "train_kwargs": {k: repr(v) for k, v in train_kwargs.items()},
        "n_threads": n_threads,
        "likelihood": likelihood,
        "sccvae_trained_on": expression[likelihood] if has_sccvae else "(no SCCVAE method)",
        "normalisation": expression["normalisation"],
        "obs_filter": obs_filter,
    }
    if split == "unseen":
        tested = set(design.perturbations if eligible is None else eligible)
        config["eligible_perturbations"] = sorted(tested)
        config["always_train"] = [p for p in design.perturbations if p not in tested]
    logger.info(
        "Benchmark: %s split, %d split(s), methods %s, SCCVAE epochs: %s",
        split,
        len(splits),
        method_list,
        config["max_epochs"],
    )

    rows: list[pd.DataFrame] = []
    seed_rows: list[pd.DataFrame] = []
    training_rows: list[dict[str, Any]] = []
    deltas: dict[str, list[pd.DataFrame]] = {m: [] for m in [*method_list, "observed"]}
    fits_per_fold = sum(n_seeds if REGISTRY[m].is_sccvae else 1 for m in method_list)
    with (
        cpu_threads(n_threads),
        quiet_lightning(True),
        Progress(progress) as bars,
        warnings.catch_warnings(),
    ):
        # expected in this setting: test perturbations are never predicted by all methods
        warnings.filterwarnings("ignore", message=".*observed perturbation.*no prediction.*")
        # SCCVAE's extrapolated predictions are counted in the notes instead (_run_fold)
        warnings.filterwarnings("ignore", message=".*go beyond anything in the training data")
        overall = bars.add("Benchmark", len(splits) * fits_per_fold)
        for index, split_ in zip(fold_ids, splits, strict=True):
            fold = Fold.from_split(index, split_, work, design)
            rows += _run_fold(
                fold, settings, bars, overall, notes, training_rows, deltas, seed_rows
            )

    results = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    seed_results = pd.concat(seed_rows, ignore_index=True) if seed_rows else pd.DataFrame()
    scored = _common_perturbations(results, notes)
    summary = _summaries(scored, method_list, reference, metrics, seed)
    if n_seeds > 1:
        summary = _with_seed_spread(summary, scored, seed_results, metrics)
    result = BenchmarkResult(
        results=results,
        summary=summary,
        splits=splits,
        training=pd.DataFrame(training_rows),
        config=config,
        notes=notes,
        wall_time_s=time.perf_counter() - start,
        deltas={m: pd.concat(v) if v else pd.DataFrame() for m, v in deltas.items()},
        seed_results=seed_results,
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


def _expression_plan(likelihood: str | None, counts: bool) -> tuple[str, dict[str, str]]:
    """Resolve SCCVAE's likelihood from the data; describe what each part of the run models.

    Returns the likelihood and a description: ``"input"`` (what X holds), ``"normalisation"``
    (what the baselines and the scoring see) and, per likelihood, what SCCVAE is trained on.
    """
    if likelihood is None:
        likelihood = "nb" if counts else "gaussian"
    if likelihood == "nb" and not counts:
        raise BenchmarkInputError(
            "likelihood='nb' needs raw counts in X, but X does not hold non-negative integers "
            "(log-normalised expression?). Put the raw counts in X (e.g. "
            "adata.X = adata.layers['counts']) or use likelihood='gaussian' (CLI: --likelihood "
            "gaussian)."
        )
    if counts:
        return likelihood, {
            "input": "raw counts in X (non-negative integers)",
            "normalisation": f"{NORMALISATION}, computed by the benchmark from the counts; "
            "baselines are fitted and all methods scored on it (SCCVAE's nb counterfactuals "
            "are made on it)",
            "nb": "the raw counts (negative binomial)",
            "gaussian": "the benchmark's log-normalisation of the counts (Gaussian)",
        }
    return likelihood, {
        "input": "log-normalised expression in X",
        "normalisation": "none (X used as given)",
        "gaussian": "X as given (Gaussian)",
    }


def _fold_scheme(split: str, leave_one_out: bool, fold_count: int, n_folds: int) -> str:
    """One line on how the folds were made, for ``config``."""
    if split != "unseen":
        return "one split"
    if leave_one_out:
        return (
            f"leave-one-out: one fold per eligible perturbation ({fold_count}), as fewer than "
            f"2 x n_folds = {2 * int(n_folds)} are eligible"
        )
    return f"{fold_count} folds over the eligible perturbations"


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
    seed_rows: list[pd.DataFrame],
) -> list[pd.DataFrame]:
    """Fit, predict and score every method on one fold.

    Returns one score table per method; an SCCVAE variant's is averaged over its seeds, whose
    own tables (with a ``seed`` column) are added to ``seed_rows``.
    """
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
        is_sccvae = REGISTRY[method].is_sccvae
        seeds = settings.sccvae_seeds if is_sccvae else (settings.seed,)
        tables, method_deltas = [], []
        for model_seed in seeds:
            several = len(seeds) > 1
            label = f"{method}, seed {model_seed}" if several else method
            bars.advance(overall, 0, description=f"Benchmark [{fold.name}: {label}]")
            # the fit's own seed: SCCVAE's initialisation, minibatches and predicted cells
            fit_settings = dataclasses.replace(settings, seed=model_seed)
            fitted = fit_method(method, fold, fit_settings, bars)
            pred, failed = fitted.predict(test_perts)
            if fitted.info is not None:
                seed_column = {"seed": model_seed} if several else {}
                training_rows.append(
                    {"method": method, "fold": fold.index, **seed_column, **fitted.info}
                )
            if failed:
                msg = (
                    f"{method} ({fold.name}) cannot represent {len(failed)} of "
                    f"{len(test_perts)} test perturbation(s) (targets without embedding), not "
                    f"scored: {failed[:8]}"
                )
                if msg not in notes:  # the same for every seed
                    logger.warning(msg)
                    notes.append(msg)
            flagged = _extrapolated(pred, key)
            if flagged:
                notes.append(
                    f"{label} ({fold.name}) flags {len(flagged)} of {len(test_perts)} test "
                    "prediction(s) as extrapolated (a change larger than any training "
                    f"perturbation's, or a gene outside its training range): {flagged[:8]}"
                )
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
                tables.append((model_seed, table))
                # predictions carry canonical labels: looked up in the run's design, not parsed
                pred_design = fold.test_design.with_labels(perturbation_labels(pred.obs, key))
                delta = _mean_delta(pred, pred_design, control_mean)
                delta.index = pd.MultiIndex.from_product([[fold.index], delta.index])
                method_deltas.append(delta)
            bars.advance(overall, 1)
        if len(seeds) > 1:
            seed_rows += [_with_seed(table, model_seed) for model_seed, table in tables]
        if tables:
            scores = [table for _, table in tables]
            out.append(scores[0] if len(seeds) == 1 else _average_over_seeds(scores))
            deltas[method].append(
                method_deltas[0]
                if len(method_deltas) == 1
                else pd.concat(method_deltas).groupby(level=[0, 1], sort=False).mean()
            )
    return out


def _with_seed(table: pd.DataFrame, model_seed: int) -> pd.DataFrame:
    """Return a copy of a score table with a ``seed`` column after ``fold``."""
    table = table.copy()
    table.insert(2, "seed", model_seed)
    return table


def _average_over_seeds(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """One score table from one per seed: each perturbation's metrics averaged over seeds.

    A seed whose metric is NaN is left out of that perturbation's average (NaN only where
    every seed's is); the other columns (counts of cells and genes...) are the first seed's
    that scored the perturbation.
    """
    stacked = pd.concat(tables, ignore_index=True)
    metrics = [c for c in stacked.columns if c in METRICS]
    grouped = stacked.groupby("perturbation", sort=False)
    averaged = grouped.first()
    averaged[metrics] = grouped[metrics].mean()
    return averaged.reset_index()[list(tables[0].columns)]


def _extrapolated(pred: AnnData | None, key: str) -> list[str]:
    """Labels a prediction flags in ``obs["extrapolated"]`` (SCCVAE's), sorted."""
    if pred is None or "extrapolated" not in pred.obs:
        return []
    flags = pred.obs["extrapolated"].to_numpy(dtype=bool)
    return sorted(set(pred.obs[key].astype(str).to_numpy()[flags]))


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


def _with_seed_spread(
    summary: pd.DataFrame, scored: pd.DataFrame, seed_results: pd.DataFrame, metrics: list[str]
) -> pd.DataFrame:
    """Add the spread across seeds of each SCCVAE variant's per-seed mean to the summary.

    Per (category, method, metric): ``n_seeds`` (seeds with a defined mean), the standard
    deviation (``seed_sd``, ddof 1) and range (``seed_min``, ``seed_max``) of the per-seed
    means over the summarised perturbations (those of ``scored``). NaN for the baselines.
    """
    columns = ["n_seeds", "seed_sd", "seed_min", "seed_max"]
    if summary.empty or seed_results.empty:
        return summary.assign(**{c: np.nan for c in columns})
    keys = ["method", "fold", "perturbation"]
    shared = seed_results.merge(scored[keys].drop_duplicates(), on=keys, how="inner")
    categories = list(dict.fromkeys(summary["category"]))
    rows = []
    for category in categories:
        sub = shared if category == "all" else shared[shared["category"] == category]
        for method, per_method in sub.groupby("method", sort=False):
            # mean over perturbations of each seed (NaN scores skipped, as in summarize)
            per_seed = per_method.groupby("seed")[[m for m in metrics if m in sub]].mean()
            for metric in per_seed.columns:
                values = per_seed[metric].dropna()
                rows.append(
                    {
                        "category": category,
                        "method": method,
                        "metric": metric,
                        "n_seeds": int(values.size),
                        "seed_sd": float(values.std(ddof=1)) if values.size > 1 else np.nan,
                        "seed_min": float(values.min()) if values.size else np.nan,
                        "seed_max": float(values.max()) if values.size else np.nan,
                    }
                )
    spread = pd.DataFrame(rows, columns=["category", "method", "metric", *columns])
    return summary.merge(spread, on=["category", "method", "metric"], how="left")
