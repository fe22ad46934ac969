"""The three split designs: unseen-perturbation folds, seen split, combination split.

Each is chosen from the perturbation labels alone; the helpers at the top group the cells by
perturbation and cut a perturbation's cells into train / validation (/ test) parts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from sccvae._perturbations import PerturbationDesign, canonicalize_labels, design_of

from ._split import Split

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# helpers


def _groups(
    adata: AnnData,
    perturbation_key: str,
    control_label: str,
    delimiter: str,
    design: PerturbationDesign | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, tuple[str, ...]]]:
    """Control positions, canonical label -> positions, canonical label -> targets."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"Expected an AnnData, got {type(adata).__name__}.")
    design = design_of(
        adata.obs, perturbation_key, control_label, delimiter, design, require_controls=True
    )
    codes = design.codes
    # a stable sort keeps each perturbation's positions in increasing order
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(design.perturbations) + 1))
    groups = {p: order[bounds[i] : bounds[i + 1]] for i, p in enumerate(design.perturbations)}
    targets = {p: design.targets(p) for p in design.perturbations}
    return np.flatnonzero(codes < 0), groups, targets


def _split_cells(
    idx: np.ndarray,
    fractions: Sequence[float],
    rng: np.random.Generator,
    ensure_first: bool = True,
) -> list[np.ndarray]:
    """Shuffle ``idx`` and cut it by ``fractions`` (largest-remainder rounding).

    Parts after the first get at least one cell when there are enough cells for every part
    with a positive fraction; the first part (train) always keeps at least one cell.
    """
    n = idx.size
    fractions = np.asarray(fractions, dtype=float)
    raw = fractions * n
    counts = np.floor(raw).astype(int)
    remainder = n - counts.sum()
    if remainder > 0:
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[:remainder]] += 1
    positive = fractions > 0
    if n >= positive.sum():
        for j in range(1, len(counts)):
            if positive[j] and counts[j] == 0:
                donor = int(np.argmax(counts))
                if counts[donor] > 1:
                    counts[donor] -= 1
                    counts[j] += 1
    if ensure_first and n > 0 and counts[0] == 0:
        donor = int(np.argmax(counts))
        counts[donor] -= 1
        counts[0] += 1
    shuffled = rng.permutation(idx)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [np.sort(shuffled[bounds[j] : bounds[j + 1]]) for j in range(len(counts))]


def _train_validation(
    groups: dict[str, np.ndarray],
    labels: Sequence[str],
    validation_fraction: float,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per perturbation, cut its cells into train and validation parts."""
    train, val = [], []
    too_small = []
    for label in labels:
        cells = groups[label]
        if cells.size < 2 and validation_fraction > 0:
            too_small.append(label)
        tr, va = _split_cells(cells, [1.0 - validation_fraction, validation_fraction], rng)
        train.append(tr)
        val.append(va)
    if too_small:
        logger.warning(
            "%d training perturbation(s) have a single cell and get no validation cells: %s",
            len(too_small),
            too_small[:10],
        )
    return train, val


def _concat(parts: Sequence[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)) if len(parts) else np.zeros(0, dtype=np.int64)


def _check_fraction(value: float, name: str, allow_zero: bool = True) -> float:
    value = float(value)
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        raise ValueError(
            f"`{name}` must be in {'[0, 1)' if allow_zero else '(0, 1)'}, got {value}."
        )
    return value


# ---------------------------------------------------------------------------------------------
# public split functions


def unseen_perturbation_folds(
    adata: AnnData,
    n_folds: int = 5,
    perturbation_key: str = "perturbation",
    control_label: str = "control",
    seed: int = 0,
    validation_fraction: float = 1 / 8,
    combination_delimiter: str = "+",
    *,
    design: PerturbationDesign | None = None,
    eligible: Sequence[str] | None = None,
) -> list[Split]:
    """K-fold splits whose test perturbations are unseen in training (the paper's OOD setting).

    The non-control perturbations (combinations count as units; ``"A+B"`` and ``"B+A"`` are
    one) that are ``eligible`` for testing (all by default) are shuffled with ``seed`` and
    dealt into ``n_folds`` folds of near-equal size. In split ``k`` the test set is every cell
    of fold ``k``; the cells of each remaining (training) perturbation, the non-eligible ones
    included, are split ``1 - validation_fraction`` / ``validation_fraction`` into train /
    validation (per perturbation, so each has cells in both, unless it has a single cell);
    all control cells go to train.

    Parameters
    ----------
    adata
        Cells with labels in ``adata.obs[perturbation_key]``. Not modified.
    n_folds
        Number of folds (at least 2).
    perturbation_key, control_label, combination_delimiter
        How perturbations are labelled.
    seed
        Seed for the fold assignment and the train / validation cut.
    validation_fraction
        Share of each training perturbation's cells used for validation (paper: 1/8).
    design
        The :class:`~sccvae._perturbations.PerturbationDesign` of ``adata``, if already built.
    eligible
        Labels of the perturbations that may be tested (any order of a combination's
        targets); the others are in the training set of every split (e.g. perturbations
        whose targets a method cannot represent unseen, such as unmeasured genes). ``None``
        (default): all, and the folds are those made without this argument. With a proper
        subset, ``n_folds=1`` is allowed (the eligible perturbations are tested together and
        the others train).

    Returns
    -------
    ``n_folds`` :class:`Split` objects named ``"unseen_fold{k}"``.
    """
    n_folds = int(n_folds)
    validation_fraction = _check_fraction(validation_fraction, "validation_fraction")
    control_idx, groups, _ = _groups(
        adata, perturbation_key, control_label, combination_delimiter, design
    )
    perts = list(groups)
    testable = perts
    if eligible is not None:
        testable = _eligible(perts, eligible, control_label, combination_delimiter)
    tested = set(testable)
    always_train = [p for p in perts if p not in tested]
    # one fold is a valid split only when perturbations outside it remain to train on
    lowest = 1 if len(testable) < len(perts) else 2
    if n_folds < lowest:
        raise ValueError(f"`n_folds` must be at least {lowest}, got {n_folds}.")
    if len(testable) < n_folds:
        which = "perturbation(s)" if eligible is None else "eligible perturbation(s)"
        raise ValueError(
            f"{len(testable)} {which} but n_folds={n_folds}: every fold needs at least one "
            "test perturbation. Lower `n_folds`."
        )
    # the eligible perturbations keep the order of `perts`, so that eligible=None and
    # eligible=<all> shuffle the same list with the same draws and give the same folds
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(testable))
    folds = [sorted(testable[i] for i in chunk) for chunk in np.array_split(order, n_folds)]
    splits = []
    for k, test_perts in enumerate(folds):
        fold_rng = np.random.default_rng([seed, k])
        test_set = set(test_perts)
        train_perts = [p for p in perts if p not in test_set]
        train, val = _train_validation(groups, train_perts, validation_fraction, fold_rng)
        splits.append(
            Split(
                train_idx=_concat([control_idx, *train]),
                validation_idx=_concat(val),
                test_idx=_concat([groups[p] for p in test_perts]),
                train_perturbations=train_perts,
                test_perturbations=test_perts,
                name=f"unseen_fold{k}",
                n_obs=adata.n_obs,
                params={
                    "kind": "unseen_perturbation_folds",
                    "fold": k,
                    "n_folds": n_folds,
                    "seed": seed,
                    "validation_fraction": validation_fraction,
                    "perturbation_key": perturbation_key,
                    "control_label": control_label,
                    # recorded only when given, so default splits serialise as before
                    **({} if eligible is None else {"always_train": always_train}),
                },
            )
        )
    logger.info(
        "Made %d unseen-perturbation folds over %d of %d perturbations",
        n_folds,
        len(testable),
        len(perts),
    )
    return splits


def _eligible(
    perts: list[str], eligible: Sequence[str], control_label: str, delimiter: str
) -> list[str]:
    """Return the perturbations of ``perts`` (canonical labels) named in ``eligible``."""
    if isinstance(eligible, str):
        raise TypeError("`eligible` must be a list of perturbation labels, not one string.")
    wanted = set(canonicalize_labels([str(p) for p in eligible], control_label, delimiter))
    unknown = sorted(wanted - set(perts))
    if unknown:
        raise ValueError(
            f"`eligible` names {len(unknown)} label(s) that are not perturbations of the data "
            f"(control cells cannot be tested): {unknown[:10]}. Pass labels from "
            "obs[perturbation_key]."
        )
    return [p for p in perts if p in wanted]


def seen_perturbation_split(
    adata: AnnData,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    perturbation_key: str = "perturbation",
    control_label: str = "control",
    seed: int = 0,
    split_controls: bool = True,
    combination_delimiter: str = "+",
    *,
    design: PerturbationDesign | None = None,
) -> Split:
    """In-distribution split: each perturbation's cells cut into train / validation / test.

    Every perturbation (and, by default, the control cells too) is split by ``fractions``,
    so test perturbations are all seen in training. Evaluation should then use the *train*
    control cells as the control reference (``control=split.subset(adata, "train")``
    restricted to controls), so that the control mean never includes test cells; with
    ``split_controls=False`` all controls are in train and none in test.

    Parameters
    ----------
    adata
        Labelled cells. Not modified.
    fractions
        Train, validation, test shares (summing to 1); paper: 70 / 10 / 20 %. Counts use
        largest-remainder rounding; a perturbation with at least 3 cells gets at least one
        cell in each part with a positive share.
    perturbation_key, control_label, combination_delimiter
        How perturbations are labelled.
    seed
        Seed of the cell shuffle.
    split_controls
        Split control cells by ``fractions`` too (default) or put them all in train.
    design
        The :class:`~sccvae._perturbations.PerturbationDesign` of ``adata``, if already built.

    Returns
    -------
    One :class:`Split` named ``"seen"``.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1):
        raise ValueError(
            f"`fractions` must be three non-negative shares summing to 1, got {fractions}."
        )
    if fractions[0] == 0:
        raise ValueError("The train share in `fractions` must be positive.")
    control_idx, groups, _ = _groups(
        adata, perturbation_key, control_label, combination_delimiter, design
    )
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    if split_controls:
        for j, cells in enumerate(_split_cells(control_idx, fractions, rng)):
            parts[j].append(cells)
    else:
        parts[0].append(control_idx)
    train_perts, test_perts = [], []
    for label, cells in groups.items():
        cut = _split_cells(cells, fractions, rng)
        for j in range(3):
            parts[j].append(cut[j])
        if cut[0].size:
            train_perts.append(label)
        if cut[2].size:
            test_perts.append(label)
    return Split(
        train_idx=_concat(parts[0]),
        validation_idx=_concat(parts[1]),
        test_idx=_concat(parts[2]),
        train_perturbations=train_perts,
        test_perturbations=test_perts,
        name="seen",
        n_obs=adata.n_obs,
        params={
            "kind": "seen_perturbation_split",
            "fractions": list(fractions),
            "seed": seed,
            "split_controls": split_controls,
            "perturbation_key": perturbation_key,
            "control_label": control_label,
        },
    )


def combination_split(
    adata: AnnData,
    perturbation_key: str = "perturbation",
    control_label: str = "control",
    combination_delimiter: str = "+",
    seed: int = 0,
    validation_fraction: float = 1 / 8,
    train_combination_fraction: float = 0.0,
    test_single_fraction: float = 0.0,
    *,
    design: PerturbationDesign | None = None,
) -> Split:
    """GEARS-style split holding out combinations of perturbations.

    Combinations (labels with two or more targets) go to test, single perturbations to
    train (each cut ``1 - validation_fraction`` / ``validation_fraction`` into train /
    validation), controls to train. Optionally a random share of the combinations is moved
    to training (``train_combination_fraction``), and a random share of the singles is held
    out to test as well (``test_single_fraction``), which produces combinations with unseen
    components.

    Every test combination gets a category ``"seen k"``: the number ``k`` of its targets that
    appear as *single* perturbations in training (``"seen 0"``, ``"seen 1"``, ``"seen 2"`` for
    doubles). Held-out singles get the category ``"single"``.

    Parameters
    ----------
    adata
        Labelled cells. Not modified.
    perturbation_key, control_label, combination_delimiter
        How perturbations are labelled.
    seed
        Seed of the random choices.
    validation_fraction
        Share of each training perturbation's cells used for validation.
    train_combination_fraction
        Share of the combinations moved to training (default 0: all are tested).
    test_single_fraction
        Share of the single perturbations held out to test (default 0: all in train).
    design
        The :class:`~sccvae._perturbations.PerturbationDesign` of ``adata``, if already built.

    Returns
    -------
    One :class:`Split` named ``"combination"``; ``split.categories`` maps each test label to
    its category.
    """
    validation_fraction = _check_fraction(validation_fraction, "validation_fraction")
    train_combination_fraction = _check_fraction(
        train_combination_fraction, "train_combination_fraction"
    )
    test_single_fraction = _check_fraction(test_single_fraction, "test_single_fraction")
    control_idx, groups, targets = _groups(
        adata, perturbation_key, control_label, combination_delimiter, design
    )
    singles = [p for p in groups if len(targets[p]) == 1]
    combos = [p for p in groups if len(targets[p]) > 1]
    if not combos:
        raise ValueError(
            f"No combination perturbations (labels joined by {combination_delimiter!r}) in "
            f"adata.obs[{perturbation_key!r}]; use `unseen_perturbation_folds` instead, or check "
            "`combination_delimiter`."
        )
    rng = np.random.default_rng(seed)
    n_train_combos = int(round(train_combination_fraction * len(combos)))
    n_test_singles = int(round(test_single_fraction * len(singles)))
    if n_train_combos >= len(combos):
        raise ValueError(
            f"train_combination_fraction={train_combination_fraction} leaves no combination "
            "to test; lower it."
        )
    train_combos = sorted(rng.choice(combos, size=n_train_combos, replace=False).tolist())
    test_singles = sorted(rng.choice(singles, size=n_test_singles, replace=False).tolist())
    train_perts = sorted(set(singles) - set(test_singles)) + train_combos
    train_perts = sorted(train_perts)
    test_perts = sorted(set(combos) - set(train_combos)) + test_singles
    test_perts = sorted(test_perts)
    train_single_targets = {targets[p][0] for p in singles if p not in set(test_singles)}
    categories = {}
    for p in test_perts:
        if len(targets[p]) == 1:
            categories[p] = "single"
        else:
            categories[p] = f"seen {sum(t in train_single_targets for t in targets[p])}"
    train, val = _train_validation(groups, train_perts, validation_fraction, rng)
    split = Split(
        train_idx=_concat([control_idx, *train]),
        validation_idx=_concat(val),
        test_idx=_concat([groups[p] for p in test_perts]),
        train_perturbations=train_perts,
        test_perturbations=test_perts,
        name="combination",
        n_obs=adata.n_obs,
        categories=categories,
        params={
            "kind": "combination_split",
            "seed": seed,
            "validation_fraction": validation_fraction,
            "train_combination_fraction": train_combination_fraction,
            "test_single_fraction": test_single_fraction,
            "perturbation_key": perturbation_key,
            "control_label": control_label,
            "combination_delimiter": combination_delimiter,
        },
    )
    counts = pd.Series(categories).value_counts().to_dict()
    logger.info(
        "Combination split: %d train perturbations, test categories %s", len(train_perts), counts
    )
    return split
