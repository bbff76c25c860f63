use super::*;
use crate::test_util::randn;
use burn::tensor::{TensorData, Tolerance};

type F = burn::backend::Flex;

/// The Flex kernel against burn's `conv2d` (the default path) at the network's kinds of
/// shapes: 3x3 and 7x7, with and without bias, one and several images, a strided input.
#[test]
fn flex_kernel_matches_burn_conv2d() {
    let dev = Default::default();
    for &(n, cin, cout, h, w, k, bias) in &[
        (1usize, 1usize, 8usize, 9usize, 7usize, 7usize, true),
        (3, 4, 5, 6, 11, 3, true),
        (2, 6, 3, 5, 5, 3, false),
        (5, 2, 2, 1, 1, 3, true),
        (1, 3, 4, 4, 4, 1, true),
    ] {
        let x = randn::<F, 4>([n, cin, h, w], 0.0, 1.0, 101, &dev);
        let wt = randn::<F, 4>([cout, cin, k, k], 0.0, 0.3, 102, &dev);
        let b = bias.then(|| randn::<F, 1>([cout], 0.0, 0.3, 103, &dev));
        let expected = Tensor::<F, 4>::from_primitive(TensorPrimitive::Float(burn_conv2d_same::<F>(
            x.clone().into_primitive().tensor(),
            wt.clone().into_primitive().tensor(),
            b.clone().map(|b| b.into_primitive().tensor()),
        )));
        let got = conv2d_same(x.clone(), wt.clone(), b.clone());
        assert_eq!(got.dims(), [n, cout, h, w]);
        got.into_data().assert_approx_eq::<f32>(&expected.clone().into_data(), Tolerance::absolute(1e-5));
        // A non-contiguous input (a transposed view of transposed data) gives the same result.
        let xt = Tensor::<F, 4>::from_data(x.clone().swap_dims(2, 3).into_data(), &dev).swap_dims(2, 3);
        xt.to_data().assert_eq(&x.to_data(), true);
        if h > 1 && w > 1 {
            assert!(!xt.clone().into_primitive().tensor().is_contiguous());
        }
        let got = conv2d_same(xt, wt, b);
        got.into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
    }
}

/// What the Flex kernel does not take goes to burn's own kernels, with burn's result: an
/// even kernel (its "same" padding is not symmetric), and f64 tensors.
#[test]
fn flex_falls_back_to_burn_outside_the_kernel() {
    let dev = Default::default();
    let x = randn::<F, 4>([2, 3, 6, 5], 0.0, 1.0, 104, &dev);
    let burns = |x: Tensor<F, 4>, w: Tensor<F, 4>| {
        Tensor::<F, 4>::from_primitive(TensorPrimitive::Float(burn_conv2d_same::<F>(
            x.into_primitive().tensor(),
            w.into_primitive().tensor(),
            None,
        )))
    };
    let even = randn::<F, 4>([4, 3, 2, 2], 0.0, 0.3, 105, &dev);
    assert!(flex::conv_geometry(
        &x.clone().into_primitive().tensor(),
        &even.clone().into_primitive().tensor(),
        flex::Operand::None
    )
    .is_none());
    let got = conv2d_same(x.clone(), even.clone(), None);
    assert_eq!(got.dims(), [2, 4, 7, 6]);
    got.into_data().assert_eq(&burns(x.clone(), even).into_data(), true);

    let (x64, w64) = (x.cast(DType::F64), randn::<F, 4>([4, 3, 3, 3], 0.0, 0.3, 106, &dev).cast(DType::F64));
    assert!(flex::conv_geometry(
        &x64.clone().into_primitive().tensor(),
        &w64.clone().into_primitive().tensor(),
        flex::Operand::None
    )
    .is_none());
    let got = conv2d_same(x64.clone(), w64.clone(), None);
    assert_eq!(got.dtype(), DType::F64);
    got.into_data().assert_eq(&burns(x64, w64).into_data(), true);
}

/// Gradients of the tracked operation against burn's autodiff `conv2d`: equal on NdArray
/// (same backward kernels), within rounding on Flex (our kernels); with a bias, and with
/// only the weight tracked.
fn gradients_match_burn<B: KernelBackend>(exact: bool) {
    type A<B> = Autodiff<B>;
    let dev = Default::default();
    let tol = Tolerance::absolute(1e-4);
    let check = |a: TensorData, b: TensorData| {
        if exact {
            a.assert_eq(&b, true);
        } else {
            a.assert_approx_eq::<f32>(&b, tol);
        }
    };
    for &(n, cin, cout, hw, k) in &[(2usize, 3usize, 4usize, 5usize, 3usize), (1, 1, 5, 9, 7), (3, 4, 2, 6, 1)] {
        for (with_bias, track_x) in [(false, true), (true, true), (false, false)] {
            let x = randn::<A<B>, 4>([n, cin, hw, hw], 0.0, 1.0, 121, &dev);
            let x = if track_x { x.require_grad() } else { x };
            let wt = randn::<A<B>, 4>([cout, cin, k, k], 0.0, 0.3, 122, &dev).require_grad();
            let b = with_bias.then(|| randn::<A<B>, 1>([cout], 0.0, 0.3, 123, &dev).require_grad());
            // A non-uniform output gradient (sum of squares).
            let y = conv2d_same(x.clone(), wt.clone(), b.clone());
            let g = y.clone().powf_scalar(2.0).sum().backward();
            let p = k / 2;
            let y2 = burn::tensor::module::conv2d(
                x.clone(),
                wt.clone(),
                b.clone(),
                ConvOptions::new([1, 1], [p, p], [1, 1], 1),
            );
            let g2 = y2.clone().powf_scalar(2.0).sum().backward();
            check(y.into_data(), y2.into_data());
            if track_x {
                check(x.grad(&g).unwrap().into_data(), x.grad(&g2).unwrap().into_data());
            } else {
                assert!(x.grad(&g).is_none());
            }
            check(wt.grad(&g).unwrap().into_data(), wt.grad(&g2).unwrap().into_data());
        }
    }
}

#[test]
fn autodiff_gradients_match_burn_on_flex() {
    gradients_match_burn::<F>(false);
}

#[test]
fn autodiff_gradients_match_burn_on_ndarray() {
    gradients_match_burn::<burn::backend::NdArray>(true);
}

/// burn's composition of the training normalisation, on tensors (what the kernel and the tracked
/// operation are checked against).
fn composed_train<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    relu: bool,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
    let out = burn_batch_norm_train::<B>(prim(x), prim(gamma), prim(beta), 1e-5, relu);
    (float(out.output), float(out.mean), float(out.var))
}

fn bn_operands<B: Backend>(
    n: usize,
    c: usize,
    hw: usize,
    dev: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
    (randn([n, c, hw, hw], 0.5, 2.0, 107, dev), randn([c], 1.0, 0.3, 108, dev), randn([c], 0.0, 0.3, 109, dev))
}

/// The Flex kernels against burn's composition: output and statistics in training mode, and
/// the evaluation-mode affine with given statistics, with and without ReLU; a non-contiguous
/// input too.
#[test]
fn flex_batch_norm_matches_the_composition() {
    let dev = Default::default();
    let tol = Tolerance::absolute(1e-4);
    for &(n, c, hw) in &[(2usize, 3usize, 5usize), (4, 8, 1), (1, 16, 7)] {
        for relu in [false, true] {
            let (x, gamma, beta) = bn_operands::<F>(n, c, hw, &dev);
            let (y, mean, var) = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5, relu);
            let (y2, mean2, var2) = composed_train(x.clone(), gamma.clone(), beta.clone(), relu);
            y.into_data().assert_approx_eq::<f32>(&y2.into_data(), tol);
            mean.clone().into_data().assert_approx_eq::<f32>(&mean2.into_data(), tol);
            var.clone().into_data().assert_approx_eq::<f32>(&var2.into_data(), tol);
            let xt = Tensor::<F, 4>::from_data(x.clone().swap_dims(2, 3).into_data(), &dev).swap_dims(2, 3);
            let e = batch_norm_eval(xt, gamma.clone(), beta.clone(), mean.clone(), var.clone(), 1e-5, relu);
            let e2 = float::<F, 4>(burn_batch_norm_eval::<F>(
                prim(x),
                prim(gamma),
                prim(beta),
                prim(mean),
                prim(var),
                1e-5,
                relu,
            ));
            e.into_data().assert_approx_eq::<f32>(&e2.into_data(), tol);
        }
    }
}

/// Gradients of the tracked normalisation (`x`, `gamma`, `beta`) against burn's autodiff of the
/// composition, for a non-uniform output gradient.
fn batch_norm_gradients_match_burn<B: KernelBackend>() {
    type A<B> = Autodiff<B>;
    let dev = Default::default();
    let tol = Tolerance::absolute(2e-4);
    for relu in [false, true] {
        let (x, gamma, beta) = bn_operands::<A<B>>(3, 4, 5, &dev);
        let (x, gamma, beta) = (x.require_grad(), gamma.require_grad(), beta.require_grad());
        let w = randn::<A<B>, 4>([3, 4, 5, 5], 0.0, 1.0, 124, &dev);
        let (y, _, _) = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5, relu);
        let g = (y * w.clone()).sum().backward();
        let (y2, _, _) = composed_train(x.clone(), gamma.clone(), beta.clone(), relu);
        let g2 = (y2 * w).sum().backward();
        let pairs: [(TensorData, TensorData); 3] = [
            (x.grad(&g).unwrap().into_data(), x.grad(&g2).unwrap().into_data()),
            (gamma.grad(&g).unwrap().into_data(), gamma.grad(&g2).unwrap().into_data()),
            (beta.grad(&g).unwrap().into_data(), beta.grad(&g2).unwrap().into_data()),
        ];
        for (a, b) in pairs {
            a.assert_approx_eq::<f32>(&b, tol);
        }
    }
}

#[test]
fn batch_norm_gradients_match_burn_on_flex() {
    batch_norm_gradients_match_burn::<F>();
}

#[test]
fn batch_norm_gradients_match_burn_on_ndarray() {
    batch_norm_gradients_match_burn::<burn::backend::NdArray>();
}

/// `flex::contiguous` copies strided views value for value as burn does: batches of transposed
/// matrices (its tiled path), narrowed ones, plain 2-D transposes, broadcast (stride-0) rows,
/// and layouts it leaves to burn (a permutation that stays four-dimensional).
#[test]
fn contiguous_copies_strided_views_like_burn() {
    let dev = Default::default();
    let x = randn::<F, 4>([3, 2, 37, 21], 0.0, 1.0, 110, &dev);
    let views: Vec<(&str, Tensor<F, 4>)> = vec![
        ("transposed", x.clone().swap_dims(2, 3)),
        ("narrowed then transposed", x.clone().narrow(3, 4, 17).swap_dims(2, 3)),
        ("transposed then narrowed", x.clone().swap_dims(2, 3).narrow(2, 3, 15)),
        ("one batch", x.clone().narrow(0, 1, 1).narrow(1, 0, 1).swap_dims(2, 3)),
        ("broadcast", x.clone().narrow(1, 0, 1).narrow(2, 5, 1).expand([3, 4, 6, 21])),
        ("rows of whole planes", x.clone().swap_dims(0, 1)),
        ("permuted", x.clone().permute([3, 1, 0, 2])),
    ];
    for (name, view) in views {
        let prim = view.into_primitive().tensor();
        assert!(!prim.is_contiguous(), "{name}: the view is strided");
        let expected = prim.to_contiguous();
        let got = flex::contiguous(prim);
        assert!(got.is_contiguous(), "{name}");
        assert_eq!(got.shape(), expected.shape(), "{name}");
        assert_eq!(flex::f32s(&got), flex::f32s(&expected), "{name}");
    }
}
