"""Parsing perturbation labels into order-invariant sets of target genes."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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


# ---------------------------------------------------------------------------------------------
# the perturbation design of a set of cells


class _LabelLookup:
    """The parse of every label met so far under one set of labelling rules.

    Shared by a :class:`PerturbationDesign` and every design derived from it, so that a label
    is parsed once however many subsets of the cells (or predictions) it is met in.
    """

    def __init__(self, control_label: str, delimiter: str) -> None:
        self.control_label = control_label
        self.delimiter = delimiter
        self._known: dict[str, tuple[str, Targets]] = {}

    def __call__(self, label: str) -> tuple[str, Targets]:
        """Return the canonical form and the targets of ``label``, parsing it the first time."""
        known = self._known.get(label)
        if known is None:
            # looked up in this module at call time (not bound at import), so that one
            # definition of the rule, or a test's spy on it, sees every parse
            targets = parse_perturbation(label, self.control_label, self.delimiter)
            known = (canonical_label(targets, self.control_label, self.delimiter), targets)
            self._known[label] = known
            canon = known[0]
            if canon not in self._known and self._round_trips(canon, targets):
                # predictions and splits carry canonical labels: know them without parsing
                self._known[canon] = known
        return known

    def _round_trips(self, canon: str, targets: Targets) -> bool:
        """Whether ``canon`` would parse back to ``targets`` (true but for odd delimiters)."""
        if not targets:
            return canon.strip() == canon
        if canon == self.control_label or canon.strip() != canon:
            return False
        parts = tuple(canon.split(self.delimiter)) if self.delimiter else (canon,)
        return parts == targets


def _factorize(labels: Sequence[str] | np.ndarray, lookup: _LabelLookup):
    """Distinct labels (sorted) and each label's position among them."""
    values = np.asarray(labels, dtype=object)
    if values.ndim != 1:
        values = values.ravel()
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    uniques = np.asarray(uniques, dtype=object)
    for i, u in enumerate(uniques):
        if not isinstance(u, str):
            lookup(values[np.flatnonzero(codes == i)[0]])  # raises parse_perturbation's error
    order = np.argsort(uniques, kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return uniques[order], rank[codes]


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class PerturbationDesign:
    """The perturbation design of a set of cells: who is a control, who carries what targets.

    Built once from the cells' labels (:meth:`from_obs`, :meth:`from_labels`), it parses
    every *distinct* label once with :func:`parse_perturbation`; everything derived from it
    -- the design of a subset of the cells (:meth:`subset`), of other cells labelled by the
    same rules such as predictions (:meth:`with_labels`) -- shares those parses, so a label
    is never parsed twice. Splits, baselines, metrics and the benchmark accept one through
    their ``design`` keyword instead of reading and parsing the labels again.

    Attributes
    ----------
    control_label, delimiter
        The labelling rules (see :func:`parse_perturbation`).
    unique_labels
        The distinct labels of the cells, sorted.
    inverse
        Per cell, the position of its label in ``unique_labels``.
    perturbations
        The canonical labels of the non-control perturbations of the cells, sorted.
    """

    control_label: str
    delimiter: str
    unique_labels: np.ndarray
    inverse: np.ndarray
    _lookup: _LabelLookup = field(repr=False)
    perturbations: tuple[str, ...] = field(init=False)
    _unique_canonical: np.ndarray = field(init=False, repr=False)
    _unique_codes: np.ndarray = field(init=False, repr=False)
    _targets: dict[str, Targets] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parsed = [self._lookup(label) for label in self.unique_labels]
        canon = np.array([c for c, _ in parsed], dtype=object)
        targets: dict[str, Targets] = {}
        for c, t in parsed:
            targets.setdefault(c, t)  # the first (sorted) label's parse, as before designs
        perturbations = tuple(sorted(set(canon.tolist()) - {self.control_label}))
        position = {p: i for i, p in enumerate(perturbations)}
        codes = np.array([position.get(c, -1) for c in canon], dtype=np.int64)
        object.__setattr__(self, "inverse", _read_only(np.asarray(self.inverse, dtype=np.int64)))
        object.__setattr__(
            self, "unique_labels", _read_only(np.asarray(self.unique_labels, dtype=object))
        )
        object.__setattr__(self, "perturbations", perturbations)
        object.__setattr__(self, "_unique_canonical", _read_only(canon))
        object.__setattr__(self, "_unique_codes", _read_only(codes))
        object.__setattr__(self, "_targets", targets)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_labels(
        cls,
        labels: Sequence[str] | np.ndarray,
        control_label: str = "control",
        delimiter: str = "+",
    ) -> PerturbationDesign:
        """Build the design of cells labelled ``labels`` (one label per cell).

        Parameters
        ----------
        labels
            The cells' perturbation labels.
        control_label, delimiter
            The labelling rules (see :func:`parse_perturbation`).

        Raises
        ------
        ValueError, TypeError
            For a label :func:`parse_perturbation` rejects.
        """
        lookup = _LabelLookup(control_label, delimiter)
        uniques, inverse = _factorize(labels, lookup)
        return cls(control_label, delimiter, uniques, inverse, lookup)

    @classmethod
    def from_obs(
        cls,
        obs: pd.DataFrame,
        perturbation_key: str = "perturbation",
        control_label: str = "control",
        delimiter: str = "+",
    ) -> PerturbationDesign:
        """Build the design of the cells of ``obs`` from its ``perturbation_key`` column."""
        labels = perturbation_labels(obs, perturbation_key)
        return cls.from_labels(labels, control_label, delimiter)

    def subset(self, positions: Sequence[int] | np.ndarray) -> PerturbationDesign:
        """Return the design of the cells at ``positions`` (integers or a boolean mask).

        Nothing is parsed: the subset shares this design's parses.
        """
        positions = np.asarray(positions)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        present, inverse = np.unique(self.inverse[positions.astype(np.int64)], return_inverse=True)
        return type(self)(
            self.control_label,
            self.delimiter,
            self.unique_labels[present],
            inverse.ravel(),
            self._lookup,
        )

    def with_labels(self, labels: Sequence[str] | np.ndarray) -> PerturbationDesign:
        """Return the design of other cells labelled by the same rules (e.g. predictions).

        Labels this design (or one derived from it) has met, in their own or their canonical
        form, are looked up rather than parsed again.
        """
        uniques, inverse = _factorize(labels, self._lookup)
        return type(self)(self.control_label, self.delimiter, uniques, inverse, self._lookup)

    # -- per-cell views -----------------------------------------------------------------------

    @property
    def n_obs(self) -> int:
        """Number of cells."""
        return int(self.inverse.size)

    @property
    def labels(self) -> np.ndarray:
        """Each cell's label as written in the data."""
        return self.unique_labels[self.inverse]

    @property
    def canonical_labels(self) -> np.ndarray:
        """Each cell's label in canonical form (stripped, targets sorted)."""
        return self._unique_canonical[self.inverse]

    @property
    def control_mask(self) -> np.ndarray:
        """Whether each cell is a control (its canonical label is the control label)."""
        return self._unique_codes[self.inverse] < 0

    @property
    def codes(self) -> np.ndarray:
        """Each cell's position in :attr:`perturbations`; -1 for control cells."""
        return self._unique_codes[self.inverse]

    def codes_for(self, keep: Sequence[str]) -> np.ndarray:
        """Each cell's position in ``keep`` (canonical labels); -1 for cells of other labels."""
        position = {label: i for i, label in enumerate(keep)}
        unique_codes = np.array(
            [position.get(c, -1) for c in self._unique_canonical], dtype=np.int64
        )
        return unique_codes[self.inverse]

    # -- labels -------------------------------------------------------------------------------

    def targets(self, label: str) -> Targets:
        """Return the sorted targets of a canonical label of the cells, or of any label.

        A label the cells do not carry is parsed the first time it is met and remembered.
        """
        known = self._targets.get(label)
        return known if known is not None else self._lookup(label)[1]

    def canonical(self, label: str) -> str:
        """Return ``label`` in canonical form (parsed the first time it is met)."""
        return self._lookup(label)[0]

    def canonicalize(self, labels: Sequence[str]) -> list[str]:
        """Return the canonical form of every entry of ``labels``."""
        return [self._lookup(label)[0] for label in labels]

    def matches(self, control_label: str, delimiter: str, n_obs: int) -> PerturbationDesign:
        """Return this design, checked to follow these rules and to have ``n_obs`` cells.

        Raises
        ------
        ValueError
            When the design was built with other rules or for another number of cells.
        """
        if (self.control_label, self.delimiter) != (control_label, delimiter):
            raise ValueError(
                f"The perturbation design was built with control label {self.control_label!r} "
                f"and delimiter {self.delimiter!r}, not {control_label!r} and {delimiter!r}."
            )
        if self.n_obs != n_obs:
            raise ValueError(
                f"The perturbation design describes {self.n_obs} cells but the data have "
                f"{n_obs}; pass the design of these cells (e.g. `design.subset(positions)`)."
            )
        return self

    def __repr__(self) -> str:
        return (
            f"PerturbationDesign({self.n_obs} cells, {len(self.perturbations)} perturbations, "
            f"control_label={self.control_label!r}, delimiter={self.delimiter!r})"
        )


def design_of(
    obs: pd.DataFrame,
    perturbation_key: str,
    control_label: str,
    delimiter: str,
    design: PerturbationDesign | None = None,
    *,
    require_controls: bool = False,
) -> PerturbationDesign:
    """Return ``design`` checked against ``obs``, or the design built from ``obs``.

    The one way every layer gets the design of its cells: the one it was handed (by the
    benchmark, which parses the labels once), else one built from the labels.

    Parameters
    ----------
    obs
        The cells' annotations; ``obs[perturbation_key]`` holds their labels.
    perturbation_key, control_label, delimiter
        How the cells are labelled.
    design
        The design of these cells, if the caller has one.
    require_controls
        Raise :func:`check_control_label`'s error when no cell carries ``control_label``
        (checked before any label is parsed).
    """
    if design is None:
        labels = perturbation_labels(obs, perturbation_key)
        if require_controls:
            check_control_label(labels, control_label, perturbation_key)
        return PerturbationDesign.from_labels(labels, control_label, delimiter)
    design = design.matches(control_label, delimiter, len(obs))
    if require_controls:
        check_control_label(design.labels, control_label, perturbation_key)
    return design


def target_matrix(parsed: Sequence[Targets]) -> tuple[list[str], np.ndarray]:
    """Return the sorted targets of parsed labels and the labels x targets 0/1 matrix.

    Raises a ValueError when no label has a target (control cells only).
    """
    targets = sorted({t for label in parsed for t in label})
    if not targets:
        raise ValueError(
            "The data holds control cells only: the model needs perturbed cells to learn from."
        )
    index = {t: i for i, t in enumerate(targets)}
    matrix = np.zeros((len(parsed), len(targets)), dtype=np.float32)
    for row, label in enumerate(parsed):
        matrix[row, [index[t] for t in label]] = 1.0
    return targets, matrix
