//! The lensing feature extractor: the recipe that trains gen-metrics' ResNet-18 on simulated
//! DeepLense Model I images, where the shipped and cached extractors live, and the one place
//! that decides which extractor a command uses.
//!
//! The training images come from [`crate::data::simulate_resized`], the same simulate-and-resize
//! path the diffusion model trains on, so both always see the same field of view.

use std::path::{Path, PathBuf};

use gen_metrics::train::{train_classifier_streamed, RunControl, TrainConfig, TrainReport};
use gen_metrics::KernelAutodiffBackend;
use gen_metrics::{ExtractorConfig, FeatureExtractor, MetricsError};
use lens_data::simulate::LensClass;
use serde::{Deserialize, Serialize};

/// Recipe of an extractor: simulated training data and optimiser settings. Two are shipped:
/// [`ExtractorRecipe::default`] (128x128 input, the default everywhere) and
/// [`ExtractorRecipe::legacy_s64`] (64x64, the first one); any other is trained on first use
/// and cached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtractorRecipe {
    /// Training images (simulated, classes in turn).
    pub n_train: usize,
    /// Held-out images (another seed).
    pub n_heldout: usize,
    /// Simulation grid (pixels per side; the field of view stays 7.5 arcsec).
    pub num_pix: usize,
    /// Network input size.
    pub image_size: usize,
    /// Optimiser settings.
    pub train: TrainConfig,
    /// Simulate a fresh training set (`n_train` images) for every epoch instead of reusing one:
    /// the simulator is cheap, and the network never sees an image twice.
    #[serde(default)]
    pub fresh_data: bool,
}

impl Default for ExtractorRecipe {
    /// The shipped 128x128 extractor: 32 epochs of 3,000 freshly simulated images each, under
    /// random dihedral transformations, Adam with a cosine decay from 1e-3, batch 32, batch-norm
    /// statistics recomputed over 50 batches at the end; 1,500 held-out images
    /// (assets/extractor/README.md has what it measured).
    fn default() -> Self {
        Self {
            n_train: 3000,
            n_heldout: 1500,
            num_pix: 150,
            image_size: 128,
            train: TrainConfig {
                epochs: 32,
                batch_size: 32,
                lr: 1e-3,
                seed: 0,
                augment: true,
                cosine: true,
                bn_recalibration: 50,
            },
            fresh_data: true,
        }
    }
}

impl ExtractorRecipe {
    /// The first shipped extractor (64x64 input, one set of 3,000 images for 8 epochs, constant
    /// learning rate, no augmentation; 76.5% held-out accuracy). Still shipped, so that results
    /// measured with it can be reproduced (`--image-size 64`).
    pub fn legacy_s64() -> Self {
        Self {
            n_train: 3000,
            n_heldout: 600,
            num_pix: 150,
            image_size: 64,
            train: TrainConfig { epochs: 8, batch_size: 32, lr: 1e-3, seed: 0, ..TrainConfig::default() },
            fresh_data: false,
        }
    }

    /// The shipped recipe with input `image_size` when there is one, else the default recipe
    /// at that size (trained on first use).
    pub fn for_image_size(image_size: usize) -> Self {
        [Self::default(), Self::legacy_s64()]
            .into_iter()
            .find(|r| r.image_size == image_size)
            .unwrap_or(Self { image_size, ..Self::default() })
    }
}

fn sim_err(e: lens_data::LensDataError) -> MetricsError {
    MetricsError::InvalidParameter { name: "simulation", value: String::new(), reason: e.to_string() }
}

/// The seed of the training images of `epoch` when the recipe simulates fresh ones: far from
/// the held-out seed (`seed + 1,000,003`) and from each other.
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed.wrapping_add((epoch as u64 + 1) << 32)
}

/// Simulates the recipe's data, trains the classifier and returns it with its report.
/// `progress(step, total_steps, loss)` is called after every step.
pub fn train_from_recipe<B: KernelAutodiffBackend>(
    recipe: &ExtractorRecipe,
    device: &B::Device,
    progress: impl FnMut(usize, usize, f64),
) -> gen_metrics::Result<(FeatureExtractor<B::InnerBackend>, TrainReport)> {
    train_from_recipe_with::<B>(recipe, &RunControl::default(), device, progress)
}

/// [`train_from_recipe`] with a checkpoint folder (resume) and a time budget.
pub fn train_from_recipe_with<B: KernelAutodiffBackend>(
    recipe: &ExtractorRecipe,
    control: &RunControl,
    device: &B::Device,
    progress: impl FnMut(usize, usize, f64),
) -> gen_metrics::Result<(FeatureExtractor<B::InnerBackend>, TrainReport)> {
    let sim = |n, seed| {
        crate::data::simulate_resized(n, recipe.num_pix, recipe.image_size, &LensClass::ALL, seed).map_err(sim_err)
    };
    let labels = |s: &lens_data::dataset::ImageSet| s.labels.clone().unwrap_or_default();
    let ho = sim(recipe.n_heldout, recipe.train.seed.wrapping_add(1_000_003))?;
    let fixed = if recipe.fresh_data { None } else { Some(sim(recipe.n_train, recipe.train.seed)?) };
    let data = |epoch: usize| match &fixed {
        Some(tr) => Ok((tr.images.clone(), labels(tr))),
        None => {
            let tr = sim(recipe.n_train, epoch_seed(recipe.train.seed, epoch))?;
            let l = labels(&tr);
            Ok((tr.images, l))
        }
    };
    let cfg = ExtractorConfig { image_size: recipe.image_size, ..ExtractorConfig::default() };
    train_classifier_streamed::<B>(
        recipe.n_train,
        data,
        ho.images.view(),
        &labels(&ho),
        cfg,
        &recipe.train,
        control,
        device,
        progress,
    )
}

/// Loads the extractor cached at `path`, or trains one from `recipe` and caches it there
/// (burnpack + `.json` sidecar with the training report).
pub fn ensure_extractor<B: KernelAutodiffBackend>(
    path: &Path,
    recipe: &ExtractorRecipe,
    device: &B::Device,
    progress: impl FnMut(usize, usize, f64),
) -> gen_metrics::Result<FeatureExtractor<B::InnerBackend>> {
    if path.exists() {
        return FeatureExtractor::load(path, device);
    }
    let (ex, _) = train_from_recipe::<B>(recipe, device, progress)?;
    ex.save(path)?;
    Ok(ex)
}

/// The one cache folder of every command (trained extractors): `$LENSING_DIFFUSION_CACHE`, else
/// `$XDG_CACHE_HOME/lensing-diffusion`, else `~/.cache/lensing-diffusion`, else
/// `.lensing-diffusion-cache` in the working folder.
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("LENSING_DIFFUSION_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("lensing-diffusion")))
        .or_else(|| var("HOME").map(|p| p.join(".cache/lensing-diffusion")))
        .unwrap_or_else(|| PathBuf::from(".lensing-diffusion-cache"))
}

/// The extractor this project trained with [`ExtractorRecipe::default`], shipped in the
/// repository (see `assets/extractor/README.md`).
pub fn shipped_extractor_path() -> PathBuf {
    shipped_path("resnet18-lensing-s128.bpk")
}

/// The extractor trained with [`ExtractorRecipe::legacy_s64`], shipped too.
pub fn legacy_extractor_path() -> PathBuf {
    shipped_path("resnet18-lensing-s64.bpk")
}

fn shipped_path(name: &str) -> PathBuf {
    // The source checkout (also for `cargo install --path .`, which builds from it): 45 MB is
    // too much to embed in every build of this crate (docs/ARCHITECTURE.md, decisions).
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/extractor").join(name)
}

/// 64-bit FNV-1a, a hash that is stable across builds (for cache file names).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The cache path of an extractor trained from `recipe` under `dir`; the name carries a hash of
/// the recipe, so a changed recipe never reuses a stale file.
pub fn cached_extractor_path(dir: &Path, recipe: &ExtractorRecipe) -> PathBuf {
    let key = fnv1a(serde_json::to_string(recipe).expect("serialisable").as_bytes());
    dir.join(format!("extractor-{}px-{key:016x}.bpk", recipe.image_size))
}

/// Where [`obtain_extractor`] takes the extractor for a recipe from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtractorSource {
    /// The file shipped in the repository (the default recipe).
    Shipped(PathBuf),
    /// A file an earlier run trained and cached.
    Cached(PathBuf),
    /// Nothing yet: it will be trained on simulated data and cached at this path.
    Train(PathBuf),
}

impl ExtractorSource {
    /// The file the extractor is (or will be) read from.
    pub fn path(&self) -> &Path {
        match self {
            Self::Shipped(p) | Self::Cached(p) | Self::Train(p) => p,
        }
    }
}

/// The shipped extractor for a shipped recipe; otherwise the one cached under `cache_dir`;
/// otherwise one to train. The one place that decides (commands use it for their messages).
pub fn extractor_source(recipe: &ExtractorRecipe, cache_dir: &Path) -> ExtractorSource {
    for (shipped_recipe, shipped) in [
        (ExtractorRecipe::default(), shipped_extractor_path()),
        (ExtractorRecipe::legacy_s64(), legacy_extractor_path()),
    ] {
        if *recipe == shipped_recipe && shipped.is_file() {
            return ExtractorSource::Shipped(shipped);
        }
    }
    let path = cached_extractor_path(cache_dir, recipe);
    if path.is_file() {
        ExtractorSource::Cached(path)
    } else {
        ExtractorSource::Train(path)
    }
}

/// The extractor from [`extractor_source`]: loaded, or trained now from `recipe` (simulated
/// data, `progress(step, total, loss)`) and cached.
pub fn obtain_extractor<B: KernelAutodiffBackend>(
    recipe: &ExtractorRecipe,
    cache_dir: &Path,
    device: &B::Device,
    progress: impl FnMut(usize, usize, f64),
) -> gen_metrics::Result<(FeatureExtractor<B::InnerBackend>, PathBuf)> {
    match extractor_source(recipe, cache_dir) {
        ExtractorSource::Shipped(path) => Ok((FeatureExtractor::load(&path, device)?, path)),
        ExtractorSource::Cached(path) | ExtractorSource::Train(path) => {
            let ex = ensure_extractor::<B>(&path, recipe, device, progress)?;
            Ok((ex, path))
        }
    }
}

/// The held-out accuracy recorded when the extractor was trained, if any.
pub fn heldout_accuracy<B: burn::tensor::backend::Backend>(ex: &FeatureExtractor<B>) -> Option<f64> {
    ex.info.as_ref().and_then(|i| i.get("heldout_accuracy")).and_then(|a| a.as_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_is_shipped_then_cached_then_trained() {
        let dir = tempfile::tempdir().expect("temp dir");
        let default = ExtractorRecipe::default();
        assert_eq!(extractor_source(&default, dir.path()), ExtractorSource::Shipped(shipped_extractor_path()));
        let legacy = ExtractorRecipe::for_image_size(64);
        assert_eq!(legacy, ExtractorRecipe::legacy_s64());
        assert_eq!(extractor_source(&legacy, dir.path()), ExtractorSource::Shipped(legacy_extractor_path()));
        assert_eq!(ExtractorRecipe::for_image_size(128), default);
        let other = ExtractorRecipe { image_size: default.image_size * 2, ..ExtractorRecipe::default() };
        let path = cached_extractor_path(dir.path(), &other);
        assert_eq!(extractor_source(&other, dir.path()), ExtractorSource::Train(path.clone()));
        std::fs::write(&path, b"stand-in").expect("write");
        assert_eq!(extractor_source(&other, dir.path()), ExtractorSource::Cached(path.clone()));
        assert_eq!(extractor_source(&other, dir.path()).path(), path.as_path());
    }
}
