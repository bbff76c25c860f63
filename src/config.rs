//! What defines a training run ([`TrainConfig`], saved as `config.json` and in every
//! checkpoint), its presets, and the EMA schedule.

use diffusion_core::{DiffusionConfig, GaussianDiffusion, LossWeighting, Sampler};
use serde::{Deserialize, Serialize};
use unet::UnetConfig;

use crate::error::{Result, TrainError};

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
        if !step.is_multiple_of(self.update_every) {
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
    /// >    gradients, but each shard draws its own timesteps and noise, so a run's trajectory
    /// >    depends on this value.
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
    /// Class-conditional runs (`unet.num_classes` set): probability that a training image's
    /// label is replaced by the null class, so the one network also learns the unconditional
    /// prediction that classifier-free guidance needs (the reference's `cond_drop_prob`, 0.5).
    #[serde(default = "half")]
    pub cond_drop_prob: f64,
    /// Class-conditional runs: the name of each class, by label (recorded in the checkpoints'
    /// model card so `sample --class NAME` works).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
}

fn half() -> f64 {
    0.5
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
            cond_drop_prob: 0.5,
            class_names: Vec::new(),
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
        if !(0.0..=1.0).contains(&self.cond_drop_prob) {
            return bad("cond_drop_prob", self.cond_drop_prob.to_string(), "must be in [0, 1]");
        }
        if let Some(n) = self.unet.num_classes {
            if !self.class_names.is_empty() && self.class_names.len() != n {
                return bad(
                    "class_names",
                    format!("{:?}", self.class_names),
                    "must name every class of unet.num_classes (or be empty)",
                );
            }
        }
        if self.data_parallel == 0 {
            return bad("data_parallel", "0".into(), "must be >= 1 (1 = no data parallelism)");
        }
        if self.grad_accum == 0 || !self.batch_size.is_multiple_of(self.grad_accum) {
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
        if self.image_size == 0 || !self.image_size.is_multiple_of(f) {
            return bad(
                "image_size",
                self.image_size.to_string(),
                "must be a positive multiple of the U-Net's downsampling factor 2^(stages-1)",
            );
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

/// A named starting configuration (`--preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preset {
    /// [`TrainConfig::small`]: a CPU-sized run.
    #[default]
    Small,
    /// [`TrainConfig::deeplense`]: the original DeepLense experiment.
    Deeplense,
}

impl Preset {
    /// The configuration of this preset.
    pub fn config(self) -> TrainConfig {
        match self {
            Self::Small => TrainConfig::small(),
            Self::Deeplense => TrainConfig::deeplense(),
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "small" => Ok(Self::Small),
            "deeplense" => Ok(Self::Deeplense),
            other => Err(format!("unknown preset `{other}` (small, deeplense)")),
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Small => "small",
            Self::Deeplense => "deeplense",
        })
    }
}
