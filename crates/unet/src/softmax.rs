//! Softmax over the last axis of a contiguous f32 slice, and its gradient (the CPU kernels behind
//! [`crate::backend::UnetBackend::softmax_last`] on burn Flex).
//!
//! Per row of length `L`: `y = exp(x - max) / sum(exp(x - max))`, the formula burn's `softmax`
//! composes, with the polynomial [`crate::norm_act::exp`] (vectorised through `pulp`'s run-time
//! dispatch) instead of the scalar libm `expf` that Flex's `exp` calls element by element. The
//! gradient, `dx = y * (g - sum(g * y))`, is one pass per row instead of autodiff's decomposed
//! `max / sub / exp / sum / div` backward.

use rayon::prelude::*;

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

/// Softmax over rows of length `len` of `x` (`x.len()` a multiple of `len`).
pub fn forward(x: &[f32], len: usize) -> Vec<f32> {
    assert!(len > 0 && x.len() % len == 0, "softmax: {} values are not rows of {len}", x.len());
    let mut y = vec![0f32; x.len()];
    let chunk = rows_per_task(len) * len;
    let arch = pulp::Arch::new();
    y.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(y, x)| arch.dispatch(Forward { x, y, len }));
    y
}

/// The gradient of [`forward`] given its output `y` and the output's gradient `grad`.
pub fn backward(y: &[f32], grad: &[f32], len: usize) -> Vec<f32> {
    assert!(len > 0 && y.len() % len == 0, "softmax: {} values are not rows of {len}", y.len());
    assert_eq!(y.len(), grad.len(), "softmax: gradient length");
    let mut dx = vec![0f32; y.len()];
    let chunk = rows_per_task(len) * len;
    let arch = pulp::Arch::new();
    dx.par_chunks_mut(chunk)
        .zip(y.par_chunks(chunk).zip(grad.par_chunks(chunk)))
        .for_each(|(dx, (y, grad))| arch.dispatch(Backward { y, grad, dx, len }));
    dx
}
