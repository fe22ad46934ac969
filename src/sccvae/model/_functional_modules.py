"""Functional modules: clustering perturbations by their effects, and scoring a clustering.

The paper clusters perturbations by the mean of their latent causal variables (or by their
shift ``c_p a_p``) and finds functional modules (ribosome, proteasome, Mediator, ...). The
functions here cluster a trained model's perturbations (:func:`perturbation_modules`), do
the same clustering on the observed pseudobulk changes, the model-free comparison
(:func:`pseudobulk_modules`), and score a clustering against known modules
(:func:`module_recovery_score`).
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._inputs import dense
from .._perturbations import perturbation_labels

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

__all__ = ["perturbation_modules", "pseudobulk_modules", "module_recovery_score"]

ClusterMethod = Literal["leiden", "louvain"]
ModuleRepresentation = Literal["auto", "shift", "causal", "decoded"]
_CHUNK = 8192


def perturbation_modules(
    model,
    perturbations: Sequence[str] | None = None,
    resolution: float = 1.0,
    use: ModuleRepresentation = "auto",
    include_unseen: bool | None = None,
    n_neighbors: int = 10,
    method: ClusterMethod = "leiden",
    n_cells: int = 500,
    seed: int = 0,
    metric: str = "euclidean",
    adata: ad.AnnData | None = None,
    key_added: str = "module",
) -> ad.AnnData:
    """Cluster perturbations into functional modules by their effect in the latent space.

    Builds :meth:`~sccvae.SCCVAE.get_perturbation_latents` (one row per perturbation), takes
    the latent shift ``sum_t c_t a_t`` (``use="shift"``), the mean causal state minus that of
    unperturbed cells (``use="causal"``) or the decoded change of expression
    (``use="decoded"``, reduced by PCA), and runs a k-nearest-neighbour graph, a UMAP and
    Leiden (or Louvain) community detection on it, as the paper does to find functional
    modules.

    Parameters
    ----------
    model
        A trained :class:`~sccvae.SCCVAE`.
    perturbations
        Labels to cluster (seen, unseen or combinations); all training perturbations if
        ``None``. To place unseen perturbations among the seen ones, pass both, e.g.
        ``list(model_modules.obs_names) + ["NEWGENE"]``.
    resolution
        Resolution of the community detection; higher gives more, smaller modules.
    use
        ``"shift"``: the intervention in the exogenous space, ``sum_t c_t a_t``;
        ``"causal"``: its propagated effect, the mean causal latent ``u`` of the perturbed
        cells minus that of unperturbed cells; ``"decoded"``: the change of decoded
        expression; ``"auto"`` (default): ``"decoded"`` with gene nodes (a node gene's own
        shift is a one-hot vector and says nothing about the pathway), ``"shift"`` with
        abstract nodes (the paper's choice).
    include_unseen
        Keep labels of ``perturbations`` whose targets were not seen in training. ``None``
        (default) keeps them; ``False`` drops them with a log message.
    n_neighbors
        Neighbours of the kNN graph (capped at the number of perturbations minus one).
    method
        ``"leiden"`` (needs ``igraph``; install ``sccvae[leiden]``; falls back to Louvain
        with a warning when it is missing) or ``"louvain"`` (networkx, always available).
    n_cells
        Control cells averaged over for the mean causal latent.
    seed
        Seed of the control cells, the UMAP and the community detection.
    metric
        Distance of the kNN graph (any metric of :func:`scanpy.pp.neighbors`, e.g.
        ``"cosine"`` to ignore effect size).
    adata
        Source of control cells (the training AnnData if ``None``).
    key_added
        Column of ``obs`` receiving the module labels.

    Returns
    -------
    A new AnnData with one row per perturbation: ``X`` the mean causal latent (as in
    :meth:`~sccvae.SCCVAE.get_perturbation_latents`), ``obsm["shift"]``,
    ``obsm["causal_change"]``, ``obsm["X_umap"]``, ``obs[key_added]`` (categorical module
    labels), ``obs["seen"]``, ``obs["magnitude"]``, ``obs["n_targets"]``; the neighbour graph in
    ``obsp`` and the parameters in ``uns["modules"]``.
    """
    if use not in ("auto", "shift", "causal", "decoded"):
        raise ValueError(f"use must be 'auto', 'shift', 'causal' or 'decoded', got {use!r}.")
    if use == "auto":
        use = "decoded" if model.latent_nodes_ == "genes" else "shift"
    if perturbations is not None:
        perturbations = (
            [perturbations] if isinstance(perturbations, str) else [str(p) for p in perturbations]
        )
        perturbations = list(dict.fromkeys(perturbations))
        if not perturbations:
            raise ValueError("No perturbations given to cluster.")
    latents = model.get_perturbation_latents(
        perturbations=perturbations, n_cells=n_cells, adata=adata, seed=seed
    )
    if include_unseen is False:
        unseen = latents.obs_names[~latents.obs["seen"].to_numpy(bool)].tolist()
        if unseen:
            logger.info("Dropping %d unseen perturbation(s): %s", len(unseen), unseen[:10])
            latents = latents[latents.obs["seen"].to_numpy(bool)].copy()
    _check_enough(latents.n_obs)
    latents.obsm["causal_change"] = (
        np.asarray(latents.X, dtype=np.float32)
        - np.asarray(latents.uns["control_causal_mean"], dtype=np.float32)[None, :]
    )
    if use == "decoded":
        n_comps = int(max(1, min(50, latents.n_obs - 1)))
        latents.obsm["X_pca"] = _pca(np.asarray(latents.obsm["decoded_change"]), n_comps, seed)
    rep = {"shift": "shift", "causal": "causal_change", "decoded": "X_pca"}[use]
    used = _cluster(latents, rep, resolution, n_neighbors, method, seed, metric, key_added)
    latents.uns["modules"] = {
        "use": use,
        "resolution": float(resolution),
        "n_neighbors": int(min(n_neighbors, latents.n_obs - 1)),
        "method": used,
        "metric": metric,
        "seed": int(seed),
        "key_added": key_added,
    }
    return latents


def pseudobulk_modules(
    adata: ad.AnnData,
    perturbation_key: str = "perturbation",
    control_label: str = "control",
    resolution: float = 1.0,
    n_neighbors: int = 10,
    method: ClusterMethod = "leiden",
    seed: int = 0,
    n_comps: int = 50,
    layer: str | None = None,
    metric: str = "euclidean",
    min_cells: int = 1,
    key_added: str = "module",
) -> ad.AnnData:
    """Cluster perturbations by their observed pseudobulk change from control.

    The model-free counterpart of :func:`perturbation_modules`: the mean expression of each
    perturbation's cells minus the mean of the control cells, reduced by PCA, then the same
    kNN graph, UMAP and Leiden/Louvain clustering.

    Parameters
    ----------
    adata
        Cells x genes with log-normalised expression in ``X`` (or ``layer``).
    perturbation_key
        Column of ``adata.obs`` with perturbation labels.
    control_label
        Label of the control cells.
    resolution, n_neighbors, method, seed, metric, key_added
        As in :func:`perturbation_modules`.
    n_comps
        Principal components of the changes (capped at perturbations - 1 and genes).
    layer
        Layer with the expression; ``X`` if ``None``.
    min_cells
        Perturbations with fewer cells are left out.

    Returns
    -------
    A new AnnData with one row per perturbation: ``X`` the mean change from control (genes as
    ``var_names``), ``obs["n_cells"]``, ``obsm["X_pca"]``, ``obsm["X_umap"]``,
    ``obs[key_added]`` (categorical), the neighbour graph in ``obsp`` and the parameters in
    ``uns["modules"]``.
    """
    labels = perturbation_labels(adata.obs, perturbation_key)
    if not np.any(labels == control_label):
        raise ValueError(
            f"No control cells: the label {control_label!r} does not occur in "
            f"obs[{perturbation_key!r}]."
        )
    x = adata.X if layer is None else adata.layers[layer]
    uniques, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    means = _group_means(x, codes, len(uniques))
    control = means[list(uniques).index(control_label)]
    keep = (uniques != control_label) & (counts >= min_cells)
    names = uniques[keep].astype(str)
    _check_enough(len(names))
    delta = (means[keep] - control[None, :]).astype(np.float32)
    result = ad.AnnData(
        delta,
        obs=pd.DataFrame(
            {perturbation_key: names, "n_cells": counts[keep].astype(int)}, index=pd.Index(names)
        ),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    n_comps = int(max(1, min(n_comps, result.n_obs - 1, result.n_vars)))
    result.obsm["X_pca"] = _pca(delta, n_comps, seed)
    used = _cluster(result, "X_pca", resolution, n_neighbors, method, seed, metric, key_added)
    result.uns["modules"] = {
        "use": "pseudobulk",
        "resolution": float(resolution),
        "n_neighbors": int(min(n_neighbors, result.n_obs - 1)),
        "n_comps": n_comps,
        "method": used,
        "metric": metric,
        "seed": int(seed),
        "key_added": key_added,
    }
    return result


def module_recovery_score(
    predicted_modules: Sequence | pd.Series | np.ndarray,
    true_modules: Sequence | pd.Series | np.ndarray | dict,
) -> float:
    """Score a clustering of perturbations against known modules (adjusted Rand index).

    Parameters
    ----------
    predicted_modules
        Module of each perturbation, e.g. ``modules.obs["module"]``.
    true_modules
        Known module of each perturbation. When both arguments are :class:`pandas.Series`
        (or ``true_modules`` is a dict), they are matched by label (index) and only labels
        present in both are scored; otherwise they must be aligned and of equal length.

    Returns
    -------
    The adjusted Rand index: 1 for identical partitions (whatever the label names), about 0
    for a random one.
    """
    from sklearn.metrics import adjusted_rand_score

    if isinstance(true_modules, dict):
        true_modules = pd.Series(true_modules)
    if isinstance(predicted_modules, pd.Series) and isinstance(true_modules, pd.Series):
        common = predicted_modules.index.intersection(true_modules.index)
        if len(common) == 0:
            raise ValueError(
                "The predicted and true modules share no perturbation labels (index)."
            )
        dropped = len(predicted_modules) - len(common)
        if dropped:
            logger.info(
                "Scoring %d perturbations; %d without a known module are ignored.",
                len(common),
                dropped,
            )
        predicted = predicted_modules.loc[common].to_numpy()
        truth = true_modules.loc[common].to_numpy()
    else:
        predicted, truth = np.asarray(predicted_modules), np.asarray(true_modules)
        if predicted.shape != truth.shape or predicted.ndim != 1:
            raise ValueError(
                f"predicted_modules and true_modules must be 1-d and of equal length, got shapes "
                f"{predicted.shape} and {truth.shape} (pass pandas Series to match by label)."
            )
    if len(predicted) == 0:
        raise ValueError("Nothing to score: no perturbations given.")
    return float(adjusted_rand_score(truth.astype(str), predicted.astype(str)))


# ---------------------------------------------------------------------------- helpers
def _check_enough(n: int) -> None:
    if n < 3:
        raise ValueError(f"Clustering into modules needs at least 3 perturbations, got {n}.")


def _group_means(x, codes: np.ndarray, n_groups: int) -> np.ndarray:
    sums = np.zeros((n_groups, x.shape[1]))
    for start in range(0, x.shape[0], _CHUNK):
        block = x[start : start + _CHUNK]
        rows = codes[start : start + _CHUNK]
        indicator = sp.csr_matrix(
            (np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(n_groups, len(rows))
        )
        part = indicator @ block
        sums += dense(part)
    return sums / np.bincount(codes, minlength=n_groups)[:, None]


def _pca(x: np.ndarray, n_comps: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    centred = x - x.mean(0, keepdims=True)
    if n_comps >= min(x.shape):
        n_comps = max(1, min(x.shape) - 1) if min(x.shape) > 1 else 1
    return (
        PCA(n_components=n_comps, svd_solver="full", random_state=seed)
        .fit_transform(centred)
        .astype(np.float32)
    )


def _resolve_method(method: str) -> str:
    if method not in ("leiden", "louvain"):
        raise ValueError(f"method must be 'leiden' or 'louvain', got {method!r}.")
    if method == "leiden" and importlib.util.find_spec("igraph") is None:
        warnings.warn(
            "Leiden clustering needs the 'igraph' package (pip install 'sccvae[leiden]'); "
            "falling back to Louvain (networkx).",
            UserWarning,
            stacklevel=3,
        )
        return "louvain"
    return method


def _cluster(
    adata: ad.AnnData,
    use_rep: str,
    resolution: float,
    n_neighbors: int,
    method: str,
    seed: int,
    metric: str,
    key_added: str,
) -> str:
    """Run a kNN graph, UMAP and community detection on ``adata.obsm[use_rep]`` in place."""
    import scanpy as sc

    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution!r}.")
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be at least 2, got {n_neighbors!r}.")
    method = _resolve_method(method)
    k = int(min(n_neighbors, adata.n_obs - 1))
    rep = np.asarray(adata.obsm[use_rep], dtype=np.float32)
    if not np.all(np.isfinite(rep)):
        raise ValueError(f"The representation {use_rep!r} contains NaN or infinite values.")
    if metric == "cosine":
        # zero vectors have no direction; nudge them so that cosine distances stay defined
        norms = np.linalg.norm(rep, axis=1)
        rep[norms == 0] += 1e-8
    adata.obsm[use_rep] = rep
    sc.pp.neighbors(adata, n_neighbors=k, use_rep=use_rep, metric=metric, random_state=seed)
    with warnings.catch_warnings():
        # umap-learn warns that a random_state disables parallelism: that is what we want.
        warnings.filterwarnings(
            "ignore", message=".*n_jobs value.*overridden.*", category=UserWarning
        )
        sc.tl.umap(adata, random_state=seed)
    connectivities = adata.obsp["connectivities"]
    if method == "leiden":
        sc.tl.leiden(
            adata,
            resolution=resolution,
            random_state=seed,
            key_added=key_added,
            flavor="igraph",
            n_iterations=-1,
            directed=False,
        )
        labels = adata.obs[key_added].astype(str).to_numpy()
    else:
        labels = _louvain(connectivities, resolution, seed)
    adata.obs[key_added] = _ordered_categorical(labels)
    return method


def _louvain(connectivities, resolution: float, seed: int) -> np.ndarray:
    import networkx as nx

    graph = nx.from_scipy_sparse_array(sp.csr_matrix(connectivities), edge_attribute="weight")
    communities = nx.community.louvain_communities(
        graph, weight="weight", resolution=resolution, seed=seed
    )
    labels = np.empty(connectivities.shape[0], dtype=object)
    for k, members in enumerate(communities):
        labels[list(members)] = str(k)
    return labels.astype(str)


def _ordered_categorical(labels: np.ndarray) -> pd.Categorical:
    """Relabel modules "0", "1", ... by decreasing size (as scanpy does)."""
    labels = np.asarray(labels, dtype=str)
    uniques, counts = np.unique(labels, return_counts=True)
    order = sorted(range(len(uniques)), key=lambda i: (-counts[i], uniques[i]))
    rename = {uniques[i]: str(rank) for rank, i in enumerate(order)}
    return pd.Categorical(
        [rename[label] for label in labels], categories=[str(i) for i in range(len(order))]
    )
