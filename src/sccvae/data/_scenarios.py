"""Named simulated screens: presets of :func:`~sccvae.data.simulate_perturbseq` arguments."""

from __future__ import annotations

from typing import Any

#: Scenario name -> simulator arguments (on top of its defaults). ``sccvae benchmark
#: --scenario NAME`` runs on the screen they describe.
#:
#: - ``"default"``: the simulator's defaults: 1,000 genes, 60 CRISPRi targets in 10
#:   modules, effects that propagate through a sparse gene network.
#: - ``"shared-response"``: every perturbation also moves a common programme of 100 genes
#:   (a stress or growth response, as essential-gene knock-downs do), with a strength of
#:   its own; the programme also varies among control cells. The mean of training
#:   perturbations is then a strong predictor (Pearson of change on all genes about 0.46,
#:   in the range seen on real screens), and a model has to get both the shared and the
#:   specific part right to beat it.
#: - ``"weak"``: 30 % of the targets have no downstream effect and every target's
#:   knock-down efficiency varies between 20 % and 100 %, as in real screens where many
#:   perturbations have no detectable transcriptional phenotype.
#: - ``"saturation"``: effects saturate, ``tanh(delta)`` (``saturation=1``): a strong
#:   effect is squashed, and the effect of a combination is less than the sum of its
#:   parts where both move the same genes (non-additive truth; with ``--split combo``).
SIMULATION_SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "shared-response": {"shared_response": 0.3},
    "weak": {"null_fraction": 0.3, "efficiency": (0.2, 1.0)},
    "saturation": {"saturation": 1.0},
}
