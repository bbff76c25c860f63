#!/usr/bin/env python3
"""Check that a safetensors file exported by the `unet` crate loads into
denoising-diffusion-pytorch 2.x with `load_state_dict(strict=True)`, and optionally that it
reproduces a reference checkpoint and its forward output.

    pip install denoising-diffusion-pytorch==2.3.4 safetensors
    cargo run -p unet --example export_safetensors -- \
        crates/unet/tests/fixtures/unet_state_dict.pth /tmp/unet.safetensors
    python scripts/check_safetensors_in_torch.py /tmp/unet.safetensors \
        --reference crates/unet/tests/fixtures/unet_state_dict.pth \
        --x crates/unet/tests/fixtures/forward_x.npy --t crates/unet/tests/fixtures/forward_t.npy \
        --expect crates/unet/tests/fixtures/forward_out.npy

The Unet is built from the config the crate stores in the file's metadata (`unet_config`).
Exits non-zero on any failure.
"""
import argparse
import json
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from denoising_diffusion_pytorch import Unet


def build_unet(cfg):
    kwargs = dict(
        dim=cfg["dim"],
        init_dim=cfg.get("init_dim"),
        out_dim=cfg.get("out_dim"),
        dim_mults=tuple(cfg["dim_mults"]),
        channels=cfg["channels"],
        attn_heads=cfg.get("attn_heads", 4),
        attn_dim_head=cfg.get("attn_dim_head", 32),
        dropout=cfg.get("dropout", 0.0),
        sinusoidal_pos_emb_theta=cfg.get("sinusoidal_pos_emb_theta", 10000),
    )
    if cfg.get("full_attn"):
        kwargs["full_attn"] = tuple(cfg["full_attn"])
    return Unet(**kwargs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="safetensors file written by Unet::export_safetensors")
    ap.add_argument("--reference", help="a .pth state dict whose tensors the file must equal exactly")
    ap.add_argument("--x", help="forward input .npy [N,C,H,W]")
    ap.add_argument("--t", help="forward timesteps .npy [N]")
    ap.add_argument("--expect", help="expected forward output .npy")
    ap.add_argument("--atol", type=float, default=1e-5)
    args = ap.parse_args()

    with safe_open(args.file, framework="pt") as f:
        meta = f.metadata() or {}
    if "unet_config" not in meta:
        sys.exit(f"{args.file}: no `unet_config` metadata; not written by the unet crate")
    cfg = json.loads(meta["unet_config"])
    model = build_unet(cfg)
    state = load_file(args.file)
    model.load_state_dict(state, strict=True)  # raises on any missing/unexpected/mis-shaped key
    n = sum(p.numel() for p in model.parameters())
    print(f"OK strict load: {len(state)} tensors, {n} parameters, config {cfg}")

    if args.reference:
        ref = torch.load(args.reference, map_location="cpu", weights_only=True)
        assert set(ref) == set(state), set(ref) ^ set(state)
        for k, v in ref.items():
            if not torch.equal(v.float(), state[k]):
                sys.exit(f"tensor {k} differs from {args.reference}")
        print(f"OK all {len(ref)} tensors equal {args.reference} bit for bit")

    if args.x and args.t:
        model.eval()
        x = torch.from_numpy(np.load(args.x))
        t = torch.from_numpy(np.load(args.t))
        with torch.no_grad():
            y = model(x, t).numpy()
        if args.expect:
            want = np.load(args.expect)
            d = float(np.abs(y - want).max())
            print(f"forward max |diff| vs {args.expect}: {d:.3e}")
            if d > args.atol:
                sys.exit("forward output differs")
        print("OK forward")


if __name__ == "__main__":
    main()
