"""Latent nodes anchored to measured genes (the default ``latent_nodes="genes"``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sccvae import SCCVAE
from sccvae.model._interventions import UNSEEN_MAGNITUDE_RULES, choose_unseen_magnitude, unseen_magnitude
from sccvae.module._saturation import saturate
from sccvae.model._nodes import select_node_genes

from .conftest import make_toy_adata


def test_node_selection_puts_targets_first():
    genes = [f"g{i}" for i in range(6)]
    variance = np.array([0.1, 5.0, 0.3, 4.0, 2.0, 0.2])
    assert select_node_genes(genes, variance, ["g0", "g5"], 4) == ["g5", "g0", "g1", "g3"]
    assert select_node_genes(genes, variance, ["g0", "g5"], 4, order="variance") == ["g1", "g3", "g5", "g0"]
    # more targets than n_latent: every target is a node
    assert select_node_genes(genes, variance, genes[:5], 3) == ["g1", "g3", "g4", "g2", "g0"]
    shuffled = select_node_genes(genes, variance, ["g0"], 4, order="random", seed=1)
    assert sorted(shuffled) == ["g0", "g1", "g3", "g4"]
    with pytest.raises(ValueError, match="node_order"):
        select_node_genes(genes, variance, [], 2, order="alphabetical")


def test_gene_nodes_are_targets_user_genes_and_variable_genes(toy_adata):
    SCCVAE.setup_anndata(toy_adata)
    model = SCCVAE(toy_adata, n_latent=12, n_hidden=16, node_genes=["g30"])
    names = model.latent_node_names_
    assert len(names) == 12
    assert {f"g{i}" for i in range(8)} | {"g30"} <= set(names)  # targets and node_genes
    ordered = SCCVAE(toy_adata, n_latent=12, n_hidden=16, node_genes=["g30"], node_order="targets_first")
    assert set(ordered.latent_node_names_[:9]) == {f"g{i}" for i in range(8)} | {"g30"}
    assert set(ordered.latent_node_names_) == set(names)
    module = model.module
    assert [toy_adata.var_names[c] for c in module.node_genes.numpy()] == names
    assert np.all(module.target_nodes.numpy() >= 0)
    # centre and scale: the control cells' mean and standard deviation
    control = toy_adata[toy_adata.obs["perturbation"] == "control"].X.toarray()
    np.testing.assert_allclose(module.gene_center.numpy(), control.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(module.gene_scale.numpy(), np.maximum(control.std(0, ddof=1), 1e-2), rtol=1e-4)
    # a knock-down starts from its own observed change, in control standard deviations
    j = list(toy_adata.var_names).index("g3")
    observed = toy_adata[toy_adata.obs["perturbation"] == "g3"].X.toarray()[:, j].mean()
    expected = (observed - control[:, j].mean()) / max(control[:, j].std(ddof=1), 1e-2)
    assert module.magnitude.detach().numpy()[model.targets_.index("g3")] == pytest.approx(expected, rel=1e-4)
    # more required nodes than n_latent: the model grows
    assert len(SCCVAE(toy_adata, n_latent=4, n_hidden=16).latent_node_names_) == 8
    with pytest.raises(ValueError, match="NOT_A_GENE"):
        SCCVAE(toy_adata, node_genes=["NOT_A_GENE"])
    with pytest.raises(ValueError, match="latent_nodes"):
        SCCVAE(toy_adata, latent_nodes="pathways")
    with pytest.raises(ValueError, match="node_genes needs"):
        SCCVAE(toy_adata, latent_nodes="abstract", node_genes=["g30"])


def test_gene_graph_from_a_user_dag(toy_adata):
    SCCVAE.setup_anndata(toy_adata)
    genes = [f"g{i}" for i in range(8)] + ["g20", "g21"]
    dag = pd.DataFrame(0.0, index=genes, columns=genes)
    dag.loc["g0", "g20"] = dag.loc["g20", "g21"] = dag.loc["g1", "g21"] = 1.0
    model = SCCVAE(toy_adata, n_hidden=16, graph=dag)
    assert set(model.latent_node_names_) == set(genes)
    model.train(max_epochs=1, enable_progress_bar=False)
    assert set(model.get_graph().edges) == {("g0", "g20"), ("g20", "g21"), ("g1", "g21")}
    with pytest.raises(ValueError, match="g7"):
        SCCVAE(toy_adata, graph=dag.drop(index="g7", columns="g7"))


def test_unseen_magnitude_rules():
    magnitudes = np.array([-2.0, -1.0, -3.0])
    center, scale = np.array([2.0, 1.0, 3.0]), np.array([0.5, 1.0, 0.25])
    new_center, new_scale = np.array([1.5]), np.array([0.5])
    assert unseen_magnitude("standardized", magnitudes, center, scale, new_center, new_scale)[0] == -2.0
    log = np.mean(magnitudes * scale) / 0.5
    assert unseen_magnitude("log", magnitudes, center, scale, new_center, new_scale)[0] == pytest.approx(log)
    relative = np.mean(magnitudes * scale / center) * 1.5 / 0.5
    assert unseen_magnitude("relative", magnitudes, center, scale, new_center, new_scale)[0] == pytest.approx(relative)
    # knock-downs that remove the same share of each gene's expression: "relative" is exact
    rng = np.random.default_rng(0)
    center, scale = rng.uniform(0.5, 3, 20), rng.uniform(0.2, 1, 20)
    rule, errors = choose_unseen_magnitude(-0.6 * center / scale, center, scale)
    assert rule == "relative" and errors["relative"] == pytest.approx(0.0, abs=1e-20)
    assert set(errors) == set(UNSEEN_MAGNITUDE_RULES)
    assert choose_unseen_magnitude(magnitudes[:2], center[:2], scale[:2]) == ("standardized", {})


def test_trained_gene_model(trained_model):
    model = trained_model
    assert model.latent_nodes_ == "genes"
    assert model.unseen_magnitude_ in UNSEEN_MAGNITUDE_RULES
    # node values of control cells follow their genes
    adata = model.adata
    control = adata[adata.obs["perturbation"] == "control"]
    u = model.get_latent_representation(control, kind="causal")
    columns = [list(adata.var_names).index(g) for g in model.latent_node_names_]
    x = control.X.toarray()[:, columns]
    r = [np.corrcoef(u[:, j], x[:, j])[0, 1] for j in range(len(columns)) if x[:, j].std() > 0]
    assert np.median(r) > 0.8
    # the graph is a gene graph
    assert set(model.get_graph().nodes) == set(model.latent_node_names_)


def test_unseen_node_gene_shifts_its_own_gene(trained_model):
    model = trained_model
    unseen_node = next(g for g in model.latent_node_names_ if g not in model.targets_)
    column = list(model.var_names_).index(unseen_node)
    def dose_response(**kwargs):
        # the structure's per-cell response, not pinned to the reference cells' mean
        return model.simulate_knockdown(
            unseen_node, penetrance=(0.0, 0.5, 1.0), n_cells=50, seed=0, pin_mean=False, **kwargs
        )

    module = model.module
    floor, bound = module.expression_floor.clone(), module.decrease_bound.clone()
    assert floor.item() == 0.0  # log-normalised data: no cell is predicted below zero
    assert torch.isfinite(bound)  # estimated when training started
    # the structure's own response: nothing borrowed from the training interventions (whose
    # gene residuals are fitted through the floor, see test_unseen_targets_borrow...)
    observed = module.label_observed.clone()
    module.label_observed.zero_()
    clipped = dose_response()
    module.expression_floor.fill_(-np.inf)
    saturated = dose_response()
    module.decrease_bound.fill_(np.inf)  # the structure itself, without floor and bound
    unclipped = dose_response()
    module.expression_floor.copy_(floor)
    module.decrease_bound.copy_(bound)
    assert clipped.X.min() >= 0.0 and saturated.X.min() < 0.0
    np.testing.assert_allclose(clipped.X, np.maximum(saturated.X, 0.0))
    groups = unclipped.obs["penetrance"].to_numpy()
    source = unclipped.X[groups == 0.0]  # the same cells at every penetrance
    for p in (0.5, 1.0):
        change = torch.as_tensor(unclipped.X[groups == p] - source)
        expected = source + saturate(change, bound).numpy()
        np.testing.assert_allclose(saturated.X[groups == p], expected, rtol=1e-5, atol=1e-5)
    own = np.array([unclipped.X[groups == p, column].mean() for p in (0.0, 0.5, 1.0)])
    latents = model.get_perturbation_latents([unseen_node], n_cells=50, seed=0)
    module.label_observed.copy_(observed)
    node = model.latent_node_names_.index(unseen_node)
    causal_change = latents.X[0, node] - latents.uns["control_causal_mean"][node]
    full = causal_change * model.module.gene_scale[column].item()
    np.testing.assert_allclose(np.diff(own), full / 2, rtol=1e-3, atol=1e-5)  # linear dose-response
    # its own shift is the rule's magnitude, on its own node
    magnitude = model._unseen_node_magnitudes([column])[0]
    assert latents.obs["magnitude"].iloc[0] == pytest.approx(magnitude, rel=1e-5)
    np.testing.assert_allclose(latents.obsm["shift"][0, node], magnitude, rtol=1e-5)
    assert not latents.obs["seen"].iloc[0]
    np.testing.assert_allclose(latents.obsm["target_distribution"][0].max(), 1.0)


def test_measured_gene_that_is_not_a_node_moves_through_its_nodes(trained_model):
    model = trained_model
    other = next(g for g in model.var_names_ if g not in model.latent_node_names_)
    latents = model.get_perturbation_latents([other])
    shift = latents.obsm["shift"][0]
    assert np.count_nonzero(shift) > 1  # spread over the nodes that carry its variation
    pred = model.predict([other, "control"], n_cells=200, return_mean=True, seed=0, counterfactual=False)
    column = model.var_names_.index(other)
    change = pred.X[0, column] - pred.X[1, column]
    magnitude = latents.obs["magnitude"].iloc[0]
    assert np.sign(change) == np.sign(magnitude)


def test_combinations_of_seen_unseen_and_embedded_targets(toy_adata):
    SCCVAE.setup_anndata(toy_adata)
    genes = list(toy_adata.var_names) + ["NOT_MEASURED"]
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(len(genes), 5)), index=genes)
    model = SCCVAE(toy_adata, n_latent=12, n_hidden=32, perturbation_embedding=frame, node_genes=["g30"])
    model.train(max_epochs=2, enable_progress_bar=False)
    labels = ["g0", "g30", "NOT_MEASURED", "g0+g30+NOT_MEASURED", "g35+NOT_MEASURED"]
    pred = model.predict(labels, n_cells=10, seed=0)
    # labels come back as requested (the canonical form sorts the targets)
    assert pred.obs.groupby("canonical_perturbation", observed=True)["seen"].first().to_dict() == {
        "g0": True, "g30": False, "NOT_MEASURED": False, "NOT_MEASURED+g0+g30": False,
        "NOT_MEASURED+g35": False,
    }  # fmt: skip
    assert list(pred.obs["perturbation"].unique()) == labels
    assert np.isfinite(pred.X).all()
    latents = model.get_perturbation_latents(labels)
    shifts = latents.obsm["shift"]
    np.testing.assert_allclose(shifts[3], shifts[0] + shifts[1] + shifts[2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="UNKNOWN"):
        model.predict(["UNKNOWN"])


def test_counts_with_gene_nodes():
    adata = make_toy_adata(counts=True)
    SCCVAE.setup_anndata(adata)
    model = SCCVAE(adata, n_latent=12, n_hidden=32, likelihood="nb", seed=0)
    model.train(max_epochs=10, enable_progress_bar=False)
    loss = model.history["train_loss"]["train_loss"].to_numpy()
    assert loss[-1] < loss[0]
    pred = model.predict(["g0", "g15"], n_cells=50, seed=0)
    assert np.all(pred.X >= 0) and np.isfinite(pred.X).all()
    # the knocked-down gene has fewer counts than in its source cells
    column = list(adata.var_names).index("g0")
    sources = adata[pred.obs["control_cell"].to_numpy()[:50]].X.toarray()[:, column]
    assert pred.X[:50, column].sum() < sources.sum()


def test_coexpression_graph_keeps_the_most_correlated_earlier_nodes(toy_adata):
    from sccvae.model._nodes import coexpression_mask

    rng = np.random.default_rng(0)
    driver = rng.normal(size=500)
    control = np.column_stack(
        [
            driver,  # node 0
            rng.normal(size=500),  # node 1: independent of everything
            driver + 0.1 * rng.normal(size=500),  # node 2: follows node 0
            np.ones(500),  # node 3: never varies
            -driver + 0.5 * rng.normal(size=500),  # node 4: follows node 0 (negatively)
        ]
    )
    mask = coexpression_mask(control, [0, 1, 2, 3, 4], n_parents=1)
    assert np.all(np.tril(mask) == 0)  # a DAG in the node order
    assert mask[0, 2] == 1 and mask[:, 2].sum() == 1  # its one parent: the correlated node
    assert mask[:, 3].sum() == 0 and mask[3].sum() == 0  # a constant gene has no edge
    assert mask[:, 4].sum() == 1 and mask[0, 4] + mask[2, 4] == 1
    assert coexpression_mask(control, [0, 1, 2, 3, 4], n_parents=3)[:, 4].sum() == 3
    # in a model: a sparse DAG over the gene nodes, in their order
    SCCVAE.setup_anndata(toy_adata)
    model = SCCVAE(toy_adata, n_latent=12, n_hidden=16, graph="coexpression")
    edges = model.module.scm.mask.numpy()
    assert 0 < edges.sum() <= 5 * edges.shape[0] and np.all(np.tril(edges) == 0)
    assert edges.sum(axis=0).max() <= 5
    with pytest.raises(ValueError, match="latent_nodes='genes'"):
        SCCVAE(toy_adata, n_latent=6, graph="coexpression", latent_nodes="abstract")


def test_prediction_reuses_the_unperturbed_state(trained_model):
    """``generative`` with the unperturbed state given (as prediction passes it for every label)
    gives the joint pass's outputs."""
    model = trained_model
    module = model.module
    unseen_node = next(g for g in model.latent_node_names_ if g not in model.targets_)
    intervention = model._intervention([unseen_node, f"{model.targets_[0]}+{unseen_node}"])
    training = module.training_targets()
    # prediction's targets pass on a share of each shift (node values given); training's do not
    assert "propagation" in intervention.targets and "propagation" not in training
    # half of each shift passed on, so that a target's own node differs from what it passes
    halved = {**intervention.targets}
    halved["propagation"] = torch.full_like(halved["propagation"], 0.5)
    n_trained = training["magnitude"].shape[0]
    cases = [
        (intervention.targets, intervention.weights),
        (halved, intervention.weights),
        (training, torch.eye(n_trained)[:2]),
    ]
    z = torch.randn(30, module.n_latent, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        state = module.unperturbed(z)
        for targets, weights in cases:
            for row in weights:
                joint = module.generative(z, row.expand(30, -1), targets=targets)
                reused = module.generative(
                    z, row.expand(30, -1), targets=targets, unperturbed=state
                )
                for key in ("u", "u_control", "prediction", "control_prediction"):
                    torch.testing.assert_close(reused[key], joint[key], rtol=1e-5, atol=1e-5)
