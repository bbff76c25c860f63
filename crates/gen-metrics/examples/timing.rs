use std::time::Instant;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
fn feats(n: usize, d: usize, seed: u64) -> Array2<f64> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_fn((n, d), |_| r.random::<f64>() * 2.0 - 1.0)
}
fn main() {
    let which = std::env::args().nth(1).unwrap_or("all".into());
    if which == "all" || which == "fid" {
        let a = feats(10000, 2048, 1); let b = feats(10000, 2048, 2);
        let t = Instant::now();
        let sa = gen_metrics::GaussianStats::from_features(a.view()).unwrap();
        println!("stats one set {:?}", t.elapsed());
        let sb = gen_metrics::GaussianStats::from_features(b.view()).unwrap();
        let t2 = Instant::now();
        let f = gen_metrics::frechet_distance(&sa, &sb).unwrap();
        println!("fd from stats {:?} total {:?} value {}", t2.elapsed(), t.elapsed(), f.value);
    }
    if which == "all" || which == "rke" {
        let a = feats(10000, 512, 3);
        let t = Instant::now();
        let r = gen_metrics::rke_exact(a.view(), &[8.0, 16.0, 32.0]).unwrap();
        println!("rke exact {:?} {:?}", t.elapsed(), r);
    }
}
