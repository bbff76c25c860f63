//! Every checkpoint error, on small crafted files.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
mod common;
use common::write_safetensors;
use unet::{load_checkpoint, read_state_dict, Unet, UnetConfig, UnetError, Weights};

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn fixture_config() -> UnetConfig {
    UnetConfig::new(8, vec![1, 2], 1)
}

/// The fixture's weights under their PyTorch names.
fn fixture_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let m = load_checkpoint::<B>(&fixture("unet_state_dict.pth"), Weights::Model, None, &Default::default()).unwrap();
    m.torch_state_dict()
}

fn load(path: &Path, config: Option<&UnetConfig>) -> UnetError {
    load_checkpoint::<B>(path, Weights::Model, config, &Default::default()).unwrap_err()
}

#[test]
fn missing_keys_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.safetensors");
    let t: Vec<_> =
        fixture_tensors().into_iter().filter(|(k, _, _)| k != "mid_attn.mem_kv" && k != "final_conv.bias").collect();
    write_safetensors(&path, &t, None);
    match load(&path, Some(&fixture_config())) {
        UnetError::MissingKeys { keys, path: p } => {
            assert_eq!(keys, vec!["mid_attn.mem_kv".to_string(), "final_conv.bias".to_string()]);
            assert_eq!(p, path);
        }
        e => panic!("wrong error: {e}"),
    }
}

#[test]
fn unexpected_keys_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extra.safetensors");
    let mut t = fixture_tensors();
    t.push(("mid_attn.extra_bias".into(), vec![3], vec![0.0; 3]));
    write_safetensors(&path, &t, None);
    let e = load(&path, None);
    match &e {
        UnetError::UnexpectedKeys { keys, .. } => {
            assert_eq!(keys, &vec!["mid_attn.extra_bias".to_string()])
        }
        e => panic!("wrong error: {e}"),
    }
    assert!(e.to_string().contains("`mid_attn.extra_bias`"), "{e}");
}

#[test]
fn shape_mismatches_name_key_expected_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shape.safetensors");
    let mut t = fixture_tensors();
    for (k, s, _) in t.iter_mut() {
        if k == "mid_block1.block1.norm.g" {
            *s = vec![1, 16];
        }
    }
    write_safetensors(&path, &t, None);
    let e = load(&path, Some(&fixture_config()));
    match &e {
        UnetError::ShapeMismatch { mismatches, .. } => {
            assert_eq!(mismatches.len(), 1);
            assert_eq!(mismatches[0].key, "mid_block1.block1.norm.g");
            assert_eq!(mismatches[0].expected, vec![1, 16, 1, 1]);
            assert_eq!(mismatches[0].found, vec![1, 16]);
        }
        e => panic!("wrong error: {e}"),
    }
    assert!(e.to_string().contains("expected [1, 16, 1, 1], found [1, 16]"), "{e}");
}

#[test]
fn wrong_config_says_which_config_fits() {
    for wrong in [UnetConfig::deeplense(), UnetConfig::new(8, vec![1, 2, 4], 1), UnetConfig::new(8, vec![1, 2], 3)] {
        let e = load(&fixture("unet_state_dict.pth"), Some(&wrong));
        match &e {
            UnetError::ConfigMismatch { inferred, fits, .. } => {
                assert_eq!(**inferred, fixture_config());
                assert_eq!(fits, "Unet(dim=8, dim_mults=(1,2), channels=1)");
            }
            e => panic!("wrong error: {e}"),
        }
        assert!(e.to_string().contains("the file holds Unet(dim=8, dim_mults=(1,2), channels=1)"), "{e}");
    }
}

#[test]
fn pre_2_0_groupnorm_checkpoint_is_refused_with_the_reason() {
    // Made by scripts/make_legacy_fixture.py with denoising-diffusion-pytorch 1.11.0.
    let path = fixture("legacy_v1_state_dict.pth");
    for config in [None, Some(fixture_config())] {
        let e = load(&path, config.as_ref());
        match &e {
            UnetError::LegacyCheckpoint { key, .. } => {
                assert!(key.ends_with(".norm.weight") || key.ends_with(".norm.bias") || key.contains(".fn."), "{key}")
            }
            e => panic!("wrong error: {e}"),
        }
        let msg = e.to_string();
        assert!(msg.contains("< 2.0") && msg.contains("GroupNorm") && msg.contains("RMSNorm"), "{msg}");
    }
    assert!(matches!(unet::infer_config(&path, Weights::Model), Err(UnetError::LegacyCheckpoint { .. })));
}

#[test]
fn truncated_pytorch_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.pth");
    let bytes = std::fs::read(fixture("unet_state_dict.pth")).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 30, 100] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = load(&path, None);
        assert!(matches!(e, UnetError::NotACheckpoint { .. }), "cut {cut}: {e}");
        assert!(e.to_string().contains("truncated.pth"), "{e}");
    }
}

#[test]
fn non_pytorch_files() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.pth");
    std::fs::write(&text, "these are not weights\n").unwrap();
    assert!(matches!(load(&text, None), UnetError::NotACheckpoint { .. }));
    let empty = dir.path().join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    let e = load(&empty, None);
    assert!(matches!(e, UnetError::NotACheckpoint { .. }) && e.to_string().contains("empty"), "{e}");
    let npy = dir.path().join("image.pth");
    std::fs::copy(fixture("forward_x.npy"), &npy).unwrap();
    assert!(matches!(load(&npy, None), UnetError::NotACheckpoint { .. }));
    let gone = dir.path().join("does-not-exist.pth");
    assert!(matches!(load(&gone, None), UnetError::Io { .. }));
}

#[test]
fn ema_from_a_file_without_ema_weights() {
    let e = load_checkpoint::<B>(&fixture("unet_state_dict.pth"), Weights::Ema, None, &Default::default()).unwrap_err();
    match &e {
        UnetError::WrongContents { reason, .. } => {
            assert!(reason.contains("Weights::Model"), "{reason}")
        }
        e => panic!("wrong error: {e}"),
    }
}

#[test]
fn a_file_without_a_unet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.safetensors");
    write_safetensors(&path, &[("encoder.weight".into(), vec![2, 2], vec![1.0; 4])], None);
    let e = load(&path, None);
    assert!(matches!(e, UnetError::WrongContents { .. }), "{e}");
    assert!(e.to_string().contains("init_conv.weight"), "{e}");
}

#[test]
fn state_dict_inspection() {
    let sd = read_state_dict(&fixture("trainer_checkpoint.pt"), Weights::Model).unwrap();
    assert_eq!(sd.format(), unet::CheckpointFormat::TrainerModel);
    assert_eq!(sd.shapes()["time_mlp.1.weight"], vec![32, 8]);
    assert_eq!(unet::infer_config(&fixture("trainer_checkpoint.pt"), Weights::Ema).unwrap(), fixture_config());
    assert!(Unet::<B>::from_pytorch(&fixture("diffusion_state_dict.pth"), Weights::Model, None, &Default::default())
        .is_ok());
}

#[test]
fn nested_and_prefixed_state_dicts() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let base = fixture_tensors();
    let prefixed = |p: &str| -> Vec<(String, Vec<usize>, Vec<f32>)> {
        base.iter().map(|(k, s, v)| (format!("{p}{k}"), s.clone(), v.clone())).collect()
    };
    // A Lightning-style `{"state_dict": unet.state_dict()}`, flattened.
    let path = dir.path().join("nested.safetensors");
    write_safetensors(&path, &prefixed("state_dict."), None);
    let sd = read_state_dict(&path, Weights::Model).unwrap();
    assert_eq!(sd.prefix(), "state_dict.");
    assert_eq!(sd.infer_config().unwrap(), fixture_config());
    assert!(sd.into_unet::<B>(None, &device).is_ok());
    // GaussianDiffusion keys with a schedule buffer beside them.
    let path = dir.path().join("diffusion.safetensors");
    let mut t = prefixed("model.");
    t.push(("betas".into(), vec![4], vec![0.1; 4]));
    write_safetensors(&path, &t, None);
    let sd = read_state_dict(&path, Weights::Model).unwrap();
    assert_eq!((sd.prefix(), sd.len()), ("model.", base.len()));
    // Two U-Nets under unknown prefixes: refuse to guess.
    let path = dir.path().join("two.safetensors");
    let mut t = prefixed("a.");
    t.extend(prefixed("b."));
    write_safetensors(&path, &t, None);
    let e = read_state_dict(&path, Weights::Model).unwrap_err();
    assert!(e.to_string().contains("`a.`, `b.`"), "{e}");
    // EMA weights under an `ema_model.` prefix are found when asked for.
    let path = dir.path().join("ema.safetensors");
    let mut t = prefixed("ckpt.ema.ema_model.model.");
    t.extend(prefixed("ckpt.model.model."));
    write_safetensors(&path, &t, None);
    assert_eq!(read_state_dict(&path, Weights::Ema).unwrap().prefix(), "ckpt.ema.ema_model.model.");
    assert_eq!(read_state_dict(&path, Weights::Model).unwrap().prefix(), "ckpt.model.model.");
}
