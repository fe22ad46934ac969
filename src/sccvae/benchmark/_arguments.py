"""A benchmark run's arguments, checked before anything is loaded, and its record.

:func:`_check_arguments` runs before anything is loaded or trained; :func:`_reference` picks
the method whose win rates are reported; :func:`_run_config` is the record of the run
written to ``config.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from sccvae.metrics import METRICS

from ._data import SPLITS
from ._errors import BenchmarkInputError
from ._methods import DEFAULT_EPOCHS_TEXT, DEFAULT_MODEL_KWARGS, REGISTRY, parse_methods
from ._settings import LIKELIHOODS

if TYPE_CHECKING:
    from ._plan import RunPlan
    from ._settings import RunSettings


def _check_arguments(
    *,
    split: str,
    methods: str | Sequence[str] | None,
    metrics: Sequence[str],
    n_folds: int,
    max_epochs: int | None,
    n_cells: int,
    n_seeds: int,
    likelihood: str | None,
    model_kwargs: dict[str, Any] | None,
    train_kwargs: dict[str, Any] | None,
) -> tuple[list[str], list[str], int, dict[str, Any], dict[str, Any]]:
    """Check :func:`run_benchmark`'s arguments, before anything is loaded or trained.

    Returns the method names, the metrics, ``n_seeds`` and copies of ``model_kwargs`` and
    ``train_kwargs``, normalised. Raises a BenchmarkInputError for the first bad argument.
    """
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
    return method_list, metrics, n_seeds, model_kwargs, train_kwargs


def _reference(methods: Sequence[str]) -> str:
    """Return the method whose win rates are reported.

    ``"sccvae"``, else the first SCCVAE variant, else the first method.
    """
    reference = next((m for m in methods if m == "sccvae"), None)
    return reference or next((m for m in methods if REGISTRY[m].is_sccvae), methods[0])


def _run_config(
    settings: RunSettings,
    plan: RunPlan,
    expression: dict[str, str],
    *,
    command: str | None,
    data_description: dict[str, Any],
    has_sccvae: bool,
    n_threads: int | None,
    obs_filter: str | None,
) -> dict[str, Any]:
    """Return the record of a run (``config.json``): its data, folds, methods, settings.

    ``expression`` is the description made by ``_expression_plan``; ``has_sccvae`` says
    whether the methods include an SCCVAE variant.
    """
    trained_on = expression[settings.likelihood] if has_sccvae else "(no SCCVAE method)"
    config: dict[str, Any] = {
        "command": command,
        "data": data_description,
        "perturbation_key": settings.perturbation_key,
        "control_label": settings.control_label,
        "combination_delimiter": settings.combination_delimiter,
        "split": settings.split,
        "n_folds": len(plan.splits),
        "fold_scheme": plan.fold_scheme,
        "methods": list(settings.methods),
        "reference": settings.reference,
        "seed": settings.seed,
        "n_seeds": settings.n_seeds,
        "sccvae_seeds": list(settings.sccvae_seeds) if has_sccvae else [],
        "max_epochs": DEFAULT_EPOCHS_TEXT if settings.max_epochs is None else settings.max_epochs,
        "n_cells": settings.n_cells,
        "n_de_genes": settings.n_de_genes,
        "model_kwargs": {
            k: (v if not isinstance(v, pd.DataFrame) else f"DataFrame {v.shape}")
            for k, v in {**DEFAULT_MODEL_KWARGS, **settings.model_kwargs}.items()
        },
        "train_kwargs": {k: repr(v) for k, v in settings.train_kwargs.items()},
        "n_threads": n_threads,
        "likelihood": settings.likelihood,
        "sccvae_trained_on": trained_on,
        "normalisation": expression["normalisation"],
        "obs_filter": obs_filter,
    }
    if settings.split == "unseen":
        design = plan.design
        tested = set(design.perturbations if plan.eligible is None else plan.eligible)
        config["eligible_perturbations"] = sorted(tested)
        config["always_train"] = [p for p in design.perturbations if p not in tested]
    return config
