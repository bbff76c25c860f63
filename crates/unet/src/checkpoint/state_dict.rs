//! [`StateDict`]: U-Net weights under their PyTorch keys, checked against a config and moved
//! into burn's layout (PyTorch stores Linear weights `[out, in]`, burn `[in, out]`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::ParamId;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, TensorData};
use burn_store::{ModuleSnapshot, TensorSnapshot};

use super::infer::{infer_config_from_shapes, is_legacy_key};
use super::CheckpointFormat;
use crate::config::UnetConfig;
use crate::error::{ShapeMismatch, UnetError};
use crate::keys::{param_specs, Layout, ParamSpec};
use crate::model::Unet;

/// A tensor's shape and its values in row-major order.
pub type ShapedValues = (Vec<usize>, Vec<f32>);

/// U-Net weights read from a file, under their PyTorch keys (wrapper prefixes removed).
#[derive(Debug, Clone)]
pub struct StateDict {
    path: PathBuf,
    format: CheckpointFormat,
    prefix: String,
    tensors: BTreeMap<String, TensorSnapshot>,
    config_hint: Option<UnetConfig>,
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

pub(super) fn transpose2(data: &TensorData, rows: usize, cols: usize) -> TensorData {
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
    pub(super) fn new(
        path: &Path,
        format: CheckpointFormat,
        prefix: String,
        tensors: BTreeMap<String, TensorSnapshot>,
        config_hint: Option<UnetConfig>,
    ) -> Self {
        Self { path: path.to_path_buf(), format, prefix, tensors, config_hint }
    }

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
        let values = data.to_vec::<f32>().map_err(|e| UnetError::NotACheckpoint {
            path: self.path.clone(),
            expected: "PyTorch or safetensors".into(),
            reason: format!("cannot read `{key}`: {e:?}"),
        })?;
        Ok(Some((shape, values)))
    }

    /// Shape of every tensor, by PyTorch key.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.tensors.iter().map(|(k, v)| (k.clone(), v.shape.to_vec())).collect()
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
        let cfg = self.tensors.contains_key("classes_emb.weight");
        if let Some(k) = self.tensors.keys().find(|k| is_legacy_key(k, cfg)) {
            return Err(UnetError::LegacyCheckpoint { path: self.path.clone(), key: k.clone() });
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
        let missing: Vec<String> =
            specs.iter().filter(|s| !self.tensors.contains_key(&s.torch_key)).map(|s| s.torch_key.clone()).collect();
        if !missing.is_empty() {
            return Err(UnetError::MissingKeys { path: self.path.clone(), keys: missing });
        }
        let known: std::collections::HashSet<&str> = specs.iter().map(|s| s.torch_key.as_str()).collect();
        let unexpected: Vec<String> = self.tensors.keys().filter(|k| !known.contains(k.as_str())).cloned().collect();
        if !unexpected.is_empty() {
            return Err(UnetError::UnexpectedKeys { path: self.path.clone(), keys: unexpected });
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
            return Err(UnetError::ShapeMismatch { path: self.path.clone(), mismatches });
        }
        Ok(())
    }

    /// Builds the U-Net and loads these weights into it. `config: None` infers it
    /// ([`StateDict::infer_config`]).
    pub fn into_unet<B: Backend>(self, config: Option<&UnetConfig>, device: &B::Device) -> Result<Unet<B>, UnetError> {
        let config = match config {
            Some(c) => c.clone(),
            None => self.infer_config()?,
        };
        // Names and shapes first: a config (e.g. from a file's metadata) that describes a larger
        // network than the tensors must not be allocated.
        self.check_against(&config)?;
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

pub(super) fn check_apply(path: &Path, result: burn_store::ApplyResult, what: &str) -> Result<(), UnetError> {
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(UnetError::WrongContents {
            path: path.to_path_buf(),
            reason: format!(
                "{what}: {} error(s) {:?}, missing {:?}, unused {:?}",
                result.errors.len(),
                result.errors.iter().take(4).map(|e| e.to_string()).collect::<Vec<_>>(),
                result.missing.iter().take(8).map(|m| &m.0).collect::<Vec<_>>(),
                result.unused.iter().take(8).collect::<Vec<_>>()
            ),
        });
    }
    Ok(())
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
        let by_path: HashMap<String, TensorSnapshot> =
            self.collect(None, None, false).into_iter().map(|s| (s.full_path(), s)).collect();
        specs
            .iter()
            .map(|s| {
                let snap = &by_path[&s.burn_path];
                let data = snap.to_data().expect("in-memory tensor").convert::<f32>();
                let data = match s.layout {
                    Layout::Same => data,
                    Layout::LinearWeight => transpose2(&data, s.torch_shape[1], s.torch_shape[0]),
                };
                (s.torch_key.clone(), s.torch_shape.clone(), data.to_vec::<f32>().expect("f32"))
            })
            .collect()
    }
}
