"""The generative process of a simulated screen: its truth, then its cells.

The truth is the network, the targets and every perturbation's expected shift; the cells
are drawn from it by :class:`~sccvae.data._cells.CellSampler`. The arguments arrive checked
(and documented) by :func:`~sccvae.data.simulate_perturbseq`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccvae._perturbations import canonical_label

from ._cells import CellSampler, assemble_counts
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

#: sign of a target's direct shift for each perturbation mode
MODE_SIGNS = {"knockdown": -1.0, "activation": 1.0}


def draw_screen(
    record: dict[str, Any],
    *,
    penetrance_beta: tuple[float, float] | None,
    mean_penetrance: float,
    n_genes,
    n_perturbations,
    n_cells_per_perturbation,
    n_control_cells,
    n_combinations,
    combination_size,
    density,
    effect_size,
    modes,
    n_modules,
    module_size,
    module_edge_prob,
    edge_weight_range,
    activation_fraction,
    expression_sigma,
    n_programs,
    program_scale,
    gene_noise,
    regulator_noise,
    library_size,
    library_size_sigma,
    dispersion,
    saturation,
    shared_response,
    shared_response_genes,
    null_fraction,
    efficiency,
    regulation,
    hill_coefficient,
    cascade_depth,
    hub_fraction,
    hub_genes,
    intrinsic_noise,
    n_confounders,
    confounder_scale,
    confounder_fraction,
    transcript_fraction,
    target_expression_quantile,
    gene_prefix,
    seed,
) -> AnnData:
    """Draw a screen's truth and its cells from validated arguments (see ``simulate_perturbseq``).

    ``record`` is every argument as the user passed it (defaults filled in), kept in
    ``uns["simulation"]["params"]``; ``penetrance_beta`` the Beta parameters of each cell's
    penetrance, None for a constant ``mean_penetrance``.
    """
    start = time.perf_counter()
    lo, hi = edge_weight_range
    hill = regulation == "hill"
    # cells are propagated one by one through the network (rather than by one linear map for
    # every cell) when something other than the targets' intrinsic variation enters it
    per_cell = hill or intrinsic_noise > 0 or (n_confounders > 0 and confounder_scale > 0)
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
        np.array([MODE_SIGNS[m] for m in target_modes])
        * effect_size
        * rng.uniform(0.75, 1.25, n_perturbations)
    )

    n_downstream = n_genes - (position[targets].max() + 1)
    if module_size is None:
        module_size = int(np.clip(0.6 * n_downstream / n_modules, 5, 50))
    module_size = min(module_size, max(1, n_downstream))
    record = {**record, "module_size": module_size}  # as drawn, when left to the default
    if n_downstream < 1:
        raise ValueError("No genes lie downstream of the targets; increase `n_genes`.")
    w, gene_module = build_network(
        rng,
        n_genes,
        targets,
        target_module,
        order,
        n_modules,
        module_size,
        module_edge_prob,
        density,
        (lo, hi),
        activation_fraction,
    )
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
            cell_rng,
            w,
            order,
            targets,
            targets[hub_feeders],
            hub_genes,
            (lo, hi),
            relays.ravel(),
            activation_fraction,
        )
    target_efficiency = np.ones(n_perturbations)
    if efficiency is not None:
        target_efficiency = scenario_rng.uniform(*efficiency, n_perturbations)
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
    specific = saturate(mean_penetrance * total, saturation)
    if hill:  # the noise-free cell, knocked down at the mean penetrance
        specific = propagation(mean_penetrance * shifts).astype(np.float64)
    expected = specific + mean_penetrance * strength[:, None] * shared_loadings
    if transcript_fraction < 1:  # the targets' own transcripts keep part of their level
        expected -= (1.0 - transcript_fraction) * mean_penetrance * shifts
    expected = expected.astype(np.float32)

    # cell-level generation, block by block
    theta = (1.0 / (dispersion * np.exp(rng.normal(0.0, 0.5, n_genes)))).astype(np.float32)
    loadings = rng.normal(0.0, program_scale, (n_programs, n_genes)).astype(np.float32)
    target_propagation = None
    if regulator_noise > 0 and not per_cell:
        # total effect of a unit change of each target on every gene (targets x genes)
        target_units = np.zeros((len(targets), n_genes))
        target_units[np.arange(len(targets)), targets] = 1.0
        target_propagation = total_effects(w, order, target_units).astype(np.float32)
    sampler = CellSampler(
        rng=rng,
        scenario_rng=scenario_rng,
        cell_rng=cell_rng,
        log_p=log_p.astype(np.float32),
        theta=theta,
        program_loadings=loadings,
        library_size=library_size,
        library_size_sigma=library_size_sigma,
        gene_noise=gene_noise,
        regulator_noise=regulator_noise,
        intrinsic_noise=intrinsic_noise,
        targets=targets,
        target_propagation=target_propagation,
        propagation=propagation,
        confounders=confounders,
        penetrance_beta=penetrance_beta,
        mean_penetrance=mean_penetrance,
        hill=hill,
        saturation=saturation,
        transcript_fraction=transcript_fraction,
        shared_response=shared_response,
        program_scale=program_scale,
        shared_loadings=shared_loadings,
    )
    blocks, obs_label = [], []
    for start_row in range(0, n_control_cells, 1000):
        n = min(1000, n_control_cells - start_row)
        blocks.append(sampler.sample(n))
        obs_label += ["control"] * n
    # Hill regulation propagates each cell's direct shifts; linear effects are propagated once
    effects = shifts if hill else total
    for row, label in enumerate(labels):
        blocks.append(
            sampler.sample(n_cells_per_perturbation, effects[row], strength[row], shifts[row])
        )
        obs_label += [label] * n_cells_per_perturbation
    obs_pen = np.concatenate([block.penetrance for block in blocks])
    obs_lib = np.concatenate([block.library_size for block in blocks])
    counts, x = assemble_counts(blocks, n_genes)

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
            "penetrance": obs_pen.astype(np.float32),
            "mode": pd.Categorical([mode_of.get(lab, "control") for lab in obs_label]),
            "n_targets": np.array([ntar_of.get(lab, 0) for lab in obs_label], dtype=np.int64),
            "library_size": obs_lib.astype(np.float32),
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
        "mean_penetrance": float(mean_penetrance),
        "params": record,
    }
    adata.uns["log1p"] = {"base": None}
    logger.info(
        "Simulated %d cells x %d genes, %d perturbations (%d combinations), %d edges in %.1f s.",
        adata.n_obs,
        n_genes,
        len(labels),
        n_combinations,
        w.nnz,
        time.perf_counter() - start,
    )
    return adata
