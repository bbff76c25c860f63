//! Architecture tests: parameter count, key table vs. module, shapes, invalid configs.

use std::collections::BTreeMap;

use burn::backend::Flex;
use burn::module::Module;
use burn::tensor::Tensor;
use burn_store::ModuleSnapshot;
use kernel_ops::test_util::randn;
use unet::keys::param_specs;
use unet::{UnetConfig, UnetError};

type B = Flex;

#[test]
fn deeplense_preset_has_35_705_089_parameters() {
    let config = UnetConfig::deeplense();
    assert_eq!(config.num_params(), 35_705_089);
    let model = config.init::<B>(&Default::default()).unwrap();
    assert_eq!(model.num_params(), 35_705_089);
}

#[test]
fn fixture_config_has_78_985_parameters() {
    // expected.json: Unet(dim=8, dim_mults=(1,2), channels=1) -> num_params 78985
    assert_eq!(UnetConfig::new(8, vec![1, 2], 1).num_params(), 78_985);
}

/// The key table must name every burn parameter exactly once with the right shape.
fn check_table(config: &UnetConfig) {
    let model = config.init::<B>(&Default::default()).unwrap();
    let collected: BTreeMap<String, Vec<usize>> =
        model.collect(None, None, false).into_iter().map(|s| (s.full_path(), s.shape.to_vec())).collect();
    let table: BTreeMap<String, Vec<usize>> =
        param_specs(config).iter().map(|s| (s.burn_path.clone(), s.burn_shape())).collect();
    assert_eq!(table.len(), param_specs(config).len(), "duplicate burn paths");
    assert_eq!(collected, table, "key table out of sync with the module for {config:?}");
    assert_eq!(model.num_params(), config.num_params());
}

#[test]
fn key_table_matches_module() {
    check_table(&UnetConfig::new(8, vec![1, 2], 1));
    check_table(&UnetConfig::small());
    check_table(
        &UnetConfig::new(8, vec![1, 2, 3], 2)
            .with_init_dim(12)
            .with_out_dim(4)
            .with_attention(2, 8)
            .with_full_attn(vec![false, true, true]),
    );
}

#[test]
fn forward_shapes() {
    let device = Default::default();
    let config = UnetConfig::new(8, vec![1, 2, 2], 1).with_out_dim(2);
    let model = config.init::<B>(&device).unwrap();
    let x = randn::<B, 4>([3, 1, 8, 12], 0.0, 1.0, 301, &device);
    let t = Tensor::<B, 1>::from_floats([0.0, 10.0, 999.0], &device);
    let y = model.forward(x, t);
    assert_eq!(y.dims(), [3, 2, 8, 12]);
    let v: Vec<f32> = y.into_data().to_vec().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn bad_input_is_an_error() {
    let device = Default::default();
    let model = UnetConfig::new(8, vec![1, 2, 2], 1).init::<B>(&device).unwrap();
    // 10 is not a multiple of 4
    let x = Tensor::<B, 4>::zeros([1, 1, 10, 8], &device);
    let t = Tensor::<B, 1>::zeros([1], &device);
    let err = model.try_forward(x, t).unwrap_err();
    assert!(matches!(err, UnetError::BadInput { .. }), "{err}");
    assert!(err.to_string().contains("multiples of 4"), "{err}");
    // wrong channel count
    let x = Tensor::<B, 4>::zeros([1, 3, 8, 8], &device);
    let t = Tensor::<B, 1>::zeros([1], &device);
    assert!(model.try_forward(x, t).is_err());
    // batch mismatch
    let x = Tensor::<B, 4>::zeros([2, 1, 8, 8], &device);
    let t = Tensor::<B, 1>::zeros([1], &device);
    assert!(model.try_forward(x, t).is_err());
}

#[test]
fn invalid_configs_are_rejected() {
    let cases = [
        UnetConfig::new(0, vec![1, 2], 1),
        UnetConfig::new(7, vec![1, 2], 1),
        UnetConfig::new(8, vec![], 1),
        UnetConfig::new(8, vec![1, 0], 1),
        UnetConfig::new(8, vec![1, 2], 0),
        UnetConfig::new(8, vec![1, 2], 1).with_full_attn(vec![true]),
        UnetConfig::new(8, vec![1, 2], 1).with_attention(0, 32),
        UnetConfig::new(8, vec![1, 2], 1).with_dropout(1.5),
    ];
    for c in cases {
        let err = c.init::<B>(&Default::default()).unwrap_err();
        assert!(matches!(err, UnetError::InvalidConfig { .. }), "{c:?}: {err}");
    }
}

#[test]
fn config_json_round_trip_and_describe() {
    let c = UnetConfig::deeplense();
    let json = serde_json::to_string(&c).unwrap();
    let back: UnetConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(c, back);
    assert_eq!(c.describe(), "Unet(dim=64, dim_mults=(1,2,4,8), channels=1)");
    // Defaults fill in omitted fields, as in Python.
    let minimal: UnetConfig = serde_json::from_str(r#"{"dim": 64, "dim_mults": [1,2,4,8], "channels": 1}"#).unwrap();
    assert_eq!(minimal, c);
}

#[test]
fn sinusoidal_frequencies_follow_the_reference() {
    // half = 4: exp(-ln(10000) * i / 3)
    let f = unet::model::sinusoidal_freqs(8, 10000.0);
    let expect = [1.0f32, 0.046_415_89, 0.002_154_435, 1.0e-4];
    for (a, b) in f.iter().zip(expect) {
        assert!((a - b).abs() <= 1e-6 * b.max(1e-3), "{a} vs {b}");
    }
}

#[test]
fn unet_is_a_diffusion_core_denoiser() {
    fn run<D: diffusion_core::Denoiser<B>>(d: &D, x: Tensor<B, 4>, t: Tensor<B, 1>) -> Tensor<B, 4> {
        d.denoise(x, t)
    }
    let device = Default::default();
    let model = UnetConfig::new(8, vec![1, 2], 1).init::<B>(&device).unwrap();
    let x = randn::<B, 4>([2, 1, 8, 8], 0.0, 1.0, 302, &device);
    let t = Tensor::<B, 1>::from_floats([3.0, 700.0], &device);
    let a: Vec<f32> = run(&model, x.clone(), t.clone()).into_data().to_vec().unwrap();
    let b: Vec<f32> = model.forward(x, t).into_data().to_vec().unwrap();
    assert_eq!(a, b);
}

#[test]
fn gradients_flow_to_every_parameter_under_autodiff() {
    use burn::backend::Autodiff;
    use burn::module::Param;
    type AB = Autodiff<Flex>;
    let device = Default::default();
    let model = UnetConfig::new(8, vec![1, 2], 1).with_dropout(0.1).init::<AB>(&device).unwrap();
    let x = randn::<AB, 4>([2, 1, 8, 8], 0.0, 1.0, 303, &device);
    let t = Tensor::<AB, 1>::from_floats([3.0, 700.0], &device);
    let loss = model.forward(x, t).powi_scalar(2).mean();
    let grads = loss.backward();
    // A few parameters from each kind of layer, including both attentions' memory slots.
    let g = |p: &Param<Tensor<AB, 4>>| p.grad(&grads).expect("gradient").abs().sum().into_scalar();
    let checks = [
        ("init_conv", g(&model.init_conv.weight)),
        ("mid_attn.mem_kv", g(model.mid_attn.mem_kv.as_ref().unwrap())),
        ("final_res_block.block1.norm.g", g(&model.final_res_block.block1.norm.g)),
    ];
    for (name, v) in checks {
        assert!(v.is_finite() && v > 0.0, "{name}: |grad| sum = {v}");
    }
    match &model.downs[0].attn {
        unet::model::StageAttention::Linear(a) => {
            let v = g(a.mem_kv.as_ref().unwrap());
            assert!(v.is_finite() && v > 0.0, "linear attention mem_kv: {v}");
        }
        _ => panic!("outer stage should use linear attention"),
    }
    // The inner (no-autodiff) module, as used for sampling/EMA during training.
    {
        use burn::module::AutodiffModule;
        let inner: unet::Unet<Flex> = model.valid();
        assert_eq!(inner.config(), model.config());
        assert_eq!(inner.num_params(), model.num_params());
    }
    let lin = model.time_mlp.linear1.weight.grad(&grads).expect("gradient").abs().sum().into_scalar();
    assert!(lin.is_finite() && lin > 0.0);
}
