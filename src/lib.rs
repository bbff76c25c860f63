//! # lensing-diffusion
//!
//! Denoising diffusion models for strong gravitational-lensing images: train, sample and
//! evaluate, in Rust on [burn](https://burn.dev). This root crate re-exports the workspace
//! crates and holds what wires them together; the `lensing-diffusion` command (`src/main.rs`,
//! `src/cli/`) only parses flags and prints, calling the modules below.
//!
//! - Training: [`config`] (what defines a run, presets), [`trainer`] (the optimizer step),
//!   [`checkpoint`] (checkpoint folders, resume, the [`checkpoint::ModelCard`]), [`params`]
//!   (gradient norm, EMA), [`run`] (the loop: progress, loss log, time budget, Ctrl-C).
//! - [`sample`]: batched, multi-threaded sampling from any checkpoint.
//! - [`evaluate`]: images to features to metrics, with the shipped extractor by default.
//! - [`pipeline`]: the end-to-end job and its report; [`conditional`] and [`tstr`]: its
//!   evaluation of class-conditional generation.
//! - [`data`] (simulate or load, resized), [`classifier`] (the feature extractor's recipe,
//!   shipped and cached files), [`images`] and [`plot`] (PNG grids and curves), [`backend`]
//!   (the backend chosen at the edge), [`parallel`], [`alloc`].
//!
//! Re-exported workspace crates:
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
pub mod between_classes;
pub mod checkpoint;
pub mod classifier;
pub mod conditional;
pub mod config;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod images;
pub mod parallel;
pub mod params;
pub mod pipeline;
pub mod plot;
pub mod run;
pub mod sample;
pub mod trainer;
pub mod tstr;

pub use error::{Error, TrainError};
