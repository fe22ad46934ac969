"""The two baselines that use what an unseen target's gene tells: coexpression and neighbours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from sccvae.baselines import CoexpressionBaseline, KnnBaseline

GENES = [f"g{i}" for i in range(8)]


def coexpression_data(seed=0, n_ctrl=4000, n_per=200):
    """Control cells in which g1 = 0.5 g0 and g2 = -g0 (plus noise); g3 is independent.

    Training perturbations knock down g4 and g5 by 1 (their own gene), so s = -1.
    """
    rng = np.random.default_rng(seed)
    base = np.full(len(GENES), 2.0)

    def cells(n, shift):
        g0 = rng.normal(0, 0.5, n)
        x = base + rng.normal(0, 0.05, (n, len(GENES)))
        x[:, 0] += g0
        x[:, 1] += 0.5 * g0
        x[:, 2] += -1.0 * g0
        x[:, 3] += rng.normal(0, 0.5, n)
        return x + shift

    shifts = {"g4": np.eye(len(GENES))[4] * -1.0, "g5": np.eye(len(GENES))[5] * -1.0}
    blocks, labels = [cells(n_ctrl, 0.0)], ["control"] * n_ctrl
    for label, shift in shifts.items():
        blocks.append(cells(n_per, shift))
        labels += [label] * n_per
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    return AnnData(np.vstack(blocks).astype(np.float32), obs=obs, var=pd.DataFrame(index=GENES))


def test_coexpression_rule_matches_its_definition():
    adata = coexpression_data()
    model = CoexpressionBaseline(shrinkage=0.0).fit(adata)
    controls = adata.X[adata.obs["perturbation"].to_numpy() == "control"].astype(np.float64)
    deltas = model.perturbation_deltas_
    s = np.mean([deltas.loc["g4", "g4"], deltas.loc["g5", "g5"]])
    assert model.shift_ == pytest.approx(s)
    cov = np.cov(controls, rowvar=False)
    expected = s * cov[:, 0] / cov[0, 0]
    predicted = model.predict_delta(["g0"]).to_numpy()[0]
    np.testing.assert_allclose(predicted, expected, rtol=1e-6, atol=1e-9)
    # and it recovers the slopes the data were built with: g1 = 0.5 g0, g2 = -g0
    np.testing.assert_allclose(predicted[:3], s * np.array([1.0, 0.5, -1.0]), atol=0.03)
    assert abs(predicted[3]) < 0.03
    # a combination adds its targets' changes
    both = model.predict_delta(["g0+g3"]).to_numpy()[0]
    np.testing.assert_allclose(both, predicted + model.predict_delta(["g3"]).to_numpy()[0])


def test_coexpression_predicted_cells_carry_their_source():
    adata = coexpression_data()
    model = CoexpressionBaseline(shrinkage=0.0).fit(adata)
    pred = model.predict(["g0"], n_cells=50, seed=1)
    assert pred.obs["control_cell"].isin(adata.obs_names).all()
    sources = adata[pred.obs["control_cell"].to_numpy()].X
    np.testing.assert_allclose(
        pred.X - sources, np.tile(model.predict_delta(["g0"]).to_numpy(), (50, 1)), atol=1e-5
    )


def test_coexpression_shrinkage_removes_small_correlations():
    adata = coexpression_data()
    plain = CoexpressionBaseline(shrinkage=0.0).fit(adata).slopes(["g0"]).to_numpy()[0]
    shrunk = CoexpressionBaseline(shrinkage=0.5).fit(adata).slopes(["g0"]).to_numpy()[0]
    assert shrunk[0] == pytest.approx(1.0)  # a target's own slope stays 1
    independent = np.abs(plain[3:]) > 0
    assert independent.all() and np.all(shrunk[3:] == 0.0)  # |r| < 0.5: zeroed
    assert 0 < abs(shrunk[1]) < abs(plain[1])  # r ~ 0.99, shrunk by 0.5
    auto = CoexpressionBaseline().fit(adata)
    assert auto.shrinkage_ in auto.shrinkage_scores_
    assert auto.shrinkage_scores_[auto.shrinkage_] == max(auto.shrinkage_scores_.values())


def test_coexpression_errors():
    adata = coexpression_data()
    model = CoexpressionBaseline().fit(adata)
    with pytest.raises(ValueError, match=r"NOTAGENE.*not measured genes"):
        model.predict(["NOTAGENE"])
    with pytest.raises(ValueError, match="shrinkage"):
        CoexpressionBaseline(shrinkage=1.5)
    with pytest.raises(ValueError, match="shrinkage"):
        CoexpressionBaseline(shrinkage="lots")
    unmeasured = adata.copy()
    unmeasured.obs["perturbation"] = unmeasured.obs["perturbation"].replace({"g4": "X", "g5": "Y"})
    with pytest.raises(ValueError, match="targets are measured"):
        CoexpressionBaseline().fit(unmeasured)


def knn_data():
    """Training perturbations A, B, C with known changes; D lies next to A, A + B on C."""
    rng = np.random.default_rng(0)
    changes = {"A": np.arange(8.0) / 8, "B": -np.arange(8.0)[::-1] / 8, "C": np.sin(np.arange(8.0))}
    blocks, labels = [2.0 + rng.normal(0, 0.01, (300, 8))], ["control"] * 300
    for label, change in changes.items():
        blocks.append(2.0 + change + rng.normal(0, 0.01, (100, 8)))
        labels += [label] * 100
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    adata = AnnData(np.vstack(blocks).astype(np.float32), obs=obs, var=pd.DataFrame(index=GENES))
    embedding = pd.DataFrame(
        [[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [1.0, 0.1]], index=["A", "B", "C", "D"]
    )
    return adata, embedding


def test_knn_copies_and_weights_its_neighbours():
    adata, embedding = knn_data()
    nearest = KnnBaseline(k=1, embedding=embedding).fit(adata)
    deltas = nearest.perturbation_deltas_
    np.testing.assert_allclose(nearest.predict_delta("D").to_numpy()[0], deltas.loc["A"])
    two = KnnBaseline(k=2, embedding=embedding).fit(adata)
    unit = embedding.to_numpy() / np.linalg.norm(embedding.to_numpy(), axis=1, keepdims=True)
    w_a, w_c = unit[3] @ unit[0], unit[3] @ unit[2]
    expected = (w_a * deltas.loc["A"] + w_c * deltas.loc["C"]) / (w_a + w_c)
    np.testing.assert_allclose(two.predict_delta("D").to_numpy()[0], expected)
    # a combination is embedded as the sum of its targets: A + B points at C
    np.testing.assert_allclose(nearest.predict_delta("A+B").to_numpy()[0], deltas.loc["C"])


def test_knn_chooses_k_by_leave_one_out_and_errors():
    adata, embedding = knn_data()
    model = KnnBaseline(embedding=embedding).fit(adata)
    assert model.k_ in model.k_scores_ and set(model.k_scores_) <= {1, 2}
    onehot = KnnBaseline(embedding="onehot").fit(adata)
    np.testing.assert_allclose(
        onehot.predict_delta("A").to_numpy()[0], onehot.perturbation_deltas_.loc["A"], atol=1e-12
    )
    with pytest.raises(ValueError, match=r"cannot embed target\(s\) \['D'\]"):
        onehot.predict("D")
    with pytest.raises(ValueError, match="`k`"):
        KnnBaseline(k=0)
    with pytest.raises(ValueError, match="embedding"):
        KnnBaseline(embedding="go")


def test_knn_coexpression_embedding_is_the_default():
    from tests.conftest import make_toy_adata

    adata = make_toy_adata(n_single=8, doubles=())
    model = KnnBaseline().fit(adata)
    assert model.gene_embedding_.shape[0] == adata.n_vars  # every measured gene
    pred = model.predict(["g20", "g21+g22"], n_cells=10)
    assert pred.n_obs == 20 and np.isfinite(pred.X).all()
