"""What unseen targets borrow from training interventions, and how far their own shift spreads.

A target absent from training has no learned intervention beyond the shift of its own node.
Two things are fitted after training, from the training perturbations only, to say what else
its knock-down does:

- **borrowed interventions.** The target takes a weighted mean of the training
  perturbations' latent interventions, less their own node shifts (what they did to the
  *other* genes). The weight of training perturbation ``L`` grows with the similarity
  between the changes ``L`` caused and the target's *coexpression signature*: the
  regression slope of every gene on the target's gene among control cells, signed as the
  target's own shift (a knock-down lowers the genes that rise with its gene). The changes
  are compared through their t statistics, so that a gene measured with little precision
  counts little: ``w_L = softmax(r_L / T)``, ``r_L`` the Pearson correlation of the
  signature and ``L``'s t statistics over the genes (the target's and ``L``'s own genes set
  to zero), ``T`` the *borrowing temperature*. An infinite ``T`` borrows the plain mean of
  the training interventions: the change every perturbation shares, the mean baseline's.
  The borrowed part is then completed in gene space so that, alone, it reproduces the same
  weighted mean of the training changes (:meth:`~sccvae.SCCVAE.predict` does this on a
  seeded draw of control cells, as the calibration does for trained targets).
- **propagation weight** ``a``: the share of the target's own node shift that the learned
  network passes on to the other nodes and genes (its own gene always takes the whole
  shift).

Both are chosen leave-one-target-out over the training perturbations of single measured
genes (:func:`choose_borrowing`): each is predicted from the others as if unseen, scored by
the Pearson correlation of its predicted and observed changes over the other genes and over
its most significant ones, and the pair ``(T, a)`` with the best mean score wins. For the
propagation part this needs a stand-in for the network that has not seen the held-out
target's cells: the joint ridge regression of every gene on the measured training targets'
genes among control cells (what a linear network over those genes learns from unperturbed
cells). Without :data:`MIN_VALIDATION_TARGETS` such targets nothing can be validated: the
plain mean is borrowed and the network propagates the whole shift.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Borrowing temperatures tried; ``inf`` borrows the plain mean of the training interventions.
TEMPERATURES: tuple[float, ...] = (0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 3.0, float("inf"))
#: Propagation weights tried.
PROPAGATION_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Fewest training perturbations of single measured genes for a leave-one-out choice.
MIN_VALIDATION_TARGETS = 3
#: Genes of the top-changed set in the validation score (as the benchmark's DE sets).
N_TOP_GENES = 20
#: Most validation targets of the leave-one-out choice (a seeded draw beyond): the choice is
#: of two numbers, and each validation target costs a pass over every training label
MAX_VALIDATION_TARGETS = 200


@dataclass
class Borrowing:
    """The fitted description of what unseen targets borrow (see the module docstring).

    Attributes
    ----------
    temperature
        Borrowing temperature ``T`` (``inf``: the plain mean).
    propagation
        Propagation weight ``a`` of an unseen node gene's own shift.
    scores
        Leave-one-target-out score of every ``(T, a)`` tried (empty when not validated).
    n_validation
        Training targets the choice was validated on.
    """

    temperature: float = float("inf")
    propagation: float = 1.0
    scores: dict[tuple[float, float], float] = field(default_factory=dict)
    n_validation: int = 0


def control_signatures(control: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """Regression slope of every gene on each gene of ``columns`` across control cells.

    ``control`` is cells x genes (log-normalised, dense, float64). Row ``i`` of the result is
    ``Cov(x, x_c) / Var(x_c)`` for ``c = columns[i]``; a gene that never varies gets zeros.
    """
    centred = control - control.mean(axis=0)
    columns = np.asarray(columns, dtype=np.int64)
    regressors = centred[:, columns]
    covariance = regressors.T @ centred  # k x genes
    variance = (regressors**2).sum(axis=0)
    out = np.zeros_like(covariance)
    np.divide(covariance, variance[:, None], out=out, where=variance[:, None] > 0)
    return out


def similarities(
    signatures: np.ndarray,
    own_columns: Sequence[int],
    changes: np.ndarray,
    change_columns: Sequence[Sequence[int]],
) -> np.ndarray:
    """Pearson correlation of every signature with every training change (``k x labels``).

    Each target's own gene is set to zero in its signature and each label's target genes in
    its change, so that neither the knocked-down gene nor a training target's own drop
    decides the match.
    """
    signatures = np.array(signatures, dtype=np.float64)
    changes = np.array(changes, dtype=np.float64)
    signatures[np.arange(len(own_columns)), np.asarray(own_columns, dtype=np.int64)] = 0.0
    for row, columns in enumerate(change_columns):
        changes[row, list(columns)] = 0.0
    a = signatures - signatures.mean(axis=1, keepdims=True)
    b = changes - changes.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None, :]
    out = np.zeros((a.shape[0], b.shape[0]))
    np.divide(a @ b.T, norms, out=out, where=norms > 0)
    return out


def borrowable_changes(changes: np.ndarray, label_columns: Sequence[Sequence[int]]) -> np.ndarray:
    """Return the training changes with each label's own target genes set to zero.

    An unseen target borrows what similar perturbations did to the other genes, not their
    knock-down of their own genes.
    """
    out = np.array(changes, dtype=np.float64)
    for row, columns in enumerate(label_columns):
        out[row, list(columns)] = 0.0
    return out


def borrowing_weights(similarity: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(similarity / T)`` over the labels (rows sum to one); uniform for ``T = inf``."""
    similarity = np.atleast_2d(similarity)
    if not np.isfinite(temperature):
        return np.full(similarity.shape, 1.0 / similarity.shape[1])
    logits = similarity / temperature
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def _pooled_weights(similarity: np.ndarray, pools: np.ndarray, temperature: float) -> np.ndarray:
    """:func:`borrowing_weights` of each row over its own pool (zero elsewhere)."""
    if not np.isfinite(temperature):
        return pools / pools.sum(axis=1, keepdims=True)
    logits = np.where(pools, similarity / temperature, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / norm) if norm > 0 else float("nan")


def _score(
    predicted: np.ndarray, observed: np.ndarray, significance: np.ndarray, column: int
) -> float:
    """Mean of the Pearson correlations over all other genes and over the most significant.

    The most significant genes are the :data:`N_TOP_GENES` other genes of largest
    ``significance`` (the observed change's t statistic), as the benchmark's DE genes.
    """
    others = np.ones(observed.size, dtype=bool)
    others[column] = False
    top = np.flatnonzero(others)[np.argsort(-np.abs(significance[others]), kind="stable")]
    top = top[:N_TOP_GENES]
    return float(
        np.nanmean(
            [
                _pearson(predicted[others], observed[others]),
                _pearson(predicted[top], observed[top]),
            ]
        )
    )


def joint_regression(
    control: np.ndarray, columns: Sequence[int], ridge: float = 0.01
) -> np.ndarray:
    """Ridge regression of every gene on the genes of ``columns`` jointly (``k x genes``).

    The penalty is ``ridge`` times the mean variance of the regressors (control cells).
    """
    centred = control - control.mean(axis=0)
    regressors = centred[:, np.asarray(columns, dtype=np.int64)]
    gram = regressors.T @ regressors
    penalty = ridge * max(float(np.trace(gram)) / max(len(columns), 1), 1e-12)
    return np.linalg.solve(gram + penalty * np.eye(len(columns)), regressors.T @ centred)


def choose_borrowing(
    control: np.ndarray,
    changes: np.ndarray,
    significance: np.ndarray,
    label_columns: Sequence[Sequence[int]],
    validation: Sequence[int],
    sign: float,
    temperatures: Sequence[float] | None = None,
    propagation_weights: Sequence[float] | None = None,
) -> Borrowing:
    """Choose the borrowing temperature and propagation weight leave-one-target-out.

    Parameters
    ----------
    control
        Training control cells x genes, log-normalised (dense float64).
    changes
        Observed mean change (log-normalised) of every training perturbation, labels x genes.
    significance
        Each change's t statistic (labels x genes, signed): what a target's signature is
        compared with (noisy changes count less), and what ranks the genes of the
        validation score.
    label_columns
        The measured genes each label targets (columns; empty for unmeasured targets).
    validation
        Rows of ``changes`` that are single perturbations of a measured gene: each is
        predicted from the other labels (those not sharing its gene) as if unseen.
    sign
        Sign of an unseen target's own shift (negative for knock-downs).
    temperatures, propagation_weights
        The grid (default :data:`TEMPERATURES` and :data:`PROPAGATION_WEIGHTS`).

    Returns
    -------
    The chosen :class:`Borrowing`; the plain mean and full propagation with fewer than
    :data:`MIN_VALIDATION_TARGETS` validation targets.
    """
    temperatures = TEMPERATURES if temperatures is None else temperatures
    propagation_weights = (
        PROPAGATION_WEIGHTS if propagation_weights is None else propagation_weights
    )
    validation = list(validation)
    if len(validation) < MIN_VALIDATION_TARGETS:
        return Borrowing(n_validation=len(validation))
    if len(validation) > MAX_VALIDATION_TARGETS:
        draw = np.random.default_rng(0).choice(len(validation), MAX_VALIDATION_TARGETS, False)
        validation = [validation[i] for i in np.sort(draw)]
    columns = [label_columns[row][0] for row in validation]
    signatures = sign * control_signatures(control, columns)
    similarity = similarities(signatures, columns, significance, label_columns)
    own = np.array([changes[row, column] for row, column in zip(validation, columns, strict=True)])
    borrowable = borrowable_changes(changes, label_columns)
    regression = joint_regression(control, columns)
    # the labels each validation target may borrow from: not its own, none sharing its gene
    pools = np.array(
        [[column not in label for label in label_columns] for column in columns], dtype=bool
    )
    pools[np.arange(len(validation)), validation] = False
    per_target: dict[tuple[float, float], np.ndarray] = {}
    for temperature in temperatures:
        # every validation target's weights at once, zero outside its pool: one product
        borrowed = _pooled_weights(similarity, pools, temperature) @ borrowable
        for weight in propagation_weights:
            values = []
            for i, (row, column) in enumerate(zip(validation, columns, strict=True)):
                typical = np.delete(own, i).mean()
                predicted = borrowed[i] + weight * typical * regression[i]
                values.append(_score(predicted, changes[row], significance[row], column))
            per_target[(temperature, weight)] = np.nan_to_num(np.asarray(values))
    scores = {key: float(values.mean()) for key, values in per_target.items()}
    # ties go to the smoother borrowing (larger temperature) and the larger weight
    temperature, weight = max(reversed(scores), key=scores.get)
    logger.info(
        "Unseen targets borrow at temperature %s with propagation weight %s (%d validation "
        "targets, score %.3f)",
        temperature,
        weight,
        len(validation),
        scores[(temperature, weight)],
    )
    return Borrowing(temperature, weight, scores, len(validation))


def fit_borrowing(
    module,
    labels: torch.Tensor,
    changes: torch.Tensor,
    significance: torch.Tensor,
    label_columns: Sequence[Sequence[int]],
    control: np.ndarray,
) -> Borrowing:
    """Store the training labels' changes in ``module`` and choose how unseen targets borrow.

    Parameters
    ----------
    module
        The trained :class:`~sccvae.SCCVAEModule`: its ``label_changes``,
        ``label_significance`` and ``label_observed`` buffers are filled.
    labels
        Codes of the training labels (rows of ``module.label_targets``).
    changes, significance
        Their standardised mean changes and the changes' t statistics (labels x genes).
    label_columns
        The measured genes each label targets.
    control
        Training control cells, log-normalised (dense float64).
    """
    with torch.no_grad():
        for buffer in (module.label_changes, module.label_significance, module.label_observed):
            buffer.zero_()
        if labels.numel() == 0:
            return Borrowing()
        module.label_changes[labels] = changes
        module.label_significance[labels] = significance
        module.label_observed[labels] = True
    n_targets = module.label_targets[labels].sum(dim=1).cpu().numpy()
    validation = [
        row
        for row, columns in enumerate(label_columns)
        if n_targets[row] == 1 and len(columns) == 1
    ]
    logged = (changes * module.gene_scale).cpu().numpy().astype(np.float64)
    own = [logged[row, label_columns[row][0]] for row in validation]
    sign = float(np.sign(np.mean(own))) if own and np.mean(own) != 0 else -1.0
    return choose_borrowing(
        control, logged, significance.cpu().numpy(), label_columns, validation, sign
    )
