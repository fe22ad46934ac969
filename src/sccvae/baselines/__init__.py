"""Simple baselines for perturbation-response prediction, with the model's interface.

Every baseline predicts a *mean change* ``delta`` (genes) of a perturbation relative to the
training control mean, and produces cells by shifting ``n_cells`` randomly drawn (seeded)
training control cells by ``delta``, so that distribution metrics (energy distance, MMD)
apply to them as they do to the model. Predicted cells are clipped at the floor of the
training expression, as SCCVAE's are: at 0 when no training value is negative (e.g.
log-normalised data), not at all otherwise (e.g. z-scored data); ``predict(clip=False)``
turns this off. Clipping can raise a predicted mean above ``control mean + delta`` for genes
shifted towards zero, as a knock-down's real cells do at zero counts.

- :class:`ControlBaseline`: ``delta = 0`` (predict unperturbed cells).
- :class:`MeanBaseline`: the mean change over all training perturbations.
- :class:`MeanTargetBaseline`: the mean change, with each measured target gene moved by the
  mean own change of the training targets.
- :class:`MultiregBaseline`: :class:`MeanTargetBaseline`, plus every gene moved with a
  measured target by its ridge coefficient on the targets' genes across control cells.
- :class:`AdditiveBaseline`: for combinations, the sum of the components' single changes.
- :class:`LinearBaseline`: the linear model of Ahlmann-Eltze, Huber & Anders (Nature
  Methods 2025), ``Y ~ G W P^T + b``, on gene embeddings ``G`` and perturbation embeddings
  ``P`` built from target genes, so it predicts unseen perturbations.
- :class:`CoexpressionBaseline`: each gene moves by its regression slope on the target
  gene across control cells, times the typical change of a target's own gene.
- :class:`KnnBaseline`: the similarity-weighted mean change of the most similar training
  perturbations in a gene embedding.

All share ``fit(adata, perturbation_key, control_label, combination_delimiter, layer,
train_indices)`` and ``predict(perturbations, n_cells, adata, return_mean, seed, clip)``,
returning an AnnData with the training ``var_names``, ``obs[perturbation_key]`` holding the
requested labels (``n_cells`` rows per label, or one with ``return_mean=True``) and the
predictions in ``X`` (float32) and, for cells, ``obs["control_cell"]``, the control cell
each prediction was made from. Inputs are never modified.
"""

from ._coexpression import CoexpressionBaseline
from ._knn import KnnBaseline
from ._linear import LinearBaseline
from ._simple import AdditiveBaseline, ControlBaseline, MeanBaseline
from ._target import MeanTargetBaseline, MultiregBaseline

__all__ = [
    "ControlBaseline",
    "MeanBaseline",
    "MeanTargetBaseline",
    "MultiregBaseline",
    "AdditiveBaseline",
    "LinearBaseline",
    "CoexpressionBaseline",
    "KnnBaseline",
]
