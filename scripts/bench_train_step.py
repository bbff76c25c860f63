#!/usr/bin/env python3
"""Side-by-side U-Net throughput: denoising-diffusion-pytorch (PyTorch CPU) against ours
(`cargo bench --bench train_step`, burn Flex), same configurations, batches and step.

    pip install denoising-diffusion-pytorch==2.3.4      # optional benchmarking dependency
    python scripts/bench_train_step.py --threads 2                  # PyTorch only
    python scripts/bench_train_step.py --threads 2 --with-rust      # + cargo bench, ratios

Cases (the same as benches/train_step.rs):
  pipeline   Unet(16, (1,2,4)) at 32x32: training step at batch 16, forward at batch 100
  deeplense  Unet(64, (1,2,4,8)) at 128x128: training step and forward at batch 4

Training step = GaussianDiffusion(objective="pred_v", beta_schedule="sigmoid", T=1000) loss on
a random batch in [0, 1], backward, clip_grad_norm_(1.0), AdamW step, EMA update (ema-pytorch,
as the reference Trainer), i.e. what `Trainer::train_step` does. Forward = the model alone
under torch.no_grad() at t = 500. Median of --runs timed repetitions after one warm-up.
With --with-rust the script then runs the criterion bench and prints our images/s and the
ratio ours / PyTorch (> 1 means we are faster).
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import torch
from denoising_diffusion_pytorch import GaussianDiffusion, Unet

CASES = {
    # name: (unet kwargs, image size, train batch, forward batch, lr, betas, weight decay)
    "pipeline": (dict(dim=16, dim_mults=(1, 2, 4), channels=1), 32, 16, 100, 1e-3, (0.9, 0.99), 0.0),
    "deeplense": (dict(dim=64, dim_mults=(1, 2, 4, 8), channels=1), 128, 4, 4, 1e-5, (0.9, 0.999), 1e-3),
}


def timed(fn, runs):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def bench_torch(name, runs):
    cfg, size, train_batch, fwd_batch, lr, betas, wd = CASES[name]
    torch.manual_seed(0)
    model = Unet(**cfg)
    diffusion = GaussianDiffusion(model, image_size=size, timesteps=1000, objective="pred_v",
                                  beta_schedule="sigmoid", auto_normalize=True)
    opt = torch.optim.AdamW(diffusion.parameters(), lr=lr, betas=betas, weight_decay=wd, eps=1e-8)
    try:
        from ema_pytorch import EMA
        ema = EMA(diffusion, beta=0.995, update_every=1)
    except ImportError:
        ema = None
    images = torch.rand(train_batch, cfg["channels"], size, size)

    def train_step():
        loss = diffusion(images)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if ema is not None:
            ema.update()

    diffusion.train()
    tr = timed(train_step, runs)
    model.eval()
    x = torch.randn(fwd_batch, cfg["channels"], size, size)
    t = torch.full((fwd_batch,), 500, dtype=torch.long)
    with torch.no_grad():
        fw = timed(lambda: model(x, t), runs)
    return {"train": (tr, train_batch), "forward": (fw, fwd_batch)}


def bench_rust(names):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    filt = "|".join(names)
    subprocess.run(["cargo", "bench", "--bench", "train_step", "--", filt], cwd=root, check=True)
    out = {}
    for name in names:
        _, size, train_batch, fwd_batch, *_ = CASES[name]
        for kind, group, batch in (("train", f"train_step_{name}", train_batch),
                                   ("forward", f"forward_{name}", fwd_batch)):
            path = os.path.join(root, "target", "criterion", group, "flex",
                                f"{size}x{size}_batch{batch}", "new", "estimates.json")
            with open(path) as f:
                est = json.load(f)
            out[(name, kind)] = (est["median"]["point_estimate"] / 1e9, batch)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cases", default="pipeline,deeplense", help="comma-separated: pipeline, deeplense")
    ap.add_argument("--with-rust", action="store_true", help="also run `cargo bench --bench train_step` and print ratios")
    args = ap.parse_args()
    names = [c for c in args.cases.split(",") if c]
    for n in names:
        if n not in CASES:
            ap.error(f"unknown case {n!r} (pipeline, deeplense)")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.runs} runs, "
          f"load average {os.getloadavg()[0]:.1f}")
    torch_res = {}
    for name in names:
        res = bench_torch(name, args.runs)
        for kind, ((med, lo, hi), batch) in res.items():
            torch_res[(name, kind)] = (med, batch)
            print(f"pytorch {name:9s} {kind:7s} batch {batch:3d}: {med:8.3f} s "
                  f"[{lo:.3f}, {hi:.3f}]  {batch / med:7.2f} images/s", flush=True)
    if args.with_rust:
        rust = bench_rust(names)
        print("\ncase       kind     pytorch img/s  ours img/s  ours/pytorch")
        for key, (sec, batch) in rust.items():
            tsec, _ = torch_res[key]
            print(f"{key[0]:10s} {key[1]:7s} {batch / tsec:14.2f} {batch / sec:11.2f} {tsec / sec:13.2f}")


if __name__ == "__main__":
    main()
