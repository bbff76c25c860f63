//! # kernel-ops
//!
//! The operations our networks want faster than burn's generic ones, as a burn backend
//! extension, so that a backend can bring its own kernels:
//!
//! - the `k x k` "same" convolution (stride 1, padding `k / 2`, no dilation, one group) and its
//!   two gradients ([`KernelBackend::conv2d_same`]): every 3x3 convolution of the U-Net (and its
//!   1x1 ones where [`KernelBackend::pointwise_conv_as_same`] says so: on Flex) and the stride-1
//!   ones of the lensing classifier's ResNet;
//! - batch normalisation with batch statistics, optionally followed by ReLU, and its gradient
//!   ([`KernelBackend::batch_norm_train`]), and with given statistics
//!   ([`KernelBackend::batch_norm_eval`]): the ResNet's normalisations.
//!
//! Every backend gets burn's own operations by default. burn Flex (f32) runs the kernels of
//! `unet-kernels` (`same_conv`, `batch_norm`). Under `Autodiff<B>` the convolution without bias
//! and the training normalisation are each one tracked node whose backward runs the inner
//! backend's gradient operations, so `Autodiff<Flex>` trains on our kernels too.
//!
//! burn has no run-time registry of operations: a model that wants an operation of its own
//! names a trait that extends `Backend`, and every backend it runs on implements that trait.
//! This crate sits between `unet-kernels` (plain slices, no burn) and the two models that use
//! it (`unet`, whose `UnetBackend` extends [`KernelBackend`], and `gen-metrics`' ResNet), so
//! neither model crate depends on the other.
//!
//! ## Feature flags
//! - `cuda`: [`KernelBackend`] for burn's CUDA backend (f32, f16, bf16), burn's operations.
//! - `tch`: the same for burn's LibTorch backend.
#![warn(missing_docs)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};

pub mod flex;

/// The arithmetic of the convolution on Flex: f32, or bf16 operands with f32 sums on CPUs with
/// AVX512-BF16 ([`set_conv_precision`]; the forward and both gradients of
/// [`KernelBackend::conv2d_same`] where `unet-kernels`' bf16 kernels run). Other backends
/// ignore it.
pub use unet_kernels::same_conv::{
    bf16_available, bf16_dot_speedup, precision as conv_precision, set_precision as set_conv_precision,
    Bf16Unavailable, Precision as ConvPrecision,
};

/// While alive, the convolutions called on this thread run in f32 whatever
/// [`set_conv_precision`] chose (other threads keep the setting): for results that must not
/// depend on it, such as gen-metrics' features and classifier, so that a metric measured under
/// `--precision bf16` stays comparable. Scopes nest; the guard must drop on its own thread.
pub use unet_kernels::same_conv::F32Scope as F32Convolutions;

/// The output of [`KernelBackend::batch_norm_train`]: the normalised tensor and the batch
/// statistics it used (for the running averages), each `[C]`.
#[derive(Debug)]
pub struct BatchNormOutput<B: Backend> {
    /// `[N, C, H, W]`.
    pub output: FloatTensor<B>,
    /// Per-channel batch mean.
    pub mean: FloatTensor<B>,
    /// Per-channel biased batch variance (what the normalisation divides by).
    pub var: FloatTensor<B>,
}

/// Gradients of [`KernelBackend::batch_norm_train`].
#[derive(Debug)]
pub struct BatchNormGrads<B: Backend> {
    /// With respect to `x`, `[N, C, H, W]`.
    pub x: FloatTensor<B>,
    /// With respect to `gamma`, `[C]`.
    pub gamma: FloatTensor<B>,
    /// With respect to `beta`, `[C]`.
    pub beta: FloatTensor<B>,
}

/// A burn backend with the operations of this crate.
pub trait KernelBackend: Backend {
    /// Whether the networks should run their 1x1 convolutions through
    /// [`KernelBackend::conv2d_same`] too, rather than as a batched matmul on the weights (the
    /// default: burn's generic `conv2d` backward transposes and copies the input, its matmul
    /// backward does not). True where `conv2d_same` is a kernel of ours, which then runs every
    /// same convolution of the network, in the process's precision (bf16 included).
    fn pointwise_conv_as_same() -> bool {
        false
    }

    /// `k x k` convolution of `x` `[N, C_in, H, W]` with `weight` `[C_out, C_in, k, k]` (odd
    /// `k`), stride 1, zero padding `k / 2`, plus `bias` `[C_out]`: output `[N, C_out, H, W]`.
    fn conv2d_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        burn_conv2d_same::<Self>(x, weight, bias)
    }

    /// The gradient of [`KernelBackend::conv2d_same`] with respect to `x`, given the gradient of
    /// its output.
    fn conv2d_same_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        burn_conv2d_same_x_backward::<Self>(x, weight, output_grad)
    }

    /// The gradient of [`KernelBackend::conv2d_same`] with respect to `weight`, given the
    /// gradient of its output.
    fn conv2d_same_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        burn_conv2d_same_weight_backward::<Self>(x, weight, output_grad)
    }

    /// Batch normalisation of `x` `[N, C, H, W]` with its own per-channel statistics over
    /// `N, H, W` (training mode): `gamma * (x - mean) / sqrt(var + eps) + beta` with the biased
    /// variance, then ReLU when `relu`. By default burn's tensor operations; Flex (f32) runs the
    /// two-pass kernel of `unet_kernels::batch_norm`.
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> BatchNormOutput<Self> {
        burn_batch_norm_train::<Self>(x, gamma, beta, eps, relu)
    }

    /// The gradients of [`KernelBackend::batch_norm_train`] given its operands, the statistics
    /// it returned and the output's gradient (closed form; see `unet_kernels::batch_norm`).
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        eps: f64,
        relu: bool,
        output_grad: FloatTensor<Self>,
    ) -> BatchNormGrads<Self> {
        burn_batch_norm_backward::<Self>(x, gamma, beta, mean, var, eps, relu, output_grad)
    }

    /// Batch normalisation with given statistics (evaluation mode: the running averages), then
    /// ReLU when `relu`. By default burn's tensor operations (tracked under autodiff); Flex
    /// (f32) runs one pass.
    fn batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> FloatTensor<Self> {
        burn_batch_norm_eval::<Self>(x, gamma, beta, mean, var, eps, relu)
    }
}

/// An autodiff backend whose inner backend is a [`KernelBackend`] too (what training needs: the
/// network runs on `B` with gradients and its evaluation copy on `B::InnerBackend`).
pub trait KernelAutodiffBackend: KernelBackend + AutodiffBackend<InnerBackend: KernelBackend> {}

impl<B> KernelAutodiffBackend for B
where
    B: KernelBackend + AutodiffBackend,
    B::InnerBackend: KernelBackend,
{
}

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// Stride 1, padding `k / 2`, no dilation, one group, for `weight` `[C_out, C_in, k, k]`.
fn same_options<T: TensorMetadata>(weight: &T) -> ConvOptions<2> {
    let p = weight.shape().dims::<4>()[2] / 2;
    ConvOptions::new([1, 1], [p, p], [1, 1], 1)
}

/// burn's own `conv2d` with the options of [`KernelBackend::conv2d_same`].
pub fn burn_conv2d_same<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let options = same_options(&weight);
    B::conv2d(x, weight, bias, options)
}

fn burn_conv2d_same_x_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let options = same_options(&weight);
    B::conv2d_x_backward(x, weight, output_grad, options)
}

fn burn_conv2d_same_weight_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let options = same_options(&weight);
    B::conv2d_weight_backward(x, weight, output_grad, options)
}

/// `[C]` as `[1, C, 1, 1]`.
fn per_channel<B: Backend>(v: FloatTensor<B>) -> Tensor<B, 4> {
    let c = v.shape().num_elements();
    float::<B, 1>(v).reshape([1, c, 1, 1])
}

fn burn_batch_norm_eval<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    mean: FloatTensor<B>,
    var: FloatTensor<B>,
    eps: f64,
    act: bool,
) -> FloatTensor<B> {
    let x = float::<B, 4>(x);
    let y = (x - per_channel::<B>(mean)) / per_channel::<B>(var).add_scalar(eps).sqrt() * per_channel::<B>(gamma)
        + per_channel::<B>(beta);
    prim(if act { relu(y) } else { y })
}

fn burn_batch_norm_train<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    eps: f64,
    relu: bool,
) -> BatchNormOutput<B> {
    let x = float::<B, 4>(x);
    let [n, c, h, w] = x.dims();
    let flat = x.clone().swap_dims(0, 1).reshape([c, n * h * w]);
    let mean = flat.clone().mean_dim(1);
    let var = (flat - mean.clone()).square().mean_dim(1).reshape([c]);
    let mean = mean.reshape([c]);
    let output = burn_batch_norm_eval::<B>(prim(x), gamma, beta, prim(mean.clone()), prim(var.clone()), eps, relu);
    BatchNormOutput { output, mean: prim(mean), var: prim(var) }
}

#[allow(clippy::too_many_arguments)]
fn burn_batch_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    mean: FloatTensor<B>,
    var: FloatTensor<B>,
    eps: f64,
    relu: bool,
    output_grad: FloatTensor<B>,
) -> BatchNormGrads<B> {
    let x = float::<B, 4>(x);
    let [n, c, h, w] = x.dims();
    let m = (n * h * w) as f64;
    let inv = per_channel::<B>(var).add_scalar(eps).sqrt().recip();
    let gamma = per_channel::<B>(gamma);
    let xhat = (x - per_channel::<B>(mean)) * inv.clone();
    let mut g = float::<B, 4>(output_grad);
    if relu {
        let y = xhat.clone() * gamma.clone() + per_channel::<B>(beta);
        g = g.mask_fill(y.lower_equal_elem(0.0), 0.0);
    }
    let sum = |t: Tensor<B, 4>| t.sum_dim(0).sum_dim(2).sum_dim(3);
    let dbeta = sum(g.clone());
    let dgamma = sum(g.clone() * xhat.clone());
    let dx = gamma * inv * (g - dbeta.clone().div_scalar(m) - xhat * dgamma.clone().div_scalar(m));
    BatchNormGrads { x: prim(dx), gamma: prim(dgamma.reshape([c])), beta: prim(dbeta.reshape([c])) }
}

/// [`KernelBackend::conv2d_same`] on tensors.
pub fn conv2d_same<B: KernelBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 4> {
    float(B::conv2d_same(prim(x), prim(weight), bias.map(prim)))
}

/// [`KernelBackend::batch_norm_train`] on tensors: `(output, mean, var)`.
pub fn batch_norm_train<B: KernelBackend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
    relu: bool,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
    let out = B::batch_norm_train(prim(x), prim(gamma), prim(beta), eps, relu);
    (float(out.output), float(out.mean), float(out.var))
}

/// [`KernelBackend::batch_norm_eval`] on tensors.
pub fn batch_norm_eval<B: KernelBackend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    mean: Tensor<B, 1>,
    var: Tensor<B, 1>,
    eps: f64,
    relu: bool,
) -> Tensor<B, 4> {
    float(B::batch_norm_eval(prim(x), prim(gamma), prim(beta), prim(mean), prim(var), eps, relu))
}

impl KernelBackend for burn::backend::Flex {
    fn pointwise_conv_as_same() -> bool {
        true
    }

    fn conv2d_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let Some(g) = flex::conv_geometry(&x, &weight, bias.as_ref().map_or(flex::Operand::None, flex::Operand::Bias))
        else {
            return burn_conv2d_same::<Self>(x, weight, bias);
        };
        let (x, weight, bias) = (flex::contiguous(x), flex::contiguous(weight), bias.map(flex::contiguous));
        let out =
            unet_kernels::same_conv::forward(&g, flex::f32s(&x), flex::f32s(&weight), bias.as_ref().map(flex::f32s));
        flex::tensor(out, [g.n, g.cout, g.h, g.w])
    }

    fn conv2d_same_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let Some(g) = flex::conv_geometry(&x, &weight, flex::Operand::OutputGrad(&output_grad)) else {
            return burn_conv2d_same_x_backward::<Self>(x, weight, output_grad);
        };
        let (weight, output_grad) = (flex::contiguous(weight), flex::contiguous(output_grad));
        let dx = unet_kernels::same_conv::input_grad(&g, flex::f32s(&weight), flex::f32s(&output_grad));
        flex::tensor(dx, [g.n, g.cin, g.h, g.w])
    }

    fn conv2d_same_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let Some(g) = flex::conv_geometry(&x, &weight, flex::Operand::OutputGrad(&output_grad)) else {
            return burn_conv2d_same_weight_backward::<Self>(x, weight, output_grad);
        };
        let (x, output_grad) = (flex::contiguous(x), flex::contiguous(output_grad));
        let dw = unet_kernels::same_conv::weight_grad(&g, flex::f32s(&x), flex::f32s(&output_grad));
        flex::tensor(dw, [g.cout, g.cin, g.k, g.k])
    }

    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> BatchNormOutput<Self> {
        let Some(g) = flex::norm_geometry(&x, &[&gamma, &beta]) else {
            return burn_batch_norm_train::<Self>(x, gamma, beta, eps, relu);
        };
        let (x, gamma, beta) = (flex::contiguous(x), flex::contiguous(gamma), flex::contiguous(beta));
        let out =
            unet_kernels::batch_norm::forward(&g, flex::f32s(&x), flex::f32s(&gamma), flex::f32s(&beta), eps, relu);
        let shape = x.shape().clone();
        BatchNormOutput {
            output: flex::tensor(out.y, shape),
            mean: flex::tensor(out.mean, [g.c]),
            var: flex::tensor(out.var, [g.c]),
        }
    }

    fn batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        eps: f64,
        relu: bool,
        output_grad: FloatTensor<Self>,
    ) -> BatchNormGrads<Self> {
        let fits = output_grad.dtype() == DType::F32 && output_grad.shape() == x.shape();
        let Some(g) = flex::norm_geometry(&x, &[&gamma, &beta, &mean, &var]).filter(|_| fits) else {
            return burn_batch_norm_backward::<Self>(x, gamma, beta, mean, var, eps, relu, output_grad);
        };
        let c = flex::contiguous;
        let (x, gamma, beta, mean, var, dy) = (c(x), c(gamma), c(beta), c(mean), c(var), c(output_grad));
        let f = flex::f32s;
        let gr =
            unet_kernels::batch_norm::backward(&g, f(&x), f(&gamma), f(&beta), f(&mean), f(&var), eps, relu, f(&dy));
        BatchNormGrads {
            x: flex::tensor(gr.x, x.shape().clone()),
            gamma: flex::tensor(gr.gamma, [g.c]),
            beta: flex::tensor(gr.beta, [g.c]),
        }
    }

    fn batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> FloatTensor<Self> {
        let Some(g) = flex::norm_geometry(&x, &[&gamma, &beta, &mean, &var]) else {
            return burn_batch_norm_eval::<Self>(x, gamma, beta, mean, var, eps, relu);
        };
        let c = flex::contiguous;
        let (x, gamma, beta, mean, var) = (c(x), c(gamma), c(beta), c(mean), c(var));
        let f = flex::f32s;
        let y = unet_kernels::batch_norm::apply_stats(&g, f(&x), f(&gamma), f(&beta), f(&mean), f(&var), eps, relu);
        flex::tensor(y, x.shape().clone())
    }
}

impl KernelBackend for burn::backend::NdArray {}

#[cfg(feature = "cuda")]
impl KernelBackend for burn::backend::Cuda<f32> {}
#[cfg(feature = "cuda")]
impl KernelBackend for burn::backend::Cuda<burn::tensor::f16> {}
#[cfg(feature = "cuda")]
impl KernelBackend for burn::backend::Cuda<burn::tensor::bf16> {}
#[cfg(feature = "tch")]
impl KernelBackend for burn::backend::LibTorch<f32> {}
#[cfg(feature = "tch")]
impl KernelBackend for burn::backend::LibTorch<burn::tensor::f16> {}
#[cfg(feature = "tch")]
impl KernelBackend for burn::backend::LibTorch<burn::tensor::bf16> {}

/// Under autodiff the convolution without bias (how the networks call it when training) and the
/// training normalisation are each one tracked operation whose backward calls the inner
/// backend's gradient operations (on Flex: our kernels). A convolution with a bias is burn's own
/// autodiff `conv2d`; the evaluation normalisation is burn's composition (tracked op by op).
impl<B: KernelBackend, C: CheckpointStrategy> KernelBackend for Autodiff<B, C> {
    fn pointwise_conv_as_same() -> bool {
        B::pointwise_conv_as_same()
    }

    fn conv2d_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct ConvSameBackward;

        impl<B: KernelBackend> Backward<B, 2> for ConvSameBackward {
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
        match ConvSameBackward.prepare::<C>([x.node.clone(), weight.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                prep.finish((x_state, weight_state), B::conv2d_same(x.primitive, weight.primitive, None))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_same(x.primitive, weight.primitive, None)),
        }
    }

    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> BatchNormOutput<Self> {
        /// `x`, `gamma`, `beta`, `mean`, `var` of the inner backend.
        type State<B> = [FloatTensor<B>; 5];

        #[derive(Debug)]
        struct BatchNormBackward {
            eps: f64,
            relu: bool,
        }

        impl<B: KernelBackend> Backward<B, 3> for BatchNormBackward {
            type State = State<B>;

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let [x, gamma, beta, mean, var] = ops.state;
                let g = B::batch_norm_train_backward(x, gamma, beta, mean, var, self.eps, self.relu, grad);
                for (parent, part) in ops.parents.into_iter().zip([g.x, g.gamma, g.beta]) {
                    if let Some(node) = parent {
                        grads.register::<B>(node.id, part);
                    }
                }
            }
        }

        let out = B::batch_norm_train(x.primitive.clone(), gamma.primitive.clone(), beta.primitive.clone(), eps, relu);
        let stats = |t: FloatTensor<B>| <Self as AutodiffBackend>::from_inner(t);
        let output = match (BatchNormBackward { eps, relu })
            .prepare::<C>([x.node, gamma.node, beta.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = [x.primitive, gamma.primitive, beta.primitive, out.mean.clone(), out.var.clone()];
                prep.finish(state, out.output)
            }
            OpsKind::UnTracked(prep) => prep.finish(out.output),
        };
        BatchNormOutput { output, mean: stats(out.mean), var: stats(out.var) }
    }
}

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
#[cfg(test)]
mod tests;
