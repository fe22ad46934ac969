"""The cells of a simulated screen: each cell's log mean, negative-binomial counts, CSR.

:func:`~sccvae.data.simulate_perturbseq` draws the truth of a screen (network, targets,
expected shifts); :class:`CellSampler` draws cells from it, a block at a time so that the
temporaries stay bounded, and :func:`assemble_counts` joins the blocks into the counts and
their log-normalised values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._network import CellPropagation, saturate

#: ``normalize_total`` target of the log-normalised values, as scanpy's convention.
_TARGET_SUM = 1e4


@dataclass
class CellBlock:
    """A block of cells as compact CSR pieces, with each cell's penetrance and library size."""

    data: np.ndarray
    indices: np.ndarray
    row_nnz: np.ndarray
    penetrance: np.ndarray
    library_size: np.ndarray


@dataclass
class CellSampler:
    """What every cell of a screen shares, and how one block of cells is drawn from it.

    ``rng`` draws what the default simulator always drew (the same data for a seed as
    before any scenario option existed); ``scenario_rng`` the shared response and
    ``cell_rng`` the options of realistic screens, each from a stream of its own.
    """

    rng: np.random.Generator
    scenario_rng: np.random.Generator
    cell_rng: np.random.Generator
    log_p: np.ndarray  # baseline log proportion per gene (float32)
    theta: np.ndarray  # negative-binomial inverse dispersion per gene
    program_loadings: np.ndarray  # programmes x genes: shared cell-to-cell variation
    library_size: float
    library_size_sigma: float
    gene_noise: float
    regulator_noise: float
    intrinsic_noise: float
    targets: np.ndarray
    #: targets x genes total effect of the targets' own variation (linear, not per cell)
    target_propagation: np.ndarray | None
    #: per-cell propagation through the network (Hill or linear), None if effects are linear
    propagation: CellPropagation | None
    confounders: np.ndarray  # confounding programmes x genes
    penetrance_beta: tuple[float, float] | None  # Beta(a, b) per cell, or constant
    mean_penetrance: float
    hill: bool
    saturation: float | None
    transcript_fraction: float
    shared_response: float
    program_scale: float
    shared_loadings: np.ndarray

    @property
    def n_genes(self) -> int:
        return self.log_p.shape[0]

    def sample(
        self,
        n: int,
        effect: np.ndarray | None = None,
        shared: float = 0.0,
        direct: np.ndarray | None = None,
    ) -> CellBlock:
        """Draw ``n`` cells: controls when ``effect`` is None, else perturbed by ``effect``.

        ``effect`` is the perturbation's log shift per gene (already propagated when effects
        are linear, the direct shifts of its targets with Hill regulation); ``shared`` the
        strength of its shared response; ``direct`` its targets' own shifts.
        """
        rng, n_genes = self.rng, self.n_genes
        log_lib = rng.normal(np.log(self.library_size), self.library_size_sigma, n)
        log_lib = log_lib.astype(np.float32)
        log_mu = rng.standard_normal((n, n_genes), dtype=np.float32)
        log_mu *= np.float32(self.gene_noise)
        log_mu += self.log_p
        log_mu += log_lib[:, None]
        if self.program_loadings.shape[0]:
            n_programs = self.program_loadings.shape[0]
            log_mu += (
                rng.standard_normal((n, n_programs), dtype=np.float32) @ self.program_loadings
            )
        if self.target_propagation is not None:
            n_targets = self.target_propagation.shape[0]
            intrinsic = rng.standard_normal((n, n_targets), dtype=np.float32)
            intrinsic *= np.float32(self.regulator_noise)
            log_mu += intrinsic @ self.target_propagation
        exogenous = self._exogenous(n)
        penetrance = np.zeros(n, dtype=np.float32)
        if effect is not None:
            penetrance = self._penetrance(n)
            self._perturb(log_mu, exogenous, penetrance, effect, direct)
        if exogenous is not None:
            log_mu += self.propagation(exogenous)
            del exogenous
        if self.shared_response > 0:
            state = self.scenario_rng.normal(0.0, self.program_scale, n).astype(np.float32)
            state = state + penetrance * shared
            log_mu += state[:, None] * self.shared_loadings[None, :]
        return self._counts(log_mu, penetrance, np.exp(log_lib))

    def _exogenous(self, n: int) -> np.ndarray | None:
        """Draw what enters the network in each cell before it propagates (per-cell mode)."""
        if self.propagation is None:
            return None
        rng, n_genes = self.cell_rng, self.n_genes
        exogenous = np.zeros((n, n_genes), dtype=np.float32)
        if self.intrinsic_noise > 0:
            exogenous += np.float32(self.intrinsic_noise) * rng.standard_normal(
                (n, n_genes), dtype=np.float32
            )
        if self.regulator_noise > 0:
            exogenous[:, self.targets] += np.float32(self.regulator_noise) * rng.standard_normal(
                (n, len(self.targets)), dtype=np.float32
            )
        if self.confounders.shape[0]:
            factors = rng.standard_normal((n, self.confounders.shape[0]), dtype=np.float32)
            exogenous += factors @ self.confounders
        return exogenous

    def _penetrance(self, n: int) -> np.ndarray:
        if self.penetrance_beta is None:
            return np.full(n, self.mean_penetrance, dtype=np.float32)
        return self.rng.beta(*self.penetrance_beta, n).astype(np.float32)

    def _perturb(self, log_mu, exogenous, penetrance, effect, direct) -> None:
        """Add a perturbation's effect, in place, to each cell at its own penetrance."""
        effect32 = effect.astype(np.float32)
        moved = np.flatnonzero(effect32)
        scaled = penetrance[:, None] * effect32[moved][None, :]
        if self.hill:  # the knock-down enters the network with the cell's own variation
            exogenous[:, moved] += scaled
        else:
            log_mu[:, moved] += saturate(scaled, self.saturation)
        if self.transcript_fraction < 1:
            # a knock-out's protein is lost, but nonsense-mediated decay removes only part of
            # its transcript: the measured target keeps the rest of its direct shift
            own = np.flatnonzero(direct)
            log_mu[:, own] -= np.float32(1.0 - self.transcript_fraction) * (
                penetrance[:, None] * direct[own].astype(np.float32)[None, :]
            )

    def _counts(self, log_mu, penetrance, library_size) -> CellBlock:
        """Gamma-Poisson (negative-binomial) counts of the cells' means, as CSR pieces."""
        rng, n_genes = self.rng, self.n_genes
        n = log_mu.shape[0]
        np.exp(log_mu, out=log_mu)  # now the NB mean
        lam = rng.standard_gamma(self.theta, size=(n, n_genes), dtype=np.float32)
        lam *= log_mu
        lam /= self.theta
        del log_mu
        counts = rng.poisson(lam)
        del lam
        flat = np.flatnonzero(counts)
        data = counts.ravel()[flat].astype(np.float32)
        del counts
        row_nnz = np.bincount(flat // n_genes, minlength=n)
        indices = (flat % n_genes).astype(np.int32)
        return CellBlock(data, indices, row_nnz, penetrance, library_size)


def assemble_counts(blocks: list[CellBlock], n_genes: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Join blocks into counts and their log-normalised values (normalize_total + log1p).

    Each block is freed once copied, so the peak memory is one copy of the data plus a block.
    """
    row_nnz = np.concatenate([block.row_nnz for block in blocks])
    indptr = np.zeros(len(row_nnz) + 1, dtype=np.int64)
    np.cumsum(row_nnz, out=indptr[1:])
    nnz = int(indptr[-1])
    if nnz < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    count_data = np.empty(nnz, dtype=np.float32)
    log_data = np.empty(nnz, dtype=np.float32)
    indices = np.empty(nnz, dtype=np.int32)
    position = 0
    blocks.reverse()
    while blocks:
        block = blocks.pop()
        data, rows = block.data, block.row_nnz
        k = len(data)
        count_data[position : position + k] = data
        indices[position : position + k] = block.indices
        totals = np.bincount(
            np.repeat(np.arange(len(rows)), rows), weights=data, minlength=len(rows)
        )
        scale = np.divide(_TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
        log_data[position : position + k] = np.log1p(
            data * np.repeat(scale, rows).astype(np.float32)
        )
        position += k
        del block, data, rows
    shape = (len(row_nnz), n_genes)
    counts = sp.csr_matrix((count_data, indices, indptr), shape=shape)
    log_normalised = sp.csr_matrix((log_data, indices.copy(), indptr.copy()), shape=shape)
    return counts, log_normalised
