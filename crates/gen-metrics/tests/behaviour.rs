//! Typed errors, statistics caching, singular-covariance warnings, seeds, and internal
//! consistency (MC vs exact RKE, tiling vs direct sums, report JSON).

use gen_metrics::*;
use ndarray::{s, Array2};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn gauss(n: usize, d: usize, seed: u64, shift: f64) -> Array2<f64> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((n, d), || {
        let z: f64 = StandardNormal.sample(&mut r);
        shift + z
    })
}

#[test]
fn bad_inputs_are_typed_errors() {
    let a = gauss(20, 4, 1, 0.0);
    let mut nan = a.clone();
    nan[[3, 2]] = f64::NAN;
    match frechet_distance_from_features(nan.view(), a.view()) {
        Err(MetricsError::NonFinite { row: 3, col: 2, what, .. }) => assert!(what.contains("real")),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    let mut inf = a.clone();
    inf[[0, 0]] = f64::INFINITY;
    assert!(matches!(rke_exact(inf.view(), &[1.0]), Err(MetricsError::NonFinite { .. })));
    let b = gauss(20, 5, 2, 0.0);
    assert!(matches!(
        frechet_distance_from_features(a.view(), b.view()),
        Err(MetricsError::DimensionMismatch { left_dim: 4, right_dim: 5, .. })
    ));
    assert!(matches!(rrke(a.view(), b.view(), &[1.0], 500), Err(MetricsError::DimensionMismatch { .. })));
    let one = gauss(1, 4, 3, 0.0);
    assert!(matches!(
        GaussianStats::from_features(one.view()),
        Err(MetricsError::TooFewSamples { needed: 2, got: 1, .. })
    ));
    assert!(matches!(kid(one.view(), a.view(), &KidConfig::default()), Err(MetricsError::TooFewSamples { .. })));
    for bw in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(rke_exact(a.view(), &[8.0, bw]), Err(MetricsError::InvalidBandwidth(_))), "bw {bw}");
        assert!(matches!(vendi(a.view(), &[bw]), Err(MetricsError::InvalidBandwidth(_))));
    }
    assert!(matches!(rke_exact(a.view(), &[]), Err(MetricsError::InvalidParameter { .. })));
    assert!(matches!(prdc(a.view(), a.view(), 0), Err(MetricsError::InvalidParameter { .. })));
    let empty = Array2::<f64>::zeros((5, 0));
    assert!(matches!(rke_exact(empty.view(), &[1.0]), Err(MetricsError::EmptyDimension { .. })));
}

#[test]
fn npy_loading_f32_f64_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = gauss(6, 3, 4, 0.0);
    let p64 = dir.path().join("a64.npy");
    let p32 = dir.path().join("a32.npy");
    ndarray_npy::write_npy(&p64, &a).unwrap();
    ndarray_npy::write_npy(&p32, &a.mapv(|v| v as f32)).unwrap();
    assert_eq!(load_features_npy(&p64).unwrap(), a);
    let b = load_features_npy(&p32).unwrap();
    assert!((b[[2, 1]] - a[[2, 1]]).abs() < 1e-6);
    let p1 = dir.path().join("one_d.npy");
    ndarray_npy::write_npy(&p1, &ndarray::Array1::<f64>::zeros(4)).unwrap();
    match load_features_npy(&p1) {
        Err(MetricsError::ArrayFile { path, .. }) => assert_eq!(path, p1),
        other => panic!("expected ArrayFile, got {other:?}"),
    }
    assert!(matches!(load_features_npy(dir.path().join("missing.npy")), Err(MetricsError::Io { .. })));
    let mut nan = a.clone();
    nan[[1, 1]] = f64::NAN;
    let pn = dir.path().join("nan.npy");
    ndarray_npy::write_npy(&pn, &nan).unwrap();
    match load_features_npy(&pn) {
        Err(MetricsError::NonFinite { what, row: 1, col: 1, .. }) => assert!(what.contains("nan.npy")),
        other => panic!("expected NonFinite, got {other:?}"),
    }
}

#[test]
fn stats_round_trip_and_reuse() {
    let a = gauss(300, 8, 5, 0.0);
    let b = gauss(250, 8, 6, 0.3);
    let sa = GaussianStats::from_features(a.view()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("real_stats.npz");
    sa.save(&p).unwrap();
    let back = GaussianStats::load(&p).unwrap();
    assert_eq!(back, sa);
    let direct = frechet_distance_from_features(a.view(), b.view()).unwrap().value;
    let cached = frechet_distance(&back, &GaussianStats::from_features(b.view()).unwrap()).unwrap().value;
    assert_eq!(direct, cached);
    // Self-distance is ~0; symmetric.
    assert!(frechet_distance(&sa, &sa).unwrap().value.abs() < 1e-9);
    let sb = GaussianStats::from_features(b.view()).unwrap();
    let (x, y) = (frechet_distance(&sa, &sb).unwrap().value, frechet_distance(&sb, &sa).unwrap().value);
    assert!((x - y).abs() < 1e-9 * x);
}

#[test]
fn singular_covariance_warns_and_is_exact() {
    // n <= d: covariances singular. Compare with tr sqrt via the nuclear norm of A B^T.
    let (n1, n2, d) = (10, 12, 16);
    let a = gauss(n1, d, 7, 0.0);
    let b = gauss(n2, d, 8, 0.5);
    let fd = frechet_distance_from_features(a.view(), b.view()).unwrap();
    assert!(fd.warning.as_deref().unwrap().contains("n = 10 <= d = 16"));
    // Reference: A = (X1 - mu1)/sqrt(n1-1), tr sqrt(S1 S2) = sum of singular values of A B^T.
    let ca = &a - &a.mean_axis(ndarray::Axis(0)).unwrap();
    let cb = &b - &b.mean_axis(ndarray::Axis(0)).unwrap();
    let m = ca.dot(&cb.t()) / (((n1 - 1) * (n2 - 1)) as f64).sqrt();
    let fm = faer::Mat::<f64>::from_fn(n1, n2, |i, j| m[[i, j]]);
    let nuc: f64 = fm.singular_values().unwrap().iter().sum();
    let sa = GaussianStats::from_features(a.view()).unwrap();
    let sb = GaussianStats::from_features(b.view()).unwrap();
    let mean_term: f64 = (&sa.mean - &sb.mean).mapv(|v| v * v).sum();
    let want = mean_term + sa.cov.diag().sum() + sb.cov.diag().sum() - 2.0 * nuc;
    assert!((fd.value - want).abs() < 1e-8 * want.abs(), "{} vs {want}", fd.value);
    // Full rank: no warning.
    let big = gauss(40, 4, 9, 0.0);
    assert!(frechet_distance_from_features(big.view(), big.slice(s![..20, ..])).unwrap().warning.is_none());
}

#[test]
fn rke_exact_tiling_and_mc_agree() {
    // n spans several tiles; compare with a direct O(n^2) sum.
    let n = kernel::TILE + 137;
    let x = gauss(n, 6, 10, 2.0);
    let bws = [1.0, 2.5, 7.0];
    let got = rke_exact(x.view(), &bws).unwrap();
    for (g, &bw) in got.iter().zip(&bws) {
        let mut s = 0.0;
        for i in 0..n {
            for j in 0..n {
                let d2: f64 = x.row(i).iter().zip(x.row(j).iter()).map(|(a, b)| (a - b) * (a - b)).sum();
                s += (-d2 / (bw * bw)).exp();
            }
        }
        let want = (n * n) as f64 / s;
        assert!((g - want).abs() < 1e-10 * want, "bw {bw}: {g} vs {want}");
    }
    let mc = rke_mc(x.view(), &bws, 200_000, 42).unwrap();
    for (m, e) in mc.iter().zip(&got) {
        assert!((m - e).abs() < 0.05 * e, "MC {m} vs exact {e}");
    }
    assert_eq!(mc, rke_mc(x.view(), &bws, 200_000, 42).unwrap(), "same seed, same value");
}

#[test]
fn kid_seeded_and_report_json() {
    let a = gauss(400, 10, 11, 0.0);
    let b = gauss(300, 10, 12, 0.4);
    let cfg = KidConfig { num_subsets: 20, subset_size: 100, seed: 5 };
    let k1 = kid(a.view(), b.view(), &cfg).unwrap();
    assert_eq!(k1, kid(a.view(), b.view(), &cfg).unwrap());
    assert!(k1.std > 0.0 && k1.mean > 0.0 && !k1.whole_sets);
    let ec = EvalConfig { bandwidths: vec![2.0, 4.0], kid: cfg, vendi_max_n: 200, ..EvalConfig::default() };
    let r = evaluate_features(a.view(), b.view(), None, &ec).unwrap();
    assert_eq!((r.n_real, r.n_generated, r.dim, r.vendi_n), (400, 300, 10, 200));
    let nf = r.noise_floor.as_ref().unwrap();
    assert!(nf.metrics.fid < r.fid, "real-vs-real FID {} should be below gen-vs-real {}", nf.metrics.fid, r.fid);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("report.json");
    r.write_json(&p).unwrap();
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    for k in [
        "fid",
        "rke_real",
        "rke_generated",
        "rrke",
        "vendi_generated",
        "kid",
        "precision",
        "recall",
        "density",
        "coverage",
        "n_real",
        "n_generated",
        "dim",
    ] {
        assert!(v.get(k).is_some(), "missing key {k}");
    }
    assert!(v["rke_real"]["2.0"].as_f64().unwrap() > 1.0);
    assert!(v["kid"]["mean"].is_f64() && v["kid"]["std"].is_f64());
    assert!(r.to_table().contains("real vs real"));
    assert_eq!(bandwidth_key(8.0), "8.0");
    assert_eq!(bandwidth_key(0.5), "0.5");
}

#[test]
fn fid_infinity_fits_a_line() {
    let a = gauss(600, 5, 13, 0.0);
    let b = gauss(600, 5, 14, 0.2);
    let sa = GaussianStats::from_features(a.view()).unwrap();
    let cfg = FidInfinityConfig { num_points: 5, min_size: 100, seed: 1 };
    let fi = fid_infinity(&sa, b.view(), &cfg).unwrap();
    assert_eq!(fi.sizes, vec![100, 225, 350, 475, 600]);
    // The largest size is the whole (shuffled) set: its FID is the full-set FID.
    let full = frechet_distance_from_features(a.view(), b.view()).unwrap().value;
    assert!((fi.fids[4] - full).abs() < 1e-9 * full);
    // Intercept of the least-squares line through (1/N, FID), fitted independently.
    let xs: Vec<f64> = fi.sizes.iter().map(|&s| 1.0 / s as f64).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / 5.0, fi.fids.iter().sum::<f64>() / 5.0);
    let slope = xs.iter().zip(&fi.fids).map(|(x, y)| (x - mx) * (y - my)).sum::<f64>()
        / xs.iter().map(|x| (x - mx) * (x - mx)).sum::<f64>();
    assert!((fi.value - (my - slope * mx)).abs() < 1e-9);
    assert!(matches!(
        fid_infinity(&sa, b.view(), &FidInfinityConfig { min_size: 700, ..cfg }),
        Err(MetricsError::InvalidParameter { .. })
    ));
}

#[test]
fn missing_extractor_weights_name_the_file() {
    let path = std::path::Path::new("no/such/dir/extractor.bpk");
    let err =
        FeatureExtractor::<burn::backend::Flex>::load(path, &Default::default()).expect_err("missing file is an error");
    match &err {
        MetricsError::Io { path: p, source } => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
    assert!(err.to_string().contains("extractor.bpk"), "{err}");
}
