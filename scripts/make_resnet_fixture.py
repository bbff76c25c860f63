#!/usr/bin/env python3
"""Reference for gen-metrics' ResNet-18 loader: a torchvision resnet18 with a 1-channel conv1 and
3 classes (the DeepLense common-test classifier), random but non-trivial weights and BatchNorm
running statistics, saved as a bare state_dict, plus inputs and the 512-d pooled features
(eval mode) that torch computes.

  /tmp/venv/bin/pip install torch torchvision --extra-index-url https://download.pytorch.org/whl/cpu
  /tmp/venv/bin/python scripts/make_resnet_fixture.py target/resnet-fixture
  cargo test -p gen-metrics --test extractor -- --ignored

The state dict is 45 MB, so it is generated, not committed.
"""
import os, sys
import numpy as np
import torch, torchvision

out = sys.argv[1] if len(sys.argv) > 1 else "target/resnet-fixture"
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
m = torchvision.models.resnet18(num_classes=3)
m.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
with torch.no_grad():
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.weight.uniform_(0.5, 1.5); mod.bias.uniform_(-0.2, 0.2)
            mod.running_mean.uniform_(-0.1, 0.1); mod.running_var.uniform_(0.5, 2.0)
            mod.num_batches_tracked.fill_(7)
m.eval()
torch.save(m.state_dict(), os.path.join(out, "resnet18_1ch.pth"))
x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    feats = torch.flatten(m.avgpool(m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))), 1)
    logits = m(x)
np.save(os.path.join(out, "input.npy"), x.numpy())
np.save(os.path.join(out, "features.npy"), feats.numpy())
np.save(os.path.join(out, "logits.npy"), logits.numpy())
print("wrote", out, feats.shape, float(feats.abs().mean()))
