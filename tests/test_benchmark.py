from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sccvae
from sccvae.benchmark import (
    KEY_METRICS,
    TEST_SEED,
    BenchmarkInputError,
    BenchmarkResult,
    default_methods,
    format_table,
    run_benchmark,
)
from sccvae.data import simulate_perturbseq
from sccvae.splits import unseen_perturbation_folds

from .conftest import PAPALEXI, PAPALEXI_MISSING

TINY = dict(n_genes=100, n_perturbations=10, n_cells_per_perturbation=30, n_control_cells=200)
FAST = dict(
    max_epochs=1, n_cells=30, progress=False, model_kwargs={"n_latent": 16, "n_hidden": 32}
)


@pytest.fixture(scope="module")
def tiny():
    return simulate_perturbseq(**TINY, seed=0)


@pytest.fixture(scope="module")
def tiny_combo():
    return simulate_perturbseq(**TINY, n_combinations=4, seed=1)


@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started although the input is invalid")

    monkeypatch.setattr(sccvae.SCCVAE, "train", fail)


def _check(result: BenchmarkResult, methods, perts):
    assert isinstance(result, BenchmarkResult)
    assert set(result.results["method"]) == set(methods)
    for m in methods:
        got = result.results.loc[result.results["method"] == m, "perturbation"]
        assert sorted(got) == sorted(perts), m
    for metric in KEY_METRICS:
        assert metric in result.results.columns
        assert set(result.summary.loc[result.summary["category"] == "all", "method"]) == set(
            methods
        )
    assert result.summary["reference"].eq("sccvae").all()


def test_unseen_end_to_end(tiny):
    before = tiny.copy()
    result = run_benchmark(tiny, split="unseen", n_folds=2, **FAST)
    labels = sorted(set(tiny.obs["perturbation"]) - {"control"})
    _check(result, default_methods("unseen"), labels)
    # every perturbation tested in exactly one fold, never among that fold's training ones
    per_fold = result.results[result.results["method"] == "sccvae"].groupby("perturbation")
    assert per_fold["fold"].nunique().eq(1).all()
    for fold, split in enumerate(result.splits):
        tested = set(result.results.loc[result.results["fold"] == fold, "perturbation"])
        assert tested == set(split.test_perturbations)
        assert not tested & set(split.train_perturbations)
    n_variants = sum(sccvae.benchmark.REGISTRY[m].is_sccvae for m in default_methods("unseen"))
    assert len(result.training) == 2 * n_variants  # one row per SCCVAE fit: variants x 2 folds
    assert result.training["validation_loss_last"].notna().all()
    assert result.results["pearson_delta_pertmean_all"].notna().any()
    # the input is not modified
    assert tiny.obs.equals(before.obs)
    assert (tiny.X != before.X).nnz == 0
    table = result.table()
    assert list(table.index) == list(KEY_METRICS)
    assert "win" in table.loc["pearson_delta_all", "mean"]


def test_seen_end_to_end(tiny):
    result = run_benchmark(tiny, split="seen", methods="sccvae,control,mean", **FAST)
    assert len(result.splits) == 1
    _check(result, ["sccvae", "control", "mean"], result.splits[0].test_perturbations)


def test_combo_end_to_end(tiny_combo):
    result = run_benchmark(tiny_combo, split="combo", **FAST)
    split = result.splits[0]
    methods = default_methods("combo")
    assert "additive" in methods
    _check(result, methods, split.test_perturbations)
    assert all("+" in p for p in result.results["perturbation"])
    cats = result.results.drop_duplicates("perturbation").set_index("perturbation")["category"]
    assert cats.to_dict() == {p: split.categories[p] for p in split.test_perturbations}
    assert set(result.summary["category"]) >= {"all", *split.categories.values()}


def test_unmeasured_targets_onehot_for_seen_and_error_for_unseen(tiny, no_training):
    # rename the targets' genes: targets are no longer measured
    adata = tiny.copy()
    targets = set(adata.obs["perturbation"].astype(str)) - {"control"}
    adata.var_names = [f"x{g}" if g in targets else g for g in adata.var_names]
    with pytest.raises(BenchmarkInputError, match="unmeasured gene"):
        run_benchmark(adata, split="unseen", n_folds=2, **FAST)
    with pytest.raises(BenchmarkInputError, match="unmeasured gene"):
        run_benchmark(adata, split="unseen", n_folds=2, methods=["linear"], **FAST)
    # baselines that need no embedding still run on unseen splits
    result = run_benchmark(adata, split="unseen", n_folds=2, methods=["mean", "control"], **FAST)
    assert set(result.results["method"]) == {"mean", "control"}


def test_unmeasured_targets_seen_split_uses_onehot(tiny):
    adata = tiny.copy()
    targets = set(adata.obs["perturbation"].astype(str)) - {"control"}
    adata.var_names = [f"x{g}" if g in targets else g for g in adata.var_names]
    result = run_benchmark(adata, split="seen", methods="sccvae,linear", **FAST)
    assert any("one-hot" in n for n in result.notes)
    # SCCVAE learns unmeasured training targets one-hot by itself, at its defaults
    assert "perturbation_embedding" not in result.config["model_kwargs"]
    assert set(result.results["method"]) == {"sccvae", "linear"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"perturbation_key": "nope"}, "not found in adata.obs"),
        ({"control_label": "ctrl"}, "No control cells"),
        ({"n_folds": 1}, "n_folds"),
        ({"likelihood": "poisson"}, "Unknown likelihood"),
        ({"likelihood": "nb"}, "needs raw counts in X"),
        ({"model_kwargs": {"likelihood": "nb"}}, "may not set 'likelihood'"),
        ({"methods": "sccvae,gears"}, "Unknown method"),
        ({"methods": []}, "No method"),
        ({"split": "combo"}, "No combination"),
        ({"split": "iid"}, "Unknown split"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"n_seeds": 0}, "n_seeds"),
        ({"n_seeds": 1.5}, "n_seeds"),
        ({"n_seeds": 2, "model_kwargs": {"seed": 3}}, "may not set 'seed'"),
        ({"model_kwargs": {"graph": "none"}}, "graph"),
    ],
)
def test_bad_input_raises_before_training(tiny, no_training, kwargs, match):
    args = {**FAST, "n_folds": 2, **kwargs}
    with pytest.raises(BenchmarkInputError, match=match):
        run_benchmark(tiny, **args)


def test_bad_data_path(no_training, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        run_benchmark(data=tmp_path / "missing.h5ad", **FAST)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(BenchmarkInputError, match="h5ad"):
        run_benchmark(data=tmp_path / "x.txt", **FAST)


def _counts_adata(tiny):
    """``tiny`` with its raw counts in X (and no log-normalised values anywhere)."""
    adata = tiny.copy()
    adata.X = adata.layers.pop("counts")
    return adata


def _log_normalised_by_hand(counts) -> np.ndarray:
    x = counts.toarray().astype(np.float64)
    return np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)


def test_counts_in_x_log_normalised_for_baselines_and_scoring(tiny):
    adata = _counts_adata(tiny)
    before = adata.copy()
    run = dict(n_folds=2, methods="mean,control", **FAST)
    result = run_benchmark(adata, **run)
    assert result.config["data"]["expression"].startswith("raw counts")
    assert result.config["likelihood"] == "nb"  # the default on counts
    assert "normalize_total(target_sum=1e4) + log1p" in result.config["normalisation"]
    # the same run on counts log-normalised by hand scores the same (baselines fitted on them)
    by_hand = adata.copy()
    by_hand.X = sp.csr_matrix(_log_normalised_by_hand(adata.X).astype(np.float32))
    expected = run_benchmark(by_hand, **run)
    assert expected.config["likelihood"] == "gaussian"
    assert expected.config["normalisation"].startswith("none")
    numeric = result.results.select_dtypes("number").columns
    np.testing.assert_allclose(
        result.results[numeric], expected.results[numeric], rtol=1e-4, atol=1e-5
    )
    for method in ("mean", "control", "observed"):
        np.testing.assert_allclose(result.deltas[method], expected.deltas[method], atol=1e-5)
    # observed changes: test cells' mean minus the training controls' mean, log-normalised
    x = _log_normalised_by_hand(adata.X)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    for fold, split in enumerate(result.splits):
        train_controls = split.train_idx[labels[split.train_idx] == "control"]
        control_mean = x[train_controls].mean(axis=0)
        for pert in split.test_perturbations:
            delta = x[labels == pert].mean(axis=0) - control_mean
            got = result.deltas["observed"].loc[(fold, pert)].to_numpy()
            np.testing.assert_allclose(got, delta, atol=1e-4)
    assert (adata.X != before.X).nnz == 0 and adata.obs.equals(before.obs)
    assert not adata.layers  # the input gains no layer


def test_sccvae_nb_on_counts_predictions_scored_log_normalised(tiny, monkeypatch):
    from sccvae.benchmark import _scoring

    seen = {}
    setup, init, evaluate = sccvae.SCCVAE.setup_anndata, sccvae.SCCVAE.__init__, _scoring.evaluate
    predict = sccvae.SCCVAE.predict

    def spy_setup(adata, *args, **kwargs):
        seen["layer"] = kwargs.get("layer")
        seen["layer_holds_counts"] = np.array_equal(
            adata.layers["counts"].toarray(), np.round(adata.layers["counts"].toarray())
        )
        return setup(adata, *args, **kwargs)

    def spy_init(self, adata, **kwargs):
        seen["likelihood"] = kwargs.get("likelihood")
        return init(self, adata, **kwargs)

    def spy_evaluate(pred, *args, **kwargs):
        seen.setdefault("predictions", []).append(pred)
        return evaluate(pred, *args, **kwargs)

    def spy_predict(self, *args, **kwargs):
        seen["log_normalized"] = kwargs.get("log_normalized")
        return predict(self, *args, **kwargs)

    monkeypatch.setattr(sccvae.SCCVAE, "predict", spy_predict)
    monkeypatch.setattr(sccvae.SCCVAE, "setup_anndata", spy_setup)
    monkeypatch.setattr(sccvae.SCCVAE, "__init__", spy_init)
    monkeypatch.setattr(_scoring, "evaluate", spy_evaluate)
    result = run_benchmark(
        _counts_adata(tiny), n_folds=2, folds=[0], methods="sccvae,mean", **FAST
    )
    assert seen["layer"] == "counts" and seen["layer_holds_counts"]
    assert seen["likelihood"] == "nb"
    assert result.config["sccvae_trained_on"].startswith("the raw counts")
    (pred, _) = seen["predictions"]  # sccvae's, then the mean baseline's
    # the counterfactuals are made and scored on the run's log-normalised scale, not as
    # counts log-normalised a second time
    assert seen["log_normalized"] is True
    x = pred.X.toarray() if sp.issparse(pred.X) else np.asarray(pred.X)
    assert x.min() >= 0 and x.max() < np.log1p(1e4)
    assert not np.allclose(x, np.round(x))
    assert result.results.loc[result.results["method"] == "sccvae", "mse_all"].notna().all()


def test_gaussian_likelihood_on_counts_trains_on_log_normalised_x(tiny, monkeypatch):
    seen = {}

    def stop(adata, *args, **kwargs):
        seen["layer"] = kwargs.get("layer")
        seen["x"] = adata.X.copy()
        raise RuntimeError("stop before training")

    monkeypatch.setattr(sccvae.SCCVAE, "setup_anndata", stop)
    adata = _counts_adata(tiny)
    with pytest.raises(RuntimeError, match="stop before training"):
        run_benchmark(adata, n_folds=2, methods="sccvae", likelihood="gaussian", **FAST)
    assert seen["layer"] is None
    x = seen["x"].toarray()
    assert x.max() < np.log1p(1e4) + 1e-4 and not np.allclose(x, np.round(x))


def _unmeasured(tiny, n: int = 4):
    """``tiny`` whose first ``n`` targets (sorted) are renamed away from the genes."""
    adata = tiny.copy()
    targets = sorted(set(adata.obs["perturbation"].astype(str)) - {"control"})
    hidden = set(targets[:n])
    adata.var_names = [f"x{g}" if g in hidden else g for g in adata.var_names]
    return adata, sorted(hidden), sorted(set(targets) - hidden)


def test_unseen_folds_only_among_measured_targets(tiny, no_training):
    adata, unmeasured, measured = _unmeasured(tiny)
    run = dict(methods="mean,coexpression", **FAST)
    result = run_benchmark(adata, n_folds=2, **run)  # 6 eligible >= 2 x 2: two folds
    assert len(result.splits) == 2
    assert sorted(p for s in result.splits for p in s.test_perturbations) == measured
    for split in result.splits:
        assert set(unmeasured) <= set(split.train_perturbations)
        assert set(unmeasured).isdisjoint(split.test_perturbations)
    assert result.config["eligible_perturbations"] == measured
    assert result.config["always_train"] == unmeasured
    assert any("6 of 10 perturbations are eligible" in n for n in result.notes)
    assert any(str(unmeasured) in n and "always train" in n for n in result.notes)
    # fewer than 2 x n_folds eligible: leave-one-out, one fold per eligible perturbation
    loo = run_benchmark(adata, n_folds=5, **run)
    assert sorted(len(s.test_perturbations) for s in loo.splits) == [1] * 6
    assert sorted(p for s in loo.splits for p in s.test_perturbations) == measured
    assert len(loo.splits) == 6 == loo.config["n_folds"]
    assert loo.config["fold_scheme"].startswith("leave-one-out")
    assert any("Leave-one-out" in n for n in loo.notes)
    # methods that represent any target: every perturbation eligible, folds as before
    free = run_benchmark(adata, n_folds=2, methods="mean,control", **FAST)
    assert free.config["always_train"] == []
    # the same folds as the split function's at the run's (default) seed
    default = unseen_perturbation_folds(adata, n_folds=2, seed=TEST_SEED)
    assert [s.to_dict() for s in free.splits] == [s.to_dict() for s in default]


def test_unseen_sccvae_onehot_only_for_training_targets(tiny):
    from sccvae._perturbations import design_of
    from sccvae.benchmark._coverage import _unseen_targets

    adata, unmeasured, measured = _unmeasured(tiny)
    design = design_of(adata.obs, "perturbation", "control", "+")
    genes = set(adata.var_names)
    methods = list(default_methods("unseen"))
    kwargs, notes = {}, []
    embedding, eligible, _ = _unseen_targets(methods, design, genes, kwargs, notes)
    assert eligible == measured and embedding is None  # baselines: coexpression
    # SCCVAE: measured targets are nodes, unmeasured training targets learned one-hot by the
    # model itself (its defaults are not overridden)
    assert kwargs == {}
    assert any("one-hot" in n for n in notes)
    # a DataFrame embedding is passed on as it is; the model adds one-hot rows itself
    frame = pd.DataFrame(np.ones((3, 2)), index=[unmeasured[0], measured[0], "other"])
    kwargs = {"perturbation_embedding": frame}
    embedding, eligible, _ = _unseen_targets(methods, design, genes, kwargs, [])
    assert embedding is frame and kwargs["perturbation_embedding"] is frame
    assert eligible == [measured[0]]  # linear and knn only embed the frame's genes
    # SCCVAE with abstract nodes embeds measured genes (coexpression): they are eligible
    _, eligible, _ = _unseen_targets(["sccvae_abstract", "mean"], design, genes, {}, [])
    assert eligible == measured


def test_one_eligible_perturbation(tiny, monkeypatch, no_training):
    from sccvae.benchmark import _scoring

    adata, unmeasured, measured = _unmeasured(tiny, n=9)
    # baselines that learn from the perturbations they can represent would have none
    for method in ("linear", "knn", "coexpression"):
        with pytest.raises(
            BenchmarkInputError, match=f"{method} learns from .* a fold trains on 0"
        ):
            run_benchmark(adata, methods=f"mean,{method}", **FAST)
    # others run: a single fold tests the one eligible perturbation, the rest train
    monkeypatch.setattr(_scoring, "_run_fold", lambda *args, **kwargs: [])
    result = run_benchmark(adata, methods="sccvae,mean", **FAST)
    (split,) = result.splits
    assert split.test_perturbations == measured and split.train_perturbations == unmeasured
    assert "perturbation_embedding" not in result.config["model_kwargs"]


def test_default_simulated_folds_unchanged(monkeypatch):
    from sccvae.benchmark import _scoring, load_data

    # no fitting or scoring: only the folds the default run makes are compared
    monkeypatch.setattr(_scoring, "_run_fold", lambda *args, **kwargs: [])
    result = run_benchmark(progress=False)
    adata, _ = load_data("simulated")  # the realistic scenario at the test seed
    assert result.config["data"]["scenario"] == "realistic" and result.config["seed"] == 11
    default = unseen_perturbation_folds(adata, n_folds=5, seed=TEST_SEED)
    assert len(result.splits) == 5 and not result.config["always_train"]
    assert [s.to_dict() for s in result.splits] == [s.to_dict() for s in default]
    assert not any("eligible" in n or "Leave-one-out" in n for n in result.notes)


def test_obs_filter(tiny, no_training):
    adata = tiny.copy()
    adata.obs["quality"] = np.random.default_rng(0).random(adata.n_obs)
    before = adata.obs.copy()
    run = dict(n_folds=2, methods="mean,control", **FAST)
    result = run_benchmark(adata, obs_filter="quality >= 0.3", **run)
    kept = int((adata.obs["quality"] >= 0.3).sum())
    assert result.config["data"]["n_cells"] == kept < adata.n_obs
    assert result.config["obs_filter"] == "quality >= 0.3"
    assert f"kept {kept} of {adata.n_obs}" in result.config["data"]["obs_filter"]
    assert adata.obs.equals(before) and adata.n_obs == tiny.n_obs
    with pytest.raises(BenchmarkInputError, match="'nope'"):
        run_benchmark(adata, obs_filter="nope >= 0.3", **run)
    with pytest.raises(BenchmarkInputError, match="cannot be applied"):
        run_benchmark(adata, obs_filter="quality >=", **run)
    with pytest.raises(BenchmarkInputError, match="no control cells"):
        run_benchmark(adata, obs_filter="perturbation != 'control'", **run)
    with pytest.raises(BenchmarkInputError, match="keeps no cell"):
        run_benchmark(adata, obs_filter="quality > 2", **run)


@pytest.mark.skipif(not PAPALEXI.exists(), reason=PAPALEXI_MISSING)
def test_papalexi_counts_leave_one_out_over_measured_targets():
    measured = ["CMTM6", "IFNGR2", "NFKBIA", "STAT1", "STAT3", "TNFRSF14"]
    result = run_benchmark(
        data=PAPALEXI,
        methods="mean,coexpression",
        obs_filter="grna_max_frac >= 0.8",
        n_cells=30,
        progress=False,
    )
    assert result.config["data"]["expression"].startswith("raw counts")
    assert result.config["data"]["n_cells"] == 14394
    assert result.config["fold_scheme"].startswith("leave-one-out")
    assert sorted(len(s.test_perturbations) for s in result.splits) == [1] * 6
    assert sorted(p for s in result.splits for p in s.test_perturbations) == measured
    assert result.config["eligible_perturbations"] == measured
    assert len(result.config["always_train"]) == 16
    for split in result.splits:
        assert set(result.config["always_train"]) <= set(split.train_perturbations)
    scored = result.results.groupby("method")["perturbation"].apply(sorted)
    assert scored.to_dict() == {"mean": measured, "coexpression": measured}
    # scored on log-normalised values: a knock-out's own gene drops by less than ~4
    own = [result.deltas["observed"].loc[(f, p), p] for f, s in enumerate(result.splits)
           for p in s.test_perturbations]  # fmt: skip
    assert all(-5 < d < 0 for d in own)


def test_dataset_subset_from_file(tiny, tmp_path):
    a = tiny.copy()
    a.obs["dataset"] = "one"
    b = tiny[:50].copy()
    b.obs["dataset"] = "two"
    import anndata as ad

    both = ad.concat([a, b], index_unique="-")
    path = tmp_path / "two.h5ad"
    both.write_h5ad(path)
    with pytest.raises(BenchmarkInputError, match="Unknown dataset"):
        run_benchmark(data=path, dataset="three", **FAST)
    result = run_benchmark(data=path, dataset="one", n_folds=2, methods="control,mean", **FAST)
    assert result.config["data"]["n_cells"] == tiny.n_obs
    assert result.config["data"]["dataset"] == "one"


def test_format_table_orientation():
    summary = pd.DataFrame(
        {
            "category": ["all", "all"],
            "method": ["sccvae", "mean"],
            "metric": ["mse_all", "mse_all"],
            "higher_is_better": [False, False],
            "mean": [0.1, 0.2],
            "ci_low": [0.05, 0.1],
            "ci_high": [0.15, 0.3],
            "n": [3, 3],
            "reference": ["sccvae", "sccvae"],
            "reference_win_rate": [np.nan, 0.75],
            "n_paired": [0, 3],
        }
    )
    table = format_table(summary)
    assert table.loc["mse_all", "sccvae"] == "0.100 [0.050, 0.150]"
    assert table.loc["mse_all", "mean"].endswith("win 75%")


def test_methods_added_to_the_registry_are_accepted(monkeypatch):
    """A variant registered at run time (as benchmarks/ablations.py does) can be run by name."""
    from sccvae.benchmark import _methods

    variant = _methods.sccvae_variant("SCCVAE with 8 hidden units", n_hidden=8)
    monkeypatch.setitem(_methods.REGISTRY, "sccvae[tiny]", variant)
    assert _methods.parse_methods("sccvae[tiny],mean", "unseen") == ["sccvae[tiny]", "mean"]
    assert variant.model_kwargs == {"n_hidden": 8} and variant.train_kwargs == {}
    uncalibrated = _methods.REGISTRY["sccvae_uncalibrated"]
    assert uncalibrated.is_sccvae and uncalibrated.train_kwargs == {"calibrate": False}
    with pytest.raises(sccvae.benchmark.BenchmarkInputError, match="Unknown method"):
        _methods.parse_methods("sccvae[nope]", "unseen")


def test_register_method_keeps_the_descriptions_in_step_and_protects_shipped_names(
    monkeypatch,
):
    from sccvae.benchmark import METHODS, REGISTRY, register_method, sccvae_variant

    monkeypatch.setattr(sccvae.benchmark._methods, "REGISTRY", dict(REGISTRY))
    monkeypatch.setattr(sccvae.benchmark._methods, "METHODS", dict(METHODS))
    stronger_kl = {"plan_kwargs": {"max_kl_weight": 1}}
    variant = sccvae_variant("SCCVAE, stronger KL", train_kwargs=stronger_kl)
    register_method("sccvae[kl]", variant)
    from sccvae.benchmark import _methods

    assert _methods.REGISTRY["sccvae[kl]"] is variant
    assert _methods.METHODS["sccvae[kl]"] == "SCCVAE, stronger KL"
    assert _methods.parse_methods("sccvae[kl]", "unseen") == ["sccvae[kl]"]
    with pytest.raises(ValueError, match="already registered"):
        register_method("sccvae", variant)
    with pytest.raises(TypeError, match="must be a Method"):
        register_method("sccvae[bad]", {"n_hidden": 8})
    register_method("sccvae[kl]", sccvae_variant("again"), replace=True)
    assert _methods.METHODS["sccvae[kl]"] == "again"


def _hand_built(values: dict[str, dict[str, list[float]]]) -> BenchmarkResult:
    """A result whose summary is ``summarize`` of hand-built per-perturbation scores."""
    from sccvae.metrics import summarize

    tables = {
        method: pd.DataFrame(
            metrics, index=[f"p{i}" for i in range(len(next(iter(metrics.values()))))]
        )
        for method, metrics in values.items()
    }
    summary = summarize(tables, reference="sccvae", n_bootstrap=20)
    summary.insert(0, "category", "all")
    results = pd.concat(
        [t.rename_axis("perturbation").reset_index().assign(method=m) for m, t in tables.items()]
    )
    return BenchmarkResult(
        results=results, summary=summary, splits=[], config={"reference": "sccvae"}
    )


def _verdict(result: BenchmarkResult, metric: str) -> str:
    from sccvae.benchmark import verdicts

    (line,) = [v for v in verdicts(result) if v.startswith(metric + " ")]
    return line


SIX = np.array([0.30, 0.42, 0.25, 0.51, 0.38, 0.47])


def test_verdict_beats_only_where_every_one_of_six_pairs_favours_it():
    from scipy.stats import wilcoxon

    mixed = SIX + np.array([-0.1, -0.2, -0.05, 0.1, -0.15, -0.25])  # one pair favours mean
    result = _hand_built(
        {
            "sccvae": {"pearson_delta_all": SIX},
            "control": {"pearson_delta_all": SIX - 0.1},  # every pair favours sccvae
            "mean": {"pearson_delta_all": mixed},
        }
    )
    line = _verdict(result, "pearson_delta_all")
    p_mixed = wilcoxon(SIX, mixed).pvalue
    assert p_mixed > 0.05 and SIX.mean() > mixed.mean()  # better on average: still a tie
    assert "sccvae 0.388: does not beat every baseline (paired Wilcoxon, p < 0.05)" in line
    assert f"beats control (p=0.031, 6 pairs); ties mean (p={p_mixed:.2g}, 6 pairs)" in line
    assert "better on 100 % vs control, 83 % vs mean of perturbations" in line
    row = result.summary.set_index("method").loc["mean"]
    assert row["reference_p_value"] == pytest.approx(p_mixed)
    both = _hand_built(
        {"sccvae": {"pearson_delta_all": SIX}, "mean": {"pearson_delta_all": SIX - 0.1}}
    )
    assert "beats every baseline (paired Wilcoxon, p < 0.05): mean (p=0.031, 6 pairs)" in (
        _verdict(both, "pearson_delta_all")
    )
    five = _hand_built(
        {"sccvae": {"pearson_delta_all": SIX[:5]}, "mean": {"pearson_delta_all": SIX[:5] - 1}}
    )
    assert "ties mean (p=0.062, 5 pairs: too few to reach p < 0.05)" in (
        _verdict(five, "pearson_delta_all")
    )


def test_verdict_loses_to_where_the_baseline_is_significantly_better():
    result = _hand_built({"sccvae": {"mse_de": SIX + 0.2}, "mean": {"mse_de": SIX}})
    line = _verdict(result, "mse_de")
    assert line.startswith("mse_de ↓: best mean (0.388); sccvae 0.588: does not beat")
    assert "loses to mean (p=0.031, 6 pairs)" in line
    assert "sccvae better on 0 % vs mean" in line


def test_verdict_equal_scores_tie_without_warning():
    zeros = {"de_overlap": np.zeros(6)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = _hand_built({"sccvae": zeros, "control": zeros, "mean": zeros})
        line = _verdict(result, "de_overlap")
    assert line.startswith("de_overlap ↑: all methods equal (0.000); sccvae 0.000: does not")
    assert "ties control (p=1, 6 pairs), mean (p=1, 6 pairs)" in line
    assert "better on 50 % vs control, 50 % vs mean" in line


def test_verdict_drops_pairs_with_a_missing_value():
    from scipy.stats import wilcoxon

    eight = np.concatenate([SIX, [0.2, 0.3]])
    other = eight - 0.1
    other[6] = np.nan
    reference = eight.copy()
    reference[7] = np.nan
    result = _hand_built(
        {"sccvae": {"pearson_delta_de": reference}, "mean": {"pearson_delta_de": other}}
    )
    assert "mean (p=0.031, 6 pairs)" in _verdict(result, "pearson_delta_de")
    row = result.summary.set_index("method").loc["mean"]
    assert row["n_paired"] == 6
    assert row["reference_p_value"] == pytest.approx(wilcoxon(SIX, SIX - 0.1).pvalue)
    table = format_table(result.summary)
    assert table.loc["pearson_delta_de", "mean"].endswith("win 100%, p=0.031")


def test_n_seeds_averages_sccvae_per_perturbation_and_reports_the_spread(tiny, tmp_path):
    from scipy.stats import wilcoxon

    from sccvae.benchmark import verdicts

    run = dict(n_folds=2, folds=[0], methods="sccvae,mean", seed=0, **FAST)
    result = run_benchmark(tiny, n_seeds=2, out=tmp_path / "bench", **run)
    assert result.config["n_seeds"] == 2 and result.config["sccvae_seeds"] == [0, 1]
    per_seed = result.seed_results
    assert set(per_seed["method"]) == {"sccvae"} and set(per_seed["seed"]) == {0, 1}
    assert list(per_seed.columns[:4]) == ["method", "fold", "seed", "perturbation"]
    assert list(result.training["seed"]) == [0, 1]
    # seed 0 is the one-seed run's SCCVAE; seed 1 differs
    single = run_benchmark(tiny, **run)
    first = per_seed[per_seed["seed"] == 0].drop(columns="seed").reset_index(drop=True)
    ours = single.results[single.results["method"] == "sccvae"].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, ours)
    metric = "pearson_delta_all"
    by_seed = per_seed.pivot(index="perturbation", columns="seed", values=metric)
    assert not np.allclose(by_seed[0], by_seed[1])
    # results: each perturbation's score averaged over the seeds; baselines as in one-seed runs
    results = result.results.set_index(["method", "perturbation"])[metric]
    np.testing.assert_allclose(results["sccvae"].loc[by_seed.index], by_seed.mean(axis=1))
    np.testing.assert_allclose(
        results["mean"], single.results.set_index(["method", "perturbation"])[metric]["mean"]
    )
    # the summary: mean of the averages, spread of the per-seed means, tests on the averages
    summary = result.summary[result.summary["category"] == "all"].set_index(["method", "metric"])
    row = summary.loc[("sccvae", metric)]
    seed_means = by_seed.mean(axis=0)
    assert row["mean"] == pytest.approx(by_seed.mean(axis=1).mean())
    assert row["n_seeds"] == 2
    assert row["seed_sd"] == pytest.approx(seed_means.std(ddof=1))
    assert (row["seed_min"], row["seed_max"]) == pytest.approx(
        (seed_means.min(), seed_means.max())
    )
    assert np.isnan(summary.loc[("mean", metric), "seed_sd"])
    pairs = pd.concat([results["sccvae"], results["mean"]], axis=1).dropna()
    expected = wilcoxon(pairs.iloc[:, 0], pairs.iloc[:, 1]).pvalue
    assert summary.loc[("mean", metric), "reference_p_value"] == pytest.approx(expected)
    # the report: the spread beside the interval, and in the verdict
    assert "2 seeds: sd" in result.table().loc[metric, "sccvae"]
    line = next(v for v in verdicts(result) if v.startswith(metric + " "))
    assert f"sccvae {row['mean']:.3f} (mean of 2 seeds, sd {row['seed_sd']:.3f}, range" in line
    md = (tmp_path / "bench" / "summary.md").read_text()
    assert "- n_seeds: 2" in md and "trained with seeds [0, 1]" in md
    assert (tmp_path / "bench" / "seed_results.csv").is_file()
