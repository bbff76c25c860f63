//! Classifier-free guidance: the guided combination against denoising-diffusion-pytorch 2.3.4,
//! and the samplers driven by a class-conditional analytic denoiser.
//!
//! Fixtures `tests/fixtures/cfg/forward_out_*.npy` are copied from `shared/fixtures/cfg/` (made
//! by `shared/fixtures/make_cfg_fixtures.py`): the conditional and null outputs of the reference
//! U-Net on one batch of 3, and `forward_with_cond_scale(cond_scale=3, rescaled_phi=0.7 / 0)`.

use std::cell::RefCell;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use diffusion_core::{
    guide, BetaSchedule, ConditionalDenoiser, DiffusionConfig, DiffusionError, DiffusionRng, GaussianDiffusion,
    Guidance, Guided, LossWeighting, Objective, Sampler,
};
use ndarray::ArrayD;
use ndarray_npy::read_npy;
use rand::SeedableRng;

mod common;

type B = Flex;

fn fixture(name: &str) -> Vec<f32> {
    let path = format!(
        "{}/tests/fixtures/cfg/{name}.npy",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")
    );
    let a: ArrayD<f32> = read_npy(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    a.iter().copied().collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn guided_combination_matches_the_reference() {
    let cond = fixture("forward_out_cond");
    let null = fixture("forward_out_null");
    let per_sample = 16 * 16;
    for (phi, name) in [(0.7, "forward_out_guided"), (0.0, "forward_out_guided_phi0")] {
        let ours = guide(&cond, &null, per_sample, &Guidance::new(3.0, phi));
        let diff = max_abs_diff(&ours, &fixture(name));
        assert!(diff < 1e-5, "rescaled_phi {phi}: max |diff| {diff}");
    }
    // Scale 1 is the conditional output, bit for bit.
    assert_eq!(guide(&cond, &null, per_sample, &Guidance::new(1.0, 0.7)), cond);
    // Without the parallel-component removal, scale 0 is the null output.
    let plain = Guidance { cond_scale: 0.0, rescaled_phi: 0.0, remove_parallel: false, cfg_plus_plus: false };
    assert!(max_abs_diff(&guide(&cond, &null, per_sample, &plain), &null) < 1e-6);
    // Removing the parallel component changes the result: the update is not orthogonal to cond.
    let removed = guide(&cond, &null, per_sample, &Guidance::new(3.0, 0.0));
    let kept = guide(&cond, &null, per_sample, &Guidance { remove_parallel: false, ..Guidance::new(3.0, 0.0) });
    assert!(max_abs_diff(&removed, &kept) > 1e-3);
}

fn diffusion(objective: Objective, timesteps: usize) -> GaussianDiffusion {
    GaussianDiffusion::new(DiffusionConfig {
        timesteps,
        schedule: BetaSchedule::cosine(),
        objective,
        loss_weighting: LossWeighting::Plain,
        offset_noise_strength: 0.0,
    })
    .unwrap()
}

/// The exact denoiser for per-pixel N(mu_k, s^2) data of class k (in [-1, 1]); the null class
/// gets `null_mu`. Records the labels of every call.
struct ClassOracle<'a> {
    d: &'a GaussianDiffusion,
    mus: Vec<f64>,
    null_mu: f64,
    s: f64,
    calls: RefCell<Vec<Vec<Option<usize>>>>,
}

impl<'a> ClassOracle<'a> {
    fn new(d: &'a GaussianDiffusion, mus: Vec<f64>, null_mu: f64) -> Self {
        Self { d, mus, null_mu, s: 0.15, calls: RefCell::new(Vec::new()) }
    }
}

impl ConditionalDenoiser<B> for ClassOracle<'_> {
    fn denoise_labelled(&self, x: Tensor<B, 4>, t: Tensor<B, 1>, labels: &[Option<usize>]) -> Tensor<B, 4> {
        self.calls.borrow_mut().push(labels.to_vec());
        common::exact_gaussian_output(self.d, x, t, self.s, |i| labels[i].map_or(self.null_mu, |k| self.mus[k]))
    }

    fn num_classes(&self) -> usize {
        self.mus.len()
    }
}

fn per_sample_means(x: Tensor<B, 4>) -> Vec<f64> {
    let [n, ..] = x.dims();
    let v: Vec<f32> = x.into_data().to_vec().unwrap();
    v.chunks(v.len() / n).map(|c| c.iter().map(|&x| x as f64).sum::<f64>() / c.len() as f64).collect()
}

const SAMPLERS: [Sampler; 3] =
    [Sampler::Ddpm, Sampler::Ddim { steps: 25, eta: 0.0 }, Sampler::DpmSolverPp2M { steps: 25 }];

#[test]
fn scale_one_samples_each_class_in_one_pass_per_step() {
    let device = Default::default();
    for objective in [Objective::PredNoise, Objective::PredX0, Objective::PredV] {
        let d = diffusion(objective, 200);
        let oracle = ClassOracle::new(&d, vec![-0.5, 0.0, 0.5], 0.0);
        let labels = vec![Some(0), Some(2), Some(1), Some(2)];
        for sampler in SAMPLERS {
            oracle.calls.borrow_mut().clear();
            let guided = Guided::new(&oracle, labels.clone(), Guidance::default()).unwrap();
            let x = d.sample::<B, _>(&guided, sampler, [4, 1, 8, 8], 5, &device, &mut |_| {}).unwrap();
            let calls = oracle.calls.borrow();
            assert_eq!(calls.len(), sampler.model_evaluations(200), "{sampler:?}");
            assert!(calls.iter().all(|l| *l == labels), "one batch of B, labels as given");
            // Class means in [0, 1]: 0.25, 0.75, 0.5, 0.75.
            for (m, want) in per_sample_means(x).iter().zip([0.25, 0.75, 0.5, 0.75]) {
                assert!((m - want).abs() < 0.03, "{objective:?} {sampler:?}: mean {m}, want {want}");
            }
        }
    }
}

#[test]
fn guidance_runs_conditional_and_null_as_one_batch_and_pushes_away_from_null() {
    let device = Default::default();
    let d = diffusion(Objective::PredV, 200);
    // Null class centred at 0; class 0 at 0.3: guidance extrapolates away from the null mean.
    let oracle = ClassOracle::new(&d, vec![0.3], 0.0);
    let labels = vec![Some(0); 3];
    let mean_at = |scale: f64| {
        oracle.calls.borrow_mut().clear();
        let g = Guidance { remove_parallel: false, ..Guidance::new(scale, 0.0) };
        let guided = Guided::new(&oracle, labels.clone(), g).unwrap();
        let sampler = Sampler::Ddim { steps: 20, eta: 0.0 };
        let x = d.sample::<B, _>(&guided, sampler, [3, 1, 8, 8], 9, &device, &mut |_| {}).unwrap();
        per_sample_means(x).iter().sum::<f64>() / 3.0
    };
    let m1 = mean_at(1.0);
    let m3 = mean_at(3.0);
    let calls = oracle.calls.borrow();
    assert_eq!(calls.len(), 20, "one model call per step");
    let mut want = labels.clone();
    want.extend([None, None, None]);
    assert!(calls.iter().all(|l| *l == want), "conditional half then null half");
    assert!((m1 - 0.65).abs() < 0.02, "scale 1: mean {m1}");
    assert!(m3 > m1 + 0.05, "scale 3 pushes away from the null mean: {m3} vs {m1}");
}

#[test]
fn cfg_plus_plus_reduces_to_the_plain_sampler_when_null_equals_cond() {
    // With identical conditional and null predictions, re-noising with the null noise changes
    // nothing: every sampler's CFG++ update must reduce to its plain one.
    let device = Default::default();
    for objective in [Objective::PredNoise, Objective::PredX0, Objective::PredV] {
        let d = diffusion(objective, 100);
        let oracle = ClassOracle::new(&d, vec![0.2, 0.2], 0.2);
        let labels = vec![Some(0), Some(1)];
        for sampler in [Sampler::Ddpm, Sampler::Ddim { steps: 10, eta: 0.5 }, Sampler::DpmSolverPp2M { steps: 10 }] {
            let run = |cfgpp: bool| {
                let g = Guidance { cfg_plus_plus: cfgpp, ..Guidance::default() };
                let guided = Guided::new(&oracle, labels.clone(), g).unwrap();
                let x = d.sample::<B, _>(&guided, sampler, [2, 1, 4, 4], 3, &device, &mut |_| {}).unwrap();
                x.into_data().to_vec::<f32>().unwrap()
            };
            let diff = max_abs_diff(&run(false), &run(true));
            assert!(diff < 2e-5, "{objective:?} {sampler:?}: {diff}");
        }
    }
}

#[test]
fn cfg_plus_plus_differs_from_cfg_when_the_null_prediction_differs() {
    let device = Default::default();
    let d = diffusion(Objective::PredV, 100);
    let oracle = ClassOracle::new(&d, vec![0.4], -0.2);
    for sampler in SAMPLERS {
        let run = |cfgpp: bool| {
            let g = Guidance { cfg_plus_plus: cfgpp, ..Guidance::new(1.5, 0.0) };
            let guided = Guided::new(&oracle, vec![Some(0); 2], g).unwrap();
            let x = d.sample::<B, _>(&guided, sampler, [2, 1, 4, 4], 3, &device, &mut |_| {}).unwrap();
            x.into_data().to_vec::<f32>().unwrap()
        };
        let (a, b) = (run(false), run(true));
        assert!(a.iter().chain(&b).all(|v| v.is_finite()));
        assert!(max_abs_diff(&a, &b) > 1e-3, "{sampler:?}");
    }
}

#[test]
fn labelled_loss_is_the_loss_of_the_labelled_network() {
    let device = Default::default();
    let d = diffusion(Objective::PredV, 100);
    let oracle = ClassOracle::new(&d, vec![-0.3, 0.3], 0.0);
    let x0 = Tensor::<B, 4>::from_data(TensorData::new(vec![0.6f32; 2 * 16], [2, 1, 4, 4]), &device);
    let noise = diffusion_core::gaussian_noise::<B, 4>(&mut DiffusionRng::seed_from_u64(1), [2, 1, 4, 4], &device);
    let t = [10, 70];
    let labels = [Some(1), None];
    let ours: f32 = d.loss_at_labelled(&oracle, x0.clone(), &t, noise.clone(), &labels).unwrap().into_scalar();
    let closure = |x: Tensor<B, 4>, t: Tensor<B, 1>| oracle.denoise_labelled(x, t, &labels);
    let plain: f32 = d.loss_at(&closure, x0.clone(), &t, noise).unwrap().into_scalar();
    assert_eq!(ours, plain);

    // Condition dropout: with probability 0.5 about half the labels become the null class.
    oracle.calls.borrow_mut().clear();
    let mut rng = DiffusionRng::seed_from_u64(2);
    let x0 = Tensor::<B, 4>::from_data(TensorData::new(vec![0.6f32; 400 * 16], [400, 1, 4, 4]), &device);
    let labels: Vec<usize> = (0..400).map(|i| i % 2).collect();
    d.loss_labelled(&oracle, x0.clone(), &labels, 0.5, &mut rng).unwrap();
    let seen = oracle.calls.borrow()[0].clone();
    let dropped = seen.iter().filter(|l| l.is_none()).count();
    assert!((160..240).contains(&dropped), "{dropped} of 400 dropped");
    assert!(seen.iter().zip(&labels).all(|(s, &l)| s.is_none() || *s == Some(l)));
    let err = d.loss_labelled(&oracle, x0, &labels, 1.5, &mut rng).unwrap_err();
    assert!(matches!(err, DiffusionError::InvalidParameter { name: "cond_drop_prob", .. }), "{err}");
}

#[test]
fn bad_labels_and_guidance_are_typed_errors() {
    let d = diffusion(Objective::PredV, 10);
    let oracle = ClassOracle::new(&d, vec![0.0, 0.1], 0.0);
    let err = Guided::new(&oracle, vec![Some(2)], Guidance::default()).err().unwrap();
    assert_eq!(err, DiffusionError::LabelOutOfRange { label: 2, num_classes: 2 });
    for g in [Guidance::new(f64::NAN, 0.0), Guidance::new(2.0, 1.5), Guidance::new(2.0, -0.1)] {
        let err = Guided::new(&oracle, vec![Some(0)], g).err().unwrap();
        assert!(matches!(err, DiffusionError::InvalidParameter { .. }), "{err}");
    }
    let device = Default::default();
    let x0 = Tensor::<B, 4>::zeros([2, 1, 4, 4], &device);
    let err = d.loss_at_labelled(&oracle, x0.clone(), &[1, 2], x0.clone(), &[Some(0)]).unwrap_err();
    assert!(matches!(err, DiffusionError::ShapeMismatch { .. }), "{err}");
}
