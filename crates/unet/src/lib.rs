//! # unet
//!
//! The U-Net of [denoising-diffusion-pytorch](https://github.com/lucidrains/denoising-diffusion-pytorch)
//! 2.x (`Unet`, identical in 2.1.1 ... 2.3.4) in [burn](https://burn.dev) 0.21, generic over the
//! backend, and its checkpoints:
//!
//! * [`UnetConfig`] (the Python constructor's arguments; presets [`UnetConfig::deeplense`] and
//!   [`UnetConfig::small`]) and [`Unet`] (a burn `Module`), which implements
//!   [`diffusion_core::Denoiser`].
//! * The class-conditional U-Net of the library's `classifier_free_guidance.py`
//!   ([`UnetConfig::conditional`], `num_classes`): the same [`Unet`] type, with
//!   [`Unet::forward_labelled`] and [`diffusion_core::ConditionalDenoiser`], so
//!   [`diffusion_core::Guided`] samples it with classifier-free guidance. Its `.pth` files load
//!   and export like the unconditional ones.
//! * PyTorch checkpoints as found in the wild: a bare `Unet.state_dict()`, a
//!   `GaussianDiffusion.state_dict()`, and a Trainer checkpoint (online `model` or `ema`
//!   weights); see [`load_checkpoint`], [`read_state_dict`], [`infer_config`].
//! * Our own checkpoints in burn's burnpack format ([`Unet::save`], [`Unet::load`]) and
//!   safetensors export with the PyTorch key names and layouts ([`Unet::export_safetensors`]),
//!   which `Unet.load_state_dict(..., strict=True)` accepts.
//! * [`UnetBackend`]: the backend extension the forward pass needs (the network's `k x k`
//!   convolution, its fused `RMSNorm -> modulation -> SiLU` and its last-axis softmax as backend
//!   operations). Flex (f32) runs them, and their gradients under `Autodiff<Flex>`, on this
//!   crate's own kernels (`same_conv.rs`, `norm_act.rs`, `softmax.rs`); NdArray and CUDA use
//!   burn's operations. Training code names [`UnetAutodiffBackend`].
//!
//! ```no_run
//! use burn::backend::Flex;
//! use unet::{load_checkpoint, Weights};
//!
//! let device = Default::default();
//! // Config inferred from the tensors; pass Some(&config) to insist on one.
//! let model = load_checkpoint::<Flex>("model-75.pt".as_ref(), Weights::Ema, None, &device)?;
//! println!("{}", model.config().describe());
//! # Ok::<(), unet::UnetError>(())
//! ```
//!
//! ## Feature flags
//! - `cuda`: implements [`UnetBackend`] for burn's CUDA backend (`Cuda<f32>`, `Cuda<f16>`,
//!   `Cuda<bf16>`; enabled by the workspace's `cuda` feature). The backend itself is chosen by
//!   the caller (Flex, NdArray, CUDA).
#![warn(missing_docs)]

pub mod backend;
mod checkpoint;
mod config;
mod denoiser;
mod error;
pub mod keys;
pub mod model;

pub use backend::{UnetAutodiffBackend, UnetBackend};
pub use checkpoint::{
    infer_config, infer_config_from_shapes, load_checkpoint, read_metadata, read_state_dict,
    read_state_dict_with_limits, CheckpointFormat, PytorchLimits, ShapedValues, StateDict, Weights,
    CONFIG_METADATA_KEY,
};
pub use config::{UnetConfig, NUM_MEM_KV};
pub use error::{ShapeMismatch, UnetError};
pub use kernel_ops::{
    bf16_available, bf16_dot_speedup, conv_precision, set_conv_precision, Bf16Unavailable, ConvPrecision,
};
pub use model::Unet;
