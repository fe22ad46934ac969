import numpy as np
import pandas as pd
import pytest

import sccvae
from sccvae.model._functional_modules import module_recovery_score, perturbation_modules, pseudobulk_modules


@pytest.fixture(scope="module")
def simulated():
    adata = sccvae.data.simulate_perturbseq(
        n_genes=100,
        n_perturbations=12,
        n_cells_per_perturbation=30,
        n_control_cells=200,
        n_modules=3,
        seed=0,
    )
    sccvae.SCCVAE.setup_anndata(adata)
    model = sccvae.SCCVAE(adata, n_latent=16, n_hidden=64, seed=0)
    model.train(max_epochs=3, enable_progress_bar=False)
    sim = adata.uns["simulation"]
    truth = pd.Series(sim["target_modules"], index=sim["targets"])
    return adata, model, truth


@pytest.mark.parametrize("use", ["shift", "causal", "decoded"])
def test_perturbation_modules_structure(simulated, use):
    adata, model, truth = simulated
    modules = perturbation_modules(model, use=use, n_cells=50, n_neighbors=5)
    assert modules.n_obs == 12
    assert set(modules.obs_names) == set(truth.index)
    assert modules.n_vars == 16
    assert isinstance(modules.obs["module"].dtype, pd.CategoricalDtype)
    assert modules.obsm["X_umap"].shape == (12, 2)
    assert {"seen", "magnitude", "n_targets"} <= set(modules.obs.columns)
    assert modules.obs["seen"].all()
    assert modules.obsm["causal_change"].shape == (12, 16)
    assert modules.uns["modules"]["use"] == use
    assert modules.uns["modules"]["method"] == "leiden"
    # module labels are ordered by size, largest first
    sizes = (
        modules.obs["module"].value_counts(sort=False).loc[modules.obs["module"].cat.categories]
    )
    assert list(sizes) == sorted(sizes, reverse=True)
    score = module_recovery_score(modules.obs["module"], truth)
    assert -1.0 <= score <= 1.0


def test_perturbation_modules_reproducible_and_unseen(simulated):
    adata, model, truth = simulated
    seen = list(truth.index[:6])
    unseen_gene = next(g for g in adata.var_names if g not in set(truth.index))
    labels = seen + [unseen_gene, f"{seen[0]}+{seen[1]}"]
    a = perturbation_modules(
        model, perturbations=labels, n_cells=50, n_neighbors=4, method="louvain", seed=3
    )
    b = perturbation_modules(
        model, perturbations=labels, n_cells=50, n_neighbors=4, method="louvain", seed=3
    )
    combination = f"{seen[0]}+{seen[1]}"  # rows are named by the labels as requested
    assert list(a.obs_names) == labels[:-1] + [combination]
    assert not a.obs.loc[unseen_gene, "seen"]
    assert a.obs.loc[combination, "n_targets"] == 2
    assert a.uns["modules"]["method"] == "louvain"
    np.testing.assert_array_equal(a.obs["module"].to_numpy(), b.obs["module"].to_numpy())
    np.testing.assert_allclose(a.obsm["X_umap"], b.obsm["X_umap"])
    dropped = perturbation_modules(
        model, perturbations=labels, include_unseen=False, n_cells=50, n_neighbors=4
    )
    assert unseen_gene not in dropped.obs_names
    assert dropped.n_obs == len(labels) - 1


def test_perturbation_modules_errors(simulated):
    _, model, truth = simulated
    with pytest.raises(ValueError, match="use must be"):
        perturbation_modules(model, use="latent")
    with pytest.raises(ValueError, match="at least 3"):
        perturbation_modules(model, perturbations=list(truth.index[:2]), n_cells=20)
    with pytest.raises(ValueError, match="method must be"):
        perturbation_modules(model, method="kmeans", n_cells=20)


def test_pseudobulk_modules(simulated):
    adata, _, truth = simulated
    modules = pseudobulk_modules(adata, n_neighbors=5, n_comps=5)
    assert modules.n_obs == 12
    assert list(modules.var_names) == list(adata.var_names)
    assert isinstance(modules.obs["module"].dtype, pd.CategoricalDtype)
    assert modules.obsm["X_umap"].shape == (12, 2)
    assert modules.obsm["X_pca"].shape == (12, 5)
    assert (modules.obs["n_cells"] == 30).all()
    # X is the change of the mean from control
    label = modules.obs_names[0]
    x = adata.X.toarray()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    expected = x[labels == label].mean(0) - x[labels == "control"].mean(0)
    np.testing.assert_allclose(modules.X[0], expected, rtol=1e-4, atol=1e-5)
    assert -1.0 <= module_recovery_score(modules.obs["module"], truth) <= 1.0
    with pytest.raises(ValueError, match="No control cells"):
        pseudobulk_modules(adata, control_label="non-targeting")


def test_module_recovery_score():
    assert module_recovery_score(["a", "a", "b", "b"], [1, 1, 2, 2]) == pytest.approx(1.0)
    assert module_recovery_score(["a", "b", "a", "b"], [1, 1, 2, 2]) < 0.5
    predicted = pd.Series(["0", "0", "1", "1", "1"], index=["p1", "p2", "p3", "p4", "extra"])
    truth = {"p4": 5, "p3": 5, "p2": 7, "p1": 7}
    assert module_recovery_score(predicted, truth) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal length"):
        module_recovery_score([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="share no"):
        module_recovery_score(pd.Series([1], index=["x"]), pd.Series([1], index=["y"]))
