//! DDPM training: AdamW, global-norm gradient clipping, EMA of weights, learning-rate warm-up and
//! cosine decay, gradient accumulation, atomic checkpoints and exact resume.
//!
//! Every random choice comes from `TrainConfig::seed`: the data order and augmentation of epoch
//! `e` from `(seed, e)`, the timesteps and noise of step `s` from `(seed, s)`. A run resumed from a
//! checkpoint therefore continues exactly as the uninterrupted run would have.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use diffusion_core::{DiffusionConfig, DiffusionError, DiffusionRng, GaussianDiffusion, LossWeighting, Sampler};
use lens_data::dataset::{BatchConfig, ImageSet};
use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use unet::{Unet, UnetAutodiffBackend, UnetConfig, UnetError};

/// Errors of the training loop. Each names the file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An invalid configuration value.
    #[error("invalid training configuration: `{field}` = {value}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value, formatted.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The loss became NaN or infinite.
    #[error("the loss became non-finite ({loss}) at step {step}; training stopped. The last good checkpoint is {last_checkpoint}")]
    NonFiniteLoss {
        /// Optimizer step (1-based) at which it happened.
        step: usize,
        /// The value.
        loss: f32,
        /// The last checkpoint written, if any.
        last_checkpoint: String,
    },
    /// A checkpoint could not be read (missing, corrupt or from another configuration).
    #[error("cannot resume from checkpoint {path}: {reason}")]
    Resume {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A diffusion error (bad schedule, shapes...).
    #[error(transparent)]
    Diffusion(#[from] DiffusionError),
    /// A U-Net error (bad config, checkpoint...).
    #[error(transparent)]
    Unet(#[from] UnetError),
    /// A data error.
    #[error(transparent)]
    Data(#[from] lens_data::error::LensDataError),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, TrainError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

/// Exponential moving average of the weights, as `ema-pytorch` (used by
/// denoising-diffusion-pytorch's Trainer) does it: copied from the online weights until
/// `start_step`, then updated every `update_every` steps with the warm-up decay
/// `min(decay, 1 - (1 + e)^(-2/3))`, `e` the number of steps since `start_step`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmaConfig {
    /// Maximum decay (0.995 in the reference Trainer).
    pub decay: f64,
    /// Update interval in optimizer steps (10).
    pub update_every: usize,
    /// Steps before the average starts (100); until then the EMA copies the online weights.
    pub start_step: usize,
}

impl EmaConfig {
    /// The decay applied at optimizer step `step` (1-based), or `None` when no update happens.
    pub fn decay_at(&self, step: usize) -> Option<f64> {
        if step % self.update_every != 0 {
            return None;
        }
        if step <= self.start_step {
            return Some(0.0);
        }
        let e = (step - self.start_step - 1) as f64;
        Some((1.0 - (1.0 + e).powf(-2.0 / 3.0)).clamp(0.0, self.decay))
    }
}

fn one() -> usize {
    1
}

/// Everything that defines a training run; saved as `config.json` beside the checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The denoiser.
    pub unet: UnetConfig,
    /// The diffusion process and loss.
    pub diffusion: DiffusionConfig,
    /// Side of the square training images.
    pub image_size: usize,
    /// Images per optimizer step.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation); must divide `batch_size`.
    pub grad_accum: usize,
    /// Shards of each micro-batch whose forward and backward passes run concurrently, one
    /// thread and one autodiff graph each (data parallelism on the CPU; 1 = off). burn's CPU
    /// kernels only parallelise large operations, so small models use one core unless this is
    /// > 1. At most one shard per image. The gradient is the same weighted sum of shard
    /// gradients, but each shard draws its own timesteps and noise, so a run's trajectory
    /// depends on this value.
    #[serde(default = "one")]
    pub data_parallel: usize,
    /// Total optimizer steps.
    pub total_steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps (0 = none).
    pub warmup_steps: usize,
    /// Cosine decay from the peak to `lr * min_lr_ratio` after warm-up.
    pub cosine_decay: bool,
    /// Final learning rate as a fraction of `lr` with cosine decay.
    pub min_lr_ratio: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW betas.
    pub adam_betas: (f64, f64),
    /// AdamW epsilon (PyTorch's 1e-8 by default; burn's own default is 1e-5).
    pub adam_eps: f64,
    /// Maximum global gradient norm (PyTorch `clip_grad_norm_`); `None` disables clipping.
    pub grad_clip: Option<f64>,
    /// EMA of weights.
    pub ema: EmaConfig,
    /// Apply a random dihedral symmetry to each training image.
    pub augment: bool,
    /// Write a checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Keep this many most recent checkpoints.
    pub keep_last: usize,
    /// Write a sample grid from the EMA weights every this many steps (0 = never).
    pub sample_every: usize,
    /// Images in the sample grid.
    pub sample_count: usize,
    /// DPM-Solver++ steps for the sample grid.
    pub sample_steps: usize,
    /// The run's seed.
    pub seed: u64,
}

impl TrainConfig {
    /// The original DeepLense experiment: `Unet(64, (1,2,4,8))`, 128x128, T 1000, pred_v, sigmoid,
    /// AdamW lr 1e-5, weight decay 1e-3, global grad-norm clip 1, batch 24, 75 epochs of 10,000
    /// images (31,275 steps).
    pub fn deeplense() -> Self {
        Self {
            unet: UnetConfig::deeplense(),
            diffusion: DiffusionConfig::default(),
            image_size: 128,
            batch_size: 24,
            grad_accum: 1,
            data_parallel: 1,
            total_steps: 75 * 10_000usize.div_ceil(24),
            lr: 1e-5,
            warmup_steps: 0,
            cosine_decay: false,
            min_lr_ratio: 0.1,
            weight_decay: 1e-3,
            adam_betas: (0.9, 0.999),
            adam_eps: 1e-8,
            grad_clip: Some(1.0),
            ema: EmaConfig { decay: 0.995, update_every: 10, start_step: 100 },
            augment: false,
            checkpoint_every: 1000,
            keep_last: 3,
            sample_every: 1000,
            sample_count: 16,
            sample_steps: 25,
            seed: 0,
        }
    }

    /// A CPU-sized run: `Unet(16, (1,2,4))` at 32x32, Adam-style lr 1e-3 with warm-up and cosine
    /// decay, batch 16, T 1000 (pred_v, sigmoid); about ten minutes on two cores.
    pub fn small() -> Self {
        Self {
            unet: UnetConfig::new(16, vec![1, 2, 4], 1),
            image_size: 32,
            batch_size: 16,
            data_parallel: 2,
            total_steps: 1500,
            lr: 1e-3,
            warmup_steps: 50,
            cosine_decay: true,
            weight_decay: 0.0,
            adam_betas: (0.9, 0.99),
            ema: EmaConfig { decay: 0.995, update_every: 1, start_step: 100 },
            augment: true,
            checkpoint_every: 500,
            keep_last: 2,
            sample_every: 500,
            sample_steps: 20,
            ..Self::deeplense()
        }
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: String, reason| Err(TrainError::Config { field, value, reason });
        if self.batch_size == 0 {
            return bad("batch_size", "0".into(), "must be >= 1");
        }
        if self.data_parallel == 0 {
            return bad("data_parallel", "0".into(), "must be >= 1 (1 = no data parallelism)");
        }
        if self.grad_accum == 0 || self.batch_size % self.grad_accum != 0 {
            return bad("grad_accum", self.grad_accum.to_string(), "must be >= 1 and divide batch_size");
        }
        if self.total_steps == 0 {
            return bad("total_steps", "0".into(), "must be >= 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", self.lr.to_string(), "must be finite and > 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", self.weight_decay.to_string(), "must be finite and >= 0");
        }
        if !(self.min_lr_ratio.is_finite() && (0.0..=1.0).contains(&self.min_lr_ratio)) {
            return bad("min_lr_ratio", self.min_lr_ratio.to_string(), "must be in [0, 1]");
        }
        let (b1, b2) = self.adam_betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return bad("adam_betas", format!("({b1}, {b2})"), "must be in [0, 1)");
        }
        if !(self.adam_eps.is_finite() && self.adam_eps > 0.0) {
            return bad("adam_eps", self.adam_eps.to_string(), "must be finite and > 0");
        }
        if let Some(c) = self.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return bad("grad_clip", c.to_string(), "must be finite and > 0");
            }
        }
        if !(self.ema.decay.is_finite() && (0.0..1.0).contains(&self.ema.decay)) {
            return bad("ema.decay", self.ema.decay.to_string(), "must be in [0, 1)");
        }
        if self.ema.update_every == 0 {
            return bad("ema.update_every", "0".into(), "must be >= 1");
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every", "0".into(), "must be >= 1");
        }
        if self.keep_last == 0 {
            return bad("keep_last", "0".into(), "must be >= 1");
        }
        let f = self.unet.downsample_factor();
        if self.image_size == 0 || self.image_size % f != 0 {
            return bad("image_size", self.image_size.to_string(), "must be a positive multiple of the U-Net's downsampling factor 2^(stages-1)");
        }
        if self.sample_every > 0 {
            Sampler::DpmSolverPp2M { steps: self.sample_steps }.validate(self.diffusion.timesteps)?;
        }
        self.unet.validate()?;
        GaussianDiffusion::new(self.diffusion.clone())?;
        Ok(())
    }

    /// The learning rate at optimizer step `step` (1-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if self.warmup_steps > 0 && step <= self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps as f64;
        }
        if !self.cosine_decay {
            return self.lr;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let min = self.lr * self.min_lr_ratio;
        min + 0.5 * (self.lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }

    /// Set min-SNR weighting with `gamma` (convenience for the CLI).
    pub fn with_min_snr(mut self, gamma: Option<f64>) -> Self {
        self.diffusion.loss_weighting = match gamma {
            Some(gamma) => LossWeighting::MinSnr { gamma },
            None => LossWeighting::Plain,
        };
        self
    }
}

/// What one optimizer step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The optimizer step just done (1-based).
    pub step: usize,
    /// Mean loss over the step's micro-batches.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Learning rate used.
    pub lr: f64,
}

type Optim<B> = OptimizerAdaptor<AdamW, Unet<B>, B>;

/// A training run in memory: the online model, its optimizer state and the EMA model.
pub struct Trainer<B: UnetAutodiffBackend> {
    config: TrainConfig,
    diffusion: GaussianDiffusion,
    model: Unet<B>,
    ema: Unet<B::InnerBackend>,
    optim: Optim<B>,
    step: usize,
    device: B::Device,
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

/// Resume state written beside the weights of each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    config: TrainConfig,
}

impl<B: UnetAutodiffBackend> Trainer<B> {
    /// A fresh run: random weights from `config.seed`.
    pub fn new(config: TrainConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        B::seed(device, config.seed);
        let model = config.unet.init::<B>(device)?;
        let ema = model.valid();
        let optim = Self::optimizer(&config);
        let diffusion = GaussianDiffusion::new(config.diffusion.clone())?;
        Ok(Self { config, diffusion, model, ema, optim, step: 0, device: device.clone() })
    }

    fn optimizer(config: &TrainConfig) -> Optim<B> {
        AdamWConfig::new()
            .with_beta_1(config.adam_betas.0 as f32)
            .with_beta_2(config.adam_betas.1 as f32)
            .with_epsilon(config.adam_eps as f32)
            .with_weight_decay(config.weight_decay as f32)
            .init::<B, Unet<B>>()
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Optimizer steps done.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The diffusion process.
    pub fn diffusion(&self) -> &GaussianDiffusion {
        &self.diffusion
    }

    /// The online weights (inference copy).
    pub fn model(&self) -> Unet<B::InnerBackend> {
        self.model.valid()
    }

    /// The EMA weights.
    pub fn ema(&self) -> &Unet<B::InnerBackend> {
        &self.ema
    }

    /// One optimizer step on `images` (`[batch_size, C, H, W]` in `[0, 1]`).
    pub fn train_step(&mut self, images: Tensor<B, 4>) -> Result<StepStats> {
        let step = self.step + 1;
        let n = images.dims()[0];
        let accum = self.config.grad_accum;
        let micro = n.div_ceil(accum);
        let mut rng = DiffusionRng::seed_from_u64(self.config.seed);
        rng.set_stream(step as u64);
        let finite = |loss: f32| {
            if loss.is_finite() {
                Ok(loss)
            } else {
                Err(TrainError::NonFiniteLoss { step, loss, last_checkpoint: String::new() })
            }
        };
        let mut accumulator = GradientsAccumulator::<Unet<B>>::new();
        let mut loss_sum = 0.0f32;
        let mut parts = 0;
        for start in (0..n).step_by(micro) {
            let end = (start + micro).min(n);
            let x = images.clone().slice([start..end]);
            let shards = self.config.data_parallel.min(end - start);
            let value = if shards <= 1 {
                let loss = self.diffusion.loss(&self.model, x, &mut rng)?;
                let value = finite(loss.clone().into_scalar().elem())?;
                let grads = loss.div_scalar(accum as f32).backward();
                accumulator.accumulate(&self.model, GradientsParams::from_grads(grads, &self.model));
                value
            } else {
                let mut value = 0.0f32;
                for (v, grads) in self.sharded_grads(x, shards, accum, &mut rng)? {
                    value += finite(v)?;
                    accumulator.accumulate(&self.model, grads);
                }
                value
            };
            loss_sum += value;
            parts += 1;
        }
        let mut grads = accumulator.grads();
        let grad_norm = finite(global_grad_norm::<B>(&self.model, &grads))?;
        if let Some(max) = self.config.grad_clip {
            // torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6) when that is < 1.
            let coef = max / (grad_norm as f64 + 1e-6);
            if coef < 1.0 {
                scale_grads::<B>(&self.model, &mut grads, coef as f32);
            }
        }
        let lr = self.config.lr_at(step);
        self.model = self.optim.step(lr, self.model.clone(), grads);
        self.step = step;
        if let Some(decay) = self.config.ema.decay_at(step) {
            self.ema = ema_update::<B>(&self.model, self.ema.clone(), decay);
        }
        Ok(StepStats { step, loss: loss_sum / parts as f32, grad_norm, lr })
    }

    /// Forward and backward of `shards` slices of the micro-batch `x`, concurrently. Each thread
    /// gets its own copy of the weights as fresh autodiff leaves (same parameter ids), so the
    /// graphs share no node and burn does not merge them under one lock. Shard `k` of `m` rows
    /// contributes `(rows_k / m) * loss_k / accum`, so the summed gradients equal those of the
    /// micro-batch's mean loss. Shard seeds are drawn in order from `rng` (deterministic).
    /// Returns each shard's weighted loss value and gradients, in shard order.
    fn sharded_grads(
        &self,
        x: Tensor<B, 4>,
        shards: usize,
        accum: usize,
        rng: &mut DiffusionRng,
    ) -> Result<Vec<(f32, GradientsParams)>> {
        let m = x.dims()[0];
        let bounds: Vec<(usize, usize)> = (0..shards).map(|k| (k * m / shards, (k + 1) * m / shards)).collect();
        let seeds: Vec<u64> = (0..shards).map(|_| rng.next_u64()).collect();
        let diffusion = &self.diffusion;
        std::thread::scope(|scope| {
            let handles: Vec<_> = bounds
                .iter()
                .zip(&seeds)
                .map(|(&(a, b), &seed)| {
                    let model = Unet::<B>::from_inner(self.model.valid());
                    let xs = x.clone().slice([a..b]);
                    let weight = (b - a) as f32 / (m as f32 * accum as f32);
                    scope.spawn(move || -> Result<(f32, GradientsParams)> {
                        let mut r = DiffusionRng::seed_from_u64(seed);
                        let loss = diffusion.loss(&model, xs, &mut r)?.mul_scalar(weight);
                        let value: f32 = loss.clone().into_scalar().elem();
                        let grads = loss.backward();
                        Ok((value * accum as f32, GradientsParams::from_grads(grads, &model)))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a training shard thread panicked")).collect()
        })
    }

    /// Write a checkpoint folder `dir/step-NNNNNNN/` atomically (written under a temporary name,
    /// then renamed, so an interrupted write never replaces a good checkpoint). It holds
    /// `model.bpk` and `ema.bpk` (loadable by `unet::load_checkpoint` and the `sample` command),
    /// and `resume/` with burn records of the online weights, EMA and optimizer for exact resume.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let final_dir = dir.join(format!("step-{:07}", self.step));
        let tmp = dir.join(format!(".tmp-step-{:07}", self.step));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(tmp.join("resume")).map_err(io_err(&tmp))?;
        let write = || -> Result<()> {
            self.model.valid().save(&tmp.join("model.bpk"))?;
            self.ema.save(&tmp.join("ema.bpk"))?;
            let rec = recorder();
            let res = |what: &str, e: burn::record::RecorderError| TrainError::Resume { path: tmp.join("resume").join(what), reason: format!("could not write: {e}") };
            rec.record(self.model.clone().into_record(), tmp.join("resume/model")).map_err(|e| res("model", e))?;
            rec.record(self.ema.clone().into_record(), tmp.join("resume/ema")).map_err(|e| res("ema", e))?;
            rec.record(self.optim.to_record(), tmp.join("resume/optim")).map_err(|e| res("optim", e))?;
            let state = CheckpointState { step: self.step, config: self.config.clone() };
            let p = tmp.join("state.json");
            let mut f = fs::File::create(&p).map_err(io_err(&p))?;
            f.write_all(serde_json::to_string_pretty(&state).expect("serialisable").as_bytes()).map_err(io_err(&p))?;
            f.sync_all().map_err(io_err(&p))?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir).map_err(io_err(&final_dir))?;
        }
        fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
        prune_checkpoints(dir, self.config.keep_last)?;
        Ok(final_dir)
    }

    /// Continue a run from a checkpoint folder written by [`Trainer::save_checkpoint`]. The
    /// configuration comes from the checkpoint; `total_steps` may be raised with `extend_to`.
    pub fn resume(checkpoint: &Path, device: &B::Device) -> Result<Self> {
        let resume_err = |reason: String| TrainError::Resume { path: checkpoint.to_path_buf(), reason };
        let state_path = checkpoint.join("state.json");
        let text = fs::read_to_string(&state_path).map_err(|e| resume_err(format!("cannot read state.json: {e}")))?;
        let state: CheckpointState = serde_json::from_str(&text).map_err(|e| resume_err(format!("state.json is corrupt: {e}")))?;
        let mut trainer = Self::new(state.config, device)?;
        let rec = recorder();
        let model_rec = rec
            .load(checkpoint.join("resume/model"), device)
            .map_err(|e| resume_err(format!("resume/model.mpk is missing or corrupt: {e}")))?;
        trainer.model = trainer.model.load_record(model_rec);
        let ema_rec = rec
            .load(checkpoint.join("resume/ema"), device)
            .map_err(|e| resume_err(format!("resume/ema.mpk is missing or corrupt: {e}")))?;
        trainer.ema = trainer.ema.load_record(ema_rec);
        let optim_rec = rec
            .load(checkpoint.join("resume/optim"), device)
            .map_err(|e| resume_err(format!("resume/optim.mpk is missing or corrupt: {e}")))?;
        trainer.optim = trainer.optim.load_record(optim_rec);
        trainer.step = state.step;
        Ok(trainer)
    }

    /// Raise the number of steps of a resumed run.
    pub fn extend_to(&mut self, total_steps: usize) {
        self.config.total_steps = self.config.total_steps.max(total_steps);
    }

    /// The data batches for optimizer step `step + 1` onwards, starting mid-epoch if needed.
    pub fn batch_for_step<'a>(&self, data: &'a ImageSet, step: usize) -> Result<Tensor<B, 4>> {
        let bpe = batches_per_epoch(data.len(), self.config.batch_size)?;
        let epoch = (step / bpe) as u64;
        let within = step % bpe;
        let cfg = BatchConfig { batch_size: self.config.batch_size, shuffle: true, augment: self.config.augment, drop_last: true, seed: self.config.seed };
        let batch = data
            .batches(&cfg, epoch)?
            .nth(within)
            .ok_or_else(|| TrainError::Config { field: "batch_size", value: self.config.batch_size.to_string(), reason: "larger than the data set" })?;
        let dims = batch.images.dim();
        let (v, _) = batch.images.into_raw_vec_and_offset();
        Ok(Tensor::from_data(TensorData::new(v, [dims.0, dims.1, dims.2, dims.3]), &self.device))
    }
}

/// Full batches per epoch (the last incomplete batch is dropped).
pub fn batches_per_epoch(len: usize, batch_size: usize) -> Result<usize> {
    let bpe = len / batch_size;
    if bpe == 0 {
        return Err(TrainError::Config { field: "batch_size", value: batch_size.to_string(), reason: "larger than the data set" });
    }
    Ok(bpe)
}

/// Checkpoint folders `step-*` in `dir`, oldest first.
pub fn list_checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-")))
        .collect();
    v.sort();
    v
}

fn prune_checkpoints(dir: &Path, keep: usize) -> Result<()> {
    let all = list_checkpoints(dir);
    if all.len() > keep {
        for old in &all[..all.len() - keep] {
            fs::remove_dir_all(old).map_err(io_err(old))?;
        }
    }
    Ok(())
}

struct GradSquares<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradSquares<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s: f64 = g.square().sum().into_scalar().elem();
            self.sum += s;
        }
    }
}

/// The global L2 norm of all gradients (PyTorch's `clip_grad_norm_` total norm).
fn global_grad_norm<B: AutodiffBackend>(model: &Unet<B>, grads: &GradientsParams) -> f32 {
    let mut v = GradSquares::<B> { grads, sum: 0.0, _b: std::marker::PhantomData };
    model.visit(&mut v);
    v.sum.sqrt() as f32
}

struct GradScaler<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    coef: f32,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradScaler<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.coef));
        }
    }
}

fn scale_grads<B: AutodiffBackend>(model: &Unet<B>, grads: &mut GradientsParams, coef: f32) {
    let mut v = GradScaler::<B> { grads, coef, _b: std::marker::PhantomData };
    model.visit(&mut v);
}

struct CollectParams<B: Backend> {
    params: std::collections::HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for CollectParams<B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val().inner();
        let n = t.shape().num_elements();
        self.params.insert(param.id, t.reshape([n]));
    }
}

struct EmaMapper<B: Backend> {
    online: std::collections::HashMap<ParamId, Tensor<B, 1>>,
    decay: f32,
}

impl<B: Backend> ModuleMapper<B> for EmaMapper<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.online.remove(&id) {
            Some(online) => {
                let shape = tensor.shape();
                let online: Tensor<B, D> = online.reshape(shape);
                if self.decay == 0.0 {
                    online
                } else {
                    tensor.mul_scalar(self.decay) + online.mul_scalar(1.0 - self.decay)
                }
            }
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// `ema <- decay * ema + (1 - decay) * online`, parameter by parameter (matched by id).
fn ema_update<B: AutodiffBackend>(online: &Unet<B>, ema: Unet<B::InnerBackend>, decay: f64) -> Unet<B::InnerBackend> {
    let mut c = CollectParams::<B::InnerBackend> { params: Default::default() };
    online.visit(&mut c);
    let mut m = EmaMapper { online: c.params, decay: decay as f32 };
    ema.map(&mut m)
}
