r"""Command-line interface: ``sccvae benchmark ...``.

Examples
--------
Benchmark on simulated data (unseen perturbations, 5 folds, all methods)::

    sccvae benchmark --out bench/

On the perturbench development file (Norman 2019 subset), held-out combinations::

    sccvae benchmark --data perturbench_devel.h5ad --perturbation-key condition \\
        --dataset norman19 --split combo --out bench_norman/

Norman 2019's unseen targets, most of them unmeasured genes, with a gene embedding (genes x
dimensions, e.g. GenePT or GO) for SCCVAE, linear and knn::

    sccvae benchmark --data perturbench_devel.h5ad --perturbation-key condition \\
        --dataset norman19 --split unseen --embedding gene_embedding.csv --out bench_unseen/

On a screen whose X holds raw UMI counts (SCCVAE fits them with its negative binomial
likelihood; the baselines and the scoring use their log-normalisation), keeping the cells
with a clean gRNA assignment::

    sccvae benchmark --data papalexi2021_thp1_ko_dev.h5ad --split unseen \\
        --obs-filter "grna_max_frac >= 0.8" --out bench_papalexi/

Bad input (missing file or column, unknown method, too few perturbations for the folds...)
is reported before any training, with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)

__all__ = ["main", "build_parser"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show each option's default, except where there is none (the help says what happens)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``sccvae`` command."""
    from sccvae.benchmark import DEFAULT_MAX_EPOCHS, DEFAULT_METHODS, METHODS, TEST_SEED
    from sccvae.benchmark._methods import DEFAULT_EPOCHS_TEXT
    from sccvae.data import SIMULATION_SCENARIOS

    parser = argparse.ArgumentParser(
        prog="sccvae",
        description="SCCVAE: single-cell causal VAE for genetic perturbation responses.",
    )
    from sccvae import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    method_help = "; ".join(f"{k}: {v}" for k, v in METHODS.items())
    bench = sub.add_parser(
        "benchmark",
        help="benchmark SCCVAE against baselines on held-out perturbations",
        description=(
            "Split the data, train SCCVAE and baselines on training cells only, predict the "
            "held-out perturbations and score them (per-perturbation metrics, bootstrap CIs, "
            "win rates and paired Wilcoxon tests of sccvae vs each method; the verdicts say "
            "'beats' only where p < 0.05). Models are trained only on training and "
            "validation cells; test cells are used for scoring only. X of a data file holds "
            "log-normalised expression (normalize_total + log1p) or raw counts (non-negative "
            "integers, detected): counts are log-normalised once (normalize_total("
            "target_sum=1e4) + log1p, per cell), every baseline is fitted and every method "
            "scored on that, and SCCVAE is trained on the counts (--likelihood nb, the "
            "default on counts) with its predicted counts log-normalised the same way before "
            "scoring. With --split unseen, test folds are drawn only among the perturbations "
            "every method can represent unseen (default methods: targets that are measured "
            "genes); the others (e.g. knock-outs of unmeasured genes) train in every fold. "
            "With fewer than 2 x --folds such perturbations, each is tested in its own fold "
            "(leave-one-out)."
        ),
        formatter_class=_HelpFormatter,
    )
    bench.add_argument(
        "--data",
        default="simulated",
        help="'simulated' (sccvae.data.simulate_perturbseq defaults; 30 combinations added "
        "for --split combo) or a path to an .h5ad file with log-normalised expression or raw "
        "counts in X",
    )
    bench.add_argument(
        "--perturbation-key",
        default="perturbation",
        help="obs column with perturbation labels (perturbench devel file: condition)",
    )
    bench.add_argument("--control-label", default="control", help="label of control cells")
    bench.add_argument(
        "--combination-delimiter", default="+", help="joins the targets of a combination"
    )
    bench.add_argument(
        "--scenario",
        choices=tuple(SIMULATION_SCENARIOS),
        default=None,
        help="simulated screen for --data simulated: realistic (the default: 30 knock-outs "
        "of a screen calibrated against a real one, with Hill regulation, cascades, a pathway "
        "hub, confounding programmes and sparse counts; no method wins by matching the "
        "generator's form), default (60 knock-downs propagating linearly through a gene "
        "network: control-cell covariance is the causal effect), shared-response (every "
        "perturbation also moves a common programme: the mean of training perturbations is "
        "a strong baseline), weak (30%% of targets without downstream effect, variable "
        "knock-down efficiency), saturation (effects saturate: combinations are less than "
        "additive; use with --split combo)",
    )
    bench.add_argument(
        "--dataset",
        default=None,
        help="keep only cells with this obs['dataset'] value (e.g. norman19); without it, "
        "all cells",
    )
    bench.add_argument(
        "--split",
        choices=("unseen", "seen", "combo"),
        default="unseen",
        help="unseen: K folds of perturbations never seen in training; seen: cells of every "
        "perturbation split 70/10/20; combo: held-out combinations (on simulated data a "
        "screen with 30 doubles, half within a module, all held out while every single is "
        "trained; --scenario saturation makes their truth non-additive)",
    )
    bench.add_argument(
        "--folds",
        type=_positive_int,
        default=5,
        help="folds of the unseen split (at least 2), over the perturbations eligible for "
        "testing; with fewer than 2 x FOLDS eligible ones, one fold per eligible perturbation "
        "(leave-one-out)",
    )
    bench.add_argument(
        "--obs-filter",
        default=None,
        metavar="EXPR",
        help="keep only the cells whose obs satisfies this pandas DataFrame.query expression, "
        'applied right after loading, e.g. --obs-filter "grna_max_frac >= 0.8" (a clean '
        "gRNA assignment); without it, all cells",
    )
    bench.add_argument(
        "--embedding",
        default=None,
        metavar="PATH",
        help="gene embedding for SCCVAE (perturbation_embedding), linear and knn: a .csv or "
        ".parquet table of genes x dimensions with gene names as its index (first column), "
        "or an .h5ad with genes as obs_names and dimensions in X; with --split unseen it "
        "lets targets that are not measured genes be tested (default methods that cannot "
        "represent half as many perturbations as SCCVAE, e.g. coexpression, are left out, "
        "with a note); without it, measured genes are embedded by their coexpression",
    )
    bench.add_argument(
        "--likelihood",
        choices=("nb", "gaussian"),
        default=None,
        help="SCCVAE's likelihood: nb (negative binomial on the raw counts; X must hold "
        "counts) or gaussian (on log-normalised expression: X, or the log-normalised counts); "
        "without it, nb when X holds raw counts, else gaussian",
    )
    bench.add_argument(
        "--max-epochs",
        type=_positive_int,
        default=DEFAULT_MAX_EPOCHS,
        help=f"SCCVAE epochs; without it, {DEFAULT_EPOCHS_TEXT}",
    )
    per_split = "; ".join(f"{split}: {','.join(m)}" for split, m in DEFAULT_METHODS.items())
    bench.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated methods (default per split: {per_split}). {method_help}",
    )
    bench.add_argument(
        "--seed",
        type=int,
        default=TEST_SEED,
        help="seed of data, splits and models; the default is the main benchmark's test "
        "screen, fixed before any design work: choose designs on other seeds",
    )
    bench.add_argument(
        "--n-seeds",
        type=_positive_int,
        default=1,
        help="train every SCCVAE variant with this many seeds (SEED, SEED+1, ...; the data, "
        "splits and baselines keep SEED): each perturbation's scores are averaged over the "
        "seeds, and the table and verdicts show the spread of the per-seed means (sd, "
        "min-max)",
    )
    bench.add_argument(
        "--out",
        default=None,
        help="output directory, created; without it the results are only printed",
    )
    bench.add_argument(
        "--n-cells", type=_positive_int, default=100, help="cells predicted per perturbation"
    )
    bench.add_argument(
        "--n-latent",
        type=_positive_int,
        default=64,
        help="SCCVAE latent nodes (at least the targets)",
    )
    bench.add_argument(
        "--n-hidden",
        type=_positive_int,
        default=None,
        help="SCCVAE hidden layer width; without it SCCVAE's default",
    )
    bench.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="SCCVAE perturbed cells per batch; without it SCCVAE.train's default",
    )
    bench.add_argument(
        "--lr",
        type=float,
        default=None,
        help="SCCVAE learning rate; without it SCCVAE's training plan's default",
    )
    bench.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="CPU threads of torch and BLAS during the run (1 is fastest for these small "
        "models on a shared machine)",
    )
    bench.add_argument("--quiet", action="store_true", help="no progress bars or logging")
    bench.set_defaults(handler=_benchmark, subparser=bench)
    return parser


@contextlib.contextmanager
def _logging(quiet: bool):
    """Route the package's log records through rich (above the progress bars) for one run."""
    from rich.logging import RichHandler

    package = logging.getLogger("sccvae")
    bench = logging.getLogger("sccvae.benchmark")
    saved = (package.level, package.propagate, bench.level)
    handler = RichHandler(show_path=False, show_time=False, markup=False)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    package.addHandler(handler)
    package.propagate = False
    package.setLevel(logging.ERROR if quiet else logging.WARNING)
    bench.setLevel(logging.ERROR if quiet else logging.INFO)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(saved[0])
        package.propagate = saved[1]
        bench.setLevel(saved[2])


def _benchmark(args: argparse.Namespace, parser: argparse.ArgumentParser, argv) -> int:
    from rich.console import Console

    from sccvae.benchmark import (
        BenchmarkInputError,
        command_line,
        load_embedding,
        print_table,
        run_benchmark,
        verdicts,
    )

    model_kwargs = {"n_latent": args.n_latent}
    if args.embedding is not None:
        try:
            model_kwargs["perturbation_embedding"] = load_embedding(args.embedding)
        except (BenchmarkInputError, FileNotFoundError) as err:
            parser.error(str(err.args[0]) if err.args else str(err))
    if args.n_hidden is not None:
        model_kwargs["n_hidden"] = args.n_hidden
    train_kwargs = {}
    if args.batch_size is not None:
        train_kwargs["batch_size"] = args.batch_size
    if args.lr is not None:
        train_kwargs["plan_kwargs"] = {"lr": args.lr}
    command = command_line(["sccvae", *argv] if argv is not None else None)
    try:
        # Lightning's LeafSpec deprecation notice is filtered where the model trains
        with _logging(args.quiet):
            result = run_benchmark(
                data=args.data,
                perturbation_key=args.perturbation_key,
                control_label=args.control_label,
                combination_delimiter=args.combination_delimiter,
                dataset=args.dataset,
                split=args.split,
                n_folds=args.folds,
                max_epochs=args.max_epochs,
                methods=args.methods,
                seed=args.seed,
                n_seeds=args.n_seeds,
                out=args.out,
                n_cells=args.n_cells,
                model_kwargs=model_kwargs,
                train_kwargs=train_kwargs,
                progress=not args.quiet,
                n_threads=args.threads,
                command=command,
                scenario=args.scenario,
                likelihood=args.likelihood,
                obs_filter=args.obs_filter,
            )
    except (BenchmarkInputError, FileNotFoundError) as err:
        message = str(err.args[0]) if err.args else str(err)
        parser.error(message)  # exits with status 2
    console = Console()
    if not console.is_terminal:  # e.g. redirected to a file: do not squeeze to 80 columns
        console = Console(width=170)
    print_table(result, console=console)
    categories = [c for c in dict.fromkeys(result.summary["category"]) if c != "all"]
    if len(categories) == 1:  # equals the "all" table
        categories = []
    for category in categories:
        print_table(result, console=console, category=category)
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"wall time: {result.wall_time_s:.1f} s")
    if args.out is not None:
        console.print(f"outputs written to {args.out}")
    lines = verdicts(result)
    if lines:
        console.print("[bold]Verdict[/bold]")
        for line in lines:
            console.print(f"- {line}", highlight=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sccvae`` console script.

    Parameters
    ----------
    argv
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    The exit status (0 on success; bad arguments or input exit with status 2).
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    return args.handler(args, args.subparser, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
