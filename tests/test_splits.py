from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from sccvae._perturbations import canonicalize_labels
from sccvae.splits import (
    Split,
    combination_split,
    seen_perturbation_split,
    splits_to_frame,
    unseen_perturbation_folds,
)


def make_adata(perts, n_per=16, n_ctrl=40, seed=0):
    rng = np.random.default_rng(seed)
    labels = ["control"] * n_ctrl + [p for p in perts for _ in range(n_per)]
    labels = list(rng.permutation(labels))
    x = rng.normal(size=(len(labels), 5)).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    return AnnData(X=x, obs=obs)


def labels_of(adata, idx):
    """Canonical labels of the cells at ``idx``."""
    return np.array(
        canonicalize_labels(list(adata.obs["perturbation"].to_numpy()[idx])), dtype=object
    )


def test_unseen_folds_partition_and_properties():
    perts = [f"G{i}" for i in range(11)] + ["G0+G1", "G2+G1"]
    adata = make_adata(perts)
    before = adata.obs.copy()
    folds = unseen_perturbation_folds(adata, n_folds=5, seed=3)
    assert len(folds) == 5
    all_test = []
    for split in folds:
        parts = np.concatenate([split.train_idx, split.validation_idx, split.test_idx])
        # disjoint and covering every cell
        assert np.array_equal(np.sort(parts), np.arange(adata.n_obs))
        test_labels = set(labels_of(adata, split.test_idx))
        assert "control" not in test_labels
        assert test_labels == set(split.test_perturbations)
        assert not test_labels & set(split.train_perturbations)
        train_labels = labels_of(adata, split.train_idx)
        val_labels = labels_of(adata, split.validation_idx)
        assert np.sum(train_labels == "control") == 40
        assert "control" not in set(val_labels)
        for p in split.train_perturbations:
            n_val = np.sum(val_labels == p)
            assert n_val == 2 and np.sum(train_labels == p) == 14
        all_test += split.test_perturbations
    assert sorted(all_test) == sorted(canonicalize_labels(perts))
    pd.testing.assert_frame_equal(adata.obs, before)


def test_unseen_folds_combination_label_order_is_one_unit():
    adata = make_adata(["A", "B", "C", "A+B"], n_per=8)
    obs = adata.obs.copy()
    lab = obs["perturbation"].to_numpy().copy()
    idx = np.flatnonzero(lab == "A+B")[:4]
    lab[idx] = "B+A"
    obs["perturbation"] = lab
    adata.obs = obs
    folds = unseen_perturbation_folds(adata, n_folds=2, seed=0)
    for split in folds:
        raw = set(adata.obs["perturbation"].to_numpy()[split.test_idx])
        assert ({"A+B", "B+A"} <= raw) or not ({"A+B", "B+A"} & raw)
    assert sorted(sum((s.test_perturbations for s in folds), [])) == ["A", "A+B", "B", "C"]


def test_unseen_folds_reproducible_and_seed_dependent():
    adata = make_adata([f"G{i}" for i in range(20)])
    a = unseen_perturbation_folds(adata, seed=1)
    b = unseen_perturbation_folds(adata, seed=1)
    c = unseen_perturbation_folds(adata, seed=2)
    assert all(np.array_equal(x.test_idx, y.test_idx) for x, y in zip(a, b, strict=True))
    assert all(
        np.array_equal(x.validation_idx, y.validation_idx) for x, y in zip(a, b, strict=True)
    )
    assert any(x.test_perturbations != y.test_perturbations for x, y in zip(a, c, strict=True))


def test_unseen_folds_errors():
    adata = make_adata(["A", "B"])
    with pytest.raises(ValueError, match="n_folds"):
        unseen_perturbation_folds(adata, n_folds=5)
    with pytest.raises(ValueError, match="control"):
        unseen_perturbation_folds(adata, n_folds=2, control_label="ctrl")


def test_unseen_folds_eligible_only_are_tested_the_others_always_train():
    perts = [f"G{i}" for i in range(10)] + ["G0+G1"]
    adata = make_adata(perts)
    eligible = ["G2", "G5", "G7", "G1+G0"]  # any order of a combination's targets
    folds = unseen_perturbation_folds(adata, n_folds=2, seed=0, eligible=eligible)
    tested = sorted(p for s in folds for p in s.test_perturbations)
    assert tested == ["G0+G1", "G2", "G5", "G7"]
    always = sorted(set(canonicalize_labels(perts)) - set(tested))
    for split in folds:
        assert set(always) <= set(split.train_perturbations)
        assert set(always).isdisjoint(labels_of(adata, split.test_idx))
        assert sorted(split.params["always_train"]) == always
        parts = np.concatenate([split.train_idx, split.validation_idx, split.test_idx])
        assert np.array_equal(np.sort(parts), np.arange(adata.n_obs))
    # one fold per eligible perturbation (leave-one-out), and one fold of all of them
    loo = unseen_perturbation_folds(adata, n_folds=4, seed=0, eligible=eligible)
    assert sorted(len(s.test_perturbations) for s in loo) == [1, 1, 1, 1]
    (single,) = unseen_perturbation_folds(adata, n_folds=1, seed=0, eligible=eligible)
    assert sorted(single.test_perturbations) == tested


def test_unseen_folds_eligible_all_gives_the_default_folds():
    adata = make_adata([f"G{i}" for i in range(13)] + ["G0+G1"])
    default = unseen_perturbation_folds(adata, n_folds=5, seed=4)
    everyone = sorted(set(adata.obs["perturbation"]) - {"control"}, reverse=True)
    given = unseen_perturbation_folds(adata, n_folds=5, seed=4, eligible=everyone)
    for a, b in zip(default, given, strict=True):
        for part in ("train_idx", "validation_idx", "test_idx"):
            assert np.array_equal(getattr(a, part), getattr(b, part))
        assert a.test_perturbations == b.test_perturbations
    assert "always_train" not in default[0].params  # splits.json of a default run unchanged


def test_unseen_folds_eligible_errors():
    adata = make_adata(["A", "B", "C"])
    with pytest.raises(ValueError, match="not perturbations of the data.*'D'"):
        unseen_perturbation_folds(adata, n_folds=2, eligible=["A", "D"])
    with pytest.raises(ValueError, match="control cells cannot be tested"):
        unseen_perturbation_folds(adata, n_folds=2, eligible=["control"])
    with pytest.raises(ValueError, match="1 eligible perturbation"):
        unseen_perturbation_folds(adata, n_folds=2, eligible=["A"])
    with pytest.raises(ValueError, match="at least 2"):
        unseen_perturbation_folds(adata, n_folds=1, eligible=["A", "B", "C"])
    with pytest.raises(TypeError, match="list of perturbation labels"):
        unseen_perturbation_folds(adata, n_folds=2, eligible="A")


def test_split_roundtrip_json_and_frame(tmp_path):
    adata = make_adata([f"G{i}" for i in range(6)])
    split = unseen_perturbation_folds(adata, n_folds=3)[0]
    text = json.dumps(split.to_dict())
    back = Split.from_dict(json.loads(text))
    assert np.array_equal(back.train_idx, split.train_idx)
    assert back.test_perturbations == split.test_perturbations
    path = tmp_path / "split.json"
    split.to_json(str(path))
    again = Split.from_json(str(path))
    assert np.array_equal(again.test_idx, split.test_idx)
    frame = splits_to_frame([split], adata.obs_names)
    assert frame.shape == (adata.n_obs, 1)
    assert (frame.iloc[split.test_idx, 0] == "test").all()
    sub = split.subset(adata, "test")
    assert sub.n_obs == split.test_idx.size
    with pytest.raises(ValueError, match="cells"):
        split.subset(adata[:10].copy(), "test")


def test_seen_split_fractions():
    adata = make_adata(["A", "B", "C+D"], n_per=20, n_ctrl=50)
    split = seen_perturbation_split(adata, seed=0)
    parts = np.concatenate([split.train_idx, split.validation_idx, split.test_idx])
    assert np.array_equal(np.sort(parts), np.arange(adata.n_obs))
    for p in ["A", "B", "C+D"]:
        assert np.sum(labels_of(adata, split.train_idx) == p) == 14
        assert np.sum(labels_of(adata, split.validation_idx) == p) == 2
        assert np.sum(labels_of(adata, split.test_idx) == p) == 4
    assert np.sum(labels_of(adata, split.test_idx) == "control") == 10
    assert split.test_perturbations == ["A", "B", "C+D"]
    no_ctrl = seen_perturbation_split(adata, split_controls=False)
    assert np.sum(labels_of(adata, no_ctrl.train_idx) == "control") == 50
    with pytest.raises(ValueError, match="fractions"):
        seen_perturbation_split(adata, fractions=(0.5, 0.1, 0.1))


def test_combination_split_categories():
    perts = ["A", "B", "C", "A+B", "A+X", "X+Y", "B+C"]
    adata = make_adata(perts, n_per=8)
    split = combination_split(adata, seed=0)
    assert set(split.test_perturbations) == {"A+B", "A+X", "X+Y", "B+C"}
    assert set(split.train_perturbations) == {"A", "B", "C"}
    assert split.categories == {"A+B": "seen 2", "A+X": "seen 1", "X+Y": "seen 0", "B+C": "seen 2"}
    assert set(labels_of(adata, split.test_idx)) == {"A+B", "A+X", "X+Y", "B+C"}
    val = labels_of(adata, split.validation_idx)
    assert all(np.sum(val == p) == 1 for p in ["A", "B", "C"])

    with_train = combination_split(adata, seed=0, train_combination_fraction=0.5)
    assert len(with_train.test_perturbations) == 2
    assert len(with_train.train_perturbations) == 5

    held = combination_split(adata, seed=1, test_single_fraction=1 / 3)
    singles_out = [p for p in held.test_perturbations if "+" not in p]
    assert len(singles_out) == 1 and held.categories[singles_out[0]] == "single"

    with pytest.raises(ValueError, match="combination"):
        combination_split(make_adata(["A", "B"]))
