//! Generate images with a trained U-Net.
//!
//! ```text
//! cargo run --release --example sample -- --checkpoint diffusion_model.pth --num 16 --out samples.npy --grid grid.png
//! cargo run --release --example sample -- --checkpoint runs/train/checkpoints/step-0001500/ema.bpk \
//!     --image-size 32 --sampler dpmpp --steps 20 --num 64 --out samples.npy --png-dir pngs/
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use lensing_diffusion::unet::UnetBackend;
use burn::tensor::{Tensor, TensorData};
use clap::Parser;
use diffusion_core::{BetaSchedule, DiffusionConfig, DiffusionRng, GaussianDiffusion, Objective, Sampler};
use indicatif::{ProgressBar, ProgressStyle};
use lensing_diffusion::backend::BackendKind;
use lensing_diffusion::with_backend;
use ndarray::{Array4, ArrayD};
use rand::SeedableRng;
use unet::{infer_config, load_checkpoint, UnetConfig, Weights};

/// Sample images from a denoising diffusion model. Reads denoising-diffusion-pytorch checkpoints
/// (a bare `Unet.state_dict()` such as the original `diffusion_model.pth`, a
/// `GaussianDiffusion.state_dict()`, or a Trainer checkpoint with its `model` or `ema` weights),
/// safetensors exported by this project, and our own `.bpk` checkpoints. Writes f32 [N,C,H,W]
/// in [0,1] to --out (what denoising-diffusion-pytorch returns).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Checkpoint file.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Which weights of a denoising-diffusion-pytorch Trainer checkpoint: model or ema. Default:
    /// ema, except for our burnpack files (`model.bpk` / `ema.bpk`), which hold one set of
    /// weights each.
    #[arg(long)]
    weights: Option<String>,
    /// U-Net base width (default: inferred from the checkpoint; the DeepLense preset is 64).
    #[arg(long)]
    dim: Option<usize>,
    /// U-Net width multipliers (default: inferred; DeepLense 1,2,4,8).
    #[arg(long, value_delimiter = ',')]
    dim_mults: Option<Vec<usize>>,
    /// Image channels (default: inferred; DeepLense 1).
    #[arg(long)]
    channels: Option<usize>,
    /// Image size (square).
    #[arg(long, default_value_t = 128)]
    image_size: usize,
    /// Diffusion timesteps T.
    #[arg(long, default_value_t = 1000)]
    timesteps: usize,
    /// What the network predicts: pred_noise, pred_x0 or pred_v.
    #[arg(long, default_value = "pred_v")]
    objective: String,
    /// Beta schedule: linear, cosine or sigmoid.
    #[arg(long, default_value = "sigmoid")]
    schedule: String,
    /// ddpm (all T steps), ddim or dpmpp (DPM-Solver++ 2M).
    #[arg(long, default_value = "ddim")]
    sampler: String,
    /// Model evaluations for ddim / dpmpp.
    #[arg(long, default_value_t = 250)]
    steps: usize,
    /// DDIM eta (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Number of images (ignored with --init-noise).
    #[arg(long, default_value_t = 16)]
    num: usize,
    /// Images per batch (batch i is seeded by i, so this changes which images a seed gives).
    /// On the CPU, 4 per batch (one batch per core) sampled the DeepLense preset fastest
    /// (docs/PERFORMANCE.md).
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Batches sampled concurrently, one thread each (the images do not depend on it).
    /// Default: the number of cores on CPU backends, 1 on cuda.
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the starting noise and the sampler's noise (batch i uses stream i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Starting noise as f32 [N,C,H,W] .npy (standard normal); sets N, C, H, W.
    #[arg(long)]
    init_noise: Option<PathBuf>,
    /// Output .npy (f32 [N,C,H,W] in [0,1]).
    #[arg(long)]
    out: PathBuf,
    /// Also write each image as a PNG into this folder.
    #[arg(long)]
    png_dir: Option<PathBuf>,
    /// Also write a grid PNG of (up to 64) images.
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Compute backend: flex, ndarray or cuda.
    #[arg(long, default_value = "flex")]
    backend: BackendKind,
}

fn main() {
    lensing_diffusion::alloc::tune_allocator();
    let args = Args::parse();
    if let Err(e) = with_backend!(args.backend, sample_with(&args)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn sampler_of(args: &Args) -> Result<Sampler, String> {
    match args.sampler.as_str() {
        "ddpm" => Ok(Sampler::Ddpm),
        "ddim" => Ok(Sampler::Ddim { steps: args.steps, eta: args.eta }),
        "dpmpp" | "dpm-solver++" => Ok(Sampler::DpmSolverPp2M { steps: args.steps }),
        other => Err(format!("unknown sampler `{other}` (ddpm, ddim, dpmpp)")),
    }
}

fn sample_with<B: UnetBackend>(device: B::Device, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let is_burnpack = args.checkpoint.extension().is_some_and(|e| e == "bpk");
    let weights: Weights = match &args.weights {
        Some(w) => w.parse()?,
        None if is_burnpack => Weights::Model,
        None => Weights::Ema,
    };
    let sampler = sampler_of(args)?;
    let objective = Objective::from_name(&args.objective).ok_or(format!("unknown objective `{}`", args.objective))?;
    let schedule = BetaSchedule::from_name(&args.schedule).ok_or(format!("unknown schedule `{}`", args.schedule))?;
    let diffusion = GaussianDiffusion::new(DiffusionConfig { timesteps: args.timesteps, schedule, objective, ..Default::default() })?;
    sampler.validate(args.timesteps)?;

    // Config: explicit flags win over what the checkpoint says; a mismatch is reported by the loader.
    let config = if args.dim.is_some() || args.dim_mults.is_some() || args.channels.is_some() {
        let inferred = infer_config(&args.checkpoint, weights).ok();
        let base = inferred.unwrap_or_else(UnetConfig::deeplense);
        Some(UnetConfig::new(
            args.dim.unwrap_or(base.dim),
            args.dim_mults.clone().unwrap_or(base.dim_mults.clone()),
            args.channels.unwrap_or(base.channels),
        ))
    } else {
        None
    };
    let model = load_checkpoint::<B>(&args.checkpoint, weights, config.as_ref(), &device)?;
    let channels = model.config().channels;

    let init: Option<Array4<f32>> = match &args.init_noise {
        Some(p) => {
            let a: ArrayD<f32> = ndarray_npy::read_npy(p).map_err(|e| format!("{}: {e} (expected f32 [N,C,H,W])", p.display()))?;
            let a = a.into_dimensionality::<ndarray::Ix4>().map_err(|_| format!("{}: expected 4 dimensions [N,C,H,W]", p.display()))?;
            if a.dim().1 != channels {
                return Err(format!("{}: {} channels, the model has {channels}", p.display(), a.dim().1).into());
            }
            Some(a.as_standard_layout().to_owned())
        }
        None => None,
    };
    let (n, h, w) = match &init {
        Some(a) => (a.dim().0, a.dim().2, a.dim().3),
        None => (args.num, args.image_size, args.image_size),
    };
    let f = model.config().downsample_factor();
    if h % f != 0 || w % f != 0 {
        return Err(format!("image size {h}x{w} must be a multiple of {f} for this U-Net").into());
    }
    if n == 0 || args.batch_size == 0 {
        return Err("--num and --batch-size must be >= 1".into());
    }
    eprintln!("{} | {} | {n} images of {channels}x{h}x{w}", model.config().describe(), sampler_label(sampler));

    let evals = sampler.model_evaluations(args.timesteps);
    let batches = n.div_ceil(args.batch_size);
    let bar = ProgressBar::new((evals * batches) as u64);
    bar.set_style(ProgressStyle::with_template("{spinner} sample [{elapsed_precise}] {wide_bar} {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}")?);
    bar.set_message(format!("{batches} batches"));
    let start = Instant::now();
    let workers = args.backend.sample_workers(args.threads);
    // Batch b is seeded by b alone, so batches run on `workers` threads (each with its own copy
    // of the weights) and give the images of a sequential run.
    let per_batch = lensing_diffusion::parallel::map_in_threads(
        batches,
        workers,
        |_| model.clone(),
        |model, b| -> Result<Vec<f32>, String> {
            let lo = b * args.batch_size;
            let hi = (lo + args.batch_size).min(n);
            let mut rng = DiffusionRng::seed_from_u64(args.seed);
            rng.set_stream(b as u64);
            let x_t = match &init {
                Some(a) => {
                    let slice = a.slice(ndarray::s![lo..hi, .., .., ..]).to_owned();
                    Tensor::<B, 4>::from_data(TensorData::new(slice.into_raw_vec_and_offset().0, [hi - lo, channels, h, w]), &device)
                }
                None => diffusion_core::gaussian_noise::<B, 4>(&mut rng, [hi - lo, channels, h, w], &device),
            };
            let images = diffusion.sample_from(&*model, sampler, x_t, &mut rng, &mut |_| bar.inc(1)).map_err(|e| e.to_string())?;
            images.into_data().to_vec::<f32>().map_err(|e| format!("{e:?}"))
        },
    )?;
    let out = per_batch.concat();
    bar.finish_with_message(format!("{n} images in {:.1} s", start.elapsed().as_secs_f64()));

    let arr = Array4::from_shape_vec((n, channels, h, w), out)?;
    write_npy_atomic(&args.out, &arr)?;
    eprintln!("wrote {}", args.out.display());
    let first: Vec<f32> = (0..n).flat_map(|i| arr.slice(ndarray::s![i, 0, .., ..]).iter().copied().collect::<Vec<_>>()).collect();
    if let Some(dir) = &args.png_dir {
        std::fs::create_dir_all(dir)?;
        for i in 0..n {
            let img = lensing_diffusion::images::to_gray(&first[i * h * w..(i + 1) * h * w], h, w);
            lensing_diffusion::images::save_png_atomic(&img, &dir.join(format!("sample{:05}.png", i + 1)))?;
        }
        eprintln!("wrote {n} PNGs to {}", dir.display());
    }
    if let Some(grid) = &args.grid {
        let m = n.min(64);
        let cols = (m as f64).sqrt().ceil() as usize;
        lensing_diffusion::images::save_grid(&first[..m * h * w], m, h, w, cols, grid)?;
        eprintln!("wrote {}", grid.display());
    }
    Ok(())
}

fn sampler_label(s: Sampler) -> String {
    match s {
        Sampler::Ddpm => "DDPM (ancestral)".into(),
        Sampler::Ddim { steps, eta } => format!("DDIM {steps} steps, eta {eta}"),
        Sampler::DpmSolverPp2M { steps } => format!("DPM-Solver++(2M) {steps} steps"),
    }
}

/// Write an .npy next to its final name, then rename (never a half-written file).
fn write_npy_atomic(path: &Path, arr: &Array4<f32>) -> Result<(), Box<dyn std::error::Error>> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("out")));
    ndarray_npy::write_npy(&tmp, arr).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}
