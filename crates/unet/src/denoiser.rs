//! The U-Net as a [`diffusion_core::Denoiser`].

use burn::tensor::Tensor;
use diffusion_core::{ConditionalDenoiser, Denoiser};

use crate::backend::UnetBackend;
use crate::model::Unet;

impl<B: UnetBackend> Denoiser<B> for Unet<B> {
    /// [`Unet::forward`]: `x: [N, C, H, W]`, `t: [N]` integer steps as floats.
    fn denoise(&self, x: Tensor<B, 4>, t: Tensor<B, 1>) -> Tensor<B, 4> {
        self.forward(x, t)
    }
}

impl<B: UnetBackend> ConditionalDenoiser<B> for Unet<B> {
    /// [`Unet::forward_labelled`]: `None` labels take the learned null class.
    fn denoise_labelled(&self, x: Tensor<B, 4>, t: Tensor<B, 1>, labels: &[Option<usize>]) -> Tensor<B, 4> {
        self.forward_labelled(x, t, labels)
    }

    /// `num_classes` of the config; 0 for the unconditional network (only `None` labels).
    fn num_classes(&self) -> usize {
        self.config.num_classes.unwrap_or(0)
    }
}
