"""The tutorial notebooks run end to end on offline stand-in data.

Each notebook is executed with papermill (parameters: stand-in data, a few epochs) into a
temporary directory; the tables it writes to ``output_dir`` are then checked. On 2 CPU
cores each run takes well under a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import PERTURBENCH_DEVEL, PERTURBENCH_DEVEL_MISSING

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
CI_EPOCHS = 3

#: norman19 doubles of the perturbench devel subset whose two genes are both trained singles
NORMAN_DEVEL_DOUBLES = {
    "KLF1+MAP2K6",
    "KLF1+TGFBR2",
    "MAP2K3+MAP2K6",
    "MAP2K3+SLC38A2",
    "MAPK1+TGFBR2",
}


def _execute(name: str, tmp_path: Path, monkeypatch, **parameters) -> tuple[Path, dict]:
    """Run ``tutorials/<name>`` with papermill; return its output_dir and executed notebook."""
    import nbformat
    import papermill

    # one BLAS / OpenMP thread: faster for these small models, and fair to other jobs
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(variable, "1")
    output_dir = tmp_path / "results"
    executed = tmp_path / name
    papermill.execute_notebook(
        str(TUTORIALS / name),
        str(executed),
        parameters={**parameters, "output_dir": str(output_dir)},
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
        execution_timeout=600,
    )
    return output_dir, nbformat.read(executed, as_version=4)


def _outputs(notebook) -> tuple[str, int]:
    """All printed text of a notebook and its number of images."""
    text, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                text.append(output["text"])
            elif "image/png" in output.get("data", {}):
                images += 1
    return "".join(text), images


def _check_metrics(output_dir: Path, methods: set[str], perturbations: set[str]) -> pd.DataFrame:
    metrics = pd.read_csv(output_dir / "metrics.csv")
    assert set(metrics["method"]) == methods
    for method, table in metrics.groupby("method"):
        assert set(table["perturbation"]) == perturbations, method
    assert np.isfinite(metrics["mse_de"]).all()
    assert np.isfinite(metrics["energy_distance"]).all()
    sccvae_rows = metrics[metrics["method"] == "sccvae"]
    assert np.isfinite(sccvae_rows["pearson_delta_de"]).all()
    summary = pd.read_csv(output_dir / "summary.csv")
    assert set(summary["method"]) == methods
    assert (summary["reference"] == "sccvae").all()
    return metrics


@pytest.mark.skipif(
    not PERTURBENCH_DEVEL.exists(), reason=PERTURBENCH_DEVEL_MISSING
)
def test_norman2019_tutorial_on_devel_stand_in(tmp_path, monkeypatch):
    output_dir, notebook = _execute(
        "norman2019.ipynb", tmp_path, monkeypatch,
        devel_path=str(PERTURBENCH_DEVEL), max_epochs=CI_EPOCHS,
    )  # fmt: skip
    text, images = _outputs(notebook)
    assert "STAND-IN" in text
    assert images >= 6  # loss, metrics, predicted vs observed, modules, dose, graph
    info = json.loads((output_dir / "run_info.json").read_text())
    assert info["data"].startswith("stand-in")
    assert info["max_epochs"] == CI_EPOCHS
    # only 1 of 31 targets is measured: one-hot embeddings, only doubles of trained singles
    assert info["perturbation_embedding"] == "onehot"
    assert set(info["test_perturbations"]) == NORMAN_DEVEL_DOUBLES
    metrics = _check_metrics(
        output_dir, {"sccvae", "control", "mean", "additive", "linear"}, NORMAN_DEVEL_DOUBLES
    )
    assert set(metrics["category"]) == {"seen 2"}


def test_replogle2022_tutorial_on_simulated_stand_in(tmp_path, monkeypatch):
    output_dir, notebook = _execute(
        "replogle2022_k562.ipynb", tmp_path, monkeypatch,
        use_simulated_stand_in=True, max_epochs=CI_EPOCHS,
        sim_n_genes=300, sim_n_perturbations=30, sim_n_control_cells=1000,
    )  # fmt: skip
    text, images = _outputs(notebook)
    assert "STAND-IN" in text
    assert images >= 6  # filter, loss, metrics, predicted vs observed, dose, modules
    info = json.loads((output_dir / "run_info.json").read_text())
    assert info["data"].startswith("stand-in")
    assert info["fold"] == 0 and info["n_folds"] == 5
    test_perturbations = set(info["test_perturbations"])
    # one fold of five: about a fifth of the kept knock-downs, all single genes
    assert 2 <= len(test_perturbations) <= info["n_perturbations_kept"] // 4
    assert not any("+" in p for p in test_perturbations)
    _check_metrics(
        output_dir,
        {"sccvae", "control", "mean", "linear", "coexpression", "knn"},
        test_perturbations,
    )
