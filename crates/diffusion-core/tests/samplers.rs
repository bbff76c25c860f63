//! Sampler and loss behaviour with analytic denoisers (no network needed).
//!
//! For data drawn from N(mu, s^2) per pixel, the optimal denoiser is known in closed form:
//! E[x_0 | x_t] = (sqrt(a) s^2 x_t + (1 - a) mu) / (a s^2 + 1 - a). Every sampler driven by it
//! must reproduce the data distribution, which checks schedules, predictions and update rules.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use diffusion_core::{
    BetaSchedule, DiffusionConfig, DiffusionError, DiffusionRng, GaussianDiffusion, LossWeighting, Objective, Sampler,
};
use rand::SeedableRng;

mod common;

type B = Flex;

fn diffusion(objective: Objective, schedule: BetaSchedule, timesteps: usize) -> GaussianDiffusion {
    GaussianDiffusion::new(DiffusionConfig {
        timesteps,
        schedule,
        objective,
        loss_weighting: LossWeighting::Plain,
        offset_noise_strength: 0.0,
    })
    .unwrap()
}

/// The exact denoiser for per-pixel N(mu, s^2) data (in the model's [-1, 1] scale), returning
/// what `objective` asks for.
fn gaussian_oracle(d: &GaussianDiffusion, mu: f64, s: f64) -> impl Fn(Tensor<B, 4>, Tensor<B, 1>) -> Tensor<B, 4> + '_ {
    move |x: Tensor<B, 4>, t: Tensor<B, 1>| common::exact_gaussian_output(d, x, t, s, |_| mu)
}

fn mean_std(x: Tensor<B, 4>) -> (f64, f64) {
    let v: Vec<f32> = x.into_data().to_vec().unwrap();
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

#[test]
fn every_sampler_reproduces_gaussian_data_with_the_exact_denoiser() {
    // Data in [0,1] ~ N(0.6, 0.1^2), i.e. N(0.2, 0.2^2) in [-1,1]: far from the clipping bounds.
    let (mu, s) = (0.2, 0.2);
    let device = Default::default();
    for objective in [Objective::PredNoise, Objective::PredX0, Objective::PredV] {
        let d = diffusion(objective, BetaSchedule::cosine(), 1000);
        let model = gaussian_oracle(&d, mu, s);
        // (sampler, tolerance on the std of 0.1): first-order DDIM has a visible discretisation
        // error at few steps; DPM-Solver++(2M) is second order.
        let mut std_err = Vec::new();
        for (sampler, tol) in [
            (Sampler::Ddpm, 0.005),
            (Sampler::Ddim { steps: 15, eta: 0.0 }, 0.025),
            (Sampler::Ddim { steps: 50, eta: 0.0 }, 0.01),
            (Sampler::Ddim { steps: 100, eta: 1.0 }, 0.01),
            (Sampler::DpmSolverPp2M { steps: 15 }, 0.006),
            (Sampler::DpmSolverPp2M { steps: 50 }, 0.002),
        ] {
            let mut calls = 0;
            let out = d
                .sample::<B, _>(&model, sampler, [64, 1, 8, 8], 7, &device, &mut |p| {
                    calls += 1;
                    assert_eq!(p.step, calls);
                })
                .unwrap();
            assert_eq!(calls, sampler.model_evaluations(1000), "{sampler:?}");
            let (m, sd) = mean_std(out);
            // In [0,1]: mean 0.6, std 0.1. 4096 samples: standard error of the mean ~0.0016.
            assert!((m - 0.6).abs() < 0.01, "{objective:?} {sampler:?}: mean {m}");
            assert!((sd - 0.1).abs() < tol, "{objective:?} {sampler:?}: std {sd}");
            std_err.push((sd - 0.1).abs());
        }
        assert!(std_err[2] < std_err[1], "DDIM converges with more steps: {std_err:?}");
        assert!(std_err[4] < std_err[1], "DPM-Solver++ beats DDIM at 15 steps: {std_err:?}");
        assert!(std_err[5] < std_err[4], "DPM-Solver++ converges with more steps: {std_err:?}");
    }
}

#[test]
fn sampling_is_reproducible_from_the_seed() {
    let d = diffusion(Objective::PredV, BetaSchedule::sigmoid(), 100);
    let model = gaussian_oracle(&d, 0.0, 0.5);
    let device = Default::default();
    let run = |seed| {
        let x = d
            .sample::<B, _>(&model, Sampler::Ddim { steps: 10, eta: 1.0 }, [2, 1, 4, 4], seed, &device, &mut |_| {})
            .unwrap();
        x.into_data().to_vec::<f32>().unwrap()
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
}

#[test]
fn loss_is_zero_for_the_exact_denoiser_of_a_point_mass() {
    // Data = the constant image 0.75 ([0,1]) = 0.5 ([-1,1]); with s -> 0 the oracle is exact.
    let device = Default::default();
    for objective in [Objective::PredNoise, Objective::PredX0, Objective::PredV] {
        let d = diffusion(objective, BetaSchedule::Linear, 1000);
        let model = gaussian_oracle(&d, 0.5, 0.0);
        let x0 = Tensor::<B, 4>::full([4, 1, 8, 8], 0.75, &device);
        let mut rng = DiffusionRng::seed_from_u64(0);
        let loss: f32 = d.loss(&model, x0.clone(), &mut rng).unwrap().into_scalar();
        // pred_x0 weights by SNR (up to ~1e4), so compare relative to the scale of the weights.
        assert!(loss.abs() < 1e-4, "{objective:?}: loss {loss}");
        // A wrong model gives a clearly positive loss.
        let zero = |x: Tensor<B, 4>, _t: Tensor<B, 1>| x.zeros_like().add_scalar(3.0);
        let bad: f32 = d.loss(&zero, x0, &mut rng).unwrap().into_scalar();
        assert!(bad > 0.1, "{objective:?}: {bad}");
    }
}

#[test]
fn deterministic_loss_matches_hand_computation() {
    // pred_noise with a model that always answers 0: loss = mean(noise^2) (weight 1).
    let d = diffusion(Objective::PredNoise, BetaSchedule::sigmoid(), 1000);
    let device = Default::default();
    let x0 = Tensor::<B, 4>::full([2, 1, 2, 2], 0.5, &device);
    let noise = Tensor::<B, 4>::from_data(
        TensorData::new(vec![1.0f32, -1.0, 2.0, 0.0, 0.5, 0.5, 0.5, 0.5], [2, 1, 2, 2]),
        &device,
    );
    let model = |x: Tensor<B, 4>, _t: Tensor<B, 1>| x.zeros_like();
    let loss: f32 = d.loss_at(&model, x0, &[3, 700], noise).unwrap().into_scalar();
    let expected = ((1.0 + 1.0 + 4.0 + 0.0) / 4.0 + 0.25) / 2.0;
    assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
}

#[test]
fn bad_input_gives_typed_errors() {
    let d = diffusion(Objective::PredV, BetaSchedule::sigmoid(), 100);
    let device = Default::default();
    let ok = |x: Tensor<B, 4>, _t: Tensor<B, 1>| x.zeros_like();
    let shape = [1, 1, 4, 4];
    let err = |sampler| d.sample::<B, _>(&ok, sampler, shape, 0, &device, &mut |_| {}).unwrap_err();
    assert_eq!(err(Sampler::Ddim { steps: 0, eta: 0.0 }), DiffusionError::InvalidSamplingSteps { steps: 0, max: 100 });
    assert_eq!(
        err(Sampler::Ddim { steps: 101, eta: 0.0 }),
        DiffusionError::InvalidSamplingSteps { steps: 101, max: 100 }
    );
    assert_eq!(err(Sampler::DpmSolverPp2M { steps: 0 }), DiffusionError::InvalidSamplingSteps { steps: 0, max: 100 });
    assert_eq!(err(Sampler::Ddim { steps: 10, eta: -0.5 }), DiffusionError::InvalidEta(-0.5));
    assert!(matches!(err(Sampler::Ddim { steps: 10, eta: f64::NAN }), DiffusionError::InvalidEta(e) if e.is_nan()));

    let nan = |x: Tensor<B, 4>, _t: Tensor<B, 1>| x.zeros_like().add_scalar(f32::NAN);
    let e = d.sample::<B, _>(&nan, Sampler::Ddim { steps: 10, eta: 0.0 }, shape, 0, &device, &mut |_| {}).unwrap_err();
    assert_eq!(e, DiffusionError::NonFiniteModelOutput { t: 99, step: 1, total: 10 });
    assert!(e.to_string().contains("non-finite"));
    let inf = |x: Tensor<B, 4>, _t: Tensor<B, 1>| x.zeros_like().add_scalar(f32::INFINITY);
    assert!(matches!(
        d.sample::<B, _>(&inf, Sampler::Ddpm, shape, 0, &device, &mut |_| {}).unwrap_err(),
        DiffusionError::NonFiniteModelOutput { .. }
    ));

    let wrong = |_x: Tensor<B, 4>, _t: Tensor<B, 1>| Tensor::<B, 4>::zeros([1, 1, 2, 2], &Default::default());
    let e = d.sample::<B, _>(&wrong, Sampler::DpmSolverPp2M { steps: 5 }, shape, 0, &device, &mut |_| {}).unwrap_err();
    assert!(matches!(e, DiffusionError::ShapeMismatch { what: "denoiser output", .. }), "{e}");

    let x0 = Tensor::<B, 4>::zeros([2, 1, 4, 4], &device);
    let noise = Tensor::<B, 4>::zeros([2, 1, 4, 4], &device);
    let e = d.loss_at(&ok, x0.clone(), &[1], noise.clone()).unwrap_err();
    assert!(matches!(e, DiffusionError::ShapeMismatch { .. }), "{e}");
    assert_eq!(
        d.loss_at(&ok, x0.clone(), &[1, 100], noise).unwrap_err(),
        DiffusionError::TimestepOutOfRange { t: 100, max: 100 }
    );
    let e = d.loss_at(&ok, x0, &[1, 2], Tensor::zeros([2, 1, 4, 5], &device)).unwrap_err();
    assert!(e.to_string().contains("noise"), "{e}");
}

#[test]
fn time_grids_follow_the_reference() {
    // denoising-diffusion-pytorch: linspace(-1, 999, 11).int() reversed.
    let pairs = diffusion_core::ddim_time_pairs(1000, 10);
    assert_eq!(pairs.first(), Some(&(999, 899)));
    assert_eq!(pairs.last(), Some(&(99, -1)));
    assert_eq!(pairs.len(), 10);
    // S = T visits every step.
    let all = diffusion_core::ddim_time_pairs(50, 50);
    assert_eq!(all.len(), 50);
    assert_eq!(all.last(), Some(&(0, -1)));
    let d = diffusion(Objective::PredV, BetaSchedule::sigmoid(), 1000);
    for steps in [1, 2, 10, 25, 999, 1000] {
        let ts = diffusion_core::dpm_solver_timesteps(d.schedule(), steps);
        assert_eq!(ts.len(), steps);
        assert_eq!(ts[0], 999);
        assert!(ts.windows(2).all(|w| w[0] > w[1]), "strictly decreasing: {ts:?}");
        if steps > 1 {
            assert_eq!(*ts.last().unwrap(), 0);
        }
    }
}
