"""What the latent structure does not explain of the trained perturbations, fitted after training.

Training shapes the shared parts of the model (encoder, latent SCM, decoder) mostly on the
control cells' covariation: that is what lets an unseen target's knock-down propagate
sensibly. It leaves the training perturbations under-fitted, and weighting their fit up in
the loss makes unseen predictions worse (validation screens, ``benchmarks/ablations.py``):
with a few dozen latent nodes, the decoder cannot reproduce every trained effect on every
gene. Calibration keeps the structure and adds, for each trained target ``t``, a residual
``r_t`` on the (standardised) genes: with ``D_L`` the observed mean change of training label
``L`` minus the change the structure predicts for it, the residuals solve the ridge
regression ``D_L ~ sum_{t in L} r_t`` over all training labels (for a single perturbation,
``r_t = D_t``). A trained perturbation is then reproduced, and a combination of trained
targets is predicted by the structure plus the sum of its targets' residuals: additive where
the structure is, and with the interaction the structure predicts (e.g. two knock-downs that
saturate the same genes). Unseen targets have no residual; their predictions do not change.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ._constants import REGISTRY_KEYS
from ._inputs import dense

logger = logging.getLogger(__name__)


@torch.no_grad()
def calibrate_training_targets(
    model, train_idx: np.ndarray, n_cells: int = 256, ridge: float = 1e-3, seed: int = 0
) -> dict[str, float]:
    """Fit every trained target's residual to the mean change of its training cells.

    Parameters
    ----------
    model
        A trained :class:`~sccvae.SCCVAE`.
    train_idx
        Positions of the training cells in the model's AnnData (validation cells are left
        out).
    n_cells
        Training control cells over which the structure's predicted change is averaged
        (posterior means, seeded draw).
    ridge
        Penalty of the residuals, relative to the mean number of labels per target.
    seed
        Seed of the control cells' draw.

    Returns
    -------
    The squared error of the standardised mean changes of the training labels, before and
    after calibration (``"before"``, ``"after"``), over all genes.
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

    def standardized_mean(rows: np.ndarray) -> torch.Tensor:
        total = torch.zeros(module.n_input, device=device)
        for start in range(0, rows.size, 2048):
            x = torch.as_tensor(
                dense(expression[rows[start : start + 2048]]), dtype=torch.float32, device=device
            )
            total += module.standardize(x).sum(dim=0)
        return total / rows.size

    control_rows = train_idx[is_control[codes]]
    control_mean = standardized_mean(control_rows)
    observed = torch.stack(
        [standardized_mean(train_idx[codes == code]) - control_mean for code in labels]
    )

    was_training = module.training
    module.eval()
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(control_rows, size=min(n_cells, control_rows.size), replace=False))
    x = torch.as_tensor(dense(expression[sample]), dtype=torch.float32, device=device)
    z = module.inference(x)["qz"].loc
    u0 = module.scm(z)
    control_decoded = module._standardized_prediction(module.decode(u0)).mean(dim=0)
    weights = module.label_targets[torch.as_tensor(labels, device=device)]  # labels x targets
    shifts = module.shift(weights)
    structural = (
        torch.stack(
            [
                module._standardized_prediction(
                    module.decode(module.scm(z, shift.expand_as(z)))
                ).mean(dim=0)
                for shift in shifts
            ]
        )
        - control_decoded
    )
    module.train(was_training)

    gaps = (observed - structural).double()  # labels x genes
    w = weights.double()
    gram = w.T @ w
    penalty = ridge * float(torch.diagonal(gram).mean().clamp_min(1.0))
    identity = torch.eye(gram.shape[0], dtype=torch.float64, device=device)
    residual = torch.linalg.solve(gram + penalty * identity, w.T @ gaps)  # targets x genes
    trained = w.sum(dim=0) > 0  # targets with training cells (all of them, normally)
    module.target_residual.copy_((residual * trained[:, None]).float())
    after = gaps - w @ residual
    errors = {"before": float((gaps**2).mean()), "after": float((after**2).mean())}
    logger.info(
        "Calibrated %d training perturbations: squared error of mean changes %.4f -> %.4f",
        labels.size, errors["before"], errors["after"],
    )  # fmt: skip
    return errors
