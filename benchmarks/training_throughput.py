"""Training throughput and peak memory of SCCVAE at the paper's architecture.

Measures cells per second through the real ``SCCVAE.train`` path (Lightning, paired sampler,
float32, triangular solve) and, for comparison on the same machine, a step written the way
the public reference implementation trains (float64, general matrix inverse each step,
same layer sizes). Each configuration runs in a fresh process so peak memory is its own.

Usage::

    python benchmarks/training_throughput.py                  # CPU, batch 32 and 128
    python benchmarks/training_throughput.py --device cuda    # on a GPU machine
    python benchmarks/training_throughput.py --single sccvae --batch-size 32   # one config

Throughput counts perturbed cells (each paired with one control cell, so a batch of 32
holds 64 cells), the unit the reference's 18 cells/s refers to.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

from _synthetic import synthetic_screen

N_GENES = 8563
N_LATENT = 512
N_HIDDEN = 1024


def _peak_memory_mb(device: str) -> dict:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        import torch

        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_sccvae(batch_size: int, device: str, n_batches: int) -> dict:
    """Time one epoch of the real training path after a warm-up epoch."""
    import lightning.pytorch as pl
    import torch

    import sccvae

    cells_per_perturbation = batch_size * 2
    n_perturbations = max(1, n_batches // 2)
    adata = synthetic_screen(n_perturbations, cells_per_perturbation, 2000, N_GENES)
    sccvae.SCCVAE.setup_anndata(adata)
    model = sccvae.SCCVAE(
        adata, n_latent=N_LATENT, n_hidden=N_HIDDEN, n_layers=2, graph="full",
        perturbation_embedding="onehot", seed=0,
    )

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.times = []

        def on_train_epoch_start(self, trainer, module):
            if device == "cuda":
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            if device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

    timer = EpochTimer()
    model.train(
        max_epochs=2, train_size=1.0, batch_size=batch_size,
        accelerator="gpu" if device == "cuda" else "cpu", devices=1,
        enable_progress_bar=False, logger=False, enable_checkpointing=False,
        callbacks=[timer],
    )
    n_perturbed = n_perturbations * cells_per_perturbation
    seconds = timer.times[-1]
    return {
        "implementation": "sccvae (float32, triangular solve, Lightning)",
        "batch_size": batch_size,
        "device": device,
        "perturbed_cells_per_s": n_perturbed / seconds,
        "cells_per_s_incl_controls": 2 * n_perturbed / seconds,
        "steps": 2 * n_perturbations,
        "epoch_seconds": seconds,
        **_peak_memory_mb(device),
    }


def run_reference_style(batch_size: int, device: str, n_steps: int) -> dict:
    """The reference's step: float64, general inverse of (I - B*M) every step, same sizes."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    dtype = torch.float64
    dev = torch.device(device)

    def mlp(n_in, n_out):
        return nn.Sequential(
            nn.Linear(n_in, N_HIDDEN), nn.LeakyReLU(0.2), nn.Linear(N_HIDDEN, N_HIDDEN),
            nn.LeakyReLU(0.2), nn.Linear(N_HIDDEN, n_out),
        )

    encoder = mlp(N_GENES, 2 * N_LATENT).to(dev, dtype)
    perturbation_encoder = mlp(50, N_LATENT).to(dev, dtype)
    decoder = mlp(N_LATENT, N_GENES).to(dev, dtype)
    B = nn.Parameter(torch.randn(N_LATENT, N_LATENT, device=dev, dtype=dtype) * 0.1)
    mask = torch.triu(torch.ones(N_LATENT, N_LATENT, device=dev, dtype=dtype), 1)
    params = [*encoder.parameters(), *perturbation_encoder.parameters(), *decoder.parameters(), B]
    optimizer = torch.optim.Adam(params, lr=5e-4, eps=0.01, weight_decay=1e-6)
    x = torch.rand(batch_size, N_GENES, device=dev, dtype=dtype)
    y = torch.rand(batch_size, N_GENES, device=dev, dtype=dtype)
    embedding = torch.randn(batch_size, 50, device=dev, dtype=dtype)
    eye = torch.eye(N_LATENT, device=dev, dtype=dtype)

    def step():
        stats = encoder(x)
        mu, logvar = stats.chunk(2, dim=1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        shift = torch.softmax(perturbation_encoder(embedding), dim=1)
        scale = torch.inverse(eye - B * mask)
        y_hat = decoder((z + shift) @ scale)
        x_hat = decoder(z @ scale)
        d = torch.cdist(y_hat, y) ** 2
        mmd = torch.exp(-d / d.detach().mean()).mean()
        kl = (0.5 * (mu**2 + logvar.exp() - logvar - 1)).mean()
        loss = ((y_hat - y) ** 2).mean() + 10 * mmd + kl + 0.25 * ((x_hat - x) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        for p in params:  # the reference clips each parameter separately
            torch.nn.utils.clip_grad_norm_(p, 1.0)
        optimizer.step()

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "implementation": "reference-style (float64, general inverse per step)",
        "batch_size": batch_size,
        "device": device,
        "perturbed_cells_per_s": batch_size * n_steps / seconds,
        "cells_per_s_incl_controls": 2 * batch_size * n_steps / seconds,
        "steps": n_steps,
        "epoch_seconds": seconds,
        **_peak_memory_mb(device),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-sizes", default="32,128")
    parser.add_argument("--n-batches", type=int, default=40, help="SCCVAE batches timed per configuration")
    parser.add_argument("--reference-steps", type=int, default=8)
    parser.add_argument("--single", choices=["sccvae", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    if args.single:
        if args.single == "sccvae":
            result = run_sccvae(args.batch_size, args.device, args.n_batches)
        else:
            result = run_reference_style(args.batch_size, args.device, args.reference_steps)
        print("RESULT " + json.dumps(result), flush=True)
        return

    import torch

    results = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        for kind in ("sccvae", "reference"):
            if kind == "reference" and batch_size != 32:
                continue
            cmd = [
                sys.executable, __file__, "--single", kind, "--batch-size", str(batch_size),
                "--device", args.device, "--n-batches", str(args.n_batches),
                "--reference-steps", str(args.reference_steps),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"{kind} batch {batch_size} failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
            print(json.dumps(results[-1]), flush=True)

    machine = (
        f"{platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else "")
    )
    load = os.getloadavg()
    print(f"\nMachine: {machine}; load average at the end: {load[0]:.2f}")
    print(f"Command: python benchmarks/training_throughput.py --device {args.device} --batch-sizes {args.batch_sizes}\n")
    print("| implementation | device | batch (perturbed + control) | perturbed cells/s | peak RSS (MB) |" + (" peak GPU (MB) |" if args.device == "cuda" else ""))
    print("|---|---|---|---|---|" + ("---|" if args.device == "cuda" else ""))
    for r in results:
        row = (
            f"| {r['implementation']} | {r['device']} | {r['batch_size']} + {r['batch_size']} | "
            f"{r['perturbed_cells_per_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
        if args.device == "cuda":
            row += f" {r.get('peak_gpu_mb', float('nan')):.0f} |"
        print(row)
    reference = next((r for r in results if r["implementation"].startswith("reference")), None)
    ours = next((r for r in results if r["implementation"].startswith("sccvae") and r["batch_size"] == 32), None)
    if reference and ours:
        print(f"\nSpeed-up at batch 32: {ours['perturbed_cells_per_s'] / reference['perturbed_cells_per_s']:.1f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
