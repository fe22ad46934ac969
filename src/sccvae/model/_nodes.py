"""Which genes the latent nodes stand for, in which order, and on which scale."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .._inputs import dense, log_normalize
from ..module._scm import build_graph_mask

logger = logging.getLogger(__name__)

NODE_ORDERS = ("targets_first", "variance", "random")

#: Smallest standard deviation used to standardise a gene (log-normalised units), so that
#: genes that barely vary among control cells are not blown up.
MIN_SCALE = 0.1

#: With ``graph="coexpression"`` each gene node's parents are the nodes before it in the
#: node order whose control-cell correlation with it is largest in absolute value: at most
#: this many.
COEXPRESSION_PARENTS = 5


def control_moments(control_expression) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every gene across control cells (float64)."""
    n = control_expression.shape[0]
    if sp.issparse(control_expression):
        mean = np.asarray(control_expression.sum(axis=0, dtype=np.float64)).ravel() / n
        squares = control_expression.multiply(control_expression).sum(axis=0, dtype=np.float64)
        squares = np.asarray(squares).ravel() / n
    else:
        dense = np.asarray(control_expression, dtype=np.float64)
        mean, squares = dense.mean(axis=0), (dense**2).mean(axis=0)
    variance = np.maximum(squares - mean**2, 0.0) * n / max(n - 1, 1)
    return mean, np.sqrt(variance)


def select_node_genes(
    genes: Sequence[str],
    variance: np.ndarray,
    targets: Sequence[str],
    n_latent: int,
    order: str = "targets_first",
    seed: int = 0,
) -> list[str]:
    """Choose the genes the latent nodes stand for, in the SCM's topological order.

    Every ``target`` (measured perturbation targets and genes a user wants as nodes) is a
    node; the most variable other genes (control variance) fill the remaining places up to
    ``n_latent``. There are more nodes than ``n_latent`` when the targets alone need more.

    Parameters
    ----------
    genes
        The measured genes.
    variance
        Each gene's variance across control cells.
    targets
        Genes that must be nodes (all measured).
    n_latent
        Number of nodes wanted.
    order
        ``"targets_first"``: targets, then the other genes, each by decreasing variance
        (perturbation targets are regulators: placed first, their shifts can reach every
        other node); ``"variance"``: all by decreasing variance; ``"random"``: a seeded
        permutation.
    seed
        Seed of ``order="random"``.
    """
    if order not in NODE_ORDERS:
        raise ValueError(f"node_order must be one of {NODE_ORDERS}, got {order!r}.")
    position = {g: i for i, g in enumerate(genes)}
    by_variance = [genes[i] for i in np.argsort(-np.asarray(variance), kind="stable")]
    required = [g for g in by_variance if g in set(targets)]
    others = [g for g in by_variance if g not in set(targets)]
    n_nodes = max(int(n_latent), len(required))
    if len(required) > n_latent:
        logger.info(
            "%d genes must be latent nodes (targets), more than n_latent=%d: using %d nodes.",
            len(required),
            n_latent,
            n_nodes,
        )
    chosen = required + others[: n_nodes - len(required)]
    if order == "variance":
        chosen = [g for g in by_variance if g in set(chosen)]
    elif order == "random":
        chosen = [chosen[i] for i in np.random.default_rng(seed).permutation(len(chosen))]
    missing = [g for g in chosen if g not in position]
    assert not missing, missing
    return chosen


@dataclass(frozen=True)
class LatentNodes:
    """The latent nodes of a model and where its training targets sit on them.

    Attributes
    ----------
    mask
        The graph mask over the nodes (strictly upper triangular, nodes in topological order).
    names
        The nodes' names in that order.
    columns
        With gene nodes, the gene column each node stands for; ``None`` with abstract nodes.
    center, scale
        With gene nodes, every gene's control mean and standard deviation (at least
        :data:`MIN_SCALE`); ``None`` with abstract nodes.
    target_nodes
        The node of each training target, -1 for a target without one.
    """

    mask: np.ndarray
    names: list[str]
    columns: np.ndarray | None
    center: np.ndarray | None
    scale: np.ndarray | None
    target_nodes: np.ndarray


def choose_latent_nodes(
    kind, genes, targets, node_genes, n_latent, node_order, graph, seed, control
) -> LatentNodes:
    """Choose the latent nodes: gene nodes (``kind="genes"``) or abstract ones."""
    if kind == "genes":
        mask, names, columns, center, scale = gene_nodes(
            genes, targets, node_genes, n_latent, node_order, graph, seed, control
        )
        node_of = {genes[c]: i for i, c in enumerate(columns)}
        target_nodes = np.array([node_of.get(t, -1) for t in targets])
        return LatentNodes(mask, names, columns, center, scale, target_nodes)
    if node_genes is not None:
        raise ValueError("node_genes needs latent_nodes='genes'.")
    if isinstance(graph, str) and graph == "coexpression":
        raise ValueError(
            "graph='coexpression' estimates edges between gene nodes from control cells: it "
            "needs latent_nodes='genes'."
        )
    mask, names = build_graph_mask(graph, n_latent, seed=seed)
    return LatentNodes(mask, names, None, None, None, np.full(len(targets), -1))


def gene_nodes(genes, targets, node_genes, n_latent, node_order, graph, seed, control):
    """Everything the module needs about gene nodes.

    Returns
    -------
    The graph mask, the node genes' names (in topological order), their columns, and the
    centre and scale (control mean and standard deviation, at least :data:`MIN_SCALE`) of
    every gene.
    """
    column = {g: i for i, g in enumerate(genes)}
    wanted = [str(g) for g in (node_genes or [])]
    unmeasured = [g for g in wanted if g not in column]
    if unmeasured:
        raise ValueError(
            f"node_genes must be measured genes (var_names); not measured: {unmeasured[:20]}."
        )
    mean, sd = control_moments(control)
    center, scale = mean, np.maximum(sd, MIN_SCALE)
    required = [t for t in targets if t in column] + wanted
    if isinstance(graph, str):
        names = select_node_genes(genes, sd**2, required, n_latent, node_order, seed)
        if graph == "coexpression":
            mask = coexpression_mask(control, [column[g] for g in names])
        else:
            mask, _ = build_graph_mask(graph, len(names), seed=seed)
    else:
        mask, names = build_graph_mask(graph, None, seed=seed)
        absent = [g for g in required if g not in set(names)]
        if absent or any(g not in column for g in names):
            raise ValueError(
                "With gene nodes a user graph is a DAG over measured genes that includes every "
                f"measured perturbation target and node_genes; missing: {absent[:20]}, not "
                f"measured: {[g for g in names if g not in column][:20]}."
            )
    return mask, list(names), np.array([column[g] for g in names]), center, scale


def observed_own_changes(
    expression,
    codes,
    parsed,
    targets,
    target_nodes,
    genes,
    center,
    scale,
    counts: bool,
    default: float = 3.0,
) -> np.ndarray:
    """Return every target's initial shift: a node gene's own observed change, standardised.

    The mean of its gene over the cells of its single perturbation, minus the control mean,
    over the scale; ``default`` for targets that are not node genes or have no single
    perturbation. ``counts``: ``expression`` holds counts (log-normalised here first).
    """
    initial = np.full(len(targets), default, dtype=np.float32)
    column = {g: i for i, g in enumerate(genes)}
    for i, t in enumerate(targets):
        singles = [row for row, label_targets in enumerate(parsed) if label_targets == (t,)]
        cells = np.flatnonzero(np.isin(codes, singles))
        if target_nodes[i] < 0 or cells.size == 0:
            continue
        values = dense(expression[cells][:, [column[t]]]).ravel()
        if counts:
            libraries = np.asarray(expression[cells].sum(axis=1)).ravel()
            values = log_normalize(values[:, None], totals=libraries).ravel()
        initial[i] = (values.mean() - center[column[t]]) / scale[column[t]]
    return initial


def coexpression_mask(control, columns: Sequence[int], n_parents: int = COEXPRESSION_PARENTS):
    """Estimate a DAG over gene nodes from control cells: each node's most correlated parents.

    The nodes keep their order (``columns``, the node genes' columns of ``control``); node
    ``j`` may have an edge from each of the ``n_parents`` nodes before it with the largest
    absolute correlation with it across control cells (none from genes that never vary).
    Sparse, and only where the control cells say two nodes move together: what the network
    can learn is restricted to the observed coexpression (which also holds confounding, so it
    is not a causal graph).
    """
    x = dense(control[:, list(columns)]).astype(np.float64)
    x = x - x.mean(axis=0)
    norms = np.sqrt((x**2).sum(axis=0))
    varies = norms > 0
    correlation = (x.T @ x) / np.outer(np.where(varies, norms, 1.0), np.where(varies, norms, 1.0))
    strength = np.abs(np.triu(correlation, k=1)) * np.outer(varies, varies)
    mask = np.zeros_like(strength, dtype=np.float32)
    for j in range(1, strength.shape[0]):
        candidates = strength[:j, j]
        keep = np.argsort(-candidates, kind="stable")[:n_parents]
        keep = keep[candidates[keep] > 0]
        mask[keep, j] = 1.0
    return mask
