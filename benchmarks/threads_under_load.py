"""Training speed of the Quick start model with and without a competing CPU-bound process.

A first user reported the README's Quick start training at ~25-85 s per epoch with torch's
default threads while another process held one of the 2 cores, against 2.7 s with one
thread. This script times it: the Quick start model (``simulate_perturbseq(seed=0)``, default
``SCCVAE``) trains ``--epochs`` epochs in a fresh process per configuration,

- with ``train(n_threads="auto")``, the default (one torch thread for a model this small on
  the CPU), and with ``n_threads=None`` (torch's own setting, all cores);
- on an idle machine, and while a busy loop (``while True: pass``) runs in another process.

The time per epoch excludes the first epoch. Run it on an otherwise idle machine.

Usage::

    python benchmarks/threads_under_load.py             # 3 epochs per configuration

Prints a markdown table and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

CHILD = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import lightning.pytorch as pl
import torch
import sccvae

epochs, n_threads = int(sys.argv[1]), None if sys.argv[2] == "None" else sys.argv[2]
adata = sccvae.data.simulate_perturbseq(seed=0)
sccvae.SCCVAE.setup_anndata(adata, perturbation_key="perturbation", control_label="control")
model = sccvae.SCCVAE(adata)
times, threads = [], []


class Timer(pl.Callback):
    def on_train_epoch_start(self, trainer, module):
        self.start = time.perf_counter()
        threads.append(torch.get_num_threads())

    def on_train_epoch_end(self, trainer, module):
        times.append(time.perf_counter() - self.start)


model.train(max_epochs=epochs, n_threads=n_threads, enable_progress_bar=False,
            callbacks=[Timer()], calibrate=False)
print(json.dumps({"epoch_seconds": times[1:], "threads": threads[-1],
                  "default_threads": torch.get_num_threads()}))
"""


def _run(epochs: int, n_threads: str, busy: bool) -> dict:
    competitor = None
    if busy:
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(epochs), n_threads],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for busy in (False, True):
        for n_threads in ("auto", "None"):
            result = _run(args.epochs, n_threads, busy)
            seconds = sum(result["epoch_seconds"]) / len(result["epoch_seconds"])
            rows.append((busy, n_threads, result["threads"], seconds))
            print(f"busy={busy} n_threads={n_threads}: {seconds:.2f} s/epoch", file=sys.stderr)
    print(f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}")
    print()
    print("| competing CPU-bound process | `train(n_threads=...)` | torch threads used | seconds per epoch |")
    print("|---|---|---|---|")
    for busy, n_threads, threads, seconds in rows:
        label = '"auto" (default)' if n_threads == "auto" else "None (torch's setting)"
        print(f"| {'yes' if busy else 'no'} | {label} | {threads} | {seconds:.2f} |")
    idle = {n: s for b, n, _, s in rows if not b}
    loaded = {n: s for b, n, _, s in rows if b}
    print()
    print(f"Default under load / default idle: {loaded['auto'] / idle['auto']:.2f}x; "
          f"torch's setting under load / idle: {loaded['None'] / idle['None']:.2f}x")
    print(f"\n`python {shlex.join(['benchmarks/threads_under_load.py', *sys.argv[1:]])}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
