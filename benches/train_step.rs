//! U-Net training step and forward pass on burn Flex, side by side with
//! `scripts/bench_train_step.py` (denoising-diffusion-pytorch 2.3.4).
//!
//! ```text
//! cargo bench --bench train_step                      # both presets
//! cargo bench --bench train_step -- pipeline          # only the pipeline preset
//! TRAIN_STEP_QUICK=3 cargo bench --bench train_step -- deeplense   # 3 timed steps, no criterion
//! TRAIN_STEP_FORWARD_BATCH=1 TRAIN_STEP_QUICK=3 cargo bench --bench train_step -- deeplense   # forward batch 1 per worker
//! ```
//! A DeepLense training step takes tens of seconds on two cores, so criterion's minimum of 10
//! samples takes minutes; `TRAIN_STEP_QUICK=N` instead times N repetitions of each case after
//! one warm-up and prints the mean, min and max (the filter argument still selects cases).
//! `fwd-par` (quick mode only) is the forward as the `pipeline` and `sample` commands use it on
//! the CPU: one batch per core, on separate threads, images/s over all of them.
//! Cases (the same in the Python script):
//! - `pipeline`: `Unet(16, (1,2,4))` at 32x32 (what `examples/pipeline.rs` trains); training
//!   step at batch 16, forward (sampling) at batch 100.
//! - `deeplense`: `Unet(64, (1,2,4,8))` at 128x128; training step and forward at batch 4.
//!
//! A training step is [`Trainer::train_step`]: pred-v loss with random timesteps and noise,
//! backward, global-norm clipping, AdamW, EMA update. The forward is the EMA network without
//! autodiff at a fixed t = 500. Results go to docs/PERFORMANCE.md (issue 7 section) as
//! images/s and ratios to PyTorch.

use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lensing_diffusion::train::{TrainConfig, Trainer};
use lensing_diffusion::unet::Unet;

type Ad = Autodiff<Flex>;

struct Case {
    name: &'static str,
    config: TrainConfig,
    train_batch: usize,
    forward_batch: usize,
}

fn cases() -> Vec<Case> {
    // `TRAIN_STEP_FORWARD_BATCH=N` overrides both cases' forward batch (per worker in `fwd-par`).
    let fwd = |default: usize| {
        std::env::var("TRAIN_STEP_FORWARD_BATCH").ok().and_then(|v| v.parse().ok()).filter(|&b| b > 0).unwrap_or(default)
    };
    let mut deeplense = TrainConfig::deeplense();
    deeplense.batch_size = 4;
    // What the `train` command uses on the CPU (two data-parallel shards).
    deeplense.data_parallel = 2;
    vec![
        Case {
            name: "pipeline",
            config: TrainConfig::small(),
            train_batch: 16,
            forward_batch: fwd(100),
        },
        Case {
            name: "deeplense",
            config: deeplense,
            train_batch: 4,
            forward_batch: fwd(4),
        },
    ]
}

/// What both modes time for one case: a trainer with its batch, and the EMA network with a
/// forward input at t = 500.
struct Setup {
    trainer: Trainer<Ad>,
    images: Tensor<Ad, 4>,
    model: Unet<Flex>,
    x: Tensor<Flex, 4>,
    t: Tensor<Flex, 1>,
    size: usize,
}

fn setup(case: &Case) -> Setup {
    let device: burn::backend::flex::FlexDevice = Default::default();
    let mut config = case.config.clone();
    config.batch_size = case.train_batch;
    let (size, channels) = (config.image_size, config.unet.channels);
    let trainer = Trainer::<Ad>::new(config, &device).expect("valid preset");
    let images = Tensor::<Ad, 4>::random([case.train_batch, channels, size, size], Distribution::Uniform(0.0, 1.0), &device);
    let model = trainer.ema().clone();
    let n = case.forward_batch;
    let x = Tensor::<Flex, 4>::random([n, channels, size, size], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<Flex, 1>::from_floats(vec![500.0f32; n].as_slice(), &device);
    Setup { trainer, images, model, x, t, size }
}

/// `TRAIN_STEP_QUICK=N`: N plain timed repetitions per case instead of criterion.
fn quick(reps: usize) {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    for case in cases()
        .into_iter()
        .filter(|c| c.name.contains(filter.as_str()))
    {
        let Setup { mut trainer, images, model, x, t, .. } = setup(&case);
        let report = |kind: &str, batch: usize, f: &mut dyn FnMut()| {
            f();
            let times: Vec<f64> = (0..reps)
                .map(|_| {
                    let t0 = std::time::Instant::now();
                    f();
                    t0.elapsed().as_secs_f64()
                })
                .collect();
            let mean = times.iter().sum::<f64>() / reps as f64;
            let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = times.iter().cloned().fold(0.0, f64::max);
            println!(
                "{:9} {kind:7} batch {batch:3}: mean {mean:8.3} s [{min:.3}, {max:.3}] {:7.2} images/s",
                case.name,
                batch as f64 / mean
            );
        };
        report("train", case.train_batch, &mut || {
            std::hint::black_box(trainer.train_step(images.clone()).expect("finite loss"));
        });
        let n = case.forward_batch;
        report("forward", n, &mut || {
            std::hint::black_box(model.forward(x.clone(), t.clone()).into_data());
        });
        // How the `pipeline` and `sample` commands sample on the CPU: one batch per core, each
        // on its own thread with its own copy of the weights (lensing_diffusion::parallel).
        let workers = lensing_diffusion::parallel::available_workers();
        if workers > 1 {
            report("fwd-par", n * workers, &mut || {
                lensing_diffusion::parallel::map_in_threads(
                    workers,
                    workers,
                    |_| model.clone(),
                    |m, _| -> Result<(), ()> {
                        std::hint::black_box(m.forward(x.clone(), t.clone()).into_data());
                        Ok(())
                    },
                )
                .expect("forward");
            });
        }
    }
}

fn train_step(c: &mut Criterion) {
    lensing_diffusion::alloc::tune_allocator();
    if let Some(reps) = std::env::var("TRAIN_STEP_QUICK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        quick(reps.max(1));
        return;
    }
    for case in cases() {
        let Setup { mut trainer, images, model, x, t, size } = setup(&case);
        let mut g = c.benchmark_group(format!("train_step_{}", case.name));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(if case.name == "deeplense" {
                20
            } else {
                8
            }))
            .throughput(Throughput::Elements(case.train_batch as u64));
        g.bench_function(
            BenchmarkId::new("flex", format!("{size}x{size}_batch{}", case.train_batch)),
            |b| {
                b.iter(|| {
                    std::hint::black_box(trainer.train_step(images.clone()).expect("finite loss"))
                })
            },
        );
        g.finish();

        let n = case.forward_batch;
        let mut g = c.benchmark_group(format!("forward_{}", case.name));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(if case.name == "deeplense" {
                10
            } else {
                8
            }))
            .throughput(Throughput::Elements(n as u64));
        g.bench_function(
            BenchmarkId::new("flex", format!("{size}x{size}_batch{n}")),
            |b| b.iter(|| std::hint::black_box(model.forward(x.clone(), t.clone()).into_data())),
        );
        g.finish();
    }
}

criterion_group!(benches, train_step);
criterion_main!(benches);
