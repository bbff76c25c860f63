//! Softmax over the last axis of a contiguous f32 slice, and its gradient (the CPU kernels behind
//! `unet::UnetBackend::softmax_last` on burn Flex); and over the second-to-last axis
//! ([`forward_cols`], [`backward_cols`], behind `unet::UnetBackend::softmax_cols`),
//! vectorised across the last axis.
//!
//! Per row of length `L`: `y = exp(x - max) / sum(exp(x - max))`, the formula burn's `softmax`
//! composes, with the polynomial [`crate::norm_act::exp`] (vectorised through `pulp`'s run-time
//! dispatch) instead of the scalar libm `expf` that Flex's `exp` calls element by element. The
//! gradient, `dx = y * (g - sum(g * y))`, is one pass per row instead of autodiff's decomposed
//! `max / sub / exp / sum / div` backward.

use rayon::prelude::*;

use crate::fill::{filled_by, SharedMut};

/// Elements per parallel task (whole rows, at least one).
const TASK: usize = 16 * 1024;

fn rows_per_task(len: usize) -> usize {
    (TASK / len.max(1)).max(1)
}

struct Forward<'a> {
    x: &'a [f32],
    y: &'a mut [f32],
    len: usize,
}

impl pulp::WithSimd for Forward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for (xr, yr) in self.x.chunks_exact(self.len).zip(self.y.chunks_exact_mut(self.len)) {
            let max = xr.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            for (y, &v) in yr.iter_mut().zip(xr) {
                *y = crate::norm_act::exp(v - max);
            }
            let sum = lane_sum(yr);
            for y in yr.iter_mut() {
                *y /= sum;
            }
        }
    }
}

struct Backward<'a> {
    y: &'a [f32],
    grad: &'a [f32],
    dx: &'a mut [f32],
    len: usize,
}

impl pulp::WithSimd for Backward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let rows = self.y.chunks_exact(self.len).zip(self.grad.chunks_exact(self.len));
        for ((yr, gr), dr) in rows.zip(self.dx.chunks_exact_mut(self.len)) {
            for ((d, &y), &g) in dr.iter_mut().zip(yr).zip(gr) {
                *d = g * y;
            }
            let dot = lane_sum(dr);
            for ((d, &y), &g) in dr.iter_mut().zip(yr).zip(gr) {
                *d = y * (g - dot);
            }
        }
    }
}

/// A sum in 16 lanes (so that it vectorises), the lanes added at the end.
#[inline(always)]
fn lane_sum(v: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let main = v.len() / L * L;
    for c in v[..main].chunks_exact(L) {
        for l in 0..L {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + v[main..].iter().sum::<f32>()
}

/// Softmax over `len` values of `x` viewed as `[groups, len, inner]` (`x.len()` a multiple of
/// `len * inner`): over rows when `inner` is 1 (the last axis), else over the columns of each
/// `[len, inner]` matrix, vectorised across them.
pub fn forward(x: &[f32], len: usize, inner: usize) -> Vec<f32> {
    if inner == 1 {
        forward_rows(x, len)
    } else {
        forward_cols(x, len, inner)
    }
}

/// The gradient of [`forward`] given its output `y` and the output's gradient `grad`:
/// `y * (grad - sum(grad * y))` over the same `len` values.
pub fn backward(y: &[f32], grad: &[f32], len: usize, inner: usize) -> Vec<f32> {
    if inner == 1 {
        backward_rows(y, grad, len)
    } else {
        backward_cols(y, grad, len, inner)
    }
}

/// Softmax over rows of length `len` of `x` (`x.len()` a multiple of `len`).
fn forward_rows(x: &[f32], len: usize) -> Vec<f32> {
    assert!(len > 0 && x.len().is_multiple_of(len), "softmax: {} values are not rows of {len}", x.len());
    let mut y = vec![0f32; x.len()];
    let chunk = rows_per_task(len) * len;
    let arch = pulp::Arch::new();
    y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(y, x)| arch.dispatch(Forward { x, y, len }));
    y
}

/// The gradient of [`forward_rows`] given its output `y` and the output's gradient `grad`.
fn backward_rows(y: &[f32], grad: &[f32], len: usize) -> Vec<f32> {
    assert!(len > 0 && y.len().is_multiple_of(len), "softmax: {} values are not rows of {len}", y.len());
    assert_eq!(y.len(), grad.len(), "softmax: gradient length");
    let mut dx = vec![0f32; y.len()];
    let chunk = rows_per_task(len) * len;
    let arch = pulp::Arch::new();
    dx.par_chunks_mut(chunk)
        .zip(y.par_chunks(chunk).zip(grad.par_chunks(chunk)))
        .for_each(|(dx, (y, grad))| arch.dispatch(Backward { y, grad, dx, len }));
    dx
}

/// Columns per task of [`forward_cols`] / [`backward_cols`]: a task's `len` rows of this many
/// values stay in the L1 cache between its passes.
const COLS: usize = 256;

/// The (group, first column, columns) tasks over `groups` matrices of `inner` columns.
fn col_tasks(groups: usize, inner: usize) -> Vec<(usize, usize, usize)> {
    (0..groups)
        .flat_map(|g| (0..inner.div_ceil(COLS)).map(move |t| (g, t * COLS, COLS.min(inner - t * COLS))))
        .collect()
}

struct ForwardCols<'a> {
    /// One group `[len, inner]`.
    x: &'a [f32],
    /// The same group of the output.
    y: SharedMut,
    len: usize,
    inner: usize,
    /// First column and number of columns.
    cols: (usize, usize),
}

impl pulp::WithSimd for ForwardCols<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let (j0, cols) = self.cols;
        let row = |r: usize| &self.x[r * self.inner + j0..r * self.inner + j0 + cols];
        // SAFETY: this task alone writes columns `j0..j0 + cols` of its group's rows.
        let out = |r: usize| unsafe { std::slice::from_raw_parts_mut(self.y.0.add(r * self.inner + j0), cols) };
        let mut max = row(0).to_vec();
        for r in 1..self.len {
            for (m, &v) in max.iter_mut().zip(row(r)) {
                *m = m.max(v);
            }
        }
        let mut sum = vec![0f32; cols];
        for r in 0..self.len {
            for (((y, &v), &m), s) in out(r).iter_mut().zip(row(r)).zip(&max).zip(sum.iter_mut()) {
                *y = crate::norm_act::exp(v - m);
                *s += *y;
            }
        }
        for r in 0..self.len {
            for (y, &s) in out(r).iter_mut().zip(&sum) {
                *y /= s;
            }
        }
    }
}

struct BackwardCols<'a> {
    y: &'a [f32],
    grad: &'a [f32],
    dx: SharedMut,
    len: usize,
    inner: usize,
    cols: (usize, usize),
}

impl pulp::WithSimd for BackwardCols<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let (j0, cols) = self.cols;
        let at = |r: usize| r * self.inner + j0..r * self.inner + j0 + cols;
        let mut dot = vec![0f32; cols];
        for r in 0..self.len {
            let (y, g) = (&self.y[at(r)], &self.grad[at(r)]);
            for ((d, &y), &g) in dot.iter_mut().zip(y).zip(g) {
                *d += g * y;
            }
        }
        for r in 0..self.len {
            let (y, g) = (&self.y[at(r)], &self.grad[at(r)]);
            // SAFETY: this task alone writes columns `j0..j0 + cols` of its group's rows.
            let dx = unsafe { std::slice::from_raw_parts_mut(self.dx.0.add(r * self.inner + j0), cols) };
            for (((o, &y), &g), &d) in dx.iter_mut().zip(y).zip(g).zip(&dot) {
                *o = y * (g - d);
            }
        }
    }
}

/// Runs `task(group, first column, columns, output group)` over every group of `len * inner`
/// values and chunk of columns in parallel, each task writing all rows of its columns of a
/// fresh output of `total` values, and returns that output.
fn by_columns<F>(total: usize, len: usize, inner: usize, task: F) -> Vec<f32>
where
    F: Fn(usize, (usize, usize), SharedMut) + Sync,
{
    let group = len * inner;
    assert!(group > 0 && total.is_multiple_of(group), "softmax: {total} values are not [{len}, {inner}] matrices");
    let fill = |out: *mut f32| {
        let dst = SharedMut(out);
        col_tasks(total / group, inner).into_par_iter().for_each(|(g, j0, cols)| {
            // Moves the whole `SharedMut` in (see same_conv's fill), not its raw-pointer field.
            #[allow(clippy::redundant_locals)]
            let dst = dst;
            // SAFETY: in bounds: group `g` of the output.
            task(g, (j0, cols), SharedMut(unsafe { dst.0.add(g * group) }))
        });
    };
    // SAFETY: the tasks cover every column of every group, and each writes all rows of its
    // columns.
    unsafe { filled_by(total, fill) }
}

/// Softmax over the second-to-last axis: `x` is `groups` matrices `[len, inner]` (row-major),
/// and every column of each is normalised. `x.len()` must be a multiple of `len * inner`.
fn forward_cols(x: &[f32], len: usize, inner: usize) -> Vec<f32> {
    let (group, arch) = (len * inner, pulp::Arch::new());
    by_columns(x.len(), len, inner, |g, cols, y| {
        arch.dispatch(ForwardCols { x: &x[g * group..(g + 1) * group], y, len, inner, cols })
    })
}

/// The gradient of [`forward_cols`] given its output `y` and the output's gradient `grad`:
/// `y * (grad - sum over the column of grad * y)`.
fn backward_cols(y: &[f32], grad: &[f32], len: usize, inner: usize) -> Vec<f32> {
    assert_eq!(y.len(), grad.len(), "softmax: gradient length");
    let (group, arch) = (len * inner, pulp::Arch::new());
    by_columns(y.len(), len, inner, |g, cols, dx| {
        let (y, grad) = (&y[g * group..(g + 1) * group], &grad[g * group..(g + 1) * group]);
        arch.dispatch(BackwardCols { y, grad, dx, len, inner, cols })
    })
}
