//! gen-metrics speed targets (docs/performance-history.md, section "gen-metrics").
//!
//! ```text
//! python scripts/bench_metrics.py --out target/bench-data   # writes the features + Python timings
//! cargo bench --bench metrics                                # reads the same .npy files
//! cargo bench --bench metrics -- fid                         # only FID
//! ```
//! Features are read from `$GEN_METRICS_BENCH_DATA` (default `target/bench-data`):
//! `fid_real.npy`, `fid_generated.npy` ([10000, 2048]) and `rke_features.npy` ([10000, 512]),
//! written by the Python script so both sides time the very same numbers. Missing files are
//! replaced by seeded Gaussian features of the same shapes.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gen_metrics::{frechet_distance, frechet_distance_from_features, rke_exact, GaussianStats};
use ndarray::Array2;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn data_dir() -> PathBuf {
    std::env::var_os("GEN_METRICS_BENCH_DATA").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/bench-data"))
}

fn features(name: &str, n: usize, d: usize, seed: u64) -> Array2<f64> {
    let p = data_dir().join(name);
    if p.exists() {
        let x = gen_metrics::load_features_npy(&p).expect("bench features");
        assert_eq!(x.dim(), (n, d), "{} has the wrong shape", p.display());
        return x;
    }
    eprintln!("{} not found: using seeded Gaussian features", p.display());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((n, d), || StandardNormal.sample(&mut rng))
}

fn bench(c: &mut Criterion) {
    let a = features("fid_real.npy", 10_000, 2048, 1);
    let b = features("fid_generated.npy", 10_000, 2048, 2);
    let mut g = c.benchmark_group("fid");
    g.sample_size(10).measurement_time(Duration::from_secs(40));
    g.bench_function("fid_from_features_n10000_d2048", |bn| {
        bn.iter(|| frechet_distance_from_features(a.view(), b.view()).unwrap().value)
    });
    let sa = GaussianStats::from_features(a.view()).unwrap();
    let sb = GaussianStats::from_features(b.view()).unwrap();
    g.bench_function("stats_one_set_n10000_d2048", |bn| {
        bn.iter(|| GaussianStats::from_features(a.view()).unwrap().cov[[0, 0]])
    });
    g.bench_function("frechet_from_stats_d2048", |bn| bn.iter(|| frechet_distance(&sa, &sb).unwrap().value));
    g.finish();
    drop((a, b));

    let x = features("rke_features.npy", 10_000, 512, 3);
    let mut g = c.benchmark_group("rke");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("rke_exact_n10000_d512_3bw", |bn| bn.iter(|| rke_exact(x.view(), &[8.0, 16.0, 32.0]).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
