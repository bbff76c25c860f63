//! Gaussian-kernel diversity metrics: Rényi kernel entropy (exact and Monte-Carlo), relative
//! RKE (RRKE) and the Vendi score.
//!
//! Kernel: `k(x, y) = exp(-|x - y|^2 / (2 bw^2))` on the features as given (no normalisation).

use faer::{MatRef, Par};
use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::Result;
use crate::features::{centered, check_same_dim, row_sq_norms, validate, validate_bandwidths};
use crate::linalg::{a_bt_into, singular_values};
use crate::symeig::sym_eigenvalues;

/// Rows per tile of the streamed Gram matrix (a tile pair holds `TILE^2` doubles).
pub const TILE: usize = 512;

/// Exact order-2 Rényi kernel entropy `1 / mean_{i,j} k(x_i, x_j)^2` over all `n^2` ordered
/// pairs (including `i == j`), for every bandwidth in `bandwidths` (results in the same order).
///
/// One pass over the Gram matrix serves all bandwidths. The Gram matrix is streamed in
/// `TILE x TILE` blocks (upper block triangle, off-diagonal blocks counted twice), computed on
/// the centred features, so memory stays `O(n d + threads * TILE^2)`. Block sums are combined in
/// a fixed order: the result does not depend on the number of threads.
pub fn rke_exact(x: ArrayView2<'_, f64>, bandwidths: &[f64]) -> Result<Vec<f64>> {
    validate(x, "features", 1)?;
    validate_bandwidths(bandwidths)?;
    let n = x.nrows();
    let means = mean_k2_exact(x, bandwidths);
    let _ = n;
    Ok(means.into_iter().map(|m| 1.0 / m).collect())
}

/// `mean_{i,j} k(x_i,x_j)^2` per bandwidth, streamed.
fn mean_k2_exact(x: ArrayView2<'_, f64>, bandwidths: &[f64]) -> Vec<f64> {
    let n = x.nrows();
    let (xc, _) = centered(x);
    let norms = row_sq_norms(xc.view());
    // k^2 = exp(-sq / bw^2)
    let coef: Vec<f64> = bandwidths.iter().map(|b| 1.0 / (b * b)).collect();
    let nt = n.div_ceil(TILE);
    let pairs: Vec<(usize, usize)> = (0..nt).flat_map(|i| (i..nt).map(move |j| (i, j))).collect();
    let xs = xc.as_slice().expect("standard layout");
    let d = xc.ncols();
    let sums: Vec<Vec<f64>> = pairs
        .par_iter()
        .map_init(
            || vec![0.0f64; TILE * TILE],
            |buf, &(bi, bj)| {
                let (r0, r1) = (bi * TILE, ((bi + 1) * TILE).min(n));
                let (c0, c1) = (bj * TILE, ((bj + 1) * TILE).min(n));
                let a = MatRef::from_row_major_slice(&xs[r0 * d..r1 * d], r1 - r0, d);
                let b = MatRef::from_row_major_slice(&xs[c0 * d..c1 * d], c1 - c0, d);
                let w = c1 - c0;
                let g = &mut buf[..(r1 - r0) * w];
                a_bt_into(g, a, b, Par::Seq);
                let mut acc = vec![0.0f64; coef.len()];
                for (ii, row) in g.chunks_exact_mut(w).enumerate() {
                    let diag = if bi == bj { Some(ii) } else { None };
                    crate::simd::gauss_row_sums(row, norms[r0 + ii], &norms[c0..c1], diag, &coef, &mut acc);
                }
                let w = if bi == bj { 1.0 } else { 2.0 };
                acc.iter_mut().for_each(|v| *v *= w);
                acc
            },
        )
        .collect();
    let mut total = vec![0.0f64; coef.len()];
    for s in &sums {
        for (t, v) in total.iter_mut().zip(s) {
            *t += v;
        }
    }
    let nn = (n as f64) * (n as f64);
    total.into_iter().map(|t| t / nn).collect()
}

/// Monte-Carlo RKE with rke-score's `compute_rke_mc` semantics: `n_samples` ordered pairs
/// `(i, j)` drawn uniformly with replacement (`i == j` allowed), `1 / mean k(x_i, x_j)^2`.
/// The pairs come from a ChaCha8 generator seeded with `seed` and are shared by all
/// bandwidths (rke-score draws fresh pairs per bandwidth from numpy's global generator).
pub fn rke_mc(x: ArrayView2<'_, f64>, bandwidths: &[f64], n_samples: usize, seed: u64) -> Result<Vec<f64>> {
    validate(x, "features", 1)?;
    validate_bandwidths(bandwidths)?;
    if n_samples == 0 {
        return Err(crate::MetricsError::InvalidParameter {
            name: "n_samples",
            value: "0".into(),
            reason: "must be > 0".into(),
        });
    }
    let n = x.nrows();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pairs: Vec<(usize, usize)> = (0..n_samples).map(|_| (rng.random_range(0..n), rng.random_range(0..n))).collect();
    let coef: Vec<f64> = bandwidths.iter().map(|b| 1.0 / (b * b)).collect();
    let xs = crate::linalg::standard(x);
    let chunk = 4096;
    let sums: Vec<Vec<f64>> = pairs
        .par_chunks(chunk)
        .map(|ps| {
            let mut acc = vec![0.0f64; coef.len()];
            for &(i, j) in ps {
                let sq: f64 = xs.row(i).iter().zip(xs.row(j).iter()).map(|(a, b)| (a - b) * (a - b)).sum();
                for (a, c) in acc.iter_mut().zip(&coef) {
                    *a += (-sq * c).exp();
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f64; coef.len()];
    for s in &sums {
        for (t, v) in total.iter_mut().zip(s) {
            *t += v;
        }
    }
    Ok(total.into_iter().map(|t| n_samples as f64 / t).collect())
}

/// Default number of leading rows of each set used by [`rrke`] (rke-score's `x_samples`).
pub const RRKE_DEFAULT_ROWS: usize = 500;

/// Relative Rényi kernel entropy, rke-score's `compute_rrke(X, Y, x_samples=rows)`: with the
/// first `rows` rows of each set, `K_ij = k(x_i, y_j) / sqrt(n_x n_y)` and
/// `RRKE = -ln((sum of singular values of K)^2)`. One value per bandwidth.
pub fn rrke(x: ArrayView2<'_, f64>, y: ArrayView2<'_, f64>, bandwidths: &[f64], rows: usize) -> Result<Vec<f64>> {
    validate(x, "real features", 1)?;
    validate(y, "generated features", 1)?;
    check_same_dim(x, "real features", y, "generated features")?;
    validate_bandwidths(bandwidths)?;
    if rows == 0 {
        return Err(crate::MetricsError::InvalidParameter {
            name: "rows",
            value: "0".into(),
            reason: "must be > 0".into(),
        });
    }
    let xs = crate::linalg::standard(x.slice(ndarray::s![..rows.min(x.nrows()), ..]));
    let ys = crate::linalg::standard(y.slice(ndarray::s![..rows.min(y.nrows()), ..]));
    let sq = sq_dists_direct(&xs, &ys);
    let scale = 1.0 / ((xs.nrows() * ys.nrows()) as f64).sqrt();
    bandwidths
        .iter()
        .map(|&bw| {
            let c = 0.5 / (bw * bw);
            let k = sq.mapv(|s| (-s * c).exp() * scale);
            let sv = singular_values(crate::linalg::view(&k), "RRKE kernel matrix")?;
            let s: f64 = sv.iter().sum();
            Ok(-(s * s).ln())
        })
        .collect()
}

/// Squared distances by explicit differences (exact, used for small matrices).
fn sq_dists_direct(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
    let mut out = Array2::<f64>::zeros((a.nrows(), b.nrows()));
    out.as_slice_mut().unwrap().par_chunks_mut(b.nrows()).enumerate().for_each(|(i, row)| {
        let ai = a.row(i);
        for (j, o) in row.iter_mut().enumerate() {
            *o = ai.iter().zip(b.row(j).iter()).map(|(p, q)| (p - q) * (p - q)).sum();
        }
    });
    out
}

/// Vendi score (order 1): `exp(-sum_i w_i ln w_i)` over the eigenvalues `w_i > 1e-12` of `K / n`,
/// `K` the Gaussian Gram matrix of `x`. Needs the full `n x n` matrix and its eigenvalues
/// (`O(n^3)`): callers cap `n` (see [`crate::report::EvalConfig::vendi_max_n`]).
pub fn vendi(x: ArrayView2<'_, f64>, bandwidths: &[f64]) -> Result<Vec<f64>> {
    validate(x, "features", 1)?;
    validate_bandwidths(bandwidths)?;
    let n = x.nrows();
    let (xc, _) = centered(x);
    let norms = row_sq_norms(xc.view());
    let mut g = Array2::<f64>::zeros((n, n));
    a_bt_into(g.as_slice_mut().unwrap(), crate::linalg::view(&xc), crate::linalg::view(&xc), crate::linalg::par());
    let sq = {
        let mut s = g;
        s.as_slice_mut().unwrap().par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                *v = if i == j { 0.0 } else { (norms[i] + norms[j] - 2.0 * *v).max(0.0) };
            }
        });
        s
    };
    bandwidths
        .iter()
        .map(|&bw| {
            let c = 0.5 / (bw * bw);
            let inv_n = 1.0 / n as f64;
            let k = sq.mapv(|s| (-s * c).exp() * inv_n);
            let w = sym_eigenvalues(crate::linalg::view(&k), "Vendi kernel matrix")?;
            let h: f64 = w.iter().filter(|&&v| v > 1e-12).map(|&v| -v * v.ln()).sum();
            Ok(h.exp())
        })
        .collect()
}
