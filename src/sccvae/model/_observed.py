"""What the training cells show: each label's observed mean change, read in row chunks.

The calibration (:mod:`sccvae.model._calibration`), the decrease bound and what unseen targets
borrow (:mod:`sccvae.model._borrowing`) all start from the standardised mean change of every
training label against the training control cells. They are read in one pass over the
training cells, :data:`~sccvae._inputs.CHUNK` rows at a time, so that a genome-scale screen
(thousands of labels, hundreds of thousands of cells) never needs its expression in memory
at once: the registered matrix can be sparse or a backed h5ad.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .._inputs import CHUNK, dense, registered_expression, registered_label_codes


@dataclass(frozen=True)
class ObservedChanges:
    """Each training label's observed mean change against the training control cells.

    Attributes
    ----------
    labels
        Codes of the perturbed training labels, sorted.
    observed
        Their mean changes (labels x genes, float32, on the model's standardised scale).
    significance
        Each change's Welch t statistic (labels x genes): the change over its standard error
        (signed), zero where the genes never vary.
    control_rows
        Positions of the training control cells.
    """

    labels: np.ndarray
    observed: torch.Tensor
    significance: torch.Tensor
    control_rows: np.ndarray

    def to(self, device) -> ObservedChanges:
        """Return the same changes on ``device`` (training may have moved the model)."""
        return replace(
            self, observed=self.observed.to(device), significance=self.significance.to(device)
        )


@torch.no_grad()
def observed_changes(model, train_idx: np.ndarray) -> ObservedChanges:
    """Read the training labels' observed changes in one pass over the training cells.

    Parameters
    ----------
    model
        A :class:`~sccvae.SCCVAE`.
    train_idx
        Positions of the training cells in the model's AnnData.
    """
    module = model.module
    train_idx = np.asarray(train_idx)
    codes = registered_label_codes(model.adata_manager)[train_idx]
    is_control = module.label_is_control.cpu().numpy()
    labels = np.array([c for c in np.unique(codes) if not is_control[c]], dtype=int)
    control_rows = train_idx[is_control[codes]]
    device = model.device
    # group 0 holds the control cells, group i + 1 the cells of labels[i]
    group_of = np.zeros(len(is_control), dtype=np.int64)
    group_of[labels] = np.arange(1, labels.size + 1)
    counted = is_control[codes] | np.isin(codes, labels)
    rows, groups = train_idx[counted], group_of[codes[counted]]
    order = np.argsort(rows, kind="stable")  # a backed matrix is read in row order
    rows, groups = rows[order], groups[order]
    n_groups = labels.size + 1
    total = torch.zeros(n_groups, module.n_input, device=device, dtype=torch.float64)
    squares = torch.zeros_like(total)
    expression = registered_expression(model.adata_manager, model.adata)
    for start in range(0, rows.size, CHUNK):
        block = dense(expression[rows[start : start + CHUNK]])
        x = module.standardize(torch.as_tensor(block, dtype=torch.float32, device=device))
        x = x.double()
        index = torch.as_tensor(groups[start : start + CHUNK], device=device)
        total.index_add_(0, index, x)
        squares.index_add_(0, index, x**2)
    counts = torch.as_tensor(
        np.bincount(groups, minlength=n_groups), dtype=torch.float64, device=device
    )[:, None]
    mean = total / counts.clamp_min(1.0)
    # variance of the mean of each group's standardised expression
    variance = (squares / counts.clamp_min(1.0) - mean**2).clamp_min(0.0) / (counts - 1).clamp_min(
        1.0
    )
    mean, variance = mean.float(), variance.float()
    observed = mean[1:] - mean[0]
    error = (variance[1:] + variance[0]).sqrt()
    statistics = observed / error.clamp_min(1e-12) * (error > 0)
    return ObservedChanges(labels, observed, statistics, control_rows)
