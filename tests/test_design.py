"""The perturbation design: one parse per label, shared by every layer of a benchmark."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

import sccvae._perturbations as perturbations_module
from sccvae._perturbations import PerturbationDesign, parse_perturbation


@pytest.fixture
def parse_spy(monkeypatch):
    """Count the calls of ``parse_perturbation`` per label."""
    calls: Counter[str] = Counter()

    def spy(label, control_label="control", delimiter="+"):
        calls[label] += 1
        return parse_perturbation(label, control_label, delimiter)

    monkeypatch.setattr(perturbations_module, "parse_perturbation", spy)
    return calls


LABELS = ["control", "B+A", "A", " A ", "control", "C", "A+B", "B+A", "C"]


def test_design_canonical_labels_targets_mask_and_codes(parse_spy):
    design = PerturbationDesign.from_labels(LABELS)
    # each distinct label parsed at most once; "A" is known as the canonical form of " A "
    assert parse_spy == Counter({label: 1 for label in set(LABELS) - {"A"}})
    assert design.n_obs == len(LABELS)
    assert list(design.labels) == LABELS
    assert list(design.canonical_labels) == [
        "control",
        "A+B",
        "A",
        "A",
        "control",
        "C",
        "A+B",
        "A+B",
        "C",
    ]
    assert design.perturbations == ("A", "A+B", "C")
    assert design.targets("A+B") == ("A", "B")
    assert design.targets("A") == ("A",)
    assert design.targets("control") == ()
    assert list(design.control_mask) == [lab == "control" for lab in LABELS]
    assert list(design.codes) == [-1, 1, 0, 0, -1, 2, 1, 1, 2]
    assert list(design.codes_for(["C", "A"])) == [-1, -1, 1, 1, -1, 0, -1, -1, 0]
    with pytest.raises(AttributeError):
        design.control_label = "ctrl"


def test_subset_and_predicted_labels_are_not_parsed_again(parse_spy):
    design = PerturbationDesign.from_labels(LABELS)
    parse_spy.clear()
    sub = design.subset([1, 2, 5])
    assert list(sub.labels) == ["B+A", "A", "C"]
    assert sub.perturbations == ("A", "A+B", "C")
    assert list(sub.codes) == [1, 0, 2]
    masked = design.subset(np.array([lab.startswith("control") for lab in LABELS]))
    assert masked.perturbations == () and masked.control_mask.all()
    # canonical labels (as predictions carry them) and labels seen before are look-ups
    predicted = sub.with_labels(["A+B", "A", "control", "C"])
    assert predicted.perturbations == ("A", "A+B", "C")
    assert sub.canonical(" A ") == "A" and sub.targets("A+B") == ("A", "B")
    assert parse_spy == Counter()
    # a label the data do not carry is parsed once and remembered
    assert design.canonical("D + C") == "C+D"
    assert sub.targets("D + C") == ("C", "D")
    assert design.canonicalize(["D + C", "C+D"]) == ["C+D", "C+D"]
    assert parse_spy == Counter({"D + C": 1})


def test_design_errors_are_those_of_the_labelling_rule():
    with pytest.raises(ValueError, match="more than once"):
        PerturbationDesign.from_labels(["control", "A+A"])
    with pytest.raises(TypeError, match="must be strings"):
        PerturbationDesign.from_labels(["control", None])
    design = PerturbationDesign.from_obs(
        pd.DataFrame({"condition": ["ctrl", "A"]}), "condition", "ctrl"
    )
    with pytest.raises(ValueError, match="describes 2 cells"):
        design.matches("ctrl", "+", 3)
    with pytest.raises(ValueError, match="control label"):
        design.matches("control", "+", 2)


def test_benchmark_parses_every_label_once(parse_spy):
    import sccvae.benchmark
    from sccvae.data import simulate_perturbseq

    adata = simulate_perturbseq(
        n_genes=100, n_perturbations=10, n_cells_per_perturbation=30, n_control_cells=200, seed=0
    )
    labels = set(adata.obs["perturbation"].astype(str))
    result = sccvae.benchmark.run_benchmark(
        adata,
        split="unseen",
        n_folds=2,
        methods="mean,coexpression,knn,linear,control",
        progress=False,
    )
    assert not result.results.empty
    # the simulated labels are canonical, so each is parsed itself: exactly once, by the design
    assert {label: parse_spy[label] for label in labels} == {label: 1 for label in labels}
    assert max(parse_spy.values()) == 1, parse_spy


def test_layers_given_the_design_match_their_own_parse_and_parse_nothing(parse_spy):
    from sccvae.baselines import AdditiveBaseline
    from sccvae.metrics import evaluate, mean_of_perturbation_means
    from sccvae.splits import combination_split, seen_perturbation_split

    from .conftest import make_toy_adata

    adata = make_toy_adata(
        n_genes=20, n_control=60, n_per_perturbation=12, n_single=4, doubles=("g1+g0", "g3+g2")
    )
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    labels[::5] = np.where(labels[::5] == "g1+g0", "g0 + g1", labels[::5])  # other spellings
    adata.obs["perturbation"] = labels
    design = PerturbationDesign.from_obs(adata.obs, "perturbation")
    own = [seen_perturbation_split(adata), combination_split(adata)]
    split = own[0]
    parse_spy.clear()
    given = [
        seen_perturbation_split(adata, design=design),
        combination_split(adata, design=design),
    ]
    assert [s.to_dict() for s in given] == [s.to_dict() for s in own]

    train, test = split.subset(adata, "train"), split.subset(adata, "test")
    train_design, test_design = design.subset(split.train_idx), design.subset(split.test_idx)
    fitted = AdditiveBaseline().fit(adata, train_indices=split.train_idx, design=design)
    pred = fitted.predict(list(test_design.perturbations), n_cells=5)
    mean = mean_of_perturbation_means(train, design=train_design)
    scores = evaluate(
        pred,
        test,
        train,
        training_perturbation_mean=mean,
        design=test_design,
        distribution_metrics=False,
        de_metrics=False,
    )
    assert parse_spy == Counter()  # everything was a look-up

    reference = AdditiveBaseline().fit(adata, train_indices=split.train_idx)
    pd.testing.assert_frame_equal(fitted.perturbation_deltas_, reference.perturbation_deltas_)
    pd.testing.assert_series_equal(mean, mean_of_perturbation_means(train))
    pd.testing.assert_frame_equal(
        scores,
        evaluate(
            pred,
            test,
            train,
            training_perturbation_mean=mean,
            distribution_metrics=False,
            de_metrics=False,
        ),
    )
    with pytest.raises(ValueError, match="describes"):
        mean_of_perturbation_means(train, design=design)
