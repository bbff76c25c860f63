#!/usr/bin/env python3
"""PyTorch (CPU) side of the U-Net forward benchmark, for comparison with `cargo bench --bench
unet`: the same presets, inputs of the same shape, median of N timed runs after warm-up.

    pip install denoising-diffusion-pytorch==2.3.4
    python scripts/bench_unet_torch.py --threads 2
"""
import argparse
import statistics
import time

import torch
from denoising_diffusion_pytorch import Unet

CASES = [
    ("small", dict(dim=16, dim_mults=(1, 2, 4, 8), channels=1), 1),
    ("small", dict(dim=16, dim_mults=(1, 2, 4, 8), channels=1), 8),
    ("deeplense", dict(dim=64, dim_mults=(1, 2, 4, 8), channels=1), 1),
    ("deeplense", dict(dim=64, dim_mults=(1, 2, 4, 8), channels=1), 8),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.size}x{args.size}")
    for name, cfg, batch in CASES:
        model = Unet(**cfg).eval()
        x = torch.randn(batch, 1, args.size, args.size)
        t = torch.full((batch,), 500, dtype=torch.long)
        with torch.no_grad():
            model(x, t)  # warm-up
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                model(x, t)
                times.append(time.perf_counter() - t0)
        print(f"{name:10s} batch {batch}: median {statistics.median(times) * 1e3:9.1f} ms "
              f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}, {args.runs} runs)")


if __name__ == "__main__":
    main()
