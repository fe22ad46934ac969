"""The causal VAE as a pure-torch scvi-tools module."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scvi.distributions import NegativeBinomial
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import Encoder, FCLayers
from torch import nn
from torch.distributions import Normal, kl_divergence

from ._constants import REGISTRY_KEYS
from ._losses import mmd_rbf
from ._scm import LatentSCM

logger = logging.getLogger(__name__)

Likelihood = Literal["gaussian", "nb"]

# Counts are put on a log scale of this many counts per cell before the encoder and the MMD.
_NB_SCALE_FACTOR = 1e4


class SCCVAEModule(BaseModuleClass):
    """Causal VAE: exogenous encoder, shift interventions, latent SCM, decoder.

    A minibatch holds perturbed cells of one perturbation and as many control cells. The
    control cells are encoded to exogenous noise ``z``; the perturbation's targets give the
    shift ``sum_t c_t softmax(f(e_t))``; the latent SCM propagates ``z + shift`` to causal
    variables ``u``; the decoder maps ``u`` to expression, compared with the perturbed cells.

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
    n_hidden, n_layers
        Width and depth of encoder and decoder.
    n_hidden_perturbation
        Width of the hidden layer of the perturbation encoder.
    dropout_rate
        Dropout in encoder and decoder.
    likelihood
        ``"gaussian"`` (mean squared error on log-normalised data) or ``"nb"``
        (negative binomial on counts with the observed library size).
    mmd_weight, control_reconstruction_weight
        ``alpha`` and ``lambda`` of the loss.
    init_magnitude
        Initial shift magnitude ``c_t`` of every target (the reference uses 1).
    target_temperature
        Temperature of the softmax over latent nodes. Below 1 it sharpens the initial
        choice of nodes and speeds up learning which nodes a target moves; 1 is the reference.
    target_shift
        How a training target's shift profile ``a_t`` is parameterised: ``"softmax"``, the
        perturbation encoder's softmax over latent nodes ``softmax(f(e_t) / T)`` (the paper's
        mechanism), or ``"vector"``, a free unit vector per training target (any direction,
        both signs). The perturbation encoder is not used with ``"vector"``.
    use_target_direction
        Add to each target's shift a learned step ``s_t`` along ``d_t``, the latent direction
        in which the target gene's expression varies among control cells (a buffer the model
        keeps up to date, see :meth:`sccvae.SCCVAE.train`). ``d_t`` comes from the model
        itself, so it exists for unseen measured genes too.
    seed
        Seed of the initial SCM weights.
    """

    def __init__(
        self,
        n_input: int,
        graph_mask: np.ndarray,
        label_targets: np.ndarray,
        target_embedding: np.ndarray,
        n_hidden: int = 256,
        n_layers: int = 2,
        n_hidden_perturbation: int = 128,
        dropout_rate: float = 0.0,
        likelihood: Likelihood = "gaussian",
        mmd_weight: float = 10.0,
        control_reconstruction_weight: float = 0.25,
        init_magnitude: float = 3.0,
        target_temperature: float = 0.2,
        target_shift: Literal["softmax", "vector"] = "softmax",
        use_target_direction: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        if likelihood not in ("gaussian", "nb"):
            raise ValueError(f"likelihood must be 'gaussian' or 'nb', got {likelihood!r}.")
        n_latent = int(np.asarray(graph_mask).shape[0])
        self.n_input = n_input
        self.n_latent = n_latent
        self.likelihood = likelihood
        self.mmd_weight = mmd_weight
        self.control_reconstruction_weight = control_reconstruction_weight
        if target_temperature <= 0:
            raise ValueError(f"target_temperature must be positive, got {target_temperature}.")
        self.target_temperature = target_temperature
        if target_shift not in ("softmax", "vector"):
            raise ValueError(f"target_shift must be 'softmax' or 'vector', got {target_shift!r}.")
        self.target_shift = target_shift

        label_targets = torch.as_tensor(np.asarray(label_targets), dtype=torch.float32)
        target_embedding = torch.as_tensor(np.asarray(target_embedding), dtype=torch.float32)
        self.register_buffer("label_targets", label_targets)
        self.register_buffer("label_is_control", label_targets.sum(dim=1) == 0)
        self.register_buffer("target_embedding", target_embedding)
        n_targets, embedding_dim = target_embedding.shape
        # Predicts the magnitude of targets absent from training from their embedding; fitted
        # after training on the learned magnitudes (see SCCVAE.train), zero-slope until then.
        self.register_buffer("magnitude_coef", torch.zeros(embedding_dim))
        self.register_buffer("magnitude_intercept", torch.tensor(float(init_magnitude)))
        self.use_target_direction = use_target_direction
        self.register_buffer("target_direction", torch.zeros(n_targets, n_latent))
        self.register_buffer("direction_step_coef", torch.zeros(embedding_dim))
        self.register_buffer("direction_step_intercept", torch.zeros(()))
        # Ridge map from embedding to the whole shift c_t a_t of a target, fitted on the
        # training targets after training (SCCVAE.fit_magnitude_map).
        self.register_buffer("shift_map_coef", torch.zeros(embedding_dim, n_latent))
        self.register_buffer("shift_map_intercept", torch.zeros(n_latent))

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
            FCLayers(embedding_dim, n_hidden_perturbation, n_layers=1, dropout_rate=0.0, **mlp_kwargs),
            nn.Linear(n_hidden_perturbation, n_latent),
        )
        self.magnitude = nn.Parameter(torch.full((n_targets,), float(init_magnitude)))
        # "vector": every training target owns its shift direction, so perturbations are told
        # apart from the first step (the softmax can collapse onto the same nodes). Drawn from
        # its own generator: the other initial weights stay those of the "softmax" model.
        if target_shift == "vector":
            generator = torch.Generator().manual_seed(seed)
            initial_vectors = torch.randn(n_targets, n_latent, generator=generator) / np.sqrt(n_latent)
        else:
            initial_vectors = torch.zeros(n_targets, n_latent)
        self.shift_vector = nn.Parameter(initial_vectors, requires_grad=target_shift == "vector")
        self.direction_step = nn.Parameter(torch.zeros(n_targets), requires_grad=use_target_direction)
        self.scm = LatentSCM(graph_mask, seed=seed)
        self.decoder_body = FCLayers(
            n_latent, n_hidden, n_layers=n_layers, n_hidden=n_hidden, dropout_rate=dropout_rate, **mlp_kwargs
        )
        self.decoder_out = nn.Linear(n_hidden, n_input)
        if likelihood == "nb":
            self.log_dispersion = nn.Parameter(torch.zeros(n_input))

    # ----------------------------------------------------------------- interventions
    def target_distribution(self, target_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Soft choice of latent nodes for each target: ``softmax(f(e_t))``, ``targets x d``."""
        embedding = self.target_embedding if target_embedding is None else target_embedding
        return torch.softmax(self.perturbation_encoder(embedding) / self.target_temperature, dim=-1)

    def target_profile(self) -> torch.Tensor:
        """Shift profile ``a_t`` of the training targets, ``targets x d``.

        The softmax over nodes, or with ``target_shift="vector"`` each target's unit vector.
        """
        if self.target_shift == "vector":
            return F.normalize(self.shift_vector, dim=1)
        return self.target_distribution()

    def predicted_magnitude(self, target_embedding: torch.Tensor) -> torch.Tensor:
        """Shift magnitude of targets not seen in training, from their embedding."""
        return target_embedding @ self.magnitude_coef + self.magnitude_intercept

    def predicted_direction_step(self, target_embedding: torch.Tensor) -> torch.Tensor:
        """Step along the expression direction for targets not seen in training."""
        return target_embedding @ self.direction_step_coef + self.direction_step_intercept

    def predicted_shift(self, target_embedding: torch.Tensor) -> torch.Tensor:
        """Shift ``c_t a_t`` of targets not seen in training, by the ridge map on the embedding."""
        return target_embedding @ self.shift_map_coef + self.shift_map_intercept

    def training_targets(self) -> dict[str, torch.Tensor]:
        """The description of the training targets that :meth:`shift` uses by default."""
        return {
            "embedding": self.target_embedding,
            "profile": self.target_profile(),
            "magnitude": self.magnitude,
            "direction": self.target_direction,
            "direction_step": self.direction_step,
        }

    def target_shifts(self, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each target's own shift ``c_t a_t`` (``targets x d``), without the direction step.

        ``targets`` as in :meth:`shift`: rows flagged by ``use_fixed_shift`` take
        ``fixed_shift``; ``a_t`` is ``profile`` or, if absent, the softmax of the embedding.
        """
        profile = targets.get("profile")
        if profile is None:
            profile = self.target_distribution(targets["embedding"])
        per_target = targets["magnitude"][:, None] * profile
        if "use_fixed_shift" in targets:
            per_target = torch.where(targets["use_fixed_shift"][:, None], targets["fixed_shift"], per_target)
        return per_target

    def shift(self, target_weights: torch.Tensor, targets: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Latent shift ``sum_t w_t (c_t a_t + s_t d_t)`` per row of ``target_weights`` (cells x targets).

        ``targets`` describes the columns of ``target_weights`` (keys ``embedding``,
        ``magnitude``, optionally ``profile`` (``a_t``; else the softmax of the embedding) and, with ``use_target_direction``, ``direction`` and
        ``direction_step``); the training targets if ``None``. Pass another description to
        intervene on any targets (e.g. unseen genes) or to scale a knock-down. Rows flagged
        by an optional boolean ``use_fixed_shift`` take ``fixed_shift`` instead of
        ``c_t a_t`` (unseen targets with ``unseen_shift="ridge"``).
        """
        targets = self.training_targets() if targets is None else targets
        per_target = self.target_shifts(targets)
        if self.use_target_direction:
            per_target = per_target + targets["direction_step"][:, None] * targets["direction"]
        return target_weights @ per_target

    # ----------------------------------------------------------------- scvi interface
    def _split_batch(self, tensors: dict[str, torch.Tensor]):
        x = tensors[REGISTRY_KEYS.X_KEY]
        labels = tensors[REGISTRY_KEYS.PERTURBATION_KEY].long().view(-1)
        is_control = self.label_is_control[labels]
        control_x = x[is_control]
        perturbed_x = x[~is_control]
        perturbed_labels = labels[~is_control]
        n_pairs = min(control_x.shape[0], perturbed_x.shape[0])
        return control_x, perturbed_x[:n_pairs], perturbed_labels[:n_pairs]

    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        control_x, perturbed_x, perturbed_labels = self._split_batch(tensors)
        return {"x": control_x}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        control_x, perturbed_x, perturbed_labels = self._split_batch(tensors)
        weights = torch.zeros(
            control_x.shape[0], self.label_targets.shape[1], device=control_x.device
        )
        weights[: perturbed_labels.shape[0]] = self.label_targets[perturbed_labels]
        return {
            "z": inference_outputs["z"],
            "target_weights": weights,
            "library": self._library(perturbed_x, control_x),
        }

    def _library(self, perturbed_x: torch.Tensor, control_x: torch.Tensor) -> torch.Tensor:
        """Library size used for each prediction: the paired perturbed cell's, else its own."""
        library = control_x.sum(dim=1, keepdim=True)
        if self.likelihood == "nb" and perturbed_x.shape[0] > 0:
            library = library.clone()
            library[: perturbed_x.shape[0]] = perturbed_x.sum(dim=1, keepdim=True)
        return library

    def _encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.likelihood == "nb":
            return torch.log1p(_NB_SCALE_FACTOR * x / x.sum(dim=1, keepdim=True).clamp_min(1.0))
        return x

    @auto_move_data
    def inference(self, x: torch.Tensor, n_samples: int = 1) -> dict:
        """Encode control cells to the exogenous posterior ``q(z | x)`` and a sample of it."""
        qz, z = self.encoder(self._encoder_input(x))
        if n_samples > 1:
            z = qz.rsample((n_samples,))
        return {"qz": qz, "z": z}

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        """Decoder output: mean log-expression (gaussian) or expression proportions (nb)."""
        out = self.decoder_out(self.decoder_body(u))
        return torch.softmax(out, dim=-1) if self.likelihood == "nb" else out

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        target_weights: torch.Tensor,
        library: torch.Tensor | None = None,
        targets: dict[str, torch.Tensor] | None = None,
    ) -> dict:
        """Shift, propagate and decode: predictions for the perturbed and the unperturbed state."""
        shift = self.shift(target_weights, targets)
        u = self.scm(z, shift)
        u_control = self.scm(z)
        return {
            "shift": shift,
            "u": u,
            "u_control": u_control,
            "prediction": self.decode(u),
            "control_prediction": self.decode(u_control),
            "library": library,
        }

    def expression_mean(self, decoded: torch.Tensor, library: torch.Tensor | None) -> torch.Tensor:
        """Decoder output in the input's space (log-normalised values or expected counts)."""
        if self.likelihood == "nb":
            return decoded * library
        return decoded

    def abduct(
        self, source: torch.Tensor, prediction: torch.Tensor, control_prediction: torch.Tensor
    ) -> torch.Tensor:
        """Counterfactual of an observed control cell that keeps its own residual.

        With ``x = g(u0) + noise`` the counterfactual under the intervention is ``g(u) + noise``
        = ``x + g(u) - g(u0)`` (abduction of the observation noise). For ``"nb"`` the cell's
        counts are scaled by the ratio of predicted expression proportions ``g(u) / g(u0)``.
        """
        if self.likelihood == "nb":
            return source * prediction / control_prediction.clamp_min(1e-10)
        return source + prediction - control_prediction

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """MSE (or NB NLL) + alpha * MMD + beta * KL + lambda * control reconstruction."""
        control_x, perturbed_x, _ = self._split_batch(tensors)
        n_pairs = perturbed_x.shape[0]
        prediction = generative_outputs["prediction"]
        control_prediction = generative_outputs["control_prediction"]
        qz = inference_outputs["qz"]

        kl_per_cell = kl_divergence(qz, Normal(torch.zeros_like(qz.loc), torch.ones_like(qz.scale))).mean(-1)
        control_rec = self._reconstruction(control_prediction, control_x)
        perturbed_rec = torch.zeros_like(control_rec)
        mmd = torch.zeros((), device=control_x.device)
        if n_pairs > 0:
            perturbed_rec[:n_pairs] = self._reconstruction(prediction[:n_pairs], perturbed_x)
            if n_pairs > 1:
                mmd = mmd_rbf(self._mmd_space(prediction[:n_pairs]), self._mmd_space(perturbed_x, observed=True))
        perturbed_term = perturbed_rec[:n_pairs].mean() if n_pairs > 0 else mmd
        total = (
            perturbed_term
            + self.mmd_weight * mmd
            + kl_weight * kl_per_cell.mean()
            + self.control_reconstruction_weight * control_rec.mean()
        )
        return LossOutput(
            loss=total,
            reconstruction_loss=perturbed_rec + self.control_reconstruction_weight * control_rec,
            kl_local=kl_per_cell,
            extra_metrics={
                "perturbed_reconstruction": perturbed_term.detach(),
                "mmd": mmd.detach(),
                "kl": kl_per_cell.mean().detach(),
                "control_reconstruction": control_rec.mean().detach(),
            },
        )

    def _reconstruction(self, decoded: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """Per-cell reconstruction error, averaged over genes (the reference's MSE scale)."""
        if self.likelihood == "gaussian":
            return F.mse_loss(decoded, observed, reduction="none").mean(dim=1)
        library = observed.sum(dim=1, keepdim=True)
        nb = NegativeBinomial(mu=decoded * library, theta=self.log_dispersion.exp())
        return -nb.log_prob(observed).mean(dim=1)

    def _mmd_space(self, values: torch.Tensor, observed: bool = False) -> torch.Tensor:
        if self.likelihood == "gaussian":
            return values
        if observed:
            values = values / values.sum(dim=1, keepdim=True).clamp_min(1.0)
        return torch.log1p(_NB_SCALE_FACTOR * values)

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
