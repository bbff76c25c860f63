//! # gen-metrics
//!
//! Evaluation of generative models on feature matrices `[n, d]` (f64, CPU), and a ResNet-18
//! feature extractor for single-channel lensing images trained on simulated DeepLense data.
//!
//! Statistics (all f64; parity with pytorch-fid / rke-score / prdc to 1e-9 relative):
//! - [`frechet`]: Fréchet distance / FID with unbiased covariances through a symmetric
//!   eigenproblem, reusable [`GaussianStats`] (pytorch-fid `.npz` layout), FID-infinity.
//! - [`kernel`]: exact Rényi kernel entropy (order 2, Gaussian kernel, several bandwidths from
//!   one streamed, tiled Gram pass), Monte-Carlo RKE, RRKE, Vendi.
//! - [`kid`]: KID (unbiased MMD^2, cubic kernel, seeded subsets, mean and std).
//! - [`prdc`]: precision / recall / density / coverage (prdc conventions).
//! - [`bootstrap`]: seeded bootstrap confidence intervals of FID and KID (both sets resampled
//!   with replacement), so that two runs can be told apart from the noise of the sample.
//! - [`report`]: [`evaluate_features`] computes everything `lensing-diffusion evaluate` reports
//!   (JSON keys `fid`, `rke_real`, `rke_generated`, `rrke`, `vendi_generated`, `kid`, ...)
//!   and the real-vs-real noise floor ([`real_vs_real`]).
//! - [`physics`]: physical statistics of lensing images (Einstein radius, ring width and
//!   multipoles, radial profile, power spectrum, pixel histogram, asymmetry, ellipticity),
//!   real vs generated with a real-vs-real floor, and their plots ([`physics::compare`]).
//! - [`extractor`], [`train`]: [`ResNet18`] in burn (any `Backend`), torchvision state-dict
//!   loading, our checkpoints and classifier training on labelled images
//!   ([`train_classifier`]). The lensing recipe that simulates its training images lives in the
//!   `lensing-diffusion` crate (`lensing_diffusion::classifier`): this crate depends on no lensing
//!   code.
//!
//! Bad input (NaN/inf, mismatched dimensions, too few rows, bandwidth <= 0, bad files) is a
//! [`MetricsError`] naming the input at fault.
//!
//! ```
//! use gen_metrics::{evaluate_features, EvalConfig};
//! let real = ndarray::Array2::from_shape_fn((60, 4), |(i, j)| ((i * 7 + j * 3) % 11) as f64);
//! let gen = ndarray::Array2::from_shape_fn((50, 4), |(i, j)| ((i * 5 + j) % 13) as f64);
//! let cfg = EvalConfig { bandwidths: vec![4.0], kid: gen_metrics::KidConfig { num_subsets: 5, subset_size: 20, seed: 0 }, ..EvalConfig::default() };
//! let report = evaluate_features(real.view(), gen.view(), None, &cfg).unwrap();
//! assert!(report.fid > 0.0 && report.rke_generated["4.0"] >= 1.0);
//! ```
//!
//! ## Feature flags
//! None. Backends are chosen by the caller (the extractor and training are generic over
//! burn's `Backend` / `AutodiffBackend`).
#![warn(missing_docs)]

pub mod bootstrap;
pub mod error;
pub mod features;
pub mod frechet;
// The AVX-512 covariance product; other targets use faer's.
#[cfg(target_arch = "x86_64")]
mod gram;
pub mod kernel;
pub mod kid;
mod linalg;
pub mod physics;
pub mod prdc;
mod simd;
mod symeig;
pub use physics::{ImageStats, PhysicsComparison, PhysicsSet, StatComparison};

pub use bootstrap::{fid_interval, kid_interval, BootstrapConfig, Interval};
pub use error::{MetricsError, Result};
pub use features::{load_features_npy, load_features_npy_with_max_dim, MAX_FEATURE_DIM};
pub use frechet::{
    fid_infinity, frechet_distance, frechet_distance_from_features, FidInfinity, FidInfinityConfig, FrechetDistance,
    GaussianStats,
};
pub use kernel::{rke_exact, rke_mc, rrke, vendi};
pub use kid::{kid, mmd2_unbiased_cubic, Kid, KidConfig};
pub use prdc::{prdc, Prdc};
pub mod report;
pub use report::{bandwidth_key, evaluate_features, real_vs_real, EvalConfig, EvaluationReport, NoiseFloor, TwoSample};
pub mod extractor;
pub use extractor::{ExtractorConfig, FeatureExtractor, ResNet18};
/// The backend traits the extractor needs (its convolution and batch norm): every burn backend
/// this workspace uses implements them.
pub use kernel_ops::{KernelAutodiffBackend, KernelBackend};
pub mod train;
pub use train::{train_classifier, TrainConfig, TrainReport};
