//! Thin bridges between `ndarray` (storage, I/O) and `faer` (dense kernels).

use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, MatMut, MatRef, Par};
use ndarray::{Array2, ArrayView2};

use crate::error::{MetricsError, Result};

/// The parallelism used for large dense kernels: rayon over all threads of the current pool.
pub(crate) fn par() -> Par {
    Par::rayon(0)
}

/// A faer view of a standard-layout (row-major, contiguous) ndarray matrix.
pub(crate) fn view(a: &Array2<f64>) -> MatRef<'_, f64> {
    let s = a.as_slice().expect("standard layout");
    MatRef::from_row_major_slice(s, a.nrows(), a.ncols())
}

/// A mutable faer view of a standard-layout ndarray matrix.
pub(crate) fn view_mut(a: &mut Array2<f64>) -> MatMut<'_, f64> {
    let (r, c) = a.dim();
    let s = a.as_slice_mut().expect("standard layout");
    MatMut::from_row_major_slice_mut(s, r, c)
}

/// A contiguous row-major copy of `x` when it is not already one.
pub(crate) fn standard(x: ArrayView2<'_, f64>) -> Array2<f64> {
    x.as_standard_layout().into_owned()
}

/// `alpha * (X - 1 mean^T)^T (X - 1 mean^T)` as a full symmetric `[d, d]` matrix, without a
/// centred copy of `X`: blocks of rows are centred into a reused buffer and accumulated with a
/// triangular (syrk-like) product, then one triangle is mirrored. For `n = 10,000, d = 2,048`
/// this saves the 164 MB centred copy and two passes over it. On AVX-512 CPUs the product is
/// [`crate::gram`]'s kernel, elsewhere faer's.
pub(crate) fn centered_gram(x: ArrayView2<'_, f64>, mean: &[f64], alpha: f64) -> Array2<f64> {
    weighted_centered_gram(x, None, mean, alpha)
}

/// [`centered_gram`] with row `i` counted `counts[i]` times: `alpha * sum_i c_i (x_i - mean)
/// (x_i - mean)^T`. A bootstrap resample's scatter matrix, from the multiplicities of the rows
/// instead of a copy of the resample: rows with `c_i = 0` (about 37% of them) are skipped and
/// the others scaled by `sqrt(c_i)`, which keeps the product symmetric (one triangular gemm).
pub(crate) fn weighted_centered_gram(
    x: ArrayView2<'_, f64>,
    counts: Option<&[u32]>,
    mean: &[f64],
    alpha: f64,
) -> Array2<f64> {
    // (row, scale) of every row that enters the sum; scale 1 multiplies exactly, so the
    // unweighted matrix is the same to the bit as without weights.
    let rows: Vec<(usize, f64)> = match counts {
        Some(c) => c.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| (i, f64::from(c).sqrt())).collect(),
        None => (0..x.nrows()).map(|i| (i, 1.0)).collect(),
    };
    #[cfg(target_arch = "x86_64")]
    if let Some(out) = crate::gram::scatter(x, &rows, mean, alpha) {
        return out;
    }
    scatter_faer(x, &rows, mean, alpha)
}

/// The scatter matrix of [`weighted_centered_gram`] through faer's triangular product.
fn scatter_faer(x: ArrayView2<'_, f64>, rows: &[(usize, f64)], mean: &[f64], alpha: f64) -> Array2<f64> {
    use rayon::prelude::*;
    const CHUNK: usize = 1024;
    let d = x.ncols();
    let mut out = Array2::<f64>::zeros((d, d));
    let mut buf = vec![0.0f64; CHUNK.min(rows.len()) * d];
    for (k, block_rows) in rows.chunks(CHUNK).enumerate() {
        let block = &mut buf[..block_rows.len() * d];
        block.par_chunks_mut(d).zip(block_rows.par_iter()).for_each(|(r, &(i, w))| {
            for ((o, v), m) in r.iter_mut().zip(x.row(i).iter()).zip(mean) {
                *o = (v - m) * w;
            }
        });
        let b = MatRef::from_row_major_slice(block, block_rows.len(), d);
        triangular::matmul(
            view_mut(&mut out),
            BlockStructure::TriangularLower,
            if k == 0 { Accum::Replace } else { Accum::Add },
            b.transpose(),
            BlockStructure::Rectangular,
            b,
            BlockStructure::Rectangular,
            alpha,
            par(),
        );
    }
    mirror_lower(&mut out);
    out
}

/// Copies the lower triangle onto the upper one. `from_row_major_slice` maps faer `(i, j)` to
/// `out[[i, j]]`, so the faer lower triangle is `out[[i, j]]` with `i >= j`.
pub(crate) fn mirror_lower(out: &mut Array2<f64>) {
    mirror(out, true);
}

/// Copies the upper triangle (`out[[i, j]]`, `j >= i`) onto the lower one.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn mirror_upper(out: &mut Array2<f64>) {
    mirror(out, false);
}

fn mirror(out: &mut Array2<f64>, from_lower: bool) {
    use rayon::prelude::*;
    // In 64 x 64 tiles, so that the column-wise reads stay in cache; one task per band jb..jb+T
    // of the smaller index: the block row of the upper triangle, the block column of the lower.
    const T: usize = 64;
    let d = out.nrows();
    // Tasks write disjoint elements of one strict triangle and read the other one, through the
    // raw pointer only.
    let p = SharedMut(out.as_slice_mut().expect("standard layout").as_mut_ptr());
    let p = &p;
    (0..d.div_ceil(T)).into_par_iter().for_each(|b| {
        let jb = b * T;
        for ib in (jb..d).step_by(T) {
            for j in jb..(jb + T).min(d) {
                for i in ib.max(j + 1)..(ib + T).min(d) {
                    // SAFETY: i, j < d and i > j; see `p`.
                    unsafe {
                        if from_lower {
                            *p.0.add(j * d + i) = *p.0.add(i * d + j);
                        } else {
                            *p.0.add(i * d + j) = *p.0.add(j * d + i);
                        }
                    }
                }
            }
        }
    });
}

/// A raw pointer that rayon tasks may share, for kernels whose tasks write disjoint elements
/// of one buffer; each use states which elements its tasks touch.
pub(crate) struct SharedMut(pub(crate) *mut f64);
// SAFETY: the pointer is only dereferenced under the disjointness each use states.
unsafe impl Sync for SharedMut {}

/// `A B^T` for row-major `A [m, k]`, `B [n, k]`, into a new row-major `[m, n]` array.
pub(crate) fn a_bt(a: &Array2<f64>, b: &Array2<f64>, par: Par) -> Array2<f64> {
    let mut out = Array2::<f64>::zeros((a.nrows(), b.nrows()));
    faer::linalg::matmul::matmul(view_mut(&mut out), Accum::Replace, view(a), view(b).transpose(), 1.0, par);
    out
}

/// `A B^T` of faer views into `out` (row-major `[m, n]` buffer).
pub(crate) fn a_bt_into(out: &mut [f64], a: MatRef<'_, f64>, b: MatRef<'_, f64>, par: Par) {
    let dst = MatMut::from_row_major_slice_mut(out, a.nrows(), b.nrows());
    faer::linalg::matmul::matmul(dst, Accum::Replace, a, b.transpose(), 1.0, par);
}

/// Singular values, descending.
pub(crate) fn singular_values(m: MatRef<'_, f64>, what: &str) -> Result<Vec<f64>> {
    m.singular_values().map_err(|e| MetricsError::Linalg(format!("{what}: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_fill_the_other_triangle() {
        // Sizes below, at and across the 64-wide tiles.
        for d in [1usize, 5, 64, 65, 130] {
            let mut a = Array2::from_shape_fn((d, d), |(i, j)| if i >= j { (i * 1000 + j) as f64 } else { -1.0 });
            mirror_lower(&mut a);
            let mut b = Array2::from_shape_fn((d, d), |(i, j)| if i <= j { (j * 1000 + i) as f64 } else { -1.0 });
            mirror_upper(&mut b);
            for i in 0..d {
                for j in 0..d {
                    let (r, c) = if i >= j { (i, j) } else { (j, i) };
                    assert_eq!(a[[i, j]], (r * 1000 + c) as f64, "lower, d = {d}, ({i}, {j})");
                    assert_eq!(b[[i, j]], (r * 1000 + c) as f64, "upper, d = {d}, ({i}, {j})");
                }
            }
        }
    }

    /// The AVX-512 kernel (where the CPU has it) and faer's product, which runs elsewhere, give
    /// the same scatter matrix: weighted rows, more rows than one pass of either, `d` not a
    /// multiple of the kernel's 8-column panels.
    #[test]
    fn both_scatter_products_agree() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (n, d) = (1_300, 45);
        let x = Array2::from_shape_fn((n, d), |_| rng.random_range(-3.0..3.0));
        let mean: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let counts: Vec<u32> = (0..n).map(|_| rng.random_range(0..4)).collect();
        let got = weighted_centered_gram(x.view(), Some(&counts), &mean, 0.5);
        let rows: Vec<(usize, f64)> =
            counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| (i, f64::from(c).sqrt())).collect();
        let faer = scatter_faer(x.view(), &rows, &mean, 0.5);
        let scale = faer.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = got.iter().zip(faer.iter()).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-12 * scale, "max |diff| {err:e} of {scale:e}");
        assert_eq!(got, got.t(), "symmetric");
    }
}
