import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest


from .conftest import PERTURBENCH_DEVEL, PERTURBENCH_DEVEL_MISSING

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_ddp_two_processes(tmp_path):
    """Two CPU processes share the paired batches: each runs about half of them per epoch."""
    script = tmp_path / "ddp_train.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys
            sys.path.insert(0, {str(ROOT)!r})
            import scvi
            import sccvae
            from sccvae.train._dataloading import PairedPerturbationSampler
            from tests.conftest import make_toy_adata

            scvi.settings.seed = 0
            adata = make_toy_adata()
            sccvae.SCCVAE.setup_anndata(adata)
            model = sccvae.SCCVAE(adata, n_latent=8, n_hidden=32)
            model.train(max_epochs=2, batch_size=32, accelerator="cpu", devices=2,
                        strategy="ddp_find_unused_parameters_true", enable_progress_bar=False,
                        logger=False, enable_model_summary=False)
            # one file per rank: both processes printing to the shared stdout pipe could
            # interleave their lines character by character
            rank = model.trainer.global_rank
            with open(f"rank{{rank}}.txt", "w") as handle:
                handle.write(f"RANK {{rank}} STEPS {{model.trainer.global_step}}\\n")
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [path.read_text().split() for path in sorted(tmp_path.glob("rank*.txt"))]
    ranks = sorted(int(line[1]) for line in lines)
    assert ranks == [0, 1]
    # 9 perturbations x 60 cells, 90 % train -> 54 cells each -> 2 batches each = 18 batches/epoch
    steps = {int(line[3]) for line in lines}
    assert steps == {18}  # 2 epochs x 9 batches per process


@pytest.mark.skipif(not PERTURBENCH_DEVEL.exists(), reason=PERTURBENCH_DEVEL_MISSING)
def test_norman19_devel_end_to_end():
    import anndata as ad

    import sccvae

    full = ad.read_h5ad(PERTURBENCH_DEVEL)
    adata = full[full.obs["dataset"] == "norman19"].copy()
    adata.X = adata.X.astype(np.float32)
    sccvae.SCCVAE.setup_anndata(adata, perturbation_key="condition", control_label="control")
    # only 1 of the targets is a measured gene here: one-hot embeddings
    model = sccvae.SCCVAE(adata, n_latent=32, n_hidden=128, perturbation_embedding="onehot", seed=0)
    model.train(max_epochs=40, enable_progress_bar=False, plan_kwargs={"lr": 2e-3})
    loss = model.history["train_loss"]["train_loss"].to_numpy()
    assert loss[-3:].mean() < loss[:3].mean()
    labels = adata.obs["condition"].astype(str)
    control_mean = np.asarray(adata[labels == "control"].X.mean(axis=0)).ravel()
    perturbations = [p for p in labels.unique() if p != "control"]
    pred = model.predict(perturbations, n_cells=300, return_mean=True, seed=0)
    model_error, control_error = [], []
    for label in perturbations:
        observed = np.asarray(adata[labels == label].X.mean(axis=0)).ravel()
        predicted = pred[label].X.ravel()  # predictions carry the labels as requested
        model_error.append(np.mean((predicted - observed) ** 2))
        control_error.append(np.mean((control_mean - observed) ** 2))
    model_error, control_error = np.array(model_error), np.array(control_error)
    # ~100 cells per perturbation: part of each error is noise in the observed mean itself,
    # so weak perturbations cannot all be beaten; the model must win clearly overall.
    assert model_error.mean() < 0.7 * control_error.mean()
    assert np.mean(model_error < control_error) >= 0.75
    # doubles of seen singles: right labels and shapes
    combos = model.predict(["KLF1+MAP2K6", "MAP2K6+KLF1"], n_cells=10, seed=0)
    assert combos.shape == (20, adata.n_vars)
    np.testing.assert_allclose(combos.X[:10], combos.X[10:])
