//! `lensing-diffusion sample`.

use std::path::PathBuf;
use std::time::Instant;

use diffusion_core::{GaussianDiffusion, SamplerKind};
use indicatif::{ProgressBar, ProgressStyle};
use lensing_diffusion::sample::{generate, load_model, SampleOptions};
use lensing_diffusion::with_backend;
use ndarray::{Array4, ArrayD, Axis, Ix4};
use unet::{infer_config, UnetBackend, UnetConfig};

use super::args::{
    count, BackendArgs, CheckpointArgs, ModelSettingsArgs, SamplerArgs, UnetArgs, MAX_IMAGES, MAX_STEPS,
};
use super::CmdResult;

/// Sample images from a denoising diffusion model.
///
/// Reads our checkpoints (checkpoints/step-N/ema.bpk or model.bpk, which carry their image size
/// and diffusion settings, so no other flag is needed), safetensors exported by this project,
/// and denoising-diffusion-pytorch checkpoints (a bare `Unet.state_dict()` such as the original
/// `diffusion_model.pth`, a `GaussianDiffusion.state_dict()`, or a Trainer checkpoint with its
/// `model` or `ema` weights; these carry no settings: the flags' defaults are the library's,
/// 128x128, T 1000, sigmoid, pred_v). A flag that contradicts the checkpoint wins, with a warning.
///
/// Writes f32 [N,C,H,W] in [0,1] to --out (what denoising-diffusion-pytorch returns).
///
/// Examples:
///   lensing-diffusion sample --checkpoint runs/train/checkpoints/step-0001500/ema.bpk --num 64 --out s.npy --grid grid.png
///   lensing-diffusion sample --checkpoint diffusion_model.pth --sampler dpmpp --steps 20 --out s.npy
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub(crate) checkpoint: CheckpointArgs,
    #[command(flatten)]
    pub(crate) unet: UnetArgs,
    #[command(flatten)]
    pub(crate) settings: ModelSettingsArgs,
    #[command(flatten)]
    pub(crate) sampler: SamplerArgs,
    /// Model evaluations for ddim / dpmpp (1 to 100000).
    #[arg(long, default_value_t = 250, value_parser = count(1, MAX_STEPS))]
    pub(crate) steps: usize,
    /// Number of images (ignored with --init-noise; 1 to 10,000,000).
    #[arg(long, default_value_t = 16, value_parser = count(1, MAX_IMAGES))]
    pub(crate) num: usize,
    /// Images per batch (batch i is seeded by i, so this changes which images a seed gives).
    /// On the CPU, 4 per batch (one batch per core) sampled the DeepLense preset fastest
    /// (docs/performance-history.md).
    #[arg(long, default_value_t = 16, value_parser = count(1, MAX_STEPS))]
    pub(crate) batch_size: usize,
    /// Batches sampled concurrently, one thread each (the images do not depend on it).
    /// Default: the number of cores on CPU backends, 1 on cuda.
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Seed of the starting noise and the sampler's noise (batch i uses stream i).
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Starting noise as f32 [N,C,H,W] .npy (standard normal); sets N, C, H, W.
    #[arg(long)]
    pub(crate) init_noise: Option<PathBuf>,
    /// Output .npy (f32 [N,C,H,W] in [0,1]; written atomically).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Also write each image as a PNG into this folder.
    #[arg(long)]
    pub(crate) png_dir: Option<PathBuf>,
    /// Also write a grid PNG of (up to 64) images.
    #[arg(long)]
    pub(crate) grid: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) backend: BackendArgs,
}

pub fn run(args: Args) -> CmdResult {
    with_backend!(args.backend.backend, sample_with(&args))
}

fn sample_with<B: UnetBackend>(device: B::Device, args: &Args) -> CmdResult {
    // Architecture: explicit flags win over what the checkpoint says; a mismatch is reported by
    // the loader, naming the config that fits.
    let config: Option<UnetConfig> = args.unet.any().then(|| {
        let ck = &args.checkpoint;
        let base =
            infer_config(&ck.checkpoint, ck.weights.unwrap_or_default()).unwrap_or_else(|_| UnetConfig::deeplense());
        args.unet.apply(&base)
    });
    let ck = &args.checkpoint;
    let loaded = load_model::<B>(&ck.checkpoint, ck.weights, config.as_ref(), &device)?;
    let resolved = args.settings.resolve(loaded.card.as_ref());
    if loaded.card.is_none() {
        eprintln!(
            "note: {} carries no image size or diffusion settings; using {s}x{s}, {}",
            ck.checkpoint.display(),
            describe(&resolved.diffusion),
            s = resolved.image_size
        );
    }
    let diffusion = GaussianDiffusion::new(resolved.diffusion.clone())?;
    let sampler = args.sampler.sampler(SamplerKind::Ddim, args.steps)?;
    let channels = loaded.model.config().channels;
    let init: Option<Array4<f32>> = match &args.init_noise {
        Some(p) => {
            // The header's sizes are checked against the file before anything is allocated.
            let len = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?.len();
            let mut f = std::io::BufReader::new(std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?);
            gen_metrics::features::read_npy_header(&mut f, len).map_err(|e| format!("{}: {e}", p.display()))?;
            let a: ArrayD<f32> =
                ndarray_npy::read_npy(p).map_err(|e| format!("{}: {e} (expected f32 [N,C,H,W])", p.display()))?;
            let a = a
                .into_dimensionality::<Ix4>()
                .map_err(|_| format!("{}: expected 4 dimensions [N,C,H,W]", p.display()))?;
            Some(a.as_standard_layout().into_owned())
        }
        None => None,
    };
    let s = resolved.image_size;
    let shape = [args.num, channels, s, s];
    let [n, _, h, w] = init.as_ref().map(|a| [a.dim().0, a.dim().1, a.dim().2, a.dim().3]).unwrap_or(shape);
    eprintln!(
        "{} | {} | {} | {n} images of {channels}x{h}x{w}",
        loaded.model.config().describe(),
        describe(&resolved.diffusion),
        sampler.describe()
    );
    let evals = sampler.model_evaluations(resolved.diffusion.timesteps);
    let batches = n.div_ceil(args.batch_size.max(1));
    let bar = ProgressBar::new((evals * batches) as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} sample [{elapsed_precise}] {wide_bar} {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}",
    )?);
    bar.set_message(format!("{batches} batches"));
    let start = Instant::now();
    let opts = SampleOptions {
        sampler,
        batch_size: args.batch_size,
        workers: args.backend.backend.sample_workers(args.threads),
        seed: args.seed,
    };
    let arr = generate(&loaded.model, &diffusion, shape, init.as_ref().map(|a| a.view()), &opts, &|| bar.inc(1))?;
    bar.finish_with_message(format!("{n} images in {:.1} s", start.elapsed().as_secs_f64()));

    let mut npy = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(&arr, &mut npy)?;
    atomic_file::write(&args.out, &npy).map_err(|e| format!("{}: {e}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    let first = arr.index_axis(Axis(1), 0);
    let first: Vec<f32> = first.iter().copied().collect();
    if let Some(dir) = &args.png_dir {
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

fn describe(d: &diffusion_core::DiffusionConfig) -> String {
    format!("T {}, {} schedule, {}", d.timesteps, d.schedule, d.objective)
}
