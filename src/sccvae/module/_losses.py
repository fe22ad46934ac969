"""Losses between predicted and observed cells: SCCVAE's loss, the count likelihood, the MMD."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi.distributions import NegativeBinomial
from scvi.module.base import LossOutput
from torch.distributions import Normal, kl_divergence

#: Counts are put on a log scale of this many counts per cell (log-normalised expression).
NB_SCALE_FACTOR = 1e4

DEFAULT_BANDWIDTH_MULTIPLIERS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def mmd_rbf(
    x: torch.Tensor,
    y: torch.Tensor,
    bandwidth_multipliers: tuple[float, ...] = DEFAULT_BANDWIDTH_MULTIPLIERS,
) -> torch.Tensor:
    """Biased squared MMD between two samples with a sum of RBF kernels.

    The base bandwidth is the mean pairwise squared distance of the pooled sample (not
    back-propagated through), scaled by each multiplier, so the loss adapts to the scale of
    the data. Distances come from Gram matrices: memory is ``(n + m)^2``, never
    ``n x m x genes``.

    Parameters
    ----------
    x, y
        ``n x p`` and ``m x p`` samples.
    bandwidth_multipliers
        Multiples of the base bandwidth; one RBF kernel each.
    """
    pooled = torch.cat([x, y], dim=0)
    sq_norms = pooled.pow(2).sum(dim=1)
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * pooled @ pooled.T).clamp_min(0.0)
    n_pooled = pooled.shape[0]
    base = sq_dist.detach().sum() / max(n_pooled * n_pooled - n_pooled, 1)
    base = base.clamp_min(torch.finfo(pooled.dtype).eps)
    kernel = sum(torch.exp(-sq_dist / (base * m)) for m in bandwidth_multipliers)
    n = x.shape[0]
    k_xx = kernel[:n, :n].mean()
    k_yy = kernel[n:, n:].mean()
    k_xy = kernel[:n, n:].mean()
    return k_xx + k_yy - 2.0 * k_xy


def expected_counts(log_expression: torch.Tensor, library: torch.Tensor | None) -> torch.Tensor:
    """Return expected counts of log-normalised expression at a library size (1e4 if None).

    ``log1p`` is inverted through a sharp softplus (decoded values below zero give small
    positive rates, with a gradient) and the rates are normalised to sum to the library
    size, as scVI's decoder does.
    """
    rates = torch.expm1(F.softplus(log_expression, beta=10.0)).clamp_min(1e-8)
    proportions = rates / rates.sum(dim=-1, keepdim=True)
    return proportions * (NB_SCALE_FACTOR if library is None else library)


def negative_binomial_nll(
    decoded: torch.Tensor, observed: torch.Tensor, log_dispersion: torch.Tensor
) -> torch.Tensor:
    """Per-cell negative log-likelihood of counts, averaged over genes.

    The means are the decoded log-normalised expression at each observed cell's library size
    (:func:`expected_counts`); one dispersion per gene, ``exp(log_dispersion)``.
    """
    library = observed.sum(dim=1, keepdim=True)
    nb = NegativeBinomial(mu=expected_counts(decoded, library), theta=log_dispersion.exp())
    return -nb.log_prob(observed).mean(dim=1)


def sccvae_loss(
    module,
    tensors: dict[str, torch.Tensor],
    inference_outputs: dict,
    generative_outputs: dict,
    kl_weight: float = 1.0,
) -> LossOutput:
    """Compute the paper's loss, plus the batch-mean and node terms.

    ``MSE + alpha * MMD + beta * KL + lambda * control reconstruction`` (MSE between
    unpaired predicted and observed perturbed cells; NB NLL for counts), ``+ mean_weight *
    MSE(mean predicted, mean observed)`` and, with gene nodes, ``+ node_weight *
    MSE(node values, node genes)`` of the control cells. Squared errors are on the
    standardised scale.
    """
    control_x, perturbed_x, _ = module.split_batch(tensors)
    n_pairs = perturbed_x.shape[0]
    prediction = generative_outputs["prediction"]
    control_prediction = generative_outputs["control_prediction"]
    qz = inference_outputs["qz"]

    kl_per_cell = kl_divergence(
        qz, Normal(torch.zeros_like(qz.loc), torch.ones_like(qz.scale))
    ).mean(-1)
    control_rec = module.reconstruction_error(control_prediction, control_x)
    node_rec = torch.zeros_like(control_rec)
    if module.gene_nodes:
        observed_nodes = module.standardize(control_x)[:, module.node_genes]
        node_rec = F.mse_loss(
            generative_outputs["u_control"], observed_nodes, reduction="none"
        ).mean(dim=1)
    perturbed_rec = torch.zeros_like(control_rec)
    zero = torch.zeros((), device=control_x.device)
    mmd, mean_error = zero, zero
    if n_pairs > 0:
        perturbed_rec[:n_pairs] = module.reconstruction_error(prediction[:n_pairs], perturbed_x)
        predicted = module.standardized_prediction(prediction[:n_pairs])
        observed = module.standardize(perturbed_x)
        mean_error = F.mse_loss(predicted.mean(dim=0), observed.mean(dim=0))
        if n_pairs > 1 and module.mmd_weight > 0:
            mmd = mmd_rbf(predicted, observed)
    perturbed_term = perturbed_rec[:n_pairs].mean() if n_pairs > 0 else zero
    total = (
        perturbed_term
        + module.mmd_weight * mmd
        + module.mean_weight * mean_error
        + kl_weight * kl_per_cell.mean()
        + module.control_reconstruction_weight * control_rec.mean()
        + module.node_weight * node_rec.mean()
    )
    return LossOutput(
        loss=total,
        reconstruction_loss=perturbed_rec + module.control_reconstruction_weight * control_rec,
        kl_local=kl_per_cell,
        extra_metrics={
            "perturbed_reconstruction": perturbed_term.detach(),
            "mmd": mmd.detach(),
            "mean_error": mean_error.detach(),
            "kl": kl_per_cell.mean().detach(),
            "control_reconstruction": control_rec.mean().detach(),
            "node_reconstruction": node_rec.mean().detach(),
        },
    )
