"""What the latent structure does not explain of the trained perturbations, fitted after training.

Training shapes the shared parts of the model (encoder, latent SCM, decoder) mostly on the
control cells' covariation: that is what lets an unseen target's knock-down propagate
sensibly. It leaves the training perturbations under-fitted, and weighting their fit up in
the loss makes unseen predictions worse (validation screens, ``benchmarks/ablations.py``):
with a few dozen latent nodes, the decoder cannot reproduce every trained effect on every
gene. Calibration keeps the structure and fits, for each trained target ``t``, in this
order:

0. the **decrease bound** ``B`` of the module (:meth:`~sccvae._module.SCCVAEModule.saturate`):
   every predicted decrease is squashed to ``B tanh(change / B)``, with ``B`` 1.1 times the
   largest decrease of any gene in any training label, so that two knock-downs that each
   lower a gene near that limit add to less than their sum. Where training labels include
   combinations, the fit is also made without a bound and the better fit of the training
   labels is kept (combinations that add up refute the bound);
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
   trained perturbation is then reproduced.

A combination of trained targets is predicted by the structure (with the corrections) plus
the sum of its targets' residuals, saturated and clipped at the floor: additive in that
unbounded scale where the structure is, and with the interaction the structure predicts
where it is not. Single perturbations are reproduced whatever ``delta_t``; unseen targets
have neither correction (their changes are saturated like all others).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ._constants import REGISTRY_KEYS
from ._inputs import dense
from ._module import saturate

logger = logging.getLogger(__name__)


def calibrate_training_targets(
    model,
    train_idx: np.ndarray,
    n_cells: int = 256,
    ridge: float = 1e-3,
    seed: int = 0,
    correction_steps: int = 100,
    correction_cells: int = 32,
    decrease_bound: float | None = 1.1,
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
    decrease_bound
        The module's :attr:`~sccvae._module.SCCVAEModule.decrease_bound` (how far a gene
        can fall, see :meth:`~sccvae._module.SCCVAEModule.saturate`) is this factor times
        the largest decrease of any gene in any training label (log-normalised units);
        ``None``: no bound (decreases of a combination add without saturating).

    Returns
    -------
    The squared error of the standardised mean changes of the training labels over all
    genes, before calibration, after the latent corrections, and after the residuals
    (``"before"``, ``"corrected"``, ``"after"``), and the decrease bound
    (``"decrease_bound"``, infinite without one).
    """
    module = model.module
    train_idx = np.asarray(train_idx)
    codes = (
        model.adata_manager.get_from_registry(REGISTRY_KEYS.PERTURBATION_KEY)
        .ravel()
        .astype(int)[train_idx]
    )
    is_control = module.label_is_control.cpu().numpy()
    labels = np.array([c for c in np.unique(codes) if not is_control[c]], dtype=int)
    if labels.size == 0:
        return {}
    expression = model._expression(model.adata)
    device = model.device

    def standardized(rows: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(dense(expression[rows]), dtype=torch.float32, device=device)
        return module.standardize(x)

    def standardized_mean(rows: np.ndarray) -> torch.Tensor:
        total = torch.zeros(module.n_input, device=device)
        for start in range(0, rows.size, 2048):
            total += standardized(rows[start : start + 2048]).sum(dim=0)
        return total / rows.size

    control_rows = train_idx[is_control[codes]]
    with torch.no_grad():
        control_mean = standardized_mean(control_rows)
        observed = torch.stack(
            [standardized_mean(train_idx[codes == code]) - control_mean for code in labels]
        )

    was_training = module.training
    module.eval()
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(control_rows, size=min(n_cells, control_rows.size), replace=False))
    with torch.no_grad():
        x = torch.as_tensor(dense(expression[sample]), dtype=torch.float32, device=device)
        qz = module.inference(x)["qz"]
        # a posterior draw, as `predict` uses: with a wide posterior (abstract nodes) the mean
        # change over draws is not the change at the posterior means
        noise = torch.randn(qz.loc.shape, generator=torch.Generator().manual_seed(seed))
        z = qz.loc + qz.scale * noise.to(device)
        cells = module.standardize(x)
    weights = module.label_targets[torch.as_tensor(labels, device=device)]  # labels x targets
    trained = weights.sum(dim=0) > 0  # targets with training cells (all of them, normally)
    floor = (module.expression_floor - module.gene_center) / module.gene_scale

    module.clear_calibration()
    before = _structural_changes(module, z, cells, weights, floor)
    largest_decrease = float((-observed * module.gene_scale).max())
    bounds = [float("inf")]
    if decrease_bound is not None and largest_decrease > 0:
        bounds.insert(0, float(decrease_bound) * largest_decrease)
        if not bool((weights.sum(dim=1) > 1).any()):
            bounds = bounds[:1]  # without trained combinations both fit the labels alike
    fits = []
    for bound in bounds:  # with trained combinations, the bound that fits them better
        module.clear_calibration()
        module.decrease_bound.fill_(bound)
        corrected, after = _fit_corrections(
            module, z, cells, weights, observed, floor, trained, ridge,
            correction_steps, correction_cells,
        )  # fmt: skip
        errors = {
            name: float(((changes - observed) ** 2).mean())
            for name, changes in (("before", before), ("corrected", corrected), ("after", after))
        }
        fits.append((errors["after"], errors, module.calibration_state()))
    _, errors, state = min(fits, key=lambda fit: fit[0])
    module.load_calibration_state(state)
    module.train(was_training)
    errors["decrease_bound"] = float(module.decrease_bound)
    logger.info(
        "Calibrated %d training perturbations: squared error of mean changes %.4f -> %.4f "
        "(latent corrections) -> %.4f (residuals)",
        labels.size, errors["before"], errors["corrected"], errors["after"],
    )  # fmt: skip
    return errors


def _fit_corrections(
    module, z, cells, weights, observed, floor, trained, ridge, correction_steps,
    correction_cells,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Fit the latent corrections, then the residuals, at the module's decrease bound.

    Returns the mean changes of the labels after the corrections and after the residuals.
    """
    if correction_steps > 0:
        correction = _fit_latent_corrections(
            module, z[:correction_cells], weights, observed, correction_steps
        )
        module.target_correction.copy_(correction * trained[:, None])
    with torch.no_grad():
        # one pass over the labels gives the corrected structure's mean change and the gap
        base = cells.mean(dim=0)
        bound = module.decrease_bound / module.gene_scale
        corrected, gaps = [], []
        for drive, target in zip(_cell_changes(module, z, weights), observed, strict=True):
            shifted = cells + module.saturate(drive, module.gene_scale)
            corrected.append(torch.maximum(shifted, floor).mean(dim=0) - base)
            gaps.append(_censored_shift(cells, drive, base, target, floor, bound))
        corrected = torch.stack(corrected)
        gaps = torch.stack(gaps).double()  # labels x genes
        w = weights.double()
        gram = w.T @ w
        penalty = ridge * float(torch.diagonal(gram).mean().clamp_min(1.0))
        identity = torch.eye(gram.shape[0], dtype=torch.float64, device=gram.device)
        residual = torch.linalg.solve(gram + penalty * identity, w.T @ gaps)  # targets x genes
        module.target_residual.copy_((residual * trained[:, None]).float())
        after = _structural_changes(module, z, cells, weights, floor, residual=True)
    return corrected, after


def _cell_changes(module, z: torch.Tensor, weights: torch.Tensor, residual: bool = False):
    """Yield, per row of ``weights``, every cell's change before it saturates (standardised).

    The structure's change (decoded shifted cells minus decoded control cells), plus the
    trained targets' residuals with ``residual``; predictions apply
    :meth:`~sccvae._module.SCCVAEModule.saturate` to it.
    """
    control = module._standardized_prediction(module.decode(module.scm(z)))
    shifts = module.shift(weights)
    for row, shift in zip(weights, shifts, strict=True):
        change = module._standardized_prediction(module.decode(module.scm(z, shift.expand_as(z))))
        change = change - control
        if residual:
            change = change + row @ module.target_residual
        yield change


@torch.no_grad()
def _structural_changes(module, z, cells, weights, floor, residual: bool = False) -> torch.Tensor:
    """Mean predicted change of every row of ``weights``: cells shifted, clipped at the floor."""
    base = cells.mean(dim=0)
    return torch.stack(
        [
            torch.maximum(cells + module.saturate(change, module.gene_scale), floor).mean(dim=0)
            - base
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
) -> torch.Tensor:
    """Fit latent corrections ``delta`` (targets x nodes) to the observed mean changes.

    A label's shift becomes ``shift_L + w_L delta``, propagated and decoded; its mean change
    over the cells (saturated, as predictions are) is brought to the observed one.

    The network is frozen (gradients are taken with respect to ``delta`` only); labels are
    processed in chunks so that memory stays at ``chunk x cells x genes``.
    """
    with torch.no_grad():
        control = module._standardized_prediction(module.decode(module.scm(z)))
        shifts = module.shift(weights)
    delta = torch.zeros(weights.shape[1], module.n_latent, device=z.device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=lr)
    n_labels = weights.shape[0]
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            for start in range(0, n_labels, chunk):
                rows = slice(start, start + chunk)
                shift = shifts[rows] + weights[rows] @ delta  # chunk x nodes
                u = module.scm(z[None] + shift[:, None, :])
                decoded = module.decode(u.reshape(-1, module.n_latent))
                decoded = module._standardized_prediction(decoded)
                drive = decoded.reshape(shift.shape[0], z.shape[0], -1) - control
                change = module.saturate(drive, module.gene_scale).mean(dim=1)
                loss = ((change - observed[rows]) ** 2).mean(dim=1).sum() / n_labels
                if start == 0:
                    loss = loss + penalty * (delta**2).mean()
                (grad,) = torch.autograd.grad(loss, delta)
                delta.grad = grad if delta.grad is None else delta.grad + grad
            optimizer.step()
    return delta.detach()


def _censored_shift(
    cells: torch.Tensor, drive: torch.Tensor, base: torch.Tensor, target: torch.Tensor,
    floor: torch.Tensor, bound: torch.Tensor, iterations: int = 50,
) -> torch.Tensor:  # fmt: skip
    """Gene-wise shift ``r`` with ``mean(max(cells + h(drive + r), floor)) - base = target``.

    All in standardised units; ``h`` is :func:`~sccvae._module.saturate` at the gene-wise
    ``bound`` (finite for all genes, or ``inf`` for all: none). The mean rises
    monotonically with ``r``, so bisection finds it; without a floor (``-inf``) and a
    response bound it is ``target + base - mean(cells + drive)``. A target beyond what the
    floor or the bound let any shift reach (the observed mean is from other cells) takes a
    shift that reaches the limit.
    """
    linear = target + base - (cells + drive).mean(dim=0)
    bounded = bool(torch.isfinite(bound).all())
    if not torch.isfinite(floor).any() and not bounded:
        return linear
    if bounded:  # tanh is flat 5 bounds away: every answer lies within this bracket
        span = linear.abs() + drive.abs().max(dim=0).values + 5 * bound
        low, high = -span, span
    else:  # clipping only raises the mean: the answer is at most the linear one
        low = torch.minimum(floor - (cells + drive).max(dim=0).values, linear)
        high = linear.clone()
    for _ in range(iterations):
        middle = (low + high) / 2
        response = saturate(drive + middle, bound)
        reached = torch.maximum(cells + response, floor).mean(dim=0) - base >= target
        high = torch.where(reached, middle, high)
        low = torch.where(reached, low, middle)
    return high
