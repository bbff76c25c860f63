//! The U-Net's backend extension: its `k x k` "same" convolution (stride 1, padding `k / 2`,
//! no dilation, one group) as a backend operation, so that a backend can bring a faster kernel.
//!
//! Every backend gets burn's own `conv2d` and its backward by default. burn Flex (f32) overrides
//! the forward and both gradients with the shifted-GEMM kernels of `same_conv.rs` (the forward
//! 1.1-9x faster than Flex's `conv2d` at this network's shapes; docs/PERFORMANCE.md, issue 7).
//! `Autodiff<B>` makes the bias-free call one tracked operation whose backward runs the inner
//! backend's gradient operations, so `Autodiff<Flex>` trains on our kernels too.
//!
//! burn has no run-time registry of operations: a model that wants an operation of its own
//! names a trait that extends `Backend` (the backend-extension mechanism), and every backend it
//! runs on implements that trait. This crate implements it for Flex, NdArray, `Autodiff<B>` of
//! any of those, and (with the `cuda` feature) burn's CUDA backend in f32, f16 and bf16.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{DType, Tensor, TensorData, TensorMetadata, TensorPrimitive};

/// A burn backend the U-Net runs on: `Backend` plus the network's convolution.
pub trait UnetBackend: Backend {
    /// `k x k` convolution of `x` `[N, C_in, H, W]` with `weight` `[C_out, C_in, k, k]` (odd
    /// `k`), stride 1, zero padding `k / 2`, plus `bias` `[C_out]`: output `[N, C_out, H, W]`.
    fn conv2d_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        burn_conv2d_same::<Self>(x, weight, bias)
    }

    /// The gradient of [`UnetBackend::conv2d_same`] with respect to `x`, given the gradient of
    /// its output.
    fn conv2d_same_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        burn_conv2d_same_x_backward::<Self>(x, weight, output_grad)
    }

    /// The gradient of [`UnetBackend::conv2d_same`] with respect to `weight`, given the gradient
    /// of its output.
    fn conv2d_same_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        burn_conv2d_same_weight_backward::<Self>(x, weight, output_grad)
    }
}

/// Stride 1, padding `k / 2`, no dilation, one group, for `weight` `[C_out, C_in, k, k]`.
fn same_options<T: TensorMetadata>(weight: &T) -> ConvOptions<2> {
    let p = weight.shape().dims::<4>()[2] / 2;
    ConvOptions::new([1, 1], [p, p], [1, 1], 1)
}

/// An autodiff backend whose inner backend is a [`UnetBackend`] too (what training needs: the
/// network runs on `B` with gradients and its EMA copy on `B::InnerBackend`).
pub trait UnetAutodiffBackend: UnetBackend + AutodiffBackend<InnerBackend: UnetBackend> {}

impl<B> UnetAutodiffBackend for B
where
    B: UnetBackend + AutodiffBackend,
    B::InnerBackend: UnetBackend,
{
}

/// burn's own `conv2d` with the options of [`UnetBackend::conv2d_same`].
fn burn_conv2d_same<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let options = same_options(&weight);
    B::conv2d(x, weight, bias, options)
}

/// burn's own input gradient of [`burn_conv2d_same`].
fn burn_conv2d_same_x_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let options = same_options(&weight);
    B::conv2d_x_backward(x, weight, output_grad, options)
}

/// burn's own weight gradient of [`burn_conv2d_same`].
fn burn_conv2d_same_weight_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let options = same_options(&weight);
    B::conv2d_weight_backward(x, weight, output_grad, options)
}

/// [`UnetBackend::conv2d_same`] on tensors.
pub fn conv2d_same<B: UnetBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(B::conv2d_same(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
    )))
}

/// The third operand of a Flex call, checked along with `x` and `weight`.
enum Operand<'a> {
    None,
    /// A bias, `[C_out]`.
    Bias(&'a burn_flex::FlexTensor),
    /// The output's gradient, `[N, C_out, H, W]`.
    OutputGrad(&'a burn_flex::FlexTensor),
}

/// The kernel's geometry when `x`, `weight` and `extra` are f32 tensors of shapes it takes;
/// `None` sends the call to burn's own kernels.
fn flex_geometry(
    x: &burn_flex::FlexTensor,
    weight: &burn_flex::FlexTensor,
    extra: Operand<'_>,
) -> Option<crate::same_conv::Geometry> {
    let f32s = x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    let (xs, ws) = (x.shape().to_vec(), weight.shape().to_vec());
    if !f32s || xs.len() != 4 || ws.len() != 4 || ws[1] != xs[1] || ws[2] != ws[3] || ws[2] % 2 == 0 {
        return None;
    }
    let g = crate::same_conv::Geometry { n: xs[0], cin: xs[1], h: xs[2], w: xs[3], cout: ws[0], k: ws[2] };
    let fits = match extra {
        Operand::None => true,
        Operand::Bias(b) => b.dtype() == DType::F32 && b.shape().num_elements() == g.cout,
        Operand::OutputGrad(o) => o.dtype() == DType::F32 && o.shape().to_vec() == [g.n, g.cout, g.h, g.w],
    };
    fits.then_some(g)
}

fn f32s(t: &burn_flex::FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

fn flex_tensor(values: Vec<f32>, shape: [usize; 4]) -> burn_flex::FlexTensor {
    burn_flex::FlexTensor::from_data(TensorData::new(values, shape))
}

impl UnetBackend for burn::backend::Flex {
    fn conv2d_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let Some(g) = flex_geometry(&x, &weight, bias.as_ref().map_or(Operand::None, Operand::Bias)) else {
            return burn_conv2d_same::<Self>(x, weight, bias);
        };
        let (x, weight, bias) = (contiguous(x), contiguous(weight), bias.map(contiguous));
        let out = crate::same_conv::forward(&g, f32s(&x), f32s(&weight), bias.as_ref().map(f32s));
        flex_tensor(out, [g.n, g.cout, g.h, g.w])
    }

    fn conv2d_same_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let Some(g) = flex_geometry(&x, &weight, Operand::OutputGrad(&output_grad)) else {
            return burn_conv2d_same_x_backward::<Self>(x, weight, output_grad);
        };
        let (weight, output_grad) = (contiguous(weight), contiguous(output_grad));
        let dx = crate::same_conv::input_grad(&g, f32s(&weight), f32s(&output_grad));
        flex_tensor(dx, [g.n, g.cin, g.h, g.w])
    }

    fn conv2d_same_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let Some(g) = flex_geometry(&x, &weight, Operand::OutputGrad(&output_grad)) else {
            return burn_conv2d_same_weight_backward::<Self>(x, weight, output_grad);
        };
        let (x, output_grad) = (contiguous(x), contiguous(output_grad));
        let dw = crate::same_conv::weight_grad(&g, f32s(&x), f32s(&output_grad));
        flex_tensor(dw, [g.cout, g.cin, g.k, g.k])
    }
}

/// `t` itself when its f32 data is one contiguous run, else a contiguous copy.
fn contiguous(t: burn_flex::FlexTensor) -> burn_flex::FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

impl UnetBackend for burn::backend::NdArray {}

/// Under autodiff the convolution without bias (how the U-Net calls it when training) is one
/// tracked operation whose backward calls the inner backend's
/// [`UnetBackend::conv2d_same_x_backward`] and [`UnetBackend::conv2d_same_weight_backward`]
/// (on Flex: our kernels). With a bias it is burn's own autodiff `conv2d`.
impl<B: UnetBackend, C: CheckpointStrategy> UnetBackend for Autodiff<B, C> {
    fn conv2d_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct ConvSameBackward;

        impl<B: UnetBackend> Backward<B, 2> for ConvSameBackward {
            type State = (NodeId, NodeId);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_x, node_weight] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, weight_state) = ops.state;
                let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
                let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
                if let Some(node) = node_x {
                    let dx = B::conv2d_same_x_backward(x.clone(), weight.clone(), grad.clone());
                    grads.register::<B>(node.id, dx);
                }
                if let Some(node) = node_weight {
                    let dw = B::conv2d_same_weight_backward(x, weight, grad);
                    grads.register::<B>(node.id, dw);
                }
            }
        }

        if bias.is_some() {
            return burn_conv2d_same::<Self>(x, weight, bias);
        }
        match ConvSameBackward
            .prepare::<C>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                prep.finish((x_state, weight_state), B::conv2d_same(x.primitive, weight.primitive, None))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_same(x.primitive, weight.primitive, None)),
        }
    }
}

#[cfg(feature = "cuda")]
impl UnetBackend for burn::backend::Cuda<f32> {}
#[cfg(feature = "cuda")]
impl UnetBackend for burn::backend::Cuda<burn::tensor::f16> {}
#[cfg(feature = "cuda")]
impl UnetBackend for burn::backend::Cuda<burn::tensor::bf16> {}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

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
            let x = Tensor::<F, 4>::random([n, cin, h, w], Distribution::Normal(0.0, 1.0), &dev);
            let wt = Tensor::<F, 4>::random([cout, cin, k, k], Distribution::Normal(0.0, 0.3), &dev);
            let b = bias.then(|| Tensor::<F, 1>::random([cout], Distribution::Normal(0.0, 0.3), &dev));
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
        let x = Tensor::<F, 4>::random([2, 3, 6, 5], Distribution::Normal(0.0, 1.0), &dev);
        let burns = |x: Tensor<F, 4>, w: Tensor<F, 4>| {
            Tensor::<F, 4>::from_primitive(TensorPrimitive::Float(burn_conv2d_same::<F>(
                x.into_primitive().tensor(),
                w.into_primitive().tensor(),
                None,
            )))
        };
        let even = Tensor::<F, 4>::random([4, 3, 2, 2], Distribution::Normal(0.0, 0.3), &dev);
        assert!(flex_geometry(&x.clone().into_primitive().tensor(), &even.clone().into_primitive().tensor(), Operand::None).is_none());
        let got = conv2d_same(x.clone(), even.clone(), None);
        assert_eq!(got.dims(), [2, 4, 7, 6]);
        got.into_data().assert_eq(&burns(x.clone(), even).into_data(), true);

        let (x64, w64) = (x.cast(DType::F64), Tensor::<F, 4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 0.3), &dev).cast(DType::F64));
        assert!(flex_geometry(&x64.clone().into_primitive().tensor(), &w64.clone().into_primitive().tensor(), Operand::None).is_none());
        let got = conv2d_same(x64.clone(), w64.clone(), None);
        assert_eq!(got.dtype(), DType::F64);
        got.into_data().assert_eq(&burns(x64, w64).into_data(), true);
    }

    /// Gradients of the tracked operation against burn's autodiff `conv2d`: equal on NdArray
    /// (same backward kernels), within rounding on Flex (our kernels); with a bias, and with
    /// only the weight tracked.
    fn gradients_match_burn<B: UnetBackend>(exact: bool) {
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
                let x = Tensor::<A<B>, 4>::random([n, cin, hw, hw], Distribution::Normal(0.0, 1.0), &dev);
                let x = if track_x { x.require_grad() } else { x };
                let wt = Tensor::<A<B>, 4>::random([cout, cin, k, k], Distribution::Normal(0.0, 0.3), &dev).require_grad();
                let b = with_bias.then(|| Tensor::<A<B>, 1>::random([cout], Distribution::Normal(0.0, 0.3), &dev).require_grad());
                // A non-uniform output gradient (sum of squares).
                let y = conv2d_same(x.clone(), wt.clone(), b.clone());
                let g = y.clone().powf_scalar(2.0).sum().backward();
                let p = k / 2;
                let y2 = burn::tensor::module::conv2d(x.clone(), wt.clone(), b.clone(), ConvOptions::new([1, 1], [p, p], [1, 1], 1));
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
}
