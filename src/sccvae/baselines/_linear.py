"""The linear model of Ahlmann-Eltze, Huber & Anders on gene and perturbation embeddings."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from sccvae._embedding import coexpression_embedding

from ._base import _Baseline, validation_score

logger = logging.getLogger(__name__)

#: Ridge penalties tried by ``ridge="auto"`` (log-spaced).
RIDGE_GRID: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4)

#: The penalty of Ahlmann-Eltze et al., used by ``ridge="auto"`` when there are too few
#: training perturbations to hold one out.
PAPER_RIDGE = 0.1

#: ``ridge="auto"`` holds out at most this many training perturbations (a seeded sample of
#: them when there are more), each in turn, the model refitted on all the others.
MAX_HELD_OUT = 100


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

    With the paper's penalty (0.1) and a rich embedding the model can interpolate the
    training perturbations and predict unseen ones worse than a heavier penalty would, so
    by default (``ridge="auto"``) ``lambda`` is chosen from :data:`RIDGE_GRID` by
    leave-one-perturbation-out: each training perturbation (at most :data:`MAX_HELD_OUT`,
    a seeded sample beyond) is predicted by the model refitted, gene embedding included, on
    all the others, and the penalty with the best mean score wins (the mean of the Pearson
    correlations of change over all genes, the 20 most changed genes and the 20 most
    changed genes other than the targets, as :class:`~sccvae.baselines.KnnBaseline` and
    :class:`~sccvae.baselines.CoexpressionBaseline` choose theirs). Each refit is closed
    form: the gene embedding comes from the eigenvectors of the others' Gram matrix of
    changes, and every penalty from one SVD of the perturbation embedding. Ties keep the
    larger penalty; with fewer than 3 usable training perturbations the paper's 0.1 is used.

    Parameters
    ----------
    n_components
        Dimension ``K`` of the gene embedding (capped by the number of training
        perturbations and genes).
    ridge
        ``"auto"`` (default, see above) or a fixed ridge penalty ``lambda >= 0`` (paper:
        0.1).
    gene_embedding
        ``"training"`` or ``"coexpression"`` (see above).
    perturbation_embedding
        Optional genes x k DataFrame indexed by gene name (GenePT, GO, ...).
    n_embedding_components
        Dimension of the coexpression embedding when it is used (default 50).
    seed
        Seed for the coexpression embedding, the held-out sample of ``ridge="auto"`` and
        drawing control cells.
    max_control_cells
        Training control cells kept for sampling (seeded subsample beyond this).

    Attributes
    ----------
    ridge_
        The penalty used (chosen or given).
    ridge_scores_
        Mean leave-one-perturbation-out score per penalty tried (``ridge="auto"``; empty
        otherwise, or when too few perturbations to hold one out).
    """

    def __init__(
        self,
        n_components: int = 10,
        ridge: float | str = "auto",
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
        if isinstance(ridge, str):
            if ridge != "auto":
                raise ValueError(f"`ridge` must be 'auto' or a number, got {ridge!r}.")
        elif not float(ridge) >= 0:  # also rejects NaN
            raise ValueError(f"`ridge` must be 'auto' or a non-negative number, got {ridge}.")
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
        self.ridge = ridge if isinstance(ridge, str) else float(ridge)
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
        if self.ridge == "auto":
            self.ridge_scores_ = self._leave_one_out_scores(
                y, p, usable, None if self.gene_embedding == "training" else g
            )
            scores = self.ridge_scores_
            # the best held-out score; ties keep the larger penalty (the simpler model)
            self.ridge_ = (
                max(scores, key=lambda lam: (np.nan_to_num(scores[lam], nan=-2.0), lam))
                if scores
                else PAPER_RIDGE
            )
            logger.info("LinearBaseline: ridge %g, leave-one-out r %s", self.ridge_, scores)
        else:
            self.ridge_ = float(self.ridge)
            self.ridge_scores_ = {}
        lam = self.ridge_
        left = np.linalg.solve(g.T @ g + lam * np.eye(g.shape[1]), g.T @ yc)  # K x perts
        right = np.linalg.solve(pc.T @ pc + lam * np.eye(pc.shape[1]), (left @ pc).T).T  # K x k
        self.gene_embedding_ = g
        self.coefficients_ = right
        self.intercept_ = b
        self.embedding_mean_ = p_mean
        self.fitted_perturbations_ = usable

    def _leave_one_out_scores(
        self, y: np.ndarray, p: np.ndarray, usable: list[str], gene_basis: np.ndarray | None
    ) -> dict[float, float]:
        """Mean held-out score per penalty of :data:`RIDGE_GRID` (empty: too few to hold out)."""
        n = y.shape[1]
        if n < 3:
            return {}
        held_out = np.arange(n)
        if n > MAX_HELD_OUT:
            rng = np.random.default_rng(self.seed)
            held_out = np.sort(rng.choice(n, MAX_HELD_OUT, replace=False))
        lambdas = np.asarray(RIDGE_GRID)
        # what every refit shares: the Gram matrix of changes, or the SVD of the fixed G
        gram = y.T @ y if gene_basis is None else None
        basis = None if gene_basis is None else np.linalg.svd(gene_basis, full_matrices=False)[:2]
        column = {g: i for i, g in enumerate(self.var_names_)}
        scores = np.full((held_out.size, lambdas.size), np.nan)
        for row, i in enumerate(held_out):
            predicted = _held_out_deltas(y, p, int(i), lambdas, self.n_components, basis, gram)
            targets = [column[t] for t in self._targets(usable[i]) if t in column]
            scores[row] = [validation_score(pred, y[:, i], targets) for pred in predicted]
        with np.errstate(all="ignore"):
            means = [
                float(np.nanmean(col)) if np.isfinite(col).any() else float("nan")
                for col in scores.T
            ]
        return dict(zip(map(float, lambdas), means, strict=True))

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


def _held_out_deltas(
    y: np.ndarray,
    p: np.ndarray,
    i: int,
    lambdas: np.ndarray,
    n_components: int,
    gene_basis: tuple[np.ndarray, np.ndarray] | None,
    gram: np.ndarray | None,
) -> np.ndarray:
    """Change of training perturbation ``i`` predicted by the model fitted on the others.

    Parameters
    ----------
    y
        Genes x perturbations matrix of training changes.
    p
        Perturbations x k embedding (uncentred).
    i
        Column of ``y`` (row of ``p``) held out.
    lambdas
        Ridge penalties, one prediction each.
    n_components
        ``K`` of the gene embedding.
    gene_basis
        ``(U, s)`` of the SVD of the fixed gene embedding ``G``
        (``gene_embedding="coexpression"``), or None to take the top ``K`` left singular
        vectors of the others' centred changes, as the fit does.
    gram
        ``y.T @ y`` (needed when ``gene_basis`` is None).

    Returns
    -------
    Penalties x genes predicted changes.
    """
    n = y.shape[1]
    others = np.delete(np.arange(n), i)
    y_others = y[:, others]
    b = y_others.mean(axis=1)
    p_others = p[others]
    p_mean = p_others.mean(axis=0)
    query = p[i] - p_mean
    # Pc (Pc^T Pc + lambda I)^-1 q for every penalty at once, from one SVD of Pc
    u_p, s_p, vt_p = np.linalg.svd(p_others - p_mean, full_matrices=False)
    denominator = s_p[:, None] ** 2 + lambdas[None, :]
    factor = np.divide(
        s_p[:, None], denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    z = u_p @ (factor * (vt_p @ query)[:, None])  # others x penalties
    if gene_basis is None:
        # G = top-K left singular vectors of Yc, so G (G^T G + lambda I)^-1 G^T Yc z equals
        # Yc V V^T z / (1 + lambda) with V the top-K eigenvectors of Yc^T Yc: an
        # (n - 1)-square eigenproblem instead of an SVD of the genes x (n - 1) matrix
        sub = gram[np.ix_(others, others)]
        row_means = sub.mean(axis=1)
        centred = sub - row_means[:, None] - row_means[None, :] + row_means.mean()
        _, vectors = np.linalg.eigh(centred)
        v = vectors[:, -min(n_components, n - 1, y.shape[0]) :]
        a = v @ (v.T @ z) / (1.0 + lambdas)[None, :]
        predicted = y_others @ a - np.outer(b, a.sum(axis=0)) + b[:, None]
    else:
        # G (G^T G + lambda I)^-1 G^T = U diag(s^2 / (s^2 + lambda)) U^T with G = U S V^T
        u_g, s_g = gene_basis
        centred_z = y_others @ z - np.outer(b, z.sum(axis=0))  # Yc z: genes x penalties
        denominator = s_g[:, None] ** 2 + lambdas[None, :]
        shrink = np.divide(
            s_g[:, None] ** 2, denominator, out=np.zeros_like(denominator), where=denominator > 0
        )
        predicted = u_g @ (shrink * (u_g.T @ centred_z)) + b[:, None]
    return predicted.T
