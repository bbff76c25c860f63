#!/usr/bin/env python3
"""PyTorch side of `cargo bench -p gen-metrics --bench classifier_step`: the lensing classifier
(ResNet-18 with a 1-channel stem and 3 classes, torchvision's `resnet18` layout, written out
here so that torchvision is not needed) - a training step (forward, cross-entropy, backward,
Adam) and an eval-mode forward, images/s, mean over the timed runs after one warm-up.

  python scripts/bench_classifier_step.py --threads 2 --size 128 --batch 32 --runs 5
"""
import argparse, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + idt)


class ResNet18(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        def stage(cin, cout, s):
            return nn.Sequential(BasicBlock(cin, cout, s), BasicBlock(cout, cout, 1))
        self.layer1, self.layer2 = stage(64, 64, 1), stage(64, 128, 2)
        self.layer3, self.layer4 = stage(128, 256, 2), stage(256, 512, 2)
        self.fc = nn.Linear(512, classes)

    def features(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean((2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--channels-last", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = ResNet18()
    x = torch.rand(a.batch, 1, a.size, a.size)
    if a.channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    y = torch.arange(a.batch) % 3
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    times = []
    for r in range(a.runs + 1):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        opt.step()
        if r:
            times.append(time.perf_counter() - t)
    s = sum(times) / len(times)
    print(f"torch {torch.__version__} train step  {a.size}x{a.size} batch {a.batch}: {s:.3f} s/step, {a.batch / s:.1f} img/s")
    m.eval()
    times = []
    with torch.no_grad():
        for r in range(a.runs + 1):
            t = time.perf_counter()
            m.features(x)
            if r:
                times.append(time.perf_counter() - t)
    s = sum(times) / len(times)
    print(f"torch {torch.__version__} forward     {a.size}x{a.size} batch {a.batch}: {s:.3f} s/step, {a.batch / s:.1f} img/s")


if __name__ == "__main__":
    main()
