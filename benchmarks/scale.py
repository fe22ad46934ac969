"""Cost of SCCVAE against the number of perturbations: training speed, calibration, memory.

A screen of knock-downs of measured genes (every target a gene node, as on Replogle 2022's
K562 screens) with ``--cells`` cells per knock-down and ``--controls`` control cells over
``--genes`` genes, log-normalised-looking sparse values (the cost does not depend on the
values). For each number of perturbations, in a fresh process (so that its peak memory is
its own): SCCVAE at its defaults (``n_latent=64`` plus one node per measured target),
``--steps`` timed training steps after a warm-up (cells per second counts perturbed cells and
their paired control cells, and the time to load their batches; ``step_compute_s`` is the
median step without the loading), then what ``train`` runs after the optimiser (calibration of
the trained perturbations, the maps for unseen targets, the training reference: seconds),
with ``--predict N`` the seconds per label of ``predict`` (100 cells; N seen and N unseen
labels; with the predicted mean pinned to the reference cells, as by default, and without),
and the process's peak resident memory (after training, and at the end). A size that runs
past ``--timeout`` keeps its training figures. With ``--backed`` the screen is written to a
temporary h5ad (CSR) and trained from it opened ``backed="r"``: the expression is read batch
by batch from disk, never held in memory.

Usage::

    python benchmarks/scale.py                                  # 10, 300, 1000, 2000 x 8000 genes
    python benchmarks/scale.py --perturbations 10 300 --steps 20
    python benchmarks/scale.py --device cuda                    # on a GPU machine
    python benchmarks/scale.py --perturbations 2000 --backed     # from a backed h5ad
    python benchmarks/scale.py --perturbations 300 2000 --predict 20   # and predict's cost

Prints a markdown table and the command; ``--json`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np
from _synthetic import synthetic_screen


def measure(args) -> dict:
    """Train ``args.steps`` timed steps and calibrate, in this process."""
    import lightning.pytorch as pl
    import torch

    import sccvae

    torch.set_num_threads(args.threads)
    if args.h5ad:  # written by the parent process: its memory is not this one's
        import anndata as ad

        adata = ad.read_h5ad(args.h5ad, backed="r")
    else:
        adata = synthetic_screen(args.one, args.cells, args.controls, args.genes)
    sccvae.SCCVAE.setup_anndata(adata)
    start = time.perf_counter()
    model = sccvae.SCCVAE(adata, seed=0)
    setup_seconds = time.perf_counter() - start
    synchronize = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    class StepTimer(pl.Callback):
        def __init__(self):
            self.starts, self.ends = [], []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            synchronize()
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            synchronize()
            self.ends.append(time.perf_counter())

        def on_train_end(self, trainer, module):
            self.fit_end = time.perf_counter()
            # the training figures now, in case what follows runs past the timeout
            print(json.dumps(training_row(self)), flush=True)

    def training_row(timer) -> dict:
        # from the end of the warm-up to the end of the last step: loading the batches counts
        ends = np.array(timer.ends)
        elapsed = float(ends[-1] - ends[args.warmup - 1])
        n_steps = len(ends) - args.warmup
        compute = float(np.median((ends - np.array(timer.starts))[args.warmup :]))
        return {
            "perturbations": args.one,
            "genes": args.genes,
            "cells": adata.n_obs,
            "latent_nodes": int(model.module.n_latent),
            "device": args.device,
            "threads": args.threads,
            "backed": bool(args.h5ad),
            "cells_per_s": 2 * batch_size * n_steps / elapsed,
            "step_s": elapsed / n_steps,
            "step_compute_s": compute,
            "peak_rss_gib_training": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "model_setup_s": setup_seconds,
        }

    timer = StepTimer()
    batch_size = 128  # SCCVAE's default (perturbed cells per step, each with a control)
    model.train(
        max_epochs=1,
        train_size=1.0,
        batch_size=batch_size,
        n_threads=args.threads,
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        limit_train_batches=args.warmup + args.steps,
        callbacks=[timer],
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
    )
    done = time.perf_counter()
    return {
        **training_row(timer),
        "after_training_s": done - timer.fit_end,
        **predict_row(model, args),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        **(
            {"peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30}
            if args.device == "cuda"
            else {}
        ),
    }


def predict_row(model, args) -> dict:
    """Seconds per label of ``predict`` (100 cells each) with and without the pinned mean.

    ``args.predict`` training labels and as many measured genes no perturbation targets
    (unseen); nothing when ``--predict 0``.
    """
    if not args.predict:
        return {}
    import warnings

    seen = [f"G{i}" for i in range(min(args.predict, args.one))]
    unseen = [f"G{args.one + i}" for i in range(min(args.predict, args.genes - args.one))]
    labels = seen + unseen
    with warnings.catch_warnings():  # the first call's one-off costs are timed by neither
        warnings.simplefilter("ignore")
        model.predict(labels[:2], n_cells=100, seed=0)
    row = {}
    for pin_mean in (True, False):
        start = time.perf_counter()
        with warnings.catch_warnings():  # random values extrapolate; the warning is not timed
            warnings.simplefilter("ignore")
            model.predict(labels, n_cells=100, seed=0, pin_mean=pin_mean)
        name = "predict_s_per_label" if pin_mean else "predict_s_per_label_unpinned"
        row[name] = (time.perf_counter() - start) / len(labels)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perturbations", type=int, nargs="+", default=[10, 300, 1000, 2000])
    parser.add_argument("--genes", type=int, default=8000)
    parser.add_argument("--cells", type=int, default=20, help="cells per knock-down")
    parser.add_argument("--controls", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per size")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument(
        "--predict",
        type=int,
        default=0,
        help="also time predict on this many seen and as many unseen labels (100 cells each)",
    )
    parser.add_argument(
        "--backed", action="store_true", help="train from the screen written to h5ad, backed"
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size
    parser.add_argument("--h5ad", help=argparse.SUPPRESS)  # internal: its backed screen
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args)))
        return 0
    rows = []
    scratch = tempfile.TemporaryDirectory()
    for n in args.perturbations:
        command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
        command += ["--one", str(n)]
        if args.backed:
            path = f"{scratch.name}/screen_{n}.h5ad"
            synthetic_screen(n, args.cells, args.controls, args.genes).write_h5ad(path)
            command += ["--h5ad", path]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=args.timeout, check=True
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        except subprocess.TimeoutExpired as error:
            out = error.stdout or ""
            out = out.decode() if isinstance(out, bytes) else out
            partial = out.strip().splitlines()
            row = json.loads(partial[-1]) if partial else {"perturbations": n}
            rows.append({**row, "error": f"stopped after {args.timeout:.0f} s"})
        except subprocess.CalledProcessError as error:
            rows.append({"perturbations": n, "error": error.stderr.strip().splitlines()[-1]})
        print(json.dumps(rows[-1]), file=sys.stderr)
    columns = [
        "perturbations",
        "genes",
        "cells",
        "latent_nodes",
        "backed",
        "cells_per_s",
        "step_s",
        "step_compute_s",
        "after_training_s",
        "peak_rss_gib_training",
        "peak_rss_gib",
        "model_setup_s",
    ]
    if args.predict:
        columns += ["predict_s_per_label", "predict_s_per_label_unpinned"]
    if args.device == "cuda":
        columns.append("peak_gpu_gib")
    print(f"Machine: {platform.platform()}, {args.device}, {args.threads} torch thread(s)")
    print()
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        if "error" in row and "cells_per_s" not in row:
            print(f"| {row['perturbations']} | {row['error']} |")
            continue
        cells = [
            f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, row.get("error")))
            for c in columns
        ]
        print("| " + " | ".join(cells) + " |")
    print()
    print(f"`python {shlex.join(['benchmarks/scale.py', *sys.argv[1:]])}`")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
