"""Benchmark runner: SCCVAE against simple baselines on held-out perturbations.

:func:`run_benchmark` splits a data set (:mod:`sccvae.splits`), trains SCCVAE and the
baselines of :mod:`sccvae.baselines` on the training cells of every split, predicts the
held-out perturbations, scores them with :func:`sccvae.metrics.evaluate` and summarises the
scores with bootstrap confidence intervals and paired win rates of SCCVAE against every
other method (:func:`sccvae.metrics.summarize`). The command line ``sccvae benchmark`` (see
:mod:`sccvae.cli`) wraps it and writes the outputs described in :func:`write_outputs`.

Leakage rules followed here:

- Every model is set up and trained on a copy holding only the split's *training and
  validation* cells, so the targets of test perturbations are truly unseen by SCCVAE (not
  even present, untrained, in its vocabulary). Baselines are fitted on training cells only.
- Predictions start from *training* control cells; the evaluation's control reference and
  its PCA space (distribution metrics) are computed from training cells only.
- Validation cells are given to SCCVAE so its validation loss is logged (and early stopping
  can use it); no test cell is used for training or for any choice.

The parts: ``_data`` (reading, simulating and splitting the data, reading gene embeddings),
``_methods`` (the registry of methods behind one fit / predict protocol), ``_coverage``
(what each method can represent, so which perturbations a run can test), ``_runner`` (the
run, step by step), ``_settings`` (argument checks, the run's settings, its config record),
``_plan`` (expression, working copy, design and folds), ``_fold`` (fitting and scoring the
folds), ``_summary`` (pooling and summarising the scores), ``_report`` (tables, verdicts,
markdown and plots) and ``_progress`` (progress bars and threads).
Methods: :data:`METHODS`; variants of SCCVAE: :func:`sccvae_variant` and
:func:`register_method`.
"""

from sccvae._lazy import lazy_attributes

_LAZY = {
    "DEFAULT_SCENARIO": "._data",
    "SIMULATED_COMBINATIONS": "._data",
    "TEST_SEED": "._data",
    "load_data": "._data",
    "load_embedding": "._data",
    "DEFAULT_MAX_EPOCHS": "._methods",
    "DEFAULT_METHODS": "._methods",
    "DEFAULT_MODEL_KWARGS": "._methods",
    "METHODS": "._methods",
    "REGISTRY": "._methods",
    "Method": "._methods",
    "default_methods": "._methods",
    "register_method": "._methods",
    "sccvae_variant": "._methods",
    "PLOT_METRICS": "._report",
    "VERDICT_METRICS": "._report",
    "command_line": "._report",
    "plot_metrics": "._report",
    "plot_scatter": "._report",
    "print_table": "._report",
    "verdicts": "._report",
    "write_outputs": "._report",
    "BenchmarkInputError": "._errors",
    "BenchmarkResult": "._result",
    "format_table": "._result",
    "KEY_METRICS": "._settings",
    "RunSettings": "._settings",
    "run_benchmark": "._runner",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
__all__ = list(_LAZY)
