//! # unet-kernels
//!
//! The CPU kernels the `unet` crate and `gen-metrics`' ResNet run on burn's Flex backend
//! (through `kernel-ops`), on plain `f32` slices in NCHW order, with no burn dependency (as
//! candle keeps `candle-kernels` apart from the tensor code):
//!
//! - [`same_conv`]: the network's `k x k`, stride-1, "same"-padded convolution and its input and
//!   weight gradients: a direct AVX-512 kernel (8 output channels x 48 pixels in 24 registers)
//!   where the CPU has AVX-512F and the channels come in blocks of 8, and for the weight gradient
//!   a kernel of its own (a reduction over pixels, `dW` tiles in registers) from 8 input and 16
//!   output channels; GEMMs (the `gemm` crate) otherwise. All three also run in bf16 with f32
//!   sums (`same_conv::Precision::Bf16`, AVX512-BF16 dot products; a process-wide setting, f32
//!   by default), the weight gradient's kernel then on pairs of neighbouring pixels.
//! - [`norm_act`]: channel RMSNorm, per-sample modulation and SiLU in one pass, and its
//!   closed-form gradient (SIMD through `pulp`'s run-time dispatch).
//! - [`softmax`]: softmax over the middle axis of `[groups, len, inner]` (rows or columns) and
//!   its gradient.
//! - [`batch_norm`]: training-mode batch normalisation with optional ReLU and its gradient, and
//!   the evaluation-mode affine (the lensing classifier's ResNet in `gen-metrics`).
//!
//! - [`cache`]: the core's L2 size from CPUID, which sizes the convolution's blocking.
//!
//! These are low-level: each function takes the geometry and slices and **panics** when a slice
//! length does not match the geometry (a caller bug, not bad input). The safe, shape-checked ways
//! in are `kernel_ops::KernelBackend` and `unet::UnetBackend`, which fall back to burn's own
//! operations where a kernel does not apply. Results are reproducible bit for bit per kind of CPU (the direct and GEMM paths sum in
//! different orders).
//!
//! ## Feature flags
//! None. Kernels are chosen at run time from the CPU's features (bf16 only where asked for).
#![warn(missing_docs)]

pub mod batch_norm;
pub mod cache;
mod fill;
pub mod norm_act;
pub mod same_conv;
pub mod softmax;
