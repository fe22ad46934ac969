"""Training SCCVAE: the optimiser, then what ``train`` fits once it stops.

:class:`TrainingMixin` gives :class:`~sccvae.SCCVAE` its ``train``, as scvi-tools'
``UnsupervisedTrainingMixin`` gives its models theirs: the paired minibatches and the split
(:mod:`sccvae.train`), the Lightning run on a chosen number of CPU threads, then, from the
training cells' observed changes read once (:mod:`sccvae.model._observed`), the decrease
bound and the calibration of the trained targets (:mod:`sccvae.model._calibration`), the
maps and the borrowing of unseen targets (:mod:`sccvae.model._interventions`,
:mod:`sccvae.model._borrowing`) and the training reference (:mod:`sccvae.model._reference`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from .._inputs import registered_label_codes
from ..train._quiet import without_notices
from ..train._training_plan import default_epochs, torch_threads, training_threads
from ._borrowing import fit_borrowing
from ._calibration import calibrate_training_targets, estimate_decrease_bound
from ._interventions import fit_unseen_maps
from ._observed import ObservedChanges, observed_changes
from ._reference import training_reference


class TrainingMixin:
    """``train`` and ``fit_unseen_maps`` for SCCVAE."""

    def train(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.9,
        batch_size: int = 64,
        early_stopping: bool = False,
        train_indices: Sequence[int] | None = None,
        validation_indices: Sequence[int] | None = None,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        n_threads: int | Literal["auto"] | None = "auto",
        calibrate: bool | Literal["full"] = True,
        **trainer_kwargs,
    ):
        """Train the model on paired minibatches (one perturbation + as many control cells).

        Parameters
        ----------
        max_epochs
            Passes over the perturbed training cells. ``None`` (default): as many as give
            about :data:`DEFAULT_TRAINING_STEPS` optimiser steps (between 10 and 500 epochs),
            so that small and large screens are trained alike.
        accelerator, devices
            Lightning settings; ``"auto"`` uses a GPU when there is one. For several GPUs in
            a script: ``accelerator="gpu", devices=N, strategy="ddp_find_unused_parameters_true"``.
        train_size
            Fraction of every perturbation's cells (and of control cells) used for training;
            the rest is validation data. Ignored when ``train_indices`` is given.
        batch_size
            Perturbed cells per minibatch (plus as many control cells); the paper's is 32
            (:data:`~sccvae._constants.PAPER_TRAINING`).
        early_stopping
            Stop when ``early_stopping_monitor`` (default ``"validation_loss"``) stops
            improving; pass ``early_stopping_patience`` etc. as keyword arguments.
        train_indices, validation_indices
            Explicit positions of training / validation cells (e.g. a benchmark split). All
            control cells the model may use must be among ``train_indices``.
        plan_kwargs
            Passed to :class:`~sccvae.SCCVAETrainingPlan` (``lr``, ``n_epochs_kl_warmup``,
            ``max_kl_weight``, ...; defaults ``lr=2e-3, max_kl_weight=0.1``, the paper's in
            :data:`~sccvae._constants.PAPER_TRAINING`); the KL warm-up spans training.
        datasplitter_kwargs
            Passed to the data loaders (``num_workers``, ``pin_memory``, ...).
        n_threads
            CPU threads of torch while training (set back afterwards). ``"auto"`` (default):
            one thread for a model under :data:`SMALL_MODEL_PARAMETERS` parameters trained on
            the CPU, where one thread is as fast on an idle machine and up to 30x faster on
            a busy one (see the benchmarks page); torch's setting otherwise. ``None`` leaves
            torch's setting as it is; a number sets it.
        calibrate
            After training, fit each trained target's corrections: what the latent structure
            does not explain of the mean change of its training cells (see
            :mod:`sccvae.model._calibration`), so that trained perturbations are reproduced and
            combinations add their residuals to the structure's prediction. Training then
            starts by estimating the decrease bound (:meth:`~sccvae.SCCVAEModule.saturate`).
            ``True`` (default) is the full calibration up to 2 million trained labels x genes
            and a cheaper one beyond (residuals only: no latent corrections, 64 control
            cells); ``"full"`` forces the full one; ``False``: neither, the structure alone.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` / Lightning.
        """
        if calibrate not in (True, False, "full"):
            raise ValueError(f"calibrate must be True, False or 'full', got {calibrate!r}.")
        if max_epochs is not None and (isinstance(max_epochs, bool) or int(max_epochs) < 1):
            raise ValueError(
                f"max_epochs must be a positive number of epochs (or None for the default), got "
                f"{max_epochs!r}."
            )
        plan_kwargs = dict(plan_kwargs or {})
        codes = registered_label_codes(self.adata_manager)
        is_control = self.module.label_is_control.cpu().numpy()[codes]
        external = None
        if train_indices is not None:
            validation = validation_indices if validation_indices is not None else []
            external = [np.asarray(train_indices, dtype=int), np.asarray(validation, dtype=int)]
        elif validation_indices is not None:
            raise ValueError("validation_indices needs train_indices as well.")
        data_splitter = self._data_splitter_cls(
            self.adata_manager,
            perturbation_codes=codes,
            is_control=is_control,
            train_size=train_size,
            batch_size=batch_size,
            seed=self.seed_,
            external_indexing=external,
            **(datasplitter_kwargs or {}),
        )
        if max_epochs is None:
            max_epochs = default_epochs(data_splitter.batches_per_epoch())
        plan_kwargs.setdefault("n_epochs_kl_warmup", max_epochs)
        # training perturbations must not bypass the structure while it learns
        self.module.clear_calibration()
        training_plan = self._training_plan_cls(self.module, **plan_kwargs)
        # read once: the decrease bound, the calibration and the borrowing all start from it
        observed = observed_changes(self, data_splitter.train_idx)
        if calibrate:  # trained through the bound, the structure learns unsaturated changes
            bound = estimate_decrease_bound(self, data_splitter.train_idx, observed=observed)
            self.module.decrease_bound.fill_(bound)
        trainer_kwargs.setdefault("gradient_clip_val", 1.0)
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        if data_splitter.n_val > 0:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        elif early_stopping:
            raise ValueError(
                "early_stopping needs validation cells: train_size < 1 or validation_indices."
            )
        with without_notices():  # Lightning announces devices and loggers as the trainer is built
            runner = self._train_runner_cls(
                self,
                training_plan=training_plan,
                data_splitter=data_splitter,
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                early_stopping=early_stopping,
                **trainer_kwargs,
            )
        # The posterior samples drawn while training come from torch's global generator:
        # seed it from the model's seed (restored afterwards), so that a run is reproducible
        # across processes without the caller setting scvi.settings.seed.
        cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        threads = training_threads(n_threads, runner.trainer.accelerator, self.module)
        with (
            torch.random.fork_rng(devices=cuda_devices),
            without_notices(),
            torch_threads(threads),
        ):
            torch.manual_seed(self.seed_)
            result = runner()
            observed = observed.to(self.device)
            if calibrate:  # a progress bar as the trainer's, for a step that takes a while
                self.calibration_ = calibrate_training_targets(
                    self,
                    data_splitter.train_idx,
                    seed=self.seed_,
                    progress=trainer_kwargs.get("enable_progress_bar", True),
                    full=True if calibrate == "full" else None,
                    observed=observed,
                )
        self._fit_unseen_maps(observed)
        # what predictions and later loads are compared with (saved with the model)
        self.training_reference_ = training_reference(self, data_splitter.train_idx)
        return result

    def fit_unseen_maps(self, train_indices: Sequence[int] | None = None) -> None:
        """Fit how targets absent from training get their shift, from the training targets only.

        Node genes: the rule of :data:`~sccvae.model._interventions.UNSEEN_MAGNITUDE_RULES` that
        predicts the training node genes' ``c_t`` best leave-one-target-out
        (:attr:`unseen_magnitude_` unless given, every rule's error in
        :attr:`unseen_magnitude_errors_`); other targets: a ridge map from their embedding
        (:func:`sccvae.model._interventions.fit_unseen_maps`). Called at the end of :meth:`train`;
        never uses the cells of the perturbation being predicted.
        """
        rows = np.arange(self.adata.n_obs) if train_indices is None else train_indices
        self._fit_unseen_maps(observed_changes(self, np.asarray(rows)))

    def _fit_unseen_maps(self, observed: ObservedChanges) -> None:
        rule, self.unseen_magnitude_errors_ = fit_unseen_maps(self.module)
        if rule is not None and self._unseen_magnitude == "auto":
            self.unseen_magnitude_ = rule
        codes = torch.as_tensor(observed.labels, dtype=torch.long, device=self.device)
        columns = self._label_columns(codes)
        control = self._log_expression(observed.control_rows)
        borrowing = fit_borrowing(
            self.module, codes, observed.observed, observed.significance, columns, control
        )
        self.borrowing_temperature_ = borrowing.temperature
        self.propagation_weight_ = borrowing.propagation
        self.borrowing_scores_ = {f"{t},{a}": v for (t, a), v in borrowing.scores.items()}
