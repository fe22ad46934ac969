"""Minibatches of one perturbation paired with control cells, and the train/validation split."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import lightning.pytorch as pl
import numpy as np
from scvi import settings
from scvi.data import AnnDataManager
from torch.utils.data import DataLoader, Sampler

logger = logging.getLogger(__name__)


class PairedPerturbationSampler(Sampler):
    """Yields minibatches holding cells of one perturbation plus as many control cells.

    Positions are relative to the ``indices`` the data loader was built on. Each batch lists
    the perturbed cells first, then the control cells drawn (without replacement within the
    batch) from all control positions. A perturbation's cells are dealt into
    ``ceil(n / batch_size)`` batches of near-equal size, so no batch is a tiny remainder.

    The draw for epoch ``e`` depends only on ``seed`` and ``e``: runs are reproducible, and
    every DDP process builds the same batch list before Lightning hands each its share.

    Parameters
    ----------
    perturbation_codes
        Perturbation code of every position.
    is_control
        Boolean mask of control positions.
    batch_size
        Maximum number of perturbed cells per batch (the batch holds twice as many cells).
    shuffle
        Reshuffle cells and batch order every epoch (training); ``False`` gives the same
        batches each epoch (validation), so its loss is comparable across epochs.
    seed
        Seed of every draw.
    """

    def __init__(
        self,
        perturbation_codes: np.ndarray,
        is_control: np.ndarray,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        perturbation_codes = np.asarray(perturbation_codes)
        is_control = np.asarray(is_control, dtype=bool)
        self.control_positions = np.flatnonzero(is_control)
        if self.control_positions.size == 0:
            raise ValueError("No control cells among the cells given to the sampler.")
        perturbed = np.flatnonzero(~is_control)
        codes = perturbation_codes[perturbed]
        self.groups = [perturbed[codes == code] for code in np.unique(codes)]
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return int(sum(-(-len(group) // self.batch_size) for group in self.groups))

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch whose draw the next iteration uses."""
        self.epoch = int(epoch)

    def batches(self, epoch: int) -> list[list[int]]:
        """All minibatches of one epoch, as lists of positions."""
        rng = np.random.default_rng([self.seed, epoch if self.shuffle else 0])
        batches = []
        for group in self.groups:
            cells = rng.permutation(group) if self.shuffle else group
            n_chunks = -(-len(cells) // self.batch_size)
            for chunk in np.array_split(cells, n_chunks):
                replace = chunk.size > self.control_positions.size
                controls = rng.choice(self.control_positions, size=chunk.size, replace=replace)
                batches.append(np.concatenate([chunk, controls]).tolist())
        if self.shuffle:
            order = rng.permutation(len(batches))
            batches = [batches[i] for i in order]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.epoch)
        self.epoch += 1
        return iter(batches)


class PairedPerturbationDataLoader(DataLoader):
    """Loads whole minibatches from a :class:`PairedPerturbationSampler` in one read.

    Parameters
    ----------
    adata_manager
        Manager of the registered AnnData.
    indices
        Positions in the AnnData this loader covers.
    sampler
        Yields lists of positions within ``indices``.
    **kwargs
        Passed to :class:`torch.utils.data.DataLoader` (e.g. ``num_workers``, ``pin_memory``).
    """

    def __init__(
        self, adata_manager: AnnDataManager, indices: np.ndarray, sampler: Sampler, **kwargs
    ):
        self.adata_manager = adata_manager
        self.indices = np.asarray(indices)
        kwargs.setdefault("num_workers", settings.dl_num_workers)
        kwargs.setdefault("persistent_workers", settings.dl_persistent_workers)
        kwargs.pop("batch_size", None)
        kwargs.pop("shuffle", None)
        dataset = adata_manager.create_torch_dataset(indices=self.indices)
        # batch_size=None: the sampler already yields whole minibatches, read in one call.
        super().__init__(dataset, sampler=sampler, batch_size=None, **kwargs)


def split_by_perturbation(
    perturbation_codes: np.ndarray, train_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split every perturbation's cells (control included) into train and validation parts.

    Each perturbation keeps at least one training cell; with ``train_size < 1`` each with
    two or more cells also keeps at least one validation cell.
    """
    if not 0.0 < train_size <= 1.0:
        raise ValueError(f"train_size must be in (0, 1], got {train_size}.")
    rng = np.random.default_rng(seed)
    train, validation = [], []
    for code in np.unique(perturbation_codes):
        cells = rng.permutation(np.flatnonzero(perturbation_codes == code))
        n_train = int(round(train_size * cells.size))
        if train_size < 1.0 and cells.size >= 2:
            n_train = min(max(n_train, 1), cells.size - 1)
        n_train = max(n_train, 1)
        train.append(cells[:n_train])
        validation.append(cells[n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(validation))


class PerturbationDataSplitter(pl.LightningDataModule):
    """Train/validation loaders of paired minibatches.

    Parameters
    ----------
    adata_manager
        Manager of the registered AnnData.
    perturbation_codes
        Perturbation code of every cell of the AnnData.
    is_control
        Boolean mask of control cells.
    train_size
        Fraction of each perturbation's cells (and of the control cells) used for training;
        the rest is the validation set. Ignored with ``external_indexing``.
    batch_size
        Perturbed cells per minibatch.
    seed
        Seed of the split and of the samplers.
    external_indexing
        ``[train_indices, validation_indices]`` positions, e.g. from a benchmark split;
        every control cell the model should see must be listed.
    **loader_kwargs
        Passed to :class:`PairedPerturbationDataLoader`.
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        perturbation_codes: np.ndarray,
        is_control: np.ndarray,
        train_size: float = 0.9,
        batch_size: int = 32,
        seed: int = 0,
        external_indexing: list[np.ndarray] | None = None,
        **loader_kwargs,
    ):
        super().__init__()
        self.adata_manager = adata_manager
        self.perturbation_codes = np.asarray(perturbation_codes)
        self.is_control = np.asarray(is_control, dtype=bool)
        self.batch_size = batch_size
        self.seed = seed
        self.loader_kwargs = loader_kwargs
        if external_indexing is not None:
            train_idx = np.asarray(external_indexing[0], dtype=int)
            val_idx = (
                np.asarray(external_indexing[1], dtype=int)
                if len(external_indexing) > 1 and external_indexing[1] is not None
                else np.array([], dtype=int)
            )
            if np.intersect1d(train_idx, val_idx).size:
                raise ValueError("Training and validation indices overlap.")
        else:
            train_idx, val_idx = split_by_perturbation(self.perturbation_codes, train_size, seed)
        if not self.is_control[train_idx].any():
            raise ValueError("The training cells include no control cells; the model needs them.")
        if not (~self.is_control[train_idx]).any():
            raise ValueError("The training cells include no perturbed cells.")
        self.train_idx = train_idx
        self.val_idx = val_idx
        self.test_idx = np.array([], dtype=int)
        self.n_train = int(train_idx.size)
        self.n_val = int(val_idx.size)

    def batches_per_epoch(self) -> int:
        """Minibatches in one training epoch."""
        return len(
            PairedPerturbationSampler(
                self.perturbation_codes[self.train_idx],
                self.is_control[self.train_idx],
                self.batch_size,
            )
        )

    def _loader(self, indices: np.ndarray, shuffle: bool) -> PairedPerturbationDataLoader:
        sampler = PairedPerturbationSampler(
            self.perturbation_codes[indices],
            self.is_control[indices],
            batch_size=self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
        )
        # sampler by keyword: Lightning re-creates the loader with a distributed sampler=
        return PairedPerturbationDataLoader(
            self.adata_manager, indices, sampler=sampler, **self.loader_kwargs
        )

    def _validation_indices(self) -> np.ndarray:
        """Return the validation cells, paired with training controls when none were held out."""
        val = self.val_idx
        if val.size and not self.is_control[val].any():
            val = np.concatenate([val, self.train_idx[self.is_control[self.train_idx]]])
        return val

    def train_dataloader(self) -> PairedPerturbationDataLoader:
        """Shuffled paired minibatches over the training cells."""
        return self._loader(self.train_idx, shuffle=True)

    def val_dataloader(self) -> PairedPerturbationDataLoader | list:
        """Return fixed paired minibatches over the validation cells (none if there are none)."""
        val = self._validation_indices()
        if not (~self.is_control[val]).any():
            return []
        return self._loader(val, shuffle=False)
