//! The covariance's scatter matrix `sum_r w_r^2 (x_r - m)(x_r - m)^T` on an AVX-512 f64 kernel.
//!
//! faer 0.22's triangular product reached about 40% of the f64 FMA peak of an Intel Xeon, below
//! numpy's syrk, so FID's statistics took longer than pytorch-fid's (docs/PERFORMANCE.md). This
//! is a syrk in the usual BLIS shape, written for this one use:
//!
//! - Rows are taken [`KC`] at a time; centring and weighting write them straight into *panels* of
//!   8 columns (`[KC][8]` each, zero-padded past `d`), so packing costs nothing beyond the
//!   centred copy the product needs anyway.
//! - The micro-kernel keeps an `8 x 24` tile of the sum in 24 registers: per row, three vector
//!   loads of the 24 columns and eight broadcasts of the 8 rows, 24 FMAs. Only tiles on or
//!   above the diagonal are computed; the lower half is mirrored at the end.
//! - Tiles are grouped by blocks of [`MC_PANELS`] column panels (the `i` side, 512 KB, kept in L2
//!   while the `j` panels of 32 KB stream past it); threads take whole blocks, so each element's
//!   sum runs in one fixed order whatever the thread count.
//!
//! The sizes fit the L2 of AVX-512 server cores and of Zen 4/5 (1 MB or more) and are constants:
//! on the Xeon, passes of 256 to 1,024 rows were within 10% of each other (performance-history.md).

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::linalg::{mirror_upper, SharedMut};

/// Rows per pass: one `j` panel is `KC * 8` values (32 KB).
const KC: usize = 512;
/// Column panels (of 8) in a block of the `i` side: `KC * 8 * MC_PANELS` values (512 KB).
const MC_PANELS: usize = 16;
/// Column panels per micro-kernel tile (24 columns).
const MR_PANELS: usize = 3;

/// `alpha * sum_r s_r^2 (x_{i_r} - mean)(x_{i_r} - mean)^T` over the `(row, scale)` pairs of
/// `rows`, as a full symmetric `[d, d]` matrix; `None` when the CPU has no AVX-512 (the caller
/// uses faer then).
pub(crate) fn scatter(x: ArrayView2<'_, f64>, rows: &[(usize, f64)], mean: &[f64], alpha: f64) -> Option<Array2<f64>> {
    crate::simd::has_avx512().then(|| scatter_avx512(x, rows, mean, alpha))
}

fn scatter_avx512(x: ArrayView2<'_, f64>, rows: &[(usize, f64)], mean: &[f64], alpha: f64) -> Array2<f64> {
    let d = x.ncols();
    let dp = d.next_multiple_of(8);
    // The upper triangle (column >= row) of the unscaled sum accumulates in the result itself
    // when `d` is a multiple of 8 (no second d x d buffer to fault in), else in a padded one.
    let mut out = Array2::<f64>::zeros((dp, dp));
    accumulate_upper(x, rows, mean, out.as_slice_mut().expect("standard layout"), dp);
    mirror_upper(&mut out);
    out.as_slice_mut().expect("standard layout").par_iter_mut().for_each(|v| *v *= alpha);
    if dp == d {
        out
    } else {
        out.slice(ndarray::s![..d, ..d]).to_owned()
    }
}

/// The unscaled sum's tiles on and above the diagonal into the row-major `[dp, dp]` `acc` (the
/// first pass stores, later ones add).
fn accumulate_upper(x: ArrayView2<'_, f64>, rows: &[(usize, f64)], mean: &[f64], acc: &mut [f64], dp: usize) {
    let panels = dp / 8;
    let mut packed = vec![0.0f64; panels * KC * 8];
    let blocks = panels.div_ceil(MC_PANELS);
    // Tasks write disjoint tiles (see the SAFETY note of the tile call).
    let acc_ptr = SharedMut(acc.as_mut_ptr());
    for (k, chunk) in rows.chunks(KC).enumerate() {
        let kc = chunk.len();
        // The first pass stores its sums: reading the fresh zeroed pages first would map the
        // shared zero page and then copy it on the write (a second fault, and a TLB shootdown
        // that cost a fifth of the time on a 2-core VM).
        let first = k == 0;
        pack(x, chunk, mean, &mut packed);
        let packed = &packed[..];
        // Largest blocks (rightmost: most `j` panels) first, so the last tasks are the small ones.
        (0..blocks).into_par_iter().rev().for_each(|b| {
            let acc_ptr = &acc_ptr;
            let p0 = b * MC_PANELS;
            let p1 = (p0 + MC_PANELS).min(panels);
            for jp in 0..p1 {
                let bj = &packed[jp * KC * 8..][..kc * 8];
                // Tiles of 3 panels from the block start; the first is the one holding the
                // diagonal panel `jp` (or the block's first when `jp` lies left of the block).
                let mut ip = if jp <= p0 { p0 } else { p0 + (jp - p0) / MR_PANELS * MR_PANELS };
                while ip < p1 {
                    let np = MR_PANELS.min(p1 - ip);
                    let a = &packed[ip * KC * 8..];
                    // SAFETY: avx512f was detected; `a` holds `np` panels of `KC * 8` values (rows
                    // past `kc` are never read), `bj` kc * 8; the tile (rows 8 jp.., columns
                    // 8 ip..) lies inside `acc` and in this block's columns, which no other
                    // task writes.
                    unsafe {
                        let c = acc_ptr.0.add(jp * 8 * dp + ip * 8);
                        match np {
                            3 => tile::<3>(a.as_ptr(), bj.as_ptr(), kc, c, dp, first),
                            2 => tile::<2>(a.as_ptr(), bj.as_ptr(), kc, c, dp, first),
                            _ => tile::<1>(a.as_ptr(), bj.as_ptr(), kc, c, dp, first),
                        }
                    }
                    ip += MR_PANELS;
                }
            }
        });
    }
}

/// Centred, weighted rows of `chunk` into column panels: panel `p` holds `[kc][8]` values of
/// columns `8p..8p+8` (zero past `d`), at `packed[p * KC * 8..]`.
fn pack(x: ArrayView2<'_, f64>, chunk: &[(usize, f64)], mean: &[f64], packed: &mut [f64]) {
    let d = x.ncols();
    let panels = d.div_ceil(8);
    // One task per group of panels; each reads its 8-column slices of every row of the chunk.
    const GROUP: usize = 16;
    packed.par_chunks_mut(KC * 8 * GROUP).enumerate().for_each(|(g, out)| {
        let pg = g * GROUP;
        for (r, &(i, w)) in chunk.iter().enumerate() {
            let row = x.row(i);
            let slice = row.as_slice();
            for q in 0..GROUP.min(panels - pg) {
                let p = pg + q;
                let dst = &mut out[q * KC * 8 + r * 8..][..8];
                let c0 = p * 8;
                let c1 = (c0 + 8).min(d);
                match slice {
                    Some(s) => {
                        for ((o, v), m) in dst.iter_mut().zip(&s[c0..c1]).zip(&mean[c0..c1]) {
                            *o = (v - m) * w;
                        }
                    }
                    None => {
                        for (k, o) in dst[..c1 - c0].iter_mut().enumerate() {
                            *o = (row[c0 + k] - mean[c0 + k]) * w;
                        }
                    }
                }
                dst[c1 - c0..].iter_mut().for_each(|o| *o = 0.0);
            }
        }
    });
}

/// `c[jj][0..8 NP] += sum_r b[r][jj] * a_panels[r][..]` (`=` when `store`) for the 8 rows of
/// `b`'s panel and the `NP` panels of `a` (columns), over `kc` rows; `c` is row-major with
/// leading dimension `ld`.
#[target_feature(enable = "avx512f")]
unsafe fn tile<const NP: usize>(a: *const f64, b: *const f64, kc: usize, c: *mut f64, ld: usize, store: bool) {
    use std::arch::x86_64::*;
    let mut s = [[_mm512_setzero_pd(); NP]; 8];
    for r in 0..kc {
        let mut va = [_mm512_setzero_pd(); NP];
        for (q, v) in va.iter_mut().enumerate() {
            *v = _mm512_loadu_pd(a.add(q * KC * 8 + r * 8));
        }
        for (jj, row) in s.iter_mut().enumerate() {
            let vb = _mm512_set1_pd(*b.add(r * 8 + jj));
            for (acc, v) in row.iter_mut().zip(&va) {
                *acc = _mm512_fmadd_pd(*v, vb, *acc);
            }
        }
    }
    for (jj, row) in s.iter().enumerate() {
        for (q, acc) in row.iter().enumerate() {
            let p = c.add(jj * ld + q * 8);
            _mm512_storeu_pd(p, if store { *acc } else { _mm512_add_pd(_mm512_loadu_pd(p), *acc) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The sum in f64, row by row (the definition).
    fn direct(x: &Array2<f64>, rows: &[(usize, f64)], mean: &[f64], alpha: f64) -> Array2<f64> {
        let d = x.ncols();
        let mut out = Array2::<f64>::zeros((d, d));
        for &(i, w) in rows {
            let c: Vec<f64> = (0..d).map(|k| (x[[i, k]] - mean[k]) * w).collect();
            for a in 0..d {
                for b in 0..d {
                    out[[a, b]] += c[a] * c[b];
                }
            }
        }
        out.mapv_inplace(|v| v * alpha);
        out
    }

    #[test]
    fn matches_the_direct_sum_on_every_tile_shape() {
        if !crate::simd::has_avx512() {
            eprintln!("no AVX-512: the kernel does not run here");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // d: one partial panel; panels not a multiple of the tile; several blocks with a partial
        // last tile (of 1, 2 or 3 panels). n (two thirds are kept): less than one pass, and two
        // passes with a partial last one.
        for (n, d) in [(5, 3), (300, 17), (40, 12), (70, 300), (1_200, 530)] {
            let x = Array2::from_shape_fn((n, d), |_| rng.random_range(-2.0..2.0));
            let mean: Vec<f64> = (0..d).map(|_| rng.random_range(-0.5..0.5)).collect();
            let rows: Vec<(usize, f64)> =
                (0..n).filter(|i| i % 3 != 1).map(|i| (i, if i % 2 == 0 { 1.0 } else { 2f64.sqrt() })).collect();
            let got = scatter(x.view(), &rows, &mean, 0.25).unwrap();
            let want = direct(&x, &rows, &mean, 0.25);
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = got.iter().zip(want.iter()).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-13 * scale, "n {n} d {d}: max |diff| {err:e} of {scale:e}");
            for a in 0..d {
                for b in 0..a {
                    assert_eq!(got[[a, b]], got[[b, a]], "n {n} d {d}: not symmetric at ({a}, {b})");
                }
            }
        }
    }

    #[test]
    fn thread_count_does_not_change_a_bit() {
        if !crate::simd::has_avx512() {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        // Several column blocks, so that threads split the work.
        let (n, d) = (700, 300);
        let x = Array2::from_shape_fn((n, d), |_| rng.random_range(-2.0..2.0));
        let mean = vec![0.2; d];
        let rows: Vec<(usize, f64)> = (0..n).map(|i| (i, 1.0)).collect();
        let on = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| scatter(x.view(), &rows, &mean, 1.0).unwrap())
        };
        assert_eq!(on(1), on(3));
    }

    #[test]
    fn strided_rows_give_the_same_matrix() {
        if !crate::simd::has_avx512() {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let x = Array2::from_shape_fn((40, 20), |_| rng.random_range(-1.0..1.0));
        let xt = x.t().as_standard_layout().into_owned();
        let mean = vec![0.1; 20];
        let rows: Vec<(usize, f64)> = (0..40).map(|i| (i, 1.0)).collect();
        let a = scatter(x.view(), &rows, &mean, 1.0).unwrap();
        let b = scatter(xt.t(), &rows, &mean, 1.0).unwrap();
        assert_eq!(a, b);
    }
}
