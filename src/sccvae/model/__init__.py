"""The AnnData-facing model: :class:`SCCVAE`, what it predicts and how it explains it.

``_model`` (the class: set-up, saving, loading) and its mixins: ``_training`` (``train``),
``_prediction``, ``_interventions`` (labels to shift interventions) and ``_interpretation``;
what ``train`` fits after the optimiser (``_observed``, ``_calibration``, ``_borrowing``),
the gene nodes (``_nodes``), functional modules (``_functional_modules``) and what a model
remembers of its training cells (``_reference``). Imported on first use, as ``sccvae`` is.
"""

from sccvae._lazy import lazy_attributes

__getattr__, __dir__ = lazy_attributes(__name__, {"SCCVAE": "._model"})

__all__ = ["SCCVAE"]
