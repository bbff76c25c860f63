//! Cost of sampler steps excluding the network (a trivial denoiser), and full 50-step DDIM with a
//! tiny U-Net. `cargo bench --bench sampler`.

use burn::backend::Flex;
use burn::tensor::Tensor;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use diffusion_core::{DiffusionConfig, GaussianDiffusion, Sampler};
use unet::UnetConfig;

type B = Flex;

fn sampler_steps(c: &mut Criterion) {
    lensing_diffusion::alloc::tune_allocator();
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let device = Default::default();
    // The trivial denoiser costs one scaled copy, so the time is the sampler's own arithmetic.
    let trivial = |x: Tensor<B, 4>, _t: Tensor<B, 1>| x.mul_scalar(0.5);
    let mut g = c.benchmark_group("sampler_step_excluding_model");
    g.sample_size(10);
    for (name, sampler, steps) in [
        ("ddpm", Sampler::Ddpm, 1000usize),
        ("ddim", Sampler::Ddim { steps: 100, eta: 0.0 }, 100),
        ("dpmpp_2m", Sampler::DpmSolverPp2M { steps: 100 }, 100),
    ] {
        for &(batch, size) in &[(16usize, 32usize), (8, 128)] {
            g.throughput(Throughput::Elements(steps as u64));
            g.bench_with_input(
                BenchmarkId::new(name, format!("{batch}x1x{size}x{size}")),
                &(batch, size),
                |b, &(n, s)| {
                    b.iter(|| d.sample::<B, _>(&trivial, sampler, [n, 1, s, s], 0, &device, &mut |_| {}).unwrap())
                },
            );
        }
    }
    g.finish();
}

fn ddim_tiny_unet(c: &mut Criterion) {
    lensing_diffusion::alloc::tune_allocator();
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let device = Default::default();
    let model = UnetConfig::new(8, vec![1, 2], 1).init::<B>(&device).unwrap();
    let mut g = c.benchmark_group("ddim_50_steps_tiny_unet");
    g.sample_size(10);
    g.bench_function("unet_dim8_mults12_4x1x32x32", |b| {
        b.iter(|| {
            d.sample::<B, _>(&model, Sampler::Ddim { steps: 50, eta: 0.0 }, [4, 1, 32, 32], 0, &device, &mut |_| {})
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, sampler_steps, ddim_tiny_unet);
criterion_main!(benches);
