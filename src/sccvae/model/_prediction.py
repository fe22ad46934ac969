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

from .._inputs import CHUNK, check_model_genes, dense, log_normalize, registered_expression
from .._perturbations import canonical, check_control_label, perturbation_labels
from ._borrowing import borrowing_weights, control_signatures, similarities
from ._calibration import fitted_gap, reference_cells
from ._interventions import Intervention, unseen_magnitude
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
            change. ``False`` returns decoder outputs ``g(u)`` for ``z`` sampled from the
            posterior.
        log_normalized
            For ``likelihood="nb"``: return the cells' log-normalised expression
            (``normalize_total(1e4)`` + ``log1p``), the scale their counterfactuals are made
            on, instead of counts. Log-normalising the predicted counts yourself moves every
            gene of a cell whose total the perturbation changed, a second time: compare
            predictions with log-normalised observed cells on this scale. No effect for
            ``"gaussian"`` (``X`` already holds log-normalised expression).

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
        blocks, obs, means = [], [], []
        for row, label in enumerate(perturbations):
            cells = self._decode_intervention(
                z, library, intervention.weights[row], intervention.targets, source, log_normalized
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
    ) -> ad.AnnData:
        """Cells under a perturbation whose shift is scaled from 0 to its full magnitude.

        Scaling the shift by a penetrance in [0, 1] mimics a partial knock-down (or
        activation): 0 gives the model's unperturbed cells, 1 its full prediction. The same
        control cells are used at every level, so the result is a dose-response per gene; a
        node gene's own expression moves linearly with the penetrance in every cell until it
        reaches the expression floor (zero counts). ``counterfactual`` is
        as in :meth:`predict` (penetrance 0 then returns the source cells themselves).

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
        blocks, obs = [], []
        for level in penetrance:
            targets = intervention.scaled(level)
            cells = self._decode_intervention(z, library, intervention.weights[0], targets, source)
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

    def _intervention(self, perturbations: Sequence[str]) -> Intervention:
        """Describe ``perturbations`` (labels) as a shift intervention of the module.

        Raises a ValueError naming every target that cannot be represented and the fix.
        """
        parsed = [self._parse(label) for label in perturbations]
        names = sorted({t for targets in parsed for t in targets})
        module, device = self.module, self.device
        seen = {t: i for i, t in enumerate(self.targets_)}
        node_of = (
            {g: i for i, g in enumerate(self.latent_node_names_)}
            if self.latent_nodes_ == "genes"
            else {}
        )
        measured = set(self.var_names_)
        embedded = set(self.gene_embedding_.index)
        # with gene nodes any measured gene can be represented; abstract nodes need an embedding
        representable = embedded | (
            set(node_of) | measured if self.latent_nodes_ == "genes" else set()
        )
        unknown = [t for t in names if t not in seen and t not in representable]
        if unknown:
            raise ValueError(
                f"Cannot represent perturbation target(s) {unknown}: {self._unknown_hint()}."
            )

        n = len(names)
        column_of = {t: i for i, t in enumerate(names)}
        with torch.no_grad():
            embedding = torch.as_tensor(
                self.gene_embedding_.reindex(names).fillna(0.0).to_numpy(np.float32), device=device
            )
            targets = {
                "node": torch.full((n,), -1, dtype=torch.long, device=device),
                "embedding": embedding,
                "magnitude": module.predicted_magnitude(embedding),
                "shared_strength": module.shared_strength.detach().mean().expand(n).clone(),
                "residual": torch.zeros(n, module.n_input, device=device),
                "correction": torch.zeros(n, module.n_latent, device=device),
            }
            for t in names:
                if t not in seen and t in node_of:
                    targets["node"][column_of[t]] = node_of[t]
            # a trained target is described exactly as the module describes it in training
            trained = [(column_of[t], seen[t]) for t in names if t in seen]
            if trained:
                columns, rows = (
                    torch.as_tensor(v, device=device) for v in zip(*trained, strict=True)
                )
                for key, value in module.training_targets().items():
                    targets[key][columns] = value.detach()[rows]
            nodes, magnitude = targets["node"], targets["magnitude"]
            profile = module.target_profile(nodes, embedding)
            new_nodes = [t for t in names if t not in seen and t in node_of]
            proxies = [
                t
                for t in names
                if t not in seen
                and t not in node_of
                and self.latent_nodes_ == "genes"
                and t in measured
            ]
            if new_nodes or proxies:
                column = {g: i for i, g in enumerate(self.var_names_)}
                genes = [column[t] for t in new_nodes + proxies]
                values = self._unseen_node_magnitudes(genes)
                for t, value in zip(new_nodes + proxies, values, strict=True):
                    magnitude[column_of[t]] = float(value)
            if proxies:
                directions = self._proxy_directions([column[t] for t in proxies])
                for t, direction in zip(proxies, directions, strict=True):
                    profile[column_of[t]] = direction
            targets["profile"] = profile
            targets["propagation"] = torch.ones(n, device=device)
            unseen = [t for t in names if t not in seen]
            if unseen and module.label_observed.any():
                signs = [float(np.sign(magnitude[column_of[t]].item()) or -1.0) for t in unseen]
                shifts, residuals = self._borrowed_interventions(unseen, signs)
                rows = torch.as_tensor([column_of[t] for t in unseen], device=device)
                targets["correction"][rows] = shifts
                targets["residual"][rows] = residuals
                targets["shared_strength"][rows] = 0.0
            for t in new_nodes:
                targets["propagation"][column_of[t]] = self.propagation_weight_
        weights = torch.zeros(len(parsed), n, device=device)
        for row, target_set in enumerate(parsed):
            weights[row, [column_of[t] for t in target_set]] = 1.0
        all_seen = [all(t in seen for t in target_set) for target_set in parsed]
        return Intervention(weights, targets, all_seen, names)

    def _unknown_hint(self) -> str:
        if list(self.gene_embedding_.columns) == self.targets_:
            return (
                "one-hot embeddings only know the training targets; use perturbation_embedding="
                "'coexpression' (measured genes) or a DataFrame of gene embeddings"
            )
        return (
            "they are neither measured genes nor rows of the perturbation embedding; pass "
            "perturbation_embedding=DataFrame with these genes when building the model"
        )

    def _unseen_node_magnitudes(self, genes: Sequence[int]) -> np.ndarray:
        """Own-node shift ``c`` of genes absent from training, by :attr:`unseen_magnitude_`."""
        module = self.module
        nodes = module.target_nodes.cpu().numpy()
        center, scale = module.gene_center.cpu().numpy(), module.gene_scale.cpu().numpy()
        trained = nodes >= 0
        if not trained.any():
            return np.full(len(genes), float(module.magnitude.detach().mean()))
        node_genes = module.node_genes.cpu().numpy()[nodes[trained]]
        return unseen_magnitude(
            self.unseen_magnitude_,
            module.magnitude.detach().cpu().numpy()[trained],
            center[node_genes],
            scale[node_genes],
            center[np.asarray(genes)],
            scale[np.asarray(genes)],
        )

    @torch.no_grad()
    def _borrowed_interventions(
        self, targets: Sequence[str], signs: Sequence[float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent shift and residual each unseen target borrows from the training labels.

        Measured genes weigh the training interventions by the similarity of their changes
        to the gene's signed coexpression signature (:mod:`sccvae.model._borrowing`); other targets
        borrow their plain mean.
        """
        module = self.module
        rows = torch.nonzero(module.label_observed).ravel()
        label_targets = module.label_targets[rows]
        # what a training label did to the other genes: its node-gene targets' own shifts
        # and their own genes' changes are not borrowed
        trained = module.training_targets()
        own = module.target_shifts(trained) * (trained["node"] >= 0)[:, None]
        label_shifts = module.shift(label_targets) - label_targets @ own
        label_columns = self._label_columns(rows)
        changes = module.label_changes[rows].clone()
        for row, columns in enumerate(label_columns):
            changes[row, columns] = 0.0
        weights = np.full((len(targets), rows.numel()), 1.0 / rows.numel())
        column = {g: i for i, g in enumerate(self.var_names_)}
        measured = [i for i, t in enumerate(targets) if t in column]
        if measured and np.isfinite(self.borrowing_temperature_):
            control = self._log_expression()
            columns = [column[targets[i]] for i in measured]
            signatures = control_signatures(control, columns) * np.asarray(signs)[measured, None]
            significance = module.label_significance[rows].cpu().numpy()
            similarity = similarities(signatures, columns, significance, label_columns)
            weights[measured] = borrowing_weights(similarity, self.borrowing_temperature_)
        weights = torch.as_tensor(weights, dtype=torch.float32, device=self.device)
        shifts = weights @ label_shifts
        return shifts, self._pinned_residuals(shifts, weights @ changes)

    def _pinned_residuals(
        self, shifts: torch.Tensor, wanted: torch.Tensor, n_cells: int = 256
    ) -> torch.Tensor:
        """Gene residuals that make each latent shift's mean change the ``wanted`` one.

        On a seeded draw of training control cells (as the calibration uses), the change the
        structure predicts for each shift is completed by the gene-wise shift that brings its
        mean, saturated and clipped at the expression floor, to ``wanted`` (standardised).
        """
        module = self.module
        control, _ = self._control_expression(self.adata)
        rows = np.arange(control.shape[0])
        z, cells = reference_cells(module, control, rows, n_cells, self.seed_)
        reference = module.standardized_prediction(module.decode(module.scm(z)))
        residuals = []
        for shift, target in zip(shifts, wanted, strict=True):
            shifted = module.decode(module.scm(z, shift.expand_as(z)))
            drive = module.standardized_prediction(shifted) - reference
            residuals.append(fitted_gap(module, cells, drive, target))
        return torch.stack(residuals)

    def _label_columns(self, rows: torch.Tensor) -> list[list[int]]:
        """Return the measured genes (columns) that each registered label of ``rows`` targets."""
        column = {g: i for i, g in enumerate(self.var_names_)}
        targets = self.module.label_targets[rows].cpu().numpy()
        return [
            [column[self.targets_[t]] for t in np.flatnonzero(row) if self.targets_[t] in column]
            for row in targets
        ]

    def _log_expression(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Cells of the training AnnData, log-normalised, dense float64 (control cells if None)."""
        if rows is None:
            cells, _ = self._control_expression(self.adata)
        else:
            cells = registered_expression(self.adata_manager, self.adata)[rows]
        if self.module.likelihood == "nb":
            cells = log_normalize(cells)
        return dense(cells).astype(np.float64)

    def _proxy_directions(self, genes: Sequence[int], n_cells: int = 2000) -> torch.Tensor:
        """Node shift per unit of each gene's standardised expression, for non-node genes.

        ``beta / |beta|^2`` with ``beta`` the ridge regression of the gene's standardised
        expression on the posterior-mean node values of (up to ``n_cells``) control cells.
        """
        control, _ = self._control_expression(self.adata)
        rows = np.random.default_rng(self.seed_).permutation(control.shape[0])[:n_cells]
        x = torch.as_tensor(dense(control[np.sort(rows)]), dtype=torch.float32, device=self.device)
        u = self.module.scm(self.module.inference(x)["qz"].loc)
        y = self.module.standardize(x)[:, torch.as_tensor(list(genes), device=self.device)]
        u, y = u - u.mean(0), y - y.mean(0)
        gram = u.T @ u
        penalty = 1e-3 * torch.diagonal(gram).mean().clamp_min(1e-8)
        beta = torch.linalg.solve(
            gram + penalty * torch.eye(gram.shape[0], device=self.device), u.T @ y
        ).T
        return beta / (beta**2).sum(dim=1, keepdim=True).clamp_min(1e-12)

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
        self, z, library, weights_row, targets, source=None, log_normalized: bool = False
    ) -> torch.Tensor:
        """Predicted cells under one intervention; with ``source`` cells, their counterfactuals.

        ``log_normalized``: on the log-normalised scale rather than the input's (counts).
        """
        out = []
        for start in range(0, z.shape[0], CHUNK):
            z_chunk = z[start : start + CHUNK]
            outputs = self.module.generative(
                z_chunk,
                weights_row.expand(z_chunk.shape[0], -1),
                library=library[start : start + CHUNK],
                targets=targets,
            )
            if source is None:
                cells = self.module.expression_mean(outputs["prediction"], outputs["library"])
                if log_normalized:
                    cells = self.module.log_expression(cells)
            else:
                cells = self.module.abduct(
                    source[start : start + CHUNK],
                    outputs["prediction"],
                    outputs["control_prediction"],
                    log_normalized=log_normalized,
                )
            out.append(cells)
        return torch.cat(out)

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
