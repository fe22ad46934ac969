"""Parsing perturbation labels into order-invariant sets of target genes."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

Targets = tuple[str, ...]


def parse_perturbation(
    label: str, control_label: str = "control", delimiter: str = "+"
) -> Targets:
    """Split a perturbation label into its sorted target genes.

    The one place where the labelling rules live: surrounding whitespace is ignored (in the
    label and in each component), the order of a combination's targets does not matter, and
    a target named twice (``"A+A"``) is an error rather than silently counted once or twice.

    Parameters
    ----------
    label
        A perturbation label such as ``"KLF1"`` or ``"KLF1+MAP2K6"``.
    control_label
        The label of unperturbed cells; it parses to an empty tuple.
    delimiter
        The string joining the targets of a combination.

    Returns
    -------
    The targets as a sorted tuple, so that ``"A+B"`` and ``" B + A "`` are equal.
    Control components inside a combination (``"A+control"``, as some datasets
    write single perturbations) are dropped.

    Raises
    ------
    ValueError
        For an empty component (``"A++B"``) or a target named twice (``"A+A"``).
    """
    if not isinstance(label, str):
        raise TypeError(
            f"Perturbation labels must be strings, got {label!r} ({type(label).__name__})."
        )
    label = label.strip()
    if label == control_label:
        return ()
    parts = [part.strip() for part in label.split(delimiter)] if delimiter else [label]
    if any(part == "" for part in parts):
        raise ValueError(
            f"Perturbation label {label!r} has an empty component; check `combination_delimiter` "
            f"(currently {delimiter!r})."
        )
    targets = [part for part in parts if part != control_label]
    repeated = sorted({t for t in targets if targets.count(t) > 1})
    if repeated:
        raise ValueError(
            f"Perturbation label {label!r} names {repeated} more than once; list each target of a "
            "combination once (a single perturbation of A is 'A')."
        )
    return tuple(sorted(targets))


def canonical_label(
    targets: Iterable[str], control_label: str = "control", delimiter: str = "+"
) -> str:
    """Join targets back into a label in canonical (sorted) order."""
    targets = tuple(sorted(set(targets)))
    return delimiter.join(targets) if targets else control_label


def canonical(label: str, control_label: str = "control", delimiter: str = "+") -> str:
    """Return a label in canonical form: stripped, targets sorted (``" B+A"`` -> ``"A+B"``)."""
    return canonical_label(
        parse_perturbation(label, control_label, delimiter), control_label, delimiter
    )


def canonicalize_labels(
    labels: Sequence[str], control_label: str = "control", delimiter: str = "+"
) -> list[str]:
    """Canonical label of every entry in ``labels`` (``"B+A"`` becomes ``"A+B"``)."""
    cache: dict[str, str] = {}
    out = []
    for label in labels:
        if label not in cache:
            cache[label] = canonical(label, control_label, delimiter)
        out.append(cache[label])
    return out


def perturbation_labels(obs: pd.DataFrame, perturbation_key: str) -> np.ndarray:
    """Return the perturbation column of ``obs`` as strings (a clear error if unusable)."""
    if perturbation_key not in obs.columns:
        close = difflib.get_close_matches(perturbation_key, [str(c) for c in obs.columns], n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise KeyError(
            f"Column {perturbation_key!r} not found in adata.obs (columns: {list(obs.columns)})."
            f"{hint} "
            "Pass the column holding perturbation labels as `perturbation_key`."
        )
    column = obs[perturbation_key]
    if column.isna().any():
        raise ValueError(
            f"adata.obs[{perturbation_key!r}] has {int(column.isna().sum())} missing labels; "
            "label every cell (use the control label for unperturbed cells) or subset them away."
        )
    return column.astype(str).to_numpy()


def check_control_label(labels: np.ndarray, control_label: str, perturbation_key: str) -> None:
    """Raise a clear error when no cell carries ``control_label``, suggesting close labels."""
    if np.any(labels == control_label):
        return
    uniques = pd.unique(labels)
    close = difflib.get_close_matches(control_label, [str(u) for u in uniques], n=3, cutoff=0.4)
    likely = [
        u
        for u in uniques
        if any(w in u.lower() for w in ("control", "ctrl", "non-targeting", "nt"))
    ]
    suggestions = list(dict.fromkeys(close + likely[:3]))
    if not suggestions:
        raise ValueError(
            f"The data hold no control cells: no label of adata.obs[{perturbation_key!r}] is "
            f"{control_label!r} or looks like a control label (labels: "
            f"{[str(u) for u in uniques[:8]]}). "
            "Predicting a perturbation's effect needs unperturbed (e.g. non-targeting) cells: "
            "add them, or pass their label as `control_label`."
        )
    raise ValueError(
        f"No control cells: control label {control_label!r} not found in "
        f"adata.obs[{perturbation_key!r}]. Close labels: {suggestions}. Pass the right "
        "`control_label`."
    )
