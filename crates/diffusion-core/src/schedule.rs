//! Noise schedules and every per-timestep buffer derived from them, in `f64`.
//!
//! Follows denoising-diffusion-pytorch 2.x bit for bit: the library builds its betas in float64
//! (with `torch.linspace`'s two-sided formula) and derives the buffers in float64 before storing
//! them as float32, so `value as f32` of these buffers equals its stored buffers.

use crate::error::{DiffusionError, Result};

/// How `beta_t` (equivalently `alpha_bar_t`) evolves over the `T` timesteps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Ho et al. (2020): betas linear from `1e-4 * 1000/T` to `0.02 * 1000/T`.
    Linear,
    /// Nichol & Dhariwal (2021): `alpha_bar(t) = cos^2(((t/T) + s)/(1 + s) * pi/2)`, normalised.
    Cosine {
        /// Offset `s` (0.008 in the paper).
        s: f64,
    },
    /// Jabri et al. (2022): `alpha_bar` follows a sigmoid of `t` between `start` and `end`.
    Sigmoid {
        /// Left end of the sigmoid's input range (-3 by default).
        start: f64,
        /// Right end of the sigmoid's input range (3 by default).
        end: f64,
        /// Temperature (1 by default).
        tau: f64,
    },
}

impl BetaSchedule {
    /// The cosine schedule with the paper's `s = 0.008`.
    pub const fn cosine() -> Self {
        Self::Cosine { s: 0.008 }
    }
    /// The sigmoid schedule with denoising-diffusion-pytorch's defaults (-3, 3, 1).
    pub const fn sigmoid() -> Self {
        Self::Sigmoid { start: -3.0, end: 3.0, tau: 1.0 }
    }

    /// The betas `beta_1 .. beta_T` as `f64`.
    pub fn betas(&self, timesteps: usize) -> Result<Vec<f64>> {
        if timesteps == 0 {
            return Err(DiffusionError::ZeroTimesteps(timesteps));
        }
        let t = timesteps as f64;
        match *self {
            Self::Linear => {
                let scale = 1000.0 / t;
                if scale * 0.02 >= 1.0 {
                    return Err(DiffusionError::InvalidScheduleParameter {
                        name: "timesteps",
                        value: t,
                        reason: "the linear schedule needs T > 20 (its last beta, 20/T, must be < 1)",
                    });
                }
                Ok(torch_linspace(scale * 0.0001, scale * 0.02, timesteps))
            }
            Self::Cosine { s } => {
                if !(s.is_finite() && s >= 0.0) {
                    return Err(DiffusionError::InvalidScheduleParameter {
                        name: "s",
                        value: s,
                        reason: "must be finite and >= 0",
                    });
                }
                let ts = torch_linspace(0.0, t, timesteps + 1);
                let ac: Vec<f64> = ts
                    .iter()
                    .map(|&x| {
                        let c = ((x / t + s) / (1.0 + s) * std::f64::consts::PI * 0.5).cos();
                        c * c
                    })
                    .collect();
                Ok(betas_from_alphas_cumprod(&ac))
            }
            Self::Sigmoid { start, end, tau } => {
                for (name, v) in [("start", start), ("end", end), ("tau", tau)] {
                    if !v.is_finite() {
                        return Err(DiffusionError::InvalidScheduleParameter {
                            name,
                            value: v,
                            reason: "must be finite",
                        });
                    }
                }
                if tau <= 0.0 {
                    return Err(DiffusionError::InvalidScheduleParameter {
                        name: "tau",
                        value: tau,
                        reason: "must be > 0",
                    });
                }
                if end <= start {
                    return Err(DiffusionError::InvalidScheduleParameter {
                        name: "end",
                        value: end,
                        reason: "must be greater than `start`",
                    });
                }
                // The reference computes v_start, v_end from 0-dim float32 tensors
                // (`torch.tensor(start / tau).sigmoid()`), then mixes them into float64 math.
                let v_start = sigmoid_f32((start / tau) as f32) as f64;
                let v_end = sigmoid_f32((end / tau) as f32) as f64;
                let ts = torch_linspace(0.0, t, timesteps + 1);
                let ac: Vec<f64> = ts
                    .iter()
                    .map(|&x| {
                        let x = x / t;
                        (-sigmoid_f64((x * (end - start) + start) / tau) + v_end) / (v_end - v_start)
                    })
                    .collect();
                Ok(betas_from_alphas_cumprod(&ac))
            }
        }
    }
}

fn sigmoid_f64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `torch.linspace` for one float type: the first half counts up from `start`, the second half
/// down from `end`, which is what makes the reference buffers reproducible to the bit.
macro_rules! torch_linspace_fn {
    ($(#[$doc:meta])* $name:ident, $t:ty) => {
        $(#[$doc])*
        pub fn $name(start: $t, end: $t, steps: usize) -> Vec<$t> {
            match steps {
                0 => vec![],
                1 => vec![start],
                _ => {
                    let step = (end - start) / (steps - 1) as $t;
                    let halfway = steps / 2;
                    (0..steps)
                        .map(|i| if i < halfway { start + step * i as $t } else { end - step * (steps - i - 1) as $t })
                        .collect()
                }
            }
        }
    };
}

torch_linspace_fn!(
    /// `torch.linspace(start, end, steps)` in float64: the first half counts up from `start`, the
    /// second half down from `end`, which is what makes the reference buffers reproducible to the bit.
    torch_linspace,
    f64
);
torch_linspace_fn!(
    /// Float32 version of [`torch_linspace`] (the reference builds DDIM's time grid in float32).
    torch_linspace_f32,
    f32
);

fn betas_from_alphas_cumprod(ac: &[f64]) -> Vec<f64> {
    let a0 = ac[0];
    let ac: Vec<f64> = ac.iter().map(|v| v / a0).collect();
    ac.windows(2).map(|w| (1.0 - w[1] / w[0]).clamp(0.0, 0.999)).collect()
}

/// A noise schedule with all the buffers that training and sampling need, indexed by the
/// 0-based timestep `t in 0..T` (denoising-diffusion-pytorch's indexing).
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// Which schedule produced the betas.
    pub kind: BetaSchedule,
    /// `beta_t`.
    pub betas: Vec<f64>,
    /// `alpha_t = 1 - beta_t`.
    pub alphas: Vec<f64>,
    /// `alpha_bar_t = prod_{s <= t} alpha_s`.
    pub alphas_cumprod: Vec<f64>,
    /// `alpha_bar_{t-1}` (1 at `t = 0`).
    pub alphas_cumprod_prev: Vec<f64>,
    /// `sqrt(alpha_bar_t)`.
    pub sqrt_alphas_cumprod: Vec<f64>,
    /// `sqrt(1 - alpha_bar_t)`.
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    /// `sqrt(1 / alpha_bar_t)`.
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    /// `sqrt(1 / alpha_bar_t - 1)`.
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    /// Variance of `q(x_{t-1} | x_t, x_0)`.
    pub posterior_variance: Vec<f64>,
    /// `log(max(posterior_variance, 1e-20))` (finite at `t = 0`).
    pub posterior_log_variance_clipped: Vec<f64>,
    /// Coefficient of `x_0` in the posterior mean.
    pub posterior_mean_coef1: Vec<f64>,
    /// Coefficient of `x_t` in the posterior mean.
    pub posterior_mean_coef2: Vec<f64>,
    /// Signal-to-noise ratio `alpha_bar_t / (1 - alpha_bar_t)`.
    pub snr: Vec<f64>,
}

impl NoiseSchedule {
    /// Build the schedule for `timesteps` steps. Errors on `timesteps == 0` and invalid parameters.
    pub fn new(kind: BetaSchedule, timesteps: usize) -> Result<Self> {
        let betas = kind.betas(timesteps)?;
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = Vec::with_capacity(timesteps);
        let mut acc = 1.0f64;
        for a in &alphas {
            acc *= a;
            alphas_cumprod.push(acc);
        }
        let mut alphas_cumprod_prev = vec![1.0];
        alphas_cumprod_prev.extend_from_slice(&alphas_cumprod[..timesteps - 1]);
        let map = |f: &dyn Fn(usize) -> f64| (0..timesteps).map(f).collect::<Vec<f64>>();
        let ac = &alphas_cumprod;
        let acp = &alphas_cumprod_prev;
        let posterior_variance = map(&|i| betas[i] * (1.0 - acp[i]) / (1.0 - ac[i]));
        Ok(Self {
            kind,
            sqrt_alphas_cumprod: map(&|i| ac[i].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|i| (1.0 - ac[i]).sqrt()),
            sqrt_recip_alphas_cumprod: map(&|i| (1.0 / ac[i]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|i| (1.0 / ac[i] - 1.0).sqrt()),
            posterior_log_variance_clipped: posterior_variance.iter().map(|v| v.max(1e-20).ln()).collect(),
            posterior_mean_coef1: map(&|i| betas[i] * acp[i].sqrt() / (1.0 - ac[i])),
            posterior_mean_coef2: map(&|i| (1.0 - acp[i]) * alphas[i].sqrt() / (1.0 - ac[i])),
            snr: map(&|i| ac[i] / (1.0 - ac[i])),
            posterior_variance,
            betas,
            alphas,
            alphas_cumprod,
            alphas_cumprod_prev,
        })
    }

    /// The number of diffusion timesteps `T`.
    pub fn timesteps(&self) -> usize {
        self.betas.len()
    }

    /// Log signal-to-noise half ratio `lambda_t = log(sqrt(alpha_bar_t) / sqrt(1 - alpha_bar_t))`,
    /// the time variable of DPM-Solver.
    pub fn lambda(&self, t: usize) -> f64 {
        0.5 * (self.alphas_cumprod[t].ln() - (1.0 - self.alphas_cumprod[t]).ln())
    }
}
