"""Nearest neighbours: an unseen target behaves like the training targets it resembles."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from sccvae._embedding import coexpression_embedding

from ._base import _Baseline, validation_score

logger = logging.getLogger(__name__)

#: Neighbour counts tried by ``k="auto"`` (capped at the number of training perturbations).
K_GRID: tuple[int, ...] = (1, 2, 3, 5, 8, 12, 20, 30, 50)


class KnnBaseline(_Baseline):
    """Predict a perturbation by the changes of its nearest training perturbations.

    Each perturbation is embedded as the sum of its targets' embeddings. The change of a
    perturbation is the mean change of its ``k`` most similar training perturbations
    (cosine similarity of embeddings), weighted by their positive similarity (equal weights
    when none is positive; all training perturbations, equally, for a target whose embedding
    is zero). With ``k="auto"`` ``k`` is chosen from :data:`K_GRID` by
    leave-one-out over the training perturbations: each is predicted from the others, and
    the ``k`` with the best mean Pearson correlation of change wins (averaged over all genes,
    the 20 most changed genes and the 20 most changed genes other than the targets). Large ``k``
    tends to the mean baseline; ``k = 1`` copies the most similar training perturbation.

    Parameters
    ----------
    k
        ``"auto"`` (default) or a number of neighbours.
    embedding
        ``"coexpression"`` (PCA of each gene's profile across training control cells, as
        SCCVAE uses; any measured gene), ``"onehot"`` (training targets only: a seen
        perturbation is its own neighbour) or a DataFrame of gene embeddings indexed by gene
        name (GenePT, GO, ...).
    n_embedding_components
        Dimension of the coexpression embedding.
    seed
        Seed of the coexpression embedding and default seed for drawing control cells.
    max_control_cells
        Training control cells kept for sampling (seeded subsample beyond this).

    Attributes
    ----------
    k_
        The number of neighbours used (chosen or given).
    k_scores_
        Mean leave-one-out score per ``k`` tried (``k="auto"``).
    """

    def __init__(
        self,
        k: int | str = "auto",
        embedding: str | pd.DataFrame = "coexpression",
        n_embedding_components: int = 50,
        seed: int = 0,
        max_control_cells: int | None = 50_000,
    ) -> None:
        if isinstance(k, str):
            if k != "auto":
                raise ValueError(f"`k` must be 'auto' or a positive integer, got {k!r}.")
        elif int(k) < 1:
            raise ValueError(f"`k` must be a positive integer, got {k}.")
        if isinstance(embedding, str):
            if embedding not in ("coexpression", "onehot"):
                raise ValueError(
                    "`embedding` must be 'coexpression', 'onehot' or a DataFrame, got "
                    f"{embedding!r}."
                )
        elif not isinstance(embedding, pd.DataFrame):
            raise TypeError("`embedding` must be 'coexpression', 'onehot' or a pandas DataFrame.")
        elif not embedding.index.is_unique or not np.all(np.isfinite(embedding.to_numpy(float))):
            raise ValueError("The `embedding` DataFrame needs unique gene names, finite values.")
        super().__init__(seed=seed, max_control_cells=max_control_cells)
        self.k = k
        self.embedding = embedding
        self.n_embedding_components = int(n_embedding_components)
        self._params = {
            "k": k,
            "embedding": embedding,
            "n_embedding_components": self.n_embedding_components,
            **self._params,
        }

    def _fit_extra(self, x, codes: np.ndarray, control_rows: np.ndarray) -> None:
        if isinstance(self.embedding, pd.DataFrame):
            table = self.embedding.astype(np.float64)
            table.index = pd.Index([str(g) for g in table.index])
        elif self.embedding == "onehot":
            targets = sorted({t for p in self.training_perturbations_ for t in self._targets(p)})
            table = pd.DataFrame(np.eye(len(targets)), index=targets, columns=targets)
        else:
            table = coexpression_embedding(
                x[np.flatnonzero(codes == 0)],
                self.var_names_,
                n_components=self.n_embedding_components,
                seed=self.seed,
            ).astype(np.float64)
        self.gene_embedding_ = table
        usable = [p for p in self.training_perturbations_ if not self._missing(self._targets(p))]
        dropped = sorted(set(self.training_perturbations_) - set(usable))
        if dropped:
            logger.warning(
                "KnnBaseline: %d training perturbation(s) have targets without an embedding and "
                "cannot be neighbours: %s",
                len(dropped),
                dropped[:10],
            )
        if not usable:
            raise ValueError(
                "KnnBaseline: no training perturbation has embedded targets; check that "
                "targets are measured genes or pass an `embedding` DataFrame that lists them."
            )
        self.neighbour_perturbations_ = usable
        self._neighbour_embedding = self._unit(self._embed([self._targets(p) for p in usable]))
        self._neighbour_deltas = self.perturbation_deltas_.loc[usable].to_numpy()
        if self.k == "auto":
            self.k_scores_ = self._leave_one_out_scores()
            scores = self.k_scores_
            self.k_ = max(scores, key=lambda k: (np.nan_to_num(scores[k], nan=-2.0), k))
            logger.info("KnnBaseline: k = %d, leave-one-out r %s", self.k_, scores)
        else:
            self.k_ = int(self.k)
            self.k_scores_ = {}

    def _missing(self, targets: tuple[str, ...]) -> list[str]:
        return [t for t in targets if t not in self.gene_embedding_.index]

    def _embed(self, target_sets: list[tuple[str, ...]]) -> np.ndarray:
        out = np.zeros((len(target_sets), self.gene_embedding_.shape[1]))
        for row, targets in enumerate(target_sets):
            if targets:
                out[row] = self.gene_embedding_.loc[list(targets)].to_numpy().sum(axis=0)
        return out

    @staticmethod
    def _unit(vectors: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)

    def _average(self, similarity: np.ndarray, k: int, exclude: int | None = None) -> np.ndarray:
        """Similarity-weighted mean change of the ``k`` most similar training perturbations."""
        candidates = np.arange(similarity.size)
        if exclude is not None:
            candidates = candidates[candidates != exclude]
        if not np.any(similarity[candidates]):  # no information: all of them, equally
            k = candidates.size
        order = candidates[np.argsort(-similarity[candidates], kind="stable")][:k]
        weights = np.maximum(similarity[order], 0.0)
        if weights.sum() <= 0:
            weights = np.ones(order.size)
        return weights @ self._neighbour_deltas[order] / weights.sum()

    def _leave_one_out_scores(self) -> dict[int, float]:
        n = len(self.neighbour_perturbations_)
        if n < 3:
            return {}
        similarity = self._neighbour_embedding @ self._neighbour_embedding.T
        deltas = self._neighbour_deltas
        column = {g: i for i, g in enumerate(self.var_names_)}
        targets = [
            [column[t] for t in self._targets(p) if t in column]
            for p in self.neighbour_perturbations_
        ]
        scores = {}
        for k in sorted({min(k, n - 1) for k in K_GRID}):
            held_out = [
                validation_score(self._average(similarity[i], k, i), deltas[i], targets[i])
                for i in range(n)
            ]
            scores[k] = float(np.nanmean(held_out))
        return scores

    def _deltas(self, labels: list[str]) -> np.ndarray:
        target_sets = [self._targets(label) for label in labels]
        missing = sorted({t for ts in target_sets for t in self._missing(ts)})
        if missing:
            raise ValueError(
                f"KnnBaseline cannot embed target(s) {missing[:20]}: they are not in the "
                f"{'embedding' if isinstance(self.embedding, pd.DataFrame) else self.embedding} "
                "embedding. "
                "Use embedding='coexpression' for measured genes or pass a DataFrame that "
                "covers them."
            )
        queries = self._unit(self._embed(target_sets))
        out = np.zeros((len(labels), self.var_names_.size))
        for row, targets in enumerate(target_sets):
            if targets:
                out[row] = self._average(self._neighbour_embedding @ queries[row], self.k_)
        return out
