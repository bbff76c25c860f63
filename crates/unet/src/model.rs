//! The network: the denoising-diffusion-pytorch 2.x `Unet` and its building blocks.
//!
//! Every block mirrors the Python class of the same name; `forward` follows the Python
//! `forward` line by line. Field names are Rust-style; [`crate::keys`] maps them to the PyTorch
//! state-dict keys.

use burn::module::{Initializer, Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{gelu, silu};
use burn::tensor::backend::Backend;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Tensor, TensorData};

use crate::backend::{
    contiguous_grad, conv2d_same, per_sample_channels, rms_norm_act, softmax_cols, softmax_last, UnetBackend,
};
use crate::config::{UnetConfig, NUM_MEM_KV};
use crate::error::UnetError;

fn conv<B: Backend>(cin: usize, cout: usize, k: usize, bias: bool, device: &B::Device) -> Conv2d<B> {
    let p = k / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(bias)
        .init(device)
}

/// A 1x1 convolution on the parameters of `conv` (same weights, same keys): through the
/// backend's same convolution where it is a kernel of ours
/// ([`KernelBackend::pointwise_conv_as_same`](kernel_ops::KernelBackend::pointwise_conv_as_same):
/// Flex, where it then runs in bf16 under `--precision bf16` like the 3x3 ones), else as a
/// batched matmul `W [1, C_out, C_in] x [N, C_in, H*W]` (burn's generic `conv2d` backward
/// transposes the input to `[C_in, N, H, W]` and copies it; the matmul backward does not). Same
/// sums up to float rounding.
fn conv1x1<B: UnetBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if B::pointwise_conv_as_same() {
        return conv_same(conv, x);
    }
    let y = pointwise(conv.weight.val(), x);
    match &conv.bias {
        Some(b) => add_channel_bias(y, b.val()),
        None => y,
    }
}

/// The bias-free 1x1 convolution of `x` `[N, C_in, H, W]` with `weight` `[C_out, C_in, 1, 1]`,
/// by the route [`conv1x1`] describes.
fn pointwise<B: UnetBackend>(weight: Tensor<B, 4>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if B::pointwise_conv_as_same() {
        return conv2d_same(x, weight, None);
    }
    let [n, cin, h, w] = x.dims();
    let cout = weight.dims()[0];
    weight.reshape([1, cout, cin]).matmul(x.reshape([n, cin, h * w])).reshape([n, cout, h, w])
}

/// `y` `[N, C, H, W]` plus a per-channel `bias` `[C]`, added as a contiguous `[N, C, 1]` operand
/// (see [`conv_same`]).
fn add_channel_bias<B: Backend>(y: Tensor<B, 4>, bias: Tensor<B, 1>) -> Tensor<B, 4> {
    let [n, c, h, w] = y.dims();
    y.reshape([n, c, h * w]).add(per_sample_channels(bias, n)).reshape([n, c, h, w])
}

/// A `k x k` convolution with stride 1 and padding `k / 2` (how every conv of this network
/// is built), on the parameters of `conv`. The bias is added after the convolution as a
/// contiguous `[N, C, 1]` operand: burn's generic conv2d bias gradient reshapes a strided
/// tensor, which Flex copies element by element; the broadcast add's gradient is a plain
/// reduction over the trailing axes. Same arithmetic. Without gradients (inference) the conv's
/// own fused bias is used. Goes through
/// [`KernelBackend::conv2d_same`](crate::backend::KernelBackend::conv2d_same) (Flex: our own
/// kernel).
fn conv_same<B: UnetBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if !conv.weight.val().is_require_grad() {
        // Inference: the fused bias of the conv kernel saves a pass.
        return conv2d_same(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()));
    }
    let y = conv2d_same(x, conv.weight.val(), None);
    match &conv.bias {
        Some(b) => add_channel_bias(y, b.val()),
        None => y,
    }
}

/// `RMSNorm` over channels: `x / max(||x||_2, 1e-12) * g * sqrt(C)` (`F.normalize(x, dim=1)`).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Gain, torch layout `[1, C, 1, 1]` (key `g`).
    pub g: Param<Tensor<B, 4>>,
}

impl<B: Backend> RmsNorm<B> {
    fn new(dim: usize, device: &B::Device) -> Self {
        Self { g: Initializer::Ones.init([1, dim, 1, 1], device) }
    }

    /// `g * sqrt(C)` as a `[C]` vector (the gain [`UnetBackend::rms_norm_act`] takes).
    pub fn gain(&self) -> Tensor<B, 1> {
        let c = self.g.dims()[1];
        self.g.val().mul_scalar((c as f64).sqrt()).reshape([c])
    }
}

impl<B: UnetBackend> RmsNorm<B> {
    /// Normalises `[N, C, H, W]` over `C` ([`UnetBackend::rms_norm_act`] without modulation or
    /// SiLU).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        rms_norm_act(x, self.gain(), None, false)
    }
}

/// `Block`: conv3x3 -> RMSNorm -> optional `x * (scale + 1) + shift` -> SiLU -> dropout.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// 3x3 convolution (`proj`).
    pub proj: Conv2d<B>,
    /// Channel RMSNorm (`norm`).
    pub norm: RmsNorm<B>,
    /// Dropout (active only when gradients are tracked).
    pub dropout: Dropout,
}

impl<B: Backend> Block<B> {
    fn new(dim: usize, dim_out: usize, dropout: f64, device: &B::Device) -> Self {
        Self {
            proj: conv(dim, dim_out, 3, true, device),
            norm: RmsNorm::new(dim_out, device),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }
}

impl<B: UnetBackend> Block<B> {
    /// `x: [N, C_in, H, W]`, `scale_shift`: two `[N, C_out]` tensors, applied after the norm as
    /// `x * (scale + 1) + shift`. Norm, modulation and SiLU are one
    /// [`UnetBackend::rms_norm_act`].
    pub fn forward(&self, x: Tensor<B, 4>, scale_shift: Option<(Tensor<B, 2>, Tensor<B, 2>)>) -> Tensor<B, 4> {
        let x = conv_same(&self.proj, x);
        self.dropout.forward(rms_norm_act(x, self.norm.gain(), scale_shift, true))
    }
}

/// `ResnetBlock`: time-conditioned (scale, shift) in the first block, residual 1x1 conv when the
/// width changes.
#[derive(Module, Debug)]
pub struct ResnetBlock<B: Backend> {
    /// `Linear(time_dim, 2 * dim_out)` after a SiLU (`mlp.1`).
    pub mlp: Linear<B>,
    /// First block, modulated by the time embedding.
    pub block1: Block<B>,
    /// Second block.
    pub block2: Block<B>,
    /// 1x1 convolution on the residual path when `dim != dim_out` (else identity).
    pub res_conv: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock<B> {
    fn new(dim: usize, dim_out: usize, time_dim: usize, dropout: f64, device: &B::Device) -> Self {
        Self {
            mlp: LinearConfig::new(time_dim, 2 * dim_out).init(device),
            block1: Block::new(dim, dim_out, dropout, device),
            block2: Block::new(dim_out, dim_out, 0.0, device),
            res_conv: (dim != dim_out).then(|| conv(dim, dim_out, 1, true, device)),
        }
    }
}

impl<B: UnetBackend> ResnetBlock<B> {
    /// `x: [N, C_in, H, W]`; `t_act`: the time embedding *after* SiLU, `[N, time_dim]` (the SiLU
    /// of `mlp` is hoisted out and computed once per forward pass).
    pub fn forward(&self, x: Tensor<B, 4>, t_act: &Tensor<B, 2>) -> Tensor<B, 4> {
        let c = self.mlp.weight.dims()[1] / 2;
        // `mlp(t).chunk(2, dim=1)`, computed as two matmuls on the halves of the weight so that
        // scale and shift come out contiguous (a chunk is a strided view, which Flex's
        // broadcasting kernels only handle on their slow element-by-element path).
        let half = |i: usize| {
            let w = self.mlp.weight.val().narrow(1, i * c, c);
            let y = t_act.clone().matmul(w);
            match &self.mlp.bias {
                Some(b) => y.add(b.val().narrow(0, i * c, c).reshape([1, c])),
                None => y,
            }
        };
        let scale = half(0);
        let shift = half(1);
        let h = self.block1.forward(x.clone(), Some((scale, shift)));
        let h = self.block2.forward(h, None);
        let res = match &self.res_conv {
            Some(c) => conv1x1(c, x),
            None => x,
        };
        h.add(res)
    }
}

/// `LinearAttention`: softmax over features for q, over positions for k, with memory key/values;
/// cost linear in the number of pixels.
#[derive(Module, Debug)]
pub struct LinearAttention<B: Backend> {
    /// Pre-norm (`norm`).
    pub norm: RmsNorm<B>,
    /// Memory key/values, torch layout `[2, heads, dim_head, num_mem_kv]` (none in the
    /// class-conditional network).
    pub mem_kv: Option<Param<Tensor<B, 4>>>,
    /// 1x1 conv without bias to `3 * heads * dim_head` channels.
    pub to_qkv: Conv2d<B>,
    /// Output 1x1 conv (`to_out.0`).
    pub to_out: Conv2d<B>,
    /// Output RMSNorm (`to_out.1`).
    pub out_norm: RmsNorm<B>,
    /// Number of heads.
    pub heads: usize,
    /// Width of one head.
    pub dim_head: usize,
}

impl<B: Backend> LinearAttention<B> {
    fn new(dim: usize, heads: usize, dim_head: usize, mem: bool, device: &B::Device) -> Self {
        let hidden = heads * dim_head;
        Self {
            norm: RmsNorm::new(dim, device),
            mem_kv: mem
                .then(|| Initializer::Normal { mean: 0.0, std: 1.0 }.init([2, heads, dim_head, NUM_MEM_KV], device)),
            to_qkv: conv(dim, 3 * hidden, 1, false, device),
            to_out: conv(hidden, dim, 1, true, device),
            out_norm: RmsNorm::new(dim, device),
            heads,
            dim_head,
        }
    }
}

impl<B: UnetBackend> LinearAttention<B> {
    /// `[N, C, H, W] -> [N, C, H, W]` (without the residual).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, _c, h, w] = x.dims();
        let (heads, dh) = (self.heads, self.dim_head);
        let n = h * w;
        let hidden = heads * dh;
        let x = self.norm.forward(x);
        // `to_qkv` then `chunk(3)`, as three 1x1 convolutions on row blocks of the weight (each
        // contiguous), each `[b, heads, dh, n]`. q's softmax over the feature axis (`dim=-2`) is
        // the backend's `softmax_cols`: on burn Flex a softmax (and its autodiff decomposition)
        // over a middle axis goes through strided element-by-element copies, and computing q
        // transposed for a last-axis softmax left permuted copies in the forward and backward
        // instead.
        let rows = |i: usize| self.to_qkv.weight.val().narrow(0, i * hidden, hidden);
        let project = |i: usize| pointwise(rows(i), x.clone()).reshape([b, heads, dh, n]);
        let (q, k, v) = (project(0), project(1), project(2));
        let (k, v) = match &self.mem_kv {
            Some(mem) => {
                let mem = mem.val();
                let mk =
                    mem.clone().narrow(0, 0, 1).reshape([1, heads, dh, NUM_MEM_KV]).expand([b, heads, dh, NUM_MEM_KV]);
                let mv = mem.narrow(0, 1, 1).reshape([1, heads, dh, NUM_MEM_KV]).expand([b, heads, dh, NUM_MEM_KV]);
                (Tensor::cat(vec![mk, k], 3), Tensor::cat(vec![mv, v], 3))
            }
            None => (k, v),
        };
        let q = softmax_cols(q).mul_scalar((dh as f64).powf(-0.5));
        let k = softmax_last(k);
        // context[d, e] = sum_n k[d, n] v[e, n], computed transposed, `v k^T`, so that v (the
        // larger operand's gradient, as wide as the image) comes back contiguous from the
        // matmul's backward rather than as a transposed view that reshaping copies element by
        // element; k's transposed gradient goes to the softmax's backward, which copies it by
        // tiles.
        let context_t = v.matmul(k.swap_dims(2, 3));
        // out[e, n] = sum_d context[d, e] q[d, n]
        let out = context_t.matmul(q);
        let out = out.reshape([b, heads * dh, h, w]);
        self.out_norm.forward(conv1x1(&self.to_out, out))
    }
}

/// `Attention`: standard softmax attention over all pixels plus memory key/values, as two
/// matmuls around the backend's last-axis softmax (not burn's fused `attention`; see `forward`).
#[derive(Module, Debug)]
pub struct FullAttention<B: Backend> {
    /// Pre-norm (`norm`).
    pub norm: RmsNorm<B>,
    /// Memory key/values, torch layout `[2, heads, num_mem_kv, dim_head]` (none in the
    /// class-conditional network).
    pub mem_kv: Option<Param<Tensor<B, 4>>>,
    /// 1x1 conv without bias to `3 * heads * dim_head` channels.
    pub to_qkv: Conv2d<B>,
    /// Output 1x1 conv (`to_out`).
    pub to_out: Conv2d<B>,
    /// Number of heads.
    pub heads: usize,
    /// Width of one head.
    pub dim_head: usize,
}

impl<B: Backend> FullAttention<B> {
    fn new(dim: usize, heads: usize, dim_head: usize, mem: bool, device: &B::Device) -> Self {
        let hidden = heads * dim_head;
        Self {
            norm: RmsNorm::new(dim, device),
            mem_kv: mem
                .then(|| Initializer::Normal { mean: 0.0, std: 1.0 }.init([2, heads, NUM_MEM_KV, dim_head], device)),
            to_qkv: conv(dim, 3 * hidden, 1, false, device),
            to_out: conv(hidden, dim, 1, true, device),
            heads,
            dim_head,
        }
    }
}

impl<B: UnetBackend> FullAttention<B> {
    /// `[N, C, H, W] -> [N, C, H, W]` (without the residual).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, _c, h, w] = x.dims();
        let (heads, dh) = (self.heads, self.dim_head);
        let n = h * w;
        let x = self.norm.forward(x);
        let mut qkv = conv1x1(&self.to_qkv, x).chunk(3, 1);
        let to_seq = |t: Tensor<B, 4>| t.reshape([b, heads, dh, n]).swap_dims(2, 3);
        let v = to_seq(qkv.pop().expect("3 chunks"));
        let k = to_seq(qkv.pop().expect("3 chunks"));
        let q = to_seq(qkv.pop().expect("3 chunks"));
        let (k, v) = match &self.mem_kv {
            Some(mem) => {
                let mem = mem.val();
                let mk =
                    mem.clone().narrow(0, 0, 1).reshape([1, heads, NUM_MEM_KV, dh]).expand([b, heads, NUM_MEM_KV, dh]);
                let mv = mem.narrow(0, 1, 1).reshape([1, heads, NUM_MEM_KV, dh]).expand([b, heads, NUM_MEM_KV, dh]);
                (Tensor::cat(vec![mk, k], 2), Tensor::cat(vec![mv, v], 2))
            }
            None => (k, v),
        };
        // softmax(q k^T / sqrt(dh)) v, [b, heads, n, dh], as the reference `Attend` computes it
        // (`einsum(q, k) * scale`, softmax over the last axis, `einsum(attn, v)`). Two matmuls
        // and a last-axis softmax: burn's fused `attention` runs a naive scalar kernel on Flex
        // at these sizes, and under autodiff it decomposes into the same three steps anyway.
        let scale = (dh as f64).powf(-0.5);
        let sim = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
        let out = softmax_last(sim).matmul(v);
        let out = out.swap_dims(2, 3).reshape([b, heads * dh, h, w]);
        conv1x1(&self.to_out, out)
    }
}

/// The attention layer of a stage: linear or full.
#[derive(Module, Debug)]
pub enum StageAttention<B: Backend> {
    /// `LinearAttention` (outer stages by default).
    Linear(LinearAttention<B>),
    /// `Attention` (innermost stage by default).
    Full(FullAttention<B>),
}

impl<B: Backend> StageAttention<B> {
    fn new(dim: usize, heads: usize, dim_head: usize, full: bool, mem: bool, device: &B::Device) -> Self {
        if full {
            Self::Full(FullAttention::new(dim, heads, dim_head, mem, device))
        } else {
            Self::Linear(LinearAttention::new(dim, heads, dim_head, mem, device))
        }
    }
}

impl<B: UnetBackend> StageAttention<B> {
    /// Runs the layer (without the residual).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Self::Linear(a) => a.forward(x),
            Self::Full(a) => a.forward(x),
        }
    }
}

/// The resolution change at the end of a stage.
#[derive(Module, Debug)]
pub enum Resample<B: Backend> {
    /// `Downsample`: pixel-unshuffle 2x2 (channel order c, p1, p2) then a 1x1 conv.
    PixelUnshuffle(Conv2d<B>),
    /// `Upsample`: nearest-neighbour x2 then a 3x3 conv.
    NearestUp(Conv2d<B>),
    /// Last stage: a 3x3 conv at the same resolution.
    Same(Conv2d<B>),
    /// The class-conditional network's `Downsample`: a 4x4 convolution, stride 2, padding 1.
    StridedDown(Conv2d<B>),
}

impl<B: UnetBackend> Resample<B> {
    /// Applies the resampling.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Self::PixelUnshuffle(c) => conv1x1(c, pixel_unshuffle(x)),
            Self::NearestUp(c) => conv_same(c, upsample_nearest2(x)),
            Self::Same(c) => conv_same(c, x),
            Self::StridedDown(c) => c.forward(x),
        }
    }
}

/// `torch.cat((x, skip), dim=1)` of the up path, whose two gradients leave contiguous
/// ([`contiguous_grad`]): the concatenation's backward slices its gradient by channels, and both
/// slices flow on into sums with the tensors' other gradients (a skip's, from the layer after it
/// on the down path; `x`'s, through the residual add), which on Flex walk a strided view element
/// by element.
fn cat_channels<B: UnetBackend>(x: Tensor<B, 4>, skip: Tensor<B, 4>) -> Tensor<B, 4> {
    Tensor::cat(vec![contiguous_grad(x), contiguous_grad(skip)], 1)
}

/// `b c (h p1) (w p2) -> b (c p1 p2) h w` with `p1 = p2 = 2`.
pub fn pixel_unshuffle<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h / 2, 2, w / 2, 2]).permute([0, 1, 3, 5, 2, 4]).reshape([b, c * 4, h / 2, w / 2])
}

/// Nearest-neighbour upsampling by 2 (`nn.Upsample(scale_factor=2, mode='nearest')`).
///
/// burn's `interpolate` in nearest mode (source pixel `floor(o / 2)`, as PyTorch's) rather than
/// the equivalent `reshape -> expand -> reshape`: Flex materialises an expanded view through a
/// generic strided iterator, which took 3 % of a DeepLense forward; its `interpolate` is a
/// per-plane gather, and its backward a per-plane sum.
pub fn upsample_nearest2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    interpolate(x, [2 * h, 2 * w], InterpolateOptions::new(InterpolateMode::Nearest))
}

/// One down stage: two resnet blocks, attention, downsampling.
#[derive(Module, Debug)]
pub struct DownStage<B: Backend> {
    /// First resnet block (`downs.i.0`).
    pub block1: ResnetBlock<B>,
    /// Second resnet block (`downs.i.1`).
    pub block2: ResnetBlock<B>,
    /// Residual attention (`downs.i.2`).
    pub attn: StageAttention<B>,
    /// Downsampling (`downs.i.3`).
    pub resample: Resample<B>,
}

/// One up stage: two resnet blocks fed with skips, attention, upsampling.
#[derive(Module, Debug)]
pub struct UpStage<B: Backend> {
    /// First resnet block (`ups.i.0`).
    pub block1: ResnetBlock<B>,
    /// Second resnet block (`ups.i.1`).
    pub block2: ResnetBlock<B>,
    /// Residual attention (`ups.i.2`).
    pub attn: StageAttention<B>,
    /// Upsampling (`ups.i.3`).
    pub resample: Resample<B>,
}

/// Sinusoidal embedding of the timestep followed by `Linear -> GELU -> Linear`.
#[derive(Module, Debug)]
pub struct TimeMlp<B: Backend> {
    /// `Linear(dim, 4 dim)` (`time_mlp.1`).
    pub linear1: Linear<B>,
    /// `Linear(4 dim, 4 dim)` (`time_mlp.3`).
    pub linear2: Linear<B>,
    /// Frequencies of the sinusoidal embedding, computed once (not a parameter).
    pub freqs: Vec<f32>,
}

impl<B: Backend> TimeMlp<B> {
    fn new(dim: usize, time_dim: usize, theta: f64, device: &B::Device) -> Self {
        Self {
            linear1: LinearConfig::new(dim, time_dim).init(device),
            linear2: LinearConfig::new(time_dim, time_dim).init(device),
            freqs: sinusoidal_freqs(dim, theta),
        }
    }

    /// Sinusoidal embedding `[sin(t f), cos(t f)]`, `t: [N]` -> `[N, dim]`.
    pub fn embed(&self, t: Tensor<B, 1>) -> Tensor<B, 2> {
        let n = t.dims()[0];
        let half = self.freqs.len();
        let freqs = Tensor::<B, 1>::from_data(TensorData::new(self.freqs.clone(), [half]), &t.device());
        let arg = t.reshape([n, 1]).mul(freqs.reshape([1, half]));
        Tensor::cat(vec![arg.clone().sin(), arg.cos()], 1)
    }

    /// `t: [N]` (float timesteps) -> `[N, 4 dim]`.
    pub fn forward(&self, t: Tensor<B, 1>) -> Tensor<B, 2> {
        let e = self.embed(t);
        self.linear2.forward(gelu(self.linear1.forward(e)))
    }
}

/// `exp(-ln(theta) * i / (half - 1))` for `i < dim / 2`, computed as PyTorch does in float32:
/// `f32(i) * f32(-ln(theta)/(half-1))`, then exp.
pub fn sinusoidal_freqs(dim: usize, theta: f64) -> Vec<f32> {
    let half = dim / 2;
    let step = (theta.ln() / (half as f64 - 1.0)) as f32;
    (0..half).map(|i| ((i as f32 * -step) as f64).exp() as f32).collect()
}

/// The class conditioning of the class-conditional network: `classes_emb(classes)` (or the
/// learned `null_classes_emb` for a dropped label) through `Linear -> GELU -> Linear`.
#[derive(Module, Debug)]
pub struct ClassEmbedding<B: Backend> {
    /// One row per class, `[num_classes, dim]` (`classes_emb.weight`).
    pub table: Param<Tensor<B, 2>>,
    /// The null class, `[dim]` (`null_classes_emb`).
    pub null: Param<Tensor<B, 1>>,
    /// `Linear(dim, 4 dim)` (`classes_mlp.0`).
    pub linear1: Linear<B>,
    /// `Linear(4 dim, 4 dim)` (`classes_mlp.2`).
    pub linear2: Linear<B>,
}

impl<B: Backend> ClassEmbedding<B> {
    fn new(num_classes: usize, dim: usize, device: &B::Device) -> Self {
        let normal = Initializer::Normal { mean: 0.0, std: 1.0 };
        Self {
            table: normal.init([num_classes, dim], device),
            null: normal.init([dim], device),
            linear1: LinearConfig::new(dim, 4 * dim).init(device),
            linear2: LinearConfig::new(4 * dim, 4 * dim).init(device),
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.table.dims()[0]
    }

    /// `labels` (`None`: the null class) -> `[N, 4 dim]`. Labels must be below
    /// [`ClassEmbedding::num_classes`].
    pub fn forward(&self, labels: &[Option<usize>], device: &B::Device) -> Tensor<B, 2> {
        let n = self.num_classes();
        let dim = self.null.dims()[0];
        // Row `n` of the extended table is the null embedding: one gather for the batch.
        let table = Tensor::cat(vec![self.table.val(), self.null.val().reshape([1, dim])], 0);
        let idx: Vec<i64> = labels.iter().map(|l| l.unwrap_or(n) as i64).collect();
        let idx = Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(idx, [labels.len()]), device);
        let e = table.select(0, idx);
        self.linear2.forward(gelu(self.linear1.forward(e)))
    }
}

/// The denoising-diffusion-pytorch 2.x `Unet`.
///
/// Build it with [`UnetConfig::init`] or load it with [`crate::load_checkpoint`] and friends.
/// `forward(x, t)` takes `x: [N, channels, H, W]` with `H`, `W` multiples of
/// [`UnetConfig::downsample_factor`] and `t: [N]`, the integer timesteps as floats.
#[derive(Module, Debug)]
pub struct Unet<B: Backend> {
    /// 7x7 input convolution (`init_conv`).
    pub init_conv: Conv2d<B>,
    /// Time embedding (`time_mlp`).
    pub time_mlp: TimeMlp<B>,
    /// Down stages, outermost first (`downs`).
    pub downs: Vec<DownStage<B>>,
    /// `mid_block1`.
    pub mid_block1: ResnetBlock<B>,
    /// `mid_attn` (always full attention).
    pub mid_attn: FullAttention<B>,
    /// `mid_block2`.
    pub mid_block2: ResnetBlock<B>,
    /// Up stages, innermost first (`ups`).
    pub ups: Vec<UpStage<B>>,
    /// `final_res_block` (`2 init_dim -> init_dim`).
    pub final_res_block: ResnetBlock<B>,
    /// 1x1 output convolution (`final_conv`).
    pub final_conv: Conv2d<B>,
    /// Class conditioning (the class-conditional network only).
    pub classes: Option<ClassEmbedding<B>>,
    /// The configuration this network was built from.
    pub config: UnetConfig,
}

impl<B: Backend> Unet<B> {
    /// Builds a randomly initialised network; `config` must be valid (see
    /// [`UnetConfig::init`], which checks it).
    pub(crate) fn new(config: &UnetConfig, device: &B::Device) -> Self {
        let init_dim = config.resolved_init_dim();
        let cond_dim = config.cond_dim();
        let in_out = config.in_out();
        let full = config.resolved_full_attn();
        let (heads, dh) = config.stage_attention_size();
        let drop = config.dropout;
        let n = in_out.len();
        // The class-conditional network: no memory key/values, strided-conv downsampling.
        let cfg = config.is_conditional();
        let resnet = |a, b| ResnetBlock::new(a, b, cond_dim, drop, device);

        let downs = in_out
            .iter()
            .enumerate()
            .map(|(i, &(din, dout))| DownStage {
                block1: resnet(din, din),
                block2: resnet(din, din),
                attn: StageAttention::new(din, heads, dh, full[i], !cfg, device),
                resample: if i + 1 < n && cfg {
                    Resample::StridedDown(
                        Conv2dConfig::new([din, dout], [4, 4])
                            .with_stride([2, 2])
                            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                            .init(device),
                    )
                } else if i + 1 < n {
                    Resample::PixelUnshuffle(conv(4 * din, dout, 1, true, device))
                } else {
                    Resample::Same(conv(din, dout, 3, true, device))
                },
            })
            .collect();
        let mid = *config.dims().last().expect("dims non-empty");
        let ups = in_out
            .iter()
            .rev()
            .zip(full.iter().rev())
            .enumerate()
            .map(|(i, (&(din, dout), &f))| UpStage {
                block1: resnet(dout + din, dout),
                block2: resnet(dout + din, dout),
                attn: StageAttention::new(dout, heads, dh, f, !cfg, device),
                resample: if i + 1 < n {
                    Resample::NearestUp(conv(dout, din, 3, true, device))
                } else {
                    Resample::Same(conv(dout, din, 3, true, device))
                },
            })
            .collect();
        Self {
            init_conv: conv(config.channels, init_dim, 7, true, device),
            time_mlp: TimeMlp::new(config.dim, config.time_dim(), config.sinusoidal_pos_emb_theta, device),
            downs,
            mid_block1: resnet(mid, mid),
            mid_attn: FullAttention::new(mid, config.attn_heads, config.attn_dim_head, !cfg, device),
            mid_block2: resnet(mid, mid),
            ups,
            final_res_block: resnet(2 * init_dim, init_dim),
            final_conv: conv(init_dim, config.resolved_out_dim(), 1, true, device),
            classes: config.num_classes.map(|k| ClassEmbedding::new(k, config.dim, device)),
            config: config.clone(),
        }
    }

    /// The configuration of this network.
    pub fn config(&self) -> &UnetConfig {
        &self.config
    }

    /// Checks that an input of shape `[N, C, H, W]` fits this network.
    pub fn check_input(&self, dims: [usize; 4]) -> Result<(), UnetError> {
        let [n, c, h, w] = dims;
        let f = self.config.downsample_factor();
        if n == 0 || c != self.config.channels || h == 0 || w == 0 || h % f != 0 || w % f != 0 {
            return Err(UnetError::BadInput {
                reason: format!(
                    "input {:?} does not fit {}: need [N>0, {}, H, W] with H and W positive \
                     multiples of {f}",
                    dims,
                    self.config.describe(),
                    self.config.channels
                ),
            });
        }
        Ok(())
    }
}

impl<B: UnetBackend> Unet<B> {
    /// Like [`Unet::forward`] but returns an error instead of panicking on a bad shape.
    pub fn try_forward(&self, x: Tensor<B, 4>, t: Tensor<B, 1>) -> Result<Tensor<B, 4>, UnetError> {
        let labels = vec![None; x.dims()[0]];
        self.try_forward_labelled(x, t, &labels)
    }

    /// Predicts the network output for noisy images `x: [N, C, H, W]` at timesteps `t: [N]`.
    /// The class-conditional network predicts for the null class (unconditionally).
    ///
    /// # Panics
    /// If the shapes do not fit (see [`Unet::check_input`]); use [`Unet::try_forward`] to get
    /// an error instead.
    pub fn forward(&self, x: Tensor<B, 4>, t: Tensor<B, 1>) -> Tensor<B, 4> {
        match self.try_forward(x, t) {
            Ok(y) => y,
            Err(e) => panic!("{e}"),
        }
    }

    /// The class-conditional forward pass (`Unet.forward(x, time, classes, cond_keep_mask)` of
    /// the reference): `labels[i]` is the class of sample `i`, `None` the null class. The
    /// unconditional network accepts only `None` labels.
    pub fn try_forward_labelled(
        &self,
        x: Tensor<B, 4>,
        t: Tensor<B, 1>,
        labels: &[Option<usize>],
    ) -> Result<Tensor<B, 4>, UnetError> {
        self.check_input(x.dims())?;
        let n = x.dims()[0];
        if t.dims()[0] != n || labels.len() != n {
            return Err(UnetError::BadInput {
                reason: format!("batch of x is {n} but t has {} timesteps and {} labels", t.dims()[0], labels.len()),
            });
        }
        let num_classes = self.config.num_classes.unwrap_or(0);
        if let Some(bad) = labels.iter().flatten().find(|&&l| l >= num_classes) {
            return Err(UnetError::BadInput {
                reason: format!("class label {bad} for {}, which knows {num_classes} classes", self.config.describe()),
            });
        }
        Ok(self.forward_unchecked(x, t, labels))
    }

    /// [`Unet::try_forward_labelled`], panicking on bad input.
    pub fn forward_labelled(&self, x: Tensor<B, 4>, t: Tensor<B, 1>, labels: &[Option<usize>]) -> Tensor<B, 4> {
        match self.try_forward_labelled(x, t, labels) {
            Ok(y) => y,
            Err(e) => panic!("{e}"),
        }
    }

    fn forward_unchecked(&self, x: Tensor<B, 4>, time: Tensor<B, 1>, labels: &[Option<usize>]) -> Tensor<B, 4> {
        let device = x.device();
        let x = conv_same(&self.init_conv, x);
        let r = x.clone();
        // The resnet blocks' MLP starts with a SiLU, hoisted here; on `cat(t, c)` it is the
        // concatenation of the two activated embeddings.
        let t = silu(self.time_mlp.forward(time));
        let t = match &self.classes {
            Some(classes) => Tensor::cat(vec![t, silu(classes.forward(labels, &device))], 1),
            None => t,
        };
        let mut skips = Vec::with_capacity(2 * self.downs.len());
        let mut x = x;
        for stage in &self.downs {
            x = stage.block1.forward(x, &t);
            skips.push(x.clone());
            x = stage.block2.forward(x, &t);
            x = stage.attn.forward(x.clone()).add(x);
            skips.push(x.clone());
            x = stage.resample.forward(x);
        }
        x = self.mid_block1.forward(x, &t);
        x = self.mid_attn.forward(x.clone()).add(x);
        x = self.mid_block2.forward(x, &t);
        for stage in &self.ups {
            let s = skips.pop().expect("one skip per block");
            x = stage.block1.forward(cat_channels(x, s), &t);
            let s = skips.pop().expect("one skip per block");
            x = stage.block2.forward(cat_channels(x, s), &t);
            x = stage.attn.forward(x.clone()).add(x);
            x = stage.resample.forward(x);
        }
        let x = cat_channels(x, r);
        let x = self.final_res_block.forward(x, &t);
        conv1x1(&self.final_conv, x)
    }
}
