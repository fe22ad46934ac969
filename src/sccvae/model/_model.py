"""SCCVAE: the AnnData-facing model (construction, setup, training, save/load)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scvi import settings
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner

from ._borrowing import fit_borrowing
from ._calibration import calibrate_training_targets, estimate_decrease_bound
from ._constants import MODEL_DEFAULTS, REGISTRY_KEYS, TRAIN_DEFAULTS
from ._dataloading import PerturbationDataSplitter
from ._embedding import build_embedding
from ._inputs import (
    check_expression,
    check_loadable_genes,
    check_setup,
    log_normalize,
    registered_expression,
    registered_label_codes,
)
from ._interpretation import InterpretationMixin
from ._interventions import UNSEEN_MAGNITUDE_RULES, fit_unseen_maps
from ._module import SCCVAEModule
from ._nodes import gene_nodes, observed_own_changes
from ._observed import ObservedChanges, observed_changes
from ._perturbations import Targets, parse_perturbation, target_matrix
from ._prediction import PredictionMixin
from ._quiet import without_notices
from ._reference import check_loadable_labels, check_loaded_data, training_reference
from ._scm import build_graph_mask
from ._training_plan import SCCVAETrainingPlan, default_epochs, torch_threads, training_threads

if TYPE_CHECKING:
    import networkx as nx

logger = logging.getLogger(__name__)

MIN_CELLS_PER_PERTURBATION = 10


class SCCVAE(PredictionMixin, InterpretationMixin, BaseModelClass):
    """Single-cell causal VAE for seen, unseen and combined genetic perturbations.

    Control cells are encoded to exogenous noise ``z``; a perturbation is a shift
    intervention on latent nodes that propagates through a learned linear SCM
    ``u = (z + shift)(I - B * M)^-1``; a decoder maps ``u`` to expression.

    By default (``latent_nodes="genes"``) every latent node stands for a measured gene:
    every measured perturbation target, the genes of ``node_genes``, and the most variable
    genes up to ``n_latent``. A node's value is its gene's expression standardised by the
    control mean and standard deviation; the decoder reads node genes off their nodes and
    decodes the other genes from all nodes. Knocking down (or activating) a node gene
    shifts its own node by ``c_t``, and every perturbation also shifts all nodes by a learned
    shared response ``gamma_t s``. An unseen measured gene is thus represented through its
    own node, with no map from an embedding to learn. ``latent_nodes="abstract"`` is the
    paper's model: abstract nodes and ``c_t softmax(f(e_t))`` from an embedding ``e_t`` of
    each target. Targets that are not node genes (e.g. unmeasured genes with one-hot or user
    embeddings) go through a perturbation encoder from their embedding in both
    (``perturbation_encoder``).

    Arguments left at ``None`` take the default of the kind of latent nodes
    (:data:`sccvae._constants.MODEL_DEFAULTS`): for gene nodes, chosen on validation screens
    (``n_hidden=512``, ``n_layers=1``, ``mmd_weight=0``, ``control_reconstruction_weight=16``,
    ``mean_weight=10``, ``perturbation_encoder="direction"``); for abstract nodes, the
    paper's (``n_layers=2``, ``mmd_weight=10``, ``control_reconstruction_weight=0.25``, no
    batch-mean term, ``"softmax"``).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_latent
        Number of latent causal nodes (the reference uses 512). With gene nodes, more when
        the measured targets and ``node_genes`` alone need more.
    n_hidden
        Width of the encoder and decoder hidden layers (the reference uses 1024).
    n_layers
        Number of hidden layers of the encoder and decoder.
    latent_nodes
        ``"genes"`` (default) or ``"abstract"`` (the paper's model), see above.
    node_genes
        Genes that must be latent nodes besides the measured training targets, e.g. genes
        whose knock-down you will predict (a measured gene that is not a node is predicted
        through the nodes that carry its variation, a coarser route).
    node_order
        Topological order of gene nodes: ``"random"`` (default, a seeded permutation; best on
        the validation screens), ``"targets_first"`` (perturbation targets and
        ``node_genes`` first, each group by decreasing control variance) or ``"variance"``.
    graph
        Allowed edges between latent nodes: ``"full"`` (all edges of the node order, the
        paper's best), ``"none"`` (no edges: ``u = z + shift``), ``"random"`` (Erdős–Rényi
        DAG of density ``graph_density``), or a DAG as a numpy array, pandas DataFrame or
        :class:`networkx.DiGraph` (reordered topologically; with gene nodes, over gene
        names: its nodes are the latent nodes).
    graph_density
        Edge density of ``graph="random"``.
    likelihood
        ``"gaussian"`` (log-normalised expression, the paper's setting) or ``"nb"`` (raw
        counts, negative binomial with each cell's library size).
    perturbation_embedding
        How targets are embedded for the perturbation encoder: ``"coexpression"`` (PCA of
        each gene's profile across control cells; any measured gene), ``"onehot"`` (seen
        targets only), or a :class:`pandas.DataFrame` indexed by gene name (any gene it
        lists). With gene nodes it only serves targets that are not node genes.
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
    node_weight
        Weight tying gene nodes to their genes in control cells (gene nodes only).
    mean_weight
        Weight of the squared error between the mean predicted and the mean observed
        perturbed cell of each minibatch.
    linear_decoder
        Add a linear map from the nodes to the decoded genes beside the decoder network.
    shared_response
        Learn the shift ``gamma_t s`` shared by all perturbations (a response common to
        them, such as stress); ``False`` leaves each target's own shift alone.
    perturbation_encoder
        For targets that are not node genes: ``"softmax"`` (the paper's soft choice of nodes
        from the embedding, ``c_t softmax(f(e_t) / T)``; the default with abstract nodes) or
        ``"direction"`` (a signed unit vector ``c_t f(e_t) / |f(e_t)|``, which can move nodes
        both ways; the default with gene nodes, chosen on validation cells of Norman 2019).
    unseen_magnitude
        How an unseen node gene's own shift is predicted from the training targets' (see
        :data:`~sccvae._interventions.UNSEEN_MAGNITUDE_RULES`): ``"auto"`` (default) takes the
        rule that predicts the training targets best, leave-one-target-out.
    init_magnitude
        Initial shift ``c_t`` of every target. ``None`` (default): a node gene starts from
        its own observed change (standardised) in the registered cells, other targets from 3.
    target_temperature
        Temperature of the softmax choosing latent nodes (the reference uses 1).
    seed
        Seed of the graph, the node order, the initial weights and the embedding; defaults
        to ``scvi.settings.seed``.

    Examples
    --------
    >>> sccvae.SCCVAE.setup_anndata(adata, perturbation_key="perturbation")
    >>> model = sccvae.SCCVAE(adata)
    >>> model.train()
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
        n_hidden: int | None = None,
        n_layers: int | None = None,
        latent_nodes: Literal["genes", "abstract"] = "genes",
        node_genes: Sequence[str] | None = None,
        node_order: Literal["targets_first", "variance", "random"] = "random",
        graph: str | np.ndarray | pd.DataFrame | nx.DiGraph = "full",
        graph_density: float = 0.03,
        likelihood: Literal["gaussian", "nb"] = "gaussian",
        perturbation_embedding: str | pd.DataFrame = "coexpression",
        n_embedding_components: int = 50,
        n_hidden_perturbation: int = 128,
        dropout_rate: float = 0.0,
        mmd_weight: float | None = None,
        control_reconstruction_weight: float | None = None,
        node_weight: float = 1.0,
        mean_weight: float | None = None,
        init_magnitude: float | None = None,
        target_temperature: float = 0.2,
        linear_decoder: bool = False,
        shared_response: bool = True,
        perturbation_encoder: Literal["softmax", "direction"] | None = None,
        unseen_magnitude: Literal["auto", "standardized", "log", "relative"] = "auto",
        seed: int | None = None,
    ):
        super().__init__(adata, registry)
        if likelihood not in ("gaussian", "nb"):
            raise ValueError(f"likelihood must be 'gaussian' or 'nb', got {likelihood!r}.")
        if latent_nodes not in ("genes", "abstract"):
            raise ValueError(f"latent_nodes must be 'genes' or 'abstract', got {latent_nodes!r}.")
        self.seed_ = seed = self._seed(seed)
        self.latent_nodes_ = latent_nodes
        defaults = MODEL_DEFAULTS[latent_nodes]
        n_hidden = defaults["n_hidden"] if n_hidden is None else n_hidden
        n_layers = defaults["n_layers"] if n_layers is None else n_layers
        mmd_weight = defaults["mmd_weight"] if mmd_weight is None else mmd_weight
        mean_weight = defaults["mean_weight"] if mean_weight is None else mean_weight
        if perturbation_encoder is None:
            perturbation_encoder = defaults["perturbation_encoder"]
        if control_reconstruction_weight is None:
            control_reconstruction_weight = defaults["control_reconstruction_weight"]
        if unseen_magnitude != "auto" and unseen_magnitude not in UNSEEN_MAGNITUDE_RULES:
            raise ValueError(
                f"unseen_magnitude must be 'auto' or in {UNSEEN_MAGNITUDE_RULES}, not "
                f"{unseen_magnitude!r}."
            )
        self._unseen_magnitude = unseen_magnitude
        self.unseen_magnitude_ = "standardized" if unseen_magnitude == "auto" else unseen_magnitude
        self.unseen_magnitude_errors_: dict[str, float] = {}
        self.borrowing_temperature_ = float("inf")
        self.propagation_weight_ = 1.0
        self.borrowing_scores_: dict[str, float] = {}
        setup = self.adata_manager.registry["setup_args"]
        self.var_names_ = self.adata.var_names.astype(str).tolist()
        self.perturbation_key_ = setup["perturbation_key"]
        self.control_label_ = setup["control_label"]
        self.combination_delimiter_ = setup["combination_delimiter"]

        labels = list(
            self.adata_manager.get_state_registry(
                REGISTRY_KEYS.PERTURBATION_KEY
            ).categorical_mapping
        )
        parsed = [self._parse(label) for label in labels]
        self.targets_, label_targets = target_matrix(parsed)

        # counterfactuals of counts are made on their log-normalised scale, floored at zero;
        # counts or scaled values under "gaussian" are warned about
        expression = registered_expression(self.adata_manager, self.adata)
        floor = check_expression(expression, self._layer_description(), likelihood)
        control, _ = self._control_expression(self.adata)
        control = log_normalize(control) if likelihood == "nb" else control
        if latent_nodes == "genes":
            nodes = gene_nodes(
                self.var_names_,
                self.targets_,
                node_genes,
                n_latent,
                node_order,
                graph,
                graph_density,
                seed,
                control,
            )
        else:
            if node_genes is not None:
                raise ValueError("node_genes needs latent_nodes='genes'.")
            nodes = (*build_graph_mask(graph, n_latent, graph_density, seed), None, None, None)
        mask, self.latent_node_names_, node_columns, center, scale = nodes
        target_nodes = np.full(len(self.targets_), -1)
        if node_columns is not None:
            node_of = {self.var_names_[c]: i for i, c in enumerate(node_columns)}
            target_nodes = np.array([node_of.get(t, -1) for t in self.targets_])
        self.gene_embedding_ = build_embedding(
            perturbation_embedding,
            self.targets_,
            self.adata.var_names,
            control,
            n_embedding_components,
            seed,
            embedded_targets=[self.targets_[i] for i in np.flatnonzero(target_nodes < 0)],
        )
        if init_magnitude is not None:
            magnitude = np.full(len(self.targets_), float(init_magnitude), dtype=np.float32)
        else:
            codes = registered_label_codes(self.adata_manager)
            magnitude = observed_own_changes(
                expression, codes, parsed, self.targets_, target_nodes, self.var_names_,
                center, scale, counts=likelihood == "nb",
            )  # fmt: skip
        # Initial weights come from `seed` without touching the caller's global torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.module = self._module_cls(
                n_input=self.summary_stats.n_vars,
                graph_mask=mask,
                label_targets=label_targets,
                target_embedding=self.gene_embedding_.reindex(self.targets_)
                .fillna(0.0)
                .to_numpy(np.float32),
                node_genes=node_columns,
                target_nodes=target_nodes,
                gene_center=center,
                gene_scale=scale,
                initial_magnitude=magnitude,
                n_hidden=n_hidden,
                n_layers=n_layers,
                n_hidden_perturbation=n_hidden_perturbation,
                dropout_rate=dropout_rate,
                likelihood=likelihood,
                mmd_weight=mmd_weight,
                control_reconstruction_weight=control_reconstruction_weight,
                node_weight=node_weight,
                mean_weight=mean_weight,
                target_temperature=target_temperature,
                linear_decoder=linear_decoder,
                shared_response=shared_response,
                perturbation_encoder=perturbation_encoder,
                expression_floor=floor,
                seed=seed,
            )
        graph_name = graph if isinstance(graph, str) else f"user DAG ({int(mask.sum())} edges)"
        self._model_summary_string = (
            f"SCCVAE: {_count(mask.shape[0], latent_nodes[:-1] + ' node')}, "
            f"n_hidden={n_hidden}, n_layers={n_layers}, graph={graph_name}, "
            f"likelihood={likelihood}, {_count(len(self.targets_), 'training target')} "
            f"({_count(int((target_nodes >= 0).sum()), 'node gene')}), "
            f"{_count(len(labels) - 1, 'perturbation')}."
        )
        # `load` rebuilds the module from init_params_ on the AnnData it is given: keep the
        # embedding as built here, as its width follows the training control cells
        perturbation_embedding = self.gene_embedding_
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
        check_setup(
            adata, perturbation_key, control_label, layer, combination_delimiter,
            min_cells=MIN_CELLS_PER_PERTURBATION, stacklevel=settings.warnings_stacklevel,
        )  # fmt: skip
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.PERTURBATION_KEY, perturbation_key),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    def load(cls, dir_path: str, adata: ad.AnnData | None = None, **kwargs):
        """Load a saved model onto ``adata`` (or the AnnData saved with it).

        Before anything is written into ``adata``, checks that it has the model's genes in
        order and no label the model was not trained on (errors that say what to do). Then,
        as scvi-tools' registration requires, ``adata`` is registered with the model's
        setup: ``obs["_scvi_perturbation"]`` gets the label codes *of the training data*
        (added if ``adata`` was never set up, rewritten if it was), and
        ``uns["_scvi_uuid"]`` / ``uns["_scvi_manager_uuid"]`` are set. Nothing else of
        ``adata`` is changed.

        Predictions start from the control cells of the AnnData the model is loaded onto.
        When they differ from the training control cells (another cell type, another screen
        with the same genes) a UserWarning says so, naming the training labels ``adata``
        lacks (see :func:`sccvae._reference.check_loaded_data`); the training data or a
        subset of it (e.g. its control cells alone) loads silently. Models saved before the
        training reference existed are not compared.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            AnnData to attach; the one saved with the model (``save_anndata=True``) if ``None``.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.load`.
        """
        with without_notices():
            if adata is not None:
                registry = cls.load_registry(dir_path, prefix=kwargs.get("prefix"))
                state = registry["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]
                check_loadable_genes(adata, state["column_names"])
                check_loadable_labels(registry, adata)
            model = super().load(dir_path, adata=adata, **kwargs)
        if adata is not None:
            check_loaded_data(model, adata)
        return model

    # ------------------------------------------------------------------ train
    def train(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.9,
        batch_size: int | None = None,
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
            Perturbed cells per minibatch (plus as many control cells); ``None``: 64 with gene
            nodes, 32 (the paper's) with abstract nodes.
        early_stopping
            Stop when ``early_stopping_monitor`` (default ``"validation_loss"``) stops
            improving; pass ``early_stopping_patience`` etc. as keyword arguments.
        train_indices, validation_indices
            Explicit positions of training / validation cells (e.g. a benchmark split). All
            control cells the model may use must be among ``train_indices``.
        plan_kwargs
            Passed to :class:`~sccvae.SCCVAETrainingPlan` (``lr``, ``n_epochs_kl_warmup``,
            ``max_kl_weight``, ...). Defaults: ``lr=2e-3, max_kl_weight=0.1`` with gene nodes,
            ``lr=1e-3, max_kl_weight=1`` with abstract nodes; the KL warm-up spans training.
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
            :mod:`sccvae._calibration`), so that trained perturbations are reproduced and
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
        defaults = TRAIN_DEFAULTS[self.latent_nodes_]
        batch_size = int(defaults["batch_size"] if batch_size is None else batch_size)
        plan_kwargs = dict(plan_kwargs or {})
        plan_kwargs.setdefault("lr", defaults["lr"])
        plan_kwargs.setdefault("max_kl_weight", defaults["max_kl_weight"])
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
                    self, data_splitter.train_idx, seed=self.seed_,
                    progress=trainer_kwargs.get("enable_progress_bar", True),
                    full=True if calibrate == "full" else None, observed=observed,
                )  # fmt: skip
        self._fit_unseen_maps(observed)
        # what predictions and later loads are compared with (saved with the model)
        self.training_reference_ = training_reference(self, data_splitter.train_idx)
        return result

    def fit_unseen_maps(self, train_indices: Sequence[int] | None = None) -> None:
        """Fit how targets absent from training get their shift, from the training targets only.

        Node genes: the rule of :data:`~sccvae._interventions.UNSEEN_MAGNITUDE_RULES` that
        predicts the training node genes' ``c_t`` best leave-one-target-out
        (:attr:`unseen_magnitude_` unless given, every rule's error in
        :attr:`unseen_magnitude_errors_`); other targets: a ridge map from their embedding
        (:func:`sccvae._interventions.fit_unseen_maps`). Called at the end of :meth:`train`;
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

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _seed(seed: int | None) -> int:
        """Return the seed given, else ``scvi.settings.seed``, else 0 (reproducible by default)."""
        if seed is not None:
            return int(seed)
        return int(settings.seed) if settings.seed is not None else 0

    def _parse(self, label: str) -> Targets:
        return parse_perturbation(label, self.control_label_, self.combination_delimiter_)

    def _layer_description(self) -> str:
        layer = self.adata_manager.registry["setup_args"]["layer"]
        return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def _count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 (``"1 node gene"``, ``"64 gene nodes"``)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
