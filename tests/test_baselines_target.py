"""The baselines that move the measured target genes: mean_target and multireg."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from sccvae.baselines import MeanBaseline, MeanTargetBaseline, MultiregBaseline
from sccvae.baselines._base import validation_score
from sccvae.baselines._target import DEFAULT_RELATIVE_RIDGE, RELATIVE_RIDGE_GRID

GENES = ["t0", "t1", "u", "v", "g", "h", "w", "z"]
COL = {g: i for i, g in enumerate(GENES)}


def target_data(seed=0, n_ctrl=3000, n_per=200, sparse=False):
    """Cells in which g = 2 u and v = u (plus noise); t0, t1, h, w, z are independent.

    Training perturbations: t0 (own change -1, moves w), t1 (own change -2, moves h), the
    unmeasured X (moves z) and the combination t0+t1. u, v and g are never perturbed.
    """
    rng = np.random.default_rng(seed)
    base = np.full(len(GENES), 3.0)

    def cells(n, shift):
        x = base + rng.normal(0, 0.3, (n, len(GENES)))
        x[:, COL["u"]] += rng.normal(0, 0.5, n)
        x[:, COL["v"]] += x[:, COL["u"]] - base[COL["u"]]
        x[:, COL["g"]] += 2.0 * (x[:, COL["u"]] - base[COL["u"]])
        return x + shift

    def shift(**changes):
        out = np.zeros(len(GENES))
        for gene, change in changes.items():
            out[COL[gene]] = change
        return out

    shifts = {
        "t0": shift(t0=-1.0, w=0.5),
        "t1": shift(t1=-2.0, h=0.8),
        "X": shift(z=1.0),
        "t0+t1": shift(t0=-1.0, t1=-2.0, w=0.5, h=0.8),
    }
    blocks, labels = [cells(n_ctrl, 0.0)], ["control"] * n_ctrl
    for label, change in shifts.items():
        blocks.append(cells(n_per, change))
        labels += [label] * n_per
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    x = np.vstack(blocks).astype(np.float32)
    return AnnData(sp.csr_matrix(x) if sparse else x, obs=obs, var=pd.DataFrame(index=GENES))


def test_mean_target_moves_measured_targets_by_the_mean_own_change():
    adata = target_data()
    model = MeanTargetBaseline().fit(adata)
    deltas = model.perturbation_deltas_
    # single perturbations of measured targets only: t0 and t1 (not X, not t0+t1)
    own = np.mean([deltas.at["t0", "t0"], deltas.at["t1", "t1"]])
    assert model.own_change_ == pytest.approx(own, rel=1e-12)
    assert model.own_change_ == pytest.approx(-1.5, abs=0.05)
    mean = MeanBaseline().fit(adata).mean_delta_
    predicted = model.predict_delta(["u", "v+u", "u+NOTAGENE", "NOTAGENE", "control"])
    expected_u = mean.copy()
    expected_u[COL["u"]] = own
    np.testing.assert_allclose(predicted.loc["u"], expected_u, rtol=1e-12)
    # a combination sets every measured target; an unmeasured one leaves the mean
    expected_uv = expected_u.copy()
    expected_uv[COL["v"]] = own
    np.testing.assert_allclose(predicted.loc["u+v"], expected_uv, rtol=1e-12)
    np.testing.assert_allclose(predicted.loc["NOTAGENE+u"], expected_u, rtol=1e-12)
    np.testing.assert_allclose(predicted.loc["NOTAGENE"], mean, rtol=1e-12)
    np.testing.assert_array_equal(predicted.loc["control"], 0.0)
    # a seen target is moved the same way: the rule does not look up its own change
    expected_t0 = mean.copy()
    expected_t0[COL["t0"]] = own
    np.testing.assert_allclose(model.predict_delta("t0").iloc[0], expected_t0, rtol=1e-12)


def test_without_measured_single_targets_both_are_the_mean_baseline():
    adata = target_data()
    renamed = {"t0": "A", "t1": "B", "t0+t1": "A+B"}
    adata.obs["perturbation"] = adata.obs["perturbation"].replace(renamed)
    mean = MeanBaseline().fit(adata).predict_delta(["u", "u+v", "A"]).to_numpy()
    for cls in (MeanTargetBaseline, MultiregBaseline):
        model = cls().fit(adata)
        assert np.isnan(model.own_change_)
        np.testing.assert_allclose(model.predict_delta(["u", "u+v", "A"]).to_numpy(), mean)
    assert MultiregBaseline().fit(adata).ridge_ == DEFAULT_RELATIVE_RIDGE


def test_multireg_recovers_a_linear_dependence_in_controls():
    adata = target_data()
    # the training targets t0 and t1 have no partners, so ridge="auto" shrinks a lot (rightly,
    # for them); a small fixed penalty shows the slopes
    model = MultiregBaseline(ridge=1e-3).fit(adata)
    assert model.measured_targets_ == ["t0", "t1"]
    own, mean = model.own_change_, model.mean_delta_
    change = model.predict_delta("u").iloc[0].to_numpy() - mean
    assert change[COL["u"]] + mean[COL["u"]] == pytest.approx(own, rel=1e-12)
    # g = 2 u and v = u in control cells: both follow u; the others do not
    assert change[COL["g"]] == pytest.approx(2 * own, rel=0.05)
    assert change[COL["v"]] == pytest.approx(own, rel=0.05)
    for gene in ("t0", "t1", "h", "w", "z"):
        assert abs(change[COL[gene]]) < 0.05, gene


def test_multireg_regresses_on_all_targets_jointly():
    adata = target_data()
    model = MultiregBaseline(ridge=1e-3).fit(adata)
    own, mean = model.own_change_, model.mean_delta_
    # alone, v stands in for u: g = 2 u = 2 (v - noise), slope 2 var(u) / (var(u) + 0.09)
    alone = model.coefficients("v").loc["v", "g"]
    assert alone == pytest.approx(2 * 0.34 / 0.43, rel=0.05)
    # with u a regressor too, holding u fixed v tells nothing about g
    joint = model.coefficients(["u", "v"])
    assert joint.loc["u", "g"] == pytest.approx(2.0, rel=0.05)
    assert abs(joint.loc["v", "g"]) < 0.05
    combination = model.predict_delta("u+v").iloc[0].to_numpy() - mean
    assert combination[COL["g"]] == pytest.approx(2 * own, rel=0.05)
    assert combination[COL["u"]] + mean[COL["u"]] == pytest.approx(own, rel=1e-12)
    assert combination[COL["v"]] + mean[COL["v"]] == pytest.approx(own, rel=1e-12)
    # a combination adds its targets' rows on top of the mean
    expected = mean + own * joint.to_numpy().sum(axis=0)
    expected[[COL["u"], COL["v"]]] = own
    np.testing.assert_allclose(model.predict_delta("u+v").iloc[0], expected, rtol=1e-10)


def test_multireg_coefficients_are_the_documented_ridge_regression():
    adata = target_data(n_ctrl=500)
    labels = adata.obs["perturbation"].to_numpy()
    controls = np.asarray(adata.X[labels == "control"], dtype=np.float64)
    centred = controls - controls.mean(axis=0)
    covariance = centred.T @ centred / (controls.shape[0] - 1)
    alpha = 0.3
    model = MultiregBaseline(ridge=alpha).fit(adata)
    penalty = alpha * np.mean([covariance[COL["t0"], COL["t0"]], covariance[COL["t1"], COL["t1"]]])
    for targets in (["t1"], ["u"], ["v", "t0", "u"]):
        regressors = [COL[t] for t in dict.fromkeys(["t0", "t1", *targets])]
        s = covariance[np.ix_(regressors, regressors)]
        beta = np.linalg.solve(s + penalty * np.eye(len(regressors)), covariance[regressors])
        expected = beta[[regressors.index(COL[t]) for t in targets]]
        np.testing.assert_allclose(model.coefficients(targets).to_numpy(), expected, atol=1e-10)
    with pytest.raises(ValueError, match=r"NOTAGENE.*not measured"):
        model.coefficients(["u", "NOTAGENE"])


def test_multireg_ridge_auto_is_leave_one_perturbation_out():
    adata = target_data(n_ctrl=500)
    labels = adata.obs["perturbation"].to_numpy()
    model = MultiregBaseline().fit(adata)
    assert set(model.ridge_scores_) == set(RELATIVE_RIDGE_GRID)
    assert model.ridge_scores_[model.ridge_] == max(model.ridge_scores_.values())
    # t0+t1 keeps both targets regressors when t0 or t1 is held out, so each held-out
    # prediction is exactly that of a model fitted without the held-out perturbation
    for alpha in (1e-3, 0.3):
        scores = []
        for held_out in ("t0", "t1"):
            refit = MultiregBaseline(ridge=alpha).fit(
                adata, train_indices=np.flatnonzero(labels != held_out)
            )
            predicted = refit.predict_delta(held_out).iloc[0].to_numpy()
            observed = model.perturbation_deltas_.loc[held_out].to_numpy()
            scores.append(validation_score(predicted, observed, [COL[held_out]]))
        assert model.ridge_scores_[alpha] == pytest.approx(np.mean(scores), rel=1e-9)


def test_fit_leaves_input_alone_and_uses_only_training_cells():
    dense = target_data(n_ctrl=600)
    adata = target_data(n_ctrl=600, sparse=True)
    before = adata.copy()
    labels = adata.obs["perturbation"].to_numpy()
    # half the control cells and all of X are outside the training cells
    train = np.flatnonzero((labels != "X") & (np.arange(adata.n_obs) % 2 == 0))
    fitted = [
        cls().fit(adata, train_indices=train) for cls in (MeanTargetBaseline, MultiregBaseline)
    ]
    assert (adata.X != before.X).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    # cells outside the training cells can be anything: the fit does not change
    scrambled = adata.copy()
    outside = np.setdiff1d(np.arange(adata.n_obs), train)
    x = scrambled.X.toarray()
    x[outside] = np.random.default_rng(1).normal(5, 3, (outside.size, len(GENES)))
    scrambled.X = sp.csr_matrix(x)
    for model in fitted:
        again = type(model)().fit(scrambled, train_indices=train)
        same_dense = type(model)().fit(dense, train_indices=train)
        assert again.training_perturbations_ == ["t0", "t0+t1", "t1"]
        assert again.own_change_ == model.own_change_
        for other in (again, same_dense):
            np.testing.assert_allclose(
                other.predict_delta(["u", "u+v", "X"]),
                model.predict_delta(["u", "u+v", "X"]),
                rtol=1e-6,
                atol=1e-8,
            )
    cells = fitted[1].predict(["u+v"], n_cells=20, seed=0)
    assert cells.n_obs == 20 and set(cells.obs["control_cell"]) <= set(adata.obs_names[train])


def test_errors():
    with pytest.raises(ValueError, match="ridge"):
        MultiregBaseline(ridge="lots")
    with pytest.raises(ValueError, match="ridge"):
        MultiregBaseline(ridge=-0.1)
    with pytest.raises(RuntimeError, match="fit"):
        MultiregBaseline().coefficients("u")


def test_registered_and_run_by_the_benchmark():
    from sccvae.benchmark import DEFAULT_METHODS, run_benchmark

    unseen = DEFAULT_METHODS["unseen"]
    assert unseen.index("mean_target") == unseen.index("mean") + 1
    assert unseen.index("multireg") == unseen.index("mean") + 2
    result = run_benchmark(
        split="unseen",
        n_folds=2,
        methods="mean,mean_target,multireg",
        simulate_kwargs=dict(
            n_genes=100, n_perturbations=10, n_cells_per_perturbation=30, n_control_cells=200
        ),
        n_cells=30,
        progress=False,
    )
    assert result.methods == ["mean", "mean_target", "multireg"]
    by_method = result.results.set_index(["method", "perturbation"])["pearson_delta_all"]
    assert by_method.notna().all()
    # knowing that the target goes down beats the mean on the simulated knock-downs
    assert by_method["mean_target"].mean() > by_method["mean"].mean()
