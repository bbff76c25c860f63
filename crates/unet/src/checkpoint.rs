//! Checkpoints: PyTorch state dicts (three wrappers), safetensors with PyTorch names, burnpack.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use burn::module::ParamId;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, TensorData};
use burn_store::pytorch::PytorchReader;
use burn_store::{BurnpackStore, ModuleSnapshot, TensorSnapshot};

use crate::config::UnetConfig;
use crate::error::{ShapeMismatch, UnetError};
use crate::keys::{param_specs, Layout, ParamSpec};
use crate::model::Unet;

/// Metadata key under which our files store the [`UnetConfig`] as JSON.
pub const CONFIG_METADATA_KEY: &str = "unet_config";

/// A tensor's shape and its values in row-major order.
pub type ShapedValues = (Vec<usize>, Vec<f32>);

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
            other => Err(format!(
                "unknown weights `{other}`; expected `model` or `ema`"
            )),
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

/// U-Net weights read from a file, under their PyTorch keys (wrapper prefixes removed).
#[derive(Debug, Clone)]
pub struct StateDict {
    path: PathBuf,
    format: CheckpointFormat,
    prefix: String,
    tensors: BTreeMap<String, TensorSnapshot>,
    config_hint: Option<UnetConfig>,
}

/// Prefixes under which a U-Net sits, by weights choice, with the format each one means.
const MODEL_PREFIXES: [(&str, CheckpointFormat); 3] = [
    ("", CheckpointFormat::UnetStateDict),
    ("model.", CheckpointFormat::DiffusionStateDict),
    ("model.model.", CheckpointFormat::TrainerModel),
];
const EMA_PREFIXES: [(&str, CheckpointFormat); 2] = [
    ("ema.ema_model.model.", CheckpointFormat::TrainerEma),
    ("ema_model.model.", CheckpointFormat::EmaStateDict),
];

fn not_pytorch(path: &Path, reason: impl ToString) -> UnetError {
    UnetError::NotACheckpoint {
        path: path.to_path_buf(),
        expected: "PyTorch (.pth/.pt)".into(),
        reason: reason.to_string(),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> UnetError {
    UnetError::Io {
        path: path.to_path_buf(),
        source,
    }
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

fn read_pytorch(path: &Path, weights: Weights) -> Result<StateDict, UnetError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.len() == 0 {
        return Err(not_pytorch(path, "the file is empty"));
    }
    let owned = path.to_path_buf();
    let reader = std::panic::catch_unwind(move || PytorchReader::new(&owned))
        .map_err(|_| not_pytorch(path, "the PyTorch reader crashed on this file"))?
        .map_err(|e| {
            let zip = sniff(path)
                .map(|h| h.starts_with(b"PK\x03\x04"))
                .unwrap_or(false);
            if zip {
                not_pytorch(
                    path,
                    format!("a zip archive that cannot be read, truncated or damaged ({e})"),
                )
            } else {
                not_pytorch(
                    path,
                    format!("neither a PyTorch zip archive nor a legacy pickle checkpoint ({e})"),
                )
            }
        })?;
    let all: HashMap<String, TensorSnapshot> = reader.into_tensors();
    if all.is_empty() {
        return Err(not_pytorch(path, "it holds no tensors"));
    }
    let (prefix, format, tensors) = select_unet(path, weights, all)?;
    Ok(StateDict {
        path: path.to_path_buf(),
        format,
        prefix,
        tensors,
        config_hint: None,
    })
}

/// Finds the U-Net inside a flat map of tensors: the known wrappers first, then any single
/// other prefix (e.g. `state_dict.`); returns the prefix, the format and the stripped tensors.
fn select_unet(
    path: &Path,
    weights: Weights,
    all: HashMap<String, TensorSnapshot>,
) -> Result<(String, CheckpointFormat, BTreeMap<String, TensorSnapshot>), UnetError> {
    let has = |k: &str| all.contains_key(k);
    let prefixes: &[(&str, CheckpointFormat)] = match weights {
        Weights::Model => &MODEL_PREFIXES,
        Weights::Ema => &EMA_PREFIXES,
    };
    let found = prefixes
        .iter()
        .find(|(p, _)| has(&format!("{p}init_conv.weight")));
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
                            candidates
                                .iter()
                                .map(|c| format!("`{c}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })
                }
            }
        }
    };
    let tensors: BTreeMap<String, TensorSnapshot> = all
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix.as_str()).map(|s| (s.to_string(), v)))
        .collect();
    Ok((prefix, format, tensors))
}

fn explain_no_unet(
    path: &Path,
    weights: Weights,
    all: &HashMap<String, TensorSnapshot>,
) -> UnetError {
    let mut keys: Vec<&String> = all.keys().collect();
    keys.sort();
    let has_ema = all
        .keys()
        .any(|k| k.contains("ema_model.model.init_conv.weight"));
    let has_model = MODEL_PREFIXES
        .iter()
        .any(|(p, _)| all.contains_key(&format!("{p}init_conv.weight")));
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
    UnetError::WrongContents {
        path: path.to_path_buf(),
        reason,
    }
}

fn safetensors_err(path: &Path, e: impl ToString) -> UnetError {
    UnetError::NotACheckpoint {
        path: path.to_path_buf(),
        expected: "safetensors".into(),
        reason: e.to_string(),
    }
}

fn read_safetensors(path: &Path, weights: Weights) -> Result<StateDict, UnetError> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| safetensors_err(path, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| safetensors_err(path, e))?;
    let config_hint = match meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CONFIG_METADATA_KEY))
    {
        Some(json) => Some(serde_json::from_str::<UnetConfig>(json).map_err(|e| {
            UnetError::WrongContents {
                path: path.to_path_buf(),
                reason: format!("metadata `{CONFIG_METADATA_KEY}` is not a valid config: {e}"),
            }
        })?),
        None => None,
    };
    let mut all = HashMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F64 => DType::F64,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            other => {
                return Err(UnetError::UnsupportedDType {
                    path: path.to_path_buf(),
                    key: name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        let data = TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype);
        let snap = TensorSnapshot::from_data(
            data,
            name.split('.').map(String::from).collect(),
            vec![],
            ParamId::new(),
        );
        all.insert(name, snap);
    }
    let (prefix, _, tensors) = select_unet(path, weights, all)?;
    Ok(StateDict {
        path: path.to_path_buf(),
        format: CheckpointFormat::Safetensors,
        prefix,
        tensors,
        config_hint,
    })
}

/// Reads the U-Net weights of a PyTorch checkpoint (any of the three wrappers, detected from the
/// keys) or of a safetensors file, under their PyTorch keys.
///
/// `weights` chooses between the online and the EMA weights of a Trainer checkpoint; asking for
/// EMA weights from a file that has none is an error.
pub fn read_state_dict(path: &Path, weights: Weights) -> Result<StateDict, UnetError> {
    match file_kind(path)? {
        FileKind::Pytorch => read_pytorch(path, weights),
        FileKind::Safetensors => read_safetensors(path, weights),
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
        return read_burnpack_config(path);
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

fn get_shape(shapes: &BTreeMap<String, Vec<usize>>, key: &str) -> Option<Vec<usize>> {
    shapes.get(key).cloned()
}

/// Infers a [`UnetConfig`] from PyTorch keys and shapes (`Unet.state_dict()` naming).
///
/// Reads `init_conv` (channels, init_dim), `time_mlp.1` (dim), each down stage (dim_mults),
/// the attention layers (full or linear per stage, heads, dim_head) and `final_conv` (out_dim).
pub fn infer_config_from_shapes(
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<UnetConfig, String> {
    let need = |key: &str, rank: usize| -> Result<Vec<usize>, String> {
        match get_shape(shapes, key) {
            Some(s) if s.len() == rank => Ok(s),
            Some(s) => Err(format!("`{key}` has shape {s:?}, expected rank {rank}")),
            None => Err(format!("key `{key}` is missing")),
        }
    };
    let init = need("init_conv.weight", 4)?;
    let (init_dim, channels) = (init[0], init[1]);
    let t1 = need("time_mlp.1.weight", 2)?;
    let dim = t1[1];
    if t1[0] != 4 * dim {
        return Err(format!(
            "`time_mlp.1.weight` is {t1:?}; a Unet with dim {dim} has [4*dim, dim]"
        ));
    }
    let mut mults = Vec::new();
    let mut full = Vec::new();
    let mut heads_dh: Option<(usize, usize)> = None;
    let mut i = 0;
    while shapes.contains_key(&format!("downs.{i}.0.block1.proj.weight")) {
        let (out, is_last) = if let Some(s) = get_shape(shapes, &format!("downs.{i}.3.1.weight")) {
            (s[0], false)
        } else if let Some(s) = get_shape(shapes, &format!("downs.{i}.3.weight")) {
            (s[0], true)
        } else {
            return Err(format!(
                "down stage {i} has no downsample (`downs.{i}.3...`)"
            ));
        };
        if out % dim != 0 {
            return Err(format!(
                "down stage {i} outputs {out} channels, not a multiple of dim {dim}"
            ));
        }
        mults.push(out / dim);
        let is_full = shapes.contains_key(&format!("downs.{i}.2.to_out.weight"));
        full.push(is_full);
        let mem = need(&format!("downs.{i}.2.mem_kv"), 4)?;
        let hd = if is_full {
            (mem[1], mem[3])
        } else {
            (mem[1], mem[2])
        };
        match heads_dh {
            None => heads_dh = Some(hd),
            Some(prev) if prev != hd => {
                return Err(format!(
                "attention heads/dim_head differ between stages ({prev:?} vs {hd:?}); per-stage \
                     attention sizes are not supported"
            ))
            }
            _ => {}
        }
        i += 1;
        if is_last {
            break;
        }
    }
    if mults.is_empty() {
        return Err("no down stages (`downs.0.0.block1.proj.weight` is missing)".into());
    }
    let (heads, dim_head) = heads_dh.expect("at least one stage");
    let out_dim = need("final_conv.weight", 4)?[0];
    let n = mults.len();
    let default_full: Vec<bool> = (0..n).map(|j| j + 1 == n).collect();
    Ok(UnetConfig {
        dim,
        init_dim: (init_dim != dim).then_some(init_dim),
        out_dim: (out_dim != channels).then_some(out_dim),
        dim_mults: mults,
        channels,
        attn_heads: heads,
        attn_dim_head: dim_head,
        full_attn: (full != default_full).then_some(full),
        dropout: 0.0,
        sinusoidal_pos_emb_theta: 10000.0,
    })
}

fn is_legacy_key(key: &str) -> bool {
    let groupnorm = (key.contains("block1.norm.") || key.contains("block2.norm."))
        && (key.ends_with(".norm.weight") || key.ends_with(".norm.bias"));
    groupnorm || key.contains(".fn.")
}

fn to_f32_data(path: &Path, key: &str, snap: &TensorSnapshot) -> Result<TensorData, UnetError> {
    let data = snap.to_data().map_err(|e| UnetError::NotACheckpoint {
        path: path.to_path_buf(),
        expected: "PyTorch or safetensors".into(),
        reason: format!("cannot read the data of `{key}` (truncated or corrupt file?): {e}"),
    })?;
    match data.dtype {
        DType::F32 => Ok(data),
        DType::F64 | DType::F16 | DType::BF16 => Ok(data.convert::<f32>()),
        other => Err(UnetError::UnsupportedDType {
            path: path.to_path_buf(),
            key: key.to_string(),
            dtype: format!("{other:?}"),
        }),
    }
}

fn transpose2(data: &TensorData, rows: usize, cols: usize) -> TensorData {
    let v = data.as_slice::<f32>().expect("f32 data");
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    TensorData::new(out, [cols, rows])
}

impl StateDict {
    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The wrapper it was found in.
    pub fn format(&self) -> CheckpointFormat {
        self.format
    }

    /// The prefix removed from the file's keys (`""`, `model.`, `ema.ema_model.model.`, ...).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// PyTorch keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when it holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The values of one tensor as f32 (PyTorch layout), with its shape; `None` if absent.
    pub fn tensor_f32(&self, key: &str) -> Result<Option<ShapedValues>, UnetError> {
        let Some(snap) = self.tensors.get(key) else {
            return Ok(None);
        };
        let data = to_f32_data(&self.path, key, snap)?;
        let shape = data.shape.to_vec();
        let values = data
            .to_vec::<f32>()
            .map_err(|e| UnetError::NotACheckpoint {
                path: self.path.clone(),
                expected: "PyTorch or safetensors".into(),
                reason: format!("cannot read `{key}`: {e:?}"),
            })?;
        Ok(Some((shape, values)))
    }

    /// Shape of every tensor, by PyTorch key.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.shape.to_vec()))
            .collect()
    }

    /// The config stored in the file's metadata if any (our safetensors exports), else the one
    /// inferred from the shapes (see [`infer_config_from_shapes`]).
    pub fn infer_config(&self) -> Result<UnetConfig, UnetError> {
        self.check_legacy()?;
        if let Some(c) = &self.config_hint {
            return Ok(c.clone());
        }
        infer_config_from_shapes(&self.shapes()).map_err(|reason| UnetError::WrongContents {
            path: self.path.clone(),
            reason: format!("cannot infer the U-Net config: {reason}"),
        })
    }

    fn check_legacy(&self) -> Result<(), UnetError> {
        if let Some(k) = self.tensors.keys().find(|k| is_legacy_key(k)) {
            return Err(UnetError::LegacyCheckpoint {
                path: self.path.clone(),
                key: k.clone(),
            });
        }
        Ok(())
    }

    /// Checks that the tensors are exactly those of `config` (names and shapes).
    pub fn check_against(&self, config: &UnetConfig) -> Result<(), UnetError> {
        config.validate()?;
        self.check_legacy()?;
        if let Ok(fits) = self.infer_config() {
            if !fits.same_architecture(config) {
                return Err(UnetError::ConfigMismatch {
                    path: self.path.clone(),
                    given: config.describe(),
                    fits: fits.describe(),
                    inferred: Box::new(fits),
                });
            }
        }
        let specs = param_specs(config);
        let missing: Vec<String> = specs
            .iter()
            .filter(|s| !self.tensors.contains_key(&s.torch_key))
            .map(|s| s.torch_key.clone())
            .collect();
        if !missing.is_empty() {
            return Err(UnetError::MissingKeys {
                path: self.path.clone(),
                keys: missing,
            });
        }
        let known: std::collections::HashSet<&str> =
            specs.iter().map(|s| s.torch_key.as_str()).collect();
        let unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .cloned()
            .collect();
        if !unexpected.is_empty() {
            return Err(UnetError::UnexpectedKeys {
                path: self.path.clone(),
                keys: unexpected,
            });
        }
        let mismatches: Vec<ShapeMismatch> = specs
            .iter()
            .filter_map(|s| {
                let found = self.tensors[&s.torch_key].shape.to_vec();
                (found != s.torch_shape).then(|| ShapeMismatch {
                    key: s.torch_key.clone(),
                    expected: s.torch_shape.clone(),
                    found,
                })
            })
            .collect();
        if !mismatches.is_empty() {
            return Err(UnetError::ShapeMismatch {
                path: self.path.clone(),
                mismatches,
            });
        }
        Ok(())
    }

    /// Builds the U-Net and loads these weights into it. `config: None` infers it
    /// ([`StateDict::infer_config`]).
    pub fn into_unet<B: Backend>(
        self,
        config: Option<&UnetConfig>,
        device: &B::Device,
    ) -> Result<Unet<B>, UnetError> {
        let config = match config {
            Some(c) => c.clone(),
            None => self.infer_config()?,
        };
        let model = config.init::<B>(device)?;
        model.load_state_dict(&self)
    }

    fn burn_snapshots(&self, specs: &[ParamSpec]) -> Result<Vec<TensorSnapshot>, UnetError> {
        specs
            .iter()
            .map(|s| {
                let snap = &self.tensors[&s.torch_key];
                let data = to_f32_data(&self.path, &s.torch_key, snap)?;
                let data = match s.layout {
                    Layout::Same => data,
                    Layout::LinearWeight => transpose2(&data, s.torch_shape[0], s.torch_shape[1]),
                };
                Ok(TensorSnapshot::from_data(
                    data,
                    s.burn_path.split('.').map(String::from).collect(),
                    vec![],
                    ParamId::new(),
                ))
            })
            .collect()
    }
}

fn check_apply(path: &Path, result: burn_store::ApplyResult, what: &str) -> Result<(), UnetError> {
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(UnetError::WrongContents {
            path: path.to_path_buf(),
            reason: format!(
                "{what}: {} error(s) {:?}, missing {:?}, unused {:?}",
                result.errors.len(),
                result
                    .errors
                    .iter()
                    .take(4)
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>(),
                result
                    .missing
                    .iter()
                    .take(8)
                    .map(|m| &m.0)
                    .collect::<Vec<_>>(),
                result.unused.iter().take(8).collect::<Vec<_>>()
            ),
        });
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), UnetError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| UnetError::Write {
            path: path.to_path_buf(),
            reason: "not a file path".into(),
        })?
        .to_string_lossy()
        .to_string();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = write(&tmp).and_then(|_| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
    if let Err(reason) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(UnetError::Write {
            path: path.to_path_buf(),
            reason,
        });
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct BurnpackMeta {
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

fn burnpack_err(path: &Path, reason: impl ToString) -> UnetError {
    UnetError::NotACheckpoint {
        path: path.to_path_buf(),
        expected: "burnpack".into(),
        reason: reason.to_string(),
    }
}

/// Reads the [`UnetConfig`] stored in the metadata of a burnpack file written by [`Unet::save`].
fn read_burnpack_config(path: &Path) -> Result<UnetConfig, UnetError> {
    // Header: magic "NRUB" (u32 LE 0x4255524E), format version u16, metadata size u32, then
    // the CBOR metadata (burn-store's burnpack format, version 1).
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut header = [0u8; 10];
    f.read_exact(&mut header)
        .map_err(|e| burnpack_err(path, format!("header: {e}")))?;
    if &header[..4] != b"NRUB" {
        return Err(burnpack_err(path, "bad magic number"));
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != 1 {
        return Err(burnpack_err(
            path,
            format!("unsupported burnpack version {version}"),
        ));
    }
    let size = u32::from_le_bytes([header[6], header[7], header[8], header[9]]) as u64;
    let len = std::fs::metadata(path).map_err(|e| io_err(path, e))?.len();
    if size > len.saturating_sub(10) {
        return Err(burnpack_err(path, "truncated metadata"));
    }
    let mut meta = vec![0u8; size as usize];
    f.read_exact(&mut meta)
        .map_err(|e| burnpack_err(path, format!("metadata: {e}")))?;
    let meta: BurnpackMeta = ciborium::from_reader(meta.as_slice())
        .map_err(|e| burnpack_err(path, format!("metadata: {e}")))?;
    let json = meta
        .metadata
        .get(CONFIG_METADATA_KEY)
        .ok_or_else(|| UnetError::WrongContents {
            path: path.to_path_buf(),
            reason: format!(
                "burnpack file without `{CONFIG_METADATA_KEY}` metadata; it was not written by \
             Unet::save"
            ),
        })?;
    serde_json::from_str(json).map_err(|e| UnetError::WrongContents {
        path: path.to_path_buf(),
        reason: format!("metadata `{CONFIG_METADATA_KEY}` is not a valid config: {e}"),
    })
}

impl<B: Backend> Unet<B> {
    /// Loads PyTorch-named weights into this network (same config; checked first).
    pub fn load_state_dict(mut self, state: &StateDict) -> Result<Self, UnetError> {
        state.check_against(&self.config)?;
        let specs = param_specs(&self.config);
        let snaps = state.burn_snapshots(&specs)?;
        let result = self.apply(snaps, None, None, false);
        check_apply(&state.path, result, "internal error applying weights")?;
        Ok(self)
    }

    /// The weights under their PyTorch keys, in PyTorch layout (`[out, in]` Linear weights),
    /// as f32, in `state_dict()` order.
    pub fn torch_state_dict(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let specs = param_specs(&self.config);
        let by_path: HashMap<String, TensorSnapshot> = self
            .collect(None, None, false)
            .into_iter()
            .map(|s| (s.full_path(), s))
            .collect();
        specs
            .iter()
            .map(|s| {
                let snap = &by_path[&s.burn_path];
                let data = snap.to_data().expect("in-memory tensor").convert::<f32>();
                let data = match s.layout {
                    Layout::Same => data,
                    Layout::LinearWeight => transpose2(&data, s.torch_shape[1], s.torch_shape[0]),
                };
                (
                    s.torch_key.clone(),
                    s.torch_shape.clone(),
                    data.to_vec::<f32>().expect("f32"),
                )
            })
            .collect()
    }

    /// Writes the weights as safetensors with the PyTorch key names and layouts, so that
    /// `Unet(...).load_state_dict(safetensors.torch.load_file(path), strict=True)` accepts them.
    /// The config is stored as JSON in the metadata (key `unet_config`). Written atomically.
    pub fn export_safetensors(&self, path: &Path) -> Result<(), UnetError> {
        let sd = self.torch_state_dict();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = sd
            .into_iter()
            .map(|(k, shape, v)| {
                let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (k, shape, b)
            })
            .collect();
        let mut views = Vec::with_capacity(bytes.len());
        for (k, shape, b) in &bytes {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .map_err(|e| UnetError::Write {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })?;
            views.push((k.clone(), view));
        }
        let mut meta = HashMap::new();
        meta.insert(
            CONFIG_METADATA_KEY.to_string(),
            serde_json::to_string(&self.config).expect("config serialises"),
        );
        meta.insert("format".into(), "pt".into());
        let data = safetensors::serialize(views, Some(meta)).map_err(|e| UnetError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        write_atomic(path, |tmp| {
            let mut f = std::fs::File::create(tmp).map_err(|e| e.to_string())?;
            f.write_all(&data).map_err(|e| e.to_string())?;
            f.sync_all().map_err(|e| e.to_string())
        })
    }

    /// Saves the network in burn's burnpack format, with its config in the metadata
    /// (key `unet_config`). Written atomically.
    pub fn save(&self, path: &Path) -> Result<(), UnetError> {
        let json = serde_json::to_string(&self.config).expect("config serialises");
        write_atomic(path, |tmp| {
            let mut store = BurnpackStore::from_file(tmp)
                .auto_extension(false)
                .overwrite(true)
                .metadata(CONFIG_METADATA_KEY, json)
                .metadata("unet_crate_version", env!("CARGO_PKG_VERSION"));
            self.save_into(&mut store).map_err(|e| e.to_string())
        })
    }

    /// Loads a network saved with [`Unet::save`].
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, UnetError> {
        let config = read_burnpack_config(path)?;
        let mut model = config.init::<B>(device)?;
        let mut store = BurnpackStore::from_file(path).auto_extension(false);
        let result = model
            .load_from(&mut store)
            .map_err(|e| burnpack_err(path, e))?;
        check_apply(path, result, "burnpack does not match its own config")?;
        Ok(model)
    }

    /// Loads a safetensors file with PyTorch names (e.g. written by
    /// [`Unet::export_safetensors`] or `safetensors.torch.save_file(unet.state_dict(), ...)`).
    pub fn from_safetensors(
        path: &Path,
        config: Option<&UnetConfig>,
        device: &B::Device,
    ) -> Result<Self, UnetError> {
        read_safetensors(path, Weights::Model)?.into_unet(config, device)
    }

    /// Loads a PyTorch checkpoint (bare `Unet`, `GaussianDiffusion` or Trainer; see
    /// [`read_state_dict`]).
    pub fn from_pytorch(
        path: &Path,
        weights: Weights,
        config: Option<&UnetConfig>,
        device: &B::Device,
    ) -> Result<Self, UnetError> {
        read_pytorch(path, weights)?.into_unet(config, device)
    }
}
