"""Fitting and scoring the folds: every method on every fold, SCCVAE variants on every seed.

:func:`_run_folds` runs the folds of a run's ``RunPlan``; :func:`_run_fold` fits,
predicts and scores every method on one :class:`~sccvae.benchmark._fold.Fold`, averaging an
SCCVAE variant's scores over its seeds, and records the observed and predicted mean changes
from control.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from sccvae._inputs import dense
from sccvae._perturbations import PerturbationDesign, perturbation_labels
from sccvae.metrics import METRICS, evaluate, fit_pca, mean_of_perturbation_means

from ._fold import Fold, FoldScores
from ._methods import REGISTRY, fit_method
from ._progress import Progress, cpu_threads, quiet_lightning

if TYPE_CHECKING:
    from ._plan import RunPlan
    from ._settings import RunSettings

logger = logging.getLogger(__name__)


def _run_folds(
    plan: RunPlan,
    settings: RunSettings,
    notes: list[str],
    n_threads: int | None,
    progress: bool,
) -> FoldScores:
    """Fit, predict and score every method on every fold of ``plan``.

    Runs on ``n_threads`` CPU threads with Lightning's logs quiet; ``progress`` shows the
    progress bars. ``notes`` gains what the user should know.
    """
    methods = settings.methods
    scores = FoldScores(deltas={m: [] for m in [*methods, "observed"]})
    fits_per_fold = sum(settings.n_seeds if REGISTRY[m].is_sccvae else 1 for m in methods)
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
        overall = bars.add("Benchmark", len(plan.splits) * fits_per_fold)
        for index, split_ in zip(plan.fold_ids, plan.splits, strict=True):
            fold = Fold.from_split(index, split_, plan.work, plan.design)
            scores.rows += _run_fold(
                fold,
                settings,
                bars,
                overall,
                notes,
                scores.training_rows,
                scores.deltas,
                scores.seed_rows,
            )
    return scores


def _mean_delta(
    pred: AnnData, design: PerturbationDesign, control_mean: np.ndarray
) -> pd.DataFrame:
    """Mean predicted (or observed) change of each perturbation from the control mean.

    ``design`` is the perturbation design of ``pred``'s cells.
    """
    x = dense(pred.X)
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
