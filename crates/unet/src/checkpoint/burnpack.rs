//! Our own checkpoints in burn's burnpack format, with the [`UnetConfig`] (and whatever the
//! caller adds, e.g. the diffusion settings) as string metadata in the header.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn_store::{BurnpackStore, ModuleSnapshot};

use super::state_dict::check_apply;
use super::{io_err, write_atomic, CONFIG_METADATA_KEY};
use crate::config::UnetConfig;
use crate::error::UnetError;
use crate::keys::param_specs;
use crate::model::Unet;

#[derive(serde::Deserialize)]
struct BurnpackMeta {
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

fn burnpack_err(path: &Path, reason: impl ToString) -> UnetError {
    UnetError::NotACheckpoint { path: path.to_path_buf(), expected: "burnpack".into(), reason: reason.to_string() }
}

/// The string metadata in a burnpack file's header.
pub(super) fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>, UnetError> {
    // Header: magic "NRUB" (u32 LE 0x4255524E), format version u16, metadata size u32, then
    // the CBOR metadata (burn-store's burnpack format, version 1).
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut header = [0u8; 10];
    f.read_exact(&mut header).map_err(|e| burnpack_err(path, format!("header: {e}")))?;
    if &header[..4] != b"NRUB" {
        return Err(burnpack_err(path, "bad magic number"));
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != 1 {
        return Err(burnpack_err(path, format!("unsupported burnpack version {version}")));
    }
    let size = u32::from_le_bytes([header[6], header[7], header[8], header[9]]) as u64;
    let len = std::fs::metadata(path).map_err(|e| io_err(path, e))?.len();
    if size > len.saturating_sub(10) {
        return Err(burnpack_err(path, "truncated metadata"));
    }
    let mut meta = vec![0u8; size as usize];
    f.read_exact(&mut meta).map_err(|e| burnpack_err(path, format!("metadata: {e}")))?;
    let meta: BurnpackMeta =
        ciborium::from_reader(meta.as_slice()).map_err(|e| burnpack_err(path, format!("metadata: {e}")))?;
    Ok(meta.metadata)
}

/// Reads the [`UnetConfig`] stored in the metadata of a burnpack file written by [`Unet::save`].
pub(super) fn read_config(path: &Path) -> Result<UnetConfig, UnetError> {
    let meta = read_metadata(path)?;
    let json = meta.get(CONFIG_METADATA_KEY).ok_or_else(|| UnetError::WrongContents {
        path: path.to_path_buf(),
        reason: format!(
            "burnpack file without `{CONFIG_METADATA_KEY}` metadata; it was not written by \
             Unet::save"
        ),
    })?;
    let config: UnetConfig = serde_json::from_str(json).map_err(|e| UnetError::WrongContents {
        path: path.to_path_buf(),
        reason: format!("metadata `{CONFIG_METADATA_KEY}` is not a valid config: {e}"),
    })?;
    config.validate().map_err(|e| UnetError::WrongContents {
        path: path.to_path_buf(),
        reason: format!("metadata `{CONFIG_METADATA_KEY}` is not a valid config: {e}"),
    })?;
    // The network is built from this config before its weights are read: a header that
    // describes a larger network than the file can hold (2 bytes a value at the least) would
    // allocate it first.
    let values: u128 =
        param_specs(&config).iter().map(|s| s.torch_shape.iter().map(|&d| d as u128).product::<u128>()).sum();
    let len = std::fs::metadata(path).map_err(|e| io_err(path, e))?.len();
    if values.saturating_mul(2) > len as u128 {
        return Err(UnetError::WrongContents {
            path: path.to_path_buf(),
            reason: format!(
                "its metadata describes {} with {values} parameters, more than the {len}-byte file can hold",
                config.describe()
            ),
        });
    }
    Ok(config)
}

impl<B: Backend> Unet<B> {
    /// Saves the network in burn's burnpack format, with its config in the metadata
    /// (key `unet_config`). Written atomically.
    pub fn save(&self, path: &Path) -> Result<(), UnetError> {
        self.save_with_metadata(path, &BTreeMap::new())
    }

    /// [`Unet::save`] with more string metadata beside the config (an application records
    /// what else is needed to use the weights, e.g. image size and diffusion settings; read it
    /// back with [`read_metadata`](crate::read_metadata)). The key `unet_config` is reserved.
    pub fn save_with_metadata(&self, path: &Path, extra: &BTreeMap<String, String>) -> Result<(), UnetError> {
        let json = serde_json::to_string(&self.config).expect("config serialises");
        write_atomic(path, |tmp| {
            let mut store = BurnpackStore::from_file(tmp).auto_extension(false).overwrite(true);
            for (k, v) in extra.iter().filter(|(k, _)| k.as_str() != CONFIG_METADATA_KEY) {
                store = store.metadata(k, v.clone());
            }
            let mut store =
                store.metadata(CONFIG_METADATA_KEY, json).metadata("unet_crate_version", env!("CARGO_PKG_VERSION"));
            self.save_into(&mut store).map_err(|e| e.to_string())
        })
    }

    /// Loads a network saved with [`Unet::save`].
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, UnetError> {
        let config = read_config(path)?;
        let mut model = config.init::<B>(device)?;
        let mut store = BurnpackStore::from_file(path).auto_extension(false);
        let result = model.load_from(&mut store).map_err(|e| burnpack_err(path, e))?;
        check_apply(path, result, "burnpack does not match its own config")?;
        Ok(model)
    }
}
