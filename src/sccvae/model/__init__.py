"""The AnnData-facing model: :class:`SCCVAE`, what it predicts and how it explains it.

``_model`` (the class: set-up, training, saving), ``_prediction`` and ``_interpretation``
(its mixins), what ``train`` fits after the optimiser (``_observed``, ``_calibration``,
``_borrowing``, ``_interventions``), the gene nodes (``_nodes``) and what a model remembers
of its training cells (``_reference``). Imported on first use, as ``sccvae`` is.
"""

from sccvae._lazy import lazy_attributes

__getattr__, __dir__ = lazy_attributes(__name__, {"SCCVAE": "._model"})

__all__ = ["SCCVAE"]
