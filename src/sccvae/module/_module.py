"""The causal VAE as a pure-torch scvi-tools module."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import Encoder, FCLayers
from torch import nn

from .._constants import REGISTRY_KEYS
from ._losses import NB_SCALE_FACTOR, expected_counts, negative_binomial_nll, sccvae_loss
from ._saturation import saturate
from ._scm import LatentSCM
from ._shifts import ShiftInterventionMixin

logger = logging.getLogger(__name__)

Likelihood = Literal["gaussian", "nb"]


class SCCVAEModule(ShiftInterventionMixin, BaseModuleClass):
    """Causal VAE: exogenous encoder, shift interventions, latent SCM, decoder.

    A minibatch holds perturbed cells of one perturbation and as many control cells. The
    control cells are encoded to exogenous noise ``z``; the perturbation's targets give a
    shift; the latent SCM propagates ``z + shift`` to causal variables ``u``; the decoder
    maps ``u`` to expression, compared with the perturbed cells.

    Two kinds of latent nodes:

    - **gene nodes** (``node_genes`` given): node ``j`` stands for gene ``node_genes[j]``,
      its value is that gene's standardised expression ``(x - center) / scale``. The decoder
      reads node genes directly off their nodes and decodes the other genes from all nodes;
      the node values of control cells are tied to their genes by ``node_weight``. A
      perturbation of a node gene shifts its own node by ``c_t``.
    - **abstract nodes** (the paper's model): the decoder maps all nodes to all genes and a
      target shifts ``c_t softmax(f(e_t) / T)``, a soft choice of nodes from its embedding.

    In both, a target that is not a node gene (e.g. an unmeasured gene) goes through the
    perturbation encoder (``perturbation_encoder``: a softmax or a signed unit direction
    over nodes from its embedding), and every target adds ``gamma_t s``: a learned shift
    shared by all perturbations (the response common to all of them), with a strength of its
    own. Shifts of a combination add before propagation.

    Parameters
    ----------
    n_input
        Number of genes.
    graph_mask
        Strictly upper-triangular ``n_latent x n_latent`` 0/1 mask of allowed edges.
    label_targets
        ``n_labels x n_targets`` 0/1 matrix: which training targets each registered
        perturbation label switches on (all-zero row for the control label).
    target_embedding
        ``n_targets x k`` embedding of each training target.
    node_genes
        Gene (column) index of each latent node, or ``None`` for abstract nodes.
    target_nodes
        Node of each training target, ``-1`` for targets that are not node genes.
    gene_center, gene_scale
        Per-gene centre and scale of the standardised expression the model works in
        (control mean and standard deviation for gene nodes; 0 and 1, the raw scale, for
        abstract nodes).
    initial_magnitude
        Initial ``c_t`` of every training target (a number or one per target).
    n_hidden, n_layers
        Width and depth of encoder and decoder. This, the loss weights and the perturbation
        encoder below default to :class:`~sccvae.SCCVAE`'s defaults (the paper's are in
        :data:`~sccvae._constants.PAPER_MODEL`).
    n_hidden_perturbation
        Width of the hidden layer of the perturbation encoder.
    dropout_rate
        Dropout in encoder and decoder.
    likelihood
        ``"gaussian"`` (squared error on log-normalised data) or ``"nb"`` (negative binomial
        on counts with the observed library size).
    mmd_weight, control_reconstruction_weight
        ``alpha`` and ``lambda`` of the paper's loss.
    node_weight
        Weight of the squared error between control cells' node values and their genes.
    mean_weight
        Weight of the squared error between the mean of a batch's predicted cells and the
        mean of its observed perturbed cells.
    target_temperature
        Temperature of the softmax over latent nodes.
    linear_decoder
        Add a linear map from nodes to decoded genes beside the decoder network.
    shared_response
        Learn the shift shared by all perturbations (else it stays zero).
    expression_floor
        The lowest value the log-normalised expression can take (0 for ``log1p`` data): a
        predicted cell is clipped there, as a knock-down cannot take a gene below zero
        counts. ``None``: no floor (``"nb"``, or data that can be negative).
    seed
        Seed of the initial SCM weights.
    """

    def __init__(
        self,
        n_input: int,
        graph_mask: np.ndarray,
        label_targets: np.ndarray,
        target_embedding: np.ndarray,
        node_genes: np.ndarray | None = None,
        target_nodes: np.ndarray | None = None,
        gene_center: np.ndarray | None = None,
        gene_scale: np.ndarray | None = None,
        initial_magnitude: float | np.ndarray = 3.0,
        n_hidden: int = 512,
        n_layers: int = 1,
        n_hidden_perturbation: int = 128,
        dropout_rate: float = 0.0,
        likelihood: Likelihood = "gaussian",
        mmd_weight: float = 0.0,
        control_reconstruction_weight: float = 16.0,
        node_weight: float = 1.0,
        mean_weight: float = 10.0,
        target_temperature: float = 0.2,
        linear_decoder: bool = False,
        shared_response: bool = True,
        perturbation_encoder: Literal["softmax", "direction"] = "direction",
        expression_floor: float | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if likelihood not in ("gaussian", "nb"):
            raise ValueError(f"likelihood must be 'gaussian' or 'nb', got {likelihood!r}.")
        if target_temperature <= 0:
            raise ValueError(f"target_temperature must be positive, got {target_temperature}.")
        n_latent = int(np.asarray(graph_mask).shape[0])
        self.n_input = n_input
        self.n_latent = n_latent
        self.likelihood = likelihood
        self.mmd_weight = mmd_weight
        self.control_reconstruction_weight = control_reconstruction_weight
        self.node_weight = node_weight
        self.mean_weight = mean_weight
        self.target_temperature = target_temperature
        if perturbation_encoder not in ("softmax", "direction"):
            raise ValueError(
                "perturbation_encoder must be 'softmax' or 'direction', "
                f"got {perturbation_encoder!r}."
            )
        self.perturbation_encoder_kind = perturbation_encoder

        label_targets = torch.as_tensor(np.asarray(label_targets), dtype=torch.float32)
        target_embedding = torch.as_tensor(np.asarray(target_embedding), dtype=torch.float32)
        n_targets, embedding_dim = target_embedding.shape
        self.register_buffer("label_targets", label_targets)
        self.register_buffer("label_is_control", label_targets.sum(dim=1) == 0)
        self.register_buffer("target_embedding", target_embedding)
        self.gene_nodes = node_genes is not None
        genes = (
            np.arange(n_latent) if node_genes is None else np.asarray(node_genes, dtype=np.int64)
        )
        if self.gene_nodes and genes.shape != (n_latent,):
            raise ValueError(f"node_genes must name one gene per latent node ({n_latent}).")
        other = np.setdiff1d(np.arange(n_input), genes) if self.gene_nodes else np.arange(n_input)
        self.register_buffer("node_genes", torch.as_tensor(genes, dtype=torch.long))
        self.register_buffer("other_genes", torch.as_tensor(other, dtype=torch.long))
        nodes = np.full(n_targets, -1) if target_nodes is None else np.asarray(target_nodes)
        self.register_buffer("target_nodes", torch.as_tensor(nodes, dtype=torch.long))
        center = np.zeros(n_input) if gene_center is None else np.asarray(gene_center)
        scale = np.ones(n_input) if gene_scale is None else np.asarray(gene_scale)
        self.register_buffer("gene_center", torch.as_tensor(center, dtype=torch.float32))
        self.register_buffer("gene_scale", torch.as_tensor(scale, dtype=torch.float32))
        # Magnitude of targets absent from training that are not node genes, from their
        # embedding: fitted after training on the learned magnitudes (SCCVAE.train).
        initial = np.broadcast_to(np.asarray(initial_magnitude, dtype=np.float32), (n_targets,))
        self.register_buffer("magnitude_coef", torch.zeros(embedding_dim))
        self.register_buffer("magnitude_intercept", torch.tensor(float(np.mean(initial))))

        mlp_kwargs = {
            "use_batch_norm": False,
            "use_layer_norm": True,
            "activation_fn": nn.LeakyReLU,
        }
        self.encoder = Encoder(
            n_input,
            n_latent,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            var_eps=1e-4,
            return_dist=True,
            **mlp_kwargs,
        )
        self.perturbation_encoder = nn.Sequential(
            FCLayers(
                embedding_dim, n_hidden_perturbation, n_layers=1, dropout_rate=0.0, **mlp_kwargs
            ),
            nn.Linear(n_hidden_perturbation, n_latent),
        )
        self.magnitude = nn.Parameter(torch.as_tensor(initial.copy()))
        self.shared_shift = nn.Parameter(torch.zeros(n_latent), requires_grad=shared_response)
        self.shared_strength = nn.Parameter(torch.ones(n_targets), requires_grad=shared_response)
        # what the latent structure does not explain of a trained target's effect, on the
        # standardised genes: zero while training (training perturbations must not bypass the
        # structure that unseen ones rely on), fitted after it (sccvae.model._calibration); unseen
        # targets have none
        self.register_buffer("target_residual", torch.zeros(n_targets, n_input))
        # the latent shift a trained target's own shift lacks to reproduce its effect through
        # the structure: fitted with the residuals, so that a combination of trained targets
        # propagates (and interacts) from where its singles really are
        self.register_buffer("target_correction", torch.zeros(n_targets, n_latent))
        # observed mean change of every training label (standardised), for what unseen
        # targets borrow from the training interventions (sccvae.model._borrowing)
        self.register_buffer("label_changes", torch.zeros(len(label_targets), n_input))
        self.register_buffer("label_observed", torch.zeros(len(label_targets), dtype=torch.bool))
        self.register_buffer("label_significance", torch.zeros(len(label_targets), n_input))
        floor = -np.inf if expression_floor is None else float(expression_floor)
        self.register_buffer("expression_floor", torch.tensor(floor))
        # how far a gene's expression can fall (log-normalised units): decreases saturate
        # there, so two knock-downs of one gene add to less than their sum (estimated from
        # the training perturbations when training starts, see saturate)
        self.register_buffer("decrease_bound", torch.tensor(float("inf")))
        self.scm = LatentSCM(graph_mask, seed=seed)
        self.decoder_body = FCLayers(
            n_latent,
            n_hidden,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            **mlp_kwargs,
        )
        self.decoder_out = nn.Linear(n_hidden, len(other))
        self.decoder_linear = nn.Linear(n_latent, len(other)) if linear_decoder else None
        if likelihood == "nb":
            self.log_dispersion = nn.Parameter(torch.zeros(n_input))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # models saved before the decrease bound existed predict without one
        state_dict.setdefault(prefix + "decrease_bound", torch.tensor(float("inf")))
        state_dict.setdefault(prefix + "label_changes", torch.zeros_like(self.label_changes))
        state_dict.setdefault(prefix + "label_observed", torch.zeros_like(self.label_observed))
        state_dict.setdefault(
            prefix + "label_significance", torch.zeros_like(self.label_significance)
        )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------- calibration
    @torch.no_grad()
    def clear_calibration(self) -> None:
        """Undo what was fitted to the training perturbations (sccvae.model._calibration).

        Zero the trained targets' residuals and latent corrections; remove the decrease bound
        (a new training run estimates it again).
        """
        self.set_calibration(None)
        self.decrease_bound.fill_(float("inf"))

    def saturate(self, change: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Saturate the decreases of a predicted change: ``B tanh(change / B)`` below zero.

        ``B`` is :attr:`decrease_bound` (log-normalised units; ``scale`` converts, e.g.
        ``gene_scale`` for standardised changes). A small decrease passes unchanged, and no
        decrease goes beyond ``B``: two knock-downs that each lower a gene close to ``B`` add
        to less than their sum, as repression saturates. Increases are left as they are
        (induction of a lowly expressed gene can add to more than the sum on the log scale).
        No bound (infinite ``B``): the identity.
        """
        return saturate(change, self.decrease_bound / scale)

    def realise(self, cells: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        """Standardised cells moved by a standardised change, as counterfactuals move them.

        Decreases saturate (:meth:`saturate`) and cells are clipped at the expression floor.
        """
        floor = (self.expression_floor - self.gene_center) / self.gene_scale
        return torch.maximum(cells + self.saturate(change, self.gene_scale), floor)

    # ----------------------------------------------------------------- scales
    def log_expression(self, x: torch.Tensor) -> torch.Tensor:
        """Return the cells' expression on the log-normalised scale (counts normalised first)."""
        if self.likelihood == "nb":
            return torch.log1p(NB_SCALE_FACTOR * x / x.sum(dim=1, keepdim=True).clamp_min(1.0))
        return x

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Observed cells on the model's standardised scale."""
        return (self.log_expression(x) - self.gene_center) / self.gene_scale

    # ----------------------------------------------------------------- scvi interface
    def split_batch(self, tensors: dict[str, torch.Tensor]):
        x = tensors[REGISTRY_KEYS.X_KEY]
        labels = tensors[REGISTRY_KEYS.PERTURBATION_KEY].long().view(-1)
        is_control = self.label_is_control[labels]
        control_x = x[is_control]
        perturbed_x = x[~is_control]
        perturbed_labels = labels[~is_control]
        n_pairs = min(control_x.shape[0], perturbed_x.shape[0])
        return control_x, perturbed_x[:n_pairs], perturbed_labels[:n_pairs]

    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        control_x, _, _ = self.split_batch(tensors)
        return {"x": control_x}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        control_x, perturbed_x, perturbed_labels = self.split_batch(tensors)
        # only the targets of the batch's labels are described (their rows gathered): a
        # step's cost must not grow with the number of training targets
        switched = self.label_targets[perturbed_labels]
        columns = torch.nonzero(switched.sum(dim=0)).ravel()
        weights = switched.new_zeros(control_x.shape[0], columns.numel())
        weights[: perturbed_labels.shape[0]] = switched[:, columns]
        return {
            "z": inference_outputs["z"],
            "target_weights": weights,
            "library": self._library(perturbed_x, control_x),
            "targets": self.training_targets(columns),
        }

    def _library(self, perturbed_x: torch.Tensor, control_x: torch.Tensor) -> torch.Tensor:
        """Library size used for each prediction: the paired perturbed cell's, else its own."""
        library = control_x.sum(dim=1, keepdim=True)
        if self.likelihood == "nb" and perturbed_x.shape[0] > 0:
            library = library.clone()
            library[: perturbed_x.shape[0]] = perturbed_x.sum(dim=1, keepdim=True)
        return library

    @auto_move_data
    def inference(self, x: torch.Tensor, n_samples: int = 1) -> dict:
        """Encode control cells to the exogenous posterior ``q(z | x)`` and a sample of it."""
        qz, z = self.encoder(self.standardize(x))
        if n_samples > 1:
            z = qz.rsample((n_samples,))
        return {"qz": qz, "z": z}

    def posterior_draw(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Draw ``z`` from ``q(z | x)`` with ``generator`` (CPU); its mean without one."""
        qz = self.inference(x)["qz"]
        if generator is None:
            return qz.loc
        noise = torch.randn(qz.loc.shape, generator=generator)
        return qz.loc + qz.scale * noise.to(qz.loc.device)

    def decode(self, u: torch.Tensor, node_values: torch.Tensor | None = None) -> torch.Tensor:
        """Decode to expression on the log-normalised scale.

        Node genes are read off their nodes (``node_values`` when given, else ``u``); the
        other genes come from the decoder network applied to ``u``.
        """
        decoded = self.decoder_out(self.decoder_body(u))
        if self.decoder_linear is not None:
            decoded = decoded + self.decoder_linear(u)
        if self.gene_nodes:
            standardized = u.new_empty(u.shape[0], self.n_input)
            standardized[:, self.node_genes] = u if node_values is None else node_values
            standardized[:, self.other_genes] = decoded
        else:
            standardized = decoded
        return self.gene_center + self.gene_scale * standardized

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        target_weights: torch.Tensor,
        library: torch.Tensor | None = None,
        targets: dict[str, torch.Tensor] | None = None,
        unperturbed: dict[str, torch.Tensor] | None = None,
    ) -> dict:
        """Shift, propagate and decode: predictions for the perturbed and the unperturbed state.

        ``unperturbed``: :meth:`unperturbed` of the same ``z``, reused rather than recomputed
        (it does not depend on the intervention: prediction reuses it across labels).
        """
        targets = self.training_targets() if targets is None else targets
        shift = passed = self.shift(target_weights, targets)
        if "propagation" in targets:
            # the network passes on only a share of each target's own shift; its own node
            # still takes all of it
            damped = {**targets, "magnitude": targets["magnitude"] * targets["propagation"]}
            passed = self.shift(target_weights, damped)
        n = z.shape[0]
        if unperturbed is not None:
            u_control, control_prediction = unperturbed["u"], unperturbed["prediction"]
            propagated = self.scm(z + passed.expand_as(z))
            u = propagated + (shift - passed)
            prediction = self.decode(propagated, node_values=u)
        else:
            both = self._propagate(z, passed)
            u_control, u = both[:n], both[n:]
            node_values = None
            if "propagation" in targets:
                u = u + (shift - passed)
                node_values = torch.cat([u_control, u])
            # unperturbed and shifted cells in one pass of the decoder (one pass over its weights)
            decoded = self.decode(both, node_values=node_values)
            control_prediction, prediction = decoded[:n], decoded[n:]
        if "residual" in targets:
            prediction = prediction + self.gene_scale * (target_weights @ targets["residual"])
        prediction = control_prediction + self.saturate(prediction - control_prediction)
        return {
            "shift": shift,
            "u": u,
            "u_control": u_control,
            "prediction": prediction,
            "control_prediction": control_prediction,
            "library": library,
        }

    def unperturbed(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the unperturbed state of ``z``: nodes ``u`` and decoded ``prediction``."""
        u = self.scm(z)
        return {"u": u, "prediction": self.decode(u)}

    def _propagate(self, z: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``z`` and ``z + shift`` propagated in one solve (one pass over the graph's weights).

        Rows ``:len(z)`` are the unperturbed cells, the rest the shifted ones.
        """
        return self.scm(torch.cat([z, z + shift.expand_as(z)]))

    def expression_mean(self, decoded: torch.Tensor, library: torch.Tensor | None) -> torch.Tensor:
        """Decode to expression in the input's space (log-normalised values or expected counts)."""
        if self.likelihood == "nb":
            return expected_counts(decoded, library)
        return decoded.clamp_min(self.expression_floor)

    def abduct(
        self, source: torch.Tensor, drive: torch.Tensor, log_normalized: bool = False
    ) -> torch.Tensor:
        """Counterfactual of an observed control cell that keeps its own residual.

        With ``x = g(u0) + noise`` the counterfactual under the intervention is ``g(u) + noise``
        = ``x + g(u) - g(u0)`` (abduction of the observation noise), clipped at the
        expression floor. For ``"nb"`` the same is done on the cell's log-normalised
        expression (``log1p(1e4 x / library)``, floored at zero): the predicted change is then
        the change of the log-normalised expression that the calibration fitted and the
        evaluation measures (scaling a cell's counts instead cannot move a gene it has no count
        of, so a sparse gene's mean would move far less than predicted). It is returned as
        counts at the cell's library size (not integers), or with ``log_normalized`` as the
        log-normalised counterfactual itself: log-normalising the counts again, on their new
        total, moves every gene of a cell whose total changed. ``drive`` is ``g(u) - g(u0)``
        per cell (plus, for a group pinned to a mean change, a gene-wise shift: see
        :func:`~sccvae.model._gap.pinned_mean_shift`).
        """
        moved = self.moved_log_expression(self.log_expression(source), drive)
        if self.likelihood == "nb" and not log_normalized:
            library = source.sum(dim=1, keepdim=True).clamp_min(1.0)
            return torch.expm1(moved) * library / NB_SCALE_FACTOR
        return moved

    @property
    def abduction_floor(self) -> torch.Tensor | float:
        """The floor of a counterfactual on the scale :meth:`abduct` moves cells on.

        ``"nb"``: zero log-normalised expression (no count); ``"gaussian"``: the data's
        expression floor.
        """
        return 0.0 if self.likelihood == "nb" else self.expression_floor

    def moved_log_expression(self, logged: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
        """Cells' log-normalised expression moved by ``drive``, at :attr:`abduction_floor`."""
        return (logged + drive).clamp_min(self.abduction_floor)

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Compute the paper's loss with the batch-mean and node terms (``sccvae_loss``)."""
        return sccvae_loss(self, tensors, inference_outputs, generative_outputs, kl_weight)

    def standardized_prediction(self, decoded: torch.Tensor) -> torch.Tensor:
        """Put decoded expression on the genes' standardised scale (the loss's scale)."""
        return (decoded - self.gene_center) / self.gene_scale

    def reconstruction_error(self, decoded: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """Per-cell reconstruction error, averaged over genes (MSE standardised, or NB NLL)."""
        if self.likelihood == "gaussian":
            return F.mse_loss(
                self.standardized_prediction(decoded),
                self.standardize(observed),
                reduction="none",
            ).mean(dim=1)
        return negative_binomial_nll(decoded, observed, self.log_dispersion)

    @torch.inference_mode()
    def sample(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Counterfactual expression for a paired minibatch, in the input's space.

        Each control cell of ``tensors`` is pushed through the perturbation of the perturbed
        cell it is paired with (control cells without a partner stay unperturbed).
        """
        inference_outputs = self.inference(**self._get_inference_input(tensors))
        generative_inputs = self._get_generative_input(tensors, inference_outputs)
        outputs = self.generative(**generative_inputs)
        return self.expression_mean(outputs["prediction"], outputs["library"])
