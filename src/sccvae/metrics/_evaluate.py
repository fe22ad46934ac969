"""Per-perturbation scores of predicted against observed cells."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.spatial.distance import cdist

from sccvae._perturbations import perturbation_labels

from ._core import (
    _CONSTANT_RTOL,
    _DEFAULT_MAX_CELLS,
    _canonical_codes,
    _canonical_set,
    _direction_accuracy,
    _gene_columns,
    _group_moments,
    _matrix,
    _mse,
    _seed_for,
    _select_columns,
    pearson,
)
from ._distribution import _fit_pca_matrix, _pca_parts, _project, energy_distance, mmd

logger = logging.getLogger(__name__)

#: Registry of the per-perturbation metrics of :func:`evaluate`:
#: ``name -> (higher_is_better, description)``.
METRICS: dict[str, tuple[bool, str]] = {
    "mse_all": (False, "MSE between predicted and observed mean expression, all genes"),
    "mse_de": (False, "MSE of means on the top DE genes D (vs control)"),
    "mse_de_notarget": (False, "MSE of means on D' (top DE genes excluding the targets)"),
    "pearson_delta_all": (True, "Pearson r of (mu_hat - mu0, mu - mu0), all genes"),
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

    Returns
    -------
    DataFrame indexed by canonical perturbation label (sorted), with the columns of
    :data:`METRICS` plus ``n_cells_predicted``, ``n_cells_observed``, ``n_targets`` and
    ``n_de_genes_used``. See the module docstring for the conventions.
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

    genes = pd.Index([str(g) for g in observed.var_names])
    if not genes.is_unique:
        raise ValueError("`observed.var_names` are not unique; call `var_names_make_unique()`.")
    n_genes = genes.size
    gene_pos = {g: i for i, g in enumerate(genes)}
    x_obs = _matrix(observed, "observed")
    x_pred = _select_columns(
        _matrix(predicted, "predicted"), _gene_columns(predicted, genes, "predicted")
    )
    x_ctrl = _select_columns(_matrix(control, "control"), _gene_columns(control, genes, "control"))

    # --- control reference
    if perturbation_key in control.obs.columns:
        ctrl_labels = perturbation_labels(control.obs, perturbation_key)
        ctrl_rows = np.flatnonzero(ctrl_labels == control_label)
        if ctrl_rows.size == 0:
            raise ValueError(
                f"`control` has no cells labelled {control_label!r} in obs[{perturbation_key!r}]; "
                "pass the training control cells (or an AnnData without that column)."
            )
        if ctrl_rows.size < control.n_obs:
            x_ctrl = x_ctrl[ctrl_rows]
    if x_ctrl.shape[0] < 2:
        raise ValueError("`control` needs at least 2 cells.")
    ctrl_codes = np.zeros(x_ctrl.shape[0], dtype=np.int64)
    s0, q0, n0 = _group_moments(x_ctrl, ctrl_codes, 1)
    mu0 = s0[0] / n0[0]
    var0 = np.maximum(q0[0] - n0[0] * mu0**2, 0.0) / (n0[0] - 1)
    atol = _CONSTANT_RTOL * (1.0 + float(np.sqrt(np.mean(mu0**2))))

    # --- perturbations in common
    obs_labels = perturbation_labels(observed.obs, perturbation_key)
    pred_labels = perturbation_labels(predicted.obs, perturbation_key)
    obs_set = _canonical_set(obs_labels, control_label, combination_delimiter)
    pred_set = _canonical_set(pred_labels, control_label, combination_delimiter)
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
            stacklevel=2,
        )
    n_p = len(perts)
    obs_codes, targets = _canonical_codes(obs_labels, perts, control_label, combination_delimiter)
    pred_codes, _ = _canonical_codes(pred_labels, perts, control_label, combination_delimiter)
    s_obs, q_obs, n_obs = _group_moments(x_obs, obs_codes, n_p)
    s_pred, _, n_pred = _group_moments(x_pred, pred_codes, n_p)
    mu = s_obs / n_obs[:, None]
    mu_hat = s_pred / n_pred[:, None]
    var = np.maximum(q_obs - n_obs[:, None] * mu**2, 0.0) / np.maximum(n_obs[:, None] - 1, 1)
    if not np.all(np.isfinite(mu_hat)):
        raise ValueError("`predicted.X` contains NaN or infinite values.")

    # --- training perturbation mean
    pert_mean = None
    if training_perturbation_mean is not None:
        if isinstance(training_perturbation_mean, pd.Series):
            index = pd.Index([str(g) for g in training_perturbation_mean.index])
            pos = index.get_indexer(genes)
            if (pos < 0).any():
                raise ValueError(
                    f"`training_perturbation_mean` lacks {(pos < 0).sum()} gene(s) of `observed` "
                    f"(e.g. {list(genes[pos < 0][:5])})."
                )
            pert_mean = training_perturbation_mean.to_numpy(dtype=np.float64)[pos]
        else:
            pert_mean = np.asarray(training_perturbation_mean, dtype=np.float64).ravel()
            if pert_mean.size != n_genes:
                raise ValueError(
                    f"`training_perturbation_mean` has {pert_mean.size} values but `observed` "
                    f"has {n_genes} genes; pass a gene-indexed Series or an array in observed "
                    "gene order."
                )

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

    # --- rank (Euclidean on means): distance of every prediction to every observed mean
    dist = cdist(mu, mu_hat)  # observed p x predicted q
    own = np.diag(dist)
    if n_p > 1:
        closer = (dist < own[:, None]).sum(axis=1)
        ties = (dist == own[:, None]).sum(axis=1) - 1
        rank = (closer + 0.5 * ties) / (n_p - 1)
    else:
        rank = np.full(n_p, np.nan)

    # --- PCA space
    if distribution_metrics:
        if pca is None:
            pca_mean, comps = _fit_pca_matrix(x_ctrl, n_components=50, max_cells=20_000, seed=seed)
        else:
            pca_mean, comps = _pca_parts(pca, n_genes)
        obs_rows = [np.flatnonzero(obs_codes == i) for i in range(n_p)]
        pred_rows = [np.flatnonzero(pred_codes == i) for i in range(n_p)]

    rows = []
    for i, p in enumerate(perts):
        t = targets.get(p, ())
        order = np.argsort(-score[i], kind="stable")
        de = order[:n_de_genes]
        target_cols = {gene_pos[g] for g in t if g in gene_pos}
        de_nt = np.array([g for g in order if g not in target_cols][:n_de_genes], dtype=np.int64)
        row = {
            "mse_all": _mse(mu_hat[i], mu[i]),
            "mse_de": _mse(mu_hat[i, de], mu[i, de]),
            "mse_de_notarget": _mse(mu_hat[i, de_nt], mu[i, de_nt]),
            "pearson_delta_all": pearson(pred_change[i], obs_change[i], atol),
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
            "n_cells_predicted": int(n_pred[i]),
            "n_cells_observed": int(n_obs[i]),
            "n_targets": len(t),
            "n_de_genes_used": int(de.size),
        }
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
