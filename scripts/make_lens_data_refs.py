"""Reference values for lens-data tests, computed with the Python reference libraries.

Run (needs lenstronomy==1.14.2, numpy, scipy, pillow; torch optional):
    python scripts/make_lens_data_refs.py crates/lens-data/tests/fixtures

Writes:
  deflections.json   point-wise deflections (alpha_x, alpha_y) of every lens profile lenstronomy
                     implements and lens-data ports (SIE, SIS, SHEAR, POINT_MASS, NFW, TNFW), and
                     surface brightness of SERSIC / SERSIC_ELLIPSE, at awkward points (centre, r = Rs,
                     r = r_trunc, tiny and large radii).
  hidden/*.json|npy  the "hidden" spec set of /work/shared/fixtures/make_lens_fixtures.py rendered by
                     lenstronomy (copied logic: same render() as that script).
  resize/*.npy       150x150 -> 128x128 (and 150 -> 37, 64 -> 90 upscale) resizes of a formula image
                     with PIL's BILINEAR filter on mode "F" (antialiased triangle filter; float32
                     output) and, when torch is importable,
                     torch.nn.functional.interpolate(mode="bilinear", antialias=True) in float64.
"""
import json, os, sys
import numpy as np

out = sys.argv[1]
os.makedirs(out, exist_ok=True)

from lenstronomy.LensModel.lens_model import LensModel
from lenstronomy.LightModel.light_model import LightModel

pts = [(0.0, 0.0), (1e-12, 0.0), (0.3, -0.2), (-1.1, 0.7), (0.05, 0.05), (2.5, -3.0), (1e-7, -2e-7),
       (-0.8, 0.4), (-0.5, 0.4), (-0.8, 0.1), (0.6, 1.2), (1.3, 0.0), (0.0, -1.3), (10.0, 12.0)]
lens_cases = [
    ("SIE", {"theta_E": 1.2814905676172956, "e1": 0.1, "e2": 0.0, "center_x": 0.0, "center_y": 0.0}),
    ("SIE", {"theta_E": 1.05, "e1": -0.15, "e2": 0.12, "center_x": 0.05, "center_y": -0.08}),
    ("SIE", {"theta_E": 0.9, "e1": 0.0, "e2": 0.0, "center_x": 0.1, "center_y": 0.2}),
    ("SIS", {"theta_E": 1.2, "center_x": 0.0, "center_y": 0.0}),
    ("SIS", {"theta_E": 0.7, "center_x": -0.3, "center_y": 0.25}),
    ("SHEAR", {"gamma1": 0.05, "gamma2": -0.02}),
    ("SHEAR", {"gamma1": -0.03, "gamma2": 0.04, "ra_0": 0.2, "dec_0": -0.1}),
    ("POINT_MASS", {"theta_E": 0.05, "center_x": 0.9, "center_y": 0.6}),
    ("POINT_MASS", {"theta_E": 0.0221960677, "center_x": 0.0, "center_y": 0.0}),
    ("NFW", {"Rs": 0.3, "alpha_Rs": 0.05, "center_x": -0.8, "center_y": 0.4}),
    ("NFW", {"Rs": 1.5, "alpha_Rs": 0.2, "center_x": 0.0, "center_y": 0.0}),
    ("TNFW", {"Rs": 0.4, "alpha_Rs": 0.08, "r_trunc": 1.5, "center_x": 1.1, "center_y": -0.3}),
    ("TNFW", {"Rs": 0.3, "alpha_Rs": 0.05, "r_trunc": 0.2, "center_x": 0.0, "center_y": 0.0}),
]
light_cases = [
    ("SERSIC", {"amp": 3.0, "R_sersic": 0.2, "n_sersic": 2.5, "center_x": 0.05, "center_y": 0.0}),
    ("SERSIC_ELLIPSE", {"amp": 20.0, "R_sersic": 0.25, "n_sersic": 1.0, "e1": -0.1, "e2": 0.1, "center_x": 0.1, "center_y": -0.05}),
    ("SERSIC_ELLIPSE", {"amp": 1.5, "R_sersic": 0.8, "n_sersic": 4.0, "e1": 0.1, "e2": 0.0, "center_x": 0.0, "center_y": 0.0}),
    ("SERSIC_ELLIPSE", {"amp": 5.0, "R_sersic": 0.35, "n_sersic": 1.7, "e1": 0.2, "e2": -0.05, "center_x": -0.18, "center_y": 0.11}),
]
xs = np.array([p[0] for p in pts]); ys = np.array([p[1] for p in pts])
res = {"points": pts, "lens": [], "light": []}
for t, kw in lens_cases:
    ax, ay = LensModel([t]).alpha(xs.copy(), ys.copy(), [kw])
    res["lens"].append({"type": t, "kwargs": kw, "alpha_x": ax.tolist(), "alpha_y": ay.tolist()})
for t, kw in light_cases:
    sb = LightModel([t]).surface_brightness(xs.copy(), ys.copy(), [kw])
    res["light"].append({"type": t, "kwargs": kw, "value": sb.tolist()})
json.dump(res, open(os.path.join(out, "deflections.json"), "w"), indent=1)
print("deflections.json written")

# hidden spec set, rendered by the shared fixture script's own render()
sys.path.insert(0, "/work/shared/fixtures")
try:
    import make_lens_fixtures as mlf
    hd = os.path.join(out, "hidden"); os.makedirs(hd, exist_ok=True)
    for name, spec in mlf.SPECS["hidden"].items():
        img = mlf.render(spec)
        json.dump(spec, open(os.path.join(hd, name + ".json"), "w"), indent=1)
        np.save(os.path.join(hd, name + ".npy"), img)
        print(name, img.shape, float(img.max()))
except ImportError as e:
    print("make_lens_fixtures.py not found, hidden set skipped:", e)

# resize references. Input images are defined by a formula the Rust test recomputes exactly:
#   v(i, j) = 0.5 + 0.5 sin(0.37 i) cos(0.23 j) + ((7 i + 13 j) mod 17) / 17 + 2 [40<=i<60, 70<=j<90]
from PIL import Image


def pattern(n):
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    v = 0.5 + 0.5 * np.sin(0.37 * i) * np.cos(0.23 * j) + ((7 * i + 13 * j) % 17) / 17.0
    v[40:60, 70:90] += 2.0
    return v


rd = os.path.join(out, "resize"); os.makedirs(rd, exist_ok=True)
for n, size in [(150, 128), (150, 37), (64, 90)]:
    arr = pattern(n)
    pil = np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
    np.save(os.path.join(rd, f"pil_{n}_{size}.npy"), pil.astype(np.float32))
    try:
        import torch
        t = torch.nn.functional.interpolate(torch.from_numpy(arr)[None, None], size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)[0, 0].numpy()
        np.save(os.path.join(rd, f"torch_{n}_{size}.npy"), t.astype(np.float64))
    except ImportError:
        print("torch not importable: torch references skipped")
print("resize references written")
