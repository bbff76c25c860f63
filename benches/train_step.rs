//! U-Net training step and forward pass on burn Flex, side by side with
//! `scripts/bench_train_step.py` (denoising-diffusion-pytorch 2.3.4).
//!
//! ```text
//! cargo bench --bench train_step                      # both presets
//! cargo bench --bench train_step -- pipeline          # only the pipeline preset
//! TRAIN_STEP_QUICK=3 cargo bench --bench train_step -- deeplense   # 3 timed steps, no criterion
//! TRAIN_STEP_FORWARD_BATCH=1 TRAIN_STEP_QUICK=3 cargo bench --bench train_step -- deeplense   # forward batch 1 per worker
//! # on a GPU: the DeepLense preset's batch 24, in f32 / f16 / bf16 (scripts/gpu_train_step.sh)
//! CUDARC_CUDA_VERSION=13000 cargo bench --features cuda --bench train_step --no-run
//! TRAIN_STEP_BACKEND=cuda TRAIN_STEP_DTYPE=bf16 TRAIN_STEP_TRAIN_BATCH=24 TRAIN_STEP_FORWARD_BATCH=24 \
//!     TRAIN_STEP_QUICK=10 target/release/deps/train_step-* deeplense
//! ```
//! A DeepLense training step takes tens of seconds on two cores, so criterion's minimum of 10
//! samples takes minutes; `TRAIN_STEP_QUICK=N` instead times N repetitions of each case after
//! one warm-up and prints the mean, min and max (the filter argument still selects cases).
//! `fwd-par` (quick mode only) is the forward as the `pipeline` and `sample` commands use it on
//! the CPU: one batch per core, on separate threads, images/s over all of them.
//! `TRAIN_STEP_BACKEND` (quick mode only) picks `flex` (default), `ndarray` or, in a build with
//! the `cuda` feature, `cuda`, or with the `tch` feature, `tch` (libtorch: its first GPU, else
//! its CPU), whose float type `TRAIN_STEP_DTYPE` picks: `f32` (default), `f16` or `bf16` (the
//! whole step in that type: weights, activations, gradients and AdamW moments; no f32 master
//! weights, unlike PyTorch's autocast). On flex, `TRAIN_STEP_DTYPE=bf16` is `--precision bf16`:
//! the convolutions' operands in bf16 with f32 sums, all else f32 (CPUs with AVX512-BF16). On
//! cuda, `TRAIN_STEP_KERNEL_CACHE=DIR` switches cubecl's kernel cache on in DIR, as the commands
//! do (`lensing_diffusion::backend::configure_cubecl`); without it the cache stays off, i.e. every
//! run starts cold. `TRAIN_STEP_TRAIN_BATCH` overrides the training batch. On the GPU every timed repetition ends with `Backend::sync`, and the warm-up
//! is `TRAIN_STEP_WARMUP` repetitions (default 1; cubecl autotunes its kernels on first use).
//! Cases (the same in the Python script):
//! - `pipeline`: `Unet(16, (1,2,4))` at 32x32 (what `lensing-diffusion pipeline` trains); training
//!   step at batch 16, forward (sampling) at batch 100.
//! - `deeplense`: `Unet(64, (1,2,4,8))` at 128x128; training step and forward at batch 4.
//!
//! A training step is [`Trainer::train_step`]: pred-v loss with random timesteps and noise,
//! backward, global-norm clipping, AdamW, EMA update. The forward is the EMA network without
//! autodiff at a fixed t = 500. Results go to docs/performance-history.md (issue 7 section) as
//! images/s and ratios to PyTorch.

use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lensing_diffusion::backend::BackendKind;
use lensing_diffusion::config::TrainConfig;
use lensing_diffusion::trainer::Trainer;
use lensing_diffusion::unet::Unet;
use lensing_diffusion::unet::UnetBackend;

struct Case {
    name: &'static str,
    config: TrainConfig,
    train_batch: usize,
    forward_batch: usize,
}

fn cases() -> Vec<Case> {
    // `TRAIN_STEP_FORWARD_BATCH=N` overrides both cases' forward batch (per worker in `fwd-par`).
    let fwd = |default: usize| env_usize("TRAIN_STEP_FORWARD_BATCH").unwrap_or(default);
    let train = |default: usize| env_usize("TRAIN_STEP_TRAIN_BATCH").unwrap_or(default);
    let mut deeplense = TrainConfig::deeplense();
    deeplense.batch_size = 4;
    vec![
        Case { name: "pipeline", config: TrainConfig::small(), train_batch: train(16), forward_batch: fwd(100) },
        Case { name: "deeplense", config: deeplense, train_batch: train(4), forward_batch: fwd(4) },
    ]
}

/// A positive integer from the environment variable `name`, if set.
fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|&b| b > 0)
}

/// What both modes time for one case: a trainer with its batch, and the EMA network with a
/// forward input at t = 500.
struct Setup<B: UnetBackend> {
    trainer: Trainer<Autodiff<B>>,
    images: Tensor<Autodiff<B>, 4>,
    model: Unet<B>,
    x: Tensor<B, 4>,
    t: Tensor<B, 1>,
    size: usize,
}

fn setup<B: UnetBackend>(case: &Case, device: &B::Device, shards: usize) -> Setup<B> {
    let mut config = case.config.clone();
    config.batch_size = case.train_batch;
    config.data_parallel = shards;
    let (size, channels) = (config.image_size, config.unet.channels);
    let trainer = Trainer::<Autodiff<B>>::new(config, device).expect("valid preset");
    let images = Tensor::<Autodiff<B>, 4>::random(
        [case.train_batch, channels, size, size],
        Distribution::Uniform(0.0, 1.0),
        device,
    );
    let model = trainer.ema().clone();
    let n = case.forward_batch;
    let x = Tensor::<B, 4>::random([n, channels, size, size], Distribution::Normal(0.0, 1.0), device);
    let t = Tensor::<B, 1>::from_floats(vec![500.0f32; n].as_slice(), device);
    Setup { trainer, images, model, x, t, size }
}

/// `TRAIN_STEP_QUICK=N`: N plain timed repetitions per case instead of criterion, on the
/// backend `TRAIN_STEP_BACKEND` names.
fn quick(reps: usize) {
    let started = std::time::Instant::now();
    let backend = std::env::var("TRAIN_STEP_BACKEND").unwrap_or_else(|_| "flex".into());
    let kind: BackendKind = backend.parse().unwrap_or_else(|e| panic!("TRAIN_STEP_BACKEND: {e}"));
    let dtype = std::env::var("TRAIN_STEP_DTYPE").unwrap_or_else(|_| "f32".into());
    #[cfg(feature = "cuda-untuned")]
    let _watch = match (kind, std::env::var("TRAIN_STEP_KERNEL_CACHE")) {
        (BackendKind::Cuda, Ok(dir)) => {
            let log = lensing_diffusion::backend::configure_cubecl(std::path::Path::new(&dir)).expect("kernel cache");
            println!("cubecl kernel cache in {dir}");
            Some(lensing_diffusion::backend::KernelCompileWatch::start(log, Duration::from_secs(5)))
        }
        _ => None,
    };
    let d = &dtype;
    match (kind, d.as_str()) {
        (BackendKind::Flex, "f32") => quick_on::<Flex>(reps, &Default::default(), kind, d, started),
        // Mixed precision as `--precision bf16` runs it: bf16 convolution operands, f32 sums,
        // everything else (weights, AdamW, norms, attention) f32.
        (BackendKind::Flex, "bf16") => {
            lensing_diffusion::unet::set_conv_precision(lensing_diffusion::unet::ConvPrecision::Bf16)
                .unwrap_or_else(|e| panic!("TRAIN_STEP_DTYPE=bf16: {e}"));
            quick_on::<Flex>(reps, &Default::default(), kind, d, started)
        }
        (BackendKind::NdArray, "f32") => {
            quick_on::<burn::backend::NdArray>(reps, &Default::default(), kind, d, started)
        }
        #[cfg(feature = "cuda-untuned")]
        (BackendKind::Cuda, "f32") => quick_on::<burn::backend::Cuda<f32>>(reps, &Default::default(), kind, d, started),
        #[cfg(feature = "cuda-untuned")]
        (BackendKind::Cuda, "f16") => {
            quick_on::<burn::backend::Cuda<burn::tensor::f16>>(reps, &Default::default(), kind, d, started)
        }
        #[cfg(feature = "cuda-untuned")]
        (BackendKind::Cuda, "bf16") => {
            quick_on::<burn::backend::Cuda<burn::tensor::bf16>>(reps, &Default::default(), kind, d, started)
        }
        #[cfg(feature = "tch")]
        (BackendKind::Tch, "f32") => {
            quick_on::<burn::backend::LibTorch<f32>>(reps, &lensing_diffusion::backend::tch_device(), kind, d, started)
        }
        #[cfg(feature = "tch")]
        (BackendKind::Tch, "f16") => quick_on::<burn::backend::LibTorch<burn::tensor::f16>>(
            reps,
            &lensing_diffusion::backend::tch_device(),
            kind,
            d,
            started,
        ),
        #[cfg(feature = "tch")]
        (BackendKind::Tch, "bf16") => quick_on::<burn::backend::LibTorch<burn::tensor::bf16>>(
            reps,
            &lensing_diffusion::backend::tch_device(),
            kind,
            d,
            started,
        ),
        (_, d) => panic!(
            "TRAIN_STEP_DTYPE={d} is not available for {kind} (flex takes f32 or bf16, ndarray f32; cuda and tch \
             take f32, f16 or bf16)"
        ),
    }
}

fn quick_on<B: UnetBackend>(
    reps: usize,
    device: &B::Device,
    kind: BackendKind,
    dtype: &str,
    started: std::time::Instant,
) {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_default();
    let warmup = env_usize("TRAIN_STEP_WARMUP").unwrap_or(1);
    println!("backend {kind} {dtype} ({}), {warmup} warm-up + {reps} timed repetitions", B::name(device));
    for case in cases().into_iter().filter(|c| c.name.contains(filter.as_str())) {
        // The data-parallel shards the `train` command uses on this backend.
        let shards = kind.training_shards(case.config.data_parallel);
        let Setup { mut trainer, images, model, x, t, .. } = setup::<B>(&case, device, shards);
        let report = |kind: &str, batch: usize, f: &mut dyn FnMut()| {
            let timed = |f: &mut dyn FnMut()| {
                let t0 = std::time::Instant::now();
                f();
                B::sync(device).expect("device sync");
                t0.elapsed().as_secs_f64()
            };
            // Printed as they finish: on the GPU the first ones compile (and autotune) kernels.
            // "after start" counts from the process's start: set-up, weights and kernels included.
            let warm: Vec<f64> = (0..warmup)
                .map(|i| {
                    let w = timed(f);
                    let since = started.elapsed().as_secs_f64();
                    println!("{:9} {kind:7} warm-up {}: {w:.3} s ({since:.1} s after start)", case.name, i + 1);
                    w
                })
                .collect();
            let times: Vec<f64> = (0..reps).map(|_| timed(f)).collect();
            let mean = times.iter().sum::<f64>() / reps as f64;
            let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = times.iter().cloned().fold(0.0, f64::max);
            println!(
                "{:9} {kind:7} batch {batch:3}: mean {mean:8.4} s [{min:.4}, {max:.4}] {:8.2} images/s  (warm-up {})",
                case.name,
                batch as f64 / mean,
                warm.iter().map(|w| format!("{w:.2} s")).collect::<Vec<_>>().join(", ")
            );
        };
        let mut last_loss = f32::NAN;
        report("train", case.train_batch, &mut || {
            last_loss = std::hint::black_box(trainer.train_step(images.clone(), None).expect("finite loss")).loss;
        });
        println!("{:9} last training loss {last_loss:.5}", case.name);
        let n = case.forward_batch;
        report("forward", n, &mut || {
            std::hint::black_box(model.forward(x.clone(), t.clone()).into_data());
        });
        // How the `pipeline` and `sample` commands sample on the CPU: one batch per core, each
        // on its own thread with its own copy of the weights (lensing_diffusion::parallel).
        let workers = kind.sample_workers(None);
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
    if let Some(reps) = std::env::var("TRAIN_STEP_QUICK").ok().and_then(|v| v.parse::<usize>().ok()) {
        quick(reps.max(1));
        return;
    }
    for case in cases() {
        let device = Default::default();
        let shards = BackendKind::Flex.training_shards(case.config.data_parallel);
        let Setup { mut trainer, images, model, x, t, size } = setup::<Flex>(&case, &device, shards);
        let mut g = c.benchmark_group(format!("train_step_{}", case.name));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(if case.name == "deeplense" { 20 } else { 8 }))
            .throughput(Throughput::Elements(case.train_batch as u64));
        g.bench_function(BenchmarkId::new("flex", format!("{size}x{size}_batch{}", case.train_batch)), |b| {
            b.iter(|| std::hint::black_box(trainer.train_step(images.clone(), None).expect("finite loss")))
        });
        g.finish();

        let n = case.forward_batch;
        let mut g = c.benchmark_group(format!("forward_{}", case.name));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(if case.name == "deeplense" { 10 } else { 8 }))
            .throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("flex", format!("{size}x{size}_batch{n}")), |b| {
            b.iter(|| std::hint::black_box(model.forward(x.clone(), t.clone()).into_data()))
        });
        g.finish();
    }
}

criterion_group!(benches, train_step);
criterion_main!(benches);
