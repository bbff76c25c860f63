//! Our own checkpoints: burnpack save/load and safetensors export/import with PyTorch names.

use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::Tensor;
use unet::{load_checkpoint, read_state_dict, CheckpointFormat, Unet, UnetConfig, UnetError, Weights};

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn outputs(model: &Unet<B>) -> Vec<f32> {
    let device = Default::default();
    let c = model.config();
    let x = Tensor::<B, 1, burn::tensor::Int>::arange(0..(2 * c.channels * 64) as i64, &device)
        .float()
        .reshape([2, c.channels, 8, 8])
        .div_scalar(100.0)
        .sub_scalar(0.5);
    let t = Tensor::<B, 1>::from_floats([5.0, 900.0], &device);
    model.forward(x, t).into_data().to_vec().unwrap()
}

fn odd_config() -> UnetConfig {
    UnetConfig::new(8, vec![1, 2, 2], 2)
        .with_init_dim(12)
        .with_out_dim(4)
        .with_attention(2, 8)
        .with_full_attn(vec![false, true, true])
        .with_dropout(0.1)
}

#[test]
fn safetensors_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    for config in [UnetConfig::new(8, vec![1, 2], 1), odd_config()] {
        let model = config.init::<B>(&device).unwrap();
        let path = dir.path().join("m.safetensors");
        model.export_safetensors(&path).unwrap();
        // Same keys as PyTorch's state_dict, config restored from the metadata.
        let sd = read_state_dict(&path, Weights::Model).unwrap();
        assert_eq!(sd.format(), CheckpointFormat::Safetensors);
        let mut want: Vec<String> = unet::keys::param_specs(&config).into_iter().map(|s| s.torch_key).collect();
        want.sort();
        assert_eq!(sd.keys(), want);
        assert_eq!(sd.infer_config().unwrap(), config);
        let back = Unet::<B>::from_safetensors(&path, None, &device).unwrap();
        assert_eq!(back.config(), &config);
        assert_eq!(outputs(&model), outputs(&back));
        let auto = load_checkpoint::<B>(&path, Weights::Model, Some(&config), &device).unwrap();
        assert_eq!(outputs(&model), outputs(&auto));
    }
}

#[test]
fn export_reproduces_the_pytorch_tensors_exactly() {
    // Load the PyTorch file, export: every tensor must equal the original bit for bit
    // (checks names, Linear transposes and layouts).
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let model = load_checkpoint::<B>(&fixture("unet_state_dict.pth"), Weights::Model, None, &device).unwrap();
    let out = dir.path().join("export.safetensors");
    model.export_safetensors(&out).unwrap();
    let ours = std::fs::read(&out).unwrap();
    let ours = safetensors::SafeTensors::deserialize(&ours).unwrap();
    let reloaded = load_checkpoint::<B>(&out, Weights::Model, None, &device).unwrap();
    let original = read_state_dict(&fixture("unet_state_dict.pth"), Weights::Model).unwrap();
    assert_eq!(original.len(), ours.len());
    for k in original.keys() {
        let (shape, want) = original.tensor_f32(&k).unwrap().unwrap();
        let view = ours.tensor(&k).unwrap();
        assert_eq!(view.shape(), shape.as_slice(), "{k}");
        let got: Vec<f32> = view.data().chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        assert_eq!(got, want, "{k}");
    }
    // Linear weights are [out, in] in the export, as in torch.
    assert_eq!(ours.tensor("time_mlp.1.weight").unwrap().shape(), &[32, 8]);
    assert_eq!(outputs(&model), outputs(&reloaded));
}

#[test]
fn burnpack_save_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let config = odd_config();
    let model = config.init::<B>(&device).unwrap();
    let path = dir.path().join("model.bpk");
    model.save(&path).unwrap();
    // no temporary file left behind
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let back = Unet::<B>::load(&path, &device).unwrap();
    assert_eq!(back.config(), &config, "dropout and everything else restored");
    assert_eq!(outputs(&model), outputs(&back));
    let auto = load_checkpoint::<B>(&path, Weights::Model, None, &device).unwrap();
    assert_eq!(outputs(&model), outputs(&auto));
    assert_eq!(unet::infer_config(&path, Weights::Model).unwrap(), config);
    // asking for another architecture is refused
    let e = load_checkpoint::<B>(&path, Weights::Model, Some(&UnetConfig::small()), &device).unwrap_err();
    assert!(matches!(e, UnetError::ConfigMismatch { .. }), "{e}");
}

#[test]
fn damaged_burnpack_and_unwritable_paths() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let model = UnetConfig::new(8, vec![1, 2], 1).init::<B>(&device).unwrap();
    let path = dir.path().join("model.bpk");
    model.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.bpk");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = Unet::<B>::load(&cut, &device).unwrap_err();
    assert!(matches!(e, UnetError::NotACheckpoint { .. }), "{e}");
    std::fs::write(&cut, &bytes[..12]).unwrap();
    assert!(Unet::<B>::load(&cut, &device).is_err());
    // Missing folders are created (atomic-file); a folder that is a file cannot be.
    model.save(&dir.path().join("new/dir/model.bpk")).unwrap();
    let nowhere = cut.join("model.bpk");
    assert!(matches!(model.save(&nowhere), Err(UnetError::Write { .. })));
    assert!(matches!(model.export_safetensors(&nowhere), Err(UnetError::Write { .. })));
}
