//! Parity with denoising-diffusion-pytorch 2.3.4: the fixtures in `tests/fixtures/` were made
//! by the reference library (see the workspace's shared fixtures README):
//! `Unet(dim=8, dim_mults=(1,2), channels=1)` after 3 Adam steps, EMA decay 0.9.

use std::path::PathBuf;

use burn::backend::{Flex, NdArray};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use ndarray::ArrayD;
use ndarray_npy::read_npy;
use unet::{load_checkpoint, read_state_dict, CheckpointFormat, Unet, UnetConfig, Weights};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn fixture_config() -> UnetConfig {
    UnetConfig::new(8, vec![1, 2], 1)
}

fn inputs<B: Backend>(device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 1>) {
    let x: ArrayD<f32> = read_npy(fixture("forward_x.npy")).unwrap();
    let t: ArrayD<i64> = read_npy(fixture("forward_t.npy")).unwrap();
    let shape: Vec<usize> = x.shape().to_vec();
    let x = Tensor::from_data(TensorData::new(x.into_raw_vec_and_offset().0, shape), device);
    let t: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    let n = t.len();
    (x, Tensor::from_data(TensorData::new(t, [n]), device))
}

fn expected(name: &str) -> ArrayD<f32> {
    read_npy(fixture(name)).unwrap()
}

fn max_abs_diff<B: Backend>(y: Tensor<B, 4>, want: &ArrayD<f32>) -> f32 {
    assert_eq!(y.dims().to_vec(), want.shape().to_vec());
    let got: Vec<f32> = y.into_data().to_vec().unwrap();
    got.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

fn check<B: unet::UnetBackend>(model: &Unet<B>, out: &str, device: &B::Device) {
    let (x, t) = inputs::<B>(device);
    let want = expected(out);
    let d = max_abs_diff(model.forward(x, t), &want);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("{out}: max abs diff {d:e}, output scale {scale}");
    assert!(d <= 1e-5, "{out}: max |diff| = {d:e} (output scale {scale})");
}

#[test]
fn bare_state_dict_matches_pytorch_forward() {
    let device = Default::default();
    let sd = read_state_dict(&fixture("unet_state_dict.pth"), Weights::Model).unwrap();
    assert_eq!(sd.format(), CheckpointFormat::UnetStateDict);
    assert_eq!(sd.infer_config().unwrap(), fixture_config());
    let model = sd.into_unet::<Flex>(Some(&fixture_config()), &device).unwrap();
    check(&model, "forward_out.npy", &device);
}

#[test]
fn diffusion_state_dict_gives_the_same_network() {
    let device = Default::default();
    let sd = read_state_dict(&fixture("diffusion_state_dict.pth"), Weights::Model).unwrap();
    assert_eq!(sd.format(), CheckpointFormat::DiffusionStateDict);
    // the 13 schedule buffers are not part of the U-Net
    assert_eq!(sd.len(), unet::keys::param_specs(&fixture_config()).len());
    let model = sd.into_unet::<Flex>(None, &device).unwrap();
    check(&model, "forward_out.npy", &device);
}

#[test]
fn trainer_checkpoint_model_and_ema_weights() {
    let device = Default::default();
    let path = fixture("trainer_checkpoint.pt");
    let ema = load_checkpoint::<Flex>(&path, Weights::Ema, None, &device).unwrap();
    check(&ema, "forward_out_ema.npy", &device);
    let online = load_checkpoint::<Flex>(&path, Weights::Model, Some(&fixture_config()), &device).unwrap();
    check(&online, "forward_out.npy", &device);
    assert_eq!(read_state_dict(&path, Weights::Ema).unwrap().format(), CheckpointFormat::TrainerEma);
}

#[test]
fn bare_state_dict_on_ndarray() {
    let device = Default::default();
    let model = load_checkpoint::<NdArray>(&fixture("unet_state_dict.pth"), Weights::Model, None, &device).unwrap();
    check(&model, "forward_out.npy", &device);
}

/// Non-default arguments (init_dim, out_dim, heads, dim_head, full_attn, 3 stages, 2 channels,
/// non-square input); made by scripts/make_config_fixture.py.
#[test]
fn non_default_config_matches_pytorch_forward() {
    let device = Default::default();
    let json = std::fs::read_to_string(fixture("odd_config.json")).unwrap();
    let config: UnetConfig = serde_json::from_str(&json).unwrap();
    let sd = read_state_dict(&fixture("odd_state_dict.pth"), Weights::Model).unwrap();
    assert_eq!(sd.infer_config().unwrap(), config);
    let model = sd.into_unet::<Flex>(None, &device).unwrap();
    let x: ArrayD<f32> = read_npy(fixture("odd_x.npy")).unwrap();
    let t: ArrayD<i64> = read_npy(fixture("odd_t.npy")).unwrap();
    let shape = x.shape().to_vec();
    let x = Tensor::<Flex, 4>::from_data(TensorData::new(x.into_raw_vec_and_offset().0, shape), &device);
    let t: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    let t = Tensor::<Flex, 1>::from_data(TensorData::new(t, [2]), &device);
    let d = max_abs_diff(model.forward(x, t), &expected("odd_out.npy"));
    eprintln!("odd_out.npy: max abs diff {d:e}");
    assert!(d <= 1e-5, "max |diff| = {d:e}");
}

/// The network's outputs after one SGD step on the mean squared output: plain SGD (not Adam)
/// so that the step is proportional to the gradients and any gradient error shows.
fn after_one_step<B>(device: &B::Device) -> Vec<f32>
where
    B: AutodiffBackend + unet::UnetBackend,
    B::InnerBackend: unet::UnetBackend,
{
    let model = load_checkpoint::<B>(&fixture("unet_state_dict.pth"), Weights::Model, None, device).unwrap();
    let (x, t) = inputs::<B>(device);
    let loss = model.forward(x.clone(), t.clone()).powf_scalar(2.0).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = SgdConfig::new().init().step(0.1, model, grads);
    model.valid().forward(x.inner(), t.inner()).into_data().to_vec().unwrap()
}

/// The gradients of our Flex path (its own convolution kernels, 1x1 convolutions included, the
/// fused norm and softmaxes, the linear attention's context computed transposed) against burn's
/// generic operations on NdArray, through one SGD step.
#[test]
fn one_training_step_on_flex_matches_ndarray() {
    use burn::backend::Autodiff;
    let flex = after_one_step::<Autodiff<Flex>>(&Default::default());
    let ndarray = after_one_step::<Autodiff<NdArray>>(&Default::default());
    assert_same_step(&flex, &ndarray, "NdArray");
}

/// `other`'s outputs after [`after_one_step`] equal Flex's to 1e-4, for a step that moved them.
fn assert_same_step(flex: &[f32], other: &[f32], name: &str) {
    let before: Vec<f32> = expected("forward_out.npy").iter().copied().collect();
    let moved = flex.iter().zip(&before).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    let d = flex.iter().zip(other).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    eprintln!("one SGD step: outputs moved by up to {moved:e}; {name} vs Flex max |diff| {d:e}");
    assert!(moved > 1e-3, "the step must change the network for the comparison to mean anything");
    assert!(d <= 1e-4, "{name} vs Flex after one step: max |diff| {d:e}");
}

/// The same network on burn's LibTorch backend (libtorch's CPU; `--features tch`, libtorch 2.9):
/// the forward against PyTorch, and one training step against Flex's.
#[cfg(feature = "tch")]
mod libtorch {
    use super::*;
    use burn::backend::libtorch::LibTorchDevice;
    use burn::backend::{Autodiff, LibTorch};

    #[test]
    fn forward_matches_pytorch() {
        let device = LibTorchDevice::Cpu;
        let model =
            load_checkpoint::<LibTorch>(&fixture("unet_state_dict.pth"), Weights::Model, None, &device).unwrap();
        check(&model, "forward_out.npy", &device);
    }

    #[test]
    fn one_training_step_matches_flex() {
        let flex = after_one_step::<Autodiff<Flex>>(&Default::default());
        let torch = after_one_step::<Autodiff<LibTorch>>(&LibTorchDevice::Cpu);
        assert_same_step(&flex, &torch, "LibTorch");
    }
}
