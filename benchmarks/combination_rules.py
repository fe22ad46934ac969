"""How should a combination of trained targets combine their calibrated singles?

A diagnostic for the combination split on *validation* screens (never the benchmark's test
folds). SCCVAE predicts a double ``A+B`` by propagating the sum of the corrected shifts of
``A`` and ``B`` through the latent structure and adding their calibration residuals, with
decreases saturating at the decrease bound and predicted cells clipped at the expression
floor (see :mod:`sccvae.model._calibration`). Without bound and floor that equals the additive
model (the observed singles' sum) plus the structure's interaction ``S(A+B) - S(A) -
S(B)``, where ``S`` is the structure with the latent corrections. This script trains SCCVAE
on the combination split of ``simulate_perturbseq(seed, n_combinations=30)`` (all doubles
held out, every single trained) and scores, on the 20 most changed genes of every held-out
double (Pearson and squared error of the mean change):

- ``additive``: the observed training singles' sum;
- ``current``: SCCVAE's prediction (calibrated, with the bound and the floor);
- ``no_bound``: the same trained model with the decrease bound removed and calibrated
  again (combinations add their decreases without saturating);
- ``struct_diff``: additive plus the structure's interaction, computed here from the
  structure's predicted cells (saturated, clipped at the floor) with the residuals set to
  zero;
- ``ratio``: the additive prediction scaled per gene by the structure's own ratio
  ``S(A+B) / (S(A) + S(B))`` (clipped to [0, 1.5]; 1 where the denominator is below 0.05);
- ``ratio_c1``: the same ratio clipped to [0, 1].

Usage::

    python benchmarks/combination_rules.py --seed 1                  # additive truth
    python benchmarks/combination_rules.py --seed 1 --saturation 1   # saturating truth

Prints a markdown table and the command.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="seed of the validation screen")
    parser.add_argument("--saturation", type=float, default=0.0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch

    import sccvae
    from sccvae.model._calibration import calibrate_training_targets
    from sccvae.splits import combination_split

    torch.set_num_threads(1)
    kwargs = {"saturation": args.saturation} if args.saturation > 0 else {}
    adata = sccvae.data.simulate_perturbseq(seed=args.seed, n_combinations=30, **kwargs)
    split = combination_split(adata, seed=args.seed)
    keep = np.sort(np.concatenate([split.train_idx, split.validation_idx]))
    sub = adata[keep].copy()
    sccvae.SCCVAE.setup_anndata(sub)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    targets = sorted({t for p in set(labels) - {"control"} for t in p.split("+")})
    model = sccvae.SCCVAE(sub, n_latent=64, node_genes=targets, seed=args.seed)
    train_positions = np.searchsorted(keep, split.train_idx)
    model.train(
        train_indices=train_positions,
        validation_indices=np.searchsorted(keep, split.validation_idx),
        enable_progress_bar=False,
    )
    x = adata.X.toarray()
    train = split.train_idx
    control_mean = x[train][labels[train] == "control"].mean(0)
    doubles = sorted(set(labels[split.test_idx]))
    singles = sorted({t for d in doubles for t in d.split("+")})
    observed_single = {s: x[train][labels[train] == s].mean(0) - control_mean for s in singles}
    observed_double = {d: x[labels == d].mean(0) - control_mean for d in doubles}
    train_cells = adata[train].copy()

    def changes(perturbations):
        pred = model.predict(
            [*perturbations, "control"], n_cells=500, adata=train_cells, return_mean=True, seed=0
        )
        base = pred["control"].X[0]
        return {p: pred[p].X[0] - base for p in perturbations}

    current = changes(doubles)
    residual = model.module.target_residual.clone()
    model.module.target_residual.zero_()  # the latent structure alone
    structure = changes(doubles + singles)
    model.module.target_residual.copy_(residual)
    model.module.decrease_bound.fill_(float("inf"))
    calibrate_training_targets(model, train_positions, seed=args.seed)
    no_bound = changes(doubles)

    def score(pred, obs):
        top = np.argsort(-np.abs(obs))[:20]
        return np.corrcoef(pred[top], obs[top])[0, 1], np.mean((pred[top] - obs[top]) ** 2)

    rules = ["additive", "current", "no_bound", "struct_diff", "ratio", "ratio_c1"]
    scores = {rule: [] for rule in rules}
    for double in doubles:
        a, b = double.split("+")
        additive = observed_single[a] + observed_single[b]
        parts = structure[a] + structure[b]
        big = np.abs(parts) > 0.05
        ratio = np.where(big, structure[double] / np.where(big, parts, 1.0), 1.0)
        obs = observed_double[double]
        scores["additive"].append(score(additive, obs))
        scores["current"].append(score(current[double], obs))
        scores["no_bound"].append(score(no_bound[double], obs))
        scores["struct_diff"].append(score(additive + structure[double] - parts, obs))
        scores["ratio"].append(score(np.clip(ratio, 0, 1.5) * additive, obs))
        scores["ratio_c1"].append(score(np.clip(ratio, 0, 1) * additive, obs))
    screen = f"seed {args.seed}, saturation {args.saturation}"
    print(f"Validation screen: {screen}, {len(doubles)} doubles")
    print()
    print("| rule | pearson_de | mse_de |")
    print("|---|---|---|")
    for rule in rules:
        values = np.asarray(scores[rule])
        print(f"| {rule} | {values[:, 0].mean():.4f} | {values[:, 1].mean():.4f} |")
    print()
    print(f"`python {shlex.join(['benchmarks/combination_rules.py', *sys.argv[1:]])}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
