//! diffusion-core: noise schedules, DDPM training objectives and samplers, generic over burn backends.
#![warn(missing_docs)]

mod denoiser;
pub use denoiser::Denoiser;

/// What the denoiser predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// The added noise `eps`.
    PredNoise,
    /// The clean image `x_0`.
    PredX0,
    /// `v = sqrt(a) eps - sqrt(1 - a) x_0`.
    PredV,
}
