//! safetensors files with PyTorch key names: our exports (config in the metadata) and files
//! written by `safetensors.torch.save_file(unet.state_dict(), ...)`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use burn::module::ParamId;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, TensorData};
use burn_store::TensorSnapshot;

use super::pytorch::select_unet;
use super::{io_err, write_atomic, CheckpointFormat, StateDict, Weights, CONFIG_METADATA_KEY};
use crate::config::UnetConfig;
use crate::error::UnetError;
use crate::model::Unet;

fn safetensors_err(path: &Path, e: impl ToString) -> UnetError {
    UnetError::NotACheckpoint { path: path.to_path_buf(), expected: "safetensors".into(), reason: e.to_string() }
}

pub(super) fn read_safetensors(path: &Path, weights: Weights) -> Result<StateDict, UnetError> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| safetensors_err(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| safetensors_err(path, e))?;
    let config_hint = match meta.metadata().as_ref().and_then(|m| m.get(CONFIG_METADATA_KEY)) {
        Some(json) => Some(serde_json::from_str::<UnetConfig>(json).map_err(|e| UnetError::WrongContents {
            path: path.to_path_buf(),
            reason: format!("metadata `{CONFIG_METADATA_KEY}` is not a valid config: {e}"),
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
        let snap = TensorSnapshot::from_data(data, name.split('.').map(String::from).collect(), vec![], ParamId::new());
        all.insert(name, snap);
    }
    let (prefix, _, tensors) = select_unet(path, weights, all)?;
    Ok(StateDict::new(path, CheckpointFormat::Safetensors, prefix, tensors, config_hint))
}

/// The `__metadata__` of a safetensors file (empty when it has none).
pub(super) fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>, UnetError> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| safetensors_err(path, e))?;
    Ok(meta.metadata().clone().unwrap_or_default().into_iter().collect())
}

impl<B: Backend> Unet<B> {
    /// Writes the weights as safetensors with the PyTorch key names and layouts, so that
    /// `Unet(...).load_state_dict(safetensors.torch.load_file(path), strict=True)` accepts them.
    /// The config is stored as JSON in the metadata (key `unet_config`). Written atomically.
    pub fn export_safetensors(&self, path: &Path) -> Result<(), UnetError> {
        self.export_safetensors_with_metadata(path, &BTreeMap::new())
    }

    /// [`Unet::export_safetensors`] with more string metadata (as
    /// [`Unet::save_with_metadata`]); the key `unet_config` is reserved.
    pub fn export_safetensors_with_metadata(
        &self,
        path: &Path,
        extra: &BTreeMap<String, String>,
    ) -> Result<(), UnetError> {
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
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map_err(|e| UnetError::Write { path: path.to_path_buf(), reason: e.to_string() })?;
            views.push((k.clone(), view));
        }
        let mut meta: HashMap<String, String> = extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        meta.insert(CONFIG_METADATA_KEY.to_string(), serde_json::to_string(&self.config).expect("config serialises"));
        meta.insert("format".into(), "pt".into());
        let data = safetensors::serialize(views, Some(meta))
            .map_err(|e| UnetError::Write { path: path.to_path_buf(), reason: e.to_string() })?;
        write_atomic(path, |tmp| {
            let mut f = std::fs::File::create(tmp).map_err(|e| e.to_string())?;
            f.write_all(&data).map_err(|e| e.to_string())?;
            f.sync_all().map_err(|e| e.to_string())
        })
    }

    /// Loads a safetensors file with PyTorch names (e.g. written by
    /// [`Unet::export_safetensors`] or `safetensors.torch.save_file(unet.state_dict(), ...)`).
    pub fn from_safetensors(path: &Path, config: Option<&UnetConfig>, device: &B::Device) -> Result<Self, UnetError> {
        read_safetensors(path, Weights::Model)?.into_unet(config, device)
    }
}
