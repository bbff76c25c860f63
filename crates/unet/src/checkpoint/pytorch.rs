//! PyTorch `.pth`/`.pt` checkpoints of denoising-diffusion-pytorch, read with burn-store's
//! pickle reader; the U-Net is found by its key prefix.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::backend::Backend;
use burn_store::pytorch::PytorchReader;
use burn_store::TensorSnapshot;

use super::torch_guard::{self, PytorchLimits};
use super::{io_err, CheckpointFormat, StateDict, Weights};
use crate::config::UnetConfig;
use crate::error::UnetError;
use crate::model::Unet;

/// Prefixes under which a U-Net sits, by weights choice, with the format each one means.
const MODEL_PREFIXES: [(&str, CheckpointFormat); 3] = [
    ("", CheckpointFormat::UnetStateDict),
    ("model.", CheckpointFormat::DiffusionStateDict),
    ("model.model.", CheckpointFormat::TrainerModel),
];
const EMA_PREFIXES: [(&str, CheckpointFormat); 2] =
    [("ema.ema_model.model.", CheckpointFormat::TrainerEma), ("ema_model.model.", CheckpointFormat::EmaStateDict)];

fn not_pytorch(path: &Path, reason: impl ToString) -> UnetError {
    UnetError::NotACheckpoint {
        path: path.to_path_buf(),
        expected: "PyTorch (.pth/.pt)".into(),
        reason: reason.to_string(),
    }
}

/// First bytes of PyTorch's pre-1.6 serialization: PROTO 2, the LONG1 magic number, STOP.
const LEGACY_MAGIC: [u8; 15] =
    [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];

/// Why a file that is not a zip archive is refused (see `torch_guard`).
fn not_a_zip(path: &Path) -> Result<UnetError, UnetError> {
    let mut head = vec![0u8; 263];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        let mut n = 0;
        while n < head.len() {
            let k = f.read(&mut head[n..]).map_err(|e| io_err(path, e))?;
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    };
    head.truncate(n);
    Ok(not_pytorch(
        path,
        if head.starts_with(b"PK\x03\x04") {
            "a zip archive that cannot be read, truncated or damaged".to_string()
        } else if head.starts_with(&LEGACY_MAGIC) {
            "a checkpoint in the serialization of PyTorch < 1.6, which this loader does not read (it \
             cannot check where that format keeps the weights); load it in PyTorch and save it again \
             with torch.save"
                .to_string()
        } else if head.len() >= 262 && &head[257..262] == b"ustar" {
            "a TAR checkpoint (torchvision before PyTorch 1.6), which this loader does not read; load \
             it in PyTorch and save it again with torch.save"
                .to_string()
        } else {
            "not a PyTorch zip archive (what torch.save writes since PyTorch 1.6)".to_string()
        },
    ))
}

pub(super) fn read_pytorch(path: &Path, weights: Weights, limits: &PytorchLimits) -> Result<StateDict, UnetError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.len() == 0 {
        return Err(not_pytorch(path, "the file is empty"));
    }
    // burn-store's reader is guarded first: archive sizes, data.pkl's opcodes, the tensors'
    // storages (torch_guard.rs).
    let Some(mut archive) = torch_guard::open_zip(path)? else {
        return Err(not_a_zip(path)?);
    };
    let index = torch_guard::guard_zip(path, &mut archive, meta.len(), limits)?;
    let owned = path.to_path_buf();
    let reader = std::panic::catch_unwind(move || PytorchReader::new(&owned))
        .map_err(|_| not_pytorch(path, "the PyTorch reader crashed on this file"))?
        .map_err(|e| not_pytorch(path, format!("a zip archive that cannot be read, truncated or damaged ({e})")))?;
    let all: HashMap<String, TensorSnapshot> = reader.into_tensors();
    if all.is_empty() {
        return Err(not_pytorch(path, "it holds no tensors"));
    }
    let (prefix, format, tensors) = select_unet(path, weights, all)?;
    torch_guard::verify(path, &index, &mut archive, &prefix, tensors.iter(), limits)?;
    Ok(StateDict::new(path, format, prefix, tensors, None))
}

/// Finds the U-Net inside a flat map of tensors: the known wrappers first, then any single
/// other prefix (e.g. `state_dict.`); returns the prefix, the format and the stripped tensors.
pub(super) fn select_unet(
    path: &Path,
    weights: Weights,
    all: HashMap<String, TensorSnapshot>,
) -> Result<(String, CheckpointFormat, BTreeMap<String, TensorSnapshot>), UnetError> {
    let has = |k: &str| all.contains_key(k);
    let prefixes: &[(&str, CheckpointFormat)] = match weights {
        Weights::Model => &MODEL_PREFIXES,
        Weights::Ema => &EMA_PREFIXES,
    };
    let found = prefixes.iter().find(|(p, _)| has(&format!("{p}init_conv.weight")));
    let (prefix, format) = match found {
        Some(&(p, f)) => (p.to_string(), f),
        None => {
            // Any other single prefix, e.g. `state_dict.`; EMA weights sit under `ema_model.`,
            // online weights anywhere but under an `ema` entry.
            let mut candidates: Vec<String> = all
                .keys()
                .filter_map(|k| k.strip_suffix("init_conv.weight"))
                .filter(|p| p.is_empty() || p.ends_with('.'))
                .filter(|p| match weights {
                    Weights::Ema => p.contains("ema_model."),
                    Weights::Model => !p.split('.').any(|seg| seg.contains("ema")),
                })
                .map(String::from)
                .collect();
            candidates.sort();
            match candidates.len() {
                1 => (candidates.remove(0), CheckpointFormat::Prefixed),
                0 => return Err(explain_no_unet(path, weights, &all)),
                _ => {
                    return Err(UnetError::WrongContents {
                        path: path.to_path_buf(),
                        reason: format!(
                            "the file holds {} U-Nets (under the prefixes {}); this loader \
                             cannot tell which one is meant",
                            candidates.len(),
                            candidates.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
                        ),
                    })
                }
            }
        }
    };
    let tensors: BTreeMap<String, TensorSnapshot> =
        all.into_iter().filter_map(|(k, v)| k.strip_prefix(prefix.as_str()).map(|s| (s.to_string(), v))).collect();
    Ok((prefix, format, tensors))
}

fn explain_no_unet(path: &Path, weights: Weights, all: &HashMap<String, TensorSnapshot>) -> UnetError {
    let mut keys: Vec<&String> = all.keys().collect();
    keys.sort();
    let has_ema = all.keys().any(|k| k.contains("ema_model.model.init_conv.weight"));
    let has_model = MODEL_PREFIXES.iter().any(|(p, _)| all.contains_key(&format!("{p}init_conv.weight")));
    let reason = match weights {
        Weights::Ema if has_model && !has_ema => {
            let f = MODEL_PREFIXES
                .iter()
                .find(|(p, _)| all.contains_key(&format!("{p}init_conv.weight")))
                .map(|(_, f)| f.describe())
                .unwrap_or("a state dict");
            format!(
                "EMA weights were asked for, but the file is {f} with a single set of weights; \
                 load it with Weights::Model (`--weights model`)"
            )
        }
        _ => {
            let sample: Vec<String> = keys.iter().take(8).map(|k| format!("`{k}`")).collect();
            format!(
                "no denoising-diffusion-pytorch Unet found (looked for `init_conv.weight` under \
                 the prefixes {}); the file holds {} tensors, e.g. {}",
                match weights {
                    Weights::Model => "``, `model.`, `model.model.`",
                    Weights::Ema => "`ema.ema_model.model.`, `ema_model.model.`",
                },
                all.len(),
                sample.join(", ")
            )
        }
    };
    UnetError::WrongContents { path: path.to_path_buf(), reason }
}

impl<B: Backend> Unet<B> {
    /// Loads a PyTorch checkpoint (bare `Unet`, `GaussianDiffusion` or Trainer; see
    /// [`read_state_dict`]).
    pub fn from_pytorch(
        path: &Path,
        weights: Weights,
        config: Option<&UnetConfig>,
        device: &B::Device,
    ) -> Result<Self, UnetError> {
        read_pytorch(path, weights, &PytorchLimits::default())?.into_unet(config, device)
    }
}
