"""Predicted against observed mean changes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._utils import POSITIVE, finish, label_points, mean_of_rows, new_ax

if TYPE_CHECKING:
    import anndata as ad
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)


def predicted_vs_observed(
    predicted: ad.AnnData,
    observed: ad.AnnData,
    control: ad.AnnData | None = None,
    perturbation: str | None = None,
    perturbation_key: str = "perturbation",
    control_label: str = "control",
    n_highlight: int = 10,
    layer: str | None = None,
    fontsize: float = 7.0,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """Predicted against observed change from control of every gene, for one perturbation.

    Parameters
    ----------
    predicted
        Predicted cells or means (e.g. :meth:`sccvae.SCCVAE.predict`); rows of
        ``perturbation`` are averaged (all rows if it lacks ``perturbation_key``).
    observed
        Observed cells; rows of ``perturbation`` are averaged.
    control
        Control cells; the ``control_label`` rows of ``observed`` if ``None``.
    perturbation
        Label to compare; may be omitted when ``predicted`` holds a single perturbation.
    perturbation_key, control_label
        Column of ``obs`` with labels and the control label.
    n_highlight
        Name the genes with the largest observed change.
    layer
        Layer to read in all three AnnData; ``X`` if ``None``.
    fontsize, title, ax, show, save
        See :mod:`sccvae.pl`.

    Returns
    -------
    The axes; the title holds the Pearson correlation of the changes.
    """
    if perturbation is None:
        if perturbation_key not in predicted.obs:
            raise ValueError("Pass `perturbation`: predicted.obs has no perturbation column.")
        labels = predicted.obs[perturbation_key].astype(str).unique()
        if len(labels) != 1:
            raise ValueError(
                f"predicted holds {len(labels)} perturbations; choose one with `perturbation`."
            )
        perturbation = str(labels[0])
    genes = predicted.var_names.intersection(observed.var_names, sort=False)
    if control is not None:
        genes = genes.intersection(control.var_names, sort=False)
    if len(genes) < 2:
        raise ValueError("predicted and observed share fewer than 2 genes.")
    if perturbation_key in predicted.obs:
        rows = predicted.obs[perturbation_key].astype(str).to_numpy() == perturbation
        if not rows.any():
            raise ValueError(f"predicted has no rows of perturbation {perturbation!r}.")
    else:
        rows = np.ones(predicted.n_obs, bool)
    if perturbation_key not in observed.obs:
        raise KeyError(f"observed.obs has no column {perturbation_key!r}.")
    observed_labels = observed.obs[perturbation_key].astype(str).to_numpy()
    if not np.any(observed_labels == perturbation):
        raise ValueError(f"observed has no cells of perturbation {perturbation!r}.")
    if control is None:
        if not np.any(observed_labels == control_label):
            raise ValueError(f"observed has no {control_label!r} cells; pass `control`.")
        control_mean = mean_of_rows(observed, observed_labels == control_label, layer)
        control_mean = pd.Series(control_mean, index=observed.var_names)
    else:
        control_mean = pd.Series(
            mean_of_rows(control, np.ones(control.n_obs, bool), layer), index=control.var_names
        )
    pred = pd.Series(mean_of_rows(predicted, rows, layer), index=predicted.var_names)
    obs_mean = pd.Series(
        mean_of_rows(observed, observed_labels == perturbation, layer), index=observed.var_names
    )
    x = (obs_mean[genes] - control_mean[genes]).to_numpy()
    y = (pred[genes] - control_mean[genes]).to_numpy()
    r = float(np.corrcoef(x, y)[0, 1]) if np.std(x) > 0 and np.std(y) > 0 else float("nan")

    ax = new_ax(ax, (4.5, 4.5))
    ax.scatter(x, y, s=6, color="0.4", alpha=0.6, linewidths=0)
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot(
        [lo - pad, hi + pad],
        [lo - pad, hi + pad],
        color="0.7",
        linewidth=0.8,
        linestyle="--",
        zorder=0,
    )
    ax.axhline(0, color="0.85", linewidth=0.6, zorder=0)
    ax.axvline(0, color="0.85", linewidth=0.6, zorder=0)
    if n_highlight:
        top = np.argsort(-np.abs(x), kind="stable")[: int(n_highlight)]
        ax.scatter(x[top], y[top], s=12, color=POSITIVE, linewidths=0)
        label_points(ax, x[top], y[top], genes[top].tolist(), fontsize)
    ax.set_xlabel("observed change from control")
    ax.set_ylabel("predicted change from control")
    ax.set_title(f"{perturbation}: Pearson r = {r:.3f}" if title is None else title)
    return finish(ax, show, save, "predicted_vs_observed")
