//! Parity with the Python references (pytorch-fid, rke-score, prdc): `tests/fixtures/expected.json`
//! was produced by `/work/shared/fixtures/make_fixtures.py --set public` (copied here).

use gen_metrics::*;
use ndarray::Array2;
use serde_json::Value;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load() -> (Array2<f64>, Array2<f64>, Value) {
    let a = load_features_npy(fixture("features_real.npy")).unwrap();
    let b = load_features_npy(fixture("features_generated.npy")).unwrap();
    let e: Value = serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    (a, b, e)
}

fn close(got: f64, want: f64, rel: f64, what: &str) {
    let err = (got - want).abs() / want.abs().max(1e-300);
    assert!(err <= rel, "{what}: got {got}, want {want}, rel err {err:e}");
}

const BWS: [f64; 3] = [4.0, 8.0, 16.0];
const KEYS: [&str; 3] = ["4.0", "8.0", "16.0"];

#[test]
fn fid_matches_pytorch_fid() {
    let (a, b, e) = load();
    let fd = frechet_distance_from_features(a.view(), b.view()).unwrap();
    close(fd.value, e["fid"].as_f64().unwrap(), 1e-9, "fid");
    assert!(fd.warning.is_none());
}

#[test]
fn rke_exact_matches() {
    let (a, b, e) = load();
    let ra = rke_exact(a.view(), &BWS).unwrap();
    let rb = rke_exact(b.view(), &BWS).unwrap();
    for (i, k) in KEYS.iter().enumerate() {
        close(ra[i], e["rke_real"][k].as_f64().unwrap(), 1e-9, &format!("rke_real {k}"));
        close(rb[i], e["rke_generated"][k].as_f64().unwrap(), 1e-9, &format!("rke_generated {k}"));
    }
}

#[test]
fn rrke_matches_rke_score() {
    let (a, b, e) = load();
    let r = rrke(a.view(), b.view(), &BWS, kernel::RRKE_DEFAULT_ROWS).unwrap();
    for (i, k) in KEYS.iter().enumerate() {
        close(r[i], e["rrke"][k].as_f64().unwrap(), 1e-9, &format!("rrke {k}"));
    }
}

#[test]
fn vendi_matches() {
    let (_, b, e) = load();
    let v = vendi(b.view(), &BWS).unwrap();
    for (i, k) in KEYS.iter().enumerate() {
        close(v[i], e["vendi_generated"][k].as_f64().unwrap(), 1e-9, &format!("vendi {k}"));
    }
}

#[test]
fn kid_full_matches() {
    let (a, b, e) = load();
    let m = mmd2_unbiased_cubic(a.view(), b.view()).unwrap();
    close(m, e["kid_full"].as_f64().unwrap(), 1e-9, "kid_full");
    // One subset covering both sets is a permutation of the whole sets.
    let k = kid(a.view(), b.view(), &KidConfig { num_subsets: 1, subset_size: 10_000, seed: 3 }).unwrap();
    close(k.mean, e["kid_full"].as_f64().unwrap(), 1e-9, "kid one subset");
    assert_eq!(k.std, 0.0);
    assert!(k.whole_sets);
    // Many subsets that each cover both sets are one computation, not a spread.
    let many = kid(a.view(), b.view(), &KidConfig { num_subsets: 100, subset_size: 10_000, seed: 3 }).unwrap();
    assert_eq!((many.mean, many.std, many.whole_sets), (m, 0.0, true));
}

#[test]
fn prdc_matches() {
    let (a, b, e) = load();
    for (k, key) in [(3, "prdc_k3"), (5, "prdc_k5")] {
        let p = prdc(a.view(), b.view(), k).unwrap();
        for (name, got) in
            [("precision", p.precision), ("recall", p.recall), ("density", p.density), ("coverage", p.coverage)]
        {
            close(got, e[key][name].as_f64().unwrap(), 1e-9, &format!("{key} {name}"));
        }
    }
}
