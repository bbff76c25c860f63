//! Features are measured in f32 even when the process runs its convolutions in bf16 (the U-Net's
//! `--precision bf16`): own test binary, as the setting is process-wide.

use burn::backend::Flex;
use gen_metrics::extractor::ResNet18;
use kernel_ops::test_util::randn;

#[test]
fn features_ignore_the_bf16_setting() {
    let device = Default::default();
    let net = ResNet18::<Flex>::new(3, &device);
    let x = randn::<Flex, 4>([2, 1, 40, 40], 0.0, 1.0, 201, &device);
    let f32_features = net.features(x.clone()).into_data();
    if kernel_ops::set_conv_precision(kernel_ops::ConvPrecision::Bf16).is_err() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    assert_eq!(net.features(x.clone()).into_data(), f32_features, "bit for bit the f32 features");
    assert_eq!(kernel_ops::conv_precision(), kernel_ops::ConvPrecision::Bf16, "the setting is restored");
    // The guard is what keeps them apart: without it the convolutions do run in bf16.
    let w = randn::<Flex, 4>([64, 64, 3, 3], 0.0, 0.05, 202, &device);
    let h = randn::<Flex, 4>([1, 64, 16, 16], 0.0, 1.0, 203, &device);
    let bf16 = kernel_ops::conv2d_same(h.clone(), w.clone(), None).into_data();
    let f32 = {
        let _g = kernel_ops::F32Convolutions::new();
        kernel_ops::conv2d_same(h, w, None).into_data()
    };
    assert_ne!(bf16, f32);
}
