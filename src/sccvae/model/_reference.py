"""What a trained model remembers of its training cells, and the checks that compare with it.

At the end of :meth:`~sccvae.SCCVAE.train` the model keeps a small summary of its training
cells, :func:`training_reference` (``model.training_reference_``, saved with the model), on
the log-normalised scale (counts are log-normalised first):

- the mean expression of the training control cells;
- each gene's lowest and highest value in any training cell;
- the largest mean change of any training perturbation (its Euclidean norm over the genes)
  and which perturbation it was.

Two checks read it:

- :func:`flag_extrapolation`: a predicted perturbation that was not a training label is
  *extrapolated* when its mean change is larger than every training perturbation's, or when
  a gene's predicted mean leaves the range of that gene in the training cells. Nothing
  observed supports such a prediction; :meth:`~sccvae.SCCVAE.predict` flags it in
  ``obs["extrapolated"]`` and warns.
- :func:`check_loaded_data`: loading a model onto an AnnData whose control cells are not
  those of training (another cell type, another screen with the same genes) makes every
  prediction start from those cells; :meth:`~sccvae.SCCVAE.load` warns.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from .._constants import REGISTRY_KEYS
from .._inputs import CHUNK, dense, registered_expression, registered_label_codes
from .._perturbations import parse_perturbation, perturbation_labels

#: Root mean square over genes of the difference between two control means, in control
#: standard deviations (the model's gene scale), above which :func:`check_loaded_data` says
#: the control cells differ from training, unless sampling explains more (three standard
#: errors of the difference of two means, ``3 sqrt(1/n + 1/m)``: 1.0 for 10 cells against
#: 90). On perturbench's devel file, a subset of Norman 2019's 100 control cells differs
#: from their mean by at most 0.14 (10 cells), the strongest Norman perturbation's cells by
#: 0.70, McFaline-Figueroa 2023's glioblastoma control cells by 3.7.
CONTROL_SHIFT_THRESHOLD = 0.5


#: How far (in control standard deviations of the gene, the model's gene scale) a gene's
#: predicted mean may leave the gene's range in the training cells before
#: :func:`flag_extrapolation` calls it outside.
RANGE_LEEWAY = 0.1


def _log_rows(model, adata, rows: np.ndarray):
    """Yield the log-normalised expression of ``rows`` of ``adata``, a chunk at a time."""
    expression = registered_expression(model.adata_manager, adata)
    module = model.module
    for start in range(0, rows.size, CHUNK):
        block = dense(expression[rows[start : start + CHUNK]])
        x = torch.as_tensor(block, dtype=torch.float32, device=model.device)
        yield rows[start : start + CHUNK], module.log_expression(x).double().cpu().numpy()


@torch.no_grad()
def training_reference(model, train_idx: Sequence[int]) -> dict:
    """Summarise the training cells of ``model`` (see the module docstring).

    Parameters
    ----------
    model
        A :class:`~sccvae.SCCVAE` whose ``module.label_changes`` hold the training labels'
        observed changes (:meth:`~sccvae.SCCVAE.fit_unseen_maps`).
    train_idx
        Positions of the training cells in ``model.adata``.

    Returns
    -------
    ``control_mean``, ``gene_min``, ``gene_max`` (per gene), ``largest_change`` and
    ``largest_change_label``, and ``n_control`` (training control cells).
    """
    rows = np.sort(np.asarray(train_idx, dtype=np.int64))
    codes = registered_label_codes(model.adata_manager)
    is_control = model.module.label_is_control.cpu().numpy()[codes]
    n_genes = model.module.n_input
    low, high = np.full(n_genes, np.inf), np.full(n_genes, -np.inf)
    control_sum, n_control = np.zeros(n_genes), 0
    for chunk, logged in _log_rows(model, model.adata, rows):
        low, high = np.minimum(low, logged.min(axis=0)), np.maximum(high, logged.max(axis=0))
        control = is_control[chunk]
        control_sum += logged[control].sum(axis=0)
        n_control += int(control.sum())
    module = model.module
    changes = (module.label_changes * module.gene_scale)[module.label_observed]
    norms = torch.linalg.norm(changes.double(), dim=1).cpu().numpy()
    labels = np.asarray(_registered_labels(model), dtype=object)[
        module.label_observed.cpu().numpy()
    ]
    largest = int(np.argmax(norms)) if norms.size else None
    return {
        "control_mean": (control_sum / max(n_control, 1)).astype(np.float32),
        "gene_min": low.astype(np.float32),
        "gene_max": high.astype(np.float32),
        "largest_change": float(norms[largest]) if largest is not None else float("inf"),
        "largest_change_label": str(labels[largest]) if largest is not None else None,
        "n_control": n_control,
    }


@torch.no_grad()
def flag_extrapolation(
    model,
    requested: Sequence[str],
    canonical_labels: Sequence[str],
    means: torch.Tensor,
    source_mean: torch.Tensor,
    trained: Sequence[str],
) -> np.ndarray:
    """Flag the predictions that go beyond the training data, and warn about them.

    Parameters
    ----------
    model
        The trained :class:`~sccvae.SCCVAE`.
    requested, canonical_labels
        The predicted labels as requested and in canonical form.
    means
        Mean predicted expression of each label (labels x genes, log-normalised).
    source_mean
        Mean log-normalised expression of the source control cells.
    trained
        The training perturbations, in canonical form: never flagged.

    Returns
    -------
    One bool per label: not a training label, and a mean change larger than any training
    perturbation's or a gene's mean outside its training range. ``False`` throughout for a
    model without a reference (saved before it existed).
    """
    reference = getattr(model, "training_reference_", None)
    flags = np.zeros(len(requested), dtype=bool)
    if not reference:
        return flags
    trained = set(trained) | {model.control_label_}
    means = means.double().cpu().numpy()
    norms = np.linalg.norm(means - source_mean.double().cpu().numpy(), axis=1)
    # a tenth of a control standard deviation (at least 0.01 log units) of leeway: a gene
    # that no training cell expresses is otherwise "above" its range by float noise
    leeway = RANGE_LEEWAY * model.module.gene_scale.double().cpu().numpy()
    above = means > reference["gene_max"].astype(np.float64) + leeway
    below = means < reference["gene_min"].astype(np.float64) - leeway
    reasons = {}
    for row, (label, canon) in enumerate(zip(requested, canonical_labels, strict=True)):
        if canon in trained or label in reasons:
            continue
        why = []
        if norms[row] > reference["largest_change"]:
            why.append(
                f"a mean change of norm {norms[row]:.2f}, larger than any training "
                f"perturbation's (at most {reference['largest_change']:.2f}, "
                f"{reference['largest_change_label']})"
            )
        outside = np.flatnonzero(above[row] | below[row])
        if outside.size:
            beyond = np.maximum(
                means[row, outside] - reference["gene_max"][outside],
                reference["gene_min"][outside] - means[row, outside],
            )
            gene = int(outside[np.argmax(beyond)])
            bound = reference["gene_max" if above[row, gene] else "gene_min"][gene]
            side = "above its highest" if above[row, gene] else "below its lowest"
            why.append(
                f"{outside.size} gene(s) with a predicted mean outside their range in the "
                f"training cells, e.g. {model.var_names_[gene]} at {means[row, gene]:.2f}, "
                f"{side} value in any training cell ({bound:.2f})"
            )
        flags[row] = bool(why)
        if why:
            reasons[label] = "; ".join(why)
    if reasons:
        shown = [f"{label}: {why}" for label, why in list(reasons.items())[:5]]
        more = f" (and {len(reasons) - 5} more)" if len(reasons) > 5 else ""
        warnings.warn(
            f"The predictions of {len(reasons)} perturbation(s) go beyond anything in the "
            f"training data (flagged in obs['extrapolated']): {' | '.join(shown)}{more}. No "
            "observed perturbation supports them: treat them as the model's extrapolation, "
            f"not as an estimate. {_hint(model, reasons)}",
            UserWarning,
            stacklevel=_outside_the_package(),
        )
    return flags


def _outside_the_package() -> int:
    """Return the stack level of the first caller outside sccvae and torch.

    The checks run inside torch's ``no_grad`` / ``inference_mode`` wrappers, whose depth
    depends on the torch version: a warning should point at the user's line whatever it is.
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in (
        "sccvae",
        "torch",
    ):
        frame, level = frame.f_back, level + 1
    return level


def _hint(model, reasons: dict[str, str]) -> str:
    """Return what the user can do about extrapolated predictions."""
    targets = {
        t
        for label in reasons
        for t in parse_perturbation(label, model.control_label_, model.combination_delimiter_)
    }
    nodes = set(model.latent_node_names_) if model.latent_nodes_ == "genes" else set()
    coarse = sorted(t for t in targets if t in set(model.var_names_) and t not in nodes)
    if coarse and model.latent_nodes_ == "genes":
        return (
            f"Measured genes that are not latent nodes ({coarse[:5]}) go through the nodes that "
            "carry their variation, a coarse route; make them nodes "
            f"(SCCVAE(adata, node_genes={coarse[:5]!r})) and compare."
        )
    return (
        "Compare with the trained perturbations closest to them, or with a partial "
        "knock-down (simulate_knockdown)."
    )


def _registered_labels(model) -> list[str]:
    """Return the model's training labels, in the order of its label codes."""
    state = model.adata_manager.get_state_registry(REGISTRY_KEYS.PERTURBATION_KEY)
    return [str(label) for label in state.categorical_mapping]


def check_loadable_labels(registry: dict, adata) -> None:
    """Raise a ValueError when ``adata`` has labels the saved model was not trained on.

    scvi-tools cannot register such cells onto the model's label codes (its error names
    ``extend_categories``); this says which labels and what to do, before anything is
    written into ``adata``.
    """
    setup = registry["setup_args"]
    state = registry["field_registries"][REGISTRY_KEYS.PERTURBATION_KEY]["state_registry"]
    known = {str(label) for label in state["categorical_mapping"]}
    labels = perturbation_labels(adata.obs, setup["perturbation_key"])
    new = sorted(set(np.unique(labels)) - known)
    if new:
        raise ValueError(
            f"Cannot load the model onto this AnnData: {len(new)} label(s) of "
            f"adata.obs[{setup['perturbation_key']!r}] were not in its training data "
            f"({new[:8]}). Load it onto cells of the training labels (e.g. "
            f"adata[adata.obs[{setup['perturbation_key']!r}] == {setup['control_label']!r}] "
            "as a source of control cells), or predict new perturbations with "
            "model.predict([...]), which needs no cells of them."
        )


@torch.no_grad()
def check_loaded_data(model, adata) -> None:
    """Warn when ``adata``'s control cells are not those the model was trained on.

    Predictions start from the control cells of the AnnData a model is loaded onto
    (``predict`` draws its source cells there). They are compared with the training control
    cells by the root mean square over genes of the difference of their means, in control
    standard deviations (the model's gene scale): above :data:`CONTROL_SHIFT_THRESHOLD` and
    three standard errors of that difference, they are other cells and a UserWarning says
    so, naming the training labels ``adata`` lacks. Without control cells it warns too. A
    subset of the training data (e.g. its control cells alone) passes silently.
    """
    labels = perturbation_labels(adata.obs, model.perturbation_key_)
    rows = np.flatnonzero(labels == model.control_label_)
    reference = getattr(model, "training_reference_", None)
    if not rows.size:
        reason = (
            f"it has no {model.control_label_!r} cells, and predictions start from control "
            "cells: pass predict(adata=...) an AnnData with the model's genes and control cells"
        )
    elif reference:
        total = np.zeros(model.module.n_input)
        for _, logged in _log_rows(model, adata, rows):
            total += logged.sum(axis=0)
        scale = model.module.gene_scale.double().cpu().numpy()
        shift = (total / rows.size - reference["control_mean"]) / scale
        rms = float(np.sqrt(np.mean(shift**2)))
        sampling = 3.0 * np.sqrt(1.0 / rows.size + 1.0 / max(reference["n_control"], 1))
        limit = max(CONTROL_SHIFT_THRESHOLD, sampling)
        if rms <= limit:
            return
        registered = _registered_labels(model)
        missing = sorted(set(registered) - set(np.unique(labels)))
        absent = (
            f"; {len(missing)} of its {len(registered)} training labels are absent "
            f"({missing[:5]}{' ...' if len(missing) > 5 else ''})"
            if missing
            else ""
        )
        reason = (
            f"its {rows.size} control cells differ from the {reference['n_control']} training "
            f"control cells by {rms:.2f} control standard deviations (root mean square over "
            f"genes; cells of the same kind differ by up to {limit:.2f}){absent}. Predictions "
            "start from these control cells, so they describe perturbations of cells the "
            "model never saw: load the model onto its training data (or pass its control "
            "cells as predict(adata=...)), or train a model on this data"
        )
    else:
        return
    warnings.warn(
        f"The AnnData the model was loaded onto is not its training data: {reason}.",
        UserWarning,
        stacklevel=_outside_the_package(),
    )
