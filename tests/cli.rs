//! The installed command, run as a user runs it: `--help` of every subcommand, and one tiny job
//! through every subcommand (train -> sample -> export -> sample again -> evaluate, simulate,
//! make-dataset, pipeline).

use std::path::Path;
use std::process::{Command, Output};

use ndarray::{Array2, Array4, ArrayD};

const SUBCOMMANDS: [&str; 8] =
    ["pipeline", "train", "sample", "evaluate", "simulate", "make-dataset", "train-classifier", "export"];

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lensing-diffusion"));
    // Extractors trained by a test never land in the user's cache.
    c.env("LENSING_DIFFUSION_CACHE", std::env::temp_dir().join("lensing-diffusion-test-cache"));
    c
}

fn ok(args: &[&str], cwd: &Path) -> Output {
    let out = bin().args(args).current_dir(cwd).output().expect("the binary runs");
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn every_subcommand_has_a_help_page() {
    let dir = tempfile::tempdir().unwrap();
    let top = String::from_utf8(ok(&["--help"], dir.path()).stdout).unwrap();
    for sub in SUBCOMMANDS {
        assert!(top.contains(sub), "top-level help lists {sub}:\n{top}");
        let page = String::from_utf8(ok(&[sub, "--help"], dir.path()).stdout).unwrap();
        assert!(page.contains(&format!("Usage: lensing-diffusion {sub}")), "{page}");
        assert!(page.lines().count() > 8, "{sub} --help teaches something:\n{page}");
    }
    let v = String::from_utf8(ok(&["--version"], dir.path()).stdout).unwrap();
    assert!(v.starts_with("lensing-diffusion "), "{v}");
}

#[test]
fn bad_flags_fail_with_a_message_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["sample", "--checkpoint", "missing.bpk", "--out", "s.npy"][..],
        &["train", "--objective", "pred_eps"][..],
        &["frobnicate"][..],
    ] {
        let out = bin().args(args).current_dir(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && !err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains("error"), "{args:?}: {err}");
    }
}

/// Out-of-range flags are refused while parsing, before any work: the message names the flag,
/// the value and the allowed range; nothing panics (no `Duration` from NaN minutes, no
/// `usize::MAX + 1`, no `--image-size 0` reaching an assert).
#[test]
fn out_of_range_flags_are_refused_with_flag_value_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let huge = usize::MAX.to_string();
    let huge = huge.as_str();
    for (args, flag, value, want) in [
        (vec!["train", "--timesteps", "1000000"], "--timesteps", "1000000", "1..=100000"),
        (vec!["train", "--timesteps", "0"], "--timesteps", "0", "1..=100000"),
        (vec!["train", "--image-size", "0"], "--image-size", "0", "8..=4096"),
        (
            vec!["sample", "--checkpoint", "c.bpk", "--out", "s.npy", "--image-size", "100000"],
            "--image-size",
            "100000",
            "8..=4096",
        ),
        (vec!["train", "--dim", "5000"], "--dim", "5000", "1..=1024"),
        (vec!["train", "--simulate", "20000000"], "--simulate", "20000000", "1..=10000000"),
        (vec!["make-dataset", "--out", "d", "--count", huge], "--count", huge, "1..=10000000"),
        (
            vec!["evaluate", "--real-features", "a.npy", "--generated-features", "b.npy", "--k", huge],
            "--k",
            huge,
            "1..=10000000",
        ),
        (
            vec!["evaluate", "--real-features", "a.npy", "--generated-features", "b.npy", "--bootstrap", "1000000"],
            "--bootstrap",
            "1000000",
            "0..=100000",
        ),
        (vec!["train", "--time-budget-min", "NaN"], "--time-budget-min", "NaN", "finite"),
        (vec!["train", "--time-budget-min=-3"], "--time-budget-min", "-3", "finite"),
        (vec!["pipeline", "--train-minutes", "inf"], "--train-minutes", "inf", "finite"),
        (vec!["pipeline", "--steps", "0"], "--steps", "0", "1..=10000000"),
        (vec!["train", "--lr", "NaN"], "--lr", "NaN", "> 0"),
        (vec!["train-classifier", "--lr", "inf"], "--lr", "inf", "> 0"),
        (vec!["train-classifier", "--lr", "0"], "--lr", "0", "> 0"),
        (vec!["train-classifier", "--epochs", "0"], "--epochs", "0", "1..=100000"),
        (vec!["train-classifier", "--minutes", "0"], "--minutes", "0", "> 0"),
        (vec!["train", "--conditional", "--cond-drop-prob", "1.5"], "--cond-drop-prob", "1.5", "[0, 1]"),
        (
            vec!["sample", "--checkpoint", "c.bpk", "--out", "s.npy", "--rescaled-phi", "NaN"],
            "--rescaled-phi",
            "NaN",
            "[0, 1]",
        ),
        (
            vec!["sample", "--checkpoint", "c.bpk", "--out", "s.npy", "--cond-scale", "inf"],
            "--cond-scale",
            "inf",
            "finite",
        ),
        (
            vec!["sample", "--checkpoint", "c.bpk", "--out", "s.npy", "--num-classes", "0"],
            "--num-classes",
            "0",
            "1..=1000000",
        ),
    ] {
        let out = bin().args(&args).current_dir(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && !err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains(flag) && err.contains(want), "{args:?}: {err}");
        assert!(err.contains(&format!("'{value}'")), "the value is named: {args:?}: {err}");
        assert!(dir.path().read_dir().unwrap().next().is_none(), "{args:?} wrote something");
    }
}

fn read4(path: &Path) -> Array4<f32> {
    let a: ArrayD<f32> = ndarray_npy::read_npy(path).unwrap();
    a.into_dimensionality().unwrap()
}

/// A tiny job through every subcommand. The checkpoint is trained at 16x16: `sample` must take
/// the image size (and T, schedule, objective) from it, not default to 128x128.
#[test]
fn a_tiny_job_through_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        &[
            "train",
            "--simulate",
            "24",
            "--image-size",
            "16",
            "--dim",
            "8",
            "--dim-mults",
            "1,2",
            "--timesteps",
            "50",
            "--schedule",
            "cosine",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--sample-every",
            "0",
            "--checkpoint-every",
            "1",
            "--out",
            "run",
        ],
        d,
    );
    let ema = d.join("run/checkpoints/step-0000002/ema.bpk");
    assert!(ema.is_file());
    let out = ok(
        &[
            "sample",
            "--checkpoint",
            ema.to_str().unwrap(),
            "--num",
            "3",
            "--sampler",
            "dpmpp",
            "--steps",
            "3",
            "--out",
            "s.npy",
            "--grid",
            "g.png",
        ],
        d,
    );
    let s = read4(&d.join("s.npy"));
    assert_eq!(s.dim(), (3, 1, 16, 16), "image size from the checkpoint");
    assert!(s.iter().all(|v| (0.0..=1.0).contains(v)));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("T 50, cosine schedule, pred_v"), "settings from the checkpoint: {log}");
    assert!(d.join("g.png").is_file());

    // A flag that contradicts the checkpoint wins, with a warning.
    let out = ok(
        &[
            "sample",
            "--checkpoint",
            ema.to_str().unwrap(),
            "--num",
            "1",
            "--image-size",
            "32",
            "--sampler",
            "dpmpp:2",
            "--out",
            "s32.npy",
        ],
        d,
    );
    assert_eq!(read4(&d.join("s32.npy")).dim(), (1, 1, 32, 32));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: --image-size 32 overrides the checkpoint's 16"));

    // Export to safetensors (PyTorch names) and sample from it: the same images.
    ok(&["export", "--checkpoint", ema.to_str().unwrap(), "--out", "ema.safetensors"], d);
    ok(
        &[
            "sample",
            "--checkpoint",
            "ema.safetensors",
            "--num",
            "3",
            "--sampler",
            "dpmpp",
            "--steps",
            "3",
            "--out",
            "s2.npy",
        ],
        d,
    );
    assert_eq!(read4(&d.join("s2.npy")), s, "the exported file carries the weights and the settings");

    // A fresh run into a used --out is refused; --resume skips a damaged newest checkpoint.
    let out = bin().args(["train", "--simulate", "24", "--out", "run"]).current_dir(d).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--resume") && err.contains("--overwrite"), "{err}");
    std::fs::write(d.join("run/checkpoints/step-0000002/resume/optim.mpk"), b"damaged").unwrap();
    let out = ok(&["train", "--resume", "run", "--simulate", "24", "--steps", "3"], d);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("skipped") && log.contains("step-0000002") && log.contains("resuming from"), "{log}");
    assert!(log.contains("step-0000001"), "{log}");
    assert!(d.join("run/checkpoints/step-0000003/ema.bpk").is_file());

    // Evaluate features written as .npy.
    let real = Array2::from_shape_fn((40, 4), |(i, j)| ((i * 7 + j * 3) % 11) as f64);
    let gen = Array2::from_shape_fn((30, 4), |(i, j)| ((i * 5 + j) % 13) as f64);
    ndarray_npy::write_npy(d.join("real.npy"), &real).unwrap();
    ndarray_npy::write_npy(d.join("gen.npy"), &gen).unwrap();
    ok(
        &[
            "evaluate",
            "--real-features",
            "real.npy",
            "--generated-features",
            "gen.npy",
            "--bandwidths",
            "4",
            "--kid-subset-size",
            "20",
            "--json",
            "m.json",
        ],
        d,
    );
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("m.json")).unwrap()).unwrap();
    assert!(m["fid"].as_f64().unwrap() > 0.0);

    // Simulate one spec (a lenstronomy fixture) and a small dataset.
    let spec = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets it"))
        .join("crates/lens-data/tests/fixtures/model_i_nopsf.json");
    ok(&["simulate", "--spec", spec.to_str().unwrap(), "--out", "one.npy"], d);
    assert!(d.join("one.npy").is_file());
    ok(&["make-dataset", "--out", "ds", "--count", "12", "--num-pix", "32", "--layout", "samples"], d);
    assert!(d.join("ds/sample12.npy").is_file());

    // Images in: feature metrics and the physical statistics, with their plots.
    ok(&["make-dataset", "--out", "ds2", "--count", "12", "--num-pix", "32", "--layout", "samples", "--seed", "5"], d);
    // A used folder is refused; --overwrite replaces a dataset of ours, never anything else.
    let again = ["make-dataset", "--out", "ds2", "--count", "3", "--num-pix", "32", "--layout", "samples"];
    assert!(!bin().args(again).current_dir(d).output().unwrap().status.success());
    assert!(!bin()
        .args(["make-dataset", "--out", "run", "--count", "3", "--overwrite"])
        .current_dir(d)
        .output()
        .unwrap()
        .status
        .success());
    assert!(d.join("run/checkpoints").is_dir(), "a folder that is not a dataset is never deleted");
    ok(
        &[
            "evaluate",
            "--real",
            "ds",
            "--generated",
            "ds2",
            "--no-noise-floor",
            "--k",
            "3",
            "--pr-k",
            "3",
            "--bandwidths",
            "8",
            "--json",
            "mi.json",
            "--plots",
            "plots",
        ],
        d,
    );
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("mi.json")).unwrap()).unwrap();
    let er = &m["physics"]["einstein_radius"];
    assert!(er["distance"].as_f64().unwrap() >= 0.0 && er["real_mean"].as_f64().unwrap() > 2.0, "{er}");
    assert!(m["physics"]["multipoles"]["4"]["floor"].is_number());
    assert_eq!(std::fs::read_dir(d.join("plots")).unwrap().count(), 6);
}

/// `evaluate --bootstrap N` prints the FID and KID intervals and writes them into the JSON;
/// `--bootstrap 0` leaves them out. With the default KID subsets of 1,000 rows, one subset holds
/// both sets: no std over subsets is printed, only the interval.
#[test]
fn evaluate_bootstrap_prints_and_writes_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Two irregular, shifted point clouds (no RNG needed).
    let cloud = |n: usize, k: usize, shift: f64| {
        Array2::from_shape_fn((n, 6), |(i, j)| ((i * 7919 + j * 104_729 + k) % 1009) as f64 / 200.0 + shift)
    };
    ndarray_npy::write_npy(d.join("real.npy"), &cloud(80, 0, 0.0)).unwrap();
    ndarray_npy::write_npy(d.join("gen.npy"), &cloud(60, 17, 0.5)).unwrap();
    let args = ["evaluate", "--real-features", "real.npy", "--generated-features", "gen.npy", "--bandwidths", "4"];
    let out = ok(&[&args[..], &["--bootstrap", "40", "--json", "m.json"]].concat(), d);
    let text = String::from_utf8_lossy(&out.stdout);
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("m.json")).unwrap()).unwrap();
    let (fid, kid) = (m["fid"].as_f64().unwrap(), m["kid"]["mean"].as_f64().unwrap());
    assert!(text.contains(&format!("FID {fid:.3}  95% CI [")) && text.contains("(40 bootstrap resamples)"), "{text}");
    assert!(text.contains(&format!("KID {kid:.5}  95% CI [")), "{text}");
    assert!(!text.contains("KID std") && text.contains("no spread over subsets"), "{text}");
    for (key, value) in [("fid_ci", fid), ("kid_ci", kid)] {
        let ci = &m[key];
        assert_eq!(ci["resamples"], 40, "{key}: {ci}");
        assert_eq!(ci["level"], 0.95, "{key}: {ci}");
        let (lo, hi) = (ci["low"].as_f64().unwrap(), ci["high"].as_f64().unwrap());
        assert!(lo <= value && value <= hi, "{key}: {value} outside [{lo}, {hi}]");
    }

    let out = ok(&[&args[..], &["--bootstrap", "0", "--json", "m0.json"]].concat(), d);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("CI ["));
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("m0.json")).unwrap()).unwrap();
    assert!(m["fid_ci"].is_null() && m["kid_ci"].is_null(), "{m}");
}

/// The whole pipeline at toy size (simulated data, the shipped extractor): a report and metrics.
#[test]
fn a_tiny_pipeline_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        &[
            "pipeline",
            "--name",
            "tiny",
            "--train-images",
            "48",
            "--eval-images",
            "40",
            "--num-generated",
            "40",
            "--image-size",
            "16",
            "--steps",
            "3",
            "--sample-steps",
            "2",
            "--sample-batch",
            "20",
            "--bootstrap",
            "5",
        ],
        d,
    );
    let run = d.join("runs/tiny");
    for f in ["report.md", "metrics.json", "real_grid.png", "generated_grid.png", "noise_grid.png", "train/loss.csv"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["train_steps"], 3);
    assert!(m["fid"].as_f64().unwrap().is_finite() && m["fid_noise_baseline"].as_f64().unwrap() > 0.0);
    assert!(m["physics"]["ring_width"]["floor"].is_number());
    // The FID scale: two real classes at the real and generated set sizes.
    let between = &m["fid_between_classes"];
    assert_eq!((between["n_first"].as_u64(), between["n_second"].as_u64()), (Some(40), Some(40)));
    for pair in ["cdm_vs_axion", "no_sub_vs_cdm"] {
        assert!(between[pair].as_f64().is_some_and(|v| v.is_finite() && v > 0.0), "{pair}: {}", between[pair]);
    }
    assert_eq!(m["fid_ci"]["resamples"], 5);
    assert!(m["kid_ci"]["high"].is_number());
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("CDM subhalos vs axion vortices"), "{report}");
    assert!(report.contains("## Physical statistics") && report.contains("physics/radial_profile.png"));
    assert!(report.contains("95% CI [") && report.contains("(5 bootstrap resamples)"), "{report}");
    assert!(run.join("physics/radial_profile.png").is_file());
}

/// The class-conditional route. `sample` reproduces denoising-diffusion-pytorch's guided DDIM
/// from its own `.pth` (fixtures of `crates/unet/tests/fixtures/cfg`, made by
/// `shared/fixtures/make_cfg_fixtures.py`); `train --conditional` on the simulator records the
/// class names, and `sample --class NAME` asks for one.
#[test]
fn class_conditional_train_and_sample() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("crates/unet/tests/fixtures/cfg");
    let f = |n: &str| cfg.join(n).to_str().unwrap().to_string();
    #[rustfmt::skip]
    let args = [
        "sample", "--checkpoint", &f("cfg_unet_state_dict.pth"), "--weights", "model", "--num-classes", "3",
        "--classes", "0,2,1", "--cond-scale", "3", "--rescaled-phi", "0.7", "--sampler", "ddim", "--steps", "10",
        "--eta", "0", "--init-noise", &f("ddim_xT.npy"), "--out", "s.npy", "--schedule", "cosine",
        "--objective", "pred_v",
    ];
    ok(&args, d);
    let ours = read4(&d.join("s.npy"));
    let want = read4(&cfg.join("ddim_out.npy"));
    let diff = ours.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff <= 1e-4, "guided DDIM vs the reference: {diff:e}");
    let labels: ndarray::Array1<i64> = ndarray_npy::read_npy(d.join("s.labels.npy")).unwrap();
    assert_eq!(labels.to_vec(), vec![0, 2, 1]);

    #[rustfmt::skip]
    let train = [
        "train", "--conditional", "--simulate", "12", "--sim-num-pix", "32", "--image-size", "16", "--dim", "8",
        "--dim-mults", "1,2", "--timesteps", "50", "--steps", "2", "--batch-size", "4", "--sample-every", "0",
        "--checkpoint-every", "2", "--out", "run",
    ];
    ok(&train, d);
    let config = std::fs::read_to_string(d.join("run/config.json")).unwrap();
    assert!(config.contains("\"num_classes\": 3") && config.contains("axion"), "{config}");
    let ema = d.join("run/checkpoints/step-0000002/ema.bpk");
    #[rustfmt::skip]
    let sample = [
        "sample", "--checkpoint", ema.to_str().unwrap(), "--class", "axion", "--num", "2", "--sampler", "dpmpp",
        "--steps", "3", "--cond-scale", "2", "--out", "a.npy", "--grid", "g.png",
    ];
    let out = ok(&sample, d);
    assert_eq!(read4(&d.join("a.npy")).dim(), (2, 1, 16, 16));
    let labels: ndarray::Array1<i64> = ndarray_npy::read_npy(d.join("a.labels.npy")).unwrap();
    assert_eq!(labels.to_vec(), vec![2, 2], "axion is class 2 of no_sub, cdm, axion");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_sub, cdm, axion"));
    // Asking an unconditional model or an unknown class is an error with a message.
    for (args, msg) in [
        (vec!["sample", "--checkpoint", ema.to_str().unwrap(), "--class", "wimp", "--out", "x.npy"], "unknown class"),
        (vec!["sample", "--checkpoint", ema.to_str().unwrap(), "--classes", "0,7", "--out", "x.npy"], "out of range"),
    ] {
        let out = bin().args(&args).current_dir(d).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(msg) && !err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn a_tiny_conditional_pipeline_reports_per_class() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    #[rustfmt::skip]
    let args = [
        "pipeline", "--conditional", "--name", "cond", "--train-images", "48", "--eval-images", "42",
        "--num-generated", "42", "--image-size", "16", "--steps", "3", "--sample-steps", "2", "--sample-batch", "21",
        "--guidance-sweep", "1,3", "--sweep-images", "12", "--tstr-epochs", "2",
    ];
    let out = ok(&args, d);
    let run = d.join("runs/cond");
    for f in ["report.md", "generated_by_class.png", "real_by_class.png", "guidance_sweep.png"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    let c = &m["conditional"];
    assert_eq!(c["class_names"], serde_json::json!(["no_sub", "cdm", "axion"]));
    assert_eq!(c["per_class"].as_array().unwrap().len(), 3);
    assert_eq!(c["sweep"].as_array().unwrap().len(), 2);
    let acc = c["consistency"]["accuracy"].as_f64().unwrap();
    let real = c["real_consistency"]["accuracy"].as_f64().unwrap();
    // At 16x16 the classifier cannot see substructure (real accuracy near chance); this checks the wiring.
    assert!((0.0..=1.0).contains(&acc) && (0.0..=1.0).contains(&real), "generated {acc}, real {real}");
    let confusion: Vec<Vec<u64>> = serde_json::from_value(c["consistency"]["confusion"].clone()).unwrap();
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 42, "every generated image is tabulated");
    let t = &c["tstr"];
    for key in ["tstr_accuracy", "trtr_accuracy"] {
        let a = t[key].as_f64().unwrap_or(f64::NAN);
        assert!((0.0..=1.0).contains(&a), "{key} = {a}");
    }
    // Both arms train on the 42 generated / 42 real images at the training size, tested on the 42 held out.
    let sizes = ["n_train", "n_test", "image_size", "epochs"].map(|k| t[k].as_u64().unwrap());
    assert_eq!(sizes, [42, 42, 16, 2]);
    assert_eq!(m["timings_seconds"]["train-synthetic-test-real"].as_f64().map(|s| s >= 0.0), Some(true));
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("## Class-conditional generation") && report.contains("### Guidance sweep"));
    assert!(report.contains("### Train-synthetic-test-real") && !report.contains("Not measured here"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("class consistency") && stdout.contains("train-synthetic-test-real"), "{stdout}");

    // Too few real training images of a class for TRTR stops the run before training.
    #[rustfmt::skip]
    let short = [
        "pipeline", "--conditional", "--name", "short", "--train-images", "6", "--eval-images", "6",
        "--num-generated", "9", "--image-size", "16", "--steps", "3",
    ];
    let out = bin().args(short).current_dir(d).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("--num-generated = 9") && err.contains("--tstr-epochs 0"), "{err}");
    assert!(!d.join("runs/short/train").exists(), "stopped before training");
}

/// `--precision bf16`: refused off flex and, where the CPU lacks AVX512-BF16, with a message
/// naming the flag; where it runs, training works and samples of one checkpoint and seed stay
/// close to the f32 ones without being the same arithmetic.
#[test]
fn bf16_precision_trains_and_samples_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = bin().args(["train", "--backend", "ndarray", "--precision", "bf16"]).current_dir(d).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--precision") && err.contains("flex"), "{err}");
    let train = [
        "train",
        "--precision",
        "bf16",
        "--simulate",
        "24",
        "--image-size",
        "16",
        "--dim",
        "8",
        "--dim-mults",
        "1,2",
        "--timesteps",
        "50",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "3",
        "--out",
        "run",
    ];
    if !lensing_diffusion::unet::bf16_available() {
        let out = bin().args(train).current_dir(d).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("--precision") && err.contains("AVX512-BF16"), "{err}");
        return;
    }
    let log = String::from_utf8_lossy(&ok(&train, d).stderr).to_string();
    assert!(log.contains("bf16"), "the run says it is in bf16: {log}");
    let ema = d.join("run/checkpoints/step-0000003/ema.bpk");
    let sample = |precision: &str, out: &str| {
        ok(
            &[
                "sample",
                "--checkpoint",
                ema.to_str().unwrap(),
                "--num",
                "4",
                "--sampler",
                "ddim",
                "--steps",
                "10",
                "--eta",
                "0",
                "--precision",
                precision,
                "--out",
                out,
            ],
            d,
        );
        read4(&d.join(out))
    };
    let (a, b) = (sample("f32", "f32.npy"), sample("bf16", "bf16.npy"));
    let diff: Vec<f32> = a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).collect();
    let (max, mean) = (diff.iter().cloned().fold(0f32, f32::max), diff.iter().sum::<f32>() / diff.len() as f32);
    eprintln!("bf16 vs f32 samples: max |diff| {max}, mean {mean}");
    assert!(max > 0.0, "bf16 ran a different arithmetic");
    assert!(mean < 0.005 && max < 0.05, "bf16 samples stay close to f32: max {max}, mean {mean}");
}
