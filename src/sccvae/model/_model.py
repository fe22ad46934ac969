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

from .._constants import REGISTRY_KEYS
from .._embedding import build_embedding
from .._inputs import (
    check_expression,
    check_loadable_genes,
    check_setup,
    log_normalize,
    registered_expression,
    registered_label_codes,
)
from .._perturbations import Targets, parse_perturbation, target_matrix
from ..module._module import SCCVAEModule
from ..train._dataloading import PerturbationDataSplitter
from ..train._quiet import without_notices
from ..train._training_plan import SCCVAETrainingPlan
from ._interpretation import InterpretationMixin
from ._interventions import UNSEEN_MAGNITUDE_RULES, InterventionMixin
from ._nodes import choose_latent_nodes, observed_own_changes
from ._prediction import PredictionMixin
from ._reference import check_loadable_labels, check_loaded_data
from ._training import TrainingMixin

if TYPE_CHECKING:
    import networkx as nx

logger = logging.getLogger(__name__)

MIN_CELLS_PER_PERTURBATION = 10

#: Options of :class:`~sccvae.SCCVAEModule` that ``SCCVAE(**module_kwargs)`` passes through.
MODULE_OPTIONS = (
    "node_weight",
    "n_hidden_perturbation",
    "dropout_rate",
    "target_temperature",
    "linear_decoder",
)
#: Options SCCVAE no longer takes, and what to do instead. A saved model that recorded them
#: still loads: its graph mask, embedding and shifts come back from the saved state.
REMOVED_OPTIONS = {
    "graph_density": "graph='random' has density 0.03; for another, pass your own DAG as "
    "graph= (sccvae.build_graph_mask('random', n, density=...) draws a 0/1 matrix; with gene "
    "nodes, put it in a DataFrame indexed and columned by the node genes)",
    "n_embedding_components": "for another dimension than 50, pass perturbation_embedding="
    "sccvae.coexpression_embedding(control_expression, genes, n_components=...)",
    "init_magnitude": "a node gene's shift starts from its observed change, another "
    "target's from 3",
}


class SCCVAE(
    TrainingMixin, PredictionMixin, InterventionMixin, InterpretationMixin, BaseModelClass
):
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

    The defaults were chosen for gene nodes on validation screens (``benchmarks/ablations.py``).
    The paper's model and settings are :data:`~sccvae._constants.PAPER_MODEL` (abstract nodes,
    two hidden layers, ``mmd_weight=10``, ``control_reconstruction_weight=0.25``, no
    batch-mean term, the softmax encoder) with :data:`~sccvae._constants.PAPER_TRAINING` for
    :meth:`train`:
    ``SCCVAE(adata, **sccvae.PAPER_MODEL).train(**sccvae.PAPER_TRAINING)``.

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
        ``"genes"`` (default) or ``"abstract"`` (the paper's nodes; with its other settings
        in :data:`~sccvae._constants.PAPER_MODEL`), see above.
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
        DAG), ``"coexpression"`` (gene nodes only: each node's
        parents are the earlier nodes most correlated with it across control cells, at
        most :data:`~sccvae.model._nodes.COEXPRESSION_PARENTS`), or a DAG as a numpy array,
        pandas DataFrame or :class:`networkx.DiGraph` (reordered topologically; with gene
        nodes, over gene names: its nodes are the latent nodes). ``"random"`` has density
        0.03; :func:`sccvae.build_graph_mask` draws a 0/1 matrix of another density (with
        gene nodes, pass it as a DataFrame over the node genes).
    likelihood
        ``"gaussian"`` (log-normalised expression, the paper's setting) or ``"nb"`` (raw
        counts, negative binomial with each cell's library size).
    perturbation_embedding
        How targets are embedded for the perturbation encoder: ``"coexpression"`` (PCA of
        each gene's profile across control cells; any measured gene), ``"onehot"`` (seen
        targets only), or a :class:`pandas.DataFrame` indexed by gene name (any gene it
        lists). With gene nodes it only serves targets that are not node genes. The
        coexpression embedding has 50 dimensions; :func:`sccvae.coexpression_embedding`
        builds one of another size.
    mmd_weight
        ``alpha``: weight of the MMD between predicted and observed perturbed cells.
    control_reconstruction_weight
        ``lambda``: weight of the reconstruction of the control cells.
    mean_weight
        Weight of the squared error between the mean predicted and the mean observed
        perturbed cell of each minibatch.
    shared_response
        Learn the shift ``gamma_t s`` shared by all perturbations (a response common to
        them, such as stress); ``False`` leaves each target's own shift alone.
    perturbation_encoder
        For targets that are not node genes: ``"softmax"`` (the paper's soft choice of nodes
        from the embedding, ``c_t softmax(f(e_t) / T)``, in
        :data:`~sccvae._constants.PAPER_MODEL`) or
        ``"direction"`` (default: a signed unit vector ``c_t f(e_t) / |f(e_t)|``, which can
        move nodes both ways; chosen on validation cells of Norman 2019).
    unseen_magnitude
        How an unseen node gene's own shift is predicted from the training targets' (see
        :data:`~sccvae.model._interventions.UNSEEN_MAGNITUDE_RULES`): ``"auto"`` (default)
        takes the rule that predicts the training targets best, leave-one-target-out.
    seed
        Seed of the graph, the node order, the initial weights and the embedding; defaults
        to ``scvi.settings.seed``.
    **module_kwargs
        Options of :class:`~sccvae.SCCVAEModule` passed through (:data:`MODULE_OPTIONS`):
        ``node_weight`` (tying gene nodes to their genes in control cells, 1),
        ``n_hidden_perturbation`` (width of the perturbation encoder's hidden layer, 128),
        ``dropout_rate`` (in encoder and decoder, 0), ``target_temperature`` (of the softmax
        choosing latent nodes, 0.2; the reference uses 1) and ``linear_decoder`` (a linear
        map from the nodes to the genes beside the decoder network, ``False``).

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
        n_hidden: int = 512,
        n_layers: int = 1,
        latent_nodes: Literal["genes", "abstract"] = "genes",
        node_genes: Sequence[str] | None = None,
        node_order: Literal["targets_first", "variance", "random"] = "random",
        graph: str | np.ndarray | pd.DataFrame | nx.DiGraph = "full",
        likelihood: Literal["gaussian", "nb"] = "gaussian",
        perturbation_embedding: str | pd.DataFrame = "coexpression",
        mmd_weight: float = 0.0,
        control_reconstruction_weight: float = 16.0,
        mean_weight: float = 10.0,
        shared_response: bool = True,
        perturbation_encoder: Literal["softmax", "direction"] = "direction",
        unseen_magnitude: Literal["auto", "standardized", "log", "relative"] = "auto",
        seed: int | None = None,
        **module_kwargs,
    ):
        super().__init__(adata, registry)
        if registry is not None:  # loading a model saved with options that no longer exist
            module_kwargs = {k: v for k, v in module_kwargs.items() if k not in REMOVED_OPTIONS}
        removed = sorted(set(module_kwargs) & set(REMOVED_OPTIONS))
        if removed:
            raise TypeError(
                f"SCCVAE no longer takes {removed}: "
                + "; ".join(REMOVED_OPTIONS[name] for name in removed)
                + "."
            )
        unknown = sorted(set(module_kwargs) - set(MODULE_OPTIONS))
        if unknown:
            raise TypeError(
                f"SCCVAE got unexpected keyword argument(s) {unknown}: its own options are in "
                f"its signature, and those it passes to SCCVAEModule are {list(MODULE_OPTIONS)}."
            )
        _check_sizes(n_latent=n_latent, n_hidden=n_hidden, n_layers=n_layers)
        _check_weights(
            mmd_weight=mmd_weight,
            control_reconstruction_weight=control_reconstruction_weight,
            mean_weight=mean_weight,
        )
        if likelihood not in ("gaussian", "nb"):
            raise ValueError(f"likelihood must be 'gaussian' or 'nb', got {likelihood!r}.")
        if latent_nodes not in ("genes", "abstract"):
            raise ValueError(f"latent_nodes must be 'genes' or 'abstract', got {latent_nodes!r}.")
        self.seed_ = seed = self._seed(seed)
        self.latent_nodes_ = latent_nodes
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
        nodes = choose_latent_nodes(
            latent_nodes,
            self.var_names_,
            self.targets_,
            node_genes,
            n_latent,
            node_order,
            graph,
            seed,
            control,
        )
        mask, self.latent_node_names_, target_nodes = nodes.mask, nodes.names, nodes.target_nodes
        self.gene_embedding_ = build_embedding(
            perturbation_embedding,
            self.targets_,
            self.adata.var_names,
            control,
            seed=seed,
            embedded_targets=[self.targets_[i] for i in np.flatnonzero(target_nodes < 0)],
        )
        magnitude = observed_own_changes(
            expression,
            registered_label_codes(self.adata_manager),
            parsed,
            self.targets_,
            target_nodes,
            self.var_names_,
            nodes.center,
            nodes.scale,
            counts=likelihood == "nb",
        )
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
                node_genes=nodes.columns,
                target_nodes=target_nodes,
                gene_center=nodes.center,
                gene_scale=nodes.scale,
                initial_magnitude=magnitude,
                n_hidden=n_hidden,
                n_layers=n_layers,
                likelihood=likelihood,
                mmd_weight=mmd_weight,
                control_reconstruction_weight=control_reconstruction_weight,
                mean_weight=mean_weight,
                **module_kwargs,
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
            adata,
            perturbation_key,
            control_label,
            layer,
            combination_delimiter,
            min_cells=MIN_CELLS_PER_PERTURBATION,
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
        lacks (see :func:`sccvae.model._reference.check_loaded_data`); the training data or a
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


def _check_sizes(**sizes) -> None:
    """Raise a ValueError naming a size that is not a positive integer."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_weights(**weights) -> None:
    """Raise a ValueError naming a loss weight that is not a finite number >= 0."""
    for name, value in weights.items():
        number = isinstance(value, int | float | np.integer | np.floating)
        if isinstance(value, bool) or not number or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def _count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 (``"1 node gene"``, ``"64 gene nodes"``)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
