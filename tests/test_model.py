import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import sccvae
from sccvae import SCCVAE

from .conftest import make_toy_adata


def _observed_mean(adata, label):
    return np.asarray(adata[adata.obs["perturbation"] == label].X.mean(axis=0)).ravel()


def test_loss_decreases_and_validation_runs(trained_model):
    history = trained_model.history
    train = history["train_loss"]["train_loss"].to_numpy()
    assert train[-5:].mean() < 0.5 * train[:3].mean()
    assert "validation_loss" in history and len(history["validation_loss"]) == 40
    assert "model_selection_validation" in history
    assert history["kl_weight"]["kl_weight"].iloc[0] == 0.0
    # the warm-up spans training and ends near the KL weight's maximum (0.1 by default)
    assert 0.09 < history["kl_weight"]["kl_weight"].iloc[-1] <= 0.1


def test_trained_perturbations_beat_control_mean(trained_model):
    adata = trained_model.adata
    control_mean = _observed_mean(adata, "control")
    labels = [f"g{i}" for i in range(8)] + ["g0+g1"]
    pred = trained_model.predict(labels, n_cells=200, return_mean=True, seed=0)
    better = 0
    for label in labels:
        observed = _observed_mean(adata, "g1+g0" if label == "g0+g1" else label)
        predicted = pred[label].X.ravel()
        better += np.mean((predicted - observed) ** 2) < np.mean((control_mean - observed) ** 2)
    assert better >= len(labels) - 1


def test_predict_unseen_and_combinations_shapes_and_labels(trained_model):
    pred = trained_model.predict(["g0", "g12", "g0+g12", "g3+g2+g1"], n_cells=30, seed=1)
    assert pred.shape == (120, trained_model.adata.n_vars)
    assert list(pred.var_names) == list(trained_model.adata.var_names)
    # labels come back as requested, with their canonical form beside them
    assert pred.obs["perturbation"].value_counts().to_dict() == {"g0": 30, "g12": 30, "g0+g12": 30, "g3+g2+g1": 30}
    assert pred.obs.groupby("perturbation")["canonical_perturbation"].first()["g3+g2+g1"] == "g1+g2+g3"
    assert pred.obs.groupby("perturbation")["seen"].first().to_dict() == {
        "g0": True, "g12": False, "g0+g12": False, "g3+g2+g1": True,
    }
    assert np.all(np.isfinite(pred.X))
    # order of a combination does not matter
    a = trained_model.predict(["g1+g0"], n_cells=20, seed=3).X
    b = trained_model.predict(["g0+g1"], n_cells=20, seed=3).X
    np.testing.assert_allclose(a, b)


def test_unseen_magnitude_comes_from_embedding_map(trained_abstract_model):
    latents = trained_abstract_model.get_perturbation_latents(["g12", "g13"])
    module = trained_abstract_model.module
    emb = trained_abstract_model.gene_embedding_.loc[["g12", "g13"]].to_numpy(np.float32)
    expected = emb @ module.magnitude_coef.cpu().numpy() + module.magnitude_intercept.item()
    np.testing.assert_allclose(latents.obs["magnitude"].to_numpy(), expected, rtol=1e-5)


def test_predict_does_not_modify_input(trained_model):
    adata = trained_model.adata
    before_obs = adata.obs.copy()
    before_x = adata.X.copy()
    trained_model.predict(["g0", "g12"], n_cells=10)
    trained_model.get_latent_representation()
    pd.testing.assert_frame_equal(adata.obs, before_obs)
    assert (adata.X != before_x).nnz == 0


def test_latent_queries(trained_model):
    z = trained_model.get_latent_representation()
    u = trained_model.get_latent_representation(kind="causal")
    assert z.shape == u.shape == (trained_model.adata.n_obs, 16)
    assert not np.allclose(z, u)
    latents = trained_model.get_perturbation_latents()
    assert set(latents.obs_names) == {f"g{i}" for i in range(8)} | {"g0+g1"}
    assert latents.obsm["shift"].shape == (9, 16)
    np.testing.assert_allclose(latents.obsm["target_distribution"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(latents.obsm["shift"].sum(axis=1), latents.obs["magnitude"], rtol=1e-4)
    dose = trained_model.simulate_knockdown("g2", n_cells=20, seed=0)
    assert dose.shape[0] == 100 and sorted(dose.obs["penetrance"].unique()) == [0.0, 0.25, 0.5, 0.75, 1.0]
    zero = dose[dose.obs["penetrance"] == 0]
    control_recon = trained_model.predict(["control"], n_cells=20, seed=0).X
    np.testing.assert_allclose(zero.X, control_recon, rtol=1e-5, atol=1e-5)
    # counterfactuals at zero penetrance are the source cells themselves
    source = trained_model.adata[zero.obs["control_cell"].to_numpy()].X.toarray()
    np.testing.assert_allclose(zero.X, source, rtol=1e-5, atol=1e-5)
    means = trained_model.simulate_knockdown("g2", n_cells=20, seed=0, counterfactual=False)
    assert not np.allclose(means[means.obs["penetrance"] == 0].X, source)
    full = dose[dose.obs["penetrance"] == 1.0].X
    np.testing.assert_allclose(full, trained_model.predict(["g2"], n_cells=20, seed=0).X, rtol=1e-5, atol=1e-5)
    graph = trained_model.get_graph(threshold=0.0)
    assert graph.number_of_nodes() == 16 and graph.number_of_edges() > 0
    assert all("weight" in d for _, _, d in graph.edges(data=True))
    assert len(trained_model.get_graph(threshold=10.0).edges) < graph.number_of_edges()


def test_save_load_round_trip(trained_model, tmp_path):
    trained_model.save(tmp_path / "model", overwrite=True)
    loaded = SCCVAE.load(tmp_path / "model", adata=trained_model.adata)
    a = trained_model.predict(["g0", "g12", "g0+g1"], n_cells=20, seed=5).X
    b = loaded.predict(["g0", "g12", "g0+g1"], n_cells=20, seed=5).X
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    other = make_toy_adata(n_genes=30)
    with pytest.raises(ValueError, match="genes"):
        SCCVAE.load(tmp_path / "model", adata=other)
    reordered = trained_model.adata[:, trained_model.adata.var_names[::-1]].copy()
    with pytest.raises(ValueError, match="ordered"):
        SCCVAE.load(tmp_path / "model", adata=reordered)
    with pytest.raises(ValueError, match="genes"):
        trained_model.predict(["g0"], adata=other)


def test_training_is_deterministic_with_a_seed(toy_adata):
    import torch

    results = []
    for global_seed in (11, 12):
        # whatever state the caller left torch's global generator in (as in a fresh process),
        # the model's seed alone fixes the run
        torch.manual_seed(global_seed)
        adata = toy_adata.copy()
        SCCVAE.setup_anndata(adata)
        model = SCCVAE(adata, n_latent=8, n_hidden=32, seed=3)
        model.train(max_epochs=3, enable_progress_bar=False)
        results.append(model.predict(["g0", "g11"], n_cells=10, seed=0).X)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
    SCCVAE.setup_anndata(toy_adata)
    a = SCCVAE(toy_adata, n_latent=8, n_hidden=32, seed=1).module.state_dict()
    b = SCCVAE(toy_adata, n_latent=8, n_hidden=32, seed=1).module.state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_graph_choices_and_user_dag(toy_adata):
    SCCVAE.setup_anndata(toy_adata)
    none = SCCVAE(toy_adata, n_latent=6, n_hidden=16, graph="none")
    assert none.get_graph().number_of_edges() == 0
    dag = np.zeros((6, 6))
    dag[5, 0] = dag[0, 3] = 1
    model = SCCVAE(toy_adata, n_latent=6, n_hidden=16, graph=dag, latent_nodes="abstract")
    model.train(max_epochs=1, enable_progress_bar=False)
    edges = set(model.get_graph().edges)
    assert edges == {("node_5", "node_0"), ("node_0", "node_3")}
    with pytest.raises(ValueError, match="cycle"):
        cyclic = dag.copy()
        cyclic[3, 5] = 1
        SCCVAE(toy_adata, n_latent=6, graph=cyclic, latent_nodes="abstract")
    with pytest.raises(ValueError, match="n_latent"):
        SCCVAE(toy_adata, n_latent=7, graph=dag, latent_nodes="abstract")


def test_onehot_and_dataframe_embeddings(toy_adata):
    SCCVAE.setup_anndata(toy_adata)
    onehot = SCCVAE(
        toy_adata, n_latent=6, n_hidden=16, perturbation_embedding="onehot", latent_nodes="abstract"
    )
    onehot.train(max_epochs=1, enable_progress_bar=False)
    assert onehot.predict(["g0+g1"], n_cells=5).shape == (5, toy_adata.n_vars)
    with pytest.raises(ValueError, match="g12"):
        onehot.predict(["g12"], n_cells=5)
    genes = [f"g{i}" for i in range(40)] + ["NOT_MEASURED"]
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(41, 5)), index=genes)
    model = SCCVAE(
        toy_adata, n_latent=6, n_hidden=16, perturbation_embedding=frame, latent_nodes="abstract"
    )
    model.train(max_epochs=1, enable_progress_bar=False)
    assert model.predict(["NOT_MEASURED"], n_cells=4).obs["seen"].iloc[0] == False  # noqa: E712
    with pytest.raises(ValueError, match="UNKNOWN"):
        model.predict(["UNKNOWN+g0"], n_cells=4)
    # a training target the DataFrame lacks is a seen perturbation: learned one-hot
    partial = SCCVAE(
        toy_adata, n_latent=6, perturbation_embedding=frame.drop(index="g1"), latent_nodes="abstract"
    )
    assert partial.gene_embedding_.loc["g1", "onehot:g1"] == 1.0
    assert partial.gene_embedding_.loc["g0", "onehot:g1"] == 0.0


def test_unmeasured_training_targets_are_learned_at_the_defaults(toy_adata):
    """A real screen's targets that are not measured genes need no embedding to be trained."""
    adata = toy_adata.copy()
    labels = adata.obs["perturbation"].astype(str)
    adata.obs["perturbation"] = labels.replace({"g3": "UNMEASURED_A", "g4": "UNMEASURED_B"})
    before = adata.copy()
    SCCVAE.setup_anndata(adata)
    model = SCCVAE(adata, n_latent=8, n_hidden=16)  # coexpression embedding, gene nodes
    model.train(max_epochs=1, enable_progress_bar=False)
    assert {"onehot:UNMEASURED_A", "onehot:UNMEASURED_B"} <= set(model.gene_embedding_.columns)
    pred = model.predict(["UNMEASURED_A", "UNMEASURED_B+g0", "g20"], n_cells=5)
    assert pred.obs["seen"].tolist() == [True] * 5 + [True] * 5 + [False] * 5
    with pytest.raises(ValueError, match="NEVER_SEEN"):
        model.predict(["NEVER_SEEN"], n_cells=5)
    assert adata.obs["perturbation"].equals(before.obs["perturbation"])


def test_negative_binomial_on_counts():
    adata = make_toy_adata(counts=True)
    SCCVAE.setup_anndata(adata)
    model = SCCVAE(adata, n_latent=8, n_hidden=32, likelihood="nb")
    model.train(max_epochs=15, enable_progress_bar=False)
    loss = model.history["train_loss"]["train_loss"].to_numpy()
    assert loss[-1] < loss[0]
    assert np.all(model.predict(["g0", "g15"], n_cells=50, seed=0).X >= 0)
    pred = model.predict(["g0", "g15"], n_cells=50, seed=0, counterfactual=False)
    assert np.all(pred.X >= 0)
    # expected counts sum to the source cells' library sizes
    library = np.asarray(adata[pred.obs["control_cell"].to_numpy()[:50]].X.sum(axis=1)).ravel()
    np.testing.assert_allclose(pred.X[:50].sum(axis=1), library, rtol=1e-3)


def test_negative_binomial_counterfactuals_are_made_on_the_log_normalised_scale():
    adata = make_toy_adata(counts=True)
    SCCVAE.setup_anndata(adata)
    model = SCCVAE(adata, n_latent=8, n_hidden=32, likelihood="nb")
    model.train(max_epochs=2, enable_progress_bar=False)
    logged = model.predict(["g0", "control"], n_cells=40, seed=0, log_normalized=True)
    counts = model.predict(["g0", "control"], n_cells=40, seed=0)
    source = adata[logged.obs["control_cell"].to_numpy()[:40]].X.toarray()
    library = source.sum(axis=1, keepdims=True)
    # the control label's counterfactual is the source cell, on its log-normalised scale
    np.testing.assert_allclose(logged.X[40:], np.log1p(1e4 * source / library), atol=1e-4)
    # counts are that counterfactual at the source cell's library size
    np.testing.assert_allclose(
        counts.X[:40], np.expm1(logged.X[:40]) * library / 1e4, rtol=1e-4, atol=1e-4
    )
    # changes are added on that scale, not as a fold change of the counts: a gene a cell has
    # no count of can rise
    change = logged.X[:40] - logged.X[40:]
    rising = (change > 0.05).any(axis=0)
    assert np.any((source == 0) & rising[None, :] & (logged.X[:40] > 0))
    assert np.all(logged.X >= 0)


def _mean_changes(model, prediction, labels):
    source = model.adata[prediction.obs["control_cell"].to_numpy()].X.toarray()
    groups = prediction.obs["perturbation"].to_numpy()
    return np.stack(
        [prediction.X[groups == g].mean(0) - source[groups == g].mean(0) for g in labels]
    )


def test_predicted_mean_change_does_not_depend_on_the_source_cells(trained_model):
    """Counterfactuals of two draws of source cells have the same mean change: the one the
    model makes on its reference cells (clipped at the floor, cells differ in how far they
    can fall, so without pinning the mean change is Monte Carlo noise of the draw)."""
    labels = ["g0", "g12", "g0+g1"]
    first = _mean_changes(trained_model, trained_model.predict(labels, n_cells=30, seed=1), labels)
    second = _mean_changes(trained_model, trained_model.predict(labels, n_cells=30, seed=2), labels)
    assert np.abs(first).max() > 0.1  # there is a change to pin
    # genes whose source cells all sit at the floor cannot fall: allow those few
    close = np.abs(first - second) < 1e-4
    assert close.mean() > 0.98
    # each cell keeps its own change: the counterfactuals are not one shifted mean
    cells = trained_model.predict(["g0"], n_cells=30, seed=1)
    source = trained_model.adata[cells.obs["control_cell"].to_numpy()].X.toarray()
    assert (cells.X - source).std(axis=0).max() > 1e-3


def test_bad_input_errors_name_the_problem(toy_adata):
    with pytest.raises(KeyError, match="condition"):
        SCCVAE.setup_anndata(toy_adata, perturbation_key="condition")
    renamed = toy_adata.copy()
    renamed.obs["perturbation"] = renamed.obs["perturbation"].astype(str).replace("control", "ctrl")
    with pytest.raises(ValueError, match="ctrl"):
        SCCVAE.setup_anndata(renamed)
    with_nan = toy_adata.copy()
    with_nan.X = with_nan.X.toarray()
    with_nan.X[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        SCCVAE.setup_anndata(with_nan)
    SCCVAE.setup_anndata(toy_adata)
    with pytest.raises(ValueError, match="integer counts"):
        SCCVAE(toy_adata, likelihood="nb")
    negative = toy_adata.copy()
    negative.X = sp.csr_matrix(negative.X.toarray() - 1.0)
    SCCVAE.setup_anndata(negative)
    with pytest.raises(ValueError, match="negative"):
        SCCVAE(negative, likelihood="nb")
    rare = ad.concat([toy_adata, make_toy_adata(n_control=1, n_per_perturbation=3, n_single=1, doubles=())[1:]], index_unique="-")
    rare.obs["perturbation"] = rare.obs["perturbation"].astype(str)
    rare.obs.loc[rare.obs_names[-3:], "perturbation"] = "RARE"
    with pytest.warns(UserWarning, match="fewer than"):
        SCCVAE.setup_anndata(rare)
    SCCVAE.setup_anndata(toy_adata)
    with pytest.raises(ValueError, match="Unknown graph"):
        SCCVAE(toy_adata, graph="dense")
    with pytest.raises(ValueError, match="likelihood"):
        SCCVAE(toy_adata, likelihood="poisson")


def test_failed_setup_leaves_input_untouched(toy_adata):
    before = toy_adata.obs.copy()
    with pytest.raises(ValueError):
        SCCVAE.setup_anndata(toy_adata, control_label="nope")
    pd.testing.assert_frame_equal(toy_adata.obs, before)
    assert "_scvi_uuid" not in toy_adata.uns


def test_explicit_indices_and_early_stopping(toy_adata):
    SCCVAE.setup_anndata(toy_adata)
    labels = toy_adata.obs["perturbation"].astype(str).to_numpy()
    train = np.flatnonzero(labels != "g7")
    validation = np.flatnonzero(labels == "g7")
    model = SCCVAE(toy_adata, n_latent=6, n_hidden=16)
    model.train(
        max_epochs=30, train_indices=train, validation_indices=validation, early_stopping=True,
        early_stopping_patience=2, early_stopping_min_delta=10.0, enable_progress_bar=False,
    )
    assert len(model.history["validation_loss"]) < 30
    assert set(model.train_indices) == set(train)


def test_train_rejects_no_epochs_and_predict_returns_canonical_labels(toy_adata):
    SCCVAE.setup_anndata(toy_adata)
    model = SCCVAE(toy_adata, n_latent=8, n_hidden=16)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="max_epochs must be a positive"):
            model.train(max_epochs=bad)
    assert not model.is_trained_
    model.train(max_epochs=1, enable_progress_bar=False)
    pred = model.predict([" g1 + g0 ", "g2"], n_cells=3)
    assert list(pred.obs["perturbation"].unique()) == ["g1 + g0", "g2"]  # as asked, stripped
    assert list(pred.obs["canonical_perturbation"].unique()) == ["g0+g1", "g2"]
    with pytest.raises(ValueError, match="more than once"):
        model.predict(["g0+g0"])


def test_library_notices_are_dropped_during_train_and_load_only(toy_adata, tmp_path, caplog):
    import logging

    SCCVAE.setup_anndata(toy_adata)
    model = SCCVAE(toy_adata, n_latent=8, n_hidden=16)
    with caplog.at_level(logging.INFO):
        model.train(max_epochs=1, enable_progress_bar=False)
        model.save(tmp_path / "m", overwrite=True)
        SCCVAE.load(tmp_path / "m", adata=toy_adata)
    messages = [record.getMessage() for record in caplog.records]
    assert not any("litlogger" in m or "GPU available: False" in m for m in messages)
    assert not any("already downloaded" in m for m in messages)
    assert any("Trainer.fit` stopped" in m for m in messages)  # useful messages still pass
    lightning = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert not lightning.filters  # nothing is left filtered after the calls


def test_small_models_train_on_one_thread_and_restore_the_setting(toy_adata):
    import torch

    SCCVAE.setup_anndata(toy_adata)
    model = SCCVAE(toy_adata, n_latent=8, n_hidden=16)
    seen = []

    import lightning.pytorch as pl

    class Threads(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    model.train(max_epochs=1, enable_progress_bar=False, callbacks=[Threads()])
    assert seen == [1] and torch.get_num_threads() == before
    model.train(max_epochs=1, enable_progress_bar=False, callbacks=[Threads()], n_threads=None)
    assert seen[-1] == before
    with pytest.raises(ValueError, match="n_threads"):
        model.train(max_epochs=1, n_threads=0)


def test_module_options_pass_through_and_unknown_keywords_are_named(toy_adata):
    SCCVAE.setup_anndata(toy_adata)
    model = SCCVAE(toy_adata, n_latent=6, n_hidden=16, dropout_rate=0.2, target_temperature=0.5)
    assert model.module.target_temperature == 0.5
    dropouts = [m.p for m in model.module.modules() if isinstance(m, torch.nn.Dropout)]
    assert 0.2 in dropouts
    assert model.init_params_["kwargs"]["module_kwargs"] == {
        "dropout_rate": 0.2,
        "target_temperature": 0.5,
    }
    with pytest.raises(TypeError, match=r"\['dropuot_rate'\].*dropout_rate"):
        SCCVAE(toy_adata, n_latent=6, n_hidden=16, dropuot_rate=0.2)


def test_defaults_are_real_values_and_model_module_and_plan_agree():
    import inspect

    from sccvae import SCCVAEModule, SCCVAETrainingPlan

    model = inspect.signature(SCCVAE.__init__).parameters
    # None only where it means something other than a value: no data, no extra node, the
    # global seed
    assert {name for name, p in model.items() if p.default is None} == {
        "adata",
        "registry",
        "node_genes",
        "seed",
    }
    options = set(model) - {"self", "adata", "registry", "module_kwargs"}
    assert len(options) <= 16  # the options users set; the rest pass through **module_kwargs
    module = inspect.signature(SCCVAEModule.__init__).parameters
    shared = set(model) & set(module) - {"self", "seed"}
    assert {"n_hidden", "n_layers", "mmd_weight", "mean_weight", "perturbation_encoder"} <= shared
    for name in shared:
        assert model[name].default == module[name].default, name
    plan = inspect.signature(SCCVAETrainingPlan.__init__).parameters
    assert (plan["lr"].default, plan["max_kl_weight"].default) == (2e-3, 0.1)
    assert inspect.signature(SCCVAE.train).parameters["batch_size"].default == 64


def test_the_paper_settings_give_the_paper_model(toy_adata):
    import sccvae

    SCCVAE.setup_anndata(toy_adata)
    model = SCCVAE(toy_adata, n_latent=6, n_hidden=16, **sccvae.PAPER_MODEL)
    module = model.module
    assert model.latent_nodes_ == "abstract" and module.perturbation_encoder_kind == "softmax"
    assert (module.mmd_weight, module.control_reconstruction_weight) == (10.0, 0.25)
    assert module.mean_weight == 0.0
    model.train(max_epochs=1, enable_progress_bar=False, **sccvae.PAPER_TRAINING)
    assert model.history["kl_weight"]["kl_weight"].iloc[-1] <= 1.0


def test_removed_options_are_named_and_saved_models_that_recorded_them_load(
    trained_model, tmp_path
):
    adata = trained_model.adata
    for name, hint in [
        ("graph_density", "build_graph_mask"),
        ("n_embedding_components", "coexpression_embedding"),
        ("init_magnitude", "observed change"),
    ]:
        with pytest.raises(TypeError, match=rf"{name}.*{hint}"):
            SCCVAE(adata, n_latent=16, n_hidden=64, **{name: 1})
    # a model saved when the constructor still took them loads, and predicts the same
    saved = trained_model.init_params_
    recorded = {"graph_density": 0.03, "n_embedding_components": 50, "init_magnitude": None}
    trained_model.init_params_ = {**saved, "non_kwargs": {**saved["non_kwargs"], **recorded}}
    try:
        trained_model.save(tmp_path / "older", overwrite=True)
    finally:
        trained_model.init_params_ = saved
    loaded = SCCVAE.load(tmp_path / "older", adata=adata)
    np.testing.assert_allclose(
        loaded.predict(["g0", "g12"], n_cells=20, seed=5).X,
        trained_model.predict(["g0", "g12"], n_cells=20, seed=5).X,
        rtol=1e-5,
        atol=1e-6,
    )


def test_sizes_and_weights_that_are_not_numbers_are_named(toy_adata):
    SCCVAE.setup_anndata(toy_adata)
    for name, value in [("n_hidden", None), ("n_latent", 0), ("n_layers", 1.5)]:
        with pytest.raises(ValueError, match=rf"{name} must be a positive integer"):
            SCCVAE(toy_adata, **{name: value})
    for name, value in [("mmd_weight", -1.0), ("mean_weight", None), ("mmd_weight", np.nan)]:
        with pytest.raises(ValueError, match=rf"{name} must be a finite number >= 0"):
            SCCVAE(toy_adata, **{name: value})
