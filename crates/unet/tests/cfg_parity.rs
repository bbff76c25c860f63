//! Parity of the class-conditional U-Net with denoising-diffusion-pytorch 2.3.4's
//! `classifier_free_guidance.py`. Fixtures in `tests/fixtures/cfg/` are copied from
//! `shared/fixtures/cfg/`, made by `shared/fixtures/make_cfg_fixtures.py`:
//! `Unet(dim=8, num_classes=3, dim_mults=(1,2), channels=1)` after 3 Adam steps, inside
//! `GaussianDiffusion(image_size=16, objective="pred_v", beta_schedule="cosine")`.

use std::path::PathBuf;

use burn::backend::{Flex, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use diffusion_core::{
    BetaSchedule, DiffusionConfig, DiffusionRng, GaussianDiffusion, Guidance, Guided, LossWeighting, Objective, Sampler,
};
use ndarray::ArrayD;
use ndarray_npy::read_npy;
use rand::SeedableRng;
use unet::{load_checkpoint, read_state_dict, CheckpointFormat, Unet, UnetBackend, UnetConfig, Weights};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cfg")
        .join(name)
}

fn config() -> UnetConfig {
    UnetConfig::conditional(8, 3, vec![1, 2], 1)
}

fn tensor<B: Backend>(name: &str, device: &B::Device) -> Tensor<B, 4> {
    let a: ArrayD<f32> = read_npy(fixture(name)).unwrap();
    let shape: Vec<usize> = a.shape().to_vec();
    Tensor::from_data(TensorData::new(a.into_raw_vec_and_offset().0, shape), device)
}

fn ints(name: &str) -> Vec<i64> {
    let a: ArrayD<i64> = read_npy(fixture(name)).unwrap();
    a.iter().copied().collect()
}

fn keep_mask() -> Vec<bool> {
    let a: ArrayD<bool> = read_npy(fixture("forward_keep_mask.npy")).unwrap();
    a.iter().copied().collect()
}

fn timesteps<B: Backend>(device: &B::Device) -> Tensor<B, 1> {
    let t: Vec<f32> = ints("forward_t.npy").iter().map(|&v| v as f32).collect();
    let n = t.len();
    Tensor::from_data(TensorData::new(t, [n]), device)
}

fn classes() -> Vec<usize> {
    ints("forward_classes.npy").iter().map(|&v| v as usize).collect()
}

fn max_abs_diff<B: Backend>(y: Tensor<B, 4>, want: &str) -> f32 {
    let want: ArrayD<f32> = read_npy(fixture(want)).unwrap();
    assert_eq!(y.dims().to_vec(), want.shape().to_vec());
    let got: Vec<f32> = y.into_data().to_vec().unwrap();
    got.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

fn diffusion() -> GaussianDiffusion {
    GaussianDiffusion::new(DiffusionConfig {
        timesteps: 1000,
        schedule: BetaSchedule::cosine(),
        objective: Objective::PredV,
        loss_weighting: LossWeighting::Plain,
        offset_noise_strength: 0.0,
    })
    .unwrap()
}

fn check_forward<B: UnetBackend>(model: &Unet<B>, device: &B::Device) {
    let x = tensor::<B>("forward_x.npy", device);
    let t = timesteps::<B>(device);
    let cond: Vec<Option<usize>> = classes().into_iter().map(Some).collect();
    let masked: Vec<Option<usize>> = cond.iter().zip(keep_mask()).map(|(&c, k)| c.filter(|_| k)).collect();
    for (labels, want) in [
        (cond.clone(), "forward_out_cond.npy"),
        (vec![None; 3], "forward_out_null.npy"),
        (masked, "forward_out_keep_mask.npy"),
    ] {
        let d = max_abs_diff(model.forward_labelled(x.clone(), t.clone(), &labels), want);
        eprintln!("{want}: max |diff| {d:e}");
        assert!(d <= 1e-5, "{want}: max |diff| {d:e}");
    }
    // The unlabelled forward of the conditional network is the null-class prediction.
    let d = max_abs_diff(model.forward(x.clone(), t.clone()), "forward_out_null.npy");
    assert!(d <= 1e-5, "forward(): {d:e}");
    // Guided: forward_with_cond_scale(cond_scale=3, rescaled_phi=0.7 / 0), run through Guided.
    use diffusion_core::Denoiser;
    for (phi, want) in [(0.7, "forward_out_guided.npy"), (0.0, "forward_out_guided_phi0.npy")] {
        let guided = Guided::new(model, cond.clone(), Guidance::new(3.0, phi)).unwrap();
        let d = max_abs_diff(guided.denoise(x.clone(), t.clone()), want);
        eprintln!("{want}: max |diff| {d:e}");
        assert!(d <= 1e-5, "{want}: max |diff| {d:e}");
    }
}

#[test]
fn bare_state_dict_matches_the_reference_forward() {
    let device = Default::default();
    let sd = read_state_dict(&fixture("cfg_unet_state_dict.pth"), Weights::Model).unwrap();
    assert_eq!(sd.format(), CheckpointFormat::UnetStateDict);
    assert_eq!(sd.infer_config().unwrap(), config());
    assert_eq!(sd.len(), unet::keys::param_specs(&config()).len());
    let model = sd.into_unet::<Flex>(None, &device).unwrap();
    check_forward(&model, &device);
    assert_eq!(model.config().describe(), "Unet(dim=8, num_classes=3, dim_mults=(1,2), channels=1)");
}

#[test]
fn diffusion_state_dict_loads_the_same_network_on_ndarray() {
    let device = Default::default();
    let sd = read_state_dict(&fixture("cfg_diffusion_state_dict.pth"), Weights::Model).unwrap();
    assert_eq!(sd.format(), CheckpointFormat::DiffusionStateDict);
    let model = sd.into_unet::<NdArray>(Some(&config()), &device).unwrap();
    check_forward(&model, &device);
}

fn check_loss<B: UnetBackend>(device: &B::Device) {
    let model = load_checkpoint::<B>(&fixture("cfg_unet_state_dict.pth"), Weights::Model, None, device).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    let want = expected["loss"].as_f64().unwrap();
    let t: Vec<usize> = ints("forward_t.npy").iter().map(|&v| v as usize).collect();
    let labels: Vec<Option<usize>> = classes().into_iter().zip(keep_mask()).map(|(c, k)| k.then_some(c)).collect();
    let x0 = tensor::<B>("loss_x0.npy", device);
    let noise = tensor::<B>("loss_noise.npy", device);
    let loss: f32 = diffusion().loss_at_labelled(&model, x0, &t, noise, &labels).unwrap().into_scalar().elem();
    eprintln!("loss {loss} vs reference {want}");
    assert!((loss as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "loss {loss} vs {want}");
}

fn check_guided_ddim<B: UnetBackend>(device: &B::Device) {
    let model = load_checkpoint::<B>(&fixture("cfg_unet_state_dict.pth"), Weights::Model, None, device).unwrap();
    let labels: Vec<Option<usize>> = classes().into_iter().map(Some).collect();
    let guided = Guided::new(&model, labels, Guidance::new(3.0, 0.7)).unwrap();
    let x_t = tensor::<B>("ddim_xT.npy", device);
    let mut rng = DiffusionRng::seed_from_u64(0);
    let out =
        diffusion().sample_from(&guided, Sampler::Ddim { steps: 10, eta: 0.0 }, x_t, &mut rng, &mut |_| {}).unwrap();
    let d = max_abs_diff(out, "ddim_out.npy");
    eprintln!("guided DDIM: max |diff| {d:e}");
    assert!(d <= 1e-4, "guided DDIM: max |diff| {d:e}");
}

#[test]
fn loss_matches_p_losses_with_a_keep_mask() {
    check_loss::<Flex>(&Default::default());
}

#[test]
fn guided_ddim_sample_matches_the_reference() {
    check_guided_ddim::<Flex>(&Default::default());
}

/// The same checks on burn's LibTorch backend (libtorch's CPU; `--features tch`, libtorch 2.9).
#[cfg(feature = "tch")]
mod libtorch {
    use super::*;
    use burn::backend::libtorch::LibTorchDevice;
    use burn::backend::LibTorch;

    #[test]
    fn conditional_forward_and_guidance_match_the_reference() {
        let device = LibTorchDevice::Cpu;
        let model =
            load_checkpoint::<LibTorch>(&fixture("cfg_unet_state_dict.pth"), Weights::Model, None, &device).unwrap();
        check_forward(&model, &device);
    }

    #[test]
    fn loss_matches_p_losses() {
        check_loss::<LibTorch>(&LibTorchDevice::Cpu);
    }

    #[test]
    fn guided_ddim_sample_matches_the_reference() {
        check_guided_ddim::<LibTorch>(&LibTorchDevice::Cpu);
    }
}

#[test]
fn conditional_network_survives_our_formats() {
    let device = Default::default();
    let model = load_checkpoint::<Flex>(&fixture("cfg_unet_state_dict.pth"), Weights::Model, None, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let x = tensor::<Flex>("forward_x.npy", &device);
    let t = timesteps::<Flex>(&device);
    let labels = [Some(2), None, Some(0)];
    let want: Vec<f32> = model.forward_labelled(x.clone(), t.clone(), &labels).into_data().to_vec().unwrap();
    for name in ["m.bpk", "m.safetensors"] {
        let path = dir.path().join(name);
        if name.ends_with("bpk") {
            model.save(&path).unwrap();
        } else {
            model.export_safetensors(&path).unwrap();
        }
        let back = load_checkpoint::<Flex>(&path, Weights::Model, None, &device).unwrap();
        assert_eq!(back.config(), model.config(), "{name}");
        let got: Vec<f32> = back.forward_labelled(x.clone(), t.clone(), &labels).into_data().to_vec().unwrap();
        assert_eq!(got, want, "{name}");
    }
    // A label beyond the classes is a typed error, not a panic.
    let err = model.try_forward_labelled(x, t, &[Some(3), None, None]).unwrap_err();
    assert!(err.to_string().contains("class label 3"), "{err}");
}

#[test]
fn freshly_built_conditional_network_has_the_reference_keys() {
    let device = Default::default();
    let model = config().init::<Flex>(&device).unwrap();
    let sd = read_state_dict(&fixture("cfg_unet_state_dict.pth"), Weights::Model).unwrap();
    let ours: Vec<String> = model.torch_state_dict().into_iter().map(|(k, _, _)| k).collect();
    let mut theirs = sd.keys();
    let mut sorted = ours.clone();
    sorted.sort();
    theirs.sort();
    assert_eq!(sorted, theirs);
    let stored: usize = sd.shapes().values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(config().num_params(), stored);
}
