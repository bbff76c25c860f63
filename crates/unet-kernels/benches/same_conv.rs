//! The 3x3 same convolution of the DeepLense U-Net's stages (batch 4) and of the small preset's
//! (`pipeline`; batch 8, a data-parallel shard of its batch 16), forward and both gradients, in
//! f32 and in bf16 (`Precision::Bf16`, on CPUs with AVX512-BF16), side by side in one run:
//!
//! ```text
//! cargo bench -p unet-kernels --bench same_conv
//! SAME_CONV_QUICK=1 cargo bench -p unet-kernels --bench same_conv   # fewer samples
//! ```
//! Numbers are recorded in docs/PERFORMANCE.md ("bf16 convolutions").

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use unet_kernels::same_conv::{self, Geometry, Precision};

fn values(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i as f32) * 0.618).sin()).collect()
}

fn bench(c: &mut Criterion) {
    let quick = std::env::var_os("SAME_CONV_QUICK").is_some();
    let mut group = c.benchmark_group("same_conv_3x3");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(if quick { 2 } else { 6 }));
    let mut precisions = vec![Precision::F32];
    if same_conv::bf16_available() {
        precisions.push(Precision::Bf16);
    } else {
        eprintln!("this CPU has no AVX512-BF16: f32 only");
    }
    // DeepLense's stages at batch 4, then the small preset's at batch 8.
    for (n, c_in, size) in
        [(4, 64, 128), (4, 128, 64), (4, 256, 32), (4, 512, 16), (8, 16, 32), (8, 32, 16), (8, 64, 8)]
    {
        let g = Geometry { n, cin: c_in, h: size, w: size, cout: c_in, k: 3 };
        let (x, w) = (values(g.n * g.cin * g.h * g.w), values(g.cout * g.cin * 9));
        // Multiply-adds per call (the same for both gradients).
        group.throughput(Throughput::Elements((g.n * g.cout * g.cin * 9 * g.h * g.w) as u64));
        for &p in &precisions {
            let id = format!("c{c_in}_{size}px_b{n}_{p:?}");
            group.bench_with_input(BenchmarkId::new("forward", &id), &p, |b, &p| {
                b.iter(|| same_conv::forward_with(&g, &x, &w, None, p))
            });
            group.bench_with_input(BenchmarkId::new("input_grad", &id), &p, |b, &p| {
                b.iter(|| same_conv::input_grad_with(&g, &w, &x, p))
            });
            group.bench_with_input(BenchmarkId::new("weight_grad", &id), &p, |b, &p| {
                b.iter(|| same_conv::weight_grad_with(&g, &x, &x, p))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
