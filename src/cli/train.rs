//! `lensing-diffusion train`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lens_data::simulate::LensClass;
use lens_data::transform::Normalization;
use lensing_diffusion::checkpoint::holds_a_run;
use lensing_diffusion::config::{Preset, TrainConfig};
use lensing_diffusion::run::{run as run_training, RunOptions};
use lensing_diffusion::trainer::Trainer;
use lensing_diffusion::with_autodiff_backend;
use unet::UnetAutodiffBackend;

use super::args::{
    count, minutes, positive, unit_interval, BackendArgs, DiffusionArgs, UnetArgs, MAX_IMAGES, MAX_IMAGE_SIZE,
};
use super::CmdResult;

/// Train a denoising diffusion model (denoising-diffusion-pytorch's U-Net and Gaussian diffusion)
/// on strong-lensing images.
///
/// Writes config.json, checkpoints/step-N/ (model.bpk and ema.bpk, which `sample` reads with no
/// further flags, and the resume state), loss.csv, loss.png and samples/step-N.png (EMA
/// weights, fixed seed) to --out. Ctrl-C writes a checkpoint and exits; --resume continues
/// exactly where it stopped.
///
/// Examples:
///   lensing-diffusion train --simulate 3000 --out runs/small
///   lensing-diffusion train --data Samples/ --preset deeplense --backend cuda --out runs/deeplense
///   lensing-diffusion train --resume runs/small --steps 3000
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Training images: a folder of .npy/.npz/PNG/JPEG/TIFF files, a stacked .npy, or the
    /// labelled layout ROOT/{train,val}/CLASS/*. Default: simulate (see --simulate).
    #[arg(long, conflicts_with = "simulate")]
    pub(crate) data: Option<PathBuf>,
    /// Simulate this many DeepLense Model I images (no_sub, cdm, axion in turn) instead of
    /// --data, 1 to 10,000,000 [default: 3000].
    #[arg(long, value_parser = count(1, MAX_IMAGES))]
    pub(crate) simulate: Option<usize>,
    /// Simulated image size in pixels before resizing (the field of view stays 7.5 arcsec).
    #[arg(long, default_value_t = 150, value_parser = count(8, MAX_IMAGE_SIZE))]
    pub(crate) sim_num_pix: usize,
    /// Normalisation of loaded images: minmax (per image to [0,1], DeepLense) or none.
    #[arg(long, default_value = "minmax", value_parser = ["minmax", "none"])]
    pub(crate) normalize: String,
    /// Skip unreadable files with a warning instead of stopping.
    #[arg(long)]
    pub(crate) skip_bad: bool,
    /// Starting configuration: `deeplense` (the original experiment) or `small` (CPU).
    #[arg(long, default_value = "small")]
    pub(crate) preset: Preset,
    /// Output folder [default: runs/train; with --resume, the run folder resumed from].
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Continue from a checkpoint folder (checkpoints/step-N) or a run folder (its newest
    /// checkpoint that loads; damaged newer ones are skipped with a message). The configuration
    /// comes from the checkpoint; --steps may extend it.
    #[arg(long)]
    pub(crate) resume: Option<PathBuf>,
    /// Start a fresh run even though --out holds one (its checkpoints, loss.csv, loss.png and
    /// samples/ are deleted first). Without it, a fresh run into a used --out is refused.
    #[arg(long, conflicts_with = "resume")]
    pub(crate) overwrite: bool,
    #[command(flatten)]
    pub(crate) backend: BackendArgs,
    /// Stop (with a checkpoint) after this many minutes of training.
    #[arg(long, value_parser = minutes)]
    pub(crate) time_budget_min: Option<f64>,
    /// Training image size (square), 8 to 4096.
    #[arg(long, value_parser = count(8, MAX_IMAGE_SIZE))]
    pub(crate) image_size: Option<usize>,
    #[command(flatten)]
    pub(crate) unet: UnetArgs,
    #[command(flatten)]
    pub(crate) diffusion: DiffusionArgs,
    /// Min-SNR loss weighting with this gamma (e.g. 5).
    #[arg(long)]
    pub(crate) min_snr: Option<f64>,
    /// Offset-noise strength (0 = off).
    #[arg(long)]
    pub(crate) offset_noise: Option<f64>,
    /// Images per optimizer step.
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long)]
    pub(crate) grad_accum: Option<usize>,
    /// Shards of each micro-batch trained concurrently on their own threads (data parallelism).
    /// Default: 2 on the CPU backends (flex, ndarray), 1 on cuda. The run's trajectory depends
    /// on it (each shard draws its own timesteps and noise); the value is saved in config.json.
    #[arg(long)]
    pub(crate) data_parallel: Option<usize>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    pub(crate) steps: Option<usize>,
    /// Epochs over the data (converted to steps).
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// Peak learning rate (finite, > 0).
    #[arg(long, value_parser = positive)]
    pub(crate) lr: Option<f64>,
    /// Linear warm-up steps.
    #[arg(long)]
    pub(crate) warmup_steps: Option<usize>,
    /// Cosine decay after warm-up (true/false).
    #[arg(long)]
    pub(crate) cosine_decay: Option<bool>,
    /// AdamW weight decay.
    #[arg(long)]
    pub(crate) weight_decay: Option<f64>,
    /// Global gradient-norm clip; 0 disables.
    #[arg(long)]
    pub(crate) grad_clip: Option<f64>,
    /// EMA decay.
    #[arg(long)]
    pub(crate) ema_decay: Option<f64>,
    /// EMA update interval (steps).
    #[arg(long)]
    pub(crate) ema_every: Option<usize>,
    /// Steps before the EMA starts averaging.
    #[arg(long)]
    pub(crate) ema_start: Option<usize>,
    /// Random dihedral augmentation (true/false).
    #[arg(long)]
    pub(crate) augment: Option<bool>,
    /// Checkpoint interval (steps).
    #[arg(long)]
    pub(crate) checkpoint_every: Option<usize>,
    /// Checkpoints to keep.
    #[arg(long)]
    pub(crate) keep_last: Option<usize>,
    /// Sample-grid interval (steps; 0 = never).
    #[arg(long)]
    pub(crate) sample_every: Option<usize>,
    /// Seed of everything random in the run.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Train a class-conditional model (classifier-free guidance) on the data's labels: the
    /// simulator's three classes, or the class folders of ROOT/{train,val}/CLASS/*. The class
    /// names go into config.json and the checkpoints; `sample --class NAME` then asks for one.
    #[arg(long, conflicts_with = "resume")]
    pub(crate) conditional: bool,
    /// Conditional training: probability of replacing a label by the null class, so the model
    /// also learns the unconditional prediction guidance needs [default: 0.5, the reference's].
    #[arg(long, value_parser = unit_interval)]
    pub(crate) cond_drop_prob: Option<f64>,
}

impl Args {
    /// `c` with every given flag applied (`data_len` converts --epochs to steps).
    pub(crate) fn apply(&self, mut c: TrainConfig, data_len: Option<usize>) -> TrainConfig {
        if let Some(v) = self.image_size {
            c.image_size = v;
        }
        c.unet = self.unet.apply(&c.unet);
        self.diffusion.apply(&mut c.diffusion);
        if self.min_snr.is_some() {
            c = c.with_min_snr(self.min_snr);
        }
        if let Some(v) = self.offset_noise {
            c.diffusion.offset_noise_strength = v;
        }
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.$field = v; } )* };
        }
        set!(
            batch_size,
            grad_accum,
            data_parallel,
            cond_drop_prob,
            lr,
            warmup_steps,
            cosine_decay,
            weight_decay,
            augment,
            checkpoint_every,
            keep_last,
            sample_every,
            seed
        );
        if let Some(v) = self.grad_clip {
            c.grad_clip = (v > 0.0).then_some(v);
        }
        if let Some(v) = self.ema_decay {
            c.ema.decay = v;
        }
        if let Some(v) = self.ema_every {
            c.ema.update_every = v;
        }
        if let Some(v) = self.ema_start {
            c.ema.start_step = v;
        }
        if let (Some(epochs), Some(n)) = (self.epochs, data_len) {
            c.total_steps = epochs.saturating_mul((n / c.batch_size.max(1)).max(1));
        }
        if let Some(v) = self.steps {
            c.total_steps = v;
        }
        c
    }
}

pub fn run(args: Args) -> CmdResult {
    args.backend.apply_precision()?;
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
    with_autodiff_backend!(args.backend.backend, train_with(&args, &interrupt))
}

/// Where a run writes: `--out`, else the run folder of the checkpoint resumed from (a run folder,
/// or the parent of its `checkpoints/step-N`), else `runs/train`.
fn out_dir(args: &Args, resumed_from: Option<&std::path::Path>) -> PathBuf {
    if let Some(o) = &args.out {
        return o.clone();
    }
    match resumed_from {
        Some(ckpt) => {
            let parent = ckpt.parent();
            match parent.filter(|p| p.file_name().is_some_and(|n| n == "checkpoints")) {
                Some(checkpoints) => atomic_file::parent_dir(checkpoints).to_path_buf(),
                None => parent.map(|p| atomic_file::parent_dir(p).to_path_buf()).unwrap_or_else(|| PathBuf::from(".")),
            }
        }
        None => PathBuf::from("runs/train"),
    }
}

fn train_with<B: UnetAutodiffBackend>(device: B::Device, args: &Args, interrupt: &AtomicBool) -> CmdResult {
    if args.unet.channels.is_some_and(|c| c != 1) {
        return Err("--channels: lensing images have one channel; train supports --channels 1 only".into());
    }
    let mut resumed_from = None;
    let start = match &args.resume {
        Some(path) => {
            let (mut t, ckpt, skipped) = Trainer::<B>::resume_latest(path, &device)?;
            for (bad, why) in &skipped {
                eprintln!("warning: skipped {}: {why}", bad.display());
            }
            eprintln!("resuming from {}", ckpt.display());
            resumed_from = Some(ckpt);
            if let Some(steps) = args.steps {
                t.extend_to(steps);
            }
            Ok(t)
        }
        None => {
            let out = out_dir(args, None);
            if holds_a_run(&out) {
                if !args.overwrite {
                    return Err(format!(
                        "--out {} holds a training run (checkpoints or loss.csv): continue it with --resume {0}, choose another --out, or start over with --overwrite",
                        out.display()
                    )
                    .into());
                }
                for old in ["checkpoints", "samples"] {
                    let p = out.join(old);
                    if p.is_dir() {
                        std::fs::remove_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                    }
                }
                for old in ["loss.csv", "loss.png", "config.json"] {
                    let p = out.join(old);
                    if p.is_file() {
                        std::fs::remove_file(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                    }
                }
            }
            let mut preset = args.preset.config();
            preset.data_parallel = args.backend.backend.training_shards(preset.data_parallel);
            Err(args.apply(preset, None))
        }
    };
    let (size, seed) = match &start {
        Ok(t) => (t.config().image_size, t.config().seed),
        Err(c) => (c.image_size, c.seed),
    };
    let normalization = if args.normalize == "none" { Normalization::None } else { Normalization::MinMax };
    let data = match &args.data {
        Some(path) => {
            eprintln!("loading {} (resized to {size}x{size})", path.display());
            let (set, warnings) = lensing_diffusion::data::load_resized(path, size, normalization, args.skip_bad)?;
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            set
        }
        None => {
            let n = args.simulate.unwrap_or(3000);
            eprintln!("simulating {n} Model I lensing images ({0}x{0} -> {size}x{size})", args.sim_num_pix);
            lensing_diffusion::data::simulate_resized(n, args.sim_num_pix, size, &LensClass::ALL, seed)?
        }
    };
    let mut trainer = match start {
        Ok(t) => t,
        Err(mut c) => {
            if args.epochs.is_some() && args.steps.is_none() {
                c = args.apply(c, Some(data.len()));
            }
            if args.conditional {
                if data.labels.is_none() || data.class_names.is_empty() {
                    return Err("--conditional needs labelled data: the simulator (no --data) or the layout \
                                ROOT/{train,val}/CLASS/*"
                        .into());
                }
                c.unet.num_classes = Some(data.class_names.len());
                c.class_names = data.class_names.clone();
                eprintln!("class-conditional: {} (cond_drop_prob {})", c.class_names.join(", "), c.cond_drop_prob);
            } else if let Some(n) = c.unet.num_classes {
                if data.labels.is_none() || data.class_names.len() != n {
                    return Err(format!(
                        "--num-classes {n}: the data has {} labelled classes; use --conditional to take them from the data",
                        data.class_names.len()
                    )
                    .into());
                }
                c.class_names = data.class_names.clone();
            }
            Trainer::<B>::new(c, &device)?
        }
    };
    let c = trainer.config();
    eprintln!(
        "{} images of {size}x{size}; U-Net {} ({} parameters); T = {}; {} steps of batch {}; backend {}",
        data.len(),
        c.unet.describe(),
        c.unet.num_params(),
        c.diffusion.timesteps,
        c.total_steps,
        c.batch_size,
        args.backend.backend
    );
    let out = out_dir(args, resumed_from.as_deref());
    let opts = RunOptions {
        out_dir: &out,
        time_budget: args.time_budget_min.map(|m| Duration::from_secs_f64(m * 60.0)),
        interrupt: Some(interrupt),
        progress: true,
        fit_to_budget: false,
    };
    let summary = run_training(&mut trainer, &data, &opts)?;
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
