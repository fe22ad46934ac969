"""Does the default training length over-fit? The Quick start's losses, and unseen accuracy.

Two measurements:

1. **The Quick start's history.** ``simulate_perturbseq(seed=0)`` trained as in the README
   (defaults, ``train_size=0.9``): every loss term per epoch on training and validation
   cells, and what each term contributes to the change of the total validation loss between
   its lowest epoch and the last.
2. **Unseen accuracy against length.** Fold 0 of the unseen split of the validation screen
   (``simulate_perturbseq(seed=1)``, not the benchmark's seed), trained for each of
   ``--epochs`` (the default length last), then its 12 held-out targets predicted (calibrated,
   as ``predict`` makes them, from training control cells) and scored: mean Pearson
   correlation of change and mean squared error over all genes.

Usage::

    python benchmarks/training_length.py --epochs 8 16 31
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings

import numpy as np
import pandas as pd

#: weights of the loss terms at SCCVAE's defaults: total = rec
#: + 10 mean_error + beta kl + 16 control_reconstruction + node_reconstruction (mmd weight 0)
TERMS = {
    "perturbed_reconstruction": 1.0,
    "mean_error": 10.0,
    "control_reconstruction": 16.0,
    "node_reconstruction": 1.0,
}


def quick_start_history() -> None:
    import sccvae

    adata = sccvae.data.simulate_perturbseq(seed=0)
    sccvae.SCCVAE.setup_anndata(adata, perturbation_key="perturbation", control_label="control")
    model = sccvae.SCCVAE(adata)
    model.train(enable_progress_bar=False)
    history = model.history
    frame = pd.concat([history[key] for key in sorted(history)], axis=1)
    low = int(frame["validation_loss"].to_numpy().argmin())
    last = len(frame) - 1
    print(f"Quick start: {last + 1} epochs; validation loss lowest at epoch {low + 1} ")
    print("| term (weighted) | train, epoch low | train, last | validation, epoch low | "
          "validation, last |")  # fmt: skip
    print("|---|---|---|---|---|")
    rows = [("total", "train_loss", "validation_loss", 1.0)]
    rows += [(f"{w:g} x {t}", f"{t}_train", f"{t}_validation", w) for t, w in TERMS.items()]
    for name, train, validation, weight in rows:
        values = [weight * frame[c].iloc[i] for c in (train, validation) for i in (low, last)]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    beta = frame["kl_weight"]
    values = [
        beta.iloc[i] * frame[f"kl_{mode}"].iloc[i]
        for mode in ("train", "validation")
        for i in (low, last)
    ]
    print("| beta x kl | " + " | ".join(f"{v:.3f}" for v in values) + " |")


def unseen_accuracy(epochs: list[int]) -> None:
    import sccvae
    from sccvae.splits import unseen_perturbation_folds

    sim = sccvae.data.simulate_perturbseq(seed=1)
    x = sim.X.toarray() if hasattr(sim.X, "toarray") else np.asarray(sim.X)
    labels = sim.obs["perturbation"].astype(str).to_numpy()
    fold = unseen_perturbation_folds(sim, n_folds=5, seed=0)[0]
    keep = np.sort(np.concatenate([fold.train_idx, fold.validation_idx]))
    test = list(fold.test_perturbations)
    train_cells = sim[fold.train_idx].copy()
    control = x[fold.train_idx][labels[fold.train_idx] == "control"].mean(axis=0)
    print(f"\nUnseen split, fold 0 of simulate_perturbseq(seed=1): {len(test)} test targets")
    print("| epochs | Pearson of change | MSE, all genes | validation loss lowest at | seconds |")
    print("|---|---|---|---|---|")
    for n in epochs:
        sub = sim[keep].copy()
        sccvae.SCCVAE.setup_anndata(sub, perturbation_key="perturbation")
        model = sccvae.SCCVAE(sub, seed=0)
        start = time.perf_counter()
        model.train(
            max_epochs=n,
            train_indices=np.searchsorted(keep, fold.train_idx),
            validation_indices=np.searchsorted(keep, fold.validation_idx),
            enable_progress_bar=False,
        )
        pred = model.predict(test, n_cells=200, seed=0, return_mean=True, adata=train_cells)
        r, mse = [], []
        for i, label in enumerate(test):
            observed = x[labels == label].mean(axis=0) - control
            change = pred.X[i] - control
            r.append(np.corrcoef(change, observed)[0, 1])
            mse.append(np.mean((change - observed) ** 2))
        low = int(model.history["validation_loss"].to_numpy().argmin()) + 1
        seconds = time.perf_counter() - start
        print(f"| {n} | {np.mean(r):.3f} | {np.mean(mse):.4f} | epoch {low} | {seconds:.0f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[8, 16, 31])
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    quick_start_history()
    unseen_accuracy(args.epochs)
    print(f"\n`python {shlex.join(['benchmarks/training_length.py', *sys.argv[1:]])}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
