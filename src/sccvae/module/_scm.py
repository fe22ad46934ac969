"""The latent linear structural causal model and the graphs it can use."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

if TYPE_CHECKING:
    import networkx as nx

logger = logging.getLogger(__name__)

GRAPH_CHOICES = ("full", "none", "random")


def build_graph_mask(
    graph: str | np.ndarray | pd.DataFrame | nx.DiGraph,
    n_latent: int | None,
    density: float = 0.03,
    seed: int = 0,
) -> tuple[np.ndarray, list[str]]:
    """Turn a graph choice into a strictly upper-triangular 0/1 mask over latent nodes.

    Parameters
    ----------
    graph
        ``"full"`` (every edge allowed between nodes in a fixed order), ``"none"`` (no edges:
        ``u = z + shift``), ``"random"`` (an Erdős–Rényi DAG of the given ``density``), or a
        DAG over the ``n_latent`` nodes as an adjacency matrix (``A[i, j] != 0`` means an edge
        ``i -> j``; numpy array or pandas DataFrame) or a :class:`networkx.DiGraph`.
    n_latent
        Number of latent nodes; ``None`` takes it from a user graph.
    density
        Edge probability among ordered node pairs for ``"random"``.
    seed
        Seed of the random graph.

    Returns
    -------
    mask
        ``n_latent x n_latent`` float32 array, strictly upper triangular: nodes are in
        topological order, which makes ``I - B * mask`` unit upper triangular.
    node_names
        The name of each latent node in that order (user-supplied graphs are reordered).
    """
    if isinstance(graph, str):
        if n_latent is None:
            raise ValueError(f"graph={graph!r} needs the number of latent nodes.")
        default_names = [f"node_{i}" for i in range(n_latent)]
        if graph == "full":
            return np.triu(np.ones((n_latent, n_latent), dtype=np.float32), k=1), default_names
        if graph == "none":
            return np.zeros((n_latent, n_latent), dtype=np.float32), default_names
        if graph == "random":
            if not 0.0 <= density <= 1.0:
                raise ValueError(f"`density` must be in [0, 1], got {density}.")
            rng = np.random.default_rng(seed)
            upper = np.triu(rng.random((n_latent, n_latent)) < density, k=1)
            return upper.astype(np.float32), default_names
        raise ValueError(
            f"Unknown graph {graph!r}: use one of {GRAPH_CHOICES} ('coexpression' with gene "
            "nodes), or pass a DAG over the "
            f"{n_latent} latent nodes (numpy array, pandas DataFrame or networkx.DiGraph)."
        )
    import networkx as nx  # only for user graphs: importing it costs every model otherwise

    digraph = _as_digraph(graph, n_latent)
    if not nx.is_directed_acyclic_graph(digraph):
        cycle = nx.find_cycle(digraph)
        raise ValueError(
            f"The latent graph must be acyclic, but it has a cycle: {cycle}. "
            "Remove an edge of the cycle or use graph='full'."
        )
    order = list(nx.lexicographical_topological_sort(digraph, key=str))
    position = {node: i for i, node in enumerate(order)}
    mask = np.zeros((len(order), len(order)), dtype=np.float32)
    for source, target in digraph.edges():
        mask[position[source], position[target]] = 1.0
    return mask, [str(node) for node in order]


def _as_digraph(graph: Any, n_latent: int | None) -> nx.DiGraph:
    import networkx as nx

    if isinstance(graph, nx.DiGraph):
        digraph = graph.copy()
        if n_latent is not None and digraph.number_of_nodes() != n_latent:
            raise ValueError(
                f"The latent graph has {digraph.number_of_nodes()} nodes but the model has "
                f"n_latent={n_latent}; give one node per latent variable or change n_latent."
            )
        return digraph
    if isinstance(graph, nx.Graph):
        raise TypeError("The latent graph must be directed: pass a networkx.DiGraph.")
    if isinstance(graph, pd.DataFrame):
        if list(graph.index) != list(graph.columns):
            raise ValueError(
                "A DataFrame latent graph needs the same node labels in index and columns."
            )
        names = [str(n) for n in graph.index]
        matrix = graph.to_numpy()
    elif isinstance(graph, np.ndarray):
        matrix = graph
        names = [f"node_{i}" for i in range(matrix.shape[0])] if matrix.ndim == 2 else []
    else:
        raise TypeError(
            f"Unsupported latent graph of type {type(graph).__name__}: use 'full', 'none', "
            "'random', a numpy array, a pandas DataFrame or a networkx.DiGraph."
        )
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"The latent graph adjacency must be square, got shape {matrix.shape}.")
    if n_latent is not None and matrix.shape[0] != n_latent:
        raise ValueError(
            f"The latent graph adjacency is {matrix.shape[0]} x {matrix.shape[1]} but the model "
            f"has n_latent={n_latent}; pass a {n_latent} x {n_latent} adjacency or change it."
        )
    matrix = np.asarray(matrix, dtype=np.float64)
    if not np.all(np.isfinite(matrix)):
        raise ValueError("The latent graph adjacency contains NaN or infinite entries.")
    if np.any(np.diag(matrix) != 0):
        raise ValueError("The latent graph has self-loops (non-zero diagonal): a DAG has none.")
    digraph = nx.DiGraph()
    digraph.add_nodes_from(names)
    sources, targets = np.nonzero(matrix)
    digraph.add_edges_from((names[s], names[t]) for s, t in zip(sources, targets, strict=True))
    return digraph


class LatentSCM(nn.Module):
    """Linear SCM over latent nodes with additive shift interventions.

    Computes ``u = (z + shift) (I - B * M)^-1`` for row vectors, with ``M`` a fixed
    strictly upper-triangular mask. ``I - B * M`` is unit upper triangular, so ``u`` comes
    from a triangular solve: exact, cheap, and differentiable, with no matrix inverse.

    Parameters
    ----------
    mask
        ``d x d`` strictly upper-triangular 0/1 array (see :func:`build_graph_mask`).
    init_std
        Standard deviation of the initial edge weights (the reference uses 0.1).
    seed
        Seed for the initial weights, so that models built with the same seed agree.
    """

    def __init__(self, mask: np.ndarray, init_std: float = 0.1, seed: int | None = None):
        super().__init__()
        mask_tensor = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
        if mask_tensor.ndim != 2 or mask_tensor.shape[0] != mask_tensor.shape[1]:
            raise ValueError(f"The SCM mask must be square, got shape {tuple(mask_tensor.shape)}.")
        if torch.any(torch.tril(mask_tensor) != 0):
            raise ValueError(
                "The SCM mask must be strictly upper triangular (nodes in topological order)."
            )
        self.n_nodes = mask_tensor.shape[0]
        self.register_buffer("mask", mask_tensor)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        weight = torch.randn(self.n_nodes, self.n_nodes, generator=generator) * init_std
        self.weight = nn.Parameter(weight * mask_tensor)
        self.has_edges = bool(mask_tensor.any())

    @property
    def adjacency(self) -> torch.Tensor:
        """Effective edge weights ``B * M`` (``[i, j]`` is the weight of edge ``i -> j``)."""
        return self.weight * self.mask

    def forward(self, z: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """Propagate exogenous noise ``z`` plus an optional ``shift`` through the graph."""
        source = z if shift is None else z + shift
        if not self.has_edges:
            return source
        return _Propagate.apply(source, self.weight.to(z.dtype), self.mask.to(z.dtype))

    def total_effect(self) -> torch.Tensor:
        """``(I - B * M)^-1``: row ``i`` is how a unit shift of node ``i`` moves every node."""
        identity = torch.eye(self.n_nodes, device=self.weight.device, dtype=self.weight.dtype)
        return self.forward(identity)


class _Propagate(torch.autograd.Function):
    """``u = source (I - W * M)^-1`` with a backward pass written for the unit triangle.

    Autograd through ``eye - W * M`` and ``solve_triangular`` builds and differentiates four
    ``d x d`` matrices per call (identity, product, difference, the triangle of the
    gradient): with gene nodes ``d`` is the number of measured targets (thousands on a
    genome-scale screen), where those passes cost more than the solve itself. The solver
    reads only the strict upper triangle (``unitriangular``), so ``-W * M`` is the whole
    system, and with ``H = grad_u (I - B)^-T`` the gradients are ``grad_source = H`` and
    ``grad_W = (u^T H) * M``: the same numbers, one ``d x d`` pass each way.
    """

    @staticmethod
    def forward(ctx, source: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor):
        system = -(weight * mask)  # the diagonal is taken as one, the lower triangle ignored
        u = torch.linalg.solve_triangular(
            system, source, upper=True, left=False, unitriangular=True
        )
        ctx.save_for_backward(system, u, mask)
        return u

    @staticmethod
    def backward(ctx, grad_u: torch.Tensor):
        system, u, mask = ctx.saved_tensors
        grad_source = torch.linalg.solve_triangular(
            system.mT, grad_u, upper=False, left=False, unitriangular=True
        )
        grad_weight = None
        if ctx.needs_input_grad[1]:
            flat_u = u.reshape(-1, u.shape[-1])
            flat_h = grad_source.reshape(-1, u.shape[-1])
            grad_weight = (flat_u.T @ flat_h) * mask
        return grad_source, grad_weight, None
