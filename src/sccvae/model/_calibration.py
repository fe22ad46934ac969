"""What the latent structure does not explain of the trained perturbations, fitted after training.

Training shapes the shared parts of the model (encoder, latent SCM, decoder) mostly on the
control cells' covariation: that is what lets an unseen target's knock-down propagate
sensibly. It leaves the training perturbations under-fitted, and weighting their fit up in
the loss makes unseen predictions worse (validation screens, ``benchmarks/ablations.py``):
with a few dozen latent nodes, the decoder cannot reproduce every trained effect on every
gene. Calibration keeps the structure and fits two corrections for each trained target
``t``, in this order:

1. a **latent correction** ``delta_t``, added to its shift, that brings the structure's
   prediction of its training labels as close to their observed mean change as the decoder
   allows (100 Adam steps with the network frozen). A combination of trained
   targets then propagates from where its singles really are, so the structure's
   interaction is evaluated at the right place;
2. a **residual** ``r_t`` on the (standardised) genes: with ``D_L`` the observed mean change
   of training label ``L``, the residuals solve the ridge regression ``G_L ~ sum_{t in L}
   r_t`` over all training labels, where ``G_L`` is the gene-wise shift that, added to the
   structure's predicted change before it saturates, gives the mean change ``D_L`` once
   saturated and clipped at the expression floor (no cell goes below zero counts). A
   trained perturbation is then reproduced. Each label's error on a gene is weighted by the
   squared slope of the bound at its gap (``_weighted_ridge``): a trained combination far
   out on the flat part of the bound does not pull its targets' residuals.

Both work through the module's **decrease bound** ``B``
(:meth:`~sccvae.module._module.SCCVAEModule.saturate`: every predicted decrease is squashed to
``B tanh(change / B)``), estimated here before training (:func:`estimate_decrease_bound`:
1.1 times the largest decrease of any gene in any training label, unless trained
combinations add up better without it) so that the structure is trained through it too and
learns changes before they saturate.

A combination of trained targets is predicted by the structure (with the corrections) plus
the sum of its targets' residuals, saturated and clipped at the floor: additive in that
unsaturated scale where the structure is, and with the interaction the structure predicts
where it is not. Single perturbations are reproduced whatever ``delta_t``; unseen targets
have neither correction, and their changes, learned before saturation, saturate once.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .._inputs import registered_expression
from ..module._saturation import saturate, saturation_slope
from ..module._shifts import Calibration
from ._gap import fitted_gap, reference_cells
from ._observed import ObservedChanges, observed_changes

logger = logging.getLogger(__name__)

#: Above this many trained labels x genes the calibration is the large-screen one: no latent
#: corrections and :data:`LARGE_SCREEN_CELLS` control cells (the full one would take from about
#: 5 minutes to hours on a CPU thread: ``benchmarks/calibration_cost.py``, ``scale.py``).
FULL_CALIBRATION_LIMIT = 2_000_000
#: Control cells of the large-screen calibration's residuals.
LARGE_SCREEN_CELLS = 64


def calibrate_training_targets(
    model,
    train_idx: np.ndarray,
    n_cells: int = 256,
    ridge: float = 1e-3,
    seed: int = 0,
    correction_steps: int = 100,
    correction_cells: int = 32,
    progress: bool = False,
    full: bool | None = None,
    observed: ObservedChanges | None = None,
) -> dict[str, float]:
    """Fit every trained target's latent correction and residual to its training cells.

    Parameters
    ----------
    model
        A trained :class:`~sccvae.SCCVAE`.
    train_idx
        Positions of the training cells in the model's AnnData (validation cells are left
        out).
    n_cells
        Training control cells (seeded draw; one seeded posterior draw of each, as
        :meth:`~sccvae.SCCVAE.predict` uses) to which the structure's predicted change is
        applied when the residuals are fitted.
    ridge
        Penalty of the residuals, relative to the mean number of labels per target.
    seed
        Seed of the control cells' draw.
    correction_steps
        Adam steps of the latent corrections (0: none).
    correction_cells
        Control cells (the first of the draw) over which the latent corrections are fitted.
    progress
        Show a progress bar over the latent corrections' steps (``scvi.utils.track``, in
        scvi-tools' progress bar style): the calibration of the built-in simulated screen
        took 17 s on one busy CPU thread, silent until now.
    full
        ``None`` (default): the full calibration up to :data:`FULL_CALIBRATION_LIMIT` trained
        labels x genes, the large-screen one beyond (residuals only, from
        :data:`LARGE_SCREEN_CELLS` control cells; trained singles are still reproduced, but
        combinations of trained targets propagate uncorrected shifts); ``True`` / ``False``
        force one or the other.
    observed
        The training cells' :func:`~sccvae.model._observed.observed_changes` when already read
        (:meth:`~sccvae.SCCVAE.train` reads them once); read from ``train_idx`` otherwise.

    Returns
    -------
    The squared error of the standardised mean changes of the training labels over all
    genes, before calibration, after the latent corrections, and after the residuals
    (``"before"``, ``"corrected"``, ``"after"``; ``nan`` for ``"after"`` in the large-screen
    calibration, which skips that pass), the module's decrease bound (``"decrease_bound"``,
    infinite without one) and whether the calibration was the full one (``"full"``, 1 or 0).
    """
    module = model.module
    if observed is None:
        observed = observed_changes(model, train_idx)
    labels, control_rows, observed = observed.labels, observed.control_rows, observed.observed
    if labels.size == 0:
        return {}
    if full is None:
        full = labels.size * module.n_input <= FULL_CALIBRATION_LIMIT
    if not full:
        logger.info(
            "Calibrating %d training perturbations x %d genes: the large-screen calibration "
            "(residuals from %d control cells, no latent corrections); train(calibrate='full') "
            "forces the full one.",
            labels.size,
            module.n_input,
            LARGE_SCREEN_CELLS,
        )
        correction_steps, n_cells = 0, min(n_cells, LARGE_SCREEN_CELLS)
    expression = registered_expression(model.adata_manager, model.adata)
    device = model.device

    was_training = module.training
    module.eval()
    z, cells = reference_cells(module, expression, control_rows, n_cells, seed)
    weights = module.label_targets[torch.as_tensor(labels, device=device)]  # labels x targets

    module.set_calibration(None)
    # without latent corrections the structure's changes before them are the corrected ones
    before = _structural_changes(module, z, cells, weights) if correction_steps > 0 else None
    corrected, after = _fit_corrections(
        module,
        z,
        cells,
        weights,
        observed,
        ridge,
        correction_steps,
        correction_cells,
        progress,
        diagnose=full,
    )
    module.train(was_training)
    before = corrected if before is None else before
    errors = {
        name: float(((changes - observed) ** 2).mean()) if changes is not None else float("nan")
        for name, changes in (("before", before), ("corrected", corrected), ("after", after))
    }
    errors["decrease_bound"] = float(module.decrease_bound)
    errors["full"] = float(full)
    logger.info(
        "Calibrated %d training perturbations: squared error of mean changes %.4f -> %.4f "
        "(latent corrections) -> %.4f (residuals)",
        labels.size,
        errors["before"],
        errors["corrected"],
        errors["after"],
    )
    return errors


def estimate_decrease_bound(
    model, train_idx: np.ndarray, factor: float = 1.1, observed: ObservedChanges | None = None
) -> float:
    """How far a gene's expression can fall, from the training perturbations' mean changes.

    ``factor`` times the largest decrease of any gene in any training label (log-normalised
    units). If the training labels include combinations whose targets were also trained
    alone, their observed changes decide: the bound is kept only if composing the singles'
    changes through it (:meth:`~sccvae.module._module.SCCVAEModule.saturate`) fits the
    combinations better than adding them; otherwise there is none (``inf``). ``observed``:
    the training cells' :func:`~sccvae.model._observed.observed_changes` when already read.
    """
    module = model.module
    if observed is None:
        observed = observed_changes(model, train_idx)
    labels = observed.labels
    changes = observed.observed * module.gene_scale  # log-normalised units
    largest = float(-changes.min()) if labels.size else 0.0
    if largest <= 0:
        return float("inf")
    bound = torch.tensor(factor * largest, device=changes.device)
    weights = module.label_targets[torch.as_tensor(labels, device=changes.device)]
    single = {int(w.argmax()): row for row, w in enumerate(weights) if w.sum() == 1}
    added, bounded = 0.0, 0.0
    for row, w in enumerate(weights):
        parts = torch.nonzero(w).ravel().tolist()
        if len(parts) < 2 or not all(t in single for t in parts):
            continue
        singles = changes[[single[t] for t in parts]]
        drives = torch.where(singles < 0, bound * torch.atanh(singles / bound), singles)
        added += float(((singles.sum(dim=0) - changes[row]) ** 2).sum())
        bounded += float(((saturate(drives.sum(dim=0), bound) - changes[row]) ** 2).sum())
    return float(bound) if bounded <= added else float("inf")


def _fit_corrections(
    module,
    z,
    cells,
    weights,
    observed,
    ridge,
    correction_steps,
    correction_cells,
    progress=False,
    diagnose=True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fit the latent corrections, then the residuals, at the module's decrease bound.

    Only targets with training labels (all of them, normally) get either. Returns the mean
    changes of the labels after the corrections and after the residuals (``None`` without
    ``diagnose``: that pass is a record, not needed by the fit).
    """
    trained = weights.sum(dim=0) > 0
    correction = torch.zeros_like(module.target_correction)
    if correction_steps > 0:
        correction = _fit_latent_corrections(
            module, z[:correction_cells], weights, observed, correction_steps, progress=progress
        )
        correction = correction * trained[:, None]
        module.set_calibration(Calibration(correction, torch.zeros_like(module.target_residual)))
    with torch.no_grad():
        # one pass over the labels gives the corrected structure's mean change and the gap
        base = cells.mean(dim=0)
        bound = module.decrease_bound / module.gene_scale
        corrected, gaps, slopes = [], [], []
        for drive, target in zip(_cell_changes(module, z, weights), observed, strict=True):
            corrected.append(module.realise(cells, drive).mean(dim=0) - base)
            gap = fitted_gap(module, cells, drive, target)
            gaps.append(gap)
            # how much the label's mean change still moves with its gap: ~0 far out on the
            # flat part of the bound
            slopes.append(saturation_slope(drive.mean(dim=0) + gap, bound))
        corrected = torch.stack(corrected)
        residual = _weighted_ridge(
            weights.double(),
            torch.stack(gaps).double(),
            torch.stack(slopes).double() ** 2,
            ridge,
        )
        module.set_calibration(Calibration(correction, (residual * trained[:, None]).float()))
        after = _structural_changes(module, z, cells, weights, residual=True) if diagnose else None
    return corrected, after


def _weighted_ridge(
    weights: torch.Tensor,
    gaps: torch.Tensor,
    gene_weights: torch.Tensor,
    ridge: float,
    chunk: int = 256,
) -> torch.Tensor:
    """Residuals (targets x genes) with ``gaps_L ~ sum_t weights_Lt r_t``, gene by gene.

    Each label's squared error on a gene is weighted by ``gene_weights`` (labels x genes):
    the squared slope of the bound at its gap, so that a label far out on the flat part of the
    bound, whose gap is large but barely matters to its mean change, does not pull the
    residuals of the targets it shares with other labels (a Gauss-Newton step from zero).
    Without a bound every weight is one and this is an ordinary ridge regression. Where each
    label has one target of its own, every trained single gets its gap whatever the weights.
    """
    if _one_label_per_target(weights):
        # every label is one target of its own (a screen of singles): each gene's system is
        # diagonal, and both forms below give each target its label's gap / (1 + ridge)
        residual = torch.zeros(
            weights.shape[1], gaps.shape[1], dtype=gaps.dtype, device=gaps.device
        )
        labels, targets = torch.nonzero(weights, as_tuple=True)
        residual[targets] = gaps[labels] / (1.0 + ridge)
        return residual
    gram = weights.T @ weights
    penalty = ridge * float(torch.diagonal(gram).mean().clamp_min(1.0))
    identity = torch.eye(weights.shape[1], dtype=weights.dtype, device=weights.device)
    if bool((gene_weights == 1).all()):
        return torch.linalg.solve(gram + penalty * identity, weights.T @ gaps)
    residual = torch.empty(weights.shape[1], gaps.shape[1], dtype=gaps.dtype, device=gaps.device)
    for start in range(0, gaps.shape[1], chunk):
        genes = slice(start, start + chunk)
        w = gene_weights[:, genes].clamp_min(1e-6)  # labels x chunk
        grams = torch.einsum("lg,lt,ls->gts", w, weights, weights)
        rhs = torch.einsum("lg,lt,lg->gt", w, weights, gaps[:, genes])
        # each target's penalty relative to its own weighted labels (Marquardt), so that a
        # target whose only label is far out on the bound still gets that label's gap
        diagonal = torch.diagonal(grams, dim1=1, dim2=2).clamp_min(1e-12)
        regularised = grams + torch.diag_embed(ridge * diagonal)
        solved = torch.linalg.solve(regularised, rhs[..., None])[..., 0]
        residual[:, genes] = solved.T
    return residual


def _one_label_per_target(weights: torch.Tensor) -> bool:
    """Whether every label has one target and every target at most one label."""
    binary = bool(((weights == 0) | (weights == 1)).all())
    return (
        binary and bool((weights.sum(dim=1) == 1).all()) and bool((weights.sum(dim=0) <= 1).all())
    )


def _cell_changes(module, z: torch.Tensor, weights: torch.Tensor, residual: bool = False):
    """Yield, per row of ``weights``, every cell's change before it saturates (standardised).

    The structure's change (decoded shifted cells minus decoded control cells), plus the
    trained targets' residuals with ``residual``; predictions apply
    :meth:`~sccvae.module._module.SCCVAEModule.saturate` to it.
    """
    control = module.standardized_prediction(module.decode(module.scm(z)))
    shifts = module.shift(weights)
    for row, shift in zip(weights, shifts, strict=True):
        change = module.standardized_prediction(module.decode(module.scm(z, shift.expand_as(z))))
        change = change - control
        if residual:
            change = change + row @ module.target_residual
        yield change


@torch.no_grad()
def _structural_changes(module, z, cells, weights, residual: bool = False) -> torch.Tensor:
    """Mean predicted change of every row of ``weights``, cells moved as predictions are."""
    base = cells.mean(dim=0)
    return torch.stack(
        [
            module.realise(cells, change).mean(dim=0) - base
            for change in _cell_changes(module, z, weights, residual)
        ]
    )


def _fit_latent_corrections(
    module,
    z: torch.Tensor,
    weights: torch.Tensor,
    observed: torch.Tensor,
    steps: int,
    lr: float = 0.1,
    penalty: float = 1e-3,
    chunk: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """Fit latent corrections ``delta`` (targets x nodes) to the observed mean changes.

    A label's shift becomes ``shift_L + w_L delta``, propagated and decoded; its mean change
    over the cells (saturated, as predictions are) is brought to the observed one.

    The network is frozen (gradients are taken with respect to ``delta`` only); labels are
    processed in chunks so that memory stays at ``chunk x cells x genes``.
    """
    with torch.no_grad():
        control = module.standardized_prediction(module.decode(module.scm(z)))
        shifts = module.shift(weights)
    delta = torch.zeros(weights.shape[1], module.n_latent, device=z.device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=lr)
    n_labels = weights.shape[0]
    from scvi.utils import track

    description = f"Calibrating {n_labels} training perturbations"
    with torch.enable_grad():
        for _ in track(range(steps), description=description, disable=not progress):
            optimizer.zero_grad()
            for start in range(0, n_labels, chunk):
                rows = slice(start, start + chunk)
                shift = shifts[rows] + weights[rows] @ delta  # chunk x nodes
                u = module.scm(z[None] + shift[:, None, :])
                decoded = module.decode(u.reshape(-1, module.n_latent))
                decoded = module.standardized_prediction(decoded)
                drive = decoded.reshape(shift.shape[0], z.shape[0], -1) - control
                change = module.saturate(drive, module.gene_scale).mean(dim=1)
                loss = ((change - observed[rows]) ** 2).mean(dim=1).sum() / n_labels
                if start == 0:
                    loss = loss + penalty * (delta**2).mean()
                (grad,) = torch.autograd.grad(loss, delta)
                delta.grad = grad if delta.grad is None else delta.grad + grad
            optimizer.step()
    return delta.detach()
