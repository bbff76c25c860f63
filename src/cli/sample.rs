//! `lensing-diffusion sample`.

use std::path::PathBuf;
use std::time::Instant;

use diffusion_core::{GaussianDiffusion, Guidance, SamplerKind};
use indicatif::{ProgressBar, ProgressStyle};
use lensing_diffusion::sample::{generate, load_model, Conditioning, SampleOptions};
use lensing_diffusion::with_backend;
use ndarray::{Array4, ArrayD, Axis, Ix4};
use unet::{infer_config, UnetBackend, UnetConfig};

use super::args::{
    count, finite, unit_interval, BackendArgs, CheckpointArgs, ModelSettingsArgs, SamplerArgs, UnetArgs, MAX_IMAGES,
    MAX_STEPS,
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
/// Class-conditional models (`train --conditional`, or a `classifier_free_guidance.Unet` of
/// denoising-diffusion-pytorch) take one class per image: --classes 0,2,1 (indices or names), or
/// --class NAME --num K; without either, the classes in turn. Guidance runs the conditional and
/// the unconditional prediction as one batch (--cond-scale, --rescaled-phi, --cfg-plus-plus).
/// The labels are written beside --out as NAME.labels.npy (i64 [N]); --grid then shows one row
/// per class.
///
/// Examples:
///   lensing-diffusion sample --checkpoint runs/train/checkpoints/step-0001500/ema.bpk --num 64 --out s.npy --grid grid.png
///   lensing-diffusion sample --checkpoint diffusion_model.pth --sampler dpmpp --steps 20 --out s.npy
///   lensing-diffusion sample --checkpoint runs/cond/checkpoints/step-0001500/ema.bpk --class axion --num 32 --cond-scale 3 --out axion.npy
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
    /// Class of each image (class-conditional models): indices or the checkpoint's class names,
    /// comma-separated; sets the number of images.
    #[arg(long, value_delimiter = ',', conflicts_with = "class")]
    pub(crate) classes: Option<Vec<String>>,
    /// One class (index or name) for all --num images (class-conditional models).
    #[arg(long)]
    pub(crate) class: Option<String>,
    /// Classifier-free guidance scale: 1 = the conditional model alone (one forward pass per
    /// step), larger pushes harder towards the class [default: 6, the reference's].
    #[arg(long, default_value_t = 6.0, value_parser = finite)]
    pub(crate) cond_scale: f64,
    /// Rescale the guided prediction's std towards the conditional one's (0 = off, 1 = fully)
    /// [default: 0.7, the reference's].
    #[arg(long, default_value_t = 0.7, value_parser = unit_interval)]
    pub(crate) rescaled_phi: f64,
    /// CFG++: re-noise with the unconditional prediction's noise (Chung et al. 2024).
    #[arg(long)]
    pub(crate) cfg_plus_plus: bool,
    #[command(flatten)]
    pub(crate) backend: BackendArgs,
}

/// A class given as an index or one of `names` (case-insensitive).
pub(crate) fn parse_class(token: &str, names: &[String]) -> Result<usize, String> {
    let t = token.trim();
    if let Ok(i) = t.parse::<usize>() {
        return if i < names.len() {
            Ok(i)
        } else {
            Err(format!("class {i} out of range: the model has {} classes ({})", names.len(), names.join(", ")))
        };
    }
    names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(t))
        .ok_or_else(|| format!("unknown class `{t}`; the model's classes are {}", names.join(", ")))
}

/// `NAME.npy` -> `NAME.labels.npy` beside it.
pub(crate) fn labels_path(out: &std::path::Path) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "samples".into());
    out.with_file_name(format!("{stem}.labels.npy"))
}

pub fn run(args: Args) -> CmdResult {
    args.backend.apply_precision()?;
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
    let sampler = args.sampler.sampler(SamplerKind::Ddim, args.steps, 0.0)?;
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
    // Classes: one label per image for a class-conditional model.
    let num_classes = loaded.model.config().num_classes;
    let names: Vec<String> = match (&loaded.card.as_ref().and_then(|c| c.class_names.clone()), num_classes) {
        (Some(n), Some(k)) if n.len() == k => n.clone(),
        (_, Some(k)) => (0..k).map(|i| i.to_string()).collect(),
        (_, None) => vec![],
    };
    let mut count = args.num;
    let labels: Option<Vec<usize>> = match (num_classes, &args.classes, &args.class) {
        (None, None, None) => None,
        (None, _, _) => return Err("--classes/--class: this model is unconditional; it takes no classes".into()),
        (Some(_), Some(list), _) => {
            let l = list.iter().map(|t| parse_class(t, &names)).collect::<Result<Vec<_>, _>>()?;
            count = l.len();
            Some(l)
        }
        (Some(_), None, Some(one)) => Some(vec![parse_class(one, &names)?; count]),
        (Some(k), None, None) => {
            eprintln!("note: class-conditional model; no --classes given, sampling the {k} classes in turn");
            Some((0..count).map(|i| i % k).collect())
        }
    };
    let s = resolved.image_size;
    let shape = [count, channels, s, s];
    let [n, _, h, w] = init.as_ref().map(|a| [a.dim().0, a.dim().1, a.dim().2, a.dim().3]).unwrap_or(shape);
    if let Some(l) = &labels {
        if l.len() != n {
            return Err(format!("{} classes given for {n} images of --init-noise", l.len()).into());
        }
    }
    let cond = labels.map(|labels| Conditioning {
        labels,
        guidance: Guidance {
            cond_scale: args.cond_scale,
            rescaled_phi: args.rescaled_phi,
            remove_parallel: true,
            cfg_plus_plus: args.cfg_plus_plus,
        },
    });
    if let Some(c) = &cond {
        eprintln!(
            "guidance: scale {}, rescaled_phi {}{}",
            c.guidance.cond_scale,
            c.guidance.rescaled_phi,
            if c.guidance.cfg_plus_plus { ", CFG++" } else { "" }
        );
    }
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
    let arr =
        generate(&loaded.model, &diffusion, shape, init.as_ref().map(|a| a.view()), cond.as_ref(), &opts, &|| {
            bar.inc(1)
        })?;
    bar.finish_with_message(format!("{n} images in {:.1} s", start.elapsed().as_secs_f64()));

    let mut npy = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(&arr, &mut npy)?;
    atomic_file::write(&args.out, &npy).map_err(|e| format!("{}: {e}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    if let Some(c) = &cond {
        let labels = ndarray::Array1::from_iter(c.labels.iter().map(|&l| l as i64));
        let mut bytes = Vec::new();
        ndarray_npy::WriteNpyExt::write_npy(&labels, &mut bytes)?;
        let p = labels_path(&args.out);
        atomic_file::write(&p, &bytes).map_err(|e| format!("{}: {e}", p.display()))?;
        eprintln!("wrote {} (class of each image: {})", p.display(), names.join(", "));
    }
    let first = arr.index_axis(Axis(1), 0);
    let first: Vec<f32> = first.iter().copied().collect();
    if let Some(dir) = &args.png_dir {
        for i in 0..n {
            let img = lensing_diffusion::images::to_gray(&first[i * h * w..(i + 1) * h * w], h, w);
            lensing_diffusion::images::save_png_atomic(&img, &dir.join(format!("sample{:05}.png", i + 1)))?;
        }
        eprintln!("wrote {n} PNGs to {}", dir.display());
    }
    if let (Some(grid), Some(c)) = (&args.grid, &cond) {
        let k = names.len();
        lensing_diffusion::images::save_class_grid(&first, &c.labels, k, h, w, 8, grid)?;
        eprintln!("wrote {} (one row per class, top to bottom: {})", grid.display(), names.join(", "));
    } else if let Some(grid) = &args.grid {
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
