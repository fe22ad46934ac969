"""Time and peak memory of simulate_perturbseq at K562 size (target: < 2 min, < 8 GB).

Usage::

    python benchmarks/simulator_scale.py            # 8,563 genes, 300 x 200 cells, 10,000 controls
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-genes", type=int, default=8563)
    parser.add_argument("--n-perturbations", type=int, default=300)
    parser.add_argument("--n-cells-per-perturbation", type=int, default=200)
    parser.add_argument("--n-control-cells", type=int, default=10_000)
    args = parser.parse_args(argv)

    from sccvae.data import simulate_perturbseq

    start = time.perf_counter()
    adata = simulate_perturbseq(
        n_genes=args.n_genes,
        n_perturbations=args.n_perturbations,
        n_cells_per_perturbation=args.n_cells_per_perturbation,
        n_control_cells=args.n_control_cells,
        seed=0,
    )
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.2f}")
    print(
        f"| {adata.n_obs:,} cells x {adata.n_vars:,} genes | {seconds:.1f} s | peak RSS {peak_gb:.2f} GiB | "
        f"{adata.layers['counts'].nnz:,} non-zeros | median UMIs/cell {np.median(adata.obs['total_counts']):.0f} |"
    )


if __name__ == "__main__":
    main()
