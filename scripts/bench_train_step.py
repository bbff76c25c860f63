#!/usr/bin/env python3
"""Side-by-side U-Net throughput: denoising-diffusion-pytorch (PyTorch CPU) against ours
(`cargo bench --bench train_step`, burn Flex), same configurations, batches and step.

    pip install denoising-diffusion-pytorch==2.3.4      # optional benchmarking dependency
    python scripts/bench_train_step.py --threads 2                  # PyTorch only
    python scripts/bench_train_step.py --threads 2 --with-rust      # + cargo bench, ratios
    # on a GPU (scripts/gpu_train_step.sh runs this next to ours), the preset's batch 24:
    python scripts/bench_train_step.py --device cuda --precision bf16 --cases deeplense \
        --train-batch 24 --forward-batch 24 --runs 10 --warmup 3

Cases (the same as benches/train_step.rs):
  pipeline   Unet(16, (1,2,4)) at 32x32: training step at batch 16, forward at batch 100
  deeplense  Unet(64, (1,2,4,8)) at 128x128: training step and forward at batch 4

Training step = GaussianDiffusion(objective="pred_v", beta_schedule="sigmoid", T=1000) loss on
a random batch in [0, 1], backward, clip_grad_norm_(1.0), AdamW step, EMA update (ema-pytorch,
as the reference Trainer), i.e. what `Trainer::train_step` does. Forward = the model alone
under torch.no_grad() at t = 500. Median of --runs timed repetitions after --warmup warm-ups.
On --device cuda each repetition ends with torch.cuda.synchronize(); --precision f32 keeps
PyTorch's defaults (cuDNN convolutions may use TF32, matrix products do not), bf16 / f16 run
the loss and the forward under torch.autocast (f32 master weights and AdamW, as the reference
Trainer's accelerate mixed precision; f16 with a GradScaler).
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


def timed(fn, runs, warmup=1, device="cpu"):
    def once():
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    warm = [once() for _ in range(warmup)]
    times = [once() for _ in range(runs)]
    return statistics.median(times), min(times), max(times), warm


def bench_torch(name, runs, device="cpu", precision="f32", train_batch=None, fwd_batch=None, warmup=1):
    cfg, size, default_train, default_fwd, lr, betas, wd = CASES[name]
    train_batch = train_batch or default_train
    fwd_batch = fwd_batch or default_fwd
    torch.manual_seed(0)
    model = Unet(**cfg)
    diffusion = GaussianDiffusion(model, image_size=size, timesteps=1000, objective="pred_v",
                                  beta_schedule="sigmoid", auto_normalize=True).to(device)
    opt = torch.optim.AdamW(diffusion.parameters(), lr=lr, betas=betas, weight_decay=wd, eps=1e-8)
    try:
        from ema_pytorch import EMA
        ema = EMA(diffusion, beta=0.995, update_every=1).to(device)
    except ImportError:
        ema = None
    images = torch.rand(train_batch, cfg["channels"], size, size, device=device)
    amp_dtype = {"f32": None, "bf16": torch.bfloat16, "f16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(device) if precision == "f16" else None

    def autocast():
        return torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp_dtype is not None)

    last = {}

    def train_step():
        with autocast():
            loss = diffusion(images)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad()
        if ema is not None:
            ema.update()
        last["loss"] = loss.detach()

    diffusion.train()
    tr = timed(train_step, runs, warmup, device)
    model.eval()
    x = torch.randn(fwd_batch, cfg["channels"], size, size, device=device)
    t = torch.full((fwd_batch,), 500, dtype=torch.long, device=device)
    with torch.no_grad(), autocast():
        fw = timed(lambda: model(x, t), runs, warmup, device)
    return {"train": (tr, train_batch), "forward": (fw, fwd_batch), "loss": float(last["loss"])}


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
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16", "f16"],
                    help="f32, or autocast mixed precision (bf16, f16 with a GradScaler)")
    ap.add_argument("--train-batch", type=int, default=None, help="override the case's training batch")
    ap.add_argument("--forward-batch", type=int, default=None, help="override the case's forward batch")
    ap.add_argument("--warmup", type=int, default=1, help="untimed repetitions before the timed ones")
    args = ap.parse_args()
    if args.with_rust and (args.device != "cpu" or args.precision != "f32" or args.train_batch or args.forward_batch):
        ap.error("--with-rust compares the CPU defaults only (see scripts/gpu_train_step.sh for the GPU)")
    names = [c for c in args.cases.split(",") if c]
    for n in names:
        if n not in CASES:
            ap.error(f"unknown case {n!r} (pipeline, deeplense)")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
        where = f"{args.threads} threads"
    else:
        where = (f"{torch.cuda.get_device_name()}, {args.precision}, TF32 matmul "
                 f"{torch.backends.cuda.matmul.allow_tf32} / cuDNN {torch.backends.cudnn.allow_tf32}")
    print(f"torch {torch.__version__}, {where}, median of {args.runs} runs after {args.warmup} warm-up, "
          f"load average {os.getloadavg()[0]:.1f}")
    torch_res = {}
    for name in names:
        res = bench_torch(name, args.runs, args.device, args.precision, args.train_batch,
                          args.forward_batch, args.warmup)
        loss = res.pop("loss")
        for kind, ((med, lo, hi, warm), batch) in res.items():
            torch_res[(name, kind)] = (med, batch)
            print(f"pytorch {name:9s} {kind:7s} batch {batch:3d}: {med:8.4f} s "
                  f"[{lo:.4f}, {hi:.4f}]  {batch / med:8.2f} images/s  (warm-up "
                  f"{', '.join(f'{w:.2f} s' for w in warm)})", flush=True)
        print(f"pytorch {name:9s} last training loss {loss:.5f}")
    if args.with_rust:
        rust = bench_rust(names)
        print("\ncase       kind     pytorch img/s  ours img/s  ours/pytorch")
        for key, (sec, batch) in rust.items():
            tsec, _ = torch_res[key]
            print(f"{key[0]:10s} {key[1]:7s} {batch / tsec:14.2f} {batch / sec:11.2f} {tsec / sec:13.2f}")


if __name__ == "__main__":
    main()
