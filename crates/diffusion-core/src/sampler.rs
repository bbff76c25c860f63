//! Samplers: ancestral DDPM (Ho et al. Algorithm 2), DDIM (Song et al. 2021) and DPM-Solver++(2M)
//! (Lu et al. 2022), all from an explicit starting noise or seed, with a progress callback.

use burn::tensor::{backend::Backend, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::diffusion::{all_finite, gaussian_noise, timestep_tensor, unnormalize, GaussianDiffusion};
use crate::error::{DiffusionError, Result};
use crate::guidance::DenoiserOutput;
use crate::schedule::torch_linspace_f32;
use crate::Denoiser;

/// Which reverse process to run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sampler {
    /// Ancestral sampling through all `T` steps with the fixed small posterior variance and
    /// `x_0` clipping (denoising-diffusion-pytorch's `p_sample_loop`).
    Ddpm,
    /// DDIM with `steps` model evaluations; `eta = 0` is deterministic, `eta = 1` matches DDPM's
    /// variance (denoising-diffusion-pytorch's `ddim_sample`).
    Ddim {
        /// Number of model evaluations, `1..=T`.
        steps: usize,
        /// Stochasticity, `>= 0`.
        eta: f64,
    },
    /// DPM-Solver++ multistep, second order, in data (`x_0`) prediction with `x_0` clipping;
    /// the first and last updates are first order. Good results in 10-25 steps.
    DpmSolverPp2M {
        /// Number of model evaluations, `1..=T`.
        steps: usize,
    },
}

impl Sampler {
    /// Number of model evaluations this sampler makes for a process with `T` timesteps.
    pub fn model_evaluations(&self, timesteps: usize) -> usize {
        match *self {
            Sampler::Ddpm => timesteps,
            Sampler::Ddim { steps, .. } | Sampler::DpmSolverPp2M { steps } => steps,
        }
    }

    /// Check the sampler against a process with `T` timesteps.
    pub fn validate(&self, timesteps: usize) -> Result<()> {
        match *self {
            Sampler::Ddpm => Ok(()),
            Sampler::Ddim { steps, eta } => {
                if !(eta.is_finite() && eta >= 0.0) {
                    return Err(DiffusionError::InvalidEta(eta));
                }
                check_steps(steps, timesteps)
            }
            Sampler::DpmSolverPp2M { steps } => check_steps(steps, timesteps),
        }
    }
}

fn check_steps(steps: usize, timesteps: usize) -> Result<()> {
    if steps == 0 || steps > timesteps {
        return Err(DiffusionError::InvalidSamplingSteps { steps, max: timesteps });
    }
    Ok(())
}

/// Reported after each model evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleProgress {
    /// Model evaluations done so far (1-based).
    pub step: usize,
    /// Total model evaluations.
    pub total: usize,
    /// The diffusion timestep just evaluated.
    pub t: usize,
}

/// DDIM's `(t, t_next)` pairs exactly as denoising-diffusion-pytorch builds them:
/// `linspace(-1, T-1, S+1)` in float32, truncated to integers, reversed; `t_next = -1` ends.
pub fn ddim_time_pairs(timesteps: usize, steps: usize) -> Vec<(usize, i64)> {
    let times: Vec<i64> = torch_linspace_f32(-1.0, timesteps as f32 - 1.0, steps + 1)
        .into_iter()
        .rev()
        .map(|v| v as i64) // `as` truncates toward zero, like torch's `.int()`
        .collect();
    times.windows(2).map(|w| (w[0] as usize, w[1])).collect()
}

/// DPM-Solver++'s evaluation timesteps: `S` distinct integer steps from `T-1` down to `0`,
/// quadratic in time (`t_i = ((1 - i/(S-1)) sqrt(T-1))^2`, DPM-Solver's `time_quadratic`), which
/// puts more steps at low noise where images gain their detail. (Uniform-in-`t` and
/// uniform-in-log-SNR grids were measured worse with the analytic Gaussian test in
/// `tests/samplers.rs`.) Rounding collisions near `t = 0` are filled with unused steps.
pub fn dpm_solver_timesteps(schedule: &crate::NoiseSchedule, steps: usize) -> Vec<usize> {
    let timesteps = schedule.timesteps();
    if steps == 1 {
        return vec![timesteps - 1];
    }
    let last = (timesteps - 1) as f64;
    let mut ts: Vec<usize> = (0..steps)
        .map(|i| {
            let r = last.sqrt() * (1.0 - i as f64 / (steps - 1) as f64);
            (r * r).round() as usize
        })
        .collect();
    ts.sort_unstable_by(|a, b| b.cmp(a));
    ts.dedup();
    // Fill up with unused steps, largest gaps first, if rounding merged some.
    while ts.len() < steps {
        let (i, _) = ts.windows(2).enumerate().max_by_key(|(_, w)| w[0] - w[1]).expect("steps <= T");
        let mid = (ts[i] + ts[i + 1]) / 2;
        ts.insert(i + 1, mid);
    }
    ts
}

impl GaussianDiffusion {
    /// Generate images from the starting noise `x_t` (`[N, C, H, W]`, standard normal, the
    /// model's internal scale). Stochastic samplers draw their per-step noise from `rng`.
    /// Returns images in `[0, 1]`.
    pub fn sample_from<B: Backend, M: Denoiser<B>>(
        &self,
        model: &M,
        sampler: Sampler,
        x_t: Tensor<B, 4>,
        rng: &mut impl Rng,
        progress: &mut dyn FnMut(SampleProgress),
    ) -> Result<Tensor<B, 4>> {
        sampler.validate(self.timesteps())?;
        let x = match sampler {
            Sampler::Ddpm => self.ddpm_loop(model, x_t, rng, progress)?,
            Sampler::Ddim { steps, eta } => self.ddim_loop(model, x_t, steps, eta, rng, progress)?,
            Sampler::DpmSolverPp2M { steps } => self.dpmpp_loop(model, x_t, steps, progress)?,
        };
        Ok(unnormalize(x))
    }

    /// Generate `shape[0]` images from `seed`: the starting noise and all per-step noise come from
    /// one ChaCha8 stream seeded with `seed`. Returns images in `[0, 1]`.
    pub fn sample<B: Backend, M: Denoiser<B>>(
        &self,
        model: &M,
        sampler: Sampler,
        shape: [usize; 4],
        seed: u64,
        device: &B::Device,
        progress: &mut dyn FnMut(SampleProgress),
    ) -> Result<Tensor<B, 4>> {
        sampler.validate(self.timesteps())?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x_t = gaussian_noise::<B, 4>(&mut rng, shape, device);
        self.sample_from(model, sampler, x_t, &mut rng, progress)
    }

    /// Run the model at timestep `t` and check its output (and the CFG++ null output, if any).
    fn evaluate<B: Backend, M: Denoiser<B>>(
        &self,
        model: &M,
        x: &Tensor<B, 4>,
        t: usize,
        step: usize,
        total: usize,
    ) -> Result<DenoiserOutput<B>> {
        let dims = x.dims();
        let output = model.denoise_for_sampling(x.clone(), timestep_tensor::<B>(&vec![t; dims[0]], &x.device()));
        for out in std::iter::once(&output.out).chain(output.renoise.as_ref()) {
            if out.dims() != dims {
                return Err(DiffusionError::ShapeMismatch {
                    what: "denoiser output",
                    expected: dims.to_vec(),
                    found: out.dims().to_vec(),
                });
            }
            if !all_finite(out) {
                return Err(DiffusionError::NonFiniteModelOutput { t, step, total });
            }
        }
        Ok(output)
    }

    /// One ancestral step from `x_t` given the model output at `t`:
    /// the posterior mean of `q(x_{t-1} | x_t, x_0)` with clipped `x_0`, plus
    /// `exp(0.5 log_var) z` for `t > 0`.
    pub fn ddpm_step<B: Backend>(
        &self,
        x: Tensor<B, 4>,
        t: usize,
        model_out: Tensor<B, 4>,
        rng: &mut impl Rng,
    ) -> Tensor<B, 4> {
        self.ddpm_step_with(x, t, DenoiserOutput { out: model_out, renoise: None }, rng)
    }

    /// [`GaussianDiffusion::ddpm_step`] for a denoiser output that may carry a CFG++ null
    /// prediction. The posterior mean `c1 x_0 + c2 x_t` is `(c1 + c2 sqrt(a_t)) x_0 + c2
    /// sqrt(1 - a_t) eps`; CFG++ takes that `eps` from the null prediction.
    pub fn ddpm_step_with<B: Backend>(
        &self,
        x: Tensor<B, 4>,
        t: usize,
        output: DenoiserOutput<B>,
        rng: &mut impl Rng,
    ) -> Tensor<B, 4> {
        let s = self.schedule();
        let (eps, x0) = self.predictions(x.clone(), t, output.out, true);
        let (c1, c2) = (s.posterior_mean_coef1[t] as f32, s.posterior_mean_coef2[t] as f32);
        let mean = match output.renoise {
            None => x0.mul_scalar(c1) + x.mul_scalar(c2),
            renoise => {
                let eps = self.renoise_eps(x, t, eps, renoise);
                let a = s.sqrt_alphas_cumprod[t] as f32;
                let b = s.sqrt_one_minus_alphas_cumprod[t] as f32;
                x0.mul_scalar(c1 + c2 * a) + eps.mul_scalar(c2 * b)
            }
        };
        if t == 0 {
            return mean;
        }
        let std = (0.5f32 * s.posterior_log_variance_clipped[t] as f32).exp();
        let z = gaussian_noise::<B, 4>(rng, mean.dims(), &mean.device());
        mean + z.mul_scalar(std)
    }

    fn ddpm_loop<B: Backend, M: Denoiser<B>>(
        &self,
        model: &M,
        mut x: Tensor<B, 4>,
        rng: &mut impl Rng,
        progress: &mut dyn FnMut(SampleProgress),
    ) -> Result<Tensor<B, 4>> {
        let total = self.timesteps();
        for (i, t) in (0..total).rev().enumerate() {
            let out = self.evaluate(model, &x, t, i + 1, total)?;
            x = self.ddpm_step_with(x, t, out, rng);
            progress(SampleProgress { step: i + 1, total, t });
        }
        Ok(x)
    }

    /// One DDIM step from `x_t` to `x_{t_next}` given the model output at `t`; `t_next < 0`
    /// returns the clipped `x_0` prediction. `eta > 0` draws noise from `rng`.
    pub fn ddim_step<B: Backend>(
        &self,
        x: Tensor<B, 4>,
        t: usize,
        t_next: i64,
        model_out: Tensor<B, 4>,
        eta: f64,
        rng: &mut impl Rng,
    ) -> Tensor<B, 4> {
        self.ddim_step_with(x, t, t_next, DenoiserOutput { out: model_out, renoise: None }, eta, rng)
    }

    /// [`GaussianDiffusion::ddim_step`] for a denoiser output that may carry a CFG++ null
    /// prediction, whose noise then replaces the guided one in the step (the reference's
    /// `use_cfg_plus_plus`).
    pub fn ddim_step_with<B: Backend>(
        &self,
        x: Tensor<B, 4>,
        t: usize,
        t_next: i64,
        output: DenoiserOutput<B>,
        eta: f64,
        rng: &mut impl Rng,
    ) -> Tensor<B, 4> {
        let (eps, x0) = self.predictions(x.clone(), t, output.out, true);
        if t_next < 0 {
            return x0;
        }
        let eps = self.renoise_eps(x, t, eps, output.renoise);
        // Float32 scalar arithmetic, as the reference does on its float32 buffers.
        let ac = &self.schedule().alphas_cumprod;
        let alpha = ac[t] as f32;
        let alpha_next = ac[t_next as usize] as f32;
        let sigma = eta as f32 * ((1.0 - alpha / alpha_next) * (1.0 - alpha_next) / (1.0 - alpha)).sqrt();
        let c = (1.0 - alpha_next - sigma * sigma).sqrt();
        let mut next = x0.mul_scalar(alpha_next.sqrt()) + eps.mul_scalar(c);
        if sigma > 0.0 {
            let z = gaussian_noise::<B, 4>(rng, next.dims(), &next.device());
            next = next + z.mul_scalar(sigma);
        }
        next
    }

    fn ddim_loop<B: Backend, M: Denoiser<B>>(
        &self,
        model: &M,
        mut x: Tensor<B, 4>,
        steps: usize,
        eta: f64,
        rng: &mut impl Rng,
        progress: &mut dyn FnMut(SampleProgress),
    ) -> Result<Tensor<B, 4>> {
        let pairs = ddim_time_pairs(self.timesteps(), steps);
        let total = pairs.len();
        for (i, &(t, t_next)) in pairs.iter().enumerate() {
            let out = self.evaluate(model, &x, t, i + 1, total)?;
            x = self.ddim_step_with(x, t, t_next, out, eta, rng);
            progress(SampleProgress { step: i + 1, total, t });
        }
        Ok(x)
    }

    /// One DPM-Solver++(2M) update from `x` at timestep `t` to `t_next`, given the clipped `x_0`
    /// predictions at `t` (`x0`) and at the previous evaluation (`prev = (t_prev, x0_prev)`, first
    /// order when `None`).
    pub fn dpmpp_2m_step<B: Backend>(
        &self,
        x: Tensor<B, 4>,
        t: usize,
        t_next: usize,
        x0: Tensor<B, 4>,
        prev: Option<(usize, Tensor<B, 4>)>,
    ) -> Tensor<B, 4> {
        let s = self.schedule();
        let (lam, lam_next) = (s.lambda(t), s.lambda(t_next));
        let h = lam_next - lam;
        let sigma_ratio = s.sqrt_one_minus_alphas_cumprod[t_next] / s.sqrt_one_minus_alphas_cumprod[t];
        let alpha_next = s.sqrt_alphas_cumprod[t_next];
        let phi = -(-h).exp_m1(); // 1 - e^{-h}
        let d = match prev {
            None => x0,
            Some((t_prev, x0_prev)) => {
                let r = (lam - s.lambda(t_prev)) / h;
                let c = 1.0 / (2.0 * r);
                x0.mul_scalar((1.0 + c) as f32) - x0_prev.mul_scalar(c as f32)
            }
        };
        x.mul_scalar(sigma_ratio as f32) + d.mul_scalar((alpha_next * phi) as f32)
    }

    /// DPM-Solver++(2M) under CFG++: the plain update re-noises along the guided prediction's
    /// noise `eps` (the 2M update is `alpha_next D + sigma_next eps + alpha_next e^-h (x0 - D)`);
    /// CFG++ swaps in the null prediction's `eps_null`, so the plain update gains
    /// `sigma_next (eps_null - eps)`. First order, this is the CFG++ DDIM step.
    #[allow(clippy::too_many_arguments)]
    fn dpmpp_2m_step_cfgpp<B: Backend>(
        &self,
        x: Tensor<B, 4>,
        t: usize,
        t_next: usize,
        x0: Tensor<B, 4>,
        eps: Tensor<B, 4>,
        eps_null: Tensor<B, 4>,
        prev: Option<(usize, Tensor<B, 4>)>,
    ) -> Tensor<B, 4> {
        let sigma_next = self.schedule().sqrt_one_minus_alphas_cumprod[t_next] as f32;
        self.dpmpp_2m_step(x, t, t_next, x0, prev) + (eps_null - eps).mul_scalar(sigma_next)
    }

    fn dpmpp_loop<B: Backend, M: Denoiser<B>>(
        &self,
        model: &M,
        mut x: Tensor<B, 4>,
        steps: usize,
        progress: &mut dyn FnMut(SampleProgress),
    ) -> Result<Tensor<B, 4>> {
        let ts = dpm_solver_timesteps(self.schedule(), steps);
        let total = ts.len();
        let mut prev: Option<(usize, Tensor<B, 4>)> = None;
        for (i, &t) in ts.iter().enumerate() {
            let output = self.evaluate(model, &x, t, i + 1, total)?;
            let (eps, x0) = self.predictions(x.clone(), t, output.out, true);
            progress(SampleProgress { step: i + 1, total, t });
            match ts.get(i + 1) {
                None => return Ok(x0), // final jump to sigma = 0 is the x_0 prediction
                Some(&t_next) => {
                    let second_order = prev.is_some() && i + 2 < total;
                    let p = if second_order { prev.take() } else { None };
                    x = match output.renoise {
                        None => self.dpmpp_2m_step(x, t, t_next, x0.clone(), p),
                        renoise => {
                            let eps_null = self.renoise_eps(x.clone(), t, eps.clone(), renoise);
                            self.dpmpp_2m_step_cfgpp(x, t, t_next, x0.clone(), eps, eps_null, p)
                        }
                    };
                    prev = Some((t, x0));
                }
            }
        }
        Ok(x)
    }
}
