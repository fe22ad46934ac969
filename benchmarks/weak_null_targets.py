"""Why SCCVAE trails the coexpression baseline in the ``weak`` scenario: targets without effect.

Two diagnostics:

- with ``--results DIR`` (the output folder of ``sccvae benchmark --scenario weak --out DIR``):
  the benchmark's per-perturbation scores split by the simulator's ground truth, held-out
  targets with and without downstream effect (``uns["simulation"]["null_targets"]``);
- always: SCCVAE trained on fold 0 of the *validation* screen (the weak scenario's
  arguments with ``--seed``, default 1), and the learned strengths ``gamma_t`` of the shared
  shift of its null and effective training targets.

Usage::

    sccvae benchmark --scenario weak --out weak
    python benchmarks/weak_null_targets.py --results weak

Prints markdown tables and the command.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

METHODS = ["sccvae", "coexpression", "mean"]
COLUMNS = ["pearson_delta_all", "de_overlap", "n_de_observed"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, help="output folder of the weak benchmark")
    parser.add_argument("--seed", type=int, default=1, help="seed of the validation screen")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch

    import sccvae
    from sccvae.data import SIMULATION_SCENARIOS
    from sccvae.splits import unseen_perturbation_folds

    torch.set_num_threads(1)
    weak = SIMULATION_SCENARIOS["weak"]
    if args.results is not None:
        truth = sccvae.data.simulate_perturbseq(seed=0, **weak).uns["simulation"]
        null = set(np.asarray(truth["null_targets"]).astype(str))
        results = pd.read_csv(args.results / "results.csv")
        results = results[results["method"].isin(METHODS)]
        results["target"] = np.where(results["perturbation"].isin(null), "null", "effect")
        table = results.groupby(["target", "method"])[COLUMNS].mean()
        counts = results.groupby(["target", "method"]).size().rename("n")
        print(f"Test folds of {args.results} (benchmark seed 0), by held-out target:\n")
        table = pd.concat([table, counts], axis=1)
        print("| target | method | " + " | ".join(table.columns) + " |")
        print("|---|---|" + "---|" * len(table.columns))
        for (target, method), row in table.iterrows():
            print(f"| {target} | {method} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
        print()

    adata = sccvae.data.simulate_perturbseq(seed=args.seed, **weak)
    null = set(np.asarray(adata.uns["simulation"]["null_targets"]).astype(str))
    fold = unseen_perturbation_folds(adata, n_folds=5, seed=args.seed)[0]
    keep = np.sort(np.concatenate([fold.train_idx, fold.validation_idx]))
    sub = adata[keep].copy()
    sccvae.SCCVAE.setup_anndata(sub)
    targets = sorted(set(adata.obs["perturbation"].astype(str)) - {"control"})
    model = sccvae.SCCVAE(sub, n_latent=64, node_genes=targets, seed=args.seed)
    model.train(
        train_indices=np.searchsorted(keep, fold.train_idx),
        validation_indices=np.searchsorted(keep, fold.validation_idx),
        enable_progress_bar=False,
    )
    gamma = model.module.shared_strength.detach().cpu().numpy()
    is_null = np.array([t in null for t in model.targets_])
    print(f"Validation screen (seed {args.seed}), fold 0: learned shared-shift strengths\n")
    print("| training targets | n | mean gamma | sd |")
    print("|---|---|---|---|")
    for name, mask in (("null", is_null), ("with effect", ~is_null)):
        print(f"| {name} | {mask.sum()} | {gamma[mask].mean():.3f} | {gamma[mask].std():.3f} |")
    print()
    print(f"`python {shlex.join(['benchmarks/weak_null_targets.py', *sys.argv[1:]])}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
