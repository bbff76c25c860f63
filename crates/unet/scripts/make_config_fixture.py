"""Writes tests/fixtures/odd_*: a denoising-diffusion-pytorch 2.3.4 Unet with non-default
arguments (init_dim, out_dim, heads, dim_head, full_attn, three stages, 2 channels), weights
perturbed away from their initial values, an input, and its forward output.

    pip install denoising-diffusion-pytorch==2.3.4
    python crates/unet/scripts/make_config_fixture.py
"""
import json
import os

import numpy as np
import torch
from denoising_diffusion_pytorch import Unet

out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
torch.manual_seed(1)
cfg = dict(dim=8, init_dim=12, out_dim=4, dim_mults=(1, 2, 2), channels=2,
           attn_heads=2, attn_dim_head=8, full_attn=(False, True, True))
model = Unet(**cfg)
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.1 * torch.randn_like(p))
model.eval()
x = torch.randn(2, 2, 8, 12)
t = torch.tensor([17, 901], dtype=torch.long)
with torch.no_grad():
    y = model(x, t)
torch.save(model.state_dict(), os.path.join(out, "odd_state_dict.pth"))
np.save(os.path.join(out, "odd_x.npy"), x.numpy())
np.save(os.path.join(out, "odd_t.npy"), t.numpy())
np.save(os.path.join(out, "odd_out.npy"), y.numpy())
with open(os.path.join(out, "odd_config.json"), "w") as f:
    json.dump({k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, f)
print("params", sum(p.numel() for p in model.parameters()), "out", tuple(y.shape))
