"""The coexpression rule: an unseen target moves each gene as much as the two co-vary."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._base import _Baseline, validation_score

logger = logging.getLogger(__name__)

#: Shrinkage thresholds tried by ``shrinkage="auto"`` (on correlations).
SHRINKAGE_GRID: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)


class CoexpressionBaseline(_Baseline):
    """Predict a target's effect from how its gene co-varies with the others in control cells.

    For a measured target ``t``, the change of every gene ``g`` is

    ``delta_g = s * Cov(x_g, x_t) / Var(x_t)``

    over the training control cells, with ``s`` the mean change of the target's *own* gene
    over the training perturbations (each measured target of each training perturbation
    counts once), so ``delta_t = s``. A combination sums the changes of its targets. This is
    the regression of every gene on the target gene among unperturbed cells, scaled to a
    typical knock-down: the information an unseen measured target carries without outside
    knowledge, and the bar a model must clear to show that it uses that signal at all.

    Small covariances are mostly estimation noise, so they can be shrunk: correlations
    ``r_gt`` are soft-thresholded, ``sign(r) max(|r| - lambda, 0)``, before being turned back
    into regression slopes. With ``shrinkage="auto"`` ``lambda`` is chosen from
    :data:`SHRINKAGE_GRID` by how well each single-target *training* perturbation's predicted
    change matches its observed one (the mean of the Pearson correlations of change over all
    genes, the 20 most changed genes and the 20 most changed genes other than the target):
    those perturbations play the role of validation perturbations, since their cells are
    not used to build the slopes (only ``s``, which does not change a correlation, comes
    from them).

    Targets that are not measured genes cannot be predicted: :meth:`predict` raises a
    ValueError naming them.

    Parameters
    ----------
    shrinkage
        ``"auto"`` (default), or a fixed threshold in ``[0, 1)`` (0 = the plain rule).
    seed
        Default seed for drawing control cells in :meth:`predict`.
    max_control_cells
        Training control cells kept (seeded subsample beyond this); the covariances use them.

    Attributes
    ----------
    shift_
        ``s``, the mean change of a target's own gene.
    shrinkage_
        The threshold used (chosen or given).
    shrinkage_scores_
        Mean validation score per threshold tried (``shrinkage="auto"``).
    """

    def __init__(
        self,
        shrinkage: float | str = "auto",
        seed: int = 0,
        max_control_cells: int | None = 50_000,
    ) -> None:
        if isinstance(shrinkage, str):
            if shrinkage != "auto":
                raise ValueError(f"`shrinkage` must be 'auto' or a number, got {shrinkage!r}.")
        elif not 0.0 <= float(shrinkage) < 1.0:
            raise ValueError(f"`shrinkage` must lie in [0, 1), got {shrinkage}.")
        super().__init__(seed=seed, max_control_cells=max_control_cells)
        self.shrinkage = shrinkage
        self._params = {"shrinkage": shrinkage, **self._params}

    def _fit_extra(self, x, codes: np.ndarray, control_rows: np.ndarray) -> None:
        controls = self.control_cells_
        self._n_controls = controls.shape[0]
        if self._n_controls < 3:
            raise ValueError("CoexpressionBaseline needs at least 3 training control cells.")
        n = self._n_controls
        if sp.issparse(controls):
            mean = np.asarray(controls.sum(axis=0, dtype=np.float64)).ravel() / n
            squares = np.asarray(controls.multiply(controls).sum(axis=0, dtype=np.float64))
            squares = squares.ravel() / n
        else:
            dense = np.asarray(controls, dtype=np.float64)
            mean, squares = dense.mean(axis=0), np.mean(dense**2, axis=0)
        self._control_center = mean
        self._control_sd = np.sqrt(np.maximum(squares - mean**2, 0.0) * n / (n - 1))
        self._column = {g: i for i, g in enumerate(self.var_names_)}

        own_changes, singles = [], []
        for label in self.training_perturbations_:
            measured = [t for t in self._targets(label) if t in self._column]
            delta = self.perturbation_deltas_.loc[label].to_numpy()
            own_changes += [delta[self._column[t]] for t in measured]
            if len(self._targets(label)) == 1 and measured:
                singles.append(label)
        if not own_changes:
            raise ValueError(
                "CoexpressionBaseline needs training perturbations whose targets are measured "
                "genes (in var_names), to learn the size of a target's own change."
            )
        self.shift_ = float(np.mean(own_changes))
        if self.shrinkage == "auto":
            self.shrinkage_scores_ = {
                float(lam): self._validation_score(singles, lam) for lam in SHRINKAGE_GRID
            }
            scores = self.shrinkage_scores_
            # the best validation score; ties (or no validation perturbation) keep less shrinkage
            best = max(scores, key=lambda lam: (np.nan_to_num(scores[lam], nan=-2.0), -lam))
            self.shrinkage_ = best
            logger.info("CoexpressionBaseline: shrinkage %.2f, validation r %s", best, scores)
        else:
            self.shrinkage_ = float(self.shrinkage)
            self.shrinkage_scores_ = {}

    def _validation_score(self, singles: list[str], shrinkage: float) -> float:
        if not singles:
            return float("nan")
        scores = []
        for label in singles:
            target = self._targets(label)[0]
            predicted = self.shift_ * self._slopes(target, shrinkage)
            observed = self.perturbation_deltas_.loc[label].to_numpy()
            scores.append(validation_score(predicted, observed, [self._column[target]]))
        return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")

    def _slopes(self, target: str, shrinkage: float) -> np.ndarray:
        """Regression slope of every gene on ``target`` across control cells, shrunk."""
        j = self._column[target]
        controls = self.control_cells_
        column = controls[:, j]
        column = column.toarray().ravel() if sp.issparse(column) else np.asarray(column).ravel()
        centred = column.astype(np.float64) - self._control_center[j]
        covariance = np.asarray(controls.T @ centred).ravel() / (self._n_controls - 1)
        sd_t, sd = self._control_sd[j], self._control_sd
        if sd_t == 0:
            return np.zeros(self.var_names_.size)
        with np.errstate(divide="ignore", invalid="ignore"):
            correlation = np.where(sd > 0, covariance / (sd * sd_t), 0.0)
        correlation = np.sign(correlation) * np.maximum(np.abs(correlation) - shrinkage, 0.0)
        correlation[j] = 1.0
        return correlation * sd / sd_t

    def _deltas(self, labels: list[str]) -> np.ndarray:
        target_sets = [self._targets(label) for label in labels]
        unmeasured = sorted({t for ts in target_sets for t in ts if t not in self._column})
        if unmeasured:
            raise ValueError(
                f"CoexpressionBaseline cannot predict target(s) {unmeasured[:20]}: they are not "
                "measured genes (var_names), so their coexpression is unknown. Drop these "
                "perturbations or use a baseline that takes an embedding (LinearBaseline, "
                "KnnBaseline)."
            )
        cache: dict[str, np.ndarray] = {}
        out = np.zeros((len(labels), self.var_names_.size))
        for row, targets in enumerate(target_sets):
            for t in targets:
                if t not in cache:
                    cache[t] = self.shift_ * self._slopes(t, self.shrinkage_)
                out[row] += cache[t]
        return out

    def slopes(self, targets: Sequence[str]) -> pd.DataFrame:
        """Regression slopes (shrunk) of every gene on each measured target, targets x genes."""
        self._check_fitted()
        unmeasured = [t for t in targets if t not in self._column]
        if unmeasured:
            raise ValueError(f"Target(s) {unmeasured[:20]} are not measured genes (var_names).")
        return pd.DataFrame(
            np.stack([self._slopes(t, self.shrinkage_) for t in targets]),
            index=pd.Index(list(targets)),
            columns=self.var_names_,
        )
