#!/usr/bin/env python3
"""Side-by-side reference timings for gen-metrics (docs/performance-history.md, section gen-metrics).

Generates the benchmark feature matrices (numpy, seeded), saves them as .npy so the Rust side
(`cargo bench --bench metrics`, `lensing-diffusion evaluate`) can read the very same
files, and times the Python references on them:

  * FID, n = 10,000, d = 2,048: pytorch-fid (np.mean/np.cov statistics + calculate_frechet_distance,
    i.e. scipy.linalg.sqrtm), from the raw features.
  * RKE, n = 10,000, d = 512, bandwidths 8/16/32: rke-score RKE.compute_rke_mc (1e6 random pairs).
  * optional (--exact-check): exact RKE in numpy (full Gram) for value comparison.

Usage:
  python -m venv /tmp/venv && /tmp/venv/bin/pip install rke-score pytorch-fid prdc scipy
  /tmp/venv/bin/python scripts/bench_metrics.py --out target/bench-data [--skip-rke-mc] [--repeat 3]
Writes OUT/{fid_real,fid_generated,rke_features}.npy and OUT/python_timings.json.
"""
import argparse, json, os, platform, time

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--out", default="target/bench-data")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--skip-fid", action="store_true")
p.add_argument("--skip-rke-mc", action="store_true")
p.add_argument("--repeat", type=int, default=1, help="time the FID this many times; the minimum and median are reported")
p.add_argument("--exact-check", action="store_true", help="also compute exact RKE with numpy (memory: n^2 doubles)")
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)

rng = np.random.default_rng(a.seed)


MIX = {}


def features(name, n, d, shift):
    path = os.path.join(a.out, name)
    if os.path.exists(path):
        return np.load(path)
    # Correlated, non-isotropic features (one random linear mix of Gaussians per dimension,
    # shared by the two FID sets), like network features.
    if d not in MIX:
        MIX[d] = rng.normal(0, 1.0 / np.sqrt(d), size=(d, d))
    x = rng.normal(0, 1, size=(n, d)) @ MIX[d] + shift
    np.save(path, x)
    return x


out = {"machine": platform.processor() or platform.machine(), "numpy": np.__version__}
try:
    import scipy
    out["scipy"] = scipy.__version__
except ImportError:
    pass

if not a.skip_fid:
    from pytorch_fid.fid_score import calculate_frechet_distance
    A = features("fid_real.npy", 10_000, 2048, 0.0)
    B = features("fid_generated.npy", 10_000, 2048, 0.05)
    runs = []
    for _ in range(max(a.repeat, 1)):
        t0 = time.perf_counter()
        mu1, s1 = np.mean(A, axis=0), np.cov(A, rowvar=False)
        mu2, s2 = np.mean(B, axis=0), np.cov(B, rowvar=False)
        t1 = time.perf_counter()
        fid = float(calculate_frechet_distance(mu1, s1, mu2, s2))
        t2 = time.perf_counter()
        runs.append({"stats_s": t1 - t0, "frechet_s": t2 - t1, "total_s": t2 - t0})
        print(f"pytorch-fid n=10000 d=2048: FID {fid:.10g}  stats {t1-t0:.2f} s  sqrtm+rest {t2-t1:.2f} s  total {t2-t0:.2f} s", flush=True)
    totals = sorted(r["total_s"] for r in runs)
    best = min(runs, key=lambda r: r["total_s"])
    out["fid"] = {"value": fid, **best, "runs": runs, "median_total_s": totals[len(totals) // 2]}
    if len(runs) > 1:
        print(f"pytorch-fid total over {len(runs)} runs: min {totals[0]:.2f} s, median {totals[len(totals) // 2]:.2f} s", flush=True)

X = features("rke_features.npy", 10_000, 512, 0.0)
bws = [8.0, 16.0, 32.0]
if not a.skip_rke_mc:
    from rke_score import RKE
    np.random.seed(a.seed)
    t0 = time.perf_counter()
    mc = RKE(kernel_bandwidth=bws).compute_rke_mc(X)
    t1 = time.perf_counter()
    out["rke_mc"] = {"values": {str(k): float(v) for k, v in mc.items()}, "total_s": t1 - t0}
    print(f"rke-score compute_rke_mc n=10000 d=512 bws {bws}: {mc}  {t1-t0:.1f} s", flush=True)

if a.exact_check:
    t0 = time.perf_counter()
    Xc = X - X.mean(0)
    n2 = (Xc * Xc).sum(1)
    sq = np.maximum(n2[:, None] + n2[None, :] - 2 * Xc @ Xc.T, 0.0)
    ex = {str(b): float(1.0 / np.mean(np.exp(-sq / (b * b)))) for b in bws}
    t1 = time.perf_counter()
    out["rke_exact_numpy"] = {"values": ex, "total_s": t1 - t0}
    print(f"numpy exact RKE (full n^2 Gram in memory): {ex}  {t1-t0:.1f} s", flush=True)

with open(os.path.join(a.out, "python_timings.json"), "w") as f:
    json.dump(out, f, indent=1)
