"""One split of the cells: the :class:`Split` record, its serialisation, per-cell roles.

:func:`splits_to_frame` tabulates the roles of several splits (cells x splits) for CSV.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData


@dataclass
class Split:
    """One train / validation / test partition of the cells of an AnnData.

    Attributes
    ----------
    train_idx, validation_idx, test_idx
        Sorted integer positions (``int64``) into ``adata.obs``; disjoint.
    train_perturbations
        Canonical labels of the non-control perturbations with cells in ``train_idx``.
    test_perturbations
        Canonical labels of the non-control perturbations evaluated on ``test_idx``.
    name
        A short identifier such as ``"unseen_fold0"``.
    n_obs
        Number of cells of the AnnData the split was made for (checked by :meth:`subset`).
    categories
        Optional per-test-perturbation category, e.g. ``{"A+B": "seen 1"}`` for
        :func:`combination_split`.
    params
        The arguments the split was made with (for the record).
    """

    train_idx: np.ndarray
    validation_idx: np.ndarray
    test_idx: np.ndarray
    train_perturbations: list[str]
    test_perturbations: list[str]
    name: str = ""
    n_obs: int | None = None
    categories: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for attr in ("train_idx", "validation_idx", "test_idx"):
            setattr(self, attr, np.sort(np.asarray(getattr(self, attr), dtype=np.int64)))
        self.train_perturbations = [str(p) for p in self.train_perturbations]
        self.test_perturbations = [str(p) for p in self.test_perturbations]

    @property
    def validation_perturbations(self) -> list[str]:
        """Perturbations with validation cells (the training ones, for all splits here)."""
        return list(self.params.get("validation_perturbations", self.train_perturbations))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (indices as lists of ints)."""
        return {
            "name": self.name,
            "n_obs": self.n_obs,
            "train_idx": self.train_idx.tolist(),
            "validation_idx": self.validation_idx.tolist(),
            "test_idx": self.test_idx.tolist(),
            "train_perturbations": list(self.train_perturbations),
            "test_perturbations": list(self.test_perturbations),
            "categories": dict(self.categories),
            "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Split:
        """Rebuild a :class:`Split` from :meth:`to_dict` output."""
        missing = {"train_idx", "validation_idx", "test_idx"} - set(data)
        if missing:
            raise ValueError(
                f"Split dict lacks {sorted(missing)}; was it made by Split.to_dict()?"
            )
        return cls(
            train_idx=np.asarray(data["train_idx"], dtype=np.int64),
            validation_idx=np.asarray(data["validation_idx"], dtype=np.int64),
            test_idx=np.asarray(data["test_idx"], dtype=np.int64),
            train_perturbations=list(data.get("train_perturbations", [])),
            test_perturbations=list(data.get("test_perturbations", [])),
            name=data.get("name", ""),
            n_obs=data.get("n_obs"),
            categories=dict(data.get("categories", {})),
            params=dict(data.get("params", {})),
        )

    def to_json(self, path: str | None = None) -> str:
        """Serialise to a JSON string, also written to ``path`` when given."""
        text = json.dumps(self.to_dict())
        if path is not None:
            with open(path, "w") as handle:
                handle.write(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str) -> Split:
        """Load a split from a JSON string or from a file path holding one."""
        text = text_or_path
        if not text_or_path.lstrip().startswith("{"):
            with open(text_or_path) as handle:
                text = handle.read()
        return cls.from_dict(json.loads(text))

    def indices(self, part: str) -> np.ndarray:
        """Positions of ``part``: ``"train"``, ``"validation"`` or ``"test"``."""
        lookup = {
            "train": self.train_idx,
            "validation": self.validation_idx,
            "test": self.test_idx,
        }
        if part not in lookup:
            raise ValueError(f"Unknown split part {part!r}; use one of {list(lookup)}.")
        return lookup[part]

    def subset(self, adata: AnnData, part: str) -> AnnData:
        """Return a copy of the cells of ``part`` (``"train"``, ``"validation"`` or ``"test"``)."""
        if self.n_obs is not None and adata.n_obs != self.n_obs:
            raise ValueError(
                f"Split {self.name!r} was made for {self.n_obs} cells but adata has "
                f"{adata.n_obs}; apply it to the same AnnData (same cells, same order)."
            )
        return adata[self.indices(part)].copy()

    def assignments(self) -> np.ndarray:
        """Per-cell role: ``"train"``, ``"validation"``, ``"test"`` or ``"unused"``."""
        if self.n_obs is None:
            raise ValueError(
                "This split does not record n_obs; cannot build per-cell assignments."
            )
        out = np.full(self.n_obs, "unused", dtype=object)
        out[self.train_idx] = "train"
        out[self.validation_idx] = "validation"
        out[self.test_idx] = "test"
        return out

    def __repr__(self) -> str:
        return (
            f"Split(name={self.name!r}, train={self.train_idx.size} cells / "
            f"{len(self.train_perturbations)} perturbations, validation={self.validation_idx.size}"
            f" cells, test={self.test_idx.size} cells / {len(self.test_perturbations)} "
            "perturbations)"
        )


def splits_to_frame(
    splits: Sequence[Split], obs_names: Sequence[str] | None = None
) -> pd.DataFrame:
    """Cells x splits table of roles (``train``/``validation``/``test``/``unused``), for CSV.

    Parameters
    ----------
    splits
        Splits made for the same AnnData.
    obs_names
        Row index (e.g. ``adata.obs_names``); positions are used when omitted.
    """
    if not splits:
        raise ValueError("No splits given.")
    columns = {}
    for i, split in enumerate(splits):
        columns[split.name or f"split{i}"] = split.assignments()
    frame = pd.DataFrame(columns)
    if obs_names is not None:
        if len(obs_names) != len(frame):
            raise ValueError(f"{len(obs_names)} obs_names for splits over {len(frame)} cells.")
        frame.index = pd.Index([str(o) for o in obs_names])
    return frame
