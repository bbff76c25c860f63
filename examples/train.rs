//! Train a DDPM on lensing images.
//!
//! ```text
//! cargo run --release --example train -- --simulate 3000 --preset small --out runs/small
//! cargo run --release --example train -- --data Samples/ --preset deeplense --backend cuda --out runs/deeplense
//! cargo run --release --example train -- --resume runs/small            # continue the latest checkpoint
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lensing_diffusion::unet::UnetAutodiffBackend;
use clap::Parser;
use diffusion_core::{BetaSchedule, Objective};
use lens_data::simulate::LensClass;
use lens_data::transform::Normalization;
use lensing_diffusion::backend::BackendKind;
use lensing_diffusion::run::{run, RunOptions};
use lensing_diffusion::train::{list_checkpoints, TrainConfig, Trainer};
use lensing_diffusion::with_autodiff_backend;

/// Train a denoising diffusion model (denoising-diffusion-pytorch's U-Net and Gaussian diffusion)
/// on strong-lensing images. Writes config.json, checkpoints/, loss.csv, loss.png and
/// samples/step-N.png (EMA weights, fixed seed) to --out. Ctrl-C writes a checkpoint and exits.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Training images: a folder of .npy/.npz/PNG/JPEG/TIFF files, a stacked .npy, or the
    /// labelled layout ROOT/{train,val}/CLASS/*. Default: simulate (see --simulate).
    #[arg(long, conflicts_with = "simulate")]
    data: Option<PathBuf>,
    /// Simulate this many DeepLense Model I images (no_sub, cdm, axion in turn) instead of --data.
    #[arg(long)]
    simulate: Option<usize>,
    /// Simulated image size in pixels before resizing.
    #[arg(long, default_value_t = 150)]
    sim_num_pix: usize,
    /// Normalisation of loaded images: minmax (per image to [0,1], DeepLense) or none.
    #[arg(long, default_value = "minmax")]
    normalize: String,
    /// Skip unreadable files with a warning instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// Starting configuration: `deeplense` (the original experiment) or `small` (CPU).
    #[arg(long, default_value = "small")]
    preset: String,
    /// Output folder.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Continue from a checkpoint folder (checkpoints/step-N) or a run folder (its latest
    /// checkpoint). The configuration comes from the checkpoint; --steps may extend it.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Compute backend: flex (CPU, default), ndarray (CPU, slow training) or cuda (--features cuda).
    #[arg(long, default_value = "flex")]
    backend: BackendKind,
    /// Stop (with a checkpoint) after this many minutes of training.
    #[arg(long)]
    time_budget_min: Option<f64>,
    /// Training image size (square).
    #[arg(long)]
    image_size: Option<usize>,
    /// U-Net base width.
    #[arg(long)]
    dim: Option<usize>,
    /// U-Net width multipliers per stage, e.g. 1,2,4,8.
    #[arg(long, value_delimiter = ',')]
    dim_mults: Option<Vec<usize>>,
    /// Diffusion timesteps T.
    #[arg(long)]
    timesteps: Option<usize>,
    /// pred_noise, pred_x0 or pred_v.
    #[arg(long)]
    objective: Option<String>,
    /// linear, cosine or sigmoid.
    #[arg(long)]
    schedule: Option<String>,
    /// Min-SNR loss weighting with this gamma (e.g. 5).
    #[arg(long)]
    min_snr: Option<f64>,
    /// Offset-noise strength (0 = off).
    #[arg(long)]
    offset_noise: Option<f64>,
    /// Images per optimizer step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Shards of each micro-batch trained concurrently on their own threads (data parallelism).
    /// Default: 2 on the CPU backends (flex, ndarray), 1 on cuda. The run's trajectory depends
    /// on it (each shard draws its own timesteps and noise); the value is saved in config.json.
    #[arg(long)]
    data_parallel: Option<usize>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    steps: Option<usize>,
    /// Epochs over the data (converted to steps).
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Linear warm-up steps.
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Cosine decay after warm-up (true/false).
    #[arg(long)]
    cosine_decay: Option<bool>,
    /// AdamW weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient-norm clip; 0 disables.
    #[arg(long)]
    grad_clip: Option<f64>,
    /// EMA decay.
    #[arg(long)]
    ema_decay: Option<f64>,
    /// EMA update interval (steps).
    #[arg(long)]
    ema_every: Option<usize>,
    /// Steps before the EMA starts averaging.
    #[arg(long)]
    ema_start: Option<usize>,
    /// Random dihedral augmentation (true/false).
    #[arg(long)]
    augment: Option<bool>,
    /// Checkpoint interval (steps).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Checkpoints to keep.
    #[arg(long)]
    keep_last: Option<usize>,
    /// Sample-grid interval (steps; 0 = never).
    #[arg(long)]
    sample_every: Option<usize>,
    /// Seed of everything random in the run.
    #[arg(long)]
    seed: Option<u64>,
}

fn main() {
    lensing_diffusion::alloc::tune_allocator();
    let args = Args::parse();
    if let Err(e) = main_inner(args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn apply_overrides(mut c: TrainConfig, a: &Args, data_len: Option<usize>) -> Result<TrainConfig, String> {
    if let Some(v) = a.image_size {
        c.image_size = v;
    }
    if a.dim.is_some() || a.dim_mults.is_some() {
        let dim = a.dim.unwrap_or(c.unet.dim);
        let mults = a.dim_mults.clone().unwrap_or(c.unet.dim_mults.clone());
        c.unet = unet::UnetConfig::new(dim, mults, c.unet.channels);
    }
    if let Some(v) = a.timesteps {
        c.diffusion.timesteps = v;
    }
    if let Some(v) = &a.objective {
        c.diffusion.objective = Objective::from_name(v).ok_or(format!("unknown objective `{v}` (pred_noise, pred_x0, pred_v)"))?;
    }
    if let Some(v) = &a.schedule {
        c.diffusion.schedule = BetaSchedule::from_name(v).ok_or(format!("unknown schedule `{v}` (linear, cosine, sigmoid)"))?;
    }
    if a.min_snr.is_some() {
        c = c.with_min_snr(a.min_snr);
    }
    if let Some(v) = a.offset_noise {
        c.diffusion.offset_noise_strength = v;
    }
    macro_rules! set {
        ($($field:ident = $arg:ident),*) => { $( if let Some(v) = a.$arg { c.$field = v; } )* };
    }
    set!(batch_size = batch_size, grad_accum = grad_accum, data_parallel = data_parallel, lr = lr, warmup_steps = warmup_steps, cosine_decay = cosine_decay,
         weight_decay = weight_decay, augment = augment, checkpoint_every = checkpoint_every, keep_last = keep_last,
         sample_every = sample_every, seed = seed);
    if let Some(v) = a.grad_clip {
        c.grad_clip = (v > 0.0).then_some(v);
    }
    if let Some(v) = a.ema_decay {
        c.ema.decay = v;
    }
    if let Some(v) = a.ema_every {
        c.ema.update_every = v;
    }
    if let Some(v) = a.ema_start {
        c.ema.start_step = v;
    }
    if let (Some(epochs), Some(n)) = (a.epochs, data_len) {
        c.total_steps = epochs * (n / c.batch_size).max(1);
    }
    if let Some(v) = a.steps {
        c.total_steps = v;
    }
    Ok(c)
}

fn main_inner(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130); // second Ctrl-C: leave at once
            }
            eprintln!("\ninterrupt: finishing the current step and writing a checkpoint (Ctrl-C again to quit now)");
        })?;
    }
    with_autodiff_backend!(args.backend, train_with(&args, &interrupt))
}

fn train_with<B: UnetAutodiffBackend>(device: B::Device, args: &Args, interrupt: &AtomicBool) -> Result<(), Box<dyn std::error::Error>> {
    let mut trainer = match &args.resume {
        Some(path) => {
            let ckpt = if path.join("state.json").is_file() {
                path.clone()
            } else {
                list_checkpoints(&path.join("checkpoints"))
                    .pop()
                    .or_else(|| list_checkpoints(path).pop())
                    .ok_or_else(|| format!("{}: no checkpoint found (expected step-N folders or checkpoints/step-N)", path.display()))?
            };
            eprintln!("resuming from {}", ckpt.display());
            let mut t = Trainer::<B>::resume(&ckpt, &device)?;
            if let Some(steps) = args.steps {
                t.extend_to(steps);
            }
            t
        }
        None => {
            let mut preset = match args.preset.as_str() {
                "deeplense" => TrainConfig::deeplense(),
                "small" => TrainConfig::small(),
                other => return Err(format!("unknown preset `{other}` (deeplense, small)").into()),
            };
            preset.data_parallel = args.backend.training_shards(preset.data_parallel);
            Trainer::<B>::new(apply_overrides(preset, args, None)?, &device)?
        }
    };
    let size = trainer.config().image_size;
    let normalization = match args.normalize.as_str() {
        "minmax" => Normalization::MinMax,
        "none" => Normalization::None,
        other => return Err(format!("unknown --normalize `{other}` (minmax, none)").into()),
    };
    let data = match (&args.data, args.simulate) {
        (Some(path), _) => {
            eprintln!("loading {} (resized to {size}x{size})", path.display());
            let (set, warnings) = lensing_diffusion::data::load_resized(path, size, normalization, args.skip_bad)?;
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            set
        }
        (None, n) => {
            let n = n.unwrap_or(3000);
            eprintln!("simulating {n} Model I lensing images ({0}x{0} -> {size}x{size})", args.sim_num_pix);
            lensing_diffusion::data::simulate_resized(n, args.sim_num_pix, size, &LensClass::ALL, trainer.config().seed)?
        }
    };
    if args.resume.is_none() && args.epochs.is_some() && args.steps.is_none() {
        let c = apply_overrides(trainer.config().clone(), args, Some(data.len()))?;
        trainer = Trainer::<B>::new(c, &device)?;
    }
    let c = trainer.config();
    eprintln!(
        "{} images of {size}x{size}; U-Net {} ({} parameters); T = {}; {} steps of batch {}; backend {}",
        data.len(),
        c.unet.describe(),
        c.unet.num_params(),
        c.diffusion.timesteps,
        c.total_steps,
        c.batch_size,
        args.backend
    );
    let opts = RunOptions {
        out_dir: &args.out,
        time_budget: args.time_budget_min.map(|m| Duration::from_secs_f64(m * 60.0)),
        interrupt: Some(interrupt),
        progress: true,
    };
    let summary = run(&mut trainer, &data, &opts)?;
    eprintln!(
        "{:?} after {} steps in {:.1} s ({:.1} images/s); final loss {:.4}; checkpoint {}",
        summary.reason,
        summary.steps,
        summary.train_seconds,
        summary.images_per_second,
        summary.final_loss,
        summary.last_checkpoint.map(|p| p.display().to_string()).unwrap_or_default()
    );
    Ok(())
}
