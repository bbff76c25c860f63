//! The end-to-end DeepLense diffusion pipeline: simulate (or load) lensing images, train a DDPM,
//! sample, evaluate with a lensing-trained feature extractor, and write a report.
//!
//! ```text
//! cargo run --release --example pipeline                 # the README's main command (~15 min on 2 cores)
//! cargo run --release --example pipeline -- --help
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use lensing_diffusion::unet::UnetAutodiffBackend;
use clap::Parser;
use diffusion_core::{DiffusionRng, Sampler};
use gen_metrics::train::ExtractorRecipe;
use lensing_diffusion::extractor::heldout_accuracy;
use gen_metrics::{frechet_distance_from_features, EvalConfig, EvaluationReport, FeatureExtractor};
use indicatif::{ProgressBar, ProgressStyle};
use lens_data::simulate::LensClass;
use lens_data::transform::Normalization;
use lensing_diffusion::backend::BackendKind;
use lensing_diffusion::run::{run, RunOptions};
use lensing_diffusion::train::{TrainConfig, Trainer};
use ndarray::{Array2, Array3};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::json;

/// Train a diffusion model on strong-lensing images, generate new ones, and measure how real
/// they look (FID, RKE, RRKE, KID, precision/recall on features of a ResNet-18 trained to tell
/// the three DeepLense classes apart), with the real-vs-real floor and a pure-noise baseline.
/// Writes runs/NAME/report.md, metrics.json, image grids and the training run.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Run name: outputs go to runs/NAME/.
    #[arg(long, default_value = "pipeline")]
    name: String,
    /// Training images from disk (any layout lens-data reads) instead of the simulator.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Simulated training images (DeepLense Model I, three classes).
    #[arg(long, default_value_t = 2000)]
    train_images: usize,
    /// Held-out real images for evaluation (simulated with another seed, or the tail of --data).
    #[arg(long, default_value_t = 1000)]
    eval_images: usize,
    /// Images to generate.
    #[arg(long, default_value_t = 600)]
    num_generated: usize,
    /// Simulated image size before resizing.
    #[arg(long, default_value_t = 150)]
    sim_num_pix: usize,
    /// Training preset: small (CPU) or deeplense (the original, GPU).
    #[arg(long, default_value = "small")]
    preset: String,
    /// Image size (overrides the preset).
    #[arg(long)]
    image_size: Option<usize>,
    /// Optimizer steps (overrides the preset).
    #[arg(long)]
    steps: Option<usize>,
    /// Training time budget in minutes (training stops at the budget or the steps, first reached).
    #[arg(long, default_value_t = 10.0)]
    train_minutes: f64,
    /// Sampler: dpmpp, ddim or ddpm.
    #[arg(long, default_value = "dpmpp")]
    sampler: String,
    /// Sampling steps (dpmpp / ddim).
    #[arg(long, default_value_t = 10)]
    sample_steps: usize,
    /// Images per sampling batch.
    #[arg(long, default_value_t = 100)]
    sample_batch: usize,
    /// Sampling batches run concurrently, one thread each (the images do not depend on it).
    /// Default: the number of cores on CPU backends, 1 on cuda.
    #[arg(long)]
    sample_threads: Option<usize>,
    /// Feature extractor weights (.bpk from train-classifier, or a torchvision .pth). Default:
    /// the one shipped in assets/extractor/ (held-out accuracy 76.5%); with a non-default
    /// simulation size, one trained on first use and cached in runs/.
    #[arg(long)]
    extractor: Option<PathBuf>,
    /// Gaussian-kernel bandwidths for RKE / RRKE / Vendi.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    bandwidths: Vec<f64>,
    /// Compute backend: flex, ndarray or cuda.
    #[arg(long, default_value = "flex")]
    backend: BackendKind,
    /// Seed of everything random.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() {
    lensing_diffusion::alloc::tune_allocator();
    let args = Args::parse();
    let result = match args.backend {
        BackendKind::Flex => pipeline::<Autodiff<burn::backend::Flex>>(Default::default(), &args),
        BackendKind::NdArray => pipeline::<Autodiff<burn::backend::NdArray>>(Default::default(), &args),
        #[cfg(feature = "cuda-untuned")]
        BackendKind::Cuda => pipeline::<Autodiff<burn::backend::Cuda>>(Default::default(), &args),
        #[cfg(not(feature = "cuda-untuned"))]
        BackendKind::Cuda => unreachable!("rejected when parsing"),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Timings(Vec<(&'static str, f64)>);

impl Timings {
    fn time<T>(&mut self, what: &'static str, f: impl FnOnce() -> Res<T>) -> Res<T> {
        let t = Instant::now();
        eprintln!("== {what}");
        let r = f()?;
        let s = t.elapsed().as_secs_f64();
        eprintln!("   {what}: {s:.1} s");
        self.0.push((what, s));
        Ok(r)
    }
}

fn pipeline<B: UnetAutodiffBackend>(device: B::Device, args: &Args) -> Res<()> {
    let start = Instant::now();
    let out = PathBuf::from("runs").join(&args.name);
    std::fs::create_dir_all(&out)?;
    let mut timings = Timings(vec![]);

    let mut config = match args.preset.as_str() {
        "small" => TrainConfig::small(),
        "deeplense" => TrainConfig::deeplense(),
        other => return Err(format!("unknown preset `{other}` (small, deeplense)").into()),
    };
    config.seed = args.seed;
    if let Some(s) = args.image_size {
        config.image_size = s;
    }
    if let Some(s) = args.steps {
        config.total_steps = s;
    }
    config.sample_every = 0; // the pipeline samples once, at the end
    config.data_parallel = args.backend.training_shards(config.data_parallel);
    let size = config.image_size;
    let sampler = match args.sampler.as_str() {
        "dpmpp" => Sampler::DpmSolverPp2M { steps: args.sample_steps },
        "ddim" => Sampler::Ddim { steps: args.sample_steps, eta: 0.0 },
        "ddpm" => Sampler::Ddpm,
        other => return Err(format!("unknown sampler `{other}` (dpmpp, ddim, ddpm)").into()),
    };
    sampler.validate(config.diffusion.timesteps)?;

    // 1. Data: training images and a disjoint held-out real set.
    let (train, real) = timings.time("data", || {
        match &args.data {
            Some(path) => {
                let (set, warnings) = lensing_diffusion::data::load_resized(path, size, Normalization::MinMax, true)?;
                for w in warnings {
                    eprintln!("warning: {w}");
                }
                let (train, real) = set.split(args.eval_images as f64 / set.len() as f64, args.seed)?;
                Ok((train, real))
            }
            None => {
                eprintln!("   simulating {} training + {} held-out Model I images", args.train_images, args.eval_images);
                let train = lensing_diffusion::data::simulate_resized(args.train_images, args.sim_num_pix, size, &LensClass::ALL, args.seed)?;
                let real = lensing_diffusion::data::simulate_resized(args.eval_images, args.sim_num_pix, size, &LensClass::ALL, args.seed + 1_000_003)?;
                Ok((train, real))
            }
        }
    })?;

    // 2. Feature extractor (trained on lensing images; cached).
    let extractor = timings.time("feature extractor", || obtain_extractor::<B>(args, &device))?;

    // 3. Train.
    let train_dir = out.join("train");
    let mut trainer = Trainer::<B>::new(config.clone(), &device)?;
    eprintln!(
        "   U-Net {} ({} parameters), {} images {size}x{size}, up to {} steps or {:.1} min",
        config.unet.describe(),
        config.unet.num_params(),
        train.len(),
        config.total_steps,
        args.train_minutes
    );
    let summary = timings.time("train", || {
        let opts = RunOptions { out_dir: &train_dir, time_budget: Some(Duration::from_secs_f64(args.train_minutes * 60.0)), interrupt: None, progress: true };
        Ok(run(&mut trainer, &train, &opts)?)
    })?;

    // 4. Sample from the EMA weights.
    let sample_workers = args.backend.sample_workers(args.sample_threads);
    let generated = timings.time("sample", || generate::<B>(&trainer, sampler, args.num_generated, args.sample_batch, args.seed, sample_workers))?;
    let noise = noise_baseline(args.num_generated, size, args.seed);

    // 5. Evaluate.
    let (report, fid_noise) = timings.time("evaluate", || {
        let feats = |name: &str, images: &Array3<f32>| -> Res<Array2<f64>> {
            let bar = ProgressBar::new(images.dim().0 as u64);
            bar.set_style(ProgressStyle::with_template(&format!("   features {name:>9} {{wide_bar}} {{pos}}/{{len}}"))?);
            let images = to_size(images, extractor.config.image_size);
            let mut done = 0;
            let f = extractor.extract(images.view(), 100, &Default::default(), |n| {
                done += n;
                bar.set_position(done as u64)
            })?;
            bar.finish_and_clear();
            Ok(f)
        };
        let real_f = feats("real", &real.images)?;
        let gen_f = feats("generated", &generated)?;
        let noise_f = feats("noise", &noise)?;
        let cfg = EvalConfig { bandwidths: args.bandwidths.clone(), seed: args.seed, ..EvalConfig::default() };
        let report = gen_metrics::evaluate_features(real_f.view(), gen_f.view(), None, &cfg)?;
        let fid_noise = frechet_distance_from_features(real_f.view(), noise_f.view())?.value;
        Ok((report, fid_noise))
    })?;

    // 6. Report.
    let save_grid = |name: &str, images: &Array3<f32>| -> Res<()> {
        let n = images.dim().0.min(64);
        let v: Vec<f32> = images.slice(ndarray::s![..n, .., ..]).iter().copied().collect();
        lensing_diffusion::images::save_grid(&v, n, size, size, 8, &out.join(name))?;
        Ok(())
    };
    save_grid("real_grid.png", &real.images)?;
    save_grid("generated_grid.png", &generated)?;
    save_grid("noise_grid.png", &noise)?;
    if train_dir.join("loss.png").is_file() {
        std::fs::copy(train_dir.join("loss.png"), out.join("loss.png"))?;
    }
    let total = start.elapsed().as_secs_f64();
    let outcome = Outcome {
        r: &report,
        fid_noise,
        s: &summary,
        t: &timings,
        total,
        ex: &extractor,
        args,
        config: &config,
        n_train: train.len(),
        n_real: real.len(),
    };
    let metrics = metrics_json(&outcome);
    write_atomic(&out.join("metrics.json"), serde_json::to_string_pretty(&metrics)?.as_bytes())?;
    let md = report_markdown(&outcome);
    write_atomic(&out.join("report.md"), md.as_bytes())?;
    println!("{}", report.to_table());
    println!("pure-noise baseline FID: {fid_noise:.3}    generated FID: {:.3}    ratio {:.3} (target <= 0.2)", report.fid, report.fid / fid_noise);
    println!("report: {}  ({total:.0} s in total)", out.join("report.md").display());
    Ok(())
}

/// Load the extractor given with --extractor, or the shipped one, or train and cache it.
fn obtain_extractor<B: AutodiffBackend>(args: &Args, device: &B::Device) -> Res<FeatureExtractor<B::InnerBackend>> {
    if let Some(p) = &args.extractor {
        return Ok(FeatureExtractor::load(p, device)?);
    }
    let recipe = ExtractorRecipe { num_pix: args.sim_num_pix, ..ExtractorRecipe::default() };
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("   training the lensing classifier {wide_bar} {pos}/{len} steps  {msg}  ETA {eta}")?);
    let (ex, path) = lensing_diffusion::extractor::obtain_extractor::<B>(&recipe, Path::new("runs"), device, |step, total, loss| {
        bar.set_length(total as u64);
        bar.set_position(step as u64);
        bar.set_message(format!("loss {loss:.3}"));
    })?;
    bar.finish_and_clear();
    eprintln!("   extractor {}", path.display());
    if let Some(acc) = heldout_accuracy(&ex) {
        eprintln!("   extractor held-out accuracy: {:.1}%", acc * 100.0);
    }
    Ok(ex)
}

/// Resize images to the extractor's input size (antialiased bilinear), the same way for the
/// real, generated and noise sets.
fn to_size(images: &Array3<f32>, size: usize) -> Array3<f32> {
    let (n, h, w) = images.dim();
    if (h, w) == (size, size) {
        return images.clone();
    }
    let r = lens_data::resize::Resizer::new((h, w), (size, size));
    let mut out = Array3::<f32>::zeros((n, size, size));
    for i in 0..n {
        let img = images.index_axis(ndarray::Axis(0), i).mapv(|v| v as f64);
        out.index_axis_mut(ndarray::Axis(0), i).assign(&r.resize(img.view()));
    }
    out
}

fn generate<B: UnetAutodiffBackend>(
    trainer: &Trainer<B>,
    sampler: Sampler,
    n: usize,
    batch: usize,
    seed: u64,
    workers: usize,
) -> Res<Array3<f32>> {
    let c = trainer.config();
    let s = c.image_size;
    let batch = batch.max(1);
    let evals = sampler.model_evaluations(c.diffusion.timesteps);
    let batches = n.div_ceil(batch);
    let bar = ProgressBar::new((evals * batches) as u64);
    bar.set_style(ProgressStyle::with_template("   sample {wide_bar} {pos}/{len} steps  {per_sec}  ETA {eta}")?);
    // Batches are independent (batch b is seeded by b), so they run on `workers` threads, each
    // with its own copy of the EMA weights; the images equal those of a sequential run.
    let per_batch = lensing_diffusion::parallel::map_in_threads(
        batches,
        workers,
        |_| trainer.ema().clone(),
        |model, b| -> Result<Vec<f32>, String> {
            let device = Default::default();
            let m = batch.min(n - b * batch);
            let mut rng = DiffusionRng::seed_from_u64(seed ^ 0x5A3D_1E5E);
            rng.set_stream(b as u64);
            let x_t = diffusion_core::gaussian_noise::<B::InnerBackend, 4>(&mut rng, [m, c.unet.channels, s, s], &device);
            let images =
                trainer.diffusion().sample_from(&*model, sampler, x_t, &mut rng, &mut |_| bar.inc(1)).map_err(|e| e.to_string())?;
            let v: Vec<f32> = images.into_data().to_vec().map_err(|e| format!("{e:?}"))?;
            // First channel of each image.
            let per = c.unet.channels * s * s;
            Ok((0..m).flat_map(|i| v[i * per..i * per + s * s].iter().copied()).collect())
        },
    )?;
    bar.finish_and_clear();
    Ok(Array3::from_shape_vec((n, s, s), per_batch.concat())?)
}

/// What the sampler starts from, shown as an image: `N(0, 1)` mapped to `[0, 1]` and clipped.
fn noise_baseline(n: usize, size: usize, seed: u64) -> Array3<f32> {
    let mut rng = DiffusionRng::seed_from_u64(seed ^ 0x0150_15E0);
    Array3::from_shape_fn((n, size, size), |_| {
        let z: f32 = StandardNormal.sample(&mut rng);
        ((z + 1.0) * 0.5).clamp(0.0, 1.0)
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Res<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// What `metrics.json` and `report.md` are written from.
struct Outcome<'a, B: burn::tensor::backend::Backend> {
    r: &'a EvaluationReport,
    fid_noise: f64,
    s: &'a lensing_diffusion::run::RunSummary,
    t: &'a Timings,
    total: f64,
    ex: &'a FeatureExtractor<B>,
    args: &'a Args,
    config: &'a TrainConfig,
    n_train: usize,
    n_real: usize,
}

fn metrics_json<B: burn::tensor::backend::Backend>(o: &Outcome<'_, B>) -> serde_json::Value {
    let Outcome { r, fid_noise, s, t, total, ex, args, config, .. } = *o;
    let floor = r.noise_floor.as_ref();
    json!({
        "fid": r.fid,
        "fid_noise_baseline": fid_noise,
        "fid_real_floor": floor.map(|f| f.metrics.fid),
        "fid_ratio_to_noise": r.fid / fid_noise,
        "rke_generated": r.rke_generated,
        "rke_real": r.rke_real,
        "rrke": r.rrke,
        "rrke_real_floor": floor.map(|f| &f.metrics.rrke),
        "vendi_generated": r.vendi_generated,
        "kid": r.kid,
        "precision": r.precision,
        "recall": r.recall,
        "density": r.density,
        "coverage": r.coverage,
        "n_real": r.n_real,
        "n_generated": r.n_generated,
        "dim": r.dim,
        "train_seconds": s.train_seconds,
        "train_steps": s.steps,
        "train_images_per_second": s.images_per_second,
        "final_loss": s.final_loss,
        "timings_seconds": t.0.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "total_seconds": total,
        "extractor": ex.info,
        "config": config,
        "sampler": args.sampler,
        "sample_steps": args.sample_steps,
        "backend": args.backend.to_string(),
    })
}

fn report_markdown<B: burn::tensor::backend::Backend>(o: &Outcome<'_, B>) -> String {
    let Outcome { r, fid_noise, s, t, total, ex, args, config, n_train, n_real } = *o;
    let floor = r.noise_floor.as_ref();
    let ratio = r.fid / fid_noise;
    let mut m = String::new();
    m.push_str(&format!("# Pipeline report: `{}`\n\n", args.name));
    m.push_str(&format!(
        "{} training images ({}x{}), U-Net {} ({} parameters), {} steps in {:.0} s ({:.1} images/s, final loss {:.4}); \
         {} images generated with {}; backend {}.\n\n",
        n_train,
        config.image_size,
        config.image_size,
        config.unet.describe(),
        config.unet.num_params(),
        s.steps,
        s.train_seconds,
        s.images_per_second,
        s.final_loss,
        r.n_generated,
        match args.sampler.as_str() {
            "dpmpp" => format!("DPM-Solver++(2M), {} steps", args.sample_steps),
            "ddim" => format!("DDIM, {} steps", args.sample_steps),
            _ => "ancestral DDPM".to_string(),
        },
        args.backend
    ));
    m.push_str("| held-out real | generated (EMA weights) | pure noise (the sampler's start) |\n|---|---|---|\n");
    m.push_str("| ![real](real_grid.png) | ![generated](generated_grid.png) | ![noise](noise_grid.png) |\n\n");
    m.push_str("## Metrics\n\n");
    m.push_str(&format!(
        "Features: 512-d pooled features of a ResNet-18 trained to classify DeepLense lensing images{}.\n\n",
        heldout_accuracy(ex).map(|a| format!(" (no_sub / cdm / axion, held-out accuracy {:.1}%; inputs resized to {}x{})", a * 100.0, ex.config.image_size, ex.config.image_size)).unwrap_or_default()
    ));
    m.push_str(&format!(
        "**FID generated vs real: {:.3}**; pure-noise baseline {:.3}; ratio {:.3} ({} the 0.2 target); real-vs-real floor {}.\n\n",
        r.fid,
        fid_noise,
        ratio,
        if ratio <= 0.2 { "meets" } else { "misses" },
        floor.map(|f| format!("{:.3} (two halves of the real set)", f.metrics.fid)).unwrap_or_else(|| "n/a".into())
    ));
    m.push_str("| metric | generated vs real | real vs real (floor) |\n|---|---|---|\n");
    let fl = |f: &dyn Fn(&gen_metrics::TwoSample) -> String| floor.map(|x| f(&x.metrics)).unwrap_or_else(|| "-".into());
    m.push_str(&format!("| FID | {:.4} | {} |\n", r.fid, fl(&|x| format!("{:.4}", x.fid))));
    m.push_str(&format!("| KID (mean ± std) | {:.5} ± {:.5} | {} |\n", r.kid.mean, r.kid.std, fl(&|x| format!("{:.5} ± {:.5}", x.kid.mean, x.kid.std))));
    m.push_str(&format!("| precision | {:.3} | {} |\n", r.precision, fl(&|x| format!("{:.3}", x.precision))));
    m.push_str(&format!("| recall | {:.3} | {} |\n", r.recall, fl(&|x| format!("{:.3}", x.recall))));
    m.push_str(&format!("| density | {:.3} | {} |\n", r.density, fl(&|x| format!("{:.3}", x.density))));
    m.push_str(&format!("| coverage | {:.3} | {} |\n", r.coverage, fl(&|x| format!("{:.3}", x.coverage))));
    for (k, v) in &r.rrke {
        m.push_str(&format!("| RRKE (bandwidth {k}) | {:.4} | {} |\n", v, fl(&|x| x.rrke.get(k).map(|v| format!("{v:.4}")).unwrap_or_default())));
    }
    m.push_str("\n| bandwidth | RKE real | RKE generated | Vendi generated |\n|---|---|---|---|\n");
    for (k, v) in &r.rke_real {
        m.push_str(&format!(
            "| {k} | {:.3} | {:.3} | {:.3} |\n",
            v,
            r.rke_generated.get(k).copied().unwrap_or(f64::NAN),
            r.vendi_generated.get(k).copied().unwrap_or(f64::NAN)
        ));
    }
    if let Some(w) = &r.fid_warning {
        m.push_str(&format!("\nNote: {w}\n"));
    }
    m.push_str(&format!("\n{} real images, {} generated, feature dimension {}.\n", n_real, r.n_generated, r.dim));
    m.push_str("\n## Training\n\n![loss](loss.png)\n\nThe training run (checkpoints, `loss.csv`, `config.json`) is in `train/`.\n\n");
    m.push_str("## Timings\n\n| stage | seconds |\n|---|---|\n");
    for (k, v) in &t.0 {
        m.push_str(&format!("| {k} | {v:.1} |\n"));
    }
    m.push_str(&format!("| **total** | {total:.1} |\n\n"));
    m.push_str("## Configuration\n\n```json\n");
    m.push_str(&serde_json::to_string_pretty(config).unwrap_or_default());
    m.push_str("\n```\n");
    m
}
