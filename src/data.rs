//! Training data for the commands: a path lens-data reads, or the built-in simulator.

use std::path::Path;

use lens_data::dataset::ImageSet;
use lens_data::load::{load_labelled, load_path, LoadOptions};
use lens_data::resize::Resizer;
use lens_data::simulate::{simulate_dataset, LensClass, ModelI};
use lens_data::transform::Normalization;
use ndarray::{Array3, Axis};
use rayon::prelude::*;

/// Model I's field of view: 150 pixels of 0.05 arcsec.
pub const MODEL_I_FIELD_OF_VIEW_ARCSEC: f64 = 7.5;

/// DeepLense Model I on a `num_pix` grid over the same 7.5 arcsec field of view, so a coarser or
/// finer grid shows the same lenses, not a zoomed view of them.
pub fn model_i(num_pix: usize) -> ModelI {
    ModelI { num_pix, pixel_scale: MODEL_I_FIELD_OF_VIEW_ARCSEC / num_pix.max(1) as f64, ..ModelI::default() }
}

/// Simulate `count` DeepLense Model I images (the three classes in turn, `num_pix` pixels over
/// the 7.5 arcsec field, PSF, noise, per-image min-max) and resize them to `size` x `size` with
/// the antialiased bilinear filter. Returns the images with their class labels
/// (`ImageSet::labels`). The one simulate-and-resize path: the diffusion model's data and the
/// feature extractor's both come from here.
pub fn simulate_resized(
    count: usize,
    num_pix: usize,
    size: usize,
    classes: &[LensClass],
    seed: u64,
) -> lens_data::Result<ImageSet> {
    simulate_resized_with(&model_i(num_pix), count, size, classes, seed)
}

/// [`simulate_resized`] with any simulator configuration (e.g. without noise).
pub fn simulate_resized_with(
    config: &ModelI,
    count: usize,
    size: usize,
    classes: &[LensClass],
    seed: u64,
) -> lens_data::Result<ImageSet> {
    let num_pix = config.num_pix;
    let sim = simulate_dataset(config, classes, count, seed)?;
    let images = if size == num_pix {
        sim.images.mapv(|v| v as f32)
    } else {
        let r = Resizer::new((num_pix, num_pix), (size, size));
        let out: Vec<Vec<f32>> = (0..count)
            .into_par_iter()
            .map(|i| r.resize(sim.images.index_axis(Axis(0), i)).into_raw_vec_and_offset().0)
            .collect();
        Array3::from_shape_vec((count, size, size), out.concat()).expect("sizes agree")
    };
    // f64 pixels beyond f32 (an unnormalised configuration) would become infinite silently.
    if let Some(first_index) = images.iter().position(|v| !v.is_finite()) {
        return Err(lens_data::LensDataError::NonFiniteRender {
            what: format!("simulated images resized to {size}x{size} as f32"),
            count: images.iter().filter(|v| !v.is_finite()).count(),
            first_index,
        });
    }
    let mut set = ImageSet::from_images(images);
    set.labels = Some(sim.labels);
    set.class_names = sim.classes.iter().map(|c| c.name().to_string()).collect();
    Ok(set)
}

/// Load images from a folder, a stacked `.npy`/`.npz`, image files, or the labelled layout
/// `ROOT/{train,val}/CLASS/*` (train and val are merged for generative training, keeping their
/// labels and class names), resized to
/// `size` x `size` and normalised per image to `[0, 1]` (`minmax`) unless `normalization` says
/// otherwise. Bad files are skipped with a warning when `skip_bad`.
pub fn load_resized(
    path: &Path,
    size: usize,
    normalization: Normalization,
    skip_bad: bool,
) -> lens_data::Result<(ImageSet, Vec<String>)> {
    let opts = LoadOptions { target_size: Some((size, size)), normalization, skip_bad, ..Default::default() };
    let looks_labelled = path.join("train").is_dir();
    if looks_labelled {
        let ds = load_labelled(path, &opts)?;
        let mut images = ds.train.images;
        let mut labels = ds.train.labels.unwrap_or_default();
        if let Some(val) = ds.val {
            images.append(Axis(0), val.images.view()).expect("same image size");
            labels.extend(val.labels.unwrap_or_default());
        }
        let mut set = ImageSet::from_images(images);
        set.labels = (labels.len() == set.len()).then_some(labels);
        set.class_names = ds.class_names;
        return Ok((set, vec![]));
    }
    let set = load_path(path, &opts)?;
    let warnings = set.warnings.iter().map(|w| w.to_string()).collect();
    Ok((set, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_abs_diff(a: &Array3<f32>, b: &Array3<f32>) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
    }

    /// Another grid size must show the same lenses: noise-free images simulated at 75 and 150
    /// pixels agree once resized to 32x32. With the field of view halved (0.05 arcsec pixels on
    /// a 75-pixel grid, the bug this guards against) they do not.
    #[test]
    fn grid_size_keeps_the_field_of_view() {
        let classes = LensClass::ALL;
        let noiseless = |num_pix| ModelI { noise: false, ..model_i(num_pix) };
        let fine = simulate_resized_with(&noiseless(150), 6, 32, &classes, 7).unwrap().images;
        let coarse = simulate_resized_with(&noiseless(75), 6, 32, &classes, 7).unwrap().images;
        let zoomed =
            simulate_resized_with(&ModelI { pixel_scale: 0.05, ..noiseless(75) }, 6, 32, &classes, 7).unwrap().images;
        let same = mean_abs_diff(&fine, &coarse);
        let wrong = mean_abs_diff(&fine, &zoomed);
        eprintln!("mean |difference| at 32x32: same field {same:.4}, half field {wrong:.4}");
        assert!(same < 0.02, "{same}");
        assert!(wrong > 5.0 * same, "{wrong} vs {same}");
        assert_eq!(model_i(150).pixel_scale, ModelI::default().pixel_scale);
    }
}
