//! diffusion-core + unet against denoising-diffusion-pytorch 2.3.4.
//!
//! Fixtures in `tests/fixtures/` are copied from the shared reference fixtures (made by
//! `shared/fixtures/make_fixtures.py --set public`): a `Unet(dim=8, dim_mults=(1,2), channels=1)`
//! state dict, the 18 `p_losses` values for `loss_x0.npy` / `loss_noise.npy` at t = [3, 700], and a
//! 10-step DDIM run (eta 0, pred_v, sigmoid, T = 1000) from `ddim_xT.npy` to `ddim_out.npy`.

use std::path::PathBuf;

use burn::backend::{Flex, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use diffusion_core::{BetaSchedule, DiffusionConfig, GaussianDiffusion, LossWeighting, Objective, Sampler};
use lensing_diffusion::unet::UnetBackend;
use ndarray::ArrayD;
use ndarray_npy::read_npy;
use unet::{load_checkpoint, Unet, UnetConfig, Weights};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tensor<B: Backend>(name: &str, device: &B::Device) -> Tensor<B, 4> {
    let a: ArrayD<f32> = read_npy(fixture(name)).unwrap();
    let shape = a.shape().to_vec();
    Tensor::from_data(TensorData::new(a.iter().copied().collect::<Vec<f32>>(), shape), device)
}

fn model<B: Backend>(device: &B::Device) -> Unet<B> {
    load_checkpoint::<B>(
        &fixture("unet_state_dict.pth"),
        Weights::Model,
        Some(&UnetConfig::new(8, vec![1, 2], 1)),
        device,
    )
    .unwrap()
}

fn losses_match<B: UnetBackend>() {
    let device = Default::default();
    let unet = model::<B>(&device);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    let expected = expected["losses_mse_mean"].as_object().unwrap();
    let mut checked = 0;
    for (oname, objective) in
        [("pred_noise", Objective::PredNoise), ("pred_x0", Objective::PredX0), ("pred_v", Objective::PredV)]
    {
        for (sname, schedule) in
            [("linear", BetaSchedule::Linear), ("cosine", BetaSchedule::cosine()), ("sigmoid", BetaSchedule::sigmoid())]
        {
            for (wname, loss_weighting) in
                [("plain", LossWeighting::Plain), ("min_snr", LossWeighting::MinSnr { gamma: 5.0 })]
            {
                let d = GaussianDiffusion::new(DiffusionConfig {
                    timesteps: 1000,
                    schedule,
                    objective,
                    loss_weighting,
                    offset_noise_strength: 0.0,
                })
                .unwrap();
                let loss: f32 = d
                    .loss_at(
                        &unet,
                        tensor::<B>("loss_x0.npy", &device),
                        &[3, 700],
                        tensor::<B>("loss_noise.npy", &device),
                    )
                    .unwrap()
                    .into_scalar()
                    .elem();
                let key = format!("{oname}/{sname}/{wname}");
                let want = expected[&key].as_f64().unwrap();
                let rel = (loss as f64 - want).abs() / want.abs();
                assert!(rel < 1e-5, "{key}: ours {loss} vs reference {want} (rel {rel:e})");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 18);
}

#[test]
fn eighteen_losses_match_reference_on_flex() {
    losses_match::<Flex>();
}

#[test]
fn eighteen_losses_match_reference_on_ndarray() {
    losses_match::<NdArray>();
}

fn ddim_matches<B: UnetBackend>() {
    let device = Default::default();
    let unet = model::<B>(&device);
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap(); // T 1000, sigmoid, pred_v
    let x_t = tensor::<B>("ddim_xT.npy", &device);
    let mut rng = <diffusion_core::DiffusionRng as rand::SeedableRng>::seed_from_u64(0);
    let out = d.sample_from(&unet, Sampler::Ddim { steps: 10, eta: 0.0 }, x_t, &mut rng, &mut |_| {}).unwrap();
    let want: ArrayD<f32> = read_npy(fixture("ddim_out.npy")).unwrap();
    assert_eq!(out.dims().to_vec(), want.shape().to_vec());
    let got: Vec<f32> = out.into_data().to_vec().unwrap();
    let max = got.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max < 1e-4, "DDIM output differs from the reference by {max}");
}

#[test]
fn ddim_ten_steps_matches_reference_on_flex() {
    ddim_matches::<Flex>();
}

#[test]
fn ddim_ten_steps_matches_reference_on_ndarray() {
    ddim_matches::<NdArray>();
}
