"""The linear model of Ahlmann-Eltze, Huber & Anders on gene and perturbation embeddings."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from sccvae._embedding import coexpression_embedding

from ._base import _Baseline

logger = logging.getLogger(__name__)

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
