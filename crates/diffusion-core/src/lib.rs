//! # diffusion-core
//!
//! Noise schedules, the DDPM training objective and samplers for denoising diffusion models,
//! generic over any [burn](https://burn.dev) backend and any network implementing [`Denoiser`].
//!
//! Conventions follow denoising-diffusion-pytorch 2.x (the reference this crate is tested
//! against): images are `[N, C, H, W]` in `[0, 1]` outside and `[-1, 1]` inside; timesteps are
//! 0-based integers `0..T`; schedule buffers are computed in `f64` and used as `f32`.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::Tensor;
//! use diffusion_core::{DiffusionConfig, GaussianDiffusion, Sampler};
//!
//! let diffusion = GaussianDiffusion::new(DiffusionConfig { timesteps: 100, ..Default::default() }).unwrap();
//! // Any closure is a denoiser; a real model would be the `unet` crate's U-Net.
//! let model = |x: Tensor<Flex, 4>, _t: Tensor<Flex, 1>| x.zeros_like();
//! let images = diffusion
//!     .sample(&model, Sampler::Ddim { steps: 10, eta: 0.0 }, [2, 1, 8, 8], 42, &Default::default(), &mut |_| {})
//!     .unwrap();
//! assert_eq!(images.dims(), [2, 1, 8, 8]);
//! ```
//!
//! Class-conditional networks implement [`ConditionalDenoiser`]; [`GaussianDiffusion::loss_labelled`]
//! trains them with condition dropout, and [`Guided`] turns one into a plain [`Denoiser`] with
//! classifier-free guidance ([`Guidance`]: scale, std rescaling, CFG++), so every sampler guides.
//!
//! ## Feature flags
//! None; the crate only needs burn's tensor API. Pick a backend in the application.
#![warn(missing_docs)]

mod denoiser;
mod diffusion;
mod error;
mod guidance;
mod names;
mod sampler;
pub mod schedule;

pub use denoiser::Denoiser;
pub use diffusion::{gaussian_noise, normalize, unnormalize, DiffusionConfig, GaussianDiffusion, LossWeighting};
pub use error::{DiffusionError, Result};
pub use guidance::{check_labels, drop_labels, guide, ConditionalDenoiser, DenoiserOutput, Guidance, Guided};
pub use names::SamplerKind;
pub use sampler::{ddim_time_pairs, dpm_solver_timesteps, SampleProgress, Sampler};
pub use schedule::{BetaSchedule, NoiseSchedule};

/// What the denoiser predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// The added noise `eps`.
    PredNoise,
    /// The clean image `x_0`.
    PredX0,
    /// The velocity `v = sqrt(a) eps - sqrt(1 - a) x_0` (Salimans & Ho 2022).
    PredV,
}

/// The random-number generator used for reproducible sampling and training noise.
pub type DiffusionRng = rand_chacha::ChaCha8Rng;
