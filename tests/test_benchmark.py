from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sccvae
from sccvae.benchmark import (
    KEY_METRICS,
    BenchmarkInputError,
    BenchmarkResult,
    default_methods,
    format_table,
    run_benchmark,
)
from sccvae.data import simulate_perturbseq

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
    assert result.config["model_kwargs"]["perturbation_embedding"] == "onehot"
    assert set(result.results["method"]) == {"sccvae", "linear"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"perturbation_key": "nope"}, "not found in adata.obs"),
        ({"control_label": "ctrl"}, "No control cells"),
        ({"n_folds": 50}, "n_folds"),
        ({"methods": "sccvae,gears"}, "Unknown method"),
        ({"methods": []}, "No method"),
        ({"split": "combo"}, "No combination"),
        ({"split": "iid"}, "Unknown split"),
        ({"max_epochs": 0}, "max_epochs"),
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


def test_counts_in_x_rejected(tiny, no_training):
    adata = tiny.copy()
    adata.X = adata.layers["counts"].copy()
    with pytest.raises(BenchmarkInputError, match="raw counts"):
        run_benchmark(adata, n_folds=2, **FAST)


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

    variant = _methods._sccvae_variant("SCCVAE with 8 hidden units", n_hidden=8)
    monkeypatch.setitem(_methods.REGISTRY, "sccvae[tiny]", variant)
    assert _methods.parse_methods("sccvae[tiny],mean", "unseen") == ["sccvae[tiny]", "mean"]
    assert variant.model_kwargs == {"n_hidden": 8} and variant.train_kwargs == {}
    uncalibrated = _methods.REGISTRY["sccvae_uncalibrated"]
    assert uncalibrated.is_sccvae and uncalibrated.train_kwargs == {"calibrate": False}
    with pytest.raises(sccvae.benchmark.BenchmarkInputError, match="Unknown method"):
        _methods.parse_methods("sccvae[nope]", "unseen")
