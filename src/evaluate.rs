//! Images to features to metrics: the lensing feature extractor (the shipped one unless told
//! otherwise), resizing to its input, gen-metrics' report, and the physical statistics of the
//! images themselves (Einstein radii, arc profiles, multipoles, spectra; [`physics`]).
//!
//! ```no_run
//! use burn::backend::{Autodiff, Flex};
//! use lensing_diffusion::evaluate::{load_extractor, features_of_path};
//!
//! let device = Default::default();
//! let ex = load_extractor::<Autodiff<Flex>>(None, 128, &device, false)?;
//! let real = features_of_path(&ex, "real/".as_ref(), 64, false)?;
//! let generated = features_of_path(&ex, "samples.npy".as_ref(), 64, false)?;
//! let report = gen_metrics::evaluate_features(real.view(), generated.view(), None, &Default::default())?;
//! println!("{}", report.to_table());
//! # Ok::<(), lensing_diffusion::Error>(())
//! ```

use std::path::Path;

use gen_metrics::physics::{compare_sets, write_plots, PhysicsComparison, PhysicsSet};
use gen_metrics::{EvaluationReport, FeatureExtractor};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array2, Array3, ArrayView3, Axis};

use crate::classifier::{
    cache_dir, extractor_source, heldout_accuracy, obtain_extractor, ExtractorRecipe, ExtractorSource,
};
use crate::error::Error;

fn bar(len: u64, template: &str, show: bool) -> ProgressBar {
    let pb = if show { ProgressBar::new(len) } else { ProgressBar::hidden() };
    pb.set_style(ProgressStyle::with_template(template).expect("valid template"));
    pb
}

/// The extractor at `path`; without one, the extractor of `recipe` (the shipped file for a
/// shipped recipe, else one trained on simulated data on first use and cached in
/// [`cache_dir`]).
pub fn load_extractor_for<B: gen_metrics::KernelAutodiffBackend>(
    path: Option<&Path>,
    recipe: &ExtractorRecipe,
    device: &B::Device,
    progress: bool,
) -> Result<FeatureExtractor<B::InnerBackend>, Error> {
    if let Some(p) = path {
        return Ok(FeatureExtractor::load(p, device)?);
    }
    let cache = cache_dir();
    if let ExtractorSource::Train(p) = extractor_source(recipe, &cache) {
        if progress {
            eprintln!(
                "   no extractor for this recipe yet: training one on simulated data (once), cached at {}",
                p.display()
            );
        }
    }
    let pb = bar(0, "   training the lensing classifier {wide_bar} {pos}/{len} steps  {msg}  ETA {eta}", progress);
    let (ex, p) = obtain_extractor::<B>(recipe, &cache, device, |step, total, loss| {
        pb.set_length(total as u64);
        pb.set_position(step as u64);
        pb.set_message(format!("loss {loss:.3}"));
    })?;
    pb.finish_and_clear();
    if progress {
        let acc = heldout_accuracy(&ex).map(|a| format!(", held-out accuracy {:.1}%", a * 100.0)).unwrap_or_default();
        eprintln!("   extractor {} ({s}x{s} input{acc})", p.display(), s = ex.config.image_size);
    }
    Ok(ex)
}

/// [`load_extractor_for`] with the shipped recipe of input `image_size` (128: the default, 64:
/// the first one), else the default recipe at that size.
pub fn load_extractor<B: gen_metrics::KernelAutodiffBackend>(
    path: Option<&Path>,
    image_size: usize,
    device: &B::Device,
    progress: bool,
) -> Result<FeatureExtractor<B::InnerBackend>, Error> {
    load_extractor_for::<B>(path, &ExtractorRecipe::for_image_size(image_size), device, progress)
}

/// Resize `[n, h, w]` images to `size` x `size` (antialiased bilinear; a copy when already that
/// size). Real, generated and baseline sets all go through here, so none is favoured.
pub fn to_size(images: ArrayView3<'_, f32>, size: usize) -> Array3<f32> {
    let (n, h, w) = images.dim();
    if (h, w) == (size, size) {
        return images.to_owned();
    }
    let r = lens_data::resize::Resizer::new((h, w), (size, size));
    let mut out = Array3::<f32>::zeros((n, size, size));
    for (i, mut dst) in out.outer_iter_mut().enumerate() {
        dst.assign(&r.resize(images.index_axis(Axis(0), i).mapv(f64::from).view()));
    }
    out
}

/// Features of images in `[0, 1]` (any size; resized to the extractor's input), in batches.
pub fn embed<B: gen_metrics::KernelBackend>(
    ex: &FeatureExtractor<B>,
    images: ArrayView3<'_, f32>,
    batch: usize,
    label: &str,
    progress: bool,
) -> Result<Array2<f64>, Error> {
    let images = to_size(images, ex.config.image_size);
    let pb = bar(images.dim().0 as u64, &format!("   features {label:>9} {{wide_bar}} {{pos}}/{{len}}"), progress);
    let f = ex.extract(images.view(), batch, &Default::default(), |k| pb.inc(k as u64))?;
    pb.finish_and_clear();
    Ok(f)
}

/// Features of the images in a file or folder (any format lens-data reads; min-max normalised
/// per image and resized to the extractor's input on load).
pub fn features_of_path<B: gen_metrics::KernelBackend>(
    ex: &FeatureExtractor<B>,
    path: &Path,
    batch: usize,
    progress: bool,
) -> Result<Array2<f64>, Error> {
    let set = lens_data::load::load_path(path, &lens_data::LoadOptions::resized(ex.config.image_size))?;
    let label = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    embed(ex, set.images.view(), batch, &label, progress)
}

/// Physical statistics of two image sets (`gen_metrics::physics`), each at its own resolution
/// (min-max normalised per image): the comparison, and the plots in `plots` when given. The sets
/// must share a size; the error says both when they do not.
pub fn physics<T: Copy + Into<f64> + Sync, U: Copy + Into<f64> + Sync>(
    real: ArrayView3<'_, T>,
    generated: ArrayView3<'_, U>,
    seed: u64,
    plots: Option<&Path>,
) -> Result<(PhysicsComparison, Vec<String>), Error> {
    let r = PhysicsSet::compute(real, "real images", seed)?;
    let g = PhysicsSet::compute(generated, "generated images", seed)?;
    let cmp = compare_sets(&r, &g)?;
    let files = match plots {
        Some(dir) => write_plots(dir, &r, &g)?,
        None => vec![],
    };
    Ok((cmp, files))
}

/// The images of a file or folder at their own size (min-max normalised per image), for
/// [`physics`].
pub fn images_of_path(path: &Path) -> Result<Array3<f32>, Error> {
    Ok(lens_data::load::load_path(path, &lens_data::LoadOptions::default())?.images)
}

/// `report` as JSON with a `physics` object beside the feature metrics, written atomically.
pub fn write_json(path: &Path, report: &EvaluationReport, physics: Option<&PhysicsComparison>) -> Result<(), Error> {
    let mut v = serde_json::to_value(report).map_err(|e| Error::invalid("report", e, "not serialisable"))?;
    if let (Some(p), Some(obj)) = (physics, v.as_object_mut()) {
        obj.insert(
            "physics".into(),
            serde_json::to_value(p).map_err(|e| Error::invalid("physics", e, "not serialisable"))?,
        );
    }
    let text = serde_json::to_string_pretty(&v).expect("a JSON value prints");
    atomic_file::write(path, text.as_bytes()).map_err(Error::io(path))
}
