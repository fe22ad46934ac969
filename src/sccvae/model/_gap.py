"""Pinning a change after training: the reference cells, and the gene-wise shift that does it.

A predicted cell moves as counterfactuals move it
(:meth:`~sccvae.module._module.SCCVAEModule.realise`): its change saturates at the decrease
bound and the cell is clipped at the expression floor. The calibration of trained targets
(:mod:`sccvae.model._calibration`) and the pinned residuals of what unseen targets borrow
(:class:`~sccvae.model._interventions.InterventionMixin`) both need, gene by gene, the shift
that, added to the structure's change, gives a wanted mean change over a set of cells: the
solution of a monotone equation, found by a safeguarded Newton iteration
(:func:`fitted_gap`), over a seeded draw of training control cells (:func:`reference_cells`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .._inputs import dense
from ..module._saturation import saturated_with_slope

#: Training control cells (a seeded draw) that stand for the model's population of control
#: cells: the calibration fits trained targets' changes on them, unseen targets' borrowed
#: changes are pinned on them, and :meth:`~sccvae.SCCVAE.predict` gives its predicted cells
#: the mean change the model makes on them.
REFERENCE_CELLS = 256


class ReferenceCells(NamedTuple):
    """The model's :data:`REFERENCE_CELLS` seeded training control cells, read once.

    ``z``: their posterior draw; ``standardized`` and ``logged``: their expression,
    standardised and log-normalised; ``unperturbed``: the module's unperturbed state of ``z``
    (:meth:`~sccvae.module._module.SCCVAEModule.unperturbed`).
    """

    z: torch.Tensor
    standardized: torch.Tensor
    logged: torch.Tensor
    unperturbed: dict[str, torch.Tensor]


@torch.no_grad()
def reference_cells(
    module, expression, control_rows: np.ndarray, n_cells: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw control cells (seeded): their posterior draw ``z`` and standardised expression.

    The cells on which changes are fitted after training (the calibration, and what unseen
    targets borrow). ``z`` is one seeded posterior draw of each cell, as
    :meth:`~sccvae.SCCVAE.predict` uses: with a wide posterior (abstract nodes) the mean
    change over draws is not the change at the posterior means.
    """
    rng = np.random.default_rng(seed)
    size = min(n_cells, control_rows.size)
    sample = np.sort(rng.choice(control_rows, size=size, replace=False))
    device = module.gene_center.device
    x = torch.as_tensor(dense(expression[sample]), dtype=torch.float32, device=device)
    z = module.posterior_draw(x, torch.Generator().manual_seed(seed))
    return z, module.standardize(x)


def pinned_mean_shift(
    cells: torch.Tensor, drive: torch.Tensor, wanted: torch.Tensor, floor: torch.Tensor | float
) -> torch.Tensor:
    """Gene-wise shift that gives a group of counterfactual cells the ``wanted`` mean change.

    ``cells`` are source cells on the scale :meth:`~sccvae.module._module.SCCVAEModule.abduct`
    moves them on, ``drive`` their changes and ``floor`` that scale's floor: the shift ``r``
    with ``mean(max(cells + drive + r, floor)) - mean(cells) = wanted``, gene by gene (abduct
    has no decrease bound). A gene whose source cells all sit at the floor cannot go down:
    it takes the shift that reaches the limit.
    """
    genes = cells.shape[1]
    floor = torch.as_tensor(floor, dtype=cells.dtype, device=cells.device).reshape(-1)
    bound = torch.full((genes,), float("inf"), dtype=cells.dtype, device=cells.device)
    return _censored_shift(cells, drive, cells.mean(dim=0), wanted, floor.expand(genes), bound)


def fitted_gap(
    module, cells: torch.Tensor, drive: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Gene-wise shift that, added to ``drive``, moves the cells' mean by ``target``.

    Cells move as :meth:`~sccvae.module._module.SCCVAEModule.realise` moves them, through the
    decrease bound and the expression floor (see :func:`_censored_shift`).
    """
    floor = (module.expression_floor - module.gene_center) / module.gene_scale
    bound = module.decrease_bound / module.gene_scale
    return _censored_shift(cells, drive, cells.mean(dim=0), target, floor, bound)


def _censored_shift(
    cells: torch.Tensor,
    drive: torch.Tensor,
    base: torch.Tensor,
    target: torch.Tensor,
    floor: torch.Tensor,
    bound: torch.Tensor,
    max_iterations: int = 60,
) -> torch.Tensor:
    """Gene-wise shift ``r`` with ``mean(max(cells + h(drive + r), floor)) - base = target``.

    All in standardised units; ``h`` is :func:`~sccvae.module._saturation.saturate` at the
    gene-wise ``bound`` (finite for all genes, or ``inf`` for all: none). The mean rises
    monotonically with ``r``: a safeguarded Newton iteration finds it (Newton steps while they
    stay inside the bracket and shrink fast enough, bisection otherwise; a handful of steps
    per gene where bisection took 32). Without a floor (``-inf``) and a decrease bound it is
    ``target + base - mean(cells + drive)``. A target beyond what the floor or the bound let
    any shift reach (the observed mean is from other cells) takes a shift that reaches the
    limit.
    """
    linear = target + base - (cells + drive).mean(dim=0)
    bounded = bool(torch.isfinite(bound).all())
    if not torch.isfinite(floor).any() and not bounded:
        return linear
    if bounded:  # tanh is flat 5 bounds away: every answer lies within this bracket
        span = linear.abs() + drive.abs().max(dim=0).values + 5 * bound
        low, high = -span, span
    else:  # clipping only raises the mean: the answer is at most the linear one
        low = torch.minimum(floor - (cells + drive).max(dim=0).values, linear)
        high = linear.clone()
    floor = floor.expand_as(base)
    bound = bound.expand_as(base)

    def gap_and_slope(shift, genes):
        """Mean reached minus the target, and its derivative in the shift, on ``genes``."""
        response, response_slope = saturated_with_slope(drive[:, genes] + shift, bound[genes])
        moved = cells[:, genes] + response
        above = moved > floor[genes]
        reached = torch.where(above, moved, floor[genes]).mean(dim=0) - base[genes]
        slope = (response_slope * above).mean(dim=0)
        return reached - target[genes], slope

    # a target at or below what the lowest shift reaches takes that shift (the limit)
    shift = low.clone()
    low_gap, _ = gap_and_slope(low, slice(None))
    genes = torch.nonzero(low_gap < 0).ravel()
    x = torch.minimum(torch.maximum(linear[genes], low[genes]), high[genes])
    low, high = low[genes], high[genes]
    step_before = high - low
    for _ in range(max_iterations):
        if genes.numel() == 0:
            break
        gap, slope = gap_and_slope(x, genes)
        high = torch.where(gap >= 0, x, high)
        low = torch.where(gap >= 0, low, x)
        newton = x - gap / slope.clamp_min(1e-12)
        use_newton = (
            (slope > 0)
            & (newton > low)
            & (newton < high)
            & (2 * gap.abs() <= (step_before * slope).abs())
        )
        following = torch.where(use_newton, newton, (low + high) / 2)
        step_before = following - x
        tolerance = 1e-6 * (1.0 + x.abs())
        done = (gap.abs() <= 1e-6) | (step_before.abs() <= tolerance) | (high - low <= tolerance)
        answer = torch.where(step_before.abs() <= tolerance, following, high)
        answer = torch.where(gap.abs() <= 1e-6, x, answer)
        shift[genes[done]] = answer[done]
        keep = ~done
        genes, x, low, high = genes[keep], following[keep], low[keep], high[keep]
        step_before = step_before[keep]
    shift[genes] = high
    return shift
