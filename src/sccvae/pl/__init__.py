"""Plots for SCCVAE results, in the style of :mod:`scanpy.pl`.

Every function draws into ``ax`` (a new figure if ``None``) and returns the matplotlib
:class:`~matplotlib.axes.Axes`. ``show=None`` shows the figure only in an interactive
matplotlib session (never in scripts or tests); ``save`` writes the figure to a path, or to
``scanpy.settings.figdir`` when ``True``.
"""

from ._dose_response import dose_response
from ._graph import latent_graph
from ._modules import perturbation_modules
from ._predicted import predicted_vs_observed

__all__ = ["perturbation_modules", "dose_response", "predicted_vs_observed", "latent_graph"]


def __dir__() -> list[str]:
    """Return the plotting functions only (not the submodules that define them)."""
    return sorted(__all__)
