"""How long does calibration (latent corrections + floor-aware residuals) take as screens grow?

Calibration runs once after training (``train(calibrate=True)``, the default). Its cost grows
with the number of trained perturbations and genes, not with the training's length: the
latent corrections take 100 Adam steps over every trained label (32 control cells each,
network frozen) and the residuals a pass of 256 control cells per label. The work does not
depend on what the network learned, so an untrained model on random log-normalised data
measures it. One process per size, one torch thread unless ``--threads``.

Usage::

    python benchmarks/calibration_cost.py                          # 1000x60, 2000x300, 5000x300
    python benchmarks/calibration_cost.py --sizes 8563x2000 --threads 2

Prints a markdown table and the command.
"""

from __future__ import annotations

import argparse
import logging
import platform
import shlex
import subprocess
import sys
import time
import warnings


def measure(n_genes: int, n_targets: int, threads: int) -> tuple[float, float]:
    """Seconds of ``calibrate_training_targets`` and its error after, for one size."""
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    import torch

    import sccvae
    from sccvae.model._calibration import calibrate_training_targets

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(n_genes)]
    labels = ["control"] * 2000 + [genes[t] for t in range(n_targets) for _ in range(20)]
    counts = rng.poisson(0.5, (len(labels), n_genes)).astype(np.float32)
    adata = ad.AnnData(
        sp.csr_matrix(np.log1p(counts)),
        obs=pd.DataFrame(
            {"perturbation": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))]
        ),
        var=pd.DataFrame(index=genes),
    )
    sccvae.SCCVAE.setup_anndata(adata)
    model = sccvae.SCCVAE(adata, n_latent=64, perturbation_embedding="onehot", seed=0)
    start = time.perf_counter()
    errors = calibrate_training_targets(model, np.arange(adata.n_obs))
    return time.perf_counter() - start, errors["after"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["1000x60", "2000x300", "5000x300"], help="GENESxTARGETS"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one size
    args = parser.parse_args(argv)
    if args.one:
        n_genes, n_targets = (int(v) for v in args.one.split("x"))
        seconds, after = measure(n_genes, n_targets, args.threads)
        print(f"{seconds:.1f} {after:.2e}")
        return 0
    print(f"Machine: {platform.platform()}, {args.threads} torch thread(s)")
    print()
    print("| genes | trained perturbations | calibration seconds |")
    print("|---|---|---|")
    for size in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", size, "--threads", str(args.threads)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        n_genes, n_targets = size.split("x")
        print(f"| {n_genes} | {n_targets} | {out[0]} |")
    print()
    print(f"`python {shlex.join(['benchmarks/calibration_cost.py', *sys.argv[1:]])}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
