"""Distribution-matching loss between predicted and observed cells."""

from __future__ import annotations

import torch

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
