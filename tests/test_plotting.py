import matplotlib

matplotlib.use("Agg")

import anndata as ad  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from sccvae import pl  # noqa: E402

from .conftest import make_toy_adata  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def small_model():
    import sccvae

    adata = make_toy_adata(
        n_genes=20, n_control=100, n_per_perturbation=20, n_single=5, doubles=()
    )
    sccvae.SCCVAE.setup_anndata(adata)
    model = sccvae.SCCVAE(adata, n_latent=8, n_hidden=32, seed=0)
    model.train(max_epochs=2, enable_progress_bar=False)
    return adata, model


def _modules_adata(n=12, seed=0):
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "module": pd.Categorical([str(i % 3) for i in range(n)]),
            "magnitude": rng.uniform(1, 3, n),
            "seen": [True] * (n - 1) + [False],
        },
        index=[f"P{i}" for i in range(n)],
    )
    modules = ad.AnnData(rng.normal(size=(n, 4)).astype(np.float32), obs=obs)
    modules.obsm["X_umap"] = rng.normal(size=(n, 2))
    return modules


def test_perturbation_modules_plot(tmp_path):
    path = tmp_path / "modules.png"
    ax = pl.perturbation_modules(_modules_adata(), n_labels=5, show=False, save=path)
    assert isinstance(ax, Axes)
    assert path.stat().st_size > 0
    assert len(ax.texts) == 5
    # numeric colouring and an existing axes
    _, given = plt.subplots()
    out = pl.perturbation_modules(
        _modules_adata(), color="magnitude", n_labels=None, ax=given, show=False
    )
    assert out is given
    assert len(out.texts) == 12
    with pytest.raises(KeyError, match="no column"):
        pl.perturbation_modules(_modules_adata(), color="nope", show=False)


def test_perturbation_modules_plot_from_model(small_model, tmp_path):
    from sccvae.model._functional_modules import perturbation_modules

    _, model = small_model
    modules = perturbation_modules(model, n_cells=20, n_neighbors=3)
    path = tmp_path / "sub" / "modules.pdf"
    ax = pl.perturbation_modules(modules, show=False, save=str(path))
    assert isinstance(ax, Axes)
    assert path.exists()


def test_dose_response(small_model, tmp_path):
    _, model = small_model
    knockdown = model.simulate_knockdown("g1", penetrance=[0.0, 0.5, 1.0], n_cells=20, seed=0)
    path = tmp_path / "dose.png"
    ax = pl.dose_response(knockdown, ["g1", "g2"], show=False, save=path)
    assert isinstance(ax, Axes)
    assert path.stat().st_size > 0
    assert len(ax.get_lines()) == 2
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [0.0, 0.5, 1.0])
    means = model.simulate_knockdown(
        "g1", penetrance=[0.0, 1.0], n_cells=20, return_mean=True, seed=0
    )
    ax = pl.dose_response(means, "g1", relative=True, show=False)
    assert ax.get_lines()[0].get_ydata()[0] == pytest.approx(0.0)
    with pytest.raises(KeyError, match="not in"):
        pl.dose_response(knockdown, "nope", show=False)


def test_predicted_vs_observed(small_model, tmp_path):
    adata, model = small_model
    predicted = model.predict(["g1", "g2"], n_cells=30, seed=0)
    path = tmp_path / "pvo.svg"
    ax = pl.predicted_vs_observed(
        predicted, adata, perturbation="g1", n_highlight=4, show=False, save=path
    )
    assert isinstance(ax, Axes)
    assert path.stat().st_size > 0
    assert "Pearson r" in ax.get_title()
    assert len(ax.texts) == 4
    control = adata[adata.obs["perturbation"] == "control"]
    ax = pl.predicted_vs_observed(
        model.predict("g2", n_cells=10, return_mean=True), adata, control=control, show=False
    )
    assert ax.get_title().startswith("g2")
    with pytest.raises(ValueError, match="choose one"):
        pl.predicted_vs_observed(predicted, adata, show=False)


def test_latent_graph(small_model, tmp_path):
    _, model = small_model
    path = tmp_path / "graph.png"
    ax = pl.latent_graph(model.get_graph(), top_n=10, show=False, save=path)
    assert isinstance(ax, Axes)
    assert path.stat().st_size > 0
    graph = nx.DiGraph()
    graph.add_weighted_edges_from([("a", "b", 0.5), ("b", "c", -2.0), ("a", "c", 0.1)])
    ax = pl.latent_graph(graph, top_n=2, layout="circular", show=False)
    assert len(ax.texts) == 3  # labels of the nodes touched by the two strongest edges
    empty = nx.DiGraph()
    empty.add_nodes_from(["a", "b"])
    ax = pl.latent_graph(empty, show=False, save=tmp_path / "empty.png")
    assert (tmp_path / "empty.png").exists()
