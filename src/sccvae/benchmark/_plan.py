"""What a run works on: the expression it models, its working copy, design and folds.

Decided from the data and the arguments before anything is fitted: SCCVAE's likelihood and
what each part of the run is given (:func:`_expression_plan`), then the light working copy
the folds are cut from, the run's one perturbation design, the perturbations an unseen split
may test (and so the methods kept and the baselines' embedding) and the folds themselves
(:func:`_plan_run`, giving a :class:`RunPlan`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from anndata import AnnData

from sccvae._perturbations import PerturbationDesign, design_of
from sccvae.splits import Split

from ._coverage import _check_training_coverage, _target_embedding, _unseen_targets
from ._data import _describe, _make_splits, _working_copy
from ._errors import BenchmarkInputError, _as_input_errors

#: The log-normalisation a run applies to raw counts (baselines and scoring use it).
NORMALISATION = "normalize_total(target_sum=1e4) + log1p, each cell on its own total"


@dataclass
class RunPlan:
    """The data a run works on and the folds it cuts from it."""

    #: light copy of the data (X, labels, gene names; raw counts when SCCVAE needs them)
    work: AnnData
    #: the run's one perturbation design, of ``work``: the folds get subsets of it
    design: PerturbationDesign
    #: the methods run (defaults that could test too little on an unseen split left out)
    methods: list[str]
    #: gene embedding for the baselines that take one (see ``RunSettings.target_embedding``)
    target_embedding: pd.DataFrame | None
    #: every measured perturbation target of the data
    measured_targets: tuple[str, ...]
    #: the perturbations an unseen split may test; None: all
    eligible: list[str] | None
    #: the folds run and their positions among the split's folds
    splits: list[Split]
    fold_ids: list[int]
    #: how the folds were made, in one line (``config``)
    fold_scheme: str


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


def _plan_run(
    adata: AnnData,
    methods: list[str],
    model_kwargs: dict[str, Any],
    notes: list[str],
    data_description: dict[str, Any],
    *,
    perturbation_key: str,
    control_label: str,
    combination_delimiter: str,
    split: str,
    n_folds: int,
    folds: Sequence[int] | None,
    seed: int,
    counts: bool,
    keep_counts: bool,
    explicit: bool,
) -> RunPlan:
    """Make the working copy, the design and the folds of a run.

    ``counts``: ``adata.X`` holds raw counts (the copy's X is their log-normalisation);
    ``keep_counts``: keep them too, for SCCVAE's ``"nb"`` likelihood. ``explicit``: the
    methods were named by the user (defaults that could test too little are left out
    otherwise). ``data_description`` gains the counts of cells, genes and perturbations;
    ``notes`` gains what the user should know; ``model_kwargs`` is read and may be updated
    (see ``_unseen_targets``). Input problems are BenchmarkInputErrors.
    """
    with _as_input_errors():
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
                methods, design, genes, model_kwargs, notes, explicit=explicit
            )
            methods = [m for m in methods if m in covers]  # narrow defaults left out
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
            target_embedding = _target_embedding(methods, all_targets, genes, model_kwargs, notes)
            eligible, leave_one_out, fold_count = None, False, int(n_folds)
        splits = _make_splits(
            work, split, fold_count, perturbation_key, seed, design, eligible=eligible
        )
        if split == "unseen":
            _check_training_coverage(splits, design, covers)
    fold_ids, splits = _chosen_folds(splits, folds)
    return RunPlan(
        work=work,
        design=design,
        methods=methods,
        target_embedding=target_embedding,
        measured_targets=tuple(t for t in all_targets if t in genes),
        eligible=eligible,
        splits=splits,
        fold_ids=fold_ids,
        fold_scheme=_fold_scheme(split, leave_one_out, fold_count, n_folds),
    )


def _chosen_folds(
    splits: list[Split], folds: Sequence[int] | None
) -> tuple[list[int], list[Split]]:
    """Return the positions and splits of the folds to run: ``folds``, or all when None."""
    fold_ids = list(range(len(splits)))
    if folds is not None:
        fold_ids = sorted({int(f) for f in folds})
        if not fold_ids or fold_ids[0] < 0 or fold_ids[-1] >= len(splits):
            raise BenchmarkInputError(f"`folds` must be positions among the {len(splits)} splits.")
        splits = [splits[f] for f in fold_ids]
    return fold_ids, splits


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
