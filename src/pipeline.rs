//! The end-to-end job: simulate (or load) lensing images, train a DDPM, sample from its EMA
//! weights, evaluate with the lensing feature extractor and by physical statistics of the images
//! (Einstein radii, ring widths, multipoles, spectra), and write `report.md` and `metrics.json`
//! with image grids, plots, the loss curve, the real-vs-real floor and a pure-noise baseline.
//!
//! ```no_run
//! use burn::backend::{Autodiff, Flex};
//! use lensing_diffusion::pipeline::{run_pipeline, PipelineOptions};
//!
//! let opts = PipelineOptions { train_images: 300, eval_images: 150, num_generated: 100, steps: Some(50), ..Default::default() };
//! let outcome = run_pipeline::<Autodiff<Flex>>(&opts, &Default::default())?;
//! println!("FID {:.1} (noise baseline {:.1})", outcome.report.fid, outcome.fid_noise);
//! # Ok::<(), lensing_diffusion::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diffusion_core::{DiffusionRng, Sampler};
use gen_metrics::physics::PhysicsComparison;
use gen_metrics::{frechet_distance_from_features, BootstrapConfig, EvalConfig, EvaluationReport, FeatureExtractor};
use indicatif::{ProgressBar, ProgressStyle};
use lens_data::simulate::LensClass;
use lens_data::transform::Normalization;
use ndarray::{Array3, Axis};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::json;
use unet::UnetAutodiffBackend;

use crate::backend::BackendKind;
use crate::between_classes::BetweenClasses;
use crate::classifier::{heldout_accuracy, ExtractorRecipe};
use crate::conditional::{class_consistency, per_class_metrics, ClassConsistency, ClassMetrics, SweepPoint};
use crate::config::{Preset, TrainConfig};
use crate::error::Error;
use crate::run::{run, RunOptions, RunSummary, StopReason};
use crate::sample::{generate, Conditioning, SampleOptions};
use crate::trainer::Trainer;
use crate::tstr::{class_matched, train_synthetic_test_real, Labelled, Tstr};

/// Epochs of each train-synthetic-test-real arm by default: the fewest measured at which the
/// recipe learns the classes from 600 real 32x32 images (40-46% in two runs, chance 33%, where 4
/// epochs reached 36.5%), at about 2.2 minutes per arm on the loaded 2-core VM
/// (docs/PERFORMANCE.md).
pub const DEFAULT_TSTR_EPOCHS: usize = 8;

/// Mixed into `--seed` for the TSTR classifiers, so their initialisation and shuffles are a
/// stream of their own.
const TSTR_SEED_SALT: u64 = 0x7357_0C1A;

/// Everything the pipeline can be told (the `pipeline` command's flags).
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineOptions {
    /// Output folder (`runs/NAME` for the command).
    pub out: PathBuf,
    /// Training images from disk instead of the simulator; the held-out set is split off it.
    pub data: Option<PathBuf>,
    /// Simulated training images.
    pub train_images: usize,
    /// Held-out real images.
    pub eval_images: usize,
    /// Images to generate.
    pub num_generated: usize,
    /// Simulated image size before resizing.
    pub sim_num_pix: usize,
    /// Training preset.
    pub preset: Preset,
    /// Image size (overrides the preset).
    pub image_size: Option<usize>,
    /// Optimizer steps; `None` fits the run's length to `train_minutes` (see
    /// [`crate::run::fit_steps`]).
    pub steps: Option<usize>,
    /// Training time budget in minutes: the length of a fitted run, a cap on one with `steps`.
    pub train_minutes: f64,
    /// The sampler.
    pub sampler: Sampler,
    /// Images per sampling batch.
    pub sample_batch: usize,
    /// Sampling threads (`None`: the backend's default).
    pub sample_threads: Option<usize>,
    /// Feature extractor weights (`None`: the shipped 64x64 one, or one of its recipe trained for
    /// `sim_num_pix`).
    pub extractor: Option<PathBuf>,
    /// Bandwidths of RKE / RRKE / Vendi.
    pub bandwidths: Vec<f64>,
    /// The backend (recorded in the report; the caller picks the type).
    pub backend: BackendKind,
    /// Seed of everything random.
    pub seed: u64,
    /// Progress bars and stage lines on stderr.
    pub progress: bool,
    /// Train a class-conditional model on the data's classes and evaluate per class.
    pub conditional: bool,
    /// Conditional runs: the guidance scale of the main sample.
    pub cond_scale: f64,
    /// Conditional runs: guidance scales of the sweep (empty: no sweep).
    pub guidance_sweep: Vec<f64>,
    /// Conditional runs: images generated per sweep point.
    pub sweep_images: usize,
    /// Conditional runs: epochs of each train-synthetic-test-real arm (0: skip it).
    pub tstr_epochs: usize,
    /// Bootstrap resamples behind the FID and KID intervals (0: no intervals). 50 add about 3 s
    /// at the default sizes (docs/PERFORMANCE.md).
    pub bootstrap: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            out: PathBuf::from("runs/pipeline"),
            data: None,
            train_images: 2000,
            eval_images: 1000,
            num_generated: 600,
            sim_num_pix: 150,
            preset: Preset::Small,
            image_size: None,
            steps: None,
            train_minutes: 9.0,
            sampler: Sampler::Ddim { steps: 50, eta: 1.0 },
            sample_batch: 100,
            sample_threads: None,
            extractor: None,
            bandwidths: vec![8.0, 16.0, 32.0],
            backend: BackendKind::Flex,
            seed: 0,
            progress: true,
            conditional: false,
            cond_scale: 3.0,
            guidance_sweep: vec![1.0, 2.0, 3.0, 5.0],
            sweep_images: 300,
            tstr_epochs: DEFAULT_TSTR_EPOCHS,
            bootstrap: 50,
        }
    }
}

impl PipelineOptions {
    /// `pipeline --conditional`'s defaults: a class-conditional model and the same 15-minute
    /// budget on 2 cores as the unconditional job. Guided sampling evaluates the model twice per
    /// step, and the guidance sweep and train-synthetic-test-real come on top, so the training
    /// budget is 5 minutes and 300 images are generated (100 per class), 90 per sweep point.
    pub fn conditional() -> Self {
        Self {
            conditional: true,
            num_generated: 300,
            train_minutes: 5.0,
            guidance_sweep: vec![1.0, 3.0, 5.0],
            sweep_images: 90,
            ..Self::default()
        }
    }

    /// Check the settings; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let positive = [
            ("--train-images", self.train_images),
            ("--eval-images", self.eval_images),
            ("--num-generated", self.num_generated),
            ("--sample-batch", self.sample_batch),
            ("--sim-num-pix", self.sim_num_pix),
        ];
        if let Some((name, v)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::invalid(*name, v, "must be >= 1"));
        }
        if !(self.train_minutes.is_finite() && self.train_minutes > 0.0) {
            return Err(Error::invalid(
                "--train-minutes",
                self.train_minutes,
                "must be a finite number of minutes > 0",
            ));
        }
        if let Some(g) = std::iter::once(&self.cond_scale).chain(&self.guidance_sweep).find(|g| !g.is_finite()) {
            return Err(Error::invalid("--cond-scale / --guidance-sweep", g, "must be finite"));
        }
        if let Some(b) = self.bandwidths.iter().find(|b| !(b.is_finite() && **b > 0.0)) {
            return Err(Error::invalid("--bandwidths", b, "each must be finite and > 0"));
        }
        Ok(())
    }

    /// The training configuration these options make.
    pub fn train_config(&self) -> TrainConfig {
        let mut config = self.preset.config();
        config.seed = self.seed;
        if let Some(s) = self.image_size {
            config.image_size = s;
        }
        if let Some(s) = self.steps {
            config.total_steps = s;
        }
        config.sample_every = 0; // the pipeline samples once, at the end
        config.data_parallel = self.backend.training_shards(config.data_parallel);
        config
    }
}

/// Stage timings, in order.
#[derive(Debug, Clone, Default)]
pub struct Timings(pub Vec<(&'static str, f64)>);

impl Timings {
    fn time<T>(&mut self, what: &'static str, show: bool, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
        let t = Instant::now();
        if show {
            eprintln!("== {what}");
        }
        let r = f()?;
        let s = t.elapsed().as_secs_f64();
        if show {
            eprintln!("   {what}: {s:.1} s");
        }
        self.0.push((what, s));
        Ok(r)
    }
}

/// What a pipeline run produced (also written to `metrics.json` and `report.md`).
#[derive(Debug, Clone)]
pub struct PipelineOutcome {
    /// Metrics of generated vs held-out real features, with the real-vs-real floor.
    pub report: EvaluationReport,
    /// FID of pure noise (the sampler's start) against the real set.
    pub fid_noise: f64,
    /// The training run.
    pub summary: RunSummary,
    /// Stage timings.
    pub timings: Timings,
    /// Wall time in seconds.
    pub total_seconds: f64,
    /// The training configuration.
    pub config: TrainConfig,
    /// Training images.
    pub n_train: usize,
    /// Held-out real images.
    pub n_real: usize,
    /// `report.md`.
    pub report_path: PathBuf,
    /// Physical statistics of generated vs held-out real images (plots in `physics/`).
    pub physics: PhysicsComparison,
    /// The physics plots written, relative to the output folder.
    pub physics_plots: Vec<String>,
    /// Class-conditional runs: per-class metrics, class consistency, the guidance sweep.
    pub conditional: Option<ConditionalOutcome>,
    /// The FID scale: two real classes at the same set sizes (simulated data only).
    pub between_classes: Option<BetweenClasses>,
}

/// What a class-conditional pipeline run measured per class.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConditionalOutcome {
    /// The classes, in label order.
    pub class_names: Vec<String>,
    /// Guidance scale of the main sample.
    pub cond_scale: f64,
    /// Each generated class against the same real class.
    pub per_class: Vec<ClassMetrics>,
    /// The classifier on the generated images, labelled with the class asked for.
    pub consistency: Option<ClassConsistency>,
    /// The classifier on the held-out real images (its real accuracy).
    pub real_consistency: Option<ClassConsistency>,
    /// Why consistency could not be measured (classes the classifier does not know).
    pub consistency_note: Option<String>,
    /// FID and class consistency against the guidance scale.
    pub sweep: Vec<SweepPoint>,
    /// Images per sweep point.
    pub sweep_images: usize,
    /// Guided sampling speed, images per second (main sample).
    pub guided_images_per_second: f64,
    /// Train-synthetic-test-real on the main sample (`None`: skipped, `tstr_epochs` = 0).
    pub tstr: Option<Tstr>,
}

/// The class asked for of each of `n` generated images: the `k` classes in turn.
fn asked_labels(n: usize, k: usize) -> Vec<usize> {
    (0..n).map(|i| i % k.max(1)).collect()
}

/// Run the whole job into `opts.out` with the backend `B` (see the module docs).
pub fn run_pipeline<B: UnetAutodiffBackend>(
    opts: &PipelineOptions,
    device: &B::Device,
) -> Result<PipelineOutcome, Error> {
    opts.validate()?;
    let start = Instant::now();
    let out = opts.out.clone();
    std::fs::create_dir_all(&out).map_err(Error::io(&out))?;
    let show = opts.progress;
    let mut timings = Timings::default();
    let mut config = opts.train_config();
    let size = config.image_size;
    opts.sampler.validate(config.diffusion.timesteps)?;

    // 1. Data: training images and a disjoint held-out real set.
    let (train, real) = timings.time("data", show, || match &opts.data {
        Some(path) => {
            let (set, warnings) = crate::data::load_resized(path, size, Normalization::MinMax, true)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            Ok(set.split(opts.eval_images as f64 / set.len() as f64, opts.seed)?)
        }
        None => {
            if show {
                eprintln!(
                    "   simulating {} training + {} held-out Model I images",
                    opts.train_images, opts.eval_images
                );
            }
            let train =
                crate::data::simulate_resized(opts.train_images, opts.sim_num_pix, size, &LensClass::ALL, opts.seed)?;
            let real = crate::data::simulate_resized(
                opts.eval_images,
                opts.sim_num_pix,
                size,
                &LensClass::ALL,
                opts.seed + 1_000_003,
            )?;
            Ok((train, real))
        }
    })?;

    if opts.conditional {
        match (&train.labels, train.class_names.is_empty()) {
            (Some(_), false) => {
                config.unet.num_classes = Some(train.class_names.len());
                config.class_names = train.class_names.clone();
            }
            _ => {
                return Err(Error::invalid(
                    "--conditional",
                    "unlabelled data",
                    "needs labels: the simulator, or the layout ROOT/{train,val}/CLASS/*",
                ))
            }
        }
        // TRTR needs as many real training images of each class as will be generated: known
        // now, so a shortfall stops the run before training rather than after it.
        if opts.tstr_epochs > 0 {
            let asked = asked_labels(opts.num_generated, config.class_names.len());
            class_matched(train.labels.as_deref().unwrap_or_default(), &asked, &config.class_names).map_err(|e| {
                Error::invalid(
                    "--num-generated",
                    opts.num_generated,
                    format!("{e}; lower it, raise --train-images or skip TSTR with --tstr-epochs 0"),
                )
            })?;
        }
    }

    // 2. Feature extractor (trained on lensing images; shipped or cached).
    let extractor = timings.time("feature extractor", show, || {
        // The 64x64 extractor, not the 128x128 default of `evaluate`: the job's images are 32x32,
        // and 4x upsampled they are far outside what the 128x128 one was trained on (measured
        // on this job: generated vs real 246 against cdm vs axion 12.9, pure noise 1.6e6;
        // docs/REALISM.md). Until an extractor matched to the job's size is shipped.
        let recipe = ExtractorRecipe { num_pix: opts.sim_num_pix, ..ExtractorRecipe::legacy_s64() };
        crate::evaluate::load_extractor_for::<B>(opts.extractor.as_deref(), &recipe, device, show)
    })?;

    // 3. Train. A rerun under the same name replaces the previous run's training folder
    // (mixing two runs' checkpoints and loss logs would misreport both).
    let train_dir = out.join("train");
    if train_dir.is_dir() {
        std::fs::remove_dir_all(&train_dir).map_err(Error::io(&train_dir))?;
    }
    let mut trainer = Trainer::<B>::new(config.clone(), device)?;
    if show {
        let length = match opts.steps {
            Some(n) => {
                format!("{n} steps, stopped early by the {:.1}-minute budget if it comes first", opts.train_minutes)
            }
            None => format!("as many steps as fit {:.1} min (timed during the warm-up)", opts.train_minutes),
        };
        eprintln!(
            "   U-Net {} ({} parameters), {} images {size}x{size}, {length}",
            config.unet.describe(),
            config.unet.num_params(),
            train.len(),
        );
    }
    let summary = timings.time("train", show, || {
        let ro = RunOptions {
            out_dir: &train_dir,
            time_budget: Some(Duration::from_secs_f64(opts.train_minutes * 60.0)),
            interrupt: None,
            progress: show,
            fit_to_budget: opts.steps.is_none(),
        };
        Ok(run(&mut trainer, &train, &ro)?)
    })?;

    // 4. Sample from the EMA weights (class-conditional: the classes in turn, guided).
    let k = config.unet.num_classes.unwrap_or(0);
    // Guidance doubles each model call (conditional + null as one batch); halving the batch keeps
    // the call at --sample-batch images, which ran 1.4-2x faster per image than 2x as large on
    // the 2-core VM (docs/PERFORMANCE.md).
    let batch_size = if k > 0 { opts.sample_batch.div_ceil(2) } else { opts.sample_batch };
    let so = SampleOptions {
        sampler: opts.sampler,
        batch_size,
        workers: opts.backend.sample_workers(opts.sample_threads),
        seed: opts.seed ^ 0x5A3D_1E5E,
    };
    let sample_n = |n: usize, cond_scale: f64, what: &str| -> Result<(Array3<f32>, Vec<usize>, f64), Error> {
        let t = Instant::now();
        let evals = opts.sampler.model_evaluations(config.diffusion.timesteps) * n.div_ceil(batch_size);
        let pb = if show { ProgressBar::new(evals as u64) } else { ProgressBar::hidden() };
        pb.set_style(
            ProgressStyle::with_template(&format!(
                "   {what} {{wide_bar}} {{pos}}/{{len}} steps  {{per_sec}}  ETA {{eta}}"
            ))
            .expect("valid template"),
        );
        let labels: Vec<usize> = if k > 0 { asked_labels(n, k) } else { vec![] };
        let cond = (k > 0)
            .then(|| Conditioning { labels: labels.clone(), guidance: diffusion_core::Guidance::new(cond_scale, 0.7) });
        let c = config.unet.channels;
        let images =
            generate(trainer.ema(), trainer.diffusion(), [n, c, size, size], None, cond.as_ref(), &so, &|| pb.inc(1))?;
        pb.finish_and_clear();
        // The first channel of each image.
        Ok((images.index_axis_move(Axis(1), 0), labels, n as f64 / t.elapsed().as_secs_f64().max(1e-9)))
    };
    let (generated, generated_labels, sample_rate) =
        timings.time("sample", show, || sample_n(opts.num_generated, opts.cond_scale, "sample"))?;
    let noise = noise_baseline(opts.num_generated, size, opts.seed);

    // 5. Evaluate.
    let feats = |name: &str, images: &Array3<f32>| crate::evaluate::embed(&extractor, images.view(), 100, name, show);
    let (report, fid_noise, real_f, gen_f) = timings.time("evaluate", show, || {
        let real_f = feats("real", &real.images)?;
        let gen_f = feats("generated", &generated)?;
        let noise_f = feats("noise", &noise)?;
        let bootstrap = (opts.bootstrap > 0).then(|| BootstrapConfig {
            resamples: opts.bootstrap,
            seed: opts.seed,
            ..BootstrapConfig::default()
        });
        let cfg =
            EvalConfig { bandwidths: opts.bandwidths.clone(), seed: opts.seed, bootstrap, ..EvalConfig::default() };
        let report = gen_metrics::evaluate_features(real_f.view(), gen_f.view(), None, &cfg)?;
        let fid_noise = frechet_distance_from_features(real_f.view(), noise_f.view())?.value;
        Ok((report, fid_noise, real_f, gen_f))
    })?;

    // 5b. Class-conditional: per class, class consistency, the guidance sweep.
    let mut conditional = if k > 0 {
        Some(timings.time("per-class evaluation", show, || {
            let names = config.class_names.clone();
            let real_labels = real.labels.clone().unwrap_or_default();
            let per_class =
                per_class_metrics(real_f.view(), &real_labels, gen_f.view(), &generated_labels, &names, opts.seed)?;
            let (consistency, real_consistency, note) = match crate::conditional::classifier_indices(&extractor, &names)
            {
                Ok(_) => (
                    Some(class_consistency(&extractor, generated.view(), &generated_labels, &names)?),
                    Some(class_consistency(&extractor, real.images.view(), &real_labels, &names)?),
                    None,
                ),
                Err(e) => (None, None, Some(e.to_string())),
            };
            let mut sweep = Vec::new();
            if consistency.is_some() {
                for &g in &opts.guidance_sweep {
                    let (imgs, labels, _) = sample_n(opts.sweep_images, g, &format!("sweep {g:>4}"))?;
                    let f = feats("sweep", &imgs)?;
                    let fid = frechet_distance_from_features(real_f.view(), f.view())?.value;
                    let acc = class_consistency(&extractor, imgs.view(), &labels, &names)?.accuracy;
                    if show {
                        eprintln!("   cond_scale {g}: FID {fid:.2}, class consistency {:.1}%", acc * 100.0);
                    }
                    sweep.push(SweepPoint { cond_scale: g, fid, consistency: acc });
                }
            }
            let per_row = 8;
            let v: Vec<f32> = generated.iter().copied().collect();
            crate::images::save_class_grid(
                &v,
                &generated_labels,
                k,
                size,
                size,
                per_row,
                &out.join("generated_by_class.png"),
            )?;
            let v: Vec<f32> = real.images.iter().copied().collect();
            crate::images::save_class_grid(&v, &real_labels, k, size, size, per_row, &out.join("real_by_class.png"))?;
            if !sweep.is_empty() {
                let acc = real_consistency.as_ref().map_or(f64::NAN, |c| c.accuracy);
                crate::conditional::sweep_plot(&sweep, acc, &out.join("guidance_sweep.png"))
                    .map_err(|e| Error::invalid("guidance sweep plot", e, "could not be written"))?;
            }
            Ok(ConditionalOutcome {
                class_names: names,
                cond_scale: opts.cond_scale,
                per_class,
                consistency,
                real_consistency,
                consistency_note: note,
                sweep,
                sweep_images: opts.sweep_images,
                guided_images_per_second: sample_rate,
                tstr: None,
            })
        })?)
    } else {
        None
    };

    // 5c. Train-synthetic-test-real: the classifier recipe on the main sample and on as many
    // real training images, both tested on the held-out real set, at the training image size
    // (the generated images' own; a larger input would only upsample them).
    if let (Some(c), true) = (conditional.as_mut(), opts.tstr_epochs > 0) {
        let names = c.class_names.clone();
        c.tstr = Some(timings.time("train-synthetic-test-real", show, || {
            let train_cfg = gen_metrics::TrainConfig {
                epochs: opts.tstr_epochs,
                seed: opts.seed ^ TSTR_SEED_SALT,
                ..ExtractorRecipe::legacy_s64().train
            };
            let pb = if show { ProgressBar::new(0) } else { ProgressBar::hidden() };
            pb.set_style(
                ProgressStyle::with_template(
                    "   TSTR + TRTR classifiers {wide_bar} {pos}/{len} steps  {msg}  ETA {eta}",
                )
                .expect("valid template"),
            );
            let (train_labels, real_labels) =
                (train.labels.clone().unwrap_or_default(), real.labels.clone().unwrap_or_default());
            let t = train_synthetic_test_real::<B>(
                Labelled { images: generated.view(), labels: &generated_labels },
                Labelled { images: train.images.view(), labels: &train_labels },
                Labelled { images: real.images.view(), labels: &real_labels },
                &names,
                &train_cfg,
                size,
                device,
                |step, total, loss| {
                    pb.set_length(total as u64);
                    pb.set_position(step as u64);
                    pb.set_message(format!("loss {loss:.3}"));
                },
            )?;
            pb.finish_and_clear();
            if show {
                eprintln!(
                    "   TSTR {:.1}%, TRTR {:.1}% (chance {:.1}%)",
                    t.tstr_accuracy * 100.0,
                    t.trtr_accuracy * 100.0,
                    t.chance() * 100.0
                );
            }
            Ok(t)
        })?);
    }

    // 6. Physical statistics of the images themselves (at the training size).
    // 5c. The scale of FID: two real classes at the same set sizes, image size and extractor.
    let between_classes = match opts.data {
        None => Some(timings.time("between classes", show, || {
            crate::between_classes::fid_between_classes(
                &extractor,
                real.len(),
                generated.dim().0,
                opts.sim_num_pix,
                size,
                opts.seed ^ 0xB7C1_A55E,
                show,
            )
        })?),
        Some(_) => None,
    };

    let (physics, physics_plots) = timings.time("physics", show, || {
        let (cmp, files) =
            crate::evaluate::physics(real.images.view(), generated.view(), opts.seed, Some(&out.join("physics")))?;
        Ok((cmp, files.into_iter().map(|f| format!("physics/{f}")).collect::<Vec<_>>()))
    })?;

    // 7. Report.
    for (name, images) in
        [("real_grid.png", &real.images), ("generated_grid.png", &generated), ("noise_grid.png", &noise)]
    {
        let n = images.dim().0.min(64);
        let v: Vec<f32> = images.slice(ndarray::s![..n, .., ..]).iter().copied().collect();
        crate::images::save_grid(&v, n, size, size, 8, &out.join(name))?;
    }
    if train_dir.join("loss.png").is_file() {
        let bytes = std::fs::read(train_dir.join("loss.png")).map_err(Error::io(&train_dir))?;
        atomic_file::write(&out.join("loss.png"), &bytes).map_err(Error::io(&out))?;
    }
    let outcome = PipelineOutcome {
        report,
        fid_noise,
        summary,
        timings,
        total_seconds: start.elapsed().as_secs_f64(),
        config,
        n_train: train.len(),
        n_real: real.len(),
        report_path: out.join("report.md"),
        physics,
        physics_plots,
        conditional,
        between_classes,
    };
    let metrics = metrics_json(&outcome, opts, &extractor);
    let json_path = out.join("metrics.json");
    atomic_file::write(&json_path, serde_json::to_string_pretty(&metrics).expect("serialisable").as_bytes())
        .map_err(Error::io(&json_path))?;
    atomic_file::write(&outcome.report_path, report_markdown(&outcome, opts, &extractor).as_bytes())
        .map_err(Error::io(&outcome.report_path))?;
    Ok(outcome)
}

/// How the run's length came about, for the report.
fn steps_note(s: &RunSummary, minutes: f64) -> String {
    match (s.reason, s.fitted_steps) {
        (StopReason::TimeBudget, Some(n)) => {
            format!(
                " (of {n} fitted to the {minutes}-minute budget: the machine slowed down and the budget stopped it)"
            )
        }
        (StopReason::TimeBudget, None) => format!(" (stopped by the {minutes}-minute budget)"),
        (_, Some(n)) => format!(" (fitted to the {minutes}-minute budget; `--steps {n}` repeats the run exactly)"),
        _ => String::new(),
    }
}

/// What the sampler starts from, shown as an image: `N(0, 1)` mapped to `[0, 1]` and clipped.
pub fn noise_baseline(n: usize, size: usize, seed: u64) -> Array3<f32> {
    let mut rng = DiffusionRng::seed_from_u64(seed ^ 0x0150_15E0);
    Array3::from_shape_fn((n, size, size), |_| {
        let z: f32 = StandardNormal.sample(&mut rng);
        ((z + 1.0) * 0.5).clamp(0.0, 1.0)
    })
}

fn metrics_json<B: burn::tensor::backend::Backend>(
    o: &PipelineOutcome,
    opts: &PipelineOptions,
    ex: &FeatureExtractor<B>,
) -> serde_json::Value {
    let (r, s) = (&o.report, &o.summary);
    let floor = r.noise_floor.as_ref();
    json!({
        "fid": r.fid,
        "fid_noise_baseline": o.fid_noise,
        "fid_real_floor": floor.map(|f| f.metrics.fid),
        "fid_between_classes": o.between_classes,
        "fid_ratio_to_noise": r.fid / o.fid_noise,
        "rke_generated": r.rke_generated,
        "rke_real": r.rke_real,
        "rrke": r.rrke,
        "rrke_real_floor": floor.map(|f| &f.metrics.rrke),
        "vendi_generated": r.vendi_generated,
        "kid": r.kid,
        "fid_ci": r.fid_ci,
        "kid_ci": r.kid_ci,
        "precision": r.precision,
        "recall": r.recall,
        "density": r.density,
        "coverage": r.coverage,
        "n_real": r.n_real,
        "n_generated": r.n_generated,
        "dim": r.dim,
        "train_seconds": s.train_seconds,
        "train_steps": s.steps,
        "train_steps_fitted": s.fitted_steps,
        "train_stop": format!("{:?}", s.reason),
        "train_images_per_second": s.images_per_second,
        "final_loss": s.final_loss,
        "timings_seconds": o.timings.0.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "total_seconds": o.total_seconds,
        "extractor": ex.info,
        "config": o.config,
        "sampler": opts.sampler.kind().to_string(),
        "sample_steps": opts.sampler.model_evaluations(o.config.diffusion.timesteps),
        "backend": opts.backend.to_string(),
        // The U-Net's convolutions (`--precision`); the metrics always run in f32.
        "precision": precision_name(),
        "physics": o.physics,
        "conditional": o.conditional,
    })
}

/// The process-wide precision of the U-Net's convolutions, as `--precision` names it.
fn precision_name() -> &'static str {
    match unet::conv_precision() {
        unet::ConvPrecision::F32 => "f32",
        unet::ConvPrecision::Bf16 => "bf16",
    }
}

fn report_markdown<B: burn::tensor::backend::Backend>(
    o: &PipelineOutcome,
    opts: &PipelineOptions,
    ex: &FeatureExtractor<B>,
) -> String {
    let (r, s, config) = (&o.report, &o.summary, &o.config);
    let floor = r.noise_floor.as_ref();
    let ratio = r.fid / o.fid_noise;
    let name = opts.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut m = String::new();
    m.push_str(&format!("# Pipeline report: `{name}`\n\n"));
    m.push_str(&format!(
        "{} training images ({}x{}), U-Net {} ({} parameters), {} steps{} in {:.0} s ({:.1} images/s, final loss {:.4}); \
         {} images generated with {}; backend {}{}.\n\n",
        o.n_train,
        config.image_size,
        config.image_size,
        config.unet.describe(),
        config.unet.num_params(),
        s.steps,
        steps_note(s, opts.train_minutes),
        s.train_seconds,
        s.images_per_second,
        s.final_loss,
        r.n_generated,
        opts.sampler.describe(),
        opts.backend,
        if precision_name() == "bf16" { ", U-Net convolutions in bf16 with f32 sums (metrics in f32)" } else { "" }
    ));
    m.push_str("| held-out real | generated (EMA weights) | pure noise (the sampler's start) |\n|---|---|---|\n");
    m.push_str("| ![real](real_grid.png) | ![generated](generated_grid.png) | ![noise](noise_grid.png) |\n\n");
    m.push_str("## Metrics\n\n");
    m.push_str(&format!(
        "Features: 512-d pooled features of a ResNet-18 trained to classify DeepLense lensing images{}.\n\n",
        heldout_accuracy(ex)
            .map(|a| format!(
                " (no_sub / cdm / axion, held-out accuracy {:.1}%; inputs resized to {}x{})",
                a * 100.0,
                ex.config.image_size,
                ex.config.image_size
            ))
            .unwrap_or_default()
    ));
    m.push_str(&format!(
        "**FID generated vs real: {:.3}**{}; pure-noise baseline {:.3}; ratio {:.3} ({} the 0.2 target); real-vs-real floor {}.\n\n",
        r.fid,
        r.fid_ci.as_ref().map(|i| format!(", {}", i.describe(3))).unwrap_or_default(),
        o.fid_noise,
        ratio,
        if ratio <= 0.2 { "meets" } else { "misses" },
        floor.map(|f| format!("{:.3} (two halves of the real set)", f.metrics.fid)).unwrap_or_else(|| "n/a".into())
    ));
    if let Some(b) = &o.between_classes {
        m.push_str(&format!(
            "Scale: FID between two *real* classes, {} vs {} simulated images at {size}x{size} on the same features: \
             **CDM subhalos vs axion vortices {:.3}**, no substructure vs CDM {:.3}. The generated set is {} the real \
             one than CDM is from axion{}.\n\n",
            b.n_first,
            b.n_second,
            b.cdm_vs_axion,
            b.no_sub_vs_cdm,
            if r.fid < b.cdm_vs_axion { "closer to" } else { "farther from" },
            if r.fid < b.cdm_vs_axion { "" } else { ": too far for a study of substructure" },
            size = config.image_size,
        ));
    }
    m.push_str("| metric | generated vs real | real vs real (floor) |\n|---|---|---|\n");
    let fl = |f: &dyn Fn(&gen_metrics::TwoSample) -> String| floor.map(|x| f(&x.metrics)).unwrap_or_else(|| "-".into());
    let ci = |i: &Option<gen_metrics::Interval>, digits: usize| {
        i.as_ref().map(|i| format!(", {}", i.describe(digits))).unwrap_or_default()
    };
    m.push_str(&format!("| FID | {:.4}{} | {} |\n", r.fid, ci(&r.fid_ci, 3), fl(&|x| format!("{:.4}", x.fid))));
    // The std over subsets is shown only where the subsets differ; with one subset holding both
    // whole sets it is 0 by construction.
    let kid = |k: &gen_metrics::Kid| {
        if k.whole_sets {
            format!("{:.5}", k.mean)
        } else {
            format!("{:.5} ± {:.5} (std over subsets)", k.mean, k.std)
        }
    };
    m.push_str(&format!("| KID | {}{} | {} |\n", kid(&r.kid), ci(&r.kid_ci, 5), fl(&|x| kid(&x.kid))));
    m.push_str(&format!("| precision | {:.3} | {} |\n", r.precision, fl(&|x| format!("{:.3}", x.precision))));
    m.push_str(&format!("| recall | {:.3} | {} |\n", r.recall, fl(&|x| format!("{:.3}", x.recall))));
    m.push_str(&format!("| density | {:.3} | {} |\n", r.density, fl(&|x| format!("{:.3}", x.density))));
    m.push_str(&format!("| coverage | {:.3} | {} |\n", r.coverage, fl(&|x| format!("{:.3}", x.coverage))));
    for (k, v) in &r.rrke {
        m.push_str(&format!(
            "| RRKE (bandwidth {k}) | {:.4} | {} |\n",
            v,
            fl(&|x| x.rrke.get(k).map(|v| format!("{v:.4}")).unwrap_or_default())
        ));
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
    if let Some(i) = &r.fid_ci {
        m.push_str(&format!(
            "\nIntervals: both sets resampled with replacement {} times; each is an interval for the value expected at \
             these set sizes, so compare runs evaluated with equal sizes. The bootstrap puts the FID's small-sample bias \
             at {:+.3}{}.\n",
            i.resamples,
            i.bias,
            if r.kid.whole_sets { "" } else { "; the KID interval is around the all-pairs value, which the subsets' mean estimates" }
        ));
    }
    m.push_str(&format!("\n{} real images, {} generated, feature dimension {}.\n", o.n_real, r.n_generated, r.dim));
    m.push_str("\n## Physical statistics\n\n");
    m.push_str(&format!(
        "Measured on the images themselves at {0}x{0} (min-max normalised, centred): the distance between generated and \
         held-out real images next to the same distance between two halves of the real set (the floor); a distance near its \
         floor is as close as real images are to each other. Radii and widths in pixels; what each statistic is: \
         crates/gen-metrics/ARCHITECTURE.md.\n\n",
        config.image_size
    ));
    m.push_str(&o.physics.to_table());
    m.push('\n');
    for f in &o.physics_plots {
        let stem = f.trim_start_matches("physics/").trim_end_matches(".png");
        m.push_str(&format!("![{stem}]({f}) "));
    }
    match &o.conditional {
        Some(c) => m.push_str(&conditional_markdown(c)),
        None => m.push_str("\n\nPer class: the generated images carry no class (an unconditional model; see `pipeline --conditional`).\n"),
    }
    m.push_str("\n## Training\n\n![loss](loss.png)\n\nThe training run (checkpoints, `loss.csv`, `config.json`) is in `train/`.\n\n");
    m.push_str("## Timings\n\n| stage | seconds |\n|---|---|\n");
    for (k, v) in &o.timings.0 {
        m.push_str(&format!("| {k} | {v:.1} |\n"));
    }
    m.push_str(&format!("| **total** | {:.1} |\n\n", o.total_seconds));
    m.push_str("## Configuration\n\n```json\n");
    m.push_str(&serde_json::to_string_pretty(config).unwrap_or_default());
    m.push_str("\n```\n");
    m
}

fn conditional_markdown(c: &ConditionalOutcome) -> String {
    let mut m = String::new();
    m.push_str("\n\n## Class-conditional generation\n\n");
    m.push_str(&format!(
        "One class-conditional model, asked for each class in turn, guided with scale {} (rescaled_phi 0.7); {:.1} images/s \
         (two forward passes per step, run as one batch). One row per class, top to bottom: {}.\n\n",
        c.cond_scale,
        c.guided_images_per_second,
        c.class_names.join(", ")
    ));
    m.push_str("| held-out real, by class | generated, by class asked for |\n|---|---|\n");
    m.push_str("| ![real by class](real_by_class.png) | ![generated by class](generated_by_class.png) |\n\n");
    m.push_str("| class | real | generated | FID vs same real class | KID |\n|---|---|---|---|---|\n");
    for p in &c.per_class {
        m.push_str(&format!("| {} | {} | {} | {:.3} | {:.5} |\n", p.class, p.n_real, p.n_generated, p.fid, p.kid));
    }
    match (&c.consistency, &c.real_consistency) {
        (Some(g), Some(r)) => {
            m.push_str(&format!(
                "\n**Class consistency: the lensing classifier labels {:.1}% of the generated images with the class that was \
                 asked for**, against {:.1}% on held-out real images (its real accuracy; chance is {:.1}%).\n\n",
                g.accuracy * 100.0,
                r.accuracy * 100.0,
                100.0 / c.class_names.len().max(1) as f64
            ));
            m.push_str(&confusion_table("generated (rows: class asked for)", &c.class_names, &g.confusion));
            m.push_str(&confusion_table("real (rows: true class)", &c.class_names, &r.confusion));
        }
        _ => m.push_str(&format!(
            "\nClass consistency not measured: {}\n",
            c.consistency_note.as_deref().unwrap_or("no classifier")
        )),
    }
    if !c.sweep.is_empty() {
        m.push_str(&format!(
            "### Guidance sweep\n\n{} images per scale, same seed.\n\n| cond_scale | FID | class consistency |\n|---|---|---|\n",
            c.sweep_images
        ));
        for p in &c.sweep {
            m.push_str(&format!("| {} | {:.3} | {:.1}% |\n", p.cond_scale, p.fid, p.consistency * 100.0));
        }
        m.push_str("\n![guidance sweep](guidance_sweep.png)\n");
    }
    match &c.tstr {
        Some(t) => m.push_str(&tstr_markdown(t)),
        None => m.push_str("\n### Train-synthetic-test-real\n\nSkipped (`--tstr-epochs 0`).\n"),
    }
    m
}

/// `confusion[row][predicted]` as a markdown table under a one-line title.
fn confusion_table(title: &str, class_names: &[String], confusion: &[Vec<usize>]) -> String {
    let mut m = format!("Confusion matrix, {title}; columns: predicted.\n\n| | {} |\n|---|", class_names.join(" | "));
    m.push_str(&"---|".repeat(class_names.len()));
    m.push('\n');
    for (name, row) in class_names.iter().zip(confusion) {
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        m.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    m.push('\n');
    m
}

fn tstr_markdown(t: &Tstr) -> String {
    let mut m = String::from("\n### Train-synthetic-test-real\n\n");
    m.push_str(&format!(
        "The classifier recipe (ResNet-18 from scratch, Adam lr {}, batch {}, {} epochs, {s}x{s} input) trained twice and \
         tested on the same {} held-out real images: on the {} generated images of the main sample, labelled with the class \
         asked for (TSTR), and on {} real training images with as many of each class (TRTR).\n\n",
        t.lr,
        t.batch_size,
        t.epochs,
        t.n_test,
        t.n_train,
        t.n_train,
        s = t.image_size
    ));
    m.push_str("| trained on | images | accuracy on real held-out | seconds |\n|---|---|---|---|\n");
    m.push_str(&format!(
        "| generated (TSTR) | {} | **{:.1}%** | {:.0} |\n",
        t.n_train,
        t.tstr_accuracy * 100.0,
        t.tstr_seconds
    ));
    m.push_str(&format!(
        "| real (TRTR) | {} | **{:.1}%** | {:.0} |\n",
        t.n_train,
        t.trtr_accuracy * 100.0,
        t.trtr_seconds
    ));
    m.push_str(&format!(
        "| chance | | {:.1}% | |\n\nSampling error of each accuracy: ±{:.1} points (two binomial standard errors on the {} \
         test images; the classifiers' own training noise is not included). {}\n\n",
        t.chance() * 100.0,
        100.0 * t.two_standard_errors(t.trtr_accuracy),
        t.n_test,
        t.reading()
    ));
    m.push_str(&confusion_table("trained on generated (rows: true class)", &t.class_names, &t.tstr_confusion));
    m.push_str(&confusion_table("trained on real (rows: true class)", &t.class_names, &t.trtr_confusion));
    m
}

/// `runs/NAME`, the pipeline's output folder for a run name.
pub fn run_dir(name: &str) -> PathBuf {
    Path::new("runs").join(name)
}
