"""The simulator's ground truth: a sparse gene regulatory DAG and how shifts propagate."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve_triangular


def build_network(
    rng: np.random.Generator,
    n_genes: int,
    targets: np.ndarray,
    target_module: np.ndarray,
    order: np.ndarray,
    n_modules: int,
    module_size: int,
    module_edge_prob: float,
    density: float,
    weight_range: tuple[float, float],
    activation_fraction: float,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Weighted DAG adjacency (row = regulator, column = regulated gene) and module of genes."""
    position = np.empty(n_genes, dtype=np.int64)
    position[order] = np.arange(n_genes)
    lo, hi = weight_range
    rows, cols, vals = [], [], []
    gene_module = np.full(n_genes, -1, dtype=np.int64)

    # module programmes: every target of module m regulates part of the module's gene set,
    # with a sign per (module, gene) shared by the module's targets (so targets of one module
    # have correlated footprints), occasionally flipped.
    last_target_pos = position[targets].max()
    pool = order[last_target_pos + 1 :]
    pool = pool[~np.isin(pool, targets)]
    pool = rng.permutation(pool)
    need = n_modules * module_size
    for m in range(n_modules):
        if need <= len(pool):
            genes = pool[m * module_size : (m + 1) * module_size]
        else:  # not enough genes for disjoint modules: overlapping draws
            genes = rng.choice(pool, min(module_size, len(pool)), replace=False)
        gene_module[genes[gene_module[genes] < 0]] = m
        sign = np.where(rng.random(len(genes)) < activation_fraction, 1.0, -1.0)
        for t in targets[target_module == m]:
            hit = rng.random(len(genes)) < module_edge_prob
            if not hit.any():
                hit[rng.integers(len(genes))] = True
            flip = np.where(rng.random(hit.sum()) < 0.1, -1.0, 1.0)
            rows.append(np.full(hit.sum(), t))
            cols.append(genes[hit])
            vals.append(sign[hit] * flip * rng.uniform(lo, hi, hit.sum()))

    # sparse random background DAG: each pair (earlier -> later in the topological order) is an
    # edge with probability `density`
    n_pairs = n_genes * (n_genes - 1) // 2
    n_edges = int(rng.binomial(n_pairs, density)) if density > 0 else 0
    if n_edges:
        a = rng.integers(0, n_genes, size=int(n_edges * 1.1) + 10)
        b = rng.integers(0, n_genes, size=len(a))
        keep = a != b
        a, b = a[keep], b[keep]
        first, second = np.minimum(a, b), np.maximum(a, b)  # topological positions
        pairs = np.unique(first * n_genes + second)
        pairs = rng.permutation(pairs)[:n_edges]
        src, dst = order[pairs // n_genes], order[pairs % n_genes]
        sign = np.where(rng.random(len(src)) < activation_fraction, 1.0, -1.0)
        rows.append(src)
        cols.append(dst)
        vals.append(sign * rng.uniform(lo, hi, len(src)))

    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    vals = np.concatenate(vals) if vals else np.zeros(0)
    w = sp.coo_matrix((vals, (rows, cols)), shape=(n_genes, n_genes)).tocsr()
    w.sum_duplicates()  # a module edge that is also a background edge: weights add
    # keep incoming weight bounded so that no gene is driven by an implausibly large total input
    incoming = np.asarray(abs(w).sum(axis=0)).ravel()
    factor = np.where(incoming > 2.0, 2.0 / np.maximum(incoming, 1e-12), 1.0)
    w = (w @ sp.diags(factor)).tocsr()
    w.eliminate_zeros()
    assert np.all(position[w.nonzero()[0]] < position[w.nonzero()[1]]), "adjacency is not a DAG"
    return w.astype(np.float64), gene_module


def total_effects(w: sp.csr_matrix, order: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """``shifts @ (I - W)^-1`` (row vectors) by one sparse triangular solve; shifts: p x G."""
    n = w.shape[0]
    if shifts.shape[0] == 0:
        return np.zeros((0, n))
    w_topo = w[order][:, order]  # strictly upper triangular
    # delta (I - W) = s  <=>  (I - W)^T delta^T = s^T, lower triangular in topological order
    lower = (sp.identity(n, format="csr") - w_topo.T).tocsr()
    rhs = shifts[:, order].T.astype(np.float64)
    solved = spsolve_triangular(lower, rhs, lower=True, unit_diagonal=True)
    out = np.empty_like(shifts, dtype=np.float64)
    out[:, order] = np.asarray(solved).T
    return out


def saturate(values: np.ndarray, saturation: float | None) -> np.ndarray:
    if saturation is None:
        return values
    return saturation * np.tanh(values / saturation)


def _cap_incoming(w: sp.csr_matrix, keep: np.ndarray, cap: float = 2.0) -> sp.csr_matrix:
    """Scale every gene's incoming weights to a total ``|weight|`` of at most ``cap``."""
    incoming = np.asarray(abs(w).sum(axis=0)).ravel()
    factor = np.where(incoming > cap, cap / np.maximum(incoming, 1e-12), 1.0)
    factor[np.asarray(keep, dtype=np.int64)] = 1.0
    w = (w @ sp.diags(factor)).tocsr()
    w.eliminate_zeros()
    return w


def add_cascade(
    rng: np.random.Generator,
    w: sp.csr_matrix,
    order: np.ndarray,
    targets: np.ndarray,
    target_module: np.ndarray,
    gene_module: np.ndarray,
    depth: int,
    weight_range: tuple[float, float],
    direct_fraction: float = 0.3,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Route each module's programme through a chain of ``depth - 1`` relay genes.

    The relays of module ``m`` are its ``depth - 1`` earliest genes in the topological order
    (genes downstream of every target, so the DAG stays acyclic). Every target of the module
    activates the first relay, each relay activates the next, and the last relay takes over
    the module edges: each target keeps an edge to a module gene with probability
    ``direct_fraction`` and otherwise loses it to the last relay (which regulates the gene
    with the module's sign). Returns the new adjacency and the relays (modules x relays,
    -1 where a module has too few genes).
    """
    position = np.empty(order.size, dtype=np.int64)
    position[order] = np.arange(order.size)
    lo, hi = weight_range
    n_modules = int(target_module.max()) + 1 if target_module.size else 0
    relays = np.full((n_modules, depth - 1), -1, dtype=np.int64)
    w = w.tolil(copy=True)
    is_target = np.isin(np.arange(order.size), targets)
    for m in range(n_modules):
        genes = np.flatnonzero((gene_module == m) & ~is_target)
        if genes.size < depth:
            continue
        genes = genes[np.argsort(position[genes])]
        chain, members = genes[: depth - 1], genes[depth - 1 :]
        relays[m] = chain
        last = chain[-1]
        module_targets = targets[target_module == m]
        rerouted: dict[int, float] = {}
        for t in module_targets:
            w[t, chain[0]] = rng.uniform(lo, hi)
            for g in members:
                value = w[t, g]
                if value == 0 or rng.random() < direct_fraction:
                    continue
                rerouted[int(g)] = rerouted.get(int(g), 0.0) + value
                w[t, g] = 0.0
            # a target reaches the later relays through the chain only
            for relay in chain[1:]:
                w[t, relay] = 0.0
        for a, b in zip(chain[:-1], chain[1:], strict=True):
            w[a, b] = rng.uniform(lo, hi)
        # the relay regulates a gene with the sign the module's targets had on it
        for g, value in rerouted.items():
            if value != 0:
                w[last, g] = np.sign(value) * rng.uniform(lo, hi)
    w = w.tocsr()
    w.eliminate_zeros()
    # a relay integrates its module's targets as a pathway does, each of them needed: its
    # incoming weights are not capped (those of the other genes are, as in build_network)
    w = _cap_incoming(w, keep=relays[relays >= 0])
    assert np.all(position[w.nonzero()[0]] < position[w.nonzero()[1]]), "adjacency is not a DAG"
    return w, relays


def add_hub(
    rng: np.random.Generator,
    w: sp.csr_matrix,
    order: np.ndarray,
    targets: np.ndarray,
    feeders: np.ndarray,
    n_hub_genes: int,
    weight_range: tuple[float, float],
    exclude: np.ndarray,
    activation_fraction: float = 0.5,
) -> tuple[sp.csr_matrix, int, np.ndarray]:
    """Add a hub gene that the ``feeders`` activate and that regulates ``n_hub_genes`` genes.

    The hub is the earliest gene downstream of every target that is neither a target nor in
    ``exclude`` (e.g. the module relays); it regulates a random set of later non-target
    genes (activating with probability ``activation_fraction``), so every feeder's
    knock-down moves one large programme, more or less strongly. Returns the adjacency
    (incoming weights capped again), the hub and its genes.
    """
    n = order.size
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    lo, hi = weight_range
    exclude = np.asarray(exclude, dtype=np.int64)
    exclude = exclude[exclude >= 0]  # -1: a module without relay
    blocked = np.isin(order, np.concatenate([targets, exclude]))
    after_targets = np.arange(n) > position[targets].max()
    free = np.flatnonzero(after_targets & ~blocked)
    later = order[free[0] + 1 :] if free.size else order[:0]
    later = later[~np.isin(later, targets)]
    if not later.size:
        raise ValueError(
            "No gene is left downstream of the targets and relays for a hub and its "
            "programme; increase `n_genes` or set `hub_fraction=0`."
        )
    hub = int(order[free[0]])
    genes = np.sort(rng.choice(later, min(n_hub_genes, later.size), replace=False))
    signs = np.where(rng.random(genes.size) < activation_fraction, 1.0, -1.0)
    extra = sp.coo_matrix(
        (
            np.concatenate(
                [rng.uniform(lo, hi, feeders.size), signs * rng.uniform(lo, hi, genes.size)]
            ),
            (
                np.concatenate([feeders, np.full(genes.size, hub)]),
                np.concatenate([np.full(feeders.size, hub), genes]),
            ),
        ),
        shape=w.shape,
    ).tocsr()
    w = (w + extra).tocsr()
    w.eliminate_zeros()
    w = _cap_incoming(w, keep=np.concatenate([exclude, [hub]]))  # the hub, as a relay
    assert np.all(position[w.nonzero()[0]] < position[w.nonzero()[1]]), "adjacency is not a DAG"
    return w, hub, genes


class CellPropagation:
    """Propagate each cell's own log-expression deviations through the network.

    ``delta[:, g] = exo[:, g] + sum_j f_jg(delta[:, j])`` over the regulators ``j`` of ``g``,
    genes taken level by level in the DAG (a gene's level is one more than its deepest
    regulator's), so that every regulator is final before its targets read it. ``delta`` is
    the deviation of log expression from the noise-free baseline. With ``hill=None`` the
    edges are linear, ``f_jg(x) = w_jg x``. Otherwise each edge is a Hill function of the
    regulator's expression, ``x^n / (K^n + x^n)`` for an activator (``w_jg > 0``) and
    ``K^n / (K^n + x^n)`` for a repressor, that multiplies the regulated gene's expression
    (raised to ``|w_jg| / n``): in log space, relative to the baseline cell,

    ``f_jg(x) = |w_jg| / n * (log sigmoid(s n (x + d_jg)) - log sigmoid(s n d_jg))``

    with ``s = sign(w_jg)``, ``n = hill`` and ``d_jg`` the edge's threshold offset (how far
    above the threshold ``K`` the regulator's baseline expression lies, in log units). So an
    activator above its threshold (``d > 0``) is saturated: a regulated gene ignores its
    small changes and drops with slope ``|w|`` only once it falls below the threshold;
    one below it acts log-linearly (slope ``|w|``, as a linear edge); a repressor mirrors
    this. The same edge thus has one slope for the small fluctuations of control cells and
    another for a knock-down.

    Parameters
    ----------
    w
        Adjacency (row regulates column), a DAG.
    order
        A topological order of the genes.
    hill
        Hill coefficient ``n``, or ``None`` for linear edges.
    offsets
        Per-edge threshold offsets ``d``, aligned with ``w.tocoo()``'s entries (Hill edges
        only).
    """

    def __init__(
        self,
        w: sp.csr_matrix,
        order: np.ndarray,
        hill: float | None = None,
        offsets: np.ndarray | None = None,
    ) -> None:
        coo = w.tocoo()
        src, dst = coo.row.astype(np.int64), coo.col.astype(np.int64)
        n = w.shape[0]
        level = np.zeros(n, dtype=np.int64)
        regulators = w.tocsc()
        for g in order:  # regulators come first in a topological order
            regs = regulators.indices[regulators.indptr[g] : regulators.indptr[g + 1]]
            if regs.size:
                level[g] = level[regs].max() + 1
        self.hill = None if hill is None else np.float32(hill)
        weight = coo.data if hill is None else np.abs(coo.data) / hill
        self._levels = []
        for value in range(1, int(level.max(initial=0)) + 1):
            edges = np.flatnonzero(level[dst] == value)
            if not edges.size:
                continue
            columns, position = np.unique(dst[edges], return_inverse=True)
            # edges x columns: sums each edge's contribution into its regulated gene
            scatter = sp.csr_matrix(
                (weight[edges].astype(np.float32), (np.arange(edges.size), position)),
                shape=(edges.size, columns.size),
            ).T.tocsr()
            slope = offset = None
            if hill is not None:
                slope = (self.hill * np.sign(coo.data[edges])).astype(np.float32)
                offset = np.asarray(offsets, dtype=np.float32)[edges]
            self._levels.append((src[edges], columns, scatter, slope, offset))

    def __call__(self, exo: np.ndarray) -> np.ndarray:
        """Return ``delta`` (cells x genes, float32) for the exogenous deviations ``exo``."""
        delta = np.array(exo, dtype=np.float32, copy=True)
        for src, columns, scatter, slope, offset in self._levels:
            inputs = delta[:, src]
            if slope is not None:
                # log sigmoid(z) = -log(1 + exp(-z)), stable for any z
                inputs = np.logaddexp(0.0, -slope * offset) - np.logaddexp(
                    0.0, -slope * (inputs + offset)
                )
            delta[:, columns] += (scatter @ inputs.T).T
        return delta
