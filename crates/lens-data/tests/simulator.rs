//! Simulator parity with lenstronomy 1.14.2 (fixtures rendered by the reference library).

use std::path::{Path, PathBuf};

use lens_data::npy::read_npy;
use lens_data::render::{add_surface_brightness, deflection_at, render};
use lens_data::simulate::{simulate_dataset, LensClass, ModelI, ModelISimulator};
use lens_data::spec::{LensProfile, SimulationSpec};
use lens_data::LensDataError;

fn fixtures() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn check_spec_image(dir: &Path, name: &str) -> f64 {
    let spec = SimulationSpec::from_json_file(dir.join(format!("{name}.json"))).unwrap();
    let want = read_npy(dir.join(format!("{name}.npy"))).unwrap();
    assert_eq!(want.shape, vec![spec.num_pix, spec.num_pix], "{name}");
    let got = render(&spec).unwrap();
    let max = want.data.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    let diff = got.iter().zip(&want.data).fold(0.0f64, |a, (g, w)| a.max((g - w).abs()));
    let rel = diff / max;
    assert!(rel < 1e-9, "{name}: max|diff|/max = {rel:e}");
    rel
}

#[test]
fn public_fixtures_match_lenstronomy() {
    for name in ["model_i_nopsf", "model_i_psf", "subhalos_ss2"] {
        let rel = check_spec_image(&fixtures(), name);
        eprintln!("{name}: rel {rel:e}");
    }
}

#[test]
fn extra_specs_match_lenstronomy() {
    // SIS, TNFW, SERSIC, lens light, two sources, supersampling 3, 100-mass vortex line.
    for name in ["h_sie_offcenter", "h_vortex_line", "h_sis_tnfw_two_sources"] {
        let rel = check_spec_image(&fixtures().join("hidden"), name);
        eprintln!("{name}: rel {rel:e}");
    }
}

fn kwargs_to_profile(kind: &str, kw: &serde_json::Value) -> serde_json::Value {
    let mut m = kw.as_object().unwrap().clone();
    m.insert("type".into(), kind.into());
    serde_json::Value::Object(m)
}

#[test]
fn pointwise_deflections_and_light_match_lenstronomy() {
    let text = std::fs::read_to_string(fixtures().join("deflections.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let pts: Vec<(f64, f64)> =
        v["points"].as_array().unwrap().iter().map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap())).collect();
    let mut checked = 0;
    for case in v["lens"].as_array().unwrap() {
        let kind = case["type"].as_str().unwrap();
        let spec = serde_json::json!({"num_pix": 1, "pixel_scale": 1.0,
            "lens": [kwargs_to_profile(kind, &case["kwargs"])], "source": []});
        let spec = SimulationSpec::from_json_value(&spec).unwrap();
        let lens: &[LensProfile] = &spec.lens;
        for (k, &(x, y)) in pts.iter().enumerate() {
            let (ax, ay) = deflection_at(lens, x, y);
            let wx = case["alpha_x"][k].as_f64().unwrap();
            let wy = case["alpha_y"][k].as_f64().unwrap();
            let scale = wx.abs().max(wy.abs()).max(1e-300);
            assert!(
                (ax - wx).abs() <= 1e-12 * scale + 1e-300 && (ay - wy).abs() <= 1e-12 * scale + 1e-300,
                "{kind} {:?} at ({x},{y}): got ({ax},{ay}) want ({wx},{wy})",
                case["kwargs"]
            );
            checked += 1;
        }
    }
    for case in v["light"].as_array().unwrap() {
        let kind = case["type"].as_str().unwrap();
        let spec = serde_json::json!({"num_pix": 1, "pixel_scale": 1.0, "lens": [],
            "source": [kwargs_to_profile(kind, &case["kwargs"])]});
        let spec = SimulationSpec::from_json_value(&spec).unwrap();
        for (k, &(x, y)) in pts.iter().enumerate() {
            let mut out = [0.0];
            add_surface_brightness(&spec.source[0], &[x], &[y], &mut out);
            let want = case["value"][k].as_f64().unwrap();
            assert!(
                (out[0] - want).abs() <= 1e-12 * want.abs().max(1e-300),
                "{kind} at ({x},{y}): {} vs {want}",
                out[0]
            );
            checked += 1;
        }
    }
    assert!(checked > 200, "only {checked} values checked");
}

#[test]
fn spec_errors_are_typed_and_named() {
    let base = |lens: &str| {
        format!(
            r#"{{"num_pix": 10, "pixel_scale": 0.1, "supersampling": 1, "psf": null, "lens": [{lens}], "source": [{{"type": "SERSIC", "amp": 1, "R_sersic": 0.2, "n_sersic": 1}}]}}"#
        )
    };
    match SimulationSpec::from_json_str(&base(r#"{"type": "SPEP", "theta_E": 1}"#)) {
        Err(LensDataError::UnknownProfile { section, index, name, .. }) => {
            assert_eq!((section.as_str(), index, name.as_str()), ("lens", 0, "SPEP"))
        }
        other => panic!("{other:?}"),
    }
    match SimulationSpec::from_json_str(&base(r#"{"type": "SIS"}, {"type": "SIE", "theta_E": 1, "e1": 0.1}"#)) {
        Err(LensDataError::MissingParam { section, index, profile, param }) => {
            // the first profile misses theta_E
            assert_eq!((section.as_str(), index, profile.as_str(), param.as_str()), ("lens", 0, "SIS", "theta_E"))
        }
        other => panic!("{other:?}"),
    }
    match SimulationSpec::from_json_str(&base(r#"{"type": "SIE", "theta_E": 1, "e1": 0.1}"#)) {
        Err(e @ LensDataError::MissingParam { .. }) => assert!(e.to_string().contains("'e2'"), "{e}"),
        other => panic!("{other:?}"),
    }
    match SimulationSpec::from_json_str(&base(r#"{"type": "SIS", "theta_e": 1}"#)) {
        Err(LensDataError::UnknownParam { param, .. }) => assert_eq!(param, "theta_e"),
        other => panic!("{other:?}"),
    }
    match SimulationSpec::from_json_str(&base(r#"{"type": "NFW", "Rs": 0, "alpha_Rs": 1}"#)) {
        Err(e @ LensDataError::InvalidValue { .. }) => assert!(e.to_string().contains("lens[0].Rs"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(SimulationSpec::from_json_str("{"), Err(LensDataError::SpecSyntax { .. })));
    assert!(matches!(
        SimulationSpec::from_json_str(r#"{"pixel_scale": 0.1, "lens": [], "source": []}"#),
        Err(LensDataError::MissingParam { .. })
    ));
    // round trip
    let spec = SimulationSpec::from_json_file(fixtures().join("subhalos_ss2.json")).unwrap();
    assert_eq!(SimulationSpec::from_json_str(&spec.to_json_string()).unwrap(), spec);
}

fn small_model() -> ModelI {
    ModelI { num_pix: 48, pixel_scale: 0.15, ..ModelI::default() }
}

#[test]
fn model_i_is_seeded_normalised_and_thread_independent() {
    let cfg = small_model();
    let classes = LensClass::ALL;
    let a = simulate_dataset(&cfg, &classes, 6, 42).unwrap();
    let b = simulate_dataset(&cfg, &classes, 6, 42).unwrap();
    assert_eq!(a.images, b.images);
    assert_eq!(a.labels, vec![0, 1, 2, 0, 1, 2]);
    let c = simulate_dataset(&cfg, &classes, 6, 43).unwrap();
    assert_ne!(a.images, c.images);
    // image i does not depend on how many are generated, nor on threads
    let sim = ModelISimulator::new(cfg.clone()).unwrap();
    let (img4, p4) = sim.simulate(LensClass::Cdm, 42, 4);
    assert_eq!(img4, a.images.index_axis(ndarray::Axis(0), 4));
    assert_eq!(p4.substructure.len(), 25);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let one = pool.install(|| simulate_dataset(&cfg, &classes, 6, 42).unwrap());
    assert_eq!(one.images, a.images);
    for img in a.images.outer_iter() {
        let lo = img.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = img.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!((lo, hi), (0.0, 1.0));
    }
}

#[test]
fn model_i_classes_follow_the_recipe() {
    let cfg = ModelI::default();
    let sim = ModelISimulator::new(ModelI { num_pix: 16, ..cfg.clone() }).unwrap();
    let mut rng = lens_data::simulate::image_rng(1, 0);
    for _ in 0..50 {
        let p = cfg.draw_params(LensClass::Cdm, &mut rng);
        assert_eq!(p.substructure.len(), 25);
        for s in &p.substructure {
            let LensProfile::PointMass { theta_e, center_x, center_y } = *s else { panic!() };
            let m = (theta_e / 1.2814905676172957e-6).powi(2);
            assert!((1e6 * (1.0 - 1e-9)..=1e10 * (1.0 + 1e-9)).contains(&m), "mass {m}");
            let r = center_x.hypot(center_y);
            assert!((0.25 - 1e-12..=2.0 + 1e-12).contains(&r), "r {r}");
        }
        let (sx, sy) = p.source_center;
        assert!(sx.abs() <= 0.35 && sy.abs() <= 0.35);
        let t = p.exposure.unwrap();
        assert!((1e3..=10f64.powf(3.5) * (1.0 + 1e-12)).contains(&t));
        let a = cfg.draw_params(LensClass::Axion, &mut rng);
        assert_eq!(a.substructure.len(), 100);
        let te: Vec<f64> = a
            .substructure
            .iter()
            .map(|s| match s {
                LensProfile::PointMass { theta_e, .. } => *theta_e,
                _ => panic!(),
            })
            .collect();
        // 100 equal masses totalling 3e10 Msun
        let m_tot: f64 = te.iter().map(|t| (t / 1.2814905676172957e-6).powi(2)).sum();
        assert!((m_tot / 3e10 - 1.0).abs() < 1e-9);
        assert!(cfg.draw_params(LensClass::NoSub, &mut rng).substructure.is_empty());
    }
    // noise-free, unnormalised render equals the spec render
    let quiet = ModelI { num_pix: 32, noise: false, normalize: false, ..cfg };
    let s2 = ModelISimulator::new(quiet.clone()).unwrap();
    let (img, p) = s2.simulate(LensClass::Axion, 9, 3);
    let spec_img = render(&quiet.spec(&p)).unwrap();
    let d = img.iter().zip(spec_img.iter()).fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
    assert!(d < 1e-12, "{d}");
    let _ = sim;
}
