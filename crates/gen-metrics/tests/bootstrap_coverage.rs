//! Measurements behind the choice of bootstrap interval (`gen_metrics::bootstrap` module docs)
//! and its cost; ignored by default (tens of seconds to minutes). Run one with
//! `cargo test -p gen-metrics --test bootstrap_coverage -- --ignored --nocapture NAME`.

use std::time::Instant;

use gen_metrics::*;
use ndarray::Array2;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// `n` rows of `N(shift, diag(sd^2))`.
fn draw(n: usize, sd: &[f64], shift: f64, seed: u64) -> Array2<f64> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_fn((n, sd.len()), |(_, j)| {
        let z: f64 = StandardNormal.sample(&mut r);
        shift + sd[j] * z
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn sd(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// The true sampling distribution of FID and KID at these sizes from `mc` fresh pairs of sets,
/// then `reps` pairs with 100-resample intervals: how often each construction holds the mean
/// FID / KID of fresh sets (what a second evaluation of the same models is about).
fn coverage(name: &str, sds: &[f64], shift: f64, nr: usize, ng: usize, mc: usize, reps: usize) {
    let t = Instant::now();
    let (mut fids, mut kids) = (vec![], vec![]);
    for r in 0..mc as u64 {
        let (x, y) = (draw(nr, sds, 0.0, 1000 + 2 * r), draw(ng, sds, shift, 1001 + 2 * r));
        fids.push(frechet_distance_from_features(x.view(), y.view()).unwrap().value);
        kids.push(mmd2_unbiased_cubic(x.view(), y.view()).unwrap());
    }
    let (mf, mk) = (mean(&fids), mean(&kids));
    let pop = sds.len() as f64 * shift * shift;
    println!(
        "{name}: d {}, n {nr} / {ng}: population FID {pop:.4}, FID of fresh sets {mf:.4} (sd {:.4}), KID {mk:.6} (sd {:.6})",
        sds.len(),
        sd(&fids),
        sd(&kids)
    );
    let (mut ours, mut pct, mut pct_est, mut kid_ours, mut kid_est) = (0, 0, 0, 0, 0);
    let (mut widths, mut kwidths, mut bias) = (vec![], vec![], vec![]);
    for r in 0..reps as u64 {
        let (x, y) = (draw(nr, sds, 0.0, 5000 + 2 * r), draw(ng, sds, shift, 5001 + 2 * r));
        let cfg = BootstrapConfig { resamples: 100, seed: r, level: 0.95 };
        let f = fid_interval(x.view(), y.view(), &cfg).unwrap();
        let k = kid_interval(x.view(), y.view(), &cfg).unwrap();
        // The plain percentile interval from ours: q_hi = 2 t + bias - low (before the clamp at 0).
        let e = f.estimate;
        let (p_lo, p_hi) = (2.0 * e + f.bias - f.high, 2.0 * e + f.bias - f.low);
        ours += usize::from(f.low <= mf && mf <= f.high);
        pct += usize::from(p_lo <= mf && mf <= p_hi);
        pct_est += usize::from(p_lo <= e && e <= p_hi);
        kid_ours += usize::from(k.low <= mk && mk <= k.high);
        kid_est += usize::from(k.low <= k.estimate && k.estimate <= k.high);
        widths.push(f.high - f.low);
        kwidths.push(k.high - k.low);
        bias.push(f.bias);
        if r == 0 {
            println!(
                "  e.g. FID {e:.4} {}, percentile [{p_lo:.4}, {p_hi:.4}]; KID {:.6} {}",
                f.describe(4),
                k.estimate,
                k.describe(6)
            );
        }
    }
    println!(
        "  FID: ours holds the mean of fresh sets {ours}/{reps}, percentile {pct}/{reps}, percentile holds its own estimate {pct_est}/{reps}; \
         mean width {:.4} vs true 95% range {:.4}; bootstrap bias {:.4} vs true bias {:.4}",
        mean(&widths),
        3.92 * sd(&fids),
        mean(&bias),
        mf - pop
    );
    println!(
        "  KID: holds the mean of fresh sets {kid_ours}/{reps}, its estimate {kid_est}/{reps}; mean width {:.6} vs true {:.6} ({:.0} s)",
        mean(&kwidths),
        3.92 * sd(&kids),
        t.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore]
fn coverage_low_dimension() {
    coverage("same distribution", &[1.0; 16], 0.0, 500, 500, 200, 40);
    coverage("shifted by 0.2", &[1.0; 16], 0.2, 500, 500, 200, 40);
}

#[test]
#[ignore]
fn coverage_high_dimension() {
    let decay: Vec<f64> = (0..128).map(|j| 1.0 / (1.0 + j as f64 / 4.0)).collect();
    coverage("same distribution", &[1.0; 128], 0.0, 300, 300, 100, 20);
    coverage("shifted by 0.3", &[1.0; 128], 0.3, 300, 300, 100, 20);
    coverage("decaying spectrum, shifted by 0.1", &decay, 0.1, 300, 300, 100, 20);
}

/// The pipeline's default sizes (1,000 real, 600 generated, 512-d): the generated resamples
/// keep ~380 distinct rows, fewer than 512 dimensions.
#[test]
#[ignore]
fn coverage_pipeline_sizes() {
    let decay: Vec<f64> = (0..512).map(|j| 1.0 / (1.0 + j as f64 / 8.0)).collect();
    coverage("decaying spectrum, shifted by 0.1", &decay, 0.1, 1000, 600, 30, 5);
}

/// Wall time of 100 resamples on 1,000 x 512 features per set, and the other sizes `evaluate`
/// and `pipeline` meet.
#[test]
#[ignore]
fn cost() {
    let sds = vec![1.0; 512];
    for (nr, ng, b) in [(1000, 1000, 100), (1000, 600, 100), (1000, 600, 30), (5000, 5000, 100)] {
        let (x, y) = (draw(nr, &sds, 0.0, 1), draw(ng, &sds, 0.1, 2));
        let cfg = BootstrapConfig { resamples: b, ..Default::default() };
        let t = Instant::now();
        let f = fid_interval(x.view(), y.view(), &cfg).unwrap();
        let tf = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let k = kid_interval(x.view(), y.view(), &cfg).unwrap();
        let tk = t.elapsed().as_secs_f64();
        let t = Instant::now();
        frechet_distance_from_features(x.view(), y.view()).unwrap();
        let t1 = t.elapsed().as_secs_f64();
        println!(
            "{nr} x 512 real, {ng} x 512 generated, {b} resamples: FID interval {tf:.2} s (one FID {t1:.3} s), KID interval {tk:.2} s; FID {:.3} {}, KID {:.5} {}",
            f.estimate,
            f.describe(3),
            k.estimate,
            k.describe(5)
        );
    }
}
