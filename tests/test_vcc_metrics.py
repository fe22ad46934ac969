"""Virtual Cell Challenge metrics, the source-cell reference of a predicted change, cell-eval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from sccvae.baselines import AdditiveBaseline
from sccvae.metrics import evaluate

G = 40
GENES = [f"g{i}" for i in range(G)]


def cells_adata(blocks: dict[str, np.ndarray], prefix: str) -> AnnData:
    labels = [label for label, x in blocks.items() for _ in range(x.shape[0])]
    obs = pd.DataFrame(
        {"perturbation": pd.Categorical(labels)}, index=[f"{prefix}{i}" for i in range(len(labels))]
    )
    return AnnData(
        np.vstack(list(blocks.values())).astype(np.float32), obs=obs, var=pd.DataFrame(index=GENES)
    )


def test_discrimination_score_by_construction():
    rng = np.random.default_rng(0)
    control = cells_adata({"control": 1.0 + rng.normal(0, 0.01, (50, G))}, "c")
    change = {p: np.zeros(G) for p in ("A", "B", "C")}
    change["A"][10:15], change["B"][20:25], change["C"][30:35] = 1.0, -1.0, 2.0
    observed = cells_adata({p: 1.0 + v + rng.normal(0, 0.01, (30, G)) for p, v in change.items()}, "o")
    mu0 = control.X.mean(axis=0)
    # A is predicted as B's change: B's observed change is the closest, its own the second
    predicted_changes = {"A": change["B"], "B": change["B"], "C": change["C"]}
    predicted = cells_adata({p: (mu0 + v)[None, :] for p, v in predicted_changes.items()}, "p")
    table = evaluate(predicted, observed, control, distribution_metrics=False, de_metrics=False)
    np.testing.assert_allclose(table["discrimination_score"], [1 - 1 / 3, 1.0, 1.0])


def test_discrimination_score_leaves_the_target_out():
    rng = np.random.default_rng(1)
    control = cells_adata({"control": 1.0 + rng.normal(0, 0.01, (50, G))}, "c")
    change = {"g0": np.zeros(G), "g1": np.zeros(G)}
    change["g0"][0], change["g0"][5] = -3.0, 0.5
    change["g1"][1], change["g1"][6] = -0.2, 0.5
    observed = cells_adata({p: 1.0 + v + rng.normal(0, 0.01, (30, G)) for p, v in change.items()}, "o")
    mu0 = control.X.mean(axis=0)
    # g0's prediction gets its own target right but g1's downstream gene: with its target
    # gene it is closest to its own observed change, without it g1's is closer
    wrong = np.zeros(G)
    wrong[0], wrong[6] = -3.0, 0.5
    predicted = cells_adata({"g0": (mu0 + wrong)[None, :], "g1": (mu0 + change["g1"])[None, :]}, "p")
    table = evaluate(predicted, observed, control, distribution_metrics=False, de_metrics=False)
    assert table.loc["g0", "discrimination_score"] == pytest.approx(0.5)
    assert table.loc["g1", "discrimination_score"] == pytest.approx(1.0)


def test_de_overlap_and_mae_by_construction():
    rng = np.random.default_rng(2)
    base = rng.uniform(1.0, 2.0, G)
    control = cells_adata({"control": base + rng.normal(0, 0.1, (300, G))}, "c")
    obs_shift, pred_shift = np.zeros(G), np.zeros(G)
    obs_shift[[0, 1, 2, 3, 4]] = [-1.0, 2.0, 1.5, -0.8, 1.0]
    pred_shift[[0, 1, 2, 7, 8]] = [-1.0, 2.0, 1.5, 3.0, 2.5]
    observed = cells_adata({"A": base + obs_shift + rng.normal(0, 0.1, (200, G))}, "o")
    predicted = cells_adata({"A": base + pred_shift + rng.normal(0, 0.1, (200, G))}, "p")
    table = evaluate(predicted, observed, control, distribution_metrics=False, source_key=None)
    assert table.loc["A", "n_de_observed"] == 5
    # predicted top 5 by |log2 FC|: g7, g8, g1, g2, g0 -> 3 of the 5 observed DE genes
    assert table.loc["A", "de_overlap"] == pytest.approx(3 / 5)
    mu, mu_hat = observed.X.mean(axis=0), predicted.X.mean(axis=0)
    assert table.loc["A", "mae_all"] == pytest.approx(np.mean(np.abs(mu_hat - mu)), rel=1e-5)
    # no DE gene observed: the overlap is undefined, not 0
    flat = cells_adata({"A": base + rng.normal(0, 0.1, (200, G))}, "f")
    assert np.isnan(evaluate(predicted, flat, control, distribution_metrics=False)["de_overlap"].iloc[0])


@pytest.mark.parametrize("decimals", [0, 1, 3])
def test_rank_test_equals_scipy(decimals):
    """The sorted-controls Mann-Whitney test gives scipy's p-values, ties included."""
    from scipy.stats import mannwhitneyu

    from sccvae.metrics._de import ReferenceCells

    rng = np.random.default_rng(decimals)
    control = np.clip(rng.normal(1, 1, (300, 50)), 0, None).round(decimals)
    group = np.clip(rng.normal(1.3, 1.5, (40, 50)), 0, None).round(decimals)
    group[:, 0], group[:, 1], group[:, 2] = 0.0, 50.0, -5.0  # silent, beyond both ends
    expected = mannwhitneyu(group, control, axis=0, method="asymptotic", use_continuity=True)
    got = ReferenceCells(control).pvalues(group)
    np.testing.assert_allclose(got, np.nan_to_num(expected.pvalue, nan=1.0), rtol=1e-9, atol=1e-300)


def test_change_is_measured_from_the_source_cells():
    """A prediction scored against the very cells it reproduces gets the noise-free score."""
    rng = np.random.default_rng(3)
    base = rng.uniform(1.0, 2.0, G)
    shifts = {f"t{i}": rng.normal(0, 0.2, G) for i in range(4)}
    data = cells_adata(
        {"control": base + rng.normal(0, 0.5, (400, G))}
        | {p: base + s + rng.normal(0, 0.5, (100, G)) for p, s in shifts.items()},
        "c",
    )
    model = AdditiveBaseline().fit(data)  # predicts each training perturbation's own mean change
    pred = model.predict(list(shifts), n_cells=10, seed=0)
    corrected = evaluate(pred, data, data, distribution_metrics=False, de_metrics=False)
    assert corrected["source_corrected"].all()
    np.testing.assert_allclose(corrected["pearson_delta_all"], 1.0, atol=1e-6)
    np.testing.assert_allclose(corrected["mse_all"], 0.0, atol=1e-10)
    raw = evaluate(pred, data, data, distribution_metrics=False, de_metrics=False, source_key=None)
    assert not raw["source_corrected"].any()
    assert raw["pearson_delta_all"].max() < 0.9  # 10 source cells' noise dilutes the change
    # unknown source cells: measured from the control mean, with a warning
    renamed = pred.copy()
    renamed.obs["control_cell"] = "elsewhere"
    with pytest.warns(UserWarning, match="not among the control cells"):
        fallback = evaluate(renamed, data, data, distribution_metrics=False, de_metrics=False)
    np.testing.assert_allclose(fallback["pearson_delta_all"], raw["pearson_delta_all"])


def test_agrees_with_cell_eval(tmp_path):
    """Our DE overlap, discrimination score and MAE equal cell-eval's (the VCC scorer)."""
    cell_eval = pytest.importorskip("cell_eval")
    rng = np.random.default_rng(4)
    base = rng.uniform(0.5, 2.5, G)

    def cells(n, shift):
        return np.clip(base + shift + rng.normal(0, 0.4, (n, G)), 0, None)

    perts = [f"g{i}" for i in range(6)]
    shifts = {p: np.where(rng.random(G) < 0.2, rng.normal(0, 1, G), 0.0) for p in perts}
    for i, p in enumerate(perts):
        shifts[p][i] = -1.5
    control = cells(300, 0.0)
    real = cells_adata({"control": control} | {p: cells(80, shifts[p]) for p in perts}, "r")
    pred_blocks = {p: cells(80, 0.3 * shifts[p] + rng.normal(0, 0.3, G)) for p in perts}
    pred = cells_adata({"control": control} | pred_blocks, "p")
    evaluator = cell_eval.MetricsEvaluator(
        adata_pred=pred.copy(), adata_real=real.copy(), control_pert="control",
        pert_col="perturbation", outdir=str(tmp_path), num_threads=1,
    )  # fmt: skip
    theirs, _ = evaluator.compute(profile="vcc", write_csv=False)
    theirs = theirs.to_pandas().set_index("perturbation").loc[perts]
    is_control = real.obs["perturbation"] == "control"
    ours = evaluate(
        pred[pred.obs["perturbation"] != "control"], real[~is_control], real[is_control],
        distribution_metrics=False,
    ).loc[perts]  # fmt: skip
    assert theirs["discrimination_score_l1"].min() < 1  # the fixture discriminates
    np.testing.assert_allclose(ours["discrimination_score"], theirs["discrimination_score_l1"])
    np.testing.assert_allclose(ours["de_overlap"], theirs["overlap_at_N"], atol=1e-12)
    np.testing.assert_allclose(ours["mae_all"], theirs["mae"], rtol=1e-5)
