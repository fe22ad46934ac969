"""A synthetic screen for timing benchmarks: its values do not change what a step costs."""

from __future__ import annotations

import numpy as np


def synthetic_screen(
    n_perturbations: int, cells_per_perturbation: int, n_control: int, n_genes: int, seed: int = 0
):
    """Log-normalised-looking sparse cells (~10 % non-zero, as Perturb-seq) of knock-downs.

    Perturbation ``i`` targets the measured gene ``G{i}``; ``n_control`` cells are labelled
    ``"control"``.
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n_cells = n_control + n_perturbations * cells_per_perturbation
    nnz = int(n_cells * n_genes * 0.1)
    rows = rng.integers(0, n_cells, nnz)
    cols = rng.integers(0, n_genes, nnz)
    values = np.log1p(rng.gamma(1.0, 2.0, nnz)).astype(np.float32)
    x = sp.csr_matrix((values, (rows, cols)), shape=(n_cells, n_genes))
    x.sum_duplicates()
    genes = [f"G{i}" for i in range(n_genes)]
    labels = ["control"] * n_control + [
        genes[i] for i in range(n_perturbations) for _ in range(cells_per_perturbation)
    ]
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes))
