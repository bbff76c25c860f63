//! Checkpoints: PyTorch state dicts (three wrappers), safetensors with PyTorch names, burnpack.
//!
//! - `pytorch`: `.pth`/`.pt` files of denoising-diffusion-pytorch (bare `Unet`,
//!   `GaussianDiffusion`, Trainer `model`/`ema`), found by their key prefixes.
//! - `safetensors`: our exports with PyTorch names, and files saved by `safetensors.torch`.
//! - `burnpack`: our own checkpoints, the config (and any caller metadata) in the header.
//! - `state_dict`: [`StateDict`], the weights under PyTorch keys, checked against a config and
//!   converted to burn's layout.
//! - `infer`: the [`UnetConfig`] a set of PyTorch shapes implies.
//!
//! Formats are told apart by their first bytes, never by the file name.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use burn::tensor::backend::Backend;

use crate::config::UnetConfig;
use crate::error::UnetError;
use crate::model::Unet;

mod burnpack;
mod infer;
mod pytorch;
mod safetensors;
mod state_dict;
mod torch_guard;

pub use infer::infer_config_from_shapes;
pub use state_dict::{ShapedValues, StateDict};
pub use torch_guard::PytorchLimits;

/// Metadata key under which our files store the [`UnetConfig`] as JSON.
pub const CONFIG_METADATA_KEY: &str = "unet_config";

/// Which weights of a checkpoint to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weights {
    /// The online (trained) weights: the only weights of a state dict, `model` of a Trainer
    /// checkpoint.
    #[default]
    Model,
    /// The exponential-moving-average weights of a Trainer checkpoint (`ema` entry; what
    /// denoising-diffusion-pytorch's Trainer samples with).
    Ema,
}

impl std::str::FromStr for Weights {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "model" | "online" => Ok(Self::Model),
            "ema" => Ok(Self::Ema),
            other => Err(format!("unknown weights `{other}`; expected `model` or `ema`")),
        }
    }
}

/// The kind of file a [`StateDict`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// `torch.save(unet.state_dict())` (the original DeepLense `diffusion_model.pth`).
    UnetStateDict,
    /// `torch.save(diffusion.state_dict())`: keys `model.*` plus schedule buffers.
    DiffusionStateDict,
    /// Trainer checkpoint `{step, model, opt, ema, scaler, version}`, online weights.
    TrainerModel,
    /// Trainer checkpoint, EMA weights (`ema` entry, prefix `ema_model.model.`).
    TrainerEma,
    /// The state dict of an `EMA` object alone (prefix `ema_model.model.`).
    EmaStateDict,
    /// safetensors with PyTorch key names (what [`Unet::export_safetensors`] writes).
    Safetensors,
    /// A state dict nested under some other prefix (e.g. `state_dict.` of a Lightning-style
    /// checkpoint); see [`StateDict::prefix`].
    Prefixed,
}

impl CheckpointFormat {
    fn describe(self) -> &'static str {
        match self {
            Self::UnetStateDict => "a bare Unet state_dict",
            Self::DiffusionStateDict => "a GaussianDiffusion state_dict",
            Self::TrainerModel => "a Trainer checkpoint (online weights)",
            Self::TrainerEma => "a Trainer checkpoint (EMA weights)",
            Self::EmaStateDict => "an EMA state_dict",
            Self::Safetensors => "a safetensors file",
            Self::Prefixed => "a state dict under a custom prefix",
        }
    }
}

fn io_err(path: &Path, source: std::io::Error) -> UnetError {
    UnetError::Io { path: path.to_path_buf(), source }
}

/// The first bytes of a file, to tell formats apart.
fn sniff(path: &Path) -> Result<Vec<u8>, UnetError> {
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut buf = vec![0u8; 16];
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..]).map_err(|e| io_err(path, e))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    buf.truncate(n);
    Ok(buf)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Pytorch,
    Safetensors,
    Burnpack,
}

fn file_kind(path: &Path) -> Result<FileKind, UnetError> {
    let head = sniff(path)?;
    if head.len() >= 4 && &head[..4] == b"NRUB" {
        return Ok(FileKind::Burnpack);
    }
    if head.len() >= 9 && head[8] == b'{' {
        return Ok(FileKind::Safetensors);
    }
    Ok(FileKind::Pytorch)
}

/// Reads the U-Net weights of a PyTorch checkpoint (any of the three wrappers, detected from the
/// keys) or of a safetensors file, under their PyTorch keys.
///
/// `weights` chooses between the online and the EMA weights of a Trainer checkpoint; asking for
/// EMA weights from a file that has none is an error.
pub fn read_state_dict(path: &Path, weights: Weights) -> Result<StateDict, UnetError> {
    read_state_dict_with_limits(path, weights, &PytorchLimits::default())
}

/// [`read_state_dict`] with other ceilings for PyTorch files than the defaults (a trusted file
/// that exceeds one; see [`PytorchLimits`] and [`UnetError::LimitExceeded`]). Load the model
/// with [`StateDict::into_unet`].
pub fn read_state_dict_with_limits(
    path: &Path,
    weights: Weights,
    limits: &PytorchLimits,
) -> Result<StateDict, UnetError> {
    match file_kind(path)? {
        FileKind::Pytorch => pytorch::read_pytorch(path, weights, limits),
        FileKind::Safetensors => safetensors::read_safetensors(path, weights),
        FileKind::Burnpack => Err(UnetError::NotACheckpoint {
            path: path.to_path_buf(),
            expected: "PyTorch or safetensors".into(),
            reason: "it is a burnpack file; load it with Unet::load or load_checkpoint".into(),
        }),
    }
}

/// Infers the config of the U-Net stored in a checkpoint (any format [`load_checkpoint`] reads).
pub fn infer_config(path: &Path, weights: Weights) -> Result<UnetConfig, UnetError> {
    if file_kind(path)? == FileKind::Burnpack {
        return burnpack::read_config(path);
    }
    read_state_dict(path, weights)?.infer_config()
}

/// Loads a U-Net from any checkpoint this crate reads: PyTorch (bare `Unet`, `GaussianDiffusion`,
/// Trainer), safetensors with PyTorch names, or our burnpack files. The format is detected from
/// the content.
///
/// With `config: None` the config is taken from the file's metadata (our files) or inferred from
/// the tensor shapes (`dropout` 0, `sinusoidal_pos_emb_theta` 10000 then, the library defaults).
/// With `Some(config)`, a file that holds another architecture is a
/// [`UnetError::ConfigMismatch`] naming the config that would fit.
pub fn load_checkpoint<B: Backend>(
    path: &Path,
    weights: Weights,
    config: Option<&UnetConfig>,
    device: &B::Device,
) -> Result<Unet<B>, UnetError> {
    if file_kind(path)? == FileKind::Burnpack {
        if weights == Weights::Ema {
            return Err(UnetError::WrongContents {
                path: path.to_path_buf(),
                reason: "EMA weights were asked for, but a burnpack file holds a single set of \
                         weights; load it with Weights::Model (`--weights model`)"
                    .into(),
            });
        }
        let model = Unet::<B>::load(path, device)?;
        if let Some(c) = config {
            if !c.same_architecture(model.config()) {
                return Err(UnetError::ConfigMismatch {
                    path: path.to_path_buf(),
                    given: c.describe(),
                    fits: model.config().describe(),
                    inferred: Box::new(model.config().clone()),
                });
            }
        }
        return Ok(model);
    }
    read_state_dict(path, weights)?.into_unet(config, device)
}

/// The string metadata stored in one of our checkpoints: a burnpack file written by
/// [`Unet::save`] / [`Unet::save_with_metadata`], or a safetensors export. Always holds
/// [`CONFIG_METADATA_KEY`] for our files; PyTorch files have none (an empty map).
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>, UnetError> {
    match file_kind(path)? {
        FileKind::Burnpack => burnpack::read_metadata(path),
        FileKind::Safetensors => safetensors::read_metadata(path),
        FileKind::Pytorch => Ok(BTreeMap::new()),
    }
}

/// Writes through a temporary sibling, then renames (see the `atomic-file` crate).
fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), UnetError> {
    atomic_file::write_with(path, write)
        .map_err(|e| UnetError::Write { path: path.to_path_buf(), reason: e.to_string() })
}
