//! The exact denoiser of Gaussian data, shared by the sampler and guidance tests.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use diffusion_core::{GaussianDiffusion, Objective};

/// What the exact denoiser predicts (the quantity `d`'s objective names) for per-pixel
/// N(mu, s^2) data in the model's [-1, 1] scale, where sample `i` of the batch has mean `mu(i)`:
/// E[x_0 | x_t] = (sqrt(a) s^2 x_t + (1 - a) mu) / (a s^2 + 1 - a).
pub fn exact_gaussian_output(
    d: &GaussianDiffusion,
    x: Tensor<Flex, 4>,
    t: Tensor<Flex, 1>,
    s: f64,
    mu: impl Fn(usize) -> f64,
) -> Tensor<Flex, 4> {
    let dims = x.dims();
    let ts: Vec<f32> = t.into_data().to_vec().unwrap();
    let xs: Vec<f32> = x.into_data().to_vec().unwrap();
    let per = xs.len() / dims[0];
    let out: Vec<f32> = xs
        .iter()
        .enumerate()
        .map(|(i, &xt)| {
            let mu = mu(i / per);
            let a = d.schedule().alphas_cumprod[ts[i / per] as usize];
            let xt = xt as f64;
            let x0 = (a.sqrt() * s * s * xt + (1.0 - a) * mu) / (a * s * s + 1.0 - a);
            let eps = (xt - a.sqrt() * x0) / (1.0 - a).sqrt();
            (match d.config().objective {
                Objective::PredX0 => x0,
                Objective::PredNoise => eps,
                Objective::PredV => a.sqrt() * eps - (1.0 - a).sqrt() * x0,
            }) as f32
        })
        .collect();
    Tensor::from_data(TensorData::new(out, dims), &Default::default())
}
