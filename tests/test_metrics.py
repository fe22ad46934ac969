from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from sccvae.metrics import (
    METRICS,
    energy_distance,
    evaluate,
    fit_pca,
    mean_of_perturbation_means,
    mmd,
    paired_test,
    pearson,
    summarize,
    win_rate,
)

N_GENES = 30


def obs_frame(labels):
    labels = list(labels)
    return pd.DataFrame({"perturbation": labels}, index=[f"cell{i}" for i in range(len(labels))])


def make_data(seed=0, n_cells=80, n_ctrl=200):
    """Controls, observed test cells of 4 perturbations, training cells of 4 others."""
    rng = np.random.default_rng(seed)
    mu0 = rng.uniform(1, 3, N_GENES)
    genes = [f"g{i}" for i in range(N_GENES)]

    def cells(shift, n):
        return (mu0 + shift + rng.normal(scale=0.3, size=(n, N_GENES))).astype(np.float32)

    def block(labels_shifts, n):
        xs, labs = [], []
        for lab, shift in labels_shifts.items():
            xs.append(cells(shift, n))
            labs += [lab] * n
        return np.vstack(xs), labs

    test_shifts = {}
    for i, lab in enumerate(["g0", "g1", "g2+g3", "g5"]):
        shift = np.zeros(N_GENES)
        shift[rng.choice(N_GENES, 6, replace=False)] = rng.normal(scale=1.5, size=6)
        shift[i] = -1.0
        test_shifts[lab] = shift
    x, labs = block(test_shifts, n_cells)
    observed = AnnData(X=x, obs=obs_frame(labs), var=pd.DataFrame(index=genes))
    observed.obs_names = [f"o{i}" for i in range(observed.n_obs)]
    control = AnnData(
        X=cells(np.zeros(N_GENES), n_ctrl),
        obs=obs_frame(["control"] * n_ctrl),
        var=pd.DataFrame(index=genes),
    )
    control.obs_names = [f"c{i}" for i in range(control.n_obs)]
    train_shifts = {f"t{i}": rng.normal(scale=0.5, size=N_GENES) + 0.4 for i in range(4)}
    xt, labt = block(train_shifts, n_cells)
    train = AnnData(X=xt, obs=obs_frame(labt), var=pd.DataFrame(index=genes))
    train.obs_names = [f"t{i}" for i in range(train.n_obs)]
    return observed, control, train, mu0, test_shifts


def test_perfect_prediction():
    observed, control, train, _, _ = make_data()
    pred = observed.copy()
    table = evaluate(pred, observed, control)
    assert list(table.index) == ["g0", "g1", "g2+g3", "g5"]
    assert set(METRICS) <= set(table.columns)
    np.testing.assert_allclose(table["mse_all"], 0, atol=1e-12)
    np.testing.assert_allclose(table["mse_de"], 0, atol=1e-12)
    np.testing.assert_allclose(table["pearson_delta_all"], 1, atol=1e-9)
    np.testing.assert_allclose(table["pearson_delta_all_notarget"], 1, atol=1e-9)
    np.testing.assert_allclose(table["pearson_delta_de"], 1, atol=1e-9)
    np.testing.assert_allclose(table["pearson_delta_de_notarget"], 1, atol=1e-9)
    np.testing.assert_allclose(table["direction_accuracy_de"], 1)
    np.testing.assert_allclose(table["direction_accuracy_all"], 1)
    np.testing.assert_allclose(table["rank"], 0)
    np.testing.assert_allclose(table["energy_distance"], 0, atol=1e-9)
    np.testing.assert_allclose(table["mmd"], 0, atol=1e-9)
    assert table["pearson_delta_pertmean_all"].isna().all()
    assert (table["n_de_genes_used"] == 20).all()


def test_sparse_input_reordered_genes_and_label_order():
    observed, control, _, _, _ = make_data()
    dense = evaluate(observed.copy(), observed, control)
    obs_sparse = observed.copy()
    obs_sparse.X = sp.csr_matrix(obs_sparse.X)
    pred = observed[:, observed.var_names[::-1]].copy()
    labs = pred.obs["perturbation"].astype(str).replace({"g2+g3": "g3+g2"})
    pred.obs["perturbation"] = labs.to_numpy()
    table = evaluate(pred, obs_sparse, control)
    pd.testing.assert_frame_equal(dense, table, atol=1e-9)


def test_notarget_excludes_targets():
    observed, control, _, _, _ = make_data()
    pred = observed.copy()
    # wreck the target gene of g0 only in the prediction: D' metrics should stay perfect
    x = pred.X.copy()
    rows = np.flatnonzero(pred.obs["perturbation"].to_numpy() == "g0")
    x[rows, 0] += 5
    pred.X = x
    table = evaluate(pred, observed, control, n_de_genes=10)
    assert table.loc["g0", "mse_de"] > 0
    assert table.loc["g0", "mse_de_notarget"] == pytest.approx(0, abs=1e-12)
    assert table.loc["g0", "pearson_delta_de_notarget"] == pytest.approx(1)
    assert table.loc["g0", "pearson_delta_all"] < 0.9
    assert table.loc["g0", "pearson_delta_all_notarget"] == pytest.approx(1)


def test_all_genes_notarget_ignores_a_prediction_of_the_targets_alone():
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(N_GENES)]
    control = AnnData(
        X=rng.normal(2.0, 0.3, (200, N_GENES)).astype(np.float32),
        obs=obs_frame(["control"] * 200),
        var=pd.DataFrame(index=genes),
    )
    # the targets fall by 3; ten other genes move by up to 0.3
    shift = {"g0": np.zeros(N_GENES), "g1+g2": np.zeros(N_GENES)}
    shift["g0"][0] = shift["g1+g2"][1] = shift["g1+g2"][2] = -3.0
    for change in shift.values():
        change[10:20] = rng.uniform(-0.3, 0.3, 10)
    observed = AnnData(
        X=np.vstack([rng.normal(2.0 + s, 0.3, (100, N_GENES)) for s in shift.values()]).astype(
            np.float32
        ),
        obs=obs_frame(np.repeat(list(shift), 100)),
        var=pd.DataFrame(index=genes),
    )
    mu0 = np.asarray(control.X, dtype=np.float64).mean(axis=0)
    targets_only = np.tile(mu0, (2, 1))
    targets_only[[0, 1, 1], [0, 1, 2]] -= 3.0
    noise = rng.normal(0, 0.01, (2, N_GENES))

    def score(x):
        pred = AnnData(X=x, obs=obs_frame(list(shift)), var=pd.DataFrame(index=genes))
        return evaluate(pred, observed, control, distribution_metrics=False, de_metrics=False)

    table = score(targets_only)
    assert (table["pearson_delta_all"] > 0.9).all()
    assert table["pearson_delta_all_notarget"].isna().all()  # no other gene moves: constant
    table = score(targets_only + noise)  # other genes move, at random
    assert (table["pearson_delta_all"] > 0.9).all()
    assert (table["pearson_delta_all_notarget"].abs() < 0.5).all()
    perfect = targets_only.copy()
    perfect[:, 10:20] += np.stack([shift[p][10:20] for p in shift])
    table = score(perfect + noise / 100)
    assert (table["pearson_delta_all_notarget"] > 0.9).all()


def test_control_prediction_and_mean_baseline():
    observed, control, train, mu0, _ = make_data()
    perts = ["g0", "g1", "g2+g3", "g5"]
    ctrl_mean = np.asarray(control.X, dtype=np.float64).mean(axis=0)
    # control mean as prediction: constant delta -> NaN pearson_delta
    pred = AnnData(X=np.tile(ctrl_mean, (4, 1)), obs=obs_frame(perts), var=observed.var.copy())
    table = evaluate(pred, observed, control)
    assert table["pearson_delta_all"].isna().all()
    assert table["pearson_delta_de"].isna().all()
    assert (table["direction_accuracy_all"] == 0).all()  # "no change" is never the right sign
    assert table["energy_distance"].isna().all()  # one row per perturbation: no distribution
    assert (table["pearson_means_all"] > 0.5).all()  # raw means correlate anyway

    # mean baseline: training perturbation mean + control noise -> pearson_delta_pertmean ~ 0
    pert_mean = mean_of_perturbation_means(train)
    rng = np.random.default_rng(1)
    ctrl_cells = np.asarray(control.X, dtype=np.float64)
    xs = [
        ctrl_cells[rng.choice(control.n_obs, 100)] - ctrl_mean + pert_mean.to_numpy()
        for _ in perts
    ]
    pred_cells = AnnData(
        X=np.vstack(xs).astype(np.float32),
        obs=obs_frame(np.repeat(perts, 100)),
        var=observed.var.copy(),
    )
    table = evaluate(pred_cells, observed, control, training_perturbation_mean=pert_mean)
    assert table["pearson_delta_pertmean_all"].abs().mean() < 0.35
    exact = AnnData(
        X=np.tile(pert_mean.to_numpy(), (4, 1)),
        obs=obs_frame(perts),
        var=observed.var.copy(),
    )
    table = evaluate(exact, observed, control, training_perturbation_mean=pert_mean.to_numpy())
    assert table["pearson_delta_pertmean_all"].isna().all()


def test_rank_detects_swapped_predictions():
    observed, control, _, _, _ = make_data()
    pred = observed.copy()
    lab = pred.obs["perturbation"].astype(str).to_numpy()
    swapped = np.where(lab == "g0", "g1", np.where(lab == "g1", "g0", lab))
    pred.obs["perturbation"] = swapped
    table = evaluate(pred, observed, control, distribution_metrics=False)
    assert table.loc["g0", "rank"] > 0 and table.loc["g1", "rank"] > 0
    assert table.loc["g5", "rank"] == 0
    assert table["energy_distance"].isna().all()


def test_energy_distance_and_mmd_grow_with_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    assert energy_distance(x, x) == pytest.approx(0, abs=1e-12)
    assert mmd(x, x) == pytest.approx(0, abs=1e-12)
    values = [energy_distance(x, rng.normal(size=(200, 5)) + s) for s in (0.0, 0.5, 2.0)]
    assert values[0] < values[1] < values[2]
    mmds = [mmd(x, rng.normal(size=(200, 5)) + s) for s in (0.0, 0.5, 2.0)]
    assert mmds[0] < mmds[1] < mmds[2]


def test_distribution_metrics_use_pca_and_are_seeded():
    observed, control, train, _, _ = make_data()
    pred = observed.copy()
    x = pred.X.copy()
    x[pred.obs["perturbation"].to_numpy() == "g5"] += 0.5
    pred.X = x
    pca = fit_pca(train, n_components=10)
    a = evaluate(pred, observed, control, pca=pca, n_cells=50, seed=3)
    b = evaluate(pred, observed, control, pca=pca, n_cells=50, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a.loc["g5", "energy_distance"] > a.loc["g0", "energy_distance"]
    from sklearn.decomposition import PCA

    sk = PCA(n_components=5).fit(np.asarray(train.X))
    c = evaluate(pred, observed, control, pca=sk)
    assert c.loc["g5", "energy_distance"] > c.loc["g1", "energy_distance"]
    with pytest.raises(ValueError, match="genes"):
        evaluate(pred, observed, control, pca=(np.zeros(3), np.zeros((2, 3))))


def test_inputs_untouched_and_errors():
    observed, control, _, _, _ = make_data()
    pred = observed.copy()
    x_before = observed.X.copy()
    obs_before = observed.obs.copy()
    evaluate(pred, observed, control)
    np.testing.assert_array_equal(observed.X, x_before)
    pd.testing.assert_frame_equal(observed.obs, obs_before)
    with pytest.raises(ValueError, match="No perturbation"):
        bad = pred.copy()
        bad.obs["perturbation"] = "zzz"
        evaluate(bad, observed, control)
    with pytest.raises(ValueError, match="missing"):
        evaluate(pred[:, :10].copy(), observed, control)
    with pytest.warns(UserWarning, match="no prediction"):
        part = pred[pred.obs["perturbation"] != "g5"].copy()
        evaluate(part, observed, control)


def test_pearson_and_win_rate():
    assert np.isnan(pearson(np.ones(5), np.arange(5)))
    assert pearson(np.arange(5), 2 * np.arange(5.0) + 1) == pytest.approx(1)
    assert win_rate(
        np.array([1, 2, 3]), np.array([2, 2, 1]), higher_is_better=True
    ) == pytest.approx((0 + 0.5 + 1) / 3)
    assert win_rate(
        np.array([1, 2, 3]), np.array([2, 2, 1]), higher_is_better=False
    ) == pytest.approx((1 + 0.5 + 0) / 3)


def test_summarize_bookkeeping():
    idx = pd.Index(["a", "b", "c", "d"], name="perturbation")
    ref = pd.DataFrame(
        {"mse_all": [0.1, 0.2, 0.3, 0.4], "pearson_delta_all": [0.9, 0.5, 0.5, np.nan]}, index=idx
    )
    other = pd.DataFrame(
        {"mse_all": [0.2, 0.2, 0.1, 0.5], "pearson_delta_all": [0.1, 0.6, 0.5, 0.3]},
        index=idx[::-1][::-1],
    )
    out = summarize({"ref": ref, "other": other}, reference="ref", n_bootstrap=500, seed=0)
    row = out.set_index(["method", "metric"])
    # mse (lower better): ref wins a, d; tie b; loses c -> (2 + 0.5) / 4
    assert row.loc[("other", "mse_all"), "reference_win_rate"] == pytest.approx(2.5 / 4)
    # pearson (higher better), d dropped (NaN in ref): wins a, loses b, tie c -> 1.5 / 3
    assert row.loc[("other", "pearson_delta_all"), "reference_win_rate"] == pytest.approx(1.5 / 3)
    assert row.loc[("other", "pearson_delta_all"), "n_paired"] == 3
    assert np.isnan(row.loc[("ref", "mse_all"), "reference_win_rate"])
    assert row.loc[("ref", "pearson_delta_all"), "n"] == 3
    for _, r in out.iterrows():
        assert r["ci_low"] <= r["mean"] <= r["ci_high"]
    again = summarize({"ref": ref, "other": other}, reference="ref", n_bootstrap=500, seed=0)
    pd.testing.assert_frame_equal(out, again)
    with pytest.raises(ValueError, match="Unknown metric"):
        summarize({"ref": ref}, metrics=["nope"])
    with pytest.raises(ValueError, match="Reference"):
        summarize({"ref": ref}, reference="x")


def test_summarize_p_values_are_scipys_wilcoxon_on_the_same_pairs():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(3)
    idx = pd.Index([f"p{i}" for i in range(12)], name="perturbation")
    ref = pd.DataFrame({"mse_all": rng.uniform(0, 1, 12), "de_overlap": 0.0}, index=idx)
    other = pd.DataFrame({"mse_all": rng.uniform(0, 1, 12), "de_overlap": 0.0}, index=idx)
    other.loc[["p0", "p5"], "mse_all"] = np.nan  # dropped pairs
    ref.loc["p7", "mse_all"] = np.nan
    ref.loc["p3", "mse_all"] = other.loc["p3", "mse_all"]  # one equal pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all-equal pairs neither warn nor raise
        out = summarize({"ref": ref, "other": other}, reference="ref", n_bootstrap=10)
    row = out.set_index(["method", "metric"]).loc[("other", "mse_all")]
    keep = ref["mse_all"].notna() & other["mse_all"].notna()
    assert row["n_paired"] == keep.sum() == 9
    expected = wilcoxon(ref.loc[keep, "mse_all"], other.loc[keep, "mse_all"]).pvalue
    assert row["reference_p_value"] == pytest.approx(expected, rel=1e-12)
    assert np.isnan(
        out.set_index(["method", "metric"]).loc[("ref", "mse_all"), "reference_p_value"]
    )
    # every pair equal (every method at a DE overlap of 0): p = 1, no warning, no error
    tie = out.set_index(["method", "metric"]).loc[("other", "de_overlap")]
    assert tie["reference_p_value"] == 1.0 and tie["reference_rank_biserial"] == 0.0
    assert tie["reference_win_rate"] == 0.5 and tie["n_paired"] == 12


def test_paired_test_exact_p_values_and_direction():
    from scipy.stats import wilcoxon

    better = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    worse = better - np.array([0.1, 0.2, 0.05, 0.3, 0.15, 0.25])
    # all 6 pairs favour the reference: the exact two-sided p is 2 / 2**6
    assert paired_test(better, worse, higher_is_better=True) == (pytest.approx(2 / 64), 1.0)
    # lower is better: the same pairs favour the other method
    p, effect = paired_test(better, worse, higher_is_better=False)
    assert p == pytest.approx(2 / 64) and effect == -1.0
    # with 5 pairs even a clean sweep cannot reach p < 0.05
    assert paired_test(better[:5], worse[:5], True)[0] == pytest.approx(2 / 32)
    mixed = worse.copy()
    mixed[[1, 3]] = better[[1, 3]] + 0.1
    p, effect = paired_test(better, mixed, True)
    assert p == pytest.approx(wilcoxon(better, mixed).pvalue) and p > 0.05
    assert -1 < effect < 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert paired_test(np.zeros(4), np.zeros(4), True) == (1.0, 0.0)
        assert paired_test(np.ones(7), np.ones(7), False) == (1.0, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        paired_test(np.array([1.0, np.nan]), np.array([1.0, 2.0]), True)
    with pytest.raises(ValueError, match="equal shape"):
        paired_test(np.zeros(0), np.zeros(0), True)


def test_bootstrap_ci_contains_mean_on_real_table():
    observed, control, _, _, _ = make_data()
    pred = observed.copy()
    pred.X = pred.X + np.random.default_rng(0).normal(scale=0.2, size=pred.shape).astype(
        np.float32
    )
    table = evaluate(pred, observed, control)
    out = summarize({"m": table}, n_bootstrap=200)
    assert set(out["metric"]) <= set(METRICS)
    ok = out.dropna(subset=["ci_low"])
    assert ((ok["ci_low"] <= ok["mean"]) & (ok["mean"] <= ok["ci_high"])).all()
