"""Baselines that need no embedding: no change, the mean change, and sums of single changes."""

from __future__ import annotations

import numpy as np

from ._base import _Baseline


class ControlBaseline(_Baseline):
    """Predict no change: cells are training control cells.

    Parameters
    ----------
    seed
        Default seed for drawing control cells in :meth:`predict`.
    max_control_cells
        Training control cells kept for sampling (seeded subsample beyond this).
    """

    def _deltas(self, labels: list[str]) -> np.ndarray:
        return np.zeros((len(labels), self.var_names_.size))


class MeanBaseline(_Baseline):
    """Predict the mean change over all training perturbations, for every perturbation.

    The mean is over perturbations (each counts once, whatever its cell number) of
    ``mean(perturbation) - mean(control)``. The control label predicts no change.

    Parameters
    ----------
    seed
        Default seed for drawing control cells in :meth:`predict`.
    max_control_cells
        Training control cells kept for sampling (seeded subsample beyond this).
    """

    def _deltas(self, labels: list[str]) -> np.ndarray:
        mean = self.mean_delta_
        return np.stack([mean if self._targets(lab) else np.zeros_like(mean) for lab in labels])


class AdditiveBaseline(_Baseline):
    """Predict a perturbation by its observed change, or a combination by summing singles.

    For a label seen in training, its own observed mean change is returned. Otherwise the
    change is the sum over its targets of each target's *single*-perturbation change seen
    in training; a target never seen as a single perturbation is handled by ``unseen``.

    Parameters
    ----------
    unseen
        ``"mean"`` (use the mean change over training perturbations for that component),
        ``"zero"`` (contribute nothing) or ``"error"`` (raise a ValueError naming it).
    seed
        Default seed for drawing control cells in :meth:`predict`.
    max_control_cells
        Training control cells kept for sampling (seeded subsample beyond this).
    """

    def __init__(
        self, unseen: str = "mean", seed: int = 0, max_control_cells: int | None = 50_000
    ) -> None:
        if unseen not in ("mean", "zero", "error"):
            raise ValueError(f"`unseen` must be 'mean', 'zero' or 'error', got {unseen!r}.")
        super().__init__(seed=seed, max_control_cells=max_control_cells)
        self.unseen = unseen
        self._params = {"unseen": unseen, **self._params}

    def _deltas(self, labels: list[str]) -> np.ndarray:
        known = set(self.training_perturbations_)
        table = self.perturbation_deltas_
        mean = self.mean_delta_
        out = np.zeros((len(labels), self.var_names_.size))
        missing: list[str] = []
        for i, label in enumerate(labels):
            targets = self._targets(label)
            canon = self._canonical(targets)
            if canon in known:
                out[i] = table.loc[canon].to_numpy()
                continue
            for t in targets:
                if t in known:
                    out[i] += table.loc[t].to_numpy()
                elif self.unseen == "mean":
                    out[i] += mean
                elif self.unseen == "error":
                    missing.append(t)
        if missing:
            raise ValueError(
                f"Target(s) never seen as single perturbations in training: "
                f"{sorted(set(missing))}. Use AdditiveBaseline(unseen='mean') or 'zero' to "
                "predict them anyway."
            )
        return out
