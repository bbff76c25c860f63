//! The U-Net's backend extension: the operations the network wants faster than burn's generic
//! ones, so that a backend can bring its own kernels:
//!
//! - its `k x k` "same" convolution (stride 1, padding `k / 2`, no dilation, one group), from
//!   the `kernel-ops` crate's [`KernelBackend`], which this trait extends (gen-metrics' ResNet
//!   shares it);
//! - `RMSNorm` over channels, optionally followed by the time modulation and SiLU
//!   ([`UnetBackend::rms_norm_act`]);
//! - softmax over the last axis ([`UnetBackend::softmax_last`]) and over the second-to-last
//!   ([`UnetBackend::softmax_cols`]);
//! - an identity whose gradient is handed on contiguous ([`UnetBackend::contiguous_grad`]), for
//!   the concatenations whose backward slices its gradient.
//!
//! Every backend gets burn's own operations by default (for the norm, exactly the composition the
//! network used before). On burn Flex (f32) `kernel-ops` runs the convolution and both its gradients on the
//! kernels of `same_conv.rs` (a direct AVX-512 kernel for the forward and the input gradient,
//! shifted GEMMs for the rest; the forward 1.1-9x faster than Flex's `conv2d` at this network's
//! shapes already as GEMMs), and the norm and softmaxes with single-pass SIMD kernels
//! (`norm_act.rs`, `softmax.rs`); docs/performance-history.md, issue 7. Under `Autodiff<B>` each
//! operation is one tracked node whose backward runs the inner backend's gradient operations, so `Autodiff<Flex>` trains
//! on our kernels too.
//!
//! burn has no run-time registry of operations: a model that wants an operation of its own
//! names a trait that extends `Backend` (the backend-extension mechanism), and every backend it
//! runs on implements that trait. This crate implements it for Flex, NdArray, `Autodiff<B>` of
//! any of those, and (with the `cuda` and `tch` features) burn's CUDA and LibTorch backends in f32,
//! f16 and bf16.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};
use kernel_ops::flex::{contiguous, f32s, tensor as flex_tensor};
pub use kernel_ops::{conv2d_same, KernelBackend};

/// A burn backend the U-Net runs on: [`KernelBackend`] (the same convolution) plus the
/// network's norm and softmaxes.
pub trait UnetBackend: KernelBackend {
    /// The U-Net's channel `RMSNorm` with what follows it in a `Block`: for `x` `[N, C, H, W]`,
    /// `y = x / max(||x||_2 over C, 1e-12) * gain` with `gain` `[C]` (the learned `g` times
    /// `sqrt(C)`); then, with `modulation = Some((scale, shift))` (each `[N, C]`),
    /// `y = y * (scale + 1) + shift`; then `silu(y)` when `silu`.
    ///
    /// By default burn's tensor operations in the reference's order (what the network ran before
    /// this operation existed); Flex (f32) runs it as one fused pass (`norm_act.rs`).
    fn rms_norm_act(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        modulation: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        silu: bool,
    ) -> FloatTensor<Self> {
        burn_rms_norm_act::<Self>(x, gain, modulation, silu)
    }

    /// The gradients of [`UnetBackend::rms_norm_act`] with respect to `x`, `gain` and (when
    /// modulated) `scale` and `shift`, given the gradient of its output. By default the closed
    /// form (see `norm_act::backward`) in burn's tensor operations; Flex (f32) runs the fused
    /// kernel.
    fn rms_norm_act_backward(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        modulation: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        silu: bool,
        output_grad: FloatTensor<Self>,
    ) -> NormActGrads<Self> {
        burn_rms_norm_act_backward::<Self>(x, gain, modulation, silu, output_grad)
    }

    /// Softmax over the last axis of `x` (any rank): `exp(x - max) / sum(exp(x - max))` per
    /// row. By default burn's `softmax`; Flex (f32) runs a vectorised kernel (`softmax.rs`).
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        burn_softmax::<Self>(x, SoftmaxAxis::Last)
    }

    /// The gradient of [`UnetBackend::softmax_last`] given its output `y` and the output's
    /// gradient: `y * (grad - sum(grad * y))` per row. By default in burn's tensor operations;
    /// Flex (f32) runs one fused pass per row.
    fn softmax_last_backward(y: FloatTensor<Self>, output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        burn_softmax_backward::<Self>(y, output_grad, SoftmaxAxis::Last)
    }

    /// Softmax over the second-to-last axis of `x` (at least 2-D): every column of the last two
    /// axes sums to one. By default burn's `softmax`; Flex (f32) runs a kernel vectorised across
    /// the columns (`softmax.rs`), where burn would go through strided copies.
    fn softmax_cols(x: FloatTensor<Self>) -> FloatTensor<Self> {
        burn_softmax::<Self>(x, SoftmaxAxis::Cols)
    }

    /// The gradient of [`UnetBackend::softmax_cols`] given its output `y` and the output's
    /// gradient: `y * (grad - sum(grad * y))` per column. By default in burn's tensor operations;
    /// Flex (f32) runs one fused pass.
    fn softmax_cols_backward(y: FloatTensor<Self>, output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        burn_softmax_backward::<Self>(y, output_grad, SoftmaxAxis::Cols)
    }

    /// `x` itself; under autodiff, a tracked identity whose backward hands `x`'s gradient on
    /// through [`UnetBackend::contiguous`]. Where a gradient comes back as a strided view (a
    /// concatenation's backward returns slices of the output's gradient), every later operation
    /// on it, and the sum where a tensor's gradients accumulate, pays for the view; on Flex that
    /// is an element-by-element strided iterator, one contiguous copy here instead.
    fn contiguous_grad(x: FloatTensor<Self>) -> FloatTensor<Self> {
        x
    }

    /// `t` laid out so the backend's operations run at their best: by default `t` itself; Flex
    /// (f32) copies a strided view into a contiguous tensor (by tiles where it is a batch of
    /// transposed matrices).
    fn contiguous(t: FloatTensor<Self>) -> FloatTensor<Self> {
        t
    }
}

/// Which axis a softmax runs over.
#[derive(Debug, Clone, Copy)]
enum SoftmaxAxis {
    /// The last ([`UnetBackend::softmax_last`]).
    Last,
    /// The second-to-last ([`UnetBackend::softmax_cols`]).
    Cols,
}

/// The lengths `(len, inner)` of a softmax over `axis` of `shape`: the softmax axis and the
/// axes after it (a missing axis counts as 1).
fn softmax_geometry(shape: &burn::tensor::Shape, axis: SoftmaxAxis) -> (usize, usize) {
    match (axis, shape.to_vec().as_slice()) {
        (SoftmaxAxis::Last, [.., last]) => (*last, 1),
        (SoftmaxAxis::Cols, [.., len, inner]) => (*len, *inner),
        (SoftmaxAxis::Cols, [inner]) => (1, *inner),
        (_, []) => (1, 1),
    }
}

/// `x` viewed as `[groups, len, inner]` for a softmax over `axis` (the shape to restore
/// afterwards).
fn softmax_view<B: Backend>(x: FloatTensor<B>, axis: SoftmaxAxis) -> (Tensor<B, 3>, burn::tensor::Shape) {
    let shape = x.shape();
    let (len, inner) = softmax_geometry(&shape, axis);
    let groups = shape.num_elements() / (len * inner).max(1);
    (float::<B, 3>(B::float_reshape(x, burn::tensor::Shape::new([groups, len, inner]))), shape)
}

/// [`UnetBackend::softmax_last`] / [`UnetBackend::softmax_cols`] with burn's `softmax`.
fn burn_softmax<B: Backend>(x: FloatTensor<B>, axis: SoftmaxAxis) -> FloatTensor<B> {
    let (x, shape) = softmax_view::<B>(x, axis);
    B::float_reshape(burn::tensor::activation::softmax(x, 1).into_primitive().tensor(), shape)
}

/// The softmax's gradient `y * (grad - sum(grad * y))` over `axis`, in burn's tensor operations.
fn burn_softmax_backward<B: Backend>(
    y: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    axis: SoftmaxAxis,
) -> FloatTensor<B> {
    let (y, shape) = softmax_view::<B>(y, axis);
    let (g, _) = softmax_view::<B>(output_grad, axis);
    let dot = g.clone().mul(y.clone()).sum_dim(1);
    B::float_reshape(y.mul(g.sub(dot)).into_primitive().tensor(), shape)
}

/// [`UnetBackend::softmax_cols`] on tensors: softmax over the second-to-last axis.
pub fn softmax_cols<B: UnetBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    float(B::softmax_cols(x.into_primitive().tensor()))
}

/// [`UnetBackend::softmax_last`] on tensors: softmax over the last axis.
pub fn softmax_last<B: UnetBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    float(B::softmax_last(x.into_primitive().tensor()))
}

/// [`UnetBackend::contiguous_grad`] on tensors: `x`, whose gradient leaves contiguous.
pub fn contiguous_grad<B: UnetBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    float(B::contiguous_grad(x.into_primitive().tensor()))
}

/// What [`UnetBackend::rms_norm_act_backward`] returns.
#[derive(Debug)]
pub struct NormActGrads<B: Backend> {
    /// With respect to `x`, `[N, C, H, W]`.
    pub x: FloatTensor<B>,
    /// With respect to `gain`, `[C]`.
    pub gain: FloatTensor<B>,
    /// With respect to `scale` and `shift`, each `[N, C]`, when the call was modulated.
    pub modulation: Option<(FloatTensor<B>, FloatTensor<B>)>,
}

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// A per-channel vector (`[C]`, `[1, C]` or `[1, C, 1, 1]`) as a contiguous `[N, C, 1]`
/// tensor, so that multiplying or adding it to `[N, C, P]` takes burn Flex's "one scalar per
/// row" SIMD path instead of its strided fallback (a `[1, C, 1]` operand broadcast over both
/// `N` and `P` is not one of Flex's accelerated patterns).
pub(crate) fn per_sample_channels<B: Backend, const D: usize>(v: Tensor<B, D>, n: usize) -> Tensor<B, 3> {
    let c = v.shape().num_elements();
    v.reshape([1, c, 1]).repeat_dim(0, n)
}

/// [`UnetBackend::rms_norm_act`] in burn's tensor operations.
///
/// Written so that no step broadcasts along a middle axis (on burn Flex such a broadcast, and
/// its backward, walk the tensor element by element through a strided iterator): the channel
/// sum of squares is a matmul with a row of ones, the norm is materialised at full size with
/// `repeat_dim` (a chunked memcpy), and the gain is repeated over the batch so that it
/// broadcasts only along the trailing pixel axis.
fn burn_rms_norm_act<B: Backend>(
    x: FloatTensor<B>,
    gain: FloatTensor<B>,
    modulation: Option<(FloatTensor<B>, FloatTensor<B>)>,
    silu: bool,
) -> FloatTensor<B> {
    let x = float::<B, 4>(x);
    let [n, c, h, w] = x.dims();
    let x = x.reshape([n, c, h * w]);
    let ones = Tensor::<B, 3>::ones([1, 1, c], &x.device());
    let sq = x.clone().powi_scalar(2);
    let norm = ones.matmul(sq).sqrt().clamp_min(unet_kernels::norm_act::EPS as f64).repeat_dim(1, c);
    let y = x.div(norm).mul(per_sample_channels(float::<B, 1>(gain), n)).reshape([n, c, h, w]);
    let y = match modulation {
        Some((scale, shift)) => {
            let (scale, shift) = (float::<B, 2>(scale), float::<B, 2>(shift));
            y.mul(scale.reshape([n, c, 1, 1]).add_scalar(1.0)).add(shift.reshape([n, c, 1, 1]))
        }
        None => y,
    };
    let y = if silu { burn::tensor::activation::silu(y) } else { y };
    y.into_primitive().tensor()
}

/// [`UnetBackend::rms_norm_act_backward`] in burn's tensor operations (the closed form of
/// `norm_act::backward`).
fn burn_rms_norm_act_backward<B: Backend>(
    x: FloatTensor<B>,
    gain: FloatTensor<B>,
    modulation: Option<(FloatTensor<B>, FloatTensor<B>)>,
    silu: bool,
    output_grad: FloatTensor<B>,
) -> NormActGrads<B> {
    let x = float::<B, 4>(x);
    let [n, c, h, w] = x.dims();
    let x = x.reshape([n, c, h * w]);
    let grad = float::<B, 4>(output_grad).reshape([n, c, h * w]);
    let ones = Tensor::<B, 3>::ones([1, 1, c], &x.device());
    let d = ones.matmul(x.clone().powi_scalar(2)).sqrt().clamp_min(unet_kernels::norm_act::EPS as f64);
    let above_eps = d.clone().greater_elem(unet_kernels::norm_act::EPS as f64).float();
    let u = x.div(d.clone());
    let gain = float::<B, 1>(gain).reshape([1, c, 1]);
    let (m, b) = match &modulation {
        Some((scale, shift)) => (
            float::<B, 2>(scale.clone()).reshape([n, c, 1]).add_scalar(1.0),
            float::<B, 2>(shift.clone()).reshape([n, c, 1]),
        ),
        None => (Tensor::ones([n, c, 1], &u.device()), Tensor::zeros([n, c, 1], &u.device())),
    };
    let gz = if silu {
        let z = u.clone().mul(gain.clone()).mul(m.clone()).add(b);
        let s = burn::tensor::activation::sigmoid(z.clone());
        grad.mul(s.clone().mul(z.mul(s.neg().add_scalar(1.0)).add_scalar(1.0)))
    } else {
        grad
    };
    let d_gain = gz.clone().mul(u.clone()).mul(m.clone()).sum_dim(2).sum_dim(0).reshape([c]);
    let d_mod = modulation.is_some().then(|| {
        let d_scale = gz.clone().mul(u.clone()).mul(gain.clone()).sum_dim(2).reshape([n, c]);
        let d_shift = gz.clone().sum_dim(2).reshape([n, c]);
        (d_scale.into_primitive().tensor(), d_shift.into_primitive().tensor())
    });
    let gu = gz.mul(gain).mul(m);
    let dot = gu.clone().mul(u.clone()).sum_dim(1).mul(above_eps);
    let dx = gu.sub(u.mul(dot)).div(d).reshape([n, c, h, w]);
    NormActGrads { x: dx.into_primitive().tensor(), gain: d_gain.into_primitive().tensor(), modulation: d_mod }
}

/// [`UnetBackend::rms_norm_act`] on tensors: `x` `[N, C, H, W]`, `gain` `[C]`, `modulation`
/// `(scale, shift)` each `[N, C]`.
pub fn rms_norm_act<B: UnetBackend>(
    x: Tensor<B, 4>,
    gain: Tensor<B, 1>,
    modulation: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    silu: bool,
) -> Tensor<B, 4> {
    float(B::rms_norm_act(
        x.into_primitive().tensor(),
        gain.into_primitive().tensor(),
        modulation.map(|(s, b)| (s.into_primitive().tensor(), b.into_primitive().tensor())),
        silu,
    ))
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

/// The fused kernel's geometry when `x` `[N, C, H, W]`, `gain` `[C]` and `modulation` (each
/// `[N, C]`) are f32 tensors of those sizes; `None` sends the call to burn's operations.
fn flex_norm_geometry(
    x: &burn_flex::FlexTensor,
    gain: &burn_flex::FlexTensor,
    modulation: Option<&(burn_flex::FlexTensor, burn_flex::FlexTensor)>,
) -> Option<(unet_kernels::norm_act::Geometry, [usize; 4])> {
    let xs = x.shape().to_vec();
    let [n, c, h, w] = <[usize; 4]>::try_from(xs).ok()?;
    let f32_of = |t: &burn_flex::FlexTensor, len: usize| t.dtype() == DType::F32 && t.shape().num_elements() == len;
    let fits = x.dtype() == DType::F32
        && f32_of(gain, c)
        && modulation.is_none_or(|(scale, shift)| f32_of(scale, n * c) && f32_of(shift, n * c));
    fits.then_some((unet_kernels::norm_act::Geometry { n, c, p: h * w }, [n, c, h, w]))
}

/// Contiguous copies of a call's operands and the kernel's parameters over them.
struct FlexNormOperands {
    x: burn_flex::FlexTensor,
    gain: burn_flex::FlexTensor,
    modulation: Option<(burn_flex::FlexTensor, burn_flex::FlexTensor)>,
}

impl FlexNormOperands {
    fn new(
        x: burn_flex::FlexTensor,
        gain: burn_flex::FlexTensor,
        modulation: Option<(burn_flex::FlexTensor, burn_flex::FlexTensor)>,
    ) -> Self {
        Self {
            x: contiguous(x),
            gain: contiguous(gain),
            modulation: modulation.map(|(s, b)| (contiguous(s), contiguous(b))),
        }
    }

    fn params(&self, silu: bool) -> unet_kernels::norm_act::Params<'_> {
        unet_kernels::norm_act::Params {
            gain: f32s(&self.gain),
            modulation: self.modulation.as_ref().map(|(s, b)| (f32s(s), f32s(b))),
            silu,
        }
    }
}

impl UnetBackend for burn::backend::Flex {
    fn rms_norm_act(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        modulation: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        silu: bool,
    ) -> FloatTensor<Self> {
        let Some((g, shape)) = flex_norm_geometry(&x, &gain, modulation.as_ref()) else {
            return burn_rms_norm_act::<Self>(x, gain, modulation, silu);
        };
        let ops = FlexNormOperands::new(x, gain, modulation);
        flex_tensor(unet_kernels::norm_act::forward(&g, f32s(&ops.x), &ops.params(silu)), shape)
    }

    fn rms_norm_act_backward(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        modulation: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        silu: bool,
        output_grad: FloatTensor<Self>,
    ) -> NormActGrads<Self> {
        let geometry = flex_norm_geometry(&x, &gain, modulation.as_ref())
            .filter(|(_, shape)| output_grad.dtype() == DType::F32 && output_grad.shape().to_vec() == shape);
        let Some((g, shape)) = geometry else {
            return burn_rms_norm_act_backward::<Self>(x, gain, modulation, silu, output_grad);
        };
        let ops = FlexNormOperands::new(x, gain, modulation);
        let output_grad = contiguous(output_grad);
        let grads = unet_kernels::norm_act::backward(&g, f32s(&ops.x), &ops.params(silu), f32s(&output_grad));
        NormActGrads {
            x: flex_tensor(grads.x, shape),
            gain: flex_tensor(grads.gain, [g.c]),
            modulation: grads.modulation.map(|(s, b)| (flex_tensor(s, [g.n, g.c]), flex_tensor(b, [g.n, g.c]))),
        }
    }

    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        flex_softmax(x, SoftmaxAxis::Last)
    }

    fn softmax_last_backward(y: FloatTensor<Self>, output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        flex_softmax_backward(y, output_grad, SoftmaxAxis::Last)
    }

    fn softmax_cols(x: FloatTensor<Self>) -> FloatTensor<Self> {
        flex_softmax(x, SoftmaxAxis::Cols)
    }

    fn softmax_cols_backward(y: FloatTensor<Self>, output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        flex_softmax_backward(y, output_grad, SoftmaxAxis::Cols)
    }

    fn contiguous(t: FloatTensor<Self>) -> FloatTensor<Self> {
        contiguous(t)
    }
}

/// A softmax over `axis` on Flex: the `softmax.rs` kernel for non-empty f32 tensors, burn's
/// operations otherwise.
fn flex_softmax(x: burn_flex::FlexTensor, axis: SoftmaxAxis) -> burn_flex::FlexTensor {
    let shape = x.shape();
    if x.dtype() != DType::F32 || shape.num_elements() == 0 {
        return burn_softmax::<burn::backend::Flex>(x, axis);
    }
    let (len, inner) = softmax_geometry(&shape, axis);
    let x = contiguous(x);
    flex_tensor(unet_kernels::softmax::forward(f32s(&x), len, inner), shape)
}

/// The gradient of [`flex_softmax`] given its output `y` and the output's gradient.
fn flex_softmax_backward(
    y: burn_flex::FlexTensor,
    output_grad: burn_flex::FlexTensor,
    axis: SoftmaxAxis,
) -> burn_flex::FlexTensor {
    let shape = y.shape();
    let fits = y.dtype() == DType::F32 && output_grad.dtype() == DType::F32 && output_grad.shape() == shape;
    if !fits || shape.num_elements() == 0 {
        return burn_softmax_backward::<burn::backend::Flex>(y, output_grad, axis);
    }
    let (len, inner) = softmax_geometry(&shape, axis);
    let (y, output_grad) = (contiguous(y), contiguous(output_grad));
    flex_tensor(unet_kernels::softmax::backward(f32s(&y), f32s(&output_grad), len, inner), shape)
}

/// `t` itself when its f32 data is one contiguous run, else a contiguous copy.
impl UnetBackend for burn::backend::NdArray {}

/// Under autodiff the norm and the softmaxes are each one tracked operation whose backward runs
/// the inner backend's gradient operation (on Flex: our kernels).
impl<B: UnetBackend, C: CheckpointStrategy> UnetBackend for Autodiff<B, C> {
    /// One tracked operation whose backward is the inner backend's
    /// [`UnetBackend::rms_norm_act_backward`]; its parents are `x`, `gain` and, when modulated,
    /// `scale` and `shift`.
    fn rms_norm_act(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        modulation: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        silu: bool,
    ) -> FloatTensor<Self> {
        /// The inner operands a backward needs: `x`, `gain`, `(scale, shift)`, `silu`.
        type State<B> = (FloatTensor<B>, FloatTensor<B>, Option<(FloatTensor<B>, FloatTensor<B>)>, bool);

        #[derive(Debug)]
        struct NormActBackward;

        impl<B: UnetBackend, const N: usize> Backward<B, N> for NormActBackward {
            type State = State<B>;

            fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let (x, gain, modulation, silu) = ops.state;
                let g = B::rms_norm_act_backward(x, gain, modulation, silu, grad);
                let mut parts = vec![g.x, g.gain];
                if let Some((scale, shift)) = g.modulation {
                    parts.extend([scale, shift]);
                }
                for (parent, part) in ops.parents.into_iter().zip(parts) {
                    if let Some(node) = parent {
                        grads.register::<B>(node.id, part);
                    }
                }
            }
        }

        /// Records the node (tracked) or just wraps the output, for either number of parents.
        fn finish<B: UnetBackend, C: CheckpointStrategy, const N: usize>(
            kind: OpsKind<NormActBackward, B, State<B>, C, N>,
            state: State<B>,
            output: FloatTensor<B>,
        ) -> FloatTensor<Autodiff<B, C>> {
            match kind {
                OpsKind::Tracked(prep) => prep.finish(state, output),
                OpsKind::UnTracked(prep) => prep.finish(output),
            }
        }

        let inner_modulation = modulation.as_ref().map(|(s, b)| (s.primitive.clone(), b.primitive.clone()));
        let output = B::rms_norm_act(x.primitive.clone(), gain.primitive.clone(), inner_modulation.clone(), silu);
        let state = (x.primitive, gain.primitive, inner_modulation, silu);
        match modulation {
            Some((scale, shift)) => {
                let kind = NormActBackward
                    .prepare::<C>([x.node, gain.node, scale.node, shift.node])
                    .compute_bound()
                    .stateful();
                finish(kind, state, output)
            }
            None => finish(NormActBackward.prepare::<C>([x.node, gain.node]).compute_bound().stateful(), state, output),
        }
    }

    /// One tracked operation whose backward is the inner backend's
    /// [`UnetBackend::softmax_last_backward`] on the saved output.
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        tracked_softmax::<B, C>(x, SoftmaxAxis::Last)
    }

    /// One tracked operation whose backward is the inner backend's
    /// [`UnetBackend::softmax_cols_backward`] on the saved output.
    fn softmax_cols(x: FloatTensor<Self>) -> FloatTensor<Self> {
        tracked_softmax::<B, C>(x, SoftmaxAxis::Cols)
    }

    /// One tracked identity whose backward registers the inner backend's
    /// [`UnetBackend::contiguous`] of the gradient.
    fn contiguous_grad(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct ContiguousGrad;

        impl<B: UnetBackend> Backward<B, 1> for ContiguousGrad {
            type State = ();

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                if let [Some(node)] = ops.parents {
                    grads.register::<B>(node.id, B::contiguous(grad));
                }
            }
        }

        let output = x.primitive.clone();
        ContiguousGrad.prepare::<C>([x.node]).compute_bound().stateless(output)
    }
}

/// A softmax of the inner backend as one tracked node that saves its output for the backward.
fn tracked_softmax<B: UnetBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    axis: SoftmaxAxis,
) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct SoftmaxBackward(SoftmaxAxis);

    impl<B: UnetBackend> Backward<B, 1> for SoftmaxBackward {
        type State = FloatTensor<B>;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<B>(&ops.node);
            if let [Some(node)] = ops.parents {
                let dx = match self.0 {
                    SoftmaxAxis::Last => B::softmax_last_backward(ops.state, grad),
                    SoftmaxAxis::Cols => B::softmax_cols_backward(ops.state, grad),
                };
                grads.register::<B>(node.id, dx);
            }
        }
    }

    let y = match axis {
        SoftmaxAxis::Last => B::softmax_last(x.primitive.clone()),
        SoftmaxAxis::Cols => B::softmax_cols(x.primitive.clone()),
    };
    match SoftmaxBackward(axis).prepare::<C>([x.node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

#[cfg(feature = "cuda")]
impl UnetBackend for burn::backend::Cuda<f32> {}
#[cfg(feature = "cuda")]
impl UnetBackend for burn::backend::Cuda<burn::tensor::f16> {}
#[cfg(feature = "cuda")]
impl UnetBackend for burn::backend::Cuda<burn::tensor::bf16> {}

#[cfg(feature = "tch")]
impl UnetBackend for burn::backend::LibTorch<f32> {}
#[cfg(feature = "tch")]
impl UnetBackend for burn::backend::LibTorch<burn::tensor::f16> {}
#[cfg(feature = "tch")]
impl UnetBackend for burn::backend::LibTorch<burn::tensor::bf16> {}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tolerance;
    use kernel_ops::test_util::randn;

    type F = burn::backend::Flex;

    /// burn's composition of [`UnetBackend::rms_norm_act`] on tensors (the reference both the
    /// fused Flex kernel and the tracked operation are checked against).
    fn composed<B: Backend>(
        x: Tensor<B, 4>,
        gain: Tensor<B, 1>,
        modulation: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
        silu: bool,
    ) -> Tensor<B, 4> {
        float(burn_rms_norm_act::<B>(
            x.into_primitive().tensor(),
            gain.into_primitive().tensor(),
            modulation.map(|(s, b)| (s.into_primitive().tensor(), b.into_primitive().tensor())),
            silu,
        ))
    }

    /// Shapes and operand sets the network uses: with and without modulation and SiLU, pixel
    /// counts below, at and above the kernel's chunk, one channel, an all-zero image (the norm's
    /// clamp).
    /// `(x, gain, modulation (scale, shift), silu)`.
    type NormCase<B> = (Tensor<B, 4>, Tensor<B, 1>, Option<(Tensor<B, 2>, Tensor<B, 2>)>, bool);

    fn norm_cases<B: Backend>(dev: &B::Device) -> Vec<NormCase<B>> {
        let mut cases = Vec::new();
        for &(n, c, h, w) in &[(2usize, 5usize, 3usize, 4usize), (3, 8, 32, 40), (1, 1, 5, 5), (2, 16, 33, 31)] {
            for (modulated, silu) in [(true, true), (false, true), (false, false), (true, false)] {
                let seed = 4 * cases.len() as u64;
                let x = randn::<B, 4>([n, c, h, w], 0.0, 2.0, seed, dev);
                let gain = randn::<B, 1>([c], 1.0, 0.5, seed + 1, dev);
                let modulation = modulated.then(|| {
                    (randn::<B, 2>([n, c], 0.0, 0.5, seed + 2, dev), randn::<B, 2>([n, c], 0.0, 0.5, seed + 3, dev))
                });
                cases.push((x, gain, modulation, silu));
            }
        }
        // Last: a batch whose second image is all zero (the norm's clamp).
        let x = randn::<B, 4>([2, 4, 3, 3], 0.0, 1.0, 1000, dev);
        let x = x.slice_assign([1..2, 0..4, 0..3, 0..3], Tensor::zeros([1, 4, 3, 3], dev));
        cases.push((x, Tensor::ones([4], dev), None, true));
        cases
    }

    /// The fused Flex kernel against burn's composition, including large and negative SiLU
    /// inputs (the polynomial `exp` clamps its argument).
    #[test]
    fn flex_rms_norm_act_matches_the_composition() {
        let dev = Default::default();
        for (x, gain, modulation, silu) in norm_cases::<F>(&dev) {
            let expected = composed(x.clone(), gain.clone(), modulation.clone(), silu);
            let got = rms_norm_act(x.clone(), gain.clone(), modulation.clone(), silu);
            assert_eq!(got.dims(), x.dims());
            got.into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(2e-5).set_relative(1e-5));
        }
        let big = Tensor::<F, 1>::from_floats([-200.0f32, -90.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 90.0, 200.0], &dev);
        let x = big.reshape([1, 1, 3, 3]);
        let got = rms_norm_act(
            x.clone().sign(),
            Tensor::ones([1], &dev),
            Some((x.clone().reshape([1, 9]).narrow(1, 0, 1), x.clone().reshape([1, 9]).narrow(1, 4, 1))),
            true,
        );
        assert!(got.into_data().to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));
    }

    /// `norm_act::exp` against the standard library over the range SiLU feeds it.
    #[test]
    fn polynomial_exp_is_within_two_ulp() {
        let mut worst = 0f64;
        let mut v = -87.0f32;
        while v < 88.0 {
            let (got, want) = (unet_kernels::norm_act::exp(v) as f64, (v as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            v += 0.0137;
        }
        assert!(worst < 2.0 * f32::EPSILON as f64, "worst relative error {worst}");
    }

    /// The tracked operation's gradients (all four operands) against burn's autodiff of the
    /// composition: on NdArray through the default closed form in tensor operations, on Flex
    /// through the fused kernel.
    fn norm_gradients_match_autodiff<B: UnetBackend>() {
        type A<B> = Autodiff<B>;
        let dev = Default::default();
        let cases = norm_cases::<B>(&dev);
        let last = cases.len() - 1;
        for (case, (x, gain, modulation, silu)) in cases.into_iter().enumerate() {
            let track = |t: Tensor<B, 4>| Tensor::<A<B>, 4>::from_inner(t).require_grad();
            let x = track(x);
            let gain = Tensor::<A<B>, 1>::from_inner(gain).require_grad();
            let modulation = modulation.map(|(s, b)| {
                (Tensor::<A<B>, 2>::from_inner(s).require_grad(), Tensor::<A<B>, 2>::from_inner(b).require_grad())
            });
            // A non-uniform output gradient.
            let weights = randn::<A<B>, 4>(x.dims(), 0.0, 1.0, 2000 + case as u64, &dev);
            let y = rms_norm_act(x.clone(), gain.clone(), modulation.clone(), silu);
            let g = y.clone().mul(weights.clone()).sum().backward();
            let y2 = composed(x.clone(), gain.clone(), modulation.clone(), silu);
            let g2 = y2.clone().mul(weights).sum().backward();
            let tol = Tolerance::absolute(1e-4).set_relative(1e-4);
            if case == last {
                // The all-zero image: burn's `sqrt` backward at 0 gives NaN; the norm is the
                // constant eps there, so the gradient is PyTorch's `grad / eps` (finite).
                let gx = x.grad(&g).unwrap();
                assert!(gx.clone().into_data().to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));
                gx.narrow(0, 0, 1)
                    .into_data()
                    .assert_approx_eq::<f32>(&x.grad(&g2).unwrap().narrow(0, 0, 1).into_data(), tol);
                continue;
            }
            y.into_data().assert_approx_eq::<f32>(&y2.into_data(), tol);
            x.grad(&g).unwrap().into_data().assert_approx_eq::<f32>(&x.grad(&g2).unwrap().into_data(), tol);
            gain.grad(&g).unwrap().into_data().assert_approx_eq::<f32>(&gain.grad(&g2).unwrap().into_data(), tol);
            if let Some((s, b)) = modulation {
                s.grad(&g).unwrap().into_data().assert_approx_eq::<f32>(&s.grad(&g2).unwrap().into_data(), tol);
                b.grad(&g).unwrap().into_data().assert_approx_eq::<f32>(&b.grad(&g2).unwrap().into_data(), tol);
            }
        }
    }

    #[test]
    fn rms_norm_act_gradients_match_autodiff_on_flex() {
        norm_gradients_match_autodiff::<F>();
    }

    #[test]
    fn rms_norm_act_gradients_match_autodiff_on_ndarray() {
        norm_gradients_match_autodiff::<burn::backend::NdArray>();
    }

    /// The backend's softmax over `axis` on tensors.
    fn softmax_on<B: UnetBackend, const D: usize>(x: Tensor<B, D>, axis: SoftmaxAxis) -> Tensor<B, D> {
        match axis {
            SoftmaxAxis::Last => softmax_last(x),
            SoftmaxAxis::Cols => softmax_cols(x),
        }
    }

    /// The softmax over `axis` against burn's `softmax` (values) and against the gradient
    /// `y * (w - sum(w * y))` computed in f64 from the inputs (through the tracked operation;
    /// burn's own autodiff of its softmax is off by up to ~2e-4 relative on large logits, ours
    /// within 1e-5). Last axis: rows shorter and longer than a SIMD register, one-element rows.
    /// Second-to-last: columns of one to 40 values, rows shorter and longer than a SIMD register
    /// and than a task's 256 columns. Both: large logits (the max shift), a strided input.
    fn softmax_matches<B: UnetBackend>(axis: SoftmaxAxis) {
        type A<B> = Autodiff<B>;
        let dev = Default::default();
        let tol = Tolerance::absolute(1e-6).set_relative(1e-5);
        let (shapes, dim): (&[[usize; 4]], usize) = match axis {
            SoftmaxAxis::Last => (&[[2, 3, 5, 7], [1, 2, 4, 33], [3, 1, 2, 1], [2, 2, 3, 1030]], 3),
            SoftmaxAxis::Cols => (&[[2, 3, 5, 7], [1, 2, 32, 300], [3, 1, 1, 5], [2, 2, 40, 17], [1, 1, 3, 1]], 2),
        };
        for &dims in shapes {
            for std in [1.0, 30.0] {
                let x = randn::<A<B>, 4>(dims, 0.0, std, 7, &dev).require_grad();
                let weights = randn::<A<B>, 4>(dims, 0.0, 1.0, 8, &dev);
                let y = softmax_on(x.clone(), axis);
                let g = y.clone().mul(weights.clone()).sum().backward();
                let y2 = burn::tensor::activation::softmax(x.clone(), dim);
                y.into_data().assert_approx_eq::<f32>(&y2.into_data(), tol);
                let (len, inner) = softmax_geometry(&burn::tensor::Shape::new(dims), axis);
                let xs: Vec<f64> = x.to_data().iter::<f32>().map(f64::from).collect();
                let ws: Vec<f64> = weights.into_data().iter::<f32>().map(f64::from).collect();
                let mut want = vec![0f64; xs.len()];
                for base in (0..xs.len()).step_by(len * inner) {
                    for j in 0..inner {
                        let at = |r: usize| base + r * inner + j;
                        let max = (0..len).map(|r| xs[at(r)]).fold(f64::NEG_INFINITY, f64::max);
                        let sum: f64 = (0..len).map(|r| (xs[at(r)] - max).exp()).sum();
                        let ys: Vec<f64> = (0..len).map(|r| (xs[at(r)] - max).exp() / sum).collect();
                        let dot: f64 = (0..len).map(|r| ws[at(r)] * ys[r]).sum();
                        for r in 0..len {
                            want[at(r)] = ys[r] * (ws[at(r)] - dot);
                        }
                    }
                }
                let got: Vec<f32> = x.grad(&g).unwrap().into_data().iter::<f32>().collect();
                for (i, (a, e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*a as f64 - e).abs() <= 1e-5 + 1e-5 * e.abs(),
                        "{axis:?} {dims:?} std {std}: gradient at {i}: {a} vs {e}"
                    );
                }
            }
        }
        let x = randn::<B, 3>([3, 4, 5], 0.0, 1.0, 9, &dev).swap_dims(1, 2);
        softmax_on(x.clone(), axis)
            .into_data()
            .assert_approx_eq::<f32>(&burn::tensor::activation::softmax(x, dim - 1).into_data(), tol);
    }

    #[test]
    fn softmax_matches_burn_on_flex() {
        softmax_matches::<F>(SoftmaxAxis::Last);
    }

    #[test]
    fn softmax_matches_burn_on_ndarray() {
        softmax_matches::<burn::backend::NdArray>(SoftmaxAxis::Last);
    }

    #[test]
    fn softmax_cols_matches_burn_on_flex() {
        softmax_matches::<F>(SoftmaxAxis::Cols);
    }

    #[test]
    fn softmax_cols_matches_burn_on_ndarray() {
        softmax_matches::<burn::backend::NdArray>(SoftmaxAxis::Cols);
    }

    /// `contiguous_grad` changes no value, forward or backward, and on Flex hands on a
    /// contiguous gradient where a concatenation's backward leaves a strided slice.
    #[test]
    fn contiguous_grad_keeps_values_and_lays_out_the_gradient() {
        type A = Autodiff<F>;
        let dev = Default::default();
        let x0 = randn::<F, 4>([2, 3, 4, 5], 0.0, 1.0, 1, &dev);
        let z = randn::<A, 4>([2, 2, 4, 5], 0.0, 1.0, 2, &dev);
        let weights = randn::<A, 4>([2, 5, 4, 5], 0.0, 1.0, 3, &dev);
        let grad_of = |barrier: bool| {
            let x = Tensor::<A, 4>::from_inner(x0.clone()).require_grad();
            let input = if barrier { contiguous_grad(x.clone()) } else { x.clone() };
            let y = Tensor::cat(vec![input, z.clone()], 1);
            let g = y.clone().mul(weights.clone()).sum().backward();
            (y.into_data(), x.grad(&g).unwrap())
        };
        let (y_plain, g_plain) = grad_of(false);
        let (y_barrier, g_barrier) = grad_of(true);
        y_barrier.assert_eq(&y_plain, true);
        g_barrier.clone().into_data().assert_eq(&g_plain.clone().into_data(), true);
        let is_contiguous = |t: Tensor<F, 4>| t.into_primitive().tensor().as_slice::<f32>().is_some();
        assert!(!is_contiguous(g_plain), "the concatenation's backward no longer slices: the test checks nothing");
        assert!(is_contiguous(g_barrier));
    }
}
