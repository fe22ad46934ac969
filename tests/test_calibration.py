"""Calibration of the trained targets (latent corrections, residuals) and the expression floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sccvae import SCCVAE, SCCVAETrainingPlan
from sccvae.model._calibration import estimate_decrease_bound
from sccvae.model._gap import _censored_shift
from sccvae.module._saturation import saturate

from .conftest import make_toy_adata


def test_censored_shift_solves_the_clipped_mean():
    generator = torch.Generator().manual_seed(0)
    cells = torch.relu(torch.randn(200, 6, generator=generator))  # many cells at the floor
    base = cells.mean(dim=0)
    floor = torch.zeros(6)
    unbounded = torch.full((6,), np.inf)
    no_drive = torch.zeros_like(cells)
    target = torch.tensor([-0.3, -0.1, 0.0, 0.2, -0.5, 1.0]) * base.clamp_max(1.0)
    shift = _censored_shift(cells, no_drive, base, target, floor, unbounded)
    reached = torch.maximum(cells + shift, floor).mean(dim=0) - base
    torch.testing.assert_close(reached, target, atol=1e-5, rtol=0)
    # a decrease needs a larger shift than without the floor, an increase the same one
    assert torch.all(shift[[0, 1, 4]] < target[[0, 1, 4]])
    torch.testing.assert_close(shift[[3, 5]], target[[3, 5]], atol=1e-5, rtol=0)
    # below what clipping every cell gives: the shift that clips them all
    too_low = _censored_shift(cells, no_drive, base, -base - 1.0, floor, unbounded)
    assert torch.all(torch.maximum(cells + too_low, floor) < 1e-6)
    # without a floor the shift is the linear one, net of the cells' own change
    no_floor = torch.full((6,), -np.inf)
    drive = 0.1 * torch.randn(200, 6, generator=generator)
    torch.testing.assert_close(
        _censored_shift(cells, drive, base, target, no_floor, unbounded),
        target - drive.mean(dim=0),
    )


def test_censored_shift_inverts_the_saturating_response():
    generator = torch.Generator().manual_seed(1)
    cells = 2.0 + torch.randn(100, 4, generator=generator)  # far above the floor
    drive = 0.2 * torch.randn(100, 4, generator=generator)  # the structure's own change
    base = cells.mean(dim=0)
    bound = torch.full((4,), 1.5)
    target = torch.tensor([-1.2, -0.3, 0.5, 1.4])
    shift = _censored_shift(cells, drive, base, target, torch.zeros(4), bound)
    reached = torch.maximum(cells + saturate(drive + shift, bound), torch.zeros(4))
    torch.testing.assert_close(reached.mean(dim=0) - base, target, atol=1e-4, rtol=0)
    # a decrease near the bound needs a drive well beyond it, and two such drives add to
    # less than the bound (not to -2.4); an increase is not bounded
    assert shift[0] < -1.5
    assert -1.5 < saturate(2 * shift[:1], bound[:1]) < -1.2
    torch.testing.assert_close(shift[3], target[3] - drive[:, 3].mean(), atol=1e-4, rtol=0)
    # a decrease beyond what the bound lets any shift reach takes a shift at that limit
    beyond = _censored_shift(cells, drive, base, torch.full((4,), -2.0), torch.zeros(4), bound)
    reached = torch.maximum(cells + saturate(drive + beyond, bound), torch.zeros(4))
    limit = torch.maximum(cells - bound, torch.zeros(4)).mean(dim=0) - base
    torch.testing.assert_close(reached.mean(dim=0) - base, limit, atol=1e-3, rtol=0)


def test_calibration_corrects_latent_shifts_then_fits_residuals(trained_model):
    errors = trained_model.calibration_
    assert set(errors) == {"before", "corrected", "after", "decrease_bound", "full"}
    assert errors["full"] == 1.0
    assert errors["corrected"] < errors["before"]  # the corrections move the structure closer
    # the residuals explain nearly all the rest (not all: the training double g0+g1 and its
    # singles share two residuals)
    assert errors["after"] < 0.05 * errors["before"]
    module = trained_model.module
    trained = module.label_targets.sum(dim=0) > 0
    assert torch.all(module.target_correction[trained].abs().sum(dim=1) > 0)
    # a combination propagates the sum of its targets' corrected shifts
    latents = trained_model.get_perturbation_latents(["g0", "g1", "g0+g1"], n_cells=20, seed=0)
    correction = latents.obsm["correction"]
    np.testing.assert_allclose(correction[2], correction[0] + correction[1], rtol=1e-5)
    # an unseen target has no correction of its own: it carries what it borrows from the
    # training interventions (sccvae.model._borrowing), which include the shared shift
    unseen = next(g for g in trained_model.var_names_ if g not in trained_model.targets_)
    latents = trained_model.get_perturbation_latents([unseen], n_cells=20, seed=0)
    sign = float(np.sign(latents.obs["magnitude"].iloc[0]))
    borrowed, _ = trained_model._borrowed_interventions([unseen], [sign])
    np.testing.assert_allclose(latents.obsm["correction"][0], borrowed[0].numpy(), atol=1e-6)
    assert np.abs(borrowed.numpy()).sum() > 0
    assert np.all(latents.obsm["shared_shift"] == 0)


def _screen_with_double(double_factor: float) -> SCCVAE:
    """Toy screen (far above the floor) whose double g1+g0 moves genes 2-4 by
    ``double_factor`` times the sum of its singles' changes."""
    adata = make_toy_adata()
    x = adata.X.toarray() + 3.0
    labels = adata.obs["perturbation"].to_numpy()
    rng = np.random.default_rng(0)
    control = x[labels == "control"]
    change = {"g0": np.zeros(x.shape[1]), "g1": np.zeros(x.shape[1])}
    change["g0"][0:5] = -0.5
    change["g1"][2:7] = -0.5
    change["g1+g0"] = change["g0"] + change["g1"]
    change["g1+g0"][2:5] *= double_factor
    for label, shift in change.items():
        rows = labels == label
        x[rows] = control[rng.choice(len(control), rows.sum())] + shift
    adata.X = x.astype(np.float32)
    SCCVAE.setup_anndata(adata)
    return SCCVAE(adata, n_latent=12, n_hidden=16, seed=0)


def test_decrease_bound_unless_trained_combinations_add_up():
    additive = _screen_with_double(1.0)
    everything = np.arange(additive.adata.n_obs)
    assert estimate_decrease_bound(additive, everything) == np.inf
    saturating = _screen_with_double(0.8)
    bound = estimate_decrease_bound(saturating, everything)
    x = saturating.adata.X
    labels = saturating.adata.obs["perturbation"].to_numpy()
    control = x[labels == "control"].mean(axis=0)
    largest = max((control - x[labels == p].mean(axis=0)).max() for p in set(labels) - {"control"})
    assert bound == pytest.approx(1.1 * largest, rel=1e-4)
    assert estimate_decrease_bound(saturating, everything, factor=1.5) > bound


def test_training_sets_the_decrease_bound_and_calibration_fits_through_it(trained_model):
    # the toy's trained double g1+g0 adds up less than its singles (clipped at zero): the
    # bound is kept, and the calibration still reproduces the training perturbations
    bound = trained_model.module.decrease_bound.item()
    assert np.isfinite(bound) and trained_model.calibration_["decrease_bound"] == bound
    assert trained_model.calibration_["after"] < 0.05 * trained_model.calibration_["before"]
    adata = make_toy_adata()
    singles = adata[adata.obs["perturbation"] != "g1+g0"].copy()
    SCCVAE.setup_anndata(singles)
    model = SCCVAE(singles, n_latent=12, n_hidden=16, seed=0)
    model.train(max_epochs=2, train_size=1.0, enable_progress_bar=False)
    x, labels = singles.X.toarray(), singles.obs["perturbation"].to_numpy()
    control = x[labels == "control"].mean(axis=0)
    largest = max((control - x[labels == p].mean(axis=0)).max() for p in set(labels) - {"control"})
    bound = model.module.decrease_bound.item()
    assert bound == pytest.approx(1.1 * largest, rel=1e-4)
    assert model.calibration_["after"] < 0.05 * model.calibration_["before"]
    # no decrease beyond the bound, whatever the knock-downs combined
    pred = model.predict(["g0+g1+g2+g3"], n_cells=50, seed=0, return_mean=True)
    assert np.all(pred.X[0] - control > -bound - 0.05)
    # without calibration there is no bound: the structure alone
    model.train(max_epochs=1, train_size=1.0, enable_progress_bar=False, calibrate=False)
    assert model.module.decrease_bound.item() == np.inf


def test_predictions_of_log_normalised_data_stay_at_or_above_zero(trained_model):
    assert trained_model.module.expression_floor.item() == 0.0
    pred = trained_model.predict(["g0+g1", "g2"], n_cells=50, seed=0)
    assert pred.X.min() >= 0.0
    decoded = trained_model.predict(["g0+g1"], n_cells=50, seed=0, counterfactual=False)
    assert decoded.X.min() >= 0.0


def test_no_floor_for_data_with_negative_values():
    adata = make_toy_adata()
    adata.X = adata.X.toarray() - 1.0
    SCCVAE.setup_anndata(adata)
    model = SCCVAE(adata, n_latent=12, n_hidden=16, seed=0)
    assert model.module.expression_floor.item() == -np.inf


def test_training_again_clears_the_calibration():
    adata = make_toy_adata()
    SCCVAE.setup_anndata(adata)
    model = SCCVAE(adata, n_latent=12, n_hidden=16, seed=0)
    model.train(max_epochs=2, enable_progress_bar=False)
    module = model.module
    assert module.target_residual.abs().sum() > 0 and module.target_correction.abs().sum() > 0
    SCCVAETrainingPlan(module)  # the plan only optimises: it leaves the calibration alone
    assert module.target_residual.abs().sum() > 0
    model.train(max_epochs=1, calibrate=False, enable_progress_bar=False)
    assert module.target_residual.abs().sum() == 0 and module.target_correction.abs().sum() == 0
    assert module.decrease_bound.item() == np.inf
    with pytest.raises(ValueError, match="max_epochs"):
        model.train(max_epochs=0)


def test_models_saved_without_a_decrease_bound_load_without_one(trained_model):
    module = trained_model.module
    state = {k: v for k, v in module.state_dict().items() if k != "decrease_bound"}
    saved = module.decrease_bound.clone()
    try:
        module.decrease_bound.fill_(1.0)
        module.load_state_dict(state)  # strict: the missing buffer is filled in
        assert module.decrease_bound.item() == np.inf
    finally:
        module.decrease_bound.copy_(saved)


def test_large_screens_get_the_residuals_only_calibration(monkeypatch):
    import sccvae.model._calibration as calibration

    adata = make_toy_adata()
    SCCVAE.setup_anndata(adata)
    monkeypatch.setattr(calibration, "FULL_CALIBRATION_LIMIT", 0)  # every screen is large
    model = SCCVAE(adata, n_latent=12, n_hidden=16, seed=0)
    model.train(max_epochs=2, enable_progress_bar=False)
    errors, module = model.calibration_, model.module
    assert errors["full"] == 0.0 and np.isnan(errors["after"])
    assert errors["before"] == errors["corrected"]  # no latent corrections to move it
    assert module.target_correction.abs().sum() == 0 and module.target_residual.abs().sum() > 0
    model.train(max_epochs=2, enable_progress_bar=False, calibrate="full")
    assert model.calibration_["full"] == 1.0 and module.target_correction.abs().sum() > 0
    with pytest.raises(ValueError, match="calibrate must be"):
        model.train(max_epochs=2, calibrate="fast")



def test_residuals_of_a_screen_of_singles_need_no_per_gene_solve(monkeypatch):
    import sccvae.model._calibration as calibration

    generator = torch.Generator().manual_seed(0)
    weights = torch.zeros(4, 5, dtype=torch.float64)
    weights[[0, 1, 2, 3], [2, 0, 4, 1]] = 1.0  # target 3 has no training label
    gaps = torch.randn(4, 7, generator=generator, dtype=torch.float64)
    gene_weights = torch.rand(4, 7, generator=generator, dtype=torch.float64) + 0.05
    fast = calibration._weighted_ridge(weights, gaps, gene_weights, 1e-3)
    monkeypatch.setattr(calibration, "_one_label_per_target", lambda weights: False)
    solved = calibration._weighted_ridge(weights, gaps, gene_weights, 1e-3)
    unweighted = calibration._weighted_ridge(weights, gaps, torch.ones_like(gaps), 1e-3)
    torch.testing.assert_close(fast, solved)
    torch.testing.assert_close(fast, unweighted)
    assert fast[3].abs().sum() == 0


def test_the_module_holds_a_calibration_until_it_is_cleared(trained_model):
    from sccvae.module._shifts import Calibration

    module = trained_model.module
    held = Calibration(module.target_correction.clone(), module.target_residual.clone())
    assert held.residual.abs().sum() > 0  # train() calibrated the trained targets
    try:
        module.set_calibration(None)
        assert module.training_targets()["residual"].abs().sum() == 0
        assert module.training_targets()["correction"].abs().sum() == 0
        module.set_calibration(held)
        torch.testing.assert_close(module.training_targets()["residual"], held.residual)
        torch.testing.assert_close(module.training_targets()["correction"], held.correction)
    finally:
        module.set_calibration(held)  # the fixture is shared
