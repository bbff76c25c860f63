//! The crate's single error type.

use std::path::PathBuf;

/// Everything that can go wrong in `gen-metrics`.
///
/// Each variant names the input (a label such as `"real features"` or a file path), the
/// parameter or the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A feature matrix holds NaN or an infinity.
    #[error("{what}: non-finite value {value} at row {row}, column {col}")]
    NonFinite {
        /// Which input (label or path).
        what: String,
        /// Row of the first offending value.
        row: usize,
        /// Column of the first offending value.
        col: usize,
        /// The offending value.
        value: f64,
    },
    /// Two inputs disagree on the feature dimension.
    #[error("dimension mismatch: {left} has dimension {left_dim} but {right} has dimension {right_dim}")]
    DimensionMismatch {
        /// First input.
        left: String,
        /// Its dimension.
        left_dim: usize,
        /// Second input.
        right: String,
        /// Its dimension.
        right_dim: usize,
    },
    /// Too few samples (rows) for the statistic.
    #[error("{what}: needs at least {needed} samples, got {got}")]
    TooFewSamples {
        /// Which input.
        what: String,
        /// Minimum number of rows.
        needed: usize,
        /// Rows given.
        got: usize,
    },
    /// A file declares a feature dimension above the ceiling (the Fréchet distance needs a
    /// `[d, d]` covariance: 8 d^2 bytes, 0.5 GB at the default ceiling of 8192).
    #[error(
        "{}: feature dimension {dim} is above the limit of {limit} (its covariance alone would take {} MB); \
         raise the limit through the API (load_features_npy_with_max_dim, GaussianStats::load_with_max_dim) \
         if this is meant",
        path.display(), (*dim as u128 * *dim as u128 * 8) / 1_000_000
    )]
    FeatureDimTooLarge {
        /// The file.
        path: std::path::PathBuf,
        /// The dimension it declares.
        dim: usize,
        /// The ceiling.
        limit: usize,
    },
    /// An image holds NaN or an infinity (physical statistics).
    #[error("{what}: image {index} has non-finite pixel {value} at row {row}, column {col}")]
    NonFiniteImage {
        /// Which set (`"real images"`, `"generated images"`, ...).
        what: String,
        /// Index of the image in its set.
        index: usize,
        /// Row of the first offending pixel.
        row: usize,
        /// Column of the first offending pixel.
        col: usize,
        /// The offending value.
        value: f64,
    },
    /// Real and generated images differ in size; the statistics are only comparable at one size.
    #[error("image size mismatch: real images are {real_height}x{real_width} (HxW) but generated images are {generated_height}x{generated_width}; resize one set to the other's size first")]
    ImageSizeMismatch {
        /// Height of the real images.
        real_height: usize,
        /// Width of the real images.
        real_width: usize,
        /// Height of the generated images.
        generated_height: usize,
        /// Width of the generated images.
        generated_width: usize,
    },
    /// Drawing a plot failed.
    #[error("plot {path}: {message}")]
    Plot {
        /// The file being written.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A feature matrix with zero columns.
    #[error("{what}: feature dimension is 0")]
    EmptyDimension {
        /// Which input.
        what: String,
    },
    /// A kernel bandwidth that is not a finite positive number.
    #[error("kernel bandwidth must be finite and > 0, got {0}")]
    InvalidBandwidth(f64),
    /// Any other parameter out of its domain.
    #[error("invalid parameter `{name}` = {value}: {reason}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// The value given, formatted.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A `.npy`/`.npz` file could not be read or has the wrong shape/type.
    #[error("cannot read array file {path}: {message}")]
    ArrayFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A numerical decomposition failed (should not happen on finite input).
    #[error("linear algebra failure in {0}")]
    Linalg(String),
    /// A model checkpoint could not be loaded or saved.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Serialising a report failed.
    #[error("JSON error on {path}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// `Result` with [`MetricsError`].
pub type Result<T> = std::result::Result<T, MetricsError>;
