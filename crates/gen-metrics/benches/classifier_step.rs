//! The lensing classifier's (ResNet-18, one input channel, 3 classes) training step and
//! forward pass on burn Flex, side by side with `scripts/bench_classifier_step.py` (torchvision
//! `resnet18`, same batch and image size, Adam).
//!
//! ```text
//! CLASSIFIER_QUICK=5 cargo bench -p gen-metrics --bench classifier_step      # 5 timed steps
//! CLASSIFIER_SIZE=150 CLASSIFIER_BATCH=32 CLASSIFIER_QUICK=5 cargo bench -p gen-metrics --bench classifier_step
//! ```
//! Prints images/s of the training step (forward, cross-entropy, backward, Adam) and of the
//! forward in eval mode (feature extraction), mean over the timed repetitions after one warm-up.

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use gen_metrics::ResNet18;

fn env(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn main() {
    type B = Autodiff<Flex>;
    let (size, batch, reps) = (env("CLASSIFIER_SIZE", 128), env("CLASSIFIER_BATCH", 32), env("CLASSIFIER_QUICK", 5));
    let dev = Default::default();
    let mut model = ResNet18::<B>::new(3, &dev);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&dev);
    let x = Tensor::<B, 4>::random([batch, 1, size, size], Distribution::Uniform(0.0, 1.0), &dev);
    let y: Vec<i64> = (0..batch).map(|i| (i % 3) as i64).collect();
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y, [batch]), &dev);
    let mut times = Vec::new();
    for r in 0..=reps {
        let t = Instant::now();
        let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
        let _ = loss.clone().into_data();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
        if r > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!("train step  {size}x{size} batch {batch}: {:.3} s/step, {:.1} img/s", mean, batch as f64 / mean);
    let valid = model.valid();
    let xv = x.inner();
    let mut times = Vec::new();
    for r in 0..=reps {
        let t = Instant::now();
        let _ = valid.features(xv.clone()).into_data();
        if r > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!("forward     {size}x{size} batch {batch}: {:.3} s/step, {:.1} img/s", mean, batch as f64 / mean);
}
