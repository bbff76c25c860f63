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
}

impl Resizer {
    /// Builds the filter taps once.
    pub fn new(in_shape: (usize, usize), out_shape: (usize, usize)) -> Self {
        Self {
            in_shape,
            out_shape,
            rows: AxisWeights::new(in_shape.0, out_shape.0),
            cols: AxisWeights::new(in_shape.1, out_shape.1),
        }
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
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above). No FMA: bit-identical results.
                unsafe { self.run_avx2(src, dst, scratch, conv) };
                return;
            }
        }
        self.run_generic(src, dst, scratch, conv)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2<T: Copy + Into<f64>, O>(
        &self,
        src: &[T],
        dst: &mut [O],
        scratch: &mut Vec<f64>,
        conv: impl Fn(f64) -> O,
    ) {
        self.run_generic(src, dst, scratch, conv)
    }

    /// Both passes as contiguous row combinations (vectorisable): transpose, combine rows with
    /// the column taps (= the horizontal pass), transpose back, combine rows with the row taps.
    /// Every output is still `sum_k w_k x_k` accumulated from 0 in tap order, exactly as PIL's
    /// horizontal-then-vertical loops.
    #[inline(always)]
    fn run_generic<T: Copy + Into<f64>, O>(
        &self,
        src: &[T],
        dst: &mut [O],
        scratch: &mut Vec<f64>,
        conv: impl Fn(f64) -> O,
    ) {
        let (ih, iw) = self.in_shape;
        let (oh, ow) = self.out_shape;
        assert_eq!(src.len(), ih * iw, "input length");
        assert_eq!(dst.len(), oh * ow, "output length");
        scratch.clear();
        scratch.resize(iw * ih + 2 * ow * ih + ow, 0.0);
        let (t1, rest) = scratch.split_at_mut(iw * ih);
        let (it, rest) = rest.split_at_mut(ow * ih);
        let (inter, acc) = rest.split_at_mut(ih * ow);
        // 1. t1 = transpose(src): (iw, ih)
        transpose_blocked(src, ih, iw, t1);
        // 2. horizontal pass: it[c, :] = sum_k w[c][k] t1[start_c + k, :]   -> (ow, ih)
        for c in 0..ow {
            let s = self.cols.start[c];
            let out = &mut it[c * ih..(c + 1) * ih];
            out.iter_mut().for_each(|o| *o = 0.0);
            for (k, &w) in self.cols.weights[c].iter().enumerate() {
                let row = &t1[(s + k) * ih..(s + k + 1) * ih];
                for (o, &v) in out.iter_mut().zip(row) {
                    *o += w * v;
                }
            }
        }
        // 3. inter = transpose(it): (ih, ow)
        transpose_blocked(it, ow, ih, inter);
        // 4. vertical pass: dst[r, :] = sum_k w[r][k] inter[start_r + k, :]
        for r in 0..oh {
            let s = self.rows.start[r];
            acc.iter_mut().for_each(|a| *a = 0.0);
            for (k, &w) in self.rows.weights[r].iter().enumerate() {
                let row = &inter[(s + k) * ow..(s + k + 1) * ow];
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += w * v;
                }
            }
            for (o, &a) in dst[r * ow..(r + 1) * ow].iter_mut().zip(acc.iter()) {
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

/// `dst (cols x rows) = transpose(src (rows x cols))`, in 8 x 8 tiles (cache friendly).
#[inline(always)]
fn transpose_blocked<T: Copy + Into<f64>>(src: &[T], rows: usize, cols: usize, dst: &mut [f64]) {
    const B: usize = 8;
    for r0 in (0..rows).step_by(B) {
        let r1 = (r0 + B).min(rows);
        for c0 in (0..cols).step_by(B) {
            let c1 = (c0 + B).min(cols);
            for r in r0..r1 {
                let row = &src[r * cols + c0..r * cols + c1];
                for (k, &v) in row.iter().enumerate() {
                    dst[(c0 + k) * rows + r] = v.into();
                }
            }
        }
    }
}

/// Resizes one image to `(out_h, out_w)` with the antialiased bilinear filter.
pub fn resize_bilinear_aa(img: ArrayView2<'_, f64>, out_shape: (usize, usize)) -> Array2<f32> {
    Resizer::new(img.dim(), out_shape).resize(img)
}
