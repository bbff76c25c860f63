//! The process-wide precision setting and the per-thread f32 scope (their own test binary, one
//! test: setting the precision would race the unit tests that check the f32 kernels to 1e-5).

use unet_kernels::same_conv::{self, Geometry, Precision};

#[test]
fn the_convolution_follows_the_setting() {
    let g = Geometry { n: 2, cin: 8, h: 10, w: 12, cout: 16, k: 3 };
    let vals = |n: usize, m: f32| (0..n).map(|i| (i as f32 * m).sin()).collect::<Vec<f32>>();
    let (x, w, gr) =
        (vals(g.n * g.cin * g.h * g.w, 0.37), vals(g.cout * g.cin * 9, 0.91), vals(g.n * g.cout * 120, 0.53));
    assert_eq!(same_conv::precision(), Precision::F32, "f32 unless set");
    match same_conv::set_precision(Precision::Bf16) {
        Ok(()) => {
            assert_eq!(same_conv::precision(), Precision::Bf16);
            assert_eq!(
                same_conv::forward(&g, &x, &w, None),
                same_conv::forward_with(&g, &x, &w, None, Precision::Bf16)
            );
            assert_eq!(same_conv::input_grad(&g, &w, &gr), same_conv::input_grad_with(&g, &w, &gr, Precision::Bf16));
            assert_eq!(same_conv::weight_grad(&g, &x, &gr), same_conv::weight_grad_with(&g, &x, &gr, Precision::Bf16));
            assert_ne!(same_conv::forward(&g, &x, &w, None), same_conv::forward_with(&g, &x, &w, None, Precision::F32));
            assert_ne!(same_conv::weight_grad(&g, &x, &gr), same_conv::weight_grad_with(&g, &x, &gr, Precision::F32));
            {
                // An f32 scope covers all three.
                let _f32 = same_conv::F32Scope::new();
                assert_eq!(
                    same_conv::weight_grad(&g, &x, &gr),
                    same_conv::weight_grad_with(&g, &x, &gr, Precision::F32)
                );
            }
        }
        Err(e) => {
            assert!(!same_conv::bf16_available());
            assert!(e.to_string().contains("AVX512-BF16"), "{e}");
            assert_eq!(same_conv::precision(), Precision::F32, "a refused setting leaves f32");
        }
    }
    same_conv::set_precision(Precision::F32).unwrap();
    assert_eq!(same_conv::forward(&g, &x, &w, None), same_conv::forward_with(&g, &x, &w, None, Precision::F32));
    an_f32_scope_is_per_thread();
}

/// An f32 scope holds f32 on its own thread only, nests, and ends when it drops (called from
/// the test above: both set the process-wide precision, so they must not run concurrently).
fn an_f32_scope_is_per_thread() {
    if same_conv::set_precision(Precision::Bf16).is_err() {
        return;
    }
    {
        let _outer = same_conv::F32Scope::new();
        {
            let _inner = same_conv::F32Scope::new();
            assert_eq!(same_conv::precision(), Precision::F32);
        }
        assert_eq!(same_conv::precision(), Precision::F32, "the outer scope still holds");
        let other = std::thread::spawn(same_conv::precision).join().unwrap();
        assert_eq!(other, Precision::Bf16, "another thread keeps the process-wide setting");
    }
    assert_eq!(same_conv::precision(), Precision::Bf16);
    same_conv::set_precision(Precision::F32).unwrap();
}
