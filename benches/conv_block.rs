//! Issue 7's convolution micro-benchmark: a block of four 3x3 convolutions (64 -> 64 channels,
//! 64x64, batch 8, padding 1, no bias) each followed by SiLU, on burn Flex: inference forward,
//! and forward + backward (sum of the output as the loss, gradients of the four weights), once
//! with burn Flex's `conv2d` (`flex_*`) and once with the U-Net's own kernel through
//! `unet::backend::conv2d_same` (`ours_*`, what the U-Net runs on Flex).
//!
//! ```text
//! cargo bench --bench conv_block
//! python scripts/bench_conv_block.py --threads 2     # the same block in PyTorch
//! ```
//! Numbers are recorded in docs/performance-history.md (section "Training and sampling throughput").

use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use lensing_diffusion::unet::backend::conv2d_same;
use lensing_diffusion::unet::UnetBackend;

fn block<B: Backend>(x: Tensor<B, 4>, weights: &[Tensor<B, 4>]) -> Tensor<B, 4> {
    weights.iter().fold(x, |h, w| silu(conv2d(h, w.clone(), None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1))))
}

fn block_ours<B: UnetBackend>(x: Tensor<B, 4>, weights: &[Tensor<B, 4>]) -> Tensor<B, 4> {
    weights.iter().fold(x, |h, w| silu(conv2d_same(h, w.clone(), None)))
}

fn inputs<B: Backend>(device: &B::Device) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
    B::seed(device, 0);
    let x = Tensor::random([8, 64, 64, 64], Distribution::Normal(0.0, 1.0), device);
    let w = (0..4).map(|_| Tensor::random([64, 64, 3, 3], Distribution::Normal(0.0, 0.05), device)).collect();
    (x, w)
}

fn bench(c: &mut Criterion) {
    lensing_diffusion::alloc::tune_allocator();
    let mut g = c.benchmark_group("conv_block_4x3x3_c64_64x64_b8");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(8));

    let device = Default::default();
    let (x, w) = inputs::<Flex>(&device);
    g.bench_function("flex_forward", |b| b.iter(|| block(x.clone(), &w).into_data()));
    g.bench_function("ours_forward", |b| b.iter(|| block_ours(x.clone(), &w).into_data()));

    let (x, w) = inputs::<Autodiff<Flex>>(&device);
    let w: Vec<_> = w.into_iter().map(|w| w.require_grad()).collect();
    g.bench_function("flex_forward_backward", |b| {
        b.iter(|| {
            let grads = block(x.clone(), &w).sum().backward();
            w.iter().map(|w| w.grad(&grads).expect("weight gradient").into_data()).collect::<Vec<_>>()
        })
    });
    g.bench_function("ours_forward_backward", |b| {
        b.iter(|| {
            let grads = block_ours(x.clone(), &w).sum().backward();
            w.iter().map(|w| w.grad(&grads).expect("weight gradient").into_data()).collect::<Vec<_>>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
