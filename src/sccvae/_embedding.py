"""Gene embeddings for perturbation targets derived from control-cell coexpression."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd

logger = logging.getLogger(__name__)


def coexpression_embedding(
    control_expression: np.ndarray | sp.spmatrix,
    gene_names: list[str] | pd.Index,
    n_components: int = 50,
    max_cells: int = 20_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Embed every measured gene by PCA of its expression profile across control cells.

    Each gene is a point whose coordinates are its (standardised) expression in each control
    cell; genes that co-vary across unperturbed cells land close together. This needs no
    outside knowledge, so any *measured* gene can be embedded, which is what lets the model
    and the linear baseline represent perturbations never seen in training.

    Parameters
    ----------
    control_expression
        Control cells x genes, on the scale the model sees (log-normalised by default).
    gene_names
        Names of the columns of ``control_expression``.
    n_components
        Embedding dimension; capped at ``min(n_genes, n_cells) - 1``.
    max_cells
        Control cells beyond this number are subsampled (seeded) to bound time and memory.
    seed
        Seed for the cell subsample and the randomized SVD.

    Returns
    -------
    A ``genes x n_components`` DataFrame indexed by gene name. Genes that never vary across
    control cells get the zero vector.
    """
    n_cells, n_genes = control_expression.shape
    if n_genes != len(gene_names):
        raise ValueError(f"{n_genes} columns but {len(gene_names)} gene names.")
    if n_cells < 2:
        raise ValueError("The coexpression embedding needs at least 2 control cells.")
    rng = np.random.default_rng(seed)
    if n_cells > max_cells:
        rows = np.sort(rng.choice(n_cells, size=max_cells, replace=False))
        control_expression = control_expression[rows]
    dense = (
        control_expression.toarray()
        if sp.issparse(control_expression)
        else np.asarray(control_expression)
    )
    profiles = dense.T.astype(np.float64)  # genes x cells
    profiles -= profiles.mean(axis=1, keepdims=True)
    scale = profiles.std(axis=1, keepdims=True)
    profiles = np.divide(profiles, scale, out=np.zeros_like(profiles), where=scale > 0)
    # centre across genes too, as PCA of the genes x cells matrix does
    profiles -= profiles.mean(axis=0, keepdims=True)
    k = int(min(n_components, min(profiles.shape) - 1))
    if k < 1:
        raise ValueError("Too few genes or control cells for a coexpression embedding.")
    u, s, _ = randomized_svd(profiles, n_components=k, random_state=seed)
    coords = (u * s).astype(np.float32)
    coords[scale.ravel() == 0] = 0.0
    logger.info("Coexpression embedding: %d genes x %d components", n_genes, k)
    return pd.DataFrame(
        coords,
        index=pd.Index([str(g) for g in gene_names]),
        columns=[f"PC{i + 1}" for i in range(k)],
    )


def build_embedding(
    embedding,
    targets: list[str],
    genes,
    control,
    n_components: int = 50,
    seed: int = 0,
    embedded_targets: list[str] | None = None,
) -> pd.DataFrame:
    """Build the target embedding: a user DataFrame (checked), one-hot, or coexpression.

    Training targets of ``embedded_targets`` that the embedding does not list (e.g. genes
    that are not measured, under the coexpression embedding) get one-hot rows
    (:func:`with_onehot_rows`): they are seen perturbations, learned from their own cells.

    Parameters
    ----------
    embedding
        ``"coexpression"``, ``"onehot"`` or a DataFrame indexed by gene name.
    targets
        The training targets (the rows of a one-hot embedding).
    genes
        The measured genes (columns of ``control``).
    control
        Control cells x genes, log-normalised, for the coexpression embedding.
    n_components, seed
        Of the coexpression embedding.
    embedded_targets
        The training targets represented through the embedding (those that are not gene
        nodes); all of ``targets`` if ``None``.
    """
    frame = _embedding(embedding, targets, genes, control, n_components, seed)
    wanted = targets if embedded_targets is None else embedded_targets
    missing = [t for t in wanted if t not in frame.index]
    if missing:
        logger.info(
            "%d training target(s) are not in the perturbation embedding (e.g. %s): they are "
            "learned one-hot, as seen perturbations.",
            len(missing),
            missing[:5],
        )
    return with_onehot_rows(frame, missing)


def _embedding(embedding, targets, genes, control, n_components, seed) -> pd.DataFrame:
    if isinstance(embedding, pd.DataFrame):
        frame = embedding.copy()
        frame.index = frame.index.astype(str)
        if not frame.index.is_unique:
            raise ValueError(
                "The perturbation embedding DataFrame has duplicated gene names in its index."
            )
        values = frame.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError(
                "The perturbation embedding DataFrame contains NaN or infinite values."
            )
        return frame.astype(np.float32)
    if embedding == "onehot":
        return pd.DataFrame(np.eye(len(targets), dtype=np.float32), index=targets, columns=targets)
    if embedding == "coexpression":
        return coexpression_embedding(control, genes, n_components=n_components, seed=seed)
    raise ValueError(
        f"Unknown perturbation_embedding {embedding!r}: use 'coexpression', 'onehot' or a "
        "pandas DataFrame indexed by gene name."
    )


def with_onehot_rows(embedding: pd.DataFrame, targets: list[str]) -> pd.DataFrame:
    """Return ``embedding`` with a one-hot row (in new columns) for each of ``targets``.

    Training targets the embedding does not list (e.g. genes that are not measured, under the
    coexpression embedding) are seen perturbations: each gets a column of its own, so the
    perturbation encoder learns its intervention from its cells, as with
    ``perturbation_embedding="onehot"``. The other rows get zeros in those columns.
    """
    if not targets:
        return embedding
    onehot = pd.DataFrame(
        np.eye(len(targets), dtype=np.float32),
        index=pd.Index(targets),
        columns=[f"onehot:{t}" for t in targets],
    )
    out = pd.concat([embedding.astype(np.float32), onehot], axis=0).fillna(0.0)
    return out.astype(np.float32)
