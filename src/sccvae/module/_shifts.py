"""Shift interventions: where each target's shift goes in the latent space, and how far.

:class:`ShiftInterventionMixin` gives :class:`~sccvae.SCCVAEModule` the shift
``sum_t w_t (c_t a_t + gamma_t s)`` of a set of targets: a node gene's own node or the
perturbation encoder's profile from its embedding (``a_t``), its magnitude (``c_t``) and the
shared response (``gamma_t s``), for the training targets or any other description of
targets (unseen genes, a scaled knock-down). The parameters and buffers it reads are the
module's own (``perturbation_encoder``, ``magnitude``, ``shared_shift``, ...), and so is
what the calibration fits to the trained targets (:class:`Calibration`: a latent correction
added to each one's shift, a residual on the genes), held by :meth:`set_calibration`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Calibration:
    """What is fitted to the trained targets after training (:mod:`sccvae.model._calibration`).

    Attributes
    ----------
    correction
        Each training target's latent correction, added to its shift (targets x nodes).
    residual
        Each training target's residual on the standardised genes (targets x genes).
    """

    correction: torch.Tensor
    residual: torch.Tensor


class ShiftInterventionMixin:
    """``shift`` and the target descriptions it is made of, for :class:`SCCVAEModule`."""

    def target_distribution(self, target_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Where a target's shift goes, from its embedding, ``targets x d``.

        ``softmax(f(e_t) / T)`` (a soft choice of nodes, the paper's), or with
        ``perturbation_encoder="direction"`` the unit vector ``f(e_t) / |f(e_t)|`` (any
        direction, both signs).
        """
        embedding = self.target_embedding if target_embedding is None else target_embedding
        logits = self.perturbation_encoder(embedding)
        if self.perturbation_encoder_kind == "direction":
            return F.normalize(logits, dim=-1)
        return torch.softmax(logits / self.target_temperature, dim=-1)

    def target_profile(self, nodes: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Where each target's own shift goes, ``targets x d``.

        A node gene's own node (one-hot); the perturbation encoder's output for the others.
        """
        profile = F.one_hot(nodes.clamp_min(0), self.n_latent).to(embedding.dtype)
        # the encoder runs on the other targets only (none: an empty batch, which keeps it
        # in the graph with zero gradients, as when its rows were all discarded)
        embedded = torch.nonzero(nodes < 0).ravel()
        encoded = self.target_distribution(embedding[embedded])
        return profile.index_copy(0, embedded, encoded)

    def predicted_magnitude(self, target_embedding: torch.Tensor) -> torch.Tensor:
        """Predict the shift magnitude of unseen targets that are not node genes."""
        return target_embedding @ self.magnitude_coef + self.magnitude_intercept

    def training_targets(self, columns: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Return the description of the training targets that :meth:`shift` uses by default.

        ``columns``: only those targets (rows gathered), e.g. the targets of one minibatch.
        """
        targets = {
            "node": self.target_nodes,
            "embedding": self.target_embedding,
            "magnitude": self.magnitude,
            "shared_strength": self.shared_strength,
            "residual": self.target_residual,
            "correction": self.target_correction,
        }
        if columns is None:
            return targets
        return {key: value[columns] for key, value in targets.items()}

    def target_shifts(self, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each target's own shift ``c_t a_t`` (``targets x d``), without the shared shift.

        ``targets`` as in :meth:`shift`; an optional ``profile`` gives ``a_t`` directly.
        """
        profile = targets.get("profile")
        if profile is None:
            profile = self.target_profile(targets["node"], targets["embedding"])
        return targets["magnitude"][:, None] * profile

    def shift(
        self, target_weights: torch.Tensor, targets: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Latent shift ``sum_t w_t (c_t a_t + gamma_t s)`` per row of ``target_weights``.

        ``target_weights`` is cells (or perturbations) x targets; ``targets`` describes its
        columns with the keys ``node`` (node of a node-gene target, else -1),
        ``embedding``, ``magnitude`` (``c_t``), ``shared_strength`` (``gamma_t``) and
        optionally ``profile`` (``a_t``, see :mod:`sccvae.model._interventions`) and
        ``correction`` (a trained target's calibrated latent correction); the training
        targets if ``None``. Pass another description to intervene on any targets
        (e.g. unseen genes) or to scale a knock-down.
        """
        targets = self.training_targets() if targets is None else targets
        per_target = (
            self.target_shifts(targets) + targets["shared_strength"][:, None] * self.shared_shift
        )
        if "correction" in targets:
            per_target = per_target + targets["correction"]
        return target_weights @ per_target

    @torch.no_grad()
    def set_calibration(self, calibration: Calibration | None) -> None:
        """Hold ``calibration`` for the trained targets' predictions (``None``: none)."""
        if calibration is None:
            self.target_correction.zero_()
            self.target_residual.zero_()
            return
        self.target_correction.copy_(calibration.correction)
        self.target_residual.copy_(calibration.residual)
