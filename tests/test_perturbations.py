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
