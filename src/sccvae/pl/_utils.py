"""What every plot shares: colours, a new or given Axes, showing and saving, labels."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._inputs import dense

if TYPE_CHECKING:
    import anndata as ad
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)

POSITIVE, NEGATIVE = "#c0392b", "#2471a3"


# ---------------------------------------------------------------------------- helpers
def new_ax(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def finish(ax: Axes, show: bool | None, save: str | Path | bool | None, name: str) -> Axes:
    """Save and/or show the figure of ``ax``; return ``ax``."""
    import matplotlib
    import matplotlib.pyplot as plt

    figure = ax.get_figure()
    if save:
        if save is True:
            import scanpy as sc

            path = Path(sc.settings.figdir) / f"{name}.{sc.settings.file_format_figs}"
        else:
            path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, bbox_inches="tight", dpi=figure.dpi)
        logger.info("Saved figure to %s", path)
    if show is None:
        show = matplotlib.is_interactive() and "agg" not in matplotlib.get_backend().lower()
    if show:
        plt.show(block=False)
    return ax


def matrix(adata: ad.AnnData, layer: str | None):
    return adata.X if layer is None else adata.layers[layer]


def mean_of_rows(adata: ad.AnnData, rows: np.ndarray, layer: str | None) -> np.ndarray:
    if not np.any(rows):
        raise ValueError("No rows selected to average.")
    return np.asarray(dense(matrix(adata, layer)[np.flatnonzero(rows)]).mean(axis=0)).ravel()


def label_points(
    ax: Axes, x: np.ndarray, y: np.ndarray, labels: Sequence[str], fontsize: float
) -> None:
    for xi, yi, text in zip(x, y, labels, strict=True):
        ax.annotate(
            str(text),
            (xi, yi),
            xytext=(3, 3),
            textcoords="offset points",
            fontsize=fontsize,
        )
