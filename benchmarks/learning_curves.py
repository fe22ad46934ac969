"""Learning curves of SCCVAE's default schedule: is ~3,000 optimiser steps long enough?

Trains SCCVAE with its defaults for twice the default number of epochs on two data sets and
records, every few epochs, the loss terms on training and validation cells and the Pearson
correlation of change (all genes) between the predicted and the observed mean of every
training perturbation's *validation* cells (cells never trained on):

- the built-in simulated screen (``simulate_perturbseq(seed=1)``, a validation screen: not the
  benchmark's seed), unseen-split fold 0's training perturbations;
- Norman 2019 from the perturbench development file (``dataset == "norman19"``), the seen
  split's training cells (skipped when the file is absent).

Usage::

    python benchmarks/learning_curves.py --out docs/_static/learning_curves.png

Prints a markdown table (metric at the default length and at twice it) and writes the plot.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np

DEVEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "perturbench_devel.h5ad"


def _curves(adata, key: str, train_idx, val_idx, every: int, factor: float, embedding: str):
    import lightning.pytorch as pl
    import torch

    import sccvae
    from sccvae.train._training_plan import default_epochs
    from sccvae._perturbations import canonical
    from sccvae.metrics import pearson

    keep = np.sort(np.concatenate([train_idx, val_idx]))
    sub = adata[keep].copy()
    sccvae.SCCVAE.setup_anndata(sub, perturbation_key=key)
    model = sccvae.SCCVAE(sub, perturbation_embedding=embedding, seed=0)
    train_pos, val_pos = np.searchsorted(keep, train_idx), np.searchsorted(keep, val_idx)
    labels = sub.obs[key].astype(str).to_numpy()
    x = sub.X.toarray() if hasattr(sub.X, "toarray") else np.asarray(sub.X)
    control = train_pos[labels[train_pos] == "control"]
    mu0 = x[control].mean(0)
    val_perts = sorted(set(labels[val_pos]) - {"control"})
    observed = {p: x[val_pos[labels[val_pos] == p]].mean(0) - mu0 for p in val_perts}
    train_cells = sub[train_pos].copy()
    scores: list[tuple[int, float]] = []

    class Score(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            epoch = trainer.current_epoch + 1
            if epoch % every:
                return
            was_training = model.module.training
            pred = model.predict(val_perts + ["control"], n_cells=300, adata=train_cells,
                                 return_mean=True, seed=0)  # fmt: skip
            model.module.train(was_training)
            source = pred["control"].X[0]
            r = [pearson(pred[canonical(p)].X[0] - source, observed[p]) for p in val_perts]
            scores.append((epoch, float(np.nanmean(r))))

    perturbed = labels[train_pos][labels[train_pos] != "control"]
    batches = -(-np.unique(perturbed, return_counts=True)[1] // 64)
    default = default_epochs(int(batches.sum()))
    epochs = int(round(factor * default))
    torch.set_num_threads(1)
    start = time.perf_counter()
    model.train(
        max_epochs=epochs,
        train_indices=train_pos,
        validation_indices=val_pos,
        enable_progress_bar=False,
        callbacks=[Score()],
    )
    return model.history, scores, default, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="learning_curves.png")
    parser.add_argument("--every", type=int, default=5, help="score every N epochs")
    parser.add_argument("--factor", type=float, default=2.0, help="epochs / default epochs")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import sccvae
    from sccvae.splits import seen_perturbation_split, unseen_perturbation_folds

    runs = []
    sim = sccvae.data.simulate_perturbseq(seed=1)
    fold = unseen_perturbation_folds(sim, n_folds=5, seed=0)[0]
    runs.append(("simulated screen (seed 1), fold 0", sim, "perturbation", fold.train_idx,
                 fold.validation_idx, "coexpression"))  # fmt: skip
    if DEVEL.exists():
        full = ad.read_h5ad(DEVEL)
        norman = full[full.obs["dataset"] == "norman19"].copy()
        norman.X = norman.X.astype(np.float32)
        split = seen_perturbation_split(norman, perturbation_key="condition", seed=0)
        runs.append(("Norman 2019 (devel), seen split", norman, "condition", split.train_idx,
                     split.validation_idx, "onehot"))  # fmt: skip
    fig, axes = plt.subplots(2, len(runs), figsize=(5.5 * len(runs), 7), squeeze=False)
    rows = []
    for column, (title, adata, key, train_idx, val_idx, embedding) in enumerate(runs):
        history, scores, default, seconds = _curves(
            adata, key, train_idx, val_idx, args.every, args.factor, embedding
        )
        ax = axes[0, column]
        for name in ("train_loss", "validation_loss"):
            ax.plot(history[name].index + 1, history[name][name], label=name)
        ax.axvline(default, color="grey", linestyle="--", label=f"default ({default} epochs)")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax = axes[1, column]
        epochs, r = zip(*scores, strict=True)
        ax.plot(epochs, r, marker="o")
        ax.axvline(default, color="grey", linestyle="--")
        ax.set_xlabel("epoch")
        ax.set_ylabel("Pearson of change, validation cells")
        at_default = next((v for e, v in scores if e >= default), float("nan"))
        rows.append((title, default, at_default, r[-1], epochs[-1], seconds))
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print("| data | default epochs | r at default | r at the end | epochs at the end | seconds |")
    print("|---|---|---|---|---|---|")
    for title, default, at_default, last, end, seconds in rows:
        print(f"| {title} | {default} | {at_default:.3f} | {last:.3f} | {end} | {seconds:.0f} |")
    print(f"\n`python {shlex.join(['benchmarks/learning_curves.py', *sys.argv[1:]])}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
