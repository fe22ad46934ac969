"""A gene-level ground-truth simulator of Perturb-seq screens.

The simulator is deliberately *independent of the SCCVAE parameterisation*: the truth is a
sparse gene regulatory network over the measured genes (not a latent SCM), perturbations are
shifts of a target gene's log expression that propagate linearly (optionally saturating)
through that network, and counts are negative-binomial with realistic library sizes. The
options of realistic screens (the ``"realistic"`` scenario) propagate every cell's own
variation through Hill functions, add multi-hop cascades, a pathway hub and confounding
programmes, so that the truth has none of the forms a simple predictor assumes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccvae._perturbations import canonical_label

from ._network import (
    CellPropagation,
    add_cascade,
    add_hub,
    build_network,
    saturate,
    total_effects,
)
from ._preprocessing import COUNTS_LAYER

logger = logging.getLogger(__name__)

_MODES = {"knockdown": -1.0, "activation": 1.0}
_MODE_ALIASES = {
    "crispri": "knockdown",
    "crispra": "activation",
    "knockdown": "knockdown",
    "activation": "activation",
}
_REGULATIONS = ("linear", "hill")


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_positive_float(value, name: str, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number, got {value!r}.") from None
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(
            f"`{name}` must be {'non-negative' if allow_zero else 'positive'}, got {value!r}."
        )
    return value


def simulate_perturbseq(
    n_genes: int = 1000,
    n_perturbations: int = 60,
    n_cells_per_perturbation: int = 100,
    n_control_cells: int = 2000,
    n_combinations: int = 0,
    density: float | None = None,
    effect_size: float = 2.0,
    modes: Sequence[str] = ("knockdown",),
    n_modules: int | None = None,
    module_size: int | None = None,
    module_edge_prob: float = 0.6,
    combination_size: int = 2,
    edge_weight_range: tuple[float, float] = (0.3, 1.0),
    activation_fraction: float = 0.5,
    expression_sigma: float = 1.3,
    n_programs: int = 3,
    program_scale: float = 0.2,
    gene_noise: float = 0.1,
    regulator_noise: float = 0.3,
    library_size: float = 5000.0,
    library_size_sigma: float = 0.35,
    dispersion: float = 0.1,
    penetrance: tuple[float, float] | float | None = (5.0, 1.5),
    saturation: float | None = None,
    shared_response: float = 0.0,
    shared_response_genes: int | None = None,
    null_fraction: float = 0.0,
    efficiency: tuple[float, float] | None = None,
    regulation: str = "linear",
    hill_coefficient: float = 2.0,
    cascade_depth: int = 1,
    hub_fraction: float = 0.0,
    hub_genes: int | None = None,
    intrinsic_noise: float = 0.0,
    n_confounders: int = 0,
    confounder_scale: float = 0.5,
    confounder_fraction: float = 0.3,
    transcript_fraction: float = 1.0,
    target_expression_quantile: float = 0.4,
    gene_prefix: str = "G",
    seed: int = 0,
) -> AnnData:
    """Simulate a Perturb-seq screen with a known gene regulatory network.

    Generative model (all logarithms natural):

    1. **Genes and network.** Genes get a random topological order. The perturbation targets
       are drawn among the more highly expressed genes in the first 40 % of that order and
       assigned to ``n_modules`` functional modules (equal sizes). Each module owns a
       disjoint set of ``module_size`` downstream genes (later in the order); each target of
       the module regulates every module gene with probability ``module_edge_prob``, with a
       sign per (module, gene) shared by the module's targets (flipped for 10 % of edges), so
       targets of one module have similar footprints. A sparse random DAG adds background
       edges between any earlier and later gene with probability ``density``. Edge weight
       magnitudes are ``U(*edge_weight_range)``, positive (activating) with probability
       ``activation_fraction``; the total incoming ``|weight|`` of a gene is capped at 2.
    2. **Baseline.** Gene ``g`` has a baseline log proportion drawn ``N(0, expression_sigma)``
       and normalised to sum to one (lognormal spread: a few genes very high, many low).
    3. **Cell state.** ``log mu[i, g] = log L_i + log p_g + (f_i @ F)_g + eps_ig + delta_ig``
       with library size ``L_i ~ LogNormal(log library_size, library_size_sigma)``,
       ``n_programs`` shared cell-state programs (``f_i ~ N(0, I)``, loadings
       ``F ~ N(0, program_scale)``), gene-level noise ``eps ~ N(0, gene_noise)``, and the
       intrinsic variation of every target, ``N(0, regulator_noise)``, propagated through the
       network like an intervention (so regulators and their downstream genes co-vary).
    4. **Interventions.** A single perturbation of target ``t`` shifts ``t``'s log expression
       by ``s_t = sign * effect_size * U(0.75, 1.25)`` (sign -1 for ``"knockdown"``/CRISPRi,
       +1 for ``"activation"``/CRISPRa; mode drawn per target from ``modes``). Each perturbed
       cell has its own penetrance ``pi_i ~ Beta(*penetrance)`` (a float gives a constant,
       ``None`` means 1). Shifts of a combination add in log space *before* propagation.
       Propagation is linear in log space: ``delta_i = pi_i * s (I - W)^-1`` (row vectors,
       ``W[j, k]`` the effect of gene ``j`` on gene ``k``), optionally saturated elementwise
       as ``saturation * tanh(delta / saturation)``.
       *Knock-down efficiency* (``efficiency=(lo, hi)``): each target's direct shift is
       scaled by its own ``U(lo, hi)``. *Targets without phenotype* (``null_fraction``): that
       share of the targets has no outgoing edge, so its perturbation moves only its own gene.
       *Shared response* (``shared_response > 0``): a common programme ``P`` over
       ``shared_response_genes`` genes (loadings ``±U(0.5, 1.5)``, not targets) varies across
       all cells (``f_i P`` with ``f_i ~ N(0, program_scale)``, like a stress or growth
       state), and every perturbation also moves it: cell ``i`` of perturbation ``p`` gets
       ``pi_i a_p P`` on top of its specific effect, with ``a_p = shared_response *
       U(0.5, 1.5)`` per single perturbation (the sum over its targets for a combination).
       The scenarios of :data:`SIMULATION_SCENARIOS` are presets of these arguments.
    5. **Counts.** ``counts ~ NB(mean mu, dispersion phi_g)`` (Gamma-Poisson), with
       ``phi_g ~ LogNormal(log dispersion, 0.5)``. Cells are generated per perturbation block
       (controls in blocks of 1,000) so peak memory stays bounded.
    6. **Realistic screens** (the ``"realistic"`` scenario). Each option below is off by
       default (the screen is then exactly the one of steps 1-5); the random draws they add
       come from a stream of their own. Together they remove the forms that steps 1-4 share
       with simple predictors (a control cell's covariance equal to the causal effect, one
       linear map, one hop), so that no method wins by matching the generator:

       - *Cascades* (``cascade_depth = k > 1``): each module's programme runs through a
         chain of ``k - 1`` relay genes (its earliest genes in the order, e.g. transcription
         factors): every target of the module activates the first relay, each relay the
         next, and the last relay takes over each of a target's module edges with
         probability 0.7 (the others stay direct). Most module genes are then ``k`` hops
         from the targets.
       - *Hub* (``hub_fraction > 0``): that share of the targets (drawn at random) activate
         one hub gene, the first gene downstream of every target that is not a relay, which
         regulates ``hub_genes`` random later genes (activating with probability
         ``activation_fraction``): the knock-downs of one pathway (as IFN-gamma -> JAK/STAT
         -> IRF1 in THP-1 cells) share a large response, each with a strength of its own.
         Relays and the hub integrate their regulators as a pathway does, each of them
         needed: their incoming weights are not capped.
       - *Per-cell propagation* (with ``regulation="hill"``, ``intrinsic_noise > 0`` or
         confounders): what enters the network in cell ``i``, ``e_i`` = intrinsic noise
         ``N(0, intrinsic_noise)`` on *every* gene + ``N(0, regulator_noise)`` on the
         targets + the confounding programmes (+ the cell's knock-down shifts ``pi_i s``
         with Hill regulation), propagates through it cell by cell, gene level by gene
         level, and ``log mu`` gets the result in place of step 3's propagated target
         noise. Every gene's natural variation thus reaches the genes it regulates.
       - *Hill regulation* (``regulation="hill"``): each edge is a Hill function of the
         regulator's expression that multiplies the regulated gene's expression; in log
         space, relative to the baseline cell, an edge adds ``|w| / n * (log sigmoid(s n (x
         + d)) - log sigmoid(s n d))`` for a regulator deviation ``x``, with ``n =
         hill_coefficient``, ``s = sign(w)`` and a threshold offset ``d ~ U(-2, 2)`` per
         edge (how far above its threshold the regulator sits in the baseline cell, in log
         units; :class:`~sccvae.data._network.CellPropagation`). An activator above its
         threshold is saturated: the regulated gene ignores its small changes and follows it
         (slope ``|w|``) only once it falls below; one below it acts log-linearly; a
         repressor mirrors this. So control cells' fluctuations see an edge's slope at the
         baseline and a knock-down its chord, a knock-down at half efficiency moves
         downstream genes by another share than half of a full one, and combinations are not
         additive. ``expected_shift`` is then the shift of the noise-free cell knocked down
         at the mean penetrance (the mean over noisy cells differs somewhat). ``saturation``
         does not apply.
       - *Confounding programmes* (``n_confounders > 0``, e.g. cell cycle, cell size,
         stress): programme ``k`` loads a random ``confounder_fraction`` of all genes,
         targets included (``confounder_scale * U(0.5, 1.5)``, positive for 80 % of them),
         with a per-cell factor ``N(0, 1)``, and enters with the intrinsic noise. Control
         cells' coexpression then mixes regulation with common causes that no knock-down
         moves.
       - *Knock-outs* (``transcript_fraction < 1``): the target's function drops by its
         whole direct shift (that is what propagates), its own measured transcript only by
         ``transcript_fraction`` of it, as nonsense-mediated decay removes only part of the
         mRNA of a CRISPR knock-out.
       - *Target choice*: targets are drawn among the upstream genes expressed above the
         ``target_expression_quantile`` (real screens measure their targets among their
         best-expressed genes).

    Parameters
    ----------
    n_genes
        Number of (measured) genes.
    n_perturbations
        Number of single-gene perturbations (distinct targets).
    n_cells_per_perturbation
        Cells per perturbation (singles and combinations).
    n_control_cells
        Number of unperturbed cells (label ``"control"``).
    n_combinations
        Number of combinations of ``combination_size`` single targets (half of them within
        a module when possible); labelled ``"A+B"`` in sorted order.
    density
        Background edge probability between an earlier and a later gene; default
        ``2 / n_genes`` (about one background out-edge per gene on average).
    effect_size
        Mean magnitude of a target's direct log-expression shift at full penetrance.
    modes
        Modes to draw per target from: ``"knockdown"`` (alias ``"CRISPRi"``) and/or
        ``"activation"`` (alias ``"CRISPRa"``).
    n_modules
        Number of functional modules; default ``max(1, round(n_perturbations / 6))``.
    module_size
        Downstream genes per module; default ``clip(0.6 * downstream genes / n_modules, 5, 50)``.
    module_edge_prob
        Probability that a module's target regulates each of the module's genes.
    combination_size
        Targets per combination.
    edge_weight_range
        Range of edge weight magnitudes.
    activation_fraction
        Fraction of edges that are activating (positive).
    expression_sigma
        Standard deviation of baseline log proportions across genes.
    n_programs, program_scale
        Number and loading scale of shared cell-state programs.
    gene_noise
        Standard deviation of independent log-scale noise per cell and gene.
    regulator_noise
        Standard deviation of each perturbation target's intrinsic log-scale variation,
        which propagates through the network in every cell (control cells included), as the
        natural variation of a regulator moves its downstream genes. This is what makes
        control-cell coexpression informative about regulation; 0 switches it off (then no
        method can tell unseen targets apart from their coexpression).
    library_size, library_size_sigma
        Median and log-scale spread of per-cell library sizes (UMIs of a control cell).
    dispersion
        Median negative-binomial dispersion ``phi`` (variance = mu + phi mu^2).
    penetrance
        ``(a, b)`` of the Beta distribution of per-cell penetrance, a constant, or ``None``.
    saturation
        If given, total effects are squashed as ``saturation * tanh(delta / saturation)``.
    shared_response
        Mean strength ``a`` of the programme shared by all perturbations (0: none).
    shared_response_genes
        Genes of the shared programme; default ``n_genes // 10``.
    null_fraction
        Share of targets without downstream effect (no outgoing edge).
    efficiency
        ``(lo, hi)`` range of per-target knock-down efficiency; ``None`` means 1.
    regulation
        ``"linear"`` (default, step 4) or ``"hill"`` (step 6).
    hill_coefficient
        Hill coefficient ``n`` of every edge with ``regulation="hill"``.
    cascade_depth
        Hops from a module's targets to most of its genes (1: direct edges; step 6).
    hub_fraction
        Share of the targets that feed the pathway hub (0: no hub; step 6).
    hub_genes
        Genes the hub regulates; default ``n_genes // 5``.
    intrinsic_noise
        Standard deviation of every gene's own log-scale variation, propagated through the
        network to the genes it regulates (0: none; step 6).
    n_confounders, confounder_scale, confounder_fraction
        Number of confounding programmes, the scale of their loadings and the share of genes
        each loads (step 6).
    transcript_fraction
        Share of a target's direct shift that its own measured transcript shows (1: all of
        it, as CRISPRi; step 6).
    target_expression_quantile
        Targets are drawn among upstream genes whose baseline expression is above this
        quantile of all genes' (when enough of them are).
    gene_prefix
        Gene names are ``f"{gene_prefix}{index:04d}"``.
    seed
        Seed for :func:`numpy.random.default_rng`; equal seeds give identical data.

    Returns
    -------
    AnnData following the package conventions (``obs["perturbation"]``,
    ``layers["counts"]``, log-normalised ``X``), with ``obs["penetrance"]`` (0 for
    controls), ``obs["mode"]``, ``obs["n_targets"]``, ``obs["library_size"]`` (the drawn
    ``L_i``), ``var["baseline_mean"]`` (expected count at the median library size),
    ``var["dispersion"]``, ``var["is_target"]``, ``var["module"]`` (module owning the gene
    as downstream gene or target; -1 if none) and ``uns["simulation"]`` holding the ground
    truth (all h5ad-writable):

    - ``adjacency``: dense float32 ``n_genes x n_genes`` weighted DAG (row regulates column,
      ``var_names`` order); ``genes``: the gene names; ``topological_order``: gene indices.
    - ``perturbations``: labels (singles, then combinations); ``expected_shift``: float32
      ``perturbations x genes`` noise-free shift of ``log mu`` at the mean penetrance
      (``saturate(mean_pi * s (I - W)^-1) + mean_pi * a_p * P``; approximately the
      expected change of log-normalised expression for well-expressed genes).
    - ``targets``, ``target_modes``, ``target_modules``, ``target_efficiency`` and
      ``target_direct_shift`` (signed, at full penetrance): one entry per single perturbation.
    - ``null_targets``: the targets without downstream effect.
    - ``shared_response_loadings``: ``P``, zeros without a shared response.
    - ``shared_response_strength``: ``a_p``, one entry per perturbation.
    - ``relays``: modules x ``cascade_depth - 1`` names of the module relays (``""``
      where a module has too few genes); ``hub``: the hub gene (``"None"`` without one),
      ``hub_genes``: the genes it regulates, ``hub_targets``: the targets feeding it (null
      targets lose that edge and are left out).
    - ``hill_offsets``: with Hill regulation, the threshold offset ``d`` of every edge, in
      the row-major order of the adjacency's non-zero entries (``np.nonzero``); empty
      otherwise.
    - ``confounder_loadings``: ``n_confounders x n_genes`` (no row without confounders).
    - ``mean_penetrance`` and ``params`` (every argument; ``None`` stored as ``"None"``).
    """
    start = time.perf_counter()
    n_genes = _check_positive_int(n_genes, "n_genes", 2)
    n_perturbations = _check_positive_int(n_perturbations, "n_perturbations")
    n_cells_per_perturbation = _check_positive_int(
        n_cells_per_perturbation, "n_cells_per_perturbation"
    )
    n_control_cells = _check_positive_int(n_control_cells, "n_control_cells")
    n_combinations = _check_positive_int(n_combinations, "n_combinations", 0)
    combination_size = _check_positive_int(combination_size, "combination_size", 2)
    n_programs = _check_positive_int(n_programs, "n_programs", 0)
    effect_size = _check_positive_float(effect_size, "effect_size", allow_zero=True)
    expression_sigma = _check_positive_float(expression_sigma, "expression_sigma", allow_zero=True)
    program_scale = _check_positive_float(program_scale, "program_scale", allow_zero=True)
    gene_noise = _check_positive_float(gene_noise, "gene_noise", allow_zero=True)
    regulator_noise = _check_positive_float(regulator_noise, "regulator_noise", allow_zero=True)
    library_size = _check_positive_float(library_size, "library_size")
    library_size_sigma = _check_positive_float(
        library_size_sigma, "library_size_sigma", allow_zero=True
    )
    dispersion = _check_positive_float(dispersion, "dispersion")
    if n_perturbations > 0.4 * n_genes:
        raise ValueError(
            f"`n_perturbations` ({n_perturbations}) must be at most 40% of `n_genes` ({n_genes}): "
            "targets are drawn from the upstream part of the network."
        )
    if density is None:
        density = 2.0 / n_genes
    if not 0.0 <= float(density) <= 1.0:
        raise ValueError(f"`density` must lie in [0, 1], got {density!r}.")
    density = float(density)
    if not 0.0 < module_edge_prob <= 1.0:
        raise ValueError(f"`module_edge_prob` must lie in (0, 1], got {module_edge_prob!r}.")
    if not 0.0 <= activation_fraction <= 1.0:
        raise ValueError(f"`activation_fraction` must lie in [0, 1], got {activation_fraction!r}.")
    lo, hi = (float(v) for v in edge_weight_range)
    if not 0 <= lo <= hi:
        raise ValueError(
            "`edge_weight_range` must be (low, high) with 0 <= low <= high, "
            f"got {edge_weight_range!r}."
        )
    if isinstance(modes, str):
        modes = (modes,)
    try:
        modes = tuple(_MODE_ALIASES[str(m).lower()] for m in modes)
    except KeyError:
        raise ValueError(
            f"`modes` must contain 'knockdown' and/or 'activation', got {modes!r}."
        ) from None
    if not modes:
        raise ValueError("`modes` must not be empty.")
    if penetrance is None:
        pen_a = pen_b = None
        mean_pen = 1.0
    elif np.ndim(penetrance) == 0:
        mean_pen = float(penetrance)
        if not 0 < mean_pen <= 1:
            raise ValueError(f"A constant `penetrance` must lie in (0, 1], got {penetrance!r}.")
        pen_a = pen_b = None
    else:
        pen_a, pen_b = (float(v) for v in penetrance)
        if pen_a <= 0 or pen_b <= 0:
            raise ValueError(f"Beta `penetrance` parameters must be positive, got {penetrance!r}.")
        mean_pen = pen_a / (pen_a + pen_b)
    if saturation is not None:
        saturation = _check_positive_float(saturation, "saturation")
    shared_response = _check_positive_float(shared_response, "shared_response", allow_zero=True)
    if shared_response_genes is None:
        shared_response_genes = max(1, n_genes // 10)
    shared_response_genes = _check_positive_int(shared_response_genes, "shared_response_genes")
    if not 0.0 <= float(null_fraction) <= 1.0:
        raise ValueError(f"`null_fraction` must lie in [0, 1], got {null_fraction!r}.")
    null_fraction = float(null_fraction)
    if efficiency is not None:
        eff_lo, eff_hi = (float(v) for v in efficiency)
        if not 0.0 <= eff_lo <= eff_hi:
            raise ValueError(
                f"`efficiency` must be (low, high) with 0 <= low <= high, got {efficiency!r}."
            )
    if regulation not in _REGULATIONS:
        raise ValueError(f"`regulation` must be one of {list(_REGULATIONS)}, got {regulation!r}.")
    hill = regulation == "hill"
    hill_coefficient = _check_positive_float(hill_coefficient, "hill_coefficient")
    if hill and saturation is not None:
        raise ValueError(
            "`saturation` squashes linear effects; Hill regulation (regulation='hill') "
            "saturates by itself. Leave `saturation=None` with regulation='hill'."
        )
    cascade_depth = _check_positive_int(cascade_depth, "cascade_depth")
    if not 0.0 <= float(hub_fraction) <= 1.0:
        raise ValueError(f"`hub_fraction` must lie in [0, 1], got {hub_fraction!r}.")
    hub_fraction = float(hub_fraction)
    if hub_genes is None:
        hub_genes = max(1, n_genes // 5)
    hub_genes = _check_positive_int(hub_genes, "hub_genes")
    intrinsic_noise = _check_positive_float(intrinsic_noise, "intrinsic_noise", allow_zero=True)
    n_confounders = _check_positive_int(n_confounders, "n_confounders", 0)
    confounder_scale = _check_positive_float(confounder_scale, "confounder_scale", allow_zero=True)
    if not 0.0 < float(confounder_fraction) <= 1.0:
        raise ValueError(f"`confounder_fraction` must lie in (0, 1], got {confounder_fraction!r}.")
    confounder_fraction = float(confounder_fraction)
    if not 0.0 <= float(transcript_fraction) <= 1.0:
        raise ValueError(f"`transcript_fraction` must lie in [0, 1], got {transcript_fraction!r}.")
    transcript_fraction = float(transcript_fraction)
    if not 0.0 <= float(target_expression_quantile) < 1.0:
        raise ValueError(
            f"`target_expression_quantile` must lie in [0, 1), got {target_expression_quantile!r}."
        )
    target_expression_quantile = float(target_expression_quantile)
    # cells are propagated one by one through the network (rather than by one linear map for
    # every cell) when something other than the targets' intrinsic variation enters it
    per_cell = hill or intrinsic_noise > 0 or (n_confounders > 0 and confounder_scale > 0)
    if n_modules is None:
        n_modules = max(1, round(n_perturbations / 6))
    n_modules = _check_positive_int(n_modules, "n_modules")
    if n_modules > n_perturbations:
        raise ValueError(
            f"`n_modules` ({n_modules}) cannot exceed `n_perturbations` ({n_perturbations})."
        )
    max_combos = (
        math.comb(n_perturbations, combination_size) if combination_size <= n_perturbations else 0
    )
    if n_combinations > max_combos:
        raise ValueError(
            f"`n_combinations` ({n_combinations}) exceeds the {max_combos} possible "
            "combinations of "
            f"{combination_size} of the {n_perturbations} targets."
        )

    rng = np.random.default_rng(seed)
    # the scenario options draw from their own stream: without them, the data are unchanged
    scenario_rng = np.random.default_rng([0 if seed is None else int(seed), 1])
    # and the options of realistic screens from a third one, for the same reason
    cell_rng = np.random.default_rng([0 if seed is None else int(seed), 2])
    width = max(4, len(str(n_genes - 1)))
    genes = np.array([f"{gene_prefix}{i:0{width}d}" for i in range(n_genes)])

    # baseline expression and topological order
    log_p = rng.normal(0.0, expression_sigma, n_genes)
    log_p -= np.log(np.exp(log_p - log_p.max()).sum()) + log_p.max()
    order = rng.permutation(n_genes)
    position = np.empty(n_genes, dtype=np.int64)
    position[order] = np.arange(n_genes)
    upstream = order[: int(0.4 * n_genes)]
    expressed = upstream[log_p[upstream] >= np.quantile(log_p, target_expression_quantile)]
    candidates = expressed if len(expressed) >= n_perturbations else upstream
    targets = rng.choice(candidates, n_perturbations, replace=False)
    target_module = np.arange(n_perturbations) % n_modules
    target_module = rng.permutation(target_module)
    target_modes = rng.choice(np.array(modes), n_perturbations)
    direct = (
        np.array([_MODES[m] for m in target_modes])
        * effect_size
        * rng.uniform(0.75, 1.25, n_perturbations)
    )

    n_downstream = n_genes - (position[targets].max() + 1)
    if module_size is None:
        module_size = int(np.clip(0.6 * n_downstream / n_modules, 5, 50))
    module_size = _check_positive_int(module_size, "module_size")
    module_size = min(module_size, max(1, n_downstream))
    if n_downstream < 1:
        raise ValueError("No genes lie downstream of the targets; increase `n_genes`.")
    w, gene_module = build_network(
        rng, n_genes, targets, target_module, order, n_modules, module_size, module_edge_prob,
        density, (lo, hi), activation_fraction,
    )  # fmt: skip
    gene_module[targets] = target_module
    relays = np.zeros((n_modules, 0), dtype=np.int64)
    if cascade_depth > 1:
        w, relays = add_cascade(
            cell_rng, w, order, targets, target_module, gene_module, cascade_depth, (lo, hi)
        )
    hub, hub_members = -1, np.zeros(0, dtype=np.int64)
    hub_feeders = np.zeros(0, dtype=np.int64)
    if hub_fraction > 0:
        n_feeders = max(1, round(hub_fraction * n_perturbations))
        hub_feeders = np.sort(cell_rng.choice(n_perturbations, n_feeders, replace=False))
        w, hub, hub_members = add_hub(
            cell_rng, w, order, targets, targets[hub_feeders], hub_genes, (lo, hi),
            relays.ravel(), activation_fraction,
        )  # fmt: skip
    target_efficiency = np.ones(n_perturbations)
    if efficiency is not None:
        target_efficiency = scenario_rng.uniform(eff_lo, eff_hi, n_perturbations)
        direct = direct * target_efficiency
    null_targets = np.zeros(n_perturbations, dtype=bool)
    if null_fraction > 0:
        n_null = round(null_fraction * n_perturbations)
        null_targets[scenario_rng.permutation(n_perturbations)[:n_null]] = True
        keeps_edges = ~np.isin(np.arange(n_genes), targets[null_targets])
        w = (sp.diags(keeps_edges.astype(float)) @ w).tocsr()
        w.eliminate_zeros()
    shared_loadings = np.zeros(n_genes, dtype=np.float32)
    shared_strength = np.zeros(n_perturbations)
    if shared_response > 0:
        pool = np.setdiff1d(np.arange(n_genes), targets)
        members = scenario_rng.choice(pool, min(shared_response_genes, pool.size), replace=False)
        signs = np.where(scenario_rng.random(members.size) < 0.5, -1.0, 1.0)
        shared_loadings[members] = signs * scenario_rng.uniform(0.5, 1.5, members.size)
        shared_strength = shared_response * scenario_rng.uniform(0.5, 1.5, n_perturbations)

    offsets = np.zeros(0, dtype=np.float32)
    confounders = np.zeros((0, n_genes), dtype=np.float32)
    propagation = None
    if per_cell:
        w.sort_indices()  # edge order = the row-major order of the dense adjacency
        if hill:
            # where each regulator sits relative to each edge's threshold in the baseline cell:
            # from well below it (knock-downs change nothing) to well above it (switch-like)
            offsets = cell_rng.uniform(-2.0, 2.0, w.nnz).astype(np.float32)
        propagation = CellPropagation(w, order, hill_coefficient if hill else None, offsets)
        if n_confounders and confounder_scale > 0:
            members = cell_rng.random((n_confounders, n_genes)) < confounder_fraction
            signs = np.where(cell_rng.random((n_confounders, n_genes)) < 0.8, 1.0, -1.0)
            magnitude = confounder_scale * cell_rng.uniform(0.5, 1.5, (n_confounders, n_genes))
            confounders = (members * signs * magnitude).astype(np.float32)

    # perturbation list: singles then combinations
    designs: list[tuple[int, ...]] = [(k,) for k in range(n_perturbations)]
    seen: set[tuple[int, ...]] = set()
    attempts = 0
    while len(seen) < n_combinations:
        attempts += 1
        if attempts > 1000 * (n_combinations + 1):
            raise RuntimeError("Could not draw enough distinct combinations.")
        members = None
        if rng.random() < 0.5:
            module = rng.integers(n_modules)
            pool = np.flatnonzero(target_module == module)
            if len(pool) >= combination_size:
                members = rng.choice(pool, combination_size, replace=False)
        if members is None:
            members = rng.choice(n_perturbations, combination_size, replace=False)
        key = tuple(sorted(int(m) for m in members))
        if key not in seen:
            seen.add(key)
            designs.append(key)
    labels = [canonical_label(genes[targets[list(d)]]) for d in designs]
    shifts = np.zeros((len(designs), n_genes))
    for row, design in enumerate(designs):
        for k in design:
            shifts[row, targets[k]] += direct[k]
    total = total_effects(w, order, shifts)  # at full penetrance
    strength = np.array([shared_strength[list(d)].sum() for d in designs])
    specific = saturate(mean_pen * total, saturation)
    if hill:  # the noise-free cell, knocked down at the mean penetrance
        specific = propagation(mean_pen * shifts).astype(np.float64)
    expected = specific + mean_pen * strength[:, None] * shared_loadings
    if transcript_fraction < 1:  # the targets' own transcripts keep part of their level
        expected -= (1.0 - transcript_fraction) * mean_pen * shifts
    expected = expected.astype(np.float32)

    # cell-level generation, block by block
    theta = (1.0 / (dispersion * np.exp(rng.normal(0.0, 0.5, n_genes)))).astype(np.float32)
    loadings = rng.normal(0.0, program_scale, (n_programs, n_genes)).astype(np.float32)
    log_p32 = log_p.astype(np.float32)
    # total effect of a unit change of each target on every gene (targets x genes)
    target_units = np.zeros((len(targets), n_genes))
    target_units[np.arange(len(targets)), targets] = 1.0
    target_propagation = None
    if regulator_noise > 0 and not per_cell:
        target_propagation = total_effects(w, order, target_units).astype(np.float32)

    def block(n: int, effect: np.ndarray | None, shared: float = 0.0, direct=None):
        log_lib = rng.normal(np.log(library_size), library_size_sigma, n).astype(np.float32)
        log_mu = rng.standard_normal((n, n_genes), dtype=np.float32)
        log_mu *= np.float32(gene_noise)
        log_mu += log_p32
        log_mu += log_lib[:, None]
        if n_programs:
            log_mu += rng.standard_normal((n, n_programs), dtype=np.float32) @ loadings
        if target_propagation is not None:
            intrinsic = rng.standard_normal((n, target_propagation.shape[0]), dtype=np.float32)
            intrinsic *= np.float32(regulator_noise)
            log_mu += intrinsic @ target_propagation
        exo = None
        if per_cell:  # what enters the network in each cell, before it propagates
            exo = np.zeros((n, n_genes), dtype=np.float32)
            if intrinsic_noise > 0:
                exo += np.float32(intrinsic_noise) * cell_rng.standard_normal(
                    (n, n_genes), dtype=np.float32
                )
            if regulator_noise > 0:
                exo[:, targets] += np.float32(regulator_noise) * cell_rng.standard_normal(
                    (n, len(targets)), dtype=np.float32
                )
            if confounders.shape[0]:
                factors = cell_rng.standard_normal((n, confounders.shape[0]), dtype=np.float32)
                exo += factors @ confounders
        if effect is None:
            pen = np.zeros(n, dtype=np.float32)
        else:
            if pen_a is None:
                pen = np.full(n, mean_pen, dtype=np.float32)
            else:
                pen = rng.beta(pen_a, pen_b, n).astype(np.float32)
            effect32 = effect.astype(np.float32)
            nz = np.flatnonzero(effect32)
            if hill:  # the knock-down enters the network with the cell's own variation
                exo[:, nz] += pen[:, None] * effect32[nz][None, :]
            else:
                log_mu[:, nz] += saturate(pen[:, None] * effect32[nz][None, :], saturation)
            if transcript_fraction < 1:
                # a knock-out's protein is lost, but nonsense-mediated decay removes only part
                # of its transcript: the measured target keeps the rest of its direct shift
                own = np.flatnonzero(direct)
                log_mu[:, own] -= np.float32(1.0 - transcript_fraction) * (
                    pen[:, None] * direct[own].astype(np.float32)[None, :]
                )
        if exo is not None:
            log_mu += propagation(exo)
            del exo
        if shared_response > 0:
            state = scenario_rng.normal(0.0, program_scale, n).astype(np.float32) + pen * shared
            log_mu += state[:, None] * shared_loadings[None, :]
        np.exp(log_mu, out=log_mu)  # now the NB mean
        lam = rng.standard_gamma(theta, size=(n, n_genes), dtype=np.float32)
        lam *= log_mu
        lam /= theta
        del log_mu
        counts = rng.poisson(lam)
        del lam
        flat = np.flatnonzero(counts)
        data = counts.ravel()[flat].astype(np.float32)
        del counts
        row_nnz = np.bincount(flat // n_genes, minlength=n)
        indices = (flat % n_genes).astype(np.int32)
        return data, indices, row_nnz, pen, np.exp(log_lib)

    # blocks are generated one at a time (bounded temporaries) and kept as compact CSR pieces
    pieces, obs_label, obs_pen, obs_lib = [], [], [], []
    jobs = []
    remaining = n_control_cells
    while remaining > 0:
        jobs.append(("control", min(1000, remaining), None))
        remaining -= jobs[-1][1]
    jobs = [(label, n, effect, 0.0, None) for label, n, effect in jobs]
    # Hill regulation propagates each cell's direct shifts; linear effects are propagated once
    effects = shifts if hill else total
    jobs += [
        (label, n_cells_per_perturbation, effects[row], strength[row], shifts[row])
        for row, label in enumerate(labels)
    ]
    for label, n, effect, shared, direct_shift in jobs:
        data, indices, row_nnz, pen, lib = block(n, effect, shared, direct_shift)
        pieces.append((data, indices, row_nnz))
        obs_label += [label] * n
        obs_pen.append(pen)
        obs_lib.append(lib)
    # assemble counts and log-normalised values, freeing each piece once copied
    row_nnz = np.concatenate([p[2] for p in pieces])
    indptr = np.zeros(len(row_nnz) + 1, dtype=np.int64)
    np.cumsum(row_nnz, out=indptr[1:])
    nnz = int(indptr[-1])
    if nnz < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    count_data = np.empty(nnz, dtype=np.float32)
    log_data = np.empty(nnz, dtype=np.float32)
    indices = np.empty(nnz, dtype=np.int32)
    pos = 0
    pieces.reverse()
    while pieces:
        data, idx, rn = pieces.pop()
        k = len(data)
        count_data[pos : pos + k] = data
        indices[pos : pos + k] = idx
        totals = np.bincount(np.repeat(np.arange(len(rn)), rn), weights=data, minlength=len(rn))
        scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
        log_data[pos : pos + k] = np.log1p(data * np.repeat(scale, rn).astype(np.float32))
        pos += k
        del data, idx, rn
    counts = sp.csr_matrix((count_data, indices, indptr), shape=(len(obs_label), n_genes))
    x = sp.csr_matrix((log_data, indices.copy(), indptr.copy()), shape=counts.shape)

    design_mode = []
    for design in designs:
        m = {str(target_modes[k]) for k in design}
        design_mode.append(m.pop() if len(m) == 1 else "mixed")
    mode_of = dict(zip(labels, design_mode, strict=True))
    ntar_of = {label: len(d) for label, d in zip(labels, designs, strict=True)}
    categories = ["control"] + labels
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(obs_label, categories=categories),
            "penetrance": np.concatenate(obs_pen).astype(np.float32),
            "mode": pd.Categorical([mode_of.get(lab, "control") for lab in obs_label]),
            "n_targets": np.array([ntar_of.get(lab, 0) for lab in obs_label], dtype=np.int64),
            "library_size": np.concatenate(obs_lib).astype(np.float32),
        },
        index=pd.Index([f"cell{i}" for i in range(len(obs_label))]),
    )
    var = pd.DataFrame(
        {
            "baseline_mean": (library_size * np.exp(log_p)).astype(np.float32),
            "dispersion": (1.0 / theta).astype(np.float32),
            "is_target": np.isin(np.arange(n_genes), targets),
            "module": gene_module.astype(np.int64),
        },
        index=pd.Index(genes),
    )
    adata = AnnData(X=x, obs=obs, var=var)
    adata.layers[COUNTS_LAYER] = counts
    adata.obs["total_counts"] = np.asarray(counts.sum(axis=1)).ravel().astype(np.float32)

    params = {
        "n_genes": n_genes, "n_perturbations": n_perturbations,
        "n_cells_per_perturbation": n_cells_per_perturbation, "n_control_cells": n_control_cells,
        "n_combinations": n_combinations, "density": density, "effect_size": effect_size,
        "modes": list(modes), "n_modules": n_modules, "module_size": module_size,
        "module_edge_prob": float(module_edge_prob), "combination_size": combination_size,
        "edge_weight_range": [lo, hi], "activation_fraction": float(activation_fraction),
        "expression_sigma": expression_sigma, "n_programs": n_programs,
        "program_scale": program_scale, "gene_noise": gene_noise,
        "regulator_noise": regulator_noise, "library_size": library_size,
        "library_size_sigma": library_size_sigma, "dispersion": dispersion,
        "penetrance": (
            "None" if penetrance is None
            else list(np.atleast_1d(np.asarray(penetrance, dtype=float)))
        ),
        "saturation": "None" if saturation is None else saturation,
        "shared_response": shared_response, "shared_response_genes": shared_response_genes,
        "null_fraction": null_fraction,
        "efficiency": "None" if efficiency is None else [eff_lo, eff_hi],
        "regulation": regulation, "hill_coefficient": hill_coefficient,
        "cascade_depth": cascade_depth, "hub_fraction": hub_fraction, "hub_genes": hub_genes,
        "intrinsic_noise": intrinsic_noise,
        "n_confounders": n_confounders, "confounder_scale": confounder_scale,
        "confounder_fraction": confounder_fraction, "transcript_fraction": transcript_fraction,
        "target_expression_quantile": target_expression_quantile,
        "gene_prefix": gene_prefix,
        "seed": "None" if seed is None else int(seed),
    }  # fmt: skip
    adata.uns["simulation"] = {
        "adjacency": w.astype(np.float32).toarray(),
        "genes": genes.astype(str),
        "topological_order": order.astype(np.int64),
        "perturbations": np.array(labels, dtype=str),
        "expected_shift": expected,
        "targets": genes[targets].astype(str),
        "target_modes": target_modes.astype(str),
        "target_modules": target_module.astype(np.int64),
        "target_direct_shift": direct.astype(np.float32),
        "target_efficiency": target_efficiency.astype(np.float32),
        "null_targets": genes[targets[null_targets]].astype(str),
        "shared_response_loadings": shared_loadings,
        "shared_response_strength": strength.astype(np.float32),
        "relays": np.where(relays >= 0, genes[np.maximum(relays, 0)], "").astype(str),
        "hub": genes[hub] if hub >= 0 else "None",
        "hub_genes": genes[hub_members].astype(str),
        # a null target drawn to feed the hub lost that edge with the others
        "hub_targets": genes[targets[hub_feeders[~null_targets[hub_feeders]]]].astype(str),
        "hill_offsets": offsets.astype(np.float32),
        "confounder_loadings": confounders.astype(np.float32),
        "mean_penetrance": float(mean_pen),
        "params": params,
    }
    adata.uns["log1p"] = {"base": None}
    logger.info(
        "Simulated %d cells x %d genes, %d perturbations (%d combinations), %d edges in %.1f s.",
        adata.n_obs, n_genes, len(labels), n_combinations, w.nnz, time.perf_counter() - start,
    )  # fmt: skip
    return adata
