"""How unseen targets borrow from the training interventions: ablations of the choice.

After training, SCCVAE chooses two numbers leave-one-target-out on the training targets
(``sccvae.model._borrowing``): the borrowing temperature ``T`` (``inf``: an unseen target borrows
the plain mean of the training interventions; finite: the interventions whose changes look
like its coexpression signature weigh more) and the propagation weight ``a`` (how much of
its own node shift the learned network passes on). This script fixes one or both and
compares the result with the default choice, on a real screen (leave-one-target-out folds
over its knock-outs of measured genes) or on simulated *validation* screens (never the
benchmark's test seed).

Usage::

    python benchmarks/unseen_borrowing.py --data ../shared/data/papalexi2021_thp1_ko_dev.h5ad \\
        --obs-filter "grna_max_frac >= 0.8" --likelihood gaussian
    python benchmarks/unseen_borrowing.py --seed 1 --folds 0 1          # simulated validation

Prints a markdown table (mean over the held-out perturbations) and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
import warnings

import pandas as pd
from _tables import COLUMNS, print_method_table

INF = float("inf")
#: variant -> (temperatures, propagation weights) tried; None keeps the default grid
VARIANTS: dict[str, tuple[tuple[float, ...] | None, tuple[float, ...] | None]] = {
    "chosen": (None, None),
    "mean, full propagation": ((INF,), (1.0,)),
    "mean, no propagation": ((INF,), (0.0,)),
    "similarity, no propagation": (None, (0.0,)),
    "similarity, full propagation": (None, (1.0,)),
}


@contextlib.contextmanager
def grid(temperatures, weights):
    """Restrict the grid the model chooses from (restored afterwards)."""
    from sccvae.model import _borrowing

    saved = _borrowing.TEMPERATURES, _borrowing.PROPAGATION_WEIGHTS
    _borrowing.TEMPERATURES = temperatures or saved[0]
    _borrowing.PROPAGATION_WEIGHTS = weights or saved[1]
    try:
        yield
    finally:
        _borrowing.TEMPERATURES, _borrowing.PROPAGATION_WEIGHTS = saved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="simulated")
    parser.add_argument("--obs-filter", default=None)
    parser.add_argument("--likelihood", default=None, choices=("nb", "gaussian"))
    parser.add_argument("--scenario", default="default")
    parser.add_argument("--seed", type=int, default=1, help="seed of a simulated screen")
    parser.add_argument("--folds", type=int, nargs="+", default=None)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--baselines", nargs="+", default=["mean", "mean_target", "multireg"])
    args = parser.parse_args(argv)
    if args.data == "simulated" and args.seed == 0:
        parser.error("seed 0 is the benchmark's test screen: choose designs on other seeds")
    warnings.filterwarnings("ignore")
    import torch

    from sccvae.benchmark import run_benchmark

    torch.set_num_threads(1)
    common = {
        "data": args.data,
        "split": "unseen",
        "progress": False,
        "folds": args.folds,
        "seed": args.seed if args.data == "simulated" else 0,
    }
    if args.data == "simulated":
        common["scenario"] = args.scenario
    else:
        common["obs_filter"] = args.obs_filter
        common["likelihood"] = args.likelihood
    start = time.perf_counter()
    rows, chosen = {}, {}
    for variant in args.variants:
        with grid(*VARIANTS[variant]):
            methods = ["sccvae", *args.baselines] if not rows else ["sccvae"]
            result = run_benchmark(methods=methods, **common)
        table = result.results.groupby("method")[list(COLUMNS)].mean()
        rows[f"sccvae ({variant})"] = table.loc["sccvae"]
        for baseline in args.baselines:
            rows.setdefault(baseline, table.loc[baseline] if baseline in table.index else None)
        training = result.training
        pairs = zip(training["borrowing_temperature"], training["propagation_weight"], strict=True)
        chosen[variant] = sorted(set(pairs))
    simulated = f"simulated {args.scenario}, seed {args.seed}"
    where = args.data if args.data != "simulated" else simulated
    print(f"Screen: {where}; folds {args.folds or 'all'}; filter {args.obs_filter}")
    print()
    print_method_table(rows.items(), COLUMNS)
    print()
    for variant, pairs in chosen.items():
        print(f"- {variant}: (T, a) chosen per fold {pairs}")
    print()
    command = shlex.join(["benchmarks/unseen_borrowing.py", *(argv or sys.argv[1:])])
    print(f"`python {command}` ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    sys.exit(main())
