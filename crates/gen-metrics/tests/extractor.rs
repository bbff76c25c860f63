//! ResNet-18 extractor: torchvision parity (needs the generated fixture, see
//! `scripts/make_resnet_fixture.py`) and our own checkpoint round trip.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use gen_metrics::extractor::{ExtractorConfig, FeatureExtractor, ResNet18};
use ndarray::{Array2, Array4};
use ndarray_npy::ReadNpyExt;

type B = Flex;

fn fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
        .join("../../target/resnet-fixture")
}

#[test]
#[ignore = "needs target/resnet-fixture from scripts/make_resnet_fixture.py (45 MB, not committed)"]
fn torchvision_state_dict_features_match_torch() {
    let dir = fixture_dir();
    let dev = Default::default();
    let model = ResNet18::<B>::load_torchvision(dir.join("resnet18_1ch.pth"), &dev).unwrap();
    let x = Array4::<f32>::read_npy(std::fs::File::open(dir.join("input.npy")).unwrap()).unwrap();
    let want = Array2::<f32>::read_npy(std::fs::File::open(dir.join("features.npy")).unwrap()).unwrap();
    let want_logits = Array2::<f32>::read_npy(std::fs::File::open(dir.join("logits.npy")).unwrap()).unwrap();
    let shape: Vec<usize> = x.shape().to_vec();
    let t = Tensor::<B, 4>::from_data(TensorData::new(x.into_raw_vec_and_offset().0, shape), &dev);
    let f: Vec<f32> = model.features(t.clone()).into_data().to_vec().unwrap();
    let l: Vec<f32> = model.forward(t).into_data().to_vec().unwrap();
    let worst = f.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "features differ by {worst}");
    let worst = l.iter().zip(want_logits.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "logits differ by {worst}");
}

#[test]
fn checkpoint_round_trip_and_extract() {
    let dev = Default::default();
    let cfg = ExtractorConfig { image_size: 32, ..ExtractorConfig::default() };
    let ex = FeatureExtractor::<B> {
        model: ResNet18::new(3, &dev),
        config: cfg.clone(),
        info: Some(serde_json::json!({"heldout_accuracy": 0.5})),
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("extractor.bpk");
    ex.save(&p).unwrap();
    let back = FeatureExtractor::<B>::load(&p, &dev).unwrap();
    assert_eq!(back.config, cfg);
    let imgs = ndarray::Array3::<f32>::from_shape_fn((3, 32, 32), |(i, y, x)| ((i * 7 + y * 3 + x) % 11) as f32 / 10.0);
    let a = ex.extract(imgs.view(), 2, &dev, |_| {}).unwrap();
    let b = back.extract(imgs.view(), 3, &dev, |_| {}).unwrap();
    assert_eq!(a.dim(), (3, 512));
    let worst = a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-5, "round trip changed features by {worst}");
    // Wrong image size is a typed error.
    let bad = ndarray::Array3::<f32>::zeros((1, 16, 16));
    assert!(matches!(ex.extract(bad.view(), 1, &dev, |_| {}), Err(gen_metrics::MetricsError::InvalidParameter { .. })));
    // Missing sidecar: typed I/O error naming the file.
    std::fs::remove_file(dir.path().join("extractor.json")).unwrap();
    assert!(matches!(FeatureExtractor::<B>::load(&p, &dev), Err(gen_metrics::MetricsError::Io { .. })));
}
