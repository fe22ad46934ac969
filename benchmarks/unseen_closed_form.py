"""What SCCVAE's description of an unseen knock-out can reach, in closed form, in seconds.

An unseen target's prediction is, to a close approximation, what
``sccvae.model._borrowing`` describes: a similarity-weighted mean of the training
perturbations' changes (their own target genes left out) plus the target's own drop, plus
``a`` times the propagated part. This script computes that description directly from the
observed mean changes -- no VAE is trained -- next to the references, on the same held-out
knock-outs as ``sccvae benchmark --split unseen``:

- on a file: every single perturbation of a measured gene is held out in turn (the others
  train), as the benchmark's leave-one-target-out folds;
- on the simulator: the benchmark's unseen folds of a *validation* seed (never the test seed).

The description is scored against the observed change with the benchmark's metrics on mean
changes (no sampling of predicted cells): Pearson of change on all genes and on the 20 genes
of largest Welch ``|t|`` (DE), each with and without the target, and the MSE on the DE genes.
Each row also counts the knock-outs on which it scores above a reference rule and gives the
paired Wilcoxon p-value (with 6 knock-outs "beats" needs all 6), once per reference
(``--references``; default ``mean_target`` and ``regression``, the stand-in for ``multireg``).
Several validation seeds (``--seeds``) pool their held-out knock-outs into one test.

Rules compared (``own`` is the mean own change of the training targets of measured genes,
the target gene is set to it in every rule except ``mean``):

- ``mean``, ``mean_target``: the baselines;
- ``regression``: ``mean_target`` plus ``own`` times the joint ridge regression of every gene
  on the measured training targets' genes and the held-out gene in control cells (relative
  penalty 0.01: the stand-in SCCVAE validates its propagation with, close to ``multireg``);
- ``borrow T=...``: the borrowed changes at a fixed temperature, no propagation;
- ``borrow T=..., prior s0``: the plain mean joins the softmax as one more candidate with
  similarity ``s0`` (a knock-out unlike every training one borrows the mean);
- ``borrow T=..., blend l``: ``mean + l (borrowed - mean)``;
- ``chosen (T, a)``: the temperature and propagation weight that ``train`` would choose
  leave-one-target-out on the training targets, with the regression as the propagated part.

With ``--features`` it also prints, per held-out knock-out of a file, what control cells say
about its gene (spread, summed squared correlation with the other genes, norm of its
regression slopes) beside how large its observed response is, to see whether a weak
response can be told apart before the knock-out is seen.

Usage::

    python benchmarks/unseen_closed_form.py \\
        --data ../shared/data/papalexi2021_thp1_ko_dev.h5ad --features
    python benchmarks/unseen_closed_form.py --seed 1 --folds 0 1       # simulated validation
    python benchmarks/unseen_closed_form.py --seeds 1 2 3 4 5 --folds 0 1 2 3 4   # pooled
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from sccvae._inputs import dense, log_normalize, looks_like_counts
from sccvae.metrics import pearson
from sccvae.model._borrowing import (
    borrowable_changes,
    borrowing_weights,
    choose_borrowing,
    control_signatures,
    joint_regression,
    similarities,
)

METRICS = ("all", "all_nt", "de", "de_nt", "mse_de")
#: the benchmark's test seeds: never used here
TEST_SEEDS = (0, 7, 11)
N_DE = 20


@dataclass
class Training:
    """What a fold's training cells say: control cells and each label's change and t."""

    control: np.ndarray
    labels: list[str]
    changes: np.ndarray
    significance: np.ndarray
    columns: list[list[int]]
    own: float


def _welch(cells: np.ndarray, control: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    change = cells.mean(axis=0) - control.mean(axis=0)
    se = np.sqrt(
        cells.var(axis=0, ddof=1) / len(cells) + control.var(axis=0, ddof=1) / len(control)
    )
    t = np.zeros_like(change)
    np.divide(change, se, out=t, where=se > 0)
    return change, t


def _training(x: np.ndarray, labels: np.ndarray, rows: np.ndarray, column: dict) -> Training:
    control = x[rows][labels[rows] == "control"]
    names = sorted(set(labels[rows]) - {"control"})
    moments = [_welch(x[rows][labels[rows] == name], control) for name in names]
    changes = np.array([m[0] for m in moments])
    columns = [[column[name]] if name in column else [] for name in names]
    own = float(np.mean([changes[i, c[0]] for i, c in enumerate(columns) if c]))
    return Training(control, names, changes, np.array([m[1] for m in moments]), columns, own)


def _predictions(train: Training, target: int) -> dict[str, np.ndarray]:
    """Every rule's predicted change for a held-out knock-out of gene column ``target``."""
    sign = float(np.sign(train.own) or -1.0)
    signature = sign * control_signatures(train.control, [target])
    similarity = similarities(signature, [target], train.significance, train.columns)[0]
    borrowable = borrowable_changes(train.changes, train.columns)
    mean = train.changes.mean(axis=0)
    measured = [c[0] for c in train.columns if c]
    regression = joint_regression(train.control, measured + [target])[-1]
    out = {"mean": mean.copy(), "mean_target": mean.copy()}
    out["regression"] = mean + train.own * regression
    plain = borrowable.mean(axis=0)
    for temperature in (0.1, 0.2, 0.5, np.inf):
        borrowed = borrowing_weights(similarity[None], temperature)[0] @ borrowable
        out[f"borrow T={temperature:g}"] = borrowed
        if temperature == 0.2:
            for s0 in (0.1, 0.2):
                logits = np.append(similarity, s0)[None]
                weights = borrowing_weights(logits, temperature)[0]
                out[f"borrow T=0.2, prior {s0:g}"] = weights @ np.vstack([borrowable, plain])
            for blend in (0.5, 0.75):
                out[f"borrow T=0.2, blend {blend:g}"] = plain + blend * (borrowed - plain)
    validation = [i for i, c in enumerate(train.columns) if c]
    chosen = choose_borrowing(
        train.control, train.changes, train.significance, train.columns, validation, sign
    )
    borrowed = borrowing_weights(similarity[None], chosen.temperature)[0] @ borrowable
    out["chosen (T, a)"] = borrowed + chosen.propagation * train.own * regression
    for name, change in out.items():
        if name != "mean":
            change[target] = train.own
    return out


def _scores(predicted: np.ndarray, observed: np.ndarray, t: np.ndarray, target: int) -> dict:
    order = np.argsort(-np.abs(t), kind="stable")
    de, de_nt = order[:N_DE], order[order != target][:N_DE]
    others = np.arange(observed.size) != target
    return {
        "all": pearson(predicted, observed),
        "all_nt": pearson(predicted[others], observed[others]),
        "de": pearson(predicted[de], observed[de]),
        "de_nt": pearson(predicted[de_nt], observed[de_nt]),
        "mse_de": float(np.mean((predicted[de] - observed[de]) ** 2)),
    }


def _file_folds(path: str, obs_filter: str | None):
    import anndata as ad

    adata = ad.read_h5ad(path)
    if obs_filter:
        adata = adata[adata.obs.eval(obs_filter).to_numpy()].copy()
    x = dense(adata.X).astype(np.float64)
    if looks_like_counts(x):
        x = log_normalize(x)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    column = {g: i for i, g in enumerate(adata.var_names)}
    held_out = sorted(set(labels) & set(column))
    everything = np.arange(len(labels))
    folds = [(everything[labels != name], [name]) for name in held_out]
    return x, labels, column, folds, adata.var_names


def _simulated_folds(seed: int, folds: list[int], scenario: str | None):
    from sccvae.benchmark._data import load_data
    from sccvae.splits._designs import unseen_perturbation_folds

    adata, _ = load_data(seed=seed, scenario=scenario)
    x = dense(adata.X).astype(np.float64)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    column = {g: i for i, g in enumerate(adata.var_names)}
    splits = unseen_perturbation_folds(
        adata, n_folds=5, seed=seed, perturbation_key="perturbation", control_label="control"
    )
    chosen = [
        (np.asarray(splits[f].train_idx), [p for p in splits[f].test_perturbations if p in column])
        for f in folds
    ]
    return x, labels, column, chosen, adata.var_names


def _features(x, labels, column, names) -> pd.DataFrame:
    """What control cells say about each gene, beside the size of its knock-out's response."""
    control = x[labels == "control"]
    centred = control - control.mean(axis=0)
    rows = []
    for name in names:
        c = column[name]
        r = centred.T @ centred[:, c]
        r /= np.sqrt((centred**2).sum(axis=0) * (centred[:, c] ** 2).sum() + 1e-12)
        r[c] = 0.0
        slopes = control_signatures(control, [c])[0]
        slopes[c] = 0.0
        change, t = _welch(x[labels == name], control)
        rows.append(
            {
                "knock-out": name,
                "control sd": float(np.sqrt(control[:, c].var(ddof=1))),
                "sum r^2 with other genes": float((r**2).sum()),
                "|slopes|": float(np.linalg.norm(slopes)),
                "own change": float(change[c]),
                "|change| other genes": float(np.linalg.norm(np.delete(change, c))),
                "other genes |t| > 4": int((np.abs(np.delete(t, c)) > 4).sum()),
            }
        )
    return pd.DataFrame(rows).set_index("knock-out")


def _summary(table: pd.DataFrame, reference_rule: str) -> list[str]:
    """One markdown row per rule: its mean, and its wins and paired p against the reference."""
    reference = table[table.rule == reference_rule].set_index("knock-out")
    rows = []
    for rule, group in table.groupby("rule", sort=False):
        group = group.set_index("knock-out").loc[reference.index]
        cells = [f"{group[m].mean():.3f}" for m in METRICS]
        if rule != reference_rule:
            better = [
                (group[m] < reference[m]) if m == "mse_de" else (group[m] > reference[m])
                for m in METRICS
            ]
            tests = []
            for m in METRICS:
                diff = (group[m] - reference[m]).dropna()
                tests.append(wilcoxon(diff).pvalue if (diff != 0).any() else 1.0)
            cells = [
                f"{c} ({int(b.sum())}/{len(b)}, p={p:.2g})"
                for c, b, p in zip(cells, better, tests, strict=True)
            ]
        rows.append(f"| {rule} | " + " | ".join(cells) + " |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="simulated", help="an .h5ad file, or 'simulated'")
    parser.add_argument("--obs-filter", default=None)
    parser.add_argument(
        "--seeds",
        "--seed",
        type=int,
        nargs="+",
        default=[1],
        help="simulated validation seeds; their held-out knock-outs are pooled",
    )
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--scenario", default=None)
    parser.add_argument(
        "--references",
        nargs="+",
        default=["mean_target", "regression"],
        help="rules every other rule is compared with, pair by pair",
    )
    parser.add_argument("--features", action="store_true")
    args = parser.parse_args(argv)
    args.seeds = list(dict.fromkeys(args.seeds))  # a seed named twice is pooled once
    start = time.perf_counter()
    if args.data == "simulated":
        used = sorted(set(args.seeds) & set(TEST_SEEDS))
        if used:
            parser.error(f"seed {used[0]} is a benchmark test seed; choose designs elsewhere")
        screens = [
            (f"{seed}:", *_simulated_folds(seed, args.folds, args.scenario)) for seed in args.seeds
        ]
    else:
        screens = [("", *_file_folds(args.data, args.obs_filter))]
    rows = []
    for prefix, x, labels, column, folds, _genes in screens:
        # observed changes are measured against all control cells, as the benchmark scores them
        control = x[labels == "control"]
        for train_rows, held_out in folds:
            train = _training(x, labels, train_rows, column)
            for name in held_out:
                observed, t = _welch(x[labels == name], control)
                for rule, predicted in _predictions(train, column[name]).items():
                    rows.append(
                        {
                            "rule": rule,
                            "knock-out": prefix + name,
                            **_scores(predicted, observed, t, column[name]),
                        }
                    )
    table = pd.DataFrame(rows)
    unknown = sorted(set(args.references) - set(table.rule))
    if unknown:
        rules = list(table.rule.unique())
        parser.error(f"--references {unknown} are not rules; the rules: {rules}")
    n = table["knock-out"].nunique()
    for reference_rule in args.references:
        print(
            f"{n} held-out knock-outs; in brackets: knock-outs on which the rule does better "
            f"than {reference_rule}, and the paired Wilcoxon p-value"
        )
        print("| rule | " + " | ".join(METRICS) + " |")
        print("|---|" + "---|" * len(METRICS))
        print("\n".join(_summary(table, reference_rule)))
        print()
    print("Per knock-out, all_nt:")
    print(table.pivot(index="knock-out", columns="rule", values="all_nt").round(3).to_markdown())
    if args.features and args.data != "simulated":
        _, x, labels, column, _, _ = screens[0]
        reference = table[table.rule == args.references[0]]["knock-out"].unique()
        print()
        print(_features(x, labels, column, list(reference)).round(2).to_markdown())
    print(
        f"\n{time.perf_counter() - start:.0f} s: python benchmarks/unseen_closed_form.py "
        + shlex.join(argv if argv is not None else sys.argv[1:])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
