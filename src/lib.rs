//! # lensing-diffusion
//!
//! Denoising diffusion models for strong gravitational-lensing images: train, sample and
//! evaluate, in Rust on [burn](https://burn.dev). This root crate re-exports the four workspace
//! crates and holds what wires them together (the training loop, image grids, plots); the
//! commands live in `examples/`.
//!
//! - [`diffusion_core`]: schedules, DDPM objectives, samplers (DDPM, DDIM, DPM-Solver++).
//! - [`unet`]: the denoising-diffusion-pytorch U-Net, loading and writing its checkpoints.
//! - [`lens_data`]: lensing datasets, resizing, and a lenstronomy-faithful simulator.
//! - [`gen_metrics`]: feature extractor, FID, RKE/RRKE and friends.
//!
//! ## Feature flags
//! - `cuda`: burn's CUDA backend (with `fusion` and `autotune`), selectable with `--backend cuda`.
//! - `cuda-untuned`: the same backend without `autotune` (one kernel compiled per operation and
//!   shape, none timed); the CUDA code paths are under this feature, which `cuda` implies.
//! - `x86-v4` (default): Flex's AVX-512 gemm kernels, selected at run time when the CPU has
//!   AVX-512F (the AVX2/FMA kernels otherwise).
#![warn(missing_docs)]

pub use diffusion_core;
pub use gen_metrics;
pub use lens_data;
pub use unet;

pub mod alloc;
pub mod backend;
pub mod data;
pub mod extractor;
pub mod images;
pub mod parallel;
pub mod plot;
pub mod run;
pub mod train;
