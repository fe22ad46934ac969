"""Reading a trained model: perturbation latents, functional modules and the learned graph.

The paper clusters perturbations by the mean of their latent causal variables (or by their
shift ``c_p a_p``) and finds functional modules (ribosome, proteasome, Mediator, ...).
:class:`InterpretationMixin` gives :class:`~sccvae.SCCVAE` its interpretation methods; the
functions here cluster a trained model's perturbations, do the same clustering on the
observed pseudobulk changes (the model-free comparison), and score a clustering against
known modules.
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
import torch

from .._constants import REGISTRY_KEYS
from .._inputs import dense
from .._perturbations import canonical_label, perturbation_labels

if TYPE_CHECKING:
    import networkx as nx

logger = logging.getLogger(__name__)

__all__ = [
    "InterpretationMixin",
    "perturbation_modules",
    "pseudobulk_modules",
    "module_recovery_score",
]

ClusterMethod = Literal["leiden", "louvain"]
ModuleRepresentation = Literal["auto", "shift", "causal", "decoded"]
_CHUNK = 8192


class InterpretationMixin:
    """``get_perturbation_latents``, ``perturbation_modules`` and ``get_graph`` for SCCVAE."""

    def _training_perturbations(self) -> list[str]:
        labels = self.adata_manager.get_state_registry(
            REGISTRY_KEYS.PERTURBATION_KEY
        ).categorical_mapping
        canonical = [
            canonical_label(
                self._parse(str(label)), self.control_label_, self.combination_delimiter_
            )
            for label in labels
        ]
        return list(dict.fromkeys(c for c in canonical if c != self.control_label_))

    @torch.inference_mode()
    def get_perturbation_latents(
        self,
        perturbations: Sequence[str] | None = None,
        n_cells: int = 500,
        adata: ad.AnnData | None = None,
        seed: int | None = None,
    ) -> ad.AnnData:
        """One row per perturbation describing its intervention in the latent space.

        Parameters
        ----------
        perturbations
            Labels (seen, unseen or combinations); all training perturbations if ``None``.
        n_cells
            Control cells averaged over for the mean causal latent and the decoded change.
        adata, seed
            Source of control cells and seed of their draw.

        Returns
        -------
        AnnData with ``X`` = mean causal latent ``u`` of the perturbed cells (nodes as
        ``var_names``: gene names for gene nodes), ``obsm["shift"]`` = ``sum_t c_t a_t`` (the
        targets' own shifts), ``obsm["shared_shift"]`` = ``(sum_t gamma_t) s``,
        ``obsm["correction"]`` = the trained targets' calibrated latent corrections (see
        :mod:`sccvae.model._calibration`), and for unseen targets the training interventions they
        borrow (which carry the shared shift; see :mod:`sccvae.model._borrowing`),
        ``obsm["target_distribution"]`` = the average over the targets of where their own
        shift goes (each node's share of its squared shift; a one-hot row for a node gene),
        ``obsm["decoded_change"]`` = the mean change of the control cells' counterfactuals
        under the perturbation, as :meth:`predict` makes them (residuals and expression floor
        included; genes, log-normalised scale), ``obs[perturbation_key]`` (the labels as
        given, stripped; they name the rows), ``obs["canonical_perturbation"]``,
        ``obs["magnitude"]`` (sum of the targets' ``c_t``), ``obs["n_targets"]``,
        ``obs["seen"]``; ``uns["control_causal_mean"]`` is
        the mean ``u`` of unperturbed cells, the reference point of the shifts, and
        ``uns["genes"]`` the columns of ``decoded_change``.
        """
        if perturbations is None:
            requested = perturbations = self._training_perturbations()
        else:
            requested, perturbations = self._requested_labels(perturbations)
        self._check_if_trained(warn=True)
        self.module.eval()
        module = self.module
        intervention = self._intervention(perturbations)
        weights, targets = intervention.weights, intervention.targets
        z, _, _, source = self._encode_controls(adata, n_cells, seed, sample=False)
        per_target = module.target_shifts(targets)
        own = weights @ per_target
        shared = (weights @ targets["shared_strength"])[:, None] * module.shared_shift
        correction = weights @ targets["correction"]
        squared = per_target**2
        shares = squared / squared.sum(dim=1, keepdim=True).clamp_min(1e-12)
        n_targets = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        source_mean = module.log_expression(source).mean(0)
        causal, decoded = [], []
        for row in range(len(perturbations)):
            # the same generative pass as predict: shifts, propagation, residuals, saturation
            outputs = module.generative(z, weights[row].expand(z.shape[0], -1), targets=targets)
            causal.append(outputs["u"].mean(0))
            cells = module.abduct(source, outputs["prediction"], outputs["control_prediction"])
            decoded.append(module.log_expression(cells).mean(0) - source_mean)
        u0 = module.scm(z)
        obs = pd.DataFrame(
            {
                self.perturbation_key_: requested,
                "canonical_perturbation": perturbations,
                "magnitude": (weights @ targets["magnitude"]).cpu().numpy(),
                "n_targets": weights.sum(dim=1).cpu().numpy().astype(int),
                "seen": intervention.seen,
            },
            index=pd.Index(requested).astype(str),
        )
        result = ad.AnnData(
            torch.stack(causal).cpu().numpy().astype(np.float32),
            obs=obs,
            var=pd.DataFrame(index=self.latent_node_names_),
        )
        result.obsm["shift"] = own.cpu().numpy()
        result.obsm["shared_shift"] = shared.cpu().numpy()
        result.obsm["correction"] = correction.cpu().numpy()
        result.obsm["target_distribution"] = ((weights @ shares) / n_targets).cpu().numpy()
        result.obsm["decoded_change"] = torch.stack(decoded).cpu().numpy()
        result.uns["control_causal_mean"] = u0.mean(0).cpu().numpy()
        result.uns["genes"] = np.asarray(self.var_names_)
        return result

    def perturbation_modules(
        self,
        perturbations: Sequence[str] | None = None,
        resolution: float = 1.0,
        use: ModuleRepresentation = "auto",
        **kwargs,
    ) -> ad.AnnData:
        """Cluster perturbations into functional modules by their modelled effects.

        One row per perturbation (training perturbations by default; pass labels to include
        unseen ones) with a neighbour graph, a UMAP and ``obs["module"]`` (leiden). See
        :func:`sccvae.perturbation_modules` for all options.
        """
        return perturbation_modules(
            self, perturbations=perturbations, resolution=resolution, use=use, **kwargs
        )

    def get_graph(self, threshold: float = 0.0) -> nx.DiGraph:
        """Learned edges between latent nodes with ``|weight| > threshold``.

        Returns
        -------
        :class:`networkx.DiGraph` over ``latent_node_names_`` (gene names for gene nodes)
        with a ``weight`` on each edge.
        """
        import networkx as nx

        if not np.isfinite(threshold) or threshold < 0:
            raise ValueError(
                f"threshold is compared with |weight| and must be a number >= 0, got "
                f"{threshold!r}; threshold=0 gives every learned edge."
            )
        adjacency = self.module.scm.adjacency.detach().cpu().numpy()
        graph = nx.DiGraph()
        graph.add_nodes_from(self.latent_node_names_)
        allowed = self.module.scm.mask.cpu().numpy() > 0
        sources, targets = np.nonzero((np.abs(adjacency) > threshold) & allowed)
        names = self.latent_node_names_
        graph.add_weighted_edges_from(
            (names[s], names[t], float(adjacency[s, t]))
            for s, t in zip(sources, targets, strict=True)
        )
        return graph


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
