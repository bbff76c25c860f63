//! Realism metrics on any feature matrices, with gen-metrics alone (no lensing code): FID, RKE,
//! RRKE, Vendi, KID, precision/recall/density/coverage and the real-vs-real floor.
//!
//! ```text
//! cargo run --release --example metrics_on_features
//! ```

use gen_metrics::{evaluate_features, EvalConfig, KidConfig};
use ndarray::Array2;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

fn main() -> Result<(), gen_metrics::MetricsError> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let normal = Normal::new(0.0, 1.0).expect("valid");
    let real = Array2::from_shape_fn((800, 16), |_| normal.sample(&mut rng));
    // A generated set with a slightly shifted mean.
    let generated = Array2::from_shape_fn((600, 16), |(_, j)| normal.sample(&mut rng) + if j == 0 { 0.3 } else { 0.0 });
    let cfg = EvalConfig { kid: KidConfig { num_subsets: 20, subset_size: 300, seed: 0 }, ..EvalConfig::default() };
    let report = evaluate_features(real.view(), generated.view(), None, &cfg)?;
    print!("{}", report.to_table());
    Ok(())
}
