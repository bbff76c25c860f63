//! Forward pass of the U-Net (`unet` crate) on the CPU backends.
//!
//! ```text
//! cargo bench --bench unet
//! ```
//! DeepLense preset (`Unet(dim=64, dim_mults=(1,2,4,8), channels=1)`, 35.7 M parameters) at
//! 128x128, batch 1 and 8, on Flex; the small preset (dim 16) at 128x128, batch 8, on Flex and
//! NdArray. Numbers are recorded in docs/performance-history.md (section "unet").

use std::time::Duration;

use burn::backend::{Flex, NdArray};
use burn::tensor::{Distribution, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lensing_diffusion::unet::UnetBackend;
use unet::{Unet, UnetConfig};

fn bench_forward<B: UnetBackend>(
    c: &mut Criterion,
    group: &str,
    backend: &str,
    config: &UnetConfig,
    batches: &[usize],
) {
    let device = B::Device::default();
    B::seed(&device, 0);
    let model: Unet<B> = config.init(&device).expect("valid preset");
    let mut g = c.benchmark_group(group);
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for &n in batches {
        let x = Tensor::<B, 4>::random([n, config.channels, 128, 128], Distribution::Normal(0.0, 1.0), &device);
        let t = Tensor::<B, 1>::from_floats(vec![500.0f32; n].as_slice(), &device);
        g.bench_with_input(BenchmarkId::new(backend, format!("128x128_batch{n}")), &n, |b, _| {
            b.iter(|| {
                let y = model.forward(x.clone(), t.clone());
                std::hint::black_box(y.into_data())
            })
        });
    }
    g.finish();
}

fn unet_forward(c: &mut Criterion) {
    lensing_diffusion::alloc::tune_allocator();
    bench_forward::<Flex>(c, "unet_forward_small", "flex", &UnetConfig::small(), &[1, 8]);
    bench_forward::<NdArray>(c, "unet_forward_small", "ndarray", &UnetConfig::small(), &[1]);
    bench_forward::<Flex>(c, "unet_forward_deeplense", "flex", &UnetConfig::deeplense(), &[1, 8]);
}

criterion_group!(benches, unet_forward);
criterion_main!(benches);
