"""Dose-response curves of a simulated knock-down."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._inputs import dense
from ._utils import finish, matrix, new_ax

if TYPE_CHECKING:
    import anndata as ad
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)


def dose_response(
    knockdown: ad.AnnData,
    genes: str | Sequence[str],
    perturbation_key: str | None = "perturbation",
    penetrance_key: str = "penetrance",
    relative: bool = False,
    errorbar: str | None = "sd",
    layer: str | None = None,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """Mean expression of chosen genes against the penetrance of a simulated knock-down.

    Parameters
    ----------
    knockdown
        Output of :meth:`sccvae.SCCVAE.simulate_knockdown` (cells or means), possibly several
        concatenated (one line per perturbation and gene).
    genes
        Gene(s) to draw, from ``var_names``.
    perturbation_key
        Column of ``obs`` with the perturbation (lines are split by it when present).
    penetrance_key
        Column of ``obs`` with the penetrance (the x axis).
    relative
        Draw the change from penetrance 0 (the model's unperturbed cells) instead of the
        expression itself.
    errorbar
        Band around the mean over cells: ``"sd"``, ``"sem"`` or ``None`` (none with
        one row per penetrance).
    layer
        Layer to read; ``X`` if ``None``.
    title, ax, show, save
        See :mod:`sccvae.pl`.

    Returns
    -------
    The axes.
    """
    genes = [genes] if isinstance(genes, str) else list(genes)
    missing = [g for g in genes if g not in knockdown.var_names]
    if missing:
        raise KeyError(f"Gene(s) not in knockdown.var_names: {missing}.")
    if not genes:
        raise ValueError("No genes given.")
    if penetrance_key not in knockdown.obs:
        raise KeyError(
            f"knockdown.obs has no {penetrance_key!r} column; pass the output of "
            "model.simulate_knockdown."
        )
    if errorbar not in (None, "sd", "sem"):
        raise ValueError(f"errorbar must be 'sd', 'sem' or None, got {errorbar!r}.")
    columns = knockdown.var_names.get_indexer(genes)
    values = dense(matrix(knockdown, layer)[:, columns])
    penetrance = knockdown.obs[penetrance_key].to_numpy(float)
    if perturbation_key is not None and perturbation_key in knockdown.obs:
        groups = knockdown.obs[perturbation_key].astype(str).to_numpy()
    else:
        groups = np.full(knockdown.n_obs, "", dtype=object)
    several = len(np.unique(groups)) > 1
    ax = new_ax(ax, (5.0, 4.0))
    for group in dict.fromkeys(groups):
        in_group = groups == group
        levels = np.unique(penetrance[in_group])
        for j, gene in enumerate(genes):
            stats = []
            for level in levels:
                v = values[in_group & (penetrance == level), j]
                spread = v.std(ddof=1) if len(v) > 1 else 0.0
                if errorbar == "sem" and len(v) > 1:
                    spread /= np.sqrt(len(v))
                stats.append((v.mean(), spread))
            mean, spread = np.array(stats).T
            if relative:
                reference = mean[np.argmin(levels)]
                mean = mean - reference
            label = f"{group}: {gene}" if several else gene
            (line,) = ax.plot(levels, mean, marker="o", markersize=3, label=label)
            if errorbar is not None and np.any(spread > 0):
                ax.fill_between(
                    levels,
                    mean - spread,
                    mean + spread,
                    color=line.get_color(),
                    alpha=0.2,
                    linewidth=0,
                )
    ax.set_xlabel("penetrance")
    ax.set_ylabel("change in expression" if relative else "expression")
    if title is None and not several and groups[0]:
        title = f"{groups[0]} knock-down"
    if title:
        ax.set_title(title)
    ax.legend(frameon=False, fontsize=8, loc="best")
    return finish(ax, show, save, "dose_response")
