//! Physical statistics on images with known answers (analytic rings, white noise, shifted
//! uniform samples), the set comparison, its errors, JSON shape and plots.

use gen_metrics::physics::{compare, compare_sets, wasserstein1, write_plots, ImageStats, PhysicsSet};
use gen_metrics::MetricsError;
use ndarray::{Array2, Array3, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A ring `(1 + eps cos(m (theta - phase))) exp(-(rho - r)^2 / (2 sigma^2))` about the image
/// centre, each pixel the mean of `sub x sub` analytic samples at sub-pixel positions.
#[allow(clippy::too_many_arguments)]
fn ring(n: usize, r: f64, sigma: f64, m: u32, eps: f64, phase: f64, sub: usize) -> Array2<f64> {
    let c = (n as f64 - 1.0) / 2.0;
    Array2::from_shape_fn((n, n), |(y, x)| {
        let mut acc = 0.0;
        for sy in 0..sub {
            for sx in 0..sub {
                let px = x as f64 - 0.5 + (sx as f64 + 0.5) / sub as f64 - c;
                let py = y as f64 - 0.5 + (sy as f64 + 0.5) / sub as f64 - c;
                let rho = (px * px + py * py).sqrt();
                let theta = py.atan2(px);
                acc += (1.0 + eps * (m as f64 * (theta - phase)).cos())
                    * (-(rho - r).powi(2) / (2.0 * sigma * sigma)).exp();
            }
        }
        acc / (sub * sub) as f64
    })
}

fn stack(images: &[Array2<f64>]) -> Array3<f64> {
    let views: Vec<_> = images.iter().map(|a| a.view()).collect();
    ndarray::stack(Axis(0), &views).unwrap()
}

#[test]
fn gaussian_ring_gives_its_radius_and_width() {
    // The measured FWHM is that of the ring widened by the 1-px annuli and the 4x4 pixel average
    // (radial variance + 1/12 each), plus the linear interpolation of the half-maximum crossings.
    // Tolerances: 6 % of 2.3548 sigma (measured worst 5.5 %, at sigma = 1.5 px where the binning
    // matters most) and 2.5 % of the broadened 2.3548 sqrt(sigma^2 + 1/6) (measured worst 1.8 %).
    // Einstein radius: measured worst 0.013 px (the issue asks for 0.25 px).
    let mut worst = (0.0f64, 0.0f64, 0.0f64);
    for &(r, sigma) in &[(10.3, 1.5), (17.77, 2.0), (23.41, 3.0), (31.06, 2.5), (42.6, 4.0), (50.15, 1.5)] {
        let img = ring(128, r, sigma, 0, 0.0, 0.0, 4);
        let s = ImageStats::compute(img.view()).unwrap();
        let fwhm = 2.3548 * sigma;
        let broadened = 2.3548 * (sigma * sigma + 1.0 / 6.0f64).sqrt();
        let dr = (s.einstein_radius - r).abs();
        let dw = (s.ring_width - fwhm).abs() / fwhm;
        let db = (s.ring_width - broadened).abs() / broadened;
        worst = (worst.0.max(dr), worst.1.max(dw), worst.2.max(db));
        assert!(
            dr < 0.05, // tighter than the 0.25 px, to catch regressions
            "r = {r}, sigma = {sigma}: einstein_radius {}",
            s.einstein_radius
        );
        assert!(dw < 0.06 && db < 0.025, "r = {r}, sigma = {sigma}: ring_width {} vs FWHM {fwhm}", s.ring_width);
        // a circular ring has no multipoles, no asymmetry, no ellipticity; bilinear sampling on
        // the square pixel grid leaves a faint m = 4 (measured up to 0.0019 for sigma 1.5)
        assert!(s.multipoles.iter().all(|&a| a < 0.005), "{:?}", s.multipoles);
        assert!(s.asymmetry < 1e-9 && s.ellipticity < 1e-9, "{} {}", s.asymmetry, s.ellipticity);
    }
    eprintln!(
        "worst |einstein_radius - r| = {:.4} px, ring-width error {:.2} % ({:.2} % of broadened)",
        worst.0,
        100.0 * worst.1,
        100.0 * worst.2
    );
}

#[test]
fn modulated_ring_gives_eps_over_two() {
    // intensity along the ring A (1 + eps cos(m theta)): a_0 = A, |a_m| = A eps / 2
    let eps = 0.3;
    for m in 1..=4u32 {
        let img = ring(96, 21.37, 2.0, m, eps, 0.4, 1);
        let s = ImageStats::compute(img.view()).unwrap();
        for k in 1..=4usize {
            let want = if k == m as usize { eps / 2.0 } else { 0.0 };
            let got = s.multipoles[k - 1];
            assert!((got - want).abs() < 0.005, "ring m = {m}: multipole {k} = {got}, want {want}");
        }
    }
}

#[test]
fn white_noise_has_a_flat_spectrum() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let n = 16;
    let images: Vec<Array2<f64>> =
        (0..n).map(|_| Array2::from_shape_simple_fn((128, 128), || StandardNormal.sample(&mut rng))).collect();
    let mut mean_p = vec![0.0; 64];
    let mut var = 0.0;
    for img in &images {
        let s = ImageStats::compute(img.view()).unwrap();
        assert_eq!(s.power_spectrum.len(), 64);
        mean_p.iter_mut().zip(&s.power_spectrum).for_each(|(a, p)| *a += p / n as f64);
        // the normalised image's variance: by Parseval the flat level of its spectrum
        let (lo, hi) = img.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let u: Vec<f64> = img.iter().map(|v| (v - lo) / (hi - lo)).collect();
        let mu = u.iter().sum::<f64>() / u.len() as f64;
        var += u.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / u.len() as f64 / n as f64;
    }
    // least-squares slope of log P against log k
    let pts: Vec<(f64, f64)> = mean_p.iter().enumerate().map(|(i, p)| (((i + 1) as f64).ln(), p.ln())).collect();
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / 64.0, pts.iter().map(|p| p.1).sum::<f64>() / 64.0);
    let slope =
        pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / pts.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>();
    let low = mean_p[..16].iter().sum::<f64>() / 16.0;
    let high = mean_p[32..].iter().sum::<f64>() / 32.0;
    let level = mean_p.iter().sum::<f64>() / 64.0;
    eprintln!("slope {slope:.4}, high/low {:.4}, level/variance {:.4}", high / low, level / var);
    assert!(slope.abs() < 0.03, "slope {slope}");
    assert!((high / low - 1.0).abs() < 0.05, "high/low {}", high / low);
    assert!((level / var - 1.0).abs() < 0.02, "level {level} vs variance {var}");
}

#[test]
fn w1_of_shifted_uniforms_is_the_shift() {
    // identical grids shifted by d: exactly d
    let a: Vec<f64> = (0..1000).map(|i| i as f64 / 1000.0).collect();
    let b: Vec<f64> = a.iter().map(|x| x + 0.25).collect();
    assert!((wasserstein1(&a, &b).unwrap() - 0.25).abs() < 1e-12);
    // seeded uniform samples of different sizes: d within the sampling error (~1/sqrt(n))
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let u: Vec<f64> = (0..20_000).map(|_| rng.random::<f64>()).collect();
    let v: Vec<f64> = (0..15_000).map(|_| rng.random::<f64>() + 0.3).collect();
    let w = wasserstein1(&u, &v).unwrap();
    assert!((w - 0.3).abs() < 0.01, "{w}");
    // scipy.stats.wasserstein_distance([0, 1, 3], [5, 6, 8]) = 5.0 (its documented example)
    assert!((wasserstein1(&[0.0, 1.0, 3.0], &[5.0, 6.0, 8.0]).unwrap() - 5.0).abs() < 1e-12);
    // sizes 3 and 2 by hand: |F_a - F_b| = 1/6 on [0, 1), 1/3 on [1, 3): 1/6 + 2/3
    assert!((wasserstein1(&[0.0, 1.0, 3.0], &[0.0, 1.0]).unwrap() - 5.0 / 6.0).abs() < 1e-12);
    assert!(matches!(wasserstein1(&[], &[1.0]), Err(MetricsError::TooFewSamples { .. })));
    assert!(matches!(wasserstein1(&[1.0, f64::NAN], &[1.0]), Err(MetricsError::NonFinite { row: 1, .. })));
}

fn ring_set(n: usize, size: usize, r0: f64, seed: u64) -> Array3<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let imgs: Vec<Array2<f64>> = (0..n)
        .map(|_| {
            let r = r0 + rng.random::<f64>() * 2.0;
            let mut img = ring(size, r, 1.5, 2, 0.2 * rng.random::<f64>(), 0.0, 1);
            img.mapv_inplace(|v| v + 0.02 * rng.random::<f64>());
            img
        })
        .collect();
    stack(&imgs)
}

#[test]
fn mismatched_sizes_are_a_typed_error() {
    let a = ring_set(4, 32, 8.0, 1);
    let b = ring_set(4, 40, 8.0, 2);
    let err = compare(a.view(), b.view(), 0).unwrap_err();
    assert!(
        matches!(
            err,
            MetricsError::ImageSizeMismatch {
                real_height: 32,
                real_width: 32,
                generated_height: 40,
                generated_width: 40
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("32x32") && msg.contains("40x40"), "{msg}");
}

#[test]
fn bad_images_are_typed_errors() {
    let mut a = ring_set(6, 32, 8.0, 1);
    let b = ring_set(6, 32, 8.0, 2);
    a[[3, 5, 7]] = f64::INFINITY;
    let err = compare(a.view(), b.view(), 0).unwrap_err();
    assert!(matches!(err, MetricsError::NonFiniteImage { index: 3, row: 5, col: 7, .. }), "{err}");
    assert!(err.to_string().contains("real images") && err.to_string().contains("image 3"), "{err}");
    let tiny = Array3::<f32>::zeros((3, 6, 6));
    assert!(matches!(
        compare(tiny.view(), tiny.view(), 0),
        Err(MetricsError::InvalidParameter { name: "image size", .. })
    ));
    let one = ring_set(1, 32, 8.0, 3);
    assert!(matches!(compare(one.view(), b.view(), 0), Err(MetricsError::TooFewSamples { needed: 2, .. })));
}

#[test]
fn a_set_against_itself_is_at_distance_zero() {
    let a = ring_set(20, 48, 10.0, 4);
    let c = compare(a.view(), a.view(), 9).unwrap();
    let json = serde_json::to_value(&c).unwrap();
    let mut all = vec![
        c.einstein_radius,
        c.ring_width,
        c.asymmetry,
        c.ellipticity,
        c.pixel_histogram,
        c.radial_profile,
        c.power_spectrum,
    ];
    all.extend(c.multipoles.values().copied());
    for s in &all {
        assert_eq!(s.distance, 0.0, "{s:?}");
        assert_eq!(s.real_mean, s.generated_mean);
        assert!(s.floor.is_finite() && s.floor >= 0.0);
    }
    // the JSON shape the evaluate command writes under `physics`
    for key in [
        "einstein_radius",
        "ring_width",
        "asymmetry",
        "ellipticity",
        "pixel_histogram",
        "radial_profile",
        "power_spectrum",
    ] {
        for field in ["real_mean", "generated_mean", "distance", "floor"] {
            assert!(json[key][field].is_number(), "{key}.{field}");
        }
    }
    for m in ["1", "2", "3", "4"] {
        assert!(json["multipoles"][m]["distance"].is_number(), "multipoles.{m}");
    }
    let table = c.to_table();
    assert!(table.starts_with("| statistic | generated vs real | real vs real floor | real mean | generated mean |"));
    // header, separator, 7 statistics + 4 multipoles
    assert_eq!(table.lines().count(), 2 + 11, "{table}");
}

#[test]
fn shifted_rings_are_detected_above_the_floor() {
    let real = ring_set(40, 48, 10.0, 5);
    let gen = ring_set(40, 48, 13.0, 6);
    let f32_gen = gen.mapv(|v| v as f32);
    let c = compare(real.view(), f32_gen.view(), 1).unwrap();
    // radii U(10, 12) vs U(13, 15): W1 = 3 up to sampling
    assert!((c.einstein_radius.distance - 3.0).abs() < 0.3, "{:?}", c.einstein_radius);
    assert!(c.einstein_radius.floor < 0.5, "{:?}", c.einstein_radius);
    assert!(c.radial_profile.distance > 5.0 * c.radial_profile.floor, "{:?}", c.radial_profile);
    // the halves are disjoint, cover the set, and depend only on the seed
    let set = PhysicsSet::compute(real.view(), "real", 1).unwrap();
    let mut all: Vec<usize> = set.halves.concat();
    all.sort_unstable();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
    assert_eq!(set.halves[0].len(), 20);
    assert_eq!(set.halves, PhysicsSet::compute(real.view(), "real", 1).unwrap().halves);
    assert_ne!(set.halves, PhysicsSet::compute(real.view(), "real", 2).unwrap().halves);
    let g = PhysicsSet::compute(f32_gen.view(), "generated", 1).unwrap();
    assert_eq!(compare_sets(&set, &g).unwrap(), c);
}

#[test]
fn asymmetry_and_ellipticity_of_known_shapes() {
    // an elliptical Gaussian (sigmas 6 and 4 px, rotated 30 degrees) about the centre:
    // point-symmetric, and e = (6^2 - 4^2) / (6^2 + 4^2) = 20 / 52
    let (t, c) = (30f64.to_radians(), 31.5);
    let img = Array2::from_shape_fn((64, 64), |(y, x)| {
        let (dx, dy) = (x as f64 - c, y as f64 - c);
        let (u, v) = (dx * t.cos() + dy * t.sin(), -dx * t.sin() + dy * t.cos());
        (-(u * u) / 72.0 - v * v / 32.0).exp()
    });
    let s = ImageStats::compute(img.view()).unwrap();
    assert!(s.asymmetry < 1e-12, "{}", s.asymmetry);
    assert!((s.ellipticity - 20.0 / 52.0).abs() < 1e-3, "{}", s.ellipticity);
    // a compact blob far off-centre does not overlap its rotation: asymmetry 2
    let blob = Array2::from_shape_fn((64, 64), |(y, x)| {
        (-((x as f64 - 12.0).powi(2) + (y as f64 - 40.0).powi(2)) / 4.0).exp()
    });
    let s = ImageStats::compute(blob.view()).unwrap();
    assert!((s.asymmetry - 2.0).abs() < 1e-6, "{}", s.asymmetry);
    // a blank image is all zeros and finite everywhere
    let s = ImageStats::compute(Array2::<f64>::from_elem((16, 16), 3.0).view()).unwrap();
    assert!(s.einstein_radius.is_finite() && s.ring_width == 0.0 && s.asymmetry == 0.0 && s.multipoles == [0.0; 4]);
}

#[test]
fn plots_are_written_atomically() {
    let real = PhysicsSet::compute(ring_set(12, 48, 10.0, 7).view(), "real", 0).unwrap();
    let gen = PhysicsSet::compute(ring_set(12, 48, 11.0, 8).view(), "generated", 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plots");
    let names = write_plots(&out, &real, &gen).unwrap();
    assert_eq!(
        names,
        [
            "radial_profile.png",
            "power_spectrum.png",
            "einstein_radius.png",
            "ring_width.png",
            "multipoles.png",
            "pixel_histogram.png"
        ]
    );
    for n in &names {
        let bytes = std::fs::read(out.join(n)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{n}");
    }
    // nothing but the plots (no temporary files left behind)
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), names.len());
}
