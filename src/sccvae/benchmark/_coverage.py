"""What each benchmark method can represent, and so which perturbations a run can test.

An unseen split can only test a perturbation every method can represent without having seen
it (:func:`_unseen_targets`); a method that learns from the training perturbations it can
represent needs enough of them in every fold (:func:`_check_training_coverage`). Seen and
combination splits need an embedding of every target for the methods that take one
(:func:`_target_embedding`).
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from sccvae._perturbations import PerturbationDesign
from sccvae.splits import Split

from ._data import _onehot_embedding
from ._errors import BenchmarkInputError
from ._methods import DEFAULT_MODEL_KWARGS, REGISTRY

logger = logging.getLogger(__name__)


def _unseen_targets(
    method_list: list[str],
    design: PerturbationDesign,
    genes: set[str],
    model_kwargs: dict[str, Any],
    notes: list[str],
    explicit: bool = True,
) -> tuple[pd.DataFrame | None, list[str] | None, dict[str, set[str] | None]]:
    """Return the baselines' embedding and the perturbations an unseen split may test.

    A perturbation is eligible for testing when every method of the run can represent each
    of its targets without having seen it; ``None`` means all are. The others always train.
    The third value is, per method kept, the targets it can represent (``None``: any).
    Unless the methods were named (``explicit``), a method that can represent fewer than
    half the perturbations SCCVAE can (e.g. ``coexpression``, measured targets only, when
    an embedding DataFrame covers unmeasured targets) is left out of the run, with a note,
    rather than shrinking what every method is tested on. SCCVAE learns the training
    targets that neither its nodes nor its embedding cover one-hot by itself. Raises a
    BenchmarkInputError when no perturbation is eligible.
    """
    user_embedding = model_kwargs.get("perturbation_embedding")
    frame = user_embedding if isinstance(user_embedding, pd.DataFrame) else None
    needs_embedding = [m for m in method_list if REGISTRY[m].needs_embedding]
    if frame is None and user_embedding == "onehot" and needs_embedding:
        raise BenchmarkInputError(
            "perturbation_embedding='onehot' cannot represent unseen perturbations; use "
            "'coexpression' or a DataFrame for split='unseen'."
        )
    embedded = genes if frame is None else {str(g) for g in frame.index}
    embedding_name = (
        "the measured genes"
        if frame is None
        else "the measured genes or the perturbation_embedding DataFrame, as each method allows"
    )
    all_targets = sorted({t for p in design.perturbations for t in design.targets(p)})

    # what each method can represent of a target it has not seen (None: any target)
    def gene_nodes(name: str) -> bool:
        kwargs = {**DEFAULT_MODEL_KWARGS, **model_kwargs, **REGISTRY[name].model_kwargs}
        return kwargs.get("latent_nodes", "genes") == "genes"

    covers: dict[str, set[str] | None] = {}
    for name in method_list:
        method = REGISTRY[name]
        if method.is_sccvae:
            # a measured gene is its own latent node (node_genes); other targets embedded
            covers[name] = embedded | genes if gene_nodes(name) else set(embedded)
        elif method.needs_embedding:
            covers[name] = set(embedded)
        elif method.measured_only:
            covers[name] = set(genes)
        else:
            covers[name] = None
    sccvae = [m for m in method_list if REGISTRY[m].is_sccvae]
    # training targets SCCVAE can neither make nodes nor embed: it learns them one-hot
    uncovered = sorted({t for m in sccvae for t in all_targets if t not in covers[m]})
    if not explicit:
        for name in _narrow_methods(covers, design, notes):
            del covers[name]
    needs_embedding = [m for m in needs_embedding if m in covers]

    limits = [c for c in covers.values() if c is not None]
    eligible = [
        p for p in design.perturbations if all(t in c for c in limits for t in design.targets(p))
    ]
    always_train = [p for p in design.perturbations if p not in set(eligible)]
    if not eligible:
        narrow = [m for m, c in covers.items() if c is not None]
        raise BenchmarkInputError(
            f"No perturbation can be tested unseen: {narrow} cannot represent an unseen "
            f"target outside {embedding_name}, and no perturbation has all its targets "
            f"there (e.g. {all_targets[:5]}); nothing can represent an unmeasured gene "
            "without outside knowledge. Use split='seen' or 'combo', keep only methods that "
            "need no embedding (e.g. 'mean,control'), or supply a perturbation_embedding "
            "DataFrame covering the targets (CLI: --embedding PATH, a genes x dimensions "
            "table)."
        )
    if not always_train:
        return frame, None, covers
    notes.append(
        f"{len(eligible)} of {len(design.perturbations)} perturbations are eligible for "
        f"testing (every target representable unseen by every method: in {embedding_name})"
        f": {eligible[:10]}{' ...' if len(eligible) > 10 else ''}. The {len(always_train)} "
        f"others always train: {always_train[:20]}{' ...' if len(always_train) > 20 else ''}."
    )
    if uncovered:
        notes.append(
            f"SCCVAE learns {len(uncovered)} training target(s) one-hot (not measured, not "
            f"embedded; seen only): {uncovered[:10]}{' ...' if len(uncovered) > 10 else ''}."
        )
    dropping = [m for m in needs_embedding if not REGISTRY[m].is_sccvae]
    if dropping and any(t not in embedded for p in always_train for t in design.targets(p)):
        notes.append(
            f"{dropping} leave the training perturbations whose targets they cannot embed "
            "out of their fit."
        )
    return frame, eligible, covers


def _narrow_methods(
    covers: dict[str, set[str] | None], design: PerturbationDesign, notes: list[str]
) -> list[str]:
    """Return the methods that represent fewer than half the perturbations SCCVAE can.

    Without an SCCVAE method, the comparison is with the method that represents the most.
    """

    def reach(cover: set[str] | None) -> int:
        return sum(
            cover is None or all(t in cover for t in design.targets(p))
            for p in design.perturbations
        )

    counts = {name: reach(cover) for name, cover in covers.items()}
    sccvae = [m for m in covers if REGISTRY[m].is_sccvae]
    reference = max(sccvae or covers, key=counts.get)
    narrow = [m for m in covers if not REGISTRY[m].is_sccvae and counts[m] < counts[reference] / 2]
    if narrow:
        shown = "; ".join(f"{m} only {counts[m]}" for m in narrow)
        notes.append(
            f"Left out of the default methods: {', '.join(narrow)}. Of the "
            f"{counts[reference]} perturbations {reference} can represent unseen (of "
            f"{len(design.perturbations)}), they can represent {shown}; testing every method "
            "on what all can represent would shrink the comparison to those. Name them in "
            "`methods` (CLI: --methods) to include them anyway."
        )
        logger.warning(notes[-1])
    return narrow


def _check_training_coverage(
    splits: list[Split], design: PerturbationDesign, covers: dict[str, set[str] | None]
) -> None:
    """Raise a BenchmarkInputError where a fold leaves a method too few perturbations to fit.

    A method that learns from the training perturbations it can represent (its
    ``Method.min_training``) fails to fit on a fold that trains on fewer of them, e.g. when
    only one or two perturbations are eligible for testing.
    """
    for name, cover in covers.items():
        need = REGISTRY[name].min_training
        if cover is None or not need:
            continue
        fewest = min(
            sum(all(t in cover for t in design.targets(p)) for p in s.train_perturbations)
            for s in splits
        )
        if fewest < need:
            raise BenchmarkInputError(
                f"{name} learns from the training perturbations whose targets it can "
                f"represent and needs at least {need}, but a fold trains on {fewest}: too few "
                "perturbations have targets it can represent (measured genes, or genes of the "
                f"embedding DataFrame). Drop {name!r} from the methods, supply an embedding "
                "DataFrame covering the targets (CLI: --embedding PATH), or use split='seen' "
                "or 'combo'."
            )


def _target_embedding(
    method_list: list[str],
    all_targets: list[str],
    genes: set[str],
    model_kwargs: dict[str, Any],
    notes: list[str],
) -> pd.DataFrame | None:
    """Return the embedding of the baselines of a seen or combination split.

    Targets are all seen there, so where some are unmeasured, the baselines that take an
    embedding use one-hot embeddings (SCCVAE learns such targets one-hot by itself).
    """
    user_embedding = model_kwargs.get("perturbation_embedding")
    if isinstance(user_embedding, pd.DataFrame):
        embeddable = {str(g) for g in user_embedding.index}
        embedding_name = "the perturbation_embedding DataFrame"
    elif user_embedding in (None, "coexpression"):
        embeddable = genes
        embedding_name = "the measured genes (coexpression embedding)"
    else:  # "onehot" or something SCCVAE will reject
        embeddable = None
        embedding_name = str(user_embedding)
    embedding = user_embedding if isinstance(user_embedding, pd.DataFrame) else None
    needs_embedding = [m for m in method_list if REGISTRY[m].needs_embedding]
    missing = [t for t in all_targets if embeddable is not None and t not in embeddable]
    if missing and needs_embedding:
        msg = (
            f"{len(missing)} of {len(all_targets)} perturbation targets are not among "
            f"{embedding_name} (e.g. {missing[:5]}): SCCVAE and the baselines that take an "
            "embedding learn them one-hot (seen targets only)."
        )
        logger.warning(msg)
        notes.append(msg)
        embedding = _onehot_embedding(all_targets)
    unmeasured = [t for t in all_targets if t not in genes]
    measured_only = [m for m in method_list if REGISTRY[m].measured_only]
    if unmeasured and measured_only:
        raise BenchmarkInputError(
            f"{len(unmeasured)} of {len(all_targets)} perturbation targets are unmeasured "
            f"genes (e.g. {unmeasured[:5]}): {measured_only} cannot predict them. Drop "
            f"{measured_only} from the methods."
        )
    return embedding
