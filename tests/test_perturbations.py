import numpy as np
import pandas as pd
import pytest

from sccvae._perturbations import canonical_label, check_control_label, parse_perturbation, perturbation_labels


def test_combinations_are_order_invariant_and_any_arity():
    assert parse_perturbation("B+A") == parse_perturbation("A+B") == ("A", "B")
    assert parse_perturbation("C+A+B") == ("A", "B", "C")
    assert parse_perturbation("control") == ()
    assert parse_perturbation("A+control") == ("A",)
    assert parse_perturbation("A_B", delimiter="_") == ("A", "B")
    assert canonical_label(("B", "A")) == "A+B"
    assert canonical_label(()) == "control"


def test_empty_component_is_an_error():
    with pytest.raises(ValueError, match="empty component"):
        parse_perturbation("A++B")


def test_missing_column_and_control_label_errors_are_helpful():
    obs = pd.DataFrame({"condition": ["ctrl", "A", "B"]})
    with pytest.raises(KeyError, match="condition"):
        perturbation_labels(obs, "conditon")
    with pytest.raises(ValueError, match="ctrl"):
        check_control_label(np.array(["ctrl", "A"]), "control", "condition")


def test_one_labelling_rule_duplicates_and_whitespace():
    from sccvae._perturbations import canonical

    with pytest.raises(ValueError, match=r"'A\+A'.*\['A'\] more than once"):
        parse_perturbation("A+A")
    with pytest.raises(ValueError, match="more than once"):
        parse_perturbation("B + A+B")
    assert parse_perturbation(" A + B ") == ("A", "B")
    assert canonical(" B + A ") == "A+B" == canonical("A+B")
    assert canonical(" control ") == "control"


def test_no_control_cells_at_all_is_named_as_such():
    with pytest.raises(ValueError, match="hold no control cells"):
        check_control_label(np.array(["KLF1", "MAP2K6"]), "control", "condition")


def test_label_rule_applies_to_data_predictions_baselines_and_metrics():
    import sccvae
    from sccvae.baselines import MeanBaseline
    from sccvae.metrics import evaluate

    from .conftest import make_toy_adata

    adata = make_toy_adata(n_single=4, doubles=())
    labels = adata.obs["perturbation"].astype(str)
    doubled = adata.copy()
    doubled.obs["perturbation"] = labels.replace({"g1": "g1+g1"}).to_numpy()
    with pytest.raises(ValueError, match=r"'g1\+g1'"):
        sccvae.SCCVAE.setup_anndata(doubled)
    spaced = adata.copy()
    spaced.obs["perturbation"] = labels.replace({"g1": " g1 ", "g2": "g2 "}).to_numpy()
    baseline = MeanBaseline().fit(spaced)
    assert baseline.training_perturbations_ == ["g0", "g1", "g2", "g3"]
    pred = baseline.predict([" g3 + g1 ", "g2"], n_cells=5)
    assert list(pred.obs["perturbation"].cat.categories) == ["g1+g3", "g2"]
    with pytest.raises(ValueError, match="more than once"):
        baseline.predict(["g2+g2"])
    table = evaluate(pred, spaced, spaced, distribution_metrics=False, de_metrics=False)
    assert list(table.index) == ["g2"]  # " g2" in the data and "g2" predicted are one label
