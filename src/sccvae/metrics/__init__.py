"""Model-agnostic evaluation of perturbation-response predictions.

Everything here works on plain :class:`~anndata.AnnData` objects, so SCCVAE, the baselines
in :mod:`sccvae.baselines` and any external model can be scored the same way:

>>> table = evaluate(predicted, observed, control)  # doctest: +SKIP
>>> tables = {"sccvae": table, "mean": table_mean}  # doctest: +SKIP
>>> summary = summarize(tables, reference="sccvae")  # doctest: +SKIP

:func:`evaluate` returns one row per perturbation and one column per metric (see
:data:`METRICS`); :func:`summarize` averages them per method with bootstrap confidence
intervals, paired win rates and paired Wilcoxon signed-rank tests (:func:`paired_test`)
against a reference method.

Conventions
-----------
- ``mu_hat`` is the mean of the predicted cells of a perturbation, ``mu`` the mean of its
  observed cells, ``mu0`` the mean of the *control* AnnData (pass the training control
  cells so that the reference never includes test cells). All means are computed in
  float64.
- **DE genes** ``D``: the top ``n_de_genes`` genes of the observed perturbation cells versus
  the control cells, ranked by the absolute Welch t statistic
  ``|mu - mu0| / sqrt(s^2 / n + s0^2 / n0)`` (unbiased variances; the ranking scanpy's
  ``rank_genes_groups(method="t-test")`` uses). With ``de_method="abs_change"`` genes are
  ranked by ``|mu - mu0|`` instead. Ties keep gene order. ``D'`` (the ``*_de_notarget``
  metrics) is the top ``n_de_genes`` after removing the perturbation's own target gene(s);
  ``pearson_delta_all_notarget`` correlates the changes of all genes but the targets, so a
  prediction that only moves its targets scores NaN (a constant change) there.
- **Pearson correlations** of a vector that is constant (standard deviation below
  ``1e-6 * (1 + RMS(mu0))``, e.g. a control prediction given as a mean) are undefined and
  reported as NaN rather than 0.
- **Direction accuracy**: ``sign(mu_hat - mu0) == sign(mu - mu0)`` averaged over genes;
  genes whose *observed* change is exactly zero (e.g. never detected in either group) are
  excluded; a predicted change that is numerically zero (``|change| <=`` the tolerance
  above, e.g. a control-mean prediction) counts as wrong. NaN when no gene is left. So
  predicting the exact control mean scores 0, while predicting *sampled* control cells
  scores about 0.5 (the paper's "control cells as prediction" row).
- **Distribution metrics** (``energy_distance``, ``mmd``) compare cells in a PCA space
  (50 components by default) fitted on training cells: pass ``pca`` (a fitted
  :class:`sklearn.decomposition.PCA` or a ``(mean, components)`` pair, see :func:`fit_pca`);
  otherwise it is fitted on the control AnnData. The larger of the two cell sets is
  subsampled (seeded, per perturbation) to the size of the smaller, capped at ``n_cells``
  (default 500) per side. NaN when either side has fewer than 2 cells (e.g. predictions
  made with ``return_mean=True``).
"""

from ._core import mean_of_perturbation_means, pearson
from ._distribution import energy_distance, fit_pca, mmd
from ._evaluate import METRICS, evaluate
from ._summary import paired_test, summarize, win_rate

__all__ = [
    "METRICS",
    "evaluate",
    "summarize",
    "win_rate",
    "paired_test",
    "fit_pca",
    "mean_of_perturbation_means",
    "energy_distance",
    "mmd",
    "pearson",
]
