"""Calibration of the trained targets (latent corrections, residuals) and the expression floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sccvae import SCCVAE, SCCVAETrainingPlan
from sccvae._calibration import _censored_shift

from .conftest import make_toy_adata


def test_censored_shift_solves_the_clipped_mean():
    generator = torch.Generator().manual_seed(0)
    cells = torch.relu(torch.randn(200, 6, generator=generator))  # many cells at the floor
    base = cells.mean(dim=0)
    floor = torch.zeros(6)
    target = torch.tensor([-0.3, -0.1, 0.0, 0.2, -0.5, 1.0]) * base.clamp_max(1.0)
    shift = _censored_shift(cells, base, target, floor)
    reached = torch.maximum(cells + shift, floor).mean(dim=0) - base
    torch.testing.assert_close(reached, target, atol=1e-5, rtol=0)
    # a decrease needs a larger shift than without the floor, an increase the same one
    assert torch.all(shift[[0, 1, 4]] < target[[0, 1, 4]])
    torch.testing.assert_close(shift[[3, 5]], target[[3, 5]], atol=1e-5, rtol=0)
    # below what clipping every cell gives: the shift that clips them all
    too_low = _censored_shift(cells, base, -base - 1.0, floor)
    assert torch.all(torch.maximum(cells + too_low, floor) < 1e-6)
    # without a floor the shift is the linear one
    no_floor = torch.full((6,), -np.inf)
    torch.testing.assert_close(_censored_shift(cells, base, target, no_floor), target)


def test_calibration_corrects_latent_shifts_then_fits_residuals(trained_model):
    errors = trained_model.calibration_
    assert set(errors) == {"before", "corrected", "after"}
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
    # unseen targets get no correction
    unseen = next(g for g in trained_model.var_names_ if g not in trained_model.targets_)
    latents = trained_model.get_perturbation_latents([unseen], n_cells=20, seed=0)
    assert np.all(latents.obsm["correction"] == 0)


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
    SCCVAETrainingPlan(module)  # what `train` builds first
    assert module.target_residual.abs().sum() == 0 and module.target_correction.abs().sum() == 0
    with pytest.raises(ValueError, match="max_epochs"):
        model.train(max_epochs=0)
