//! Antialiased bilinear resizing: the separable triangle filter of PIL's `Image.resize(BILINEAR)`
//! and of `torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False)`
//! (both use the same algorithm): when shrinking by a factor `s > 1` the triangle's support is
//! widened to `s` input pixels, so every input pixel contributes (no aliasing); when enlarging it
//! is plain bilinear interpolation with half-pixel centres. Weights are computed in f64 and
//! normalised per output pixel; the horizontal pass runs first, then the vertical.

use ndarray::{Array2, ArrayView2};

/// Precomputed filter taps for one axis (`in_size -> out_size`).
#[derive(Debug, Clone, PartialEq)]
pub struct AxisWeights {
    /// First input index of each output pixel.
    pub start: Vec<usize>,
    /// Normalised weights of each output pixel (variable length).
    pub weights: Vec<Vec<f64>>,
}

impl AxisWeights {
    /// PIL `precompute_coeffs` with the bilinear (triangle) filter.
    pub fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale; // triangle support 1.0 x filterscale
        let inv = 1.0 / filterscale;
        let mut start = Vec::with_capacity(out_size);
        let mut weights = Vec::with_capacity(out_size);
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize; // C-style truncation
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(xmin as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) * inv).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            start.push(xmin);
            weights.push(w);
        }
        Self { start, weights }
    }
}

/// A reusable resizer `(in_h, in_w) -> (out_h, out_w)`.
#[derive(Debug, Clone)]
pub struct Resizer {
    in_shape: (usize, usize),
    out_shape: (usize, usize),
    rows: AxisWeights,
    cols: AxisWeights,
    /// Column taps as a dense `out_w x k` table (zero-padded, starts shifted to stay in range):
    /// the horizontal pass then runs fixed-length dot products. Adding the padded zeros first
    /// or last leaves every sum bit-identical.
    col_k: usize,
    col_start: Vec<usize>,
    col_flat: Vec<f64>,
}

fn flatten(w: &AxisWeights, in_size: usize) -> (usize, Vec<usize>, Vec<f64>) {
    let k = w.weights.iter().map(Vec::len).max().unwrap_or(0);
    if k == 0 || k > in_size {
        return (0, Vec::new(), Vec::new());
    }
    let mut start = Vec::with_capacity(w.start.len());
    let mut flat = vec![0.0; w.start.len() * k];
    for (c, (&s, taps)) in w.start.iter().zip(&w.weights).enumerate() {
        let s2 = s.min(in_size - k);
        let shift = s - s2;
        flat[c * k + shift..c * k + shift + taps.len()].copy_from_slice(taps);
        start.push(s2);
    }
    (k, start, flat)
}

impl Resizer {
    /// Builds the filter taps once.
    pub fn new(in_shape: (usize, usize), out_shape: (usize, usize)) -> Self {
        let cols = AxisWeights::new(in_shape.1, out_shape.1);
        let (col_k, col_start, col_flat) = flatten(&cols, in_shape.1);
        Self { in_shape, out_shape, rows: AxisWeights::new(in_shape.0, out_shape.0), cols, col_k, col_start, col_flat }
    }

    /// Input (H, W).
    pub fn in_shape(&self) -> (usize, usize) {
        self.in_shape
    }

    /// Output (H, W).
    pub fn out_shape(&self) -> (usize, usize) {
        self.out_shape
    }

    /// Resizes a row-major `in_h x in_w` slice into a row-major `out_h x out_w` slice.
    /// `scratch` is reused between calls (it is resized as needed).
    pub fn resize_into<T: Copy + Into<f64>>(&self, src: &[T], dst: &mut [f32], scratch: &mut Vec<f64>) {
        self.run(src, dst, scratch, |v| v as f32)
    }

    /// As [`Self::resize_into`], keeping f64 output (for exactness checks).
    pub fn resize_into_f64<T: Copy + Into<f64>>(&self, src: &[T], dst: &mut [f64], scratch: &mut Vec<f64>) {
        self.run(src, dst, scratch, |v| v)
    }

    fn run<T: Copy + Into<f64>, O>(&self, src: &[T], dst: &mut [O], scratch: &mut Vec<f64>, conv: impl Fn(f64) -> O) {
        let (ih, iw) = self.in_shape;
        let (oh, ow) = self.out_shape;
        assert_eq!(src.len(), ih * iw, "input length");
        assert_eq!(dst.len(), oh * ow, "output length");
        scratch.clear();
        scratch.resize(ih * ow, 0.0);
        // horizontal pass: (ih, iw) -> (ih, ow)
        let k = self.col_k;
        for r in 0..ih {
            let row = &src[r * iw..(r + 1) * iw];
            let out = &mut scratch[r * ow..(r + 1) * ow];
            if k > 0 {
                for (c, o) in out.iter_mut().enumerate() {
                    let s = self.col_start[c];
                    let mut acc = 0.0;
                    for (w, v) in self.col_flat[c * k..(c + 1) * k].iter().zip(&row[s..s + k]) {
                        acc += w * (*v).into();
                    }
                    *o = acc;
                }
            } else {
                for (c, o) in out.iter_mut().enumerate() {
                    let s = self.cols.start[c];
                    let mut acc = 0.0;
                    for (kk, w) in self.cols.weights[c].iter().enumerate() {
                        acc += w * row[s + kk].into();
                    }
                    *o = acc;
                }
            }
        }
        // vertical pass: (ih, ow) -> (oh, ow), row-wise so the inner loop is contiguous
        // (same summation order per pixel as the tap-wise loop)
        let mut acc = vec![0.0f64; ow];
        for r in 0..oh {
            let s = self.rows.start[r];
            acc.iter_mut().for_each(|a| *a = 0.0);
            for (k, &w) in self.rows.weights[r].iter().enumerate() {
                let row = &scratch[(s + k) * ow..(s + k + 1) * ow];
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += w * v;
                }
            }
            for (o, &a) in dst[r * ow..(r + 1) * ow].iter_mut().zip(&acc) {
                *o = conv(a);
            }
        }
    }

    /// Resizes one image.
    pub fn resize(&self, img: ArrayView2<'_, f64>) -> Array2<f32> {
        let src = img.as_standard_layout();
        let mut dst = Array2::<f32>::zeros(self.out_shape);
        let mut scratch = Vec::new();
        self.resize_into(src.as_slice().expect("standard layout"), dst.as_slice_mut().expect("fresh"), &mut scratch);
        dst
    }
}

/// Resizes one image to `(out_h, out_w)` with the antialiased bilinear filter.
pub fn resize_bilinear_aa(img: ArrayView2<'_, f64>, out_shape: (usize, usize)) -> Array2<f32> {
    Resizer::new(img.dim(), out_shape).resize(img)
}
