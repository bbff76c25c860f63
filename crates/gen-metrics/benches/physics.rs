//! Physical statistics speed target: 10,000 real + 10,000 generated 128x128 images compared
//! (per-image statistics of both sets, the real-vs-real floor and all distances) in under 5 s
//! on two cores.
//!
//! ```text
//! cargo bench -p gen-metrics --bench physics
//! ```
//! Measured: 4.62 s (4.51-4.73 s) on the shared 2-core machine under a load average of ~4.
//! Images are seeded synthetic lenses (a Gaussian ring of random radius, width and m = 2
//! modulation plus uniform noise), stored as f32 like `lens_data::ImageSet`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gen_metrics::physics::compare;
use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

fn lenses(n: usize, size: usize, seed: u64) -> Array3<f32> {
    let mut a = Array3::<f32>::zeros((n, size, size));
    let c = (size as f64 - 1.0) / 2.0;
    a.as_slice_mut().unwrap().par_chunks_mut(size * size).enumerate().for_each(|(i, img)| {
        // one stream per image: the data do not depend on the thread count
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(i as u64);
        let r = rng.random_range(15.0..40.0);
        let s = rng.random_range(1.0..4.0);
        let eps = rng.random_range(0.0..0.5);
        for (p, v) in img.iter_mut().enumerate() {
            let (x, y) = ((p % size) as f64 - c, (p / size) as f64 - c);
            let rho = (x * x + y * y).sqrt();
            let ring = (1.0 + eps * (2.0 * y.atan2(x)).cos()) * (-(rho - r).powi(2) / (2.0 * s * s)).exp();
            *v = (ring + 0.05 * rng.random::<f64>()) as f32;
        }
    });
    a
}

fn bench(c: &mut Criterion) {
    let real = lenses(10_000, 128, 1);
    let generated = lenses(10_000, 128, 2);
    let mut g = c.benchmark_group("physics");
    g.sample_size(10).warm_up_time(Duration::from_secs(3)).measurement_time(Duration::from_secs(40));
    g.bench_function("compare_10000_vs_10000_128x128", |b| {
        b.iter(|| compare(real.view(), generated.view(), 0).unwrap().einstein_radius.distance)
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
