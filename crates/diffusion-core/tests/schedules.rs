//! Schedule buffers and loss weights against denoising-diffusion-pytorch 2.3.4.
//!
//! Expected values: `tests/fixtures/schedule_*.npy`, `loss_weight_*.npy`, copied from
//! `shared/fixtures/unet/` (made by `shared/fixtures/make_fixtures.py --set public`): the float64
//! values the library computes before casting its buffers to float32. T = 1000; min-SNR gamma 5.

use diffusion_core::{
    BetaSchedule, DiffusionConfig, DiffusionError, GaussianDiffusion, LossWeighting, NoiseSchedule, Objective,
};
use ndarray::Array1;
use ndarray_npy::read_npy;

fn fixture(name: &str) -> Vec<f64> {
    let path = format!(
        "{}/tests/fixtures/{name}.npy",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")
    );
    let a: Array1<f64> = read_npy(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    a.to_vec()
}

fn assert_close(name: &str, ours: &[f64], reference: &[f64], tol: f64) {
    assert_eq!(ours.len(), reference.len(), "{name}: length");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        let err = (a - b).abs() / b.abs().max(1e-300).max(1.0_f64.min(b.abs()));
        assert!(
            (a - b).abs() <= tol * b.abs().max(1e-30) || (a - b).abs() <= tol,
            "{name}[{i}]: ours {a:e} vs reference {b:e} (rel err {err:e})"
        );
    }
}

#[test]
fn schedule_buffers_match_reference() {
    for (name, kind) in
        [("linear", BetaSchedule::Linear), ("cosine", BetaSchedule::cosine()), ("sigmoid", BetaSchedule::sigmoid())]
    {
        let s = NoiseSchedule::new(kind, 1000).unwrap();
        let pairs: [(&str, &Vec<f64>); 6] = [
            ("betas", &s.betas),
            ("alphas_cumprod", &s.alphas_cumprod),
            ("posterior_variance", &s.posterior_variance),
            ("posterior_log_variance_clipped", &s.posterior_log_variance_clipped),
            ("posterior_mean_coef1", &s.posterior_mean_coef1),
            ("posterior_mean_coef2", &s.posterior_mean_coef2),
        ];
        for (buf, ours) in pairs {
            let reference = fixture(&format!("schedule_{name}_{buf}"));
            assert_close(&format!("{name}/{buf}"), ours, &reference, 1e-12);
        }
    }
}

#[test]
fn loss_weights_match_reference() {
    let cases = [("pred_noise", Objective::PredNoise), ("pred_x0", Objective::PredX0), ("pred_v", Objective::PredV)];
    for (oname, objective) in cases {
        for (suffix, schedule, weighting) in [
            ("sigmoid_plain", BetaSchedule::sigmoid(), LossWeighting::Plain),
            ("cosine_min_snr", BetaSchedule::cosine(), LossWeighting::MinSnr { gamma: 5.0 }),
        ] {
            let d = GaussianDiffusion::new(DiffusionConfig {
                timesteps: 1000,
                schedule,
                objective,
                loss_weighting: weighting,
                offset_noise_strength: 0.0,
            })
            .unwrap();
            let reference = fixture(&format!("loss_weight_{oname}_{suffix}"));
            assert_close(&format!("loss_weight {oname} {suffix}"), d.loss_weight(), &reference, 1e-12);
        }
    }
}

#[test]
fn schedules_work_for_any_t_and_reject_bad_parameters() {
    for t in [1usize, 2, 10, 21, 4000] {
        for kind in [BetaSchedule::Linear, BetaSchedule::cosine(), BetaSchedule::sigmoid()] {
            if kind == BetaSchedule::Linear && t <= 20 {
                let err = NoiseSchedule::new(kind, t).unwrap_err();
                assert!(err.to_string().contains("T > 20"), "{err}");
                continue;
            }
            let s = NoiseSchedule::new(kind, t).unwrap();
            assert_eq!(s.timesteps(), t);
            assert!(s.alphas_cumprod.iter().all(|a| a.is_finite() && *a > 0.0 && *a <= 1.0), "{kind:?} T={t}");
            assert!(s.alphas_cumprod.windows(2).all(|w| w[1] <= w[0]), "{kind:?} T={t}: alpha_bar must decrease");
        }
    }
    assert_eq!(NoiseSchedule::new(BetaSchedule::Linear, 0).unwrap_err(), DiffusionError::ZeroTimesteps(0));
    let bad = NoiseSchedule::new(BetaSchedule::Sigmoid { start: -3.0, end: 3.0, tau: 0.0 }, 10).unwrap_err();
    assert!(matches!(bad, DiffusionError::InvalidScheduleParameter { name: "tau", .. }), "{bad}");
    let bad = NoiseSchedule::new(BetaSchedule::Cosine { s: f64::NAN }, 10).unwrap_err();
    assert!(bad.to_string().contains("`s`"), "{bad}");
    let bad = GaussianDiffusion::new(DiffusionConfig {
        loss_weighting: LossWeighting::MinSnr { gamma: -1.0 },
        ..Default::default()
    })
    .unwrap_err();
    assert!(bad.to_string().contains("min_snr_gamma"), "{bad}");
    let bad = GaussianDiffusion::new(DiffusionConfig { offset_noise_strength: f64::INFINITY, ..Default::default() })
        .unwrap_err();
    assert!(bad.to_string().contains("offset_noise_strength"), "{bad}");
}
