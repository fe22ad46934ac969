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

import inspect
import math
from collections.abc import Sequence

import numpy as np
from anndata import AnnData

from ._screen import MODE_SIGNS, draw_screen

_MODE_ALIASES = {"crispri": "knockdown", "crispra": "activation", **{m: m for m in MODE_SIGNS}}
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


def _check_fraction(value, name: str, low_open: bool = False, high_open: bool = False) -> float:
    """Check a number in [0, 1]; ``low_open`` / ``high_open`` exclude the ends."""
    value = float(value) if isinstance(value, (int, float, np.number)) else value
    low_ok = isinstance(value, float) and (value > 0.0 if low_open else value >= 0.0)
    if not (low_ok and (value < 1.0 if high_open else value <= 1.0)):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must lie in {interval}, got {value!r}.")
    return value


def _check_range(value, name: str) -> tuple[float, float]:
    """Check a (low, high) pair with 0 <= low <= high."""
    low, high = (float(v) for v in value)
    if not 0.0 <= low <= high:
        raise ValueError(f"`{name}` must be (low, high) with 0 <= low <= high, got {value!r}.")
    return low, high


def _recordable(value):
    """Write an argument as h5ad can store it: None as "None", sequences as lists."""
    if value is None:
        return "None"
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_recordable(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


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
    density = _check_fraction(density, "density")
    module_edge_prob = _check_fraction(module_edge_prob, "module_edge_prob", low_open=True)
    activation_fraction = _check_fraction(activation_fraction, "activation_fraction")
    edge_weight_range = lo, hi = _check_range(edge_weight_range, "edge_weight_range")
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
    penetrance_beta, mean_penetrance = None, 1.0
    if penetrance is not None and np.ndim(penetrance) == 0:
        mean_penetrance = float(penetrance)
        if not 0 < mean_penetrance <= 1:
            raise ValueError(f"A constant `penetrance` must lie in (0, 1], got {penetrance!r}.")
    elif penetrance is not None:
        penetrance_beta = a, b = tuple(float(v) for v in penetrance)
        if a <= 0 or b <= 0:
            raise ValueError(f"Beta `penetrance` parameters must be positive, got {penetrance!r}.")
        mean_penetrance = a / (a + b)
    if saturation is not None:
        saturation = _check_positive_float(saturation, "saturation")
    shared_response = _check_positive_float(shared_response, "shared_response", allow_zero=True)
    if shared_response_genes is None:
        shared_response_genes = max(1, n_genes // 10)
    shared_response_genes = _check_positive_int(shared_response_genes, "shared_response_genes")
    null_fraction = _check_fraction(null_fraction, "null_fraction")
    if efficiency is not None:
        efficiency = _check_range(efficiency, "efficiency")
    if regulation not in _REGULATIONS:
        raise ValueError(f"`regulation` must be one of {list(_REGULATIONS)}, got {regulation!r}.")
    hill_coefficient = _check_positive_float(hill_coefficient, "hill_coefficient")
    if regulation == "hill" and saturation is not None:
        raise ValueError(
            "`saturation` squashes linear effects; Hill regulation (regulation='hill') "
            "saturates by itself. Leave `saturation=None` with regulation='hill'."
        )
    cascade_depth = _check_positive_int(cascade_depth, "cascade_depth")
    hub_fraction = _check_fraction(hub_fraction, "hub_fraction")
    if hub_genes is None:
        hub_genes = max(1, n_genes // 5)
    hub_genes = _check_positive_int(hub_genes, "hub_genes")
    intrinsic_noise = _check_positive_float(intrinsic_noise, "intrinsic_noise", allow_zero=True)
    n_confounders = _check_positive_int(n_confounders, "n_confounders", 0)
    confounder_scale = _check_positive_float(confounder_scale, "confounder_scale", allow_zero=True)
    confounder_fraction = _check_fraction(confounder_fraction, "confounder_fraction", True)
    transcript_fraction = _check_fraction(transcript_fraction, "transcript_fraction")
    target_expression_quantile = _check_fraction(
        target_expression_quantile, "target_expression_quantile", high_open=True
    )
    if n_modules is None:
        n_modules = max(1, round(n_perturbations / 6))
    n_modules = _check_positive_int(n_modules, "n_modules")
    if module_size is not None:
        module_size = _check_positive_int(module_size, "module_size")
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

    # every argument as validated (defaults filled in), recorded with the truth
    checked = locals()
    values = {name: checked[name] for name in inspect.signature(simulate_perturbseq).parameters}
    record = {name: _recordable(value) for name, value in values.items()}
    del values["penetrance"]  # the generative process takes it as penetrance_beta / mean
    return draw_screen(
        record, **values, penetrance_beta=penetrance_beta, mean_penetrance=mean_penetrance
    )
