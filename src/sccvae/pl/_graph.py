"""The learned graph between latent nodes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._utils import NEGATIVE, POSITIVE, finish, new_ax

if TYPE_CHECKING:
    import networkx as nx
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)


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
    ax = new_ax(ax, (5.5, 5.0))
    ax.set_axis_off()
    if not edges:
        ax.text(0.5, 0.5, "no edges", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("latent graph" if title is None else title)
        return finish(ax, show, save, "latent_graph")
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
        edge_color=[POSITIVE if w > 0 else NEGATIVE for w in weights],
        arrows=True,
        arrowsize=10,
        node_size=node_size,
    )
    if with_labels:  # on a light box: readable over the node's outline and the edges
        box = {"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.8, "lw": 0}
        nx.draw_networkx_labels(sub, pos, ax=ax, font_size=fontsize, bbox=box)
    handles = [
        Line2D([0], [0], color=POSITIVE, label="positive"),
        Line2D([0], [0], color=NEGATIVE, label="negative"),
    ]
    ax.legend(handles=handles, frameon=False, fontsize=8, loc="best")
    ax.set_title(f"latent graph: top {len(edges)} edges" if title is None else title)
    return finish(ax, show, save, "latent_graph")


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
