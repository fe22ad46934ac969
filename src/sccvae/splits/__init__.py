"""Reproducible train / validation / test splits for perturbation benchmarks.

Three designs are offered, all seeded and all chosen from the perturbation labels alone
(expression is never looked at, so test-set selection cannot leak the answer):

- :func:`unseen_perturbation_folds` -- K-fold *out-of-distribution* splits: test perturbations
  are never seen in training (the paper's OOD setting).
- :func:`seen_perturbation_split` -- *in-distribution* split of every perturbation's cells
  into train / validation / test (the paper's IID setting).
- :func:`combination_split` -- GEARS-style split holding out combinations (``"A+B"``), with
  each held-out combination categorised by how many of its components were seen as single
  perturbations in training.

Each returns :class:`Split` objects holding integer *positions* into ``adata.obs`` plus the
train / test perturbation labels. ``Split.to_dict()`` is JSON-serialisable and
``Split.from_dict`` restores it, so a benchmark can store its splits next to its results;
:func:`splits_to_frame` gives a cells x splits table for CSV.

Perturbations are handled as *canonical* labels (``"B+A"`` and ``"A+B"`` are one unit, see
:func:`sccvae._perturbations.canonical_label`); the label lists in a :class:`Split` are
canonical.
"""

from ._designs import combination_split, seen_perturbation_split, unseen_perturbation_folds
from ._split import Split, splits_to_frame

__all__ = [
    "Split",
    "unseen_perturbation_folds",
    "seen_perturbation_split",
    "combination_split",
    "splits_to_frame",
]
