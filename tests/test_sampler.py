import numpy as np
import pytest

from sccvae import PairedPerturbationSampler
from sccvae.train._dataloading import split_by_perturbation


def _codes():
    # 0 = control (50 cells), perturbations 1..3 with 70, 5 and 33 cells
    return np.repeat([0, 1, 2, 3], [50, 70, 5, 33])


def test_batches_hold_one_perturbation_and_as_many_controls():
    codes = _codes()
    sampler = PairedPerturbationSampler(codes, codes == 0, batch_size=32, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 1 + 2
    seen = []
    for batch in batches:
        batch = np.asarray(batch)
        batch_codes = codes[batch]
        perturbed = batch[batch_codes != 0]
        controls = batch[batch_codes == 0]
        assert len(np.unique(codes[perturbed])) == 1
        assert len(perturbed) == len(controls) <= 32
        assert len(np.unique(controls)) == len(controls)
        seen.extend(perturbed.tolist())
    assert sorted(seen) == np.flatnonzero(codes != 0).tolist()


def test_sampler_is_deterministic_under_seed_and_varies_by_epoch():
    codes = _codes()
    a = PairedPerturbationSampler(codes, codes == 0, batch_size=16, seed=7)
    b = PairedPerturbationSampler(codes, codes == 0, batch_size=16, seed=7)
    first_a, first_b = list(a), list(b)
    assert first_a == first_b
    assert list(a) != first_a  # next epoch draws anew
    c = PairedPerturbationSampler(codes, codes == 0, batch_size=16, seed=8)
    assert list(c) != first_a
    fixed = PairedPerturbationSampler(codes, codes == 0, batch_size=16, shuffle=False, seed=7)
    assert list(fixed) == list(fixed)


def test_sampler_needs_controls():
    codes = _codes()
    with pytest.raises(ValueError, match="No control cells"):
        PairedPerturbationSampler(codes, np.zeros_like(codes, dtype=bool))


def test_split_keeps_every_perturbation_in_train_and_validation():
    codes = _codes()
    train, val = split_by_perturbation(codes, 0.8, seed=0)
    assert np.intersect1d(train, val).size == 0
    assert len(train) + len(val) == len(codes)
    for code in np.unique(codes):
        assert np.any(codes[train] == code) and np.any(codes[val] == code)
