//! [`UnetError`]: everything that can go wrong building, running, loading or saving a U-Net.

use std::path::PathBuf;

/// A tensor whose shape in the file differs from what the config needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// PyTorch key.
    pub key: String,
    /// Shape the config needs (PyTorch layout).
    pub expected: Vec<usize>,
    /// Shape found in the file (PyTorch layout).
    pub found: Vec<usize>,
}

fn list(keys: &[String]) -> String {
    const MAX: usize = 12;
    let mut s = keys.iter().take(MAX).map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
    if keys.len() > MAX {
        s += &format!(" and {} more", keys.len() - MAX);
    }
    s
}

fn shapes(m: &[ShapeMismatch]) -> String {
    const MAX: usize = 8;
    let mut s = m
        .iter()
        .take(MAX)
        .map(|m| format!("`{}`: expected {:?}, found {:?}", m.key, m.expected, m.found))
        .collect::<Vec<_>>()
        .join("; ");
    if m.len() > MAX {
        s += &format!("; and {} more", m.len() - MAX);
    }
    s
}

/// Errors of the `unet` crate.
#[derive(Debug, thiserror::Error)]
pub enum UnetError {
    /// The configuration cannot describe a network.
    #[error("invalid U-Net config: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },

    /// An input tensor does not fit the network.
    #[error("bad U-Net input: {reason}")]
    BadInput {
        /// What is wrong.
        reason: String,
    },

    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// File at fault.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },

    /// The file is not a checkpoint this crate reads, or it is damaged (truncated, corrupt).
    #[error("{}: not a readable {expected} file: {reason}", path.display())]
    NotACheckpoint {
        /// File at fault.
        path: PathBuf,
        /// Format it was read as (e.g. "PyTorch (.pth/.pt zip or legacy pickle)").
        expected: String,
        /// What the reader reported.
        reason: String,
    },

    /// The file holds tensors but not the U-Net weights asked for.
    #[error("{}: {reason}", path.display())]
    WrongContents {
        /// File at fault.
        path: PathBuf,
        /// What is missing or unexpected, and what the file holds instead.
        reason: String,
    },

    /// A checkpoint of denoising-diffusion-pytorch < 2.0 (GroupNorm blocks, wrapped attention).
    #[error(
        "{}: key `{key}` comes from denoising-diffusion-pytorch < 2.0, which is not supported: \
         version 2.0 replaced the GroupNorm of every block by RMSNorm (a single gain `g`, no \
         bias) and rebuilt the attention layers (memory key/values, no Residual/PreNorm \
         wrappers), so these weights describe a different network and cannot be converted \
         without changing its outputs. Load it with denoising-diffusion-pytorch 1.x, or retrain \
         with 2.x",
        path.display()
    )]
    LegacyCheckpoint {
        /// File at fault.
        path: PathBuf,
        /// A key that identifies the old layout (e.g. `downs.0.0.block1.norm.weight`).
        key: String,
    },

    /// The file holds a U-Net of a different configuration than the one asked for.
    #[error(
        "{}: the weights do not fit {given}; the file holds {fits} (pass that config, or let \
         the loader infer it)",
        path.display()
    )]
    ConfigMismatch {
        /// File at fault.
        path: PathBuf,
        /// The config that was asked for (Python-like description).
        given: String,
        /// A config that fits the file (Python-like description).
        fits: String,
        /// The fitting config itself.
        inferred: Box<crate::UnetConfig>,
    },

    /// Parameters the network needs are absent from the file.
    #[error("{}: missing {} key(s): {}", path.display(), keys.len(), list(keys))]
    MissingKeys {
        /// File at fault.
        path: PathBuf,
        /// PyTorch keys that are absent.
        keys: Vec<String>,
    },

    /// The file holds tensors that the network has no place for.
    #[error("{}: {} unexpected key(s): {}", path.display(), keys.len(), list(keys))]
    UnexpectedKeys {
        /// File at fault.
        path: PathBuf,
        /// Keys (as in the file, after removing the wrapper prefix) that are not U-Net parameters.
        keys: Vec<String>,
    },

    /// Tensors of the right name but the wrong shape.
    #[error("{}: {} shape mismatch(es): {}", path.display(), mismatches.len(), shapes(mismatches))]
    ShapeMismatch {
        /// File at fault.
        path: PathBuf,
        /// Every mismatching tensor.
        mismatches: Vec<ShapeMismatch>,
    },

    /// A tensor of an element type that cannot be converted to float.
    #[error("{}: tensor `{key}` has unsupported element type {dtype}", path.display())]
    UnsupportedDType {
        /// File at fault.
        path: PathBuf,
        /// Key at fault.
        key: String,
        /// Its element type.
        dtype: String,
    },

    /// A reader's ceiling was reached: the file declares or needs more than
    /// [`crate::PytorchLimits`] allows (raise it for a trusted file).
    #[error(
        "{}: {what} is {value}, above the limit of {limit} (PytorchLimits::{setting}; a trusted file can be read \
         with a higher limit through unet::read_state_dict_with_limits)",
        path.display()
    )]
    LimitExceeded {
        /// File at fault.
        path: PathBuf,
        /// What was counted or declared.
        what: String,
        /// Its value.
        value: u64,
        /// The ceiling.
        limit: u64,
        /// The field of [`crate::PytorchLimits`] that sets it.
        setting: &'static str,
    },

    /// The data of a tensor is not in the file as its description says: missing, shorter than
    /// its shape needs, or failing its checksum.
    #[error("{}: the data of tensor `{key}` {reason}", path.display())]
    MissingTensorData {
        /// File at fault.
        path: PathBuf,
        /// The tensor's key as in the file (wrapper prefix included).
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// Writing a checkpoint failed.
    #[error("{}: cannot write checkpoint: {reason}", path.display())]
    Write {
        /// File at fault.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}
