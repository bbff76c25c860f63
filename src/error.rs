//! The errors of this crate's training, sampling and pipeline code, grouped in one enum each
//! naming the file or value at fault.

use std::path::{Path, PathBuf};

use diffusion_core::DiffusionError;
use unet::UnetError;

/// Errors of the training loop. Each names the file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An invalid configuration value.
    #[error("invalid training configuration: `{field}` = {value}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value, formatted.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The loss became NaN or infinite.
    #[error("the loss became non-finite ({loss}) at step {step}; training stopped. The last good checkpoint is {last_checkpoint}")]
    NonFiniteLoss {
        /// Optimizer step (1-based) at which it happened.
        step: usize,
        /// The value.
        loss: f32,
        /// The last checkpoint written, if any.
        last_checkpoint: String,
    },
    /// A checkpoint could not be read (missing, corrupt or from another configuration).
    #[error("cannot resume from checkpoint {path}: {reason}")]
    Resume {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A diffusion error (bad schedule, shapes...).
    #[error(transparent)]
    Diffusion(#[from] DiffusionError),
    /// A U-Net error (bad config, checkpoint...).
    #[error(transparent)]
    Unet(#[from] UnetError),
    /// A data error.
    #[error(transparent)]
    Data(#[from] lens_data::error::LensDataError),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

/// Everything the library's commands ([`crate::sample`], [`crate::pipeline`],
/// [`crate::evaluate`], ...) can fail with, grouped by where it comes from.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Training, resuming or a checkpoint folder.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The diffusion process or a sampler.
    #[error(transparent)]
    Diffusion(#[from] DiffusionError),
    /// The U-Net or one of its checkpoint files.
    #[error(transparent)]
    Unet(#[from] UnetError),
    /// Reading, simulating or writing lensing images.
    #[error(transparent)]
    Data(#[from] lens_data::LensDataError),
    /// Features, metrics or the feature extractor.
    #[error(transparent)]
    Metrics(#[from] gen_metrics::MetricsError),
    /// Writing an image or a grid.
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A setting (a flag, an option) out of its range; names the setting, its value and why.
    #[error("invalid {name} = {value}: {reason}")]
    Invalid {
        /// The setting, e.g. `--batch-size`.
        name: String,
        /// Its value.
        value: String,
        /// What is allowed.
        reason: String,
    },
}

impl Error {
    /// An [`Error::Invalid`].
    pub fn invalid(name: impl Into<String>, value: impl ToString, reason: impl Into<String>) -> Self {
        Self::Invalid { name: name.into(), value: value.to_string(), reason: reason.into() }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io { path: path.to_path_buf(), source }
    }
}
