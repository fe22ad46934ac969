"""Datasets, preprocessing and a ground-truth simulator for perturbation screens.

Every AnnData returned here follows the package conventions:

- ``obs["perturbation"]``: string labels, ``"control"`` for unperturbed cells, combinations
  joined by ``"+"`` in sorted order (``"GENE1+GENE2"``);
- ``layers["counts"]``: raw counts (CSR, float32);
- ``X``: ``normalize_total(target_sum=1e4)`` + ``log1p`` of the counts (CSR, float32);
- ``var_names``: unique gene symbols.

Public datasets are downloaded on first use (never at import) into a cache directory
(``cache_dir=``, ``$SCCVAE_CACHE_DIR`` or ``platformdirs.user_cache_dir("sccvae")``); pass
``path=`` to use a local copy instead.
"""

from sccvae._lazy import lazy_attributes

_LAZY = {
    **dict.fromkeys(
        [
            "CONTROL_ALIASES",
            "from_replogle",
            "from_scperturb",
            "norman2019",
            "perturbench_devel",
            "recover_counts",
            "replogle2022_k562_essential",
            "standardize_perturbation_labels",
        ],
        "._datasets",
    ),
    **dict.fromkeys(
        [
            "DATASETS",
            "ChecksumMismatchError",
            "DatasetDownloadError",
            "RemoteFile",
            "download_dataset",
            "get_cache_dir",
        ],
        "._download",
    ),
    **dict.fromkeys(
        [
            "filter_strong_perturbations",
            "log_normalize_counts",
            "normalize",
            "perturbation_targets",
            "select_genes",
        ],
        "._preprocessing",
    ),
    "SIMULATION_SCENARIOS": "._scenarios",
    "simulate_perturbseq": "._simulate",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

__all__ = [
    "CONTROL_ALIASES",
    "DATASETS",
    "ChecksumMismatchError",
    "DatasetDownloadError",
    "RemoteFile",
    "SIMULATION_SCENARIOS",
    "download_dataset",
    "filter_strong_perturbations",
    "from_replogle",
    "from_scperturb",
    "get_cache_dir",
    "log_normalize_counts",
    "normalize",
    "norman2019",
    "perturbation_targets",
    "perturbench_devel",
    "recover_counts",
    "replogle2022_k562_essential",
    "select_genes",
    "simulate_perturbseq",
    "standardize_perturbation_labels",
]
