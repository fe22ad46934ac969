from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

import sccvae.data as scd


def _counts_adata(seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.gamma(1.0, 2.0, 50), (120, 50)).astype(np.float32)
    x[5] = 0  # an empty cell
    labels = ["control"] * 60 + ["g1"] * 20 + ["g2+g3"] * 20 + ["absent"] * 20
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(120)])
    return ad.AnnData(
        X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(50)])
    )


def test_normalize_matches_scanpy_and_keeps_input():
    adata = _counts_adata()
    before = adata.X.copy()
    out = scd.normalize(adata)
    assert (adata.X != before).nnz == 0 and "counts" not in adata.layers  # input untouched
    ref = adata.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Some cells have zero counts"
        sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    assert out.X.format == "csr" and out.X.dtype == np.float32
    np.testing.assert_allclose(out.X.toarray(), ref.X.toarray(), rtol=1e-5, atol=1e-5)
    assert out.layers["counts"].dtype == np.float32 and out.layers["counts"].format == "csr"
    np.testing.assert_array_equal(out.layers["counts"].toarray(), before.toarray())
    # running it again (counts from the layer) gives the same result
    again = scd.normalize(out, target_sum=1e4)
    np.testing.assert_allclose(again.X.toarray(), out.X.toarray())
    # in place
    assert scd.normalize(adata, copy=False) is None
    assert "counts" in adata.layers


def test_normalize_errors():
    adata = _counts_adata()
    with pytest.raises(ValueError, match="target_sum"):
        scd.normalize(adata, target_sum=0)
    bad = adata.copy()
    bad.X = -bad.X
    with pytest.raises(ValueError, match="non-negative"):
        scd.normalize(bad)


def test_select_genes_keeps_targets():
    adata = scd.normalize(_counts_adata())
    out = scd.select_genes(adata, n_top_genes=10, keep=["g40", "not_a_gene"])
    assert {"g1", "g2", "g3", "g40"} <= set(out.var_names)
    assert out.var["highly_variable"].sum() == 10
    assert out.var["perturbation_target"].sum() == 3
    assert list(out.var_names) == [g for g in adata.var_names if g in set(out.var_names)]
    assert adata.n_vars == 50  # input untouched
    assert scd.select_genes(adata, n_top_genes=500).n_vars == 50
    assert scd.perturbation_targets(adata) == ["absent", "g1", "g2", "g3"]
    with pytest.raises(ValueError):
        scd.select_genes(adata, n_top_genes=0)


def _with_null_perturbations() -> ad.AnnData:
    """Simulated strong perturbations plus 'perturbations' that are relabelled control cells."""
    sim = scd.simulate_perturbseq(
        n_genes=300,
        n_perturbations=8,
        n_cells_per_perturbation=250,
        n_control_cells=1600,
        effect_size=2.5,
        seed=1,
    )
    labels = sim.obs["perturbation"].astype(str).to_numpy().copy()
    control = np.flatnonzero(labels == "control")
    labels[control[:250]] = "NULL1"
    labels[control[250:500]] = "NULL2"
    labels[control[500:600]] = "FEW"  # below min_cells
    sim.obs["perturbation"] = pd.Categorical(labels)
    return sim


def test_filter_strong_perturbations():
    adata = _with_null_perturbations()
    filtered, table = scd.filter_strong_perturbations(adata, min_cells=200, n_pcs=20, seed=0)
    assert set(table.index) == set(adata.obs["perturbation"].astype(str)) - {"control"}
    assert {"n_cells", "n_used", "accuracy", "accuracy_std", "kept"} <= set(table.columns)
    singles = list(adata.uns["simulation"]["targets"])
    assert table.loc[singles, "kept"].all(), table
    assert not table.loc[["NULL1", "NULL2", "FEW"], "kept"].any()
    assert table.loc[["NULL1", "NULL2"], "accuracy"].max() < 0.6
    assert np.isnan(table.loc["FEW", "accuracy"]) and table.loc["FEW", "n_cells"] == 100
    assert table.loc[singles, "n_used"].eq(250).all()
    kept_labels = set(filtered.obs["perturbation"].astype(str))
    assert kept_labels == {"control", *singles}
    assert (filtered.obs["perturbation"] == "control").sum() == (
        adata.obs["perturbation"] == "control"
    ).sum()
    assert adata.n_obs == 1600 + 8 * 250  # input untouched


def test_filter_errors():
    adata = _counts_adata()
    with pytest.raises(KeyError, match="perturbation_key"):
        scd.filter_strong_perturbations(adata, perturbation_key="condition")
    with pytest.raises(ValueError, match="No control cells"):
        scd.filter_strong_perturbations(adata, control_label="ctrl")
    with pytest.raises(ValueError, match="min_accuracy"):
        scd.filter_strong_perturbations(adata, min_accuracy=2)
