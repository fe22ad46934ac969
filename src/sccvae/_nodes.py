"""Which genes the latent nodes stand for, in which order, and on which scale."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

NODE_ORDERS = ("targets_first", "variance", "random")

#: Smallest standard deviation used to standardise a gene (log-normalised units), so that
#: genes that barely vary among control cells are not blown up.
MIN_SCALE = 1e-2


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
    """The genes the latent nodes stand for, in the SCM's topological order.

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
            len(required), n_latent, n_nodes,
        )  # fmt: skip
    chosen = required + others[: n_nodes - len(required)]
    if order == "variance":
        chosen = [g for g in by_variance if g in set(chosen)]
    elif order == "random":
        chosen = [chosen[i] for i in np.random.default_rng(seed).permutation(len(chosen))]
    missing = [g for g in chosen if g not in position]
    assert not missing, missing
    return chosen
