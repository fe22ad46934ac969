"""Functional modules of perturbations: a UMAP coloured by module."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._utils import finish, label_points, new_ax

if TYPE_CHECKING:
    import anndata as ad
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)


def perturbation_modules(
    modules: ad.AnnData,
    color: str = "module",
    basis: str = "X_umap",
    n_labels: int | None = 20,
    label_order: str | None = "magnitude",
    size: float = 40.0,
    palette: str | Sequence[str] | None = None,
    fontsize: float = 7.0,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """Perturbations in a 2-d embedding, coloured by module and labelled by name.

    Parameters
    ----------
    modules
        Output of :func:`sccvae.SCCVAE.perturbation_modules` or
        ``pseudobulk_modules`` (one row per perturbation).
    color
        Column of ``obs`` to colour by: categorical (legend) or numeric (colour bar).
    basis
        Key of ``obsm`` with the 2-d coordinates.
    n_labels
        Name at most this many perturbations (``None``: all, ``0``: none), the ones with the
        largest ``obs[label_order]`` (or farthest from the centre when that column is absent).
    label_order
        Numeric ``obs`` column ranking which perturbations to name.
    size
        Marker size.
    palette
        Matplotlib colormap name or a list of colours for the categories.
    fontsize
        Size of the perturbation names.
    title
        Axes title (default: ``color``).
    ax, show, save
        See :mod:`sccvae.pl`.

    Returns
    -------
    The axes. Perturbations with ``obs["seen"] == False`` are drawn with a black edge.
    """
    import matplotlib.pyplot as plt

    if basis not in modules.obsm:
        raise KeyError(
            f"modules.obsm has no {basis!r} (have {list(modules.obsm)}); run the clustering first."
        )
    coords = np.asarray(modules.obsm[basis])[:, :2]
    if color not in modules.obs:
        raise KeyError(f"modules.obs has no column {color!r} (have {list(modules.obs.columns)}).")
    ax = new_ax(ax, (5.5, 4.5))
    values = modules.obs[color]
    seen = (
        modules.obs["seen"].to_numpy(bool)
        if "seen" in modules.obs
        else np.ones(modules.n_obs, bool)
    )
    edges = np.where(seen, "none", "black")
    if (
        isinstance(values.dtype, pd.CategoricalDtype)
        or values.dtype == object
        or values.dtype == bool
    ):
        categories = pd.Categorical(values.astype(str) if values.dtype != "category" else values)
        cats = list(categories.categories)
        if palette is None or isinstance(palette, str):
            cmap = plt.get_cmap(palette or ("tab10" if len(cats) <= 10 else "tab20"))
            colours = [cmap(i % cmap.N) for i in range(len(cats))]
        else:
            colours = list(palette)
            if len(colours) < len(cats):
                raise ValueError(f"palette has {len(colours)} colours for {len(cats)} categories.")
        for i, cat in enumerate(cats):
            rows = np.asarray(categories == cat)
            ax.scatter(
                coords[rows, 0],
                coords[rows, 1],
                s=size,
                color=colours[i],
                label=str(cat),
                edgecolors=edges[rows],
                linewidths=0.8,
            )
        ax.legend(
            title=color, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8
        )
    else:
        points = ax.scatter(
            coords[:, 0],
            coords[:, 1],
            s=size,
            c=values.to_numpy(float),
            cmap=palette or "viridis",
            edgecolors=edges,
            linewidths=0.8,
        )
        ax.get_figure().colorbar(points, ax=ax, label=color)
    n = modules.n_obs if n_labels is None else min(int(n_labels), modules.n_obs)
    if n > 0:
        if label_order is not None and label_order in modules.obs:
            score = np.abs(modules.obs[label_order].to_numpy(float))
        else:
            score = np.linalg.norm(coords - coords.mean(0), axis=1)
        top = np.argsort(-score, kind="stable")[:n]
        label_points(ax, coords[top, 0], coords[top, 1], modules.obs_names[top].tolist(), fontsize)
    name = basis.removeprefix("X_").upper()
    ax.set_xlabel(f"{name} 1")
    ax.set_ylabel(f"{name} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(color if title is None else title)
    return finish(ax, show, save, "perturbation_modules")
