"""Predicting cells under perturbations: the prediction methods of :class:`~sccvae.SCCVAE`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._inputs import CHUNK, check_model_genes, dense, registered_expression
from .._perturbations import canonical, check_control_label, perturbation_labels
from ._gap import REFERENCE_CELLS, ReferenceCells, pinned_mean_shift, reference_cells
from ._reference import flag_extrapolation

logger = logging.getLogger(__name__)


class PredictionMixin:
    """``predict``, ``simulate_knockdown`` and ``get_latent_representation`` for SCCVAE."""

    @torch.inference_mode()
    def predict(
        self,
        perturbations: str | Sequence[str],
        n_cells: int = 100,
        adata: ad.AnnData | None = None,
        return_mean: bool = False,
        seed: int | None = None,
        counterfactual: bool = True,
        log_normalized: bool = False,
        pin_mean: bool = True,
    ) -> ad.AnnData:
        """Predict cells under seen, unseen or combined perturbations.

        Control cells are drawn (seeded) from ``adata`` (default: the training AnnData),
        encoded, shifted by each perturbation and decoded. The same control cells serve every
        perturbation, so differences between perturbations are not sampling noise.

        Parameters
        ----------
        perturbations
            Labels such as ``"KLF1"``, ``"KLF1+MAP2K6"`` (any order and arity). A target
            absent from training is represented from the training targets only (never from
            its cells): a node gene shifts its own node by the typical training shift, a
            measured gene that is not a node shifts the nodes that carry its variation, an
            embedded target takes the perturbation encoder's choice of nodes (see
            :mod:`sccvae.model._interventions`). The control label gives the model's
            reconstruction of unperturbed cells.
        n_cells
            Cells per perturbation.
        adata
            Source of control cells, with the model's genes; the training AnnData if ``None``.
        return_mean
            Return one row per perturbation (mean over its predicted cells).
        seed
            Seed of the control cells and latent noise; ``scvi.settings.seed`` if ``None``.
        counterfactual
            Predict each source cell's counterfactual: the cell keeps its own deviation from
            the model's reconstruction, ``x + g(u) - g(u0)`` with one draw of ``z`` from its
            posterior shared by both terms (for ``"nb"``, on the cell's log-normalised
            expression, see :meth:`~sccvae.SCCVAEModule.abduct`). Cells then vary as real
            cells do, and the model's reconstruction error does not enter the predicted
            change. As a group they take the mean change the model makes on its reference
            cells (:data:`~sccvae.model._gap.REFERENCE_CELLS` seeded training control cells):
            each cell keeps its own change, and which source cells were drawn does not move
            the predicted mean change (a cell with no count of a gene cannot lose it, so the
            mean change of a few cells' own counterfactuals would carry the noise of the
            draw). ``False`` returns decoder outputs ``g(u)`` for ``z`` sampled from the
            posterior.
        log_normalized
            For ``likelihood="nb"``: return the cells' log-normalised expression
            (``normalize_total(1e4)`` + ``log1p``), the scale their counterfactuals are made
            on, instead of counts. Log-normalising the predicted counts yourself moves every
            gene of a cell whose total the perturbation changed, a second time: compare
            predictions with log-normalised observed cells on this scale. No effect for
            ``"gaussian"`` (``X`` already holds log-normalised expression).
        pin_mean
            With ``counterfactual``: give each label's cells, as a group, the mean change the
            model makes on its reference cells (above). ``False`` leaves every cell's change
            as the structure makes it for that cell (the group's mean change then depends on
            which source cells were drawn): for studying the per-cell response itself.

        Returns
        -------
        A new AnnData with the model's ``var_names``, ``obs[perturbation_key]`` holding each
        label as requested (stripped of surrounding spaces: ``" B+A "`` gives ``"B+A"``),
        ``obs["canonical_perturbation"]`` its canonical form (targets sorted: ``"A+B"``),
        ``obs["seen"]`` (all targets seen in training), ``obs["extrapolated"]``,
        ``obs["control_cell"]`` (the source cell) and ``X`` the predicted expression in the
        input's space (log-normalised values for ``likelihood="gaussian"``, counts for
        ``"nb"``). The input AnnData is not modified.

        A perturbation that was not a training label is *extrapolated* when its predicted
        mean change is larger than that of any training perturbation, or when a gene's
        predicted mean leaves the range of that gene in the training cells: no observed
        perturbation supports such a prediction. It is flagged in ``obs["extrapolated"]``
        and a UserWarning names it (see :mod:`sccvae.model._reference`); the prediction itself is
        returned as the model makes it.

        Warns
        -----
        UserWarning
            For extrapolated predictions, with the numbers that flagged them.
        """
        requested, perturbations = self._requested_labels(perturbations)
        self._check_if_trained(warn=True)
        self.module.eval()
        intervention = self._intervention(perturbations)
        z, library, names, x = self._encode_controls(adata, n_cells, seed)
        source = x if counterfactual else None
        reference = self._reference_population() if counterfactual and pin_mean else None
        unperturbed = self._unperturbed(z)
        blocks, obs, means = [], [], []
        for row, label in enumerate(perturbations):
            cells = self._decode_intervention(
                z,
                library,
                intervention.weights[row],
                intervention.targets,
                source,
                log_normalized,
                reference,
                unperturbed,
            )
            blocks.append(cells.cpu().numpy())
            means.append(self.module.log_expression(cells).mean(dim=0))
            obs.append(
                pd.DataFrame(
                    {
                        self.perturbation_key_: requested[row],
                        "canonical_perturbation": label,
                        "seen": intervention.seen[row],
                        "control_cell": names,
                    }
                )
            )
        extrapolated = flag_extrapolation(
            self,
            requested,
            perturbations,
            torch.stack(means),
            self.module.log_expression(x).mean(dim=0),
            self._training_perturbations(),
        )
        for frame, flag in zip(obs, extrapolated, strict=True):
            frame.insert(3, "extrapolated", flag)
        return self._cells_to_anndata(blocks, pd.concat(obs), return_mean, self.perturbation_key_)

    @torch.inference_mode()
    def simulate_knockdown(
        self,
        perturbation: str,
        penetrance: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        n_cells: int = 100,
        adata: ad.AnnData | None = None,
        return_mean: bool = False,
        seed: int | None = None,
        counterfactual: bool = True,
        pin_mean: bool = True,
    ) -> ad.AnnData:
        """Cells under a perturbation whose shift is scaled from 0 to its full magnitude.

        Scaling the shift by a penetrance in [0, 1] mimics a partial knock-down (or
        activation): 0 gives the model's unperturbed cells, 1 its full prediction. The same
        control cells are used at every level, so the result is a dose-response per gene.
        ``counterfactual`` and ``pin_mean`` are as in :meth:`predict` (penetrance 0 then
        returns the source cells themselves); with ``pin_mean=False`` a node gene's own
        expression moves linearly with the penetrance in every cell until it reaches the
        expression floor (zero counts), with the default the cells' mean change at each
        level is the model's on its reference cells.

        Returns
        -------
        AnnData with ``obs["penetrance"]``, ``obs[perturbation_key]`` (the label as given,
        stripped) and ``obs["canonical_perturbation"]``; ``return_mean`` gives one row per
        penetrance.
        """
        penetrance = _penetrance_levels(penetrance)
        (requested,), (perturbation,) = self._requested_labels([perturbation])
        self._check_if_trained(warn=True)
        self.module.eval()
        intervention = self._intervention([perturbation])
        z, library, names, source = self._encode_controls(adata, n_cells, seed)
        source = source if counterfactual else None
        reference = self._reference_population() if counterfactual and pin_mean else None
        unperturbed = self._unperturbed(z)
        blocks, obs = [], []
        for level in penetrance:
            targets = intervention.scaled(level)
            cells = self._decode_intervention(
                z,
                library,
                intervention.weights[0],
                targets,
                source,
                reference=reference,
                unperturbed=unperturbed,
            )
            blocks.append(cells.cpu().numpy())
            obs.append(
                pd.DataFrame(
                    {
                        self.perturbation_key_: requested,
                        "canonical_perturbation": perturbation,
                        "penetrance": level,
                        "control_cell": names,
                    }
                )
            )
        return self._cells_to_anndata(blocks, pd.concat(obs), return_mean, "penetrance")

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        kind: Literal["exogenous", "causal"] = "exogenous",
        give_mean: bool = True,
        seed: int | None = None,
    ) -> np.ndarray:
        """Latent representation of every cell.

        Parameters
        ----------
        adata
            Cells to embed, with the model's genes; the training AnnData if ``None``.
        kind
            ``"exogenous"``: the encoder's ``z``; ``"causal"``: ``z`` propagated through the
            learned graph, ``u = z (I - B * M)^-1`` (with gene nodes: the cells' standardised
            node genes as the model sees them; an observed cell's own state already carries
            its perturbation, so no shift is added).
        give_mean
            Posterior mean rather than a sample.
        seed
            Seed of the sample when ``give_mean=False``.

        Returns
        -------
        ``cells x n_latent`` array; columns follow ``model.latent_node_names_``.
        """
        if kind not in ("exogenous", "causal"):
            raise ValueError(f"kind must be 'exogenous' or 'causal', got {kind!r}.")
        adata = self.adata if adata is None else adata
        check_model_genes(adata, self.var_names_)
        self.module.eval()
        expression = registered_expression(self.adata_manager, adata)
        generator = torch.Generator().manual_seed(self._seed(seed))
        parts = []
        for start in range(0, adata.n_obs, CHUNK):
            x = torch.as_tensor(
                dense(expression[start : start + CHUNK]), dtype=torch.float32, device=self.device
            )
            z = self.module.posterior_draw(x, None if give_mean else generator)
            parts.append((self.module.scm(z) if kind == "causal" else z).cpu().numpy())
        return np.concatenate(parts)

    # ------------------------------------------------------------------ helpers
    def _canonical_labels(self, perturbations: str | Sequence[str]) -> list[str]:
        return self._requested_labels(perturbations)[1]

    def _requested_labels(self, perturbations: str | Sequence[str]) -> tuple[list[str], list[str]]:
        """Return the labels as the user wrote them (stripped) and in canonical form.

        Results carry the first, so that a user finds the label they asked for; the model
        works with the second (``"B+A"`` and ``"A+B"`` are one perturbation).
        """
        labels = (
            [perturbations] if isinstance(perturbations, str) else [str(p) for p in perturbations]
        )
        if not labels:
            raise ValueError("No perturbations given to predict.")
        canon = [
            canonical(label, self.control_label_, self.combination_delimiter_) for label in labels
        ]
        return [label.strip() for label in labels], canon

    def _encode_controls(
        self, adata: ad.AnnData | None, n_cells: int, seed: int | None, sample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, torch.Tensor]:
        """Encode ``n_cells`` control cells drawn with ``seed``.

        Returns their exogenous noise ``z`` (posterior means unless ``sample``), library
        sizes, names and expression.
        """
        if n_cells < 1:
            raise ValueError(f"n_cells must be at least 1, got {n_cells}.")
        seed = self._seed(seed)
        control, names = self._control_expression(adata)
        rng = np.random.default_rng(seed)
        # consecutive random permutations: every control cell is used as evenly as possible,
        # so the source cells' mean stays close to the control mean
        n_control = control.shape[0]
        rows = np.concatenate(
            [rng.permutation(n_control) for _ in range(-(-n_cells // n_control))]
        )[:n_cells]
        generator = torch.Generator().manual_seed(seed)
        z_parts, library_parts, x_parts = [], [], []
        for start in range(0, n_cells, CHUNK):
            chunk = control[rows[start : start + CHUNK]]
            x = torch.as_tensor(dense(chunk), dtype=torch.float32, device=self.device)
            z = self.module.posterior_draw(x, generator if sample else None)
            z_parts.append(z)
            library_parts.append(x.sum(dim=1, keepdim=True))
            x_parts.append(x)
        return torch.cat(z_parts), torch.cat(library_parts), names[rows], torch.cat(x_parts)

    def _decode_intervention(
        self,
        z,
        library,
        weights_row,
        targets,
        source=None,
        log_normalized: bool = False,
        reference=None,
        unperturbed: list[dict] | None = None,
    ) -> torch.Tensor:
        """Predicted cells under one intervention; with ``source`` cells, their counterfactuals.

        With a ``reference`` (:meth:`_reference_population`) the counterfactuals are pinned,
        as a group, to the mean change the model makes on it (:meth:`_counterfactuals`).
        ``log_normalized``: on the log-normalised scale rather than the input's (counts).
        ``unperturbed``: :meth:`_unperturbed` of ``z``, shared by every intervention.
        """
        module = self.module
        unperturbed = self._unperturbed(z) if unperturbed is None else unperturbed
        out = []
        for chunk, start in enumerate(range(0, z.shape[0], CHUNK)):
            z_chunk = z[start : start + CHUNK]
            outputs = module.generative(
                z_chunk,
                weights_row.expand(z_chunk.shape[0], -1),
                library=library[start : start + CHUNK],
                targets=targets,
                unperturbed=unperturbed[chunk],
            )
            if source is None:
                cells = module.expression_mean(outputs["prediction"], outputs["library"])
                out.append(module.log_expression(cells) if log_normalized else cells)
            else:
                out.append(outputs["prediction"] - outputs["control_prediction"])
        if source is None:
            return torch.cat(out)
        return self._counterfactuals(
            source, torch.cat(out), weights_row, targets, log_normalized, reference
        )

    def _counterfactuals(
        self, source, drive, weights_row, targets, log_normalized: bool = False, reference=None
    ) -> torch.Tensor:
        """Counterfactuals of ``source`` cells moved by ``drive`` (``g(u) - g(u0)`` per cell).

        With a ``reference``, the cells as a group take the mean change the model makes on
        it: each keeps its own change, a gene-wise shift pins the group's mean
        (:func:`~sccvae.model._gap.pinned_mean_shift`), so that which source cells were drawn
        does not move the predicted mean change. ``None`` leaves each cell's change as the
        structure makes it.
        """
        module = self.module
        if reference is not None:
            drive = drive + pinned_mean_shift(
                module.log_expression(source),
                drive,
                _reference_change(module, reference, weights_row, targets),
                module.abduction_floor,
            )
        return torch.cat(
            [
                module.abduct(source[i : i + CHUNK], drive[i : i + CHUNK], log_normalized)
                for i in range(0, source.shape[0], CHUNK)
            ]
        )

    def _unperturbed(self, z: torch.Tensor) -> list[dict]:
        """Return :meth:`~sccvae.SCCVAEModule.unperturbed` of ``z``, chunk by chunk.

        It does not depend on the intervention: computed once, it serves every label.
        """
        return [self.module.unperturbed(z[i : i + CHUNK]) for i in range(0, z.shape[0], CHUNK)]

    def _reference_population(self) -> ReferenceCells:
        """Draw the model's reference cells (:class:`~sccvae.model._gap.ReferenceCells`).

        :data:`~sccvae.model._gap.REFERENCE_CELLS` seeded training control cells, those the
        borrowed changes of unseen targets are pinned on (the same draw every time, and the
        same as :meth:`_pinned_residuals` fits on). They stand for the population:
        counterfactuals of a few source cells differ in their mean change by which cells were
        drawn (a cell with no count of a gene cannot lose it), and the model's estimate of a
        perturbation's mean change should not.
        """
        module = self.module
        control, _ = self._control_expression(self.adata)
        rows = np.arange(control.shape[0])
        z, standardized = reference_cells(module, control, rows, REFERENCE_CELLS, self.seed_)
        logged = standardized * module.gene_scale + module.gene_center
        return ReferenceCells(z, standardized, logged, module.unperturbed(z))

    def _cells_to_anndata(
        self, blocks: list[np.ndarray], obs: pd.DataFrame, return_mean: bool, group_key: str
    ) -> ad.AnnData:
        X = np.concatenate(blocks).astype(np.float32)
        obs = obs.reset_index(drop=True)
        if return_mean:
            groups = obs[group_key].astype(str).to_numpy()
            order = list(dict.fromkeys(obs[group_key].tolist()))
            means = np.stack([X[groups == str(g)].mean(axis=0) for g in order])
            keep = [c for c in obs.columns if c != "control_cell"]
            mean_obs = obs.drop_duplicates(group_key)[keep].reset_index(drop=True)
            mean_obs.index = [str(g) for g in order]
            return ad.AnnData(means, obs=mean_obs, var=pd.DataFrame(index=self.var_names_))
        obs.index = [f"{g}_{i}" for i, g in enumerate(obs[group_key].astype(str))]
        return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=self.var_names_))

    def _control_expression(
        self, adata: ad.AnnData | None
    ) -> tuple[np.ndarray | sp.spmatrix, np.ndarray]:
        adata = self.adata if adata is None else adata
        check_model_genes(adata, self.var_names_)
        labels = perturbation_labels(adata.obs, self.perturbation_key_)
        check_control_label(labels, self.control_label_, self.perturbation_key_)
        rows = np.flatnonzero(labels == self.control_label_)
        expression = registered_expression(self.adata_manager, adata)
        return expression[rows], adata.obs_names[rows].to_numpy()


def _reference_change(module, reference: ReferenceCells, weights_row, targets) -> torch.Tensor:
    """Mean change of the ``reference`` cells' counterfactuals under one intervention."""
    z, logged = reference.z, reference.logged
    outputs = module.generative(
        z, weights_row.expand(z.shape[0], -1), targets=targets, unperturbed=reference.unperturbed
    )
    drive = outputs["prediction"] - outputs["control_prediction"]
    return (module.moved_log_expression(logged, drive) - logged).mean(dim=0)


def _penetrance_levels(penetrance: float | Sequence[float]) -> list[float]:
    """Return the penetrance levels as floats, checked to lie in [0, 1]."""
    levels = np.atleast_1d(np.asarray(penetrance, dtype=float)).ravel()
    if levels.size == 0:
        raise ValueError("penetrance is empty; pass levels in [0, 1], e.g. (0, 0.5, 1).")
    bad = levels[~((levels >= 0) & (levels <= 1))]  # NaN fails both comparisons
    if bad.size:
        raise ValueError(
            f"penetrance must lie in [0, 1] (0: unperturbed, 1: the full predicted effect), "
            f"got {bad.tolist()}: scaling a shift beyond what the model learned is an "
            "extrapolation it cannot support. Use levels in [0, 1]."
        )
    return levels.tolist()
