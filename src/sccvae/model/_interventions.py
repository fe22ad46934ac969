"""Turning perturbation labels into the tensors of a shift intervention.

:class:`~sccvae.SCCVAEModule` shifts latent nodes by ``sum_t w_t (c_t a_t + gamma_t s)``.
This module describes any set of targets in those terms: a training target by its learned
values; a target absent from training by values predicted from the training targets only
(never from its own cells):

- a **node gene** shifts its own node by ``c``, the typical training ``c`` on a scale chosen
  after training by leave-one-target-out (:data:`UNSEEN_MAGNITUDE_RULES`);
- a **measured gene that is not a node** shifts the nodes that carry its variation: with
  ``beta`` the regression of its standardised expression on the node values of control
  cells, the shift ``c beta / |beta|^2`` moves the linear prediction of the gene by ``c``;
- any **other embedded target** (e.g. an unmeasured gene with a user embedding) takes the
  perturbation encoder's profile over nodes (softmax or signed direction) and a magnitude
  from a ridge map of the embedding fitted on the training targets;
- every target adds the shared shift with the mean training strength ``gamma``; with
  observed training labels, an unseen target instead borrows a weighted mean of the
  training interventions (:mod:`sccvae.model._borrowing`) whose decoded change is pinned to
  the same weighting of their observed changes.

:class:`InterventionMixin` builds them for :class:`~sccvae.SCCVAE` from perturbation labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .._inputs import dense, log_normalize, registered_expression
from ._borrowing import borrowing_weights, control_signatures, similarities
from ._gap import fitted_gap

#: How the own-node shift ``c`` of an unseen node gene is predicted from the training
#: targets' ``c`` (standardised units):
#:
#: - ``"standardized"``: the mean ``c`` (same number of control standard deviations);
#: - ``"log"``: the mean ``c * scale`` divided by the gene's scale (same change of
#:   log-normalised expression);
#: - ``"relative"``: the mean ``c * scale / center`` times the gene's ``center / scale``
#:   (same fraction of the gene's mean log-normalised expression).
UNSEEN_MAGNITUDE_RULES = ("standardized", "log", "relative")


def unseen_magnitude(
    rule: str,
    magnitudes: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    new_center: np.ndarray,
    new_scale: np.ndarray,
) -> np.ndarray:
    """Own-node shifts of new node genes from the training ones under ``rule``.

    ``magnitudes``, ``center`` and ``scale`` describe the training targets; ``new_center``
    and ``new_scale`` the new genes.
    """
    if rule == "standardized":
        return np.full(np.shape(new_scale), np.mean(magnitudes))
    if rule == "log":
        return np.mean(magnitudes * scale) / new_scale
    if rule == "relative":
        ratio = np.mean(magnitudes * scale / np.maximum(center, 1e-3))
        return ratio * np.maximum(new_center, 1e-3) / new_scale
    raise ValueError(
        f"Unknown unseen magnitude rule {rule!r}; use one of {UNSEEN_MAGNITUDE_RULES}."
    )


def choose_unseen_magnitude(
    magnitudes: np.ndarray, center: np.ndarray, scale: np.ndarray
) -> tuple[str, dict[str, float]]:
    """Return the rule whose leave-one-target-out prediction of the training ``c`` errs least.

    The error is measured on the log-normalised scale (``c * scale``), where knock-downs of
    different genes are comparable. With fewer than 3 training targets, ``"standardized"``.
    """
    n = len(magnitudes)
    if n < 3:
        return "standardized", {}
    errors = {}
    for rule in UNSEEN_MAGNITUDE_RULES:
        squared = []
        for i in range(n):
            others = np.arange(n) != i
            predicted = unseen_magnitude(
                rule,
                magnitudes[others],
                center[others],
                scale[others],
                center[i : i + 1],
                scale[i : i + 1],
            )[0]
            squared.append(((predicted - magnitudes[i]) * scale[i]) ** 2)
        errors[rule] = float(np.mean(squared))
    return min(errors, key=errors.get), errors


@torch.no_grad()
def fit_unseen_maps(
    module, ridge_penalties: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
):
    """Fit how targets absent from training get their shift, from the training targets only.

    Node genes: the rule of :data:`UNSEEN_MAGNITUDE_RULES` that predicts the training node
    genes' ``c_t`` best leave-one-target-out. Other targets: a ridge regression of the
    training targets' ``c_t`` on their embeddings, penalty by leave-one-out, written into
    ``module.magnitude_coef`` / ``magnitude_intercept``. Never uses the cells of the
    perturbation being predicted.

    Returns
    -------
    The chosen rule and every rule's leave-one-out error (``None`` and ``{}`` without
    training node genes).
    """
    nodes = module.target_nodes.cpu().numpy()
    magnitudes = module.magnitude.detach().cpu().numpy()
    on_nodes = nodes >= 0
    rule, errors = None, {}
    if on_nodes.any():
        genes = module.node_genes.cpu().numpy()[nodes[on_nodes]]
        center, scale = module.gene_center.cpu().numpy(), module.gene_scale.cpu().numpy()
        rule, errors = choose_unseen_magnitude(magnitudes[on_nodes], center[genes], scale[genes])
    others = ~on_nodes
    if others.sum() >= 2:
        embedding = module.target_embedding.double().cpu()[torch.as_tensor(others)]
        target = torch.as_tensor(magnitudes[others]).double()
        _, coef, intercept = ridge_loo(embedding, target, ridge_penalties)
        module.magnitude_coef.copy_(coef.float())
        module.magnitude_intercept.copy_(intercept.float())
    elif others.any():
        module.magnitude_intercept.fill_(float(magnitudes[others].mean()))
    return rule, errors


@dataclass
class Intervention:
    """Perturbations as target weights plus a description of the targets involved.

    Attributes
    ----------
    weights
        ``perturbations x targets`` 0/1 weights.
    targets
        Keys ``node``, ``embedding``, ``profile`` (where each target's own shift goes),
        ``magnitude`` (``c_t``), ``shared_strength`` (``gamma_t``), ``residual`` and
        ``correction`` (a trained target's calibrated residual and latent correction, zero
        for unseen targets), as
        :meth:`~sccvae.SCCVAEModule.generative` takes them.
    seen
        Whether every target of each perturbation was seen in training.
    names
        The targets, in column order.
    """

    weights: torch.Tensor
    targets: dict[str, torch.Tensor]
    seen: list[bool]
    names: list[str]

    def scaled(self, factor: float) -> dict[str, torch.Tensor]:
        """Return the targets with every shift scaled by ``factor`` (a partial knock-down)."""
        return {
            **self.targets,
            "magnitude": self.targets["magnitude"] * factor,
            "shared_strength": self.targets["shared_strength"] * factor,
            "residual": self.targets["residual"] * factor,
            "correction": self.targets["correction"] * factor,
        }


def ridge_loo(x: torch.Tensor, y: torch.Tensor, penalties: Sequence[float]):
    """Ridge regression of ``y`` on ``x`` with the least leave-one-out error.

    Penalties are multiples of the mean squared norm of the centred ``x``, so the grid does
    not depend on the embedding's scale.
    """
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc, yc = x - mean_x, y - mean_y
    n = xc.shape[0]
    gram = xc @ xc.T
    scale = float(torch.diagonal(gram).mean().clamp_min(1e-12))
    identity = torch.eye(n, dtype=x.dtype)
    best = (np.inf, penalties[0], torch.zeros(x.shape[1], dtype=x.dtype))
    for penalty in penalties:
        inverse = torch.linalg.solve(gram + penalty * scale * identity, identity)
        hat = gram @ inverse
        leverage = (1.0 - torch.diagonal(hat)).clamp_min(1e-6)
        residual = (yc - hat @ yc) / leverage
        loo = float((residual**2).mean()) if n > 1 else 0.0
        if loo < best[0]:
            best = (loo, penalty, xc.T @ (inverse @ yc))
    _, penalty, coef = best
    return penalty, coef, mean_y - mean_x @ coef


class InterventionMixin:
    """How :class:`~sccvae.SCCVAE` turns perturbation labels into an :class:`Intervention`."""

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

    def _pinned_residuals(self, shifts: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
        """Gene residuals that make each latent shift's mean change the ``wanted`` one.

        On the model's reference cells (:meth:`_reference_population`, the seeded draw of
        training control cells that predictions are pinned on), the change the structure
        predicts for each shift is completed by the gene-wise shift that brings its mean,
        saturated and clipped at the expression floor, to ``wanted`` (standardised).
        """
        module = self.module
        reference = self._reference_population()
        z = reference.z
        unperturbed = module.standardized_prediction(reference.unperturbed["prediction"])
        residuals = []
        for shift, target in zip(shifts, wanted, strict=True):
            shifted = module.decode(module.scm(z, shift.expand_as(z)))
            drive = module.standardized_prediction(shifted) - unperturbed
            residuals.append(fitted_gap(module, reference.standardized, drive, target))
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
