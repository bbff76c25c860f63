//! The U-Net as a [`diffusion_core::Denoiser`].

use burn::tensor::Tensor;
use diffusion_core::Denoiser;

use crate::backend::UnetBackend;
use crate::model::Unet;

impl<B: UnetBackend> Denoiser<B> for Unet<B> {
    /// [`Unet::forward`]: `x: [N, C, H, W]`, `t: [N]` integer steps as floats.
    fn denoise(&self, x: Tensor<B, 4>, t: Tensor<B, 1>) -> Tensor<B, 4> {
        self.forward(x, t)
    }
}
