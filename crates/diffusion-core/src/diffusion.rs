//! Gaussian diffusion: the forward process, the training objective (Algorithm 1 of Ho et al.)
//! and the conversions between what a denoiser predicts and `x_0` / `eps`.

use burn::tensor::{backend::Backend, ElementConversion, Tensor, TensorData};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::error::{DiffusionError, Result};
use crate::guidance::{check_labels, drop_labels, ConditionalDenoiser};
use crate::schedule::{BetaSchedule, NoiseSchedule};
use crate::{Denoiser, Objective};

/// How the per-sample loss is weighted by timestep.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LossWeighting {
    /// The weighting that makes every objective equivalent to the `x_0` loss scaled by its
    /// natural SNR factor: 1 for `pred_noise`, `snr` for `pred_x0`, `snr/(snr+1)` for `pred_v`
    /// (denoising-diffusion-pytorch with `min_snr_loss_weight = False`).
    Plain,
    /// Min-SNR-gamma weighting (Hang et al. 2023): the SNR factor is clipped at `gamma`.
    MinSnr {
        /// The clip value (5 in the paper).
        gamma: f64,
    },
}

/// Everything that defines a Gaussian diffusion process and its training objective.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DiffusionConfig {
    /// Number of diffusion timesteps `T`.
    pub timesteps: usize,
    /// The beta schedule.
    pub schedule: BetaSchedule,
    /// What the denoiser predicts.
    pub objective: Objective,
    /// Per-timestep loss weighting.
    pub loss_weighting: LossWeighting,
    /// Strength of offset noise (Guttenberg 2023) added to training noise; 0 disables it.
    pub offset_noise_strength: f64,
}

impl Default for DiffusionConfig {
    /// denoising-diffusion-pytorch's `GaussianDiffusion` defaults: T = 1000, sigmoid schedule,
    /// `pred_v`, plain weighting, no offset noise.
    fn default() -> Self {
        Self {
            timesteps: 1000,
            schedule: BetaSchedule::sigmoid(),
            objective: Objective::PredV,
            loss_weighting: LossWeighting::Plain,
            offset_noise_strength: 0.0,
        }
    }
}

/// A Gaussian diffusion process with its precomputed schedule.
#[derive(Debug, Clone)]
pub struct GaussianDiffusion {
    config: DiffusionConfig,
    schedule: NoiseSchedule,
    loss_weight: Vec<f64>,
}

/// Draw standard-normal `f32` noise of the given shape from `rng` (row-major order), on `device`.
///
/// All randomness in this crate goes through here, so a seeded `rng` gives identical results on
/// every backend.
pub fn gaussian_noise<B: Backend, const D: usize>(
    rng: &mut impl Rng,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.sample::<f32, _>(StandardNormal)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Per-sample coefficients `values[t_i]` (cast to f32, as the reference's float32 buffers) as a
/// `[N, 1, 1, 1]` tensor that broadcasts over images.
fn coefficient<B: Backend>(values: &[f64], t: &[usize], device: &B::Device) -> Tensor<B, 4> {
    let v: Vec<f32> = t.iter().map(|&i| values[i] as f32).collect();
    Tensor::from_data(TensorData::new(v, [t.len(), 1, 1, 1]), device)
}

pub(crate) fn timestep_tensor<B: Backend>(t: &[usize], device: &B::Device) -> Tensor<B, 1> {
    let v: Vec<f32> = t.iter().map(|&i| i as f32).collect();
    Tensor::from_data(TensorData::new(v, [t.len()]), device)
}

/// Whether every element of `x` is finite (one device read).
pub(crate) fn all_finite<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    let bad: i64 = x.clone().is_finite().bool_not().int().sum().into_scalar().elem();
    bad == 0
}

impl GaussianDiffusion {
    /// Build the process. Errors on `T = 0`, invalid schedule parameters, a non-positive or
    /// non-finite min-SNR gamma, or a negative / non-finite offset-noise strength.
    pub fn new(config: DiffusionConfig) -> Result<Self> {
        let schedule = NoiseSchedule::new(config.schedule, config.timesteps)?;
        if let LossWeighting::MinSnr { gamma } = config.loss_weighting {
            if !(gamma.is_finite() && gamma > 0.0) {
                return Err(DiffusionError::InvalidParameter {
                    name: "min_snr_gamma",
                    value: gamma,
                    reason: "must be finite and > 0",
                });
            }
        }
        let s = config.offset_noise_strength;
        if !(s.is_finite() && s >= 0.0) {
            return Err(DiffusionError::InvalidParameter {
                name: "offset_noise_strength",
                value: s,
                reason: "must be finite and >= 0",
            });
        }
        let loss_weight = loss_weights(&schedule.snr, config.objective, config.loss_weighting);
        Ok(Self { config, schedule, loss_weight })
    }

    /// The configuration this process was built from.
    pub fn config(&self) -> &DiffusionConfig {
        &self.config
    }

    /// The precomputed schedule buffers.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// The per-timestep loss weights (f64, before the f32 cast used in the loss).
    pub fn loss_weight(&self) -> &[f64] {
        &self.loss_weight
    }

    /// Number of diffusion timesteps `T`.
    pub fn timesteps(&self) -> usize {
        self.schedule.timesteps()
    }

    fn check_t(&self, t: &[usize], batch: usize) -> Result<()> {
        if t.len() != batch {
            return Err(DiffusionError::ShapeMismatch {
                what: "timesteps (one per sample)",
                expected: vec![batch],
                found: vec![t.len()],
            });
        }
        if let Some(&bad) = t.iter().find(|&&ti| ti >= self.timesteps()) {
            return Err(DiffusionError::TimestepOutOfRange { t: bad, max: self.timesteps() });
        }
        Ok(())
    }

    /// Checks `x0`, `t` and `noise` against each other and returns the per-sample
    /// `(sqrt(a_t), sqrt(1 - a_t))` as `[N, 1, 1, 1]` tensors.
    fn signal_noise_coefficients<B: Backend>(
        &self,
        x0: &Tensor<B, 4>,
        t: &[usize],
        noise: &Tensor<B, 4>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
        let dims = x0.dims();
        self.check_t(t, dims[0])?;
        check_same(&dims, &noise.dims(), "noise")?;
        let device = x0.device();
        let a = coefficient::<B>(&self.schedule.sqrt_alphas_cumprod, t, &device);
        let b = coefficient::<B>(&self.schedule.sqrt_one_minus_alphas_cumprod, t, &device);
        Ok((a, b))
    }

    /// Sample `x_t ~ q(x_t | x_0)`: `sqrt(a_t) x_0 + sqrt(1 - a_t) noise`, with `x_0` in the
    /// model's `[-1, 1]` range.
    pub fn q_sample<B: Backend>(&self, x0: Tensor<B, 4>, t: &[usize], noise: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let (a, b) = self.signal_noise_coefficients(&x0, t, &noise)?;
        Ok(x0 * a + noise * b)
    }

    /// The velocity target `v = sqrt(a_t) noise - sqrt(1 - a_t) x_0`.
    pub fn predict_v<B: Backend>(&self, x0: Tensor<B, 4>, t: &[usize], noise: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let (a, b) = self.signal_noise_coefficients(&x0, t, &noise)?;
        Ok(noise * a - x0 * b)
    }

    /// Draws the timesteps and the training noise (plus offset noise if configured) of one
    /// batch, in that order, from `rng`.
    fn draw_t_noise<B: Backend>(
        &self,
        dims: [usize; 4],
        device: &B::Device,
        rng: &mut impl Rng,
    ) -> (Vec<usize>, Tensor<B, 4>) {
        let t: Vec<usize> = (0..dims[0]).map(|_| rng.random_range(0..self.timesteps())).collect();
        let mut noise = gaussian_noise::<B, 4>(rng, dims, device);
        if self.config.offset_noise_strength > 0.0 {
            let offset = gaussian_noise::<B, 4>(rng, [dims[0], dims[1], 1, 1], device);
            noise = noise + offset.mul_scalar(self.config.offset_noise_strength as f32);
        }
        (t, noise)
    }

    /// Algorithm 1 of Ho et al.: draw `t ~ U{0..T-1}` and `eps ~ N(0, I)` per image from `rng`
    /// (plus offset noise if configured), and return the weighted mean-squared-error loss.
    /// `x0` holds images in `[0, 1]`.
    pub fn loss<B: Backend, M: Denoiser<B>>(
        &self,
        model: &M,
        x0: Tensor<B, 4>,
        rng: &mut impl Rng,
    ) -> Result<Tensor<B, 1>> {
        let (t, noise) = self.draw_t_noise(x0.dims(), &x0.device(), rng);
        self.loss_at(model, x0, &t, noise)
    }

    /// The classifier-free-guidance training loss: like [`GaussianDiffusion::loss`], then each
    /// label is replaced by the null class with probability `cond_drop_prob` (drawn from `rng`
    /// after the noise; see [`crate::drop_labels`]). `labels[i]` is the class of image `i`.
    pub fn loss_labelled<B: Backend, M: ConditionalDenoiser<B>>(
        &self,
        model: &M,
        x0: Tensor<B, 4>,
        labels: &[usize],
        cond_drop_prob: f64,
        rng: &mut impl Rng,
    ) -> Result<Tensor<B, 1>> {
        if !(0.0..=1.0).contains(&cond_drop_prob) {
            return Err(DiffusionError::InvalidParameter {
                name: "cond_drop_prob",
                value: cond_drop_prob,
                reason: "must be in [0, 1]",
            });
        }
        let (t, noise) = self.draw_t_noise(x0.dims(), &x0.device(), rng);
        let labels = drop_labels(labels, cond_drop_prob, rng);
        self.loss_at_labelled(model, x0, &t, noise, &labels)
    }

    /// The deterministic classifier-free-guidance loss for given timesteps, noise and labels
    /// (`None` = the null class): the reference's `p_losses(x, t, classes, noise,
    /// cond_keep_mask)`.
    pub fn loss_at_labelled<B: Backend, M: ConditionalDenoiser<B>>(
        &self,
        model: &M,
        x0: Tensor<B, 4>,
        t: &[usize],
        noise: Tensor<B, 4>,
        labels: &[Option<usize>],
    ) -> Result<Tensor<B, 1>> {
        check_labels(labels, model.num_classes(), x0.dims()[0])?;
        let forward = |x: Tensor<B, 4>, t: Tensor<B, 1>| model.denoise_labelled(x, t, labels);
        self.loss_at(&forward, x0, t, noise)
    }

    /// The deterministic training loss for given timesteps and noise (denoising-diffusion-pytorch's
    /// `p_losses`): `mean_i( w(t_i) * mean_pixels((model(x_t, t) - target)^2) )`.
    /// `x0` holds images in `[0, 1]`; it is mapped to `[-1, 1]` first.
    pub fn loss_at<B: Backend, M: Denoiser<B>>(
        &self,
        model: &M,
        x0: Tensor<B, 4>,
        t: &[usize],
        noise: Tensor<B, 4>,
    ) -> Result<Tensor<B, 1>> {
        let dims = x0.dims();
        self.check_t(t, dims[0])?;
        check_same(&dims, &noise.dims(), "noise")?;
        let device = x0.device();
        let x0 = normalize(x0);
        let x_t = self.q_sample(x0.clone(), t, noise.clone())?;
        let out = model.denoise(x_t, timestep_tensor::<B>(t, &device));
        check_same(&dims, &out.dims(), "denoiser output")?;
        let target = match self.config.objective {
            Objective::PredNoise => noise,
            Objective::PredX0 => x0,
            Objective::PredV => self.predict_v(x0, t, noise)?,
        };
        let diff = out - target;
        let per_sample = (diff.clone() * diff).reshape([dims[0] as i32, -1]).mean_dim(1).reshape([dims[0]]);
        let w: Vec<f32> = t.iter().map(|&i| self.loss_weight[i] as f32).collect();
        let w = Tensor::<B, 1>::from_data(TensorData::new(w, [dims[0]]), &device);
        Ok((per_sample * w).mean())
    }

    /// From a denoiser output at timestep `t` (the same for the whole batch), the predicted noise
    /// and `x_0` (denoising-diffusion-pytorch's `model_predictions`). With `clip_x0`, `x_0` is
    /// clamped to `[-1, 1]` and the noise re-derived from it.
    pub fn predictions<B: Backend>(
        &self,
        x: Tensor<B, 4>,
        t: usize,
        model_out: Tensor<B, 4>,
        clip_x0: bool,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let s = &self.schedule;
        let f = |v: &[f64]| v[t] as f32;
        let clip = |x0: Tensor<B, 4>| if clip_x0 { x0.clamp(-1.0, 1.0) } else { x0 };
        let noise_from_x0 = |x: Tensor<B, 4>, x0: Tensor<B, 4>| {
            (x.mul_scalar(f(&s.sqrt_recip_alphas_cumprod)) - x0).div_scalar(f(&s.sqrt_recipm1_alphas_cumprod))
        };
        match self.config.objective {
            Objective::PredNoise => {
                let x0 = x.clone().mul_scalar(f(&s.sqrt_recip_alphas_cumprod))
                    - model_out.clone().mul_scalar(f(&s.sqrt_recipm1_alphas_cumprod));
                let x0 = clip(x0);
                let eps = if clip_x0 { noise_from_x0(x, x0.clone()) } else { model_out };
                (eps, x0)
            }
            Objective::PredX0 => {
                let x0 = clip(model_out);
                (noise_from_x0(x, x0.clone()), x0)
            }
            Objective::PredV => {
                let x0 = x.clone().mul_scalar(f(&s.sqrt_alphas_cumprod))
                    - model_out.mul_scalar(f(&s.sqrt_one_minus_alphas_cumprod));
                let x0 = clip(x0);
                (noise_from_x0(x, x0.clone()), x0)
            }
        }
    }
}

impl GaussianDiffusion {
    /// The noise a sampler re-noises with: the prediction's own `eps`, or under CFG++ the null
    /// prediction's, derived from its clipped `x_0` as [`GaussianDiffusion::predictions`] derives
    /// every `eps` here. (The reference's `pred_noise` branch uses the raw null output; with
    /// clipping active that breaks `x_t = sqrt(a) x_0 + sqrt(1 - a) eps`, which we keep.)
    pub(crate) fn renoise_eps<B: Backend>(
        &self,
        x: Tensor<B, 4>,
        t: usize,
        eps: Tensor<B, 4>,
        renoise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        match renoise {
            None => eps,
            Some(null) => self.predictions(x, t, null, true).0,
        }
    }
}

/// Per-timestep loss weights for an objective and weighting.
fn loss_weights(snr: &[f64], objective: Objective, weighting: LossWeighting) -> Vec<f64> {
    snr.iter()
        .map(|&snr| {
            let clipped = match weighting {
                LossWeighting::Plain => snr,
                LossWeighting::MinSnr { gamma } => snr.min(gamma),
            };
            match objective {
                Objective::PredNoise => clipped / snr,
                Objective::PredX0 => clipped,
                Objective::PredV => clipped / (snr + 1.0),
            }
        })
        .collect()
}

fn check_same(expected: &[usize], found: &[usize], what: &'static str) -> Result<()> {
    if expected != found {
        return Err(DiffusionError::ShapeMismatch { what, expected: expected.to_vec(), found: found.to_vec() });
    }
    Ok(())
}

/// `[0, 1] -> [-1, 1]`.
pub fn normalize<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.mul_scalar(2.0).sub_scalar(1.0)
}

/// `[-1, 1] -> [0, 1]`.
pub fn unnormalize<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.add_scalar(1.0).mul_scalar(0.5)
}
