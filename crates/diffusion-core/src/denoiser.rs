//! The one trait through which samplers and losses drive a network.

use burn::tensor::{backend::Backend, Tensor};

use crate::guidance::DenoiserOutput;

/// A network that, given a noisy image `x_t` and its timestep, predicts the quantity named by the
/// [`Objective`](crate::Objective) it was trained with (noise, `x_0`, or `v`).
///
/// * `x`: `[N, C, H, W]`, in the model's internal data range (`[-1, 1]` for data).
/// * `t`: `[N]`, the integer timestep of each sample as a float (`0.0 ..= T-1`), exactly what
///   denoising-diffusion-pytorch feeds its U-Net.
///
/// Any `Fn(Tensor<B, 4>, Tensor<B, 1>) -> Tensor<B, 4>` is a denoiser, so a closure or a toy model
/// works as well as the U-Net.
pub trait Denoiser<B: Backend> {
    /// Run the network on one batch.
    fn denoise(&self, x: Tensor<B, 4>, t: Tensor<B, 1>) -> Tensor<B, 4>;

    /// What samplers call: the prediction, plus (under CFG++, see [`crate::Guided`]) the null
    /// prediction to re-noise with. The default is [`Denoiser::denoise`] alone.
    fn denoise_for_sampling(&self, x: Tensor<B, 4>, t: Tensor<B, 1>) -> DenoiserOutput<B> {
        DenoiserOutput { out: self.denoise(x, t), renoise: None }
    }
}

impl<B: Backend, F> Denoiser<B> for F
where
    F: Fn(Tensor<B, 4>, Tensor<B, 1>) -> Tensor<B, 4>,
{
    fn denoise(&self, x: Tensor<B, 4>, t: Tensor<B, 1>) -> Tensor<B, 4> {
        self(x, t)
    }
}
