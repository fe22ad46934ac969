"""Cost of the latent SCM alone against the number of latent nodes.

With gene nodes a screen gets one latent node per measured target (plus ``n_latent``
abstract ones): about 2,000 on Replogle 2022's K562-essential screen, about 8,000 on a
genome-wide one. Each training step propagates its cells through ``u = (z + shift)
(I - B * M)^-1``, a triangular solve over all nodes whatever the batch holds, and the optimiser
updates the ``nodes x nodes`` edge weights. This times one training step of the SCM alone
(forward solve, backward pass, Adam update of the weights) for a batch of ``--batch`` cells
with the default full graph, median over ``--repeats`` steps after one warm-up, in this process,
and the memory of the weights with Adam's state.

Usage::

    python benchmarks/scm_solve.py                          # 64, 512, 2000, 8000 nodes
    python benchmarks/scm_solve.py --nodes 2000 --threads 2

Prints a markdown table and the command.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

import numpy as np


def measure(n_nodes: int, batch: int, repeats: int, device: str) -> dict:
    """Median seconds of one SCM training step at ``n_nodes`` nodes."""
    import torch

    from sccvae.module._scm import LatentSCM, build_graph_mask

    mask, _ = build_graph_mask("full", n_nodes)
    scm = LatentSCM(mask, seed=0).to(device)
    optimizer = torch.optim.Adam(scm.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(batch, n_nodes, generator=generator).to(device)
    shift = torch.zeros(batch, n_nodes, device=device)
    shift[: batch // 2, 0] = -1.0  # half the batch perturbed, as a paired minibatch
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats + 1):
        synchronize()
        start = time.perf_counter()
        optimizer.zero_grad()
        u = scm(z, shift)
        (u**2).mean().backward()
        optimizer.step()
        synchronize()
        times.append(time.perf_counter() - start)
    weights = n_nodes * n_nodes * 4  # float32 weights, their mask, gradient, Adam's two moments
    return {
        "nodes": n_nodes,
        "batch": batch,
        "step_s": float(np.median(times[1:])),
        "state_gib": 5 * weights / 2**30,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[64, 512, 2000, 8000])
    parser.add_argument("--batch", type=int, default=256, help="cells per step (128 + 128)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = [measure(n, args.batch, args.repeats, args.device) for n in args.nodes]
    print(f"Machine: {platform.platform()}, {args.device}, {args.threads} torch thread(s)")
    print()
    print("| latent nodes | cells per step | SCM step (s) | weights + Adam state (GiB) |")
    print("|---|---|---|---|")
    for row in rows:
        step, state = f"{row['step_s']:.4f}", f"{row['state_gib']:.2f}"
        print(f"| {row['nodes']:,} | {row['batch']} | {step} | {state} |")
    print()
    print(f"`python {shlex.join(['benchmarks/scm_solve.py', *sys.argv[1:]])}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
