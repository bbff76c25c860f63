//! Training checkpoints: one folder `step-NNNNNNN/` per checkpoint, written whole or not at all.
//!
//! - `model.bpk`, `ema.bpk`: the online and EMA weights, each carrying its [`UnetConfig`] and a
//!   [`ModelCard`] (image size, channels, diffusion settings) in its metadata, so `sample` needs
//!   no flags to use them.
//! - `resume/`: burn records of the online weights, EMA and optimizer, for exact resume.
//! - `state.json`: the step and the whole [`TrainConfig`].
//!
//! [`UnetConfig`]: unet::UnetConfig

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use diffusion_core::DiffusionConfig;
use serde::{Deserialize, Serialize};
use unet::UnetAutodiffBackend;

use crate::config::TrainConfig;
use crate::error::{io_err, Result, TrainError};
use crate::trainer::Trainer;

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

/// Resume state written beside the weights of each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    config: TrainConfig,
}

/// Metadata key of the [`ModelCard`] in our weight files.
pub const MODEL_CARD_KEY: &str = "lensing_diffusion";

/// What a sampler needs to know about a model beyond its U-Net: stored next to the weights in
/// `model.bpk` / `ema.bpk` (and in safetensors exports), so a checkpoint is usable on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Side of the square images the model was trained on.
    pub image_size: usize,
    /// Image channels.
    pub channels: usize,
    /// The diffusion process it was trained with (T, schedule, objective).
    pub diffusion: DiffusionConfig,
    /// Names of the classes of a class-conditional model (`None`: unconditional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
}

impl ModelCard {
    /// The card of a training configuration.
    pub fn of(config: &TrainConfig) -> Self {
        Self {
            image_size: config.image_size,
            channels: config.unet.channels,
            diffusion: config.diffusion.clone(),
            class_names: config.unet.num_classes.map(|n| {
                let names = &config.class_names;
                if names.len() == n {
                    names.clone()
                } else {
                    (0..n).map(|i| format!("class{i}")).collect()
                }
            }),
        }
    }

    /// The metadata entry that carries this card.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(MODEL_CARD_KEY.to_string(), serde_json::to_string(self).expect("serialisable"))])
    }

    /// The card of a weight file: from its metadata (our `.bpk` and safetensors files), else from
    /// the `state.json` of the checkpoint folder it sits in (checkpoints written before cards
    /// existed); `None` for files that carry neither (PyTorch checkpoints).
    pub fn read(weights: &Path) -> Result<Option<Self>> {
        let bad = |reason: String| TrainError::Resume { path: weights.to_path_buf(), reason };
        let meta = unet::read_metadata(weights)?;
        if let Some(json) = meta.get(MODEL_CARD_KEY) {
            return serde_json::from_str(json)
                .map(Some)
                .map_err(|e| bad(format!("metadata `{MODEL_CARD_KEY}` is not a valid model card: {e}")));
        }
        let state = atomic_file::parent_dir(weights).join("state.json");
        if !state.is_file() {
            return Ok(None);
        }
        let text = fs::read_to_string(&state).map_err(io_err(&state))?;
        let state: CheckpointState = serde_json::from_str(&text)
            .map_err(|e| TrainError::Resume { path: state.clone(), reason: format!("state.json is corrupt: {e}") })?;
        Ok(Some(Self::of(&state.config)))
    }
}

impl<B: UnetAutodiffBackend> Trainer<B> {
    /// Write a checkpoint folder `dir/step-NNNNNNN/` atomically (written under a temporary name,
    /// then renamed, so an interrupted write never replaces a good checkpoint). It holds
    /// `model.bpk` and `ema.bpk` (loadable by `unet::load_checkpoint` and the `sample` command),
    /// and `resume/` with burn records of the online weights, EMA and optimizer for exact resume.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let final_dir = dir.join(format!("step-{:07}", self.step));
        let tmp = atomic_file::temp_path(&final_dir);
        fs::create_dir_all(tmp.join("resume")).map_err(io_err(&tmp))?;
        let card = ModelCard::of(&self.config).metadata();
        let write = || -> Result<()> {
            self.model.valid().save_with_metadata(&tmp.join("model.bpk"), &card)?;
            self.ema.save_with_metadata(&tmp.join("ema.bpk"), &card)?;
            let rec = recorder();
            let res = |what: &str, e: burn::record::RecorderError| TrainError::Resume {
                path: tmp.join("resume").join(what),
                reason: format!("could not write: {e}"),
            };
            rec.record(self.model.clone().into_record(), tmp.join("resume/model")).map_err(|e| res("model", e))?;
            rec.record(self.ema.clone().into_record(), tmp.join("resume/ema")).map_err(|e| res("ema", e))?;
            rec.record(self.optim.to_record(), tmp.join("resume/optim")).map_err(|e| res("optim", e))?;
            let state = CheckpointState { step: self.step, config: self.config.clone() };
            let p = tmp.join("state.json");
            fs::write(&p, serde_json::to_string_pretty(&state).expect("serialisable")).map_err(io_err(&p))?;
            // Every file is flushed, then the folder swapped in whole.
            atomic_file::replace_dir(&tmp, &final_dir).map_err(io_err(&final_dir))
        };
        if let Err(e) = write() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        prune_checkpoints(dir, self.config.keep_last)?;
        Ok(final_dir)
    }

    /// Continue a run from a checkpoint folder written by [`Trainer::save_checkpoint`]. The
    /// configuration comes from the checkpoint; `total_steps` may be raised with `extend_to`.
    pub fn resume(checkpoint: &Path, device: &B::Device) -> Result<Self> {
        let resume_err = |reason: String| TrainError::Resume { path: checkpoint.to_path_buf(), reason };
        let state_path = checkpoint.join("state.json");
        let text = fs::read_to_string(&state_path).map_err(|e| resume_err(format!("cannot read state.json: {e}")))?;
        let state: CheckpointState =
            serde_json::from_str(&text).map_err(|e| resume_err(format!("state.json is corrupt: {e}")))?;
        let mut trainer = Self::new(state.config, device)?;
        let rec = recorder();
        let model_rec = rec
            .load(checkpoint.join("resume/model"), device)
            .map_err(|e| resume_err(format!("resume/model.mpk is missing or corrupt: {e}")))?;
        trainer.model = trainer.model.load_record(model_rec);
        let ema_rec = rec
            .load(checkpoint.join("resume/ema"), device)
            .map_err(|e| resume_err(format!("resume/ema.mpk is missing or corrupt: {e}")))?;
        trainer.ema = trainer.ema.load_record(ema_rec);
        let optim_rec = rec
            .load(checkpoint.join("resume/optim"), device)
            .map_err(|e| resume_err(format!("resume/optim.mpk is missing or corrupt: {e}")))?;
        trainer.optim = trainer.optim.load_record(optim_rec);
        trainer.step = state.step;
        Ok(trainer)
    }

    /// Resume from what `path` names (see [`find_checkpoint`]); for a run folder, the newest
    /// checkpoint that loads: each newer one that does not (a damaged disk, a file truncated by
    /// hand) is skipped and reported in the returned list as `(folder, reason)`.
    pub fn resume_latest(path: &Path, device: &B::Device) -> Result<(Self, PathBuf, Vec<Skipped>)> {
        if path.join("state.json").is_file() {
            return Ok((Self::resume(path, device)?, path.to_path_buf(), vec![]));
        }
        let mut candidates = list_checkpoints(&path.join("checkpoints"));
        if candidates.is_empty() {
            candidates = list_checkpoints(path);
        }
        let mut skipped = vec![];
        while let Some(ckpt) = candidates.pop() {
            match Self::resume(&ckpt, device) {
                Ok(t) => return Ok((t, ckpt, skipped)),
                Err(e) => skipped.push((ckpt, e.to_string())),
            }
        }
        let reason = if skipped.is_empty() {
            "no checkpoint found (expected a step-N folder, or a run folder with checkpoints/step-N)".to_string()
        } else {
            format!("none of its {} checkpoints loads; the newest: {}", skipped.len(), skipped[0].1)
        };
        Err(TrainError::Resume { path: path.to_path_buf(), reason })
    }
}

/// A checkpoint that [`Trainer::resume_latest`] passed over: its folder and why it did not load.
pub type Skipped = (PathBuf, String);

/// Whether `dir` holds a training run (`checkpoints/step-N` or `loss.csv`): a fresh run must not
/// be written into it, or it would mix two runs' logs and prune the other's checkpoints.
pub fn holds_a_run(dir: &Path) -> bool {
    dir.join("loss.csv").is_file() || !list_checkpoints(&dir.join("checkpoints")).is_empty()
}

/// Checkpoint folders `step-*` in `dir`, oldest first.
pub fn list_checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-")))
        .collect();
    v.sort();
    v
}

fn prune_checkpoints(dir: &Path, keep: usize) -> Result<()> {
    let all = list_checkpoints(dir);
    if all.len() > keep {
        for old in &all[..all.len() - keep] {
            fs::remove_dir_all(old).map_err(io_err(old))?;
        }
    }
    Ok(())
}

/// The checkpoint folder `path` names: itself when it holds `state.json`, else the latest
/// `step-N` folder under `path/checkpoints/` (a run folder) or under `path`.
pub fn find_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    list_checkpoints(&path.join("checkpoints")).pop().or_else(|| list_checkpoints(path).pop()).ok_or_else(|| {
        TrainError::Resume {
            path: path.to_path_buf(),
            reason: "no checkpoint found (expected a step-N folder, or a run folder with checkpoints/step-N)".into(),
        }
    })
}
