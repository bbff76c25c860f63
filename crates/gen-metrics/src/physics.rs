//! Physical statistics of lensing images: what a lensing scientist compares between a real and
//! a generated set (Einstein radii, arc profile and thickness, azimuthal structure along the
//! ring, noise spectrum, pixel distribution, shape), as numbers and PNG plots. f64 on the CPU,
//! parallel over images (rayon); no burn.
//!
//! Every image is first min-max normalised to `[0, 1]` at its own resolution (a constant image
//! becomes all zeros); the centre is the image centre `((w-1)/2, (h-1)/2)` in pixel units
//! (column, row), and radii are in pixels.
//!
//! Per image ([`ImageStats`]):
//! - `radial_profile`: mean intensity in 1-pixel annuli `[k, k+1)`, `k = 0 .. min(h,w)/2 - 1`
//!   (out to the inscribed radius); each bin sits at the mean radius of its pixels.
//! - `einstein_radius`: radius of the profile's maximum among bins beyond 2 px, refined by the
//!   parabola through the peak bin and its two neighbours (clamped to that bracket).
//! - `ring_width`: FWHM of the profile around that peak: the level is halfway between the
//!   profile's minimum (the background) and the peak, crossings linearly interpolated; a side
//!   without a crossing ends at the profile's first / last bin.
//! - `multipoles[m-1]`, m = 1..4: `|a_m| / a_0` with `a_m = (1/N) sum_j I(theta_j) e^{-i m theta_j}`
//!   over N = 360 bilinear samples on the circle of the image's own Einstein radius. A ring
//!   `A (1 + eps cos(m theta))` gives `eps / 2` (`a_0` = mean intensity along the ring; a ring
//!   with `a_0 = 0` gives 0).
//! - `power_spectrum`: `|FFT(I - mean I)|^2 / (h w)` averaged in integer `|k|` bins,
//!   `k = 1 .. min(h,w)/2` (cycles per image along the shorter side); white noise of variance
//!   `s^2` is flat at `s^2`.
//! - `asymmetry`: `sum |I - rot180(I)| / sum |I|` (rotation about the image centre; 0 for a
//!   blank image). 0 for point-symmetric images, up to 2.
//! - `ellipticity`: from intensity-weighted second moments about the intensity centroid,
//!   `|(Qxx - Qyy, 2 Qxy)| / (Qxx + Qyy)`: 0 for a circularly symmetric image, 1 for a line.
//! - the pooled pixel values (a 65,536-bin histogram on `[0, 1]` per set, see below).
//!
//! Between sets ([`compare`], [`compare_sets`]), per statistic a [`StatComparison`]: set means,
//! `distance` (generated vs real) and `floor` (the same distance between two disjoint halves of
//! the real set chosen by a seeded permutation; a distance near the floor is as close as two
//! real samples of half the size are to each other).
//! - Per-image scalars and each multipole order: exact 1-D Wasserstein-1 ([`wasserstein1`]) in
//!   the statistic's own units (pixels for radii).
//! - Pooled pixels: W1 from the 65,536-bin histograms (values moved to bin centres), within
//!   `1/65,536` of the exact W1 (each value moves at most half a bin); sorting the ~3e8 pooled
//!   values of two 10,000-image sets would not fit the time budget.
//! - `radial_profile`, `power_spectrum` (on `log10 P`): RMS over bins of
//!   `(mean_gen - mean_real) / std_real` per bin. A bin where the real set has zero spread uses
//!   the spread of both sets together (and counts 0 if that is zero too, i.e. both sets are the
//!   same constant there). Their `real_mean` / `generated_mean` are the bin averages of the
//!   set-mean curves (intensity; `log10 P`).
//!
//! ```
//! use gen_metrics::physics::{compare, ImageStats};
//! use ndarray::{Array3, Axis};
//! // Gaussian rings (sigma 1.5 px) of radius 9 + 0.05 i px (real) and 10 + 0.05 i px (generated)
//! let rings = |r0: f64| {
//!     Array3::from_shape_fn((8, 32, 32), |(i, y, x)| {
//!         let rho = ((x as f64 - 15.5).powi(2) + (y as f64 - 15.5).powi(2)).sqrt();
//!         (-(rho - r0 - 0.05 * i as f64).powi(2) / (2.0 * 1.5 * 1.5)).exp()
//!     })
//! };
//! let (real, generated) = (rings(9.0), rings(10.0));
//! let one = ImageStats::compute(real.index_axis(Axis(0), 0)).unwrap();
//! assert!((one.einstein_radius - 9.0).abs() < 0.25);
//! let cmp = compare(real.view(), generated.view(), 0).unwrap();
//! assert!((cmp.einstein_radius.distance - 1.0).abs() < 0.1); // W1 in pixels
//! assert!(cmp.einstein_radius.floor < 0.2);
//! println!("{}", cmp.to_table()); // markdown; `serde_json::to_string(&cmp)` for JSON
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ndarray::{ArrayView2, ArrayView3, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};

/// Bins of the pooled-pixel histogram on `[0, 1]` (W1 resolution `1 / PIXEL_BINS`).
pub const PIXEL_BINS: usize = 1 << 16;
/// Samples on the ring for the multipoles.
pub const RING_SAMPLES: usize = 360;
/// The Einstein radius is searched beyond this radius (pixels), past the central pixels.
pub const MIN_PEAK_RADIUS: f64 = 2.0;
/// Smallest image side: the profile needs a few bins beyond [`MIN_PEAK_RADIUS`].
pub const MIN_SIDE: usize = 8;
/// `log10 P` of a spectrum bin with zero power (a blank image) is taken at this power.
pub const LOG_POWER_FLOOR: f64 = 1e-30;

const NONE: u32 = u32::MAX;

/// The statistics of one image (see the module documentation for definitions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageStats {
    /// Mean intensity per 1-pixel annulus, `min(h, w) / 2` bins.
    pub radial_profile: Vec<f64>,
    /// Pixels.
    pub einstein_radius: f64,
    /// FWHM of the radial profile around the Einstein radius, pixels.
    pub ring_width: f64,
    /// `|a_m| / a_0` for m = 1, 2, 3, 4.
    pub multipoles: [f64; 4],
    /// Azimuthally averaged power, bins `|k| = 1 ..= min(h, w) / 2`.
    pub power_spectrum: Vec<f64>,
    /// `sum |I - rot180(I)| / sum |I|`.
    pub asymmetry: f64,
    /// Second-moment ellipticity `|(Qxx - Qyy, 2 Qxy)| / (Qxx + Qyy)`.
    pub ellipticity: f64,
    /// Mean of the normalised pixels.
    pub mean_intensity: f64,
}

impl ImageStats {
    /// Statistics of one image (`[h, w]`, any finite values; normalised here). Errors: a
    /// non-finite pixel ([`MetricsError::NonFiniteImage`], index 0), a side below [`MIN_SIDE`].
    pub fn compute<T: Copy + Into<f64>>(image: ArrayView2<'_, T>) -> Result<Self> {
        let (h, w) = image.dim();
        let geom = Geometry::new(h, w, "image")?;
        let mut scratch = Scratch::new(&geom);
        let mut hist = vec![0u64; PIXEL_BINS];
        image_stats(image, 0, "image", &geom, &mut scratch, &mut hist)
    }
}

/// The statistics of a whole set: per-image [`ImageStats`] plus the pooled pixel histograms of
/// the two seeded halves (what [`compare_sets`] and [`write_plots`] need).
#[derive(Clone, Debug)]
pub struct PhysicsSet {
    /// Per image, in input order.
    pub images: Vec<ImageStats>,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Radius (pixels) of each radial-profile bin: the mean radius of its pixels.
    pub profile_radius: Vec<f64>,
    /// `|k|` of each power-spectrum bin.
    pub spectrum_k: Vec<f64>,
    /// Indices of the two halves (seeded permutation; the first has `n / 2` images).
    pub halves: [Vec<usize>; 2],
    /// Pooled pixel counts of each half, [`PIXEL_BINS`] bins on `[0, 1]`.
    pub pixel_counts: [Vec<u64>; 2],
}

impl PhysicsSet {
    /// Statistics of `images` (`[n, h, w]`), in parallel over images. `what` names the set in
    /// errors; `seed` picks the halves (image `i` goes to half 0 when it is among the first
    /// `n / 2` of a ChaCha8 permutation of `0..n` seeded with `seed`).
    pub fn compute<T: Copy + Into<f64> + Sync>(images: ArrayView3<'_, T>, what: &str, seed: u64) -> Result<Self> {
        let (n, h, w) = images.dim();
        if n == 0 {
            return Err(MetricsError::TooFewSamples { what: what.into(), needed: 1, got: 0 });
        }
        let geom = Geometry::new(h, w, what)?;
        let halves = split_halves(n, seed);
        let mut half_of = vec![0u8; n];
        for &i in &halves[1] {
            half_of[i] = 1;
        }
        // a few chunks per thread balance the load; each holds two histograms (1 MiB)
        let chunks = (4 * rayon::current_num_threads()).clamp(1, n);
        let per = n.div_ceil(chunks);
        let parts: Vec<(Vec<ImageStats>, [Vec<u64>; 2])> = (0..n.div_ceil(per))
            .into_par_iter()
            .map(|c| {
                let mut scratch = Scratch::new(&geom);
                let mut hist = [vec![0u64; PIXEL_BINS], vec![0u64; PIXEL_BINS]];
                let range = c * per..((c + 1) * per).min(n);
                let mut stats = Vec::with_capacity(range.len());
                for i in range {
                    let half = &mut hist[half_of[i] as usize];
                    stats.push(image_stats(images.index_axis(Axis(0), i), i, what, &geom, &mut scratch, half)?);
                }
                Ok((stats, hist))
            })
            .collect::<Result<_>>()?;
        let mut all = Vec::with_capacity(n);
        let mut pixel_counts = [vec![0u64; PIXEL_BINS], vec![0u64; PIXEL_BINS]];
        for (stats, hist) in parts {
            all.extend(stats);
            for (acc, part) in pixel_counts.iter_mut().zip(&hist) {
                acc.iter_mut().zip(part).for_each(|(a, b)| *a += b);
            }
        }
        Ok(Self {
            images: all,
            height: h,
            width: w,
            profile_radius: geom.profile_radius.clone(),
            spectrum_k: (1..=geom.spec_bins).map(|k| k as f64).collect(),
            halves,
            pixel_counts,
        })
    }

    /// Pooled pixel counts of the whole set.
    pub fn pixel_counts_all(&self) -> Vec<u64> {
        self.pixel_counts[0].iter().zip(&self.pixel_counts[1]).map(|(a, b)| a + b).collect()
    }

    fn scalar(&self, f: impl Fn(&ImageStats) -> f64) -> Vec<f64> {
        self.images.iter().map(f).collect()
    }
}

/// One statistic compared between the sets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatComparison {
    /// Mean over the real set.
    pub real_mean: f64,
    /// Mean over the generated set.
    pub generated_mean: f64,
    /// Distance generated vs real.
    pub distance: f64,
    /// The same distance between the two seeded halves of the real set.
    pub floor: f64,
}

/// All statistics compared (serialises to the `physics` JSON object: one key per statistic,
/// `multipoles` keyed `"1"` .. `"4"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhysicsComparison {
    /// W1 in pixels.
    pub einstein_radius: StatComparison,
    /// W1 in pixels.
    pub ring_width: StatComparison,
    /// W1.
    pub asymmetry: StatComparison,
    /// W1.
    pub ellipticity: StatComparison,
    /// W1 of the pooled normalised pixel values (means: mean pixel value).
    pub pixel_histogram: StatComparison,
    /// W1 of `|a_m| / a_0` per order, keys `"1"` .. `"4"`.
    pub multipoles: BTreeMap<String, StatComparison>,
    /// RMS per-bin z-score of the set means (means: bin average of the mean profile).
    pub radial_profile: StatComparison,
    /// RMS per-bin z-score of the set means of `log10 P` (means: bin average of mean `log10 P`).
    pub power_spectrum: StatComparison,
}

impl PhysicsComparison {
    /// A markdown table: statistic | generated vs real | real vs real floor | real mean |
    /// generated mean.
    pub fn to_table(&self) -> String {
        let mut rows: Vec<(String, &StatComparison)> = vec![
            ("Einstein radius (px, W1)".into(), &self.einstein_radius),
            ("ring width (px, W1)".into(), &self.ring_width),
        ];
        for (m, s) in &self.multipoles {
            rows.push((format!("multipole m={m} (\\|a_m\\|/a_0, W1)"), s));
        }
        rows.push(("asymmetry (W1)".into(), &self.asymmetry));
        rows.push(("ellipticity (W1)".into(), &self.ellipticity));
        rows.push(("pixel histogram (W1)".into(), &self.pixel_histogram));
        rows.push(("radial profile (RMS z)".into(), &self.radial_profile));
        rows.push(("power spectrum (RMS z of log10 P)".into(), &self.power_spectrum));
        let mut t = String::from(
            "| statistic | generated vs real | real vs real floor | real mean | generated mean |\n|---|---:|---:|---:|---:|\n",
        );
        for (name, s) in rows {
            t.push_str(&format!(
                "| {name} | {} | {} | {} | {} |\n",
                num(s.distance),
                num(s.floor),
                num(s.real_mean),
                num(s.generated_mean)
            ));
        }
        t
    }
}

fn num(v: f64) -> String {
    if v == 0.0 || (1e-3..1e4).contains(&v.abs()) {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

/// Computes both sets' statistics and compares them ([`PhysicsSet::compute`] +
/// [`compare_sets`]). `seed` chooses the halves of the real set for the floor. Errors: sets of
/// different image sizes ([`MetricsError::ImageSizeMismatch`], checked first), fewer than 2 real
/// or 1 generated image, non-finite pixels ([`MetricsError::NonFiniteImage`] with the index).
pub fn compare<T, U>(real: ArrayView3<'_, T>, generated: ArrayView3<'_, U>, seed: u64) -> Result<PhysicsComparison>
where
    T: Copy + Into<f64> + Sync,
    U: Copy + Into<f64> + Sync,
{
    check_sizes((real.dim().1, real.dim().2), (generated.dim().1, generated.dim().2))?;
    if real.dim().0 < 2 {
        return Err(MetricsError::TooFewSamples {
            what: "real images (two halves for the floor)".into(),
            needed: 2,
            got: real.dim().0,
        });
    }
    let r = PhysicsSet::compute(real, "real images", seed)?;
    let g = PhysicsSet::compute(generated, "generated images", seed)?;
    compare_sets(&r, &g)
}

fn check_sizes(real: (usize, usize), generated: (usize, usize)) -> Result<()> {
    if real != generated {
        return Err(MetricsError::ImageSizeMismatch {
            real_height: real.0,
            real_width: real.1,
            generated_height: generated.0,
            generated_width: generated.1,
        });
    }
    Ok(())
}

/// Compares precomputed set statistics; the floor uses `real`'s halves.
pub fn compare_sets(real: &PhysicsSet, generated: &PhysicsSet) -> Result<PhysicsComparison> {
    check_sizes((real.height, real.width), (generated.height, generated.width))?;
    if real.images.len() < 2 {
        return Err(MetricsError::TooFewSamples {
            what: "real images (two halves for the floor)".into(),
            needed: 2,
            got: real.images.len(),
        });
    }
    let [ha, hb] = &real.halves;
    let pick = |v: &[f64], idx: &[usize]| idx.iter().map(|&i| v[i]).collect::<Vec<f64>>();
    let scalar = |f: &dyn Fn(&ImageStats) -> f64| -> Result<StatComparison> {
        let r = real.scalar(f);
        let g = generated.scalar(f);
        Ok(StatComparison {
            real_mean: mean(&r),
            generated_mean: mean(&g),
            distance: wasserstein1(&r, &g)?,
            floor: wasserstein1(&pick(&r, ha), &pick(&r, hb))?,
        })
    };
    let mut multipoles = BTreeMap::new();
    for m in 0..4 {
        multipoles.insert((m + 1).to_string(), scalar(&|s| s.multipoles[m])?);
    }
    let curve = |f: &dyn Fn(&ImageStats) -> Vec<f64>| -> StatComparison {
        let r: Vec<Vec<f64>> = real.images.iter().map(f).collect();
        let g: Vec<Vec<f64>> = generated.images.iter().map(f).collect();
        let a: Vec<&[f64]> = ha.iter().map(|&i| r[i].as_slice()).collect();
        let b: Vec<&[f64]> = hb.iter().map(|&i| r[i].as_slice()).collect();
        let r: Vec<&[f64]> = r.iter().map(Vec::as_slice).collect();
        let g: Vec<&[f64]> = g.iter().map(Vec::as_slice).collect();
        StatComparison {
            real_mean: mean(&bin_means(&r)),
            generated_mean: mean(&bin_means(&g)),
            distance: curve_distance(&r, &g),
            floor: curve_distance(&a, &b),
        }
    };
    let log_p = |s: &ImageStats| s.power_spectrum.iter().map(|&p| log_power(p)).collect();
    let pixels_all_r = real.pixel_counts_all();
    let pixels_all_g = generated.pixel_counts_all();
    Ok(PhysicsComparison {
        einstein_radius: scalar(&|s| s.einstein_radius)?,
        ring_width: scalar(&|s| s.ring_width)?,
        asymmetry: scalar(&|s| s.asymmetry)?,
        ellipticity: scalar(&|s| s.ellipticity)?,
        pixel_histogram: StatComparison {
            real_mean: mean(&real.scalar(|s| s.mean_intensity)),
            generated_mean: mean(&generated.scalar(|s| s.mean_intensity)),
            distance: wasserstein1_binned(&pixels_all_r, &pixels_all_g),
            floor: wasserstein1_binned(&real.pixel_counts[0], &real.pixel_counts[1]),
        },
        multipoles,
        radial_profile: curve(&|s| s.radial_profile.clone()),
        power_spectrum: curve(&log_p),
    })
}

fn log_power(p: f64) -> f64 {
    p.max(LOG_POWER_FLOOR).log10()
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn split_halves(n: usize, seed: u64) -> [Vec<usize>; 2] {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut b = idx.split_off(n / 2);
    idx.sort_unstable();
    b.sort_unstable();
    [idx, b]
}

/// Exact Wasserstein-1 distance between the empirical distributions of `a` and `b` (sizes may
/// differ): `integral |F_a(x) - F_b(x)| dx` over the merged sorted samples (scipy's
/// `wasserstein_distance`). Errors: an empty sample, a non-finite value.
pub fn wasserstein1(a: &[f64], b: &[f64]) -> Result<f64> {
    for (what, v) in [("first W1 sample", a), ("second W1 sample", b)] {
        if v.is_empty() {
            return Err(MetricsError::TooFewSamples { what: what.into(), needed: 1, got: 0 });
        }
        if let Some((row, &value)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(MetricsError::NonFinite { what: what.into(), row, col: 0, value });
        }
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable_by(f64::total_cmp);
    b.sort_unstable_by(f64::total_cmp);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut prev = a[0].min(b[0]);
    let mut w = 0.0;
    // walk the merged order; between consecutive points both CDFs are constant
    while i < a.len() || j < b.len() {
        let take_a = j >= b.len() || (i < a.len() && a[i] <= b[j]);
        let x = if take_a { a[i] } else { b[j] };
        w += (i as f64 / na - j as f64 / nb).abs() * (x - prev);
        prev = x;
        if take_a {
            i += 1;
        } else {
            j += 1;
        }
    }
    Ok(w)
}

/// W1 between two histograms on `[0, 1]` with equal-width bins (samples at bin centres).
fn wasserstein1_binned(a: &[u64], b: &[u64]) -> f64 {
    let na = a.iter().sum::<u64>().max(1) as f64;
    let nb = b.iter().sum::<u64>().max(1) as f64;
    let (mut ca, mut cb, mut w) = (0u64, 0u64, 0.0);
    for k in 0..a.len().saturating_sub(1) {
        ca += a[k];
        cb += b[k];
        w += (ca as f64 / na - cb as f64 / nb).abs();
    }
    w / a.len() as f64
}

/// Per-bin mean and sample standard deviation (ddof 1; 0 for one curve).
fn bin_mean_std(curves: &[&[f64]]) -> (Vec<f64>, Vec<f64>) {
    let bins = curves.first().map_or(0, |c| c.len());
    let n = curves.len() as f64;
    let mut m = vec![0.0; bins];
    for c in curves {
        m.iter_mut().zip(c.iter()).for_each(|(a, v)| *a += v);
    }
    m.iter_mut().for_each(|a| *a /= n.max(1.0));
    let mut s = vec![0.0; bins];
    for c in curves {
        s.iter_mut().zip(c.iter().zip(&m)).for_each(|(a, (v, mu))| *a += (v - mu) * (v - mu));
    }
    s.iter_mut().for_each(|a| *a = if n > 1.0 { (*a / (n - 1.0)).sqrt() } else { 0.0 });
    (m, s)
}

fn bin_means(curves: &[&[f64]]) -> Vec<f64> {
    bin_mean_std(curves).0
}

/// RMS over bins of `(mean_g - mean_r) / std_r`; zero-spread bins fall back to the spread of
/// both sets together (0 when that is zero too).
fn curve_distance(real: &[&[f64]], generated: &[&[f64]]) -> f64 {
    let (mr, sr) = bin_mean_std(real);
    let (mg, _) = bin_mean_std(generated);
    if mr.is_empty() {
        return 0.0;
    }
    let mut both: Vec<&[f64]> = real.to_vec();
    both.extend_from_slice(generated);
    let mut pooled: Option<Vec<f64>> = None;
    let mut sum = 0.0;
    for k in 0..mr.len() {
        let d = mg[k] - mr[k];
        let s = if sr[k] > 0.0 { sr[k] } else { pooled.get_or_insert_with(|| bin_mean_std(&both).1)[k] };
        if s > 0.0 {
            sum += (d / s) * (d / s);
        }
    }
    (sum / mr.len() as f64).sqrt()
}

/// Per-shape tables shared by all images of a set.
struct Geometry {
    h: usize,
    w: usize,
    /// Radial-profile bin of each pixel (row-major), [`NONE`] outside the inscribed circle.
    profile_bin: Vec<u32>,
    profile_inv_count: Vec<f64>,
    profile_radius: Vec<f64>,
    /// Spectrum bin of each frequency in the transposed layout `[kx][ky]`.
    spec_bin: Vec<u32>,
    spec_inv_count: Vec<f64>,
    spec_bins: usize,
    row_fft: Arc<dyn Fft<f64>>,
    col_fft: Arc<dyn Fft<f64>>,
    scratch_len: usize,
    /// `cos(m theta_j)`, `sin(m theta_j)` for m = 0..=4 (m = 1 gives the sample positions).
    ring_cos: [Vec<f64>; 5],
    ring_sin: [Vec<f64>; 5],
}

impl Geometry {
    fn new(h: usize, w: usize, what: &str) -> Result<Self> {
        if h < MIN_SIDE || w < MIN_SIDE {
            return Err(MetricsError::InvalidParameter {
                name: "image size",
                value: format!("{h}x{w} ({what})"),
                reason: format!("physical statistics need images of at least {MIN_SIDE}x{MIN_SIDE} pixels"),
            });
        }
        let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
        let nb = h.min(w) / 2;
        let mut profile_bin = vec![NONE; h * w];
        let mut count = vec![0usize; nb];
        let mut rsum = vec![0.0; nb];
        for y in 0..h {
            for x in 0..w {
                let r = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt();
                let k = r.floor() as usize;
                if k < nb {
                    profile_bin[y * w + x] = k as u32;
                    count[k] += 1;
                    rsum[k] += r;
                }
            }
        }
        // every annulus [k, k+1) inside the inscribed circle holds a pixel on the nearer axis
        let profile_radius = (0..nb).map(|k| rsum[k] / count[k].max(1) as f64).collect();
        let profile_inv_count = count.iter().map(|&c| 1.0 / c.max(1) as f64).collect();

        let m = h.min(w) as f64;
        let spec_bins = h.min(w) / 2;
        let freq = |i: usize, n: usize| {
            if i <= n / 2 {
                i as f64
            } else {
                i as f64 - n as f64
            }
        };
        let mut spec_bin = vec![NONE; h * w];
        let mut scount = vec![0usize; spec_bins];
        for kx in 0..w {
            for ky in 0..h {
                // frequencies in cycles per image of the shorter side, so |k| bins are integers
                let k = ((freq(kx, w) * m / w as f64).powi(2) + (freq(ky, h) * m / h as f64).powi(2)).sqrt();
                let b = k.round() as usize;
                if (1..=spec_bins).contains(&b) {
                    spec_bin[kx * h + ky] = (b - 1) as u32;
                    scount[b - 1] += 1;
                }
            }
        }
        let spec_inv_count = scount.iter().map(|&c| if c > 0 { 1.0 / c as f64 } else { 0.0 }).collect();
        let mut planner = FftPlanner::<f64>::new();
        let row_fft = planner.plan_fft_forward(w);
        let col_fft = planner.plan_fft_forward(h);
        let scratch_len = row_fft.get_inplace_scratch_len().max(col_fft.get_inplace_scratch_len());
        let table = |m: usize, f: fn(f64) -> f64| -> Vec<f64> {
            (0..RING_SAMPLES).map(|j| f(m as f64 * std::f64::consts::TAU * j as f64 / RING_SAMPLES as f64)).collect()
        };
        let ring_cos = std::array::from_fn(|m| table(m, f64::cos));
        let ring_sin = std::array::from_fn(|m| table(m, f64::sin));
        Ok(Self {
            h,
            w,
            profile_bin,
            profile_inv_count,
            profile_radius,
            spec_bin,
            spec_inv_count,
            spec_bins,
            row_fft,
            col_fft,
            scratch_len,
            ring_cos,
            ring_sin,
        })
    }
}

struct Scratch {
    img: Vec<f64>,
    c: Vec<Complex<f64>>,
    t: Vec<Complex<f64>>,
    fft: Vec<Complex<f64>>,
}

impl Scratch {
    fn new(g: &Geometry) -> Self {
        let n = g.h * g.w;
        let z = Complex::new(0.0, 0.0);
        Self { img: vec![0.0; n], c: vec![z; n], t: vec![z; n], fft: vec![z; g.scratch_len] }
    }
}

fn image_stats<T: Copy + Into<f64>>(
    image: ArrayView2<'_, T>,
    index: usize,
    what: &str,
    g: &Geometry,
    s: &mut Scratch,
    hist: &mut [u64],
) -> Result<ImageStats> {
    let (h, w) = (g.h, g.w);
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (r, row) in image.outer_iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let v: f64 = v.into();
            if !v.is_finite() {
                return Err(MetricsError::NonFiniteImage { what: what.into(), index, row: r, col: c, value: v });
            }
            s.img[r * w + c] = v;
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    let span = hi - lo;
    // like lens-data's min-max: a constant image (or one whose span overflows) becomes zeros
    let scale = if span > 0.0 && span.is_finite() { 1.0 / span } else { 0.0 };
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let mut profile = vec![0.0; g.profile_radius.len()];
    let (mut s0, mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let top = (PIXEL_BINS - 1) as f64;
    for y in 0..h {
        let dy = y as f64 - cy;
        let row = &mut s.img[y * w..(y + 1) * w];
        let bins = &g.profile_bin[y * w..(y + 1) * w];
        let (mut r0, mut rx, mut rxx) = (0.0, 0.0, 0.0);
        for (x, (v, &b)) in row.iter_mut().zip(bins).enumerate() {
            let u = ((*v - lo) * scale).clamp(0.0, 1.0);
            *v = u;
            hist[(u * PIXEL_BINS as f64).min(top) as usize] += 1;
            if b != NONE {
                profile[b as usize] += u;
            }
            let dx = x as f64 - cx;
            r0 += u;
            rx += u * dx;
            rxx += u * dx * dx;
        }
        s0 += r0;
        sx += rx;
        sxx += rxx;
        sy += r0 * dy;
        syy += r0 * dy * dy;
        sxy += rx * dy;
    }
    profile.iter_mut().zip(&g.profile_inv_count).for_each(|(p, c)| *p *= c);
    let n = (h * w) as f64;
    let mean_intensity = s0 / n;

    // rot180 of a row-major image is the reversed buffer
    let img = &s.img;
    let asym: f64 = img.iter().zip(img.iter().rev()).map(|(a, b)| (a - b).abs()).sum();
    let asymmetry = if s0 > 0.0 { asym / s0 } else { 0.0 };

    let ellipticity = if s0 > 0.0 {
        let (mx, my) = (sx / s0, sy / s0);
        let qxx = sxx / s0 - mx * mx;
        let qyy = syy / s0 - my * my;
        let qxy = sxy / s0 - mx * my;
        let tr = qxx + qyy;
        if tr > 0.0 {
            ((qxx - qyy).powi(2) + 4.0 * qxy * qxy).sqrt() / tr
        } else {
            0.0
        }
    } else {
        0.0
    };

    let (einstein_radius, peak_value, p) = einstein_peak(&profile, &g.profile_radius);
    let ring_width = fwhm(&profile, &g.profile_radius, p, peak_value);
    let multipoles = ring_multipoles(img, w, h, cx, cy, einstein_radius, g);
    let power_spectrum = spectrum(s, g, mean_intensity);
    Ok(ImageStats {
        radial_profile: profile,
        einstein_radius,
        ring_width,
        multipoles,
        power_spectrum,
        asymmetry,
        ellipticity,
        mean_intensity,
    })
}

/// `(radius, value, bin)` of the profile's maximum beyond [`MIN_PEAK_RADIUS`], refined by the
/// parabola through the peak bin and its neighbours (bins at their own, uneven radii).
fn einstein_peak(profile: &[f64], radius: &[f64]) -> (f64, f64, usize) {
    let first = radius.iter().position(|&r| r > MIN_PEAK_RADIUS).unwrap_or(0);
    let mut p = first;
    for k in first..profile.len() {
        if profile[k] > profile[p] {
            p = k;
        }
    }
    if p == 0 || p + 1 >= profile.len() {
        return (radius[p], profile[p], p);
    }
    let (x0, x1, x2) = (radius[p - 1], radius[p], radius[p + 1]);
    let (y0, y1, y2) = (profile[p - 1], profile[p], profile[p + 1]);
    let d = (x0 - x1) * (x0 - x2) * (x1 - x2);
    let a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / d;
    let b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / d;
    if a.is_nan() || a >= 0.0 {
        // flat or convex: no interior maximum to refine to
        return (x1, y1, p);
    }
    let c = y1 - a * x1 * x1 - b * x1;
    let xv = (-b / (2.0 * a)).clamp(x0, x2);
    let yv = a * xv * xv + b * xv + c;
    (xv, yv.max(y1), p)
}

/// Full width at half maximum around bin `p` (level halfway between the profile minimum and
/// `peak`), crossings linearly interpolated between bin radii.
fn fwhm(profile: &[f64], radius: &[f64], p: usize, peak: f64) -> f64 {
    let base = profile.iter().copied().fold(f64::INFINITY, f64::min);
    if peak.is_nan() || peak <= base {
        return 0.0;
    }
    let half = base + 0.5 * (peak - base);
    let cross = |i: usize, j: usize| {
        // profile[i] > half >= profile[j]
        let t = (profile[i] - half) / (profile[i] - profile[j]);
        radius[i] + t * (radius[j] - radius[i])
    };
    let left = (0..p).rev().find(|&i| profile[i] <= half).map_or(radius[0], |i| cross(i + 1, i));
    let right =
        (p + 1..profile.len()).find(|&i| profile[i] <= half).map_or(radius[profile.len() - 1], |i| cross(i - 1, i));
    (right - left).max(0.0)
}

fn ring_multipoles(img: &[f64], w: usize, h: usize, cx: f64, cy: f64, r: f64, g: &Geometry) -> [f64; 4] {
    let mut re = [0.0; 5];
    let mut im = [0.0; 5];
    for j in 0..RING_SAMPLES {
        // sample positions beyond the last pixel centre (up to half a pixel) use the edge value
        let x = (cx + r * g.ring_cos[1][j]).clamp(0.0, (w - 1) as f64);
        let y = (cy + r * g.ring_sin[1][j]).clamp(0.0, (h - 1) as f64);
        let (x0, y0) = ((x.floor() as usize).min(w - 2), (y.floor() as usize).min(h - 2));
        let (fx, fy) = (x - x0 as f64, y - y0 as f64);
        let i0 = y0 * w + x0;
        let top = img[i0] + fx * (img[i0 + 1] - img[i0]);
        let bot = img[i0 + w] + fx * (img[i0 + w + 1] - img[i0 + w]);
        let v = top + fy * (bot - top);
        for m in 0..5 {
            re[m] += v * g.ring_cos[m][j];
            im[m] -= v * g.ring_sin[m][j];
        }
    }
    let a0 = re[0] / RING_SAMPLES as f64;
    std::array::from_fn(|k| {
        let m = k + 1;
        if a0 > 0.0 {
            (re[m] * re[m] + im[m] * im[m]).sqrt() / RING_SAMPLES as f64 / a0
        } else {
            0.0
        }
    })
}

fn spectrum(s: &mut Scratch, g: &Geometry, mean: f64) -> Vec<f64> {
    let (h, w) = (g.h, g.w);
    for (c, &v) in s.c.iter_mut().zip(&s.img) {
        *c = Complex::new(v - mean, 0.0);
    }
    g.row_fft.process_with_scratch(&mut s.c, &mut s.fft);
    for y in 0..h {
        for x in 0..w {
            s.t[x * h + y] = s.c[y * w + x];
        }
    }
    g.col_fft.process_with_scratch(&mut s.t, &mut s.fft);
    let mut p = vec![0.0; g.spec_bins];
    for (z, &b) in s.t.iter().zip(&g.spec_bin) {
        if b != NONE {
            p[b as usize] += z.norm_sqr();
        }
    }
    let norm = 1.0 / (h * w) as f64;
    p.iter_mut().zip(&g.spec_inv_count).for_each(|(v, c)| *v *= c * norm);
    p
}

/// Writes the comparison plots (PNG) into `dir` (created if missing), each atomically (a
/// temporary file in `dir`, then a rename); returns the file names written:
/// `radial_profile.png`, `power_spectrum.png` (set means with 16-84% bands; the spectrum's
/// mean is the geometric mean, matching the distance on `log10 P`), `einstein_radius.png`,
/// `ring_width.png`, `multipoles.png` (m = 1..4) and `pixel_histogram.png` (histograms).
pub fn write_plots(dir: &Path, real: &PhysicsSet, generated: &PhysicsSet) -> Result<Vec<String>> {
    check_sizes((real.height, real.width), (generated.height, generated.width))?;
    std::fs::create_dir_all(dir).map_err(|source| MetricsError::Io { path: dir.to_path_buf(), source })?;
    let mut names = Vec::new();
    let mut out = |name: &str, draw: &dyn Fn(&Area<'_>) -> std::result::Result<(), String>| -> Result<()> {
        plot_atomic(dir, name, draw)?;
        names.push(name.to_string());
        Ok(())
    };
    let profiles = |set: &PhysicsSet| set.images.iter().map(|s| s.radial_profile.clone()).collect::<Vec<_>>();
    let (pr, pg) = (profiles(real), profiles(generated));
    out("radial_profile.png", &|a| {
        curve_plot(a, "Radial profile", "radius (px)", "mean intensity", &real.profile_radius, &pr, &pg, false)
    })?;
    let spectra = |set: &PhysicsSet| {
        set.images
            .iter()
            .map(|s| s.power_spectrum.iter().map(|&p| p.max(LOG_POWER_FLOOR)).collect())
            .collect::<Vec<Vec<f64>>>()
    };
    let (sr, sg) = (spectra(real), spectra(generated));
    out("power_spectrum.png", &|a| {
        curve_plot(a, "Power spectrum", "|k| (cycles per image)", "P(k)", &real.spectrum_k, &sr, &sg, true)
    })?;
    let er = |set: &PhysicsSet| set.scalar(|s| s.einstein_radius);
    out("einstein_radius.png", &|a| hist_plot(a, "Einstein radius", "pixels", &er(real), &er(generated)))?;
    let rw = |set: &PhysicsSet| set.scalar(|s| s.ring_width);
    out("ring_width.png", &|a| hist_plot(a, "Ring width (FWHM)", "pixels", &rw(real), &rw(generated)))?;
    out("multipoles.png", &|a| {
        for (m, panel) in a.split_evenly((2, 2)).iter().enumerate() {
            let v = |set: &PhysicsSet| set.scalar(|s| s.multipoles[m]);
            hist_plot(panel, &format!("Multipole m = {}", m + 1), "|a_m| / a_0", &v(real), &v(generated))?;
        }
        Ok(())
    })?;
    let (cr, cg) = (real.pixel_counts_all(), generated.pixel_counts_all());
    out("pixel_histogram.png", &|a| pixel_plot(a, &cr, &cg))?;
    Ok(names)
}

type Area<'a> = plotters::drawing::DrawingArea<plotters::backend::BitMapBackend<'a>, plotters::coord::Shift>;

const REAL_COLOR: plotters::style::RGBColor = plotters::style::RGBColor(31, 119, 180);
const GEN_COLOR: plotters::style::RGBColor = plotters::style::RGBColor(214, 39, 40);

fn plot_atomic(dir: &Path, name: &str, draw: &dyn Fn(&Area<'_>) -> std::result::Result<(), String>) -> Result<()> {
    use plotters::prelude::*;
    let path = dir.join(name);
    // atomic-file's temporary name keeps the .png extension: plotters picks the encoder from it
    atomic_file::write_with(&path, |tmp| {
        let root = BitMapBackend::new(tmp, (900, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root)?;
        root.present().map_err(|e| e.to_string())
    })
    .map_err(|e| MetricsError::Plot { path: path.clone(), message: e.to_string() })
}

/// `q`-quantile of sorted values, linear interpolation (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let i = pos.floor() as usize;
    let j = (i + 1).min(sorted.len() - 1);
    sorted[i] + (pos - i as f64) * (sorted[j] - sorted[i])
}

/// Per bin: (centre, 16%, 84%); the centre is the mean, or the geometric mean when `log`.
fn band(curves: &[Vec<f64>], log: bool) -> Vec<(f64, f64, f64)> {
    let bins = curves.first().map_or(0, Vec::len);
    (0..bins)
        .map(|k| {
            let mut v: Vec<f64> = curves.iter().map(|c| c[k]).collect();
            v.sort_unstable_by(f64::total_cmp);
            let centre =
                if log { 10f64.powf(mean(&v.iter().map(|p| p.log10()).collect::<Vec<_>>())) } else { mean(&v) };
            (centre, quantile(&v, 0.16), quantile(&v, 0.84))
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn curve_plot(
    area: &Area<'_>,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    x: &[f64],
    real: &[Vec<f64>],
    generated: &[Vec<f64>],
    log: bool,
) -> std::result::Result<(), String> {
    use plotters::prelude::*;
    let (br, bg) = (band(real, log), band(generated, log));
    let lo = br.iter().chain(&bg).map(|b| b.1.min(b.0)).fold(f64::INFINITY, f64::min);
    let hi = br.iter().chain(&bg).map(|b| b.2.max(b.0)).fold(f64::NEG_INFINITY, f64::max);
    let (x0, x1) = (x[0], x[x.len() - 1]);
    let mut builder = ChartBuilder::on(area);
    builder.caption(title, ("sans-serif", 24)).margin(12).x_label_area_size(40).y_label_area_size(70);
    if log {
        let (lo, hi) = (lo.max(LOG_POWER_FLOOR), hi.max(LOG_POWER_FLOOR * 10.0));
        let mut chart = builder
            .build_cartesian_2d((x0..x1).log_scale(), (lo * 0.8..hi * 1.25).log_scale())
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc(xlabel).y_desc(ylabel).draw().map_err(|e| e.to_string())?;
        band_series(&mut chart, x, &br, &bg)
    } else {
        let pad = 0.05 * (hi - lo).max(1e-12);
        let mut chart = builder.build_cartesian_2d(x0..x1, (lo - pad)..(hi + pad)).map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc(xlabel).y_desc(ylabel).draw().map_err(|e| e.to_string())?;
        band_series(&mut chart, x, &br, &bg)
    }
}

type Bands = [(f64, f64, f64)];

fn band_series<'a, 'b: 'a, X, Y>(
    chart: &mut plotters::chart::ChartContext<
        'a,
        plotters::backend::BitMapBackend<'b>,
        plotters::coord::cartesian::Cartesian2d<X, Y>,
    >,
    x: &[f64],
    br: &Bands,
    bg: &Bands,
) -> std::result::Result<(), String>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    use plotters::prelude::*;
    for (b, color, label) in [(br, REAL_COLOR, "real"), (bg, GEN_COLOR, "generated")] {
        let mut poly: Vec<(f64, f64)> = x.iter().zip(b.iter()).map(|(&x, b)| (x, b.2)).collect();
        poly.extend(x.iter().zip(b.iter()).rev().map(|(&x, b)| (x, b.1)));
        chart.draw_series(std::iter::once(Polygon::new(poly, color.mix(0.2)))).map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(x.iter().zip(b.iter()).map(|(&x, b)| (x, b.0)), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(format!("{label} (16-84%)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// Step outline of a density histogram.
fn steps(edges: &[f64], density: &[f64]) -> Vec<(f64, f64)> {
    let mut pts = vec![(edges[0], 0.0)];
    for (k, &d) in density.iter().enumerate() {
        pts.push((edges[k], d));
        pts.push((edges[k + 1], d));
    }
    pts.push((edges[edges.len() - 1], 0.0));
    pts
}

fn hist_plot(
    area: &Area<'_>,
    title: &str,
    xlabel: &str,
    real: &[f64],
    generated: &[f64],
) -> std::result::Result<(), String> {
    use plotters::prelude::*;
    const BINS: usize = 40;
    let lo = real.iter().chain(generated).copied().fold(f64::INFINITY, f64::min);
    let hi = real.iter().chain(generated).copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, hi + 0.5) };
    let width = (hi - lo) / BINS as f64;
    let edges: Vec<f64> = (0..=BINS).map(|k| lo + k as f64 * width).collect();
    let density = |v: &[f64]| {
        let mut c = vec![0.0; BINS];
        for &x in v {
            c[(((x - lo) / width) as usize).min(BINS - 1)] += 1.0;
        }
        c.iter().map(|n| n / (v.len().max(1) as f64 * width)).collect::<Vec<f64>>()
    };
    let (dr, dg) = (density(real), density(generated));
    let top = dr.iter().chain(&dg).copied().fold(0.0, f64::max).max(1e-12);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, 0.0..top * 1.1)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc(xlabel).y_desc("density").draw().map_err(|e| e.to_string())?;
    for (d, color, label) in [(&dr, REAL_COLOR, "real"), (&dg, GEN_COLOR, "generated")] {
        chart
            .draw_series(LineSeries::new(steps(&edges, d), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

fn pixel_plot(area: &Area<'_>, real: &[u64], generated: &[u64]) -> std::result::Result<(), String> {
    use plotters::prelude::*;
    // 128 display bins of 512 histogram bins each, density on a log axis (the background
    // dominates the pixel counts)
    const SHOW: usize = 128;
    let group = PIXEL_BINS / SHOW;
    let density = |c: &[u64]| {
        let n = c.iter().sum::<u64>().max(1) as f64;
        c.chunks(group).map(|g| g.iter().sum::<u64>() as f64 / n * SHOW as f64).collect::<Vec<f64>>()
    };
    let (dr, dg) = (density(real), density(generated));
    let positive = dr.iter().chain(&dg).copied().filter(|&d| d > 0.0);
    let lo = positive.clone().fold(f64::INFINITY, f64::min);
    let lo = if lo.is_finite() { lo * 0.5 } else { 1e-6 };
    let hi = positive.fold(lo * 10.0, f64::max) * 2.0;
    let edges: Vec<f64> = (0..=SHOW).map(|k| k as f64 / SHOW as f64).collect();
    let mut chart = ChartBuilder::on(area)
        .caption("Pooled pixel values", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..1.0, (lo..hi).log_scale())
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("normalised pixel value").y_desc("density").draw().map_err(|e| e.to_string())?;
    for (d, color, label) in [(&dr, REAL_COLOR, "real"), (&dg, GEN_COLOR, "generated")] {
        // empty bins drawn at the axis floor so the log scale stays finite
        let pts: Vec<(f64, f64)> = steps(&edges, d).into_iter().map(|(x, y)| (x, y.max(lo))).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}
