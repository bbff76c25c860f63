//! The scale of the report's FID: the distance between two *real* classes at the same set sizes,
//! image size and extractor as the generated-vs-real row (issue 21). A generated set farther from
//! the real one than CDM subhalos are from axion vortices cannot support a substructure study.

use gen_metrics::{frechet_distance_from_features, FeatureExtractor};
use lens_data::simulate::LensClass;
use serde::Serialize;

use crate::error::Error;

/// FID between simulated real classes (`first` images of one class against `second` of the other,
/// the sizes of the real and generated sets the pipeline compares).
#[derive(Debug, Clone, Serialize)]
pub struct BetweenClasses {
    /// CDM subhalos vs axion vortices: the two substructure classes (the hardest pair).
    pub cdm_vs_axion: f64,
    /// No substructure vs CDM subhalos.
    pub no_sub_vs_cdm: f64,
    /// Images of the first class of each pair.
    pub n_first: usize,
    /// Images of the second class of each pair.
    pub n_second: usize,
}

/// Simulates the four sets (each class from its own seed derived from `seed`), resizes them to
/// `size` and measures both pairs on `ex`'s features.
pub fn fid_between_classes<B: gen_metrics::KernelBackend>(
    ex: &FeatureExtractor<B>,
    n_first: usize,
    n_second: usize,
    num_pix: usize,
    size: usize,
    seed: u64,
    progress: bool,
) -> Result<BetweenClasses, Error> {
    let features = |class: LensClass, n: usize, k: u64, label: &str| -> Result<_, Error> {
        let set = crate::data::simulate_resized(n, num_pix, size, &[class], seed.wrapping_add(7_919 * k))?;
        crate::evaluate::embed(ex, set.images.view(), 100, label, progress)
    };
    let fid = |a: &ndarray::Array2<f64>, b: &ndarray::Array2<f64>| -> Result<f64, Error> {
        Ok(frechet_distance_from_features(a.view(), b.view())?.value)
    };
    let cdm_a = features(LensClass::Cdm, n_first, 1, "cdm")?;
    let axion_b = features(LensClass::Axion, n_second, 2, "axion")?;
    let cdm_vs_axion = fid(&cdm_a, &axion_b)?;
    let no_sub_a = features(LensClass::NoSub, n_first, 3, "no_sub")?;
    let cdm_b = features(LensClass::Cdm, n_second, 4, "cdm")?;
    let no_sub_vs_cdm = fid(&no_sub_a, &cdm_b)?;
    Ok(BetweenClasses { cdm_vs_axion, no_sub_vs_cdm, n_first, n_second })
}
