//! Sampling many images from a trained denoiser: batches seeded by their index, run on several
//! threads, with the settings a checkpoint carries.
//!
//! ```no_run
//! use burn::backend::Flex;
//! use lensing_diffusion::sample::{load_model, generate, SampleOptions};
//! use diffusion_core::Sampler;
//!
//! let device = Default::default();
//! // Our checkpoints carry their image size and diffusion settings (the ModelCard).
//! let loaded = load_model::<Flex>("runs/train/checkpoints/step-0001500/ema.bpk".as_ref(), None, None, &device)?;
//! let opts = SampleOptions { sampler: Sampler::DpmSolverPp2M { steps: 20 }, batch_size: 16, workers: 2, seed: 0 };
//! let card = loaded.card.as_ref().expect("our checkpoint");
//! let images = generate(&loaded.model, &loaded.diffusion()?, [16, card.channels, card.image_size, card.image_size], None, None, &opts, &|| {})?;
//! assert_eq!(images.dim().0, 16);
//! # Ok::<(), lensing_diffusion::Error>(())
//! ```

use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use diffusion_core::{DiffusionConfig, DiffusionRng, GaussianDiffusion, Guidance, Guided, Sampler};
use ndarray::{Array4, ArrayView4};
use rand::SeedableRng;
use unet::{load_checkpoint, Unet, UnetBackend, UnetConfig, Weights};

use crate::checkpoint::ModelCard;
use crate::error::Error;

/// How to sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOptions {
    /// The reverse process.
    pub sampler: Sampler,
    /// Images per batch. Batch `b` is seeded by `(seed, b)`, so this changes which images a seed
    /// gives; the thread count does not.
    pub batch_size: usize,
    /// Batches sampled concurrently, one thread and one copy of the weights each.
    pub workers: usize,
    /// Seed of the starting noise and the sampler's noise.
    pub seed: u64,
}

/// What a class-conditional model is asked for: one class per image, and how hard to guide.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditioning {
    /// The class of each image (`0..num_classes`).
    pub labels: Vec<usize>,
    /// Classifier-free guidance.
    pub guidance: Guidance,
}

/// Generate `shape = [n, channels, height, width]` images in `[0, 1]` (from `init`, standard
/// normal `[n, C, H, W]`, when given; it then sets the shape). A class-conditional model needs
/// `cond` (one label per image); an unconditional one refuses it. `tick` is called after every
/// model evaluation of every batch (for a progress bar).
pub fn generate<B: UnetBackend>(
    model: &Unet<B>,
    diffusion: &GaussianDiffusion,
    shape: [usize; 4],
    init: Option<ArrayView4<'_, f32>>,
    cond: Option<&Conditioning>,
    opts: &SampleOptions,
    tick: &(dyn Fn() + Sync),
) -> Result<Array4<f32>, Error> {
    let [n, c, h, w] = match init {
        Some(a) => {
            let d = a.dim();
            [d.0, d.1, d.2, d.3]
        }
        None => shape,
    };
    if n == 0 {
        return Err(Error::invalid("number of images", n, "must be >= 1"));
    }
    if opts.batch_size == 0 {
        return Err(Error::invalid("batch size", 0, "must be >= 1"));
    }
    if c != model.config().channels {
        return Err(Error::invalid("channels", c, format!("the model has {} channels", model.config().channels)));
    }
    let f = model.config().downsample_factor();
    if h == 0 || w == 0 || h % f != 0 || w % f != 0 {
        return Err(Error::invalid(
            "image size",
            format!("{h}x{w}"),
            format!("must be a positive multiple of {f} for this U-Net"),
        ));
    }
    opts.sampler.validate(diffusion.config().timesteps)?;
    match (model.config().num_classes, cond) {
        (None, Some(_)) => {
            return Err(Error::invalid("classes", "given", "the model is unconditional; it takes no class labels"))
        }
        (Some(k), None) => {
            return Err(Error::invalid(
                "classes",
                "none",
                format!("the model is class-conditional ({k} classes); give one label per image"),
            ))
        }
        (Some(k), Some(c)) => {
            if c.labels.len() != n {
                return Err(Error::invalid("classes", c.labels.len(), format!("one label per image ({n} images)")));
            }
            if let Some(bad) = c.labels.iter().find(|&&l| l >= k) {
                return Err(Error::invalid("class", bad, format!("the model knows classes 0..{k}")));
            }
            c.guidance.validate()?;
        }
        (None, None) => {}
    }
    let batch = opts.batch_size;
    let batches = n.div_ceil(batch);
    let per_batch = crate::parallel::map_in_threads(
        batches,
        opts.workers,
        |_| model.clone(),
        |model, b| -> Result<Vec<f32>, Error> {
            let device = Default::default();
            let (lo, hi) = (b * batch, ((b + 1) * batch).min(n));
            let mut rng = DiffusionRng::seed_from_u64(opts.seed);
            rng.set_stream(b as u64);
            let x_t = match init {
                Some(a) => {
                    let slice = a.slice(ndarray::s![lo..hi, .., .., ..]).as_standard_layout().into_owned();
                    Tensor::<B, 4>::from_data(
                        TensorData::new(slice.into_raw_vec_and_offset().0, [hi - lo, c, h, w]),
                        &device,
                    )
                }
                None => diffusion_core::gaussian_noise::<B, 4>(&mut rng, [hi - lo, c, h, w], &device),
            };
            let images = match cond {
                Some(c) => {
                    let labels = c.labels[lo..hi].iter().map(|&l| Some(l)).collect();
                    let guided = Guided::new(&*model, labels, c.guidance)?;
                    diffusion.sample_from(&guided, opts.sampler, x_t, &mut rng, &mut |_| tick())?
                }
                None => diffusion.sample_from(&*model, opts.sampler, x_t, &mut rng, &mut |_| tick())?,
            };
            images
                .into_data()
                .to_vec::<f32>()
                .map_err(|e| Error::invalid("sampled tensor", format!("{e:?}"), "not f32"))
        },
    )?;
    Ok(Array4::from_shape_vec((n, c, h, w), per_batch.concat()).expect("batches fill the shape"))
}

/// A model loaded for sampling, with what its file says about how to use it.
pub struct LoadedModel<B: UnetBackend> {
    /// The network.
    pub model: Unet<B>,
    /// Image size, channels and diffusion settings from the file (our checkpoints; `None` for
    /// PyTorch files, which carry none).
    pub card: Option<ModelCard>,
}

impl<B: UnetBackend> LoadedModel<B> {
    /// The diffusion process of the card (denoising-diffusion-pytorch's defaults without one:
    /// T 1000, sigmoid, pred_v).
    pub fn diffusion(&self) -> Result<GaussianDiffusion, Error> {
        let config = self.card.as_ref().map(|c| c.diffusion.clone()).unwrap_or_default();
        Ok(GaussianDiffusion::new(config)?)
    }
}

/// Load any checkpoint `unet` reads (PyTorch, safetensors, our `.bpk`), with its [`ModelCard`].
/// `weights` defaults to the EMA weights where the file has them (a Trainer checkpoint) and the
/// only weights otherwise. `config` insists on an architecture (a mismatch is an error
/// naming the one that fits).
pub fn load_model<B: UnetBackend>(
    path: &Path,
    weights: Option<Weights>,
    config: Option<&UnetConfig>,
    device: &B::Device,
) -> Result<LoadedModel<B>, Error> {
    let is_burnpack = std::fs::File::open(path)
        .and_then(|mut f| {
            let mut magic = [0u8; 4];
            std::io::Read::read_exact(&mut f, &mut magic).map(|_| &magic == b"NRUB")
        })
        .unwrap_or(false);
    let weights = weights.unwrap_or_else(|| {
        let has_ema = !is_burnpack && unet::read_state_dict(path, Weights::Ema).is_ok();
        if has_ema {
            Weights::Ema
        } else {
            Weights::Model
        }
    });
    let model = load_checkpoint::<B>(path, weights, config, device)?;
    let card = ModelCard::read(path)?;
    Ok(LoadedModel { model, card })
}

/// Settings that resolve to a value from a flag, else the checkpoint's card, else a default,
/// with a warning where a flag contradicts the card.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Image size.
    pub image_size: usize,
    /// The diffusion process.
    pub diffusion: DiffusionConfig,
    /// One line per flag that overrides a different value recorded in the checkpoint.
    pub warnings: Vec<String>,
}

/// Settings given on the command line (each optional) for [`resolve`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--image-size`.
    pub image_size: Option<usize>,
    /// `--timesteps`.
    pub timesteps: Option<usize>,
    /// `--objective`.
    pub objective: Option<diffusion_core::Objective>,
    /// `--schedule`.
    pub schedule: Option<diffusion_core::BetaSchedule>,
}

/// Combine a checkpoint's [`ModelCard`] with explicit settings: a setting wins, and disagreeing
/// with the card earns a warning; without either, denoising-diffusion-pytorch's defaults
/// (128x128, T 1000, sigmoid, pred_v) apply.
pub fn resolve(card: Option<&ModelCard>, flags: &Overrides) -> Resolved {
    let mut warnings = vec![];
    let mut pick = |name: &str, flag: Option<String>, from_card: Option<String>| {
        if let (Some(f), Some(c)) = (&flag, &from_card) {
            if f != c {
                warnings.push(format!("{name} {f} overrides the checkpoint's {c}; images from a setting the model was not trained with are usually wrong"));
            }
        }
    };
    let base = card.map(|c| c.diffusion.clone()).unwrap_or_default();
    pick("--image-size", flags.image_size.map(|v| v.to_string()), card.map(|c| c.image_size.to_string()));
    pick("--timesteps", flags.timesteps.map(|v| v.to_string()), card.map(|c| c.diffusion.timesteps.to_string()));
    pick("--objective", flags.objective.map(|v| v.to_string()), card.map(|c| c.diffusion.objective.to_string()));
    pick("--schedule", flags.schedule.map(|v| v.to_string()), card.map(|c| c.diffusion.schedule.to_string()));
    let diffusion = DiffusionConfig {
        timesteps: flags.timesteps.unwrap_or(base.timesteps),
        objective: flags.objective.unwrap_or(base.objective),
        schedule: flags.schedule.unwrap_or(base.schedule),
        ..base
    };
    Resolved { image_size: flags.image_size.or(card.map(|c| c.image_size)).unwrap_or(128), diffusion, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_card_with_a_warning() {
        let card = ModelCard {
            image_size: 64,
            channels: 1,
            diffusion: DiffusionConfig { objective: diffusion_core::Objective::PredNoise, ..Default::default() },
            class_names: None,
        };
        let r = resolve(Some(&card), &Overrides::default());
        assert_eq!((r.image_size, r.diffusion.objective), (64, diffusion_core::Objective::PredNoise));
        assert!(r.warnings.is_empty());
        let r = resolve(Some(&card), &Overrides { image_size: Some(128), ..Default::default() });
        assert_eq!(r.image_size, 128);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("--image-size 128") && r.warnings[0].contains("64"));
        let r = resolve(Some(&card), &Overrides { image_size: Some(64), ..Default::default() });
        assert!(r.warnings.is_empty(), "agreeing flags are silent");
        let r = resolve(None, &Overrides::default());
        assert_eq!((r.image_size, r.diffusion.clone()), (128, DiffusionConfig::default()));
    }
}
