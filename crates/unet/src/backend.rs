//! The U-Net's backend extension: its `k x k` "same" convolution (stride 1, padding `k / 2`,
//! no dilation, one group) as a backend operation, so that a backend can bring a faster kernel.
//!
//! Every backend gets burn's own `conv2d` by default. burn Flex (f32) overrides the forward with
//! [`crate::same_conv`]'s shifted-GEMM kernel (2.4-9x faster than Flex's `conv2d` at this
//! network's shapes; docs/PERFORMANCE.md, issue 7). `Autodiff<B>` keeps burn's `conv2d` and its
//! backward, so training and gradients are unchanged.
//!
//! burn has no run-time registry of operations: a model that wants an operation of its own
//! names a trait that extends `Backend` (the backend-extension mechanism), and every backend it
//! runs on implements that trait. This crate implements it for Flex, NdArray, `Autodiff<B>` of
//! any of those, and (with the `cuda` feature) burn's CUDA backend in f32, f16 and bf16.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
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
    let p = weight.shape().dims::<4>()[2] / 2;
    B::conv2d(x, weight, bias, ConvOptions::new([1, 1], [p, p], [1, 1], 1))
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

impl UnetBackend for burn::backend::Flex {
    fn conv2d_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let f32_only = x.dtype() == DType::F32
            && weight.dtype() == DType::F32
            && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
        let (xs, ws) = (x.shape().to_vec(), weight.shape().to_vec());
        let shapes_ok = xs.len() == 4
            && ws.len() == 4
            && ws[1] == xs[1]
            && ws[2] == ws[3]
            && ws[2] % 2 == 1
            && bias.as_ref().is_none_or(|b| b.shape().num_elements() == ws[0]);
        if !(f32_only && shapes_ok) {
            return burn_conv2d_same::<Self>(x, weight, bias);
        }
        let x = contiguous(x);
        let weight = contiguous(weight);
        let bias = bias.map(contiguous);
        let geometry = crate::same_conv::Geometry { n: xs[0], cin: xs[1], h: xs[2], w: xs[3], cout: ws[0], k: ws[2] };
        let out = crate::same_conv::forward(
            &geometry,
            x.as_slice::<f32>().expect("contiguous f32"),
            weight.as_slice::<f32>().expect("contiguous f32"),
            bias.as_ref().map(|b| b.as_slice::<f32>().expect("contiguous f32")),
        );
        burn_flex::FlexTensor::from_data(TensorData::new(out, [xs[0], ws[0], xs[2], xs[3]]))
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

impl<B: UnetBackend, C: CheckpointStrategy> UnetBackend for Autodiff<B, C> {}

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
            // A non-contiguous input (a transposed view) gives the same result.
            let xt = x.swap_dims(2, 3).swap_dims(2, 3);
            let got = conv2d_same(xt, wt, b);
            got.into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
        }
    }

    /// Under autodiff the default (burn's conv2d) path gives burn's gradients.
    #[test]
    fn autodiff_uses_burn_conv2d() {
        type A = Autodiff<F>;
        let dev = Default::default();
        let x = Tensor::<A, 4>::random([2, 3, 5, 5], Distribution::Normal(0.0, 1.0), &dev).require_grad();
        let wt = Tensor::<A, 4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 0.3), &dev).require_grad();
        let y = conv2d_same(x.clone(), wt.clone(), None);
        let g = y.clone().sum().backward();
        let y2 = burn::tensor::module::conv2d(x.clone(), wt.clone(), None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
        let g2 = y2.clone().sum().backward();
        y.into_data().assert_eq(&y2.into_data(), true);
        x.grad(&g).unwrap().into_data().assert_eq(&x.grad(&g2).unwrap().into_data(), true);
        wt.grad(&g).unwrap().into_data().assert_eq(&wt.grad(&g2).unwrap().into_data(), true);
    }
}
