"""Plots for SCCVAE results, in the style of :mod:`scanpy.pl`.

Every function draws into ``ax`` (a new figure if ``None``) and returns the matplotlib
:class:`~matplotlib.axes.Axes`. ``show=None`` shows the figure only in an interactive
matplotlib session (never in scripts or tests); ``save`` writes the figure to a path, or to
``scanpy.settings.figdir`` when ``True``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._inputs import dense

if TYPE_CHECKING:
    import anndata as ad
    import networkx as nx
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)

__all__ = ["perturbation_modules", "dose_response", "predicted_vs_observed", "latent_graph"]


def __dir__() -> list[str]:
    """Return the plotting functions only (not ``np``, ``Path``, ... imported here)."""
    return sorted(__all__)


_POSITIVE, _NEGATIVE = "#c0392b", "#2471a3"


# ---------------------------------------------------------------------------- helpers
def _new_ax(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _finish(ax: Axes, show: bool | None, save: str | Path | bool | None, name: str) -> Axes:
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


def _matrix(adata: ad.AnnData, layer: str | None):
    return adata.X if layer is None else adata.layers[layer]


def _mean_of_rows(adata: ad.AnnData, rows: np.ndarray, layer: str | None) -> np.ndarray:
    if not np.any(rows):
        raise ValueError("No rows selected to average.")
    return np.asarray(dense(_matrix(adata, layer)[np.flatnonzero(rows)]).mean(axis=0)).ravel()


def _label_points(
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


# ---------------------------------------------------------------------------- plots
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
    ax = _new_ax(ax, (5.5, 4.5))
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
        _label_points(
            ax, coords[top, 0], coords[top, 1], modules.obs_names[top].tolist(), fontsize
        )
    name = basis.removeprefix("X_").upper()
    ax.set_xlabel(f"{name} 1")
    ax.set_ylabel(f"{name} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(color if title is None else title)
    return _finish(ax, show, save, "perturbation_modules")


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
    values = dense(_matrix(knockdown, layer)[:, columns])
    penetrance = knockdown.obs[penetrance_key].to_numpy(float)
    if perturbation_key is not None and perturbation_key in knockdown.obs:
        groups = knockdown.obs[perturbation_key].astype(str).to_numpy()
    else:
        groups = np.full(knockdown.n_obs, "", dtype=object)
    several = len(np.unique(groups)) > 1
    ax = _new_ax(ax, (5.0, 4.0))
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
    return _finish(ax, show, save, "dose_response")


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
        control_mean = _mean_of_rows(observed, observed_labels == control_label, layer)
        control_mean = pd.Series(control_mean, index=observed.var_names)
    else:
        control_mean = pd.Series(
            _mean_of_rows(control, np.ones(control.n_obs, bool), layer), index=control.var_names
        )
    pred = pd.Series(_mean_of_rows(predicted, rows, layer), index=predicted.var_names)
    obs_mean = pd.Series(
        _mean_of_rows(observed, observed_labels == perturbation, layer), index=observed.var_names
    )
    x = (obs_mean[genes] - control_mean[genes]).to_numpy()
    y = (pred[genes] - control_mean[genes]).to_numpy()
    r = float(np.corrcoef(x, y)[0, 1]) if np.std(x) > 0 and np.std(y) > 0 else float("nan")

    ax = _new_ax(ax, (4.5, 4.5))
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
        ax.scatter(x[top], y[top], s=12, color=_POSITIVE, linewidths=0)
        _label_points(ax, x[top], y[top], genes[top].tolist(), fontsize)
    ax.set_xlabel("observed change from control")
    ax.set_ylabel("predicted change from control")
    ax.set_title(f"{perturbation}: Pearson r = {r:.3f}" if title is None else title)
    return _finish(ax, show, save, "predicted_vs_observed")


def latent_graph(
    graph: nx.DiGraph,
    top_n: int = 30,
    layout: str = "spring",
    seed: int = 0,
    node_size: float = 250.0,
    max_width: float = 4.0,
    with_labels: bool = True,
    fontsize: float = 7.0,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    **layout_kwargs: Any,
) -> Axes:
    """Draw the strongest edges of the learned latent graph.

    Parameters
    ----------
    graph
        Weighted graph, e.g. :meth:`sccvae.SCCVAE.get_graph` (edges without a ``weight``
        count as weight 1).
    top_n
        Draw the ``top_n`` edges of largest ``|weight|`` and the nodes they touch.
    layout
        ``"spring"``, ``"circular"``, ``"kamada_kawai"`` or ``"shell"``.
    seed
        Seed of the spring layout.
    node_size, max_width
        Node size and width of the strongest edge (width is proportional to ``|weight|``).
    with_labels
        Write node names.
    fontsize, title, ax, show, save
        See :mod:`sccvae.pl`.
    **layout_kwargs
        Passed to the networkx layout function.

    Returns
    -------
    The axes. Positive edges are red, negative blue.
    """
    import networkx as nx
    from matplotlib.lines import Line2D

    layouts = {
        "spring": nx.spring_layout,
        "circular": nx.circular_layout,
        "kamada_kawai": nx.kamada_kawai_layout,
        "shell": nx.shell_layout,
    }
    if layout not in layouts:
        raise ValueError(f"layout must be one of {sorted(layouts)}, got {layout!r}.")
    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n!r}.")
    edges = sorted(
        ((u, v, float(d.get("weight", 1.0))) for u, v, d in graph.edges(data=True)),
        key=lambda e: -abs(e[2]),
    )[:top_n]
    ax = _new_ax(ax, (5.5, 5.0))
    ax.set_axis_off()
    if not edges:
        ax.text(0.5, 0.5, "no edges", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("latent graph" if title is None else title)
        return _finish(ax, show, save, "latent_graph")
    sub = nx.DiGraph()
    sub.add_weighted_edges_from(edges)
    if layout == "spring":
        layout_kwargs.setdefault("seed", seed)
    pos = layouts[layout](sub, **layout_kwargs)
    if with_labels:  # move nodes apart until their labels no longer overlap
        pos = _separate_labels(ax, pos, fontsize, node_size)
    weights = np.array([w for _, _, w in edges])
    strongest = np.abs(weights).max() or 1.0
    nx.draw_networkx_nodes(
        sub, pos, ax=ax, node_size=node_size, node_color="#f0f0f0", edgecolors="0.3"
    )
    nx.draw_networkx_edges(
        sub,
        pos,
        ax=ax,
        edgelist=[(u, v) for u, v, _ in edges],
        width=list(0.3 + max_width * np.abs(weights) / strongest),
        edge_color=[_POSITIVE if w > 0 else _NEGATIVE for w in weights],
        arrows=True,
        arrowsize=10,
        node_size=node_size,
    )
    if with_labels:  # on a light box: readable over the node's outline and the edges
        box = {"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.8, "lw": 0}
        nx.draw_networkx_labels(sub, pos, ax=ax, font_size=fontsize, bbox=box)
    handles = [
        Line2D([0], [0], color=_POSITIVE, label="positive"),
        Line2D([0], [0], color=_NEGATIVE, label="negative"),
    ]
    ax.legend(handles=handles, frameon=False, fontsize=8, loc="best")
    ax.set_title(f"latent graph: top {len(edges)} edges" if title is None else title)
    return _finish(ax, show, save, "latent_graph")


def _separate_labels(
    ax: Axes, pos: dict, fontsize: float, node_size: float, iterations: int = 300
) -> dict:
    """Return node positions moved apart so that their labels (and nodes) do not overlap.

    A spring layout puts nodes about as close as the edges say, whatever the length of
    their names: labels of 30 edges overlapped in 12 to 29 pairs (of ~40 labels). Each node
    is taken as the box of its label (or of its marker, if wider), sized in points on the
    axes; overlapping boxes are pushed apart along their shorter overlap, a little each
    step, until none overlap. The axes limits then fit the boxes.
    """
    names = list(pos)
    xy = np.array([pos[n] for n in names], dtype=float)
    xy -= xy.mean(axis=0)
    xy /= max(float(np.abs(xy).max()), 1e-9)  # within [-1, 1]
    bbox = ax.get_window_extent()
    points_per_unit = min(bbox.width, bbox.height) * 72.0 / ax.get_figure().dpi / 2.4
    marker = np.sqrt(node_size)  # points: node_size is the marker's area in points^2
    width = np.array([max(0.62 * fontsize * len(str(n)) + 8, marker) for n in names])
    height = np.full(len(names), max(1.5 * fontsize, marker))
    half = np.stack([width, height], axis=1) / points_per_unit / 2
    for _ in range(iterations):
        gap = np.abs(xy[:, None, :] - xy[None, :, :]) - (half[:, None, :] + half[None, :, :])
        overlap = (gap < 0).all(axis=2)
        np.fill_diagonal(overlap, False)
        if not overlap.any():
            break
        # push each overlapping pair apart along the axis where they overlap least
        depth = -gap
        axis = np.argmin(depth, axis=2)
        direction = np.sign(xy[:, None, :] - xy[None, :, :])
        direction[direction == 0] = 1.0
        push = np.zeros_like(xy)
        for k in (0, 1):
            amount = np.where(overlap & (axis == k), depth[:, :, k], 0.0)
            push[:, k] = 0.5 * (amount * direction[:, :, k]).sum(axis=1)
        xy += 0.5 * push
    low, high = (xy - half).min(axis=0), (xy + half).max(axis=0)
    margin = 0.05 * (high - low)
    ax.set_xlim(low[0] - margin[0], high[0] + margin[0])
    ax.set_ylim(low[1] - margin[1], high[1] + margin[1])
    ax.set_autoscale_on(False)
    return {n: xy[i] for i, n in enumerate(names)}
