"""Python side of the lens-data speed comparison (docs/performance-history.md, section "lens-data").

    python scripts/bench_lens_data.py files DIR [--count 10000]   # write f64 (1,150,150) .npy files
    python scripts/bench_lens_data.py load DIR [--repeat 3]       # numpy load + torch antialiased resize
    python scripts/bench_lens_data.py lenstronomy [--count 200]   # Model I (cdm, 25 subhalos, PSF, noise)

`load` is the route of the DeepLense diffusion notebook: np.load each file, torch.from_numpy,
F.interpolate(size=128, mode="bilinear", antialias=True), stack. Run it on the folder the Rust
bench uses (target/lens-data-bench/npy150) after one warm-up pass, so both read from page cache.

`lenstronomy` times the DeepLenseSim Model I recipe (REFERENCE.md section 4) with lenstronomy:
SIE + SHEAR + 25 POINT_MASS subhalos, SERSIC_ELLIPSE source, GAUSSIAN PSF (truncation 4),
exposure/Gaussian/Poisson noise, per-image min-max. Two variants: models rebuilt per image (as
DeepLenseSim does) and model objects built once and reused (the fastest lenstronomy can do).
Needs: numpy, torch (load), lenstronomy==1.14.2 (lenstronomy).
"""
import argparse, os, re, statistics, time
import numpy as np


def natural_key(s):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def cmd_files(a):
    os.makedirs(a.dir, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(a.count):
        np.save(os.path.join(a.dir, f"sample{i + 1}.npy"), rng.random((1, 150, 150)))
    print(f"wrote {a.count} files to {a.dir}")


def cmd_load(a):
    import torch
    import torch.nn.functional as F
    files = sorted((f for f in os.listdir(a.dir) if f.endswith(".npy")), key=natural_key)
    paths = [os.path.join(a.dir, f) for f in files]
    print(f"{len(paths)} files, torch {torch.__version__}, threads {torch.get_num_threads()}")

    def once():
        out = []
        for p in paths:
            x = torch.from_numpy(np.load(p)).float()  # (1,150,150)
            out.append(F.interpolate(x[None], size=(128, 128), mode="bilinear", antialias=True, align_corners=False)[0])
        return torch.stack(out)

    once()  # warm page cache
    times = []
    for _ in range(a.repeat):
        t = time.perf_counter(); y = once(); times.append(time.perf_counter() - t)
    print(f"numpy+torch load+resize: best {min(times):.3f} s, median {statistics.median(times):.3f} s "
          f"({1e6 * min(times) / len(paths):.1f} us/file), out {tuple(y.shape)}")


def model_i_kwargs(rng):
    TE = 1.2814905676172957e-06 * np.sqrt(1e12)
    lens = [{"theta_E": TE, "e1": 0.1, "e2": 0.0, "center_x": 0.0, "center_y": 0.0},
            {"gamma1": 0.05, "gamma2": 0.0}]
    p = 0.1
    for _ in range(25):
        u = rng.random()
        m = (1e6 ** p + u * (1e10 ** p - 1e6 ** p)) ** (1 / p)
        r = rng.uniform(0.25, 2.0); t = rng.uniform(0, 2 * np.pi)
        lens.append({"theta_E": 1.2814905676172957e-06 * np.sqrt(m), "center_x": r * np.sin(t), "center_y": r * np.cos(t)})
    src = [{"amp": 20.0, "R_sersic": 0.25, "n_sersic": 1.0, "e1": -0.1, "e2": 0.1,
            "center_x": rng.uniform(-0.35, 0.35), "center_y": rng.uniform(-0.35, 0.35)}]
    return lens, src


def cmd_lenstronomy(a):
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.Util import util
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    n, d = 150, 0.05
    types = ["SIE", "SHEAR"] + ["POINT_MASS"] * 25

    def build():
        _, _, ra0, dec0, _, _, M, _ = util.make_grid_with_coordtransform(n, d, center_ra=0, center_dec=0, subgrid_res=1, inverse=False)
        data = ImageData(background_rms=1e-2, exposure_time=1000.0, ra_at_xy_0=ra0, dec_at_xy_0=dec0,
                         transform_pix2angle=M, image_data=np.zeros((n, n)))
        psf = PSF(psf_type="GAUSSIAN", fwhm=0.087, pixel_size=d, truncation=4)
        return ImageModel(data, psf, lens_model_class=LensModel(types), source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                          kwargs_numerics={"supersampling_factor": 1, "supersampling_convolution": False})

    def one(im, rng):
        lens, src = model_i_kwargs(rng)
        img = im.image(lens, src)
        t = 10 ** rng.uniform(3, 3.5)
        c = t * (img + rng.standard_normal(img.shape) * np.sqrt(np.abs(img) / t) + rng.standard_normal(img.shape) * 0.01)
        c = rng.poisson(np.maximum(c, 0)).astype(np.float64)
        return (c - c.min()) / (c.max() - c.min())

    rng = np.random.default_rng(1)
    one(build(), rng)  # warm-up (imports, numba)
    t = time.perf_counter()
    for _ in range(a.count):
        one(build(), rng)
    per_rebuild = (time.perf_counter() - t) / a.count
    im = build()
    t = time.perf_counter()
    for _ in range(a.count):
        one(im, rng)
    per_reuse = (time.perf_counter() - t) / a.count
    print(f"lenstronomy Model I cdm, {a.count} images: {1e3 * per_rebuild:.2f} ms/image (models rebuilt per image, "
          f"as DeepLenseSim), {1e3 * per_reuse:.2f} ms/image (models reused); "
          f"10,000 images: {per_rebuild * 1e4 / 60:.2f} / {per_reuse * 1e4 / 60:.2f} min")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("files"); f.add_argument("dir"); f.add_argument("--count", type=int, default=10000)
    l = sub.add_parser("load"); l.add_argument("dir"); l.add_argument("--repeat", type=int, default=3)
    s = sub.add_parser("lenstronomy"); s.add_argument("--count", type=int, default=200)
    a = ap.parse_args()
    {"files": cmd_files, "load": cmd_load, "lenstronomy": cmd_lenstronomy}[a.cmd](a)
