"""Per-perturbation scores of predicted against observed cells."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.spatial.distance import cdist

from sccvae._inputs import dense
from sccvae._perturbations import PerturbationDesign, design_of, perturbation_labels

from ._core import (
    _CONSTANT_RTOL,
    _DEFAULT_MAX_CELLS,
    _direction_accuracy,
    _gene_columns,
    _group_moments,
    _matrix,
    _mse,
    _seed_for,
    _select_columns,
    pearson,
)
from ._de import ReferenceCells, de_overlap, discrimination_scores
from ._distribution import _fit_pca_matrix, _pca_parts, _project, energy_distance, mmd

logger = logging.getLogger(__name__)

#: Registry of the per-perturbation metrics of :func:`evaluate`:
#: ``name -> (higher_is_better, description)``.
METRICS: dict[str, tuple[bool, str]] = {
    "mse_all": (False, "MSE between predicted and observed mean expression, all genes"),
    "mse_de": (False, "MSE of means on the top DE genes D (vs control)"),
    "mse_de_notarget": (False, "MSE of means on D' (top DE genes excluding the targets)"),
    "pearson_delta_all": (True, "Pearson r of (mu_hat - mu0, mu - mu0), all genes"),
    "pearson_delta_all_notarget": (
        True,
        "Pearson r of (mu_hat - mu0, mu - mu0), all genes but the perturbation's targets",
    ),
    "pearson_delta_de": (True, "Pearson r of (mu_hat - mu0, mu - mu0) on D"),
    "pearson_delta_de_notarget": (True, "Pearson r of (mu_hat - mu0, mu - mu0) on D'"),
    "pearson_delta_pertmean_all": (
        True,
        "Pearson r of changes from the mean of training perturbations, all genes",
    ),
    "direction_accuracy_de": (True, "Fraction of D with the right sign of change vs control"),
    "direction_accuracy_de_notarget": (
        True,
        "Fraction of D' with the right sign of change vs control",
    ),
    "direction_accuracy_all": (
        True,
        "Fraction of all genes (observed change != 0) with the right sign of change",
    ),
    "pearson_means_all": (True, "Pearson r of raw means (paper-comparable; inflated)"),
    "pearson_means_de": (True, "Pearson r of raw means on D"),
    "energy_distance": (
        False,
        "Energy distance between predicted and observed cells in PCA space",
    ),
    "mmd": (False, "Squared MMD (multi-bandwidth RBF) between cell sets in PCA space"),
    "rank": (
        False,
        "Fraction of other perturbations' predictions closer to this observed mean than its own "
        "(0 best, 0.5 random)",
    ),
    "mae_all": (False, "Mean absolute error of predicted and observed means, all genes"),
    "discrimination_score": (
        True,
        "Virtual Cell Challenge discrimination: 1 - (share of observed changes closer, in L1 "
        "without the targets, to the predicted change than its own) (1 best)",
    ),
    "de_overlap": (
        True,
        "Virtual Cell Challenge DE overlap: share of the observed DE genes (Wilcoxon, BH FDR "
        "< 0.05) among the predicted top-k (k = observed DE count)",
    ),
}


def evaluate(
    predicted: AnnData,
    observed: AnnData,
    control: AnnData,
    perturbation_key: str = "perturbation",
    control_label: str = "control",
    combination_delimiter: str = "+",
    n_de_genes: int = 20,
    training_perturbation_mean: np.ndarray | pd.Series | None = None,
    pca: Any = None,
    n_cells: int | None = None,
    seed: int = 0,
    de_method: str = "welch",
    distribution_metrics: bool = True,
    source_key: str | None = "control_cell",
    de_fdr: float = 0.05,
    de_metrics: bool = True,
    cache: dict | None = None,
    *,
    design: PerturbationDesign | None = None,
) -> pd.DataFrame:
    """Score predictions against observed cells, one row per perturbation.

    Parameters
    ----------
    predicted
        Predicted cells (or one mean row per perturbation), labelled in
        ``obs[perturbation_key]``; ``X`` on the same scale as ``observed``. It must contain
        every gene of ``observed`` (extra genes are ignored; order may differ).
    observed
        Held-out observed cells. Control cells in it are ignored.
    control
        Reference control cells (use the *training* controls). If it has a
        ``perturbation_key`` column, only cells labelled ``control_label`` are used;
        otherwise all of its cells.
    perturbation_key, control_label, combination_delimiter
        How perturbations are labelled; labels are matched in canonical form, so ``"B+A"``
        in ``predicted`` matches ``"A+B"`` in ``observed``.
    n_de_genes
        Size of the DE gene sets ``D`` and ``D'``.
    training_perturbation_mean
        Mean over training perturbations of their mean expression (see
        :func:`mean_of_perturbation_means`): a Series indexed by gene, or an array in the
        gene order of ``observed``. Without it ``pearson_delta_pertmean_all`` is NaN.
    pca
        PCA space of the distribution metrics: a fitted sklearn PCA or ``(mean, components)``
        (see :func:`fit_pca`), fitted on training cells with the genes of ``observed``. If
        None, a 50-component PCA is fitted on ``control``.
    n_cells
        Maximum cells per side for the distribution metrics (default 500).
    seed
        Seed of the per-perturbation cell subsampling (derived per label, so a perturbation's
        score does not depend on which other perturbations are evaluated).
    de_method
        ``"welch"`` (rank by absolute Welch t statistic, default) or ``"abs_change"``.
    distribution_metrics
        Compute ``energy_distance`` and ``mmd`` (set False to skip them for speed).
    source_key
        Column of ``predicted.obs`` naming the control cell each predicted cell was made
        from (as SCCVAE and the baselines of :mod:`sccvae.baselines` record it). When the
        column exists and its names are cells of ``control``, a prediction's change is
        measured from the mean of its own source cells rather than from ``mu0`` (see the
        module docstring); ``None`` always uses ``mu0``.
    de_fdr
        FDR threshold of the Wilcoxon DE test of ``de_overlap``.
    de_metrics
        Compute ``de_overlap`` (set False to skip the per-gene tests for speed).
    cache
        A dict shared by calls that score predictions against the *same* observed and
        control cells (e.g. the methods of one benchmark fold): the control cells' ranks and
        the observed DE genes are computed once and reused.
    design
        The :class:`~sccvae._perturbations.PerturbationDesign` of ``observed``'s cells, when
        the caller has one (e.g. the benchmark's design of the whole data, ``.subset`` to the
        test cells); otherwise built from the labels. The predicted labels are mapped through
        it, so labels it knows (as written or in canonical form) are not parsed again.

    Returns
    -------
    DataFrame indexed by canonical perturbation label (sorted), with the columns of
    :data:`METRICS` plus ``n_cells_predicted``, ``n_cells_observed``, ``n_targets``,
    ``n_de_genes_used``, ``n_de_observed`` (significant observed DE genes) and
    ``source_corrected`` (whether the change was measured from the source cells). See the
    module docstring for the conventions.
    """
    for name, obj in (("predicted", predicted), ("observed", observed), ("control", control)):
        if not isinstance(obj, AnnData):
            raise TypeError(f"`{name}` must be an AnnData, got {type(obj).__name__}.")
    if de_method not in ("welch", "abs_change"):
        raise ValueError(f"`de_method` must be 'welch' or 'abs_change', got {de_method!r}.")
    n_de_genes = int(n_de_genes)
    if n_de_genes < 1:
        raise ValueError(f"`n_de_genes` must be positive, got {n_de_genes}.")
    max_cells = _DEFAULT_MAX_CELLS if n_cells is None else int(n_cells)
    if max_cells < 2:
        raise ValueError(f"`n_cells` must be at least 2, got {n_cells}.")
    if not 0.0 < de_fdr < 1.0:
        raise ValueError(f"`de_fdr` must lie in (0, 1), got {de_fdr}.")

    genes = pd.Index([str(g) for g in observed.var_names])
    if not genes.is_unique:
        raise ValueError("`observed.var_names` are not unique; call `var_names_make_unique()`.")
    n_genes = genes.size
    gene_pos = {g: i for i, g in enumerate(genes)}
    x_obs = _matrix(observed, "observed")
    x_pred = _select_columns(
        _matrix(predicted, "predicted"), _gene_columns(predicted, genes, "predicted")
    )
    x_ctrl, ctrl_names = _control_cells(control, genes, perturbation_key, control_label)
    s0, q0, n0 = _group_moments(x_ctrl, np.zeros(x_ctrl.shape[0], dtype=np.int64), 1)
    mu0 = s0[0] / n0[0]
    var0 = np.maximum(q0[0] - n0[0] * mu0**2, 0.0) / (n0[0] - 1)
    atol = _CONSTANT_RTOL * (1.0 + float(np.sqrt(np.mean(mu0**2))))

    # --- perturbations in common
    if design is None:
        obs_labels = perturbation_labels(observed.obs, perturbation_key)
        pred_labels = perturbation_labels(predicted.obs, perturbation_key)
        obs_design = PerturbationDesign.from_labels(
            obs_labels, control_label, combination_delimiter
        )
    else:
        obs_design = design_of(
            observed.obs, perturbation_key, control_label, combination_delimiter, design
        )
        pred_labels = perturbation_labels(predicted.obs, perturbation_key)
    # predictions share the observed design's look-ups: their (canonical) labels are known
    pred_design = obs_design.with_labels(pred_labels)
    perts = _common_perturbations(obs_design, pred_design)
    n_p = len(perts)
    obs_codes = obs_design.codes_for(perts)
    pred_codes = pred_design.codes_for(perts)
    targets = {p: obs_design.targets(p) for p in perts}
    s_obs, q_obs, n_obs = _group_moments(x_obs, obs_codes, n_p)
    s_pred, _, n_pred = _group_moments(x_pred, pred_codes, n_p)
    mu = s_obs / n_obs[:, None]
    mu_hat = s_pred / n_pred[:, None]
    var = np.maximum(q_obs - n_obs[:, None] * mu**2, 0.0) / np.maximum(n_obs[:, None] - 1, 1)
    if not np.all(np.isfinite(mu_hat)):
        raise ValueError("`predicted.X` contains NaN or infinite values.")
    # A prediction made from a few sampled control cells carries their sampling noise in its
    # mean; measured from its own source cells, its change is the method's change alone.
    source_mean = _source_means(predicted, source_key, x_ctrl, ctrl_names, pred_codes, n_p)
    corrected = np.isfinite(source_mean).all(axis=1)
    mu_hat[corrected] = mu0 + mu_hat[corrected] - source_mean[corrected]
    pert_mean = _gene_vector(training_perturbation_mean, genes, "training_perturbation_mean")

    # --- DE scores (perturbations x genes)
    obs_change = mu - mu0
    pred_change = mu_hat - mu0
    if de_method == "welch":
        se = np.sqrt(var / n_obs[:, None] + var0 / n0[0])
        score = np.zeros_like(obs_change)
        np.divide(np.abs(obs_change), se, out=score, where=se > 0)
        score[(se == 0) & (obs_change != 0)] = np.inf
    else:
        score = np.abs(obs_change)
    target_cols = [
        np.array(sorted(gene_pos[g] for g in targets.get(p, ()) if g in gene_pos), dtype=np.int64)
        for p in perts
    ]
    rank = _rank(mu, mu_hat)
    discrimination = discrimination_scores(pred_change, obs_change, target_cols)

    if distribution_metrics:
        if pca is None:
            pca_mean, comps = _fit_pca_matrix(x_ctrl, n_components=50, max_cells=20_000, seed=seed)
        else:
            pca_mean, comps = _pca_parts(pca, n_genes)
    obs_rows = [np.flatnonzero(obs_codes == i) for i in range(n_p)]
    pred_rows = [np.flatnonzero(pred_codes == i) for i in range(n_p)]
    cache = {} if cache is None else cache
    if de_metrics and "de_reference" not in cache:
        cache["de_reference"] = ReferenceCells(dense(x_ctrl))

    rows = []
    for i, p in enumerate(perts):
        order = np.argsort(-score[i], kind="stable")
        de = order[:n_de_genes]
        de_nt = order[~np.isin(order, target_cols[i])][:n_de_genes]
        row = {
            "mse_all": _mse(mu_hat[i], mu[i]),
            "mse_de": _mse(mu_hat[i, de], mu[i, de]),
            "mse_de_notarget": _mse(mu_hat[i, de_nt], mu[i, de_nt]),
            "pearson_delta_all": pearson(pred_change[i], obs_change[i], atol),
            "pearson_delta_all_notarget": pearson(
                np.delete(pred_change[i], target_cols[i]),
                np.delete(obs_change[i], target_cols[i]),
                atol,
            ),
            "pearson_delta_de": pearson(pred_change[i, de], obs_change[i, de], atol),
            "pearson_delta_de_notarget": pearson(
                pred_change[i, de_nt], obs_change[i, de_nt], atol
            ),
            "pearson_delta_pertmean_all": (
                pearson(mu_hat[i] - pert_mean, mu[i] - pert_mean, atol)
                if pert_mean is not None
                else float("nan")
            ),
            "direction_accuracy_de": _direction_accuracy(
                pred_change[i, de], obs_change[i, de], atol
            ),
            "direction_accuracy_de_notarget": _direction_accuracy(
                pred_change[i, de_nt], obs_change[i, de_nt], atol
            ),
            "direction_accuracy_all": _direction_accuracy(pred_change[i], obs_change[i], atol),
            "pearson_means_all": pearson(mu_hat[i], mu[i], atol),
            "pearson_means_de": pearson(mu_hat[i, de], mu[i, de], atol),
            "energy_distance": float("nan"),
            "mmd": float("nan"),
            "rank": float(rank[i]),
            "mae_all": float(np.mean(np.abs(mu_hat[i] - mu[i]))),
            "discrimination_score": float(discrimination[i]),
            "de_overlap": float("nan"),
            "n_cells_predicted": int(n_pred[i]),
            "n_cells_observed": int(n_obs[i]),
            "n_targets": len(targets.get(p, ())),
            "n_de_genes_used": int(de.size),
            "n_de_observed": -1,
            "source_corrected": bool(corrected[i]),
        }
        if de_metrics and pred_rows[i].size >= 2:
            reference = cache["de_reference"]
            key = ("de_observed", p, de_fdr)
            if key not in cache:
                cache[key] = reference.de_genes(dense(x_obs[obs_rows[i]]), de_fdr)
            observed_de = cache[key]
            predicted_de = reference.de_genes(dense(x_pred[pred_rows[i]]), de_fdr)
            row["de_overlap"] = de_overlap(observed_de, predicted_de)
            row["n_de_observed"] = int(observed_de.size)
        if distribution_metrics:
            a, b = pred_rows[i], obs_rows[i]
            m = min(a.size, b.size, max_cells)
            if m >= 2:
                rng = _seed_for(p, seed)
                a = np.sort(rng.choice(a, size=m, replace=False)) if a.size > m else a
                b = np.sort(rng.choice(b, size=m, replace=False)) if b.size > m else b
                za = _project(x_pred, a, pca_mean, comps)
                zb = _project(x_obs, b, pca_mean, comps)
                row["energy_distance"] = energy_distance(za, zb)
                row["mmd"] = mmd(za, zb)
        rows.append(row)
    table = pd.DataFrame(rows, index=pd.Index(perts, name="perturbation"))
    logger.info("Evaluated %d perturbations on %d genes", n_p, n_genes)
    return table


def _control_cells(control: AnnData, genes: pd.Index, key: str, control_label: str):
    """Return the reference control cells (genes of ``observed``) and their names."""
    x_ctrl = _select_columns(_matrix(control, "control"), _gene_columns(control, genes, "control"))
    names = control.obs_names.astype(str).to_numpy()
    if key in control.obs.columns:
        rows = np.flatnonzero(perturbation_labels(control.obs, key) == control_label)
        if rows.size == 0:
            raise ValueError(
                f"`control` has no cells labelled {control_label!r} in obs[{key!r}]; "
                "pass the training control cells (or an AnnData without that column)."
            )
        if rows.size < control.n_obs:
            x_ctrl, names = x_ctrl[rows], names[rows]
    if x_ctrl.shape[0] < 2:
        raise ValueError("`control` needs at least 2 cells.")
    return x_ctrl, names


def _common_perturbations(
    obs_design: PerturbationDesign, pred_design: PerturbationDesign
) -> list[str]:
    obs_set = list(obs_design.perturbations)
    pred_set = list(pred_design.perturbations)
    perts = sorted(set(obs_set) & set(pred_set))
    if not perts:
        raise ValueError(
            "No perturbation is present in both `predicted` and `observed` "
            f"(observed e.g. {obs_set[:5]}, predicted e.g. {pred_set[:5]}); check labels, "
            "`perturbation_key` and `control_label`."
        )
    only_obs = sorted(set(obs_set) - set(pred_set))
    if only_obs:
        warnings.warn(
            f"{len(only_obs)} observed perturbation(s) have no prediction and are not scored "
            f"(e.g. {only_obs[:5]}).",
            UserWarning,
            stacklevel=3,
        )
    return perts


def _source_means(
    predicted: AnnData,
    source_key: str | None,
    x_ctrl,
    ctrl_names: np.ndarray,
    pred_codes: np.ndarray,
    n_p: int,
) -> np.ndarray:
    """Mean of each perturbation's source control cells (NaN rows where unknown)."""
    out = np.full((n_p, x_ctrl.shape[1]), np.nan)
    if source_key is None or source_key not in predicted.obs.columns:
        return out
    position = pd.Index(ctrl_names).get_indexer(predicted.obs[source_key].astype(str))
    known = np.ones(n_p, dtype=bool)
    np.logical_and.at(known, pred_codes[pred_codes >= 0], position[pred_codes >= 0] >= 0)
    if not known.all():
        warnings.warn(
            f"{int((~known).sum())} perturbation(s) name source cells in "
            f"predicted.obs[{source_key!r}] that are not among the control cells; their change "
            "is measured from the control mean instead.",
            UserWarning,
            stacklevel=3,
        )
    codes = np.where(known[np.maximum(pred_codes, 0)] & (pred_codes >= 0), pred_codes, -1)
    usable = codes >= 0
    sums, _, counts = _group_moments(x_ctrl[position[usable]], codes[usable], n_p)
    filled = counts > 0
    out[filled] = sums[filled] / counts[filled, None]
    return out


def _gene_vector(values, genes: pd.Index, name: str) -> np.ndarray | None:
    """Return a gene-indexed Series, or an array in ``genes`` order, in ``genes`` order."""
    if values is None:
        return None
    if isinstance(values, pd.Series):
        pos = pd.Index([str(g) for g in values.index]).get_indexer(genes)
        if (pos < 0).any():
            raise ValueError(
                f"`{name}` lacks {(pos < 0).sum()} gene(s) of `observed` "
                f"(e.g. {list(genes[pos < 0][:5])})."
            )
        return values.to_numpy(dtype=np.float64)[pos]
    out = np.asarray(values, dtype=np.float64).ravel()
    if out.size != genes.size:
        raise ValueError(
            f"`{name}` has {out.size} values but `observed` has {genes.size} genes; pass a "
            "gene-indexed Series or an array in observed gene order."
        )
    return out


def _rank(mu: np.ndarray, mu_hat: np.ndarray) -> np.ndarray:
    """Share of other perturbations' predictions closer (Euclidean) to each observed mean."""
    n_p = mu.shape[0]
    if n_p < 2:
        return np.full(n_p, np.nan)
    dist = cdist(mu, mu_hat)  # observed p x predicted q
    own = np.diag(dist)
    closer = (dist < own[:, None]).sum(axis=1)
    ties = (dist == own[:, None]).sum(axis=1) - 1
    return (closer + 0.5 * ties) / (n_p - 1)
