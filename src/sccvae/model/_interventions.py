"""Turning perturbation labels into the tensors of a shift intervention.

:class:`~sccvae.SCCVAEModule` shifts latent nodes by ``sum_t w_t (c_t a_t + gamma_t s)``.
This module describes any set of targets in those terms: a training target by its learned
values; a target absent from training by values predicted from the training targets only
(never from its own cells):

- a **node gene** shifts its own node by ``c``, the typical training ``c`` on a scale chosen
  after training by leave-one-target-out (:data:`UNSEEN_MAGNITUDE_RULES`);
- a **measured gene that is not a node** shifts the nodes that carry its variation: with
  ``beta`` the regression of its standardised expression on the node values of control
  cells, the shift ``c beta / |beta|^2`` moves the linear prediction of the gene by ``c``;
- any **other embedded target** (e.g. an unmeasured gene with a user embedding) takes the
  perturbation encoder's profile over nodes (softmax or signed direction) and a magnitude
  from a ridge map of the embedding fitted on the training targets;
- every target adds the shared shift with the mean training strength ``gamma``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: How the own-node shift ``c`` of an unseen node gene is predicted from the training
#: targets' ``c`` (standardised units):
#:
#: - ``"standardized"``: the mean ``c`` (same number of control standard deviations);
#: - ``"log"``: the mean ``c * scale`` divided by the gene's scale (same change of
#:   log-normalised expression);
#: - ``"relative"``: the mean ``c * scale / center`` times the gene's ``center / scale``
#:   (same fraction of the gene's mean log-normalised expression).
UNSEEN_MAGNITUDE_RULES = ("standardized", "log", "relative")


def unseen_magnitude(
    rule: str,
    magnitudes: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    new_center: np.ndarray,
    new_scale: np.ndarray,
) -> np.ndarray:
    """Own-node shifts of new node genes from the training ones under ``rule``.

    ``magnitudes``, ``center`` and ``scale`` describe the training targets; ``new_center``
    and ``new_scale`` the new genes.
    """
    if rule == "standardized":
        return np.full(np.shape(new_scale), np.mean(magnitudes))
    if rule == "log":
        return np.mean(magnitudes * scale) / new_scale
    if rule == "relative":
        ratio = np.mean(magnitudes * scale / np.maximum(center, 1e-3))
        return ratio * np.maximum(new_center, 1e-3) / new_scale
    raise ValueError(
        f"Unknown unseen magnitude rule {rule!r}; use one of {UNSEEN_MAGNITUDE_RULES}."
    )


def choose_unseen_magnitude(
    magnitudes: np.ndarray, center: np.ndarray, scale: np.ndarray
) -> tuple[str, dict[str, float]]:
    """Return the rule whose leave-one-target-out prediction of the training ``c`` errs least.

    The error is measured on the log-normalised scale (``c * scale``), where knock-downs of
    different genes are comparable. With fewer than 3 training targets, ``"standardized"``.
    """
    n = len(magnitudes)
    if n < 3:
        return "standardized", {}
    errors = {}
    for rule in UNSEEN_MAGNITUDE_RULES:
        squared = []
        for i in range(n):
            others = np.arange(n) != i
            predicted = unseen_magnitude(
                rule,
                magnitudes[others],
                center[others],
                scale[others],
                center[i : i + 1],
                scale[i : i + 1],
            )[0]
            squared.append(((predicted - magnitudes[i]) * scale[i]) ** 2)
        errors[rule] = float(np.mean(squared))
    return min(errors, key=errors.get), errors


@torch.no_grad()
def fit_unseen_maps(
    module, ridge_penalties: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
):
    """Fit how targets absent from training get their shift, from the training targets only.

    Node genes: the rule of :data:`UNSEEN_MAGNITUDE_RULES` that predicts the training node
    genes' ``c_t`` best leave-one-target-out. Other targets: a ridge regression of the
    training targets' ``c_t`` on their embeddings, penalty by leave-one-out, written into
    ``module.magnitude_coef`` / ``magnitude_intercept``. Never uses the cells of the
    perturbation being predicted.

    Returns
    -------
    The chosen rule and every rule's leave-one-out error (``None`` and ``{}`` without
    training node genes).
    """
    nodes = module.target_nodes.cpu().numpy()
    magnitudes = module.magnitude.detach().cpu().numpy()
    on_nodes = nodes >= 0
    rule, errors = None, {}
    if on_nodes.any():
        genes = module.node_genes.cpu().numpy()[nodes[on_nodes]]
        center, scale = module.gene_center.cpu().numpy(), module.gene_scale.cpu().numpy()
        rule, errors = choose_unseen_magnitude(magnitudes[on_nodes], center[genes], scale[genes])
    others = ~on_nodes
    if others.sum() >= 2:
        embedding = module.target_embedding.double().cpu()[torch.as_tensor(others)]
        target = torch.as_tensor(magnitudes[others]).double()
        _, coef, intercept = ridge_loo(embedding, target, ridge_penalties)
        module.magnitude_coef.copy_(coef.float())
        module.magnitude_intercept.copy_(intercept.float())
    elif others.any():
        module.magnitude_intercept.fill_(float(magnitudes[others].mean()))
    return rule, errors


@dataclass
class Intervention:
    """Perturbations as target weights plus a description of the targets involved.

    Attributes
    ----------
    weights
        ``perturbations x targets`` 0/1 weights.
    targets
        Keys ``node``, ``embedding``, ``profile`` (where each target's own shift goes),
        ``magnitude`` (``c_t``), ``shared_strength`` (``gamma_t``), ``residual`` and
        ``correction`` (a trained target's calibrated residual and latent correction, zero
        for unseen targets), as
        :meth:`~sccvae.SCCVAEModule.generative` takes them.
    seen
        Whether every target of each perturbation was seen in training.
    names
        The targets, in column order.
    """

    weights: torch.Tensor
    targets: dict[str, torch.Tensor]
    seen: list[bool]
    names: list[str]

    def scaled(self, factor: float) -> dict[str, torch.Tensor]:
        """Return the targets with every shift scaled by ``factor`` (a partial knock-down)."""
        return {
            **self.targets,
            "magnitude": self.targets["magnitude"] * factor,
            "shared_strength": self.targets["shared_strength"] * factor,
            "residual": self.targets["residual"] * factor,
            "correction": self.targets["correction"] * factor,
        }


def ridge_loo(x: torch.Tensor, y: torch.Tensor, penalties: Sequence[float]):
    """Ridge regression of ``y`` on ``x`` with the least leave-one-out error.

    Penalties are multiples of the mean squared norm of the centred ``x``, so the grid does
    not depend on the embedding's scale.
    """
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc, yc = x - mean_x, y - mean_y
    n = xc.shape[0]
    gram = xc @ xc.T
    scale = float(torch.diagonal(gram).mean().clamp_min(1e-12))
    identity = torch.eye(n, dtype=x.dtype)
    best = (np.inf, penalties[0], torch.zeros(x.shape[1], dtype=x.dtype))
    for penalty in penalties:
        inverse = torch.linalg.solve(gram + penalty * scale * identity, identity)
        hat = gram @ inverse
        leverage = (1.0 - torch.diagonal(hat)).clamp_min(1e-6)
        residual = (yc - hat @ yc) / leverage
        loo = float((residual**2).mean()) if n > 1 else 0.0
        if loo < best[0]:
            best = (loo, penalty, xc.T @ (inverse @ yc))
    _, penalty, coef = best
    return penalty, coef, mean_y - mean_x @ coef
