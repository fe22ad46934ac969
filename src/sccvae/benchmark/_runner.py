"""The benchmark run, as a sequence of steps: check, plan, fit and score, summarise.

Each step lives in a module of its own: ``_arguments`` (the argument checks and the run's
config record), ``_data`` (reading or simulating the data), ``_plan`` (the data's
expression, the working copy, the design and the folds), ``_settings`` (the frozen
settings every fold reads), ``_scoring`` (fitting and scoring every method on every fold)
and ``_summary`` (pooling the scores and summarising them). Its many keyword arguments are
the ``sccvae benchmark`` command's options, one each.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd
from anndata import AnnData

from sccvae._inputs import looks_like_counts

from ._arguments import _check_arguments, _reference, _run_config
from ._data import COUNTS_LAYER, TEST_SEED, _input_data
from ._methods import DEFAULT_MAX_EPOCHS, REGISTRY
from ._plan import _expression_plan, _plan_run
from ._result import BenchmarkResult
from ._scoring import _run_folds
from ._settings import KEY_METRICS, RunSettings
from ._summary import _pool_and_summarise

logger = logging.getLogger(__name__)


def run_benchmark(
    adata: AnnData | None = None,
    data: str | os.PathLike = "simulated",
    perturbation_key: str = "perturbation",
    control_label: str = "control",
    split: str = "unseen",
    n_folds: int = 5,
    max_epochs: int | None = DEFAULT_MAX_EPOCHS,
    methods: str | Sequence[str] | None = None,
    seed: int = TEST_SEED,
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
    scenario: str | None = None,
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
        Seed of the simulation, the splits, the models and the predictions. The default,
        :data:`~sccvae.benchmark._data.TEST_SEED` (11), is the main benchmark's test screen:
        choose designs on other seeds.
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
        ``data="simulated"``; ``None``: ``"realistic"``, the main benchmark's.
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
    method_list, metrics, n_seeds, model_kwargs, train_kwargs = _check_arguments(
        split=split,
        methods=methods,
        metrics=metrics,
        n_folds=n_folds,
        max_epochs=max_epochs,
        n_cells=n_cells,
        n_seeds=n_seeds,
        likelihood=likelihood,
        model_kwargs=model_kwargs,
        train_kwargs=train_kwargs,
    )
    adata, data_description = _input_data(
        adata, data, dataset, seed, split, simulate_kwargs, scenario, obs_filter
    )
    counts = looks_like_counts(adata.X) if adata.X is not None else False
    likelihood, expression = _expression_plan(likelihood, counts)
    data_description["expression"] = expression["input"]
    has_sccvae = any(REGISTRY[m].is_sccvae for m in method_list)
    keep_counts = likelihood == "nb" and has_sccvae
    notes: list[str] = []
    plan = _plan_run(
        adata,
        method_list,
        model_kwargs,
        notes,
        data_description,
        perturbation_key=perturbation_key,
        control_label=control_label,
        combination_delimiter=combination_delimiter,
        split=split,
        n_folds=n_folds,
        folds=folds,
        seed=seed,
        counts=counts,
        keep_counts=keep_counts,
        explicit=methods is not None,
    )
    if "note" in data_description:
        notes.insert(0, data_description.pop("note"))

    settings = RunSettings(
        perturbation_key=perturbation_key,
        control_label=control_label,
        combination_delimiter=combination_delimiter,
        split=split,
        methods=tuple(plan.methods),
        reference=_reference(plan.methods),
        seed=int(seed),
        max_epochs=None if max_epochs is None else int(max_epochs),
        n_cells=int(n_cells),
        n_de_genes=int(n_de_genes),
        metrics=tuple(metrics),
        model_kwargs=model_kwargs,
        train_kwargs=train_kwargs,
        target_embedding=plan.target_embedding,
        measured_targets=plan.measured_targets,
        likelihood=likelihood,
        counts_layer=COUNTS_LAYER if keep_counts else None,
        n_seeds=n_seeds,
    )
    config = _run_config(
        settings,
        plan,
        expression,
        command=command,
        data_description=data_description,
        has_sccvae=has_sccvae,
        n_threads=n_threads,
        obs_filter=obs_filter,
    )
    logger.info(
        "Benchmark: %s split, %d split(s), methods %s, SCCVAE epochs: %s",
        split,
        len(plan.splits),
        plan.methods,
        config["max_epochs"],
    )

    scores = _run_folds(plan, settings, notes, n_threads, progress)
    results, seed_results, summary = _pool_and_summarise(scores, settings, notes)
    result = BenchmarkResult(
        results=results,
        summary=summary,
        splits=plan.splits,
        training=pd.DataFrame(scores.training_rows),
        config=config,
        notes=notes,
        wall_time_s=time.perf_counter() - start,
        deltas={m: pd.concat(v) if v else pd.DataFrame() for m, v in scores.deltas.items()},
        seed_results=seed_results,
    )
    if out is not None:
        from ._report import write_outputs

        write_outputs(result, out)
        result.wall_time_s = time.perf_counter() - start
    return result
