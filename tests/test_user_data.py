"""A user's own data: the model says what it cannot trust, and leaves the AnnData alone."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sccvae import SCCVAE

from .conftest import make_toy_adata

SMALL = dict(n_latent=8, n_hidden=16)


def _snapshot(adata) -> dict:
    """What a user would notice changing: X, layers, obs, var and uns keys."""
    x = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X)
    return {
        "X": x.copy(),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "uns": sorted(adata.uns),
        "layers": sorted(adata.layers),
    }


def _assert_unchanged(adata, before: dict) -> None:
    now = _snapshot(adata)
    np.testing.assert_array_equal(now["X"], before["X"])
    assert now["obs"].equals(before["obs"])
    assert now["var"].equals(before["var"])
    assert now["uns"] == before["uns"] and now["layers"] == before["layers"]


# ------------------------------------------------------------ 1. what X holds vs the likelihood
def test_raw_counts_with_the_gaussian_likelihood_are_warned_about():
    adata = make_toy_adata(counts=True)
    SCCVAE.setup_anndata(adata)
    before = _snapshot(adata)
    with pytest.warns(UserWarning, match="looks like raw counts") as record:
        model = SCCVAE(adata, **SMALL)
    message = str(next(w.message for w in record if "raw counts" in str(w.message)))
    assert "likelihood='nb'" in message and "normalize_total" in message and "log1p" in message
    # the warning points at the user's line, not into the package
    assert all(w.filename == __file__ for w in record if "raw counts" in str(w.message))
    model.train(max_epochs=1, enable_progress_bar=False)
    _assert_unchanged(adata, before)
    with warnings.catch_warnings():  # the same counts under "nb": nothing to say
        warnings.simplefilter("error", UserWarning)
        SCCVAE(adata, likelihood="nb", **SMALL)


def test_scaled_expression_with_the_gaussian_likelihood_is_warned_about():
    adata = make_toy_adata()
    x = adata.X.toarray()
    adata.X = (x - x.mean(axis=0)) / x.std(axis=0)
    SCCVAE.setup_anndata(adata)
    before = _snapshot(adata)
    with pytest.warns(UserWarning, match="negative values") as record:
        model = SCCVAE(adata, **SMALL)
    message = str(record[0].message)
    assert "no expression floor" in message and "normalize_total + log1p" in message
    assert float(model.module.expression_floor) == -np.inf
    _assert_unchanged(adata, before)
    with pytest.raises(ValueError, match="negative values"):
        SCCVAE(adata, likelihood="nb", **SMALL)
    _assert_unchanged(adata, before)


def test_log_normalised_expression_is_accepted_silently():
    adata = make_toy_adata()
    SCCVAE.setup_anndata(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        SCCVAE(adata, **SMALL)


@pytest.fixture(scope="module")
def tiny_model():
    """A one-epoch model of the toy screen (trained double "g1+g0"), for read-only checks."""
    adata = make_toy_adata()
    SCCVAE.setup_anndata(adata)
    model = SCCVAE(adata, seed=0, **SMALL)
    model.train(max_epochs=1, enable_progress_bar=False)
    return model


def test_a_backed_h5ad_trains_and_predicts_as_in_memory(tmp_path):
    """A screen larger than memory: trained from a backed h5ad, read batch by batch."""
    import anndata as ad

    adata = make_toy_adata(n_single=4, doubles=())
    adata.write_h5ad(tmp_path / "screen.h5ad")
    backed = ad.read_h5ad(tmp_path / "screen.h5ad", backed="r")
    labels = ["g0", "g1+g2", "g5", "control"]  # seen, a combination, unseen
    models, changes = [], []
    for data in (adata, backed):
        SCCVAE.setup_anndata(data)
        model = SCCVAE(data, seed=0, **SMALL)
        model.train(max_epochs=3, enable_progress_bar=False)
        means = model.predict(labels, n_cells=50, seed=0, return_mean=True).X
        models.append(model)
        changes.append((means[:-1] - means[-1]).ravel())
    assert backed.isbacked and not isinstance(backed.X, np.ndarray | sp.spmatrix)
    # the same cells, read in another order within a batch (h5py reads rows sorted): the
    # same model up to training noise
    for name in ("gene_center", "gene_scale", "label_changes"):
        torch.testing.assert_close(
            getattr(models[1].module, name), getattr(models[0].module, name)
        )
    assert np.corrcoef(changes[0], changes[1])[0, 1] > 0.99
    # a model trained in memory predicts exactly the same from the backed file
    models[0].save(tmp_path / "model")
    loaded = SCCVAE.load(str(tmp_path / "model"), adata=backed)
    np.testing.assert_allclose(
        loaded.predict(labels, n_cells=50, seed=0, return_mean=True).X,
        models[0].predict(labels, n_cells=50, seed=0, return_mean=True).X,
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip


# ------------------------------------------------------------ 4. labels come back as requested
def test_predictions_carry_the_labels_as_requested(tiny_model):
    from sccvae.metrics import evaluate

    adata = tiny_model.adata
    before = _snapshot(adata)
    pred = tiny_model.predict(["g1+g0", " g0+g1 ", "g2"], n_cells=5, seed=0)
    key = "perturbation"
    assert list(pred.obs[key].unique()) == ["g1+g0", "g0+g1", "g2"]
    assert list(pred.obs["canonical_perturbation"].unique()) == ["g0+g1", "g2"]
    assert (pred.obs[key] == "g1+g0").sum() == 5  # filtering by the label asked for works
    np.testing.assert_allclose(pred.X[:5], pred.X[5:10])  # one perturbation, two spellings
    means = tiny_model.predict(["g1+g0"], n_cells=5, return_mean=True)
    assert list(means.obs_names) == ["g1+g0"]
    dose = tiny_model.simulate_knockdown("g1+g0", penetrance=(0.0, 1.0), n_cells=3)
    assert set(dose.obs[key]) == {"g1+g0"}
    assert set(dose.obs["canonical_perturbation"]) == {"g0+g1"}
    latents = tiny_model.get_perturbation_latents(["g1+g0", "g2"], n_cells=5)
    assert list(latents.obs_names) == ["g1+g0", "g2"]
    assert list(latents.obs["canonical_perturbation"]) == ["g0+g1", "g2"]
    # the scoring matches labels in canonical form: the data's "g1+g0" and the prediction's
    # "g0+g1" are one perturbation
    observed = adata[adata.obs[key].isin(["g1+g0", "g2"])].copy()
    control = adata[adata.obs[key] == "control"].copy()
    other = tiny_model.predict(["g0+g1", "g2"], n_cells=20, seed=0)
    table = evaluate(other, observed, control, distribution_metrics=False, de_metrics=False)
    assert sorted(table.index) == ["g0+g1", "g2"]
    _assert_unchanged(adata, before)


# ------------------------------------------------------------ 2. predictions beyond the data
def test_predictions_beyond_the_training_data_are_flagged_and_warned_about(tiny_model):
    reference = tiny_model.training_reference_
    assert set(reference) >= {"control_mean", "gene_min", "gene_max", "largest_change"}
    assert reference["largest_change_label"] in set(tiny_model.adata.obs["perturbation"])
    labels = ["g0", "g1+g0", "g30", "control"]  # trained, trained double, unseen, control
    pred = tiny_model.predict(labels, n_cells=20, seed=0, return_mean=True)
    trained = pred.obs["extrapolated"][["g0", "g1+g0", "control"]]
    assert not trained.any()
    # an unseen prediction larger than every training change, and one gene beyond its range
    norm = float(np.linalg.norm(pred["g30"].X - pred["control"].X))
    narrow = {**reference, "largest_change": norm / 2, "largest_change_label": "g5"}
    narrow["gene_max"] = reference["gene_max"].copy()
    narrow["gene_max"][3] = float(pred["g30"].X[0, 3]) - 1.0
    narrow["gene_max"][5] = float(pred["g30"].X[0, 5]) - 1e-4  # within float noise: not out
    tiny_model.training_reference_ = narrow
    try:
        with pytest.warns(UserWarning, match=r"obs\['extrapolated'\]") as record:
            flagged = tiny_model.predict(labels, n_cells=20, seed=0, return_mean=True)
    finally:
        tiny_model.training_reference_ = reference
    message = str(record[0].message)
    assert "g30: a mean change of norm" in message and "(at most" in message and "g5" in message
    assert "1 gene(s)" in message and "g3 at" in message
    assert "above its highest value in any training cell" in message
    assert record[0].filename == __file__
    assert flagged.obs["extrapolated"].to_dict() == {
        "g0": False, "g1+g0": False, "g30": True, "control": False
    }  # fmt: skip
    # the prediction itself is returned as the model makes it
    np.testing.assert_array_equal(flagged.X, pred.X)


# ------------------------------------------------------------ 3. loading onto other data
def test_load_warns_when_the_control_cells_are_not_the_training_ones(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "model", overwrite=True)
    # the training data, or a subset of it: silent
    same = make_toy_adata()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loaded = SCCVAE.load(tmp_path / "model", adata=same)
        controls = same[same.obs["perturbation"] == "control"][:10].copy()
        SCCVAE.load(tmp_path / "model", adata=controls)
    assert loaded.training_reference_["largest_change"] == pytest.approx(
        tiny_model.training_reference_["largest_change"]
    )
    # other cells with the same genes and labels: warned, and only scvi-tools' registration
    # is written into them
    other = make_toy_adata(seed=1)
    other.X = other.X.toarray() + 1.5
    before = _snapshot(other)
    with pytest.warns(UserWarning, match="not its training data") as record:
        SCCVAE.load(tmp_path / "model", adata=other)
    message = str(record[0].message)
    assert "control standard deviations" in message and "predict(adata=...)" in message
    assert record[0].filename == __file__
    assert list(other.obs.columns) == ["perturbation", "_scvi_perturbation"]
    assert sorted(other.uns) == sorted([*before["uns"], "_scvi_uuid", "_scvi_manager_uuid"])
    other.obs = other.obs.drop(columns="_scvi_perturbation")
    for key in ("_scvi_uuid", "_scvi_manager_uuid"):
        del other.uns[key]
    _assert_unchanged(other, before)
    # labels the model never saw: a clear error before anything is written
    new = make_toy_adata(n_single=10, seed=2)
    before = _snapshot(new)
    with pytest.raises(ValueError, match=r"were not in its training data \(\['g8', 'g9'\]\)"):
        SCCVAE.load(tmp_path / "model", adata=new)
    _assert_unchanged(new, before)


# ------------------------------------------------------------ 7. smaller things
def test_calibration_shows_progress_and_lightning_deprecation_is_filtered(capsys):
    adata = make_toy_adata()
    SCCVAE.setup_anndata(adata)
    model = SCCVAE(adata, seed=0, **SMALL)
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.train(max_epochs=1, enable_progress_bar=True)
    messages = [str(w.message) for w in record]
    assert not any("LeafSpec" in m for m in messages)
    assert any("logging interval" in m for m in messages)  # other warnings still pass
    assert warnings.filters == filters  # nothing left filtered
    assert "Calibrating 9 training perturbations" in capsys.readouterr().out
    model.train(max_epochs=1, enable_progress_bar=False)
    assert "Calibrating" not in capsys.readouterr().out


def test_sccvae_model_import_leaves_networkx_alone():
    import subprocess
    import sys

    code = "import sys, sccvae; sccvae.SCCVAE; print('networkx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_version_and_public_names(capsys):
    import sccvae
    import sccvae.pl
    from sccvae.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sccvae {sccvae.__version__}"
    public = [name for name in dir(sccvae.pl) if not name.startswith("_")]
    assert public == sorted(sccvae.pl.__all__)


def test_out_of_range_penetrance_and_threshold_are_errors(tiny_model):
    for bad in ((0, 2.0), (-0.5, 1.0), (float("nan"),), ()):
        with pytest.raises(ValueError, match=r"penetrance"):
            tiny_model.simulate_knockdown("g0", penetrance=bad, n_cells=2)
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError, match="threshold is compared with |weight|"):
            tiny_model.get_graph(threshold=bad)
    assert tiny_model.get_graph(threshold=0).number_of_edges() > 0


def test_summary_string_grammar(tiny_model):
    from sccvae.model._model import _count

    assert _count(1, "node gene") == "1 node gene" and _count(64, "gene node") == "64 gene nodes"
    summary = tiny_model._model_summary_string
    assert "8 gene nodes" in summary and "genes nodes" not in summary
    assert "8 training targets (8 node genes)" in summary and "9 perturbations" in summary


def test_latent_graph_labels_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    import sccvae.pl

    rng = np.random.default_rng(0)
    names = [f"GENE{i:03d}X" for i in range(64)]
    graph = nx.DiGraph()
    for _ in range(200):
        a, b = sorted(rng.choice(64, 2, replace=False))
        graph.add_edge(names[a], names[b], weight=float(rng.normal()))
    ax = sccvae.pl.latent_graph(graph, top_n=30, show=False)
    figure = ax.get_figure()
    figure.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.texts if t.get_text()]
    assert len(boxes) > 30
    pairs = sum(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert pairs == 0
    plt.close(figure)


def test_undefined_metrics_are_drawn_as_missing(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from sccvae.benchmark import BenchmarkResult, plot_metrics

    summary = pd.DataFrame(
        {
            "category": "all",
            "metric": "pearson_delta_all",
            "method": ["sccvae", "control", "mean"],
            "mean": [0.4, np.nan, 0.2],
            "ci_low": [0.3, np.nan, 0.1],
            "ci_high": [0.5, np.nan, 0.3],
        }
    )
    result = BenchmarkResult(pd.DataFrame(), summary, [], config={"split": "unseen"})
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_metrics(result, tmp_path / "metrics.png", metrics=["pearson_delta_all"])
    (ax,) = figures[0].axes
    heights = sorted(round(p.get_height(), 3) for p in ax.patches)
    assert heights == [0.2, 0.4]  # no bar for control
    assert [t.get_text() for t in ax.texts] == ["n/a"]
    assert (tmp_path / "metrics.png").is_file()


def test_epochs_say_the_same_in_help_log_and_config(caplog, capsys):
    import logging

    from sccvae.benchmark import run_benchmark
    from sccvae.benchmark._methods import DEFAULT_EPOCHS_TEXT
    from sccvae.cli import main

    assert "42 per fold" in DEFAULT_EPOCHS_TEXT
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    assert DEFAULT_EPOCHS_TEXT in " ".join(capsys.readouterr().out.split())
    adata = make_toy_adata()
    with caplog.at_level(logging.INFO, logger="sccvae.benchmark"):
        result = run_benchmark(adata, methods="mean,control", n_folds=2, progress=False)
    assert result.config["max_epochs"] == DEFAULT_EPOCHS_TEXT
    assert any(f"SCCVAE epochs: {DEFAULT_EPOCHS_TEXT}" in r.getMessage() for r in caplog.records)
