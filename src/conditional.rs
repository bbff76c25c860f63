//! Evaluation of class-conditional generation: per-class FID and KID against the same real
//! class, class consistency (the lensing classifier's accuracy and confusion matrix on generated
//! images labelled with the class that was asked for, beside its accuracy on real held-out
//! images), and the guidance-scale sweep plot.

use std::path::Path;

use burn::tensor::backend::Backend;
use gen_metrics::{frechet_distance_from_features, kid, FeatureExtractor, KidConfig};
use ndarray::{Array2, ArrayView2, ArrayView3, Axis};
use serde::Serialize;

use crate::error::Error;

/// Generated vs real images of one class.
#[derive(Debug, Clone, Serialize)]
pub struct ClassMetrics {
    /// The class.
    pub class: String,
    /// Real images of the class.
    pub n_real: usize,
    /// Generated images of the class.
    pub n_generated: usize,
    /// Fréchet distance on the extractor's features.
    pub fid: f64,
    /// Kernel inception distance (mean over subsets of 100 or fewer).
    pub kid: f64,
}

fn rows(f: ArrayView2<'_, f64>, labels: &[usize], class: usize) -> Array2<f64> {
    let idx: Vec<usize> = labels.iter().enumerate().filter(|(_, &l)| l == class).map(|(i, _)| i).collect();
    f.select(Axis(0), &idx)
}

/// FID and KID of each class: generated features whose label is `c` against real features of
/// class `c`. Classes with fewer than two images on either side are skipped.
pub fn per_class_metrics(
    real: ArrayView2<'_, f64>,
    real_labels: &[usize],
    generated: ArrayView2<'_, f64>,
    generated_labels: &[usize],
    class_names: &[String],
    seed: u64,
) -> Result<Vec<ClassMetrics>, Error> {
    let mut out = Vec::new();
    for (c, name) in class_names.iter().enumerate() {
        let (r, g) = (rows(real, real_labels, c), rows(generated, generated_labels, c));
        if r.nrows() < 2 || g.nrows() < 2 {
            continue;
        }
        let fid = frechet_distance_from_features(r.view(), g.view())?.value;
        let subset = r.nrows().min(g.nrows()).min(100);
        let k = kid(r.view(), g.view(), &KidConfig { num_subsets: 50, subset_size: subset, seed })?;
        out.push(ClassMetrics { class: name.clone(), n_real: r.nrows(), n_generated: g.nrows(), fid, kid: k.mean });
    }
    Ok(out)
}

/// How often the lensing classifier sees the class that was asked for.
#[derive(Debug, Clone, Serialize)]
pub struct ClassConsistency {
    /// Fraction of images classified as their label.
    pub accuracy: f64,
    /// `confusion[asked][predicted]`, in the order of `class_names`.
    pub confusion: Vec<Vec<usize>>,
    /// The classes, in the model's label order.
    pub class_names: Vec<String>,
}

/// The extractor's class index of each of `class_names` (matched by name, case-insensitive);
/// an error names a class the classifier does not know.
pub fn classifier_indices<B: Backend>(ex: &FeatureExtractor<B>, class_names: &[String]) -> Result<Vec<usize>, Error> {
    class_names
        .iter()
        .map(|n| {
            ex.config.class_names.iter().position(|e| e.eq_ignore_ascii_case(n)).ok_or_else(|| {
                Error::invalid(
                    "class",
                    n,
                    format!(
                        "the lensing classifier knows {}; class consistency needs the same classes",
                        ex.config.class_names.join(", ")
                    ),
                )
            })
        })
        .collect()
}

/// Classify `images` (`[N, H, W]` in `[0, 1]`, any size) and compare with `labels` (indices into
/// `class_names`).
pub fn class_consistency<B: gen_metrics::KernelBackend>(
    ex: &FeatureExtractor<B>,
    images: ArrayView3<'_, f32>,
    labels: &[usize],
    class_names: &[String],
) -> Result<ClassConsistency, Error> {
    let to_ex = classifier_indices(ex, class_names)?;
    let images = crate::evaluate::to_size(images, ex.config.image_size);
    let predicted = gen_metrics::train::predict(&ex.model, images.view(), 100, &Default::default())?;
    let k = class_names.len();
    let mut confusion = vec![vec![0usize; k]; k];
    let mut right = 0;
    for (&asked, &p) in labels.iter().zip(&predicted) {
        // A prediction outside the model's classes counts as wrong and is not tabulated.
        if let Some(col) = to_ex.iter().position(|&e| e == p) {
            confusion[asked][col] += 1;
            right += usize::from(col == asked);
        }
    }
    Ok(ClassConsistency {
        accuracy: right as f64 / labels.len().max(1) as f64,
        confusion,
        class_names: class_names.to_vec(),
    })
}

/// One point of the guidance sweep.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SweepPoint {
    /// Guidance scale.
    pub cond_scale: f64,
    /// FID of all generated images against all real ones.
    pub fid: f64,
    /// Class consistency (accuracy).
    pub consistency: f64,
}

/// FID and class consistency against the guidance scale, two panels, with the classifier's
/// accuracy on real images as a dashed line.
pub fn sweep_plot(points: &[SweepPoint], real_accuracy: f64, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    if points.is_empty() {
        return Err("no sweep points to plot".into());
    }
    let (w, h) = (960u32, 420u32);
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(w / 2);
        let s_lo = points.iter().map(|p| p.cond_scale).fold(f64::INFINITY, f64::min);
        let s_hi = points.iter().map(|p| p.cond_scale).fold(f64::NEG_INFINITY, f64::max);
        let pad = ((s_hi - s_lo) * 0.05).max(0.1);
        let xs = (s_lo - pad)..(s_hi + pad);
        let fid_hi = points.iter().map(|p| p.fid).fold(0.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(&left)
            .caption("FID vs guidance scale", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(xs.clone(), 0.0..fid_hi.max(1e-9))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("cond_scale")
            .y_desc("FID (lower is better)")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(points.iter().map(|p| (p.cond_scale, p.fid)), BLUE.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(points.iter().map(|p| Circle::new((p.cond_scale, p.fid), 4, BLUE.filled())))
            .map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&right)
            .caption("Class consistency vs guidance scale", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(xs.clone(), 0.0..1.05)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("cond_scale")
            .y_desc("classifier accuracy on generated")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(points.iter().map(|p| (p.cond_scale, p.consistency)), RED.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("generated, labelled as asked")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|p| Circle::new((p.cond_scale, p.consistency), 4, RED.filled())))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(xs.start, real_accuracy), (xs.end, real_accuracy)],
                6,
                4,
                BLACK.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?
            .label("real held-out images")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    crate::plot::write_png_rgb(rgb, w, h, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_metrics_compare_like_with_like() {
        // Two classes far apart in feature space: each generated class matches its own real
        // class (small FID), and swapping the labels makes every class far off.
        let mut state = 7u64;
        let mut gauss = |m: f64| {
            let mut u = || {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
            };
            m + (-2.0 * u().ln()).sqrt() * (2.0 * std::f64::consts::PI * u()).cos()
        };
        let n = 120;
        let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let make = |g: &mut dyn FnMut(f64) -> f64| {
            Array2::from_shape_fn((n, 4), |(i, _)| g(if labels[i] == 0 { 0.0 } else { 5.0 }))
        };
        let real = make(&mut gauss);
        let gen = make(&mut gauss);
        let names = vec!["a".to_string(), "b".to_string()];
        let right = per_class_metrics(real.view(), &labels, gen.view(), &labels, &names, 0).unwrap();
        let swapped: Vec<usize> = labels.iter().map(|l| 1 - l).collect();
        let wrong = per_class_metrics(real.view(), &labels, gen.view(), &swapped, &names, 0).unwrap();
        assert_eq!(right.len(), 2);
        for (r, w) in right.iter().zip(&wrong) {
            assert!(r.fid < 1.0 && w.fid > 50.0, "{r:?} vs {w:?}");
            assert!(r.kid < w.kid);
            assert_eq!((r.n_real, r.n_generated), (60, 60));
        }
    }
}
