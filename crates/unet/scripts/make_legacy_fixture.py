"""Writes tests/fixtures/legacy_v1_state_dict.pth: a denoising-diffusion-pytorch 1.x Unet
state_dict (GroupNorm blocks), which the unet crate must refuse with a clear error.

    pip install --no-deps --target /tmp/ddp1 denoising-diffusion-pytorch==1.11.0
    PYTHONPATH=/tmp/ddp1 python crates/unet/scripts/make_legacy_fixture.py
"""
import os

import torch
import denoising_diffusion_pytorch
from denoising_diffusion_pytorch import Unet

assert denoising_diffusion_pytorch.__file__.startswith("/tmp/ddp1"), denoising_diffusion_pytorch.__file__
torch.manual_seed(0)
model = Unet(dim=8, dim_mults=(1, 2), channels=1)
out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "legacy_v1_state_dict.pth")
torch.save(model.state_dict(), out)
keys = list(model.state_dict().keys())
print(out, len(keys), [k for k in keys if "norm" in k][:4])
