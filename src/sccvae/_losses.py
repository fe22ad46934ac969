"""Losses between predicted and observed cells: the count likelihood and the MMD."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi.distributions import NegativeBinomial

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
