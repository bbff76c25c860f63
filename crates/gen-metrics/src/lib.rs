//! # gen-metrics
//!
//! Evaluation of generative models on feature matrices `[n, d]` (f64, CPU), and a ResNet-18
//! feature extractor for single-channel lensing images.
//!
//! Statistics (all f64, exact where the definition allows):
//! - [`frechet`]: Fréchet distance / FID with unbiased covariances through a symmetric
//!   eigenproblem, reusable [`GaussianStats`] (pytorch-fid `.npz` layout), FID-infinity.
//! - [`kernel`]: exact Rényi kernel entropy (order 2, Gaussian kernel, many bandwidths from one
//!   streamed Gram pass), Monte-Carlo RKE, RRKE, Vendi.
//! - [`kid`]: KID (unbiased MMD^2, cubic kernel, subsets).
//! - [`prdc`]: precision / recall / density / coverage.
//!
//! ## Feature flags
//! None. Backends are chosen by the caller (the extractor is generic over `burn`'s `Backend`).
#![warn(missing_docs)]

pub mod error;
pub mod features;
pub mod frechet;
pub mod kernel;
pub mod kid;
mod linalg;
mod simd;
pub mod prdc;

pub use error::{MetricsError, Result};
pub use features::load_features_npy;
pub use frechet::{fid_infinity, frechet_distance, frechet_distance_from_features, FidInfinity, FidInfinityConfig, FrechetDistance, GaussianStats};
pub use kernel::{rke_exact, rke_mc, rrke, vendi};
pub use kid::{kid, mmd2_unbiased_cubic, Kid, KidConfig};
pub use prdc::{prdc, Prdc};
pub mod report;
pub use report::{bandwidth_key, evaluate_features, real_vs_real, EvalConfig, EvaluationReport, NoiseFloor, TwoSample};
pub mod extractor;
pub use extractor::{ExtractorConfig, FeatureExtractor, ResNet18};
pub mod train;
pub use train::{ensure_extractor, simulate_images, train_classifier, train_from_recipe, ExtractorRecipe, TrainConfig, TrainReport};
