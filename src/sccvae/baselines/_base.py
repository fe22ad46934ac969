"""The shared part of every baseline: training means, control cells and prediction."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccvae._inputs import dense, expression_floor
from sccvae._perturbations import (
    PerturbationDesign,
    canonical_label,
    check_control_label,
    design_of,
    perturbation_labels,
)
from sccvae.metrics import pearson

logger = logging.getLogger(__name__)


def _group_means(x, codes: np.ndarray, n_groups: int, chunk: int = 8192) -> np.ndarray:
    """Per-group means (float64) of the rows of ``x``; memory bounded by ``chunk`` rows."""
    sums = np.zeros((n_groups, x.shape[1]))
    for start in range(0, x.shape[0], chunk):
        c = codes[start : start + chunk]
        block = x[start : start + chunk]
        indicator = sp.csr_matrix(
            (np.ones(c.size), (c, np.arange(c.size))), shape=(n_groups, c.size)
        )
        if sp.issparse(block):
            sums += np.asarray((indicator @ block.astype(np.float64)).todense())
        else:
            sums += indicator @ np.asarray(block, dtype=np.float64)
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
    return sums / counts[:, None]


class _Baseline:
    """Shared fitting of control and per-perturbation means, and cell generation."""

    def __init__(self, seed: int = 0, max_control_cells: int | None = 50_000) -> None:
        self.seed = seed
        self.max_control_cells = max_control_cells
        self.is_fitted_ = False
        # hyperparameters for get_params / repr; subclasses put their own first
        self._params: dict[str, Any] = {"seed": seed, "max_control_cells": max_control_cells}

    # -- fitting ------------------------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters given at construction."""
        return dict(self._params)

    def __repr__(self) -> str:
        params = ", ".join(
            f"{k}={v!r}" for k, v in self._params.items() if not isinstance(v, pd.DataFrame)
        )
        return f"{type(self).__name__}({params})"

    def fit(
        self,
        adata: AnnData,
        perturbation_key: str = "perturbation",
        control_label: str = "control",
        combination_delimiter: str = "+",
        layer: str | None = None,
        train_indices: Sequence[int] | np.ndarray | None = None,
        *,
        design: PerturbationDesign | None = None,
    ) -> _Baseline:
        """Learn control and perturbation means from training cells.

        Parameters
        ----------
        adata
            Cells labelled in ``adata.obs[perturbation_key]``, log-normalised expression in
            ``X`` (or ``layers[layer]``). Not modified.
        perturbation_key, control_label, combination_delimiter
            How perturbations are labelled (``"A+B"`` equals ``"B+A"``).
        layer
            Layer to use instead of ``X``.
        train_indices
            Integer positions of the training cells (e.g. ``split.train_idx``); all cells if
            None.
        design
            The :class:`~sccvae._perturbations.PerturbationDesign` of ``adata`` (all its
            cells), when the caller has one; otherwise built from the labels. Predictions
            look labels up in it, so known labels are not parsed again.

        Returns
        -------
        ``self``, fitted.
        """
        if not isinstance(adata, AnnData):
            raise TypeError(f"Expected an AnnData, got {type(adata).__name__}.")
        if layer is None:
            x = adata.X
        else:
            if layer not in adata.layers:
                raise KeyError(f"Layer {layer!r} not in adata.layers ({list(adata.layers)}).")
            x = adata.layers[layer]
        if x is None:
            raise ValueError(
                "adata.X is empty; put log-normalised expression in X or pass `layer`."
            )
        if design is None:
            labels = perturbation_labels(adata.obs, perturbation_key)
        else:
            design = design_of(
                adata.obs, perturbation_key, control_label, combination_delimiter, design
            )
            labels = design.labels
        cell_names = adata.obs_names.astype(str).to_numpy()
        if train_indices is not None:
            rows = np.asarray(train_indices)
            if rows.dtype == bool:
                raise ValueError("`train_indices` must be integer positions, not a boolean mask.")
            rows = rows.astype(np.int64)
            if rows.size == 0:
                raise ValueError("`train_indices` is empty.")
            if rows.min() < 0 or rows.max() >= adata.n_obs:
                raise ValueError(f"`train_indices` out of range for {adata.n_obs} cells.")
            x = x[rows]
            labels = labels[rows]
            cell_names = cell_names[rows]
            if design is not None:
                design = design.subset(rows)
        x = sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x)
        check_control_label(labels, control_label, perturbation_key)
        # predicted cells are clipped here, as SCCVAE's are: a shift cannot take a gene of
        # non-negative (log-normalised) data below zero
        self.expression_floor_ = expression_floor(x)
        if design is None:
            design = PerturbationDesign.from_labels(labels, control_label, combination_delimiter)

        names = list(design.perturbations)
        codes = design.codes + 1  # 0: control cells, i + 1: perturbation names[i]
        means = _group_means(x, codes, len(names) + 1)
        # predictions look their labels up in the training design: known ones are not parsed
        self._design = design

        self.perturbation_key_ = perturbation_key
        self.control_label_ = control_label
        self.combination_delimiter_ = combination_delimiter
        self.var_names_ = pd.Index([str(g) for g in adata.var_names])
        self.control_mean_ = means[0]
        self.training_perturbations_ = names
        self.perturbation_deltas_ = pd.DataFrame(
            means[1:] - means[0],
            index=pd.Index(names, name="perturbation"),
            columns=self.var_names_,
        )
        self.n_cells_per_perturbation_ = pd.Series(
            np.bincount(codes, minlength=len(names) + 1)[1:], index=pd.Index(names), dtype=np.int64
        )
        control_rows = np.flatnonzero(codes == 0)
        if self.max_control_cells is not None and control_rows.size > self.max_control_cells:
            rng = np.random.default_rng(self.seed)
            control_rows = np.sort(rng.choice(control_rows, self.max_control_cells, replace=False))
        controls = x[control_rows]
        self.control_cell_names_ = cell_names[control_rows]
        self.control_cells_ = (
            controls.copy() if not sp.issparse(controls) else controls.tocsr(copy=True)
        )
        self._fit_extra(x, codes, control_rows)
        self.is_fitted_ = True
        logger.info(
            "%s fitted on %d control cells and %d perturbations",
            type(self).__name__,
            control_rows.size,
            len(names),
        )
        return self

    def _fit_extra(self, x, codes: np.ndarray, control_rows: np.ndarray) -> None:
        """Subclass hook, called at the end of :meth:`fit`."""

    def _check_fitted(self) -> None:
        if not getattr(self, "is_fitted_", False):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call `.fit(adata)` first.")

    @property
    def mean_delta_(self) -> np.ndarray:
        """Mean over training perturbations of their change from the control mean."""
        self._check_fitted()
        if not self.training_perturbations_:
            return np.zeros(self.var_names_.size)
        return self.perturbation_deltas_.to_numpy().mean(axis=0)

    # -- prediction ---------------------------------------------------------------------------

    def _targets(self, label: str) -> tuple[str, ...]:
        return self._design.targets(label)

    def _canonical(self, targets: tuple[str, ...]) -> str:
        return canonical_label(targets, self.control_label_, self.combination_delimiter_)

    def _deltas(self, labels: list[str]) -> np.ndarray:
        """Predicted change for each label (rows), genes as columns."""
        raise NotImplementedError

    def _labels(self, perturbations: str | Sequence[str]) -> list[str]:
        """Return the requested labels in canonical form (the package's one labelling rule)."""
        return self._design.canonicalize(_as_labels(perturbations))

    def predict_delta(self, perturbations: str | Sequence[str]) -> pd.DataFrame:
        """Predicted mean change from the training control mean (perturbations x genes)."""
        self._check_fitted()
        labels = self._labels(perturbations)
        deltas = self._deltas(labels)
        return pd.DataFrame(
            deltas, index=pd.Index(labels, name="perturbation"), columns=self.var_names_
        )

    def predict(
        self,
        perturbations: str | Sequence[str],
        n_cells: int = 100,
        adata: AnnData | None = None,
        return_mean: bool = False,
        seed: int | None = None,
        clip: bool = True,
    ) -> AnnData:
        """Predict cells (or means) for the given perturbation labels.

        Parameters
        ----------
        perturbations
            A label or list of labels (``"A"``, ``"A+B"``; the control label predicts
            controls). The output holds them in canonical form (whitespace stripped, targets
            sorted: ``" B + A"`` gives ``"A+B"``).
        n_cells
            Cells per perturbation (ignored with ``return_mean=True``).
        adata
            Optional AnnData whose control cells (``obs[perturbation_key] == control_label``,
            or all cells without that column; same genes as training) are shifted instead of
            the training control cells.
        return_mean
            Return one row per perturbation: training control mean + delta.
        seed
            Seed for drawing control cells; defaults to the ``seed`` hyperparameter, so
            predictions are reproducible.
        clip
            Clip predicted cells at the floor of the training expression
            (``expression_floor_``: 0 when no training value is negative, e.g. log-normalised
            data; no clipping when some are, e.g. z-scored data), as SCCVAE clips its own.
            A control cell shifted by a negative change can otherwise go below zero, which no
            cell can, and a gene whose predicted mean is negative drops out of the predicted
            DE genes. ``return_mean`` rows are not clipped: they stay the training control
            mean plus the predicted change.

        Returns
        -------
        AnnData with ``var_names`` of the training data, ``obs[perturbation_key]`` the
        requested labels (blocks of ``n_cells`` rows), ``obs["control_cell"]`` the control
        cell each predicted cell was made from (not with ``return_mean``), ``X`` float32
        predictions.
        """
        self._check_fitted()
        labels = self._labels(perturbations)
        deltas = self._deltas(labels)
        key = self.perturbation_key_
        if return_mean:
            x = (self.control_mean_[None, :] + deltas).astype(np.float32)
            obs_labels = labels
        else:
            n_cells = int(n_cells)
            if n_cells < 1:
                raise ValueError(f"`n_cells` must be positive, got {n_cells}.")
            if adata is None:
                pool, pool_names = self.control_cells_, self.control_cell_names_
            else:
                pool, pool_names = self._external_controls(adata)
            rng = np.random.default_rng(self.seed if seed is None else seed)
            floor = self.expression_floor_ if clip else None
            blocks, sources = [], []
            for i in range(len(labels)):
                rows = rng.choice(pool.shape[0], size=n_cells, replace=n_cells > pool.shape[0])
                cells = pool[rows]
                cells = dense(cells)
                shifted = cells.astype(np.float64) + deltas[i]
                if floor is not None:
                    shifted = np.maximum(shifted, floor)
                blocks.append(shifted.astype(np.float32))
                sources.append(pool_names[rows])
            x = np.vstack(blocks) if blocks else np.zeros((0, self.var_names_.size), np.float32)
            obs_labels = [label for label in labels for _ in range(n_cells)]
        obs = pd.DataFrame(
            {key: pd.Categorical(obs_labels, categories=list(dict.fromkeys(labels)))}
        )
        if not return_mean:
            obs["control_cell"] = np.concatenate(sources) if sources else np.zeros(0, dtype=str)
        obs.index = pd.Index([f"pred_{i}" for i in range(len(obs_labels))])
        out = AnnData(X=x, obs=obs, var=pd.DataFrame(index=self.var_names_.copy()))
        out.uns["prediction"] = {"method": type(self).__name__, "return_mean": bool(return_mean)}
        return out

    def _external_controls(self, adata: AnnData):
        genes = pd.Index([str(g) for g in adata.var_names])
        pos = genes.get_indexer(self.var_names_)
        if (pos < 0).any():
            raise ValueError(
                f"`adata` lacks {(pos < 0).sum()} training gene(s) (e.g. "
                f"{list(self.var_names_[pos < 0][:5])}); pass cells with the training genes."
            )
        x = adata.X
        names = adata.obs_names.astype(str).to_numpy()
        if self.perturbation_key_ in adata.obs.columns:
            lab = perturbation_labels(adata.obs, self.perturbation_key_)
            check_control_label(lab, self.control_label_, self.perturbation_key_)
            rows = np.flatnonzero(lab == self.control_label_)
            x, names = x[rows], names[rows]
        x = sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x)
        return x[:, pos], names


def validation_score(
    predicted: np.ndarray, observed: np.ndarray, target_columns: Sequence[int], n_top: int = 20
) -> float:
    """How well a predicted change matches an observed one, for choosing hyperparameters.

    The mean of three of the benchmark's headline correlations of change: over all genes,
    over the ``n_top`` most changed genes, and over the ``n_top`` most changed genes other
    than the targets (ranked by absolute observed change).
    """
    order = np.argsort(-np.abs(observed), kind="stable")
    top = order[:n_top]
    others = order[~np.isin(order, np.asarray(target_columns, dtype=np.int64))]
    top_without_targets = others[:n_top]
    return float(
        np.nanmean(
            [
                pearson(predicted, observed),
                pearson(predicted[top], observed[top]),
                pearson(predicted[top_without_targets], observed[top_without_targets]),
            ]
        )
    )


def _as_labels(perturbations: str | Sequence[str]) -> list[str]:
    if isinstance(perturbations, str):
        return [perturbations]
    labels = [str(p) for p in perturbations]
    if not labels:
        raise ValueError("No perturbations given to predict.")
    return labels
