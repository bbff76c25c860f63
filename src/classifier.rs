//! Where the commands get their lensing feature extractor from.

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use gen_metrics::train::{ensure_extractor, ExtractorRecipe};
use gen_metrics::FeatureExtractor;

/// The extractor this project trained with [`ExtractorRecipe::default`], shipped in the
/// repository (see `assets/extractor/README.md`).
pub fn shipped_extractor_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/extractor/resnet18-lensing-s64.bpk")
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

/// The shipped extractor for the default recipe; otherwise the one cached under `cache_dir`;
/// otherwise one to train. The one place that decides (commands use it for their messages).
pub fn extractor_source(recipe: &ExtractorRecipe, cache_dir: &Path) -> ExtractorSource {
    let shipped = shipped_extractor_path();
    if *recipe == ExtractorRecipe::default() && shipped.is_file() {
        return ExtractorSource::Shipped(shipped);
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
pub fn obtain_extractor<B: AutodiffBackend>(
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
        let other = ExtractorRecipe { image_size: default.image_size * 2, ..ExtractorRecipe::default() };
        let path = cached_extractor_path(dir.path(), &other);
        assert_eq!(extractor_source(&other, dir.path()), ExtractorSource::Train(path.clone()));
        std::fs::write(&path, b"stand-in").expect("write");
        assert_eq!(extractor_source(&other, dir.path()), ExtractorSource::Cached(path.clone()));
        assert_eq!(extractor_source(&other, dir.path()).path(), path.as_path());
    }
}
