"""Reporting a benchmark: tables, verdicts, markdown, plots and the output folder."""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sccvae.metrics import METRICS

from ._methods import REGISTRY
from ._result import ALPHA, HEADLINE_METRICS, BenchmarkResult, _fmt, _fmt_p, format_table

logger = logging.getLogger(__name__)

#: The headline metrics: drawn as bar plots, and each gets a one-line verdict at the end of
#: the terminal output and summary.md.
PLOT_METRICS: tuple[str, ...] = HEADLINE_METRICS
VERDICT_METRICS: tuple[str, ...] = HEADLINE_METRICS


def verdicts(result: BenchmarkResult, category: str = "all") -> list[str]:
    """One line per headline metric: the best method, and how SCCVAE compares with each baseline.

    A baseline is every method that is not an SCCVAE variant. The reference "beats" a
    baseline where the two-sided paired Wilcoxon signed-rank test over the test perturbations
    (``reference_p_value`` of the summary, :func:`sccvae.metrics.paired_test`) gives
    p < :data:`ALPHA` and its signed ranks favour the reference, "loses to" it where they
    favour the baseline, and "ties" it otherwise: a difference in means without a
    significant paired test is a tie, and so are perturbations scored equally (e.g. every
    method at a DE overlap of 0, p = 1). Each comparison says how many perturbation pairs it
    used (those with a value on both sides). Exact p-values need enough pairs: with 6 the
    smallest two-sided p is ``2 / 2**6 = 0.031``, so "beats" needs all 6 to favour the reference,
    and with 5 or fewer nothing is significant (said in the line). The paired win rates follow.
    Baselines whose metric is undefined (e.g. the Pearson correlation of the control
    baseline's zero change) are named as such and do not count.
    """
    reference = result.config.get("reference")
    s = result.summary
    if s.empty or reference is None:
        return []
    s = s[s["category"] == category]
    lines = []
    for metric in VERDICT_METRICS:
        rows = s[s["metric"] == metric].set_index("method")
        if rows.empty or reference not in rows.index:
            continue
        higher = METRICS[metric][0]
        means = rows["mean"].astype(float)
        finite = means.dropna()
        if finite.empty:
            continue
        top = finite.max() if higher else finite.min()
        best = [m for m in finite.index if finite[m] == top]
        if len(best) == len(finite) > 1:
            best_text = f"all methods equal ({_fmt(top, 3)})"
        else:
            best_text = f"best {', '.join(best)} ({_fmt(top, 3)})"
        baselines = [m for m in rows.index if not REGISTRY[m].is_sccvae and m != reference]
        defined = [m for m in baselines if np.isfinite(means[m])]
        undefined = [m for m in baselines if not np.isfinite(means[m])]
        claim, unpaired = _comparisons(rows, reference, defined)
        line = f"{_metric_label(metric)}: {best_text}; {_reference_value(rows, reference)}"
        line += f": {claim}"
        rates = [
            f"{100 * rows.loc[m, 'reference_win_rate']:.0f} % vs {m}"
            for m in defined
            if np.isfinite(rows.loc[m, "reference_win_rate"])
        ]
        if rates:
            line += f"; {reference} better on " + ", ".join(rates) + " of perturbations"
        if unpaired:
            line += f"; no perturbation scored by both {reference} and {', '.join(unpaired)}"
        if undefined:
            line += f"; undefined for {', '.join(undefined)}"
        lines.append(line)
    return lines


def _reference_value(rows: pd.DataFrame, reference: str) -> str:
    """Return ``"sccvae 0.512"``, with the spread across seeds where it has several.

    E.g. ``"sccvae 0.512 (mean of 3 seeds, sd 0.012, range 0.500–0.530)"``.
    """
    row = rows.loc[reference]
    text = f"{reference} {_fmt(row['mean'], 3)}"
    n_seeds = row.get("n_seeds", np.nan)
    if np.isfinite(n_seeds) and n_seeds > 1:
        text += (
            f" (mean of {int(n_seeds)} seeds, sd {_fmt(row['seed_sd'], 3)}, range "
            f"{_fmt(row['seed_min'], 3)}–{_fmt(row['seed_max'], 3)})"
        )
    return text


def _comparisons(
    rows: pd.DataFrame, reference: str, baselines: list[str]
) -> tuple[str, list[str]]:
    """Return the verdict's claim on ``baselines`` and those without a shared pair."""
    if not baselines:
        return "no baseline with a defined value", []
    groups: dict[str, list[str]] = {"beats": [], "ties": [], "loses to": []}
    unpaired = []
    for m in baselines:
        p_value = float(rows.loc[m].get("reference_p_value", np.nan))
        n_pairs = int(rows.loc[m, "n_paired"])
        if n_pairs == 0 or not np.isfinite(p_value):
            unpaired.append(m)
            continue
        effect = float(rows.loc[m, "reference_rank_biserial"])
        if p_value < ALPHA and effect > 0:
            group = "beats"
        elif p_value < ALPHA and effect < 0:
            group = "loses to"
        else:
            group = "ties"
        few = ": too few to reach p < 0.05" if n_pairs < 6 else ""
        groups[group].append(f"{m} ({_fmt_p(p_value)}, {n_pairs} pairs{few})")
    test = f"paired Wilcoxon, p < {ALPHA:g}"
    compared = [m for m in baselines if m not in unpaired]
    if not compared:
        return "no baseline compared (no shared perturbation)", unpaired
    if compared and len(groups["beats"]) == len(compared) and not unpaired:
        return f"beats every baseline ({test}): " + ", ".join(groups["beats"]), unpaired
    parts = [f"{word} " + ", ".join(items) for word, items in groups.items() if items]
    return f"does not beat every baseline ({test}): " + "; ".join(parts), unpaired


def _metric_label(metric: str) -> str:
    arrow = "↑" if METRICS[metric][0] else "↓"
    return f"{metric} {arrow}"


def print_table(result: BenchmarkResult, console: Any = None, category: str = "all") -> None:
    """Print the metric x method table of a result with rich.

    Each cell shows the mean over test perturbations with its 95 % bootstrap interval, the
    share of perturbations on which the reference (SCCVAE) is better than that method and
    the two-sided paired Wilcoxon signed-rank p-value of the difference.
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    reference = result.config.get("reference")
    table_df = format_table(result.summary, category=category, separator="\n")
    s = result.summary[result.summary["category"] == category]
    n = int(s["n"].max()) if len(s) else 0
    title = (
        f"{result.config.get('split')} split, {result.config.get('n_folds')} fold(s), "
        f"{n} test perturbations" + ("" if category == "all" else f", category {category!r}")
    )
    table = Table(
        title=title,
        caption=(
            f"mean [95% CI]; win = share of perturbations where {reference} is better; "
            "p = paired two-sided Wilcoxon signed-rank test"
        ),
        show_lines=True,
    )
    table.add_column("metric", style="bold", no_wrap=True)
    for m in table_df.columns:
        table.add_column(m, justify="right", style="cyan" if m == reference else None)
    for metric, row in table_df.iterrows():
        table.add_row(_metric_label(metric), *[str(v) for v in row])
    console.print(table)


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| metric | " + " | ".join(frame.columns) + " |"
    rule = "|---|" + "---|" * len(frame.columns)
    lines = [header, rule]
    for metric, row in frame.iterrows():
        lines.append(f"| {_metric_label(metric)} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def _machine_info() -> dict[str, str]:
    import torch

    import sccvae

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": str(os.cpu_count()),
        "torch": torch.__version__,
        "torch_threads_default": str(torch.get_num_threads()),
        "sccvae": sccvae.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    try:
        import scvi

        info["scvi-tools"] = scvi.__version__
    except Exception:  # pragma: no cover
        pass
    return info


def _summary_markdown(result: BenchmarkResult, plots: list[str]) -> str:
    cfg = result.config
    data = cfg.get("data", {})
    lines = ["# SCCVAE benchmark", ""]
    command = cfg.get("command") or "(run_benchmark called from Python)"
    lines += ["## Command", "", "```", command, "```", ""]
    lines += ["## Data", ""]
    for k, v in data.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Settings", ""]
    settings_keys = (
        "split",
        "n_folds",
        "fold_scheme",
        "methods",
        "reference",
        "seed",
        "n_seeds",
        "max_epochs",
        "n_cells",
        "n_de_genes",
        "likelihood",
        "sccvae_trained_on",
        "normalisation",
        "obs_filter",
        "model_kwargs",
        "train_kwargs",
        "perturbation_key",
        "control_label",
        "n_threads",
    )
    for k in settings_keys:
        lines.append(f"- {k}: {cfg.get(k)}")
    if cfg.get("n_seeds", 1) > 1:
        lines.append(
            f"- seeds: SCCVAE is trained with seeds {cfg.get('sccvae_seeds')} (model "
            "initialisation, training minibatches and predicted cells), each perturbation's "
            f"scores averaged over them; the simulation, the split(s), the baselines and the "
            f"scoring use seed {cfg.get('seed')}"
        )
    else:
        lines.append(
            "- seeds: one seed is used for the simulation, the split(s), model initialisation, "
            "training minibatches and predicted cells"
        )
    lines.append(f"- wall time: {result.wall_time_s:.1f} s")
    lines += ["", "## Machine", ""]
    for k, v in _machine_info().items():
        lines.append(f"- {k}: {v}")
    if result.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in result.notes]
    lines += [
        "",
        "## Results",
        "",
        "Mean over test perturbations (pooled over folds) [95 % bootstrap CI]; "
        f"win = share of test perturbations on which **{cfg.get('reference')}** is better "
        "than that method (paired, ties count half); p = two-sided Wilcoxon signed-rank test "
        "of the paired per-perturbation values (`scipy.stats.wilcoxon`: equal pairs dropped, "
        "exact up to 50 pairs). ↑ higher is better, ↓ lower is better.",
        "",
    ]
    if cfg.get("n_seeds", 1) > 1:
        lines += [
            f"SCCVAE's scores are averaged over its {cfg['n_seeds']} seeds perturbation by "
            "perturbation (the intervals, win rates and tests use these averages); "
            "*N seeds: sd, min–max* is the spread of its per-seed means.",
            "",
        ]
    categories = list(dict.fromkeys(result.summary["category"])) if len(result.summary) else []
    if len(categories) == 2:  # a single category equals "all"
        categories = ["all"]
    for category in categories:
        if category != "all":
            s = result.summary[result.summary["category"] == category]
            lines += ["", f"### Category {category} ({int(s['n'].max())} perturbations)", ""]
        lines.append(_markdown_table(format_table(result.summary, category=category)))
    if not result.training.empty:
        lines += ["", "## SCCVAE training", ""]
        lines.append(_frame_markdown(result.training.round(4)))
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p}]({p})" for p in plots]
    lines += [
        "",
        "## Files",
        "",
        "- `results.csv`: one row per method, fold and test perturbation, all metrics",
        "- `summary.csv`: mean, CI, win rates and paired p-values per method and metric",
        "- `splits.json`: the train / validation / test cell positions of every split",
    ]
    if not result.seed_results.empty:
        lines.append("- `seed_results.csv`: SCCVAE's rows of `results.csv`, one per seed")
    lines.append("")
    if verdicts(result):
        lines += ["## Verdict", ""]
        lines += [
            f"{cfg.get('reference')} *beats* a baseline where the paired two-sided Wilcoxon "
            f"signed-rank test over the test perturbations gives p < {ALPHA:g} in its favour, "
            "*loses to* it where the test favours the baseline, and *ties* it otherwise "
            "(equal scores on every perturbation give p = 1). Pairs with a missing value are "
            "dropped; each comparison says how many it used. With 6 pairs the smallest "
            "possible p is 0.031 (all 6 favour one method); with 5 or fewer no difference "
            "can be significant.",
            "",
        ]
        lines += [f"- {line}" for line in verdicts(result)]
        lines.append("")
    return "\n".join(lines)


def _frame_markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def plot_metrics(result: BenchmarkResult, path: str | os.PathLike, metrics=PLOT_METRICS) -> None:
    """Bar plot of each metric's mean per method with its 95 % bootstrap CI.

    A metric a method has no value for (undefined, e.g. the Pearson correlation of the
    control baseline's zero change) gets no bar but "n/a" at its place.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    s = result.summary[result.summary["category"] == "all"]
    metrics = [m for m in metrics if m in set(s["metric"])]
    methods = list(dict.fromkeys(s["method"]))
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(2.2 + 2.6 * len(metrics), 3.6), squeeze=False
    )
    colors = plt.get_cmap("tab10")
    for ax, metric in zip(axes[0], metrics, strict=True):
        sm = s[s["metric"] == metric].set_index("method").reindex(methods)
        mean = sm["mean"].to_numpy(dtype=float)
        lo = np.clip(mean - sm["ci_low"].to_numpy(dtype=float), 0, None)
        hi = np.clip(sm["ci_high"].to_numpy(dtype=float) - mean, 0, None)
        x = np.arange(len(methods))
        # an undefined metric (e.g. the Pearson of control's zero change) is no bar and
        # "n/a", not a bar at zero that reads as a score
        defined = np.isfinite(mean)
        ax.bar(
            x[defined],
            mean[defined],
            yerr=np.nan_to_num(np.vstack([lo, hi])[:, defined]),
            color=[colors(i % 10) for i in np.flatnonzero(defined)],
            capsize=3,
        )
        for i in np.flatnonzero(~defined):
            ax.text(x[i], 0, "n/a", ha="center", va="bottom", fontsize=7, color="0.4", rotation=90)
        ax.set_xticks(x)
        ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(_metric_label(metric), fontsize=9)
        ax.axhline(0, color="black", linewidth=0.5)
    fig.suptitle(f"{result.config.get('split')} split: mean over test perturbations, 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scatter(
    result: BenchmarkResult, path: str | os.PathLike, n_perturbations: int = 4
) -> list[str]:
    """Predicted vs observed change from control (all genes) for a few test perturbations.

    The perturbations with the largest observed change are shown; rows are the reference
    (SCCVAE) and the best baseline by mean ``pearson_delta_all``. Returns the labels shown.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    reference = result.config.get("reference")
    s = result.summary[
        (result.summary["category"] == "all") & (result.summary["metric"] == "pearson_delta_all")
    ]
    baselines = s[~s["method"].map(lambda m: REGISTRY[m].is_sccvae)].dropna(subset=["mean"])
    rows = [reference]
    if len(baselines):
        best = baselines.sort_values("mean", ascending=False)["method"].iloc[0]
        rows.append(best)
    rows = [r for r in rows if r in result.deltas and not result.deltas[r].empty]
    observed = result.deltas.get("observed", pd.DataFrame())
    if not rows or observed.empty:
        return []
    shared = observed.index
    for r in rows:
        shared = shared.intersection(result.deltas[r].index)
    if len(shared) == 0:
        return []
    norms = np.sqrt((observed.loc[shared] ** 2).sum(axis=1)).sort_values(ascending=False)
    chosen = list(norms.index[:n_perturbations])
    fig, axes = plt.subplots(
        len(rows), len(chosen), figsize=(3.0 * len(chosen), 3.0 * len(rows)), squeeze=False
    )
    for i, method in enumerate(rows):
        for j, idx in enumerate(chosen):
            ax = axes[i, j]
            obs = observed.loc[idx].to_numpy()
            pred = result.deltas[method].loc[idx].reindex(observed.columns).to_numpy()
            ax.scatter(obs, pred, s=4, alpha=0.5)
            lim = np.nanmax(np.abs(np.concatenate([obs, pred]))) * 1.05 or 1.0
            ax.plot([-lim, lim], [-lim, lim], color="grey", linewidth=0.6)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            r = np.corrcoef(obs, pred)[0, 1] if np.std(pred) > 0 else float("nan")
            ax.set_title(f"{idx[1]} (fold {idx[0]})\n{method}: r={r:.2f}", fontsize=8)
            if j == 0:
                ax.set_ylabel("predicted change")
            if i == len(rows) - 1:
                ax.set_xlabel("observed change")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [f"{idx[1]} (fold {idx[0]})" for idx in chosen]


def write_outputs(result: BenchmarkResult, out: str | os.PathLike) -> Path:
    """Write a result to a directory.

    Files: ``results.csv`` (per perturbation), ``summary.csv``, ``training.csv`` (SCCVAE
    fits), ``seed_results.csv`` (SCCVAE per seed, with ``n_seeds > 1``), ``summary.md``
    (markdown table, command line, data, seeds, epochs, wall time, machine),
    ``splits.json``, ``metrics.png`` (bars with CIs for :data:`PLOT_METRICS`) and
    ``scatter.png`` (predicted vs observed change, SCCVAE vs the best baseline).

    Returns
    -------
    The directory.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.results.to_csv(out / "results.csv", index=False)
    result.summary.to_csv(out / "summary.csv", index=False)
    if not result.seed_results.empty:
        result.seed_results.to_csv(out / "seed_results.csv", index=False)
    if not result.training.empty:
        result.training.to_csv(out / "training.csv", index=False)
    with open(out / "splits.json", "w") as handle:
        json.dump([s.to_dict() for s in result.splits], handle)
    plots = []
    try:
        plot_metrics(result, out / "metrics.png")
        plots.append("metrics.png")
        if plot_scatter(result, out / "scatter.png"):
            plots.append("scatter.png")
    except Exception as err:  # plotting must not lose the results
        logger.warning("Could not draw the plots: %s", err)
    (out / "summary.md").write_text(_summary_markdown(result, plots))
    logger.info("Benchmark outputs written to %s", out)
    return out


def command_line(argv: Sequence[str] | None = None) -> str:
    """Return the current command line, shell-quoted (for ``summary.md``)."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return shlex.join(argv)
