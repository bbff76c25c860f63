//! `lensing-diffusion pipeline`.

use std::path::PathBuf;

use diffusion_core::SamplerKind;
use lensing_diffusion::backend::BackendKind;
use lensing_diffusion::config::Preset;
use lensing_diffusion::pipeline::{run_dir, run_pipeline, PipelineOptions, DEFAULT_TSTR_EPOCHS};
use lensing_diffusion::with_autodiff_backend;

use super::args::{count, minutes, BackendArgs, SamplerArgs, MAX_IMAGES, MAX_IMAGE_SIZE, MAX_STEPS};
use super::CmdResult;

/// Train a diffusion model on strong-lensing images, generate new ones, and measure how real
/// they look (FID, RKE, RRKE, KID, precision/recall on features of a ResNet-18 trained to tell
/// the three DeepLense classes apart), with the real-vs-real floor and a pure-noise baseline.
///
/// Writes runs/NAME/report.md (image grids, loss curve, metrics, timings, configuration),
/// runs/NAME/metrics.json and the training run in runs/NAME/train/. With no flags: 2,000
/// simulated Model I images at 32x32, a small U-Net trained for as many steps as fit 9 minutes
/// on the CPU, 600 images sampled with stochastic DDIM (eta 1) in 50 steps.
///
/// --conditional trains a class-conditional model on the three classes (no_sub, cdm, axion) and
/// adds per-class grids, per-class FID/KID, class consistency (the lensing classifier's accuracy
/// on generated images labelled with the class asked for, beside its accuracy on real ones), a
/// guidance-scale sweep (table and plot) and train-synthetic-test-real (the classifier recipe
/// trained on the generated images and, beside it, on as many real ones, both tested on the
/// held-out real images) to the report.
///
/// Examples:
///   lensing-diffusion pipeline
///   lensing-diffusion pipeline --conditional --name conditional
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run name: outputs go to runs/NAME/.
    #[arg(long, default_value = "pipeline")]
    pub(crate) name: String,
    /// Training images from disk (any layout lens-data reads) instead of the simulator.
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// Simulated training images (DeepLense Model I, three classes; at most 10,000,000).
    #[arg(long, default_value_t = 2000, value_parser = count(1, MAX_IMAGES))]
    pub(crate) train_images: usize,
    /// Held-out real images for evaluation (simulated with another seed, or the tail of --data;
    /// 2 to 10,000,000).
    #[arg(long, default_value_t = 1000, value_parser = count(2, MAX_IMAGES))]
    pub(crate) eval_images: usize,
    /// Images to generate (2 to 10,000,000) [default: 600; 300 with --conditional, whose guided
    /// sampling costs two model evaluations per step].
    #[arg(long, value_parser = count(2, MAX_IMAGES))]
    pub(crate) num_generated: Option<usize>,
    /// Simulated image size before resizing (the field of view stays 7.5 arcsec; 8 to 4096).
    #[arg(long, default_value_t = 150, value_parser = count(8, MAX_IMAGE_SIZE))]
    pub(crate) sim_num_pix: usize,
    /// Training preset: small (CPU) or deeplense (the original, GPU).
    #[arg(long, default_value = "small")]
    pub(crate) preset: Preset,
    /// Image size (overrides the preset; 8 to 4096).
    #[arg(long, value_parser = count(8, MAX_IMAGE_SIZE))]
    pub(crate) image_size: Option<usize>,
    /// Optimizer steps. Default: as many as fit --train-minutes, timed during the learning rate's
    /// warm-up; the report gives the count, and `--steps N` repeats that run exactly on any machine
    /// (1 to 10,000,000).
    #[arg(long, value_parser = count(1, 10_000_000))]
    pub(crate) steps: Option<usize>,
    /// Training time budget in minutes [default: 9; 5 with --conditional, whose guided sampling,
    /// sweep and TSTR take the rest]. Without --steps the run's length is fitted to it (the
    /// default job then takes about 13 minutes on 2 cores); with --steps it stops the run early
    /// if reached first.
    #[arg(long, value_parser = minutes)]
    pub(crate) train_minutes: Option<f64>,
    #[command(flatten)]
    pub(crate) sampler: SamplerArgs,
    /// Sampling steps (dpmpp / ddim; 1 to 100000).
    #[arg(long, default_value_t = 50, value_parser = count(1, MAX_STEPS))]
    pub(crate) sample_steps: usize,
    /// Images per sampling batch.
    #[arg(long, default_value_t = 100, value_parser = count(1, MAX_STEPS))]
    pub(crate) sample_batch: usize,
    /// Sampling batches run concurrently, one thread each (the images do not depend on it).
    /// Default: the number of cores on CPU backends, 1 on cuda.
    #[arg(long)]
    pub(crate) sample_threads: Option<usize>,
    /// Feature extractor weights (.bpk from train-classifier, or a torchvision .pth). Default:
    /// the 64x64 one shipped in assets/extractor/ (the job's 32x32 images are too far from the
    /// 128x128 one's inputs); with a non-default simulation size, one trained on first use and
    /// cached.
    #[arg(long)]
    pub(crate) extractor: Option<PathBuf>,
    /// Gaussian-kernel bandwidths for RKE / RRKE / Vendi.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    pub(crate) bandwidths: Vec<f64>,
    #[command(flatten)]
    pub(crate) backend: BackendArgs,
    /// Seed of everything random.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Train a class-conditional model (classifier-free guidance) and evaluate per class.
    #[arg(long)]
    pub(crate) conditional: bool,
    /// Conditional: guidance scale of the main sample.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) cond_scale: f64,
    /// Conditional: guidance scales of the sweep (comma-separated; empty to skip) [default: 1,3,5].
    #[arg(long, value_delimiter = ',')]
    pub(crate) guidance_sweep: Option<Vec<f64>>,
    /// Conditional: images generated per sweep point [default: 90].
    #[arg(long, value_parser = count(2, MAX_IMAGES))]
    pub(crate) sweep_images: Option<usize>,
    /// Conditional: epochs of each train-synthetic-test-real classifier (one trained on the
    /// generated images, one on as many real ones, at the training image size; 0 skips both).
    #[arg(long, default_value_t = DEFAULT_TSTR_EPOCHS, value_parser = count(0, MAX_STEPS))]
    pub(crate) tstr_epochs: usize,
    /// Bootstrap resamples behind the 95% intervals of FID and KID in the report (0 to 100000;
    /// 0: none). 50 add about 3 s at the default sizes (1,000 real and 600 generated
    /// rows of 512 features) on 2 cores shared with other builds; see `evaluate --help`.
    #[arg(long, default_value_t = 50, value_parser = count(0, MAX_STEPS))]
    pub(crate) bootstrap: usize,
}

impl Args {
    pub(crate) fn options(&self) -> Result<PipelineOptions, Box<dyn std::error::Error>> {
        let d = if self.conditional { PipelineOptions::conditional() } else { PipelineOptions::default() };
        Ok(PipelineOptions {
            out: run_dir(&self.name),
            data: self.data.clone(),
            train_images: self.train_images,
            eval_images: self.eval_images,
            num_generated: self.num_generated.unwrap_or(d.num_generated),
            sim_num_pix: self.sim_num_pix,
            preset: self.preset,
            image_size: self.image_size,
            steps: self.steps,
            train_minutes: self.train_minutes.unwrap_or(d.train_minutes),
            sampler: self.sampler.sampler(SamplerKind::Ddim, self.sample_steps, 1.0)?,
            sample_batch: self.sample_batch,
            sample_threads: self.sample_threads,
            extractor: self.extractor.clone(),
            bandwidths: self.bandwidths.clone(),
            backend: self.backend.backend,
            seed: self.seed,
            progress: true,
            conditional: self.conditional,
            cond_scale: self.cond_scale,
            guidance_sweep: self.guidance_sweep.clone().unwrap_or(d.guidance_sweep),
            sweep_images: self.sweep_images.unwrap_or(d.sweep_images),
            tstr_epochs: self.tstr_epochs,
            bootstrap: self.bootstrap,
        })
    }
}

fn go<B: unet::UnetAutodiffBackend>(device: B::Device, opts: &PipelineOptions) -> CmdResult {
    let o = run_pipeline::<B>(opts, &device)?;
    println!("{}", o.report.to_table());
    println!(
        "pure-noise baseline FID: {:.3}    generated FID: {:.3}    ratio {:.3} (target <= 0.2)",
        o.fid_noise,
        o.report.fid,
        o.report.fid / o.fid_noise
    );
    if let Some(b) = &o.between_classes {
        println!(
            "scale: FID between real classes (same sizes): cdm vs axion {:.3}, no_sub vs cdm {:.3}    generated is {}",
            b.cdm_vs_axion,
            b.no_sub_vs_cdm,
            if o.report.fid < b.cdm_vs_axion { "closer than cdm vs axion" } else { "farther than cdm vs axion" }
        );
    }
    if let Some(c) = &o.conditional {
        if let (Some(g), Some(r)) = (&c.consistency, &c.real_consistency) {
            println!(
                "class consistency: {:.1}% of generated images classified as asked (classifier on real images: {:.1}%)",
                g.accuracy * 100.0,
                r.accuracy * 100.0
            );
        }
        for p in &c.per_class {
            println!("  {:<8} FID {:.3}  KID {:.5}", p.class, p.fid, p.kid);
        }
        if let Some(t) = &c.tstr {
            println!(
                "train-synthetic-test-real: {:.1}% on real held-out images trained on {} generated, {:.1}% trained on {} \
                 real (chance {:.1}%)",
                t.tstr_accuracy * 100.0,
                t.n_train,
                t.trtr_accuracy * 100.0,
                t.n_train,
                t.chance() * 100.0
            );
        }
    }
    println!("report: {}  ({:.0} s in total)", o.report_path.display(), o.total_seconds);
    Ok(())
}

pub fn run(args: Args) -> CmdResult {
    let opts = args.options()?;
    args.backend.apply_precision()?;
    let backend: BackendKind = opts.backend;
    with_autodiff_backend!(backend, go(&opts))
}
