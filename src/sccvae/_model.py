"""SCCVAE: the AnnData-facing model."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Literal

import anndata as ad
import lightning.pytorch as pl
import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scvi import settings
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner

from ._constants import REGISTRY_KEYS
from ._dataloading import PerturbationDataSplitter
from ._embedding import coexpression_embedding
from ._module import SCCVAEModule
from ._perturbations import (
    Targets,
    canonical_label,
    check_control_label,
    parse_perturbation,
    perturbation_labels,
)
from ._scm import build_graph_mask
from ._training_plan import SCCVAETrainingPlan

logger = logging.getLogger(__name__)

MIN_CELLS_PER_PERTURBATION = 10
_CHUNK = 2048


class SCCVAE(BaseModelClass):
    """Single-cell causal VAE for seen, unseen and combined genetic perturbations.

    Control cells are encoded to exogenous noise ``z``; a perturbation is a shift
    intervention ``c_t softmax(f(e_t))`` on latent nodes, chosen from an embedding ``e_t`` of
    each target gene, that propagates through a learned linear SCM
    ``u = (z + shift)(I - B * M)^-1``; a decoder maps ``u`` to expression.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_latent
        Number of latent causal nodes (the reference uses 512).
    n_hidden
        Width of the encoder and decoder hidden layers (the reference uses 1024).
    n_layers
        Number of hidden layers of the encoder and decoder.
    graph
        Allowed edges between latent nodes: ``"full"`` (all edges of a fixed order, the
        paper's best), ``"none"`` (no edges: ``u = z + shift``), ``"random"`` (Erdős–Rényi
        DAG of density ``graph_density``), or a DAG over the ``n_latent`` nodes as a numpy
        array, pandas DataFrame or :class:`networkx.DiGraph` (reordered topologically).
    graph_density
        Edge density of ``graph="random"``.
    likelihood
        ``"gaussian"`` (log-normalised expression, the paper's setting) or ``"nb"`` (raw
        counts, negative binomial with each cell's library size, as scVI).
    perturbation_embedding
        How targets are embedded: ``"coexpression"`` (PCA of each gene's profile across
        control cells; any measured gene, also unseen ones), ``"onehot"`` (seen targets
        only), or a :class:`pandas.DataFrame` indexed by gene name (any gene it lists).
    n_embedding_components
        Dimension of the coexpression embedding.
    n_hidden_perturbation
        Width of the perturbation encoder's hidden layer.
    dropout_rate
        Dropout in encoder and decoder.
    mmd_weight
        ``alpha``: weight of the MMD between predicted and observed perturbed cells.
    control_reconstruction_weight
        ``lambda``: weight of the reconstruction of the control cells.
    init_magnitude
        Initial shift magnitude of every target (the reference uses 1; a larger start
        lets small data sets, with few optimisation steps, reach realistic effect sizes).
    target_temperature
        Temperature of the softmax choosing latent nodes (the reference uses 1); lower
        values sharpen the initial choice and speed up learning.
    target_shift
        Parameterisation of a training target's shift ``c_t a_t``: ``"softmax"`` (default,
        the paper's mechanism: ``a_t = softmax(f(e_t) / T)``, a soft choice of latent nodes
        by the perturbation encoder) or ``"vector"`` (``a_t`` a free unit vector per training
        target). With ``"softmax"`` and short training schedules the targets' softmaxes can
        all settle on the same nodes, so that every perturbation predicts the same change;
        ``"vector"`` separates perturbations from the first step (see the benchmark page). It
        needs ``unseen_shift="ridge"`` for targets absent from training; in
        :meth:`get_perturbation_latents` its ``target_distribution`` is the share of the
        squared shift on each node.
    target_direction
        Ground each intervention in the model itself: besides ``c_t softmax(f(e_t))``, move
        along ``d_t``, the direction in the exogenous latent space along which the target
        gene's expression varies among control cells, by a learned step ``s_t`` (for unseen
        targets predicted from the embedding by a map fitted on training targets). ``d_t``
        needs the target to be a measured gene; for other targets it is zero.
    unseen_shift
        How the shift ``c_t a_t`` of a target absent from training is predicted from its
        embedding: ``"ridge"`` (default), a ridge regression of the training targets'
        learned shift vectors on their embeddings (penalty by leave-one-out; under strong
        shrinkage it returns the average training shift); ``"encoder"``, the perturbation
        encoder ``softmax(f(e_t))`` with a magnitude from a ridge map (the paper's mechanism,
        which from a few dozen training targets generalises poorly).
    seed
        Seed of the graph, the initial weights and the embedding; defaults to
        ``scvi.settings.seed``.

    Examples
    --------
    >>> sccvae.SCCVAE.setup_anndata(adata, perturbation_key="perturbation")
    >>> model = sccvae.SCCVAE(adata)
    >>> model.train(max_epochs=50)
    >>> pred = model.predict(["KLF1", "KLF1+MAP2K6"], n_cells=200)
    """

    _module_cls = SCCVAEModule
    _training_plan_cls = SCCVAETrainingPlan
    _data_splitter_cls = PerturbationDataSplitter
    _train_runner_cls = TrainRunner

    def __init__(
        self,
        adata: ad.AnnData | None = None,
        registry: dict | None = None,
        n_latent: int = 64,
        n_hidden: int = 512,
        n_layers: int = 2,
        graph: str | np.ndarray | pd.DataFrame | nx.DiGraph = "full",
        graph_density: float = 0.03,
        likelihood: Literal["gaussian", "nb"] = "gaussian",
        perturbation_embedding: str | pd.DataFrame = "coexpression",
        n_embedding_components: int = 50,
        n_hidden_perturbation: int = 128,
        dropout_rate: float = 0.0,
        mmd_weight: float = 10.0,
        control_reconstruction_weight: float = 0.25,
        init_magnitude: float = 3.0,
        target_temperature: float = 0.2,
        target_shift: Literal["softmax", "vector"] = "softmax",
        target_direction: bool = False,
        unseen_shift: Literal["ridge", "encoder"] = "ridge",
        seed: int | None = None,
    ):
        super().__init__(adata, registry)
        if likelihood not in ("gaussian", "nb"):
            raise ValueError(f"likelihood must be 'gaussian' or 'nb', got {likelihood!r}.")
        if unseen_shift not in ("ridge", "encoder"):
            raise ValueError(f"unseen_shift must be 'ridge' or 'encoder', got {unseen_shift!r}.")
        if target_shift not in ("softmax", "vector"):
            raise ValueError(f"target_shift must be 'softmax' or 'vector', got {target_shift!r}.")
        if target_shift == "vector" and unseen_shift == "encoder":
            raise ValueError(
                "target_shift='vector' has no perturbation encoder to embed unseen targets: "
                "use unseen_shift='ridge' (or target_shift='softmax')."
            )
        self.unseen_shift_ = unseen_shift
        seed = _resolve_seed(seed)
        self.seed_ = seed
        setup = self.adata_manager.registry["setup_args"]
        self.var_names_ = self.adata.var_names.astype(str).tolist()
        self.perturbation_key_ = setup["perturbation_key"]
        self.control_label_ = setup["control_label"]
        self.combination_delimiter_ = setup["combination_delimiter"]

        labels = list(
            self.adata_manager.get_state_registry(REGISTRY_KEYS.PERTURBATION_KEY).categorical_mapping
        )
        parsed = [self._parse(label) for label in labels]
        self.targets_ = sorted({t for targets in parsed for t in targets})
        if not self.targets_:
            raise ValueError("The data holds control cells only: the model needs perturbed cells to learn from.")
        target_index = {t: i for i, t in enumerate(self.targets_)}
        label_targets = np.zeros((len(labels), len(self.targets_)), dtype=np.float32)
        for row, targets in enumerate(parsed):
            label_targets[row, [target_index[t] for t in targets]] = 1.0

        if likelihood == "nb":
            _check_counts(self._expression(self.adata), self._layer_description())
        self.gene_embedding_ = self._build_embedding(
            perturbation_embedding, n_embedding_components, seed, counts=likelihood == "nb"
        )
        missing = [t for t in self.targets_ if t not in self.gene_embedding_.index]
        if missing:
            raise ValueError(
                f"Cannot embed {len(missing)} perturbation target(s): {missing[:20]}. With "
                "perturbation_embedding='coexpression' a target must be a measured gene (in "
                "var_names); otherwise pass perturbation_embedding='onehot' or a DataFrame of "
                "gene embeddings indexed by gene name that lists them."
            )
        mask, self.latent_node_names_ = build_graph_mask(graph, n_latent, graph_density, seed)
        # Initial weights come from `seed` without touching the caller's global torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.module = self._module_cls(
                n_input=self.summary_stats.n_vars,
                graph_mask=mask,
                label_targets=label_targets,
                target_embedding=self.gene_embedding_.loc[self.targets_].to_numpy(np.float32),
                n_hidden=n_hidden,
                n_layers=n_layers,
                n_hidden_perturbation=n_hidden_perturbation,
                dropout_rate=dropout_rate,
                likelihood=likelihood,
                mmd_weight=mmd_weight,
                control_reconstruction_weight=control_reconstruction_weight,
                init_magnitude=init_magnitude,
                target_temperature=target_temperature,
                target_shift=target_shift,
                use_target_direction=target_direction,
                seed=seed,
            )
        graph_name = graph if isinstance(graph, str) else f"user DAG ({int(mask.sum())} edges)"
        self._model_summary_string = (
            f"SCCVAE: n_latent={n_latent}, n_hidden={n_hidden}, n_layers={n_layers}, "
            f"graph={graph_name}, likelihood={likelihood}, target_shift={target_shift}, "
            f"embedding={perturbation_embedding if isinstance(perturbation_embedding, str) else 'user'}, "
            f"{len(self.targets_)} training targets, {len(labels) - 1} perturbations."
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata: ad.AnnData,
        perturbation_key: str = "perturbation",
        control_label: str = "control",
        layer: str | None = None,
        combination_delimiter: str = "+",
        **kwargs,
    ):
        """Register an AnnData for SCCVAE.

        Parameters
        ----------
        adata
            Cells x genes. ``X`` (or ``layer``) holds log-normalised expression for the
            default Gaussian likelihood, or raw counts for ``likelihood="nb"``.
        perturbation_key
            Column of ``adata.obs`` with each cell's perturbation label.
        control_label
            Label of unperturbed (e.g. non-targeting) cells.
        layer
            Layer with the expression to model; ``None`` uses ``X``.
        combination_delimiter
            Joins targets of a combination (``"A+B"``); order does not matter.
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields`.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        labels = perturbation_labels(adata.obs, perturbation_key)
        check_control_label(labels, control_label, perturbation_key)
        uniques, counts = np.unique(labels, return_counts=True)
        for label in uniques:
            parse_perturbation(label, control_label, combination_delimiter)
        if layer is not None and layer not in adata.layers:
            raise KeyError(f"Layer {layer!r} not found in adata.layers ({list(adata.layers)}).")
        _check_finite(adata.X if layer is None else adata.layers[layer], "adata.X" if layer is None else f"adata.layers[{layer!r}]")
        rare = [f"{u} ({c})" for u, c in zip(uniques, counts, strict=True) if c < MIN_CELLS_PER_PERTURBATION and u != control_label]
        if rare:
            warnings.warn(
                f"{len(rare)} perturbation(s) have fewer than {MIN_CELLS_PER_PERTURBATION} cells "
                f"and will be learned poorly: {rare[:10]}.",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.PERTURBATION_KEY, perturbation_key),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    def load(cls, dir_path: str, adata: ad.AnnData | None = None, **kwargs):
        """Load a saved model, checking first that ``adata`` has the model's genes in order.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            AnnData to attach; the one saved with the model (``save_anndata=True``) if ``None``.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.load`.
        """
        if adata is not None:
            registry = cls.load_registry(dir_path, prefix=kwargs.get("prefix"))
            genes = registry["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]["column_names"]
            if not pd.Index(adata.var_names).equals(pd.Index(genes)):
                raise ValueError(
                    f"Cannot load the model onto this AnnData: it has {adata.n_vars} genes but the "
                    f"model was trained on {len(genes)} different or differently ordered genes. "
                    "Subset and order it as the training data (adata[:, genes])."
                )
        return super().load(dir_path, adata=adata, **kwargs)

    # ------------------------------------------------------------------ train
    def train(
        self,
        max_epochs: int = 100,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.9,
        batch_size: int = 32,
        early_stopping: bool = False,
        train_indices: Sequence[int] | None = None,
        validation_indices: Sequence[int] | None = None,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train the model on paired minibatches (one perturbation + as many control cells).

        Parameters
        ----------
        max_epochs
            Passes over the perturbed training cells (the reference trains 100).
        accelerator, devices
            Lightning settings; ``"auto"`` uses a GPU when there is one. For several GPUs in
            a script: ``accelerator="gpu", devices=N, strategy="ddp_find_unused_parameters_true"``.
        train_size
            Fraction of every perturbation's cells (and of control cells) used for training;
            the rest is validation data. Ignored when ``train_indices`` is given.
        batch_size
            Perturbed cells per minibatch (plus as many control cells).
        early_stopping
            Stop when ``early_stopping_monitor`` (default ``"validation_loss"``) stops
            improving; pass ``early_stopping_patience`` etc. as keyword arguments.
        train_indices, validation_indices
            Explicit positions of training / validation cells (e.g. a benchmark split). All
            control cells the model may use must be among ``train_indices``.
        plan_kwargs
            Passed to :class:`~sccvae.SCCVAETrainingPlan` (``lr``, ``n_epochs_kl_warmup``, ...).
        datasplitter_kwargs
            Passed to the data loaders (``num_workers``, ``pin_memory``, ...).
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` / Lightning.
        """
        plan_kwargs = dict(plan_kwargs or {})
        plan_kwargs.setdefault("n_epochs_kl_warmup", max_epochs)
        codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.PERTURBATION_KEY).ravel().astype(int)
        is_control = self.module.label_is_control.cpu().numpy()[codes]
        external = None
        if train_indices is not None:
            external = [np.asarray(train_indices, dtype=int), np.asarray(validation_indices if validation_indices is not None else [], dtype=int)]
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
        training_plan = self._training_plan_cls(self.module, **plan_kwargs)
        trainer_kwargs.setdefault("gradient_clip_val", 1.0)
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        if data_splitter.n_val > 0:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        elif early_stopping:
            raise ValueError("early_stopping needs validation cells: use train_size < 1 or pass validation_indices.")
        if self.module.use_target_direction:
            callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
            trainer_kwargs["callbacks"] = [*callbacks, _TargetDirectionUpdater(self)]
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
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(self.seed_)
            result = runner()
        self.update_target_directions()
        self.fit_magnitude_map()
        return result

    @torch.no_grad()
    def latent_directions(self, genes: Sequence[str], n_cells: int = 2000) -> torch.Tensor:
        """Direction of each gene's expression in the exogenous latent space of control cells.

        Row ``i`` is the least-squares slope of the posterior mean ``z`` on the expression of
        ``genes[i]`` across (up to ``n_cells``, seeded) control cells of the training data:
        how the latent state moves per unit of that gene's expression. Genes that are not
        measured or do not vary get a zero row.
        """
        control, _ = self._control_expression(self.adata)
        rng = np.random.default_rng(self.seed_)
        rows = np.sort(rng.choice(control.shape[0], size=min(n_cells, control.shape[0]), replace=False))
        was_training = self.module.training
        self.module.eval()
        x = _dense(control[rows]).astype(np.float32)
        z = torch.cat([
            self.module.inference(torch.as_tensor(x[i : i + _CHUNK], device=self.device))["qz"].loc
            for i in range(0, len(rows), _CHUNK)
        ])
        self.module.train(was_training)
        if self.module.likelihood == "nb":
            x = np.asarray(_log_normalize(x))
        column = {g: i for i, g in enumerate(self.var_names_)}
        measured = [g in column for g in genes]
        expression = np.zeros((len(rows), len(genes)), dtype=np.float32)
        for j, gene in enumerate(genes):
            if measured[j]:
                expression[:, j] = x[:, column[gene]]
        expression = torch.as_tensor(expression - expression.mean(0), device=self.device)
        variance = (expression**2).sum(0)
        slopes = expression.T @ (z - z.mean(0))  # genes x latent
        usable = variance > 1e-8 * len(rows)
        return torch.where(usable[:, None], slopes / variance.clamp_min(1e-12)[:, None], torch.zeros_like(slopes))

    def update_target_directions(self) -> None:
        """Recompute the training targets' latent directions from the current encoder."""
        if self.module.use_target_direction:
            self.module.target_direction.copy_(self.latent_directions(self.targets_))

    @torch.no_grad()
    def fit_magnitude_map(self, ridge_penalties: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)) -> float:
        """Fit the maps from target embedding to the per-target scalars used for unseen targets.

        Ridge regressions of the learned shift vectors ``c_t a_t``, magnitudes ``c_t`` and
        (with ``target_direction``) steps ``s_t`` on the training targets' embeddings, each
        penalty chosen by leave-one-out error among multiples of the embedding's mean
        squared norm. Only training targets are used, never cells of the perturbation
        being predicted. Called at the end of :meth:`train`.

        Returns
        -------
        The penalty chosen for the magnitude map.
        """
        module = self.module
        embedding = module.target_embedding.double().cpu()
        penalty, coef, intercept = _ridge_loo(embedding, module.magnitude.detach().double().cpu(), ridge_penalties)
        module.magnitude_coef.copy_(coef.float())
        module.magnitude_intercept.copy_(intercept.float())
        shifts = module.target_shifts(module.training_targets()).detach().double().cpu()
        _, coef, intercept = _ridge_loo(embedding, shifts, ridge_penalties)
        module.shift_map_coef.copy_(coef.float())
        module.shift_map_intercept.copy_(intercept.float())
        if module.use_target_direction:
            _, coef, intercept = _ridge_loo(embedding, module.direction_step.detach().double().cpu(), ridge_penalties)
            module.direction_step_coef.copy_(coef.float())
            module.direction_step_intercept.copy_(intercept.float())
        return penalty

    # ------------------------------------------------------------------ helpers
    def _parse(self, label: str) -> Targets:
        return parse_perturbation(label, self.control_label_, self.combination_delimiter_)

    def _layer_description(self) -> str:
        layer = self.adata_manager.registry["setup_args"]["layer"]
        return "adata.X" if layer is None else f"adata.layers[{layer!r}]"

    def _expression(self, adata: ad.AnnData):
        layer = self.adata_manager.registry["setup_args"]["layer"]
        if layer is not None and layer not in adata.layers:
            raise KeyError(f"Layer {layer!r}, used at setup, is missing from the AnnData given.")
        return adata.X if layer is None else adata.layers[layer]

    def _check_genes(self, adata: ad.AnnData) -> None:
        expected = pd.Index(self.var_names_)
        if not pd.Index(adata.var_names).equals(expected):
            raise ValueError(
                f"The AnnData's genes ({adata.n_vars}) differ from the model's ({len(expected)}): "
                "subset it to the model's var_names in the same order (adata[:, model.adata.var_names])."
            )

    def _control_expression(self, adata: ad.AnnData | None) -> tuple[np.ndarray | sp.spmatrix, np.ndarray]:
        adata = self.adata if adata is None else adata
        self._check_genes(adata)
        labels = perturbation_labels(adata.obs, self.perturbation_key_)
        check_control_label(labels, self.control_label_, self.perturbation_key_)
        rows = np.flatnonzero(labels == self.control_label_)
        return self._expression(adata)[rows], adata.obs_names[rows].to_numpy()

    def _build_embedding(self, embedding, n_components: int, seed: int, counts: bool) -> pd.DataFrame:
        if isinstance(embedding, pd.DataFrame):
            frame = embedding.copy()
            frame.index = frame.index.astype(str)
            if not frame.index.is_unique:
                raise ValueError("The perturbation embedding DataFrame has duplicated gene names in its index.")
            values = frame.to_numpy(dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise ValueError("The perturbation embedding DataFrame contains NaN or infinite values.")
            return frame.astype(np.float32)
        if embedding == "onehot":
            return pd.DataFrame(np.eye(len(self.targets_), dtype=np.float32), index=self.targets_, columns=self.targets_)
        if embedding == "coexpression":
            control, _ = self._control_expression(self.adata)
            if counts:
                control = _log_normalize(control)
            return coexpression_embedding(control, self.adata.var_names, n_components=n_components, seed=seed)
        raise ValueError(
            f"Unknown perturbation_embedding {embedding!r}: use 'coexpression', 'onehot' or a "
            "pandas DataFrame indexed by gene name."
        )

    # ------------------------------------------------------------------ interventions
    def _intervention(self, perturbations: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[bool]]:
        """Tensors describing the requested perturbations over the targets they involve.

        Returns target weights (perturbations x targets); the targets' description
        (embedding, magnitude and direction step -- learned for training targets, predicted
        from the embedding otherwise -- and latent direction) as :meth:`SCCVAEModule.shift`
        takes it; and whether every target of each perturbation was seen in training.
        """
        parsed = [self._parse(label) for label in perturbations]
        involved = sorted({t for targets in parsed for t in targets})
        unknown = [t for t in involved if t not in self.gene_embedding_.index]
        if unknown:
            hint = (
                "one-hot embeddings only know the training targets; use "
                "perturbation_embedding='coexpression' or a DataFrame of gene embeddings"
                if list(self.gene_embedding_.columns) == self.targets_
                else "the perturbation embedding has no row for them (with 'coexpression' a "
                "target must be a measured gene); pass perturbation_embedding=DataFrame "
                "with these genes when building the model"
            )
            raise ValueError(f"Cannot represent perturbation target(s) {unknown}: {hint}.")
        module, device = self.module, self.device
        seen = {t: i for i, t in enumerate(self.targets_)}
        seen_rows = torch.as_tensor([seen.get(t, 0) for t in involved], device=device, dtype=torch.long)
        is_seen = torch.as_tensor([t in seen for t in involved], device=device, dtype=torch.bool)
        new_embedding = torch.as_tensor(
            self.gene_embedding_.reindex(involved).fillna(0.0).to_numpy(np.float32), device=device
        )
        embedding = torch.where(is_seen[:, None], module.target_embedding[seen_rows], new_embedding)
        if module.target_shift == "vector":
            # unseen targets take the ridge shift below; their profile here is a placeholder
            profile = torch.where(is_seen[:, None], module.target_profile().detach()[seen_rows], 0.0)
        else:
            profile = module.target_distribution(embedding)
        targets = {
            "embedding": embedding,
            "profile": profile,
            "magnitude": torch.where(
                is_seen, module.magnitude.detach()[seen_rows], module.predicted_magnitude(embedding)
            ),
            "direction_step": torch.where(
                is_seen, module.direction_step.detach()[seen_rows], module.predicted_direction_step(embedding)
            ),
            "direction": torch.zeros(len(involved), module.n_latent, device=device),
        }
        if self.unseen_shift_ == "ridge":
            targets["use_fixed_shift"] = ~is_seen
            targets["fixed_shift"] = module.predicted_shift(embedding)
        if module.use_target_direction:
            unseen = [t for t in involved if t not in seen]
            directions = module.target_direction[seen_rows].clone()
            if unseen:
                directions[~is_seen] = self.latent_directions(unseen)
            targets["direction"] = directions
        weights = torch.zeros(len(parsed), len(involved), device=device)
        column_of = {t: i for i, t in enumerate(involved)}
        for row, target_set in enumerate(parsed):
            weights[row, [column_of[t] for t in target_set]] = 1.0
        all_seen = [all(t in seen for t in target_set) for target_set in parsed]
        return weights, targets, all_seen

    def _encode_controls(
        self, adata: ad.AnnData | None, n_cells: int, seed: int | None, sample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, torch.Tensor]:
        """``n_cells`` control cells drawn with ``seed``: exogenous noise ``z``, library sizes,
        names and expression (posterior means of ``z`` unless ``sample``)."""
        if n_cells < 1:
            raise ValueError(f"n_cells must be at least 1, got {n_cells}.")
        seed = _resolve_seed(seed)
        control, names = self._control_expression(adata)
        rng = np.random.default_rng(seed)
        # consecutive random permutations: every control cell is used as evenly as possible,
        # so the source cells' mean stays close to the control mean
        n_control = control.shape[0]
        rows = np.concatenate([rng.permutation(n_control) for _ in range(-(-n_cells // n_control))])[:n_cells]
        generator = torch.Generator().manual_seed(seed)
        z_parts, library_parts, x_parts = [], [], []
        for start in range(0, n_cells, _CHUNK):
            chunk = control[rows[start : start + _CHUNK]]
            x = torch.as_tensor(_dense(chunk), dtype=torch.float32, device=self.device)
            qz = self.module.inference(x)["qz"]
            z = qz.loc
            if sample:
                noise = torch.randn(qz.loc.shape, generator=generator).to(self.device)
                z = qz.loc + qz.scale * noise
            z_parts.append(z)
            library_parts.append(x.sum(dim=1, keepdim=True))
            x_parts.append(x)
        return torch.cat(z_parts), torch.cat(library_parts), names[rows], torch.cat(x_parts)

    def _decode_intervention(self, z, library, weights_row, targets, source=None) -> torch.Tensor:
        """Predicted cells under one intervention; with ``source`` cells, their counterfactuals."""
        out = []
        for start in range(0, z.shape[0], _CHUNK):
            z_chunk = z[start : start + _CHUNK]
            outputs = self.module.generative(
                z_chunk,
                weights_row.expand(z_chunk.shape[0], -1),
                library=library[start : start + _CHUNK],
                targets=targets,
            )
            if source is None:
                out.append(self.module.expression_mean(outputs["prediction"], outputs["library"]))
            else:
                out.append(
                    self.module.abduct(
                        source[start : start + _CHUNK], outputs["prediction"], outputs["control_prediction"]
                    )
                )
        return torch.cat(out)

    def _cells_to_anndata(self, blocks: list[np.ndarray], obs: pd.DataFrame, return_mean: bool, group_key: str) -> ad.AnnData:
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

    @torch.inference_mode()
    def predict(
        self,
        perturbations: str | Sequence[str],
        n_cells: int = 100,
        adata: ad.AnnData | None = None,
        return_mean: bool = False,
        seed: int | None = None,
        counterfactual: bool = True,
    ) -> ad.AnnData:
        """Predict cells under seen, unseen or combined perturbations.

        Control cells are drawn (seeded) from ``adata`` (default: the training AnnData),
        encoded, shifted by each perturbation and decoded. The same control cells serve every
        perturbation, so differences between perturbations are not sampling noise.

        Parameters
        ----------
        perturbations
            Labels such as ``"KLF1"``, ``"KLF1+MAP2K6"`` (any order and arity). Targets
            absent from training are embedded (see ``perturbation_embedding``) and their
            shift magnitude is predicted from the embedding by a map fitted on training
            targets, never from the unseen perturbation's cells. The control label gives the
            model's reconstruction of unperturbed cells.
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
            posterior shared by both terms (for ``"nb"``, its counts scaled by
            ``g(u) / g(u0)``). Cells then vary as real
            cells do, and the model's reconstruction error does not enter the predicted
            change. ``False`` returns decoder outputs ``g(u)`` for ``z`` sampled from the
            posterior (smooth, less variable than real cells).

        Returns
        -------
        A new AnnData with the model's ``var_names``, ``obs[perturbation_key]`` holding the
        requested labels, ``obs["seen"]`` (all targets seen in training) and ``X`` the
        predicted expression in the input's space (log-normalised values for
        ``likelihood="gaussian"``, counts for ``"nb"``, expected counts at each source cell's
        library size when ``counterfactual=False``). The input AnnData is not modified.
        """
        perturbations = [perturbations] if isinstance(perturbations, str) else [str(p) for p in perturbations]
        if not perturbations:
            raise ValueError("No perturbations given to predict.")
        self._check_if_trained(warn=True)
        self.module.eval()
        weights, targets, all_seen = self._intervention(perturbations)
        z, library, names, source = self._encode_controls(adata, n_cells, seed)
        source = source if counterfactual else None
        blocks, obs = [], []
        for row, label in enumerate(perturbations):
            cells = self._decode_intervention(z, library, weights[row], targets, source)
            blocks.append(cells.cpu().numpy())
            obs.append(pd.DataFrame({self.perturbation_key_: label, "seen": all_seen[row], "control_cell": names}))
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

        Scaling ``c_t`` by a penetrance in [0, 1] mimics a partial knock-down (or
        activation): 0 gives the model's unperturbed cells, 1 its full prediction. The same
        control cells are used at every level, so the result is a dose-response per gene.
        ``counterfactual`` is as in :meth:`predict` (penetrance 0 then returns the source
        cells themselves).

        Returns
        -------
        AnnData with ``obs["penetrance"]`` and ``obs[perturbation_key]``; ``return_mean``
        gives one row per penetrance.
        """
        penetrance = [float(p) for p in np.atleast_1d(penetrance)]
        self._check_if_trained(warn=True)
        self.module.eval()
        weights, targets, _ = self._intervention([perturbation])
        z, library, names, source = self._encode_controls(adata, n_cells, seed)
        source = source if counterfactual else None
        blocks, obs = [], []
        for level in penetrance:
            scaled = {
                **targets,
                **{key: targets[key] * level for key in ("magnitude", "direction_step", "fixed_shift") if key in targets},
            }
            cells = self._decode_intervention(z, library, weights[0], scaled, source)
            blocks.append(cells.cpu().numpy())
            obs.append(pd.DataFrame({self.perturbation_key_: perturbation, "penetrance": level, "control_cell": names}))
        return self._cells_to_anndata(blocks, pd.concat(obs), return_mean, "penetrance")

    # ------------------------------------------------------------------ latent space
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
            learned graph, ``u = z (I - B * M)^-1`` (an observed cell's own state already
            carries its perturbation, so no shift is added).
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
        self._check_genes(adata)
        self.module.eval()
        expression = self._expression(adata)
        generator = torch.Generator().manual_seed(_resolve_seed(seed))
        parts = []
        for start in range(0, adata.n_obs, _CHUNK):
            x = torch.as_tensor(_dense(expression[start : start + _CHUNK]), dtype=torch.float32, device=self.device)
            qz = self.module.inference(x)["qz"]
            z = qz.loc if give_mean else qz.loc + qz.scale * torch.randn(qz.loc.shape, generator=generator).to(self.device)
            parts.append((self.module.scm(z) if kind == "causal" else z).cpu().numpy())
        return np.concatenate(parts)

    def _training_perturbations(self) -> list[str]:
        labels = self.adata_manager.get_state_registry(REGISTRY_KEYS.PERTURBATION_KEY).categorical_mapping
        canonical = [canonical_label(self._parse(str(label)), self.control_label_, self.combination_delimiter_) for label in labels]
        return list(dict.fromkeys(c for c in canonical if c != self.control_label_))

    @torch.inference_mode()
    def get_perturbation_latents(
        self,
        perturbations: Sequence[str] | None = None,
        n_cells: int = 500,
        adata: ad.AnnData | None = None,
        seed: int | None = None,
    ) -> ad.AnnData:
        """One row per perturbation describing its intervention in the latent space.

        Parameters
        ----------
        perturbations
            Labels (seen, unseen or combinations); all training perturbations if ``None``.
        n_cells
            Control cells averaged over for the mean causal latent.
        adata, seed
            Source of control cells and seed of their draw.

        Returns
        -------
        AnnData with ``X`` = mean causal latent ``u`` of the perturbed cells (nodes as
        ``var_names``), ``obsm["shift"]`` = ``sum_t c_t a_t``, ``obsm["target_distribution"]``
        = the average over the targets of their softmax over nodes (for
        ``target_shift="vector"`` and ridge-predicted unseen targets: each node's share of the
        squared shift), ``obs["magnitude"]`` (sum of the targets' ``c_t``), ``obs["n_targets"]``, ``obs["seen"]``; ``uns["control_causal_mean"]``
        is the mean ``u`` of unperturbed cells, the reference point of the shifts.
        """
        perturbations = self._training_perturbations() if perturbations is None else [str(p) for p in perturbations]
        self._check_if_trained(warn=True)
        self.module.eval()
        weights, targets, all_seen = self._intervention(perturbations)
        z, _, _, _ = self._encode_controls(adata, n_cells, seed, sample=False)
        shifts = self.module.shift(weights, targets)
        per_target = self.module.target_shifts(targets)
        # free vectors and ridge-predicted shifts have no softmax: report each node's share of
        # the squared shift instead
        from_shift = torch.full(
            (per_target.shape[0],), self.module.target_shift == "vector", dtype=torch.bool, device=per_target.device
        )
        if "use_fixed_shift" in targets:
            from_shift = from_shift | targets["use_fixed_shift"]
        squared = per_target**2
        shares = squared / squared.sum(dim=1, keepdim=True).clamp_min(1e-12)
        distribution = torch.where(from_shift[:, None], shares, targets["profile"])
        magnitude = targets["magnitude"]
        n_targets = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        target_distribution = (weights @ distribution) / n_targets
        causal_mean = torch.stack([self.module.scm(z, shift.expand_as(z)).mean(0) for shift in shifts])
        obs = pd.DataFrame(
            {
                self.perturbation_key_: perturbations,
                "magnitude": (weights @ magnitude).cpu().numpy(),
                "n_targets": weights.sum(dim=1).cpu().numpy().astype(int),
                "seen": all_seen,
            },
            index=pd.Index(perturbations).astype(str),
        )
        result = ad.AnnData(
            causal_mean.cpu().numpy().astype(np.float32), obs=obs, var=pd.DataFrame(index=self.latent_node_names_)
        )
        result.obsm["shift"] = shifts.cpu().numpy()
        result.obsm["target_distribution"] = target_distribution.cpu().numpy()
        result.uns["control_causal_mean"] = self.module.scm(z).mean(0).cpu().numpy()
        return result

    def perturbation_modules(
        self,
        perturbations: Sequence[str] | None = None,
        resolution: float = 1.0,
        use: Literal["shift", "causal"] = "shift",
        **kwargs,
    ) -> ad.AnnData:
        """Cluster perturbations into functional modules by their latent interventions.

        One row per perturbation (training perturbations by default; pass labels to include
        unseen ones) with a neighbour graph, a UMAP and ``obs["module"]`` (leiden). See
        :func:`sccvae.perturbation_modules` for all options.
        """
        from ._interpretation import perturbation_modules

        return perturbation_modules(self, perturbations=perturbations, resolution=resolution, use=use, **kwargs)

    def get_graph(self, threshold: float = 0.0) -> nx.DiGraph:
        """Learned edges between latent nodes with ``|weight| > threshold``.

        Returns
        -------
        :class:`networkx.DiGraph` over ``latent_node_names_`` with a ``weight`` on each edge.
        """
        adjacency = self.module.scm.adjacency.detach().cpu().numpy()
        graph = nx.DiGraph()
        graph.add_nodes_from(self.latent_node_names_)
        sources, targets = np.nonzero((np.abs(adjacency) > threshold) & (self.module.scm.mask.cpu().numpy() > 0))
        names = self.latent_node_names_
        graph.add_weighted_edges_from((names[s], names[t], float(adjacency[s, t])) for s, t in zip(sources, targets, strict=True))
        return graph


class _TargetDirectionUpdater(pl.Callback):
    """Keeps the training targets' latent directions in step with the encoder, every epoch."""

    def __init__(self, model: SCCVAE):
        self.model = model

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.model.update_target_directions()


def _ridge_loo(x: torch.Tensor, y: torch.Tensor, penalties: Sequence[float]):
    """Ridge regression of ``y`` (vector or matrix) on ``x`` with the least leave-one-out error.

    Penalties are multiples of the mean squared norm of the centred ``x``, so the grid does
    not depend on the embedding's scale.
    """
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc, yc = x - mean_x, y - mean_y
    n = xc.shape[0]
    gram = xc @ xc.T
    scale = float(torch.diagonal(gram).mean().clamp_min(1e-12))
    identity = torch.eye(n, dtype=x.dtype)
    best = (np.inf, penalties[0], torch.zeros((x.shape[1], *y.shape[1:]), dtype=x.dtype))
    for penalty in penalties:
        inverse = torch.linalg.solve(gram + penalty * scale * identity, identity)
        hat = gram @ inverse
        leverage = (1.0 - torch.diagonal(hat)).clamp_min(1e-6)
        residual = (yc - hat @ yc) / (leverage if yc.ndim == 1 else leverage[:, None])
        loo = float((residual**2).mean()) if n > 1 else 0.0
        if loo < best[0]:
            best = (loo, penalty, xc.T @ (inverse @ yc))
    _, penalty, coef = best
    return penalty, coef, mean_y - mean_x @ coef


def _resolve_seed(seed: int | None) -> int:
    """An explicit seed, else ``scvi.settings.seed``, else 0: results are reproducible by default."""
    if seed is not None:
        return int(seed)
    return int(settings.seed) if settings.seed is not None else 0


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def _values(matrix) -> np.ndarray:
    """The stored values of a dense or sparse matrix (for checks that ignore implicit zeros)."""
    if sp.issparse(matrix):
        return matrix.data
    return np.asarray(matrix).ravel()


def _check_finite(matrix, where: str) -> None:
    bad = _count_nonfinite(matrix)
    if bad:
        raise ValueError(f"{where} contains {bad} NaN or infinite values; remove or impute them before setup_anndata.")


def _count_nonfinite(matrix) -> int:
    if isinstance(matrix, np.ndarray | np.matrix) or sp.issparse(matrix):
        return int(np.size(_values(matrix)) - np.isfinite(_values(matrix)).sum())
    return sum(_count_nonfinite(matrix[i : i + _CHUNK]) for i in range(0, matrix.shape[0], _CHUNK))


def _check_counts(matrix, where: str) -> None:
    for start in range(0, matrix.shape[0], _CHUNK):
        values = _values(matrix[start : start + _CHUNK])
        if np.any(values < 0):
            raise ValueError(f"likelihood='nb' needs raw counts, but {where} has negative values; pass the counts layer (layer='counts' in setup_anndata).")
        if np.any(np.abs(values - np.round(values)) > 1e-6):
            raise ValueError(
                f"likelihood='nb' needs integer counts, but {where} has non-integer values (log-normalised data?); "
                "register the raw counts layer (setup_anndata(..., layer='counts')) or use likelihood='gaussian'."
            )


def _log_normalize(counts) -> np.ndarray | sp.spmatrix:
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scale = 1e4 / np.maximum(totals, 1.0)
    if sp.issparse(counts):
        scaled = sp.diags(scale) @ counts
        return scaled.log1p()
    return np.log1p(np.asarray(counts) * scale[:, None])
