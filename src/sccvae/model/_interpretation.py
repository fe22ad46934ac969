"""Reading a trained model: perturbation latents, functional modules and the learned graph.

:class:`InterpretationMixin` gives :class:`~sccvae.SCCVAE` its interpretation methods: each
perturbation's latent shift, causal variables and decoded change
(``get_perturbation_latents``), the clustering of perturbations into functional modules
(:mod:`sccvae.model._functional_modules`) and the learned graph between latent nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import torch

from .._constants import REGISTRY_KEYS
from .._perturbations import canonical_label
from ._functional_modules import ModuleRepresentation, perturbation_modules

if TYPE_CHECKING:
    import networkx as nx

logger = logging.getLogger(__name__)

__all__ = ["InterpretationMixin"]


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
        reference = self._reference_population()
        per_target = module.target_shifts(targets)
        own = weights @ per_target
        shared = (weights @ targets["shared_strength"])[:, None] * module.shared_shift
        correction = weights @ targets["correction"]
        squared = per_target**2
        shares = squared / squared.sum(dim=1, keepdim=True).clamp_min(1e-12)
        n_targets = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        source_mean = module.log_expression(source).mean(0)
        unperturbed = module.unperturbed(z)
        causal, decoded = [], []
        for row in range(len(perturbations)):
            # the same generative pass as predict: shifts, propagation, residuals, saturation
            outputs = module.generative(
                z, weights[row].expand(z.shape[0], -1), targets=targets, unperturbed=unperturbed
            )
            causal.append(outputs["u"].mean(0))
            drive = outputs["prediction"] - outputs["control_prediction"]
            cells = self._counterfactuals(
                source, drive, weights[row], targets, log_normalized=True, reference=reference
            )
            decoded.append(cells.mean(0) - source_mean)
        u0 = unperturbed["u"]
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
