import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch

from sccvae import LatentSCM, build_graph_mask


def test_triangular_solve_matches_explicit_inverse():
    mask, _ = build_graph_mask("full", 12)
    scm = LatentSCM(mask, init_std=0.3, seed=1).double()
    z = torch.randn(7, 12, dtype=torch.float64)
    shift = torch.randn(7, 12, dtype=torch.float64)
    expected = (z + shift) @ torch.linalg.inv(torch.eye(12, dtype=torch.float64) - scm.adjacency)
    torch.testing.assert_close(scm(z, shift), expected)
    torch.testing.assert_close(scm.total_effect(), torch.linalg.inv(torch.eye(12, dtype=torch.float64) - scm.adjacency))


def test_no_graph_is_plain_shift():
    mask, _ = build_graph_mask("none", 5)
    scm = LatentSCM(mask)
    z, shift = torch.randn(3, 5), torch.randn(3, 5)
    torch.testing.assert_close(scm(z, shift), z + shift)
    torch.testing.assert_close(scm(z), z)


def test_masked_weights_get_no_gradient():
    mask, _ = build_graph_mask("random", 10, density=0.3, seed=0)
    scm = LatentSCM(mask, seed=0)
    scm(torch.randn(4, 10), torch.randn(4, 10)).pow(2).sum().backward()
    grad = scm.weight.grad
    assert torch.all(grad[torch.as_tensor(mask) == 0] == 0)
    assert torch.any(grad[torch.as_tensor(mask) == 1] != 0)


def test_random_graph_is_seeded_dag_with_density():
    a, _ = build_graph_mask("random", 100, density=0.1, seed=3)
    b, _ = build_graph_mask("random", 100, density=0.1, seed=3)
    np.testing.assert_array_equal(a, b)
    assert np.all(np.tril(a) == 0)
    density = a.sum() / (100 * 99 / 2)
    assert 0.08 < density < 0.12


def test_user_dag_is_put_in_topological_order():
    graph = nx.DiGraph([("c", "a"), ("a", "b")])
    mask, names = build_graph_mask(graph, 3)
    assert names == ["c", "a", "b"]
    assert mask[0, 1] == 1 and mask[1, 2] == 1 and mask.sum() == 2
    frame = pd.DataFrame(0, index=list("xyz"), columns=list("xyz"))
    frame.loc["z", "x"] = 1
    mask, names = build_graph_mask(frame, 3)
    assert names.index("z") < names.index("x")
    assert np.all(np.tril(mask) == 0)
    array = np.zeros((3, 3))
    array[2, 0] = 1
    mask, names = build_graph_mask(array, 3)
    assert names == ["node_1", "node_2", "node_0"] or names.index("node_2") < names.index("node_0")


def test_invalid_graphs_are_clear_errors():
    with pytest.raises(ValueError, match="cycle"):
        build_graph_mask(nx.DiGraph([("a", "b"), ("b", "a"), ("c", "a")]), 3)
    with pytest.raises(ValueError, match="n_latent=4"):
        build_graph_mask(np.zeros((3, 3)), 4)
    with pytest.raises(ValueError, match="Unknown graph"):
        build_graph_mask("dense", 4)
    with pytest.raises(ValueError, match="self-loops"):
        build_graph_mask(np.eye(3), 3)


def test_combination_shifts_add():
    from sccvae import SCCVAEModule

    mask, _ = build_graph_mask("full", 8)
    module = SCCVAEModule(
        n_input=5,
        graph_mask=mask,
        label_targets=np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32),
        target_embedding=np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32),
        n_hidden=16,
        perturbation_encoder="softmax",  # the paper's: each target's shift sums to c_t
    )
    with torch.no_grad():
        module.magnitude.copy_(torch.tensor([0.7, 1.9]))
        single_a = module.shift(torch.tensor([[1.0, 0.0]]))
        single_b = module.shift(torch.tensor([[0.0, 1.0]]))
        double = module.shift(torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(double, single_a + single_b)
    torch.testing.assert_close(single_a.sum(), torch.tensor(0.7))
