"""Simple baselines for perturbation-response prediction, with the model's interface.

Every baseline predicts a *mean change* ``delta`` (genes) of a perturbation relative to the
training control mean, and produces cells by shifting ``n_cells`` randomly drawn (seeded)
training control cells by ``delta``, so that distribution metrics (energy distance, MMD)
apply to them as they do to the model. Predicted values are not clipped at zero (clipping
would change the mean that ``delta`` describes).

- :class:`ControlBaseline`: ``delta = 0`` (predict unperturbed cells).
- :class:`MeanBaseline`: the mean change over all training perturbations.
- :class:`AdditiveBaseline`: for combinations, the sum of the components' single changes.
- :class:`LinearBaseline`: the linear model of Ahlmann-Eltze, Huber & Anders (Nature
  Methods 2025), ``Y ~ G W P^T + b``, on gene embeddings ``G`` and perturbation embeddings
  ``P`` built from target genes, so it predicts unseen perturbations.

All share ``fit(adata, perturbation_key, control_label, combination_delimiter, layer,
train_indices)`` and ``predict(perturbations, n_cells, adata, return_mean, seed)``,
returning an AnnData with the training ``var_names``, ``obs[perturbation_key]`` holding the
requested labels (``n_cells`` rows per label, or one with ``return_mean=True``) and the
predictions in ``X`` (float32). Inputs are never modified.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccvae._embedding import coexpression_embedding
from sccvae._perturbations import (
    canonical_label,
    check_control_label,
    parse_perturbation,
    perturbation_labels,
)

logger = logging.getLogger(__name__)

__all__ = ["ControlBaseline", "MeanBaseline", "AdditiveBaseline", "LinearBaseline"]


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
        labels = perturbation_labels(adata.obs, perturbation_key)
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
        x = sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x)
        check_control_label(labels, control_label, perturbation_key)

        uniques, inverse = np.unique(labels, return_inverse=True)
        canon_u = [
            canonical_label(
                parse_perturbation(u, control_label, combination_delimiter),
                control_label,
                combination_delimiter,
            )
            for u in uniques
        ]
        names = sorted(set(canon_u) - {control_label})
        vocab = {control_label: 0, **{p: i + 1 for i, p in enumerate(names)}}
        codes = np.array([vocab[c] for c in canon_u], dtype=np.int64)[inverse]
        means = _group_means(x, codes, len(vocab))

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
            np.bincount(codes, minlength=len(vocab))[1:], index=pd.Index(names), dtype=np.int64
        )
        control_rows = np.flatnonzero(codes == 0)
        if self.max_control_cells is not None and control_rows.size > self.max_control_cells:
            rng = np.random.default_rng(self.seed)
            control_rows = np.sort(rng.choice(control_rows, self.max_control_cells, replace=False))
        controls = x[control_rows]
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
        return parse_perturbation(label, self.control_label_, self.combination_delimiter_)

    def _canonical(self, targets: tuple[str, ...]) -> str:
        return canonical_label(targets, self.control_label_, self.combination_delimiter_)

    def _deltas(self, labels: list[str]) -> np.ndarray:
        """Predicted change for each label (rows), genes as columns."""
        raise NotImplementedError

    def predict_delta(self, perturbations: str | Sequence[str]) -> pd.DataFrame:
        """Predicted mean change from the training control mean (perturbations x genes)."""
        self._check_fitted()
        labels = _as_labels(perturbations)
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
    ) -> AnnData:
        """Predict cells (or means) for the given perturbation labels.

        Parameters
        ----------
        perturbations
            A label or list of labels (``"A"``, ``"A+B"``; the control label predicts
            controls). Labels are kept as given in the output.
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

        Returns
        -------
        AnnData with ``var_names`` of the training data, ``obs[perturbation_key]`` the
        requested labels (blocks of ``n_cells`` rows), ``X`` float32 predictions.
        """
        self._check_fitted()
        labels = _as_labels(perturbations)
        deltas = self._deltas(labels)
        key = self.perturbation_key_
        if return_mean:
            x = (self.control_mean_[None, :] + deltas).astype(np.float32)
            obs_labels = labels
        else:
            n_cells = int(n_cells)
            if n_cells < 1:
                raise ValueError(f"`n_cells` must be positive, got {n_cells}.")
            pool = self.control_cells_ if adata is None else self._external_controls(adata)
            rng = np.random.default_rng(self.seed if seed is None else seed)
            blocks = []
            for i in range(len(labels)):
                rows = rng.choice(pool.shape[0], size=n_cells, replace=n_cells > pool.shape[0])
                cells = pool[rows]
                cells = cells.toarray() if sp.issparse(cells) else np.asarray(cells)
                blocks.append((cells.astype(np.float64) + deltas[i]).astype(np.float32))
            x = np.vstack(blocks) if blocks else np.zeros((0, self.var_names_.size), np.float32)
            obs_labels = [label for label in labels for _ in range(n_cells)]
        obs = pd.DataFrame(
            {key: pd.Categorical(obs_labels, categories=list(dict.fromkeys(labels)))}
        )
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
        if self.perturbation_key_ in adata.obs.columns:
            lab = perturbation_labels(adata.obs, self.perturbation_key_)
            check_control_label(lab, self.control_label_, self.perturbation_key_)
            x = x[np.flatnonzero(lab == self.control_label_)]
        x = sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x)
        return x[:, pos]


def _as_labels(perturbations: str | Sequence[str]) -> list[str]:
    if isinstance(perturbations, str):
        return [perturbations]
    labels = [str(p) for p in perturbations]
    if not labels:
        raise ValueError("No perturbations given to predict.")
    return labels


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


class LinearBaseline(_Baseline):
    """Linear model on gene and perturbation embeddings (Ahlmann-Eltze, Huber & Anders 2025).

    With ``Y`` the genes x training-perturbations matrix of pseudobulk changes from the
    control mean and ``b`` its row means, the model is ``Y ~ G W P^T + b`` with

    - ``G`` (genes x K): a gene embedding, the top ``n_components`` left singular vectors of
      the centred training change matrix ``Y - b`` (``gene_embedding="training"``, as in the
      paper) or the first ``n_components`` columns of the control coexpression embedding
      (``gene_embedding="coexpression"``);
    - ``P`` (perturbations x k): the perturbation embedding, the embedding of each target
      gene, summed over the targets of a combination. By default it is the coexpression PCA
      embedding of the training control cells (:func:`sccvae._embedding.coexpression_embedding`,
      the one the model uses), or a user DataFrame ``perturbation_embedding`` indexed by
      gene. ``P`` is centred by its mean over the training perturbations, so that ``b`` is
      the intercept (the paper uses uncentred embeddings; centring makes a truth that is
      linear in the embedding exactly representable and the ``ridge -> inf`` limit the mean
      baseline);
    - ``W = (G^T G + ridge I)^-1 G^T (Y - b) P (P^T P + ridge I)^-1`` in closed form.

    A perturbation is predicted as ``G W (p - p_mean) + b``. Targets without an embedding
    (not measured / not in the DataFrame) raise a ValueError at prediction; training
    perturbations with such targets are left out of the fit with a warning. The control
    label predicts no change.

    Parameters
    ----------
    n_components
        Dimension ``K`` of the gene embedding (capped by the number of training
        perturbations and genes).
    ridge
        Ridge penalty ``lambda`` (paper: 0.1).
    gene_embedding
        ``"training"`` or ``"coexpression"`` (see above).
    perturbation_embedding
        Optional genes x k DataFrame indexed by gene name (GenePT, GO, ...).
    n_embedding_components
        Dimension of the coexpression embedding when it is used (default 50).
    seed
        Seed for the coexpression embedding and for drawing control cells.
    max_control_cells
        Training control cells kept for sampling (seeded subsample beyond this).
    """

    def __init__(
        self,
        n_components: int = 10,
        ridge: float = 0.1,
        gene_embedding: str = "training",
        perturbation_embedding: pd.DataFrame | None = None,
        n_embedding_components: int = 50,
        seed: int = 0,
        max_control_cells: int | None = 50_000,
    ) -> None:
        if gene_embedding not in ("training", "coexpression"):
            raise ValueError(
                f"`gene_embedding` must be 'training' or 'coexpression', got {gene_embedding!r}."
            )
        if ridge < 0:
            raise ValueError(f"`ridge` must be non-negative, got {ridge}.")
        if int(n_components) < 1:
            raise ValueError(f"`n_components` must be positive, got {n_components}.")
        if perturbation_embedding is not None:
            if not isinstance(perturbation_embedding, pd.DataFrame):
                raise TypeError(
                    "`perturbation_embedding` must be a pandas DataFrame indexed by gene name."
                )
            if not perturbation_embedding.index.is_unique:
                raise ValueError("`perturbation_embedding` has duplicate gene names in its index.")
            values = perturbation_embedding.to_numpy(dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise ValueError("`perturbation_embedding` contains NaN or infinite values.")
        super().__init__(seed=seed, max_control_cells=max_control_cells)
        self.n_components = int(n_components)
        self.ridge = float(ridge)
        self.gene_embedding = gene_embedding
        self.perturbation_embedding = perturbation_embedding
        self.n_embedding_components = int(n_embedding_components)
        self._params = {
            "n_components": self.n_components,
            "ridge": self.ridge,
            "gene_embedding": gene_embedding,
            "perturbation_embedding": perturbation_embedding,
            "n_embedding_components": self.n_embedding_components,
            **self._params,
        }

    def _fit_extra(self, x, codes: np.ndarray, control_rows: np.ndarray) -> None:
        if self.perturbation_embedding is not None:
            emb = self.perturbation_embedding.copy()
            emb.index = pd.Index([str(g) for g in emb.index])
            emb = emb.astype(np.float64)
        else:
            all_controls = np.flatnonzero(codes == 0)
            emb = coexpression_embedding(
                x[all_controls],
                self.var_names_,
                n_components=self.n_embedding_components,
                seed=self.seed,
            ).astype(np.float64)
        self.target_embedding_ = emb

        perts = self.training_perturbations_
        usable, dropped = [], []
        for p in perts:
            (dropped if self._missing_targets(self._targets(p)) else usable).append(p)
        if dropped:
            logger.warning(
                "LinearBaseline: %d training perturbation(s) have targets without an embedding "
                "and are left out of the fit: %s",
                len(dropped),
                dropped[:10],
            )
        self.dropped_perturbations_ = dropped
        if len(usable) < 2:
            raise ValueError(
                f"LinearBaseline needs at least 2 training perturbations whose targets can be "
                f"embedded; got {len(usable)} (left out: {dropped[:10]}). Check that target "
                "genes are measured or supply `perturbation_embedding`."
            )
        y = self.perturbation_deltas_.loc[usable].to_numpy().T  # genes x perts
        b = y.mean(axis=1)
        yc = y - b[:, None]
        p = self._embed([self._targets(q) for q in usable])  # perts x k
        p_mean = p.mean(axis=0)
        pc = p - p_mean
        k_gene = min(self.n_components, len(usable), y.shape[0])
        if k_gene < self.n_components:
            logger.info("LinearBaseline: gene embedding capped at %d components", k_gene)
        if self.gene_embedding == "training":
            u, _, _ = np.linalg.svd(yc, full_matrices=False)
            g = u[:, :k_gene]
        else:
            coex = (
                emb.reindex(self.var_names_).fillna(0.0).to_numpy()
                if self.perturbation_embedding is None
                else coexpression_embedding(
                    x[np.flatnonzero(codes == 0)],
                    self.var_names_,
                    n_components=self.n_embedding_components,
                    seed=self.seed,
                ).to_numpy(dtype=np.float64)
            )
            g = coex[:, : min(self.n_components, coex.shape[1])]
        lam = self.ridge
        left = np.linalg.solve(g.T @ g + lam * np.eye(g.shape[1]), g.T @ yc)  # K x perts
        right = np.linalg.solve(pc.T @ pc + lam * np.eye(pc.shape[1]), (left @ pc).T).T  # K x k
        self.gene_embedding_ = g
        self.coefficients_ = right
        self.intercept_ = b
        self.embedding_mean_ = p_mean
        self.fitted_perturbations_ = usable

    def _missing_targets(self, targets: tuple[str, ...]) -> list[str]:
        index = self.target_embedding_.index
        return [t for t in targets if t not in index]

    def _embed(self, target_sets: list[tuple[str, ...]]) -> np.ndarray:
        emb = self.target_embedding_
        out = np.zeros((len(target_sets), emb.shape[1]))
        for i, targets in enumerate(target_sets):
            if targets:
                out[i] = emb.loc[list(targets)].to_numpy().sum(axis=0)
        return out

    def _deltas(self, labels: list[str]) -> np.ndarray:
        target_sets = [self._targets(lab) for lab in labels]
        missing = sorted({t for ts in target_sets for t in self._missing_targets(ts)})
        if missing:
            source = (
                "the `perturbation_embedding` DataFrame"
                if self.perturbation_embedding is not None
                else "the measured genes (coexpression embedding)"
            )
            raise ValueError(
                f"Cannot embed target gene(s) {missing[:20]}{' ...' if len(missing) > 20 else ''}:"
                f" not in {source}. Drop these perturbations or supply an embedding that covers "
                "them via `perturbation_embedding=`."
            )
        p = self._embed(target_sets) - self.embedding_mean_
        deltas = (self.gene_embedding_ @ (self.coefficients_ @ p.T)).T + self.intercept_
        is_control = np.array([len(ts) == 0 for ts in target_sets])
        deltas[is_control] = 0.0
        return deltas
