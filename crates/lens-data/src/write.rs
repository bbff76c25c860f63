//! Writing datasets in the DeepLense layouts (f64 `(1, N, N)` `.npy` files, atomic writes), so
//! [`crate::load`] reads them back.

use std::path::{Path, PathBuf};

use ndarray::ArrayView2;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{LensDataError, Result};
use crate::npy::{npy_bytes_f64_into, write_atomic, write_npy_f64};
use crate::render::RenderScratch;
use crate::simulate::{check_count, class_of, LensClass, ModelI, ModelISimulator};

/// Writes one image as a DeepLense file: f64 `(1, H, W)`, little endian, C order, atomically.
pub fn write_image_npy(path: impl AsRef<Path>, img: ArrayView2<'_, f64>) -> Result<()> {
    let (h, w) = img.dim();
    let data: Vec<f64> = img.iter().copied().collect();
    write_npy_f64(path, &[1, h, w], &data)
}

/// On-disk layout of a generated dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DatasetLayout {
    /// `DIR/sample{1..N}.npy` (the diffusion set's `Samples/` folder), plus `DIR/labels.csv`
    /// (`file,class`) recording each image's class.
    Samples,
    /// `DIR/{train,val}/CLASS/{k}.npy` (the DeepLense classification layout); each class puts
    /// `round(n_class * val_fraction)` images into `val`.
    Labelled {
        /// Fraction of each class written to `val/` (0..=1).
        val_fraction: f64,
    },
}

/// What [`write_model_i_dataset`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteSummary {
    /// Output folder.
    pub out: PathBuf,
    /// Images written.
    pub count: usize,
    /// `(class, train count, val count)`; val is 0 for the `Samples` layout.
    pub per_class: Vec<(String, usize, usize)>,
}

#[derive(Serialize)]
struct Manifest<'a> {
    generator: &'a str,
    version: &'a str,
    model: &'a str,
    seed: u64,
    count: usize,
    classes: Vec<&'a str>,
    layout: String,
    num_pix: usize,
    pixel_scale: f64,
    psf_fwhm: Option<f64>,
    psf_truncation: f64,
    noise: bool,
    normalize: bool,
    per_class: &'a [(String, usize, usize)],
}

/// Relative path of image `index` (0-based) inside the dataset.
pub fn image_relative_path(layout: DatasetLayout, classes: &[LensClass], count: usize, index: usize) -> PathBuf {
    match layout {
        DatasetLayout::Samples => PathBuf::from(format!("sample{}.npy", index + 1)),
        DatasetLayout::Labelled { val_fraction } => {
            let c = classes.len();
            let class = class_of(classes, index);
            let within = index / c;
            let n_class = count / c + usize::from(index % c < count % c);
            let n_val = (n_class as f64 * val_fraction).round() as usize;
            let split = if within >= n_class - n_val { "val" } else { "train" };
            PathBuf::from(split).join(class.name()).join(format!("{}.npy", within + 1))
        }
    }
}

/// Simulates `count` Model I images (image `i` has class `classes[i % len]`, RNG stream `i` of
/// `seed`) in parallel and writes them under `out` in `layout`. `progress` is called once per
/// image written. A `manifest.json` describing the run is written last.
pub fn write_model_i_dataset(
    out: impl AsRef<Path>,
    config: &ModelI,
    classes: &[LensClass],
    count: usize,
    seed: u64,
    layout: DatasetLayout,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<WriteSummary> {
    let out = out.as_ref();
    if classes.is_empty() {
        return Err(LensDataError::invalid("classes", "[]", "need at least one class"));
    }
    if count == 0 {
        return Err(LensDataError::invalid("count", 0, "must be >= 1"));
    }
    check_count(count, &config.limits)?;
    if let DatasetLayout::Labelled { val_fraction } = layout {
        if !(0.0..=1.0).contains(&val_fraction) {
            return Err(LensDataError::invalid("val_fraction", val_fraction, "must be in [0, 1]"));
        }
    }
    let mut unique = classes.to_vec();
    unique.sort();
    unique.dedup();
    if unique.len() != classes.len() {
        return Err(LensDataError::invalid(
            "classes",
            classes.iter().map(|c| c.name()).collect::<Vec<_>>().join(","),
            "a class is listed twice",
        ));
    }
    let sim = ModelISimulator::new(config.clone())?;
    std::fs::create_dir_all(out).map_err(|e| LensDataError::io(out, e))?;
    let rels: Vec<PathBuf> = (0..count).map(|i| image_relative_path(layout, classes, count, i)).collect();
    let dirs: std::collections::BTreeSet<PathBuf> =
        rels.iter().filter_map(|r| r.parent().map(|p| out.join(p))).collect();
    for d in dirs {
        std::fs::create_dir_all(&d).map_err(|e| LensDataError::io(&d, e))?;
    }
    let n = config.num_pix;
    rels.par_iter().enumerate().try_for_each_init(
        || (RenderScratch::default(), vec![0.0f64; n * n], Vec::<u8>::new()),
        |(scratch, img, bytes), (i, rel)| -> Result<()> {
            sim.try_simulate_into(class_of(classes, i), seed, i as u64, scratch, img)?;
            npy_bytes_f64_into(&[1, n, n], img, bytes);
            write_atomic(&out.join(rel), bytes)?;
            progress(1);
            Ok(())
        },
    )?;

    let mut per_class: Vec<(String, usize, usize)> = classes.iter().map(|c| (c.name().to_string(), 0, 0)).collect();
    for (i, rel) in rels.iter().enumerate() {
        let e = &mut per_class[i % classes.len()];
        if rel.starts_with("val") {
            e.2 += 1;
        } else {
            e.1 += 1;
        }
    }
    if layout == DatasetLayout::Samples {
        let mut csv = String::from("file,class\n");
        for (i, rel) in rels.iter().enumerate() {
            csv.push_str(&format!("{},{}\n", rel.display(), class_of(classes, i).name()));
        }
        write_atomic(&out.join("labels.csv"), csv.as_bytes())?;
    }
    let manifest = Manifest {
        generator: "lens-data",
        version: env!("CARGO_PKG_VERSION"),
        model: "DeepLenseSim Model I",
        seed,
        count,
        classes: classes.iter().map(|c| c.name()).collect(),
        layout: match layout {
            DatasetLayout::Samples => "samples".into(),
            DatasetLayout::Labelled { val_fraction } => {
                format!("labelled (val_fraction {val_fraction})")
            }
        },
        num_pix: config.num_pix,
        pixel_scale: config.pixel_scale,
        psf_fwhm: config.psf_fwhm,
        psf_truncation: config.psf_truncation,
        noise: config.noise,
        normalize: config.normalize,
        per_class: &per_class,
    };
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    write_atomic(&out.join("manifest.json"), text.as_bytes())?;
    Ok(WriteSummary { out: out.to_path_buf(), count, per_class })
}
