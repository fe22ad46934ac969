"""The pure-torch network: :class:`SCCVAEModule`, its latent SCM and its loss.

``_module`` (encoder, perturbation encoder, decoder, the counterfactual), ``_shifts`` (the
shift interventions of targets), ``_scm`` (the latent linear structural causal model and
its graphs) and ``_losses`` (the objective and the negative binomial likelihood). Nothing
here knows about AnnData.
"""

from sccvae._lazy import lazy_attributes

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {"SCCVAEModule": "._module", "LatentSCM": "._scm", "build_graph_mask": "._scm"},
)

__all__ = ["SCCVAEModule", "LatentSCM", "build_graph_mask"]
