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
