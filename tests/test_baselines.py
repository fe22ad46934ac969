from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from sccvae.baselines import AdditiveBaseline, ControlBaseline, LinearBaseline, MeanBaseline

N_GENES = 40
GENES = [f"g{i}" for i in range(N_GENES)]


def make_adata(
    deltas: dict[str, np.ndarray], n_per=150, n_ctrl=300, noise=0.1, seed=0, sparse=False
):
    rng = np.random.default_rng(seed)
    mu0 = rng.uniform(1, 3, N_GENES)
    # control cells with some coexpression structure so the coexpression embedding is non-trivial
    factors = rng.normal(size=(n_ctrl, 3)) @ rng.normal(size=(3, N_GENES)) * 0.2
    factors -= factors.mean(axis=0)  # keep the control mean exactly mu0 (up to noise)
    xs = [mu0 + factors + rng.normal(scale=noise, size=(n_ctrl, N_GENES))]
    labels = ["control"] * n_ctrl
    for label, delta in deltas.items():
        xs.append(mu0 + delta + rng.normal(scale=noise, size=(n_per, N_GENES)))
        labels += [label] * n_per
    x = np.vstack(xs).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    adata = AnnData(X=sp.csr_matrix(x) if sparse else x, obs=obs, var=pd.DataFrame(index=GENES))
    return adata, mu0


def random_deltas(labels, seed=1, scale=1.0):
    rng = np.random.default_rng(seed)
    return {lab: rng.normal(scale=scale, size=N_GENES) for lab in labels}


def pred_mean(pred, label, key="perturbation"):
    rows = pred.obs[key].astype(str).to_numpy() == label
    return np.asarray(pred.X[rows], dtype=np.float64).mean(axis=0)


def test_control_baseline_predicts_control_mean():
    adata, mu0 = make_adata(random_deltas(["g0", "g1"]))
    model = ControlBaseline().fit(adata)
    pred = model.predict(["g0", "g1+g2"], n_cells=500, seed=0)
    assert list(pred.var_names) == GENES
    assert pred.n_obs == 1000
    assert list(pred.obs["perturbation"].astype(str).unique()) == ["g0", "g1+g2"]
    np.testing.assert_allclose(pred_mean(pred, "g0"), model.control_mean_, atol=0.1)
    means = model.predict(["g0", "g1"], return_mean=True)
    assert means.n_obs == 2
    np.testing.assert_allclose(means.X, np.tile(model.control_mean_, (2, 1)), rtol=1e-6)
    np.testing.assert_allclose(model.control_mean_, mu0, atol=0.1)


def test_mean_baseline_predicts_mean_shift():
    deltas = random_deltas(["g0", "g1", "g2"])
    adata, mu0 = make_adata(deltas, sparse=True)
    model = MeanBaseline().fit(adata)
    expected = np.mean([deltas[k] for k in deltas], axis=0)
    np.testing.assert_allclose(model.mean_delta_, expected, atol=0.05)
    means = model.predict(["g7", "g0"], return_mean=True)
    np.testing.assert_allclose(means.X[0], model.control_mean_ + model.mean_delta_, rtol=1e-5)
    np.testing.assert_allclose(means.X[0], means.X[1], rtol=1e-6)
    control = model.predict("control", return_mean=True)
    np.testing.assert_allclose(control.X[0], model.control_mean_, rtol=1e-6)
    cells = model.predict(["g7"], n_cells=300, seed=0)
    assert isinstance(cells.X, np.ndarray) and cells.X.dtype == np.float32
    np.testing.assert_allclose(pred_mean(cells, "g7"), mu0 + expected, atol=0.1)


def test_additive_baseline_recovers_additive_double():
    deltas = random_deltas(["g0", "g1", "g2"])
    deltas["g3+g0"] = deltas["g0"] + 0.0  # seen double (own observed delta used)
    adata, _ = make_adata(deltas)
    model = AdditiveBaseline().fit(adata)
    d = model.predict_delta(["g1+g0", "g2+g1", "g0+g3", "g4"])
    assert list(d.index) == ["g0+g1", "g1+g2", "g0+g3", "g4"]  # canonical labels
    np.testing.assert_allclose(d.loc["g0+g1"], deltas["g0"] + deltas["g1"], atol=0.05)
    np.testing.assert_allclose(d.loc["g1+g2"], deltas["g1"] + deltas["g2"], atol=0.05)
    np.testing.assert_allclose(d.loc["g0+g3"], deltas["g3+g0"], atol=0.05)
    np.testing.assert_allclose(d.loc["g4"], model.mean_delta_, atol=1e-12)
    # unseen component: mean fallback, zero fallback, or error naming it
    d_mean = model.predict_delta("g0+g9").to_numpy()[0]
    np.testing.assert_allclose(d_mean, model.perturbation_deltas_.loc["g0"] + model.mean_delta_)
    zero = AdditiveBaseline(unseen="zero").fit(adata).predict_delta("g0+g9").to_numpy()[0]
    np.testing.assert_allclose(zero, model.perturbation_deltas_.loc["g0"])
    with pytest.raises(ValueError, match="g9"):
        AdditiveBaseline(unseen="error").fit(adata).predict("g0+g9")
    with pytest.raises(ValueError, match="unseen"):
        AdditiveBaseline(unseen="bogus")


def test_linear_baseline_recovers_heldout_linear_truth():
    rng = np.random.default_rng(5)
    embedding = pd.DataFrame(rng.normal(size=(N_GENES, 3)), index=GENES)
    a = rng.normal(size=(N_GENES, 3)) * 0.5
    c = rng.normal(size=N_GENES) * 0.2

    def truth(targets):
        return a @ embedding.loc[targets].to_numpy().sum(axis=0) + c

    train_labels = [f"g{i}" for i in range(10)]
    adata, _ = make_adata({lab: truth([lab]) for lab in train_labels}, n_per=100, noise=0.05)
    model = LinearBaseline(n_components=5, ridge=1e-3, perturbation_embedding=embedding).fit(adata)
    test = ["g20", "g21", "g22+g23"]
    pred = model.predict_delta(test)
    for label, targets in zip(test, [["g20"], ["g21"], ["g22", "g23"]], strict=True):
        np.testing.assert_allclose(pred.loc[label].to_numpy(), truth(targets), atol=0.1)
    # far better than the mean baseline on held-out perturbations
    mean = MeanBaseline().fit(adata).predict_delta(test).to_numpy()
    truth_m = np.stack([truth(["g20"]), truth(["g21"]), truth(["g22", "g23"])])
    assert np.abs(pred.to_numpy() - truth_m).mean() < 0.2 * np.abs(mean - truth_m).mean()
    # huge ridge shrinks to the mean baseline
    big = LinearBaseline(ridge=1e9, perturbation_embedding=embedding).fit(adata)
    np.testing.assert_allclose(big.predict_delta(test).to_numpy(), mean, atol=1e-4)
    # unknown target in the user embedding raises, naming it
    with pytest.raises(ValueError, match="NOTAGENE"):
        model.predict(["g1", "g2+NOTAGENE"])


def test_linear_baseline_default_coexpression_embedding():
    labels = [f"g{i}" for i in range(8)] + ["g0+g1", "NOTMEASURED"]
    adata, _ = make_adata(random_deltas(labels), n_per=30)
    for gene_embedding in ("training", "coexpression"):
        model = LinearBaseline(n_components=4, gene_embedding=gene_embedding).fit(adata)
        assert model.dropped_perturbations_ == ["NOTMEASURED"]
        assert model.target_embedding_.shape[0] == N_GENES
        out = model.predict(["g30", "g31+g32"], n_cells=10, seed=0)
        assert out.shape == (20, N_GENES)
        assert np.all(np.isfinite(out.X))
        with pytest.raises(ValueError, match="XYZ"):
            model.predict("XYZ")


def test_seeds_deterministic_and_inputs_untouched():
    adata, _ = make_adata(random_deltas(["g0", "g1", "g2"]), sparse=True)
    x_before = adata.X.copy()
    obs_before = adata.obs.copy()
    for cls in (ControlBaseline, MeanBaseline, AdditiveBaseline, LinearBaseline):
        model = cls().fit(adata)
        a = model.predict(["g0", "g1+g2"], n_cells=20, seed=1)
        b = model.predict(["g0", "g1+g2"], n_cells=20, seed=1)
        c = model.predict(["g0", "g1+g2"], n_cells=20, seed=2)
        np.testing.assert_array_equal(a.X, b.X)
        assert not np.array_equal(a.X, c.X)
        d = model.predict(["g0", "g1+g2"], n_cells=20)
        e = model.predict(["g0", "g1+g2"], n_cells=20)
        np.testing.assert_array_equal(d.X, e.X)
    assert (adata.X != x_before).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, obs_before)


def test_train_indices_layer_and_external_controls():
    deltas = random_deltas(["g0", "g1", "g2"])
    adata, _ = make_adata(deltas)
    adata.layers["other"] = adata.X * 2
    labels = adata.obs["perturbation"].to_numpy()
    train = np.flatnonzero(labels != "g2")
    model = MeanBaseline().fit(adata, train_indices=train)
    assert model.training_perturbations_ == ["g0", "g1"]
    np.testing.assert_allclose(model.mean_delta_, (deltas["g0"] + deltas["g1"]) / 2, atol=0.05)
    doubled = ControlBaseline().fit(adata, layer="other")
    np.testing.assert_allclose(doubled.control_mean_, 2 * model.control_mean_, rtol=1e-5)
    ext = adata[labels == "control"].copy()
    ext.X = ext.X + 10
    shifted = ControlBaseline().fit(adata).predict("g0", n_cells=50, adata=ext)
    assert shifted.X.mean() > 10
    with pytest.raises(ValueError, match="boolean"):
        MeanBaseline().fit(adata, train_indices=labels != "g2")
    with pytest.raises(ValueError, match="control"):
        MeanBaseline().fit(adata, control_label="ctrl")
    with pytest.raises(RuntimeError, match="fit"):
        MeanBaseline().predict("g0")


def test_baseline_output_scores_with_evaluate():
    from sccvae.metrics import evaluate

    deltas = random_deltas(["g0", "g1", "g2", "g3"])
    adata, _ = make_adata(deltas)
    labels = adata.obs["perturbation"].to_numpy()
    model = AdditiveBaseline().fit(adata)
    pred = model.predict(["g0", "g1", "g2", "g3"], n_cells=100, seed=0)
    observed = adata[labels != "control"].copy()
    control = adata[labels == "control"].copy()
    table = evaluate(pred, observed, control)
    assert (table["pearson_delta_all"] > 0.95).all()
    assert (table["rank"] == 0).all()


def test_linear_ridge_auto_holds_out_perturbations_exactly():
    from sccvae.baselines._linear import _held_out_deltas

    labels = [f"g{i}" for i in range(12)] + ["g0+g1"]
    adata, _ = make_adata(random_deltas(labels), n_per=30)
    cell_labels = adata.obs["perturbation"].to_numpy()
    lambdas = np.array([0.1, 10.0, 1000.0])
    for gene_embedding in ("training", "coexpression"):
        model = LinearBaseline(n_components=4, gene_embedding=gene_embedding).fit(adata)
        y = model.perturbation_deltas_.loc[model.fitted_perturbations_].to_numpy().T
        p = model._embed([model._targets(q) for q in model.fitted_perturbations_])
        basis = (
            None
            if gene_embedding == "training"
            else np.linalg.svd(model.gene_embedding_, full_matrices=False)[:2]
        )
        for i in (0, 12):  # a single and the combination
            label = model.fitted_perturbations_[i]
            held_out = _held_out_deltas(y, p, i, lambdas, 4, basis, y.T @ y)
            for lam, predicted in zip(lambdas, held_out, strict=True):
                refit = LinearBaseline(
                    n_components=4, gene_embedding=gene_embedding, ridge=lam
                ).fit(adata, train_indices=np.flatnonzero(cell_labels != label))
                np.testing.assert_allclose(
                    predicted, refit.predict_delta(label).to_numpy()[0], atol=1e-10
                )


def test_linear_ridge_auto_avoids_interpolating_a_simulated_screen():
    from sccvae.baselines._linear import RIDGE_GRID
    from sccvae.data import simulate_perturbseq
    from sccvae.metrics import pearson

    adata = simulate_perturbseq(
        n_genes=300, n_perturbations=40, n_cells_per_perturbation=40, n_control_cells=500, seed=1
    )
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    test = sorted(set(labels) - {"control"})[::4]
    train = np.flatnonzero(~np.isin(labels, test))
    observed = MeanBaseline().fit(adata).perturbation_deltas_

    def held_out_r(model):
        predicted = model.predict_delta(test)
        return np.mean([pearson(predicted.loc[t], observed.loc[t]) for t in test])

    fixed = LinearBaseline(ridge=0.1).fit(adata, train_indices=train)
    assert fixed.ridge_ == 0.1 and fixed.ridge_scores_ == {}
    auto = LinearBaseline().fit(adata, train_indices=train)
    assert set(auto.ridge_scores_) == set(RIDGE_GRID)
    assert auto.ridge_ > 0.1
    assert auto.ridge_scores_[auto.ridge_] == max(auto.ridge_scores_.values())
    assert auto.ridge_scores_[auto.ridge_] > auto.ridge_scores_[0.1] + 0.05
    # the chosen penalty predicts the held-out test perturbations better than the paper's
    assert held_out_r(auto) > held_out_r(fixed) + 0.02
    # the chosen penalty is the one a fixed penalty of that value fits
    same = LinearBaseline(ridge=auto.ridge_).fit(adata, train_indices=train)
    np.testing.assert_allclose(same.predict_delta(test), auto.predict_delta(test))
    with pytest.raises(ValueError, match="ridge"):
        LinearBaseline(ridge="lots")
    with pytest.raises(ValueError, match="ridge"):
        LinearBaseline(ridge=-1.0)


def _all_baselines():
    from sccvae.baselines import (
        CoexpressionBaseline,
        KnnBaseline,
        MeanTargetBaseline,
        MultiregBaseline,
    )

    return [
        ControlBaseline,
        MeanBaseline,
        MeanTargetBaseline,
        MultiregBaseline,
        AdditiveBaseline,
        LinearBaseline,
        CoexpressionBaseline,
        KnnBaseline,
    ]


def _knocked_down(floor_at_zero: bool):
    """Four knock-downs of their own gene that all take g5 down too (clipped at 0 or not)."""
    deltas = random_deltas(["g0", "g1", "g2", "g3"], scale=0.3)
    for i, delta in enumerate(deltas.values()):
        delta[[i, 5]] = -4.0
    adata, _ = make_adata(deltas, n_per=60)
    if floor_at_zero:  # log-normalised data: no cell goes below zero
        adata.X = np.maximum(adata.X, 0)
    return adata


@pytest.mark.parametrize("cls", _all_baselines(), ids=lambda c: c.__name__)
def test_predicted_cells_clipped_at_the_floor_of_non_negative_data(cls):
    adata = _knocked_down(floor_at_zero=True)
    model = cls().fit(adata)
    assert model.expression_floor_ == 0.0
    labels = ["g0", "g4"] if cls is not AdditiveBaseline else ["g0", "g1+g2"]
    clipped = model.predict(labels, n_cells=50, seed=0).X
    raw = model.predict(labels, n_cells=50, seed=0, clip=False).X
    assert clipped.min() >= 0
    np.testing.assert_array_equal(clipped, np.maximum(raw, 0))
    if cls is not ControlBaseline:  # every other one shifts genes down by about their level
        assert (raw < 0).any()
    # the means stay control mean + delta (not clipped)
    means = model.predict(labels, return_mean=True).X
    np.testing.assert_allclose(means, model.control_mean_ + model.predict_delta(labels), rtol=1e-5)


def test_predictions_unchanged_when_nothing_to_clip():
    adata, _ = make_adata(random_deltas(["g0", "g1", "g2"], scale=0.2))
    adata.X = sp.csr_matrix(adata.X + 3)  # far from zero: no shift reaches it
    assert adata.X.min() > 0
    for cls in _all_baselines():
        model = cls().fit(adata)
        assert model.expression_floor_ == 0.0
        clipped = model.predict(["g0", "g4"], n_cells=30, seed=3).X
        raw = model.predict(["g0", "g4"], n_cells=30, seed=3, clip=False).X
        np.testing.assert_array_equal(clipped, raw)


def test_no_clipping_on_data_with_negative_values():
    adata = _knocked_down(floor_at_zero=False)
    x = np.asarray(adata.X)
    adata.X = (x - x.mean(axis=0)) / x.std(axis=0)  # z-scored: negative values are real
    for cls in (MeanBaseline, LinearBaseline):
        model = cls().fit(adata)
        assert model.expression_floor_ is None
        clipped = model.predict(["g0", "g4"], n_cells=30, seed=0).X
        raw = model.predict(["g0", "g4"], n_cells=30, seed=0, clip=False).X
        np.testing.assert_array_equal(clipped, raw)
        assert clipped.min() < 0
