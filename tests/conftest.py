from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

#: the shared real data (``../shared/data`` from the repository root); SCCVAE_SHARED_DATA
#: points elsewhere, e.g. from a git worktree that has no ``../shared`` next to it
SHARED_DATA = Path(
    os.environ.get(
        "SCCVAE_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
)
#: perturbench's development subset (``src/perturbench/data/resources/devel.h5ad`` of
#: github.com/altoslabs/perturbench, BSD-3): real Norman 2019 and McFaline-Figueroa 2023 cells
PERTURBENCH_DEVEL = Path(
    os.environ.get("SCCVAE_PERTURBENCH_DEVEL", SHARED_DATA / "perturbench_devel.h5ad")
)
PERTURBENCH_DEVEL_MISSING = (
    f"perturbench's development subset is not at {PERTURBENCH_DEVEL}: copy "
    "src/perturbench/data/resources/devel.h5ad from github.com/altoslabs/perturbench and set "
    "SCCVAE_PERTURBENCH_DEVEL=/path/to/devel.h5ad to run this test"
)
#: Papalexi et al. 2021 THP-1 knock-outs (raw counts, 299 genes), see SHARED_DATA/README.md
PAPALEXI = SHARED_DATA / "papalexi2021_thp1_ko_dev.h5ad"
PAPALEXI_MISSING = (
    f"the Papalexi 2021 THP-1 screen is not at {PAPALEXI}; set SCCVAE_SHARED_DATA to the "
    "folder holding papalexi2021_thp1_ko_dev.h5ad to run this test"
)


def make_toy_adata(
    n_genes: int = 40,
    n_control: int = 300,
    n_per_perturbation: int = 60,
    n_single: int = 8,
    doubles: tuple[str, ...] = ("g1+g0",),
    counts: bool = False,
    seed: int = 0,
) -> ad.AnnData:
    """Log-expression (or NB counts) where knocking down gene j lowers it and its network children."""
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(n_genes)]
    network = np.triu((rng.random((n_genes, n_genes)) < 0.1) * rng.normal(0, 0.8, (n_genes, n_genes)), 1)
    base = rng.uniform(0.5, 2.0, n_genes)
    programs = rng.normal(0, 0.3, (2, n_genes))

    def block(n: int, targets: tuple[str, ...]) -> np.ndarray:
        shift = np.zeros(n_genes)
        for target in targets:
            j = genes.index(target)
            shift[j] -= 1.0
            shift -= network[j]
        mean = base + shift + rng.normal(0, 1, (n, 2)) @ programs
        if counts:
            return rng.poisson(np.exp(mean + 1.0)).astype(np.float32)
        return np.clip(mean + rng.normal(0, 0.3, (n, n_genes)), 0, None).astype(np.float32)

    blocks, labels = [block(n_control, ())], ["control"] * n_control
    for label in [f"g{i}" for i in range(n_single)] + list(doubles):
        blocks.append(block(n_per_perturbation, tuple(label.split("+"))))
        labels += [label] * n_per_perturbation
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels)}, index=[f"cell{i}" for i in range(len(labels))])
    adata = ad.AnnData(sp.csr_matrix(np.vstack(blocks)), obs=obs, var=pd.DataFrame(index=genes))
    adata.uns["network"] = network
    return adata


@pytest.fixture
def toy_adata() -> ad.AnnData:
    return make_toy_adata()


@pytest.fixture(scope="session")
def trained_model():
    """A small model trained once for the read-only API tests."""
    import sccvae

    adata = make_toy_adata()
    sccvae.SCCVAE.setup_anndata(adata)
    model = sccvae.SCCVAE(adata, n_latent=16, n_hidden=64, seed=0)
    model.train(max_epochs=40, enable_progress_bar=False)
    return model


@pytest.fixture(scope="session")
def trained_abstract_model():
    """The paper's model (abstract latent nodes), trained once for read-only tests."""
    import sccvae

    adata = make_toy_adata()
    sccvae.SCCVAE.setup_anndata(adata)
    model = sccvae.SCCVAE(adata, n_latent=16, n_hidden=64, seed=0, **sccvae.PAPER_MODEL)
    model.train(max_epochs=40, enable_progress_bar=False, **sccvae.PAPER_TRAINING)
    return model
