//! Training data for the commands: a path lens-data reads, or the built-in simulator.

use std::path::Path;

use lens_data::dataset::ImageSet;
use lens_data::load::{load_labelled, load_path, LoadOptions};
use lens_data::resize::Resizer;
use lens_data::simulate::{simulate_dataset, LensClass, ModelI};
use lens_data::transform::Normalization;
use ndarray::{Array3, Axis};
use rayon::prelude::*;

/// Simulate `count` DeepLense Model I images (the three classes in turn, `num_pix` pixels, PSF,
/// noise, per-image min-max) and resize them to `size` x `size` with the antialiased bilinear
/// filter. Returns the images with their class labels (`ImageSet::labels`).
pub fn simulate_resized(count: usize, num_pix: usize, size: usize, classes: &[LensClass], seed: u64) -> lens_data::Result<ImageSet> {
    let config = ModelI { num_pix, ..ModelI::default() };
    let sim = simulate_dataset(&config, classes, count, seed)?;
    let images = if size == num_pix {
        sim.images.mapv(|v| v as f32)
    } else {
        let r = Resizer::new((num_pix, num_pix), (size, size));
        let out: Vec<Vec<f32>> = (0..count).into_par_iter().map(|i| r.resize(sim.images.index_axis(Axis(0), i)).into_raw_vec_and_offset().0).collect();
        Array3::from_shape_vec((count, size, size), out.concat()).expect("sizes agree")
    };
    let mut set = ImageSet::from_images(images);
    set.labels = Some(sim.labels);
    Ok(set)
}

/// Load images from a folder, a stacked `.npy`/`.npz`, image files, or the labelled layout
/// `ROOT/{train,val}/CLASS/*` (train and val are merged for generative training), resized to
/// `size` x `size` and normalised per image to `[0, 1]` (`minmax`) unless `normalization` says
/// otherwise. Bad files are skipped with a warning when `skip_bad`.
pub fn load_resized(path: &Path, size: usize, normalization: Normalization, skip_bad: bool) -> lens_data::Result<(ImageSet, Vec<String>)> {
    let opts = LoadOptions { target_size: Some((size, size)), normalization, skip_bad, ..Default::default() };
    let looks_labelled = path.join("train").is_dir();
    if looks_labelled {
        let ds = load_labelled(path, &opts)?;
        let mut images = ds.train.images;
        if let Some(val) = ds.val {
            images.append(Axis(0), val.images.view()).expect("same image size");
        }
        return Ok((ImageSet::from_images(images), vec![]));
    }
    let set = load_path(path, &opts)?;
    let warnings = set.warnings.iter().map(|w| w.to_string()).collect();
    Ok((set, warnings))
}
