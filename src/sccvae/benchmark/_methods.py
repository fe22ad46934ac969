"""The methods a benchmark compares, behind one fit / predict protocol.

Every method is one :class:`Method` entry of :data:`REGISTRY`: a description, whether it
needs an embedding of the targets, and a ``fit`` function that takes a fold's training data
and the run's settings and returns something with ``predict(labels) -> AnnData``. Adding a
baseline or an SCCVAE variant is one entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._constants import PAPER_MODEL, PAPER_TRAINING
from ._errors import BenchmarkInputError
from ._progress import epoch_callback

if TYPE_CHECKING:
    from anndata import AnnData

    from ._fold import Fold
    from ._settings import RunSettings

logger = logging.getLogger(__name__)

#: SCCVAE's training epochs in the benchmark: ``None`` is the model's own default (about
#: 3,000 optimiser steps, :func:`sccvae.model._model.default_epochs`).
DEFAULT_MAX_EPOCHS: int | None = None

#: What ``max_epochs=None`` trains for, in the words of ``--help``, the log and ``config``;
#: the epochs each fold trained for are logged and in ``training.csv``.
DEFAULT_EPOCHS_TEXT = (
    "the model's default, as many epochs as give about 3,000 optimiser steps (42 per fold on "
    "the default realistic screen's unseen split)"
)

#: SCCVAE arguments the benchmark sets unless ``model_kwargs`` overrides them (none: the
#: model's defaults).
DEFAULT_MODEL_KWARGS: dict[str, Any] = {}


class Fitted:
    """A method fitted on one fold: predicts labelled cells from the fold's training cells."""

    def __init__(self, predict: Callable[[list[str]], AnnData], info: dict[str, Any] | None):
        self._predict = predict
        self.info = info

    def predict(self, labels: list[str]) -> tuple[AnnData | None, list[str]]:
        """Predict ``labels``; on failure, one by one, returning those that failed."""
        import anndata as ad

        try:
            return self._predict(labels), []
        except ValueError:
            pass
        parts, failed = [], []
        for label in labels:
            try:
                parts.append(self._predict([label]))
            except ValueError as err:
                failed.append(label)
                logger.debug("Cannot predict %s: %s", label, err)
        if not parts:
            return None, failed
        return ad.concat(parts, index_unique="-"), failed


@dataclass(frozen=True)
class Method:
    """A benchmark method.

    Attributes
    ----------
    description
        One line for ``--help`` and the docs.
    fit
        ``fit(fold, settings, progress) -> Fitted``.
    needs_embedding
        Represents targets through an embedding (so unmeasured targets need one).
    measured_only
        Predicts only targets that are measured genes (in ``var_names``), whatever the
        embedding.
    min_training
        Training perturbations whose targets it can represent that it needs to fit (0: no
        such need); checked for unseen splits before any training.
    model_kwargs
        For SCCVAE variants: the model arguments that define the variant.
    train_kwargs
        For SCCVAE variants: the :meth:`~sccvae.SCCVAE.train` arguments that define it.
    """

    description: str
    fit: Callable[..., Fitted]
    needs_embedding: bool = False
    measured_only: bool = False
    min_training: int = 0
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    train_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_sccvae(self) -> bool:
        """Whether the method trains an SCCVAE."""
        return self.fit is _fit_sccvae


# ------------------------------------------------------------------------------------- SCCVAE
def _history_summary(model) -> dict[str, Any]:
    import numpy as np

    hist = getattr(model, "history", None) or {}
    out: dict[str, Any] = {}
    if "train_loss_epoch" in hist:
        out["train_loss_last"] = float(np.asarray(hist["train_loss_epoch"]).ravel()[-1])
    if "validation_loss" in hist:
        val = np.asarray(hist["validation_loss"]).ravel().astype(float)
        if val.size:
            out["validation_loss_last"] = float(val[-1])
            out["validation_loss_best"] = float(np.nanmin(val))
            out["validation_best_epoch"] = int(np.nanargmin(val))
    return out


def _fit_sccvae(fold: Fold, settings: RunSettings, progress, name: str) -> Fitted:
    from sccvae import SCCVAE

    kwargs = {**DEFAULT_MODEL_KWARGS, **settings.model_kwargs, **REGISTRY[name].model_kwargs}
    kwargs.setdefault("seed", settings.seed)
    likelihood = kwargs.setdefault("likelihood", settings.likelihood)
    if kwargs.get("latent_nodes", "genes") == "genes":
        kwargs.setdefault("node_genes", list(settings.measured_targets))
    adata = fold.training.copy()
    SCCVAE.setup_anndata(
        adata,
        perturbation_key=settings.perturbation_key,
        control_label=settings.control_label,
        combination_delimiter=settings.combination_delimiter,
        # "nb" models the raw counts the run kept; "gaussian" the log-normalised X
        layer=settings.counts_layer if likelihood == "nb" else None,
    )
    model = SCCVAE(adata, **kwargs)
    task = progress.add(f"  {fold.name}: training {name}", settings.max_epochs or 0)
    train_kwargs = {**settings.train_kwargs, **REGISTRY[name].train_kwargs}
    train_kwargs.setdefault("enable_progress_bar", False)
    train_kwargs.setdefault("enable_model_summary", False)
    callbacks = list(train_kwargs.pop("callbacks", []) or [])
    if task is not None:
        callbacks.append(epoch_callback(progress, task))
    start = time.perf_counter()
    model.train(
        max_epochs=settings.max_epochs,
        train_indices=fold.train_positions,
        validation_indices=fold.validation_positions,
        callbacks=callbacks,
        **train_kwargs,
    )
    seconds = time.perf_counter() - start
    progress.remove(task)
    epochs = len(model.history["train_loss"])
    logger.info("%s (%s): trained for %d epochs in %.0f s", name, fold.name, epochs, seconds)
    info = {"seconds": seconds, "epochs": epochs, **_history_summary(model)}
    # how unseen targets were described, chosen after training on the training targets
    info["unseen_magnitude"] = model.unseen_magnitude_
    info["borrowing_temperature"] = model.borrowing_temperature_
    info["propagation_weight"] = model.propagation_weight_

    def predict(labels: list[str]) -> AnnData:
        # every method is scored on the run's log-normalisation: "nb" makes its
        # counterfactuals on that scale (each source cell's counts log-normalised on their own
        # total, as the run's recipe does) and returns them there, rather than as counts that
        # a second log-normalisation would move again wherever a cell's total changed
        return model.predict(
            labels,
            n_cells=settings.n_cells,
            adata=fold.train_cells,
            seed=settings.seed,
            log_normalized=likelihood == "nb",
        )

    return Fitted(predict, info)


# ------------------------------------------------------------------------------------ baselines
def _baseline(make: Callable[[RunSettings], Any]) -> Callable[..., Fitted]:
    """Make the ``fit`` function of a baseline of :mod:`sccvae.baselines` built by ``make``."""

    def fit(fold: Fold, settings: RunSettings, progress, name: str) -> Fitted:
        model = make(settings).fit(
            fold.training,
            perturbation_key=settings.perturbation_key,
            control_label=settings.control_label,
            combination_delimiter=settings.combination_delimiter,
            train_indices=fold.train_positions,
            design=fold.training_design,
        )

        def predict(labels: list[str]) -> AnnData:
            return model.predict(labels, n_cells=settings.n_cells, seed=settings.seed)

        return Fitted(predict, None)

    return fit


def _control(settings: RunSettings):
    from sccvae.baselines import ControlBaseline

    return ControlBaseline(seed=settings.seed)


def _mean(settings: RunSettings):
    from sccvae.baselines import MeanBaseline

    return MeanBaseline(seed=settings.seed)


def _mean_target(settings: RunSettings):
    from sccvae.baselines import MeanTargetBaseline

    return MeanTargetBaseline(seed=settings.seed)


def _multireg(settings: RunSettings):
    from sccvae.baselines import MultiregBaseline

    return MultiregBaseline(seed=settings.seed)


def _additive(settings: RunSettings):
    from sccvae.baselines import AdditiveBaseline

    return AdditiveBaseline(seed=settings.seed)


def _linear(settings: RunSettings):
    from sccvae.baselines import LinearBaseline

    return LinearBaseline(seed=settings.seed, perturbation_embedding=settings.target_embedding)


def _coexpression(settings: RunSettings):
    from sccvae.baselines import CoexpressionBaseline

    return CoexpressionBaseline(seed=settings.seed)


def _knn(settings: RunSettings):
    from sccvae.baselines import KnnBaseline

    embedding = "coexpression" if settings.target_embedding is None else settings.target_embedding
    return KnnBaseline(seed=settings.seed, embedding=embedding)


def sccvae_variant(description: str, train_kwargs=None, **model_kwargs) -> Method:
    """Describe SCCVAE with other arguments, as a benchmark method.

    ``model_kwargs`` go to the model, ``train_kwargs`` to :meth:`~sccvae.SCCVAE.train` (e.g.
    ``{"plan_kwargs": {"max_kl_weight": 1.0}}``). Register it under a name with
    :func:`register_method` to run it in a benchmark.
    """
    return Method(
        description,
        _fit_sccvae,
        needs_embedding=True,
        model_kwargs=model_kwargs,
        train_kwargs=dict(train_kwargs or {}),
    )


#: Every method of the benchmark, by name.
REGISTRY: dict[str, Method] = {
    "sccvae": sccvae_variant("SCCVAE, latent nodes anchored to genes, full latent graph"),
    "sccvae_nograph": sccvae_variant(
        "SCCVAE ablation, graph='none' (shifts are not propagated between nodes)", graph="none"
    ),
    "sccvae_abstract": sccvae_variant(
        "SCCVAE ablation, the paper's model: abstract nodes, softmax intervention and the "
        "paper's loss weights and training settings",
        train_kwargs=PAPER_TRAINING,
        **PAPER_MODEL,
    ),
    "sccvae_uncalibrated": sccvae_variant(
        "SCCVAE ablation, train(calibrate=False): no per-target residual after training",
        train_kwargs={"calibrate": False},
    ),
    "control": Method("Training control cells as prediction (no change)", _baseline(_control)),
    "mean": Method("Mean change over all training perturbations", _baseline(_mean)),
    # they need a target to be measured only to move it: unmeasured targets get the mean
    "mean_target": Method(
        "Mean change, each measured target gene moved by the mean own change of the "
        "training targets",
        _baseline(_mean_target),
    ),
    "multireg": Method(
        "mean_target, plus every gene moved with a measured target by its joint ridge "
        "coefficient on the targets' genes in control cells",
        _baseline(_multireg),
    ),
    "additive": Method(
        "Sum of the components' observed single-perturbation changes", _baseline(_additive)
    ),
    "linear": Method(
        "Linear model on gene and perturbation embeddings (Ahlmann-Eltze et al. 2025)",
        _baseline(_linear),
        needs_embedding=True,
        min_training=2,
    ),
    "coexpression": Method(
        "Each gene moves by its regression slope on the target gene in control cells "
        "(measured targets only)",
        _baseline(_coexpression),
        measured_only=True,
        min_training=1,
    ),
    "knn": Method(
        "Similarity-weighted mean change of the nearest training perturbations in the "
        "target embedding",
        _baseline(_knn),
        needs_embedding=True,
        min_training=1,
    ),
}

#: Method name -> description (kept in step with :data:`REGISTRY` by :func:`register_method`).
METHODS: dict[str, str] = {name: method.description for name, method in REGISTRY.items()}


def register_method(name: str, method: Method, replace: bool = False) -> None:
    """Make ``method`` runnable by ``name`` (``run_benchmark(methods=[name])``, ``--methods``).

    A name already registered is an error unless ``replace``: a variant never silently
    takes the place of a shipped method.
    """
    if not isinstance(method, Method):
        raise TypeError(f"method must be a Method (e.g. sccvae_variant(...)), not {method!r}.")
    if name in REGISTRY and not replace:
        raise ValueError(
            f"A method named {name!r} is already registered; choose another name or pass "
            "replace=True."
        )
    REGISTRY[name] = method
    METHODS[name] = method.description


#: Methods run when none are named, per split design.
#: Ablations (``sccvae_nograph``, ``sccvae_abstract``) are run by name; the default run fits in
#: 10 minutes on 2 CPU cores.
DEFAULT_METHODS: dict[str, tuple[str, ...]] = {
    "unseen": (
        "sccvae",
        "control",
        "mean",
        "mean_target",
        "multireg",
        "linear",
        "coexpression",
        "knn",
    ),
    "seen": ("sccvae", "control", "mean", "linear"),
    "combo": ("sccvae", "control", "mean", "linear", "additive"),
}


def default_methods(split: str) -> tuple[str, ...]:
    """Methods run by default for a split design (see :data:`DEFAULT_METHODS`)."""
    return DEFAULT_METHODS[split]


def parse_methods(methods: str | Sequence[str] | None, split: str) -> list[str]:
    """Read method names from a list or a comma-separated string; check them."""
    if methods is None:
        return list(default_methods(split))
    if isinstance(methods, str):
        methods = methods.split(",")
    out = [str(m).strip() for m in methods if str(m).strip()]
    if not out:
        raise BenchmarkInputError("No method given; choose among " + ", ".join(REGISTRY) + ".")
    unknown = [m for m in out if m not in REGISTRY]  # the registry, so added methods count
    if unknown:
        raise BenchmarkInputError(
            f"Unknown method(s) {unknown}; choose among {', '.join(REGISTRY)}."
        )
    if len(set(out)) != len(out):
        raise BenchmarkInputError(f"Methods listed twice: {out}.")
    return out


def fit_method(name: str, fold: Fold, settings: RunSettings, progress) -> Fitted:
    """Fit method ``name`` on the training cells of ``fold``."""
    return REGISTRY[name].fit(fold, settings, progress, name)
