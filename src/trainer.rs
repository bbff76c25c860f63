//! The DDPM training step: AdamW, global-norm gradient clipping, EMA of weights, learning-rate
//! warm-up and cosine decay, gradient accumulation and data-parallel shards. Checkpoints and
//! resume are in [`crate::checkpoint`], the loop around the step in [`crate::run`].
//!
//! Every random choice comes from `TrainConfig::seed`: the data order and augmentation of epoch
//! `e` from `(seed, e)`, the timesteps and noise of step `s` from `(seed, s)`. A run resumed from a
//! checkpoint therefore continues exactly as the uninterrupted run would have.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use diffusion_core::{DiffusionRng, GaussianDiffusion};
use lens_data::dataset::{BatchConfig, ImageSet};
use rand::{RngCore, SeedableRng};
use unet::{Unet, UnetAutodiffBackend};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::params::{ema_update, global_grad_norm, scale_grads};

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

pub(crate) type Optim<B> = OptimizerAdaptor<AdamW, Unet<B>, B>;

/// A training run in memory: the online model, its optimizer state and the EMA model.
pub struct Trainer<B: UnetAutodiffBackend> {
    pub(crate) config: TrainConfig,
    pub(crate) diffusion: GaussianDiffusion,
    pub(crate) model: Unet<B>,
    pub(crate) ema: Unet<B::InnerBackend>,
    pub(crate) optim: Optim<B>,
    pub(crate) step: usize,
    pub(crate) device: B::Device,
}

impl<B: UnetAutodiffBackend> Trainer<B> {
    /// A fresh run: random weights from `config.seed`.
    pub fn new(config: TrainConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let model = config.unet.init_seeded::<B>(config.seed, device)?;
        let ema = model.valid();
        let optim = Self::optimizer(&config);
        let diffusion = GaussianDiffusion::new(config.diffusion.clone())?;
        Ok(Self { config, diffusion, model, ema, optim, step: 0, device: device.clone() })
    }

    pub(crate) fn optimizer(config: &TrainConfig) -> Optim<B> {
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

    /// One optimizer step on `images` (`[batch_size, C, H, W]` in `[0, 1]`), with their class
    /// labels for a class-conditional model (required there, refused otherwise).
    pub fn train_step(&mut self, images: Tensor<B, 4>, labels: Option<&[usize]>) -> Result<StepStats> {
        let step = self.step + 1;
        let n = images.dims()[0];
        let labels = self.check_labels(labels, n)?;
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
            let x = images.clone().narrow(0, start, end - start);
            let y = labels.map(|l| &l[start..end]);
            let shards = self.config.data_parallel.min(end - start);
            let value = if shards <= 1 {
                let loss = batch_loss(&self.diffusion, self.config.cond_drop_prob, &self.model, x, y, &mut rng)?;
                let value = finite(loss.clone().into_scalar().elem())?;
                let grads = loss.div_scalar(accum as f32).backward();
                accumulator.accumulate(&self.model, GradientsParams::from_grads(grads, &self.model));
                value
            } else {
                let mut value = 0.0f32;
                for (v, grads) in self.sharded_grads(x, y, shards, accum, &mut rng)? {
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
        labels: Option<&[usize]>,
        shards: usize,
        accum: usize,
        rng: &mut DiffusionRng,
    ) -> Result<Vec<(f32, GradientsParams)>> {
        let m = x.dims()[0];
        let bounds: Vec<(usize, usize)> = (0..shards).map(|k| (k * m / shards, (k + 1) * m / shards)).collect();
        let seeds: Vec<u64> = (0..shards).map(|_| rng.next_u64()).collect();
        let (diffusion, p) = (&self.diffusion, self.config.cond_drop_prob);
        std::thread::scope(|scope| {
            let handles: Vec<_> = bounds
                .iter()
                .zip(&seeds)
                .map(|(&(a, b), &seed)| {
                    let model = Unet::<B>::from_inner(self.model.valid());
                    let xs = x.clone().narrow(0, a, b - a);
                    let ys = labels.map(|l| &l[a..b]);
                    let weight = (b - a) as f32 / (m as f32 * accum as f32);
                    scope.spawn(move || -> Result<(f32, GradientsParams)> {
                        let mut r = DiffusionRng::seed_from_u64(seed);
                        let loss = batch_loss(diffusion, p, &model, xs, ys, &mut r)?.mul_scalar(weight);
                        let value: f32 = loss.clone().into_scalar().elem();
                        let grads = loss.backward();
                        Ok((value * accum as f32, GradientsParams::from_grads(grads, &model)))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a training shard thread panicked")).collect()
        })
    }

    fn check_labels<'a>(&self, labels: Option<&'a [usize]>, n: usize) -> Result<Option<&'a [usize]>> {
        let bad = |value: String, reason| Err(TrainError::Config { field: "labels", value, reason });
        match (self.config.unet.num_classes, labels) {
            (None, None) => Ok(None),
            (None, Some(_)) => {
                bad("given".into(), "the model is unconditional; train with --conditional to use labels")
            }
            (Some(_), None) => bad("none".into(), "a class-conditional model needs a label per image"),
            (Some(k), Some(l)) => {
                if l.len() != n {
                    return bad(format!("{} labels for {n} images", l.len()), "one label per image");
                }
                if let Some(x) = l.iter().find(|&&x| x >= k) {
                    return bad(x.to_string(), "label beyond unet.num_classes");
                }
                Ok(Some(l))
            }
        }
    }

    /// Raise the number of steps of a resumed run.
    pub fn extend_to(&mut self, total_steps: usize) {
        self.config.total_steps = self.config.total_steps.max(total_steps);
    }

    /// Sets the run's length while no step taken so far depended on it: within the learning
    /// rate's warm-up, or at any point without cosine decay. The run then is step for step the
    /// run configured with `total_steps` from the start, which is what makes a length fitted to a
    /// time budget reproducible (see [`crate::run::fit_steps`]).
    pub fn set_total_steps(&mut self, total_steps: usize) -> Result<()> {
        let value = format!("{total_steps} (at step {}, warm-up {})", self.step, self.config.warmup_steps);
        if total_steps <= self.step {
            return Err(TrainError::Config { field: "total_steps", value, reason: "must be more than the steps done" });
        }
        if self.config.cosine_decay && self.step > self.config.warmup_steps {
            return Err(TrainError::Config {
                field: "total_steps",
                value,
                reason: "the learning rate's cosine decay has used the old length since the warm-up ended",
            });
        }
        self.config.total_steps = total_steps;
        Ok(())
    }

    /// The batch for optimizer step `step + 1` (mid-epoch if needed), with its labels when the
    /// model is class-conditional.
    pub fn batch_for_step(&self, data: &ImageSet, step: usize) -> Result<(Tensor<B, 4>, Option<Vec<usize>>)> {
        let bpe = batches_per_epoch(data.len(), self.config.batch_size)?;
        let epoch = (step / bpe) as u64;
        let within = step % bpe;
        let cfg = BatchConfig {
            batch_size: self.config.batch_size,
            shuffle: true,
            augment: self.config.augment,
            drop_last: true,
            seed: self.config.seed,
        };
        let batch = data.batches(&cfg, epoch)?.nth(within).ok_or_else(|| TrainError::Config {
            field: "batch_size",
            value: self.config.batch_size.to_string(),
            reason: "larger than the data set",
        })?;
        let labels = match (self.config.unet.num_classes, batch.labels) {
            (None, _) => None,
            (Some(_), Some(l)) => Some(l),
            (Some(_), None) => {
                return Err(TrainError::Config {
                    field: "labels",
                    value: "none".into(),
                    reason: "a class-conditional model needs labelled data (ROOT/{train,val}/CLASS/* or the simulator)",
                })
            }
        };
        let dims = batch.images.dim();
        let (v, _) = batch.images.into_raw_vec_and_offset();
        Ok((Tensor::from_data(TensorData::new(v, [dims.0, dims.1, dims.2, dims.3]), &self.device), labels))
    }
}

/// The loss of one (micro-)batch: with condition dropout `cond_drop_prob` for a class-conditional
/// model.
fn batch_loss<B: UnetAutodiffBackend>(
    diffusion: &GaussianDiffusion,
    cond_drop_prob: f64,
    model: &Unet<B>,
    x: Tensor<B, 4>,
    labels: Option<&[usize]>,
    rng: &mut DiffusionRng,
) -> Result<Tensor<B, 1>> {
    Ok(match labels {
        Some(y) => diffusion.loss_labelled(model, x, y, cond_drop_prob, rng)?,
        None => diffusion.loss(model, x, rng)?,
    })
}

/// Full batches per epoch (the last incomplete batch is dropped).
pub fn batches_per_epoch(len: usize, batch_size: usize) -> Result<usize> {
    let bpe = len / batch_size;
    if bpe == 0 {
        return Err(TrainError::Config {
            field: "batch_size",
            value: batch_size.to_string(),
            reason: "larger than the data set",
        });
    }
    Ok(bpe)
}
