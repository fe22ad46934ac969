"""Do SCCVAE's predicted changes recover the true effects of perturbations? (simulated data)

On ``sccvae.data.simulate_perturbseq`` data the noise-free effect of every perturbation is
known (``uns["simulation"]["expected_shift"]``: the expected log-mean change of every gene).
This script trains SCCVAE on fold 0 of the benchmark's unseen-perturbation split (training
and validation cells only) for each variant and reports the mean Pearson correlation between
the predicted mean change from the training control mean (``predict(..., return_mean=True)``,
500 cells) and the true effect,

- for the **training** perturbations (can the model represent what it was trained on?), and
- for the **held-out** perturbations (does it generalise to unseen targets?),

next to the same correlation for the observed training means (the per-perturbation ceiling)
and for the mean-of-training-perturbations baseline on the held-out targets. It also reports
the mean pairwise correlation between the predicted changes of training perturbations: close
to 1 means every perturbation predicts the same change.

Variants: ``default`` (gene nodes, calibrated), ``uncalibrated`` (``train(calibrate=False)``:
the latent structure alone) and ``abstract`` (the paper's model).

Usage::

    python benchmarks/shift_recovery.py                     # the model's default schedule
    python benchmarks/shift_recovery.py --variants default abstract

Prints a markdown table and the command that produced it.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

import numpy as np
from sccvae import PAPER_MODEL, PAPER_TRAINING

#: variant -> (model arguments, train arguments)
VARIANTS = {
    "default": ({}, {}),
    "uncalibrated": ({}, {"calibrate": False}),
    "abstract": (PAPER_MODEL, PAPER_TRAINING),  # the paper's model and settings
}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: the model's")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--n-latent", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    import sccvae
    from sccvae import SCCVAE
    from sccvae.splits import unseen_perturbation_folds

    torch.set_num_threads(args.threads)
    adata = sccvae.data.simulate_perturbseq(seed=args.seed)
    split = unseen_perturbation_folds(
        adata, perturbation_key="perturbation", control_label="control", n_folds=5, seed=args.seed
    )[0]
    x = adata.X.toarray()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    train, validation, test = (split.indices(p) for p in ("train", "validation", "test"))
    truth = dict(
        zip(
            map(str, adata.uns["simulation"]["perturbations"]),
            np.asarray(adata.uns["simulation"]["expected_shift"]),
            strict=True,
        )
    )
    control_mean = x[train][labels[train] == "control"].mean(0)
    seen = sorted(set(labels[train]) - {"control"})
    unseen = sorted(set(labels[test]))
    observed = {p: x[train][labels[train] == p].mean(0) - control_mean for p in seen}
    mean_change = np.mean(list(observed.values()), axis=0)

    ceiling = np.mean([_pearson(observed[p], truth[p]) for p in seen])
    mean_baseline = np.mean([_pearson(mean_change, truth[p]) for p in unseen])
    rows = [
        ("observed training means (ceiling)", ceiling, "", ""),
        ("mean of training perturbations", "", mean_baseline, ""),
    ]
    training_cells = np.concatenate([train, validation])
    for variant in args.variants:
        model_kwargs, train_kwargs = VARIANTS[variant]
        sub = adata[training_cells].copy()
        SCCVAE.setup_anndata(sub, perturbation_key="perturbation", control_label="control")
        model = SCCVAE(sub, n_latent=args.n_latent, seed=args.seed, **model_kwargs)
        start = time.perf_counter()
        model.train(
            max_epochs=args.epochs,
            train_indices=np.arange(len(train)),
            validation_indices=np.arange(len(train), len(training_cells)),
            enable_progress_bar=False,
            enable_model_summary=False,
            **train_kwargs,
        )
        seconds = time.perf_counter() - start

        def changes(perts, model=model):
            pred = model.predict(perts, n_cells=500, return_mean=True, seed=args.seed)
            return np.stack([np.asarray(pred[p].X).ravel() - control_mean for p in perts])

        seen_pred, unseen_pred = changes(seen), changes(unseen)
        pairwise = np.corrcoef(seen_pred)[np.triu_indices(len(seen), 1)].mean()
        rows.append(
            (
                f"SCCVAE {variant} ({seconds:.0f} s)",
                np.mean([_pearson(seen_pred[i], truth[p]) for i, p in enumerate(seen)]),
                np.mean([_pearson(unseen_pred[i], truth[p]) for i, p in enumerate(unseen)]),
                pairwise,
            )
        )

    def fmt(value):
        return f"{value:.3f}" if isinstance(value, float | np.floating) else value

    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.platform()}, torch {torch.__version__}, {args.threads} thread(s)")
    epochs = "the model's default schedule" if args.epochs is None else f"{args.epochs} epochs"
    print(f"{epochs}, {len(seen)} training / {len(unseen)} held-out perturbations\n")
    print(
        "| predictor | r(change, truth), training perturbations | r(change, truth), held-out "
        "| pairwise r of training predictions |"
    )
    print("|---|---|---|---|")
    for name, *values in rows:
        print(f"| {name} | " + " | ".join(fmt(v) for v in values) + " |")


if __name__ == "__main__":
    main()
