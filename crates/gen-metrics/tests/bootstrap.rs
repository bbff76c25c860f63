//! Bootstrap intervals of FID and KID on Gaussian features: seeded, around the estimate,
//! narrowing with more rows, separating different distributions, typed errors.

use gen_metrics::*;
use ndarray::Array2;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn gauss(n: usize, d: usize, seed: u64, shift: f64) -> Array2<f64> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((n, d), || {
        let z: f64 = StandardNormal.sample(&mut r);
        shift + z
    })
}

fn cfg(resamples: usize, seed: u64) -> BootstrapConfig {
    BootstrapConfig { resamples, seed, level: 0.95 }
}

#[test]
fn intervals_are_seeded_and_hold_the_full_set_estimate() {
    let (a, b) = (gauss(400, 8, 1, 0.0), gauss(300, 8, 2, 0.5));
    let f = fid_interval(a.view(), b.view(), &cfg(60, 7)).unwrap();
    assert_eq!(f, fid_interval(a.view(), b.view(), &cfg(60, 7)).unwrap(), "same seed, same interval");
    assert_ne!(f, fid_interval(a.view(), b.view(), &cfg(60, 8)).unwrap(), "the seed matters");
    assert_eq!(f.estimate, frechet_distance_from_features(a.view(), b.view()).unwrap().value);
    assert!(f.low < f.estimate && f.estimate < f.high, "{f:?}");
    assert_eq!((f.resamples, f.level), (60, 0.95));
    // The FID's small-sample bias is positive and the bootstrap sees it.
    assert!(f.bias > 0.0, "{f:?}");

    let k = kid_interval(a.view(), b.view(), &cfg(60, 7)).unwrap();
    assert_eq!(k, kid_interval(a.view(), b.view(), &cfg(60, 7)).unwrap());
    let full = mmd2_unbiased_cubic(a.view(), b.view()).unwrap();
    assert!((k.estimate - full).abs() < 1e-12 * full.abs(), "{} vs {full}", k.estimate);
    assert!(k.low < k.estimate && k.estimate < k.high, "{k:?}");
    // Copies of a row are never paired, so the resamples are centred on the estimate.
    assert!(k.bias.abs() < 0.25 * (k.high - k.low), "{k:?}");
    assert!(f.describe(2).starts_with("95% CI [") && f.describe(2).ends_with("(60 bootstrap resamples)"));
}

#[test]
fn intervals_narrow_as_the_sets_grow() {
    let width = |n: usize| {
        let (a, b) = (gauss(n, 8, 3, 0.0), gauss(n, 8, 4, 0.3));
        let f = fid_interval(a.view(), b.view(), &cfg(50, 1)).unwrap();
        let k = kid_interval(a.view(), b.view(), &cfg(50, 1)).unwrap();
        (f.high - f.low, k.high - k.low)
    };
    let ((f200, k200), (f2000, k2000)) = (width(200), width(2000));
    // sqrt(10) ~ 3.2 times narrower in theory; allow for the noise of 50 resamples.
    assert!(f2000 < 0.6 * f200, "FID widths {f200} (n = 200) vs {f2000} (n = 2000)");
    assert!(k2000 < 0.6 * k200, "KID widths {k200} (n = 200) vs {k2000} (n = 2000)");
}

#[test]
fn one_distribution_and_two_are_told_apart() {
    let (a, same, shifted) = (gauss(1000, 8, 5, 0.0), gauss(1000, 8, 6, 0.0), gauss(1000, 8, 7, 0.5));
    let f_same = fid_interval(a.view(), same.view(), &cfg(50, 2)).unwrap();
    let f_shift = fid_interval(a.view(), shifted.view(), &cfg(50, 2)).unwrap();
    // Population FIDs 0 and 8 * 0.25 = 2.
    assert!(f_same.low < 0.05 * f_shift.low, "{f_same:?} vs {f_shift:?}");
    assert!(f_same.high < f_shift.low, "the intervals do not overlap: {f_same:?} vs {f_shift:?}");
    let k_same = kid_interval(a.view(), same.view(), &cfg(50, 2)).unwrap();
    let k_shift = kid_interval(a.view(), shifted.view(), &cfg(50, 2)).unwrap();
    assert!(k_same.low < 0.0 && 0.0 < k_same.high, "KID of one distribution holds 0: {k_same:?}");
    assert!(k_same.high < k_shift.low, "{k_same:?} vs {k_shift:?}");
}

#[test]
fn bad_settings_and_inputs_are_typed_errors() {
    let (a, b) = (gauss(30, 4, 8, 0.0), gauss(30, 4, 9, 0.0));
    let bad_param = |r: Result<Interval>, want: &str| match r {
        Err(MetricsError::InvalidParameter { name, .. }) => assert_eq!(name, want),
        other => panic!("expected InvalidParameter {want}, got {other:?}"),
    };
    bad_param(fid_interval(a.view(), b.view(), &cfg(0, 0)), "resamples");
    bad_param(kid_interval(a.view(), b.view(), &cfg(0, 0)), "resamples");
    for level in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        let c = BootstrapConfig { level, ..cfg(10, 0) };
        bad_param(fid_interval(a.view(), b.view(), &c), "level");
        bad_param(kid_interval(a.view(), b.view(), &c), "level");
    }
    let one = gauss(1, 4, 10, 0.0);
    assert!(matches!(fid_interval(one.view(), b.view(), &cfg(10, 0)), Err(MetricsError::TooFewSamples { .. })));
    assert!(matches!(kid_interval(a.view(), one.view(), &cfg(10, 0)), Err(MetricsError::TooFewSamples { .. })));
    let wide = gauss(30, 5, 11, 0.0);
    assert!(matches!(fid_interval(a.view(), wide.view(), &cfg(10, 0)), Err(MetricsError::DimensionMismatch { .. })));
    let mut nan = a.clone();
    nan[[2, 1]] = f64::NAN;
    assert!(matches!(kid_interval(nan.view(), b.view(), &cfg(10, 0)), Err(MetricsError::NonFinite { .. })));
    // Two rows: some resample draws one row twice, which leaves no pair for the KID.
    let two = gauss(2, 4, 12, 0.0);
    assert!(matches!(kid_interval(two.view(), b.view(), &cfg(20, 0)), Err(MetricsError::TooFewSamples { .. })));
}

#[test]
fn the_report_carries_the_intervals() {
    let (a, b) = (gauss(200, 6, 13, 0.0), gauss(150, 6, 14, 0.4));
    // Subsets of 1,000 rows hold both whole sets: the KID has no spread over subsets.
    let ec = EvalConfig {
        bandwidths: vec![4.0],
        bootstrap: Some(cfg(30, 3)),
        vendi_max_n: 100,
        noise_floor: true,
        ..EvalConfig::default()
    };
    let r = evaluate_features(a.view(), b.view(), None, &ec).unwrap();
    let (f, k) = (r.fid_ci.as_ref().unwrap(), r.kid_ci.as_ref().unwrap());
    assert_eq!(f.estimate, r.fid);
    assert!(r.kid.whole_sets && (k.estimate - r.kid.mean).abs() < 1e-12 * r.kid.mean.abs());
    let t = r.to_table();
    assert!(t.contains(&format!("FID {:.3}  95% CI [", r.fid)) && t.contains("(30 bootstrap resamples)"), "{t}");
    assert!(t.contains(&format!("KID {:.5}  95% CI [", r.kid.mean)), "{t}");
    assert!(!t.contains("KID std") && t.contains("no spread over subsets"), "{t}");
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["fid_ci"]["resamples"], 30);
    assert!(v["kid_ci"]["low"].as_f64().unwrap() < v["kid_ci"]["high"].as_f64().unwrap());
    assert_eq!(v["kid"]["whole_sets"], true);

    // Without bootstrap: no intervals; smaller subsets give a std row again.
    let ec = EvalConfig { kid: KidConfig { num_subsets: 5, subset_size: 50, seed: 0 }, bootstrap: None, ..ec };
    let r = evaluate_features(a.view(), b.view(), None, &ec).unwrap();
    assert!(r.fid_ci.is_none() && r.kid_ci.is_none() && !r.kid.whole_sets);
    assert!(r.to_table().contains("KID std over subsets") && !r.to_table().contains("CI ["));
    let bad = EvalConfig { bootstrap: Some(cfg(0, 0)), ..ec };
    assert!(matches!(
        evaluate_features(a.view(), b.view(), None, &bad),
        Err(MetricsError::InvalidParameter { name: "resamples", .. })
    ));
}
