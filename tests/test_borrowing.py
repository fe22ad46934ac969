"""What unseen targets borrow from the training interventions (sccvae.model._borrowing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sccvae.model._borrowing import (
    MIN_VALIDATION_TARGETS,
    borrowable_changes,
    borrowing_weights,
    choose_borrowing,
    control_signatures,
    joint_regression,
    similarities,
)


def _programme_screen(seed: int = 0, n_genes: int = 60, n_cells: int = 3000):
    """Control cells driven by two programmes; knocking down a target moves its programme.

    Targets 0-5 sit in programme A (genes 12-35), targets 6-11 in programme B (genes 36-59):
    a target's gene rises with its programme in control cells, and its knock-down lowers the
    programme's genes. Returns the control cells, and the changes, t statistics and target
    columns of 12 measured single knock-downs plus two unmeasured perturbations (one per
    programme).
    """
    rng = np.random.default_rng(seed)
    loading = np.zeros((2, n_genes))
    loading[0, 12:36] = rng.uniform(0.5, 1.0, 24)
    loading[1, 36:60] = rng.uniform(0.5, 1.0, 24)
    loading[0, :6] = 1.0
    loading[1, 6:12] = 1.0
    factors = rng.normal(size=(n_cells, 2))
    control = 3.0 + factors @ loading * 0.5 + rng.normal(0, 0.5, (n_cells, n_genes))
    changes, columns = [], []
    for target in range(12):
        change = -0.8 * loading[0 if target < 6 else 1]
        change[target] = -1.5
        changes.append(change + rng.normal(0, 0.05, n_genes))
        columns.append([target])
    for programme in range(2):
        changes.append(-0.8 * loading[programme] + rng.normal(0, 0.05, n_genes))
        columns.append([])
    changes = np.array(changes)
    significance = changes / 0.05
    return control, changes, significance, columns


def test_control_signatures_are_regression_slopes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    control = np.column_stack([x[:, 0], 2.0 * x[:, 0] + 0.1 * x[:, 1], x[:, 2]])
    slopes = control_signatures(control, [0])
    assert slopes[0, 0] == pytest.approx(1.0)
    assert slopes[0, 1] == pytest.approx(2.0, abs=0.02)
    assert abs(slopes[0, 2]) < 0.1
    constant = np.column_stack([control, np.ones(500)])
    assert np.all(control_signatures(constant, [3]) == 0)  # a gene that never varies


def test_similarities_leave_out_own_genes_and_weights_sum_to_one():
    signatures = np.array([[5.0, 1.0, 2.0, 3.0]])
    changes = np.array([[0.0, 1.0, 2.0, 3.0], [-9.0, 1.0, 2.0, 3.0], [0.0, 3.0, 2.0, 1.0]])
    # the signature's own gene (column 0) and label 1's own gene (column 0) do not count
    similarity = similarities(signatures, [0], changes, [[], [0], []])
    assert similarity[0, 0] == pytest.approx(similarity[0, 1])
    assert similarity[0, 0] > similarity[0, 2]
    weights = borrowing_weights(similarity, 0.1)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[0, 0] > weights[0, 2]
    np.testing.assert_allclose(borrowing_weights(similarity, float("inf")), 1 / 3)
    np.testing.assert_array_equal(borrowable_changes(changes, [[], [0], []])[1], [0, 1, 2, 3])


def test_leave_one_target_out_finds_the_programmes():
    control, changes, significance, columns = _programme_screen()
    borrowing = choose_borrowing(control, changes, significance, columns, range(12), -1.0)
    assert borrowing.n_validation == 12
    assert np.isfinite(borrowing.temperature)  # similar perturbations predict better than all
    best = borrowing.scores[(borrowing.temperature, borrowing.propagation)]
    assert best > borrowing.scores[(float("inf"), borrowing.propagation)]
    # a held-out target borrows from its own programme
    signature = -control_signatures(control, [3])
    weights = borrowing_weights(similarities(signature, [3], significance, columns), 0.1)[0]
    in_programme = [i for i in range(14) if i in range(6) or i == 12]
    assert weights[in_programme].sum() > 0.9


def test_too_few_validation_targets_borrow_the_mean_and_propagate_fully():
    control, changes, significance, columns = _programme_screen()
    few = list(range(MIN_VALIDATION_TARGETS - 1))
    borrowing = choose_borrowing(control, changes, significance, columns, few, -1.0)
    assert borrowing.temperature == float("inf") and borrowing.propagation == 1.0
    assert borrowing.scores == {}


def test_many_validation_targets_are_capped_by_a_seeded_draw(monkeypatch):
    import sccvae.model._borrowing as borrowing_module

    control, changes, significance, columns = _programme_screen()
    monkeypatch.setattr(borrowing_module, "MAX_VALIDATION_TARGETS", 8)
    first = choose_borrowing(control, changes, significance, columns, range(12), -1.0)
    again = choose_borrowing(control, changes, significance, columns, range(12), -1.0)
    assert first.n_validation == 8
    assert first.scores == again.scores  # the same draw every time


def test_joint_regression_holds_the_other_regressors_fixed():
    rng = np.random.default_rng(1)
    u = rng.normal(size=2000)
    v = u + 0.3 * rng.normal(size=2000)
    g = 2.0 * u + 0.1 * rng.normal(size=2000)
    control = np.column_stack([u, v, g])
    coefficients = joint_regression(control, [0, 1], ridge=1e-6)
    assert coefficients[0, 2] == pytest.approx(2.0, abs=0.05)
    assert abs(coefficients[1, 2]) < 0.05


def test_model_borrows_the_mean_change_at_infinite_temperature(trained_model):
    """Alone, the borrowed part reproduces the mean training change off the labels' targets."""
    model = trained_model
    module = model.module
    assert model.borrowing_temperature_ > 0 and 0.0 <= model.propagation_weight_ <= 1.0
    assert bool(module.label_observed.any())
    unseen = next(g for g in model.latent_node_names_ if g not in model.targets_)
    saved = model.borrowing_temperature_, model.propagation_weight_
    try:
        model.borrowing_temperature_, model.propagation_weight_ = float("inf"), 0.0
        pred = model.predict([unseen, "control"], n_cells=2000, seed=0, return_mean=True)
    finally:
        model.borrowing_temperature_, model.propagation_weight_ = saved
    rows = torch.nonzero(module.label_observed).ravel()
    changes = borrowable_changes(module.label_changes[rows].numpy(), model._label_columns(rows))
    expected = changes.mean(axis=0) * module.gene_scale.numpy()
    predicted = pred.X[0] - pred.X[1]
    others = np.array([g != unseen for g in model.var_names_])
    assert np.corrcoef(predicted[others], expected[others])[0, 1] > 0.95
    np.testing.assert_allclose(predicted[others], expected[others], atol=0.06)
