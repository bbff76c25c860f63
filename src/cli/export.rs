//! `lensing-diffusion export`.

use std::path::PathBuf;

use burn::backend::Flex;
use lensing_diffusion::checkpoint::ModelCard;
use lensing_diffusion::sample::load_model;

use super::args::{CheckpointArgs, ModelSettingsArgs};
use super::CmdResult;

/// Convert a checkpoint, by the extension of --out:
///
///   .safetensors  the U-Net under PyTorch's key names and layouts, which
///                 `Unet(...).load_state_dict(safetensors.torch.load_file(path))` accepts
///                 (denoising-diffusion-pytorch); the U-Net config and our settings ride in the
///                 metadata, so `sample` reads it back with no flags.
///   .bpk          our burnpack format with its settings: e.g. a denoising-diffusion-pytorch
///                 `.pth`, given the image size and diffusion settings it was trained with, becomes
///                 a checkpoint that `sample` uses without flags.
///
/// Examples:
///   lensing-diffusion export --checkpoint runs/train/checkpoints/step-0001500/ema.bpk --out ema.safetensors
///   lensing-diffusion export --checkpoint diffusion_model.pth --image-size 128 --out deeplense.bpk
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub(crate) checkpoint: CheckpointArgs,
    /// File to write: .safetensors or .bpk (written atomically).
    #[arg(long)]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) settings: ModelSettingsArgs,
}

pub fn run(args: Args) -> CmdResult {
    let device = Default::default();
    let loaded = load_model::<Flex>(&args.checkpoint.checkpoint, args.checkpoint.weights, None, &device)?;
    let resolved = args.settings.resolve(loaded.card.as_ref());
    let card = ModelCard {
        image_size: resolved.image_size,
        channels: loaded.model.config().channels,
        diffusion: resolved.diffusion,
        class_names: loaded.card.and_then(|c| c.class_names),
    };
    match args.out.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => loaded.model.export_safetensors_with_metadata(&args.out, &card.metadata())?,
        Some("bpk") => loaded.model.save_with_metadata(&args.out, &card.metadata())?,
        _ => return Err(format!("--out {}: the extension must be .safetensors or .bpk", args.out.display()).into()),
    }
    eprintln!(
        "wrote {} ({}, {s}x{s} images, T {}, {} schedule, {})",
        args.out.display(),
        loaded.model.config().describe(),
        card.diffusion.timesteps,
        card.diffusion.schedule,
        card.diffusion.objective,
        s = card.image_size
    );
    Ok(())
}
