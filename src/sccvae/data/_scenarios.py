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
#: - ``"realistic"``: a screen calibrated against a real one (Papalexi et al. 2021, THP-1
#:   CRISPR knock-outs; ``benchmarks/simulator_calibration.py``), on which no method wins by
#:   matching the generator's form. Every gene's own variation propagates through the
#:   network by Hill functions with per-edge thresholds; each module acts through a relay
#:   gene (two hops); 20 % of the targets feed a pathway hub that regulates 200 genes (the
#:   large response a few strong knock-outs share, as the IFN-gamma -> JAK/STAT -> IRF1
#:   axis in THP-1 cells); three confounding programmes (cell cycle, size, stress) each
#:   move half of the genes, targets included, together in every cell, and dominate the
#:   targets' variation among control cells (a target's own propagated variation is small:
#:   ``intrinsic_noise=0.15``, no extra ``regulator_noise``); knock-out efficiency varies
#:   (30-100 %), 30 % of the targets have no downstream effect, every perturbation also
#:   moves a weak shared response, and a knock-out's own transcript shows 60 % of its
#:   functional (log) loss. Counts are as sparse as the real screen's (about 600 UMIs per
#:   cell over 1,000 genes, 79 % zeros) and the 30 targets among the best-expressed genes.
#:   30 knock-outs x 200 cells and 2,000 control cells: 8,000 cells, as the default. On
#:   seeds 1-5 the ``mean``, ``mean_target``, ``coexpression`` and ``multireg`` baselines
#:   score within 0.1 of the real screen (Pearson of change on the top-20 DE genes, with
#:   and without the target): as on the real screen, the control cells' coexpression of a
#:   target barely predicts what its knock-out does to the other genes (``multireg`` 0.51
#:   against ``mean_target``'s 0.49 without the target; real screen 0.56 and 0.58; 0.88
#:   against 0.45 on ``"default"``).
SIMULATION_SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "shared-response": {"shared_response": 0.3},
    "weak": {"null_fraction": 0.3, "efficiency": (0.2, 1.0)},
    "saturation": {"saturation": 1.0},
    "realistic": {
        "n_perturbations": 30,
        "n_cells_per_perturbation": 200,
        "library_size": 500.0,
        "library_size_sigma": 0.55,
        "expression_sigma": 1.8,
        "target_expression_quantile": 0.85,
        "regulation": "hill",
        "cascade_depth": 2,
        "hub_fraction": 0.2,
        "edge_weight_range": (0.5, 1.5),
        "intrinsic_noise": 0.15,
        "regulator_noise": 0.0,
        "n_confounders": 3,
        "confounder_scale": 0.4,
        "confounder_fraction": 0.5,
        "effect_size": 3.0,
        "efficiency": (0.3, 1.0),
        "transcript_fraction": 0.6,
        "null_fraction": 0.3,
        "shared_response": 0.1,
    },
}
