"""Baselines that move the measured target genes: the mean change, plus what the target tells."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from sccvae._inputs import dense

from ._base import _Baseline, validation_score

logger = logging.getLogger(__name__)

#: Relative ridge penalties tried by ``MultiregBaseline(ridge="auto")``: ``alpha`` in
#: ``lambda = alpha * trace(S) / k`` (see :class:`MultiregBaseline`).
RELATIVE_RIDGE_GRID: tuple[float, ...] = (1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)

#: The relative penalty of ``MultiregBaseline(ridge="auto")`` when fewer than 2 training
#: single perturbations target measured genes, so none can be held out.
DEFAULT_RELATIVE_RIDGE = 0.01


class MeanTargetBaseline(_Baseline):
    """Predict the mean change, with each measured target gene moved by a typical own change.

    Every gene moves by the mean change over the training perturbations (as
    :class:`~sccvae.baselines.MeanBaseline`), except each target of the predicted
    perturbation that is a measured gene (in ``var_names``): it moves by ``own_change_``,
    the mean over the training *single* perturbations whose target is measured of that
    target gene's own change (mean expression in the perturbation's cells minus the control
    mean). Every measured target of a combination is set so; unmeasured targets leave the
    mean change; the control label predicts no change. When no training single perturbation
    targets a measured gene, ``own_change_`` is NaN and targets keep the mean change (the
    prediction is :class:`~sccvae.baselines.MeanBaseline`'s).

    This is the least a prediction can know about a knock-down of a measured gene without
    looking at any other gene: that the gene itself goes down.

    Parameters
    ----------
    seed
        Default seed for drawing control cells in :meth:`predict`.
    max_control_cells
        Training control cells kept for sampling (seeded subsample beyond this).

    Attributes
    ----------
    own_change_
        The mean own change of a measured target (NaN when unavailable).
    """

    def _fit_extra(self, x, codes: np.ndarray, control_rows: np.ndarray) -> None:
        self._column = {g: i for i, g in enumerate(self.var_names_)}
        deltas = self.perturbation_deltas_
        # single perturbations only: a combination's target also moves with its partners
        self._validation = [
            (label, targets[0])
            for label in self.training_perturbations_
            if len(targets := self._targets(label)) == 1 and targets[0] in self._column
        ]
        self._own_changes = np.array(
            [deltas.at[label, target] for label, target in self._validation], dtype=np.float64
        )
        self.own_change_ = (
            float(self._own_changes.mean()) if self._own_changes.size else float("nan")
        )
        if not self._own_changes.size:
            logger.info(
                "%s: no training single perturbation targets a measured gene; targets keep "
                "the mean change",
                type(self).__name__,
            )

    def _measured(self, targets: Sequence[str]) -> list[str]:
        return [t for t in targets if t in self._column]

    def _deltas(self, labels: list[str]) -> np.ndarray:
        mean = self.mean_delta_
        out = np.zeros((len(labels), self.var_names_.size))
        for row, label in enumerate(labels):
            targets = self._targets(label)
            if not targets:
                continue
            out[row] = mean
            if np.isfinite(self.own_change_):
                out[row, [self._column[t] for t in self._measured(targets)]] = self.own_change_
        return out


class MultiregBaseline(MeanTargetBaseline):
    """:class:`MeanTargetBaseline`, plus each gene moved with a target as it co-varies with it.

    For a measured target ``t`` the change of every other gene ``g`` is

    ``delta_g = mean_g + own_change_ * beta_tg``

    with ``mean`` the mean change over training perturbations, ``own_change_`` as in
    :class:`MeanTargetBaseline` (``delta_t = own_change_`` exactly) and ``beta_t`` the
    coefficients of ``x_t`` in the ridge regressions of every gene on the expression of the
    *regressors* across the training control cells, all regressors jointly: ``beta_tg`` is
    the change of ``x_g`` with a unit increase of ``x_t`` holding the other regressors fixed.
    The regressors are every measured target of the training perturbations plus the
    measured targets of the predicted perturbation, so a target that is co-expressed with
    another target does not take that target's partners as its own. A combination adds
    its measured targets' changes on top of the mean, and sets each target to
    ``own_change_``. Unmeasured targets leave the mean change; the control label predicts no
    change; without ``own_change_`` (no training single perturbation targets a measured
    gene) the prediction is :class:`~sccvae.baselines.MeanBaseline`'s.

    With ``S`` the ``k x k`` covariance of the regressors in control cells, the penalty is
    ``lambda = alpha * trace(S_train) / k_train`` (``alpha`` relative to the mean control
    variance of the training regressors, fixed at fit so that adding a predicted target
    does not change it). With ``ridge="auto"`` ``alpha`` is chosen from
    :data:`RELATIVE_RIDGE_GRID` by leave-one-perturbation-out over the training single
    perturbations of measured targets: each is predicted with ``own_change_`` and the mean
    change of the *other* perturbations (its target stays a regressor, as a predicted
    target does) and scored by the mean of the Pearson correlations of change over all
    genes, the 20 most changed genes and the 20 most changed genes other than the target
    (as :class:`~sccvae.baselines.CoexpressionBaseline` chooses its shrinkage); ties keep
    the larger penalty. With fewer than 2 such perturbations :data:`DEFAULT_RELATIVE_RIDGE`
    is used.

    Parameters
    ----------
    ridge
        ``"auto"`` (default) or a fixed relative penalty ``alpha >= 0``.
    seed
        Default seed for drawing control cells in :meth:`predict`.
    max_control_cells
        Training control cells kept (seeded subsample beyond this); the regressions use
        them.

    Attributes
    ----------
    own_change_
        The mean own change of a measured target (NaN when unavailable).
    measured_targets_
        The training regressors: every measured target of a training perturbation.
    ridge_
        The relative penalty ``alpha`` used (chosen or given).
    ridge_scores_
        Mean leave-one-out score per ``alpha`` tried (``ridge="auto"``).
    """

    def __init__(
        self,
        ridge: float | str = "auto",
        seed: int = 0,
        max_control_cells: int | None = 50_000,
    ) -> None:
        if isinstance(ridge, str):
            if ridge != "auto":
                raise ValueError(f"`ridge` must be 'auto' or a number, got {ridge!r}.")
        elif not float(ridge) >= 0:  # also rejects NaN
            raise ValueError(f"`ridge` must be 'auto' or a non-negative number, got {ridge}.")
        super().__init__(seed=seed, max_control_cells=max_control_cells)
        self.ridge = ridge if isinstance(ridge, str) else float(ridge)
        self._params = {"ridge": self.ridge, **self._params}

    def _fit_extra(self, x, codes: np.ndarray, control_rows: np.ndarray) -> None:
        super()._fit_extra(x, codes, control_rows)
        controls = self.control_cells_
        n = controls.shape[0]
        if n < 3:
            raise ValueError("MultiregBaseline needs at least 3 training control cells.")
        # a float64 product: a sparse float32 sum accumulates in float32, even given a dtype
        self._control_center = np.asarray(controls.T @ np.full(n, 1.0 / n)).ravel()
        self.measured_targets_ = sorted(
            {
                t
                for label in self.training_perturbations_
                for t in self._measured(self._targets(label))
            }
        )
        self._regressor = {t: i for i, t in enumerate(self.measured_targets_)}
        self._regressor_columns = np.array(
            [self._column[t] for t in self.measured_targets_], dtype=np.int64
        )
        self._covariance = self._control_covariance(self.measured_targets_)  # genes x k
        base = self._covariance[self._regressor_columns]
        base = (base + base.T) / 2
        k = len(self.measured_targets_)
        self._ridge_scale = float(np.trace(base)) / k if k else 0.0

        if self.ridge == "auto":
            self.ridge_scores_ = self._leave_one_out_scores(base)
            scores = self.ridge_scores_
            # the best held-out score; ties keep the larger penalty (the simpler model)
            self.ridge_ = (
                max(scores, key=lambda a: (np.nan_to_num(scores[a], nan=-2.0), a))
                if scores
                else DEFAULT_RELATIVE_RIDGE
            )
            logger.info("MultiregBaseline: ridge %g, leave-one-out r %s", self.ridge_, scores)
        else:
            self.ridge_ = float(self.ridge)
            self.ridge_scores_ = {}
        penalty = self.ridge_ * self._ridge_scale
        self._base_inverse = (
            np.linalg.pinv(base + penalty * np.eye(k), hermitian=True) if k else np.zeros((0, 0))
        )

    def _control_covariance(self, genes: Sequence[str]) -> np.ndarray:
        """Covariance across training control cells of every gene with each of ``genes``."""
        columns = [self._column[g] for g in genes]
        controls = self.control_cells_
        block = controls[:, columns]
        block = dense(block)
        centred = block.astype(np.float64) - self._control_center[columns]
        # the columns of `centred` sum to zero, so the genes need no centring
        return np.asarray(controls.T @ centred) / (controls.shape[0] - 1)

    def _leave_one_out_scores(self, base: np.ndarray) -> dict[float, float]:
        """Mean held-out score per relative penalty (empty: fewer than 2 to hold out)."""
        n_singles = len(self._validation)
        if n_singles < 2:
            return {}
        deltas = self.perturbation_deltas_.to_numpy()
        total, n_perts = deltas.sum(axis=0), deltas.shape[0]
        position = {label: i for i, label in enumerate(self.training_perturbations_)}
        values, vectors = np.linalg.eigh(base)
        rotated = vectors.T @ self._covariance.T  # k x genes
        rows = vectors[[self._regressor[t] for _, t in self._validation]]
        scores = {}
        for alpha in RELATIVE_RIDGE_GRID:
            denominator = values + alpha * self._ridge_scale
            inverse = np.divide(
                1.0,
                denominator,
                out=np.zeros_like(denominator),
                where=denominator > 1e-12 * max(values.max(initial=0.0), 1e-300),
            )
            betas = (rows * inverse) @ rotated  # held-out targets x genes
            held_out = []
            for i, (label, target) in enumerate(self._validation):
                observed = deltas[position[label]]
                own = (self._own_changes.sum() - self._own_changes[i]) / (n_singles - 1)
                mean = (total - observed) / (n_perts - 1)
                predicted = mean + own * betas[i]
                predicted[self._column[target]] = own
                held_out.append(validation_score(predicted, observed, [self._column[target]]))
            scores[float(alpha)] = (
                float(np.nanmean(held_out)) if np.isfinite(held_out).any() else float("nan")
            )
        return scores

    def _coefficient_rows(self, targets: list[str]) -> np.ndarray:
        """``beta_t`` of each (measured) target, regressors: training ones plus ``targets``."""
        k = len(self.measured_targets_)
        extra = [t for t in dict.fromkeys(targets) if t not in self._regressor]
        a_inverse, covariance = self._base_inverse, self._covariance
        if not extra:
            return a_inverse[[self._regressor[t] for t in targets]] @ covariance.T
        # the inverse of the joint matrix by blocks, from the cached training block: a
        # predicted target costs O(k^2) instead of a new k x k inversion
        covariance_extra = self._control_covariance(extra)  # genes x e
        cross = covariance_extra[self._regressor_columns]  # k x e
        extra_block = covariance_extra[[self._column[t] for t in extra]]
        extra_block = (extra_block + extra_block.T) / 2
        extra_block += self.ridge_ * self._ridge_scale * np.eye(len(extra))
        a_cross = a_inverse @ cross  # k x e
        schur_inverse = np.linalg.pinv(extra_block - cross.T @ a_cross, hermitian=True)
        inverse_rows = np.zeros((len(targets), k + len(extra)))
        extra_position = {t: i for i, t in enumerate(extra)}
        for row, t in enumerate(targets):
            if t in self._regressor:
                i = self._regressor[t]
                spill = a_cross[i] @ schur_inverse
                inverse_rows[row, :k] = a_inverse[i] + spill @ a_cross.T
                inverse_rows[row, k:] = -spill
            else:
                j = extra_position[t]
                inverse_rows[row, :k] = -schur_inverse[j] @ a_cross.T
                inverse_rows[row, k:] = schur_inverse[j]
        return inverse_rows[:, :k] @ covariance.T + inverse_rows[:, k:] @ covariance_extra.T

    def _deltas(self, labels: list[str]) -> np.ndarray:
        out = super()._deltas(labels)
        if not np.isfinite(self.own_change_):
            return out
        for row, label in enumerate(labels):
            measured = list(dict.fromkeys(self._measured(self._targets(label))))
            if not measured:
                continue
            out[row] += self.own_change_ * self._coefficient_rows(measured).sum(axis=0)
            out[row, [self._column[t] for t in measured]] = self.own_change_
        return out

    def coefficients(self, targets: str | Sequence[str]) -> pd.DataFrame:
        """Ridge coefficients ``beta_t`` of measured targets (targets x genes).

        The regressors are the training ones (:attr:`measured_targets_`) plus ``targets``,
        as when predicting a perturbation of ``targets``.
        """
        self._check_fitted()
        targets = [targets] if isinstance(targets, str) else [str(t) for t in targets]
        unmeasured = [t for t in targets if t not in self._column]
        if unmeasured:
            raise ValueError(
                f"Target(s) {unmeasured[:20]} are not measured genes (var_names); they have no "
                "coefficients (MultiregBaseline predicts them with the mean change)."
            )
        return pd.DataFrame(
            self._coefficient_rows(targets), index=pd.Index(targets), columns=self.var_names_
        )
