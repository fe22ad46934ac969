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

The parts: ``_data`` (reading, simulating and splitting the data), ``_methods`` (the
registry of methods behind one fit / predict protocol), ``_runner`` (the run), ``_report``
(tables, verdicts, markdown and plots) and ``_progress`` (progress bars and threads).
Methods: :data:`METHODS`.
"""

from ._data import SIMULATED_COMBINATIONS, load_data
from ._methods import (
    DEFAULT_MAX_EPOCHS,
    DEFAULT_METHODS,
    DEFAULT_MODEL_KWARGS,
    METHODS,
    REGISTRY,
    Method,
    default_methods,
)
from ._report import (
    PLOT_METRICS,
    VERDICT_METRICS,
    command_line,
    format_table,
    plot_metrics,
    plot_scatter,
    print_table,
    verdicts,
    write_outputs,
)
from ._result import BenchmarkInputError, BenchmarkResult
from ._runner import KEY_METRICS, RunSettings, run_benchmark

__all__ = [
    "METHODS",
    "REGISTRY",
    "Method",
    "KEY_METRICS",
    "PLOT_METRICS",
    "VERDICT_METRICS",
    "DEFAULT_MAX_EPOCHS",
    "DEFAULT_METHODS",
    "DEFAULT_MODEL_KWARGS",
    "SIMULATED_COMBINATIONS",
    "BenchmarkInputError",
    "BenchmarkResult",
    "RunSettings",
    "command_line",
    "default_methods",
    "load_data",
    "run_benchmark",
    "verdicts",
    "write_outputs",
    "format_table",
    "print_table",
    "plot_metrics",
    "plot_scatter",
]
