"""How predicted decreases saturate at the decrease bound, and the slope of that response.

A gene's expression cannot fall below what the perturbation screens showed it can lose: a
predicted decrease ``x < 0`` becomes ``B tanh(x / B)`` (gene-wise bound ``B``), so two
repressors of one gene add to less than their sum. Increases pass unchanged.
:meth:`~sccvae.module._module.SCCVAEModule.saturate` applies it to predicted cells; the
calibration's gap solver (:mod:`sccvae.model._gap`) needs the response and its slope at once.
"""

from __future__ import annotations

import torch


def saturate(change: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """``bound * tanh(change / bound)`` where the change is negative (gene-wise bounds).

    Increases, and every change where the bound is infinite, pass unchanged.
    """
    if not torch.isfinite(bound).any():
        return change
    saturating = torch.isfinite(bound) & (change < 0)
    return torch.where(saturating, bound * torch.tanh(change / bound), change)


def saturation_slope(drive: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """Return the derivative of :func:`saturate` at ``drive``."""
    return saturated_with_slope(drive, bound)[1]


def saturated_with_slope(
    drive: torch.Tensor, bound: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`saturate` at ``drive`` and its derivative, from one ``tanh``.

    ``bound`` is finite for every gene or for none (no bound: the identity, slope one).
    """
    if not torch.isfinite(bound).any():
        return drive, torch.ones_like(drive)
    falling = drive < 0
    squashed = torch.tanh(drive / bound)
    saturated = torch.where(falling, bound * squashed, drive)
    return saturated, torch.where(falling, 1.0 - squashed**2, torch.ones_like(drive))
