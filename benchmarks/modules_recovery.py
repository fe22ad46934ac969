"""Recovery of known functional modules from SCCVAE's latent space vs observed pseudobulk.

The paper clusters perturbations by their latent shift (or mean causal state) and finds
functional modules. This benchmark measures that on simulated Perturb-seq data whose
perturbation targets belong to known modules (``sccvae.data.simulate_perturbseq``: targets of
one module regulate the same downstream gene set with shared signs). All perturbations are
seen in training. For each resolution it reports the adjusted Rand index (ARI) against the
true module ids of

- ``perturbation_modules(use="decoded")``: the model's decoded change of expression (PCA),
  the default with gene nodes;
- ``perturbation_modules(use="causal")``: the mean causal latent minus that of controls;
- ``perturbation_modules(use="shift")``: the learned shift ``c_p a_p`` (with gene nodes a
  one-hot vector per target: no module information, shown for completeness);
- ``pseudobulk_modules``: the observed mean change from control (PCA), the model-free baseline.

``--latent-nodes abstract`` runs the paper's model instead.

Usage::

    python benchmarks/modules_recovery.py                 # defaults below, ~2-4 min on 2 CPU cores
    python benchmarks/modules_recovery.py --epochs 50 --seeds 0 1 2

Prints a markdown table and the command that produced it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np
import pandas as pd


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-genes", type=int, default=400)
    parser.add_argument("--n-perturbations", type=int, default=30)
    parser.add_argument("--n-modules", type=int, default=5)
    parser.add_argument("--cells-per-perturbation", type=int, default=100)
    parser.add_argument("--control-cells", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=None, help="default: the model's")
    parser.add_argument("--n-latent", type=int, default=32)
    parser.add_argument("--latent-nodes", default="genes", choices=["genes", "abstract"])
    parser.add_argument("--n-neighbors", type=int, default=5)
    parser.add_argument("--metrics", nargs="+", default=["euclidean", "cosine"])
    parser.add_argument("--method", default="leiden", choices=["leiden", "louvain"])
    parser.add_argument("--resolutions", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--no-calibrate",
        action="store_true",
        help="train(calibrate=False): decoded changes come from the latent structure alone "
        "(with calibration, trained perturbations reproduce their observed mean change)",
    )
    args = parser.parse_args(argv)

    import scvi

    import sccvae
    from sccvae.model._functional_modules import (
        module_recovery_score,
        perturbation_modules,
        pseudobulk_modules,
    )

    rows = []
    start = time.perf_counter()
    for seed in args.seeds:
        scvi.settings.seed = seed
        adata = sccvae.data.simulate_perturbseq(
            n_genes=args.n_genes,
            n_perturbations=args.n_perturbations,
            n_cells_per_perturbation=args.cells_per_perturbation,
            n_control_cells=args.control_cells,
            n_modules=args.n_modules,
            seed=seed,
        )
        sim = adata.uns["simulation"]
        truth = pd.Series(
            np.asarray(sim["target_modules"]), index=np.asarray(sim["targets"]).astype(str)
        )
        sccvae.SCCVAE.setup_anndata(adata)
        # abstract nodes: the paper's model, with its settings
        paper = args.latent_nodes == "abstract"
        model_kwargs = sccvae.PAPER_MODEL if paper else {}
        train_kwargs = sccvae.PAPER_TRAINING if paper else {}
        model = sccvae.SCCVAE(adata, n_latent=args.n_latent, seed=seed, **model_kwargs)
        t0 = time.perf_counter()
        model.train(
            **train_kwargs,
            max_epochs=args.epochs,
            enable_progress_bar=False,
            train_size=1.0,
            calibrate=not args.no_calibrate,
        )
        train_s = time.perf_counter() - t0
        epochs = len(model.history["train_loss"])
        print(f"seed {seed}: trained {epochs} epochs in {train_s:.0f} s", file=sys.stderr)
        for metric in args.metrics:
            common = dict(
                n_neighbors=args.n_neighbors, method=args.method, seed=seed, metric=metric
            )
            for resolution in args.resolutions:
                results = {
                    f"SCCVAE {use}": perturbation_modules(
                        model, use=use, resolution=resolution, **common
                    )
                    for use in ("decoded", "causal", "shift")
                }
                results |= {
                    "observed pseudobulk": pseudobulk_modules(
                        adata, resolution=resolution, **common
                    ),
                }
                for name, modules in results.items():
                    rows.append(
                        {
                            "seed": seed,
                            "metric": metric,
                            "resolution": resolution,
                            "representation": name,
                            "ARI": module_recovery_score(modules.obs["module"], truth),
                            "n_modules_found": modules.obs["module"].nunique(),
                        }
                    )
    table = pd.DataFrame(rows)
    summary = (
        table.groupby(["metric", "resolution", "representation"], sort=False)
        .agg(ARI=("ARI", "mean"), ARI_sd=("ARI", "std"), modules_found=("n_modules_found", "mean"))
        .reset_index()
    )
    print(f"\nTrue modules: {args.n_modules}; perturbations: {args.n_perturbations}; ", end="")
    print(f"seeds: {args.seeds}\n")
    lines = [
        "| kNN metric | resolution | representation | ARI vs true modules | modules found |",
        "|---|---|---|---|---|",
    ]
    for _, r in summary.iterrows():
        sd = "" if len(args.seeds) < 2 else f" ± {r['ARI_sd']:.2f}"
        cells = [
            r["metric"], f"{r['resolution']:g}", r["representation"], f"{r['ARI']:.2f}{sd}",
            f"{r['modules_found']:.1f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print(f"\nTotal time: {time.perf_counter() - start:.0f} s")
    print(
        "Command: python benchmarks/modules_recovery.py "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    )


if __name__ == "__main__":
    main()
